//! The real backend: root images, the machine driver's console protocol, mconsole.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::util;

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    format!("{:x}", Sha256::digest(&bytes))
}

/// `umltest args` in `cwd` with extra environment variables.
fn umltest_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> util::Run {
    let output = std::process::Command::new(util::umltest_bin())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("spawn umltest");
    util::Run {
        cmdline: format!("{env:?} umltest {}", args.join(" ")),
        cwd: cwd.to_path_buf(),
        output,
    }
}

fn debugfs_ls(image: &Path, dir: &str) -> String {
    let debugfs = util::tool("debugfs", "e2fsprogs").expect("debugfs");
    let out = std::process::Command::new(debugfs)
        .args(["-R", &format!("ls -l {dir}")])
        .arg(image)
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn image_build_is_reproducible_sparse_cached_and_holds_the_guest_programs() {
    if util::guest_tools().is_none() || util::tool("arping", "arping").is_none() {
        return;
    }
    let dir = util::tempdir();
    let cache = dir.path().join("cache");
    let cache_env = cache.to_string_lossy().into_owned();
    let build = |out: &str, extra: &[&str]| {
        let mut args = vec!["image", "build"];
        args.extend_from_slice(extra);
        args.push(out);
        let run = umltest_env(dir.path(), &args, &[("XDG_CACHE_HOME", &cache_env)]);
        run.expect_code(0);
        run
    };
    // Two builds from scratch (no cache) must be byte-identical.
    build("a.ext4", &["--no-cache"]);
    build("b.ext4", &["--no-cache"]);
    let a = dir.path().join("a.ext4");
    assert_eq!(sha256_file(&a), sha256_file(&dir.path().join("b.ext4")));
    // The cache: first build fills it, the second is a hit with the same bytes.
    let first = build("c.ext4", &[]);
    assert!(
        first.stdout().contains("built and cached:"),
        "{}",
        first.dump()
    );
    let second = build("d.ext4", &[]);
    assert!(second.stdout().contains("cached: "), "{}", second.dump());
    assert!(
        !second.stdout().contains("built and cached"),
        "{}",
        second.dump()
    );
    assert_eq!(sha256_file(&a), sha256_file(&dir.path().join("d.ext4")));
    // Sparse: 64 MiB long, far fewer bytes allocated.
    let meta = std::fs::metadata(&a).expect("stat");
    assert_eq!(meta.len(), 64 << 20);
    assert!(meta.blocks() * 512 < 40 << 20, "{} blocks", meta.blocks());
    // Contents: the host programs (not busybox applet links), their loader, the init.
    let sbin = debugfs_ls(&a, "/usr/sbin");
    let arping = sbin
        .lines()
        .find(|l| l.ends_with(" arping"))
        .unwrap_or_else(|| panic!("no arping in /usr/sbin:\n{sbin}"));
    assert!(
        arping.contains("100755"),
        "arping is not a regular file: {arping}"
    );
    assert!(debugfs_ls(&a, "/lib64").contains("ld-linux-x86-64.so.2"));
    assert!(debugfs_ls(&a, "/lib/x86_64-linux-gnu").contains("libpcap.so.0.8"));
    assert!(debugfs_ls(&a, "/usr/bin").contains(" tcpdump"));
    assert!(debugfs_ls(&a, "/").contains(" init"));
    // The report names the versions found.
    assert!(first.stdout().contains("arping   2.23"), "{}", first.dump());
}

#[test]
fn image_build_with_a_missing_program_names_it() {
    if util::guest_tools().is_none() {
        return;
    }
    let dir = util::tempdir();
    let run = util::umltest(
        dir.path(),
        &[
            "image",
            "build",
            "--no-cache",
            "--with",
            "/nonexistent/prog",
            "x.ext4",
        ],
    );
    run.expect_code(1);
    assert!(run.stderr().contains("/nonexistent/prog"), "{}", run.dump());
    assert!(!dir.path().join("x.ext4").exists());
}

/// Real-kernel tests of this module run one at a time: on a loaded 2-core host,
/// several parallel UML guests slow each other down enough to shift wall-clock
/// timings (the arping lab's 3.5 s step needs its 4th probe by 3 s).
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

mod machine {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use umltest::uml::args::effective_argv;
    use umltest::uml::image::{self, ImageSpec};
    use umltest::uml::machine::{HaltedBy, Machine, MachineConfig};

    use crate::util;

    /// The default image, built once per test run (a shared cache dir under /tmp keeps
    /// repeated runs cheap; the cache is keyed by content).
    pub fn default_image() -> Option<PathBuf> {
        static IMAGE: OnceLock<Option<PathBuf>> = OnceLock::new();
        IMAGE
            .get_or_init(|| {
                util::guest_tools()?;
                util::tool("arping", "arping")?;
                util::tool("tcpdump", "tcpdump")?;
                let dir =
                    std::env::temp_dir().join(format!("umltest-tests-{}", std::process::id()));
                std::fs::create_dir_all(&dir).ok()?;
                let mut spec = ImageSpec::default_with(&[]);
                spec.cache_dir = Some(std::env::temp_dir().join("umltest-test-cache"));
                let out = dir.join("fs.ext4");
                image::build(&spec, &out).unwrap_or_else(|e| panic!("image build: {e}"));
                Some(out)
            })
            .clone()
    }

    /// A machine booted on the default image (read-only root, shared).
    pub fn boot(dir: &Path, name: &str, extra: &[&str]) -> Option<Machine> {
        let image = default_image()?;
        let mut argv = vec!["mem=64M".to_string(), format!("ubd0r={}", image.display())];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let config = MachineConfig::new(name, dir, effective_argv(&argv, name, 0)).ok()?;
        let mut m = Machine::start(&config).unwrap_or_else(|e| panic!("{e}"));
        m.wait_ready(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        Some(m)
    }

    fn run(m: &mut Machine, cmd: &str) -> (String, i32) {
        let out = m
            .run(cmd, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}\n{}", m.transcript()));
        assert!(!out.interrupted, "{cmd:?} interrupted\n{}", m.transcript());
        (out.output, out.exit_code)
    }

    /// `reboot -f` in the guest: UML restarts the kernel in the same process
    /// (same pid and argv) and the harness init brings up a new shell; the
    /// command's output before the restart is its output. Plain `reboot`,
    /// `halt`, `poweroff` signal pid 1, the harness init's shell, which
    /// ignores them; `halt -f` ends the process and the command with it.
    #[test]
    fn reboot_f_restarts_the_kernel_in_the_same_process_and_halt_f_ends_it() {
        let _heavy = crate::uml::heavy();
        let dir = util::tempdir();
        let Some(mut m) = boot(dir.path(), "rb1", &[]) else {
            return;
        };
        let pid = m.pid();
        assert_eq!(run(&mut m, "reboot; echo up"), ("up\n".into(), 0));
        assert_eq!(
            run(&mut m, "echo going; reboot -f; echo never"),
            ("going\n".into(), 0)
        );
        assert_eq!(run(&mut m, "echo again"), ("again\n".into(), 0));
        assert_eq!(m.pid(), pid);
        assert_eq!(m.status(), None);
        let text = m.transcript();
        let restart = text
            .find("reboot: Restarting system")
            .unwrap_or_else(|| panic!("no restart line\n{text}"));
        assert!(text[restart..].contains("Linux version 6.1"), "{text}");
        assert_eq!(
            text.matches("Run /init as init process").count(),
            2,
            "{text}"
        );
        // Without -f, halt and poweroff signal the harness init's shell too.
        assert_eq!(run(&mut m, "halt; poweroff; echo up"), ("up\n".into(), 0));
        // With it the kernel halts; the command line ends with it.
        assert_eq!(run(&mut m, "echo bye; halt -f"), ("bye\n".into(), 0));
        assert!(m.status().is_some(), "{}", m.transcript());
    }

    #[test]
    fn console_protocol_returns_output_and_exit_codes_and_interrupts_at_timeout() {
        let _heavy = crate::uml::heavy();
        let dir = util::tempdir();
        let Some(mut m) = boot(dir.path(), "p1", &[]) else {
            return;
        };
        assert_eq!(run(&mut m, "echo hi"), ("hi\n".into(), 0));
        assert_eq!(run(&mut m, "false"), (String::new(), 1));
        assert_eq!(run(&mut m, "sh -c 'exit 42'"), (String::new(), 42));
        assert_eq!(run(&mut m, "echo err >&2"), ("err\n".into(), 0));
        assert_eq!(run(&mut m, "echo a\necho b"), ("a\nb\n".into(), 0));
        // Quotes, $, %, backslashes, a tab and a control character reach the shell intact.
        let (out, code) = run(
            &mut m,
            "printf '%s|' \"a'b\" '\"c$d%e\\\\' \"$(printf 'x\\ty')\"; echo",
        );
        assert_eq!((out.as_str(), code), ("a'b|\"c$d%e\\\\|x\ty|\n", 0));
        assert_eq!(run(&mut m, "printf '\\003z\\n'"), ("\u{3}z\n".into(), 0));
        // Shell state persists between commands.
        run(&mut m, "X=kept; cd /proc");
        assert_eq!(run(&mut m, "echo $X $(pwd)"), ("kept /proc\n".into(), 0));
        // A syntax error is reported (exit 2) and does not break the protocol.
        let (out, code) = run(&mut m, "echo 'unterminated");
        assert_eq!(code, 2, "{out}");
        assert_eq!(run(&mut m, "echo alive"), ("alive\n".into(), 0));
        // stdin is not the console: a command that reads it cannot eat the protocol.
        assert_eq!(run(&mut m, "cat; echo done"), ("done\n".into(), 0));
        // The host's arping 2.23, not busybox's applet.
        let (out, _) = run(&mut m, "arping 2>&1 | head -n 1");
        assert!(out.starts_with("ARPing 2.23"), "{out}");
        // The effective command line reached the kernel (UML appends root= and console=).
        let (cmdline, _) = run(&mut m, "cat /proc/cmdline");
        assert!(
            cmdline.contains("con0=fd:0,fd:1 con=null uml_dir=.uml init=/init"),
            "{cmdline}"
        );
        // A command that never ends gets ^C at its timeout; output so far is kept.
        let started = Instant::now();
        let out = m
            .run("echo before; sleep 1000", Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(out.interrupted);
        assert_eq!((out.output.as_str(), out.exit_code), ("before\n", 130));
        assert_eq!(run(&mut m, "echo after"), ("after\n".into(), 0));
        // The mconsole socket is in the run folder (uml_dir=.uml, umid=<machine>).
        assert!(dir.path().join(".uml/p1/mconsole").exists());
        assert_eq!(m.halt(Duration::from_secs(20)), HaltedBy::Guest);
        assert!(
            m.status().is_some_and(|s| s.success()),
            "{}",
            m.transcript()
        );
        assert!(!dir.path().join(".uml/p1").exists(), "umid dir left behind");
    }

    #[test]
    fn a_guest_that_panics_fails_fast_with_the_panic_text() {
        let _heavy = crate::uml::heavy();
        let dir = util::tempdir();
        if default_image().is_none() {
            return;
        }
        let argv = effective_argv(&["mem=64M".into(), "ubd0r=missing.ext4".into()], "bad", 0);
        let config = MachineConfig::new("bad", dir.path(), argv).expect("linux.uml");
        let mut m = Machine::start(&config).expect("start");
        let started = Instant::now();
        let err = m
            .wait_ready(Duration::from_secs(60))
            .expect_err("a guest without a root must not get a shell");
        let text = err.to_string();
        assert!(started.elapsed() < Duration::from_secs(30), "slow: {text}");
        assert!(text.contains("the kernel panicked"), "{text}");
        assert!(text.contains("VFS: Unable to mount root fs"), "{text}");
        assert!(m.status().is_some(), "process still running");
    }

    /// Not a test on its own: the body of `a_killed_harness_leaves_no_linux_uml_behind`,
    /// run in a child process of the test binary (it does nothing without the variable).
    #[test]
    fn helper_boot_then_hang() {
        let Some(dir) = std::env::var_os("UMLTEST_HELPER_RUN_DIR") else {
            return;
        };
        let m = boot(Path::new(&dir), "orphan", &[]).expect("tools checked by the parent");
        println!("UMLTEST-HELPER-PID {}", m.pid());
        std::thread::sleep(Duration::from_secs(120));
        drop(m);
    }

    /// Process ids whose process group is `pgid` (from /proc/<pid>/stat).
    fn group_members(pgid: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|stat| {
                        // Fields after the `(comm)`: state, ppid, pgrp. Zombies are
                        // dead (only waiting for init to reap them).
                        let rest = stat.get(stat.rfind(')')? + 2..)?;
                        let mut fields = rest.split(' ');
                        let state = fields.next()?;
                        let pgrp = fields.nth(1)?.parse::<u32>().ok()?;
                        (state != "Z").then_some(pgrp)
                    })
                    == Some(pgid)
            })
            .collect()
    }

    #[test]
    fn a_killed_harness_leaves_no_linux_uml_behind() {
        let _heavy = crate::uml::heavy();
        if default_image().is_none() {
            return;
        }
        use std::io::BufRead;
        let dir = util::tempdir();
        let mut helper = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "uml::machine::helper_boot_then_hang",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("UMLTEST_HELPER_RUN_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn helper");
        let stdout = helper.stdout.take().expect("helper stdout");
        let mut pid = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.expect("read helper output");
            // libtest prints `test NAME ... ` before the helper's own output.
            if let Some((_, p)) = line.split_once("UMLTEST-HELPER-PID ") {
                pid = p.trim().parse::<u32>().ok();
                break;
            }
        }
        let pid = pid.expect("helper did not boot a machine");
        assert!(!group_members(pid).is_empty(), "machine not running");
        helper.kill().expect("SIGKILL the harness");
        let _ = helper.wait();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !group_members(pid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            group_members(pid),
            Vec::<u32>::new(),
            "linux.uml survived its harness"
        );
    }

    #[test]
    fn mconsole_commands_against_a_real_guest() {
        let _heavy = crate::uml::heavy();
        let dir = util::tempdir();
        let Some(mut m) = boot(dir.path(), "mc1", &[]) else {
            return;
        };
        let socket = m.mconsole_socket().expect("umid set by the harness");
        let sock = socket.to_string_lossy().into_owned();
        let con = |args: &[&str]| {
            let mut all = vec!["console"];
            all.extend_from_slice(args);
            util::umltest(dir.path(), &all)
        };
        // By umid, found in ./.uml of the run folder; and by socket path.
        let v = con(&["mc1", "version"]);
        v.expect_code(0);
        assert!(
            v.stdout().starts_with("OK Linux (none) 6.1."),
            "{}",
            v.dump()
        );
        assert!(v.stdout().trim_end().ends_with("x86_64"), "{}", v.dump());
        let help = con(&[&sock, "help"]);
        help.expect_code(0);
        assert!(
            help.stdout()
                .contains("    proc <file> - returns the contents of the UML's /proc/<file>"),
            "{}",
            help.dump()
        );
        // uml_mconsole's local commands: its help after the kernel's; `log hi` is
        // two requests (`log hi`, then `log \n`), so `OK ` twice [run].
        assert!(
            help.stdout()
                .ends_with("    int  - Interrupt UML session\n"),
            "{}",
            help.dump()
        );
        let log = con(&["mc1", "log", "hi"]);
        log.expect_code(0);
        assert_eq!(log.stdout(), "OK \nOK \n");
        let version = con(&["mc1", "mconsole-version"]);
        assert_eq!(version.stdout(), "uml_mconsole client version 2\n");
        // `proc` replies in several chunks (a "\n", the file, then ""): concatenated.
        let cmdline = con(&["mc1", "proc", "cmdline"]);
        cmdline.expect_code(0);
        assert!(
            cmdline.stdout().starts_with("OK \ncon0")
                || cmdline.stdout().contains("con0=fd:0,fd:1"),
            "{}",
            cmdline.dump()
        );
        let meminfo = con(&["mc1", "proc", "meminfo"]);
        assert!(meminfo.stdout().contains("MemTotal:"), "{}", meminfo.dump());
        // sysrq streams the console output it causes.
        let sysrq = con(&["mc1", "sysrq", "h"]);
        sysrq.expect_code(0);
        assert!(sysrq.stdout().contains("sysrq: HELP"), "{}", sysrq.dump());
        // Errors: ERR and exit status 1, as uml_mconsole.
        let bogus = con(&["mc1", "bogus"]);
        bogus.expect_code(1);
        assert_eq!(bogus.stdout(), "ERR Unknown command\n");
        let go = con(&["mc1", "go"]);
        go.expect_code(1);
        assert_eq!(go.stdout(), "ERR Not stopped\n");
        // stop / go: stopped twice is an error; after go the guest runs commands again.
        assert_eq!(con(&["mc1", "stop"]).stdout(), "OK stopped\n");
        let again = con(&["mc1", "stop"]);
        assert_eq!(
            (again.stdout(), again.code()),
            ("ERR Already stopped\n".to_string(), Some(1))
        );
        assert_eq!(con(&["mc1", "go"]).stdout(), "OK \n");
        let out = m
            .run("echo running", Duration::from_secs(20))
            .expect("run after go");
        assert_eq!(out.output, "running\n");
        // A missing machine is named in the error.
        let missing = con(&["nosuchumid", "version"]);
        missing.expect_code(1);
        assert!(
            missing.stderr().contains("nosuchumid"),
            "{}",
            missing.dump()
        );
        // halt: the reply, then the process exits on its own.
        assert_eq!(con(&["mc1", "halt"]).stdout(), "OK \n");
        assert!(
            m.wait_exit(Duration::from_secs(20)),
            "still running after mconsole halt"
        );
        assert!(!socket.exists(), "socket left behind");
    }

    /// The 512-byte record the guest writes to sector `i` (`printf '%-511s\n'`).
    fn record(i: usize) -> Vec<u8> {
        format!("{:<511}\n", format!("record {i}")).into_bytes()
    }

    /// The issue's fault case: the host SIGKILLs a machine while it writes through
    /// a COW file (`ubd1=x.cow,back.img`, created by the kernel). The file is still
    /// valid (`umltest cow check` exits 0), every record the guest saw written
    /// (`dd conv=fsync` finished, then `wrote N`) reads back through our COW
    /// reader, and each later sector holds either its record or the backing's bytes.
    #[test]
    fn a_machine_killed_mid_write_leaves_a_valid_cow_with_every_synced_record() {
        const RECORDS: usize = 2000;
        const SEEN: usize = 20;
        let _heavy = crate::uml::heavy();
        if default_image().is_none() {
            return;
        }
        let dir = util::tempdir();
        // 4 MiB (a multiple of the page size: see real_guest_writes_merge_to_what_the_guest_saw)
        // of a byte no record contains, so a sector's source is unambiguous.
        std::fs::write(dir.path().join("back.img"), vec![0x5a; 4 << 20]).expect("backing");
        let Some(mut m) = boot(dir.path(), "w1", &["ubd1=x.cow,back.img"]) else {
            return;
        };
        let writer = format!(
            "(i=0; while [ $i -lt {RECORDS} ]; do \
             printf '%-511s\\n' \"record $i\" | dd of=/dev/ubdb bs=512 seek=$i count=1 \
             iflag=fullblock conv=notrunc,fsync 2>/dev/null || {{ echo \"dd failed $i\"; break; }}; \
             i=$((i+1)); echo \"wrote $i\"; done) &"
        );
        assert_eq!(run(&mut m, &writer).1, 0);
        let seen = m
            .wait_console_text(&format!("wrote {SEEN}"), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(seen, "no `wrote {SEEN}`\n{}", m.transcript());
        m.kill();
        let transcript = m.transcript();
        assert!(m.status().is_some(), "still running after SIGKILL");
        assert!(!transcript.contains("dd failed"), "{transcript}");
        assert!(
            !transcript.contains(&format!("wrote {RECORDS}\n")),
            "the writer finished before the kill: not mid-write\n{transcript}"
        );
        let check = util::umltest(dir.path(), &["cow", "check", "x.cow"]);
        check.expect_code(0);
        assert!(
            check.stdout().contains("x.cow: ok: COW version 3 header")
                && check.stdout().contains("size and mtime match"),
            "{}",
            check.dump()
        );
        let cow = umltest::cow::CowFile::open(&dir.path().join("x.cow"), None, false)
            .unwrap_or_else(|e| panic!("open the killed machine's COW: {e}"));
        let mut buf = vec![0u8; 512];
        let mut written = 0;
        for i in 0..RECORDS {
            cow.read_at(&mut buf, i as u64 * 512)
                .unwrap_or_else(|e| panic!("read record {i}: {e}"));
            if buf == record(i) {
                written += 1;
                continue;
            }
            assert!(
                i >= SEEN,
                "record {i} was synced before the kill but reads back as {:?}\n{transcript}",
                String::from_utf8_lossy(&buf)
            );
            assert!(
                buf.iter().all(|&b| b == 0x5a),
                "sector {i} is neither its record nor the backing's: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        assert!(written >= SEEN, "{written} records");
        eprintln!("killed after {written} of {RECORDS} records reached the COW file");
        // The backing file was never written.
        let back = std::fs::read(dir.path().join("back.img")).expect("backing");
        assert!(back.iter().all(|&b| b == 0x5a), "backing file modified");
    }
}

mod lab {
    use std::path::Path;

    use crate::util;

    /// The `.snap.new` files waiting for review in snapshots/arping.
    fn pending_snapshots() -> Vec<std::path::PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots/arping");
        let mut found: Vec<_> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().ends_with(".snap.new"))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }

    /// `umltest run --backend uml`: the real kernels' artifacts, normalised, agree
    /// with the sim's committed snapshots (normalised the same way). The issue's
    /// `--backend both` run of the arping and COW labs is ci/labs.sh (each real lab
    /// boots once per CI run).
    #[test]
    fn backend_uml_passes_on_the_arping_lab_against_the_sim_snapshots() {
        let _heavy = crate::uml::heavy();
        if super::machine::default_image().is_none() || util::tool("vde_plug", "vde2").is_none() {
            return;
        }
        let dir = util::tempdir();
        let arping = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/arping.toml");
        let before = pending_snapshots();
        let run = util::umltest(
            dir.path(),
            &[
                "run",
                "--backend",
                "uml",
                "--out",
                "out",
                &arping.to_string_lossy(),
            ],
        );
        run.expect_code(0);
        assert!(
            run.stdout().contains("1 passed, 0 failed"),
            "{}",
            run.dump()
        );
        // The console artifact shows the commands as the sim writes them, and none
        // of the protocol's markers or the harness's own job bookkeeping.
        let out = dir.path().join("out/arping");
        let console = std::fs::read_to_string(out.join("h1.console")).expect("h1 console");
        assert!(console.contains("\n# ip link set eth0 up\n"), "{console}");
        assert!(!console.contains("UMLTEST-BEGIN"), "{console}");
        let h2 = std::fs::read_to_string(out.join("h2.console")).expect("h2 console");
        assert!(h2.contains("\n# tcpdump -i eth0 -n -e arp\n"), "{h2}");
        assert!(!h2.contains("umltest-job"), "{h2}");
        assert!(!h2.contains("UMLTEST-BEGIN"), "{h2}");
        // Switch ports follow the boot list (h1 first), as on the sim.
        let trace = std::fs::read_to_string(out.join("sw1.trace")).expect("uml trace");
        let first = trace.lines().next().unwrap_or_default();
        assert!(
            first.contains(" port 1 -> 2: fe:fd:00:00:00:01 >"),
            "{trace}"
        );
        // Snapshots are the sim's: a real run writes none (not even `.snap.new`).
        assert_eq!(pending_snapshots(), before, "{}", run.dump());
    }

    /// A small lab without wall-clock steps (one ARP probe, answered), so two
    /// copies running at once on a loaded host do not change its outcome.
    const PAIR_LAB_STEPS: &str = r#"
[[step]]
on     = "h1"
run    = "arping -0 -i eth0 -c 1 1.1.1.1"
expect = { exit = 0, stdout = "1 packets transmitted, 1 packets received,   0% unanswered" }

[[step]]
halt = ["h1", "h2"]
"#;

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }

    /// The issue's "unique umids and socket dirs so two runs at once, and runs as
    /// an ordinary user, work": two `umltest run --backend uml` of one lab at once,
    /// from the same folder (same machine and switch names), into two run folders.
    /// As root the second runs as `nobody` (setpriv), with only its run folder and
    /// HOME writable and the shared image cache read-only; as an ordinary user both
    /// run as that user.
    #[test]
    fn two_runs_at_once_one_as_an_ordinary_user_both_pass() {
        let _heavy = crate::uml::heavy();
        // Fills the shared test cache with the default image, so no run builds one.
        let Some(image) = super::machine::default_image() else {
            return;
        };
        if util::tool("vde_plug", "vde2").is_none() {
            return;
        }
        // SAFETY: plain getter syscall.
        let root = unsafe { libc::geteuid() } == 0;
        let setpriv = if root {
            util::tool("setpriv", "util-linux")
        } else {
            eprintln!(
                "SKIPPED (not a pass): the `nobody` half needs root to drop to; \
                 both runs use this (ordinary) user instead"
            );
            None
        };
        if root && setpriv.is_none() {
            return;
        }
        let dir = util::tempdir();
        let d = dir.path();
        // Everything `nobody` needs is readable (tempdir makes 0700 folders); only
        // its own folder is writable.
        chmod(d, 0o755);
        std::fs::create_dir(d.join("scenarios")).expect("mkdir");
        let lab = format!(
            "[scenario]\nname = \"pair\"\nabout = \"Two hosts on one switch: one ARP probe, answered\"\nseed = 1\n{two_hosts}{PAIR_LAB_STEPS}",
            two_hosts = super::TWO_HOSTS
        );
        std::fs::write(d.join("scenarios/pair.toml"), lab).expect("write lab");
        util::umltest(
            d,
            &["run", "--update", "--out", "sim", "scenarios/pair.toml"],
        )
        .expect_code(0);
        for entry in std::fs::read_dir(d.join("snapshots/pair")).expect("snapshots") {
            chmod(&entry.expect("entry").path(), 0o644);
        }
        // The binary may sit under a folder `nobody` cannot enter (a checkout in
        // /root): a readable copy.
        let bin = d.join("umltest");
        std::fs::copy(util::umltest_bin(), &bin).expect("copy umltest");
        chmod(&bin, 0o755);
        // The image cache: the test cache (root's), read-only for `nobody`.
        let cache = std::env::temp_dir().join("umltest-test-cache");
        assert!(
            std::fs::read_dir(&cache)
                .expect("test image cache")
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("rootfs-")),
            "{} holds no image although {} was built from it",
            cache.display(),
            image.display()
        );
        std::fs::create_dir(d.join("xdg")).expect("mkdir");
        std::os::unix::fs::symlink(&cache, d.join("xdg/umltest")).expect("symlink");
        let user = d.join("user");
        std::fs::create_dir(&user).expect("mkdir");
        if root {
            std::os::unix::fs::chown(&user, Some(65534), Some(65534)).expect("chown nobody");
        }
        let xdg = d.join("xdg").to_string_lossy().into_owned();
        let spawn = |as_nobody: bool, out: &str| {
            let mut cmd = match (&setpriv, as_nobody) {
                (Some(setpriv), true) => {
                    let mut c = std::process::Command::new(setpriv);
                    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
                        .arg(&bin);
                    c
                }
                _ => std::process::Command::new(&bin),
            };
            cmd.args([
                "run",
                "--backend",
                "uml",
                "--out",
                out,
                "scenarios/pair.toml",
            ])
            .current_dir(d)
            .env("XDG_CACHE_HOME", &xdg)
            .env("HOME", &user)
            .env("TMPDIR", &user)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
            let child = cmd.spawn().expect("spawn umltest run");
            (format!("{cmd:?}"), child)
        };
        let runs = [spawn(false, "out-a"), spawn(true, "user/out-b")];
        for (nth, (cmdline, child)) in runs.into_iter().enumerate() {
            let output = child.wait_with_output().expect("wait for umltest run");
            let run = util::Run {
                cmdline,
                cwd: d.to_path_buf(),
                output,
            };
            run.expect_code(0);
            assert!(
                run.stdout().contains("1 passed, 0 failed"),
                "{}",
                run.dump()
            );
            if root && nth == 1 {
                // The second run's guests really were `nobody`'s: the switch logs
                // each peer's user.
                assert!(
                    run.stderr().contains("UML vde_transport user=nobody"),
                    "{}",
                    run.dump()
                );
            }
        }
        let b = d.join("user/out-b/pair");
        if root {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(b.join("h1.console")).expect("h1 console");
            assert_eq!(meta.uid(), 65534, "h1.console not written by nobody");
        }
        // Same names, separate machines: each run folder has its own consoles
        // showing the answered probe.
        for run_dir in [d.join("out-a/pair"), b] {
            let console = std::fs::read_to_string(run_dir.join("h1.console"))
                .unwrap_or_else(|e| panic!("{}: {e}", run_dir.display()));
            assert!(
                console.contains("1 packets transmitted, 1 packets received"),
                "{console}"
            );
        }
    }
}

