//! `umltest bench switch`: drives the real vde_switch and `umltest switch`
//! with the same ctl-protocol client ([`VdeClient`]), alternating runs, and
//! reports frames/s, loss and ratios.
//!
//! One run: start the switch in a fresh directory, plug in `ports` clients,
//! let the switch learn every MAC (one broadcast each), then pair the clients
//! (0→1, 2→3, …) and have every sender blast unicast frames of one size with
//! `sendmmsg` for a fixed time while the receivers count with `recvmmsg`.
//! Senders block when the switch's socket queue is full (unix datagram
//! back-pressure), so loss means frames the switch dropped on output.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::VdeClient;
use crate::net::wire::MacAddr;

/// Which switch a run measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contender {
    /// Label in the report (`vde_switch`, `umltest`, `umltest --pcap`).
    pub label: String,
    /// Program and arguments before `-s DIR`.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Add `--pcap DIR.pcap`.
    pub pcap: bool,
}

/// The result of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunResult {
    pub sent: u64,
    pub received: u64,
    pub seconds: f64,
}

impl RunResult {
    /// Frames delivered per second.
    pub fn frames_per_sec(&self) -> f64 {
        self.received as f64 / self.seconds.max(1e-9)
    }
    /// Fraction of sent frames that never arrived.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - self.received as f64 / self.sent as f64
        }
    }
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{label}: cannot start {program}: {source}")]
    Spawn {
        label: String,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{label}: the switch did not create {ctl} within 10 s")]
    NotReady { label: String, ctl: PathBuf },
    #[error("{label}: client {n}: {source}")]
    Client {
        label: String,
        n: usize,
        source: std::io::Error,
    },
    #[error("{label}: learning phase: client {n} got {got} of {want} broadcasts")]
    Learning {
        label: String,
        n: usize,
        got: usize,
        want: usize,
    },
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mac_of(n: usize) -> MacAddr {
    let b = (n as u16).to_be_bytes();
    MacAddr([0xfe, 0xfd, 0xbe, 0x00, b[0], b[1]])
}

fn frame(dst: MacAddr, src: MacAddr, size: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(size);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    f.resize(size.max(14), 0xa5);
    f
}

/// Sends `f` in batches of 64 with `sendmmsg` until `stop`; returns frames sent.
fn blast(c: &VdeClient, f: &[u8], stop: &AtomicBool) -> u64 {
    const N: usize = 64;
    let mut iov = libc::iovec {
        iov_base: f.as_ptr() as *mut libc::c_void,
        iov_len: f.len(),
    };
    // SAFETY: mmsghdr is a plain C struct; all-zero is valid.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; N];
    for h in &mut hdrs {
        h.msg_hdr.msg_iov = &mut iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    let fd = c.data.as_raw_fd();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: hdrs holds N initialized headers pointing at `iov`, which
        // points at `f`; all outlive the call. The kernel only reads them.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), N as libc::c_uint, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted
                || e.kind() == std::io::ErrorKind::WouldBlock
            {
                continue;
            }
            break;
        }
        sent += r as u64;
    }
    sent
}

/// Counts frames with `recvmmsg` until `stop` is set and 300 ms pass without any.
fn count(c: &VdeClient, stop: &AtomicBool) -> u64 {
    const N: usize = 64;
    let _ = c.data.set_read_timeout(Some(Duration::from_millis(100)));
    let mut bufs = vec![[0u8; 1600]; N];
    // SAFETY: iovec and mmsghdr are plain C structs; all-zero is valid.
    let mut iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; N];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; N];
    for ((b, iov), h) in bufs.iter_mut().zip(iovs.iter_mut()).zip(hdrs.iter_mut()) {
        iov.iov_base = b.as_mut_ptr().cast();
        iov.iov_len = b.len();
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    let fd = c.data.as_raw_fd();
    let mut got = 0u64;
    let mut idle_since: Option<Instant> = None;
    loop {
        // SAFETY: hdrs holds N headers whose iovecs point into bufs, alive here.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                N as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r > 0 {
            got += r as u64;
            idle_since = None;
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_millis(300) {
                return got;
            }
        }
    }
}

/// One measured run of `who` with `ports` clients and `size`-byte frames.
pub fn run_once(
    who: &Contender,
    work: &Path,
    ports: usize,
    size: usize,
    seconds: f64,
) -> Result<RunResult, BenchError> {
    let dir = work.join("sw");
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = Command::new(&who.program);
    cmd.args(&who.args).arg("-s").arg(&dir);
    if who.pcap {
        cmd.arg("--pcap").arg(work.join("sw.pcap"));
    }
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            label: who.label.clone(),
            program: who.program.clone(),
            source,
        })?;
    let _running = Running(child);
    let ctl = dir.join("ctl");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&ctl).is_err() {
        if Instant::now() > deadline {
            return Err(BenchError::NotReady {
                label: who.label.clone(),
                ctl,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let client_err = |n, source| BenchError::Client {
        label: who.label.clone(),
        n,
        source,
    };
    let clients: Vec<Arc<VdeClient>> = (0..ports)
        .map(|n| {
            VdeClient::connect(&dir, 0, &format!("bench{n}"))
                .map(Arc::new)
                .map_err(|e| client_err(n, e))
        })
        .collect::<Result<_, _>>()?;
    // Learning: one broadcast per client, every other client must see it.
    for (n, c) in clients.iter().enumerate() {
        c.send(&frame(MacAddr::BROADCAST, mac_of(n), 60))
            .map_err(|e| client_err(n, e))?;
    }
    let mut buf = [0u8; 2048];
    for (n, c) in clients.iter().enumerate() {
        let want = ports - 1;
        for got in 0..want {
            if c.recv(&mut buf, Duration::from_secs(5)).is_err() {
                return Err(BenchError::Learning {
                    label: who.label.clone(),
                    n,
                    got,
                    want,
                });
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for pair in 0..ports / 2 {
        let (s, r) = (2 * pair, 2 * pair + 1);
        let f = frame(mac_of(r), mac_of(s), size);
        let (sc, rc) = (clients[s].clone(), clients[r].clone());
        let (st1, st2) = (stop.clone(), stop.clone());
        let (sent, received) = (sent.clone(), received.clone());
        threads.push(std::thread::spawn(move || {
            sent.fetch_add(blast(&sc, &f, &st1), Ordering::Relaxed);
        }));
        threads.push(std::thread::spawn(move || {
            received.fetch_add(count(&rc, &st2), Ordering::Relaxed);
        }));
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in threads {
        let _ = t.join();
    }
    let _ = std::fs::remove_file(work.join("sw.pcap"));
    Ok(RunResult {
        sent: sent.load(Ordering::Relaxed),
        received: received.load(Ordering::Relaxed),
        seconds: elapsed,
    })
}

/// The median of `v` (0 for an empty slice).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_loss() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let r = RunResult {
            sent: 100,
            received: 90,
            seconds: 2.0,
        };
        assert_eq!(r.frames_per_sec(), 45.0);
        assert!((r.loss() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn frames_are_sized_and_addressed() {
        let f = frame(mac_of(1), mac_of(0), 64);
        assert_eq!(f.len(), 64);
        assert_eq!(&f[..6], &mac_of(1).0);
        assert!(mac_of(3).is_unicast() && mac_of(3).is_locally_administered());
    }
}
