//! The UML management console client (`uml_mconsole`), protocol version 2
//! (`../shared/spec/mconsole.md`; `torvalds/linux arch/um/drivers/mconsole.h`).
//!
//! Requests are 524-byte datagrams (magic `0xcafebabe`, version 2, length, 512
//! bytes of text), sent like `uml_mconsole` does; replies come in chunks of
//! `err, more, len, text\0`, concatenated until `more == 0`. All integers are in
//! host byte order (little-endian on x86). The client binds its own abstract
//! socket, because UML answers to the sender's address.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const MAGIC: u32 = 0xcafe_babe;
pub const VERSION: u32 = 2;
/// Bytes of command text a request carries (the kernel rejects `len >= 512`).
pub const MAX_DATA: usize = 512;
/// Size of a request datagram: magic, version, len, data.
pub const REQUEST_SIZE: usize = 12 + MAX_DATA;

/// mconsole failures.
#[derive(Debug, thiserror::Error)]
pub enum MconsoleError {
    #[error("mconsole command is {0} bytes long; at most 511 fit in a request")]
    TooLong(usize),
    #[error("mconsole {socket}: {context}: {source}")]
    Io {
        socket: PathBuf,
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("mconsole {socket}: no reply within {timeout:?} (is the machine running?)")]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("mconsole {socket}: malformed reply ({len} bytes): {why}")]
    BadReply {
        socket: PathBuf,
        len: usize,
        why: &'static str,
    },
    #[error("no mconsole socket for {0:?}: tried {1}")]
    NotFound(String, String),
}

/// The request datagram for `command`, full size like `uml_mconsole` sends it.
pub fn encode_request(command: &str) -> Result<Vec<u8>, MconsoleError> {
    let data = command.as_bytes();
    if data.len() >= MAX_DATA {
        return Err(MconsoleError::TooLong(data.len()));
    }
    let mut buf = Vec::with_capacity(REQUEST_SIZE);
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(data);
    buf.resize(REQUEST_SIZE, 0);
    Ok(buf)
}

/// One reply datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyChunk {
    pub err: u32,
    pub more: bool,
    /// The text without its terminating NUL.
    pub text: String,
}

/// Decodes a reply datagram (`err, more, len, data`; `len` counts the NUL).
pub fn decode_reply(datagram: &[u8]) -> Result<ReplyChunk, &'static str> {
    let word = |at: usize| -> Result<u32, &'static str> {
        datagram
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or("shorter than the 12-byte header")
    };
    let err = word(0)?;
    let more = word(4)?;
    let len = word(8)? as usize;
    let data = datagram
        .get(12..)
        .and_then(|d| d.get(..len.min(d.len())))
        .ok_or("shorter than the 12-byte header")?;
    if data.len() < len {
        return Err("data shorter than its length field");
    }
    // The text ends at the first NUL (the kernel always sends one).
    let text = data.split(|&b| b == 0).next().unwrap_or_default();
    Ok(ReplyChunk {
        err,
        more: more != 0,
        text: String::from_utf8_lossy(text).into_owned(),
    })
}

/// A whole reply: the chunks' texts concatenated; an error if the first chunk said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    pub text: String,
}

impl Reply {
    /// How `uml_mconsole` prints it: `OK <text>` or `ERR <text>`.
    pub fn display(&self) -> String {
        format!("{} {}", if self.ok { "OK" } else { "ERR" }, self.text)
    }
}

/// Finds a machine's socket: an existing socket path as given, else the umid under
/// the harness's `./.uml`, `$HOME/.uml`, then the legacy `/tmp/uml` (as `uml_mconsole`).
pub fn resolve(name: &str) -> Result<PathBuf, MconsoleError> {
    let mut tried = Vec::new();
    let direct = PathBuf::from(name);
    let mut candidates = Vec::new();
    if name.contains('/') {
        candidates.push(direct.clone());
    }
    candidates.push(
        PathBuf::from(super::args::UML_DIR)
            .join(name)
            .join("mconsole"),
    );
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".uml").join(name).join("mconsole"));
    }
    candidates.push(PathBuf::from("/tmp/uml").join(name).join("mconsole"));
    candidates.push(direct);
    for c in candidates {
        if c.exists() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(MconsoleError::NotFound(name.to_string(), tried.join(", ")))
}

