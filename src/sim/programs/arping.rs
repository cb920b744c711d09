//! Thomas Habets' arping 2.23, from `src/arping.c` at tag `arping-2.23` and
//! runs of the real binary in a UML 6.1 guest (arping-and-arp.md §1–5) and
//! in network namespaces: option parsing with GNU getopt (clustered flags,
//! permuted operands), the send/wait loop in virtual time, the reply filters
//! of `pingip_recv` and `pingmac_recv`, every output format and exit code.
//!
//! MAC ping mode (the argument is a MAC address, or `-T IP`): `pingmac_send`
//! sends an ICMP echo request to that MAC and to the `-T` address
//! (255.255.255.255 without it), with IP id = ICMP id = a random number per
//! request, seq = the request's index, and a 20-byte payload: the
//! CLOCK_MONOTONIC `struct timespec` of a 64-bit guest, then a 4-byte random
//! suffix drawn once per run (62-byte frames); a reply counts if it is an
//! echo reply to our MAC from the target MAC carrying that suffix.
//!
//! Not emulated: `-v` diagnostics, `-V`/`-Q` VLAN tags, `--help`'s long text.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::net::wire::{ArpOp, ArpRepr, IcmpEchoRepr, MacAddr};
use crate::sim::programs::getopt::{getopt, Opt};
use crate::sim::world::{Poll, Program, Sys};

const USAGE: &str = "ARPing 2.23, by Thomas Habets <thomas@habets.se>\n\
usage: arping [ -0aAbdDeFpPqrRuUvzZ ] [ -w <sec> ] [ -W <sec> ] [ -S <host/ip> ]\n\
\x20             [ -T <host/ip ] [ -s <MAC> ] [ -t <MAC> ] [ -c <count> ]\n\
\x20             [ -C <count> ] [ -i <interface> ] [ -m <type> ] [ -g <group> ]\n\
\x20             [ -V <vlan> ] [ -Q <priority> ] <host/ip/MAC | -B>\n\
For complete usage info, use --help or check the manpage.\n";

const OPTSTRING: &str = "0aAbBC:c:dDeFg:hi:I:m:pPqQ:rRs:S:t:T:uUvV:w:W:zZ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Display {
    Normal,
    Quiet,
    Dot,
    Raw,
    RRaw,
    RawRaw,
}

/// Time from exec to the first request (libnet and pcap setup): frames
/// still in flight from an earlier command are gone by then.
pub const STARTUP: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Setting up; the first request goes out at the end of it.
    Starting,
    /// Waiting for replies to the last request until `until`.
    Waiting {
        until: Duration,
        old_received: u32,
    },
    Done,
}

/// A running arping.
#[derive(Debug)]
pub struct Arping {
    args: Vec<String>,
    iface: usize,
    srcmac: MacAddr,
    dstmac: MacAddr,
    srcip: Ipv4Addr,
    dstip: Ipv4Addr,
    target: String,
    display: Display,
    max_count: i64,
    max_replies: u32,
    deadline: Option<Duration>,
    packetwait: Duration,
    promisc: bool,
    addr_must_be_same: bool,
    unsolicited: bool,
    send_reply: bool,
    also_total: bool,
    beep: bool,
    reverse_beep: bool,
    finddup: bool,
    dupfound: bool,
    last_reply_mac: Option<MacAddr>,
    sent: u32,
    received: u32,
    count: i64,
    last_sent: Duration,
    time_to_die: bool,
    stats: Vec<f64>,
    phase: Phase,
    /// MAC ping mode (ICMP echo to a MAC) rather than IP ping (ARP).
    pingmac: bool,
    /// MAC ping's per-run random payload suffix.
    suffix: [u8; 4],
}

/// Which ping `main` settled on (`enum { NONE, PINGMAC, PINGIP } mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    PingMac,
    PingIp,
}

