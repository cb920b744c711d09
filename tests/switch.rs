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

#[test]
fn tcpdump_line_matches_real_tcpdump() {
    let Some(tcpdump) = util::tool("tcpdump", "tcpdump") else {
        return;
    };
    let dir = util::tempdir();
    let pcap = dir.path().join("frames.pcap");
    let frames = sample_frames();
    write_pcap(&pcap, &frames);
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
    let dir = util::tempdir();
    let pcap = dir.path().join("arp.pcap");
    let frames = sample_frames();
    write_pcap(&pcap, &frames[..2]);
    let run = util::run_in(
        dir.path(),
        &tshark,
        &[
            "-r",
            pcap.to_str().expect("utf-8"),
            "-T",
            "fields",
            "-E",
            "separator=,",
            "-e",
            "frame.len",
            "-e",
            "eth.src",
            "-e",
            "eth.dst",
            "-e",
            "arp.opcode",
            "-e",
            "arp.src.hw_mac",
            "-e",
            "arp.src.proto_ipv4",
            "-e",
            "arp.dst.hw_mac",
            "-e",
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
    dir: PathBuf,
    stderr: PathBuf,
    cmdline: String,
}

impl SwitchProc {
    /// Starts `program [pre...] -s DIR [args...]` and waits for `DIR/ctl`.
    fn spawn(program: &Path, pre: &[&str], dir: &Path, args: &[&str]) -> SwitchProc {
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
        let mut sw = SwitchProc {
            child,
            dir: dir.to_path_buf(),
            stderr,
            cmdline: format!("{} {}", program.display(), all.join(" ")),
        };
        let ctl = dir.join("ctl");
        wait_until(10, "the ctl socket", || ctl.exists() || !sw.alive());
        assert!(ctl.exists(), "switch did not start\n{}", sw.dump());
        sw
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
