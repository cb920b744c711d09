//! Hostile inputs: the run folder, the snapshot store, scenario bounds.
//!
//! Each case is an attack found by trying (it passed `umltest check` and then
//! did damage); the victims live outside the run folder and are checked
//! unchanged afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util;

/// A lab the sim runs without disks: one machine that boots to a kernel
/// panic (no root), which is an artifact like any other.
fn lab(name: &str) -> String {
    format!("[scenario]\nname = \"{name}\"\n\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M\"\n\n[[step]]\nboot = [\"h1\"]\n")
}

/// Every file below `dir` (links not followed) with its content, to show a
/// victim folder unchanged.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("list {}: {e}", d.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            if meta.is_dir() {
                todo.push(p.clone());
                out.push((p, Vec::new()));
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p).expect("readlink");
                out.push((p, target.into_os_string().into_encoded_bytes()));
            } else {
                let body = std::fs::read(&p).expect("read");
                out.push((p, body));
            }
        }
    }
    out
}

/// A user's project: `src/main.rs` and `.git/HEAD`.
fn project(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::create_dir_all(root.join("src")).expect("mkdir");
    std::fs::create_dir_all(root.join(".git")).expect("mkdir");
    std::fs::write(root.join("src/main.rs"), "fn main() {}\n").expect("write");
    std::fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").expect("write");
    tree(root)
}

#[test]
fn a_scenario_named_after_a_folder_of_the_user_does_not_delete_it() {
    for name in ["src", ".git"] {
        let d = util::tempdir();
        let victim = d.path().join("project");
        let before = project(&victim);
        std::fs::write(victim.join("lab.toml"), lab(name)).expect("write");
        util::umltest(&victim, &["check", "lab.toml"]).expect_code(0);
        let r = util::umltest(&victim, &["run", "lab.toml", "--out", ".", "--update"]);
        r.expect_code(2);
        assert!(
            r.stderr().contains(&format!(
                "{} exists and umltest did not make it (no .umltest-run file in it)",
                victim.join(name).display()
            )),
            "{}",
            r.dump()
        );
        assert!(r.stdout().ends_with("0 passed, 0 failed\n"), "{}", r.dump());
        let mut after = tree(&victim);
        after.retain(|(p, _)| !p.ends_with("lab.toml"));
        assert_eq!(before, after, "{name}: the project is unchanged");
    }
}

#[test]
fn the_sibling_run_folders_of_a_user_are_left_alone_too() {
    // `--check-determinism` uses <name>.again, `--backend both` <name>.uml and
    // <name>.uml.first: all claimed before anything runs (no linux.uml needed).
    for (sibling, flags) in [
        ("lab.again", &["--check-determinism"][..]),
        ("lab.uml", &["--backend", "both"][..]),
        ("lab.uml.first", &["--backend", "both"][..]),
    ] {
        let d = util::tempdir();
        let victim = d.path().join(sibling);
        std::fs::create_dir(&victim).expect("mkdir");
        std::fs::write(victim.join("thesis.tex"), "chapter 1\n").expect("write");
        let before = tree(&victim);
        std::fs::write(d.path().join("lab.toml"), lab("lab")).expect("write");
        let mut args = vec!["run", "lab.toml", "--out", "."];
        args.extend(flags);
        let r = util::umltest(d.path(), &args);
        r.expect_code(2);
        assert!(
            r.stderr().contains("umltest did not make it"),
            "{}",
            r.dump()
        );
        assert_eq!(tree(&victim), before, "{sibling} unchanged");
    }
}

#[test]
fn a_run_folder_that_is_a_link_is_not_followed() {
    let d = util::tempdir();
    let victim = d.path().join("victim");
    let before = project(&victim);
    let out = d.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    std::os::unix::fs::symlink(&victim, out.join("lab")).expect("symlink");
    std::fs::write(d.path().join("lab.toml"), lab("lab")).expect("write");
    let r = util::umltest(d.path(), &["run", "lab.toml", "--out", "out", "--update"]);
    r.expect_code(2);
    assert!(
        r.stderr()
            .contains("is a symbolic link; umltest never uses a run folder through a link"),
        "{}",
        r.dump()
    );
    assert_eq!(tree(&victim), before);
}