impl Arping {
    pub fn new(args: &[String]) -> Self {
        Self {
            args: args.to_vec(),
            iface: 0,
            srcmac: MacAddr([0; 6]),
            dstmac: MacAddr([0xff; 6]),
            srcip: Ipv4Addr::UNSPECIFIED,
            dstip: Ipv4Addr::BROADCAST,
            target: String::new(),
            display: Display::Normal,
            max_count: -1,
            max_replies: u32::MAX,
            deadline: None,
            packetwait: Duration::from_secs(1),
            promisc: false,
            addr_must_be_same: false,
            unsolicited: false,
            send_reply: false,
            also_total: false,
            beep: false,
            reverse_beep: false,
            finddup: false,
            dupfound: false,
            last_reply_mac: None,
            sent: 0,
            received: 0,
            count: 0,
            last_sent: Duration::ZERO,
            time_to_die: false,
            stats: Vec::new(),
            phase: Phase::Done,
            pingmac: false,
            suffix: [0; 4],
        }
    }

    /// Everything before the first request; `Err(code)` exits early.
    fn setup(&mut self, sys: &mut Sys) -> Result<(), i32> {
        let parsed = match getopt("arping", &self.args, OPTSTRING) {
            Ok(p) => p,
            Err(msg) => {
                sys.err(&msg);
                sys.out(USAGE);
                return Err(1);
            }
        };
        let (mut srcip_opt, mut dstip_opt): (Option<String>, Option<String>) = (None, None);
        let (mut dstip_given, mut srcmac_opt, mut dstmac_opt) = (false, None, None);
        let (mut opt_b, mut opt_t, mut opt_u) = (false, false, false);
        let mut mode = Mode::None;
        let mut ifname: Option<String> = None;
        for opt in &parsed.opts {
            let Opt { flag, arg } = opt;
            let arg = arg.clone().unwrap_or_default();
            match flag {
                '0' => srcip_opt = Some("0.0.0.0".into()),
                'a' => self.beep = true,
                'A' => self.addr_must_be_same = true,
                'b' => srcip_opt = Some("255.255.255.255".into()),
                'B' => {
                    dstip_opt = Some("255.255.255.255".into());
                    dstip_given = true;
                    opt_b = true;
                }
                'c' => self.max_count = i64::from(atoi(&arg)),
                'C' => self.max_replies = u32::try_from(atoi(&arg)).unwrap_or(0),
                'd' => self.finddup = true,
                'D' => self.display = Display::Dot,
                'e' => self.reverse_beep = true,
                'h' => {
                    sys.out(USAGE);
                    return Err(0);
                }
                'i' => {
                    if arg.contains(':') {
                        sys.err(
                            "arping: If you're trying to feed me an interface alias then you don't really\n\
                             know what this programs does, do you?\n\
                             Use -I if you really mean it (undocumented on purpose)\n",
                        );
                        return Err(1);
                    }
                    ifname = Some(arg);
                }
                'I' => ifname = Some(arg),
                'p' => self.promisc = true,
                'P' => self.send_reply = true,
                'q' => self.display = Display::Quiet,
                'r' => {
                    self.display = if self.display == Display::RRaw {
                        Display::RawRaw
                    } else {
                        Display::Raw
                    }
                }
                'R' => {
                    self.display = if self.display == Display::Raw {
                        Display::RawRaw
                    } else {
                        Display::RRaw
                    }
                }
                's' => srcmac_opt = Some(arg),
                'S' => srcip_opt = Some(arg),
                't' => {
                    dstmac_opt = Some(arg);
                    mode = Mode::PingIp;
                }
                'T' => {
                    opt_t = true;
                    dstip_opt = Some(arg);
                    mode = Mode::PingMac;
                }
                'u' => self.also_total = true,
                'U' => {
                    opt_u = true;
                    self.unsolicited = true;
                    mode = Mode::PingIp;
                }
                'w' => {
                    self.deadline = Some(secs(atof(&arg)));
                }
                'W' => self.packetwait = Duration::from_micros((1_000_000.0 * atof(&arg)) as u64),
                'V' => {
                    let v = atoi(&arg);
                    if !(0..=4095).contains(&v) {
                        sys.err(&format!("arping: vlan tag must 0-4095. Is {v}\n"));
                        return Err(1);
                    }
                    sys.err("arping: 802.1Q tagging (-V) is not emulated by the sim\n");
                    return Err(1);
                }
                'Q' => {
                    let v = atoi(&arg);
                    if !(0..=7).contains(&v) {
                        sys.err(&format!("arping: 802.1p priority must be 0-7. It's {v}\n"));
                        return Err(1);
                    }
                }
                // -F -g -m -v -z -Z change nothing the sim models.
                _ => {}
            }
        }
        if parsed.operands.len() > 1 {
            sys.err("arping: Too many args on command line. Expected at most one.\n");
            return Err(1);
        }
        if (mode == Mode::PingIp && opt_t)
            || (mode == Mode::PingMac && (opt_b || dstmac_opt.is_some() || opt_u))
        {
            // Sic: no newline.
            sys.err("arping: -T can only be used to ping MAC and -BtU only to ping IPs");
            return Err(1);
        }
        if opt_t && opt_b {
            sys.err("arping: -B can't be used with -T, since they set the same thing\n");
            return Err(1);
        }
        if let Some(mac) = &srcmac_opt {
            match get_mac_addr(mac) {
                Some(m) => self.srcmac = m,
                None => {
                    sys.err(&format!("arping: Weird MAC addr {mac}\n"));
                    return Err(1);
                }
            }
        }
        if let Some(mac) = &dstmac_opt {
            match get_mac_addr(mac) {
                Some(m) => self.dstmac = m,
                None => {
                    sys.err(&format!("Illegal MAC addr {mac}\n"));
                    return Err(1);
                }
            }
        }
        if let Some(src) = &srcip_opt {
            self.iface = libnet_init(sys, ifname.as_deref())?;
            match src.parse::<Ipv4Addr>() {
                Ok(ip) => self.srcip = ip,
                Err(_) => {
                    sys.err(&format!(
                        "arping: Can't resolve {src}, or {src} is broadcast. If it is, use -b instead of -S\n"
                    ));
                    return Err(1);
                }
            }
        }
        if let Some(dst) = &dstip_opt {
            self.iface = libnet_init(sys, ifname.as_deref())?;
            match xresolve(dst) {
                Some(ip) => self.dstip = ip,
                None => {
                    sys.err(&format!(
                        "arping: Can't resolve {dst}, or {dst} is broadcast. If it is, use -B instead of -T\n"
                    ));
                    return Err(1);
                }
            }
        }
        if self.finddup && self.max_count == -1 {
            self.max_count = 3;
        }
        let mut parm = parsed.operands.first().cloned();
        if self.finddup && parm.is_none() {
            dstip_given = true;
            self.iface = libnet_init(sys, ifname.as_deref())?;
            self.dstip = own_ip(sys, self.iface).unwrap_or(Ipv4Addr::BROADCAST);
        }
        if mode == Mode::None {
            if let Some(p) = &parm {
                mode = if is_mac_addr(p) {
                    Mode::PingMac
                } else {
                    Mode::PingIp
                };
            } else if dstip_given {
                mode = Mode::PingIp;
                self.iface = libnet_init(sys, ifname.as_deref())?;
                parm = Some(self.dstip.to_string());
            }
        }
        let Some(parm) = parm else {
            sys.out(USAGE);
            return Err(1);
        };
        self.iface = libnet_init(sys, ifname.as_deref())?;
        if mode == Mode::PingIp && !dstip_given && is_mac_addr(&parm) {
            sys.err(
                "arping: Options given only apply to IP ping, but MAC address given as argument\n",
            );
            return Err(1);
        }
        self.pingmac = mode == Mode::PingMac;
        if self.pingmac {
            if parsed.operands.len() != 1 {
                sys.out(USAGE);
                return Err(1);
            }
            if !is_mac_addr(&parm) {
                sys.err("arping: Options given only apply to MAC ping, but no MAC address given as argument\n");
                return Err(1);
            }
            match get_mac_addr(&parm) {
                Some(m) => self.dstmac = m,
                None => {
                    sys.err(&format!("arping: Illegal mac addr {parm}\n"));
                    return Err(1);
                }
            }
            // getrandom(4) in main; the sim draws from the machine's seeded stream.
            sys.m.rng.fill(&mut self.suffix);
        } else if !dstip_given {
            match parm.parse::<Ipv4Addr>() {
                Ok(ip) => self.dstip = ip,
                Err(_) => {
                    sys.err(&format!("arping: Can't resolve {parm}\n"));
                    return Err(1);
                }
            }
        }
        self.target = if dstip_given || self.pingmac {
            parm
        } else {
            self.dstip.to_string()
        };
        if srcip_opt.is_none() {
            match own_ip(sys, self.iface) {
                Some(ip) => self.srcip = ip,
                None => {
                    let name = iface_name(sys, self.iface);
                    sys.err(&format!(
                        "arping: Unable to get the IPv4 address of interface {name}:\n\
                         arping: libnet_get_ipaddr4(): ioctl(): Cannot assign requested address\n\
                         arping: Use -S to specify address manually.\n"
                    ));
                    return Err(1);
                }
            }
        }
        if srcmac_opt.is_none() {
            self.srcmac = sys
                .m
                .stack
                .ifaces
                .get(self.iface)
                .map(|i| i.mac)
                .unwrap_or(MacAddr([0; 6]));
        }
        if self.display == Display::Normal {
            sys.out(&format!("ARPING {}\n", self.target));
        }
        Ok(())
    }

