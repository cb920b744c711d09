//! The vde_switch control protocol as bytes (vde-protocol.md §2, §8; vde-2
//! `src/vde_switch/datasock.c`, vdeplug4 `libvdeplug_vde.c`, Linux
//! `arch/um/drivers/daemon_user.c`). Pure codecs: no sockets here.
//!
//! A client connects to `DIR/ctl` (stream) and writes one request naming its
//! datagram socket; the switch answers with the 110-byte `sockaddr_un` of the
//! per-endpoint data socket `DIR/%03d.%d` it created. All integers are host
//! byte order (little-endian here).

use std::fmt;

/// `0xfeedface`, the first four bytes of every request.
pub const SWITCH_MAGIC: u32 = 0xfeed_face;
/// `sizeof(struct sockaddr_un)`: family (2) + path (108).
pub const SOCKADDR_UN_LEN: usize = 110;
/// Header of a v3 request before the description: magic, version, type, sockaddr.
pub const V3_HEADER_LEN: usize = 12 + SOCKADDR_UN_LEN;
/// Header of a v1 request: magic, type, MAC, sockaddr.
pub const V1_HEADER_LEN: usize = 8 + 6 + SOCKADDR_UN_LEN;
/// The UML daemon transport's unpacked request struct (2 bytes of padding).
pub const UML_DAEMON_REQUEST_LEN: usize = 124;
/// The switch reads a request with one `read()` of at most this many bytes.
pub const MAX_REQUEST_LEN: usize = 256;

/// A `struct sockaddr_un` as the 110 raw bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SockAddrUn(pub [u8; SOCKADDR_UN_LEN]);

impl SockAddrUn {
    /// A filesystem address (`AF_UNIX` + path, zero-padded); `None` if the path
    /// does not fit in 107 bytes plus its NUL.
    pub fn from_path(path: &[u8]) -> Option<Self> {
        if path.len() >= SOCKADDR_UN_LEN - 2 || path.contains(&0) {
            return None;
        }
        let mut b = [0u8; SOCKADDR_UN_LEN];
        b[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        b[2..2 + path.len()].copy_from_slice(path);
        Some(SockAddrUn(b))
    }

    /// `sun_family`.
    pub fn family(&self) -> u16 {
        u16::from_ne_bytes([self.0[0], self.0[1]])
    }

    /// The 108 bytes of `sun_path`.
    pub fn raw_path(&self) -> &[u8] {
        &self.0[2..]
    }

    /// True for Linux abstract addresses (`sun_path[0] == 0`), as UML's daemon
    /// transport and uml_switch use.
    pub fn is_abstract(&self) -> bool {
        self.0[2] == 0
    }

    /// The filesystem path up to its NUL (`None` for abstract addresses).
    pub fn path(&self) -> Option<&[u8]> {
        if self.is_abstract() {
            return None;
        }
        let p = self.raw_path();
        Some(&p[..p.iter().position(|&b| b == 0).unwrap_or(p.len())])
    }
}

impl fmt::Debug for SockAddrUn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path() {
            Some(p) => write!(f, "SockAddrUn({:?})", String::from_utf8_lossy(p)),
            None => write!(f, "SockAddrUn(abstract {:02x?})", &self.0[2..14]),
        }
    }
}

/// The request type's low byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `REQ_NEW_CONTROL` (0): a normal port.
    NewControl,
    /// `REQ_NEW_PORT0` (1): the management port 0.
    NewPort0,
}

/// A parsed control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// 1 or 3.
    pub version: u32,
    pub kind: RequestKind,
    /// Requested port (bits 8–31 of the type; 0 = any).
    pub port: u32,
    /// The client's data socket.
    pub sock: SockAddrUn,
    /// The description up to the first NUL (lossy UTF-8).
    pub description: String,
}

