//! busybox 1.35 `ip` (link, addr, neigh: the forms labs use) and `ifconfig`,
//! with output as captured from a UML 6.1 guest (`ip link`, `ip addr`,
//! `ifconfig [-a] [IF]`, `ip neigh`).

use std::net::Ipv4Addr;

use crate::net::wire::MacAddr;
use crate::sim::stack::{IfAddr, Iface, Neighbour, NudState, Stack};
use crate::sim::world::{Poll, Program, Sys};

const IP_USAGE: &str = "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\n\n\
Usage: ip [OPTIONS] address|route|link|tunnel|neigh|rule [ARGS]\n\n\
OPTIONS := -f[amily] inet|inet6|link | -o[neline]\n\n\
ip addr add|del IFADDR dev IFACE | show|flush [dev IFACE] [to PREFIX]\n\
ip route list|flush|add|del|change|append|replace|test ROUTE\n\
ip link set IFACE [up|down] [arp on|off] [multicast on|off]\n\
\t[promisc on|off] [mtu NUM] [name NAME] [qlen NUM] [address MAC]\n\
\t[master IFACE | nomaster] [netns PID]\n\
ip tunnel add|change|del|show [NAME]\n\
\t[mode ipip|gre|sit] [remote ADDR] [local ADDR] [ttl TTL]\n\
ip neigh show|flush [to PREFIX] [dev DEV] [nud STATE]\n\
ip rule [list] | add|del SELECTOR ACTION\n";

/// A program that runs to completion in `start`.
pub struct Instant(pub fn(&mut Sys, &[String]) -> i32, pub Vec<String>);

impl Program for Instant {
    fn start(&mut self, sys: &mut Sys) -> Poll {
        Poll::Exit((self.0)(sys, &self.1))
    }
}

/// `N: NAME: <FLAGS> mtu M qdisc Q qlen 1000` and the `link/...` line.
fn link_lines(index: usize, i: &Iface) -> String {
    let mut flags = Vec::new();
    if !i.loopback && i.up && !i.carrier {
        flags.push("NO-CARRIER");
    }
    if i.loopback {
        flags.push("LOOPBACK");
    } else {
        flags.push("BROADCAST");
        flags.push("MULTICAST");
    }
    // A capture's promiscuity (tcpdump's PACKET_MR_PROMISC) is not IFF_PROMISC:
    // neither `ip link` nor `ifconfig` shows it (checked with busybox 1.35).
    if i.up {
        flags.push("UP");
        if i.running() {
            flags.push("LOWER_UP");
        }
    }
    let qdisc = match (i.loopback, i.up || i.was_up) {
        (true, true) => "noqueue",
        (false, true) => "pfifo_fast",
        (_, false) => "noop",
    };
    let mtu = if i.loopback { 65536 } else { 1500 };
    let link = if i.loopback {
        "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n".to_string()
    } else {
        format!("    link/ether {} brd ff:ff:ff:ff:ff:ff\n", i.mac)
    };
    format!(
        "{}: {}: <{}> mtu {mtu} qdisc {qdisc} qlen 1000\n{link}",
        index + 1,
        i.name,
        flags.join(",")
    )
}

fn addr_lines(i: &Iface) -> String {
    let mut s = String::new();
    for a in &i.addrs {
        let brd = if a.brd != Ipv4Addr::UNSPECIFIED {
            format!("brd {} ", a.brd)
        } else {
            String::new()
        };
        let scope = if a.addr.is_loopback() {
            "host"
        } else {
            "global"
        };
        s.push_str(&format!(
            "    inet {}/{} {brd}scope {scope} {}\n       valid_lft forever preferred_lft forever\n",
            a.addr, a.prefix, i.name
        ));
    }
    s
}

fn no_device(sys: &mut Sys, name: &str) -> i32 {
    sys.err(&format!("ip: can't find device '{name}'\n"));
    1
}

/// Matches a busybox keyword by prefix (`a` = `address`).
fn kw(word: &str, full: &str) -> bool {
    !word.is_empty() && full.starts_with(word)
}

/// `ip ...`
pub fn ip(sys: &mut Sys, args: &[String]) -> i32 {
    let Some(object) = args.first() else {
        sys.err(IP_USAGE);
        return 1;
    };
    let rest = &args[1..];
    if kw(object, "link") {
        ip_link(sys, rest)
    } else if kw(object, "address") {
        ip_addr(sys, rest)
    } else if kw(object, "neighbor") || kw(object, "neighbour") {
        ip_neigh(sys, rest)
    } else {
        sys.err(IP_USAGE);
        1
    }
}

