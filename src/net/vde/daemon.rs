//! The switch daemon: vde_switch's socket directory, control handshake,
//! per-endpoint datagram sockets, management console, rc file, capture and
//! clean shutdown, around the pure [`Switch`] core.
//!
//! One poll loop, one thread. The data path is batched and allocation-free:
//! `recvmmsg` up to [`BATCH`] frames from a readable endpoint, decide each with
//! [`Switch::forward_into`], then one `sendmmsg` per destination socket.
//!
//! Every bad input (malformed ctl requests, runt or oversized frames, clients
//! that vanish, stale or foreign socket directories) gets one log line and the
//! switch keeps serving the other ports.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::capture::PcapSink;
use super::console::{Action, Console, ConsoleInfo, Names, SystemNames, BANNER, PROMPT};
use super::proto::{encode_reply, Request, RequestKind, MAX_REQUEST_LEN};
use crate::net::switch::{Delivery, EndpointId, Learned, PortRequest, Switch, SwitchConfig};
use crate::net::wire::{trace_line, MacAddr};

/// Frames per `recvmmsg`/`sendmmsg` batch.
pub const BATCH: usize = 64;
/// vde_switch's receive buffer (`struct packet`): longer datagrams are cut to this.
pub const MAX_FRAME: usize = 1518;
/// Shortest frame the switch accepts (an Ethernet header).
pub const MIN_FRAME: usize = 14;
/// The longest a send waits for a full client socket before dropping: about
/// one scheduler time slice on a busy host, so a reader that was merely
/// descheduled loses nothing.
pub const CONGESTION_WAIT: Duration = Duration::from_millis(10);
/// Each client's waiting budget refills at this fraction of real time (and
/// holds at most [`CONGESTION_WAIT`]): a slow or stuck reader can hold up the
/// other ports for at most 1% of the time; beyond that, frames to it are
/// dropped right away, as vde_switch always does.
pub const CONGESTION_BUDGET_PER_SEC: Duration = Duration::from_millis(10);

/// A port request names the datagram socket the switch will send the port's
/// frames to. vde_switch checks only that *it* may write there, so a switch run
/// by root with `-m 666` delivers another user's frames into any socket on the
/// host (a root-only one included). Here the socket must belong to the peer of
/// the control connection (`SO_PEERCRED`): a socket file, not a symlink, owned
/// by the peer's uid. Root peers are exempt: root can send to any socket itself,
/// so naming one through the switch gains nothing. (An abstract socket, as UML's
/// daemon transport uses, has no owner or permissions: anyone may send to it
/// directly, so it is not checked.) Returns the owner's uid.
fn peer_owns_socket(path: &Path, peer_uid: u32, peer_pid: i32) -> Result<u32, String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = fs::symlink_metadata(path)
        .map_err(|e| format!("client data socket {}: {e}", path.display()))?;
    if !meta.file_type().is_socket() {
        return Err(format!(
            "client data socket {} is not a socket (a symlink or another file): refused",
            path.display()
        ));
    }
    if peer_uid != 0 && meta.uid() != peer_uid {
        return Err(format!(
            "client data socket {} belongs to uid {}, not to the requesting peer (uid {peer_uid}, pid {peer_pid}): refused",
            path.display(),
            meta.uid()
        ));
    }
    Ok(meta.uid())
}

/// Connects `fd` to the client's data socket with the peer's filesystem
/// identity when the switch runs as root (`setfsuid`/`setfsgid` are per thread,
/// and the switch serves from one thread): the kernel then checks the path as
/// the peer would, which closes the race of a name swapped after
/// [`peer_owns_socket`] looked at it. Unprivileged switches connect as themselves.
fn connect_as_peer(fd: RawFd, addr: &UnixAddr, uid: u32, gid: u32) -> nix::Result<()> {
    if uid == 0 || !nix::unistd::geteuid().is_root() {
        return socket::connect(fd, addr);
    }
    // SAFETY: setfsuid/setfsgid change only this thread's filesystem ids; they
    // are restored below on every path.
    let (old_gid, old_uid) = unsafe { (libc::setfsgid(gid), libc::setfsuid(uid)) };
    let r = socket::connect(fd, addr);
    // SAFETY: as above.
    unsafe {
        libc::setfsuid(old_uid as libc::uid_t);
        libc::setfsgid(old_gid as libc::gid_t);
    }
    r
}

/// Waits up to `ms` milliseconds for `fd` to become writable.
fn wait_writable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0 && p.revents & libc::POLLOUT != 0
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create ctl directory '{dir}': {source}")]
    MkDir { dir: PathBuf, source: io::Error },
    #[error("socket dir '{dir}' is owned by uid {owner}, not by us (uid {us}): refusing to take over another user's switch directory")]
    ForeignDir { dir: PathBuf, owner: u32, us: u32 },
    #[error("'{dir}' exists and is not a directory")]
    NotADir { dir: PathBuf },
    #[error(
        "socket path '{path}' is {len} bytes long; unix socket paths are limited to 107 bytes"
    )]
    PathTooLong { path: PathBuf, len: usize },
    #[error("Could not bind to socket '{dir}/ctl': Address already in use (another switch answers there)")]
    InUse { dir: PathBuf },
    #[error("{what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where log lines go: stderr (foreground) or syslog (`-d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    Syslog,
}

