//! Block devices: the [`BlockDevice`] trait and [`Ubd`], a UML 6.1 `ubdN`
//! device (a plain image, or a COW file over a backing file) opened exactly as
//! the kernel's `ubd_kern.c` does, with the kernel's log lines.
//!
//! # The API the sim calls
//!
//! ```no_run
//! use umltest::block::{BlockDevice, Ubd, UbdFlags, UbdSpec};
//! // ubd0=h1.cow,fs.ext4 for a machine whose working directory is the run folder:
//! let spec = UbdSpec {
//!     index: 0,
//!     file: "h1.cow".into(),
//!     backing: Some("fs.ext4".into()),
//!     flags: UbdFlags::default(),
//!     cwd: "/tmp/run".into(),
//!     owner_pid: 1001,
//!     confined: true,
//!     readable: vec![],
//! };
//! let opened = Ubd::open(&spec);
//! for line in &opened.log {
//!     println!("{}", line.text); // e.g. Creating "h1.cow" as COW file for "fs.ext4"
//! }
//! let mut dev = opened.result.expect("open");
//! let mut sector = [0u8; 512];
//! dev.read_at(&mut sector, 1024).expect("read");
//! dev.write_at(b"hello", 1024).expect("write");
//! ```
//!
//! - [`Ubd::open`] never panics and always returns the log lines the kernel
//!   would print (`Creating ...`, `Backing file mismatch ...`, `mtime mismatch
//!   (%lld vs %lld) of COW header vs backing file`, `Failed to open '...', errno
//!   = 22`, `ubda: Can't open "...": errno = 22`, `read_cow_header - ...`), in
//!   order, whether it succeeds or fails. It does both of the kernel's stages:
//!   the size stage (`ubd_file_size`, at boot; its failure is logged as `Failed
//!   to initialize ubd device N :Couldn't determine size of device's file`) and
//!   the open stage (`ubd_open_dev`; the real kernel repeats it, and its
//!   messages, on each first open of the device).
//! - Relative paths resolve against [`UbdSpec::cwd`]; messages show them as given.
//! - Locks: the kernel's `fcntl(F_SETLK)` (write lock read-write, read lock
//!   read-only; none with flag `c`) is taken on the host, and also in an
//!   in-process table, so two sim machines in one process conflict like two
//!   `linux.uml` processes; the pid in `F_SETLK failed, file already locked by
//!   pid N` is the holder's [`UbdSpec::owner_pid`] (or the real pid of another
//!   process). Locks are released when the [`Ubd`] is dropped.
//! - [`UbdSpec::confined`]: the host lets the machine write only beneath its
//!   working directory, as the uml backend's sandbox does; a file elsewhere
//!   (a lab's external disk) answers a write open with EACCES, and the kernel's
//!   `open_ubd_file` then silently reopens it read-only, so the device is
//!   read-only (`/sys/block/ubdX/ro` is 1; UML 6.1's `ubd_open` lets writers
//!   open it, `blkdev_write_iter` fails their writes with EPERM). Any other file
//!   outside it (a host file named by a COW header) cannot be opened at all.
//! - I/O semantics are the kernel's: see [`crate::cow::file`].

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::cow::create::{absolutize, init_cow_file};
use crate::cow::file::{pread_zero_fill, read_header, round_sector, CowFile};
use crate::cow::{CowError, Header};

/// A disk as a guest sees it: byte-addressed, fixed size.
pub trait BlockDevice {
    /// Size in bytes (a multiple of 512 for ubd devices).
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the range must lie within the device.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError>;
    /// Writes `data` at `offset`; the range must lie within the device.
    fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), BlockError>;
    /// Makes written data durable.
    fn flush(&mut self) -> Result<(), BlockError>;
    /// True if writes are refused.
    fn is_read_only(&self) -> bool;
}