    /// `pingip_send`: an ARP request (or reply with `-P`), 58 bytes.
    fn pingip_send(&mut self, sys: &mut Sys) {
        let tha = if self.unsolicited {
            MacAddr([0xff; 6])
        } else if self.send_reply {
            self.dstmac
        } else {
            MacAddr([0; 6])
        };
        let frame = ArpRepr {
            op: if self.send_reply {
                ArpOp::Reply
            } else {
                ArpOp::Request
            },
            sha: self.srcmac,
            spa: self.srcip,
            tha,
            tpa: self.dstip,
        }
        .to_frame(self.dstmac, self.srcmac, 16);
        sys.send(self.iface, frame);
    }

    /// `pingmac_send(xrandom(), c)`: an ICMP echo request to the target MAC.
    fn pingmac_send(&mut self, sys: &mut Sys) {
        let id = sys.m.rng.below(1 << 16) as u16;
        // struct timespec { tv_sec, tv_nsec } of CLOCK_MONOTONIC, 64-bit x86.
        let mut payload = Vec::with_capacity(20);
        payload.extend_from_slice(&(sys.now.as_secs() as i64).to_le_bytes());
        payload.extend_from_slice(&i64::from(sys.now.subsec_nanos()).to_le_bytes());
        payload.extend_from_slice(&self.suffix);
        let frame = IcmpEchoRepr {
            reply: false,
            tos: 0,
            ip_id: id,
            ttl: 64,
            src: self.srcip,
            dst: self.dstip,
            id,
            seq: self.count as u16,
            payload,
        }
        .to_frame(self.dstmac, self.srcmac);
        sys.send(self.iface, frame);
    }