/// Everything `umltest switch` configures.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `-s DIR`.
    pub dir: PathBuf,
    pub switch: SwitchConfig,
    /// `-m MODE` (ctl socket mode; the directory mode is derived from it
    /// unless `--dirmode` is given).
    pub mode: Option<u32>,
    /// `--dirmode MODE` (directory mode; without `-m` the ctl socket gets it
    /// minus the x bits).
    pub dirmode: Option<u32>,
    /// `-g GROUP` as a gid.
    pub group: Option<u32>,
    /// `-M SOCK` and `--mgmtmode`.
    pub mgmt: Option<PathBuf>,
    pub mgmt_mode: u32,
    /// `--mgmtgroup GROUP` as a gid.
    pub mgmt_group: Option<u32>,
    /// `-f FILE` (else `~/.vde2/vde_switch.rc`, `/etc/vde2/vde_switch.rc` if present).
    pub rcfile: Option<PathBuf>,
    pub pcap: Option<PathBuf>,
    pub trace: Option<PathBuf>,
    /// Read management commands from stdin; EOF on stdin stops the switch
    /// (vde_switch without `-d`).
    pub stdin_console: bool,
    /// `-p FILE`: removed on exit.
    pub pidfile: Option<PathBuf>,
    /// Accept umltest's own management command `umltest/cable PORT 0|1`, which
    /// takes the cables of a port's endpoints out (1: puts them back) while their
    /// sockets stay open, like the sim's `link` step: frames they send are
    /// dropped, none reach them, the port's addresses are forgotten. Not a
    /// vde_switch command, so off unless the uml backend asks for it.
    pub cable_command: bool,
}

impl DaemonConfig {
    /// vde_switch's defaults for a socket directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            switch: SwitchConfig::default(),
            mode: None,
            dirmode: None,
            group: None,
            mgmt: None,
            mgmt_mode: 0o600,
            mgmt_group: None,
            rcfile: None,
            pcap: None,
            trace: None,
            stdin_console: false,
            pidfile: None,
            cable_command: false,
        }
    }

    fn ctl_mode(&self) -> u32 {
        match (self.mode, self.dirmode) {
            (Some(m), _) => m,
            (None, Some(d)) => d & 0o666,
            (None, None) => 0o600,
        }
    }

    /// `--dirmode`, else `02700` by default; with `-m`, `02000` plus `rwx` for
    /// every class that has any of `rw` in MODE (datasock.c `ADDBIT`).
    fn dir_mode(&self) -> u32 {
        if let Some(d) = self.dirmode {
            return d;
        }
        match self.mode {
            None => 0o2700,
            Some(m) => {
                let add = |mask: u32, x: u32| if m & mask != 0 { (m & mask) | x } else { 0 };
                0o2000 | add(0o600, 0o100) | add(0o060, 0o010) | add(0o006, 0o001)
            }
        }
    }
}

/// Per-endpoint state.
struct Endpoint {
    ctl: UnixStream,
    data: OwnedFd,
    data_path: PathBuf,
    port: u16,
    /// One log line per kind of trouble per endpoint, not one per frame.
    warned_short: bool,
    warned_long: bool,
    warned_send: bool,
    /// How long sends may still wait for its full socket, as of `budget_at`
    /// (time since start); see [`CONGESTION_BUDGET_PER_SEC`].
    wait_budget: Duration,
    budget_at: Duration,
}

enum Conn {
    /// Accepted on `ctl`, waiting for its request.
    Pending,
    /// Control connection of an endpoint (keyed by the ctl fd = endpoint id).
    Ctl,
    /// Data socket of an endpoint; the value is the endpoint id.
    Data(EndpointId),
    Mgmt,
    MgmtListener,
    CtlListener,
    Signal,
    Stdin,
}

