//! `eth<N>=<transport>,...` and `vec<N>:key=value,...` (arch/um/drivers/net_kern.c,
//! the transports' `*_kern.c`, vector_kern.c), as the Debian 6.1 build has them.
//!
//! `eth` words are stored at `__setup` time and matched against each transport when
//! it registers (an initcall), so devices come up in transport registration order.
//! The MAC pointer a transport's parser fills is shared by all words of that
//! transport, which is why a device without a MAC inherits the previous one's.

use super::kernel::Kernel;
use super::model::*;

/// Transports of the Debian 6.1 build in registration (initcall) order; `pcap`
/// is not built, so `eth<N>=pcap,...` is silently ignored like any unknown name.
pub const TRANSPORTS: &[&str] = &[
    "slip", "slirp", "daemon", "vde", "mcast", "ucast", "ethertap", "tuntap",
];

/// `SLIRP_MAX_ARGS`.
const SLIRP_MAX_ARGS: usize = 100;

/// `eth_setup`: unit number (base 0), `=`, the rest kept for the transports.
pub(crate) fn eth_setup(k: &mut Kernel, s: usize, span: Span) {
    let text = k.buf.cstr(s);
    let (n, end) = k.buf.strtoul(s, 0);
    let error = if end == s {
        "Bad device number"
    } else if k.buf.at(end) != b'=' {
        "Expected '=' after device number"
    } else {
        k.eth_cmd_line.push(super::kernel::EthInit {
            index: n as u32 as i32,
            init: end + 1,
            span,
        });
        return;
    };
    let help = if error == "Bad device number" {
        "write eth<N>=<transport>,<parameters>"
    } else {
        "write eth<N>=<transport>,...; no spaces inside an option"
    };
    k.diag(
        Severity::Error,
        Channel::Log,
        format!("eth_setup - Couldn't parse '{text}' : {error}"),
        span,
        "the device is not configured",
        Some(help.into()),
    );
}

/// `vector_setup`: `vec<N>:` then `key=value` pairs.
pub(crate) fn vector_setup(k: &mut Kernel, s: usize, span: Span) {
    // vector_parse: find the first ':' (stopping one byte before the end).
    let mut p = s;
    while k.buf.at(p) != b':' && k.buf.strlen(p) > 1 {
        p += 1;
    }
    let error = if k.buf.at(p) != b':' {
        "Expected ':' after device number"
    } else {
        k.buf.set(p, 0);
        let unit = k.buf.cstr(s);
        match parse_kstrtouint(&unit) {
            None => "Bad device number",
            Some(n) => {
                k.vec_cmd_line.push(super::kernel::EthInit {
                    index: n as i32,
                    init: p + 1,
                    span,
                });
                return;
            }
        }
    };
    let text = k.buf.cstr(s);
    k.diag(
        Severity::Error,
        Channel::Log,
        format!("vector_setup - Couldn't parse '{text}' : {error}"),
        span,
        "the device is not configured",
        Some("write vec<N>:transport=<t>,key=value,...".into()),
    );
}