#[test]
fn a_run_folder_umltest_made_is_reused_and_emptied() {
    let d = util::tempdir();
    std::fs::write(d.path().join("lab.toml"), lab("lab")).expect("write");
    let run = |d: &Path| util::umltest(d, &["run", "lab.toml", "--out", "out", "--update"]);
    run(d.path()).expect_code(0);
    let folder = d.path().join("out/lab");
    assert!(folder.join(".umltest-run").is_file());
    std::fs::write(folder.join("left-over"), "x").expect("write");
    run(d.path()).expect_code(0);
    assert!(
        !folder.join("left-over").exists(),
        "a run starts from nothing"
    );
    assert!(folder.join("h1.console").is_file());
}

#[test]
fn scenarios_that_need_one_run_folder_are_refused_naming_both_files() {
    let d = util::tempdir();
    std::fs::write(d.path().join("a.toml"), lab("lab")).expect("write");
    std::fs::write(d.path().join("b.toml"), lab("lab")).expect("write");
    std::fs::write(d.path().join("c.toml"), lab("lab.again")).expect("write");
    let r = util::umltest(d.path(), &["run", "a.toml", "b.toml", "--out", "out"]);
    r.expect_code(2);
    assert!(
        r.stderr().contains(
            "a.toml (scenario `lab`) and b.toml (scenario `lab`) both need the run folder"
        ),
        "{}",
        r.dump()
    );
    let r = util::umltest(
        d.path(),
        &[
            "run",
            "a.toml",
            "c.toml",
            "--out",
            "out",
            "--check-determinism",
        ],
    );
    r.expect_code(2);
    assert!(
        r.stderr().contains(
            "a.toml (scenario `lab`) and c.toml (scenario `lab.again`) both need the run folder"
        ),
        "{}",
        r.dump()
    );
    assert!(!d.path().join("out").join("lab").exists(), "nothing ran");
}