    /// `pingip_send` then `wait_time`: starts the next wait, or ends the loop.
    fn next_request(&mut self, sys: &mut Sys) -> Poll {
        if (self.max_count >= 0 && self.count >= self.max_count) || self.time_to_die {
            return self.finish(sys);
        }
        if self.pingmac {
            self.pingmac_send(sys);
        } else {
            self.pingip_send(sys);
        }
        self.last_sent = sys.now;
        self.sent += 1;
        let wait = match self.deadline {
            None => self.packetwait,
            Some(deadline) => {
                let left = deadline.saturating_sub(sys.now);
                left.min(self.packetwait)
            }
        };
        if wait.is_zero() {
            return self.finish(sys);
        }
        let until = sys.now.saturating_add(wait);
        self.phase = Phase::Waiting {
            until,
            old_received: self.received,
        };
        sys.wake_at(until);
        Poll::Pending
    }

    fn finish(&mut self, sys: &mut Sys) -> Poll {
        if self.phase != Phase::Starting {
            sys.capture(self.iface, false, self.promisc);
        }
        self.phase = Phase::Done;
        let sent = self.sent.max(1) as f32;
        let succ = 100.0 - 100.0 * self.received as f32 / sent;
        let (shown, extra) = if succ < 0.0 {
            (0.0, self.received as i64 - self.sent as i64)
        } else {
            (succ, 0)
        };
        match self.display {
            Display::Dot => sys.out(&format!("\t{shown:3.0}% packet loss ({extra} extra)\n")),
            Display::Normal => {
                let mut s = format!(
                    "\n--- {} statistics ---\n{} packets transmitted, {} packets received, {shown:3.0}% unanswered ({extra} extra)\n",
                    self.target, self.sent, self.received
                );
                if self.received > 0 {
                    let n = self.stats.len() as f64;
                    let min = self.stats.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = self.stats.iter().copied().fold(0.0, f64::max);
                    let total: f64 = self.stats.iter().sum();
                    let sq: f64 = self.stats.iter().map(|t| t * t).sum();
                    let avg = total / n;
                    s.push_str(&format!(
                        "rtt min/avg/max/std-dev = {:.3}/{:.3}/{:.3}/{:.3} ms",
                        1000.0 * min,
                        1000.0 * avg,
                        1000.0 * max,
                        1000.0 * (sq / n - avg * avg).max(0.0).sqrt()
                    ));
                }
                s.push('\n');
                sys.out(&s);
            }
            _ => {}
        }
        let code = if self.finddup {
            i32::from(self.dupfound)
        } else {
            i32::from(self.received == 0)
        };
        Poll::Exit(code)
    }