/// Picks `dev NAME` or a bare `NAME` out of `show` arguments.
fn dev_arg(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    let mut dev = None;
    while let Some(a) = it.next() {
        if a == "dev" {
            dev = it.next().cloned();
        } else if a != "show" && a != "list" && a != "lst" {
            dev = Some(a.clone());
        }
    }
    dev
}

fn show(sys: &mut Sys, args: &[String], with_addrs: bool) -> i32 {
    let dev = dev_arg(args);
    let stack = &sys.m.stack;
    let mut s = String::new();
    match &dev {
        Some(name) => match stack.find(name) {
            Some(i) => {
                s.push_str(&link_lines(i, &stack.ifaces[i]));
                if with_addrs {
                    s.push_str(&addr_lines(&stack.ifaces[i]));
                }
            }
            None => return no_device(sys, name),
        },
        None => {
            for (n, i) in stack.ifaces.iter().enumerate() {
                s.push_str(&link_lines(n, i));
                if with_addrs {
                    s.push_str(&addr_lines(i));
                }
            }
        }
    }
    sys.out(&s);
    0
}

fn ip_link(sys: &mut Sys, args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        None => show(sys, args, false),
        Some(w) if kw(w, "show") || kw(w, "list") => show(sys, &args[1..], false),
        Some("set") => {
            let mut it = args[1..].iter();
            let mut dev = None;
            let mut ops: Vec<(String, Option<String>)> = Vec::new();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "dev" => dev = it.next().cloned(),
                    "up" | "down" => ops.push((a.clone(), None)),
                    "address" | "mtu" | "arp" | "multicast" | "promisc" | "name" | "qlen" => {
                        ops.push((a.clone(), it.next().cloned()))
                    }
                    other if dev.is_none() => dev = Some(other.to_string()),
                    other => {
                        sys.err(&format!(
                            "ip: either \"dev\" is duplicate, or \"{other}\" is garbage\n"
                        ));
                        return 1;
                    }
                }
            }
            let Some(dev) = dev else {
                sys.err("ip: need \"dev IFACE\"\n");
                return 1;
            };
            let Some(i) = sys.m.stack.find(&dev) else {
                sys.err("ip: SIOCGIFFLAGS: No such device\n");
                return 2;
            };
            for (op, val) in ops {
                let Some(iface) = sys.m.stack.ifaces.get_mut(i) else {
                    return 2;
                };
                match op.as_str() {
                    "up" => sys.m.stack.set_up(i, true),
                    "down" => sys.m.stack.set_up(i, false),
                    "address" => match val.as_deref().map(str::parse::<MacAddr>) {
                        Some(Ok(mac)) => iface.mac = mac,
                        _ => {
                            sys.err(&format!(
                                "ip: invalid argument '{}' to 'address'\n",
                                val.unwrap_or_default()
                            ));
                            return 1;
                        }
                    },
                    _ => {}
                }
            }
            0
        }
        Some(_) => {
            sys.err(IP_USAGE);
            1
        }
    }
}

/// `A.B.C.D[/P]`.
fn parse_prefix(s: &str) -> Option<(Ipv4Addr, u8)> {
    match s.split_once('/') {
        Some((a, p)) => {
            let p: u8 = p.parse().ok()?;
            (p <= 32).then_some(())?;
            Some((a.parse().ok()?, p))
        }
        None => Some((s.parse().ok()?, 32)),
    }
}

