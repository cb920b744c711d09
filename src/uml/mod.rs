//! The real backend: `linux.uml` processes, root images, consoles, mconsole.

pub mod guest;
