//! busybox 1.35 `arp` (networking/arp.c): the way a busybox guest sets
//! static neighbour entries (its `ip neigh` has no `add`). `-s HOST HWADDR
//! [temp]` is SIOCSARP (`arp_req_set`: PERMANENT, or STALE with `temp`),
//! `-d HOST` is SIOCDARP (`arp_invalidate`: the entry goes), and the
//! listing reads /proc/net/arp. Messages and exit codes as the guest's
//! busybox prints them (checked in a UML 6.1 guest, lab `neigh-static`).
//! Proxy ARP (`pub`) is not modelled.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::getopt::getopt;
use crate::net::wire::MacAddr;
use crate::sim::stack::Stack;
use crate::sim::world::Sys;

const USAGE: &str = "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\n\n\
Usage: arp\n\
[-vn]\t[-H HWTYPE] [-i IF] -a [HOSTNAME]\n\
[-v]\t\t    [-i IF] -d HOSTNAME [pub]\n\
[-v]\t[-H HWTYPE] [-i IF] -s HOSTNAME HWADDR [temp]\n\
[-v]\t[-H HWTYPE] [-i IF] -s HOSTNAME HWADDR [netmask MASK] pub\n\
[-v]\t[-H HWTYPE] [-i IF] -Ds HOSTNAME IFACE [netmask MASK] pub\n\n\
Manipulate ARP cache\n\n\
\t-a\t\tDisplay (all) hosts\n\
\t-d\t\tDelete ARP entry\n\
\t-s\t\tSet new entry\n\
\t-v\t\tVerbose\n\
\t-n\t\tDon't resolve names\n\
\t-i IF\t\tNetwork interface\n\
\t-D\t\tRead HWADDR from IFACE\n\
\t-A,-p AF\tProtocol family\n\
\t-H HWTYPE\tHardware address type\n";

/// What one `arp` run printed and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
    /// Frames that waited in an INCOMPLETE entry `-s` completed: (device, frame).
    pub frames: Vec<(usize, Vec<u8>)>,
}

impl Outcome {
    fn die(msg: String) -> Self {
        Self {
            stderr: msg,
            code: 1,
            ..Self::default()
        }
    }
    fn usage() -> Self {
        Self::die(USAGE.into())
    }
}

/// The guest's `arp ...`.
pub fn arp(sys: &mut Sys, args: &[String]) -> i32 {
    let now = sys.now;
    let o = run(&mut sys.m.stack, now, args);
    sys.out(&o.stdout);
    sys.err(&o.stderr);
    for (iface, f) in o.frames {
        sys.send(iface, f);
    }
    o.code
}

/// `INET_resolve` without a resolver (the guest has none): a dotted quad,
/// else `Unknown host`.
fn host(s: &str) -> Result<Ipv4Addr, Outcome> {
    s.parse()
        .map_err(|_| Outcome::die(format!("arp: {s}: Unknown host\n")))
}

/// busybox's `in_ether`: six hex bytes of one or two digits, `:`-separated.
fn ether(s: &str) -> Option<MacAddr> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(MacAddr(mac))
}

/// Runs `arp args` against `stack` at `now`.
pub fn run(stack: &mut Stack, now: Duration, args: &[String]) -> Outcome {
    let parsed = match getopt("arp", args, "A:p:H:t:i:adnDsv") {
        Ok(p) => p,
        Err(msg) => return Outcome::die(format!("{msg}{USAGE}")),
    };
    let has = |c: char| parsed.opts.iter().any(|o| o.flag == c);
    let last = |cs: &[char]| {
        parsed
            .opts
            .iter()
            .rev()
            .find(|o| cs.contains(&o.flag))
            .and_then(|o| o.arg.clone())
    };
    let mut device = last(&['i']).unwrap_or_default();
    if let Some(af) = last(&['A', 'p']) {
        if af != "inet" {
            return Outcome::die(format!("arp: {af}: unknown address family\n"));
        }
    }
    let hw_set = match last(&['H', 't']) {
        Some(hw) if hw == "ether" => true,
        Some(hw) => return Outcome::die(format!("arp: {hw}: unknown hardware type\n")),
        None => false,
    };
    let argv = &parsed.operands;
    if has('d') || has('s') {
        let Some(h) = argv.first() else {
            return Outcome::die("arp: need host name\n".into());
        };
        let ip = match host(h) {
            Ok(ip) => ip,
            Err(o) => return o,
        };
        if has('s') {
            set(stack, now, ip, &argv[1..], has('D'), &mut device)
        } else {
            del(stack, ip, h, &argv[1..], &mut device)
        }
    } else {
        show(stack, argv.first(), &device, hw_set)
    }
}

/// The modifiers after `-s HOST HWADDR` or `-d HOST`: `pub`, `priv`,
/// `temp`, `trail`, `dontpub`, `auto`, `dev IF`, `netmask MASK`.
struct Mods {
    publ: Option<bool>,
    temp: bool,
}