fn ip_addr(sys: &mut Sys, args: &[String]) -> i32 {
    let verb = args.first().map(String::as_str).unwrap_or("show");
    if kw(verb, "show") || kw(verb, "list") || args.is_empty() {
        return show(sys, args.get(1..).unwrap_or_default(), true);
    }
    let add = verb == "add" || verb == "a";
    let del = kw(verb, "delete");
    let flush = kw(verb, "flush");
    if !(add || del || flush) {
        sys.err(IP_USAGE);
        return 1;
    }
    let mut it = args[1..].iter();
    let (mut dev, mut local, mut brd) = (None, None, None);
    while let Some(a) = it.next() {
        match a.as_str() {
            "dev" => dev = it.next().cloned(),
            "brd" | "broadcast" => brd = it.next().cloned(),
            "local" => local = it.next().cloned(),
            other => local = Some(other.to_string()),
        }
    }
    let Some(dev) = dev else {
        sys.err("ip: need \"dev IFACE\"\n");
        return 1;
    };
    let Some(i) = sys.m.stack.find(&dev) else {
        return no_device(sys, &dev);
    };
    if flush {
        if let Some(iface) = sys.m.stack.ifaces.get_mut(i) {
            iface.addrs.clear();
        }
        return 0;
    }
    let Some(local) = local else {
        sys.err("ip: need \"local\"\n");
        return 1;
    };
    let Some((addr, prefix)) = parse_prefix(&local) else {
        sys.err(&format!("ip: bad address '{local}'\n"));
        return 1;
    };
    let Some(iface) = sys.m.stack.ifaces.get_mut(i) else {
        return 1;
    };
    if add {
        let brd = match brd.as_deref() {
            None => Ipv4Addr::UNSPECIFIED,
            Some("+") => {
                let host = if prefix >= 31 { 0 } else { u32::MAX >> prefix };
                Ipv4Addr::from(u32::from(addr) | host)
            }
            Some(b) => match b.parse() {
                Ok(b) => b,
                Err(_) => {
                    sys.err(&format!("ip: bad address '{b}'\n"));
                    return 1;
                }
            },
        };
        if iface
            .addrs
            .iter()
            .any(|a| a.addr == addr && a.prefix == prefix)
        {
            sys.err("ip: RTNETLINK answers: File exists\n");
            return 2;
        }
        iface.addrs.push(IfAddr { addr, prefix, brd });
        0
    } else {
        match iface.addrs.iter().position(|a| a.addr == addr) {
            Some(at) => {
                iface.addrs.remove(at);
                0
            }
            None => {
                sys.err("ip: RTNETLINK answers: Cannot assign requested address\n");
                2
            }
        }
    }
}

fn ip_neigh(sys: &mut Sys, args: &[String]) -> i32 {
    let verb = args.first().map(String::as_str).unwrap_or("show");
    // busybox 1.35's ipneigh.c knows only `show` and `flush` (unique
    // prefixes allowed): add, replace, change, del and list are rejected
    // before any netlink, with exit 1 (checked against the real binary).
    if !(kw(verb, "show") || kw(verb, "flush")) {
        sys.err(&format!("ip: invalid argument '{verb}' to 'ip'\n"));
        return 1;
    }
    let dev = dev_arg(args.get(1..).unwrap_or_default());
    let filter = match &dev {
        Some(name) => match sys.m.stack.find(name) {
            Some(i) => Some(i),
            None => {
                sys.err(&format!("ip: can't find device '{name}'\n"));
                return 1;
            }
        },
        None => None,
    };
    let stack: &Stack = &sys.m.stack;
    let selected = stack
        .neigh
        .iter()
        .filter(|((i, _), _)| filter.is_none_or(|f| f == *i));
    if kw(verb, "flush") {
        // busybox: an argument is required; FAILED (and permanent) entries
        // stay; each deleted entry is listed, then the rounds.
        if args.len() < 2 {
            sys.err("ip: \"ip neigh flush\" requires an argument\n");
            return 1;
        }
        let victims: Vec<(usize, Ipv4Addr)> = selected
            .filter(|(_, n)| !matches!(n.state, NudState::Failed | NudState::Permanent))
            .map(|(k, _)| *k)
            .collect();
        if victims.is_empty() {
            sys.out("Nothing to flush\n");
            return 0;
        }
        let mut s: String = victims
            .iter()
            .filter_map(|k| Some(neigh_line(stack, *k, stack.neigh.get(k)?, filter.is_none())))
            .collect();
        s.push_str(&format!(
            "\n*** Round 1, deleting {} entries ***\n*** Flush is complete after 1 round(s) ***\n",
            victims.len()
        ));
        for k in &victims {
            sys.m.stack.neigh.remove(k);
        }
        sys.out(&s);
        return 0;
    }
    let s: String = selected
        .map(|(k, n)| neigh_line(stack, *k, n, filter.is_none()))
        .collect();
    sys.out(&s);
    0
}

/// One `ip neigh` line as busybox 1.35 prints it. The kernel dumps its
/// hash table, whose order is random per boot; the sim lists by interface
/// and address.
fn neigh_line(stack: &Stack, (i, ip): (usize, Ipv4Addr), n: &Neighbour, show_dev: bool) -> String {
    let dev = if show_dev {
        format!(
            "dev {} ",
            stack.ifaces.get(i).map(|d| d.name.as_str()).unwrap_or("?")
        )
    } else {
        String::new()
    };
    // busybox divides the kernel's cache ages by its clock rate: always
    // 0/0/0 (a UML guest printed that for entries a minute old). `ref`
    // (refcount - 1) is 1 while a state timer holds the entry
    // (INCOMPLETE, REACHABLE, DELAY, PROBE); the address only in a valid
    // state (INCOMPLETE and FAILED leave two spaces).
    let refs = if n.timer.is_some() { "ref 1 " } else { "" };
    let lladdr = if n.state.valid() {
        format!("lladdr {}", n.lladdr)
    } else {
        String::new()
    };
    format!(
        "{ip} {dev}{lladdr} {refs}used 0/0/0 probes {} {}\n",
        n.probes,
        n.state.name()
    )
}