/// A lab whose `link` steps pull h2's cable, put it back, then pull h1's.
/// Two hosts on one switch, both NICs up, h2 owning 1.1.1.1: the start of the
/// labs below, after their `[scenario]` table.
const TWO_HOSTS: &str = r#"[[switch]]
name = "sw1"

[[disk]]
name  = "fs.ext4"
size  = "64M"
image = "default"

[[machine]]
name    = "h1"
cmdline = "mem=64M ubd0=h1.cow,fs.ext4 root=/dev/ubda eth0=vde,sw1"

[[machine]]
name    = "h2"
cmdline = "mem=64M ubd0=h2.cow,fs.ext4 root=/dev/ubda eth0=vde,sw1"

[[step]]
boot = ["h1", "h2"]

[[step]]
on  = "h2"
run = "ip link set eth0 up; ip addr add 1.1.1.1/24 dev eth0"

[[step]]
on  = "h1"
run = "ip link set eth0 up"
"#;

const LINK_LAB_STEPS: &str = r#"
[[step]]
link = "down"
on   = "h2"

[[step]]
on     = "h1"
run    = "arping -0 -i eth0 -c 1 1.1.1.1"
expect = { exit = 1, stdout = "1 packets transmitted, 0 packets received, 100% unanswered" }

[[step]]
link = "up"
on   = "h2"

