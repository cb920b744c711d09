//! `--pcap` for the daemon: records are appended to a large in-memory chunk on
//! the forwarding thread and written to the file by a writer thread, so the
//! page-cache copy (and any reclaim or writeback stall it hits) does not hold
//! up forwarding.
//!
//! The byte format is [`crate::net::wire`]'s (`pcap_global_header`,
//! `pcap_record_header`), the same as [`crate::net::wire::PcapWriter`] writes.
//!
//! Chunks come from a fixed pool ([`CHUNKS`] of [`CHUNK`] bytes) and are
//! recycled, so capturing allocates nothing per frame. When the writer falls
//! behind and every chunk is queued, the forwarding thread waits for one to be
//! written (back-pressure): a capture is a test artifact and must be complete
//! and in order, so records are never dropped.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::net::wire::{pcap_global_header, pcap_record_header, PCAP_SNAPLEN};

/// Bytes per chunk handed to the writer thread.
pub const CHUNK: usize = 1 << 20;
/// Chunks in the pool: up to `CHUNKS * CHUNK` bytes wait for the disk before
/// the forwarding thread waits.
pub const CHUNKS: usize = 8;

/// Niceness of the writer thread (see [`PcapSink::start`]).
pub const WRITER_NICE: libc::c_int = 10;

/// The first write error of the writer thread.
#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    error: Mutex<Option<io::Error>>,
}

impl Failure {
    fn set(&self, e: io::Error) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
        self.failed.store(true, Ordering::Release);
    }
    fn take(&self) -> Option<io::Error> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        let e = self.error.lock().ok().and_then(|mut s| s.take());
        Some(e.unwrap_or_else(|| io::Error::other("pcap writer thread stopped")))
    }
}

struct Writer {
    full: SyncSender<Vec<u8>>,
    free: Receiver<Vec<u8>>,
    thread: JoinHandle<()>,
}

/// A pcap file written in the background. Start it (or just record into it)
/// only in the process that serves: threads do not survive `daemon(3)`'s fork.
pub struct PcapSink {
    cur: Vec<u8>,
    file: Option<File>,
    writer: Option<Writer>,
    failure: Arc<Failure>,
}

impl PcapSink {
    /// Creates `path` and writes the global header (synchronously, so that a
    /// bad path fails at start).
    pub fn create(path: &Path) -> io::Result<Self> {
        let mut file = File::create(path)?;
        file.write_all(&pcap_global_header())?;
        Ok(Self {
            cur: Vec::new(),
            file: Some(file),
            writer: None,
            failure: Arc::default(),
        })
    }

    fn start(&mut self) -> io::Result<()> {
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        // Capacity CHUNKS: every chunk can be queued, so sending never blocks;
        // waiting happens only on `free`.
        let (full_tx, full_rx) = sync_channel::<Vec<u8>>(CHUNKS);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(CHUNKS);
        for _ in 1..CHUNKS {
            let _ = free_tx.send(Vec::with_capacity(CHUNK));
        }
        self.cur = Vec::with_capacity(CHUNK);
        let failure = self.failure.clone();
        let thread = std::thread::Builder::new()
            .name("pcap-writer".into())
            .spawn(move || {
                // Below the forwarding thread and the clients: the copy into the
                // page cache takes the CPU they leave, and when it falls behind
                // back-pressure slows forwarding instead of the clients'
                // readers starving (which would turn into drops).
                // SAFETY: setpriority on this thread's own id; no memory involved.
                unsafe {
                    libc::setpriority(
                        libc::PRIO_PROCESS,
                        libc::gettid() as libc::id_t,
                        WRITER_NICE,
                    )
                };
                for mut buf in full_rx {
                    if !failure.failed.load(Ordering::Relaxed) {
                        if let Err(e) = file.write_all(&buf) {
                            failure.set(e);
                        }
                    }
                    buf.clear();
                    // The receiver is gone only when the sink is being dropped.
                    let _ = free_tx.send(buf);
                }
            })?;
        self.writer = Some(Writer {
            full: full_tx,
            free: free_rx,
            thread,
        });
        Ok(())
    }