/// busybox's `make_human_readable_str(bytes, 1, 0)` as ifconfig prints it.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn ifconfig_block(i: &Iface) -> String {
    let mut s = if i.loopback {
        format!("{:<10}Link encap:Local Loopback  \n", i.name)
    } else {
        format!(
            "{:<10}Link encap:Ethernet  HWaddr {}  \n",
            i.name,
            i.mac.to_string().to_uppercase()
        )
    };
    if let Some(a) = i.addrs.first() {
        if i.loopback {
            s.push_str(&format!(
                "          inet addr:{}  Mask:{}\n",
                a.addr,
                a.netmask()
            ));
        } else {
            s.push_str(&format!(
                "          inet addr:{}  Bcast:{}  Mask:{}\n",
                a.addr,
                a.brd,
                a.netmask()
            ));
        }
    }
    let mut flags = Vec::new();
    if i.up {
        flags.push("UP");
    }
    if i.loopback {
        flags.push("LOOPBACK");
    } else {
        flags.push("BROADCAST");
    }
    if i.running() {
        flags.push("RUNNING");
    }
    if !i.loopback {
        flags.push("MULTICAST");
    }
    let mtu = if i.loopback { 65536 } else { 1500 };
    s.push_str(&format!(
        "          {}  MTU:{mtu}  Metric:1\n",
        flags.join(" ")
    ));
    let c = i.counters;
    s.push_str(&format!(
        "          RX packets:{} errors:0 dropped:0 overruns:0 frame:0\n\
         \x20         TX packets:{} errors:0 dropped:0 overruns:0 carrier:0\n\
         \x20         collisions:0 txqueuelen:1000 \n\
         \x20         RX bytes:{} ({})  TX bytes:{} ({})\n",
        c.rx_packets,
        c.tx_packets,
        c.rx_bytes,
        human(c.rx_bytes),
        c.tx_bytes,
        human(c.tx_bytes)
    ));
    if !i.loopback {
        s.push_str("          Interrupt:3 \n");
    }
    s.push('\n');
    s
}

