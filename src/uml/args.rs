//! What the harness adds to a machine's command line (ARCHITECTURE.md, "What the
//! harness adds"). Both backends call [`effective_argv`], so `/proc/cmdline` is the
//! same on the sim and on the real kernel.
//!
//! Appended, each only when the scenario does not set it (the scenario always wins):
//!
//! | word | why |
//! | --- | --- |
//! | `con0=fd:0,fd:1` | the console on the process's stdin/stdout pipes |
//! | `con=null` | no other console (Debian's default for them is an xterm, which fails 15 times) |
//! | `umid=<machine>` | names the mconsole socket dir; unique per run because `uml_dir` is |
//! | `uml_dir=.uml` | relative: inside the run folder (the working directory), short, and the same on every run |
//! | `init=/init` | the harness init of `umltest image build` (console shell) |
//!
//! A NIC whose MAC field is missing or empty gets a deterministic, locally
//! administered MAC filled into its own word (`fe:fd:00:00:<nic>:<machine#>`,
//! machine# counting from 1 in scenario order; from machine 256 on its higher
//! bytes go in the third and fourth: [`default_mac`]): without one, UML would pick a
//! random MAC, or reuse the previous NIC's (kernel-cmdline.md §4.2 quirk).
//! Words after a `--` go to init verbatim; the harness inserts its words before it.

use std::path::{Path, PathBuf};

/// The relative `uml_dir` the harness uses (inside the run folder).
pub const UML_DIR: &str = ".uml";

/// The argv a machine runs with: the scenario's `argv` plus only what the harness needs.
pub fn effective_argv(argv: &[String], machine: &str, machine_index: usize) -> Vec<String> {
    let split = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    let (kernel, init_words) = argv.split_at(split);
    let has = |prefix: &str| kernel.iter().any(|a| a.starts_with(prefix));
    let mut out: Vec<String> = kernel
        .iter()
        .map(|word| fill_mac(word, machine_index))
        .collect();
    if !has("con0=") {
        out.push("con0=fd:0,fd:1".into());
    }
    if !has("con=") {
        out.push("con=null".into());
    }
    if !has("umid=") {
        out.push(format!("umid={}", umid_for(machine)));
    }
    if !has("uml_dir=") {
        out.push(format!("uml_dir={UML_DIR}"));
    }
    if !has("init=") {
        out.push(format!("init={}", super::image::INIT_PATH));
    }
    out.extend(init_words.iter().cloned());
    out
}

/// True when the scenario chose its own init: the machine then has no harness
/// shell, only boot-log expectations.
pub fn has_own_init(scenario_argv: &[String]) -> bool {
    scenario_argv
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a.starts_with("init="))
}

/// The most machines a lab may have: each gets distinct default MACs.
pub const MAX_MACHINES: usize = 0xff_ffff;

/// The deterministic MAC of NIC `nic` of the machine at `machine_index` (0-based):
/// `fe:fd:00:00:<nic>:<machine#>` up to machine 255, and beyond that the machine
/// number's higher bytes in the third and fourth, so machine 256 is
/// `fe:fd:00:01:<nic>:00` and no two of [`MAX_MACHINES`] machines share a MAC
/// (machine 257 used to get machine 1's).
pub fn default_mac(machine_index: usize, nic: u32) -> String {
    let n = machine_index.saturating_add(1);
    format!(
        "fe:fd:{:02x}:{:02x}:{:02x}:{:02x}",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        nic & 0xff,
        n & 0xff
    )
}

/// A umid UML accepts: at most 63 characters, no `/` (else it silently picks a
/// random one, kernel-cmdline.md §9).
fn umid_for(machine: &str) -> String {
    let clean: String = machine
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    if clean.is_empty() || clean.chars().all(|c| c == '.') {
        "machine".into()
    } else {
        clean
    }
}

/// Position of the MAC among a transport's comma-separated fields (transport = 0).
fn mac_field(transport: &str) -> Option<usize> {
    match transport {
        "vde" | "tuntap" | "ethertap" => Some(2),
        "daemon" | "mcast" | "ucast" | "slirp" => Some(1),
        _ => None,
    }
}

fn fill_mac(word: &str, machine_index: usize) -> String {
    let Some(rest) = word.strip_prefix("eth") else {
        return word.to_string();
    };
    let Some((unit, spec)) = rest.split_once('=') else {
        return word.to_string();
    };
    let Ok(nic) = unit.parse::<u32>() else {
        return word.to_string();
    };
    let mut fields: Vec<String> = spec.split(',').map(str::to_string).collect();
    let Some(at) = fields.first().and_then(|t| mac_field(t)) else {
        return word.to_string();
    };
    if fields.get(at).is_some_and(|f| !f.is_empty()) {
        return word.to_string();
    }
    if fields.len() <= at {
        fields.resize(at + 1, String::new());
    }
    if let Some(slot) = fields.get_mut(at) {
        *slot = default_mac(machine_index, nic);
    }
    format!("eth{unit}={}", fields.join(","))
}