/// Errors of block devices.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The open stage failed with this errno (the kernel's `ubdX: Can't open`).
    #[error("{name}: Can't open \"{}\": errno = {errno}", file.display())]
    Open {
        name: String,
        file: PathBuf,
        errno: i32,
    },
    /// The size stage failed.
    #[error("Failed to initialize ubd device {index} :Couldn't determine size of device's file")]
    Size { index: u32 },
    /// A write to a read-only device.
    #[error("{name}: write to a read-only device")]
    ReadOnly { name: String },
    /// Beyond the end of the device.
    #[error("{name}: {len} bytes at offset {offset} are beyond the end of the {size}-byte device")]
    OutOfRange {
        name: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// The spec combines flag `d` with a backing file.
    #[error("ubd{index}: Can't specify both 'd' and a cow file")]
    NoCowWithBacking { index: u32 },
    /// I/O on a COW device.
    #[error(transparent)]
    Cow(#[from] CowError),
    /// I/O on a plain device.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// UML's per-device flags (`ubd0rsdc=...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UbdFlags {
    /// `r`: read-only.
    pub read_only: bool,
    /// `s`: `O_SYNC`.
    pub sync: bool,
    /// `d`: "data" disk: never look for a COW header.
    pub no_cow: bool,
    /// `c`: shared (cluster) disk: no host locks.
    pub shared: bool,
    /// `t`: no TRIM/discard.
    pub no_trim: bool,
}

/// What a `ubdN` option configures, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UbdSpec {
    /// 0 for `ubd0` (`ubda`).
    pub index: u32,
    /// The image or COW file.
    pub file: PathBuf,
    /// The backing file (`ubd0=cow,backing`).
    pub backing: Option<PathBuf>,
    pub flags: UbdFlags,
    /// The machine's working directory.
    pub cwd: PathBuf,
    /// The pid other openers are told holds the lock.
    pub owner_pid: u32,
    /// Files outside `cwd` cannot be opened for writing (EACCES), as in the
    /// uml backend's sandbox, where a lab's external disks are read-only.
    pub confined: bool,
    /// When `confined`: the files outside `cwd` that may be opened for reading
    /// (the lab's external disks); any other (a host file a COW header names)
    /// cannot be opened at all (EACCES).
    pub readable: Vec<PathBuf>,
}

/// Kernel log levels of the lines below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `KERN_ERR` (3).
    Err,
    /// `KERN_INFO` (6).
    Info,
    /// No level given (default message level).
    Default,
}

/// One line the kernel prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub text: String,
}

/// The result of [`Ubd::open`]: the device or the error, and the log either way.
#[derive(Debug)]
pub struct UbdOpen {
    pub result: Result<Ubd, BlockError>,
    pub log: Vec<LogLine>,
}

/// A held lock: in the process table and on the host.
#[derive(Debug)]
struct LockGuard {
    key: (u64, u64),
    owner: u32,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Ok(mut table) = LOCKS.lock() {
            if let Some(v) = table.get_mut(&self.key) {
                if let Some(i) = v.iter().position(|&(o, _)| o == self.owner) {
                    v.remove(i);
                }
                if v.is_empty() {
                    table.remove(&self.key);
                }
            }
        }
    }
}

/// Holders of one file's lock: (owner pid, exclusive).
type Holders = Vec<(u32, bool)>;
/// (dev, ino) -> holders.
static LOCKS: Mutex<BTreeMap<(u64, u64), Holders>> = Mutex::new(BTreeMap::new());

/// `os_lock_file`: returns the conflicting pid on failure.
fn lock_file(file: &File, exclusive: bool, owner: u32) -> Result<LockGuard, (i32, i32)> {
    let meta = file
        .metadata()
        .map_err(|e| (e.raw_os_error().unwrap_or(libc::EIO), 0))?;
    let key = (meta.dev(), meta.ino());
    let mut table = LOCKS.lock().map_err(|_| (libc::EIO, 0))?;
    let holders = table.entry(key).or_default();
    if let Some(&(pid, _)) = holders
        .iter()
        .find(|&&(o, ex)| o != owner && (ex || exclusive))
    {
        return Err((libc::EAGAIN, pid as i32));
    }
    // The host lock, against other processes (a real linux.uml).
    let mut fl = libc::flock {
        l_type: if exclusive {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: F_SETLK/F_GETLK read and write only the flock struct we pass.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
    if r != 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EAGAIN);
        // SAFETY: as above.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
        if holders.is_empty() {
            table.remove(&key);
        }
        return Err((errno, fl.l_pid));
    }
    holders.push((owner, exclusive));
    Ok(LockGuard { key, owner })
}

/// A plain image device.
#[derive(Debug)]
pub struct PlainDevice {
    name: String,
    file: File,
    path: PathBuf,
    size: u64,
    writable: bool,
    _lock: Option<LockGuard>,
}

/// A COW device.
#[derive(Debug)]
pub struct CowDevice {
    name: String,
    cow: CowFile,
    _locks: Vec<LockGuard>,
}