/// `kstrtouint(s, 0)`: the whole string must be one number (a trailing newline is
/// allowed), no overflow.
fn parse_kstrtouint(s: &str) -> Option<u32> {
    let s = s.strip_suffix('\n').unwrap_or(s);
    let s = s.strip_prefix('+').unwrap_or(s);
    let (digits, radix) = if let Some(hex) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// The net initcalls: each transport in registration order configures the
/// pending `eth` words that name it; then the vector devices.
pub(crate) fn configure_all(k: &mut Kernel) {
    let mut pending = k.eth_cmd_line.clone();
    for &transport in TRANSPORTS {
        // register_transport's `mac` lives across all words of one transport.
        let mut mac: Option<usize> = None;
        let mut remaining = Vec::new();
        for eth in pending {
            let len = transport.len();
            let matches_name = (0..len).all(|i| k.buf.at(eth.init + i) == transport.as_bytes()[i]);
            let after = eth.init + len;
            let setup_at = match k.buf.at(after) {
                b',' if matches_name => after + 1,
                0 if matches_name => after,
                _ => {
                    remaining.push(eth);
                    continue;
                }
            };
            let mut pre = Vec::new();
            if let Some(params) = setup(k, transport, setup_at, &mut mac, &eth, &mut pre) {
                eth_configure(k, &eth, transport, params, mac, pre);
            }
        }
        pending = remaining;
    }
    for eth in pending {
        let text = k.buf.cstr(eth.init);
        let name = text.split(',').next().unwrap_or("");
        k.diag(
            Severity::Warning,
            Channel::Lint,
            format!(
                "eth{}: no transport named '{}' in this build",
                eth.index, name
            ),
            eth.span,
            "the kernel ignores the device silently",
            Some(format!("transports: {}", TRANSPORTS.join(", "))),
        );
    }
    let vecs = k.vec_cmd_line.clone();
    for v in vecs {
        vector_configure(k, &v);
    }
}

/// `split_if_spec`: fills up to `n` comma-separated fields in place (an empty field
/// keeps its default: `None`), returns the fields and any text after the last one.
fn split_if_spec(k: &mut Kernel, s: usize, n: usize) -> (Vec<Option<usize>>, Option<usize>) {
    let mut fields = vec![None; n];
    let mut p = s;
    for field in fields.iter_mut() {
        if k.buf.at(p) == 0 {
            return (fields, None);
        }
        let end = k.buf.strchr(p, b',');
        if end != Some(p) {
            *field = Some(p);
        }
        match end {
            None => return (fields, None),
            Some(e) => {
                k.buf.set(e, 0);
                p = e + 1;
            }
        }
    }
    (fields, Some(p))
}

#[allow(clippy::too_many_arguments)]
fn err(k: &mut Kernel, eth: &super::kernel::EthInit, sev: Severity, msg: String, help: &str) {
    let effect = if sev == Severity::Warning {
        "the device is configured anyway"
    } else {
        "the device is not configured"
    };
    k.diag(
        sev,
        Channel::Log,
        msg,
        eth.span,
        effect,
        (!help.is_empty()).then(|| help.to_string()),
    );
}

/// Parses a decimal/octal field the way the transports do: `simple_strtoul` must
/// consume the whole field.
fn whole_number(k: &Kernel, at: usize, base: u32) -> Option<u64> {
    let (v, end) = k.buf.strtoul(at, base);
    (end != at && k.buf.at(end) == 0).then_some(v)
}

/// An optional numeric field of a transport spec. A field that is not a whole
/// number is reported with the kernel's `<func> - Bad <what> : '<text>'` line
/// and makes the device fail (`Err`).
fn number_field(
    k: &mut Kernel,
    eth: &super::kernel::EthInit,
    field: Option<usize>,
    base: u32,
    func_what: (&str, &str),
    help: &str,
) -> Result<Option<u64>, ()> {
    let Some(p) = field else { return Ok(None) };
    match whole_number(k, p, base) {
        Some(v) => Ok(Some(v)),
        None => {
            let (func, what) = func_what;
            let m = format!("{func} - Bad {what} : '{}'", k.buf.cstr(p));
            err(k, eth, Severity::Error, m, help);
            Err(())
        }
    }
}

/// Text after a transport's last field: the kernel's `<func> - Extra garbage`
/// error, which makes the device fail (returns true).
fn extra_garbage(
    k: &mut Kernel,
    eth: &super::kernel::EthInit,
    remain: Option<usize>,
    func: &str,
    help: &str,
) -> bool {
    let Some(r) = remain else { return false };
    let m = format!(
        "{func} - Extra garbage on specification : '{}'",
        k.buf.cstr(r)
    );
    err(k, eth, Severity::Error, m, help);
    true
}

/// A transport's `setup`: returns its parameters, or `None` (device not created).
fn setup(
    k: &mut Kernel,
    transport: &str,
    s: usize,
    mac: &mut Option<usize>,
    eth: &super::kernel::EthInit,
    pre: &mut Vec<String>,
) -> Option<NetParams> {
    let cstr = |k: &Kernel, at: Option<usize>| at.map(|a| k.buf.cstr(a));
    match transport {
        "slip" => {
            let gate = (k.buf.at(s) != 0).then(|| k.buf.cstr(s));
            Some(NetParams::Slip { gate_addr: gate })
        }
        "slirp" => {
            let (f, remain) = split_if_spec(k, s, 1);
            if f[0].is_some() {
                *mac = f[0];
            }
            let mut argv = Vec::new();
            if let Some(mut p) = remain {
                loop {
                    if argv.len() >= SLIRP_MAX_ARGS - 1 {
                        let m = "slirp_setup: truncating slirp arguments".to_string();
                        pre.push(m.clone());
                        err(
                            k,
                            eth,
                            Severity::Warning,
                            m,
                            "slirp takes at most 99 arguments",
                        );
                        break;
                    }
                    let start = p;
                    while k.buf.at(p) != 0 && k.buf.at(p) != b',' {
                        if k.buf.at(p) == b'_' {
                            k.buf.set(p, b' ');
                        }
                        p += 1;
                    }
                    let at_comma = k.buf.at(p) == b',';
                    if at_comma {
                        k.buf.set(p, 0);
                    }
                    argv.push(k.buf.cstr(start));
                    if !at_comma {
                        break;
                    }
                    p += 1;
                }
            } else {
                argv.push("slirp".to_string());
            }
            Some(NetParams::Slirp { argv })
        }
        "daemon" => {
            let (f, remain) = split_if_spec(k, s, 3);
            if f[0].is_some() {
                *mac = f[0];
            }
            if remain.is_some() {
                let m = "daemon_setup : Ignoring data socket specification".to_string();
                pre.push(m.clone());
                err(
                    k,
                    eth,
                    Severity::Warning,
                    m,
                    "the daemon transport has 3 fields: <mac>,<sock type>,<ctl socket>",
                );
            }
            Some(NetParams::Daemon {
                sock_type: cstr(k, f[1]).unwrap_or_else(|| "unix".into()),
                ctl_sock: cstr(k, f[2])
                    .unwrap_or_else(|| "/var/run/uml-utilities/uml_switch.ctl".into()),
            })
        }
        "vde" => {
            let (f, remain) = split_if_spec(k, s, 6);
            if f[1].is_some() {
                *mac = f[1];
            }
            if let Some(r) = remain {
                let m = format!("vde_setup - Ignoring extra data :'{}'", k.buf.cstr(r));
                pre.push(m.clone());
                err(
                    k,
                    eth,
                    Severity::Warning,
                    m,
                    "vde takes 6 fields: <switch>,<mac>,<port>,<group>,<mode>,<description>",
                );
            }
            let port = number_field(
                k,
                eth,
                f[2],
                10,
                ("vde_setup", "port"),
                "the port is a decimal number",
            )
            .ok()?
            .map_or(0, |v| v as u32);
            let mode = number_field(
                k,
                eth,
                f[4],
                8,
                ("vde_setup", "mode"),
                "the mode is an octal number",
            )
            .ok()?
            .map(|v| v as u32);
            let switch = cstr(k, f[0]);
            pre.push(format!(
                "Configured vde device: {}",
                switch.as_deref().unwrap_or("(default socket)")
            ));
            Some(NetParams::Vde {
                switch,
                port,
                group: cstr(k, f[3]),
                mode,
                description: cstr(k, f[5]),
            })
        }
        "mcast" => {
            let (f, remain) = split_if_spec(k, s, 4);
            if f[0].is_some() {
                *mac = f[0];
            }
            let help = "mcast takes 4 fields: <mac>,<addr>,<port>,<ttl>";
            if extra_garbage(k, eth, remain, "mcast_setup", help) {
                return None;
            }
            let port = number_field(
                k,
                eth,
                f[2],
                10,
                ("mcast_setup", "port"),
                "the port is a decimal number",
            )
            .ok()?
            .map_or(1102, |v| v as u16);
            let ttl = number_field(
                k,
                eth,
                f[3],
                10,
                ("mcast_setup", "ttl"),
                "the ttl is a decimal number",
            )
            .ok()?
            .map_or(1, |v| v as u32);
            let addr = cstr(k, f[1]).unwrap_or_else(|| "239.192.168.1".into());
            pre.push(format!("Configured mcast device: {addr}:{port}-{ttl}"));
            Some(NetParams::Mcast { addr, port, ttl })
        }
        "ucast" => {
            let (f, remain) = split_if_spec(k, s, 4);
            if f[0].is_some() {
                *mac = f[0];
            }
            let help = "ucast takes 4 fields: <mac>,<remote addr>,<listen port>,<remote port>";
            if extra_garbage(k, eth, remain, "ucast_setup", help) {
                return None;
            }
            let mut ports = [1102u16, 1102u16];
            for (i, what) in [(0usize, "listen port"), (1, "remote port")] {
                let func_what = ("ucast_setup", what);
                if let Some(v) =
                    number_field(k, eth, f[2 + i], 10, func_what, "ports are decimal numbers")
                        .ok()?
                {
                    ports[i] = v as u16;
                }
            }
            let addr = cstr(k, f[1]).unwrap_or_default();
            pre.push(format!(
                "Configured ucast device: :{} -> {}:{}",
                ports[0], addr, ports[1]
            ));
            Some(NetParams::Ucast {
                addr,
                listen_port: ports[0],
                remote_port: ports[1],
            })
        }
        "ethertap" | "tuntap" => {
            let (f, remain) = split_if_spec(k, s, 3);
            if f[1].is_some() {
                *mac = f[1];
            }
            let help = "tap transports take 3 fields: <tap dev>,<mac>,<gate ip>";
            if extra_garbage(k, eth, remain, "tap_setup_common", help) {
                return None;
            }
            let dev_name = cstr(k, f[0]);
            let gate_addr = cstr(k, f[2]);
            if transport == "tuntap" {
                return Some(NetParams::Tuntap {
                    dev_name,
                    gate_addr,
                });
            }
            match dev_name {
                Some(dev_name) => Some(NetParams::Ethertap {
                    dev_name,
                    gate_addr,
                }),
                None => {
                    let m = "ethertap_setup : Missing tap device name".to_string();
                    err(
                        k,
                        eth,
                        Severity::Error,
                        m,
                        "write eth<N>=ethertap,<tap dev>,...",
                    );
                    None
                }
            }
        }
        _ => None,
    }
}

/// `uml_net_setup_etheraddr`: the MAC text at `mac` (a C string in the buffer;
/// parsing may run on into the following bytes) or a random address.
fn setup_etheraddr(
    k: &mut Kernel,
    mac: Option<usize>,
    name: &str,
    span: Span,
    msgs: &mut Vec<String>,
) -> Option<[u8; 6]> {
    let random = |_: &mut Kernel, msgs: &mut Vec<String>| {
        msgs.push(format!(
            "Choosing a random ethernet address for device {name}"
        ));
        None
    };
    let Some(mut p) = mac else {
        return random(k, msgs);
    };
    let mut addr = [0u8; 6];
    for byte in addr.iter_mut() {
        let (v, end) = k.buf.strtoul(p, 16);
        let next = k.buf.at(end);
        if end == p || !(next == b':' || next == b',' || next == 0) {
            let m = format!(
                "setup_etheraddr: failed to parse '{}' as an ethernet address",
                k.buf.cstr(p)
            );
            msgs.push(m.clone());
            k.diag(
                Severity::Error,
                Channel::Log,
                m,
                span,
                "the device gets a random MAC",
                Some("a MAC is six hex bytes separated by ':' (e.g. fe:fd:00:00:00:01); no spaces inside an option".into()),
            );
            return random(k, msgs);
        }
        *byte = v as u8;
        p = end + 1;
    }
    if addr[0] & 1 != 0 {
        let m = "Attempt to assign a multicast ethernet address to a device disallowed";
        msgs.push(m.into());
        k.diag(
            Severity::Error,
            Channel::Log,
            m,
            span,
            "the device gets a random MAC",
            Some("clear bit 0x01 of the first byte (e.g. fe:...)".into()),
        );
        return random(k, msgs);
    }
    if addr == [0; 6] {
        let m = "Attempt to assign an invalid ethernet address to a device disallowed";
        msgs.push(m.into());
        k.diag(
            Severity::Error,
            Channel::Log,
            m,
            span,
            "the device gets a random MAC",
            None,
        );
        return random(k, msgs);
    }
    if addr[0] & 2 == 0 {
        let lines = [
            "Warning: Assigning a globally valid ethernet address to a device".to_string(),
            "You should set the 2nd rightmost bit in the first byte of the MAC,".to_string(),
            format!(
                "i.e. {}",
                fmt_mac(&[addr[0] | 2, addr[1], addr[2], addr[3], addr[4], addr[5]])
            ),
        ];
        for (i, l) in lines.iter().enumerate() {
            msgs.push(l.clone());
            k.diag(
                Severity::Warning,
                Channel::Log,
                l.clone(),
                span,
                if i == 0 {
                    "the MAC is used as given"
                } else {
                    ""
                },
                None,
            );
        }
    }
    Some(addr)
}

pub(crate) fn fmt_mac(a: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        a[0], a[1], a[2], a[3], a[4], a[5]
    )
}

