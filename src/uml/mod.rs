//! The real backend: `linux.uml` processes, root images, consoles, mconsole.
//!
//! - [`image`]: the reproducible root image (`umltest image build`).
//! - [`args`]: what the harness appends to a machine's command line (both backends).
//! - [`guest`]: scripted one-shot guests for interop tests.

pub mod args;
pub mod guest;
pub mod image;