/// Why a request was refused; the text is the log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Fewer bytes than the magic.
    #[error("short control request: {len} bytes, the magic alone needs 4")]
    TooShortForMagic { len: usize },
    /// Wrong magic (vde_switch's log: `V0 request not supported`).
    #[error("V0 request not supported (bytes 0..4 are {found:08x}, not the magic feedface)")]
    BadMagic { found: u32 },
    /// Version 2 or above 3.
    #[error("Request for a version {0} port, which this vde_switch doesn't support")]
    Version(u32),
    /// A header cut short.
    #[error("short version {version} control request: {len} bytes, the header needs {need}")]
    Truncated {
        version: u32,
        len: usize,
        need: usize,
    },
    /// A type other than 0 and 1 in the low byte.
    #[error("Bad request type : {0}")]
    BadType(u32),
    /// An address family other than AF_UNIX.
    #[error("client data socket address family {0} is not AF_UNIX (1)")]
    Family(u16),
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Request {
    /// Parses one `read()` worth of request bytes (never panics).
    pub fn parse(bytes: &[u8]) -> Result<Request, RequestError> {
        let bytes = bytes.get(..MAX_REQUEST_LEN).unwrap_or(bytes);
        let magic = u32_at(bytes, 0).ok_or(RequestError::TooShortForMagic { len: bytes.len() })?;
        if magic != SWITCH_MAGIC {
            return Err(RequestError::BadMagic { found: magic });
        }
        let version = u32_at(bytes, 4).ok_or(RequestError::Truncated {
            version: 3,
            len: bytes.len(),
            need: V3_HEADER_LEN,
        })?;
        // vde_switch: 3 is v3, 2 and >3 are refused, anything else is v1.
        let (version, type_at, sock_at, need) = match version {
            3 => (3, 8, 12, V3_HEADER_LEN),
            2 | 4.. => return Err(RequestError::Version(version)),
            _ => (1, 4, 14, V1_HEADER_LEN),
        };
        if bytes.len() < need {
            return Err(RequestError::Truncated {
                version,
                len: bytes.len(),
                need,
            });
        }
        let type_port = u32_at(bytes, type_at).unwrap_or_default();
        let kind = match type_port & 0xff {
            0 => RequestKind::NewControl,
            1 => RequestKind::NewPort0,
            t => return Err(RequestError::BadType(t)),
        };
        let mut sock = [0u8; SOCKADDR_UN_LEN];
        sock.copy_from_slice(
            bytes
                .get(sock_at..sock_at + SOCKADDR_UN_LEN)
                .unwrap_or(&[0; SOCKADDR_UN_LEN]),
        );
        let sock = SockAddrUn(sock);
        if sock.family() != libc::AF_UNIX as u16 {
            return Err(RequestError::Family(sock.family()));
        }
        let descr = bytes.get(need..).unwrap_or_default();
        let descr = &descr[..descr.iter().position(|&b| b == 0).unwrap_or(descr.len())];
        Ok(Request {
            version,
            kind,
            port: type_port >> 8,
            sock,
            description: String::from_utf8_lossy(descr).into_owned(),
        })
    }

    /// A v3 request as libvdeplug writes it: header + description, no NUL.
    pub fn encode_v3(port: u32, sock: &SockAddrUn, description: &str) -> Vec<u8> {
        let mut b = Vec::with_capacity(V3_HEADER_LEN + description.len());
        b.extend_from_slice(&SWITCH_MAGIC.to_ne_bytes());
        b.extend_from_slice(&3u32.to_ne_bytes());
        b.extend_from_slice(&(port << 8).to_ne_bytes());
        b.extend_from_slice(&sock.0);
        b.extend_from_slice(description.as_bytes());
        b
    }

    /// The 124-byte request of UML's `daemon` transport (v3, type 0, 2 padding bytes).
    pub fn encode_uml_daemon(sock: &SockAddrUn) -> Vec<u8> {
        let mut b = Self::encode_v3(0, sock, "");
        b.extend_from_slice(&[0, 0]);
        b
    }
}

/// The switch's reply: the data socket's `sockaddr_un` (110 bytes, zero-padded).
pub fn encode_reply(data_sock_path: &[u8]) -> Option<[u8; SOCKADDR_UN_LEN]> {
    SockAddrUn::from_path(data_sock_path).map(|s| s.0)
}

