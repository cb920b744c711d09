//! The real backend: `linux.uml` processes, root images, consoles, mconsole.
//!
//! - [`image`]: the reproducible root image (`umltest image build`).
//! - [`manifest`]: the committed manifest of the default image; the sim builds its disk from it.
//! - [`args`]: what the harness appends to a machine's command line (both backends).
//! - [`backend`]: `impl Backend` on real machines and the in-process switch daemon.
//! - [`console`]: the console protocol (pure): command lines, markers, transcripts.
//! - [`differential`]: `--backend both`: sim and real runs compared, difference by difference.
//! - [`machine`]: one `linux.uml` process: start, readiness, commands, halt, cleanup.
//! - [`mconsole`]: the management console client (`umltest console`).
//! - [`sandbox`]: the Landlock domain every real kernel runs in.
//! - [`snapshots`]: `--backend uml`: real artifacts against the sim's snapshots, normalised.
//! - [`guest`]: scripted one-shot guests for interop tests.

pub mod args;
pub mod backend;
pub mod console;
pub mod differential;
pub mod guest;
pub mod image;
pub mod machine;
pub mod manifest;
pub mod mconsole;
pub mod sandbox;
pub mod snapshots;