fn mods(words: &[String], device: &mut String) -> Result<Mods, Outcome> {
    let mut m = Mods {
        publ: None,
        temp: false,
    };
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "pub" => m.publ = Some(true),
            "priv" => m.publ = Some(m.publ.unwrap_or(false)),
            "temp" => m.temp = true,
            // Flags the kernel ignores for an entry of its own.
            "trail" | "dontpub" | "auto" => {}
            "dev" => *device = it.next().ok_or_else(Outcome::usage)?.clone(),
            "netmask" => {
                let mask = it.next().ok_or_else(Outcome::usage)?;
                if mask != "255.255.255.255" {
                    host(mask)?;
                }
            }
            _ => return Err(Outcome::usage()),
        }
    }
    Ok(m)
}

fn not_modelled() -> Outcome {
    Outcome::die("arp: proxy ARP (pub) is not modelled by the sim\n".into())
}

/// The device the kernel uses: the named one (ENODEV if there is none),
/// else the one the route to `ip` goes through (ENETUNREACH).
fn device_for(stack: &Stack, device: &str, ip: Ipv4Addr) -> Result<usize, &'static str> {
    if device.is_empty() {
        stack.route_dev(ip).ok_or("Network is unreachable")
    } else {
        stack.find(device).ok_or("No such device")
    }
}

fn set(
    stack: &mut Stack,
    now: Duration,
    ip: Ipv4Addr,
    words: &[String],
    from_dev: bool,
    device: &mut String,
) -> Outcome {
    let Some(hw) = words.first() else {
        return Outcome::die("arp: need hardware address\n".into());
    };
    let mac = if from_dev {
        match stack.find(hw).and_then(|i| stack.ifaces.get(i)) {
            Some(d) => d.mac,
            None => {
                return Outcome::die(format!(
                    "arp: can't get HW-Address for '{hw}': No such device\n"
                ))
            }
        }
    } else {
        match ether(hw) {
            Some(m) => m,
            None => return Outcome::die("arp: invalid hardware address\n".into()),
        }
    };
    let m = match mods(&words[1..], device) {
        Ok(m) => m,
        Err(o) => return o,
    };
    if m.publ == Some(true) {
        return not_modelled();
    }
    let iface = match device_for(stack, device, ip) {
        Ok(i) => i,
        Err(e) => return Outcome::die(format!("arp: SIOCSARP: {e}\n")),
    };
    let frames = stack
        .neigh_set(iface, ip, mac, !m.temp, now)
        .into_iter()
        .map(|f| (iface, f))
        .collect();
    Outcome {
        frames,
        ..Outcome::default()
    }
}

fn del(stack: &mut Stack, ip: Ipv4Addr, h: &str, words: &[String], device: &mut String) -> Outcome {
    let m = match mods(words, device) {
        Ok(m) => m,
        Err(o) => return o,
    };
    // Without `pub`/`priv` busybox tries the entry, then (on ENXIO) a proxy
    // entry, whose absence is ENOENT.
    if m.publ == Some(true) && !words.iter().any(|w| w == "priv") {
        return not_modelled();
    }
    let iface = match device_for(stack, device, ip) {
        Ok(i) => i,
        Err(e) => return Outcome::die(format!("arp: SIOCDARP(priv): {e}\n")),
    };
    if stack.neigh_delete(iface, ip) {
        return Outcome::default();
    }
    match m.publ {
        // `priv` alone: "No ARP entry" on stdout, arp_del's -1 as status.
        Some(false) => Outcome {
            stdout: format!("No ARP entry for {h}\n"),
            code: 255,
            ..Outcome::default()
        },
        _ => Outcome::die("arp: SIOCDARP(pub): No such file or directory\n".into()),
    }
}