    /// `pingmac_recv`: counts and prints a matching echo reply. It reads the
    /// frame at fixed offsets (a 20-byte IP header assumed) and checks neither
    /// checksums nor the ICMP id, as arping does; pcap's `icmp` filter has
    /// already required EtherType IPv4 and protocol 1.
    fn on_echo_reply(&mut self, sys: &mut Sys, frame: &[u8]) -> bool {
        if frame.get(12..14) != Some(&[0x08, 0x00]) || frame.get(23) != Some(&1) {
            return false;
        }
        // LIBNET_ETH_H + LIBNET_ARP_H + LIBNET_ICMPV4_H: 14 + 8 + 4.
        if frame.len() < 26 {
            return false;
        }
        let (Some(dst), Some(src)) = (
            MacAddr::from_slice(&frame[0..6]),
            MacAddr::from_slice(&frame[6..12]),
        ) else {
            return false;
        };
        if dst != self.srcmac {
            return false;
        }
        if self.dstmac != MacAddr([0xff; 6]) && src != self.dstmac {
            return false;
        }
        let Some(ip_src) = frame
            .get(26..30)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(Ipv4Addr::from)
        else {
            return false;
        };
        if self.addr_must_be_same && ip_src != self.dstip {
            return false;
        }
        if frame.get(34) != Some(&0) || frame.get(35) != Some(&0) {
            return false;
        }
        // The payload after the 8-byte echo header: timespec, then the suffix.
        if frame.len() < 42 + 20 || frame.get(58..62) != Some(&self.suffix[..]) {
            return false;
        }
        let seq = frame
            .get(40..42)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .unwrap_or(0);
        let rtt = sys.now.saturating_sub(self.last_sent);
        self.stats.push(rtt.as_secs_f64());
        let mut s = String::new();
        if self.beep {
            s.push('\x07');
        }
        // Sic: in MAC ping -r prints the IP and -R the MAC.
        match self.display {
            Display::Dot => s.push('!'),
            Display::Normal => s.push_str(&format!(
                "{} bytes from {ip_src} ({src}): icmp_seq={seq} time={}",
                frame.len(),
                ts2str(rtt)
            )),
            Display::Quiet => {}
            Display::Raw => s.push_str(&ip_src.to_string()),
            Display::RRaw => s.push_str(&src.to_string()),
            Display::RawRaw => s.push_str(&format!("{src} {ip_src}")),
        }
        if !matches!(self.display, Display::Quiet | Display::Dot) {
            s.push('\n');
        }
        sys.out(&s);
        self.received += 1;
        if self.received >= self.max_replies {
            self.time_to_die = true;
        }
        true
    }

