//! The sysctl keys the sim models, with a UML 6.1 guest's defaults, and the
//! busybox `sysctl` applet over them.
//!
//! Only the keys labs read exist (a real guest has about 560); `sysctl -a`
//! lists these, sorted by name as busybox walks `/proc/sys`.

use std::collections::BTreeMap;

/// Per-interface `net.ipv4.conf.<scope>` keys and their defaults.
const CONF_KEYS: &[(&str, &str)] = &[
    ("arp_accept", "0"),
    ("arp_announce", "0"),
    ("arp_evict_nocarrier", "1"),
    ("arp_filter", "0"),
    ("arp_ignore", "0"),
    ("arp_notify", "0"),
    ("drop_gratuitous_arp", "0"),
    ("forwarding", "0"),
    ("proxy_arp", "0"),
    ("route_localnet", "0"),
    ("rp_filter", "0"),
];

/// Per-interface `net.ipv4.neigh.<scope>` keys (scopes `default` and each
/// device) the neighbour table reads (`sim::stack`), with the defaults a
/// UML 6.1 guest has.
const NEIGH_KEYS: &[(&str, &str)] = &[
    ("base_reachable_time_ms", "30000"),
    ("delay_first_probe_time", "5"),
    ("gc_stale_time", "60"),
    ("locktime", "100"),
    ("mcast_solicit", "3"),
    ("retrans_time_ms", "1000"),
    ("ucast_solicit", "3"),
];

/// Global keys and their defaults in the guest.
const GLOBAL_KEYS: &[(&str, &str)] = &[
    ("kernel.hostname", "(none)"),
    ("kernel.osrelease", "6.1.176"),
    ("kernel.ostype", "Linux"),
    ("net.ipv4.icmp_echo_enable_probe", "0"),
    ("net.ipv4.icmp_echo_ignore_all", "0"),
    ("net.ipv4.icmp_echo_ignore_broadcasts", "1"),
    ("net.ipv4.ip_forward", "0"),
    ("net.ipv4.neigh.default.gc_stale_time", "60"),
];

/// The default table for a machine with these interfaces.
pub fn defaults(ifaces: &[String]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (k, v) in GLOBAL_KEYS {
        map.insert((*k).to_string(), (*v).to_string());
    }
    let devs = ifaces.iter().map(|i| i.replace('.', "/"));
    let scopes = ["all".to_string(), "default".to_string()]
        .into_iter()
        .chain(devs.clone());
    for scope in scopes {
        for (k, v) in CONF_KEYS {
            map.insert(format!("net.ipv4.conf.{scope}.{k}"), (*v).to_string());
        }
    }
    for scope in std::iter::once("default".to_string()).chain(devs) {
        for (k, v) in NEIGH_KEYS {
            map.insert(format!("net.ipv4.neigh.{scope}.{k}"), (*v).to_string());
        }
    }
    map
}

/// busybox 1.35 `sysctl [-n] [-w] [-a] KEY[=VALUE]...`: returns (stdout, stderr, exit code).
pub fn run(table: &mut BTreeMap<String, String>, args: &[String]) -> (String, String, i32) {
    let (mut out, mut err, mut code) = (String::new(), String::new(), 0);
    let (mut names_only_values, mut write, mut all) = (false, false, false);
    let mut keys = Vec::new();
    for a in args {
        match a.strip_prefix('-') {
            Some(flags) if !flags.is_empty() && keys.is_empty() => {
                for f in flags.chars() {
                    match f {
                        'n' => names_only_values = true,
                        'w' => write = true,
                        'a' | 'A' => all = true,
                        'e' | 'q' | 'p' => {}
                        other => {
                            err.push_str(&format!("sysctl: invalid option -- '{other}'\n"));
                            err.push_str(USAGE);
                            return (out, err, 1);
                        }
                    }
                }
            }
            _ => keys.push(a.clone()),
        }
    }
    let show = |k: &str, v: &str| {
        if names_only_values {
            format!("{v}\n")
        } else {
            format!("{k} = {v}\n")
        }
    };
    if all {
        for (k, v) in table.iter() {
            out.push_str(&show(k, v));
        }
        return (out, err, 0);
    }
    if keys.is_empty() {
        err.push_str(USAGE);
        return (out, err, 1);
    }
    for key in keys {
        // busybox accepts `/` as separator too, and `KEY=VALUE` writes even without -w.
        let (name, value) = match key.split_once('=') {
            Some((k, v)) => (k.trim().replace('/', "."), Some(v.trim().to_string())),
            None => (key.replace('/', "."), None),
        };
        match (value, table.get_mut(&name)) {
            (Some(v), Some(slot)) => {
                let Some(stored) = kernel_value(&name, &v) else {
                    // xwrite dies: the keys after it are not looked at.
                    err.push_str("sysctl: write error: Invalid argument\n");
                    return (out, err, 1);
                };
                *slot = stored;
                out.push_str(&show(&name, &v));
            }
            (None, Some(v)) if !write => out.push_str(&show(&name, v)),
            (None, Some(_)) => {
                err.push_str(&format!(
                    "sysctl: error: '{name}' must be of the form name=value\n"
                ));
                code = 1;
            }
            (_, None) => {
                err.push_str(&format!(
                    "sysctl: error: '{}' is an unknown key\n",
                    name.replace('.', "/")
                ));
                code = 1;
            }
        }
    }
    (out, err, code)
}

