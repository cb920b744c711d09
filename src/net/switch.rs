//! The switch core: ports with endpoints, MAC learning with aging, flooding,
//! hub mode and per-port counters, as vde_switch 2.3.2 does them
//! (`src/vde_switch/port.c`, `hash.c`; vde-protocol.md §4–5).
//!
//! Pure and deterministic: time comes in as an argument (a [`Duration`] since
//! the switch started; like vde_switch, learning and aging use whole seconds),
//! every table is a `BTreeMap`/`Vec`, and nothing here touches sockets. The
//! VDE daemon (`net::vde`) and the sim drive the same [`Switch`]:
//!
//! ```
//! use std::time::Duration;
//! use umltest::net::switch::{PortRequest, Switch, SwitchConfig};
//! let mut sw = Switch::new(SwitchConfig::default());
//! let p1 = sw.add_endpoint(PortRequest::Any, 10, None, "h1", Duration::ZERO).unwrap();
//! let p2 = sw.add_endpoint(PortRequest::Any, 11, None, "h2", Duration::ZERO).unwrap();
//! let frame = [0xff; 60]; // broadcast from ff:ff:... (not learned)
//! let fwd = sw.forward(p1, &frame, Duration::ZERO);
//! assert_eq!(fwd.out_ports, vec![p2]); // never back to the input port
//! ```
//!
//! Quirks kept on purpose (checked against the real vde_switch):
//! - when a port gains its first endpoint or loses its last one, the compiled-in
//!   FSTP code flushes every learned address of the port's VLAN (even with FSTP
//!   off), so the switch floods until addresses are relearned;
//! - an address seen on another port within `min persistence` (3 s) stays on
//!   its old port (the move is reported as refused);
//! - frames are not padded; frames shorter than 14 bytes are dropped.
//!
//! VLANs: every port is an untagged member of VLAN 0 (VLAN creation is not
//! implemented). As in vde_switch, an 802.1Q-tagged frame with VID 0 is
//! forwarded with its tag removed ([`Outcome::untag`]); other VIDs are dropped.
//!
//! Nothing here panics on any frame or argument.

use std::collections::BTreeMap;
use std::time::Duration;

use super::wire::{MacAddr, ETHERNET_HEADER_LEN, ETHERTYPE_VLAN};

/// Identifies an endpoint (vde_switch uses the control connection's fd number).
pub type EndpointId = u32;

/// vde_switch's defaults (`-n 32`, `--hashsize 128`, GC every 2 s, expiry 100 s,
/// min persistence 3 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Valid port numbers are `0..numports`; port 0 only on explicit request.
    pub numports: u16,
    /// Hub mode: every frame to every other port, no learning.
    pub hub: bool,
    /// Number of hash buckets (only affects `hash/print` order and numbers).
    pub hash_size: u32,
    /// Seconds between garbage collections of the MAC table.
    pub gc_interval: u64,
    /// Seconds after which an unrefreshed entry expires.
    pub expire: u64,
    /// Seconds an entry must be idle before a MAC may move to another port.
    pub min_persistence: u64,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            numports: 32,
            hub: false,
            hash_size: 128,
            gc_interval: 2,
            expire: 100,
            min_persistence: 3,
        }
    }
}

/// Which port a new endpoint asks for (the ctl request's type field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    /// Port number 0 in the request: the lowest free allocatable port ≥ 1.
    Any,
    /// A specific port, created on demand.
    Number(u16),
    /// `REQ_NEW_PORT0`: the management-class port 0.
    Port0,
}

impl PortRequest {
    /// From the number carried in a ctl request (0 = any).
    pub fn from_number(n: u32) -> Self {
        match u16::try_from(n) {
            Ok(0) => PortRequest::Any,
            Ok(n) => PortRequest::Number(n),
            Err(_) => PortRequest::Number(u16::MAX),
        }
    }
}