/// The value of the first kernel word starting with `prefix` (before any `--`).
pub fn first_value<'a>(argv: &'a [String], prefix: &str) -> Option<&'a str> {
    argv.iter()
        .take_while(|a| *a != "--")
        .find_map(|a| a.strip_prefix(prefix))
}

/// Where the machine's mconsole socket will be: `<uml_dir>/<umid>/mconsole`,
/// relative paths taken from `cwd` (the run folder). `None` without a `umid=`.
pub fn mconsole_socket(argv: &[String], cwd: &Path) -> Option<PathBuf> {
    let umid = first_value(argv, "umid=")?;
    let dir = match first_value(argv, "uml_dir=") {
        Some(dir) => cwd.join(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".uml"),
    };
    Some(dir.join(umid).join("mconsole"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn appends_only_what_is_missing() {
        let argv = words("mem=64M ubd0=h1.cow,fs.ext4 eth0=vde,sw1,,5");
        assert_eq!(
            effective_argv(&argv, "h1", 0).join(" "),
            "mem=64M ubd0=h1.cow,fs.ext4 eth0=vde,sw1,fe:fd:00:00:00:01,5 \
             con0=fd:0,fd:1 con=null umid=h1 uml_dir=.uml init=/init"
        );
        let own = words(
            "con=pty con0=null umid=mine uml_dir=/x init=/bin/sh eth1=vde,sw,02:00:00:00:00:09",
        );
        assert_eq!(effective_argv(&own, "h2", 1), own);
        assert!(has_own_init(&own));
    }

    #[test]
    fn macs_are_filled_per_transport() {
        let argv =
            words("eth0=vde,sw1 eth1=daemon eth2=tuntap,tap0 eth3=vde,sw,,3 eth4=bogus eth5=vde");
        assert_eq!(
            effective_argv(&argv, "h2", 1)[..6].join(" "),
            "eth0=vde,sw1,fe:fd:00:00:00:02 eth1=daemon,fe:fd:00:00:01:02 \
             eth2=tuntap,tap0,fe:fd:00:00:02:02 eth3=vde,sw,fe:fd:00:00:03:02,3 \
             eth4=bogus eth5=vde,,fe:fd:00:00:05:02"
        );
    }

    #[test]
    fn default_macs_stay_and_never_repeat() {
        assert_eq!(default_mac(0, 0), "fe:fd:00:00:00:01");
        assert_eq!(default_mac(254, 1), "fe:fd:00:00:01:ff");
        assert_eq!(default_mac(255, 0), "fe:fd:00:01:00:00");
        assert_eq!(default_mac(256, 0), "fe:fd:00:01:00:01");
        assert_eq!(default_mac(MAX_MACHINES - 1, 2), "fe:fd:ff:ff:02:ff");
        let macs: std::collections::BTreeSet<String> =
            (0..70_000).map(|i| default_mac(i, 0)).collect();
        assert_eq!(macs.len(), 70_000);
    }

    #[test]
    fn words_after_double_dash_stay_last_and_do_not_count() {
        let argv = words("mem=64M -- init=/x con0=y");
        let out = effective_argv(&argv, "h1", 0);
        assert_eq!(
            out.join(" "),
            "mem=64M con0=fd:0,fd:1 con=null umid=h1 uml_dir=.uml init=/init -- init=/x con0=y"
        );
        assert!(!has_own_init(&argv));
    }

    #[test]
    fn umid_is_sanitised_and_socket_located() {
        let out = effective_argv(&[], "a/b c", 0);
        assert!(out.contains(&"umid=a_b_c".to_string()));
        assert_eq!(
            mconsole_socket(&out, Path::new("/run/x")),
            Some(PathBuf::from("/run/x/.uml/a_b_c/mconsole"))
        );
    }

    proptest! {
        #[test]
        fn effective_argv_keeps_every_scenario_word(argv in proptest::collection::vec("\\PC{0,20}", 0..8), idx in 0usize..300) {
            let out = effective_argv(&argv, "m", idx);
            prop_assert!(out.len() >= argv.len());
            // Every scenario word survives, possibly with a MAC filled in.
            for (a, b) in argv.iter().zip(out.iter()) {
                if a == "--" { break; }
                prop_assert!(b.starts_with(a.split(',').next().unwrap_or("")));
            }
        }
    }
}