/// Reused buffers of the data path.
struct Batch {
    bufs: Vec<[u8; MAX_FRAME]>,
    lens: Vec<usize>,
    /// Where each frame starts in its buffer (4 after removing a VLAN tag).
    offs: Vec<usize>,
    recv_iov: Vec<libc::iovec>,
    recv_hdr: Vec<libc::mmsghdr>,
    out_ports: Vec<u16>,
    /// (destination data fd, frame index), sorted before sending.
    sends: Vec<(RawFd, usize, EndpointId)>,
    send_iov: Vec<libc::iovec>,
    send_hdr: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Self {
        // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
        let zero_iov: libc::iovec = unsafe { std::mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Batch {
            bufs: vec![[0u8; MAX_FRAME]; BATCH],
            lens: vec![0; BATCH],
            offs: vec![0; BATCH],
            recv_iov: vec![zero_iov; BATCH],
            recv_hdr: vec![zero_hdr; BATCH],
            out_ports: Vec::with_capacity(256),
            sends: Vec::with_capacity(BATCH * 32),
            send_iov: vec![zero_iov; BATCH * 32],
            send_hdr: vec![zero_hdr; BATCH * 32],
        }
    }
}

/// A bound switch, ready to [`Daemon::run`].
pub struct Daemon {
    config: DaemonConfig,
    dir: PathBuf,
    switch: Switch,
    ctl_listener: Option<UnixListener>,
    mgmt_listener: Option<UnixListener>,
    endpoints: BTreeMap<EndpointId, Endpoint>,
    conns: BTreeMap<RawFd, Conn>,
    pending: BTreeMap<RawFd, UnixStream>,
    mgmt: BTreeMap<RawFd, UnixStream>,
    info: ConsoleInfo,
    log: LogTarget,
    start: Instant,
    pcap: Option<PcapSink>,
    trace: Option<BufWriter<fs::File>>,
    trace_seq: u64,
    /// Reused by [`Daemon::others_pending`].
    pending_poll: Vec<libc::pollfd>,
    shutdown: bool,
    /// Endpoints whose cable is out (`umltest/cable`): port, user, description.
    unplugged: BTreeMap<EndpointId, (u16, Option<u32>, String)>,
}

fn sun_path_len(p: &Path) -> usize {
    p.as_os_str().len()
}

fn check_len(p: &Path) -> Result<(), DaemonError> {
    let len = sun_path_len(p);
    if len > 107 {
        return Err(DaemonError::PathTooLong {
            path: p.to_path_buf(),
            len,
        });
    }
    Ok(())
}

fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// True if something accepts connections on the stream socket at `path`.
fn still_used(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

fn switch_mac() -> MacAddr {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let x = nanos ^ std::process::id().rotate_left(16);
    let b = x.to_le_bytes();
    MacAddr([0x00, 0xff, b[0], b[1], b[2], b[3]])
}

/// Sockets of a switch still starting up: removed when dropped, so an error
/// halfway leaves nothing behind.
struct Unpublished(Vec<PathBuf>);

impl Drop for Unpublished {
    fn drop(&mut self) {
        for p in self.0.drain(..) {
            let _ = fs::remove_file(p);
        }
    }
}

impl Daemon {
    /// Creates and checks the socket directory, binds `DIR/ctl` (taking over a
    /// stale one nobody listens on) and the management socket, runs the rc
    /// file. Call before daemonizing, as vde_switch does.
    pub fn bind(config: DaemonConfig, log: LogTarget) -> Result<Daemon, DaemonError> {
        let rel = &config.dir;
        match fs::create_dir(rel) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(DaemonError::MkDir {
                    dir: rel.clone(),
                    source,
                })
            }
        }
        let dir = fs::canonicalize(rel).map_err(io_err("cannot resolve ctl dir path", rel))?;
        let meta = fs::metadata(&dir).map_err(io_err("cannot stat ctl dir", &dir))?;
        if !meta.is_dir() {
            return Err(DaemonError::NotADir { dir });
        }
        let us = nix::unistd::geteuid().as_raw();
        if meta.uid() != us {
            return Err(DaemonError::ForeignDir {
                dir,
                owner: meta.uid(),
                us,
            });
        }
        let ctl = dir.join("ctl");
        check_len(&ctl)?;
        check_len(&dir.join("031.1023"))?;
        if let Some(gid) = config.group {
            nix::unistd::chown(&dir, None, Some(gid.into()))
                .map_err(|e| io_err("Could not chown socket dir", &dir)(e.into()))?;
        }
        chmod(&dir, config.dir_mode()).map_err(io_err(
            "Could not set the VDE ctl directory permissions",
            &dir,
        ))?;
        // A ctl socket left by a crashed switch is taken over only when nothing
        // answers on it. The new socket is bound and listening under a temporary
        // name, then renamed: `ctl` appearing means the switch accepts clients.
        let mut stale_note = None;
        if fs::symlink_metadata(&ctl).is_ok() {
            if still_used(&ctl) {
                return Err(DaemonError::InUse { dir });
            }
            let _ = fs::remove_file(&ctl);
            let removed = remove_stale_data_sockets(&dir);
            stale_note = Some(format!(
                "reusing stale socket dir {}: nothing listened on ctl (removed it and {removed} stale data sockets)",
                dir.display()
            ));
        }
        let tmp = dir.join(format!(".ctl-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let listener =
            UnixListener::bind(&tmp).map_err(io_err("Could not bind to socket", &ctl))?;
        chmod(&tmp, config.ctl_mode()).map_err(io_err("chmod", &tmp))?;
        if let Some(gid) = config.group {
            nix::unistd::chown(&tmp, None, Some(gid.into()))
                .map_err(|e| io_err("Could not chown socket", &ctl)(e.into()))?;
        }
        listener
            .set_nonblocking(true)
            .map_err(io_err("set O_NONBLOCK on", &ctl))?;
        // Until `ctl` appears the bound socket is only a temporary name; it goes
        // away with any error below.
        let mut unpublished = Unpublished(vec![tmp.clone()]);
        let mgmt_listener = match &config.mgmt {
            None => None,
            Some(path) => {
                check_len(path)?;
                let l = match UnixListener::bind(path) {
                    Ok(l) => l,
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse && !still_used(path) => {
                        let _ = fs::remove_file(path);
                        UnixListener::bind(path).map_err(io_err("mgmt socket bind", path))?
                    }
                    Err(e) => return Err(io_err("mgmt socket bind", path)(e)),
                };
                unpublished.0.push(path.clone());
                l.set_nonblocking(true)
                    .map_err(io_err("set O_NONBLOCK on", path))?;
                chmod(path, config.mgmt_mode).map_err(io_err("chmod", path))?;
                if let Some(gid) = config.mgmt_group {
                    nix::unistd::chown(path, None, Some(gid.into()))
                        .map_err(|e| io_err("mgmt socket chown", path)(e.into()))?;
                }
                Some(l)
            }
        };
        let pcap = match &config.pcap {
            None => None,
            Some(p) => Some(PcapSink::create(p).map_err(io_err("cannot create pcap file", p))?),
        };
        let trace = match &config.trace {
            None => None,
            Some(p) => Some(BufWriter::new(
                fs::File::create(p).map_err(io_err("cannot create trace file", p))?,
            )),
        };
        let info = ConsoleInfo {
            pid: std::process::id(),
            mac: switch_mac(),
            mgmt: config
                .mgmt
                .as_ref()
                .map(|p| (p.display().to_string(), config.mgmt_mode)),
            ctl_dir: dir.display().to_string(),
            ctl_mode: config.ctl_mode(),
        };
        let mut d = Daemon {
            switch: Switch::new(config.switch.clone()),
            config,
            dir,
            ctl_listener: Some(listener),
            mgmt_listener,
            endpoints: BTreeMap::new(),
            conns: BTreeMap::new(),
            pending: BTreeMap::new(),
            mgmt: BTreeMap::new(),
            info,
            log,
            start: Instant::now(),
            pcap,
            trace,
            trace_seq: 0,
            pending_poll: Vec::new(),
            shutdown: false,
            unplugged: BTreeMap::new(),
        };
        if let Some(note) = stale_note {
            d.log(&note);
        }
        d.run_rcfile();
        // Publishing `ctl` last makes it the one readiness marker: once it exists
        // the management socket, the capture files and the rc file's settings
        // are all in place.
        fs::rename(&tmp, &ctl).map_err(io_err("Could not bind to socket", &ctl))?;
        unpublished.0.clear();
        Ok(d)
    }

    /// The resolved socket directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Switches logging to syslog (after daemonizing).
    pub fn set_log(&mut self, log: LogTarget) {
        self.log = log;
        self.info.pid = std::process::id();
    }

    fn log(&self, msg: &str) {
        match self.log {
            LogTarget::Stderr => eprintln!("umltest switch: {msg}"),
            LogTarget::Syslog => {
                if let Ok(c) = std::ffi::CString::new(msg.replace('\0', " ")) {
                    // SAFETY: "%s" with one valid NUL-terminated string argument.
                    unsafe { libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), c.as_ptr()) };
                }
            }
        }
    }