/// Classful prefix length, as `SIOCSIFADDR` assigns it.
fn classful(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// `ifconfig [-a] [IF [ADDR] [netmask M] [broadcast B] [up|down]]`
pub fn ifconfig(sys: &mut Sys, args: &[String]) -> i32 {
    let all = args.first().is_some_and(|a| a == "-a");
    let args: Vec<&String> = args.iter().filter(|a| a.as_str() != "-a").collect();
    let stack = &sys.m.stack;
    let Some(name) = args.first() else {
        // Up interfaces (or all with -a), Ethernet before lo as busybox sorts
        // them from /proc/net/dev.
        let mut order: Vec<&Iface> = stack.ifaces.iter().filter(|i| !i.loopback).collect();
        order.extend(stack.ifaces.iter().filter(|i| i.loopback));
        let s: String = order
            .into_iter()
            .filter(|i| all || i.up)
            .map(ifconfig_block)
            .collect();
        sys.out(&s);
        return 0;
    };
    let Some(i) = stack.find(name) else {
        sys.err(&format!(
            "ifconfig: {name}: error fetching interface information: Device not found\n"
        ));
        return 1;
    };
    if args.len() == 1 {
        let s = ifconfig_block(&stack.ifaces[i]);
        sys.out(&s);
        return 0;
    }
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let Some(iface) = sys.m.stack.ifaces.get_mut(i) else {
            return 1;
        };
        match a.as_str() {
            "up" => sys.m.stack.set_up(i, true),
            "down" => sys.m.stack.set_up(i, false),
            "netmask" | "broadcast" => {
                let Some(v) = it.next().and_then(|v| v.parse::<Ipv4Addr>().ok()) else {
                    sys.err(&format!("ifconfig: bad address '{}'\n", a));
                    return 1;
                };
                let Some(first) = iface.addrs.first_mut() else {
                    sys.err("ifconfig: SIOCSIFNETMASK: Cannot assign requested address\n");
                    return 1;
                };
                if a.as_str() == "netmask" {
                    let old_brd =
                        Ipv4Addr::from(u32::from(first.addr) | !u32::from(first.netmask()));
                    first.prefix = u32::from(v).leading_ones() as u8;
                    if first.brd == old_brd {
                        first.brd =
                            Ipv4Addr::from(u32::from(first.addr) | !u32::from(first.netmask()));
                    }
                } else {
                    first.brd = v;
                }
            }
            other => {
                let Ok(addr) = other.parse::<Ipv4Addr>() else {
                    sys.err(&format!("ifconfig: bad address '{other}'\n"));
                    return 1;
                };
                let prefix = classful(addr);
                let brd = Ipv4Addr::from(u32::from(addr) | (u32::MAX >> prefix));
                let new = IfAddr { addr, prefix, brd };
                match iface.addrs.first_mut() {
                    Some(a) => *a = new,
                    None => iface.addrs.push(new),
                }
                // Setting an address brings the interface up.
                iface.up = true;
                iface.was_up = true;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth() -> Iface {
        Iface::ethernet("eth0", MacAddr([0xfe, 0xfd, 0, 0, 0, 1]))
    }

    /// Captured from busybox 1.35 `ip link` in a UML 6.1 guest, before and after `ip link set eth0 up`.
    #[test]
    fn ip_link_lines_match_the_guest() {
        let mut i = eth();
        assert_eq!(
            link_lines(1, &i),
            "2: eth0: <BROADCAST,MULTICAST> mtu 1500 qdisc noop qlen 1000\n    link/ether fe:fd:00:00:00:01 brd ff:ff:ff:ff:ff:ff\n"
        );
        i.up = true;
        i.was_up = true;
        assert_eq!(
            link_lines(1, &i),
            "2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc pfifo_fast qlen 1000\n    link/ether fe:fd:00:00:00:01 brd ff:ff:ff:ff:ff:ff\n"
        );
        assert_eq!(
            link_lines(0, &Iface::loopback()),
            "1: lo: <LOOPBACK> mtu 65536 qdisc noop qlen 1000\n    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
        );
    }

    #[test]
    fn ip_addr_line_matches_the_guest() {
        let mut i = eth();
        i.addrs.push(IfAddr {
            addr: Ipv4Addr::new(1, 1, 1, 1),
            prefix: 24,
            brd: Ipv4Addr::UNSPECIFIED,
        });
        assert_eq!(
            addr_lines(&i),
            "    inet 1.1.1.1/24 scope global eth0\n       valid_lft forever preferred_lft forever\n"
        );
    }

    /// Captured from busybox `ifconfig` on h2 of the arping lab.
    #[test]
    fn ifconfig_block_matches_the_guest() {
        let mut i = Iface::ethernet("eth0", MacAddr([0xfe, 0xfd, 0, 0, 0, 2]));
        i.up = true;
        i.addrs.push(IfAddr {
            addr: Ipv4Addr::new(1, 1, 1, 1),
            prefix: 24,
            brd: Ipv4Addr::UNSPECIFIED,
        });
        i.counters.rx_packets = 8;
        i.counters.rx_bytes = 352;
        i.counters.tx_packets = 6;
        i.counters.tx_bytes = 252;
        assert_eq!(
            ifconfig_block(&i),
            "eth0      Link encap:Ethernet  HWaddr FE:FD:00:00:00:02  \n\
             \x20         inet addr:1.1.1.1  Bcast:0.0.0.0  Mask:255.255.255.0\n\
             \x20         UP BROADCAST RUNNING MULTICAST  MTU:1500  Metric:1\n\
             \x20         RX packets:8 errors:0 dropped:0 overruns:0 frame:0\n\
             \x20         TX packets:6 errors:0 dropped:0 overruns:0 carrier:0\n\
             \x20         collisions:0 txqueuelen:1000 \n\
             \x20         RX bytes:352 (352.0 B)  TX bytes:252 (252.0 B)\n\
             \x20         Interrupt:3 \n\n"
        );
        assert_eq!(
            ifconfig_block(&Iface::loopback()),
            "lo        Link encap:Local Loopback  \n\
             \x20         LOOPBACK  MTU:65536  Metric:1\n\
             \x20         RX packets:0 errors:0 dropped:0 overruns:0 frame:0\n\
             \x20         TX packets:0 errors:0 dropped:0 overruns:0 carrier:0\n\
             \x20         collisions:0 txqueuelen:1000 \n\
             \x20         RX bytes:0 (0.0 B)  TX bytes:0 (0.0 B)\n\n"
        );
    }
}
