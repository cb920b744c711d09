//! The deterministic sim backend: in-process emulated UML machines on a
//! virtual clock with seeded random streams (see `../shared/ARCHITECTURE.md`).
//!
//! - [`backend`]: `impl Backend for SimBackend`, the engine's entry point.
//! - [`boot`]: a machine from its argv (`cmdline::parse`, `block::Ubd::open`).
//! - [`world`]: clock, event queue ordered by `(time, seq)`, machines, jobs,
//!   switches with per-port fault injection and traces.
//! - [`stack`]: interfaces and Linux 6.1's ARP answering rules.
//! - [`programs`]: the guest image's programs (busybox, arping, tcpdump, ...).
//! - [`shell`]: the guest shell's grammar.
//! - [`disk`]: ubd disks as the programs see them.
//! - [`tmpfs`]: the guest's files (sparse, sized as its `/tmp`).
//! - [`console`]: a console or command output capped at 16 MiB.
//! - [`rng`]: one seed, derived per-component streams.
//!
//! Nothing in here reads the wall clock or iterates a hash map. Nothing a lab
//! can write makes it panic, hang or grow without bound: guest programs answer
//! as the real ones do at their limits (tests/hostile/bombs.rs), virtual time
//! saturates, and a lab has at most [`world::MAX_EVENTS`] events.

pub mod backend;
pub mod boot;
pub mod console;
pub mod disk;
pub mod programs;
pub mod rng;
pub mod shell;
pub mod stack;
pub mod sysctl;
pub mod tmpfs;
pub mod world;

pub use backend::SimBackend;
pub use disk::DiskFaults;
pub use world::PortFaults;