fn eth_configure(
    k: &mut Kernel,
    eth: &super::kernel::EthInit,
    transport: &str,
    params: NetParams,
    mac: Option<usize>,
    pre: Vec<String>,
) {
    let name = format!("eth{}", eth.index);
    let mut messages = pre;
    let addr = setup_etheraddr(k, mac, &name, eth.span, &mut messages);
    let shown = addr
        .map(|a| fmt_mac(&a))
        .unwrap_or_else(|| "<random>".into());
    messages.push(format!("Netdevice {} ({shown}) : ", eth.index));
    messages.extend(init_lines(&params));
    register(k, name, eth, transport, params, addr, messages);
}

fn register(
    k: &mut Kernel,
    name: String,
    eth: &super::kernel::EthInit,
    transport: &str,
    params: NetParams,
    addr: Option<[u8; 6]>,
    messages: Vec<String>,
) {
    if k.net.iter().any(|d| d.name == name) {
        k.diag(
            Severity::Warning,
            Channel::Lint,
            format!("{name} is defined twice"),
            eth.span,
            "the kernel configures it but cannot register a second device of that name; the one configured first stays",
            Some("give each device its own number".into()),
        );
        return;
    }
    // SLIP framing: the device has no link-layer address at all.
    let ip_only = matches!(params, NetParams::Slip { .. } | NetParams::Slirp { .. });
    let connects_at_boot = match &params {
        NetParams::Daemon { ctl_sock, .. } => Some(ctl_sock.clone()),
        _ => None,
    };
    k.net.push(NetDevice {
        connects_at_boot,
        name,
        index: eth.index.max(0) as u32,
        transport: transport.to_string(),
        params,
        mac: if ip_only {
            None
        } else {
            addr.map(|a| fmt_mac(&a))
        },
        mac_random: addr.is_none() && !ip_only,
        messages,
        span: eth.span,
    });
}

