//! `net::wire` against the real tcpdump and tshark, `umltest switch` against
//! real vde_plug, vde_switch and linux.uml.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use umltest::net::wire::{tcpdump_line, ArpOp, ArpRepr, MacAddr, PcapWriter};

use crate::util;

fn mac(s: &str) -> MacAddr {
    s.parse().expect("mac")
}

/// Frames covering every rendering branch of `tcpdump_line`.
fn sample_frames() -> Vec<Vec<u8>> {
    let a = mac("86:6f:8f:8d:13:0b");
    let b = mac("fe:fd:0a:4d:00:02");
    let ip = Ipv4Addr::new(10, 77, 0, 2);
    let arp = |op, sha, spa, tha, tpa| ArpRepr {
        op,
        sha,
        spa,
        tha,
        tpa,
    };
    let mut frames = vec![
        // arping -0's padded probe, Linux's unpadded reply, a normal request with a
        // non-zero target MAC, a broadcast who-has, other operations.
        arp(ArpOp::Request, a, Ipv4Addr::UNSPECIFIED, MacAddr::ZERO, ip).to_frame(
            MacAddr::BROADCAST,
            a,
            16,
        ),
        arp(ArpOp::Reply, b, ip, a, Ipv4Addr::UNSPECIFIED).to_frame(a, b, 0),
        arp(ArpOp::Request, a, Ipv4Addr::new(10, 77, 0, 1), b, ip).to_frame(b, a, 0),
        arp(
            ArpOp::Request,
            b,
            Ipv4Addr::UNSPECIFIED,
            MacAddr::ZERO,
            Ipv4Addr::BROADCAST,
        )
        .to_frame(MacAddr::BROADCAST, b, 16),
        arp(ArpOp::Other(3), a, ip, b, ip).to_frame(b, a, 0),
        arp(ArpOp::Other(4), a, ip, b, ip).to_frame(b, a, 0),
        arp(ArpOp::Other(8), a, ip, b, ip).to_frame(b, a, 0),
        arp(ArpOp::Other(9), a, ip, b, ip).to_frame(b, a, 0),
        arp(ArpOp::Other(77), a, ip, b, ip).to_frame(b, a, 0),
    ];
    let eth = |t: u16, payload: &[u8]| {
        let mut f = Vec::new();
        f.extend_from_slice(&b.0);
        f.extend_from_slice(&a.0);
        f.extend_from_slice(&t.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    // An ARP packet for IPv6 (unknown protocol form) and truncated ARP.
    let mut weird = arp(ArpOp::Request, a, ip, b, ip).to_bytes().to_vec();
    weird[2..4].copy_from_slice(&[0x86, 0xdd]);
    frames.push(eth(0x0806, &weird));
    frames.push(eth(0x0806, &[0, 1, 8, 0, 6, 4, 0]));
    // IPv4: ICMP echo request and reply, an unknown protocol, UDP.
    let ipv4 = |proto: u8, payload: &[u8]| {
        let total = (20 + payload.len()) as u16;
        let mut p = vec![
            0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(payload);
        p
    };
    frames.push(eth(0x0800, &ipv4(1, &[8, 0, 0, 0, 0, 7, 0, 3, 1, 2, 3, 4])));
    frames.push(eth(0x0800, &ipv4(1, &[0, 0, 0, 0, 0, 7, 0, 3])));
    frames.push(eth(0x0800, &ipv4(253, b"abcd")));
    frames.push(eth(
        0x0800,
        &ipv4(17, &[0x30, 0x39, 0x30, 0x3a, 0, 12, 0, 0, 1, 2, 3, 4]),
    ));
    // IPv6 with an unknown next header; a bad version.
    let mut v6 = vec![0x60, 0, 0, 0, 0, 4, 253, 64];
    v6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(b"wxyz");
    frames.push(eth(0x86dd, &v6));
    frames.push(eth(0x86dd, &[0; 40]));
    // An unknown EtherType, a VLAN-tagged ARP request.
    frames.push(eth(0x88b5, b"hello world"));
    let mut tagged = vec![0x00, 0x05, 0x08, 0x06];
    tagged.extend_from_slice(
        &arp(ArpOp::Request, a, Ipv4Addr::UNSPECIFIED, MacAddr::ZERO, ip).to_bytes(),
    );
    frames.push(eth(0x8100, &tagged));
    frames
}

/// The first `n` [`sample_frames`], written to `frames.pcap` in a fresh folder.
fn sample_pcap(n: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<Vec<u8>>) {
    let dir = util::tempdir();
    let pcap = dir.path().join("frames.pcap");
    let mut frames = sample_frames();
    frames.truncate(n);
    write_pcap(&pcap, &frames);
    (dir, pcap, frames)
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let file = std::fs::File::create(path).expect("create pcap");
    let mut w = PcapWriter::new(std::io::BufWriter::new(file)).expect("pcap header");
    for (i, f) in frames.iter().enumerate() {
        w.write_frame(Duration::new(1000 + i as u64, 123_456_000), f)
            .expect("write frame");
    }
    w.flush().expect("flush");
}

/// tcpdump's lines without the timestamp and without hex-dump continuation lines.
fn tcpdump_lines(tcpdump: &Path, pcap: &Path, e: bool) -> Vec<String> {
    let dir = pcap.parent().expect("dir");
    let pcap_s = pcap.to_str().expect("utf-8");
    let args: Vec<&str> = if e {
        vec!["-n", "-e", "-r", pcap_s]
    } else {
        vec!["-n", "-r", pcap_s]
    };
    let run = util::run_in(dir, tcpdump, &args);
    run.expect_code(0);
    run.stdout()
        .lines()
        .filter(|l| !l.starts_with('\t'))
        .map(|l| {
            l.split_once(' ')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// `tshark -r PCAP [-Y FILTER] -T fields -E separator=, -e F...`: one line
/// per frame, the fields comma-separated.
fn tshark_fields(tshark: &Path, pcap: &Path, filter: Option<&str>, fields: &[&str]) -> util::Run {
    let mut args = vec!["-r", pcap.to_str().expect("utf-8")];
    if let Some(f) = filter {
        args.extend(["-Y", f]);
    }
    args.extend(["-T", "fields", "-E", "separator=,"]);
    for f in fields {
        args.extend(["-e", f]);
    }
    let dir = pcap.parent().expect("pcap in a folder");
    util::run_in(dir, tshark, &args)
}

#[test]
fn tcpdump_line_matches_real_tcpdump() {
    let Some(tcpdump) = util::tool("tcpdump", "tcpdump") else {
        return;
    };
    let (_dir, pcap, frames) = sample_pcap(usize::MAX);
    for e in [true, false] {
        let theirs = tcpdump_lines(&tcpdump, &pcap, e);
        let ours: Vec<String> = frames.iter().map(|f| tcpdump_line(f, e)).collect();
        assert_eq!(ours, theirs, "tcpdump -n{}", if e { " -e" } else { "" });
    }
}

#[test]
fn tshark_decodes_our_pcap_arp_fields() {
    let Some(tshark) = util::tool("tshark", "tshark") else {
        return;
    };
    let (_dir, pcap, _) = sample_pcap(2);
    let run = tshark_fields(
        &tshark,
        &pcap,
        None,
        &[
            "frame.len",
            "eth.src",
            "eth.dst",
            "arp.opcode",
            "arp.src.hw_mac",
            "arp.src.proto_ipv4",
            "arp.dst.hw_mac",
            "arp.dst.proto_ipv4",
        ],
    );
    run.expect_code(0);
    assert_eq!(
        run.stdout(),
        "58,86:6f:8f:8d:13:0b,ff:ff:ff:ff:ff:ff,1,86:6f:8f:8d:13:0b,0.0.0.0,00:00:00:00:00:00,10.77.0.2\n\
         42,fe:fd:0a:4d:00:02,86:6f:8f:8d:13:0b,2,fe:fd:0a:4d:00:02,10.77.0.2,86:6f:8f:8d:13:0b,0.0.0.0\n",
        "{}",
        run.dump()
    );
}

// ---------------------------------------------------------------------------
// Switch daemons: ours and the real vde_switch, driven over real sockets.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use umltest::net::vde::client::VdeClient;

/// Waits until `cond` holds (polling), or panics after `secs` with `what`.
fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A running switch process; killed on drop. Its stdin is kept open (both
/// vde_switch and ours exit on EOF there).
struct SwitchProc {
    child: Child,
    stderr: PathBuf,
    cmdline: String,
}

impl SwitchProc {
    /// Starts `program [pre...] -s DIR [args...]` and waits for `DIR/ctl`.
    fn spawn(program: &Path, pre: &[&str], dir: &Path, args: &[&str]) -> SwitchProc {
        let mut sw = Self::spawn_unready(program, pre, dir, args);
        let ctl = dir.join("ctl");
        // Ready = the ctl socket accepts connections (vde_switch binds before it
        // listens; ours renames a listening socket into place).
        wait_until(10, "the ctl socket", || {
            std::os::unix::net::UnixStream::connect(&ctl).is_ok() || !sw.alive()
        });
        assert!(ctl.exists(), "switch did not start\n{}", sw.dump());
        sw
    }

    /// Started, not yet known to serve.
    fn spawn_unready(program: &Path, pre: &[&str], dir: &Path, args: &[&str]) -> SwitchProc {
        let stderr = dir.with_extension("stderr");
        let mut all = pre.to_vec();
        all.extend_from_slice(&["-s", dir.to_str().expect("utf-8")]);
        all.extend_from_slice(args);
        let child = Command::new(program)
            .args(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        SwitchProc {
            child,
            stderr,
            cmdline: format!("{} {}", program.display(), all.join(" ")),
        }
    }

    /// The real vde_switch.
    fn start(program: &Path, dir: &Path, args: &[&str]) -> SwitchProc {
        Self::spawn(program, &[], dir, args)
    }

    /// `umltest switch`.
    fn ours(dir: &Path, args: &[&str]) -> SwitchProc {
        Self::spawn(&util::umltest_bin(), &["switch"], dir, args)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn dump(&self) -> String {
        format!("command: {}\n--- stderr ---\n{}", self.cmdline, self.log())
    }

    fn wait_log(&self, needle: &str) {
        wait_until(10, needle, || self.log().contains(needle));
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().expect("wait")
    }
}

impl Drop for SwitchProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn eth_frame(dst: MacAddr, src: MacAddr, ethertype: u16, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.resize(len.max(14), 0);
    f
}

/// A broadcast from a multicast source (never learned): marks the end of a step.
fn sentinel(step: usize) -> Vec<u8> {
    let mut f = eth_frame(MacAddr::BROADCAST, mac("03:00:00:00:00:99"), 0x88b5, 60);
    f[14..22].copy_from_slice(&(step as u64).to_be_bytes());
    f
}

/// Frames one client receives before the sentinel of `step`.
fn drain_until_sentinel(c: &VdeClient, step: usize) -> Vec<Vec<u8>> {
    let want = sentinel(step);
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = c
            .recv(&mut buf, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("step {step}: no sentinel: {e}"));
        if buf[..n] == want[..] {
            return got;
        }
        got.push(buf[..n].to_vec());
    }
}

enum Step {
    /// Client index sends a frame.
    Send(usize, Vec<u8>),
    /// A new client plugs in (its port becomes active).
    Join,
    /// Client index unplugs.
    Leave(usize),
}

/// Runs `steps` against the switch at `dir`; returns, per Send step, which
/// clients received the frame and with what length.
fn decisions(dir: &Path, steps: &[Step]) -> Vec<String> {
    let mut clients: Vec<Option<VdeClient>> = (0..3)
        .map(|i| Some(VdeClient::connect(dir, 0, &format!("c{i}")).expect("connect")))
        .collect();
    let mut out = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::Join => clients.push(Some(VdeClient::connect(dir, 0, "late").expect("connect"))),
            Step::Leave(i) => {
                let gone = clients[*i].take().expect("live client");
                let data = gone.switch_data.clone();
                drop(gone);
                // Both switches remove the endpoint's data socket once they saw the EOF.
                wait_until(10, "the data socket to go", || !data.exists());
            }
            Step::Send(i, frame) => {
                let sender = clients[*i].as_ref().expect("live sender");
                sender.send(frame).expect("send");
                sender.send(&sentinel(n)).expect("send sentinel");
                let mut line = format!("step {n}:");
                for (j, c) in clients.iter().enumerate() {
                    let Some(c) = c else { continue };
                    if j == *i {
                        continue;
                    }
                    for f in drain_until_sentinel(c, n) {
                        line.push_str(&format!(" c{j}<-{}", f.len()));
                    }
                }
                out.push(line);
            }
        }
    }
    out
}

fn decision_steps() -> Vec<Step> {
    let (a, b, c, d) = (
        mac("fe:fd:00:00:00:0a"),
        mac("fe:fd:00:00:00:0b"),
        mac("fe:fd:00:00:00:0c"),
        mac("fe:fd:00:00:00:0d"),
    );
    let bc = MacAddr::BROADCAST;
    let mut tagged0 = eth_frame(bc, a, 0x8100, 60);
    tagged0[14..18].copy_from_slice(&[0x00, 0x00, 0x08, 0x06]);
    let mut tagged5 = tagged0.clone();
    tagged5[15] = 5;
    vec![
        Step::Send(0, eth_frame(bc, a, 0x0806, 42)), // flood, learn a@c0
        Step::Send(1, eth_frame(a, b, 0x0806, 42)),  // unicast to c0, learn b
        Step::Send(2, eth_frame(b, c, 0x0800, 60)),  // unicast to c1
        Step::Send(0, eth_frame(d, a, 0x0800, 100)), // unknown: flood
        Step::Send(1, eth_frame(c, a, 0x0800, 60)),  // a on c1 within min persistence: stays on c0
        Step::Send(2, eth_frame(a, c, 0x0800, 60)),  // so this goes to c0
        Step::Send(0, eth_frame(a, a, 0x0800, 60)),  // destination on the input port: dropped
        Step::Send(0, eth_frame(mac("01:00:5e:00:00:01"), a, 0x0800, 60)), // multicast: flood
        Step::Send(0, eth_frame(bc, a, 0x0800, 20)), // short frame, not padded
        Step::Send(0, eth_frame(bc, a, 0x0800, 14)[..10].to_vec()), // runt: dropped
        Step::Send(0, eth_frame(bc, a, 0x0800, 1600)), // oversized: truncated to 1518
        Step::Send(0, tagged0),                      // VID 0: untagged on output
        Step::Send(0, tagged5),                      // VID 5: dropped
        Step::Join,                                  // new active port: table flushed
        Step::Send(1, eth_frame(a, b, 0x0806, 42)),  // a unknown again: flood incl. c3
        Step::Send(0, eth_frame(b, a, 0x0806, 42)),  // b relearned: unicast
        Step::Leave(3),                              // port empty again: flushed
        Step::Send(1, eth_frame(a, b, 0x0806, 42)),  // a unknown: flood
    ]
}

#[test]
fn same_forwarding_decisions_as_real_vde_switch() {
    let Some(vde_switch) = util::tool("vde_switch", "vde2") else {
        return;
    };
    let tmp = util::tempdir();
    let theirs_dir = tmp.path().join("vde");
    let ours_dir = tmp.path().join("our");
    let theirs = SwitchProc::start(&vde_switch, &theirs_dir, &[]);
    let ours = SwitchProc::ours(&ours_dir, &[]);
    let want = decisions(&theirs_dir, &decision_steps());
    let got = decisions(&ours_dir, &decision_steps());
    assert_eq!(got, want, "ours vs vde_switch\n{}", ours.dump());
    // Spot-check that the run exercised what it claims.
    assert_eq!(want[0], "step 0: c1<-42 c2<-42");
    assert_eq!(want[6], "step 6:");
    assert_eq!(want[9], "step 9:");
    assert_eq!(want[10], "step 10: c1<-1518 c2<-1518");
    assert_eq!(want[11], "step 11: c1<-56 c2<-56");
    drop(theirs);
}

#[test]
fn two_real_vde_plugs_exchange_frames_through_our_switch() {
    let Some(vde_plug) = util::tool("vde_plug", "vde2") else {
        return;
    };
    let tmp = util::tempdir();
    let dir = tmp.path().join("sw");
    let sw = SwitchProc::ours(
        &dir,
        &["-M", tmp.path().join("mgmt").to_str().expect("utf-8")],
    );
    // `vde_plug DIR` relays stdin/stdout: each frame is a 2-byte big-endian length + bytes.
    let spawn = |descr: &str| {
        Command::new(&vde_plug)
            .args(["--descr", descr, dir.to_str().expect("utf-8")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vde_plug")
    };
    let mut a = spawn("plugA");
    let mut b = spawn("plugB");
    sw.wait_log("plugA");
    sw.wait_log("plugB");
    let fa = eth_frame(MacAddr::BROADCAST, mac("fe:fd:00:00:00:01"), 0x0806, 42);
    let fb = eth_frame(
        mac("fe:fd:00:00:00:01"),
        mac("fe:fd:00:00:00:02"),
        0x0806,
        42,
    );
    let send = |c: &mut Child, f: &[u8]| {
        let stdin = c.stdin.as_mut().expect("stdin");
        stdin
            .write_all(&(f.len() as u16).to_be_bytes())
            .expect("write");
        stdin.write_all(f).expect("write");
        stdin.flush().expect("flush");
    };
    let recv = |c: &mut Child| {
        let stdout = c.stdout.as_mut().expect("stdout");
        let mut len = [0u8; 2];
        stdout.read_exact(&mut len).expect("read length");
        let mut f = vec![0u8; u16::from_be_bytes(len) as usize];
        stdout.read_exact(&mut f).expect("read frame");
        f
    };
    send(&mut a, &fa);
    assert_eq!(recv(&mut b), fa);
    send(&mut b, &fb);
    assert_eq!(recv(&mut a), fb);
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
    sw.wait_log("closed its control connection");
}

/// A management-console session (`-M SOCK`): one command per write, read to the prompt.
struct Mgmt(std::os::unix::net::UnixStream);

impl Mgmt {
    fn connect(path: &Path) -> Mgmt {
        // Ready = the socket accepts (the real vde_switch may bind it after ctl).
        let mut stream = None;
        wait_until(10, "the mgmt socket", || {
            stream = std::os::unix::net::UnixStream::connect(path).ok();
            stream.is_some()
        });
        let s = stream.expect("connected");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut m = Mgmt(s);
        let banner = m.read_to_prompt();
        assert!(banner.starts_with("VDE switch V.2.3.2\n"), "{banner}");
        m
    }
    fn read_to_prompt(&mut self) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.ends_with(b"vde$ ") && !out.ends_with(b"END OF SESSION") {
            let n = self.0.read(&mut buf).expect("read mgmt");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    fn cmd(&mut self, c: &str) -> String {
        self.0
            .write_all(format!("{c}\n").as_bytes())
            .expect("write mgmt");
        self.read_to_prompt()
    }
}

/// Sends raw bytes as a control request; true if the switch closed the connection.
fn raw_request_closed(dir: &Path, bytes: &[u8]) -> bool {
    let mut s = std::os::unix::net::UnixStream::connect(dir.join("ctl")).expect("connect ctl");
    s.write_all(bytes).expect("write request");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    matches!(s.read(&mut buf), Ok(0))
}

fn v3_request(port: u32, path: &str, family: u16, kind: u32) -> Vec<u8> {
    let mut r = 0xfeed_faceu32.to_ne_bytes().to_vec();
    r.extend_from_slice(&3u32.to_ne_bytes());
    r.extend_from_slice(&((port << 8) | kind).to_ne_bytes());
    r.extend_from_slice(&family.to_ne_bytes());
    let mut p = path.as_bytes().to_vec();
    p.resize(108, 0);
    r.extend_from_slice(&p);
    r
}

#[test]
fn bad_input_is_logged_and_the_switch_keeps_serving() {
    let tmp = util::tempdir();
    let dir = tmp.path().join("sw");
    let mut sw = SwitchProc::ours(&dir, &["-n", "4"]);
    let client_path = tmp.path().join("client.sock");
    let _client = std::os::unix::net::UnixDatagram::bind(&client_path).expect("bind");
    let cp = client_path.to_str().expect("utf-8");
    let mut version = v3_request(0, cp, 1, 0);
    version[4] = 2;
    let mut version7 = v3_request(0, cp, 1, 0);
    version7[4] = 7;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "3 bytes",
            vec![0xce, 0xfa, 0xed],
            "short control request: 3 bytes",
        ),
        ("wrong magic", vec![0u8; 130], "V0 request not supported"),
        ("version 2", version, "Request for a version 2 port"),
        ("version 7", version7, "Request for a version 7 port"),
        (
            "truncated v3",
            v3_request(0, cp, 1, 0)[..100].to_vec(),
            "short version 3 control request: 100 bytes, the header needs 122",
        ),
        ("bad type", v3_request(0, cp, 1, 5), "Bad request type : 5"),
        (
            "bad family",
            v3_request(0, cp, 2, 0),
            "address family 2 is not AF_UNIX",
        ),
        (
            "missing client socket",
            v3_request(0, "/nonexistent/sock", 1, 0),
            "client data socket /nonexistent/sock not accessible",
        ),
        (
            "port out of range",
            v3_request(9, cp, 1, 0),
            "port request 9 refused: port 9 out of range",
        ),
    ];
    for (what, bytes, log) in &cases {
        assert!(
            raw_request_closed(&dir, bytes),
            "{what}: connection not closed\n{}",
            sw.dump()
        );
        sw.wait_log(log);
    }
    // Still serving: two clients exchange frames.
    let c1 = VdeClient::connect(&dir, 0, "c1").expect("c1");
    let c2 = VdeClient::connect(&dir, 0, "c2").expect("c2");
    let c3 = VdeClient::connect(&dir, 0, "c3").expect("c3");
    let f = eth_frame(MacAddr::BROADCAST, mac("fe:fd:00:00:00:01"), 0x0806, 42);
    let mut buf = [0u8; 2048];
    // Runt and oversized frames: one log line each, the switch goes on.
    c1.send(&f[..9]).expect("send runt");
    c1.send(&eth_frame(
        MacAddr::BROADCAST,
        mac("fe:fd:00:00:00:01"),
        0x0800,
        3000,
    ))
    .expect("send big");
    sw.wait_log("dropped a 9-byte frame, shorter than an Ethernet header");
    sw.wait_log("3000-byte frame truncated to 1518 bytes");
    assert_eq!(
        c2.recv(&mut buf, Duration::from_secs(5)).expect("recv"),
        1518
    );
    // A datagram from a stranger never reaches the switch (its data sockets are
    // connected to their clients): the sender gets an error.
    let stranger = std::os::unix::net::UnixDatagram::unbound().expect("socket");
    assert!(stranger.send_to(&f, &c1.switch_data).is_err());
    // A client whose data socket vanished while its control connection stays:
    // one log line, the others still get frames.
    let c3_port = c3.port().expect("port");
    drop(c3.data);
    c1.send(&f).expect("send");
    assert_eq!(c2.recv(&mut buf, Duration::from_secs(5)).expect("recv"), 42);
    sw.wait_log(&format!("send_sockaddr port {c3_port}:"));
    c2.send(&f).expect("send");
    assert_eq!(c1.recv(&mut buf, Duration::from_secs(5)).expect("recv"), 42);
    drop(c3.ctl);
    sw.wait_log(&format!("on port {c3_port} closed its control connection"));
    assert!(sw.alive(), "{}", sw.dump());
    assert!(!sw.log().contains("panicked"), "{}", sw.dump());
    assert!(sw.terminate().success(), "{}", sw.dump());
}

#[test]
fn a_client_that_never_reads_does_not_stall_the_others() {
    let tmp = util::tempdir();
    let dir = tmp.path().join("sw");
    let sw = SwitchProc::ours(&dir, &[]);
    let a = VdeClient::connect(&dir, 0, "sender").expect("a");
    let b = VdeClient::connect(&dir, 0, "reader").expect("b");
    let _stuck = VdeClient::connect(&dir, 0, "never reads").expect("stuck");
    // Broadcasts in lock step with the reader: the stuck client's queue fills
    // after a few frames. Waiting for it on every frame (10 ms each) would
    // take 30 s; the switch waits once, then drops to it for a second, so the
    // reader gets every frame well within the bound.
    let started = Instant::now();
    let mut buf = [0u8; 2048];
    for i in 0..3000u32 {
        let mut f = eth_frame(MacAddr::BROADCAST, mac("fe:fd:00:00:00:0a"), 0x88b5, 60);
        f[14..18].copy_from_slice(&i.to_be_bytes());
        a.send(&f).expect("send");
        let n = b
            .recv(&mut buf, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("frame {i}: {e}\n{}", sw.dump()));
        assert_eq!(buf[..n], f[..], "frame {i}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "3000 frames took {:?}: the stuck client stalled the switch\n{}",
        started.elapsed(),
        sw.dump()
    );
}

/// A group to hand the sockets to: `daemon` (or `nogroup`) as root, else our
/// own primary group (the only kind a non-root user may chown to for sure).
fn socket_group() -> (String, u32) {
    if nix::unistd::geteuid().is_root() {
        for name in ["daemon", "nogroup", "bin"] {
            if let Ok(Some(g)) = nix::unistd::Group::from_name(name) {
                if g.gid.as_raw() != 0 {
                    return (g.name, g.gid.as_raw());
                }
            }
        }
        panic!("no group daemon, nogroup or bin on this host");
    }
    let gid = nix::unistd::getegid();
    let g = nix::unistd::Group::from_gid(gid)
        .ok()
        .flatten()
        .expect("our primary group has a name");
    (g.name, gid.as_raw())
}

/// (name, group id, mode bits) of the socket dir, its ctl socket, the data
/// socket of one plugged-in client, and the management socket `DIR.mgmt` if any.
fn group_and_modes(sw: &SwitchProc, dir: &Path) -> Vec<(String, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let c = VdeClient::connect(dir, 0, "g").unwrap_or_else(|e| panic!("{e}\n{}", sw.dump()));
    let data_name = c.switch_data.file_name().expect("name").to_string_lossy();
    // The data socket's name ends in the switch's fd number, which differs.
    let data_name = data_name.split('.').next().expect("port").to_string() + ".*";
    let mgmt = dir.with_extension("mgmt");
    [
        (".", dir.to_path_buf()),
        ("ctl", dir.join("ctl")),
        (&data_name, c.switch_data.clone()),
        ("mgmt", mgmt.clone()),
    ]
    .into_iter()
    .filter(|(name, _)| *name != "mgmt" || mgmt.exists())
    .map(|(name, p)| {
        let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        (name.to_string(), m.gid(), m.mode() & 0o7777)
    })
    .collect()
}

#[test]
fn group_and_modes_of_the_sockets_like_vde_switch() {
    let (group, gid) = socket_group();
    let our_gid = nix::unistd::getegid().as_raw();
    let root = nix::unistd::geteuid().is_root();
    let tmp = util::tempdir();
    let vde_switch = util::tool("vde_switch", "vde2");
    // As root the data socket goes to the client socket's owner with only the
    // user bits of MODE (datasock.c); otherwise it gets MODE.
    let user_bits = |m: u32| if root { m & 0o700 } else { m };
    type Case<'a> = (Vec<String>, Vec<(&'a str, u32, u32)>);
    let cases: Vec<Case> = vec![
        (
            vec!["-g".into(), group.clone(), "-m".into(), "660".into()],
            vec![
                (".", gid, 0o2770),
                ("ctl", gid, 0o660),
                ("001.*", gid, user_bits(0o660)),
            ],
        ),
        (
            vec!["--dirmode".into(), "2750".into()],
            vec![
                (".", our_gid, 0o2750),
                ("ctl", our_gid, 0o640),
                ("001.*", our_gid, user_bits(0o640)),
            ],
        ),
        (
            vec!["-m".into(), "640".into(), "--dirmode".into(), "2711".into()],
            vec![
                (".", our_gid, 0o2711),
                ("ctl", our_gid, 0o640),
                ("001.*", our_gid, user_bits(0o640)),
            ],
        ),
        (
            vec![
                "--mgmtgroup".into(),
                group.clone(),
                "--mgmtmode".into(),
                "660".into(),
            ],
            vec![
                (".", our_gid, 0o2700),
                ("ctl", our_gid, 0o600),
                ("001.*", our_gid, user_bits(0o600)),
                ("mgmt", gid, 0o660),
            ],
        ),
    ];
    for (n, (args, want)) in cases.iter().enumerate() {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dir = tmp.path().join(format!("our{n}"));
        let mgmt = dir.with_extension("mgmt");
        if args.contains(&"--mgmtgroup") {
            args.extend(["-M", mgmt.to_str().expect("utf-8")]);
        }
        let sw = SwitchProc::ours(&dir, &args);
        let got = group_and_modes(&sw, &dir);
        let want: Vec<(String, u32, u32)> = want
            .iter()
            .map(|&(n, g, m)| (n.to_string(), g, m))
            .collect();
        assert_eq!(got, want, "{args:?}\n{}", sw.dump());
        let Some(vde_switch) = &vde_switch else {
            continue;
        };
        let dir = tmp.path().join(format!("vde{n}"));
        let mgmt = dir.with_extension("mgmt");
        if let Some(m) = args.iter_mut().find(|a| a.ends_with(".mgmt")) {
            *m = mgmt.to_str().expect("utf-8");
        }
        let theirs = SwitchProc::start(vde_switch, &dir, &args);
        assert_eq!(
            group_and_modes(&theirs, &dir),
            got,
            "vde_switch vs ours, {args:?}"
        );
    }
    // An unknown group: a clear error, exit code 1, nothing created.
    for opt in ["-g", "--mgmtgroup"] {
        let args = ["-s", "bad", "-M", "bad.mgmt", opt, "no-such-group-umltest"];
        let mut runs = vec![];
        let run = util::umltest(tmp.path(), &[&["switch"][..], &args[..]].concat());
        runs.push((run.code(), run.stderr()));
        if let Some(vde_switch) = &vde_switch {
            let real = Command::new(vde_switch)
                .args(args)
                .current_dir(tmp.path())
                .stdin(Stdio::null())
                .output()
                .expect("run vde_switch");
            runs.push((
                real.status.code(),
                String::from_utf8_lossy(&real.stderr).into_owned(),
            ));
        }
        for (code, stderr) in runs {
            assert_eq!(code, Some(1), "{opt}: {stderr}");
            assert!(
                stderr.contains("No such group 'no-such-group-umltest'"),
                "{opt}: {stderr}"
            );
            assert!(!tmp.path().join("bad").exists() && !tmp.path().join("bad.mgmt").exists());
        }
    }
}

/// Replaces what differs between two switches by nature: the switch MAC
/// (random `00:ff:...`) and ages/uptimes in seconds.
fn normalize_console(s: &str) -> String {
    s.lines()
        .map(|l| {
            let mut words: Vec<String> = l.split(' ').map(str::to_string).collect();
            for i in 0..words.len() {
                if words[i].starts_with("00:ff:") && words[i].len() == 17 {
                    words[i] = "00:ff:MAC".into();
                } else if words[i].starts_with("80:00:00:ff:") {
                    words[i] = "80:00:00:ff:MAC".into();
                } else if i > 0 && (words[i - 1] == "age" || words[i - 1] == "uptime") {
                    words[i] = "N".into();
                }
            }
            words.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `help` and the VLAN and FSTP commands of the default, VLAN-less switch. Every line is
/// answered like vde_switch 2.3.2 does; state-changing requests it accepts
/// and we do not implement come last and are compared separately.
const VLAN_FSTP_COMMANDS: &[&str] = &[
    "help",
    "help vlan",
    "vlan/print",
    "vlan/allprint",
    "vlan/print 0",
    "vlan/print 5",
    "vlan/allprint 5",
    "vlan/print 4095",
    "vlan/print abc",
    "fstp/print",
    "fstp/print 0",
    "fstp/print 5",
    "fstp/print 4095",
    "fstp/setfstp 0",
    "vlan/create",
    "vlan/create 0",
    "vlan/create 4095",
    "vlan/create abc",
    "vlan/remove 7",
    "vlan/remove 4095",
    "vlan/remove 0",
    "vlan/addport 7 1",
    "vlan/addport 0 40",
    "vlan/addport 4095 1",
    "vlan/delport 7 1",
    "vlan/delport 0 1",
    "vlan/delport 0 2",
    "vlan/print 1",
    "vlan/delport 0 40",
    "fstp/setedge 1 1",
    "fstp/setedge 5 1 1",
    "fstp/setedge 0 40 1",
    "fstp/bonus 1 1",
    "fstp/bonus 5 1 1",
    "fstp/bonus 0 40 1",
    "port/create 3",
    "vlan/allprint",
    "fstp/print",
    "port/setvlan 1 5",
];

/// Accepted by vde_switch, `1038 Function not implemented` here.
const VLAN_FSTP_UNSUPPORTED: &[&str] = &[
    "vlan/create 5",
    "vlan/addport 0 1",
    "fstp/setedge 0 1 1",
    "fstp/bonus 0 1 5",
];

#[test]
fn vlan_and_fstp_commands_answer_like_vde_switch() {
    let tmp = util::tempdir();
    let run = |sw: &SwitchProc, dir: &Path, mgmt: &Path| -> (Vec<String>, Vec<String>) {
        let _c = VdeClient::connect(dir, 0, "v").unwrap_or_else(|e| panic!("{e}\n{}", sw.dump()));
        let mut m = Mgmt::connect(mgmt);
        let same = VLAN_FSTP_COMMANDS
            .iter()
            .map(|c| format!("vde$ {c}\n{}", normalize_console(&m.cmd(c))))
            .collect();
        let differ = VLAN_FSTP_UNSUPPORTED
            .iter()
            .map(|c| m.cmd(c).trim_end_matches("\nvde$ ").to_string())
            .collect();
        (same, differ)
    };
    let dir = tmp.path().join("our");
    let mgmt = tmp.path().join("our.mgmt");
    let sw = SwitchProc::ours(&dir, &["-M", mgmt.to_str().expect("utf-8")]);
    let (ours, ours_unsupported) = run(&sw, &dir, &mgmt);
    assert!(ours_unsupported
        .iter()
        .all(|o| o == "1038 Function not implemented\n"));
    // Spot checks of what the real switch answers (recorded from 2.3.2).
    let text = ours.join("\n");
    for want in [
        "vde$ vlan/print\n0000 DATA END WITH '.'\nVLAN 0000\n -- Port 0001 tagged=0 active=1 status=Forwarding\n.\n1000 Success",
        "vde$ fstp/print\n0000 DATA END WITH '.'\nFST DATA VLAN 0000 ROOTSWITCH FSTP IS DISABLED\n ++ root 80:00:00:ff:MAC\n ++ designated ff:ff:ff:ff:ff:ff:ff:ff\n ++ rootport 0000 cost 0 age N bonusport 0000 bonuscost 0\n -- Port 0001 tagged=0 portcost=20000000 role=Designated\n.\n1000 Success",
        "vde$ vlan/delport 0 1\n1098 Address already in use",
        "vde$ vlan/allprint\n0000 DATA END WITH '.'\nVLAN 0000\n -- Port 0001 tagged=0 active=1 status=Forwarding\n -- Port 0003 tagged=0 active=0 status=Learning\n.\n1000 Success",
    ] {
        assert!(text.contains(want), "missing:\n{want}\nin:\n{text}");
    }
    let Some(vde_switch) = util::tool("vde_switch", "vde2") else {
        return;
    };
    let dir = tmp.path().join("vde");
    let mgmt = tmp.path().join("vde.mgmt");
    let theirs = SwitchProc::start(&vde_switch, &dir, &["-M", mgmt.to_str().expect("utf-8")]);
    let (want, want_unsupported) = run(&theirs, &dir, &mgmt);
    for (w, o) in want.iter().zip(&ours) {
        assert_eq!(o, w, "ours vs vde_switch");
    }
    assert_eq!(ours.len(), want.len());
    assert!(
        want_unsupported
            .iter()
            .all(|o| o.ends_with("1000 Success\n")),
        "{want_unsupported:?}"
    );
}

#[test]
fn stale_dir_reused_only_when_nobody_listens() {
    let tmp = util::tempdir();
    let dir = tmp.path().join("sw");
    std::fs::create_dir(&dir).expect("mkdir");
    // A crashed switch: ctl socket file with no listener, a data socket file.
    drop(std::os::unix::net::UnixListener::bind(dir.join("ctl")).expect("bind"));
    std::fs::write(dir.join("001.7"), b"").expect("stale data");
    let first = SwitchProc::ours(&dir, &[]);
    first.wait_log("reusing stale socket dir");
    assert!(!dir.join("001.7").exists());
    // A second switch on a live dir refuses and leaves the first alone.
    let run = util::umltest(tmp.path(), &["switch", "-s", dir.to_str().expect("utf-8")]);
    run.expect_code(1);
    assert!(
        run.stderr().contains("ctl': Address already in use"),
        "{}",
        run.dump()
    );
    let c1 = VdeClient::connect(&dir, 0, "c1").expect("first still serves");
    assert_eq!(c1.port(), Some(1));
}

#[test]
fn foreign_socket_dir_is_refused() {
    let tmp = util::tempdir();
    let dir = tmp.path().join("sw");
    let foreign = if nix::unistd::geteuid().is_root() {
        std::fs::create_dir(&dir).expect("mkdir");
        nix::unistd::chown(&dir, Some(4242.into()), None).expect("chown");
        dir.clone()
    } else {
        PathBuf::from("/") // owned by root, not by us
    };
    let run = util::umltest(
        tmp.path(),
        &["switch", "-s", foreign.to_str().expect("utf-8")],
    );
    run.expect_code(1);
    assert!(
        run.stderr()
            .contains("refusing to take over another user's switch directory"),
        "{}",
        run.dump()
    );
    assert!(!foreign.join("ctl").exists());
}

/// `ctl` appears last, so a start-up that fails after the sockets are bound
/// (here: the capture file cannot be created) leaves no socket behind.
#[test]
fn a_failed_start_leaves_no_sockets() {
    let tmp = util::tempdir();
    let dir = tmp.path().join("sw");
    let run = util::umltest(
        tmp.path(),
        &[
            "switch",
            "-s",
            "sw",
            "-M",
            "mgmt",
            "--pcap",
            "no/such/dir/x.pcap",
        ],
    );
    run.expect_code(1);
    assert!(
        run.stderr().contains("cannot create pcap file"),
        "{}",
        run.dump()
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the socket dir: {left:?}");
    assert!(!tmp.path().join("mgmt").exists(), "mgmt socket left behind");
}

#[test]
fn shutdown_paths_remove_the_sockets() {
    let tmp = util::tempdir();
    // SIGTERM.
    let d1 = tmp.path().join("a");
    let mut sw = SwitchProc::ours(&d1, &[]);
    let _c = VdeClient::connect(&d1, 0, "c").expect("connect");
    assert!(sw.terminate().success(), "{}", sw.dump());
    assert!(!d1.exists(), "{}", sw.dump());
    // `shutdown` on the management socket.
    let d2 = tmp.path().join("b");
    let mgmt = tmp.path().join("b.mgmt");
    let mut sw = SwitchProc::ours(&d2, &["-M", mgmt.to_str().expect("utf-8")]);
    let mut m = Mgmt::connect(&mgmt);
    assert_eq!(m.cmd("shutdown"), "9999 END OF SESSION");
    assert!(sw.child.wait().expect("wait").success());
    assert!(!d2.exists() && !mgmt.exists());
    sw.wait_log("Shutdown from mgmt command");
    // EOF on stdin (vde_switch's console behaviour).
    let d3 = tmp.path().join("c");
    let mut sw = SwitchProc::ours(&d3, &[]);
    drop(sw.child.stdin.take());
    assert!(sw.child.wait().expect("wait").success());
    assert!(!d3.exists());
    sw.wait_log("EOF on stdin, cleaning up and exiting");
    // -d -p: a daemon with a pid file.
    let d4 = tmp.path().join("d");
    let pidfile = tmp.path().join("d.pid");
    let run = util::umltest(tmp.path(), &["switch", "-d", "-p", "d.pid", "-s", "d"]);
    run.expect_code(0);
    wait_until(10, "the pid file", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid number");
    assert!(d4.join("ctl").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    wait_until(10, "the daemon to clean up", || {
        !d4.exists() && !pidfile.exists()
    });
}

#[test]
fn rc_file_modes_and_console() {
    let tmp = util::tempdir();
    let dir = tmp.path().join("sw");
    let rc = tmp.path().join("rc");
    std::fs::write(
        &rc,
        "# comment\nport/setnumports 4\n\nhash/setexpire 50\n  port/create 2\nbogus line\n",
    )
    .expect("rc");
    let mgmt = tmp.path().join("mgmt");
    let sw = SwitchProc::ours(
        &dir,
        &[
            "-f",
            rc.to_str().expect("utf-8"),
            "-m",
            "660",
            "-M",
            mgmt.to_str().expect("utf-8"),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o2770);
    assert_eq!(mode(&dir.join("ctl")), 0o660);
    // Port 2 is not allocatable: automatic requests get 1 and 3, then none.
    let c1 = VdeClient::connect(&dir, 0, "one").expect("c1");
    let c3 = VdeClient::connect(&dir, 0, "three").expect("c3");
    assert_eq!((c1.port(), c3.port()), (Some(1), Some(3)));
    assert!(VdeClient::connect(&dir, 0, "none").is_err());
    sw.wait_log("port request 0 refused: no free port");
    let c2 = VdeClient::connect(&dir, 2, "two").expect("explicit port 2");
    assert_eq!(c2.port(), Some(2));
    let mut m = Mgmt::connect(&mgmt);
    assert!(m.cmd("port/showinfo").contains("Numports=4\nHUB=false\n"));
    assert!(m.cmd("hash/showinfo").contains("GC expire 50 secs\n"));
    let ports = m.cmd("port/print 3");
    assert!(
        ports.contains("Port 0003 untagged_vlan=0000 ACTIVE - Unnamed Allocatable\n"),
        "{ports}"
    );
    assert!(ports.contains(" module unix prog   : three\n"), "{ports}");
    // Traffic shows up in the counters and the MAC table.
    c1.send(&eth_frame(
        MacAddr::BROADCAST,
        mac("fe:fd:00:00:00:01"),
        0x0806,
        42,
    ))
    .expect("send");
    let mut buf = [0u8; 2048];
    assert_eq!(c3.recv(&mut buf, Duration::from_secs(5)).expect("recv"), 42);
    let p1 = m.cmd("port/print 1");
    assert!(
        p1.contains(" IN:  pkts          1          bytes                   42\n"),
        "{p1}"
    );
    let hash = m.cmd("hash/print");
    assert!(
        hash.contains("Addr: fe:fd:00:00:00:01 VLAN 0000 to port: 001  age 0 secs\n"),
        "{hash}"
    );
    // epclose closes the endpoint's sockets too.
    let id = p1.split("endpoint ID ").nth(1).expect("endpoint id")[..4].to_string();
    assert_eq!(
        m.cmd(&format!("port/epclose 1 {id}")),
        "1000 Success\n\nvde$ "
    );
    wait_until(10, "the endpoint's data socket to go", || {
        !c1.switch_data.exists()
    });
    assert_eq!(m.cmd("logout"), "9999 END OF SESSION");
}

#[test]
fn daemon_pcap_and_trace_show_arp_exchange() {
    let Some(tshark) = util::tool("tshark", "tshark") else {
        return;
    };
    let tmp = util::tempdir();
    let dir = tmp.path().join("sw");
    let pcap = tmp.path().join("sw.pcap");
    let trace = tmp.path().join("sw.trace");
    let mut sw = SwitchProc::ours(
        &dir,
        &[
            "--pcap",
            pcap.to_str().expect("utf-8"),
            "--trace",
            trace.to_str().expect("utf-8"),
        ],
    );
    let (ma, mb) = (mac("fe:fd:0a:4d:00:01"), mac("fe:fd:0a:4d:00:02"));
    let ip = Ipv4Addr::new(10, 77, 0, 2);
    let c1 = VdeClient::connect(&dir, 0, "h1").expect("c1");
    let c2 = VdeClient::connect(&dir, 0, "h2").expect("c2");
    let req = ArpRepr {
        op: ArpOp::Request,
        sha: ma,
        spa: Ipv4Addr::UNSPECIFIED,
        tha: MacAddr::ZERO,
        tpa: ip,
    }
    .to_frame(MacAddr::BROADCAST, ma, 16);
    let rep = ArpRepr {
        op: ArpOp::Reply,
        sha: mb,
        spa: ip,
        tha: ma,
        tpa: Ipv4Addr::UNSPECIFIED,
    }
    .to_frame(ma, mb, 0);
    let mut buf = [0u8; 2048];
    c1.send(&req).expect("send");
    assert_eq!(c2.recv(&mut buf, Duration::from_secs(5)).expect("recv"), 58);
    c2.send(&rep).expect("send");
    assert_eq!(c1.recv(&mut buf, Duration::from_secs(5)).expect("recv"), 42);
    assert!(sw.terminate().success());
    let lines: Vec<String> = std::fs::read_to_string(&trace)
        .expect("trace")
        .lines()
        .map(|l| {
            // Drop the wall-clock-derived time field.
            let mut w = l.splitn(3, ' ');
            format!("{} {}", w.next().unwrap_or(""), w.nth(1).unwrap_or(""))
        })
        .collect();
    assert_eq!(
        lines,
        [
            "1 port 1 -> 2: fe:fd:0a:4d:00:01 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 58: Request who-has 10.77.0.2 tell 0.0.0.0, length 44",
            "2 port 2 -> 1: fe:fd:0a:4d:00:02 > fe:fd:0a:4d:00:01, ethertype ARP (0x0806), length 42: Reply 10.77.0.2 is-at fe:fd:0a:4d:00:02, length 28",
        ]
    );
    let run = tshark_fields(
        &tshark,
        &pcap,
        None,
        &[
            "eth.src",
            "eth.dst",
            "arp.opcode",
            "arp.src.hw_mac",
            "arp.dst.hw_mac",
        ],
    );
    run.expect_code(0);
    assert_eq!(
        run.stdout(),
        "fe:fd:0a:4d:00:01,ff:ff:ff:ff:ff:ff,1,fe:fd:0a:4d:00:01,00:00:00:00:00:00\n\
         fe:fd:0a:4d:00:02,fe:fd:0a:4d:00:01,2,fe:fd:0a:4d:00:02,fe:fd:0a:4d:00:01\n",
        "{}",
        run.dump()
    );
}

// ---------------------------------------------------------------------------
// Real linux.uml guests on our switch.

use umltest::uml::guest::{boot, standard_args, BootOutput, RootFs};

/// The answering guest (`role=responder`): 10.77.0.2, then it waits until the prober says it is done (a request from 10.77.0.9
/// creates a neighbour entry) and powers off.
const RESPONDER: &str = "
if [ \"$(cat /proc/cmdline | grep -c role=responder)\" = 1 ]; then
  ip addr add 10.77.0.2/24 dev eth0
  ip link set eth0 up
  echo BEGIN responder; cat /sys/class/net/eth0/address; echo END responder
  i=0
  while ! ip neigh | grep -q 10.77.0.9 && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
else
  ip addr add 10.77.0.1/24 dev eth0
  ip link set eth0 up
  i=0
  while ! arping -q -f -c 1 -w 1 -I eth0 10.77.0.2 && [ $i -lt 60 ]; do i=$((i+1)); done
  echo BEGIN arping; arping -c 3 -I eth0 10.77.0.2; echo \"exit $?\"; echo END arping
  echo BEGIN prober; cat /sys/class/net/eth0/address; echo END prober
  ip addr add 10.77.0.9/24 dev eth0
  arping -q -c 2 -w 2 -s 10.77.0.9 -I eth0 10.77.0.2
fi
";

/// Boots a responder and a prober in parallel; `eth0` gives each one's NIC spec.
fn arping_lab(
    tools: &umltest::uml::guest::GuestTools,
    dir: &Path,
    responder_eth0: &str,
    prober_eth0: &str,
) -> (BootOutput, BootOutput) {
    RootFs::with_script(RESPONDER)
        .build(tools, &dir.join("root.ext4"))
        .expect("build root image");
    let args = |eth0: &str, role: &str| {
        let mut a = standard_args("root.ext4");
        a.push(format!("eth0={eth0}"));
        a.push(format!("role={role}"));
        a
    };
    let responder_args = args(responder_eth0, "responder");
    let prober_args = args(prober_eth0, "prober");
    std::thread::scope(|s| {
        let r = s.spawn(|| {
            boot(tools, dir, &responder_args, Duration::from_secs(120)).expect("boot responder")
        });
        let p = s.spawn(|| {
            boot(tools, dir, &prober_args, Duration::from_secs(120)).expect("boot prober")
        });
        (
            r.join().expect("responder thread"),
            p.join().expect("prober thread"),
        )
    })
}

fn check_arping(prober: &BootOutput, responder: &BootOutput, sw: &SwitchProc) {
    let report = || {
        format!(
            "--- prober ---\n{}\n--- responder ---\n{}\n--- switch ---\n{}",
            prober.dump(),
            responder.dump(),
            sw.dump()
        )
    };
    assert!(!prober.timed_out && !responder.timed_out, "{}", report());
    let arping = prober
        .section("arping")
        .unwrap_or_else(|| panic!("no arping section\n{}", report()));
    assert!(
        arping.contains("Sent 3 probe(s)") && arping.contains("Received 3 response(s)"),
        "{}",
        report()
    );
    assert!(
        arping.contains("Unicast reply from 10.77.0.2 [fe:fd:0a:4d:00:02]"),
        "{}",
        report()
    );
    assert!(arping.trim_end().ends_with("exit 0"), "{}", report());
}

#[test]
fn two_uml_guests_arping_through_our_switch_and_pcap_shows_it() {
    let (Some(tools), Some(tshark), Some(_)) = (
        util::guest_tools(),
        util::tool("tshark", "tshark"),
        util::tool("vde_plug", "vde2"),
    ) else {
        return;
    };
    let tmp = util::tempdir();
    let dir = tmp.path();
    let pcap = dir.join("sw.pcap");
    let mut sw = SwitchProc::ours(&dir.join("sw"), &["--pcap", pcap.to_str().expect("utf-8")]);
    let (responder, prober) = arping_lab(
        &tools,
        dir,
        "vde,sw,fe:fd:0a:4d:00:02",
        "vde,sw,fe:fd:0a:4d:00:01,5",
    );
    check_arping(&prober, &responder, &sw);
    assert!(
        sw.log()
            .contains("on port 5 (v3 request): UML vde_transport user="),
        "{}",
        sw.dump()
    );
    assert!(sw.terminate().success());
    let run = tshark_fields(
        &tshark,
        &pcap,
        Some("arp.dst.proto_ipv4 == 10.77.0.2 || arp.src.proto_ipv4 == 10.77.0.2"),
        &[
            "frame.len",
            "eth.src",
            "eth.dst",
            "arp.opcode",
            "arp.src.hw_mac",
            "arp.src.proto_ipv4",
            "arp.dst.hw_mac",
        ],
    );
    run.expect_code(0);
    let lines: Vec<&str> = run
        .stdout()
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .map(String::as_str)
        .collect();
    // busybox arping: the first request is broadcast (target MAC ff:..), later ones
    // unicast to the learned MAC (target MAC = it); Linux replies are 42 bytes.
    let req_b =
        "42,fe:fd:0a:4d:00:01,ff:ff:ff:ff:ff:ff,1,fe:fd:0a:4d:00:01,10.77.0.1,ff:ff:ff:ff:ff:ff";
    let req_u =
        "42,fe:fd:0a:4d:00:01,fe:fd:0a:4d:00:02,1,fe:fd:0a:4d:00:01,10.77.0.1,fe:fd:0a:4d:00:02";
    let reply =
        "42,fe:fd:0a:4d:00:02,fe:fd:0a:4d:00:01,2,fe:fd:0a:4d:00:02,10.77.0.2,fe:fd:0a:4d:00:01";
    assert!(lines.contains(&req_b), "{}", run.dump());
    assert!(
        lines.iter().filter(|l| **l == req_u).count() >= 2,
        "{}",
        run.dump()
    );
    assert!(
        lines.iter().filter(|l| **l == reply).count() >= 3,
        "{}",
        run.dump()
    );
}

#[test]
fn uml_daemon_transport_guest_talks_to_a_vde_guest() {
    let (Some(tools), Some(_)) = (util::guest_tools(), util::tool("vde_plug", "vde2")) else {
        return;
    };
    let tmp = util::tempdir();
    let dir = tmp.path();
    let sw = SwitchProc::ours(&dir.join("sw"), &[]);
    let (responder, prober) = arping_lab(
        &tools,
        dir,
        "vde,sw,fe:fd:0a:4d:00:02",
        "daemon,fe:fd:0a:4d:00:01,unix,sw/ctl",
    );
    check_arping(&prober, &responder, &sw);
    // The daemon transport binds an abstract socket and sends the 124-byte request.
    assert!(
        sw.log().contains("(v3 request, abstract client socket)"),
        "{}",
        sw.dump()
    );
}

/// Regression: SIGTERM used to be blocked only once the serving loop started,
/// so a SIGTERM during start-up killed the switch with the default action and
/// left its socket dir behind. A long rc file (run once the sockets are bound,
/// before `ctl` is published and the loop starts) holds that window open; the
/// bound, not yet published ctl socket (`.ctl-PID`) marks it.
#[test]
fn sigterm_during_start_up_still_cleans_up() {
    let tmp = util::tempdir();
    let rc = tmp.path().join("rc");
    std::fs::write(&rc, "hash/setexpire 50\n".repeat(20_000)).expect("rc");
    let dir = tmp.path().join("sw");
    let mut sw = SwitchProc::spawn_unready(
        &util::umltest_bin(),
        &["switch"],
        &dir,
        &["-f", rc.to_str().expect("utf-8")],
    );
    wait_until(10, "the switch to bind its sockets", || {
        let bound = std::fs::read_dir(&dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".ctl-"))
        });
        bound || dir.join("ctl").exists() || !sw.alive()
    });
    let status = sw.terminate();
    assert!(status.success(), "{status:?}\n{}", sw.dump());
    assert!(!dir.exists(), "socket dir left behind\n{}", sw.dump());
}