/// Two runs on one `--out`: the second is refused while the first holds the
/// folder, and the first's artifacts are its own. The first run is held at
/// its end by a FIFO as its `--junit` file (written after the last scenario,
/// before the locks go), so the overlap needs no timing.
#[test]
fn a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it() {
    let d = util::tempdir();
    std::fs::write(d.path().join("lab.toml"), lab("lab")).expect("write");
    let fifo = d.path().join("junit.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let first = std::process::Command::new(util::umltest_bin())
        .args(["run", "lab.toml", "--out", "out", "--update", "--junit"])
        .arg(&fifo)
        .current_dir(d.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the first run");
    // Ready: the first run's snapshot is recorded (renamed into place after
    // every artifact was written: the artifact itself can be seen half
    // written); the run is at its end, blocked opening the FIFO, its folder
    // locked.
    let console = d.path().join("out/lab/h1.console");
    let snap = d.path().join("snapshots/lab/h1.console.snap");
    let began = Instant::now();
    while !snap.is_file() {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the first run never wrote its artifacts"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let artifacts = std::fs::read(&console).expect("read");
    let second = util::umltest(d.path(), &["run", "lab.toml", "--out", "out", "--update"]);
    second.expect_code(2);
    assert!(
        second.stderr().contains(&format!(
            "{} is in use by another umltest run (pid {})",
            d.path().join("out/lab").display(),
            first.id()
        )),
        "{}",
        second.dump()
    );
    // Let the first run end: read its report from the FIFO.
    let report = std::fs::read_to_string(&fifo).expect("read the junit FIFO");
    assert!(report.contains("<testsuites"), "{report}");
    let first = first.wait_with_output().expect("wait");
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert_eq!(
        std::fs::read(&console).expect("read"),
        artifacts,
        "untouched by the second run"
    );
    // Once released, the folder is free again.
    util::umltest(d.path(), &["run", "lab.toml", "--out", "out", "--update"]).expect_code(0);
}

/// Three runs of the same labs started together on one `--out`: each either
/// runs alone or is refused whole (the first folder decides), so none fails
/// and the artifacts are a single run's.
#[test]
fn runs_started_together_never_mix() {
    let d = util::tempdir();
    for name in ["a", "b", "c", "d"] {
        std::fs::write(d.path().join(format!("{name}.toml")), lab(name)).expect("write");
    }
    util::umltest(d.path(), &["run", ".", "--out", "solo", "--update"]).expect_code(0);
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(util::umltest_bin())
                .args(["run", ".", "--out", "together"])
                .current_dir(d.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut passed = 0;
    for child in children {
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => passed += 1,
            Some(2) => assert!(
                stderr.contains("is in use by another umltest run"),
                "{stderr}"
            ),
            other => panic!("exit {other:?}: {stderr}"),
        }
    }
    assert!(passed >= 1);
    for name in ["a", "b", "c", "d"] {
        let console = |out: &str| {
            std::fs::read(d.path().join(format!("{out}/{name}/h1.console"))).expect("console")
        };
        assert_eq!(console("solo"), console("together"), "{name}");
    }
}

fn snapshot_lab(d: &Path) {
    std::fs::create_dir_all(d.join("scenarios")).expect("mkdir");
    std::fs::write(d.join("scenarios/lab.toml"), lab("lab")).expect("write");
}

#[test]
fn a_shipped_snap_new_link_is_not_written_through() {
    let d = util::tempdir();
    let bashrc = d.path().join("bashrc");
    std::fs::write(&bashrc, "alias ls='ls -F'\n").expect("write");
    let course = d.path().join("course");
    snapshot_lab(&course);
    std::fs::create_dir_all(course.join("snapshots/lab")).expect("mkdir");
    std::os::unix::fs::symlink(&bashrc, course.join("snapshots/lab/h1.console.snap.new"))
        .expect("symlink");
    let r = util::umltest_env(
        &course,
        &["run", "scenarios/", "--out", "out"],
        &[("CI", None), ("INSTA_UPDATE", None)],
    );
    r.expect_code(100);
    assert!(
        r.stdout().contains("snapshots/lab/h1.console.snap.new is a symbolic link: snapshots are never read or written through links"),
        "{}",
        r.dump()
    );
    assert_eq!(
        std::fs::read_to_string(&bashrc).expect("read"),
        "alias ls='ls -F'\n"
    );
}

#[test]
fn update_neither_writes_through_a_snap_link_nor_reads_one() {
    let d = util::tempdir();
    let secret = d.path().join("secret");
    std::fs::write(&secret, "---\nsource: x\nexpression: y\n---\nhunter2\n").expect("write");
    let course = d.path().join("course");
    snapshot_lab(&course);
    std::fs::create_dir_all(course.join("snapshots/lab")).expect("mkdir");
    std::os::unix::fs::symlink(&secret, course.join("snapshots/lab/h1.console.snap"))
        .expect("symlink");
    for update in [true, false] {
        let mut args = vec!["run", "scenarios/", "--out", "out"];
        if update {
            args.push("--update");
        }
        let r = util::umltest(&course, &args);
        r.expect_code(100);
        assert!(
            r.stdout().contains("h1.console.snap is a symbolic link"),
            "{}",
            r.dump()
        );
        assert!(
            !r.stdout().contains("hunter2"),
            "the link's target is not shown\n{}",
            r.dump()
        );
    }
    assert!(std::fs::read_to_string(&secret)
        .expect("read")
        .ends_with("hunter2\n"));
}

#[test]
fn update_does_not_touch_a_linked_snapshot_folder() {
    for linked in ["snapshots", "snapshots/lab"] {
        let d = util::tempdir();
        let victim = d.path().join("victim");
        std::fs::create_dir_all(victim.join("lab")).expect("mkdir");
        std::fs::write(victim.join("notes.snap"), "mine\n").expect("write");
        std::fs::write(victim.join("lab/notes.snap"), "mine\n").expect("write");
        let before = tree(&victim);
        let course = d.path().join("course");
        snapshot_lab(&course);
        if linked == "snapshots/lab" {
            std::fs::create_dir(course.join("snapshots")).expect("mkdir");
        }
        std::os::unix::fs::symlink(&victim, course.join(linked)).expect("symlink");
        let r = util::umltest(&course, &["run", "scenarios/", "--out", "out", "--update"]);
        r.expect_code(100);
        assert!(
            r.stdout().contains(&format!("{linked} is a symbolic link")),
            "{}",
            r.dump()
        );
        assert_eq!(tree(&victim), before, "{linked}: the stale *.snap stay");
    }
}

#[test]
fn duration_bombs_are_refused_at_check_time_with_a_caret() {
    let base = "[scenario]\nname = \"bomb\"\n\n[[switch]]\nname = \"sw1\"\n\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M eth0=vde,sw1\"\n\n[[step]]\nboot = [\"h1\"]\n\n[[step]]\n";
    let huge = "18446744073709551615s";
    for (step, shown) in [
        (
            format!("sleep = \"{huge}\"\n"),
            format!("sleep = \"{huge}\""),
        ),
        (
            format!("on = \"h1\"\nrun = \"true\"\ntimeout = \"{huge}\"\n"),
            format!("timeout = \"{huge}\""),
        ),
        (
            format!("on = \"h1\"\nfault = \"eth0\"\ndelay = \"{huge}\"\n"),
            format!("delay = \"{huge}\""),
        ),
        (
            "sleep = \"1441m\"\n".to_string(),
            "sleep = \"1441m\"".to_string(),
        ),
        (
            "sleep = \"99999999999999999999999ms\"\n".to_string(),
            "sleep = \"99999999999999999999999ms\"".to_string(),
        ),
    ] {
        let d = util::tempdir();
        std::fs::write(d.path().join("bomb.toml"), format!("{base}{step}")).expect("write");
        let began = Instant::now();
        for cmd in ["check", "run"] {
            let r = util::umltest(d.path(), &[cmd, "bomb.toml"]);
            r.expect_code(2);
            let err = r.stderr();
            assert!(
                err.contains("is longer than the maximum of 1440m (one day)"),
                "{}",
                r.dump()
            );
            assert!(err.contains(&shown) && err.contains('^'), "{}", r.dump());
            assert!(!err.contains("panicked"), "{}", r.dump());
        }
        assert!(began.elapsed() < Duration::from_secs(20));
    }
    // One day is allowed, and a day of virtual time passes on the sim.
    let d = util::tempdir();
    std::fs::write(
        d.path().join("day.toml"),
        format!("{base}sleep = \"1440m\"\n"),
    )
    .expect("write");
    util::umltest(d.path(), &["run", "day.toml", "--out", "out", "--update"]).expect_code(0);
}

/// A lab of `steps` guest commands on one machine.
fn many_steps(steps: usize, machine: &str) -> String {
    let mut s = lab("big");
    s.reserve(steps * 32);
    for _ in 0..steps {
        s.push_str(&format!("[[step]]\non = \"{machine}\"\nrun = \"true\"\n"));
    }
    s
}

#[test]
fn check_of_50k_steps_takes_seconds_and_50k_errors_are_bounded() {
    let d = util::tempdir();
    std::fs::write(d.path().join("big.toml"), many_steps(50_000, "h1")).expect("write");
    let began = Instant::now();
    let r = util::umltest(d.path(), &["check", "big.toml"]);
    r.expect_code(0);
    // Was 161 s (debug build) when each step's line was found by a scan.
    let took = began.elapsed();
    assert!(took < Duration::from_secs(20), "check took {took:?}");
    assert!(
        r.stdout().contains("1 machines, 50001 steps"),
        "{}",
        r.dump()
    );

    // 50k bad steps: 100 diagnostics and a count, not 50k copies of the file.
    std::fs::write(d.path().join("bad.toml"), many_steps(50_000, "h9")).expect("write");
    let began = Instant::now();
    let r = util::umltest(d.path(), &["check", "bad.toml"]);
    r.expect_code(2);
    let took = began.elapsed();
    assert!(took < Duration::from_secs(20), "check took {took:?}");
    let err = r.stderr();
    assert_eq!(
        err.matches("unknown machine `h9`").count(),
        100,
        "{}",
        &err[..2000.min(err.len())]
    );
    assert!(err.contains("49900 more problems not shown (the first 100 are)"));

    // Parsing takes ~100 times the file's size in memory: files are bounded.
    std::fs::write(d.path().join("huge.toml"), many_steps(150_000, "h1")).expect("write");
    let r = util::umltest(d.path(), &["check", "huge.toml"]);
    r.expect_code(2);
    assert!(
        r.stderr()
            .contains("the scenario file is larger than the maximum of 4 MiB"),
        "{}",
        r.dump()
    );
}

/// `n` machines on one switch, each with its own COW over one root image.
fn machines_lab(n: usize, steps: &str) -> String {
    let mut s = String::from("[scenario]\nname = \"many\"\n\n[[switch]]\nname = \"sw1\"\nports = 400\n\n[[disk]]\nname = \"fs.ext4\"\nsize = \"64M\"\nimage = \"default\"\n\n");
    for i in 1..=n {
        s.push_str(&format!(
            "[[machine]]\nname = \"h{i}\"\ncmdline = \"mem=64M ubd0=h{i}.cow,fs.ext4 root=/dev/ubda eth0=vde,sw1\"\n\n"
        ));
    }
    s.push_str(steps);
    s
}

#[test]
fn three_hundred_machines_get_distinct_macs_and_h1_reaches_h257() {
    let steps = "[[step]]\nboot = [\"h1\", \"h257\"]\n\n[[step]]\non = \"h257\"\nrun = \"ip addr add 10.0.0.2/24 dev eth0 && ip link set eth0 up\"\n\n[[step]]\non = \"h1\"\nrun = \"ip addr add 10.0.0.1/24 dev eth0 && ip link set eth0 up\"\n\n[[step]]\non = \"h1\"\nrun = \"arping -c 1 -I eth0 10.0.0.2\"\nexpect = { exit = 0, stdout = \"42 bytes from fe:fd:00:01:00:01 (10.0.0.2)\" }\n";
    let d = util::tempdir();
    std::fs::write(d.path().join("many.toml"), machines_lab(300, steps)).expect("write");
    util::umltest(d.path(), &["check", "many.toml"]).expect_code(0);
    let r = util::umltest(d.path(), &["run", "many.toml", "--out", "out", "--update"]);
    r.expect_code(0);
    let mut macs = std::collections::BTreeSet::new();
    for i in 1..=300 {
        let console = std::fs::read_to_string(d.path().join(format!("out/many/h{i}.console")))
            .expect("console");
        let first = console.lines().next().unwrap_or_default();
        let mac = first
            .split_whitespace()
            .find_map(|w| w.strip_prefix("eth0=vde,sw1,"))
            .unwrap_or_else(|| panic!("h{i}: no MAC in {first}"))
            .to_string();
        assert!(macs.insert(mac.clone()), "h{i} repeats MAC {mac}");
    }
    assert!(
        macs.contains("fe:fd:00:00:00:01") && macs.contains("fe:fd:00:00:00:ff"),
        "up to 255 as before"
    );
}

#[test]
fn duplicate_macs_on_one_switch_are_a_check_error() {
    let d = util::tempdir();
    let text = "[scenario]\nname = \"dup\"\n\n[[switch]]\nname = \"sw1\"\n\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M eth0=vde,sw1,02:00:00:00:00:07\"\n\n[[machine]]\nname = \"h2\"\ncmdline = \"mem=64M eth0=vde,sw1,02:00:00:00:00:07\"\n\n[[machine]]\nname = \"h3\"\ncmdline = \"mem=64M eth0=vde,sw1,fe:fd:00:00:00:04\"\n\n[[machine]]\nname = \"h4\"\ncmdline = \"mem=64M eth0=vde,sw1\"\n";
    std::fs::write(d.path().join("dup.toml"), text).expect("write");
    let r = util::umltest(d.path(), &["check", "dup.toml"]);
    r.expect_code(2);
    let err = r.stderr();
    assert!(
        err.contains(
            "error: eth0: MAC 02:00:00:00:00:07 is also h1's eth0 (line 9) on switch `sw1`"
        ) && err.contains("dup.toml:13:20")
            && err.contains("^^^^"),
        "{}",
        r.dump()
    );
    assert!(
        err.contains("eth0: MAC fe:fd:00:00:00:04 (the default the harness gives it: set a MAC to choose another) is also h3's eth0 (line 17)"),
        "{}",
        r.dump()
    );
}

/// Plausible scenario files: two switches, a root image and a data disk,
/// three machines, and steps of every kind; now and then a name, duration or
/// path that is wrong, so `check` has to say so.
mod random_labs {
    use proptest::prelude::*;
    use proptest::sample::select;

    const MACHINES: &[&str] = &["h1", "h2", "h3"];
    const COMMANDS: &[&str] = &[
        "ip link set eth0 up",
        "ip addr add 10.0.0.1/24 dev eth0",
        "ip addr add 10.0.0.2/24 dev eth0 && ip link set eth0 up",
        "arping -c 2 -I eth0 10.0.0.2",
        "arping -0 -B -i eth0 -c 1",
        "arping -I eth0 10.0.0.1",
        "tcpdump -i eth0 -n -e arp",
        "tcpdump -c 2 -i eth0",
        "ip neigh",
        "ip neigh flush dev eth0",
        "ip link set eth0 down",
        "arp -s 10.0.0.9 02:00:00:00:00:09",
        "arp -a",
        "cat /proc/cmdline",
        "dd if=/dev/zero of=/dev/ubdb bs=512 count=4",
        "dd if=/dev/urandom of=/dev/ubda bs=4096 count=2 seek=100",
        "echo hi; exit 3",
        "sleep 2",
        "no-such-program",
        "printf '%s %d\\n' a 3",
        "sysctl -w net.ipv4.neigh.eth0.retrans_time_ms=1",
        "",
    ];

    fn duration() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            20 => select(&["1s", "250ms", "5s", "2m", "30s", "1440m"][..]),
            1 => select(&["0s", "1441m", "x", "18446744073709551615s"][..]),
        ]
    }

    fn q(s: &str) -> String {
        format!("{s:?}")
    }

    fn machine(name: &'static str) -> impl Strategy<Value = String> {
        let nic = prop_oneof![
            12 => Just(" eth0=vde,sw1".to_string()),
            3 => Just(" eth0=vde,sw2".to_string()),
            2 => Just(" eth0=daemon,,unix,sw1/ctl".to_string()),
            2 => Just(" eth0=vde,sw1 eth1=vde,sw2".to_string()),
            1 => Just(" eth0=vde,sw1,02:00:00:00:00:01".to_string()),
            1 => Just(String::new()),
            1 => Just(" eth0=vde,sw9".to_string()),
        ];
        let extra = prop_oneof![
            10 => Just(String::new()),
            3 => Just(" ubd1=data.img".to_string()),
            3 => Just(format!(" ubd1={name}-d.cow,data.img")),
            1 => Just(" init=/bin/sh".to_string()),
            1 => Just(" mem=1".to_string()),
            1 => Just(" ubd0=/etc/passwd".to_string()),
        ];
        (nic, extra).prop_map(move |(nic, extra)| {
            format!(
                "[[machine]]\nname = {}\ncmdline = \"mem=64M ubd0={name}.cow,fs.ext4 root=/dev/ubda{nic}{extra}\"\n\n",
                q(name)
            )
        })
    }

    fn step() -> impl Strategy<Value = String> {
        let m = select(MACHINES);
        let cmd = select(COMMANDS);
        prop_oneof![
            4 => proptest::collection::vec(select(MACHINES), 1..3)
                .prop_map(|ms| format!("boot = {ms:?}\n")),
            12 => (m.clone(), cmd.clone(), prop::option::of(duration()), prop::option::of(0i32..3))
                .prop_map(|(m, c, t, e)| {
                    let mut s = format!("on = {}\nrun = {}\n", q(m), q(c));
                    if let Some(t) = t {
                        s.push_str(&format!("timeout = {}\n", q(t)));
                    }
                    if let Some(e) = e {
                        s.push_str(&format!("expect = {{ exit = {e} }}\n"));
                    }
                    s
                }),
            2 => (m.clone(), cmd.clone(), 0u32..3).prop_map(|(m, c, id)| format!(
                "on = {}\nrun = {}\nbackground = true\nid = \"j{id}\"\n",
                q(m),
                q(c)
            )),
            2 => (m.clone(), duration(), 0u32..3).prop_map(|(m, t, id)| format!(
                "wait_job = \"j{id}\"\ntimeout = {}\n{}",
                q(t),
                // `on` does not apply to wait_job: now and then a wrong key.
                if m == "h3" && id == 2 { "on = \"h3\"\n" } else { "" }
            )),
            1 => (m.clone(), duration()).prop_map(|(m, t)| format!(
                "on = {}\nwait_console = \"login\"\ntimeout = {}\n",
                q(m),
                q(t)
            )),
            2 => duration().prop_map(|d| format!("sleep = {}\n", q(d))),
            2 => (m.clone(), any::<bool>()).prop_map(|(m, up)| format!(
                "on = {}\nlink = {}\n",
                q(m),
                if up { "\"up\"" } else { "\"down\"" }
            )),
            1 => (select(&["data.img", "fs.ext4", "new.img"][..]), 0u64..70_000_000)
                .prop_map(|(f, off)| format!("write = {}\noffset = {off}\ndata = \"hello\"\n", q(f))),
            1 => (select(&["data.img", "fs.ext4", "h1-d.cow"][..]), any::<bool>(), any::<bool>())
                .prop_map(|(f, p, sp)| format!(
                    "copy = {}\nto = \"copy.img\"\npreserve = {p}\nsparse = {sp}\n",
                    q(f)
                )),
            1 => select(&["data.img", "fs.ext4"][..])
                .prop_map(|b| format!("mkcow = \"m.cow\"\nbacking = {}\n", q(b))),
            1 => select(&["m.cow", "h1-d.cow", "h1.cow", "data.img"][..])
                .prop_map(|c| format!("merge = {}\ninto = \"merged.img\"\n", q(c))),
            1 => select(&["m.cow", "h1-d.cow", "h2.cow", "data.img"][..])
                .prop_map(|c| format!("check = {}\n", q(c))),
            2 => proptest::collection::vec(select(MACHINES), 1..3)
                .prop_map(|ms| format!("halt = {ms:?}\n")),
            1 => m.clone().prop_map(|m| format!("kill = {}\n", q(m))),
            2 => (m.clone(), 0.0f64..1.0, 0.0f64..1.0, duration()).prop_map(|(m, l, d, t)| format!(
                "on = {}\nfault = \"eth0\"\nloss = {l}\nduplicate = {d}\ndelay = {}\n",
                q(m),
                q(t)
            )),
            1 => (m.clone(), 1u64..5).prop_map(|(m, w)| format!(
                "on = {}\nfault = \"ubd1\"\nfail_write = {w}\n",
                q(m)
            )),
            1 => select(&["sw1", "sw2"][..]).prop_map(|s| format!(
                "expect_trace = {}\ncontains = [\"ARP\"]\n",
                q(s)
            )),
        ]
    }

    prop_compose! {
        pub fn lab()(
            seed in 0u64..1000,
            hub in any::<bool>(),
            data in select(&["size = \"1M\"\n", "size = \"4M+1\"\n", "size = \"8M\"\nmkfs = \"ext4\"\n"][..]),
            h1 in machine("h1"),
            h2 in machine("h2"),
            h3 in machine("h3"),
            boot in any::<bool>(),
            steps in proptest::collection::vec(step(), 0..16),
        ) -> String {
            let mut s = format!("[scenario]\nname = \"random\"\nseed = {seed}\n\n");
            s.push_str(&format!("[[switch]]\nname = \"sw1\"\nhub = {hub}\n\n[[switch]]\nname = \"sw2\"\nports = 2\n\n"));
            s.push_str("[[disk]]\nname = \"fs.ext4\"\nsize = \"64M\"\nimage = \"default\"\n\n");
            s.push_str(&format!("[[disk]]\nname = \"data.img\"\n{data}\n"));
            for m in [h1, h2, h3] {
                s.push_str(&m);
            }
            if boot {
                s.push_str("[[step]]\nboot = [\"h1\", \"h2\", \"h3\"]\n\n");
            }
            for st in steps {
                s.push_str("[[step]]\n");
                s.push_str(&st);
                s.push('\n');
            }
            s
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// `check` (resolve::parse) and a run on the sim never panic on a random
    /// lab, and a run ends within seconds of real time. 128 cases take about a
    /// second here; 5000 found nothing (runs take 4 ms median, 30 ms at most).
    #[test]
    fn random_labs_never_panic_check_or_the_sim(text in random_labs::lab()) {
        let file = Path::new("random.toml");
        // A bad file is fine (about half are): it must only not panic, in
        // resolving or in rendering its diagnostics.
        let plan = match umltest::scenario::resolve::parse(file, &text) {
            Ok(plan) => plan,
            Err(diags) => {
                proptest::prop_assert!(diags.to_string().contains("error: "));
                return Ok(());
            }
        };
        let d = util::tempdir();
        let mut sim = umltest::sim::SimBackend::new();
        let began = Instant::now();
        let result = umltest::scenario::engine::run(&plan, &mut sim, d.path(), plan.seed);
        let took = began.elapsed();
        proptest::prop_assert!(took < Duration::from_secs(20), "run took {took:?}:\n{text}");
        if let Ok(r) = result {
            proptest::prop_assert!(r.steps_run <= plan.steps.len());
        }
    }

    /// The same files cut anywhere, with a multibyte character at the cut:
    /// TOML errors and their carets never panic.
    #[test]
    fn cut_labs_give_diagnostics_not_panics(text in random_labs::lab(), cut in 0.0f64..1.0) {
        let mut at = (text.len() as f64 * cut) as usize;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let cut_text = format!("{}é\u{1F600}", &text[..at]);
        if let Err(diags) = umltest::scenario::resolve::parse(Path::new("cut.toml"), &cut_text) {
            proptest::prop_assert!(diags.to_string().contains("cut.toml"));
        }
    }
}

/// On real kernels a second run on the same folder used to delete the first
/// one's sockets under it, and the first then hung for ever after its last
/// step. Now the second is refused while the first's guest is up, and the
/// first ends on its own.
#[test]
fn a_second_run_cannot_pull_the_folder_from_under_real_kernels() {
    let _heavy = crate::uml::heavy();
    if util::guest_tools().is_none()
        || util::tool("vde_plug", "vde2").is_none()
        || util::tool("arping", "arping").is_none()
        || util::tool("tcpdump", "tcpdump").is_none()
    {
        return;
    }
    let d = util::tempdir();
    let text = "[scenario]\nname = \"lab\"\n\n[[disk]]\nname = \"fs.ext4\"\nsize = \"64M\"\nimage = \"default\"\n\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M ubd0=h1.cow,fs.ext4 root=/dev/ubda\"\n\n[[step]]\nboot = [\"h1\"]\n\n[[step]]\non = \"h1\"\nrun = \"echo ready-$((6*7))\"\n\n[[step]]\nhalt = [\"h1\"]\n";
    std::fs::write(d.path().join("lab.toml"), text).expect("write");
    let args = ["run", "lab.toml", "--backend", "uml", "--out", "out"];
    let began = Instant::now();
    let first = std::process::Command::new(util::umltest_bin())
        .args(args)
        .current_dir(d.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the first run");
    // Ready: the guest's mconsole socket is in the run folder.
    let socket = d.path().join("out/lab/.uml/h1/mconsole");
    while !socket.exists() {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "the first run's guest never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = util::umltest(d.path(), &args);
    second.expect_code(2);
    assert!(
        second.stderr().contains(&format!(
            "is in use by another umltest run (pid {})",
            first.id()
        )),
        "{}",
        second.dump()
    );
    let first = first.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&first.stdout);
    // No snapshots here: 100 with "no snapshot" mismatches, never a hang.
    assert!(matches!(first.status.code(), Some(0 | 100)), "{first:?}");
    assert!(
        stdout.ends_with("passed, 0 failed\n") || stdout.contains("no snapshot"),
        "{stdout}"
    );
    let console = std::fs::read_to_string(d.path().join("out/lab/h1.console")).expect("console");
    assert!(console.contains("ready-42"), "{console}");
    assert!(began.elapsed() < Duration::from_secs(180));
}