impl CowDevice {
    /// The COW file underneath (header, bitmap, dirty runs).
    pub fn cow(&self) -> &CowFile {
        &self.cow
    }

    /// True if the real kernel hangs forever on the first write to this device:
    /// with a bitmap of 8 bytes or less (backing <= 32 KiB) its "last word"
    /// adjustment underflows (`cow-format.md` §6). Writes here succeed; a sim
    /// that wants the kernel's behaviour should stall the writing process instead.
    pub fn kernel_hangs_on_write(&self) -> bool {
        self.cow.layout().bitmap_len <= 8
    }
}

/// A UML ubd device.
#[derive(Debug)]
pub enum Ubd {
    Plain(PlainDevice),
    Cow(CowDevice),
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn disk_name(index: u32) -> String {
    let letter = char::from_u32(u32::from(b'a') + index.min(25)).unwrap_or('?');
    format!("ubd{letter}")
}

struct Log(Vec<LogLine>);
impl Log {
    fn err(&mut self, text: String) {
        self.0.push(LogLine {
            level: Level::Err,
            text,
        });
    }
    fn info(&mut self, text: String) {
        self.0.push(LogLine {
            level: Level::Info,
            text,
        });
    }
    fn plain(&mut self, text: String) {
        self.0.push(LogLine {
            level: Level::Default,
            text,
        });
    }
    fn header(&mut self, r: &Result<Header, CowError>) {
        let msgs = match r {
            Ok(h) => h.kernel_messages(),
            Err(CowError::Header { source, .. }) => source.kernel_messages(),
            Err(_) => vec![],
        };
        for m in msgs {
            self.plain(m);
        }
    }
}

/// What the host lets a machine do with a file (see [`UbdSpec::confined`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostAccess {
    All,
    ReadOnly,
    None,
}

impl UbdSpec {
    fn host_access(&self, path: &Path) -> HostAccess {
        if !self.confined || crate::cow::open::lexically_beneath(&self.cwd, path) {
            return HostAccess::All;
        }
        let id = |p: &Path| std::fs::metadata(self.cwd.join(p)).map(|m| (m.dev(), m.ino()));
        match id(path) {
            Ok(me) if self.readable.iter().any(|r| id(r).is_ok_and(|x| x == me)) => {
                HostAccess::ReadOnly
            }
            _ => HostAccess::None,
        }
    }
}

/// `os_open_file` with UML's flags; `create` adds `O_CREAT` (mode 0644).
/// `denied`: the host refuses write access to the file (EACCES), as a sandbox
/// or a read-only host file does.
fn open_file(
    path: &Path,
    write: bool,
    sync: bool,
    create: bool,
    host: HostAccess,
) -> std::io::Result<File> {
    let denied = match host {
        HostAccess::All => false,
        HostAccess::ReadOnly => write || create,
        HostAccess::None => true,
    };
    if denied {
        // The lookup fails first: a missing file is ENOENT, not EACCES.
        if !create {
            std::fs::metadata(path)?;
        }
        return Err(std::io::Error::from_raw_os_error(libc::EACCES));
    }
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(write).create(create).mode(0o644);
    if sync {
        o.custom_flags(libc::O_SYNC);
    }
    o.open(path)
}

/// The kernel's `backing_file_mismatch`, logging its messages.
fn backing_mismatch(log: &mut Log, shown: &Path, abs: &Path, header: &Header) -> Result<u64, i32> {
    let meta = match std::fs::metadata(abs) {
        Ok(m) => m,
        Err(e) => {
            log.err(format!(
                "Failed to get modification time of backing file \"{}\", err = {}",
                shown.display(),
                errno_of(&e)
            ));
            return Err(errno_of(&e));
        }
    };
    let size = match crate::cow::backing_stat(abs) {
        Ok((s, _)) => s,
        Err(e) => {
            log.err(format!(
                "Failed to get size of backing file \"{}\", err = {}",
                shown.display(),
                errno_of(&e)
            ));
            return Err(errno_of(&e));
        }
    };
    if header.size != size {
        log.err(format!(
            "Size mismatch ({} vs {}) of COW header vs backing file",
            header.size, size
        ));
        return Err(libc::EINVAL);
    }
    if i64::from(header.mtime) != meta.mtime() {
        log.err(format!(
            "mtime mismatch ({} vs {}) of COW header vs backing file",
            header.mtime,
            meta.mtime()
        ));
        return Err(libc::EINVAL);
    }
    Ok(size)
}

