//! A machine's IPv4 link layer: interfaces, addresses, sysctls, the neighbour
//! table, ARP answering as Linux 6.1 does it (`net/ipv4/arp.c`, digest in
//! `../shared/spec/arping-and-arp.md` §6), and ICMP echo answering
//! (`net/ipv4/icmp.c` `icmp_echo`/`icmp_reply`), with the neighbour
//! resolution the reply needs: the neighbour state machine of
//! `net/core/neighbour.c` (`__neigh_event_send`, `neigh_update`,
//! `neigh_timer_handler`) with `arp_solicit`'s requests, on the virtual clock,
//! and the link events that empty a device's table (`neigh_ifdown`,
//! `neigh_carrier_down`).
//!
//! Not modelled: routing between interfaces (a reply leaves on the interface
//! the request came in on); neighbour garbage collection (`neigh_periodic_work`
//! and `neigh_forced_gc` only remove entries once a table holds
//! `gc_thresh1` = 128 of them, so in a lab a FAILED or STALE entry stays, as
//! `ip neigh` on a UML 6.1 guest shows); `app_solicit` (0 by default).
//!
//! Pure: [`Stack::receive`] takes a frame and the virtual time and returns what
//! the kernel sends in answer, [`Stack::run_timers`] what the neighbour timers
//! send at a given time; the random `reachable_time` comes from the stack's
//! seeded stream. Nothing here touches a clock, a socket or a file.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::sim::rng::{self, Rng};

use crate::net::wire::{
    ArpOp, ArpRepr, EthernetRepr, IcmpEchoRepr, MacAddr, ETHERTYPE_ARP, ETHERTYPE_IPV4,
};

/// Length of an ARP frame without padding: what Linux (and UML's transports) send.
pub const ARP_FRAME_LEN: usize = 42;

/// An IPv4 address on an interface (`ip addr add 1.1.1.1/24 dev eth0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    /// The broadcast address; `ip addr add` without `brd` leaves 0.0.0.0.
    pub brd: Ipv4Addr,
}

impl IfAddr {
    fn mask(&self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p.min(32))),
        }
    }
    /// The netmask as an address (`255.255.255.0`).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }
    /// True if `ip` is in this address's subnet (`inet_ifa_match`).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) ^ u32::from(self.addr)) & self.mask() == 0
    }
}

/// Interface counters, as `ifconfig` shows them. UML counts received bytes after
/// the Ethernet header was pulled (a 42-byte frame counts 28), sent bytes whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// A network interface (`lo` or a UML `ethN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub mac: MacAddr,
    pub loopback: bool,
    /// Administratively up (`ip link set eth0 up`).
    pub up: bool,
    /// Carrier: the cable is in the switch (scenario `link down/up`).
    pub carrier: bool,
    /// Set once the interface was up: the qdisc then reads `pfifo_fast`.
    pub was_up: bool,
    /// Number of open promiscuous captures (tcpdump).
    pub promisc: u32,
    pub addrs: Vec<IfAddr>,
    pub counters: Counters,
}

impl Iface {
    /// The loopback interface as a fresh UML guest has it: down, no address.
    pub fn loopback() -> Self {
        Self {
            name: "lo".into(),
            mac: MacAddr([0; 6]),
            loopback: true,
            up: false,
            carrier: true,
            was_up: false,
            promisc: 0,
            addrs: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// A UML Ethernet device, down, with its cable in.
    pub fn ethernet(name: &str, mac: MacAddr) -> Self {
        Self {
            name: name.into(),
            mac,
            loopback: false,
            up: false,
            carrier: true,
            was_up: false,
            promisc: 0,
            addrs: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// Up and carrier: frames flow (`IFF_RUNNING`).
    pub fn running(&self) -> bool {
        self.up && self.carrier
    }
}

/// `neigh_update`'s NEIGH_UPDATE_F_OVERRIDE (a new address may replace a
/// valid one) and NEIGH_UPDATE_F_ADMIN (an administrator's change, which
/// alone may touch a permanent entry).
#[derive(Debug, Clone, Copy)]
struct UpdateFlags {
    override_: bool,
    admin: bool,
}

impl UpdateFlags {
    const OVERRIDE: Self = Self {
        override_: true,
        admin: false,
    };
}

/// Neighbour states (`include/net/neighbour.h` NUD_*), as `ip neigh` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NudState {
    Incomplete,
    Reachable,
    Stale,
    Delay,
    Probe,
    Failed,
    /// Set by an administrator (`arp -s`): never timed out nor probed, and
    /// ARP traffic does not change it (`NEIGH_UPDATE_F_ADMIN` only).
    Permanent,
}

impl NudState {
    pub fn name(self) -> &'static str {
        match self {
            NudState::Incomplete => "INCOMPLETE",
            NudState::Reachable => "REACHABLE",
            NudState::Stale => "STALE",
            NudState::Delay => "DELAY",
            NudState::Probe => "PROBE",
            NudState::Failed => "FAILED",
            NudState::Permanent => "PERMANENT",
        }
    }
    /// NUD_VALID: the entry has a link-layer address (`ip neigh` shows it).
    pub fn valid(self) -> bool {
        matches!(
            self,
            NudState::Reachable
                | NudState::Stale
                | NudState::Delay
                | NudState::Probe
                | NudState::Permanent
        )
    }
    /// NUD_CONNECTED (of the states modelled): confirmed recently, or permanent.
    fn connected(self) -> bool {
        matches!(self, NudState::Reachable | NudState::Permanent)
    }
    /// NUD_IN_TIMER: a timer runs while the entry is in this state.
    fn in_timer(self) -> bool {
        matches!(
            self,
            NudState::Incomplete | NudState::Reachable | NudState::Delay | NudState::Probe
        )
    }
}

/// A neighbour table entry (`struct neighbour`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The link-layer address; meaningful only in a [`NudState::valid`] state.
    pub lladdr: MacAddr,
    pub state: NudState,
    pub updated: Duration,
    /// Last time a packet went out through the slow path (`neigh_event_send`).
    pub used: Duration,
    /// Last confirmation of reachability; None for "long ago" (Linux sets
    /// `jiffies - 2 * base_reachable_time`, older than any check looks).
    pub confirmed: Option<Duration>,
    /// `neigh->probes`, as `ip neigh` shows it: resolution starts it at
    /// `ucast_solicit` (3) and counts each request (4 after one; a UML 6.1
    /// guest shows `probes 6 FAILED` after three unanswered ones); PROBE
    /// restarts it at 0; entries learnt from the peer have 0.
    pub probes: u32,
    /// When the entry's timer fires (`neigh->timer`), if it runs.
    pub timer: Option<Duration>,
    /// Frames waiting for the address (NUD_INCOMPLETE), destination still zero.
    pub queue: VecDeque<Vec<u8>>,
}

impl Neighbour {
    /// A fresh entry (`___neigh_create`): NUD_NONE becomes a state at once,
    /// so the caller gives it.
    fn new(state: NudState, now: Duration) -> Self {
        Self {
            lladdr: MacAddr([0; 6]),
            state,
            updated: now,
            used: now,
            confirmed: None,
            probes: 0,
            timer: None,
            queue: VecDeque::new(),
        }
    }
}

/// Neighbour parameters (`net.ipv4.neigh.<dev>.*`) with Linux 6.1's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NeighParms {
    mcast_solicit: u32,
    ucast_solicit: u32,
    retrans_time: Duration,
    delay_first_probe_time: Duration,
    base_reachable_time: Duration,
    locktime: Duration,
}

/// `neigh_periodic_work` runs every `base_reachable_time / 2` and re-draws
/// every `reachable_time` once this much passed since the last draw.
const REDRAW_AFTER: Duration = Duration::from_secs(300);

/// The guest kernel's tick (CONFIG_HZ=100 in the Debian linux.uml 6.1).
const JIFFY: Duration = Duration::from_millis(10);

/// When a kernel timer armed at `now` for `delay` later really fires: the
/// timer wheel (`kernel/time/timer.c` `calc_index`) rounds the expiry in
/// jiffies up to the granularity of the level its distance falls in (8
/// levels, 64 buckets each, 8 times coarser per level), always at least one
/// jiffy: a 1 s timer fires 1.01 to 1.08 s later (a UML guest's ARP retries
/// were 1.029 s and 1.034 s apart).
pub fn timer_expiry(now: Duration, delay: Duration) -> Duration {
    let jiffy = JIFFY.as_nanos() as u64;
    let now_j = now.as_nanos() as u64 / jiffy;
    let delta = u64::try_from(delay.as_nanos())
        .unwrap_or(u64::MAX)
        .div_ceil(jiffy);
    let expires = now_j.saturating_add(delta);
    // LVL_START(n) = 63 << 3(n-1); level n has granularity 8^n jiffies.
    let mut lvl = 0u32;
    while lvl < 7 && delta >= 63u64 << (3 * lvl) {
        lvl += 1;
    }
    let shift = 3 * lvl;
    let bucket = ((expires >> shift).saturating_add(1)).saturating_mul(1 << shift);
    Duration::from_nanos(bucket.saturating_mul(jiffy))
}

