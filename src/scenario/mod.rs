//! Scenario files, the engine that runs them on a backend, artifacts and snapshots.

pub mod backend;
