//! The VDE switch daemon: vde_switch's control protocol ([`proto`]), its
//! management console ([`console`]) and the socket loop.
pub mod console;
pub mod proto;
pub mod daemon;
pub mod client;