/// Why a received frame produced no answer (for tests and traces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not ARP, or not for this host: ignored by the ARP layer.
    NotArp,
    /// Dropped by `arp_rcv`/`arp_process` before any decision.
    Dropped(&'static str),
    /// Processed: maybe answered, maybe the neighbour table changed.
    Processed,
}

/// The per-machine IPv4 link layer.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Index 0 is `lo`; then the Ethernet devices in ifindex order.
    pub ifaces: Vec<Iface>,
    /// Neighbour table keyed by (interface index, address): ordered for output.
    pub neigh: BTreeMap<(usize, Ipv4Addr), Neighbour>,
    /// `net.ipv4.conf.*` and friends (see [`crate::sim::sysctl`]).
    pub sysctl: BTreeMap<String, String>,
    /// The next IP identification for packets the kernel sends (Linux hashes
    /// per destination from a random key; the sim counts from a seeded start).
    pub ip_ident: u16,
    /// Per interface, its `reachable_time` (drawn on first use) and the
    /// `base_reachable_time` it was drawn from.
    reachable: Vec<(Duration, Duration)>,
    /// When `reachable_time` was last re-drawn (None until the table's own
    /// value is drawn), and the next periodic work.
    last_rand: Option<Duration>,
    next_work: Duration,
    /// The stream `reachable_time` is drawn from.
    rng: Rng,
}

/// Cap on frames queued for one unresolved neighbour (Linux counts bytes,
/// `unres_qlen_bytes`; the oldest are dropped first as there).
const RESOLVE_QUEUE: usize = 100;

fn is_multicast(ip: Ipv4Addr) -> bool {
    ip.octets()[0] & 0xf0 == 0xe0
}

impl Stack {
    /// A stack with `lo` and the given Ethernet devices.
    pub fn new(eths: Vec<Iface>) -> Self {
        let mut ifaces = vec![Iface::loopback()];
        ifaces.extend(eths);
        let mut stack = Self {
            ifaces,
            neigh: BTreeMap::new(),
            sysctl: BTreeMap::new(),
            ip_ident: 0,
            reachable: Vec::new(),
            last_rand: None,
            next_work: Duration::ZERO,
            rng: rng::stream(0, "neigh"),
        };
        stack.sysctl = crate::sim::sysctl::defaults(&stack.iface_names());
        stack
    }

    /// Gives the stack its random stream (the machine's, from the scenario
    /// seed); `reachable_time` values are drawn from it.
    pub fn seed_neigh(&mut self, rng: Rng) {
        self.rng = rng;
        self.reachable.clear();
        self.last_rand = None;
    }

    pub fn iface_names(&self) -> Vec<String> {
        self.ifaces.iter().map(|i| i.name.clone()).collect()
    }

