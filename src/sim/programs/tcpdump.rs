//! tcpdump 4.99.3 (libpcap 1.10.3) on a guest interface: `tcpdump -i IF [-c N]
//! [-e] [-n] [-p] [arp]`, output as captured in a UML 6.1 guest: the two
//! stderr header lines, one line per frame with a time of day (virtual time
//! from 00:00:00 here), and the statistics at `-c` or at SIGINT (then preceded
//! by an empty line). The frame text is `net::wire::tcpdump_line`.

use std::time::Duration;

use crate::net::wire::tcpdump_line;
use crate::sim::programs::getopt::getopt;
use crate::sim::world::{Poll, Program, Sys};

/// Time from exec to capturing (loading libpcap, activating the socket):
/// frames before that are not seen, as with the real tcpdump; labs wait for
/// the `listening on` line.
pub const STARTUP: Duration = Duration::from_millis(50);

pub struct Tcpdump {
    args: Vec<String>,
    name: String,
    listening: bool,
    iface: usize,
    count: Option<u64>,
    link: bool,
    numeric: bool,
    promisc: bool,
    arp_only: bool,
    captured: u64,
}

impl Tcpdump {
    pub fn new(args: &[String]) -> Self {
        Self {
            args: args.to_vec(),
            name: String::new(),
            listening: false,
            iface: 0,
            count: None,
            link: false,
            numeric: false,
            promisc: true,
            arp_only: false,
            captured: 0,
        }
    }

    fn stats(&self, sys: &mut Sys) {
        sys.err(&format!(
            "{n} packets captured\n{n} packets received by filter\n0 packets dropped by kernel\n",
            n = self.captured
        ));
        sys.capture(self.iface, false, self.promisc);
    }
}

/// `HH:MM:SS.uuuuuu` of a virtual time counted from midnight.
pub fn time_of_day(t: Duration) -> String {
    let s = t.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        t.subsec_micros()
    )
}

/// Without `-n` tcpdump looks up names: IPs stay numeric in a guest without a
/// resolver; MAC addresses get their OUI's name, "(oui Unknown)" for the
/// locally administered fe:fd:... of UML NICs, and ff:ff:ff:ff:ff:ff becomes
/// "Broadcast" (checked against tcpdump 4.99.3 with and without `-e`).
fn resolve_names(line: String, link: bool) -> String {
    let name = |mac: &str| {
        if mac == "ff:ff:ff:ff:ff:ff" {
            "Broadcast".to_string()
        } else {
            format!("{mac} (oui Unknown)")
        }
    };
    let mut line = line;
    if link {
        // "SRC > DST, ethertype ..."
        if let Some((src, rest)) = line.split_once(" > ") {
            if let Some((dst, tail)) = rest.split_once(", ") {
                if src.len() == 17 && dst.len() == 17 {
                    line = format!("{} > {}, {tail}", name(src), name(dst));
                }
            }
        }
    }
    match line.find(" is-at ") {
        Some(at) => {
            let mac_end = at + " is-at ".len() + 17;
            if line.len() >= mac_end && line.is_char_boundary(mac_end) {
                format!("{} (oui Unknown){}", &line[..mac_end], &line[mac_end..])
            } else {
                line
            }
        }
        None => line,
    }
}

