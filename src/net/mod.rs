//! Networking: Ethernet/ARP frames and captures (`wire`), the switch core
//! (`switch`) and the VDE-compatible switch daemon (`vde`).
//!
//! The sim and the `uml` backend share [`switch::Switch`] and [`wire`], so a
//! trace line means the same thing on both backends.

pub mod switch;
pub mod vde;
pub mod wire;
