//! `cmdline`: the corpus (insta JSON snapshots), properties, and the differential
//! test against the real linux.uml 6.1.

use proptest::prelude::*;
use umltest::cmdline::{self, parse, split_shell_words};

fn argv(line: &str) -> Vec<String> {
    split_shell_words(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn seed_forms_are_predicted() {
    let p = parse(&argv(
        "mem=64M ubd0=h1.cow,fs.ext4 eth0=daemon,,unix,/tmp/ctl eth1=vde,/tmp/sw1,,5 root=/dev/ubda devfs=mount",
    ));
    assert!(p.boots);
    assert_eq!(p.mem_bytes, 64 << 20);
    assert_eq!(p.ubd[0].file, "h1.cow");
    assert_eq!(p.ubd[0].backing.as_deref(), Some("fs.ext4"));
    assert_eq!(p.net[0].name, "eth0");
    assert_eq!(
        p.net[0].params,
        cmdline::NetParams::Daemon {
            sock_type: "unix".into(),
            ctl_sock: "/tmp/ctl".into()
        }
    );
    assert!(p.net[1].mac_random);
    assert_eq!(p.root, "/dev/ubda");
    assert!(p.init_env.contains(&"devfs=mount".to_string()));
    assert!(p.proc_cmdline.ends_with(" devfs=mount console=tty0"));
}

proptest! {
    #[test]
    fn parse_never_panics_on_any_bytes(words in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..12)) {
        let argv: Vec<String> = words.iter().map(|w| String::from_utf8_lossy(w).into_owned()).collect();
        let p = parse(&argv);
        for d in &p.diagnostics {
            prop_assert!(d.span[0] <= d.span[1] && d.span[1] <= p.input.len());
        }
    }

    #[test]
    fn parse_never_panics_on_option_like_words(words in proptest::collection::vec("(ubd|eth|vec|con|ssl|mem=|init=|root=|umid=|--|[a-z]{0,3})[0-9a-z]{0,3}[=:,rsdct]{0,3}[a-z0-9:,_\"= .]{0,24}", 0..10)) {
        let p = parse(&words);
        for d in &p.diagnostics {
            prop_assert!(d.span[0] <= d.span[1] && d.span[1] <= p.input.len());
        }
    }

    #[test]
    fn split_never_panics(s in ".{0,80}") {
        let _ = split_shell_words(&s);
    }
}