/// What each transport's `init` prints after `Netdevice N (mac) : `.
fn init_lines(params: &NetParams) -> Vec<String> {
    match params {
        NetParams::Slip { gate_addr } => vec![format!(
            "SLIP backend - SLIP IP = {}",
            gate_addr.as_deref().unwrap_or("(null)")
        )],
        NetParams::Slirp { argv } => {
            let mut v = vec!["SLIRP backend - command line:".to_string()];
            v.extend(argv.iter().map(|a| format!(" '{a}'")));
            v.push(String::new());
            v
        }
        NetParams::Daemon {
            sock_type,
            ctl_sock,
        } => vec![
            format!("daemon backend (uml_switch version 3) - {sock_type}:{ctl_sock}"),
            String::new(),
        ],
        NetParams::Vde { switch, port, .. } => vec![
            format!(
                "vde backend - {}, ",
                switch.as_deref().unwrap_or("(default socket)")
            ),
            if *port == 0 {
                "undefined port".to_string()
            } else {
                format!("port {}", *port as i32)
            },
            String::new(),
            "vde backend - connection opened".to_string(),
        ],
        NetParams::Mcast { addr, port, ttl } => vec![format!(
            "mcast backend multicast address: {addr}:{port}, TTL:{ttl}"
        )],
        NetParams::Ucast {
            addr,
            listen_port,
            remote_port,
        } => vec![format!(
            "ucast backend address: {addr}:{remote_port} listen port: {listen_port}"
        )],
        NetParams::Ethertap {
            dev_name,
            gate_addr,
        } => vec![match gate_addr {
            Some(ip) => format!("ethertap backend - {dev_name}, IP = {ip}"),
            None => format!("ethertap backend - {dev_name}"),
        }],
        NetParams::Tuntap { gate_addr, .. } => vec![match gate_addr {
            Some(ip) => format!("TUN/TAP backend - IP = {ip}"),
            None => "TUN/TAP backend - ".to_string(),
        }],
        NetParams::Vector { .. } => Vec::new(),
    }
}