/// Errors of the switch core; `errno` gives the value vde_switch's console prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// No free port for an automatic request.
    #[error("no free port (all {numports} ports busy or not allocatable)")]
    NoFreePort { numports: u16 },
    /// A port number outside `0..numports`.
    #[error("port {port} out of range (the switch has ports 0..{numports})")]
    PortOutOfRange { port: u32, numports: u16 },
    /// The port belongs to another user.
    #[error("port {port} is in use by another user")]
    PortBusy { port: u16 },
    /// The port does not exist.
    #[error("port {port} does not exist")]
    NoSuchPort { port: u16 },
    /// The port already exists (`port/create`).
    #[error("port {port} already exists")]
    PortExists { port: u16 },
    /// The port still has endpoints.
    #[error("port {port} still has endpoints")]
    PortActive { port: u16 },
    /// No endpoint with that id on that port.
    #[error("no endpoint {id} on port {port}")]
    NoSuchEndpoint { port: u16, id: EndpointId },
    /// An argument out of its range.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl SwitchError {
    /// The errno vde_switch's management console reports (`1%03d <strerror>`).
    pub fn errno(&self) -> i32 {
        match self {
            SwitchError::NoFreePort { .. } => libc::ENOSPC,
            SwitchError::PortOutOfRange { .. } | SwitchError::Invalid(_) => libc::EINVAL,
            SwitchError::PortBusy { .. } | SwitchError::PortActive { .. } => libc::EADDRINUSE,
            SwitchError::NoSuchPort { .. } | SwitchError::NoSuchEndpoint { .. } => libc::ENXIO,
            SwitchError::PortExists { .. } => libc::EEXIST,
        }
    }
}

/// Per-port counters (`port/print`'s IN/OUT lines).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub in_pkts: u64,
    pub in_bytes: u64,
    pub out_pkts: u64,
    pub out_bytes: u64,
}

/// One endpoint (a connected client) of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: EndpointId,
    pub description: String,
}

/// A port: endpoints (newest first, as vde_switch lists them), flags, counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub endpoints: Vec<Endpoint>,
    /// False after `port/create` or `port/allocatable N 0`: not given to "any" requests.
    pub allocatable: bool,
    pub untagged_vlan: u16,
    /// Access control (`port/setuser`); `None` = unrestricted.
    pub user: Option<u32>,
    /// Access control (`port/setgroup`); `None` = unrestricted.
    pub group: Option<u32>,
    /// Owner of the current endpoints (`None` = NONE: abstract-socket clients).
    pub cur_user: Option<u32>,
    pub counters: PortCounters,
}

impl Port {
    fn new() -> Self {
        Port {
            endpoints: Vec::new(),
            allocatable: true,
            untagged_vlan: 0,
            user: None,
            group: None,
            cur_user: None,
            counters: PortCounters::default(),
        }
    }
    /// A port with at least one endpoint.
    pub fn is_active(&self) -> bool {
        !self.endpoints.is_empty()
    }
}

/// A learned address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashEntry {
    pub mac: MacAddr,
    pub vlan: u16,
    pub port: u16,
    /// Whole seconds since start when last seen.
    pub last_seen: u64,
    insert_seq: u64,
}

/// How a frame was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Broadcast, multicast or unknown destination: every other active port.
    Flood,
    /// Known destination on another port.
    Unicast,
    /// Hub mode: every other active port.
    Hub,
    /// Not delivered anywhere.
    Dropped(DropReason),
}

/// Why a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    TooShort,
    /// The input port has no endpoints (or does not exist).
    InactivePort,
    /// An 802.1Q-tagged frame for a VLAN the port is not in (any VID but 0).
    Tagged,
    /// The destination was learned on the input port.
    SamePort,
}

/// What learning did with the source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Source is multicast, or hub mode, or the frame was dropped before learning.
    Nothing,
    /// A new entry.
    New,
    /// Seen again on the same port.
    Refreshed,
    /// Moved from another port (vde_switch logs `MAC ... moved from port A to port B`).
    Moved { from: u16 },
    /// Seen on another port within min persistence: the entry stays on `from`
    /// (vde_switch logs the same "moved" line anyway).
    MoveRefused { from: u16 },
}

/// The result of [`Switch::forward_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub delivery: Delivery,
    pub learned: Learned,
    /// The frame carries an 802.1Q tag for VLAN 0: send it with the 4 tag bytes
    /// (12..16) removed, as vde_switch does for untagged ports.
    pub untag: bool,
}

/// The result of [`Switch::forward`]: everything a trace record needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub in_port: u16,
    /// Ascending port numbers; every endpoint of each port gets the frame.
    pub out_ports: Vec<u16>,
    pub outcome: Outcome,
}

/// The switch.
#[derive(Debug, Clone)]
pub struct Switch {
    config: SwitchConfig,
    /// Index = port number; `None` = no port structure.
    ports: Vec<Option<Port>>,
    table: BTreeMap<(u16, MacAddr), HashEntry>,
    next_gc: u64,
    insert_seq: u64,
}

