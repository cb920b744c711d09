//! Scenario files, the engine that runs them on a backend, artifacts and snapshots.
//!
//! - [`schema`]: the file format (serde), with the documentation tables that
//!   also generate `docs/scenario-reference.md` ([`reference`]).
//! - [`resolve`]: text to a validated [`plan::Plan`], errors as [`diag::Diagnostics`]
//!   with `file:line:column` and a caret.
//! - [`argv`]: what the harness appends to each machine's command line.
//! - [`engine`]: runs a plan on a [`backend::Backend`]; [`disk`] does host-side disk work;
//!   [`run_folder`]: which folders a run may use, and their locks.
//! - [`artifacts`]: text artifacts; [`normalize`]: what a real run's artifacts lose
//!   before comparison; [`snapshot`]: the insta-format snapshot store.

pub mod argv;
pub mod artifacts;
pub mod backend;
pub mod diag;
pub mod disk;
pub mod engine;
pub mod normalize;
pub mod plan;
pub mod reference;
pub mod resolve;
pub mod run_folder;
pub mod schema;
pub mod snapshot;
pub mod units;