/// `arp_show`: /proc/net/arp's entries (every one the table holds), those
/// matching HOST and `-i IF` printed; no name service in the guest, so `?`.
fn show(stack: &Stack, name: Option<&String>, device: &str, hw_set: bool) -> Outcome {
    let want = match name.map(|n| host(n)).transpose() {
        Ok(w) => w,
        Err(o) => return o,
    };
    let mut out = String::new();
    let (mut entries, mut shown) = (0u32, 0u32);
    for (&(i, ip), n) in &stack.neigh {
        let dev = stack.ifaces.get(i).map_or("?", |d| d.name.as_str());
        entries += 1;
        if want.is_some_and(|w| w != ip) || (!device.is_empty() && dev != device) {
            continue;
        }
        shown += 1;
        let at = if n.state.valid() {
            format!("{} [ether] ", n.lladdr)
        } else {
            "<incomplete> ".into()
        };
        let perm = if n.state == crate::sim::stack::NudState::Permanent {
            "PERM"
        } else {
            ""
        };
        out.push_str(&format!("? ({ip}) at {at}{perm} on {dev}\n"));
    }
    if shown == 0 && (hw_set || want.is_some() || !device.is_empty()) {
        out.push_str(&format!("No match found in {entries} entries\n"));
    }
    Outcome {
        stdout: out,
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::stack::{IfAddr, Iface, NudState};
    use proptest::prelude::*;

    fn stack() -> Stack {
        let mut eth = Iface::ethernet("eth0", MacAddr([0xfe, 0xfd, 0, 0, 0, 2]));
        eth.up = true;
        eth.was_up = true;
        eth.addrs.push(IfAddr {
            addr: Ipv4Addr::new(10, 0, 0, 2),
            prefix: 24,
            brd: Ipv4Addr::new(10, 0, 0, 255),
        });
        Stack::new(vec![eth])
    }

    fn arp(s: &mut Stack, line: &str) -> (String, String, i32) {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        let o = run(s, Duration::ZERO, &args);
        (o.stdout, o.stderr, o.code)
    }

    fn ok(out: &str) -> (String, String, i32) {
        (out.into(), String::new(), 0)
    }

    fn err(msg: &str) -> (String, String, i32) {
        (String::new(), msg.into(), 1)
    }

    /// Each line as the guest's busybox printed it (UML 6.1, lab neigh-static).
    #[test]
    fn set_show_and_delete_as_in_the_guest() {
        let mut s = stack();
        assert_eq!(arp(&mut s, "-s 10.0.0.1 fe:fd:00:00:00:09"), ok(""));
        assert_eq!(
            arp(&mut s, "-a"),
            ok("? (10.0.0.1) at fe:fd:00:00:00:09 [ether] PERM on eth0\n")
        );
        // Setting again overwrites.
        assert_eq!(arp(&mut s, "-s 10.0.0.1 fe:fd:00:00:00:08"), ok(""));
        assert_eq!(
            arp(&mut s, "-n"),
            ok("? (10.0.0.1) at fe:fd:00:00:00:08 [ether] PERM on eth0\n")
        );
        assert_eq!(arp(&mut s, "-s 10.0.0.7 fe:fd:00:00:00:07 temp"), ok(""));
        assert_eq!(
            arp(&mut s, "-a 10.0.0.7"),
            ok("? (10.0.0.7) at fe:fd:00:00:00:07 [ether]  on eth0\n")
        );
        assert_eq!(
            s.neigh
                .get(&(1, Ipv4Addr::new(10, 0, 0, 7)))
                .map(|n| n.state),
            Some(NudState::Stale)
        );
        assert_eq!(
            arp(&mut s, "-d 10.0.0.9"),
            err("arp: SIOCDARP(pub): No such file or directory\n")
        );
        assert_eq!(arp(&mut s, "-d 10.0.0.7"), ok(""));
        assert_eq!(
            arp(&mut s, "-a 10.0.0.7"),
            ok("No match found in 1 entries\n")
        );
        assert_eq!(arp(&mut s, "-s 10.0.0.3 fe:fd:00:00:00:03 -i eth0"), ok(""));
    }

    /// Checked with the host's busybox 1.35 (argument errors come first).
    #[test]
    fn argument_errors_as_busybox_prints_them() {
        let mut s = stack();
        assert_eq!(arp(&mut s, "-s"), err("arp: need host name\n"));
        assert_eq!(arp(&mut s, "-d"), err("arp: need host name\n"));
        assert_eq!(
            arp(&mut s, "-s 10.0.0.5"),
            err("arp: need hardware address\n")
        );
        assert_eq!(
            arp(&mut s, "-s 10.0.0.5 zz"),
            err("arp: invalid hardware address\n")
        );
        assert_eq!(
            arp(&mut s, "-s host.x fe:fd:00:00:00:05"),
            err("arp: host.x: Unknown host\n")
        );
        assert_eq!(
            arp(&mut s, "-s 10.0.0.5 fe:fd:00:00:00:05 bogus"),
            err(USAGE)
        );
        assert_eq!(
            arp(&mut s, "-x"),
            err(&format!("arp: invalid option -- 'x'\n{USAGE}"))
        );
        assert_eq!(
            arp(&mut s, "-s 10.0.0.5 fe:fd:00:00:00:05 -i eth9"),
            err("arp: SIOCSARP: No such device\n")
        );
        assert_eq!(
            arp(&mut s, "-a -i eth9"),
            ok("No match found in 0 entries\n")
        );
        assert!(s.neigh.is_empty());
    }

    /// A permanent entry ignores ARP from its address with another MAC.
    #[test]
    fn a_permanent_entry_is_not_overridden_by_arp() {
        let mut s = stack();
        arp(&mut s, "-s 10.0.0.1 fe:fd:00:00:00:08");
        let mut req = vec![0xff; 6];
        req.extend([0xfe, 0xfd, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        req.extend([
            0xfe, 0xfd, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
        ]);
        req.resize(60, 0);
        s.receive(1, &req, Duration::from_secs(5));
        let n = s.neigh.get(&(1, Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            n.map(|n| (n.state, n.lladdr)),
            Some((NudState::Permanent, MacAddr([0xfe, 0xfd, 0, 0, 0, 8])))
        );
        assert_eq!(s.next_timer(), None, "never timed out nor probed");
        s.set_up(1, false);
        assert!(s.neigh.is_empty(), "down removes permanent entries too");
    }

    proptest! {
        #[test]
        fn never_panics(args in proptest::collection::vec("[-a-z0-9.: ]{0,12}", 0..6)) {
            let mut s = stack();
            let _ = run(&mut s, Duration::ZERO, &args);
        }
    }
}