    /// Index of the interface called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.ifaces.iter().position(|i| i.name == name)
    }

    /// A per-interface `net.ipv4.conf` value combined with `all` as the kernel
    /// does: `max` for `arp_ignore` (IN_DEV_MAXCONF), `or` for the booleans.
    fn conf(&self, iface: usize, key: &str, max: bool) -> i64 {
        let get = |scope: &str| {
            self.sysctl
                .get(&format!("net.ipv4.conf.{scope}.{key}"))
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(0)
        };
        let all = get("all");
        let dev = self
            .ifaces
            .get(iface)
            .map(|i| get(&i.name.replace('.', "/")))
            .unwrap_or(0);
        if max {
            all.max(dev)
        } else {
            i64::from(all != 0 || dev != 0)
        }
    }

    /// True if `ip` is a local address of the host on any interface
    /// (`inet_addr_type == RTN_LOCAL`).
    pub fn is_local(&self, ip: Ipv4Addr) -> bool {
        self.ifaces
            .iter()
            .any(|i| i.up && i.addrs.iter().any(|a| a.addr == ip))
    }

    /// True if `ip` is a broadcast address for this host (RTN_BROADCAST).
    fn is_broadcast(&self, ip: Ipv4Addr) -> bool {
        ip == Ipv4Addr::BROADCAST
            || self.ifaces.iter().any(|i| {
                i.up && i
                    .addrs
                    .iter()
                    .any(|a| a.brd == ip && a.brd != Ipv4Addr::UNSPECIFIED)
            })
    }

    /// `arp_ignore(in_dev, sip, tip)`: true means "do not answer".
    fn arp_ignore(&self, iface: usize, sip: Ipv4Addr, tip: Ipv4Addr) -> bool {
        let on_dev = |dev: usize, sip: Option<Ipv4Addr>| {
            self.ifaces.get(dev).is_some_and(|i| {
                i.addrs
                    .iter()
                    .any(|a| a.addr == tip && sip.is_none_or(|s| a.contains(s)))
            })
        };
        match self.conf(iface, "arp_ignore", true) {
            1 => !on_dev(iface, None),
            2 => !on_dev(iface, (sip != Ipv4Addr::UNSPECIFIED).then_some(sip)),
            // Scope link or wider, on any device: every address `ip addr add`
            // makes is global; only loopback addresses are host scope.
            3 => !self
                .ifaces
                .iter()
                .any(|i| !i.loopback && i.addrs.iter().any(|a| a.addr == tip)),
            8 => true,
            _ => false,
        }
    }

    /// A frame arrived on interface `iface` (already counted by the NIC).
    /// Returns the kernel's answers to send on that interface.
    pub fn receive(
        &mut self,
        iface: usize,
        frame: &[u8],
        now: Duration,
    ) -> (Verdict, Vec<Vec<u8>>) {
        if self.ifaces.get(iface).is_none() {
            return (Verdict::NotArp, Vec::new());
        }
        let Ok(eth) = EthernetRepr::parse(frame) else {
            return (Verdict::NotArp, Vec::new());
        };
        if eth.ethertype == ETHERTYPE_IPV4 {
            return self.receive_ipv4(iface, frame, now);
        }
        if eth.ethertype != ETHERTYPE_ARP {
            return (Verdict::NotArp, Vec::new());
        }
        self.receive_arp(iface, frame, now)
    }

    /// The ARP half of [`Stack::receive`] (`arp_rcv` and `arp_process`).
    fn receive_arp(
        &mut self,
        iface: usize,
        frame: &[u8],
        now: Duration,
    ) -> (Verdict, Vec<Vec<u8>>) {
        let (verdict, answer, flushed) = self.arp_process(iface, frame, now);
        let mut out: Vec<Vec<u8>> = answer.into_iter().collect();
        // Frames that waited for this neighbour go out after the answer.
        out.extend(flushed);
        (verdict, out)
    }

    /// `arp_rcv` and `arp_process`: the verdict, the answer, and the frames
    /// a neighbour update released.
    fn arp_process(
        &mut self,
        iface: usize,
        frame: &[u8],
        now: Duration,
    ) -> (Verdict, Option<Vec<u8>>, Vec<Vec<u8>>) {
        let none = |v| (v, None, Vec::new());
        let Some(dev) = self.ifaces.get(iface) else {
            return none(Verdict::NotArp);
        };
        let Ok(eth) = EthernetRepr::parse(frame) else {
            return none(Verdict::NotArp);
        };
        // arp_rcv: PACKET_OTHERHOST frames are dropped even in promiscuous mode.
        if eth.dst != dev.mac && !eth.dst.is_multicast() {
            return none(Verdict::Dropped("unicast to another host"));
        }
        if frame.len() < ARP_FRAME_LEN {
            return none(Verdict::Dropped("shorter than an ARP header"));
        }
        // Header fields checked by arp_rcv/arp_process before ArpRepr's
        // Ethernet/IPv4 restriction: hrd may also be 6 (IEEE 802).
        let field = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
        let (hrd, pro, hln, pln) = (field(14), field(16), frame[18], frame[19]);
        if hln != 6 || pln != 4 {
            return none(Verdict::Dropped("address lengths are not 6 and 4"));
        }
        if !(hrd == 1 || hrd == 6) || pro != 0x0800 {
            return none(Verdict::Dropped("not Ethernet/IPv4"));
        }
        // ArpRepr insists on hrd 1; parse a copy with hrd normalised.
        let mut body = [0u8; 28];
        body.copy_from_slice(&frame[14..42]);
        body[0..2].copy_from_slice(&1u16.to_be_bytes());
        let Ok(arp) = ArpRepr::parse(&body) else {
            return none(Verdict::Dropped("malformed"));
        };
        if !matches!(arp.op, ArpOp::Request | ArpOp::Reply) {
            return none(Verdict::Dropped("neither request nor reply"));
        }
        let (sip, tip, sha) = (arp.spa, arp.tpa, arp.sha);
        if is_multicast(tip) {
            return none(Verdict::Dropped("target is multicast"));
        }
        if tip.is_loopback() && self.conf(iface, "route_localnet", false) == 0 {
            return none(Verdict::Dropped("target is loopback"));
        }
        if sip == tip && self.conf(iface, "drop_gratuitous_arp", false) != 0 {
            return none(Verdict::Dropped("gratuitous ARP"));
        }
        let dev_mac = dev.mac;
        let reply = |tip: Ipv4Addr| {
            ArpRepr {
                op: ArpOp::Reply,
                sha: dev_mac,
                spa: tip,
                tha: sha,
                tpa: sip,
            }
            .to_frame(sha, dev_mac, 0)
        };
        // RFC 2131 duplicate address probe: answered only for local addresses,
        // never creates a neighbour entry.
        if sip == Ipv4Addr::UNSPECIFIED {
            if arp.op == ArpOp::Request && self.is_local(tip) && !self.arp_ignore(iface, sip, tip) {
                return (Verdict::Processed, Some(reply(tip)), Vec::new());
            }
            return none(Verdict::Processed);
        }
        let mut answer = None;
        // Not local (or broadcast): only proxy ARP could answer; it is off by default.
        if arp.op == ArpOp::Request
            && self.route_input_ok(sip)
            && self.is_local(tip)
            && !self.is_broadcast(tip)
        {
            let mut flushed = Vec::new();
            if !self.arp_ignore(iface, sip, tip) {
                // neigh_event_ns: create or refresh the requester's entry.
                self.neigh
                    .entry((iface, sip))
                    .or_insert_with(|| Neighbour::new(NudState::Failed, now));
                flushed =
                    self.neigh_update(iface, sip, sha, NudState::Stale, UpdateFlags::OVERRIDE, now);
                answer = Some(reply(tip));
            }
            return (Verdict::Processed, answer, flushed);
        }
        // Update an existing entry; create one only with arp_accept for a
        // gratuitous ARP or an unsolicited reply.
        let key = (iface, sip);
        let is_garp = tip == sip;
        // Any entry counts, also one being resolved or FAILED.
        let exists = self.neigh.contains_key(&key);
        let mut flushed = Vec::new();
        if exists
            || (self.conf(iface, "arp_accept", false) != 0
                && (is_garp || arp.op == ArpOp::Reply)
                && self
                    .ifaces
                    .get(iface)
                    .is_some_and(|d| d.addrs.iter().any(|a| a.contains(sip))))
        {
            let state = if arp.op == ArpOp::Reply && eth.dst == dev_mac {
                NudState::Reachable
            } else {
                NudState::Stale
            };
            // A new address is taken only after `locktime` (1 s) since the
            // last update, or from a gratuitous ARP.
            let locktime = self.parms(iface).locktime;
            let entry = self
                .neigh
                .entry(key)
                .or_insert_with(|| Neighbour::new(NudState::Failed, now));
            let override_ = is_garp || now > entry.updated.saturating_add(locktime);
            flushed = self.neigh_update(
                iface,
                sip,
                sha,
                state,
                UpdateFlags {
                    override_,
                    admin: false,
                },
                now,
            );
        }
        (Verdict::Processed, answer, flushed)
    }

    /// `ip_rcv` → `icmp_rcv` → `icmp_echo` for an IPv4 frame: echo requests to
    /// a local address are answered; to a broadcast address only with
    /// `net.ipv4.icmp_echo_ignore_broadcasts=0`; anything else addressed to
    /// another host is dropped (forwarding is off).
    fn receive_ipv4(
        &mut self,
        iface: usize,
        frame: &[u8],
        now: Duration,
    ) -> (Verdict, Vec<Vec<u8>>) {
        let drop = |why| (Verdict::Dropped(why), Vec::new());
        let Some(dev) = self.ifaces.get(iface) else {
            return (Verdict::NotArp, Vec::new());
        };
        let dev_mac = dev.mac;
        let Ok((eth, echo)) = IcmpEchoRepr::parse_frame(frame) else {
            return drop("not a well-formed ICMP echo");
        };
        // ip_rcv: PACKET_OTHERHOST frames are dropped even in promiscuous mode.
        if eth.dst != dev_mac && !eth.dst.is_multicast() {
            return drop("unicast to another host");
        }
        if echo.reply {
            return drop("echo reply: for a socket, not the kernel");
        }
        if !self.route_input_ok(echo.src) {
            return drop("martian source");
        }
        let local = self.is_local(echo.dst);
        let broadcast = !local && self.is_broadcast(echo.dst);
        if !local && !broadcast {
            return drop("not for this host and forwarding is off");
        }
        let global = |k: &str| {
            self.sysctl
                .get(k)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(0)
        };
        if broadcast && global("net.ipv4.icmp_echo_ignore_broadcasts") != 0 {
            return drop("echo to broadcast (icmp_echo_ignore_broadcasts)");
        }
        if global("net.ipv4.icmp_echo_ignore_all") != 0 {
            return drop("icmp_echo_ignore_all");
        }
        // The reply goes back to the sender, which must be on-link here.
        let Some(on_link) = self
            .ifaces
            .get(iface)
            .and_then(|d| d.addrs.iter().find(|a| a.contains(echo.src)).copied())
        else {
            return drop("no route back to the sender");
        };
        // fib_compute_spec_dst: the local address asked for, or for a
        // broadcast the interface address on the sender's subnet.
        let src = if local { echo.dst } else { on_link.addr };
        let ident = self.ip_ident;
        self.ip_ident = self.ip_ident.wrapping_add(1);
        let reply = IcmpEchoRepr {
            reply: true,
            ip_id: ident,
            ttl: 64,
            src,
            dst: echo.src,
            ..echo
        };
        let frame = reply.to_frame(MacAddr([0; 6]), dev_mac);
        (
            Verdict::Processed,
            self.neigh_output(iface, echo.src, frame, now),
        )
    }

    /// The neighbour parameters of interface `iface`: Linux 6.1's defaults,
    /// or `net.ipv4.neigh.<dev>.<key>` where a lab set one.
    fn parms(&self, iface: usize) -> NeighParms {
        let dev = self
            .ifaces
            .get(iface)
            .map(|i| i.name.replace('.', "/"))
            .unwrap_or_default();
        let get = |key: &str, default: u64| {
            self.sysctl
                .get(&format!("net.ipv4.neigh.{dev}.{key}"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        NeighParms {
            mcast_solicit: u32::try_from(get("mcast_solicit", 3)).unwrap_or(u32::MAX),
            ucast_solicit: u32::try_from(get("ucast_solicit", 3)).unwrap_or(u32::MAX),
            retrans_time: Duration::from_millis(get("retrans_time_ms", 1000)),
            delay_first_probe_time: Duration::from_secs(get("delay_first_probe_time", 5)),
            base_reachable_time: Duration::from_millis(get("base_reachable_time_ms", 30_000)),
            locktime: Duration::from_millis(get("locktime", 100).saturating_mul(10)),
        }
    }

    /// `neigh_rand_reach_time`: uniform in [base/2, 3*base/2).
    fn draw_reachable(&mut self, iface: usize) -> Duration {
        let base = self.parms(iface).base_reachable_time.as_millis() as u64;
        if base == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.rng.below(base).saturating_add(base / 2))
    }

    /// The interface's `reachable_time` at `now` (`neigh->parms->reachable_time`):
    /// drawn for each device when it appears, re-drawn for all by the
    /// periodic work (every 15 s) once 300 s passed since the last draw. The
    /// kernel's first periodic run is itself at a random delay; the sim
    /// starts the 15 s rhythm at boot. `neigh_periodic_work` is otherwise
    /// idle below gc_thresh1 entries, so it is not an event of its own.
    fn reachable_time(&mut self, iface: usize, now: Duration) -> Duration {
        // The table's own parms (`net.ipv4.neigh.default`) set the rhythm.
        let base = self
            .sysctl
            .get("net.ipv4.neigh.default.base_reachable_time_ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(30_000);
        // neigh_table_init draws the table's value first and sets
        // last_rand = 20 times it ahead: the first re-draw is 10 to 30 min in.
        let last_rand = match self.last_rand {
            Some(t) => t,
            None => {
                let r = if base == 0 {
                    0
                } else {
                    self.rng.below(base).saturating_add(base / 2)
                };
                Duration::from_millis(r.saturating_mul(20))
            }
        };
        self.last_rand = Some(last_rand);
        let period = (Duration::from_millis(base) / 2).max(JIFFY);
        while self.next_work <= now {
            if self
                .last_rand
                .is_some_and(|l| self.next_work > l.saturating_add(REDRAW_AFTER))
            {
                self.last_rand = Some(self.next_work);
                for i in 0..self.reachable.len() {
                    let drawn = (self.draw_reachable(i), self.parms(i).base_reachable_time);
                    if let Some(slot) = self.reachable.get_mut(i) {
                        *slot = drawn;
                    }
                }
            }
            self.next_work = self.next_work.saturating_add(period);
            if self.next_work == Duration::MAX {
                break;
            }
        }
        while self.reachable.len() <= iface {
            let i = self.reachable.len();
            let drawn = (self.draw_reachable(i), self.parms(i).base_reachable_time);
            self.reachable.push(drawn);
        }
        // Writing base_reachable_time(_ms) re-draws the device's value at
        // once (`neigh_proc_base_reachable_time`); here at its next use.
        let base = self.parms(iface).base_reachable_time;
        if self.reachable.get(iface).is_some_and(|&(_, b)| b != base) {
            let drawn = (self.draw_reachable(iface), base);
            if let Some(slot) = self.reachable.get_mut(iface) {
                *slot = drawn;
            }
        }
        self.reachable
            .get(iface)
            .map(|&(r, _)| r)
            .unwrap_or_default()
    }

    /// The kernel sends `frame` (destination MAC still zero) to `ip` on
    /// `iface` through the neighbour layer (`neigh_output` /
    /// `__neigh_event_send`): returns the frames that leave now.
    pub fn neigh_output(
        &mut self,
        iface: usize,
        ip: Ipv4Addr,
        mut frame: Vec<u8>,
        now: Duration,
    ) -> Vec<Vec<u8>> {
        let parms = self.parms(iface);
        let entry = self
            .neigh
            .entry((iface, ip))
            .or_insert_with(|| Neighbour::new(NudState::Failed, now));
        // The fast path (a REACHABLE entry with its cached header) leaves
        // `used` alone; everything else goes through neigh_event_send.
        if entry.state != NudState::Reachable {
            entry.used = now;
        }
        let mut probe = false;
        match entry.state {
            NudState::Failed => {
                if parms.mcast_solicit == 0 {
                    entry.updated = now;
                    return Vec::new();
                }
                entry.probes = parms.ucast_solicit;
                entry.state = NudState::Incomplete;
                entry.updated = now;
                entry.timer = Some(timer_expiry(now, parms.retrans_time.max(JIFFY)));
                probe = true;
            }
            NudState::Stale => {
                entry.state = NudState::Delay;
                entry.updated = now;
                entry.timer = Some(timer_expiry(now, parms.delay_first_probe_time));
            }
            _ => {}
        }
        let mut out = Vec::new();
        if entry.state == NudState::Incomplete {
            if entry.queue.len() >= RESOLVE_QUEUE {
                entry.queue.pop_front();
            }
            entry.queue.push_back(frame);
        } else if let Some(dst) = frame.get_mut(..6) {
            dst.copy_from_slice(&entry.lladdr.0);
            out.push(frame);
        }
        if probe {
            out.extend(self.neigh_probe(iface, ip));
        }
        out
    }

    /// `neigh_probe` → `arp_solicit`: counts the probe and builds the
    /// request: broadcast while `probes` is beyond `ucast_solicit`, else
    /// unicast to the known address (PROBE). Sender IP: the queued packet's
    /// source if it is local (arp_announce 0), else the interface's address.
    fn neigh_probe(&mut self, iface: usize, ip: Ipv4Addr) -> Option<Vec<u8>> {
        let parms = self.parms(iface);
        let dev = self.ifaces.get(iface)?;
        let dev_mac = dev.mac;
        let fallback = dev
            .addrs
            .iter()
            .find(|a| a.contains(ip))
            .or(dev.addrs.first())
            .map_or(Ipv4Addr::UNSPECIFIED, |a| a.addr);
        let entry = self.neigh.get_mut(&(iface, ip))?;
        entry.probes += 1;
        let queued_src = entry.queue.back().and_then(|f| {
            let b: [u8; 4] = f.get(26..30)?.try_into().ok()?;
            Some(Ipv4Addr::from(b))
        });
        let dst = if entry.probes <= parms.ucast_solicit {
            entry.lladdr
        } else {
            MacAddr([0xff; 6])
        };
        let spa = match queued_src {
            Some(src) if self.is_local(src) => src,
            _ => fallback,
        };
        Some(
            ArpRepr {
                op: ArpOp::Request,
                sha: dev_mac,
                spa,
                tha: MacAddr([0; 6]),
                tpa: ip,
            }
            .to_frame(dst, dev_mac, 0),
        )
    }

    /// `neigh_update(n, lladdr, new, override ? F_OVERRIDE : 0)` for an
    /// existing entry: returns the queued frames a newly valid entry sends.
    fn neigh_update(
        &mut self,
        iface: usize,
        ip: Ipv4Addr,
        lladdr: MacAddr,
        new: NudState,
        flags: UpdateFlags,
        now: Duration,
    ) -> Vec<Vec<u8>> {
        let UpdateFlags { override_, admin } = flags;
        let reachable = self.reachable_time(iface, now);
        let Some(entry) = self.neigh.get_mut(&(iface, ip)) else {
            return Vec::new();
        };
        let old = entry.state;
        // Only an administrator changes a permanent entry: an ARP request
        // or reply from its address with another MAC leaves it as it is.
        if old == NudState::Permanent && !admin {
            return Vec::new();
        }
        let mut new = new;
        if new.connected() {
            entry.confirmed = Some(now);
            // Not in neighbour.c's neigh_update, but what a UML 6.1 guest
            // does: with base_reachable_time_ms=2000 an idle entry cycles
            // REACHABLE -> DELAY -> PROBE -> REACHABLE every ~7 s for as
            // long as we watched (60 s), so each confirmation must count as
            // a use (else the second expiry would find `used` old: STALE).
            entry.used = entry.used.max(now);
        }
        if old.valid() {
            if lladdr != entry.lladdr && !override_ {
                return Vec::new();
            }
            // Valid, same address, told STALE (not by an administrator):
            // the state stays.
            if lladdr == entry.lladdr && new == NudState::Stale && !admin {
                new = old;
            }
        }
        if new != old || lladdr != entry.lladdr {
            entry.updated = now;
        }
        if new != old {
            entry.timer = None;
            if new == NudState::Probe {
                entry.probes = 0;
            }
            if new.in_timer() {
                let delay = if new == NudState::Reachable {
                    reachable
                } else {
                    Duration::ZERO
                };
                entry.timer = Some(timer_expiry(now, delay));
            }
            entry.state = new;
        }
        if lladdr != entry.lladdr {
            entry.lladdr = lladdr;
            if !new.connected() {
                entry.confirmed = None;
            }
        }
        if new == old || old.valid() {
            return Vec::new();
        }
        let mut out: Vec<Vec<u8>> = entry.queue.drain(..).collect();
        for f in &mut out {
            if let Some(dst) = f.get_mut(..6) {
                dst.copy_from_slice(&lladdr.0);
            }
        }
        out
    }

    /// `arp -s` (SIOCSARP -> `arp_req_set`): creates or overwrites the
    /// entry as an administrator (`NEIGH_UPDATE_F_OVERRIDE|ADMIN`),
    /// PERMANENT or, with `temp`, STALE. Returns the frames that were
    /// waiting in an INCOMPLETE entry, now addressed to `lladdr`.
    pub fn neigh_set(
        &mut self,
        iface: usize,
        ip: Ipv4Addr,
        lladdr: MacAddr,
        permanent: bool,
        now: Duration,
    ) -> Vec<Vec<u8>> {
        let new = if permanent {
            NudState::Permanent
        } else {
            NudState::Stale
        };
        self.neigh
            .entry((iface, ip))
            .or_insert_with(|| Neighbour::new(NudState::Failed, now));
        let flags = UpdateFlags {
            override_: true,
            admin: true,
        };
        self.neigh_update(iface, ip, lladdr, new, flags, now)
    }

    /// `arp -d` (SIOCDARP -> `arp_invalidate`): the entry leaves the table
    /// with its timer and waiting frames; false if there was none (ENXIO).
    pub fn neigh_delete(&mut self, iface: usize, ip: Ipv4Addr) -> bool {
        self.neigh.remove(&(iface, ip)).is_some()
    }

    /// The device an on-link route sends `ip` through (the first up
    /// device with an address whose subnet holds it), as `arp_req_set`
    /// looks one up when no `-i` names it.
    pub fn route_dev(&self, ip: Ipv4Addr) -> Option<usize> {
        self.ifaces
            .iter()
            .position(|d| d.up && d.addrs.iter().any(|a| a.contains(ip)))
    }

    /// The earliest pending neighbour timer.
    pub fn next_timer(&self) -> Option<Duration> {
        self.neigh.values().filter_map(|n| n.timer).min()
    }

    /// Runs every neighbour timer due at or before `now`
    /// (`neigh_timer_handler`), in time order; returns the frames they send,
    /// each with its interface.
    pub fn run_timers(&mut self, now: Duration) -> Vec<(usize, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let due = self
                .neigh
                .iter()
                .filter_map(|(k, n)| n.timer.filter(|&t| t <= now).map(|t| (t, *k)))
                .min();
            let Some((at, key)) = due else {
                return out;
            };
            if let Some(frame) = self.neigh_timer(key, at) {
                out.push((key.0, frame));
            }
        }
    }

    /// `neigh_timer_handler` for one entry whose timer fired at `now`.
    fn neigh_timer(&mut self, key: (usize, Ipv4Addr), now: Duration) -> Option<Vec<u8>> {
        let (iface, ip) = key;
        let parms = self.parms(iface);
        let reachable = self.reachable_time(iface, now);
        let entry = self.neigh.get_mut(&key)?;
        entry.timer = None;
        let retrans = parms.retrans_time.max(JIFFY);
        let confirmed_within =
            |d: Duration| entry.confirmed.is_some_and(|c| now <= c.saturating_add(d));
        let next = match entry.state {
            NudState::Reachable => {
                if confirmed_within(reachable) {
                    entry.confirmed.map(|c| c + reachable)
                } else if now <= entry.used.saturating_add(parms.delay_first_probe_time) {
                    entry.state = NudState::Delay;
                    entry.updated = now;
                    Some(now.saturating_add(parms.delay_first_probe_time))
                } else {
                    entry.state = NudState::Stale;
                    entry.updated = now;
                    None
                }
            }
            NudState::Delay => {
                if confirmed_within(parms.delay_first_probe_time) {
                    entry.state = NudState::Reachable;
                    entry.updated = now;
                    entry.confirmed.map(|c| c + reachable)
                } else {
                    entry.state = NudState::Probe;
                    entry.updated = now;
                    entry.probes = 0;
                    Some(now.saturating_add(retrans))
                }
            }
            NudState::Incomplete | NudState::Probe => Some(now.saturating_add(retrans)),
            NudState::Stale | NudState::Failed | NudState::Permanent => None,
        };
        // neigh_max_probes: ucast + app + mcast while INCOMPLETE, ucast +
        // app + mcast_resolicit (0) in PROBE.
        let max_probes = match entry.state {
            NudState::Incomplete => parms.ucast_solicit + parms.mcast_solicit,
            _ => parms.ucast_solicit,
        };
        if matches!(entry.state, NudState::Incomplete | NudState::Probe)
            && entry.probes >= max_probes
        {
            // neigh_invalidate: the waiting frames are dropped.
            entry.state = NudState::Failed;
            entry.queue.clear();
            return None;
        }
        if entry.state.in_timer() {
            entry.timer = next.map(|t| timer_expiry(now, t.saturating_sub(now)));
        }
        if matches!(entry.state, NudState::Incomplete | NudState::Probe) {
            return self.neigh_probe(iface, ip);
        }
        None
    }

    /// `ip link set DEV up|down` (and `ifconfig DEV up|down`). Going down
    /// is NETDEV_DOWN: `fib_disable_ip` -> `arp_ifdown` -> `neigh_ifdown`
    /// removes every entry of the device (INCOMPLETE ones with the frames
    /// waiting in them, their timers with them), so traffic after the next
    /// `up` resolves afresh with a broadcast request (checked on a UML 6.1
    /// guest). Permanent entries go too (an `arp -s` entry was gone after
    /// down on a UML 6.1 guest).
    pub fn set_up(&mut self, iface: usize, up: bool) {
        let Some(dev) = self.ifaces.get_mut(iface) else {
            return;
        };
        let was_up = dev.up;
        dev.up = up;
        if up {
            dev.was_up = true;
        } else if was_up {
            self.neigh_flush_dev(iface);
        }
    }

    /// The device's carrier changed (`netif_carrier_on/off`). Losing it on
    /// an up device is NETDEV_CHANGE: `arp_netdev_event` evicts the
    /// device's entries (`neigh_carrier_down`, which spares only permanent
    /// ones) unless `arp_evict_nocarrier` is 0 in `all` or the device
    /// (IN_DEV_ANDCONF). No lab event drops the carrier: UML's vde
    /// transport has no carrier signal, so a pulled cable (`link down`)
    /// leaves a real guest's `/sys/class/net/eth0/carrier` at 1 and its
    /// entries in place; this is for transports that have one.
    pub fn set_carrier(&mut self, iface: usize, carrier: bool) {
        let Some(dev) = self.ifaces.get_mut(iface) else {
            return;
        };
        let lost = dev.carrier && !carrier && dev.up;
        dev.carrier = carrier;
        let conf = |scope: &str| {
            self.sysctl
                .get(&format!("net.ipv4.conf.{scope}.arp_evict_nocarrier"))
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(0)
                != 0
        };
        let dev_scope = self
            .ifaces
            .get(iface)
            .map(|i| i.name.replace('.', "/"))
            .unwrap_or_default();
        if lost && conf("all") && conf(&dev_scope) {
            self.neigh_flush_dev(iface);
        }
    }

    /// `neigh_flush_dev`: the device's entries leave the table; their
    /// queued frames are dropped and their timers stop with them.
    fn neigh_flush_dev(&mut self, iface: usize) {
        self.neigh.retain(|&(i, _), _| i != iface);
    }

    /// `ip_route_input` on the request's source: martian sources (broadcast,
    /// multicast, 0/8, loopback, or one of our own addresses) fail.
    fn route_input_ok(&self, sip: Ipv4Addr) -> bool {
        !(sip == Ipv4Addr::BROADCAST
            || is_multicast(sip)
            || sip.octets()[0] == 0
            || sip.is_loopback()
            || self.is_local(sip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: MacAddr = MacAddr([0xfe, 0xfd, 0, 0, 0, 1]);
    const H2: MacAddr = MacAddr([0xfe, 0xfd, 0, 0, 0, 2]);

    fn host_with(addr: Option<[u8; 4]>) -> Stack {
        let mut eth = Iface::ethernet("eth0", H2);
        eth.up = true;
        if let Some(a) = addr {
            eth.addrs.push(IfAddr {
                addr: Ipv4Addr::from(a),
                prefix: 24,
                brd: Ipv4Addr::UNSPECIFIED,
            });
        }
        Stack::new(vec![eth])
    }

    fn request(sip: [u8; 4], tip: [u8; 4]) -> Vec<u8> {
        ArpRepr {
            op: ArpOp::Request,
            sha: H1,
            spa: Ipv4Addr::from(sip),
            tha: MacAddr([0; 6]),
            tpa: Ipv4Addr::from(tip),
        }
        .to_frame(MacAddr([0xff; 6]), H1, 16)
    }

    /// The reply bytes captured from a UML 6.1 guest answering a DAD probe
    /// (arping-and-arp.md §6), with this test's MACs and addresses.
    #[test]
    fn dad_probe_for_a_local_address_gets_the_kernels_42_byte_reply() {
        let mut s = host_with(Some([1, 1, 1, 1]));
        let (_, reply) = s.receive(1, &request([0, 0, 0, 0], [1, 1, 1, 1]), Duration::ZERO);
        let reply = reply.into_iter().next().expect("a reply");
        assert_eq!(
            reply,
            [
                0xfe, 0xfd, 0, 0, 0, 1, 0xfe, 0xfd, 0, 0, 0, 2, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2,
                0xfe, 0xfd, 0, 0, 0, 2, 1, 1, 1, 1, 0xfe, 0xfd, 0, 0, 0, 1, 0, 0, 0, 0
            ]
        );
        assert!(s.neigh.is_empty(), "DAD probes create no neighbour entry");
    }

    #[test]
    fn no_answer_for_broadcast_target_or_foreign_address_or_martian_source() {
        let mut s = host_with(Some([1, 1, 1, 1]));
        for (sip, tip) in [
            ([0, 0, 0, 0], [255, 255, 255, 255]),
            ([0, 0, 0, 0], [1, 1, 1, 2]),
            ([255, 255, 255, 255], [1, 1, 1, 1]),
            ([1, 1, 1, 5], [255, 255, 255, 255]),
            ([1, 1, 1, 1], [1, 1, 1, 1]),
        ] {
            let (_, reply) = s.receive(1, &request(sip, tip), Duration::ZERO);
            assert!(reply.is_empty(), "{sip:?} asking for {tip:?}");
        }
    }

    #[test]
    fn normal_request_is_answered_and_leaves_a_stale_entry() {
        let mut s = host_with(Some([1, 1, 1, 1]));
        let (_, reply) = s.receive(1, &request([1, 1, 1, 5], [1, 1, 1, 1]), Duration::ZERO);
        let reply = reply.into_iter().next().expect("reply");
        assert_eq!(
            &reply[38..42],
            &[1, 1, 1, 5],
            "target IP is the requester's"
        );
        let entry = s.neigh.get(&(1, Ipv4Addr::new(1, 1, 1, 5))).expect("entry");
        assert_eq!((entry.lladdr, entry.state), (H1, NudState::Stale));
    }

    #[test]
    fn arp_ignore_1_needs_the_address_on_the_receiving_interface() {
        let mut s = host_with(None);
        let mut eth1 = Iface::ethernet("eth1", MacAddr([0xfe, 0xfd, 0, 0, 0, 3]));
        eth1.up = true;
        eth1.addrs.push(IfAddr {
            addr: Ipv4Addr::new(1, 1, 1, 1),
            prefix: 24,
            brd: Ipv4Addr::UNSPECIFIED,
        });
        s.ifaces.push(eth1);
        let probe = request([0, 0, 0, 0], [1, 1, 1, 1]);
        assert!(
            !s.receive(1, &probe, Duration::ZERO).1.is_empty(),
            "default 0: any interface"
        );
        s.sysctl
            .insert("net.ipv4.conf.all.arp_ignore".into(), "1".into());
        assert!(s.receive(1, &probe, Duration::ZERO).1.is_empty());
        assert!(!s.receive(2, &probe, Duration::ZERO).1.is_empty());
    }

    #[test]
    fn frames_unicast_to_another_mac_are_dropped() {
        let mut s = host_with(Some([1, 1, 1, 1]));
        let mut f = request([0, 0, 0, 0], [1, 1, 1, 1]);
        f[..6].copy_from_slice(&[0xfe, 0xfd, 0, 0, 0, 9]);
        assert_eq!(
            s.receive(1, &f, Duration::ZERO),
            (Verdict::Dropped("unicast to another host"), Vec::new())
        );
    }

    /// Recomputes the IPv4 header checksum of an Ethernet frame after an edit.
    fn redo_ip_checksum(frame: &mut [u8]) {
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = pnet_packet::util::checksum(&frame[14..34], 5);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Frames captured (tcpdump -xx) on a veth peer running Linux while the
    /// real arping 2.23 ran `arping -c 2 -T 10.0.0.2 -i simva
    /// 02:00:00:00:00:02` from 10.0.0.1 / 02:00:00:00:00:01.
    const REAL_ECHO_REQUEST: &str = "0200 0000 0002 0200 0000 0001 0800 4500
        0030 ccb1 0000 4001 9a19 0a00 0001 0a00 0002 0800 6a6e ccb1 0000 9f3e
        0000 0000 0000 de4d 521a 0000 0000 f8bf f878";
    const REAL_ARP_SOLICIT: &str = "ffff ffff ffff 0200 0000 0002 0806 0001
        0800 0604 0001 0200 0000 0002 0a00 0002 0000 0000 0000 0a00 0001";
    const REAL_ARP_REPLY: &str = "0200 0000 0002 0200 0000 0001 0806 0001
        0800 0604 0002 0200 0000 0001 0a00 0001 0200 0000 0002 0a00 0002";
    const REAL_ECHO_REPLY: &str = "0200 0000 0001 0200 0000 0002 0800 4500
        0030 1fdb 0000 4001 46f0 0a00 0002 0a00 0001 0000 726e ccb1 0000 9f3e
        0000 0000 0000 de4d 521a 0000 0000 f8bf f878";

    fn echo_peer() -> Stack {
        let mut eth = Iface::ethernet("eth0", MacAddr([2, 0, 0, 0, 0, 2]));
        eth.up = true;
        eth.addrs.push(IfAddr {
            addr: Ipv4Addr::new(10, 0, 0, 2),
            prefix: 24,
            brd: Ipv4Addr::UNSPECIFIED,
        });
        let mut s = Stack::new(vec![eth]);
        // The real reply's IP id, so whole frames compare.
        s.ip_ident = 0x1fdb;
        s
    }

    #[test]
    fn echo_request_resolves_the_sender_then_replies_as_linux_did() {
        let mut s = echo_peer();
        let (v, out) = s.receive(1, &hex(REAL_ECHO_REQUEST), Duration::ZERO);
        assert_eq!((v, out), (Verdict::Processed, vec![hex(REAL_ARP_SOLICIT)]));
        let (_, out) = s.receive(1, &hex(REAL_ARP_REPLY), Duration::ZERO);
        assert_eq!(out, vec![hex(REAL_ECHO_REPLY)]);
        let n = s
            .neigh
            .get(&(1, Ipv4Addr::new(10, 0, 0, 1)))
            .expect("entry");
        assert_eq!(n.state, NudState::Reachable, "as `ip neigh` showed");
        assert!(n.queue.is_empty(), "the queued reply went out");
        // Now known: the next request is answered directly.
        let (_, out) = s.receive(1, &hex(REAL_ECHO_REQUEST), Duration::ZERO);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..6], &[2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn echo_to_broadcast_follows_icmp_echo_ignore_broadcasts() {
        let mut s = echo_peer();
        let mut req = hex(REAL_ECHO_REQUEST);
        // To 255.255.255.255: new destination, header checksum redone.
        req[30..34].copy_from_slice(&[255; 4]);
        redo_ip_checksum(&mut req);
        assert_eq!(
            s.receive(1, &req, Duration::ZERO),
            (
                Verdict::Dropped("echo to broadcast (icmp_echo_ignore_broadcasts)"),
                Vec::new()
            )
        );
        s.sysctl
            .insert("net.ipv4.icmp_echo_ignore_broadcasts".into(), "0".into());
        s.receive(1, &req, Duration::ZERO);
        let (_, out) = s.receive(1, &hex(REAL_ARP_REPLY), Duration::ZERO);
        let (_, reply) = IcmpEchoRepr::parse_frame(&out[0]).expect("echo reply");
        assert!(reply.reply);
        assert_eq!(
            reply.src,
            Ipv4Addr::new(10, 0, 0, 2),
            "from the interface address"
        );
    }

    #[test]
    fn echo_to_a_foreign_address_or_from_0_0_0_0_is_dropped() {
        let mut s = echo_peer();
        let mut to_other = hex(REAL_ECHO_REQUEST);
        to_other[33] = 9;
        redo_ip_checksum(&mut to_other);
        assert_eq!(
            s.receive(1, &to_other, Duration::ZERO).0,
            Verdict::Dropped("not for this host and forwarding is off")
        );
        let mut from_zero = hex(REAL_ECHO_REQUEST);
        from_zero[26..30].copy_from_slice(&[0; 4]);
        redo_ip_checksum(&mut from_zero);
        assert_eq!(
            s.receive(1, &from_zero, Duration::ZERO).0,
            Verdict::Dropped("martian source")
        );
        let mut bad_sum = hex(REAL_ECHO_REQUEST);
        bad_sum[40] ^= 1;
        assert_eq!(
            s.receive(1, &bad_sum, Duration::ZERO).0,
            Verdict::Dropped("not a well-formed ICMP echo")
        );
    }

    /// Runs every neighbour timer until `until`, as the world does: returns
    /// (time, frame) for each frame the timers sent.
    fn run_until(s: &mut Stack, until: Duration) -> Vec<(Duration, Vec<u8>)> {
        let mut sent = Vec::new();
        while let Some(t) = s.next_timer().filter(|&t| t <= until) {
            for (_, f) in s.run_timers(t) {
                sent.push((t, f));
            }
        }
        sent
    }

    fn entry(s: &Stack, ip: [u8; 4]) -> &Neighbour {
        s.neigh.get(&(1, Ipv4Addr::from(ip))).expect("entry")
    }

    /// The real echo request, from `src` instead of 10.0.0.1.
    fn echo_from(src: [u8; 4]) -> Vec<u8> {
        let mut f = hex(REAL_ECHO_REQUEST);
        f[26..30].copy_from_slice(&src);
        redo_ip_checksum(&mut f);
        f
    }

    /// echo_peer with a REACHABLE 10.0.0.1 and an INCOMPLETE 10.0.0.9 (its
    /// echo reply waiting) on eth0, and a STALE 10.0.1.5 on eth1.
    fn peer_with_entries_on_two_devices() -> Stack {
        let mut s = echo_peer();
        let mut eth1 = Iface::ethernet("eth1", MacAddr([2, 0, 0, 0, 1, 2]));
        eth1.up = true;
        eth1.addrs.push(IfAddr {
            addr: Ipv4Addr::new(10, 0, 1, 2),
            prefix: 24,
            brd: Ipv4Addr::UNSPECIFIED,
        });
        s.ifaces.push(eth1);
        s.receive(1, &hex(REAL_ECHO_REQUEST), Duration::ZERO);
        s.receive(1, &hex(REAL_ARP_REPLY), Duration::ZERO);
        s.receive(1, &echo_from([10, 0, 0, 9]), Duration::ZERO);
        s.receive(2, &request([10, 0, 1, 5], [10, 0, 1, 2]), Duration::ZERO);
        assert_eq!(entry(&s, [10, 0, 0, 1]).state, NudState::Reachable);
        assert_eq!(entry(&s, [10, 0, 0, 9]).queue.len(), 1);
        s
    }

    fn eth1_entry(s: &Stack) -> Option<NudState> {
        s.neigh
            .get(&(2, Ipv4Addr::new(10, 0, 1, 5)))
            .map(|n| n.state)
    }

    /// What `ip link set eth0 down` did on a UML 6.1 guest (lab neigh-down):
    /// no entry left, no further request for the INCOMPLETE one, and the
    /// next reply after `up` resolves with a broadcast request again.
    #[test]
    fn going_down_removes_the_devices_entries_timers_and_waiting_frames() {
        let mut s = peer_with_entries_on_two_devices();
        let t = Duration::from_millis(200);
        s.set_up(1, false);
        assert!(!s.ifaces[1].up);
        assert!(s.neigh.keys().all(|&(i, _)| i != 1), "{:?}", s.neigh);
        assert_eq!(
            eth1_entry(&s),
            Some(NudState::Stale),
            "other devices keep theirs"
        );
        assert_eq!(run_until(&mut s, t + Duration::from_secs(60)), Vec::new());
        s.set_up(1, true);
        assert!(s.neigh.keys().all(|&(i, _)| i != 1));
        let (_, out) = s.receive(1, &hex(REAL_ECHO_REQUEST), Duration::from_secs(61));
        assert_eq!(
            out,
            vec![hex(REAL_ARP_SOLICIT)],
            "a fresh broadcast request"
        );
        let e = entry(&s, [10, 0, 0, 1]);
        assert_eq!((e.state, e.probes), (NudState::Incomplete, 4));
    }

    #[test]
    fn up_on_an_up_device_and_down_on_a_down_one_leave_the_table_alone() {
        let mut s = peer_with_entries_on_two_devices();
        let before = s.neigh.clone();
        s.set_up(1, true);
        assert_eq!(s.neigh, before);
        s.ifaces[2].up = false;
        s.set_up(2, false);
        assert_eq!(s.neigh, before, "no NETDEV_DOWN without a change");
    }

    #[test]
    fn carrier_loss_evicts_unless_arp_evict_nocarrier_is_0_in_all_or_the_device() {
        for (all, dev, evicted) in [("1", "1", true), ("0", "1", false), ("1", "0", false)] {
            let mut s = peer_with_entries_on_two_devices();
            s.sysctl
                .insert("net.ipv4.conf.all.arp_evict_nocarrier".into(), all.into());
            s.sysctl
                .insert("net.ipv4.conf.eth0.arp_evict_nocarrier".into(), dev.into());
            s.set_carrier(1, false);
            assert!(!s.ifaces[1].carrier);
            let left = s.neigh.keys().filter(|&&(i, _)| i == 1).count();
            assert_eq!(left, if evicted { 0 } else { 2 }, "all={all} eth0={dev}");
            assert_eq!(eth1_entry(&s), Some(NudState::Stale));
            // Getting the carrier back evicts nothing.
            let before = s.neigh.clone();
            s.set_carrier(1, true);
            assert_eq!(s.neigh, before);
        }
        // A down device sends no NETDEV_CHANGE for its carrier.
        let mut s = peer_with_entries_on_two_devices();
        s.ifaces[2].up = false;
        s.set_carrier(2, false);
        assert_eq!(eth1_entry(&s), Some(NudState::Stale));
    }

    /// `arp -s` on an entry being resolved (neighbour.c's neigh_update,
    /// ADMIN): PERMANENT at once, the waiting reply leaves for the given
    /// address, no timer; ARP with another MAC changes nothing, even after
    /// locktime; a second set (ADMIN) does, and `temp` gives STALE.
    #[test]
    fn an_admin_set_completes_a_waiting_entry_and_arp_cannot_change_it() {
        let mut s = echo_peer();
        let t0 = Duration::from_secs(7);
        s.receive(1, &echo_from([10, 0, 0, 9]), t0);
        assert_eq!(entry(&s, [10, 0, 0, 9]).state, NudState::Incomplete);
        let mac = MacAddr([0xfe, 0xfd, 0, 0, 0, 9]);
        let out = s.neigh_set(1, Ipv4Addr::new(10, 0, 0, 9), mac, true, t0);
        assert_eq!(out.len(), 1, "the queued echo reply");
        assert_eq!(out[0].get(..6), Some(&mac.0[..]));
        let e = entry(&s, [10, 0, 0, 9]);
        assert_eq!(
            (e.state, e.timer, e.lladdr),
            (NudState::Permanent, None, mac)
        );
        let other = MacAddr([0xfe, 0xfd, 0, 0, 0, 1]);
        let mut req = request([10, 0, 0, 9], [10, 0, 0, 2]);
        req[6..12].copy_from_slice(&other.0);
        req[22..28].copy_from_slice(&other.0);
        s.receive(1, &req, t0 + Duration::from_secs(5));
        assert_eq!(entry(&s, [10, 0, 0, 9]).lladdr, mac);
        assert!(run_until(&mut s, t0 + Duration::from_secs(120)).is_empty());
        assert_eq!(entry(&s, [10, 0, 0, 9]).state, NudState::Permanent);
        s.neigh_set(1, Ipv4Addr::new(10, 0, 0, 9), other, false, t0);
        let e = entry(&s, [10, 0, 0, 9]);
        assert_eq!((e.state, e.lladdr), (NudState::Stale, other));
        assert!(s.neigh_delete(1, Ipv4Addr::new(10, 0, 0, 9)));
        assert!(!s.neigh_delete(1, Ipv4Addr::new(10, 0, 0, 9)));
    }

    #[test]
    fn the_timer_wheel_rounds_expiries_up_to_its_level_granularity() {
        let ms = Duration::from_millis;
        // 1 s = 100 jiffies: level 1, 8-jiffy buckets, strictly later.
        assert_eq!(timer_expiry(Duration::ZERO, ms(1000)), ms(1040));
        assert_eq!(timer_expiry(ms(5), ms(1000)), ms(1040));
        assert_eq!(timer_expiry(ms(30), ms(1000)), ms(1040));
        assert_eq!(timer_expiry(ms(50), ms(1000)), ms(1120));
        // Short timers: one jiffy later at most.
        assert_eq!(timer_expiry(Duration::ZERO, ms(100)), ms(110));
        // 30 s = 3000 jiffies: level 2, 640 ms buckets.
        assert_eq!(timer_expiry(Duration::ZERO, ms(30_000)), ms(30_080));
        // 45 s: level 3, 5.12 s buckets.
        assert_eq!(timer_expiry(Duration::ZERO, ms(45_000)), ms(46_080));
    }

    /// What a UML 6.1 guest did when an echo came from an address nobody
    /// answers for (switch trace and `ip neigh`): three broadcast requests
    /// a little over a second apart, then `probes 6 FAILED`, no address, no
    /// ref; the queued reply is dropped.
    #[test]
    fn unanswered_resolution_sends_three_broadcasts_then_fails() {
        let mut s = echo_peer();
        let t0 = Duration::from_secs(7);
        let (_, out) = s.receive(1, &echo_from([10, 0, 0, 9]), t0);
        let mut sent: Vec<(Duration, Vec<u8>)> = out.into_iter().map(|f| (t0, f)).collect();
        assert_eq!(entry(&s, [10, 0, 0, 9]).state, NudState::Incomplete);
        assert_eq!(entry(&s, [10, 0, 0, 9]).probes, 4);
        sent.extend(run_until(&mut s, t0 + Duration::from_secs(60)));
        assert_eq!(sent.len(), 3, "mcast_solicit requests");
        for (_, f) in &sent {
            let (eth, arp) = ArpRepr::parse_frame(f).expect("ARP");
            assert_eq!(eth.dst, MacAddr([0xff; 6]));
            assert_eq!(
                (arp.op, arp.spa, arp.tpa, arp.tha),
                (
                    ArpOp::Request,
                    Ipv4Addr::new(10, 0, 0, 2),
                    Ipv4Addr::new(10, 0, 0, 9),
                    MacAddr([0; 6])
                )
            );
        }
        for pair in sent.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                gap > Duration::from_secs(1) && gap <= Duration::from_millis(1080),
                "{gap:?}"
            );
        }
        let e = entry(&s, [10, 0, 0, 9]);
        assert_eq!((e.state, e.probes, e.timer), (NudState::Failed, 6, None));
        assert!(e.queue.is_empty(), "the waiting reply was dropped");
        assert_eq!(s.next_timer(), None, "FAILED entries stay, without a timer");
        // A late reply after FAILED still brings the entry back (and sends nothing).
        let mut late = hex(REAL_ARP_REPLY);
        late[28..32].copy_from_slice(&[10, 0, 0, 9]);
        let (_, out) = s.receive(1, &late, t0 + Duration::from_secs(70));
        assert!(out.is_empty());
        assert_eq!(entry(&s, [10, 0, 0, 9]).state, NudState::Reachable);
    }

    #[test]
    fn a_failed_entry_restarts_resolution_on_the_next_packet() {
        let mut s = echo_peer();
        s.receive(1, &echo_from([10, 0, 0, 9]), Duration::ZERO);
        run_until(&mut s, Duration::from_secs(10));
        let t = Duration::from_secs(20);
        let (_, out) = s.receive(1, &echo_from([10, 0, 0, 9]), t);
        assert_eq!(out.len(), 1, "a new broadcast request at once");
        let e = entry(&s, [10, 0, 0, 9]);
        assert_eq!((e.state, e.probes), (NudState::Incomplete, 4));
        assert_eq!(run_until(&mut s, t + Duration::from_secs(10)).len(), 2);
    }

    /// The entry resolved for the echo reply: REACHABLE for a seeded
    /// `reachable_time` in [15 s, 45 s) (plus the wheel's rounding), then
    /// STALE without sending anything; the same seed gives the same time.
    #[test]
    fn reachable_becomes_stale_after_a_seeded_reachable_time() {
        let stale_at = |seed: u64| {
            let mut s = echo_peer();
            s.seed_neigh(rng::stream(seed, "machine h2 neigh"));
            s.receive(1, &hex(REAL_ECHO_REQUEST), Duration::ZERO);
            s.receive(1, &hex(REAL_ARP_REPLY), Duration::ZERO);
            assert_eq!(entry(&s, [10, 0, 0, 1]).state, NudState::Reachable);
            let at = s.next_timer().expect("the REACHABLE timer");
            assert!(
                run_until(&mut s, Duration::from_secs(600)).is_empty(),
                "going STALE sends nothing"
            );
            let e = entry(&s, [10, 0, 0, 1]);
            assert_eq!((e.state, e.timer, e.probes), (NudState::Stale, None, 4));
            at
        };
        let times: Vec<Duration> = (1..=8).map(stale_at).collect();
        for &t in &times {
            assert!(
                t >= Duration::from_secs(15) && t < Duration::from_millis(45_000 + 5_120),
                "{t:?}"
            );
        }
        assert_eq!(stale_at(3), times[2], "same seed, same time");
        assert!(
            times.iter().any(|&t| t != times[0]),
            "seeds differ: {times:?}"
        );
    }

    /// What the guest did when an echo arrived for a STALE entry: the reply
    /// goes out at once (DELAY, `ref 1`), 5 s later one unicast request
    /// (PROBE, probes restarted), and the peer's reply makes it REACHABLE
    /// with `probes 1`.
    #[test]
    fn stale_entry_in_use_goes_delay_then_probe_with_unicast_requests() {
        let mut s = echo_peer();
        s.receive(1, &hex(REAL_ECHO_REQUEST), Duration::ZERO);
        s.receive(1, &hex(REAL_ARP_REPLY), Duration::ZERO);
        run_until(&mut s, Duration::from_secs(60));
        assert_eq!(entry(&s, [10, 0, 0, 1]).state, NudState::Stale);
        let t = Duration::from_secs(61);
        let (_, out) = s.receive(1, &hex(REAL_ECHO_REQUEST), t);
        assert_eq!(out.len(), 1);
        assert_eq!(
            &out[0][..6],
            &[2, 0, 0, 0, 0, 1],
            "sent with the stale address"
        );
        assert_eq!(entry(&s, [10, 0, 0, 1]).state, NudState::Delay);
        let probes = run_until(&mut s, t + Duration::from_millis(5200));
        assert_eq!(probes.len(), 1);
        let (at, f) = &probes[0];
        assert!(*at >= t + Duration::from_secs(5), "{at:?}");
        let (eth, arp) = ArpRepr::parse_frame(f).expect("ARP");
        assert_eq!(eth.dst, MacAddr([2, 0, 0, 0, 0, 1]), "unicast");
        assert_eq!((arp.op, arp.tha), (ArpOp::Request, MacAddr([0; 6])));
        assert_eq!(
            hex(REAL_ARP_SOLICIT)[14..],
            f[14..],
            "same ARP body as the broadcast"
        );
        let e = entry(&s, [10, 0, 0, 1]);
        assert_eq!((e.state, e.probes), (NudState::Probe, 1));
        s.receive(1, &hex(REAL_ARP_REPLY), *at + Duration::from_millis(1));
        let e = entry(&s, [10, 0, 0, 1]);
        assert_eq!((e.state, e.probes), (NudState::Reachable, 1));
    }

    /// What a UML 6.1 guest did with base_reachable_time_ms=2000 and no
    /// traffic: REACHABLE for ~2 s, DELAY for 5 s, one unicast request,
    /// REACHABLE again, every ~7 s for as long as it was watched (60 s):
    /// each confirmation counts as a use.
    #[test]
    fn short_reachable_time_cycles_through_delay_and_probe() {
        let mut s = echo_peer();
        s.sysctl.insert(
            "net.ipv4.neigh.eth0.base_reachable_time_ms".into(),
            "2000".into(),
        );
        s.receive(1, &hex(REAL_ECHO_REQUEST), Duration::ZERO);
        s.receive(1, &hex(REAL_ARP_REPLY), Duration::ZERO);
        let mut probes = Vec::new();
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(60) {
            t += Duration::from_millis(100);
            for (at, f) in run_until(&mut s, t) {
                assert_eq!(&f[..6], &[2, 0, 0, 0, 0, 1], "unicast");
                probes.push(at);
                // h1 answers at once.
                s.receive(1, &hex(REAL_ARP_REPLY), at + Duration::from_micros(100));
            }
        }
        assert!(probes.len() >= 7, "{probes:?}");
        for pair in probes.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap > Duration::from_secs(6) && gap < Duration::from_millis(8200),
                "{gap:?}"
            );
        }
        assert_ne!(entry(&s, [10, 0, 0, 1]).state, NudState::Stale);
    }

    #[test]
    fn unanswered_probes_end_in_failed_after_ucast_solicit_requests() {
        let mut s = echo_peer();
        s.receive(1, &hex(REAL_ECHO_REQUEST), Duration::ZERO);
        s.receive(1, &hex(REAL_ARP_REPLY), Duration::ZERO);
        run_until(&mut s, Duration::from_secs(60));
        s.receive(1, &hex(REAL_ECHO_REQUEST), Duration::from_secs(61));
        let sent = run_until(&mut s, Duration::from_secs(200));
        assert_eq!(sent.len(), 3);
        assert!(sent.iter().all(|(_, f)| f[..6] == [2, 0, 0, 0, 0, 1]));
        let e = entry(&s, [10, 0, 0, 1]);
        assert_eq!((e.state, e.probes), (NudState::Failed, 3));
    }

    #[test]
    fn a_request_from_a_reachable_neighbour_leaves_it_reachable() {
        let mut s = echo_peer();
        s.receive(1, &hex(REAL_ECHO_REQUEST), Duration::ZERO);
        s.receive(1, &hex(REAL_ARP_REPLY), Duration::ZERO);
        let timer = entry(&s, [10, 0, 0, 1]).timer;
        let mut req = request([10, 0, 0, 1], [10, 0, 0, 2]);
        req[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        req[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        let (_, out) = s.receive(1, &req, Duration::from_secs(2));
        assert_eq!(out.len(), 1, "answered");
        let e = entry(&s, [10, 0, 0, 1]);
        assert_eq!((e.state, e.timer), (NudState::Reachable, timer));
    }

    proptest::proptest! {
        #[test]
        fn receive_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let mut s = host_with(Some([1, 1, 1, 1]));
            let _ = s.receive(1, &bytes, Duration::ZERO);
            let _ = s.receive(7, &bytes, Duration::ZERO);
        }

        /// Any interleaving of echoes, replies and time leaves the timers
        /// in the future and lets them run out: no entry keeps a timer
        /// forever, none fires twice at one time.
        #[test]
        fn neighbour_timers_always_run_out(
            seed in proptest::num::u64::ANY,
            steps in proptest::collection::vec((0u8..4, 0u64..20_000), 0..30),
        ) {
            let mut s = echo_peer();
            s.seed_neigh(rng::stream(seed, "h"));
            let mut now = Duration::ZERO;
            for (what, ms) in steps {
                now += Duration::from_millis(ms);
                run_until(&mut s, now);
                let frame = match what {
                    0 => hex(REAL_ECHO_REQUEST),
                    1 => hex(REAL_ARP_REPLY),
                    2 => echo_from([10, 0, 0, 9]),
                    _ => request([10, 0, 0, 1], [10, 0, 0, 2]),
                };
                let _ = s.receive(1, &frame, now);
                proptest::prop_assert!(s.next_timer().is_none_or(|t| t > now));
            }
            run_until(&mut s, now + Duration::from_secs(3600));
            proptest::prop_assert_eq!(s.next_timer(), None);
            for n in s.neigh.values() {
                proptest::prop_assert!(matches!(n.state, NudState::Stale | NudState::Failed));
            }
        }
    }
}
