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
//! - [`rng`]: one seed, derived per-component streams.
//!
//! Nothing in here reads the wall clock or iterates a hash map.

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
