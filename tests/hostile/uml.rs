//! Hostile inputs: uml.
