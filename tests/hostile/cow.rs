//! Hostile inputs: cow.