impl Ubd {
    /// Opens a ubd device as the UML 6.1 kernel does (see the module docs).
    pub fn open(spec: &UbdSpec) -> UbdOpen {
        let mut log = Log(Vec::new());
        let result = open_inner(spec, &mut log);
        UbdOpen { result, log: log.0 }
    }

    fn name(&self) -> &str {
        match self {
            Ubd::Plain(p) => &p.name,
            Ubd::Cow(c) => &c.name,
        }
    }

    /// The COW device, if this is one.
    pub fn as_cow(&self) -> Option<&CowDevice> {
        match self {
            Ubd::Cow(c) => Some(c),
            Ubd::Plain(_) => None,
        }
    }
}

fn open_inner(spec: &UbdSpec, log: &mut Log) -> Result<Ubd, BlockError> {
    let name = disk_name(spec.index);
    let abs = |p: &Path| spec.cwd.join(p);
    if spec.flags.no_cow && spec.backing.is_some() {
        return Err(BlockError::NoCowWithBacking { index: spec.index });
    }
    // Size stage (`ubd_file_size`): the command-line backing file, else the
    // header's backing file if the file is a COW file (even with flag d), else
    // the file itself.
    // (path as the kernel names it, path to stat)
    let (size_shown, size_file): (PathBuf, PathBuf) = match &spec.backing {
        Some(b) => (b.clone(), abs(b)),
        None => match File::open(abs(&spec.file)) {
            Err(_) => {
                log.err(format!(
                    "Failed to initialize ubd device {} :Couldn't determine size of device's file",
                    spec.index
                ));
                return Err(BlockError::Size { index: spec.index });
            }
            Ok(f) => {
                let r = read_header(&f, &spec.file);
                log.header(&r);
                match r {
                    Ok(h) => (h.backing_path(), abs(&h.backing_path())),
                    Err(_) => (spec.file.clone(), abs(&spec.file)),
                }
            }
        },
    };
    let dev_size = match crate::cow::backing_stat(&size_file) {
        Ok((s, _)) => s,
        Err(e) => {
            log.plain(format!(
                "Couldn't stat \"{}\" : err = {}",
                size_shown.display(),
                errno_of(&e)
            ));
            log.err(format!(
                "Failed to initialize ubd device {} :Couldn't determine size of device's file",
                spec.index
            ));
            return Err(BlockError::Size { index: spec.index });
        }
    };

    let fail = |log: &mut Log, errno: i32| {
        log.plain(format!(
            "Failed to open '{}', errno = {}",
            spec.file.display(),
            errno
        ));
        log.err(format!(
            "{name}: Can't open \"{}\": errno = {errno}",
            spec.file.display()
        ));
        BlockError::Open {
            name: name.clone(),
            file: spec.file.clone(),
            errno,
        }
    };

    // Open stage (`open_ubd_file`).
    let file_abs = abs(&spec.file);
    let host = spec.host_access(&spec.file);
    let mut writable = !spec.flags.read_only;
    let mut created: Option<Header> = None;
    let file = match open_file(&file_abs, writable, spec.flags.sync, false, host) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && spec.backing.is_some() => {
            // `create_cow_file`: O_CREAT, locked, header + one byte at the end.
            let backing = spec.backing.as_deref().unwrap_or(Path::new(""));
            let f = match open_file(&file_abs, writable, spec.flags.sync, true, host) {
                Ok(f) => f,
                Err(e) => {
                    log.err(format!(
                        "Open of COW file '{}' failed, errno = {}",
                        spec.file.display(),
                        errno_of(&e)
                    ));
                    return Err(fail(log, errno_of(&e)));
                }
            };
            let lock = lock_file(&f, writable, spec.owner_pid);
            if let Err((errno, pid)) = lock {
                log.err(format!("F_SETLK failed, file already locked by pid {pid}"));
                log.err(format!(
                    "Failed to lock '{}', err = {errno}",
                    spec.file.display()
                ));
                log.err(format!(
                    "Open of COW file '{}' failed, errno = {errno}",
                    spec.file.display()
                ));
                return Err(fail(log, errno));
            }
            drop(lock);
            let header = match crate::cow::create::new_header(backing, &spec.cwd, true) {
                Ok(h) => h,
                Err(e) => {
                    let errno = match &e {
                        CowError::Io { source, .. } => {
                            log.plain(format!(
                                "write_cow_header - backing file '{}' mtime request failed, err = {}",
                                String::from_utf8_lossy(
                                    &absolutize(backing, &spec.cwd, true).unwrap_or_default()
                                ),
                                errno_of(source)
                            ));
                            errno_of(source)
                        }
                        other => {
                            log.plain(other.to_string());
                            libc::EINVAL
                        }
                    };
                    return Err(fail(log, errno));
                }
            };
            if let Err(e) = init_cow_file(&f, &header) {
                log.plain(format!(
                    "write_cow_header - write of header to new COW file '{}' failed, err = {}",
                    spec.file.display(),
                    errno_of(&e)
                ));
                return Err(fail(log, errno_of(&e)));
            }
            log.info(format!(
                "Creating \"{}\" as COW file for \"{}\"",
                spec.file.display(),
                backing.display()
            ));
            created = Some(header);
            f
        }
        Err(e)
            if writable && matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) =>
        {
            // Silently fall back to read-only.
            writable = false;
            open_file(&file_abs, false, spec.flags.sync, false, host)
                .map_err(|e| fail(log, errno_of(&e)))?
        }
        Err(e) => return Err(fail(log, errno_of(&e))),
    };

    let mut locks = Vec::new();
    if created.is_some() {
        // `create_cow_file` locks the new file even on a shared (`c`) device.
        if let Ok(g) = lock_file(&file, writable, spec.owner_pid) {
            locks.push(g);
        }
    } else if spec.flags.shared {
        log.info(format!(
            "Not locking \"{}\" on the host",
            spec.file.display()
        ));
    } else {
        match lock_file(&file, writable, spec.owner_pid) {
            Ok(g) => locks.push(g),
            Err((errno, pid)) => {
                log.err(format!("F_SETLK failed, file already locked by pid {pid}"));
                log.err(format!(
                    "Failed to lock '{}', err = {errno}",
                    spec.file.display()
                ));
                return Err(fail(log, errno));
            }
        }
    }

    let plain = |file: File, writable: bool, locks: Vec<LockGuard>| {
        Ok(Ubd::Plain(PlainDevice {
            name: name.clone(),
            file,
            path: file_abs.clone(),
            size: round_sector(dev_size),
            writable,
            _lock: locks.into_iter().next(),
        }))
    };
    if spec.flags.no_cow {
        return plain(file, writable, locks);
    }
    let header = match created {
        Some(h) => h,
        None => {
            let r = read_header(&file, &spec.file);
            log.header(&r);
            match r {
                Ok(h) => h,
                Err(e) => {
                    if spec.backing.is_some() {
                        let errno = match &e {
                            CowError::Io { source, .. } => errno_of(source),
                            _ => libc::EINVAL,
                        };
                        log.err(format!(
                            "Failed to read COW header from COW file \"{}\", errno = {errno}",
                            spec.file.display()
                        ));
                        return Err(fail(log, errno));
                    }
                    return plain(file, writable, locks);
                }
            }
        }
    };

    // `path_requires_switch`, then `backing_file_mismatch`.
    let header_backing = header.backing_path();
    let mut backing_shown = header_backing.clone();
    let mut switched = false;
    if let Some(cmd) = &spec.backing {
        if cmd.as_os_str() != header_backing.as_os_str() {
            let asked = match std::fs::metadata(abs(cmd)) {
                Err(e) => {
                    log.err(format!(
                        "Couldn't stat '{}', err = {}",
                        cmd.display(),
                        errno_of(&e)
                    ));
                    false
                }
                Ok(m1) => match std::fs::metadata(abs(&header_backing)) {
                    Err(e) => {
                        log.err(format!(
                            "Couldn't stat '{}', err = {}",
                            header_backing.display(),
                            errno_of(&e)
                        ));
                        true
                    }
                    Ok(m2) if m1.dev() == m2.dev() && m1.ino() == m2.ino() => false,
                    Ok(_) => {
                        log.err(format!(
                            "Backing file mismatch - \"{}\" requested, \"{}\" specified in COW header of \"{}\"",
                            cmd.display(),
                            header_backing.display(),
                            spec.file.display()
                        ));
                        true
                    }
                },
            };
            if asked {
                let mut probe = Log(Vec::new());
                if backing_mismatch(&mut probe, cmd, &abs(cmd), &header).is_ok() {
                    log.err(format!("Switching backing file to '{}'", cmd.display()));
                    let switch = crate::cow::create::new_header(cmd, &spec.cwd, true)
                        .map_err(|e| match e {
                            CowError::Io { source, .. } => errno_of(&source),
                            _ => libc::EINVAL,
                        })
                        .and_then(|mut h| {
                            // write_cow_header keeps the old sectorsize/alignment.
                            h.sectorsize = header.sectorsize;
                            h.alignment = header.alignment;
                            file.write_all_at(&h.encode(), 0).map_err(|e| errno_of(&e))
                        });
                    if let Err(errno) = switch {
                        log.err(format!("Switch failed, errno = {errno}"));
                        return Err(fail(log, errno));
                    }
                    backing_shown = cmd.clone();
                    switched = true;
                } else {
                    // The kernel prints the requested file's mismatch, then
                    // silently checks the header's file instead.
                    log.0.extend(probe.0);
                }
            }
        }
    }
    if !switched {
        if let Err(errno) = backing_mismatch(log, &header_backing, &abs(&header_backing), &header) {
            return Err(fail(log, errno));
        }
    }

    // Open the backing read-only with the same lock rules (a read lock).
    let backing_abs = abs(&backing_shown);
    let backing = match open_file(
        &backing_abs,
        false,
        spec.flags.sync,
        false,
        spec.host_access(&backing_shown),
    ) {
        Ok(f) => f,
        // `ubd_open_dev` returns the error without a message of its own: only
        // the caller's "Can't open" line (checked on linux.uml 6.1 with a
        // backing file it may not read).
        Err(e) => {
            let errno = errno_of(&e);
            log.err(format!(
                "{name}: Can't open \"{}\": errno = {errno}",
                spec.file.display()
            ));
            return Err(BlockError::Open {
                name: name.clone(),
                file: spec.file.clone(),
                errno,
            });
        }
    };
    if spec.flags.shared {
        log.info(format!(
            "Not locking \"{}\" on the host",
            backing_shown.display()
        ));
    } else {
        match lock_file(&backing, false, spec.owner_pid) {
            Ok(g) => locks.push(g),
            Err((errno, pid)) => {
                log.err(format!("F_SETLK failed, file already locked by pid {pid}"));
                log.err(format!(
                    "Failed to lock '{}', err = {errno}",
                    backing_shown.display()
                ));
                return Err(fail(log, errno));
            }
        }
    }
    let cow = CowFile::from_files(
        file,
        &spec.file,
        backing,
        &backing_shown,
        dev_size,
        writable,
    )
    .map_err(|e| {
        log.plain(e.to_string());
        fail(log, libc::EINVAL)
    })?;
    Ok(Ubd::Cow(CowDevice {
        name,
        cow,
        _locks: locks,
    }))
}