[[step]]
on     = "h1"
run    = "arping -0 -i eth0 -c 1 1.1.1.1"
expect = { exit = 0, stdout = "1 packets transmitted, 1 packets received,   0% unanswered" }

[[step]]
link = "down"
on   = "h1"

[[step]]
on     = "h1"
run    = "arping -0 -i eth0 -c 1 1.1.1.1"
expect = { exit = 1 }

[[step]]
halt = ["h1", "h2"]
"#;

/// `link` steps on real kernels: the switch takes the port's cable out (frames
/// from it are dropped, none reach it) and puts it back into the same port, with
/// the same commands' outcomes and the same trace as on the sim (`--backend both`;
/// `--update` records the sim's snapshots in the temporary folder).
#[test]
fn link_steps_on_the_uml_backend_agree_with_the_sim() {
    let _heavy = heavy();
    if machine::default_image().is_none() || util::tool("vde_plug", "vde2").is_none() {
        return;
    }
    let dir = util::tempdir();
    std::fs::create_dir_all(dir.path().join("scenarios")).expect("mkdir");
    let lab = format!(
        "[scenario]\nname = \"link\"\nabout = \"h2's cable out: h1's probes get no answer and reach nobody; back in, they are answered\"\nseed = 1\n{TWO_HOSTS}{LINK_LAB_STEPS}"
    );
    std::fs::write(dir.path().join("scenarios/link.toml"), lab).expect("write lab");
    let run = util::umltest(
        dir.path(),
        &[
            "run",
            "--backend",
            "both",
            "--update",
            "--out",
            "out",
            "scenarios/link.toml",
        ],
    );
    run.expect_code(0);
    let trace =
        std::fs::read_to_string(dir.path().join("out/link.uml/sw1.trace")).expect("uml trace");
    let ports: Vec<String> = trace
        .lines()
        .map(|l| {
            let head = l.split(": ").next().unwrap_or_default();
            head.split(' ').skip(2).collect::<Vec<_>>().join(" ")
        })
        .collect();
    // h2 unplugged: the request reaches nobody; back in: asked and answered;
    // h1 unplugged: its request never enters the switch.
    assert_eq!(
        ports,
        ["port 1 -> -", "port 1 -> 2", "port 2 -> 1"],
        "{trace}\n{}",
        run.dump()
    );
}

