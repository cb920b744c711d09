//! Hostile inputs: the real backend. Command lines naming host paths, a guest
//! reaching for host files through hostfs, an image bomb, and a switch client
//! naming another user's socket.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A victim folder outside the run folder, and what it holds.
fn victim(d: &Path) -> (PathBuf, Vec<(String, String)>) {
    victim_named(d, "victim")
}

fn victim_named(d: &Path, name: &str) -> (PathBuf, Vec<(String, String)>) {
    let v = d.join(name);
    std::fs::create_dir_all(v.join("keep")).expect("mkdir");
    std::fs::write(v.join("secret"), "topsecret\n").expect("write");
    std::fs::write(v.join("keep/file"), "kept\n").expect("write");
    let listing = listing(&v);
    (v, listing)
}

fn listing(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read victim").flatten() {
            let p = e.path();
            let name = p.strip_prefix(dir).expect("inside").display().to_string();
            if p.is_dir() {
                out.push((name, "<dir>".into()));
                stack.push(p);
            } else {
                out.push((name, std::fs::read_to_string(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

fn write_lab(d: &Path, name: &str, body: &str) -> PathBuf {
    let file = d.join(format!("{name}.toml"));
    std::fs::write(&file, format!("[scenario]\nname = \"{name}\"\n\n{body}")).expect("write lab");
    file
}

/// Each option that names a host file is refused at check time, with a caret
/// under the path and a way out; `run` refuses the same before anything starts.
#[test]
fn command_line_host_paths_are_refused_with_a_caret() {
    let tmp = util::tempdir();
    let d = tmp.path();
    let (v, before) = victim(d);
    let vd = v.display();
    let vd = vd.to_string();
    let cases: Vec<(String, String, &str)> = vec![
        (
            format!("uml_dir={vd} umid=keep"),
            vd.clone(),
            "`uml_dir=`: `",
        ),
        (
            "umid=../keep".into(),
            "../keep".into(),
            "is a path, and linux.uml removes `uml_dir/<umid>` at exit",
        ),
        (
            "eth0=daemon,,unix,sw1/../../x".into(),
            "eth0=daemon,,unix,sw1/../../x".into(),
            "reaches outside the run folder",
        ),
        (
            "eth0=vde,/tmp/sw1,,5".into(),
            "eth0=vde,/tmp/sw1,,5".into(),
            "e.g. `vde,sw1`",
        ),
        (
            "iomem=x,/etc/shadow".into(),
            "/etc/shadow".into(),
            "`iomem=`: `/etc/shadow` is an absolute host path",
        ),
        (
            "initrd=/boot/initrd.img".into(),
            "/boot/initrd.img".into(),
            "`initrd=`",
        ),
        (
            format!("mconsole=notify:{vd}/n"),
            format!("{vd}/n"),
            "`mconsole=notify:`",
        ),
        (format!("hostfs={vd}"), vd.clone(), "`hostfs=`"),
        ("con1=tty:/dev/tty1".into(), "/dev/tty1".into(), "`con1=`"),
        (
            "ubd1=/etc/passwd".into(),
            "ubd1=/etc/passwd".into(),
            "external = true",
        ),
    ];
    for (option, at, message) in &cases {
        let cmdline = format!("mem=64M {option}");
        let lab = write_lab(
            d,
            "bad",
            &format!("[[switch]]\nname = \"sw1\"\n\n[[machine]]\nname = \"h1\"\ncmdline = \"{cmdline}\"\n"),
        );
        let started = Instant::now();
        let check = util::umltest(d, &["check", &lab.to_string_lossy()]);
        check.expect_code(2);
        let err = check.stderr();
        assert!(err.contains(message), "{option}: {}", check.dump());
        // The caret line sits under the path (or the option) in the quoted line.
        let lines: Vec<&str> = err.lines().collect();
        let source = lines
            .iter()
            .position(|l| l.contains("cmdline = "))
            .unwrap_or_else(|| panic!("{option}: no source line\n{}", check.dump()));
        let line = lines[source];
        let carets = lines.get(source + 1).copied().unwrap_or_default();
        let col = line.find(at.as_str()).expect("path in the line");
        let caret_at = carets.find('^').expect("a caret");
        assert_eq!(caret_at, col, "{option}: caret not under `{at}`\n{err}");
        assert_eq!(
            carets.matches('^').count(),
            at.len(),
            "{option}: carets span `{at}`\n{err}"
        );
        // `run` loads the same way: refused before a backend starts.
        let run = util::umltest(
            d,
            &[
                "run",
                "--backend",
                "uml",
                "--out",
                "out",
                &lab.to_string_lossy(),
            ],
        );
        run.expect_code(2);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{option}: slow"
        );
    }
    assert!(!d.join("out").exists());
    assert_eq!(listing(&v), before, "victim changed");
}

/// A course's relative names stay fine, and an `external` disk is the one
/// host path a command line may name.
#[test]
fn relative_names_and_external_disks_pass_the_path_check() {
    let tmp = util::tempdir();
    let d = tmp.path();
    std::fs::write(d.join("ext.img"), vec![0u8; 4096]).expect("write");
    let ext = d.join("ext.img");
    let lab = write_lab(
        d,
        "good",
        &format!(
            "[[switch]]\nname = \"sw1\"\n\n[[disk]]\nname = \"{}\"\nexternal = true\n\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M ubd1r={} eth0=daemon,,unix,sw1/ctl eth1=vde,sw1,,5 umid=h1 uml_dir=.uml iomem=x,io.bin\"\n",
            ext.display(),
            ext.display()
        ),
    );
    let check = util::umltest(d, &["check", &lab.to_string_lossy()]);
    check.expect_code(0);
}

/// The run-time twin: a lab handed to the uml backend directly (not from a
/// scenario file) is refused before any process starts, and the victim the
/// kernel would delete (`uml_dir/umid`) is untouched.
#[test]
fn the_uml_backend_refuses_outside_paths_at_run_time() {
    use umltest::scenario::backend::{Backend, Lab, MachineSpec};
    let tmp = util::tempdir();
    let d = tmp.path();
    let (v, before) = victim(d);
    let run_dir = d.join("run");
    std::fs::create_dir(&run_dir).expect("mkdir");
    for argv in [
        vec![format!("uml_dir={}", v.display()), "umid=keep".into()],
        vec!["umid=..".into()],
        vec![format!("hostfs={}", v.display())],
    ] {
        let lab = Lab {
            name: "hostile".into(),
            seed: 1,
            run_dir: run_dir.clone(),
            switches: Vec::new(),
            machines: vec![MachineSpec {
                name: "h1".into(),
                argv: argv.clone(),
            }],
            external: Vec::new(),
        };
        let mut backend = umltest::uml::backend::UmlBackend::new();
        let err = backend.start(&lab).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("machine h1: command line") && text.contains("run folder"),
            "{argv:?}: {text}"
        );
    }
    assert_eq!(listing(&v), before, "victim changed");
}

/// A 1 TiB root image is refused at once, and nothing lands in the image cache.
#[test]
fn a_1t_image_is_refused_quickly_and_leaves_no_cache_entry() {
    let tmp = util::tempdir();
    let d = tmp.path();
    let cache = d.join("cache");
    std::fs::create_dir(&cache).expect("mkdir");
    let lab = write_lab(
        d,
        "big",
        "[[disk]]\nname = \"fs.ext4\"\nsize = \"1T\"\nimage = \"default\"\n\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M ubd0=h1.cow,fs.ext4\"\n\n[[step]]\nboot = [\"h1\"]\n",
    );
    let started = Instant::now();
    let run = util::umltest_env(
        d,
        &[
            "run",
            "--backend",
            "uml",
            "--out",
            "out",
            &lab.to_string_lossy(),
        ],
        &[("XDG_CACHE_HOME", Some(cache.to_str().expect("utf-8")))],
    );
    run.expect_code(2);
    assert!(
        run.stderr().contains(
            "an image disk is at most 64 GiB (the root image of a lab; this one is 1024 GiB)"
        ),
        "{}",
        run.dump()
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{}", run.dump());
    assert_eq!(std::fs::read_dir(&cache).expect("cache").count(), 0);
    // The builder refuses too (for callers other than a scenario file), before
    // it writes anything.
    if util::guest_tools().is_none() {
        return;
    }
    let mut spec = umltest::uml::image::ImageSpec::default_with(&[]);
    spec.size = 1 << 40;
    spec.cache_dir = Some(cache.join("umltest"));
    let err = umltest::uml::image::build(&spec, &d.join("fs.ext4")).expect_err("refused");
    assert!(
        err.to_string().contains("over the limit of 64 GiB"),
        "{err}"
    );
    assert!(!cache.join("umltest").exists());
    assert!(!d.join("fs.ext4").exists());
}

const HOSTFS_LAB: &str = r#"[[disk]]
name  = "fs.ext4"
size  = "64M"
image = "default"

[[machine]]
name    = "h1"
cmdline = "mem=64M ubd0=h1.cow,fs.ext4 root=/dev/ubda"

[[step]]
boot = ["h1"]

[[step]]
on  = "h1"
run = "mkdir -p /tmp/m; mount -t hostfs none /tmp/m -o VICTIM; cat /tmp/m/secret; echo pwned > /tmp/m/new; ls /tmp/m; echo HOSTFS-DONE"

# The run folder is within reach (the sandbox lets the kernel write it): a link
# planted where umltest writes an artifact after the run must not be followed.
[[step]]
on  = "h1"
run = "mkdir -p /tmp/r; mount -t hostfs none /tmp/r -o RUNDIR && ln -s VICTIM/secret /tmp/r/h1.console && echo PLANTED"

[[step]]
halt = ["h1"]
"#;

/// A guest mounts hostfs on a host folder outside its run folder: confined,
/// every access is refused (the sandbox); with `--unconfined`, the control,
/// it reads and writes the folder. Both boot at once.
#[test]
fn a_guest_cannot_reach_host_files_through_hostfs() {
    let _heavy = crate::uml::heavy();
    if util::guest_tools().is_none()
        || util::tool("linux.uml", "user-mode-linux").is_none()
        || util::tool("arping", "arping").is_none()
        || util::tool("tcpdump", "tcpdump").is_none()
    {
        return;
    }
    let tmp = util::tempdir();
    let d = tmp.path();
    // One victim each: the control run writes into its own. Both labs are
    // named `hostfs`, in two folders.
    let (v, before) = victim(d);
    let (control, _) = victim_named(d, "control");
    for (folder, victim) in [("a", &v), ("b", &control)] {
        std::fs::create_dir(d.join(folder)).expect("mkdir");
        write_lab(
            &d.join(folder),
            "hostfs",
            &HOSTFS_LAB
                .replace("VICTIM", &victim.to_string_lossy())
                .replace(
                    "RUNDIR",
                    &d.join(if folder == "a" {
                        "confined"
                    } else {
                        "unconfined"
                    })
                    .join("hostfs")
                    .to_string_lossy(),
                ),
        );
    }
    // The tests' shared image cache (tests/uml.rs builds the same 64M image).
    let cache = std::env::temp_dir().join("umltest-test-cache");
    std::fs::create_dir_all(&cache).expect("cache");
    std::fs::create_dir(d.join("xdg")).expect("mkdir");
    std::os::unix::fs::symlink(&cache, d.join("xdg/umltest")).expect("symlink");
    let xdg = d.join("xdg").to_string_lossy().into_owned();
    let spawn = |out: &str, extra: Option<&str>| {
        let lab = if extra.is_some() { "b" } else { "a" };
        let mut cmd = std::process::Command::new(util::umltest_bin());
        cmd.args(["run", "--backend", "uml", "--out", out])
            .arg(d.join(lab).join("hostfs.toml"))
            .args(extra)
            .current_dir(d)
            .env("XDG_CACHE_HOME", &xdg)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("spawn umltest")
    };
    let confined = spawn("confined", None);
    let unconfined = spawn("unconfined", Some("--unconfined"));
    let confined = confined.wait_with_output().expect("wait");
    let unconfined = unconfined.wait_with_output().expect("wait");
    let console = |out: &str, o: &std::process::Output| {
        std::fs::read_to_string(d.join(out).join("hostfs/h1.console")).unwrap_or_else(|e| {
            panic!(
                "{out}: no console ({e})\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
    };
    let c = console("confined", &confined);
    assert!(c.contains("HOSTFS-DONE"), "{c}");
    assert!(
        c.contains("can't open '/tmp/m/secret': Permission denied"),
        "{c}"
    );
    assert!(!c.contains("topsecret"), "{c}");
    assert!(c.contains("\nPLANTED"), "the guest planted its link:\n{c}");
    assert!(
        !std::fs::symlink_metadata(d.join("confined/hostfs/h1.console"))
            .expect("console")
            .is_symlink(),
        "the artifact replaced the planted link"
    );
    assert_eq!(listing(&v), before, "the confined guest changed the victim");
    let u = console("unconfined", &unconfined);
    assert!(
        u.contains("topsecret"),
        "the control run did not reach the victim:\n{u}"
    );
    assert!(control.join("new").exists(), "{u}");
}

/// Not a test on its own: the client side of
/// `a_port_request_naming_another_users_socket_is_refused`, run as `nobody` in a
/// child process (it does nothing without the variables).
#[test]
fn helper_port_request_as_another_user() {
    let (Some(dir), Some(sock)) = (
        std::env::var_os("UMLTEST_HELPER_SWITCH"),
        std::env::var_os("UMLTEST_HELPER_SOCK"),
    ) else {
        return;
    };
    let dir = PathBuf::from(dir);
    if sock == "own" {
        match umltest::net::vde::client::VdeClient::connect(&dir, 0, "nobody") {
            Ok(_) => println!("UMLTEST-HELPER connected"),
            Err(e) => println!("UMLTEST-HELPER refused: {e}"),
        }
        return;
    }
    use std::os::unix::ffi::OsStrExt;
    let addr = umltest::net::vde::proto::SockAddrUn::from_path(sock.as_bytes()).expect("path");
    let mut ctl = std::os::unix::net::UnixStream::connect(dir.join("ctl")).expect("connect ctl");
    ctl.write_all(&umltest::net::vde::proto::Request::encode_v3(
        0, &addr, "nobody",
    ))
    .expect("request");
    ctl.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    match ctl.read(&mut buf) {
        Ok(0) => println!("UMLTEST-HELPER closed"),
        Ok(n) => println!("UMLTEST-HELPER reply {n}"),
        Err(e) => println!("UMLTEST-HELPER error {e}"),
    }
}

/// A switch run by root with `-m 666`: `nobody` asks for a port whose data
/// socket is root's. vde_switch connects it and delivers frames into root's
/// socket; ours refuses with a log line. `nobody`'s own socket still works.
#[test]
fn a_port_request_naming_another_users_socket_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED (not a pass): two users need root to start as");
        return;
    }
    let Some(setpriv) = util::tool("setpriv", "util-linux") else {
        return;
    };
    let tmp = util::tempdir();
    let d = tmp.path();
    chmod(d, 0o755);
    let dir = d.join("sw");
    let log = d.join("switch.log");
    let mut switch = std::process::Command::new(util::umltest_bin())
        .args(["switch", "-s", &dir.to_string_lossy(), "-m", "666"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn switch");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(dir.join("ctl")).is_err() {
        assert!(Instant::now() < deadline, "switch did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Root's private datagram socket, in a folder only root can enter.
    let private = d.join("root-only");
    std::fs::create_dir(&private).expect("mkdir");
    chmod(&private, 0o711);
    let victim_path = private.join("victim.sock");
    let victim = std::os::unix::net::UnixDatagram::bind(&victim_path).expect("bind");
    chmod(&victim_path, 0o666); // vde_switch's access() check passes for anyone
    victim.set_nonblocking(true).expect("nonblocking");
    // The test binary, where `nobody` can run it.
    let bin = d.join("tests-bin");
    std::fs::copy(std::env::current_exe().expect("exe"), &bin).expect("copy");
    chmod(&bin, 0o755);
    let as_nobody = |sock: &str| {
        let out = std::process::Command::new(&setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args([
                "--exact",
                "hostile::uml::helper_port_request_as_another_user",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("UMLTEST_HELPER_SWITCH", &dir)
            .env("UMLTEST_HELPER_SOCK", sock)
            .output()
            .expect("run helper");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = as_nobody(&victim_path.to_string_lossy());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(out.contains("UMLTEST-HELPER closed"), "{out}\n{text}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&format!(
            "client data socket {} belongs to uid 0, not to the requesting peer (uid 65534",
            victim_path.display()
        )) {
            break;
        }
        assert!(Instant::now() < deadline, "no refusal logged:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut buf = [0u8; 64];
    assert!(
        victim.recv(&mut buf).is_err(),
        "root's socket got a datagram"
    );
    // The same user's own socket is served.
    let own = as_nobody("own");
    assert!(
        own.contains("UMLTEST-HELPER connected"),
        "{own}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let _ = switch.kill();
    let _ = switch.wait();
}