    /// `pingip_recv`: counts and prints a matching reply.
    fn on_reply(&mut self, sys: &mut Sys, frame: &[u8]) -> bool {
        if frame.len() < 42 || frame.get(12..14) != Some(&[0x08, 0x06]) {
            return false;
        }
        let Ok((eth, arp)) = ArpRepr::parse_frame(frame) else {
            return false;
        };
        if arp.op != ArpOp::Reply {
            return false;
        }
        if self.addr_must_be_same && arp.sha != self.dstmac {
            return false;
        }
        if !self.promisc && arp.tha != self.srcmac {
            return false;
        }
        if arp.spa != self.dstip {
            return false;
        }
        let rtt = sys.now.saturating_sub(self.last_sent);
        self.stats.push(rtt.as_secs_f64());
        let mut s = String::new();
        if self.beep {
            s.push('\x07');
        }
        let mac = eth.src;
        match self.display {
            Display::Dot => s.push('!'),
            Display::Normal => {
                s.push_str(&format!(
                    "{} bytes from {} ({}): index={}",
                    frame.len(),
                    mac,
                    arp.spa,
                    self.received
                ));
                if self.also_total {
                    s.push_str(&format!("/{}", self.sent.saturating_sub(1)));
                }
                s.push_str(&format!(" time={}", ts2str(rtt)));
            }
            Display::Quiet => {}
            Display::RawRaw => s.push_str(&format!("{mac} {}", arp.spa)),
            Display::RRaw => s.push_str(&arp.spa.to_string()),
            Display::Raw => s.push_str(&mac.to_string()),
        }
        if !matches!(self.display, Display::Quiet | Display::Dot) {
            s.push('\n');
        }
        sys.out(&s);
        if self.received > 0 && self.last_reply_mac != Some(mac) {
            self.dupfound = true;
        }
        self.last_reply_mac = Some(mac);
        self.received += 1;
        if self.received >= self.max_replies {
            self.time_to_die = true;
        }
        true
    }
}

/// `is_mac_addr`: Cisco style (`0011.2233.4455`), Windows style
/// (`00-11-22-33-44-55`), or anything containing a `:`.
fn is_mac_addr(p: &str) -> bool {
    let b = p.as_bytes();
    let styled = |sep_every: usize, sep: u8, len: usize| {
        b.len() == len
            && b.iter().enumerate().all(|(i, &c)| {
                if i % sep_every == sep_every - 1 {
                    c == sep
                } else {
                    c.is_ascii_hexdigit()
                }
            })
    };
    styled(5, b'.', 14) || styled(3, b'-', 17) || p.contains(':')
}

/// `get_mac_addr`: `sscanf` with `%x:%x:%x:%x:%x:%x`, `%2x%x.%2x%x.%2x%x`,
/// then `%x-%x-%x-%x-%x-%x`; each number keeps its low byte.
fn get_mac_addr(s: &str) -> Option<MacAddr> {
    let scan = |fmt: &[(Option<usize>, Option<u8>)]| -> Option<MacAddr> {
        let mut rest = s.as_bytes();
        let mut out = [0u8; 6];
        for (byte, (width, sep)) in out.iter_mut().zip(fmt) {
            let (v, used) = scan_hex(rest, *width)?;
            *byte = (v & 0xff) as u8;
            rest = &rest[used..];
            if let Some(sep) = sep {
                // A literal in the format: a mismatch stops sscanf there.
                if rest.first() != Some(sep) {
                    return None;
                }
                rest = &rest[1..];
            }
        }
        Some(MacAddr(out))
    };
    let colon = [(None, Some(b':')); 5];
    let dash = [(None, Some(b'-')); 5];
    let with_last = |seps: [(Option<usize>, Option<u8>); 5]| {
        let mut v = seps.to_vec();
        v.push((None, None));
        v
    };
    let cisco = [
        (Some(2), None),
        (None, Some(b'.')),
        (Some(2), None),
        (None, Some(b'.')),
        (Some(2), None),
        (None, None),
    ];
    scan(&with_last(colon))
        .or_else(|| scan(&cisco))
        .or_else(|| scan(&with_last(dash)))
}