/// `--backend both`: a real run that stops where the sim goes on is run once
/// more in a fresh folder (a guest that dies at boot under load is the host's
/// doing), the first attempt kept and reported; a lab that really stops on uml
/// (here: commands on a machine with its own `init=`, which the harness cannot
/// drive) stops both times and fails.
#[test]
fn backend_both_runs_a_stopped_real_run_once_more_and_still_fails_a_real_stop() {
    let _heavy = heavy();
    if machine::default_image().is_none() {
        return;
    }
    let dir = util::tempdir();
    std::fs::create_dir_all(dir.path().join("scenarios")).expect("mkdir");
    std::fs::write(
        dir.path().join("scenarios/own.toml"),
        r#"[scenario]
name = "own"
seed = 1

[[disk]]
name = "fs.ext4"
size = "32M"
image = "default"

[[machine]]
name = "h1"
cmdline = "mem=64M ubd0=h1.cow,fs.ext4 root=/dev/ubda init=/bin/sh"

[[step]]
boot = "h1"

[[step]]
on = "h1"
run = "echo hi"
"#,
    )
    .expect("write lab");
    let run = util::umltest(
        dir.path(),
        &[
            "run",
            "--backend",
            "both",
            "--update",
            "--out",
            "out",
            "scenarios/own.toml",
        ],
    );
    run.expect_code(100);
    assert!(
        run.stderr().contains(
            "umltest: own: the uml run stopped at step 2 where the sim went on (step 2 (line 17): run on h1: echo hi: the uml backend stopped the run"
        ),
        "{}",
        run.dump()
    );
    assert!(
        run.stdout()
            .contains("cannot run \"echo hi\": no harness shell"),
        "{}",
        run.dump()
    );
    for kept in ["out/own.uml/h1.console", "out/own.uml.first/h1.console"] {
        assert!(dir.path().join(kept).is_file(), "{kept}\n{}", run.dump());
    }
}

