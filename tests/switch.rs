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