/// One `%x` (or `%2x`) conversion: optional white space, sign, `0x`, hex
/// digits (at most `width` characters in all). Returns the value and the
/// bytes consumed, or None if no digit matched.
fn scan_hex(b: &[u8], width: Option<usize>) -> Option<(u32, usize)> {
    let mut i = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    let start = i;
    let limit = |i: usize| width.is_none_or(|w| i - start < w);
    let mut neg = false;
    if limit(i) && matches!(b.get(i), Some(b'+' | b'-')) {
        neg = b.get(i) == Some(&b'-');
        i += 1;
    }
    if limit(i + 1)
        && b.get(i) == Some(&b'0')
        && matches!(b.get(i + 1), Some(b'x' | b'X'))
        && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        i += 2;
    }
    let digits_from = i;
    let mut v: u32 = 0;
    while limit(i) {
        let Some(d) = b.get(i).and_then(|c| (*c as char).to_digit(16)) else {
            break;
        };
        v = v.wrapping_mul(16).wrapping_add(d);
        i += 1;
    }
    if i == digits_from {
        return None;
    }
    Some((if neg { v.wrapping_neg() } else { v }, i))
}

/// `xresolve` for the forms the sim knows: 255.255.255.255 is accepted
/// (libnet's resolver returns it as its error value), anything else must be
/// a dotted quad (no DNS in a lab guest).
fn xresolve(name: &str) -> Option<Ipv4Addr> {
    if name == "255.255.255.255" {
        return Some(Ipv4Addr::BROADCAST);
    }
    name.parse().ok()
}

/// `do_libnet_init`: the interface must exist and be up.
fn libnet_init(sys: &mut Sys, ifname: Option<&str>) -> Result<usize, i32> {
    let stack = &sys.m.stack;
    let (index, name) = match ifname {
        Some(n) => (stack.find(n), n.to_string()),
        None => {
            // arping_lookupdev finds no route in a lab guest; it then guesses
            // the first up non-loopback interface and says so.
            let guess = stack
                .ifaces
                .iter()
                .position(|i| !i.loopback && i.up)
                .or_else(|| stack.ifaces.iter().position(|i| !i.loopback));
            let name = guess
                .and_then(|g| stack.ifaces.get(g))
                .map(|i| i.name.clone())
                .unwrap_or_else(|| "lo".into());
            sys.err(&format!(
                "arping: Unable to automatically find interface to use. Is it on the local LAN?\n\
                 arping: Use -i to manually specify interface. Guessing interface {name}.\n"
            ));
            (guess, name)
        }
    };
    match index {
        None => {
            sys.err(&format!(
                "arping: libnet_init(LIBNET_LINK, {name}): libnet_check_iface() ioctl: No such device\n"
            ));
            Err(1)
        }
        Some(i) if !sys.m.stack.ifaces.get(i).is_some_and(|d| d.up) => {
            sys.err(&format!(
                "arping: libnet_init(LIBNET_LINK, {name}): libnet_check_iface(): {name} is down\n"
            ));
            Err(1)
        }
        Some(i) => Ok(i),
    }
}

fn own_ip(sys: &Sys, iface: usize) -> Option<Ipv4Addr> {
    sys.m.stack.ifaces.get(iface)?.addrs.first().map(|a| a.addr)
}

fn iface_name(sys: &Sys, iface: usize) -> String {
    sys.m
        .stack
        .ifaces
        .get(iface)
        .map(|i| i.name.clone())
        .unwrap_or_default()
}

fn secs(f: f64) -> Duration {
    if f.is_finite() && f > 0.0 {
        Duration::from_secs_f64(f.min(1e9))
    } else {
        Duration::ZERO
    }
}

