//! umltest: a test-and-simulation harness for User Mode Linux labs.
//!
//! Module map (see `../shared/ARCHITECTURE.md`): each module is a pure core
//! plus a thin I/O shell.
//! - [`block`]: the `BlockDevice` trait and UML's ubd devices (plain or COW).
//! - [`cow`]: the UML COW v1/v2/v3 format, create (uml_mkcow), merge (uml_moo).
//! - [`cmdline`]: the UML 6.1 kernel command line and what it configures.
//! - [`net`]: frames (`wire`), the switch core (`switch`), the VDE daemon (`vde`).
//! - [`sim`]: the deterministic in-process machine emulation.
//! - [`uml`]: the real `linux.uml` backend.
//! - [`scenario`]: scenario files, the engine, artifacts and snapshots.
//! - [`cli`]: the `umltest` command.

pub mod block;
pub mod cli;
pub mod cmdline;
pub mod cow;
pub mod guestfs;
pub mod net;
pub mod scenario;
pub mod sim;
pub mod uml;
