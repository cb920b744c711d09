//! Hostile inputs: run_folder.
