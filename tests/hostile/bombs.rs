//! Hostile inputs: bombs.