impl Switch {
    /// A switch with no ports.
    pub fn new(config: SwitchConfig) -> Self {
        let mut sw = Switch {
            ports: Vec::new(),
            table: BTreeMap::new(),
            next_gc: config.gc_interval,
            insert_seq: 0,
            config,
        };
        sw.ports.resize(usize::from(sw.config.numports), None);
        sw
    }

    /// The configuration (numports, hub, timers).
    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    /// Port `n`, if it exists.
    pub fn port(&self, n: u16) -> Option<&Port> {
        self.ports.get(usize::from(n)).and_then(Option::as_ref)
    }

    /// Every existing port, ascending.
    pub fn ports(&self) -> impl Iterator<Item = (u16, &Port)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((u16::try_from(i).ok()?, p.as_ref()?)))
    }

    /// The endpoints of port `n` (empty if none).
    pub fn endpoints(&self, n: u16) -> &[Endpoint] {
        self.port(n).map(|p| p.endpoints.as_slice()).unwrap_or(&[])
    }

    /// The port an endpoint is on.
    pub fn port_of(&self, id: EndpointId) -> Option<u16> {
        self.ports()
            .find(|(_, p)| p.endpoints.iter().any(|e| e.id == id))
            .map(|(n, _)| n)
    }

    fn check_range(&self, port: u32) -> Result<u16, SwitchError> {
        match u16::try_from(port) {
            Ok(p) if p < self.config.numports => Ok(p),
            _ => Err(SwitchError::PortOutOfRange {
                port,
                numports: self.config.numports,
            }),
        }
    }

    /// `alloc_port`: the port number a request gets, creating the port structure.
    fn alloc_port(&mut self, req: PortRequest) -> Result<u16, SwitchError> {
        let n = match req {
            PortRequest::Port0 => 0,
            PortRequest::Number(n) => self.check_range(u32::from(n))?,
            PortRequest::Any => (1..self.config.numports)
                .find(|&i| match self.port(i) {
                    None => true,
                    Some(p) => !p.is_active() && p.allocatable,
                })
                .ok_or(SwitchError::NoFreePort {
                    numports: self.config.numports,
                })?,
        };
        if let Some(slot) = self.ports.get_mut(usize::from(n)) {
            if slot.is_none() {
                *slot = Some(Port::new());
            }
        }
        Ok(n)
    }

    /// Adds an endpoint (`setup_ep`): `user` is the client's uid (`None` for
    /// abstract sockets). Several endpoints may share a port if they have the
    /// same user. Returns the port number.
    pub fn add_endpoint(
        &mut self,
        req: PortRequest,
        id: EndpointId,
        user: Option<u32>,
        description: &str,
        now: Duration,
    ) -> Result<u16, SwitchError> {
        self.tick(now);
        let n = self.alloc_port(req)?;
        let hub = self.config.hub;
        let Some(port) = self.ports.get_mut(usize::from(n)).and_then(Option::as_mut) else {
            return Err(SwitchError::NoSuchPort { port: n });
        };
        let was_inactive = !port.is_active();
        if was_inactive {
            let allowed = (port.user.is_none() && port.group.is_none())
                || user == Some(0)
                || (port.user.is_some() && port.user == user);
            if !allowed {
                return Err(SwitchError::PortBusy { port: n });
            }
            port.cur_user = user;
        } else if port.cur_user != user {
            return Err(SwitchError::PortBusy { port: n });
        }
        port.endpoints.insert(
            0,
            Endpoint {
                id,
                description: description.to_string(),
            },
        );
        let vlan = port.untagged_vlan;
        if was_inactive && !hub {
            // fstaddport -> topology_change: flush the VLAN (quirk, see module doc).
            self.table.retain(|&(v, _), _| v != vlan);
        }
        Ok(n)
    }

    /// Removes endpoint `id` wherever it is; returns its port. When it was the
    /// port's last endpoint the port becomes inactive (its counters stay), its
    /// addresses are forgotten and its VLAN is flushed.
    pub fn remove_endpoint(&mut self, id: EndpointId) -> Option<u16> {
        let n = self.port_of(id)?;
        self.close_endpoint(n, id).ok()?;
        Some(n)
    }

    /// `port/epclose N ID`.
    pub fn close_endpoint(&mut self, n: u16, id: EndpointId) -> Result<(), SwitchError> {
        let n = self.check_range(u32::from(n))?;
        let hub = self.config.hub;
        let port = self
            .ports
            .get_mut(usize::from(n))
            .and_then(Option::as_mut)
            .ok_or(SwitchError::NoSuchPort { port: n })?;
        let before = port.endpoints.len();
        port.endpoints.retain(|e| e.id != id);
        let removed = port.endpoints.len() != before;
        if port.endpoints.is_empty() {
            port.cur_user = None;
            let vlan = port.untagged_vlan;
            self.table
                .retain(|&(v, _), e| e.port != n && (hub || v != vlan));
        }
        if removed {
            Ok(())
        } else {
            Err(SwitchError::NoSuchEndpoint { port: n, id })
        }
    }

    /// Runs the garbage collector if its interval has passed (vde_switch's
    /// 2-second timer). `forward` and `add_endpoint` call it; an idle daemon
    /// should call it too so that `hash/print` ages out entries.
    pub fn tick(&mut self, now: Duration) {
        let now_s = now.as_secs();
        if now_s < self.next_gc {
            return;
        }
        let expire = self.config.expire;
        self.table.retain(|_, e| e.last_seen + expire >= now_s);
        let interval = self.config.gc_interval.max(1);
        // The next timer tick strictly after now, on the interval grid.
        self.next_gc = (now_s / interval + 1) * interval;
    }

    /// Decides where `frame`, received on `in_port` at `now`, goes: the output
    /// ports are written to `out` (cleared first, ascending). Updates learning
    /// and counters. Allocation-free once `out` has capacity.
    pub fn forward_into(
        &mut self,
        in_port: u16,
        frame: &[u8],
        now: Duration,
        out: &mut Vec<u16>,
    ) -> Outcome {
        out.clear();
        let dropped = |r| Outcome {
            delivery: Delivery::Dropped(r),
            learned: Learned::Nothing,
            untag: false,
        };
        let (Some(dst), Some(src), Some(ethertype)) = (
            MacAddr::from_slice(frame),
            frame.get(6..12).and_then(MacAddr::from_slice),
            frame
                .get(12..ETHERNET_HEADER_LEN)
                .map(|b| u16::from_be_bytes([b[0], b[1]])),
        ) else {
            return dropped(DropReason::TooShort);
        };
        self.tick(now);
        let Some(port) = self
            .ports
            .get_mut(usize::from(in_port))
            .and_then(Option::as_mut)
            .filter(|p| p.is_active())
        else {
            return dropped(DropReason::InactivePort);
        };
        port.counters.in_pkts += 1;
        port.counters.in_bytes += frame.len() as u64;
        if self.config.hub {
            self.all_active_except(in_port, out);
            self.count_out(out, frame.len());
            return Outcome {
                delivery: Delivery::Hub,
                learned: Learned::Nothing,
                untag: false,
            };
        }
        let vlan = port.untagged_vlan;
        let untag = ethertype == ETHERTYPE_VLAN;
        if untag {
            let vid = frame
                .get(14..16)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) & 0xfff);
            if vid != Some(vlan) {
                return dropped(DropReason::Tagged);
            }
        }
        let learned = if src.is_multicast() {
            Learned::Nothing
        } else {
            self.learn(src, vlan, in_port, now.as_secs())
        };
        let target = if dst.is_multicast() {
            None
        } else {
            self.table.get(&(vlan, dst)).map(|e| e.port)
        };
        let delivery = match target {
            Some(t) if t == in_port => Delivery::Dropped(DropReason::SamePort),
            Some(t) => {
                out.push(t);
                Delivery::Unicast
            }
            None => {
                self.all_active_except(in_port, out);
                Delivery::Flood
            }
        };
        let out_len = if untag { frame.len() - 4 } else { frame.len() };
        self.count_out(out, out_len);
        Outcome {
            delivery,
            learned,
            untag,
        }
    }

    /// [`Switch::forward_into`] returning a fresh record (allocates).
    pub fn forward(&mut self, in_port: u16, frame: &[u8], now: Duration) -> Forwarded {
        let mut out_ports = Vec::new();
        let outcome = self.forward_into(in_port, frame, now, &mut out_ports);
        Forwarded {
            in_port,
            out_ports,
            outcome,
        }
    }

    fn all_active_except(&self, in_port: u16, out: &mut Vec<u16>) {
        out.extend(
            self.ports()
                .filter(|&(n, p)| n != in_port && p.is_active())
                .map(|(n, _)| n),
        );
    }

    fn count_out(&mut self, out: &[u16], len: usize) {
        for &n in out {
            if let Some(Some(p)) = self.ports.get_mut(usize::from(n)) {
                p.counters.out_pkts += 1;
                p.counters.out_bytes += len as u64;
            }
        }
    }

    /// `find_in_hash_update`.
    fn learn(&mut self, mac: MacAddr, vlan: u16, port: u16, now_s: u64) -> Learned {
        let minper = self.config.min_persistence;
        match self.table.get_mut(&(vlan, mac)) {
            None => {
                self.insert_seq += 1;
                self.table.insert(
                    (vlan, mac),
                    HashEntry {
                        mac,
                        vlan,
                        port,
                        last_seen: now_s,
                        insert_seq: self.insert_seq,
                    },
                );
                Learned::New
            }
            Some(e) if e.port == port => {
                e.last_seen = now_s;
                Learned::Refreshed
            }
            Some(e) => {
                let from = e.port;
                if now_s.saturating_sub(e.last_seen) > minper {
                    e.port = port;
                    e.last_seen = now_s;
                    Learned::Moved { from }
                } else {
                    Learned::MoveRefused { from }
                }
            }
        }
    }

    /// The port a MAC is learned on (VLAN 0 unless given).
    pub fn lookup(&self, mac: MacAddr, vlan: u16) -> Option<&HashEntry> {
        self.table.get(&(vlan, mac))
    }

    /// vde_switch's bucket number of an entry (`calc_hash` of the MAC+VLAN key).
    pub fn bucket(&self, mac: MacAddr, vlan: u16) -> u32 {
        let m = mac.0;
        let key = u64::from(u32::from_le_bytes([m[0], m[1], m[2], m[3]])).wrapping_add(
            (u64::from(u16::from_le_bytes([m[4], m[5]])) + (u64::from(vlan) << 16)) << 32,
        );
        let mut h = key;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        let size = self.config.hash_size.max(1).next_power_of_two();
        (h & u64::from(size - 1)) as u32
    }

    /// The table in `hash/print` order: by bucket, newest first within a bucket.
    pub fn table(&self) -> Vec<(u32, HashEntry)> {
        let mut v: Vec<(u32, HashEntry)> = self
            .table
            .values()
            .map(|e| (self.bucket(e.mac, e.vlan), *e))
            .collect();
        v.sort_by_key(|(b, e)| (*b, std::cmp::Reverse(e.insert_seq)));
        v
    }

    /// `hash/setsize N`: flushes the table (sizes are rounded up to a power of two).
    pub fn set_hash_size(&mut self, n: i64) -> Result<u32, SwitchError> {
        if n <= 0 {
            return Err(SwitchError::Invalid(format!("hash size {n}")));
        }
        let size = u32::try_from(n)
            .ok()
            .and_then(u32::checked_next_power_of_two)
            .ok_or_else(|| SwitchError::Invalid(format!("hash size {n}")))?;
        self.table.clear();
        self.config.hash_size = size;
        Ok(size)
    }

    /// `hash/setgcint`, `hash/setexpire`, `hash/setminper`.
    pub fn set_timers(
        &mut self,
        gc_interval: Option<u64>,
        expire: Option<u64>,
        minper: Option<u64>,
    ) {
        if let Some(g) = gc_interval {
            self.config.gc_interval = g;
        }
        if let Some(e) = expire {
            self.config.expire = e;
        }
        if let Some(m) = minper {
            self.config.min_persistence = m;
        }
    }

    /// `port/sethub 0/1`.
    pub fn set_hub(&mut self, hub: bool) {
        self.config.hub = hub;
    }

    /// `port/setnumports N`: refused while a port at or above N exists.
    pub fn set_numports(&mut self, n: i64) -> Result<(), SwitchError> {
        let n = u16::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| SwitchError::Invalid(format!("number of ports {n}")))?;
        if self.ports.iter().skip(usize::from(n)).any(Option::is_some) {
            return Err(SwitchError::PortActive { port: n });
        }
        self.ports.resize(usize::from(n), None);
        self.config.numports = n;
        Ok(())
    }

    /// `port/create N`: a not-allocatable, inactive port.
    pub fn create_port(&mut self, n: i64) -> Result<(), SwitchError> {
        let n = self.check_range(u32::try_from(n).unwrap_or(u32::MAX))?;
        if self.port(n).is_some() {
            return Err(SwitchError::PortExists { port: n });
        }
        self.alloc_port(PortRequest::Number(n))?;
        if let Some(Some(p)) = self.ports.get_mut(usize::from(n)) {
            p.allocatable = false;
        }
        Ok(())
    }

    /// `port/createauto`: like `port/create` on the port an "any" request would get.
    pub fn create_port_auto(&mut self) -> Result<u16, SwitchError> {
        let n = self.alloc_port(PortRequest::Any)?;
        if let Some(Some(p)) = self.ports.get_mut(usize::from(n)) {
            p.allocatable = false;
        }
        Ok(n)
    }

    fn port_mut(&mut self, n: i64) -> Result<&mut Port, SwitchError> {
        let n = self.check_range(u32::try_from(n).unwrap_or(u32::MAX))?;
        self.ports
            .get_mut(usize::from(n))
            .and_then(Option::as_mut)
            .ok_or(SwitchError::NoSuchPort { port: n })
    }

    /// `port/remove N`.
    pub fn remove_port(&mut self, n: i64) -> Result<(), SwitchError> {
        let port = self.port_mut(n)?;
        if port.is_active() {
            return Err(SwitchError::PortActive { port: n as u16 });
        }
        if let Some(slot) = self.ports.get_mut(n as usize) {
            *slot = None;
        }
        Ok(())
    }

    /// `port/allocatable N 0/1`.
    pub fn set_allocatable(&mut self, n: i64, allocatable: bool) -> Result<(), SwitchError> {
        self.port_mut(n)?.allocatable = allocatable;
        Ok(())
    }

    /// `port/setuser N uid` / `port/setgroup N gid` (`None` = NONE/ANY).
    pub fn set_access(
        &mut self,
        n: i64,
        user: Option<Option<u32>>,
        group: Option<Option<u32>>,
    ) -> Result<(), SwitchError> {
        let p = self.port_mut(n)?;
        if let Some(u) = user {
            p.user = u;
        }
        if let Some(g) = group {
            p.group = g;
        }
        Ok(())
    }

    /// `port/resetcounter [N]`.
    pub fn reset_counters(&mut self, n: Option<i64>) -> Result<(), SwitchError> {
        match n {
            Some(n) => {
                let n = self.check_range(u32::try_from(n).unwrap_or(u32::MAX))?;
                if let Some(Some(p)) = self.ports.get_mut(usize::from(n)) {
                    p.counters = PortCounters::default();
                }
            }
            None => {
                for p in self.ports.iter_mut().flatten() {
                    p.counters = PortCounters::default();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0xfe, 0xfd, 0, 0, 0, n])
    }

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x08, 0x06]);
        f.resize(42, 0);
        f
    }

    const S: Duration = Duration::ZERO;

    fn switch_with(ports: &[u16], hub: bool) -> Switch {
        let mut sw = Switch::new(SwitchConfig {
            hub,
            ..SwitchConfig::default()
        });
        for (i, &p) in ports.iter().enumerate() {
            let got = sw
                .add_endpoint(PortRequest::Number(p), i as u32 + 10, None, "", S)
                .unwrap();
            assert_eq!(got, p);
        }
        sw
    }

    /// Each row: frames (in port, dst host, src host) sent in order on ports 1,2,3;
    /// the last frame's output ports. Host 0 = broadcast.
    #[rstest]
    #[case::broadcast_floods(false, &[(1, 0, 1)], &[2, 3])]
    #[case::unknown_floods(false, &[(1, 2, 1)], &[2, 3])]
    #[case::learned_unicast(false, &[(2, 0, 2), (1, 2, 1)], &[2])]
    #[case::reply_after_learning(false, &[(1, 0, 1), (2, 1, 2)], &[1])]
    #[case::same_port_dropped(false, &[(1, 0, 1), (1, 1, 9)], &[])]
    #[case::multicast_src_not_learned(false, &[(2, 1, 0), (1, 0, 1)], &[2, 3])]
    #[case::multicast_dst_floods(false, &[(2, 0, 2), (1, 0x80, 1)], &[2, 3])]
    #[case::hub_floods_known(true, &[(2, 0, 2), (1, 2, 1)], &[2, 3])]
    #[case::hub_never_back(true, &[(3, 3, 3)], &[1, 2])]
    fn forwarding_decisions(
        #[case] hub: bool,
        #[case] frames: &[(u16, u8, u8)],
        #[case] expect: &[u16],
    ) {
        let mut sw = switch_with(&[1, 2, 3], hub);
        let host = |n: u8| match n {
            0 => MacAddr::BROADCAST,
            0x80 => MacAddr([0x01, 0, 0x5e, 0, 0, 1]),
            n => mac(n),
        };
        let mut last = None;
        for &(p, d, s) in frames {
            let src = if s == 0 {
                MacAddr([0x33, 0x33, 0, 0, 0, 1])
            } else {
                host(s)
            };
            last = Some(sw.forward(p, &frame(host(d), src), S));
        }
        assert_eq!(last.unwrap().out_ports, expect);
    }

    #[rstest]
    // Aging: entries expire when last_seen + 100 < now, checked every 2 s.
    #[case::fresh(50, Delivery::Unicast)]
    #[case::at_expiry(100, Delivery::Unicast)]
    #[case::gc_after_expiry(102, Delivery::Flood)]
    fn aging(#[case] at: u64, #[case] expect: Delivery) {
        let mut sw = switch_with(&[1, 2, 3], false);
        sw.forward(2, &frame(MacAddr::BROADCAST, mac(2)), S);
        let f = sw.forward(1, &frame(mac(2), mac(1)), Duration::from_secs(at));
        assert_eq!(f.outcome.delivery, expect);
    }

    #[rstest]
    #[case::within_min_persistence(3, Learned::MoveRefused { from: 1 }, 1)]
    #[case::after_min_persistence(4, Learned::Moved { from: 1 }, 2)]
    fn moves(#[case] at: u64, #[case] learned: Learned, #[case] port: u16) {
        let mut sw = switch_with(&[1, 2, 3], false);
        sw.forward(1, &frame(MacAddr::BROADCAST, mac(7)), S);
        let f = sw.forward(
            2,
            &frame(MacAddr::BROADCAST, mac(7)),
            Duration::from_secs(at),
        );
        assert_eq!(f.outcome.learned, learned);
        assert_eq!(sw.lookup(mac(7), 0).unwrap().port, port);
    }

    #[test]
    fn new_endpoint_flushes_the_table() {
        let mut sw = switch_with(&[1, 2], false);
        sw.forward(2, &frame(MacAddr::BROADCAST, mac(2)), S);
        assert!(sw.lookup(mac(2), 0).is_some());
        // A second endpoint on an active port: no flush.
        sw.add_endpoint(PortRequest::Number(2), 99, None, "", S)
            .unwrap();
        assert!(sw.lookup(mac(2), 0).is_some());
        // A new port becomes active: flush.
        sw.add_endpoint(PortRequest::Any, 100, None, "", S).unwrap();
        assert!(sw.lookup(mac(2), 0).is_none());
        sw.forward(2, &frame(MacAddr::BROADCAST, mac(2)), S);
        sw.forward(1, &frame(MacAddr::BROADCAST, mac(1)), S);
        // Port 3's last endpoint leaves: flush again.
        assert_eq!(sw.remove_endpoint(100), Some(3));
        assert!(sw.lookup(mac(1), 0).is_none() && sw.lookup(mac(2), 0).is_none());
    }

    #[test]
    fn port_allocation_like_vde_switch() {
        // numports 4, port 2 created not-allocatable: any -> 1, 3, then none;
        // explicit 2 works (vde-protocol.md §4).
        let mut sw = Switch::new(SwitchConfig {
            numports: 4,
            ..SwitchConfig::default()
        });
        sw.create_port(2).unwrap();
        assert_eq!(sw.add_endpoint(PortRequest::Any, 1, None, "", S), Ok(1));
        assert_eq!(sw.add_endpoint(PortRequest::Any, 2, None, "", S), Ok(3));
        assert!(matches!(
            sw.add_endpoint(PortRequest::Any, 3, None, "", S),
            Err(SwitchError::NoFreePort { .. })
        ));
        assert_eq!(
            sw.add_endpoint(PortRequest::Number(2), 4, None, "", S),
            Ok(2)
        );
        assert!(matches!(
            sw.add_endpoint(PortRequest::Number(4), 5, None, "", S),
            Err(SwitchError::PortOutOfRange { .. })
        ));
        // Same user shares a port; another user is refused.
        assert_eq!(
            sw.add_endpoint(PortRequest::Number(1), 6, None, "", S),
            Ok(1)
        );
        assert_eq!(
            sw.add_endpoint(PortRequest::Number(1), 7, Some(1000), "", S),
            Err(SwitchError::PortBusy { port: 1 })
        );
        assert_eq!(
            sw.endpoints(1).iter().map(|e| e.id).collect::<Vec<_>>(),
            [6, 1]
        );
        // A freed port is reused by the next "any" request; counters persist.
        sw.remove_endpoint(2);
        assert_eq!(sw.add_endpoint(PortRequest::Any, 8, None, "", S), Ok(3));
    }

    #[test]
    fn counters() {
        let mut sw = switch_with(&[1, 2, 3], false);
        sw.forward(1, &frame(MacAddr::BROADCAST, mac(1)), S);
        sw.forward(2, &frame(mac(1), mac(2)), S);
        let c = |n| sw.port(n).unwrap().counters;
        assert_eq!(
            c(1),
            PortCounters {
                in_pkts: 1,
                in_bytes: 42,
                out_pkts: 1,
                out_bytes: 42
            }
        );
        assert_eq!(
            c(2),
            PortCounters {
                in_pkts: 1,
                in_bytes: 42,
                out_pkts: 1,
                out_bytes: 42
            }
        );
        assert_eq!(
            c(3),
            PortCounters {
                in_pkts: 0,
                in_bytes: 0,
                out_pkts: 1,
                out_bytes: 42
            }
        );
    }

    #[test]
    fn short_tagged_and_inactive() {
        let mut sw = switch_with(&[1, 2], false);
        assert_eq!(
            sw.forward(1, &[0; 13], S).outcome.delivery,
            Delivery::Dropped(DropReason::TooShort)
        );
        let mut f = frame(MacAddr::BROADCAST, mac(1));
        f[12..16].copy_from_slice(&[0x81, 0, 0, 5]);
        assert_eq!(
            sw.forward(1, &f, S).outcome.delivery,
            Delivery::Dropped(DropReason::Tagged)
        );
        // VID 0 (priority 1) is forwarded, to be sent untagged.
        f[12..16].copy_from_slice(&[0x81, 0, 0x20, 0]);
        let fwd = sw.forward(1, &f, S);
        assert_eq!((fwd.out_ports, fwd.outcome.untag), (vec![2], true));
        assert_eq!(
            sw.forward(1, &f[..15], S).outcome.delivery,
            Delivery::Dropped(DropReason::Tagged)
        );
        assert_eq!(
            sw.forward(9, &frame(MacAddr::BROADCAST, mac(1)), S)
                .outcome
                .delivery,
            Delivery::Dropped(DropReason::InactivePort)
        );
        assert_eq!(sw.forward(999, &[0; 60], S).out_ports, Vec::<u16>::new());
    }

    proptest! {
        /// Any sequence of datagrams on any ports (with joins and leaves) never
        /// panics and never delivers a frame to its own input port.
        #[test]
        fn never_back_to_source(
            ops in proptest::collection::vec(
                (0u8..4, 0u16..40, proptest::collection::vec(any::<u8>(), 0..80), 0u64..300),
                0..200),
            hub in any::<bool>(),
        ) {
            let mut sw = Switch::new(SwitchConfig { numports: 8, hub, ..SwitchConfig::default() });
            let mut t = 0u64;
            for (i, (kind, port, mut bytes, dt)) in ops.into_iter().enumerate() {
                t += dt;
                let now = Duration::from_millis(t * 10);
                match kind {
                    0 => { let _ = sw.add_endpoint(PortRequest::from_number(u32::from(port % 10)), i as u32, None, "", now); }
                    1 => { sw.remove_endpoint(port.into()); }
                    _ => {
                        // Bias towards a few MACs so learning kicks in.
                        if bytes.len() >= 12 { bytes[1..6].fill(0); bytes[7..12].fill(0); bytes[0] &= 0x03; bytes[6] &= 0x03; }
                        let f = sw.forward(port % 10, &bytes, now);
                        prop_assert!(!f.out_ports.contains(&f.in_port));
                        for w in f.out_ports.windows(2) { prop_assert!(w[0] < w[1]); }
                        for p in &f.out_ports { prop_assert!(sw.port(*p).is_some_and(Port::is_active)); }
                    }
                }
            }
        }
    }
}