#[test]
fn uml_backend_without_linux_uml_says_how_to_install_and_exits_4() {
    let dir = util::tempdir();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/arping.toml");
    let started = std::time::Instant::now();
    let run = umltest_env(
        dir.path(),
        &[
            "run",
            "--backend",
            "uml",
            "--out",
            "out",
            &scenario.to_string_lossy(),
        ],
        &[("UMLTEST_LINUX", "/nonexistent/linux.uml")],
    );
    run.expect_code(4);
    assert!(
        run.stderr().contains("apt-get install -y user-mode-linux"),
        "{}",
        run.dump()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn update_with_the_uml_backend_is_refused_snapshots_are_the_sims() {
    let dir = util::tempdir();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/arping.toml");
    let run = util::umltest(
        dir.path(),
        &[
            "run",
            "--backend",
            "uml",
            "--update",
            &scenario.to_string_lossy(),
        ],
    );
    run.expect_code(2);
    assert!(
        run.stderr().contains("snapshots are recorded on the sim"),
        "{}",
        run.dump()
    );
}

/// The uml backend boots a machine again only once its process ended: a
/// `boot` of a running machine stops the run, naming it, and starts nothing.
#[test]
fn uml_backend_refuses_to_boot_a_running_machine_again() {
    let _heavy = heavy();
    if machine::default_image().is_none() {
        return;
    }
    let dir = util::tempdir();
    std::fs::write(
        dir.path().join("twice.toml"),
        "[scenario]\nname = \"twice\"\n[[disk]]\nname = \"fs.ext4\"\nsize = \"32M\"\nimage = \"default\"\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M ubd0=h1.cow,fs.ext4 root=/dev/ubda\"\n[[step]]\nboot = \"h1\"\n[[step]]\nboot = \"h1\"\n",
    )
    .expect("write lab");
    let run = util::umltest(
        dir.path(),
        &["run", "--backend", "uml", "--out", "out", "twice.toml"],
    );
    run.expect_code(100);
    assert!(
        run.stdout()
            .contains("boot h1: the uml backend stopped the run: machine h1: is already running"),
        "{}",
        run.dump()
    );
    let console = std::fs::read_to_string(dir.path().join("out/twice/h1.console"))
        .unwrap_or_else(|e| panic!("{e}\n{}", run.dump()));
    assert_eq!(console.matches("$ linux").count(), 1, "{console}");
}

/// The committed manifest describes the real default image: the image built
/// from the host's guest programs, read back from its ext4, equals it except for
/// the sizes of binaries (which change with every Debian point release); the
/// manifest `umltest image manifest` writes equals the real image exactly; and
/// `--check` passes on the committed file and fails on a changed one.
#[test]
fn the_committed_manifest_matches_the_real_default_image() {
    use umltest::uml::image::{self, ImageSpec};
    use umltest::uml::manifest::{Manifest, DEFAULT_MANIFEST_PATH};
    let Some(real) = machine::default_image() else {
        return;
    };
    let got = Manifest::of_ext4(&real).unwrap_or_else(|e| panic!("{e}"));
    let committed = Manifest::default_image().unwrap_or_else(|e| panic!("{e}"));
    let diff = committed.differences(&got, false);
    assert!(
        diff.is_empty(),
        "{DEFAULT_MANIFEST_PATH} differs from the real image (regenerate: umltest image manifest {DEFAULT_MANIFEST_PATH}):\n{}",
        diff.join("\n")
    );
    let staged = image::manifest(&ImageSpec::default_with(&[])).unwrap_or_else(|e| panic!("{e}"));
    let diff = staged.differences(&got, true);
    assert!(
        diff.is_empty(),
        "the staging tree's manifest differs from the image:\n{}",
        diff.join("\n")
    );

    // The sim's way of building (placeholders) from this host's manifest gives
    // what `ls -l /` and `df` read on the real image: the same listing (inode
    // numbers, modes, owners, sizes, times) and the same free block and inode counts.
    let dir = util::tempdir();
    let sim = dir.path().join("sim.ext4");
    let size = std::fs::metadata(&real).map(|m| m.len()).unwrap_or(0);
    image::build_from_manifest(&staged, size, None, &sim).unwrap_or_else(|e| panic!("{e}"));
    let listing = debugfs_ls(&real, "/");
    assert!(
        listing.contains(" init") && listing.contains(" lost+found"),
        "{listing}"
    );
    assert_eq!(debugfs_ls(&sim, "/"), listing);
    let counts = |img: &Path| -> Vec<String> {
        let dumpe2fs = util::tool("dumpe2fs", "e2fsprogs").unwrap_or_default();
        let out = std::process::Command::new(dumpe2fs)
            .arg("-h")
            .arg(img)
            .output()
            .unwrap_or_else(|e| panic!("dumpe2fs: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("Free blocks:") || l.starts_with("Free inodes:"))
            .map(str::to_string)
            .collect()
    };
    let real_counts = counts(&real);
    assert_eq!(real_counts.len(), 2, "{real_counts:?}");
    assert_eq!(counts(&sim), real_counts);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join(DEFAULT_MANIFEST_PATH);
    let file = file.to_string_lossy();
    let ok = util::umltest(root, &["image", "manifest", "--check", &file]);
    ok.expect_code(0);
    assert!(
        ok.stdout().contains("matches the default image"),
        "{}",
        ok.dump()
    );
    let changed = dir.path().join("m");
    let text =
        umltest::uml::manifest::DEFAULT_MANIFEST.replace(r#"7 "(none)\n""#, r#"8 "umlhost\n""#);
    std::fs::write(&changed, text).unwrap_or_else(|e| panic!("{e}"));
    let bad = util::umltest(
        root,
        &["image", "manifest", "--check", &changed.to_string_lossy()],
    );
    bad.expect_code(1);
    assert!(
        bad.stdout()
            .contains("-/etc/hostname text 0644 0:0 8 \"umlhost\\n\"")
            && bad
                .stdout()
                .contains("+/etc/hostname text 0644 0:0 7 \"(none)\\n\""),
        "{}",
        bad.dump()
    );
    assert!(
        bad.stderr()
            .contains("regenerate it with: umltest image manifest"),
        "{}",
        bad.dump()
    );
}