    /// Appends one record captured at `ts` (wall-clock time since the epoch).
    /// Fails with the writer thread's first error; the caller should then stop
    /// capturing.
    pub fn record(&mut self, ts: Duration, frame: &[u8]) -> io::Result<()> {
        let incl = frame.len().min(PCAP_SNAPLEN as usize);
        if self.cur.len() + 16 + incl > self.cur.capacity() {
            self.hand_off()?;
        }
        self.cur
            .extend_from_slice(&pcap_record_header(ts, frame.len()));
        self.cur
            .extend_from_slice(frame.get(..incl).unwrap_or(frame));
        Ok(())
    }

    /// Passes the current chunk to the writer thread, waiting for a free one
    /// if all are queued.
    fn hand_off(&mut self) -> io::Result<()> {
        if self.writer.is_none() {
            self.start()?;
            if !self.cur.is_empty() {
                return self.hand_off();
            }
            return Ok(());
        }
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        if self.cur.is_empty() {
            return Ok(());
        }
        let Some(w) = &self.writer else {
            return Ok(());
        };
        let stopped = || io::Error::other("pcap writer thread stopped");
        let next = w.free.recv().map_err(|_| stopped())?;
        let full = std::mem::replace(&mut self.cur, next);
        w.full.send(full).map_err(|_| stopped())
    }

    /// Hands what is buffered to the writer without waiting for the disk.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.cur.is_empty() {
            return self.failure.take().map_or(Ok(()), Err);
        }
        self.hand_off()
    }

    /// Writes everything out and waits for the writer thread.
    pub fn finish(mut self) -> io::Result<()> {
        self.finish_mut()
    }

    fn finish_mut(&mut self) -> io::Result<()> {
        let res = if self.cur.is_empty() {
            Ok(())
        } else {
            self.hand_off()
        };
        if let Some(w) = self.writer.take() {
            drop(w.full);
            let _ = w.thread.join();
        }
        res?;
        self.failure.take().map_or(Ok(()), Err)
    }
}

impl Drop for PcapSink {
    fn drop(&mut self) {
        let _ = self.finish_mut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::wire::PcapWriter;

    fn frames() -> Vec<Vec<u8>> {
        (0..3000usize)
            .map(|i| (0..(14 + i % 1505)).map(|b| (b ^ i) as u8).collect())
            .collect()
    }

    #[test]
    fn same_bytes_as_pcap_writer_across_many_chunks() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.pcap");
        let mut sink = PcapSink::create(&path).expect("create");
        let mut want = PcapWriter::new(Vec::new()).expect("header");
        for (i, f) in frames().iter().enumerate() {
            let ts = Duration::new(1_700_000_000 + i as u64 / 7, (i as u32 % 1000) * 1000);
            sink.record(ts, f).expect("record");
            want.write_frame(ts, f).expect("write");
            if i % 500 == 0 {
                sink.flush().expect("flush");
            }
        }
        sink.finish().expect("finish");
        let got = std::fs::read(&path).expect("read");
        let want = want.into_inner();
        assert!(want.len() > 2 * CHUNK, "the test must span chunks");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "pcap bytes differ");
    }

    #[test]
    fn drop_writes_everything() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("b.pcap");
        {
            let mut sink = PcapSink::create(&path).expect("create");
            sink.record(Duration::new(5, 6000), &[1u8; 60])
                .expect("record");
        }
        let got = std::fs::read(&path).expect("read");
        assert_eq!(got.len(), 24 + 16 + 60);
    }

    #[test]
    fn write_errors_surface() {
        // Every write to /dev/full fails with ENOSPC: the writer thread's
        // error must reach the forwarding side.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let mut sink = PcapSink {
            cur: Vec::new(),
            file: Some(full),
            writer: None,
            failure: Arc::default(),
        };
        let f = vec![0u8; 1500];
        let mut err = None;
        for _ in 0..(CHUNK / 1516) * (CHUNKS + 2) {
            if let Err(e) = sink.record(Duration::ZERO, &f) {
                err = Some(e);
                break;
            }
        }
        let err = err.or_else(|| sink.finish_mut().err()).expect("an error");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
}
