//! A minimal client of the vde_switch control protocol, as libvdeplug does it:
//! bind a datagram socket `DIR/.<pid>-<n>`, send a v3 request on `DIR/ctl`,
//! read the 110-byte reply, connect to the switch's data socket, unlink ours.
//! Used by `umltest bench switch` and the tests; works with the real
//! vde_switch and with `umltest switch` alike.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::proto::{parse_reply, Request, SockAddrUn, SOCKADDR_UN_LEN};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A connected endpoint: keep it alive to keep the port.
pub struct VdeClient {
    /// The control connection; dropping it releases the port.
    pub ctl: UnixStream,
    /// Connected to the switch's data socket for this endpoint.
    pub data: UnixDatagram,
    /// The switch's data socket path (`DIR/%03d.%d`).
    pub switch_data: PathBuf,
}

impl VdeClient {
    /// Plugs into the switch at `dir`, asking for `port` (0 = any).
    pub fn connect(dir: &Path, port: u32, description: &str) -> io::Result<VdeClient> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let own = dir.join(format!(".{:05}-{:05}", std::process::id(), n));
        let _ = std::fs::remove_file(&own);
        let data = UnixDatagram::bind(&own)?;
        let result = (|| -> io::Result<(UnixStream, PathBuf)> {
            let sock = SockAddrUn::from_path(own.as_os_str().as_bytes()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "socket path too long")
            })?;
            let mut ctl = UnixStream::connect(dir.join("ctl"))?;
            ctl.write_all(&Request::encode_v3(port, &sock, description))?;
            ctl.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut reply = [0u8; SOCKADDR_UN_LEN];
            ctl.read_exact(&mut reply)?;
            ctl.set_read_timeout(None)?;
            let addr = parse_reply(&reply)
                .and_then(|a| {
                    a.path()
                        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
                })
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad reply"))?;
            data.connect(&addr)?;
            Ok((ctl, addr))
        })();
        let _ = std::fs::remove_file(&own);
        let (ctl, switch_data) = result?;
        Ok(VdeClient {
            ctl,
            data,
            switch_data,
        })
    }

    /// The port number, from the data socket name `NNN.fd`.
    pub fn port(&self) -> Option<u16> {
        let name = self.switch_data.file_name()?.to_str()?;
        name.get(..3)?.parse().ok()
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.data.send(frame)
    }

    /// Receives one frame, waiting at most `timeout`.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.data.set_read_timeout(Some(timeout))?;
        self.data.recv(buf)
    }
}