/// Parses a reply; it must be exactly 110 bytes (UML's check).
pub fn parse_reply(bytes: &[u8]) -> Option<SockAddrUn> {
    let b: [u8; SOCKADDR_UN_LEN] = bytes.try_into().ok()?;
    Some(SockAddrUn(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the real vdeplug4 4.0.1 `vde_plug --descr MyDescr --port 5
    /// /tmp/nettry/fake` wrote to a fake switch's ctl socket (149 bytes).
    const VDE_PLUG_REQUEST: &str = "cefaedfe030000000005000001002f746d702f6e65747472792f66616b652f2e32393136352d3030303030000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000004d79446573637220757365723d726f6f74207069643d3239313635";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn real_vde_plug_request_parses_and_reencodes() {
        let bytes = hex(VDE_PLUG_REQUEST);
        let r = Request::parse(&bytes).unwrap();
        assert_eq!(r.version, 3);
        assert_eq!(r.kind, RequestKind::NewControl);
        assert_eq!(r.port, 5);
        assert_eq!(r.sock.path(), Some(&b"/tmp/nettry/fake/.29165-00000"[..]));
        assert_eq!(r.description, "MyDescr user=root pid=29165");
        let again = Request::encode_v3(5, &r.sock, &r.description);
        assert_eq!(again, bytes);
    }

    #[test]
    fn uml_daemon_request_is_124_bytes() {
        let mut abs = [0u8; SOCKADDR_UN_LEN];
        abs[..2].copy_from_slice(&1u16.to_ne_bytes());
        abs[6..10].copy_from_slice(&1234u32.to_ne_bytes());
        let b = Request::encode_uml_daemon(&SockAddrUn(abs));
        assert_eq!(b.len(), UML_DAEMON_REQUEST_LEN);
        let r = Request::parse(&b).unwrap();
        assert!(r.sock.is_abstract());
        assert_eq!((r.port, r.description.as_str()), (0, ""));
    }

    #[test]
    fn refusals() {
        let ok = hex(VDE_PLUG_REQUEST);
        assert_eq!(
            Request::parse(&ok[..3]),
            Err(RequestError::TooShortForMagic { len: 3 })
        );
        let mut bad = ok.clone();
        bad[0] = 0;
        assert!(matches!(
            Request::parse(&bad),
            Err(RequestError::BadMagic { .. })
        ));
        for v in [2u32, 4, 99] {
            let mut b = ok.clone();
            b[4..8].copy_from_slice(&v.to_ne_bytes());
            assert_eq!(Request::parse(&b), Err(RequestError::Version(v)));
        }
        assert!(matches!(
            Request::parse(&ok[..100]),
            Err(RequestError::Truncated { version: 3, .. })
        ));
        let mut t = ok.clone();
        t[8] = 7;
        assert_eq!(Request::parse(&t), Err(RequestError::BadType(7)));
        // v1: magic, type, MAC, sockaddr.
        let mut v1 = SWITCH_MAGIC.to_ne_bytes().to_vec();
        v1.extend_from_slice(&0u32.to_ne_bytes());
        v1.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        v1.extend_from_slice(&SockAddrUn::from_path(b"/tmp/x").unwrap().0);
        v1.extend_from_slice(b"v1 client\0junk");
        let r = Request::parse(&v1).unwrap();
        assert_eq!((r.version, r.description.as_str()), (1, "v1 client"));
    }

    #[test]
    fn reply_roundtrip() {
        let r = encode_reply(b"/tmp/sw/001.6").unwrap();
        assert_eq!(&r[..4], &[1, 0, b'/', b't']);
        assert_eq!(parse_reply(&r).unwrap().path(), Some(&b"/tmp/sw/001.6"[..]));
        assert!(parse_reply(&r[..109]).is_none());
        assert!(encode_reply(&[b'a'; 108]).is_none());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Request::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_with_magic(mut bytes in proptest::collection::vec(any::<u8>(), 4..300), v in 0u32..5) {
            bytes[..4].copy_from_slice(&SWITCH_MAGIC.to_ne_bytes());
            if bytes.len() >= 8 { bytes[4..8].copy_from_slice(&v.to_ne_bytes()); }
            let _ = Request::parse(&bytes);
        }
    }
}