static CLIENT_SEQ: AtomicU32 = AtomicU32::new(0);

/// An mconsole client bound to its own abstract socket.
pub struct Client {
    socket: PathBuf,
    sock: UnixDatagram,
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Self, MconsoleError> {
        let io = |context| {
            let socket = socket.to_path_buf();
            move |source| MconsoleError::Io {
                socket,
                context,
                source,
            }
        };
        // Abstract name: nothing to clean up, unique per process and client.
        let name = format!(
            "umltest-mconsole-{}-{}",
            std::process::id(),
            CLIENT_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(io("name"))?;
        let sock = UnixDatagram::bind_addr(&addr).map_err(io("bind client socket"))?;
        sock.connect(socket).map_err(io("connect"))?;
        Ok(Self {
            socket: socket.to_path_buf(),
            sock,
        })
    }

    /// Sends `command` and collects the reply chunks until `more == 0`.
    pub fn command(&self, command: &str, timeout: Duration) -> Result<Reply, MconsoleError> {
        let request = encode_request(command)?;
        let io = |context| {
            let socket = self.socket.clone();
            move |source| MconsoleError::Io {
                socket,
                context,
                source,
            }
        };
        self.sock.send(&request).map_err(io("send"))?;
        let deadline = Instant::now() + timeout;
        let mut reply: Option<Reply> = None;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(MconsoleError::Timeout {
                    socket: self.socket.clone(),
                    timeout,
                });
            }
            self.sock
                .set_read_timeout(Some(left))
                .map_err(io("set timeout"))?;
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(io("receive")(e)),
            };
            let datagram = buf.get(..n).unwrap_or_default();
            let chunk = decode_reply(datagram).map_err(|why| MconsoleError::BadReply {
                socket: self.socket.clone(),
                len: n,
                why,
            })?;
            let r = reply.get_or_insert(Reply {
                ok: chunk.err == 0,
                text: String::new(),
            });
            r.text.push_str(&chunk.text);
            if !chunk.more {
                return Ok(reply.unwrap_or(Reply {
                    ok: true,
                    text: String::new(),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_is_524_bytes_with_header() {
        let req = encode_request("version").unwrap_or_default();
        assert_eq!(req.len(), 524);
        assert_eq!(
            &req[..12],
            &[0xbe, 0xba, 0xfe, 0xca, 2, 0, 0, 0, 7, 0, 0, 0]
        );
        assert_eq!(&req[12..19], b"version");
        assert!(req[19..].iter().all(|&b| b == 0));
        assert!(matches!(
            encode_request(&"x".repeat(512)),
            Err(MconsoleError::TooLong(512))
        ));
    }

    #[test]
    fn reply_chunks_decode() {
        // `version` reply as linux.uml 6.1.176 sends it (mconsole.md §3): 12 + len bytes.
        let text = b"Linux (none) 6.1.176 #1 Sat Jul  4 15:38:16 UTC 2026 x86_64\0";
        let mut d = vec![0, 0, 0, 0, 0, 0, 0, 0, text.len() as u8, 0, 0, 0];
        d.extend_from_slice(text);
        assert_eq!(d.len(), 72);
        let c = decode_reply(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.err, c.more), (0, false));
        assert!(c.text.starts_with("Linux (none) 6.1.176"));
        assert!(decode_reply(&[0; 11]).is_err());
        assert!(decode_reply(&[0, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, b'a']).is_err());
        let empty = decode_reply(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((empty.err, empty.text.as_str()), (1, ""));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_reply(&bytes);
        }
    }
}