/// What the 6.1 kernel keeps when `value` is written to `name`, or `None`
/// for EINVAL. The `net.ipv4` keys are C ints (`proc_dointvec` and its
/// jiffies variants, HZ=100); each rule below was recorded in a UML 6.1 guest
/// (`sysctl -w KEY=VALUE; sysctl KEY`):
/// - not a number (`abc`), or past INT_MAX (`arp_ignore=99999999999`,
///   `mcast_solicit=99999999999`): EINVAL;
/// - seconds in jiffies past INT_MAX/HZ (`delay_first_probe_time=2147483647`)
///   and negative milliseconds (`base_reachable_time_ms=-5`): EINVAL;
/// - milliseconds in jiffies: the value as a 32-bit int, rounded up to a
///   jiffy (`retrans_time_ms=99999999999` reads back `1215752200`);
/// - `locktime` (USER_HZ) takes anything numeric.
fn kernel_value(name: &str, value: &str) -> Option<String> {
    const HZ: i64 = 100;
    if !name.starts_with("net.ipv4.conf.") && !name.starts_with("net.ipv4.neigh.") {
        return Some(value.to_string());
    }
    let v = value.trim();
    let (neg, digits) = match v.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, v),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // proc_get_long: an unsigned long; more is EINVAL.
    let magnitude: u64 = digits.parse().ok()?;
    let key = name.rsplit('.').next().unwrap_or("");
    match key {
        "locktime" => Some(v.to_string()),
        "retrans_time_ms" | "base_reachable_time_ms" => {
            if neg {
                return None;
            }
            let ms = i64::from(magnitude as u32 as i32);
            let jiffies = (ms + 9).div_euclid(10);
            Some((jiffies * 10).to_string())
        }
        "delay_first_probe_time" | "gc_stale_time" => {
            let secs = i64::try_from(magnitude).ok()?;
            (secs <= i64::from(i32::MAX) / HZ).then(|| if neg { -secs } else { secs }.to_string())
        }
        _ => {
            let n = i64::try_from(magnitude).ok()?;
            let n = if neg { -n } else { n };
            let minmax = matches!(key, "mcast_solicit" | "ucast_solicit");
            let ok = i32::try_from(n).is_ok() && !(minmax && n < 0);
            ok.then(|| n.to_string())
        }
    }
}