/// C `atoi`: leading whitespace, sign, digits; anything else stops; 0 if none.
pub fn atoi(s: &str) -> i32 {
    let t = s.trim_start();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let mut v: i64 = 0;
    for c in digits.bytes().take_while(u8::is_ascii_digit) {
        v = (v * 10 + i64::from(c - b'0')).min(i64::from(i32::MAX) + 1);
    }
    let v = if neg { -v } else { v };
    v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// C `atof` for the forms labs use (`2`, `0.5`, `1e-1`): the longest prefix that parses.
pub fn atof(s: &str) -> f64 {
    let t = s.trim_start();
    (1..=t.len())
        .rev()
        .filter(|&n| t.is_char_boundary(n))
        .find_map(|n| t[..n].parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// arping's `ts2str`: nanoseconds scaled by 1000 while above 1000.
pub fn ts2str(d: Duration) -> String {
    let mut f = d.as_nanos() as f64;
    let mut exp = 0;
    while f > 1000.0 {
        exp += 3;
        f /= 1000.0;
    }
    match exp {
        0 => format!("{f:.3} nsec"),
        3 => format!("{f:.3} usec"),
        6 => format!("{f:.3} msec"),
        9 => format!("{f:.3} sec"),
        12 => format!("{:.3} sec", f * 1000.0),
        _ => format!("{f:.3}e{} sec", exp - 9),
    }
}

impl Program for Arping {
    fn start(&mut self, sys: &mut Sys) -> Poll {
        match self.setup(sys) {
            Ok(()) => {
                self.phase = Phase::Starting;
                sys.wake_at(sys.now + STARTUP);
                Poll::Pending
            }
            Err(code) => Poll::Exit(code),
        }
    }

    fn wake(&mut self, sys: &mut Sys) -> Poll {
        if self.phase == Phase::Starting {
            sys.capture(self.iface, true, self.promisc);
            if let Some(d) = self.deadline.as_mut() {
                *d = d.saturating_add(sys.now);
            }
            return self.next_request(sys);
        }
        let Phase::Waiting {
            until,
            old_received,
        } = self.phase
        else {
            return Poll::Pending;
        };
        if sys.now < until {
            return Poll::Pending;
        }
        if self.received == old_received {
            let mut s = String::new();
            if self.reverse_beep {
                s.push('\x07');
            }
            match self.display {
                Display::Normal => s.push_str("Timeout\n"),
                Display::Dot => s.push('.'),
                _ => {}
            }
            sys.out(&s);
        }
        self.count += 1;
        self.next_request(sys)
    }

    fn frame(&mut self, sys: &mut Sys, _iface: usize, frame: &[u8], outgoing: bool) -> Poll {
        if outgoing || !matches!(self.phase, Phase::Waiting { .. }) {
            return Poll::Pending;
        }
        // Without -p the socket is not promiscuous: the NIC only hands up
        // frames for our MAC, broadcast and multicast.
        let nic = sys.m.stack.ifaces.get(self.iface);
        let to_us = self.promisc
            || nic.is_some_and(|i| i.promisc > 0)
            || frame
                .get(..6)
                .is_some_and(|d| d[0] & 1 == 1 || nic.is_some_and(|i| i.mac.0 == d));
        if !to_us {
            return Poll::Pending;
        }
        let counted = if self.pingmac {
            self.on_echo_reply(sys, frame)
        } else {
            self.on_reply(sys, frame)
        };
        if counted && self.time_to_die {
            // -C reached: ping_recv returns at once, no Timeout line.
            return self.finish(sys);
        }
        Poll::Pending
    }

    fn interrupt(&mut self, sys: &mut Sys) -> Poll {
        self.time_to_die = true;
        if self.phase == Phase::Done {
            return Poll::Exit(1);
        }
        self.finish(sys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts2str_scales_like_arping() {
        assert_eq!(ts2str(Duration::from_nanos(738_560)), "738.560 usec");
        assert_eq!(ts2str(Duration::from_nanos(1_328_000)), "1.328 msec");
        assert_eq!(ts2str(Duration::from_nanos(999)), "999.000 nsec");
        assert_eq!(ts2str(Duration::from_secs(2)), "2.000 sec");
    }

    #[test]
    fn c_number_parsing() {
        assert_eq!(atoi("12abc"), 12);
        assert_eq!(atoi("x"), 0);
        assert_eq!(atoi("-3"), -3);
        assert_eq!(atof("0.5s"), 0.5);
        assert_eq!(atof("abc"), 0.0);
    }
}