    fn run_rcfile(&mut self) {
        let path = match &self.config.rcfile {
            Some(p) => Some(p.clone()),
            None => {
                let home =
                    std::env::var_os("HOME").map(|h| Path::new(&h).join(".vde2/vde_switch.rc"));
                home.into_iter()
                    .chain(Some(PathBuf::from("/etc/vde2/vde_switch.rc")))
                    .find(|p| p.is_file())
            }
        };
        let Some(path) = path else { return };
        match fs::read(&path) {
            Err(e) => self.log(&format!("cannot read rc file {}: {e}", path.display())),
            Ok(bytes) => {
                for line in rc_lines(&bytes) {
                    let (_, action) = self.console().execute(&line);
                    self.apply(action, None);
                }
            }
        }
    }

    fn console(&mut self) -> Console<'_> {
        Console {
            switch: &mut self.switch,
            info: &self.info,
            names: &SystemNames as &dyn Names,
            now: self.start.elapsed(),
        }
    }

    /// Serves until SIGTERM/SIGINT/SIGHUP, `shutdown`, or EOF on the stdin
    /// console; then removes its sockets (and the directory if nobody else
    /// serves it).
    pub fn run(mut self) -> io::Result<()> {
        let mask = block_shutdown_signals()?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        let mut batch = Batch::new();
        let mut pollfds: Vec<libc::pollfd> = Vec::new();
        let mut dirty = true;
        let mut stdin_open = self.config.stdin_console;
        let mut last_flush = Instant::now();
        if stdin_open {
            print!("{PROMPT}");
            let _ = io::stdout().flush();
        }
        self.log(&format!(
            "VDE switch started on {} ({} ports{})",
            self.dir.display(),
            self.switch.config().numports,
            if self.switch.config().hub {
                ", hub"
            } else {
                ""
            }
        ));
        while !self.shutdown {
            if dirty {
                self.rebuild_conns(sigfd.as_fd().as_raw_fd(), stdin_open);
                pollfds.clear();
                pollfds.extend(self.conns.keys().map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                }));
                dirty = false;
            }
            // SAFETY: pollfds is a valid, initialized array of pollfd of that length.
            let n =
                unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 1000) };
            let now = self.start.elapsed();
            self.switch.tick(now);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 || last_flush.elapsed() > Duration::from_millis(200) {
                self.flush_capture();
                last_flush = Instant::now();
            }
            if n == 0 {
                continue;
            }
            for i in 0..pollfds.len() {
                let Some(pfd) = pollfds.get(i).copied() else {
                    break;
                };
                if pfd.revents == 0 {
                    continue;
                }
                let fd = pfd.fd;
                let kind = match self.conns.get(&fd) {
                    Some(Conn::Data(id)) => Some(Kind::Data(*id)),
                    Some(Conn::Ctl) => Some(Kind::Ctl),
                    Some(Conn::Pending) => Some(Kind::Pending),
                    Some(Conn::Mgmt) => Some(Kind::Mgmt),
                    Some(Conn::MgmtListener) => Some(Kind::MgmtListener),
                    Some(Conn::CtlListener) => Some(Kind::CtlListener),
                    Some(Conn::Signal) => Some(Kind::Signal),
                    Some(Conn::Stdin) => Some(Kind::Stdin),
                    None => None,
                };
                match kind {
                    None => {}
                    Some(Kind::Data(id)) => self.handle_data(id, fd, &mut batch),
                    Some(Kind::Ctl) => {
                        self.handle_ctl(fd);
                        dirty = true;
                    }
                    Some(Kind::Pending) => {
                        self.handle_request(fd);
                        dirty = true;
                    }
                    Some(Kind::CtlListener) => {
                        self.accept_ctl();
                        dirty = true;
                    }
                    Some(Kind::MgmtListener) => {
                        self.accept_mgmt();
                        dirty = true;
                    }
                    Some(Kind::Mgmt) => {
                        self.handle_mgmt(fd);
                        dirty = true;
                    }
                    Some(Kind::Signal) => {
                        if let Ok(Some(info)) = sigfd.read_signal() {
                            let name = Signal::try_from(info.ssi_signo as i32)
                                .map(|s| s.as_str())
                                .unwrap_or("?");
                            self.log(&format!("Caught signal {name}, cleaning up and exiting"));
                            self.shutdown = true;
                        }
                    }
                    Some(Kind::Stdin) => {
                        if !self.handle_stdin() {
                            stdin_open = false;
                            self.log("EOF on stdin, cleaning up and exiting");
                            self.shutdown = true;
                        }
                        dirty = true;
                    }
                }
                if self.shutdown {
                    break;
                }
            }
        }
        self.cleanup();
        Ok(())
    }

    fn rebuild_conns(&mut self, sigfd: RawFd, stdin: bool) {
        self.conns.clear();
        self.conns.insert(sigfd, Conn::Signal);
        if stdin {
            self.conns.insert(0, Conn::Stdin);
        }
        if let Some(l) = &self.ctl_listener {
            self.conns.insert(l.as_raw_fd(), Conn::CtlListener);
        }
        if let Some(l) = &self.mgmt_listener {
            self.conns.insert(l.as_raw_fd(), Conn::MgmtListener);
        }
        for &fd in self.pending.keys() {
            self.conns.insert(fd, Conn::Pending);
        }
        for &fd in self.mgmt.keys() {
            self.conns.insert(fd, Conn::Mgmt);
        }
        for (&id, ep) in &self.endpoints {
            self.conns.insert(ep.ctl.as_raw_fd(), Conn::Ctl);
            self.conns.insert(ep.data.as_raw_fd(), Conn::Data(id));
        }
    }

    fn accept_ctl(&mut self) {
        let Some(l) = &self.ctl_listener else { return };
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    self.pending.insert(s.as_raw_fd(), s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.log(&format!("accept {e}"));
                    break;
                }
            }
        }
    }

    /// One request on a fresh control connection (`new_port_v1_v3`).
    fn handle_request(&mut self, fd: RawFd) {
        let Some(mut stream) = self.pending.remove(&fd) else {
            return;
        };
        let mut buf = [0u8; MAX_REQUEST_LEN];
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending.insert(fd, stream);
                return;
            }
            Err(e) => {
                self.log(&format!("Reading request on ctl connection {fd}: {e}"));
                return;
            }
        };
        let req = match Request::parse(buf.get(..n).unwrap_or_default()) {
            Ok(r) => r,
            Err(e) => {
                self.log(&format!("ctl connection {fd}: {e}; connection closed"));
                return;
            }
        };
        match self.new_endpoint(fd, stream, &req) {
            Ok(port) => self.log(&format!(
                "new endpoint {fd} on port {port} (v{} request{}): {}",
                req.version,
                if req.sock.is_abstract() {
                    ", abstract client socket"
                } else {
                    ""
                },
                req.description
            )),
            Err(msg) => self.log(&format!("ctl connection {fd}: {msg}; connection closed")),
        }
    }

    fn new_endpoint(&mut self, id: RawFd, ctl: UnixStream, req: &Request) -> Result<u16, String> {
        let mut user = None;
        let peer = socket::getsockopt(&ctl, socket::sockopt::PeerCredentials)
            .map_err(|e| format!("SO_PEERCRED: {e}"))?;
        let client_addr = match req.sock.path() {
            Some(path) => {
                let p = Path::new(OsStr::from_bytes(path));
                nix::unistd::access(
                    p,
                    nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
                )
                .map_err(|e| format!("client data socket {} not accessible: {e}", p.display()))?;
                let owner = peer_owns_socket(p, peer.uid(), peer.pid())?;
                user = Some(owner);
                UnixAddr::new(p).map_err(|e| format!("client data socket {}: {e}", p.display()))?
            }
            None => UnixAddr::new_abstract(req.sock.raw_path().get(1..).unwrap_or_default())
                .map_err(|e| format!("abstract client data socket: {e}"))?,
        };
        let data = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        connect_as_peer(data.as_raw_fd(), &client_addr, peer.uid(), peer.gid())
            .map_err(|e| format!("Connecting to client data socket {client_addr}: {e}"))?;
        let id = u32::try_from(id).map_err(|_| "bad fd".to_string())?;
        let port_req = match req.kind {
            RequestKind::NewPort0 => PortRequest::Port0,
            RequestKind::NewControl => PortRequest::from_number(req.port),
        };
        let now = self.start.elapsed();
        let port = self
            .switch
            .add_endpoint(port_req, id, user, &req.description, now)
            .map_err(|e| format!("port request {} refused: {e}", req.port))?;
        let data_path = self.dir.join(format!("{port:03}.{}", data.as_raw_fd()));
        let setup = (|| -> Result<(), String> {
            match fs::remove_file(&data_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(format!(
                        "Binding to data socket {}: {e}",
                        data_path.display()
                    ))
                }
            }
            let addr = UnixAddr::new(&data_path).map_err(|e| e.to_string())?;
            socket::bind(data.as_raw_fd(), &addr)
                .map_err(|e| format!("Binding to data socket {}: {e}", data_path.display()))?;
            let root = nix::unistd::geteuid().is_root();
            let owner = if root { user } else { None };
            let mode = self.config.ctl_mode();
            let _ = chmod(
                &data_path,
                if owner.is_some() { mode & 0o700 } else { mode },
            );
            if owner.is_some() || self.config.group.is_some() {
                nix::unistd::chown(
                    &data_path,
                    owner.map(Into::into),
                    self.config.group.map(Into::into),
                )
                .map_err(|e| format!("chown: {e}"))?;
            }
            let reply = encode_reply(data_path.as_os_str().as_bytes())
                .ok_or_else(|| format!("data socket path {} too long", data_path.display()))?;
            (&ctl)
                .write_all(&reply)
                .map_err(|e| format!("Sending data socket name: {e}"))
        })();
        if let Err(e) = setup {
            self.switch.remove_endpoint(id);
            let _ = fs::remove_file(&data_path);
            return Err(e);
        }
        let _ = ctl.set_nonblocking(true);
        self.endpoints.insert(
            id,
            Endpoint {
                ctl,
                data,
                data_path,
                port,
                warned_short: false,
                warned_long: false,
                warned_send: false,
                wait_budget: CONGESTION_WAIT,
                budget_at: now,
            },
        );
        Ok(port)
    }

    /// Data or EOF on an endpoint's control connection.
    fn handle_ctl(&mut self, fd: RawFd) {
        let Ok(id) = u32::try_from(fd) else { return };
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let mut buf = [0u8; MAX_REQUEST_LEN];
        match ep.ctl.read(&mut buf) {
            Ok(0) => {
                let port = ep.port;
                self.close_endpoint(id);
                self.log(&format!(
                    "endpoint {id} on port {port} closed its control connection"
                ));
            }
            Ok(n) => {
                let port = ep.port;
                self.log(&format!(
                    "endpoint {id} on port {port}: {n} unexpected bytes on its control connection (ignored)"
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                let port = ep.port;
                self.close_endpoint(id);
                self.log(&format!(
                    "endpoint {id} on port {port}: control connection error: {e}"
                ));
            }
        }
    }

    fn close_endpoint(&mut self, id: EndpointId) {
        self.unplugged.remove(&id);
        self.switch.remove_endpoint(id);
        if let Some(ep) = self.endpoints.remove(&id) {
            let _ = fs::remove_file(&ep.data_path);
        }
    }

    /// The hot path: one batch from one endpoint.
    fn handle_data(&mut self, id: EndpointId, fd: RawFd, b: &mut Batch) {
        let Some(in_port) = self.endpoints.get(&id).map(|e| e.port) else {
            return;
        };
        // Cable out: what it sends is read and dropped.
        let cut = self.unplugged.contains_key(&id);
        for i in 0..BATCH {
            let (Some(buf), Some(iov), Some(hdr)) = (
                b.bufs.get_mut(i),
                b.recv_iov.get_mut(i),
                b.recv_hdr.get_mut(i),
            ) else {
                break;
            };
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = MAX_FRAME;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_name = std::ptr::null_mut();
            hdr.msg_hdr.msg_namelen = 0;
            hdr.msg_len = 0;
        }
        // SAFETY: recv_hdr holds BATCH headers whose iovecs point into bufs, all
        // of which outlive the call; MSG_TRUNC makes msg_len the datagram's real length.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                b.recv_hdr.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if got <= 0 || cut {
            return;
        }
        let now = self.start.elapsed();
        let capture = self.pcap.is_some() || self.trace.is_some();
        // One wall-clock reading per batch: its frames arrived together.
        let wall = if self.pcap.is_some() {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
        } else {
            Duration::ZERO
        };
        b.sends.clear();
        for i in 0..got as usize {
            let real = b.recv_hdr.get(i).map(|h| h.msg_len as usize).unwrap_or(0);
            let len = real.min(MAX_FRAME);
            if let Some(l) = b.lens.get_mut(i) {
                *l = len;
            }
            if !(MIN_FRAME..=MAX_FRAME).contains(&real) {
                self.warn_frame(id, in_port, real);
                if real < MIN_FRAME {
                    continue;
                }
            }
            let frame = b.bufs.get(i).and_then(|f| f.get(..len)).unwrap_or_default();
            let outcome = self
                .switch
                .forward_into(in_port, frame, now, &mut b.out_ports);
            if let Learned::Moved { from } | Learned::MoveRefused { from } = outcome.learned {
                if let Some(src) = frame.get(6..12).and_then(MacAddr::from_slice) {
                    self.log(&format!(
                        "MAC {src} moved from port {from} to port {in_port}"
                    ));
                }
            }
            if capture {
                self.capture(in_port, &b.out_ports, frame, now, wall);
            }
            if let Delivery::Dropped(_) = outcome.delivery {
                continue;
            }
            let mut off = 0;
            if outcome.untag && len >= 16 {
                // TAG2UNTAG: move the MACs over the tag; the frame starts 4 bytes later.
                if let Some(buf) = b.bufs.get_mut(i) {
                    buf.copy_within(0..12, 4);
                    off = 4;
                }
            }
            if let Some(o) = b.offs.get_mut(i) {
                *o = off;
            }
            for &p in &b.out_ports {
                for e in self.switch.endpoints(p) {
                    if let Some(ep) = self.endpoints.get(&e.id) {
                        b.sends.push((ep.data.as_raw_fd(), i, e.id));
                    }
                }
            }
        }
        self.flush_sends(b, id);
    }

    fn warn_frame(&mut self, id: EndpointId, port: u16, len: usize) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let msg = if len < MIN_FRAME {
            if std::mem::replace(&mut ep.warned_short, true) {
                return;
            }
            format!("port {port} endpoint {id}: dropped a {len}-byte frame, shorter than an Ethernet header (further ones dropped silently)")
        } else {
            if std::mem::replace(&mut ep.warned_long, true) {
                return;
            }
            format!("port {port} endpoint {id}: {len}-byte frame truncated to {MAX_FRAME} bytes, as vde_switch does (further ones truncated silently)")
        };
        self.log(&msg);
    }

    fn flush_sends(&mut self, b: &mut Batch, src: EndpointId) {
        if b.sends.is_empty() {
            return;
        }
        // Group by destination; the frame index keeps each destination's order.
        b.sends.sort_unstable_by_key(|&(fd, i, _)| (fd, i));
        let mut start = 0;
        while start < b.sends.len() {
            let Some(&(fd, _, id)) = b.sends.get(start) else {
                break;
            };
            let mut end = start;
            while b.sends.get(end).is_some_and(|s| s.0 == fd) {
                end += 1;
            }
            let n = (end - start).min(b.send_hdr.len());
            for k in 0..n {
                let Some(&(_, i, _)) = b.sends.get(start + k) else {
                    break;
                };
                let (Some(buf), Some(&len)) = (b.bufs.get_mut(i), b.lens.get(i)) else {
                    break;
                };
                let (Some(iov), Some(hdr)) = (b.send_iov.get_mut(k), b.send_hdr.get_mut(k)) else {
                    break;
                };
                let off = b.offs.get(i).copied().unwrap_or(0).min(len);
                iov.iov_base = buf[off..].as_mut_ptr().cast();
                iov.iov_len = len - off;
                hdr.msg_hdr.msg_iov = iov;
                hdr.msg_hdr.msg_iovlen = 1;
                hdr.msg_hdr.msg_name = std::ptr::null_mut();
                hdr.msg_hdr.msg_namelen = 0;
            }
            let mut sent = 0usize;
            while sent < n {
                // SAFETY: send_hdr[sent..n] are initialized headers whose iovecs
                // point into bufs, alive for the call.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        b.send_hdr.as_mut_ptr().add(sent),
                        (n - sent) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if r <= 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.warn_send(id, &e);
                        // Skip the failing frame and try the rest.
                        sent += 1;
                        continue;
                    }
                    // The client's queue is full. vde_switch drops right away; we
                    // give a reader that is merely behind a moment (back-pressure
                    // instead of loss), within a budget so that a slow or stuck
                    // client cannot stall the other ports.
                    if self.wait_for_room(id, fd, src) {
                        continue;
                    }
                    break;
                }
                sent += r as usize;
            }
            start = end;
        }
        b.sends.clear();
    }

    /// Waits for room on endpoint `id`'s full socket within its budget; true
    /// if there is room.
    fn wait_for_room(&mut self, id: EndpointId, fd: RawFd, src: EndpointId) -> bool {
        let now = self.start.elapsed();
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return false;
        };
        let refill = now.saturating_sub(ep.budget_at).as_secs_f64()
            * CONGESTION_BUDGET_PER_SEC.as_secs_f64();
        ep.wait_budget = (ep.wait_budget + Duration::from_secs_f64(refill)).min(CONGESTION_WAIT);
        ep.budget_at = now;
        let ms = ep.wait_budget.as_millis() as i32;
        if ms < 1 {
            return false;
        }
        let room = wait_writable(fd, ms);
        let after = self.start.elapsed();
        // A wait that ended with room while nobody but this batch's sender had
        // frames waiting held up no one else: it is free (the sender is paced
        // by its reader, without loss). Every other wait is charged.
        if room && !self.others_pending(src, id) {
            return true;
        }
        if let Some(ep) = self.endpoints.get_mut(&id) {
            ep.wait_budget = ep.wait_budget.saturating_sub(after.saturating_sub(now));
            ep.budget_at = after;
        }
        room
    }

    /// True if an endpoint other than `a` and `b` has frames waiting to be read.
    fn others_pending(&mut self, a: EndpointId, b: EndpointId) -> bool {
        let mut fds = std::mem::take(&mut self.pending_poll);
        fds.clear();
        fds.extend(
            self.endpoints
                .iter()
                .filter(|(&e, _)| e != a && e != b)
                .map(|(_, ep)| libc::pollfd {
                    fd: ep.data.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }),
        );
        // SAFETY: fds is a valid, initialized array of pollfd of that length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        self.pending_poll = fds;
        n != 0
    }

    fn warn_send(&mut self, id: EndpointId, e: &io::Error) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        if std::mem::replace(&mut ep.warned_send, true) {
            return;
        }
        let port = ep.port;
        self.log(&format!(
            "send_sockaddr port {port}: {e} (endpoint {id}; further send errors on it not logged)"
        ));
    }

    fn capture(&mut self, in_port: u16, out: &[u16], frame: &[u8], now: Duration, wall: Duration) {
        if let Some(p) = &mut self.pcap {
            if let Err(e) = p.record(wall, frame) {
                self.pcap = None;
                self.log(&format!("pcap write failed, capture stopped: {e}"));
            }
        }
        if let Some(t) = &mut self.trace {
            self.trace_seq += 1;
            let line = trace_line(self.trace_seq, now, in_port, out, frame);
            if let Err(e) = writeln!(t, "{line}") {
                self.trace = None;
                self.log(&format!("trace write failed, tracing stopped: {e}"));
            }
        }
    }

    fn flush_capture(&mut self) {
        if let Some(p) = &mut self.pcap {
            if let Err(e) = p.flush() {
                self.pcap = None;
                self.log(&format!("pcap write failed, capture stopped: {e}"));
            }
        }
        if let Some(t) = &mut self.trace {
            let _ = t.flush();
        }
    }

    fn accept_mgmt(&mut self) {
        let Some(l) = &self.mgmt_listener else { return };
        while let Ok((mut s, _)) = l.accept() {
            let _ = s.write_all(format!("{BANNER}{PROMPT}").as_bytes());
            let _ = s.set_nonblocking(true);
            self.mgmt.insert(s.as_raw_fd(), s);
        }
    }

    fn handle_mgmt(&mut self, fd: RawFd) {
        let Some(mut s) = self.mgmt.remove(&fd) else {
            return;
        };
        let mut buf = [0u8; 128];
        let n = match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.mgmt.insert(fd, s);
                return;
            }
            Err(_) => return,
        };
        let line = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        let cable = line
            .trim()
            .strip_prefix("umltest/cable ")
            .filter(|_| self.config.cable_command)
            .map(str::to_string);
        let (out, action) = match cable {
            Some(args) => (self.cable(&args), Action::None),
            None => self.console().execute(&line),
        };
        let _ = s.write_all(out.as_bytes());
        match action {
            Action::Logout => return,
            Action::Shutdown => {
                self.log("Shutdown from mgmt command");
                self.shutdown = true;
                return;
            }
            other => {
                let extra = self.apply(other, Some(&mut s));
                let _ = s.write_all(extra.as_bytes());
            }
        }
        let _ = s.write_all(PROMPT.as_bytes());
        self.mgmt.insert(fd, s);
    }

    /// `umltest/cable PORT 0|1` (see [`DaemonConfig::cable_command`]); the reply
    /// in the console's `1000 Success` / `1NNN error` form.
    fn cable(&mut self, args: &str) -> String {
        let words: Vec<&str> = args.split_whitespace().collect();
        let (port, up) = match words.as_slice() {
            [port, up @ ("0" | "1")] => match port.parse::<u16>() {
                Ok(p) => (p, *up == "1"),
                Err(_) => return "1022 Invalid argument\n".into(),
            },
            _ => return "1022 Invalid argument\n".into(),
        };
        let now = self.start.elapsed();
        let mut changed = 0;
        if up {
            let back: Vec<EndpointId> = self
                .unplugged
                .iter()
                .filter(|(_, (p, _, _))| *p == port)
                .map(|(id, _)| *id)
                .collect();
            for id in back {
                if let Some((p, user, descr)) = self.unplugged.remove(&id) {
                    if self
                        .switch
                        .add_endpoint(PortRequest::Number(p), id, user, &descr, now)
                        .is_ok()
                    {
                        changed += 1;
                    }
                }
            }
        } else {
            let user = self.switch.port(port).and_then(|p| p.cur_user);
            let here: Vec<(EndpointId, String)> = self
                .switch
                .endpoints(port)
                .iter()
                .map(|e| (e.id, e.description.clone()))
                .collect();
            for (id, descr) in here {
                if self.switch.remove_endpoint(id).is_some() {
                    self.unplugged.insert(id, (port, user, descr));
                    changed += 1;
                }
            }
        }
        if changed == 0 && !self.unplugged.values().any(|(p, _, _)| *p == port) && !up {
            return "1006 No such device or address\n".into();
        }
        self.log(&format!(
            "port {port}: cable {} ({changed} endpoints)",
            if up { "in" } else { "out" }
        ));
        "1000 Success\n".into()
    }

    /// Returns false on EOF.
    fn handle_stdin(&mut self) -> bool {
        let mut buf = [0u8; 128];
        // SAFETY: reading into a stack buffer of that length from fd 0.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return false;
        }
        let line = String::from_utf8_lossy(buf.get(..n as usize).unwrap_or_default()).into_owned();
        let (out, action) = self.console().execute(&line);
        let mut stdout = io::stdout();
        let _ = stdout.write_all(out.as_bytes());
        match action {
            Action::Logout => {}
            Action::Shutdown => {
                self.log("Shutdown from mgmt command");
                self.shutdown = true;
            }
            other => {
                let extra = self.apply(other, None);
                let _ = stdout.write_all(extra.as_bytes());
            }
        }
        let _ = stdout.write_all(PROMPT.as_bytes());
        let _ = stdout.flush();
        true
    }

    /// Carries out a console action; returns extra output (for `load`).
    fn apply(&mut self, action: Action, _to: Option<&mut UnixStream>) -> String {
        match action {
            Action::None | Action::Logout => String::new(),
            Action::Shutdown => {
                self.shutdown = true;
                String::new()
            }
            Action::CloseEndpoint(id) => {
                // The core already dropped it; close its sockets.
                if let Some(ep) = self.endpoints.remove(&id) {
                    let _ = fs::remove_file(&ep.data_path);
                    self.log(&format!(
                        "endpoint {id} on port {} closed by port/epclose",
                        ep.port
                    ));
                }
                String::new()
            }
            Action::Load(path) => match fs::read(&path) {
                Err(e) => format!(
                    "1{:03} {}\n",
                    e.raw_os_error().unwrap_or(libc::ENOENT),
                    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)).desc()
                ),
                Ok(bytes) => {
                    let mut out = String::new();
                    for line in rc_lines(&bytes) {
                        out.push_str(&format!("vde[{path}]: {line}\n"));
                        let (o, a) = self.console().execute(&line);
                        out.push_str(&o);
                        if a == Action::Shutdown {
                            self.shutdown = true;
                        }
                        if let Action::CloseEndpoint(_) = a {
                            out.push_str(&self.apply(a, None));
                        }
                    }
                    out.push_str("1000 Success\n");
                    out
                }
            },
        }
    }

    fn cleanup(&mut self) {
        self.flush_capture();
        if let Some(p) = self.pcap.take() {
            if let Err(e) = p.finish() {
                self.log(&format!("pcap write failed: {e}"));
            }
        }
        for s in self.mgmt.values_mut() {
            let _ = s.write_all(super::console::END_OF_SESSION.as_bytes());
        }
        self.mgmt.clear();
        self.pending.clear();
        let ids: Vec<EndpointId> = self.endpoints.keys().copied().collect();
        for id in ids {
            self.close_endpoint(id);
        }
        self.ctl_listener = None;
        if self.mgmt_listener.take().is_some() {
            if let Some(p) = &self.config.mgmt {
                let _ = fs::remove_file(p);
            }
        }
        let ctl = self.dir.join("ctl");
        if still_used(&ctl) {
            self.log("Cleanup not removing files");
        } else if let Err(e) = fs::remove_file(&ctl) {
            self.log(&format!(
                "Could not remove ctl socket '{}': {e}",
                ctl.display()
            ));
        } else if let Err(e) = fs::remove_dir(&self.dir) {
            self.log(&format!(
                "Could not remove ctl dir '{}': {e}",
                self.dir.display()
            ));
        }
        if let Some(p) = &self.config.pidfile {
            let _ = fs::remove_file(p);
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Data(EndpointId),
    Ctl,
    Pending,
    Mgmt,
    MgmtListener,
    CtlListener,
    Signal,
    Stdin,
}

/// rc-file lines as vde_switch reads them (`fgets` into 128 bytes: longer
/// lines are split; blank lines and `#` comments skipped by the console).
pub fn rc_lines(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for raw in bytes.split(|&b| b == b'\n') {
        for chunk in raw.chunks(127) {
            out.push(String::from_utf8_lossy(chunk).into_owned());
        }
    }
    out
}

/// Removes `NNN.M` data sockets left by a crashed switch; returns how many.
fn remove_stale_data_sockets(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let is_data = name.len() > 4
            && name.as_bytes().get(3) == Some(&b'.')
            && name
                .bytes()
                .enumerate()
                .all(|(i, b)| i == 3 || b.is_ascii_digit());
        if is_data && fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// Writes `<pid>\n` to `path` with `O_CREAT|O_EXCL`, as vde_switch's `-p`.
pub fn write_pidfile(path: &Path) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    writeln!(f, "{}", std::process::id())
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and the threads it
/// starts later), so that they queue for [`Daemon::run`]'s signalfd. Call it
/// before [`Daemon::bind`] in a process that serves a switch: a signal that
/// arrives between creating the sockets and entering the loop then still
/// shuts down cleanly instead of killing the process and leaving the sockets.
pub fn block_shutdown_signals() -> io::Result<SigSet> {
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().map_err(io::Error::from)?;
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_modes_like_vde_switch() {
        let mut c = DaemonConfig::new("/tmp/x");
        assert_eq!((c.ctl_mode(), c.dir_mode()), (0o600, 0o2700));
        c.mode = Some(0o660);
        assert_eq!(c.dir_mode(), 0o2770);
        c.mode = Some(0o666);
        assert_eq!(c.dir_mode(), 0o2777);
        c.mode = Some(0o600);
        assert_eq!(c.dir_mode(), 0o2700);
        // --dirmode wins over -m's guess; alone it also sets the ctl mode.
        c.dirmode = Some(0o2711);
        c.mode = Some(0o640);
        assert_eq!((c.ctl_mode(), c.dir_mode()), (0o640, 0o2711));
        c.mode = None;
        c.dirmode = Some(0o750);
        assert_eq!((c.ctl_mode(), c.dir_mode()), (0o640, 0o750));
    }

    #[test]
    fn rc_lines_split_long_lines() {
        let mut b = b"port/create 2\n# c\n\n".to_vec();
        b.extend_from_slice(&[b'a'; 130]);
        let l = rc_lines(&b);
        assert_eq!(l[0], "port/create 2");
        // Empty lines vanish (the console would skip them anyway).
        assert_eq!(l.len(), 4);
        assert_eq!((l[2].len(), l[3].len()), (127, 3));
    }
}