const USAGE: &str = "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\n\n\
Usage: sysctl [-enq] { -a | -p [FILE]... | [-w] [KEY[=VALUE]]... }\n\n\
Show/set kernel parameters\n\n\
\t-e\tDon't warn about unknown keys\n\
\t-n\tDon't show key names\n\
\t-q      Quiet\n\
\t-a\tShow all values\n\
\t-w\tSet values\n\
\t-p FILE\tSet values from FILE (default /etc/sysctl.conf)\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> BTreeMap<String, String> {
        defaults(&["lo".into(), "eth0".into()])
    }

    /// Recorded in a UML 6.1 guest: `sysctl -w KEY=VALUE; echo rc=$?; sysctl KEY`.
    #[test]
    fn out_of_range_writes_fail_as_the_kernel_refuses_them() {
        let mut table = t();
        let einval = (
            String::new(),
            "sysctl: write error: Invalid argument\n".to_string(),
            1,
        );
        for kv in [
            "net.ipv4.neigh.eth0.delay_first_probe_time=2147483647",
            "net.ipv4.neigh.eth0.delay_first_probe_time=99999999999",
            "net.ipv4.neigh.eth0.base_reachable_time_ms=-5",
            "net.ipv4.neigh.eth0.mcast_solicit=99999999999",
            "net.ipv4.neigh.eth0.mcast_solicit=abc",
            "net.ipv4.conf.eth0.arp_ignore=99999999999",
        ] {
            assert_eq!(run(&mut table, &["-w".into(), kv.into()]), einval, "{kv}");
        }
        assert_eq!(table["net.ipv4.neigh.eth0.delay_first_probe_time"], "5");
        assert_eq!(table["net.ipv4.neigh.eth0.mcast_solicit"], "3");
        let w =
            |table: &mut BTreeMap<String, String>, kv: &str| run(table, &["-w".into(), kv.into()]);
        assert_eq!(
            w(&mut table, "net.ipv4.neigh.eth0.retrans_time_ms=2147483647").2,
            0
        );
        assert_eq!(table["net.ipv4.neigh.eth0.retrans_time_ms"], "2147483650");
        assert_eq!(
            w(
                &mut table,
                "net.ipv4.neigh.eth0.retrans_time_ms=99999999999"
            )
            .2,
            0
        );
        assert_eq!(table["net.ipv4.neigh.eth0.retrans_time_ms"], "1215752200");
        assert_eq!(
            w(&mut table, "net.ipv4.neigh.eth0.locktime=99999999999"),
            (
                "net.ipv4.neigh.eth0.locktime = 99999999999\n".into(),
                String::new(),
                0
            )
        );
    }

    /// Outputs captured from busybox 1.35 in a UML 6.1 guest.
    #[test]
    fn read_and_write_as_busybox_prints_them() {
        let mut table = t();
        let run1 = run(&mut table, &["net.ipv4.conf.eth0.arp_ignore".into()]);
        assert_eq!(
            run1,
            (
                "net.ipv4.conf.eth0.arp_ignore = 0\n".into(),
                String::new(),
                0
            )
        );
        let run2 = run(
            &mut table,
            &["-w".into(), "net.ipv4.conf.all.arp_ignore=1".into()],
        );
        assert_eq!(run2.0, "net.ipv4.conf.all.arp_ignore = 1\n");
        assert_eq!(table["net.ipv4.conf.all.arp_ignore"], "1");
    }

    /// Every `arp_*` key of `net.ipv4.conf.{all,default,eth0,lo}` and every
    /// `icmp_echo_*` key, with the values `sysctl -a` printed in a UML 6.1.176
    /// guest (busybox 1.35) booted with `eth0=vde,sw1`.
    #[test]
    fn arp_and_icmp_echo_keys_are_the_guests() {
        let table = defaults(&["lo".to_string(), "eth0".to_string()]);
        let mut want = vec![
            ("net.ipv4.icmp_echo_enable_probe".to_string(), "0"),
            ("net.ipv4.icmp_echo_ignore_all".to_string(), "0"),
            ("net.ipv4.icmp_echo_ignore_broadcasts".to_string(), "1"),
        ];
        for scope in ["all", "default", "eth0", "lo"] {
            for (k, v) in [
                ("arp_accept", "0"),
                ("arp_announce", "0"),
                ("arp_evict_nocarrier", "1"),
                ("arp_filter", "0"),
                ("arp_ignore", "0"),
                ("arp_notify", "0"),
            ] {
                want.push((format!("net.ipv4.conf.{scope}.{k}"), v));
            }
        }
        let got: Vec<(String, &str)> = table
            .iter()
            .filter(|(k, _)| k.contains(".arp_") || k.contains(".icmp_echo_"))
            .map(|(k, v)| (k.clone(), v.as_str()))
            .collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn unknown_key_fails() {
        let (_, err, code) = run(&mut t(), &["net.nope".into()]);
        assert_eq!(code, 1);
        assert!(err.contains("unknown key"), "{err}");
    }
}