/// `vector_eth_configure` after `uml_parse_vector_ifspec`.
fn vector_configure(k: &mut Kernel, v: &super::kernel::EthInit) {
    // uml_parse_vector_ifspec: key=value pairs separated by ',', in place.
    let len = k.buf.strlen(v.init);
    let mut tokens: Vec<(usize, Option<usize>)> = Vec::new();
    let mut parsing_token = true;
    let mut next_starts = true;
    for pos in v.init..v.init + len {
        if next_starts {
            if parsing_token {
                tokens.push((pos, None));
            } else if let Some(last) = tokens.last_mut() {
                last.1 = Some(pos);
            }
            next_starts = false;
        }
        let c = k.buf.at(pos);
        if c == b'=' {
            if !parsing_token {
                // Printed after the parser cut the text in place.
                let shown = k.buf.cstr(v.init);
                k.diag(
                    Severity::Error,
                    Channel::Log,
                    format!("vector_setup - Couldn't parse '{shown}'"),
                    v.span,
                    "the device is not configured",
                    Some("options are key=value pairs separated by ','".into()),
                );
                return;
            }
            parsing_token = false;
            next_starts = true;
            k.buf.set(pos, 0);
        }
        if c == b',' {
            parsing_token = true;
            next_starts = true;
            k.buf.set(pos, 0);
        }
    }
    let options: Vec<(String, String)> = tokens
        .iter()
        .filter_map(|&(t, val)| val.map(|val| (k.buf.cstr(t), k.buf.cstr(val))))
        .collect();
    let mac = tokens
        .iter()
        .find(|&&(t, val)| val.is_some() && k.buf.cstr(t) == "mac")
        .and_then(|&(_, val)| val);
    let name = format!("vec{}", v.index);
    let mut messages = Vec::new();
    let addr = setup_etheraddr(k, mac, &name, v.span, &mut messages);
    register(
        k,
        name,
        v,
        "vector",
        NetParams::Vector { options },
        addr,
        messages,
    );
}
