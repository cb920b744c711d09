//! Networking: Ethernet/ARP frames and captures (`wire`), the switch core
//! (`switch`) and the VDE-compatible switch daemon (`vde`).