impl BlockDevice for Ubd {
    fn size(&self) -> u64 {
        match self {
            Ubd::Plain(p) => p.size,
            Ubd::Cow(c) => c.cow.size(),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check(offset, buf.len())?;
        match self {
            Ubd::Plain(p) => {
                pread_zero_fill(&p.file, buf, offset).map_err(|source| BlockError::Io {
                    op: "read",
                    path: p.path.clone(),
                    source,
                })
            }
            Ubd::Cow(c) => Ok(c.cow.read_at(buf, offset)?),
        }
    }

    fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check(offset, data.len())?;
        if self.is_read_only() {
            return Err(BlockError::ReadOnly {
                name: self.name().to_string(),
            });
        }
        match self {
            Ubd::Plain(p) => p
                .file
                .write_all_at(data, offset)
                .map_err(|source| BlockError::Io {
                    op: "write",
                    path: p.path.clone(),
                    source,
                }),
            Ubd::Cow(c) => Ok(c.cow.write_at(data, offset)?),
        }
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        match self {
            Ubd::Plain(p) => p.file.sync_all().map_err(|source| BlockError::Io {
                op: "fsync",
                path: p.path.clone(),
                source,
            }),
            Ubd::Cow(c) => Ok(c.cow.flush()?),
        }
    }

    fn is_read_only(&self) -> bool {
        match self {
            Ubd::Plain(p) => !p.writable,
            Ubd::Cow(c) => !c.cow.is_writable(),
        }
    }
}

impl Ubd {
    fn check(&self, offset: u64, len: usize) -> Result<(), BlockError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(BlockError::OutOfRange {
                name: self.name().to_string(),
                offset,
                len: len as u64,
                size: self.size(),
            }),
        }
    }
}
