//! The VDE switch daemon: vde_switch's control protocol ([`proto`]), its
//! management console ([`console`]) and the socket loop.
pub mod bench;
pub mod capture;
pub mod client;
pub mod console;
pub mod daemon;
pub mod proto;