impl Program for Tcpdump {
    fn start(&mut self, sys: &mut Sys) -> Poll {
        let parsed = match getopt("tcpdump", &self.args, "c:ei:lnpqvx") {
            Ok(p) => p,
            Err(msg) => {
                sys.err(&msg);
                return Poll::Exit(1);
            }
        };
        let mut ifname = None;
        for o in &parsed.opts {
            match o.flag {
                'c' => match o.arg.as_deref().map(str::parse::<u64>) {
                    Some(Ok(n)) if n > 0 => self.count = Some(n),
                    _ => {
                        sys.err(&format!(
                            "tcpdump: invalid packet count {}\n",
                            o.arg.clone().unwrap_or_default()
                        ));
                        return Poll::Exit(1);
                    }
                },
                'e' => self.link = true,
                'i' => ifname = o.arg.clone(),
                'n' => self.numeric = true,
                'p' => self.promisc = false,
                _ => {}
            }
        }
        let filter = parsed.operands.join(" ");
        match filter.as_str() {
            "" => {}
            "arp" => self.arp_only = true,
            other => {
                sys.err(&format!(
                    "tcpdump: the sim's tcpdump only knows the filter \"arp\", not \"{other}\"\n"
                ));
                return Poll::Exit(1);
            }
        }
        let stack = &sys.m.stack;
        let name = ifname.unwrap_or_else(|| {
            stack
                .ifaces
                .iter()
                .find(|i| !i.loopback && i.up)
                .map(|i| i.name.clone())
                .unwrap_or_else(|| "eth0".into())
        });
        let Some(i) = stack.find(&name) else {
            sys.err(&format!(
                "tcpdump: {name}: No such device exists\n(No such device exists)\n"
            ));
            return Poll::Exit(1);
        };
        if !stack.ifaces.get(i).is_some_and(|d| d.up) {
            sys.err(&format!("tcpdump: {name}: That device is not up\n"));
            return Poll::Exit(1);
        }
        self.iface = i;
        self.name = name;
        sys.wake_at(sys.now + STARTUP);
        Poll::Pending
    }

    fn wake(&mut self, sys: &mut Sys) -> Poll {
        if !self.listening {
            self.listening = true;
            sys.err(&format!(
                "tcpdump: verbose output suppressed, use -v[v]... for full protocol decode\n\
                 listening on {}, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n",
                self.name
            ));
            sys.capture(self.iface, true, self.promisc);
        }
        Poll::Pending
    }

    fn frame(&mut self, sys: &mut Sys, _iface: usize, frame: &[u8], _outgoing: bool) -> Poll {
        if self.arp_only && frame.get(12..14) != Some(&[0x08, 0x06]) {
            return Poll::Pending;
        }
        if self.count.is_some_and(|c| self.captured >= c) {
            return Poll::Pending;
        }
        let mut line = tcpdump_line(frame, self.link);
        if !self.numeric {
            line = resolve_names(line, self.link);
        }
        self.captured += 1;
        let sep = if line.starts_with(' ') { "" } else { " " };
        sys.out(&format!("{}{sep}{line}\n", time_of_day(sys.now)));
        if self.count.is_some_and(|c| self.captured >= c) {
            self.stats(sys);
            return Poll::Exit(0);
        }
        Poll::Pending
    }

    fn interrupt(&mut self, sys: &mut Sys) -> Poll {
        if !self.listening {
            return Poll::Exit(130);
        }
        sys.err("\n");
        self.stats(sys);
        Poll::Exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines captured from tcpdump 4.99.3 on a veth pair (`-e` with and without `-n`).
    #[test]
    fn names_without_n() {
        assert_eq!(
            resolve_names(
                "ARP, Reply 1.1.1.1 is-at fe:fd:00:00:00:02, length 28".into(),
                false
            ),
            "ARP, Reply 1.1.1.1 is-at fe:fd:00:00:00:02 (oui Unknown), length 28"
        );
        assert_eq!(
            resolve_names("fe:fd:00:00:00:01 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 58: Request who-has 1.1.1.1 tell 0.0.0.0, length 44".into(), true),
            "fe:fd:00:00:00:01 (oui Unknown) > Broadcast, ethertype ARP (0x0806), length 58: Request who-has 1.1.1.1 tell 0.0.0.0, length 44"
        );
        assert_eq!(
            resolve_names("fe:fd:00:00:00:02 > fe:fd:00:00:00:01, ethertype ARP (0x0806), length 42: Reply 1.1.1.1 is-at fe:fd:00:00:00:02, length 28".into(), true),
            "fe:fd:00:00:00:02 (oui Unknown) > fe:fd:00:00:00:01 (oui Unknown), ethertype ARP (0x0806), length 42: Reply 1.1.1.1 is-at fe:fd:00:00:00:02 (oui Unknown), length 28"
        );
        assert_eq!(
            time_of_day(Duration::from_micros(3_725_000_042)),
            "01:02:05.000042"
        );
    }
}
