//! A read-write ext2/3/4 filesystem over a [`BlockDevice`], done by
//! e2fsprogs' libext2fs 1.47.0 (the library under `mkfs.ext4`, `e2fsck`,
//! `debugfs` and `fuse2fs`), linked statically and pinned by `build.rs`.
//! Why this implementation: `docs/ext4-choice.md`.
//!
//! ```no_run
//! use umltest::guestfs::ext4::{Ext4, MountMode};
//! # fn demo(dev: impl umltest::block::BlockDevice) -> Result<(), umltest::guestfs::ext4::FsError> {
//! let mut fs = Ext4::mount(dev, MountMode::ReadWrite)?;
//! fs.set_clock(1_700_000_000); // every timestamp written comes from here
//! fs.write_file("/root/notes.txt", b"hello\n", 0o644, 0, 0)?;
//! assert_eq!(fs.read_file("/root/notes.txt")?, b"hello\n");
//! let _dev = fs.unmount()?; // flushes bitmaps, group descriptors, superblock
//! # Ok(()) }
//! ```
//!
//! - Every block libext2fs reads or writes goes through the device (the C
//!   side, `csrc/ext4_shim.c`, is an io_manager calling back into Rust), so
//!   writes land in a COW file in the filesystem's block units. Data and
//!   inodes are written when the call returns; bitmaps, group descriptors and
//!   the superblock on [`Ext4::sync`] / [`Ext4::unmount`]. Dropping an
//!   [`Ext4`] without either is a crash: those are lost, as on a killed
//!   machine (e2fsck then fixes counts and bitmaps).
//! - Determinism: libext2fs takes every time it writes from `fs->now`, which
//!   [`Ext4::set_clock`] sets (the virtual clock); it uses no randomness when
//!   creating inodes or directory entries (i_generation stays 0), so the same
//!   operations on the same image give the same bytes.
//! - A filesystem that is only read costs its superblock and group
//!   descriptors: the bitmaps are read on the first change.
//! - Paths are relative to this filesystem's root (a leading `/` is
//!   optional); intermediate symbolic links are followed (at most 40, then
//!   `ELOOP`), the last one as each call says (POSIX: `stat` follows, `lstat`,
//!   `unlink`, `rename`, `readlink` do not).
//! - Every call exists by path and, for a VFS that walks paths itself
//!   (mount points, a working directory), by inode: `lookup_at`,
//!   `stat_inode`, `read_inode`, `write_inode`, `readdir_inode`, ...; and
//!   directory changes by (directory inode, name): `create_at`, `mkdir_at`,
//!   `unlink_at`, `rename_at`, ...
//! - Errors are errno values ([`Errno`]) with the operation and path, so the
//!   shell can print busybox's messages.
//!
//! Deliberate gaps of this increment: no journal (writes bypass it, as
//! fuse2fs does; a filesystem that needs recovery is refused read-write with
//! `EUCLEAN`, mounted read-only as `noload` would); no permission checks (the
//! caller, the VFS, does them); no xattrs/ACLs, device nodes, inline data
//! creation, `O_APPEND` atomicity; writing through a dangling symbolic link
//! does not create its target (`EEXIST`); names are returned lossily as
//! UTF-8; the timestamp granularity is one second (libext2fs' `fs->now`).

use std::ffi::{c_char, c_int, c_long, c_void, CStr, CString};
use std::fmt;

use crate::block::{BlockDevice, BlockError};

/// The ext4 root directory's inode number.
pub const ROOT_INO: u32 = 2;
const MAX_SYMLINKS: u32 = 40;
const NAME_MAX: usize = 255;
/// Largest chunk handed to libext2fs in one read/write call.
const CHUNK: usize = 1 << 20;

/// errno values, with Linux's numbers and glibc's `strerror` texts (what
/// busybox prints after `applet: path: `).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    Enoent,
    Eexist,
    Enotdir,
    Eisdir,
    Enotempty,
    Erofs,
    Enospc,
    Einval,
    Eloop,
    Enametoolong,
    Eperm,
    Ebusy,
    Emlink,
    Efbig,
    Eio,
    Enomem,
    Euclean,
    Eopnotsupp,
    /// Any other errno, by number.
    Other(i32),
}

impl Errno {
    /// The Linux errno number.
    pub fn code(self) -> i32 {
        match self {
            Errno::Enoent => libc::ENOENT,
            Errno::Eexist => libc::EEXIST,
            Errno::Enotdir => libc::ENOTDIR,
            Errno::Eisdir => libc::EISDIR,
            Errno::Enotempty => libc::ENOTEMPTY,
            Errno::Erofs => libc::EROFS,
            Errno::Enospc => libc::ENOSPC,
            Errno::Einval => libc::EINVAL,
            Errno::Eloop => libc::ELOOP,
            Errno::Enametoolong => libc::ENAMETOOLONG,
            Errno::Eperm => libc::EPERM,
            Errno::Ebusy => libc::EBUSY,
            Errno::Emlink => libc::EMLINK,
            Errno::Efbig => libc::EFBIG,
            Errno::Eio => libc::EIO,
            Errno::Enomem => libc::ENOMEM,
            Errno::Euclean => libc::EUCLEAN,
            Errno::Eopnotsupp => libc::EOPNOTSUPP,
            Errno::Other(n) => n,
        }
    }

    /// The errno for a Linux errno number.
    pub fn from_code(n: i32) -> Errno {
        [
            Errno::Enoent,
            Errno::Eexist,
            Errno::Enotdir,
            Errno::Eisdir,
            Errno::Enotempty,
            Errno::Erofs,
            Errno::Enospc,
            Errno::Einval,
            Errno::Eloop,
            Errno::Enametoolong,
            Errno::Eperm,
            Errno::Ebusy,
            Errno::Emlink,
            Errno::Efbig,
            Errno::Eio,
            Errno::Enomem,
            Errno::Euclean,
            Errno::Eopnotsupp,
        ]
        .into_iter()
        .find(|e| e.code() == n)
        .unwrap_or(Errno::Other(n))
    }

    /// glibc's `strerror` text.
    pub fn message(self) -> &'static str {
        match self {
            Errno::Enoent => "No such file or directory",
            Errno::Eexist => "File exists",
            Errno::Enotdir => "Not a directory",
            Errno::Eisdir => "Is a directory",
            Errno::Enotempty => "Directory not empty",
            Errno::Erofs => "Read-only file system",
            Errno::Enospc => "No space left on device",
            Errno::Einval => "Invalid argument",
            Errno::Eloop => "Symbolic link loop",
            Errno::Enametoolong => "File name too long",
            Errno::Eperm => "Operation not permitted",
            Errno::Ebusy => "Device or resource busy",
            Errno::Emlink => "Too many links",
            Errno::Efbig => "File too large",
            Errno::Eio => "I/O error",
            Errno::Enomem => "Out of memory",
            Errno::Euclean => "Structure needs cleaning",
            Errno::Eopnotsupp => "Not supported",
            Errno::Other(_) => "Unknown error",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// An error of a filesystem call: the errno the kernel would return, the
/// operation and path, and what libext2fs or the device said.
#[derive(Debug, thiserror::Error)]
#[error("ext4 {op} {path:?}: {errno}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct FsError {
    pub errno: Errno,
    pub op: &'static str,
    pub path: String,
    /// libext2fs' message or the block device's error, when there is one.
    pub detail: Option<String>,
}

/// How to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountMode {
    ReadOnly,
    ReadWrite,
}

/// A file's type (the `S_IFMT` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
    Unknown,
}

impl FileKind {
    fn from_mode(mode: u16) -> FileKind {
        match u32::from(mode) & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => FileKind::Unknown,
        }
    }

    fn from_dirent_type(t: u32) -> FileKind {
        // EXT2_FT_* values.
        match t {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::CharDev,
            4 => FileKind::BlockDev,
            5 => FileKind::Fifo,
            6 => FileKind::Socket,
            7 => FileKind::Symlink,
            _ => FileKind::Unknown,
        }
    }
}

/// Seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// What `stat` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub ino: u32,
    /// Type and permission bits, as in `st_mode`.
    pub mode: u16,
    pub kind: FileKind,
    pub nlink: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte units, as in `st_blocks`.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
}

/// One directory entry (`.` and `..` included, in on-disk order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub ino: u32,
    pub kind: FileKind,
}

/// Superblock facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub block_size: u32,
    pub blocks: u64,
    pub free_blocks: u64,
    pub inodes: u32,
    pub free_inodes: u32,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub state: u16,
}

/// What `umt_setattr` changes: its `which` bits and values (ctime is
/// always set to the clock).
#[derive(Default)]
struct SetAttr {
    which: c_int,
    mode: u16,
    uid: u32,
    gid: u32,
    atime: Timespec,
    mtime: Timespec,
}
const SET_MODE: c_int = 1;
const SET_UID: c_int = 2;
const SET_GID: c_int = 4;
const SET_ATIME: c_int = 8;
const SET_MTIME: c_int = 16;

/// `EXT3_FEATURE_INCOMPAT_RECOVER`: the journal holds unreplayed changes.
const INCOMPAT_RECOVER: u32 = 0x0004;

#[repr(C)]
struct UmtFs {
    _private: [u8; 0],
}

#[repr(C)]
#[derive(Default)]
struct RawStat {
    ino: u32,
    mode: u16,
    nlink: u16,
    uid: u32,
    gid: u32,
    size: u64,
    blocks512: u64,
    atime: i64,
    mtime: i64,
    ctime: i64,
    crtime: i64,
    atime_ns: u32,
    mtime_ns: u32,
    ctime_ns: u32,
    crtime_ns: u32,
    flags: u32,
}

type ErrCode = c_long;
type ReadFn = extern "C" fn(*mut c_void, u64, *mut c_void, usize) -> c_int;
type WriteFn = extern "C" fn(*mut c_void, u64, *const c_void, usize) -> c_int;
type FlushFn = extern "C" fn(*mut c_void) -> c_int;
type DirentFn = extern "C" fn(*mut c_void, *const c_char, u32, u32, u32) -> c_int;

extern "C" {
    fn umt_open(
        ctx: *mut c_void,
        r: ReadFn,
        w: WriteFn,
        f: FlushFn,
        rw: c_int,
        out: *mut *mut UmtFs,
    ) -> ErrCode;
    #[allow(clippy::too_many_arguments)]
    fn umt_info(
        u: *mut UmtFs,
        block_size: *mut u32,
        blocks: *mut u64,
        free_blocks: *mut u64,
        inodes: *mut u32,
        free_inodes: *mut u32,
        incompat: *mut u32,
        ro_compat: *mut u32,
        compat: *mut u32,
        state: *mut u16,
    );
    fn umt_set_now(u: *mut UmtFs, now: i64);
    fn umt_flush(u: *mut UmtFs) -> ErrCode;
    fn umt_abandon(u: *mut UmtFs);
    fn umt_lookup(
        u: *mut UmtFs,
        dir: u32,
        name: *const c_char,
        len: c_int,
        ino: *mut u32,
    ) -> ErrCode;
    fn umt_stat(u: *mut UmtFs, ino: u32, st: *mut RawStat) -> ErrCode;
    #[allow(clippy::too_many_arguments)]
    fn umt_setattr(
        u: *mut UmtFs,
        ino: u32,
        which: c_int,
        mode: u16,
        uid: u32,
        gid: u32,
        atime: i64,
        atime_ns: u32,
        mtime: i64,
        mtime_ns: u32,
    ) -> ErrCode;
    fn umt_read(
        u: *mut UmtFs,
        ino: u32,
        off: u64,
        buf: *mut c_void,
        len: u32,
        got: *mut u32,
    ) -> ErrCode;
    fn umt_write(u: *mut UmtFs, ino: u32, off: u64, buf: *const c_void, len: u32) -> ErrCode;
    fn umt_truncate(u: *mut UmtFs, ino: u32, size: u64) -> ErrCode;
    fn umt_create(
        u: *mut UmtFs,
        dir: u32,
        name: *const c_char,
        mode: u16,
        uid: u32,
        gid: u32,
        out: *mut u32,
    ) -> ErrCode;
    fn umt_mkdir(
        u: *mut UmtFs,
        dir: u32,
        name: *const c_char,
        mode: u16,
        uid: u32,
        gid: u32,
        out: *mut u32,
    ) -> ErrCode;
    fn umt_symlink(
        u: *mut UmtFs,
        dir: u32,
        name: *const c_char,
        target: *const c_char,
        uid: u32,
        gid: u32,
        out: *mut u32,
    ) -> ErrCode;
    fn umt_readlink(u: *mut UmtFs, ino: u32, buf: *mut c_char, cap: u32, len: *mut u32) -> ErrCode;
    fn umt_link(u: *mut UmtFs, dir: u32, name: *const c_char, ino: u32) -> ErrCode;
    fn umt_unlink(u: *mut UmtFs, dir: u32, name: *const c_char, ino: u32, is_dir: c_int)
        -> ErrCode;
    fn umt_set_dotdot(u: *mut UmtFs, dir: u32, new_parent: u32) -> ErrCode;
    fn umt_adjust_links(u: *mut UmtFs, ino: u32, delta: c_int) -> ErrCode;
    fn umt_link_only(u: *mut UmtFs, dir: u32, name: *const c_char, ino: u32, mode: u16) -> ErrCode;
    fn umt_unlink_only(u: *mut UmtFs, dir: u32, name: *const c_char) -> ErrCode;
    fn umt_readdir(u: *mut UmtFs, dir: u32, f: DirentFn, private: *mut c_void) -> ErrCode;
    fn umt_strerror(err: ErrCode) -> *const c_char;
    fn umt_errno(err: ErrCode) -> c_int;
}

/// The device as the C callbacks see it, plus the last device error (the
/// callbacks can only return a code; the error itself is kept here).
struct DevCtx<D> {
    dev: D,
    error: Option<BlockError>,
}

extern "C" fn dev_read<D: BlockDevice>(
    ctx: *mut c_void,
    off: u64,
    buf: *mut c_void,
    len: usize,
) -> c_int {
    // SAFETY: ctx is the DevCtx<D> that Ext4<D> owns and keeps alive (and
    // does not touch) while libext2fs runs; buf is libext2fs' buffer of len
    // bytes.
    let ctx = unsafe { &mut *(ctx as *mut DevCtx<D>) };
    let buf = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, len) };
    match ctx.dev.read_at(buf, off) {
        Ok(()) => 0,
        Err(e) => {
            ctx.error = Some(e);
            libc::EIO
        }
    }
}

extern "C" fn dev_write<D: BlockDevice>(
    ctx: *mut c_void,
    off: u64,
    buf: *const c_void,
    len: usize,
) -> c_int {
    // SAFETY: as in dev_read.
    let ctx = unsafe { &mut *(ctx as *mut DevCtx<D>) };
    let buf = unsafe { std::slice::from_raw_parts(buf as *const u8, len) };
    match ctx.dev.write_at(buf, off) {
        Ok(()) => 0,
        Err(e) => {
            ctx.error = Some(e);
            libc::EIO
        }
    }
}

extern "C" fn dev_flush<D: BlockDevice>(ctx: *mut c_void) -> c_int {
    // SAFETY: as in dev_read.
    let ctx = unsafe { &mut *(ctx as *mut DevCtx<D>) };
    match ctx.dev.flush() {
        Ok(()) => 0,
        Err(e) => {
            ctx.error = Some(e);
            libc::EIO
        }
    }
}

extern "C" fn dirent_cb(
    priv_: *mut c_void,
    name: *const c_char,
    len: u32,
    ino: u32,
    ft: u32,
) -> c_int {
    // SAFETY: priv_ is the Vec<DirEntry> readdir passes; name points at len
    // bytes of the directory block libext2fs holds during the callback.
    let out = unsafe { &mut *(priv_ as *mut Vec<DirEntry>) };
    let name = unsafe { std::slice::from_raw_parts(name as *const u8, len as usize) };
    out.push(DirEntry {
        name: String::from_utf8_lossy(name).into_owned(),
        ino,
        kind: FileKind::from_dirent_type(ft),
    });
    0
}

/// A mounted ext2/3/4 filesystem on device `D`.
pub struct Ext4<D: BlockDevice> {
    raw: *mut UmtFs,
    ctx: *mut DevCtx<D>,
    mode: MountMode,
    clock: i64,
}

impl<D: BlockDevice> fmt::Debug for Ext4<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ext4")
            .field("mode", &self.mode)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// What [`Ext4::make_in`] makes: the operation's name (for errors), the file
/// type bits and the shim call that makes it.
struct Node {
    op: &'static str,
    kind: u16,
    make: unsafe extern "C" fn(*mut UmtFs, u32, *const c_char, u16, u32, u32, *mut u32) -> ErrCode,
}

/// Split of a path into its parent's inode and its last name.
struct Parent {
    dir: u32,
    name: String,
}

impl<D: BlockDevice> Ext4<D> {
    /// Opens the filesystem on `dev`. `ReadWrite` on a read-only device is
    /// `EROFS`; a filesystem whose journal needs recovery is `EUCLEAN` for
    /// `ReadWrite` (this increment does not replay journals).
    pub fn mount(dev: D, mode: MountMode) -> Result<Self, FsError> {
        if mode == MountMode::ReadWrite && dev.is_read_only() {
            return Err(FsError {
                errno: Errno::Erofs,
                op: "mount",
                path: "/".into(),
                detail: Some("the block device is read-only".into()),
            });
        }
        let ctx = Box::into_raw(Box::new(DevCtx { dev, error: None }));
        let mut raw = std::ptr::null_mut();
        // SAFETY: ctx stays valid until Drop/unmount reclaims it, after
        // libext2fs is closed; the callbacks are monomorphized for D.
        let err = unsafe {
            umt_open(
                ctx as *mut c_void,
                dev_read::<D>,
                dev_write::<D>,
                dev_flush::<D>,
                c_int::from(mode == MountMode::ReadWrite),
                &mut raw,
            )
        };
        if err != 0 {
            // SAFETY: umt_open failed, so nothing refers to ctx any more.
            let ctx = unsafe { Box::from_raw(ctx) };
            return Err(error_from(err, ctx.error, "mount", "/"));
        }
        let mut fs = Ext4 {
            raw,
            ctx,
            mode,
            clock: 0,
        };
        // Until the caller's clock is set, times are fixed, never the host's.
        fs.set_clock(0);
        let info = fs.info();
        if mode == MountMode::ReadWrite && info.feature_incompat & INCOMPAT_RECOVER != 0 {
            return Err(FsError {
                errno: Errno::Euclean,
                op: "mount",
                path: "/".into(),
                detail: Some("the journal needs recovery, which is not emulated yet".into()),
            });
        }
        Ok(fs)
    }

    /// The mount mode.
    pub fn mode(&self) -> MountMode {
        self.mode
    }

    /// Sets the time (seconds since the epoch) that every following change
    /// writes into inodes and the superblock.
    /// libext2fs reads the host clock when its time is 0, so 0 is written
    /// as 1 (one second past the epoch).
    pub fn set_clock(&mut self, secs: i64) {
        self.clock = if secs == 0 { 1 } else { secs };
        // SAFETY: raw is open for self's lifetime.
        unsafe { umt_set_now(self.raw, self.clock) };
    }

    /// Superblock facts (counts are those of the last flush or of libext2fs'
    /// in-memory copy).
    pub fn info(&self) -> FsInfo {
        let mut i = FsInfo {
            block_size: 0,
            blocks: 0,
            free_blocks: 0,
            inodes: 0,
            free_inodes: 0,
            feature_compat: 0,
            feature_incompat: 0,
            feature_ro_compat: 0,
            state: 0,
        };
        // SAFETY: raw is open; the pointers are to fields of i.
        unsafe {
            umt_info(
                self.raw,
                &mut i.block_size,
                &mut i.blocks,
                &mut i.free_blocks,
                &mut i.inodes,
                &mut i.free_inodes,
                &mut i.feature_incompat,
                &mut i.feature_ro_compat,
                &mut i.feature_compat,
                &mut i.state,
            )
        };
        i
    }

    /// Turns a libext2fs error code into an [`FsError`], with the device's
    /// error when the device failed.
    fn err(&self, code: ErrCode, op: &'static str, path: &str) -> FsError {
        // SAFETY: ctx is valid; no libext2fs call is running.
        let dev_err = unsafe { (*self.ctx).error.take() };
        error_from(code, dev_err, op, path)
    }

    fn check(&self, code: ErrCode, op: &'static str, path: &str) -> Result<(), FsError> {
        if code == 0 {
            Ok(())
        } else {
            Err(self.err(code, op, path))
        }
    }

    fn writable(&self, op: &'static str, path: &str) -> Result<(), FsError> {
        match self.mode {
            MountMode::ReadWrite => Ok(()),
            MountMode::ReadOnly => Err(errno(Errno::Erofs, op, path)),
        }
    }

    fn lookup_in(
        &self,
        dir: u32,
        name: &str,
        op: &'static str,
        path: &str,
    ) -> Result<u32, FsError> {
        let mut ino = 0;
        // SAFETY: raw is open; name is valid for name.len() bytes.
        let code = unsafe {
            umt_lookup(
                self.raw,
                dir,
                name.as_ptr() as *const c_char,
                name.len() as c_int,
                &mut ino,
            )
        };
        self.check(code, op, path)?;
        Ok(ino)
    }

    fn stat_ino(&self, ino: u32, op: &'static str, path: &str) -> Result<Stat, FsError> {
        let mut r = RawStat::default();
        // SAFETY: raw is open; r is a RawStat matching struct umt_stat.
        let code = unsafe { umt_stat(self.raw, ino, &mut r) };
        self.check(code, op, path)?;
        let ts = |sec, nsec| Timespec { sec, nsec };
        Ok(Stat {
            ino,
            mode: r.mode,
            kind: FileKind::from_mode(r.mode),
            nlink: r.nlink,
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            blocks: r.blocks512,
            atime: ts(r.atime, r.atime_ns),
            mtime: ts(r.mtime, r.mtime_ns),
            ctime: ts(r.ctime, r.ctime_ns),
            crtime: ts(r.crtime, r.crtime_ns),
        })
    }

    fn readlink_ino(&self, ino: u32, op: &'static str, path: &str) -> Result<String, FsError> {
        let mut buf = vec![0u8; 4096];
        let mut len = 0u32;
        // SAFETY: raw is open; buf holds buf.len() bytes.
        let code = unsafe {
            umt_readlink(
                self.raw,
                ino,
                buf.as_mut_ptr() as *mut c_char,
                buf.len() as u32,
                &mut len,
            )
        };
        self.check(code, op, path)?;
        buf.truncate(len as usize);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Walks `path` from the root: returns its inode, following symbolic
    /// links in the middle and, if `follow_last`, at the end.
    fn walk(&self, path: &str, follow_last: bool, op: &'static str) -> Result<u32, FsError> {
        let mut links = 0;
        self.walk_from(ROOT_INO, path, follow_last, op, path, &mut links)
    }

    fn walk_from(
        &self,
        start: u32,
        rel: &str,
        follow_last: bool,
        op: &'static str,
        orig: &str,
        links: &mut u32,
    ) -> Result<u32, FsError> {
        let mut dir = if rel.starts_with('/') {
            ROOT_INO
        } else {
            start
        };
        let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if part.len() > NAME_MAX {
                return Err(errno(Errno::Enametoolong, op, orig));
            }
            let st = self.stat_ino(dir, op, orig)?;
            if st.kind != FileKind::Dir {
                return Err(errno(Errno::Enotdir, op, orig));
            }
            let ino = self.lookup_in(dir, part, op, orig)?;
            let kind = FileKind::from_mode(self.stat_ino(ino, op, orig)?.mode);
            if kind == FileKind::Symlink && (!last || follow_last) {
                *links += 1;
                if *links > MAX_SYMLINKS {
                    return Err(errno(Errno::Eloop, op, orig));
                }
                let target = self.readlink_ino(ino, op, orig)?;
                dir = self.walk_from(dir, &target, true, op, orig, links)?;
            } else {
                dir = ino;
            }
        }
        Ok(dir)
    }

    /// The parent directory of `path` (followed) and the last name.
    fn parent(&self, path: &str, op: &'static str) -> Result<Parent, FsError> {
        let trimmed = path.trim_end_matches('/');
        let (dir_path, name) = match trimmed.rfind('/') {
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => ("", trimmed),
        };
        if name.is_empty() {
            // The root itself has no parent entry to change.
            return Err(errno(Errno::Ebusy, op, path));
        }
        if name.len() > NAME_MAX {
            return Err(errno(Errno::Enametoolong, op, path));
        }
        if name.contains('\0') {
            return Err(errno(Errno::Einval, op, path));
        }
        let dir = self.walk(dir_path, true, op)?;
        if self.stat_ino(dir, op, path)?.kind != FileKind::Dir {
            return Err(errno(Errno::Enotdir, op, path));
        }
        Ok(Parent {
            dir,
            name: name.to_string(),
        })
    }

    /// [`Parent`] for a name in a directory inode: the name must be one
    /// path component.
    fn parent_at(&self, dir: u32, name: &str, op: &'static str) -> Result<Parent, FsError> {
        if name.is_empty() {
            return Err(errno(Errno::Enoent, op, name));
        }
        if name.contains('/') || name.contains('\0') {
            return Err(errno(Errno::Einval, op, name));
        }
        if name.len() > NAME_MAX {
            return Err(errno(Errno::Enametoolong, op, name));
        }
        if self.stat_ino(dir, op, name)?.kind != FileKind::Dir {
            return Err(errno(Errno::Enotdir, op, name));
        }
        Ok(Parent {
            dir,
            name: name.to_string(),
        })
    }

    fn lookup_opt(&self, p: &Parent, op: &'static str, path: &str) -> Result<Option<u32>, FsError> {
        match self.lookup_in(p.dir, &p.name, op, path) {
            Ok(ino) => Ok(Some(ino)),
            Err(e) if e.errno == Errno::Enoent => Ok(None),
            Err(e) => Err(e),
        }
    }

    // The inode-level calls below are for a VFS that walks paths itself
    // (mount points, a working directory): `path` in their errors is
    // `#<ino>` or the name looked up.

    /// The inode of `name` in directory `dir` (no symbolic link followed;
    /// `.` and `..` are entries like any other).
    pub fn lookup_at(&self, dir: u32, name: &str) -> Result<u32, FsError> {
        if name.len() > NAME_MAX {
            return Err(errno(Errno::Enametoolong, "lookup", name));
        }
        if self.stat_ino(dir, "lookup", name)?.kind != FileKind::Dir {
            return Err(errno(Errno::Enotdir, "lookup", name));
        }
        self.lookup_in(dir, name, "lookup", name)
    }

    /// `stat` of an inode.
    pub fn stat_inode(&self, ino: u32) -> Result<Stat, FsError> {
        self.stat_ino(ino, "stat", &format!("#{ino}"))
    }

    /// [`Ext4::read`] of an inode.
    pub fn read_inode(&self, ino: u32, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        self.read_ino(ino, offset, buf, &format!("#{ino}"))
    }

    /// [`Ext4::write`] to an inode (a regular file).
    pub fn write_inode(&mut self, ino: u32, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let path = format!("#{ino}");
        self.writable("write", &path)?;
        self.write_ino(ino, offset, data, &path)
    }

    /// [`Ext4::truncate`] of an inode.
    pub fn truncate_inode(&mut self, ino: u32, size: u64) -> Result<(), FsError> {
        let path = format!("#{ino}");
        self.writable("truncate", &path)?;
        self.truncate_ino(ino, size, &path)
    }

    /// [`Ext4::readdir`] of a directory inode.
    pub fn readdir_inode(&self, ino: u32) -> Result<Vec<DirEntry>, FsError> {
        let path = format!("#{ino}");
        if self.stat_ino(ino, "readdir", &path)?.kind != FileKind::Dir {
            return Err(errno(Errno::Enotdir, "readdir", &path));
        }
        self.readdir_ino(ino, &path)
    }

    /// [`Ext4::readlink`] of an inode.
    pub fn readlink_inode(&self, ino: u32) -> Result<String, FsError> {
        let path = format!("#{ino}");
        if self.stat_ino(ino, "readlink", &path)?.kind != FileKind::Symlink {
            return Err(errno(Errno::Einval, "readlink", &path));
        }
        self.readlink_ino(ino, "readlink", &path)
    }

    /// The inode number of `path` (symbolic links followed).
    pub fn lookup(&self, path: &str) -> Result<u32, FsError> {
        self.walk(path, true, "lookup")
    }

    /// `stat(2)`: follows a final symbolic link.
    pub fn stat(&self, path: &str) -> Result<Stat, FsError> {
        let ino = self.walk(path, true, "stat")?;
        self.stat_ino(ino, "stat", path)
    }

    /// `lstat(2)`: a final symbolic link is described itself.
    pub fn lstat(&self, path: &str) -> Result<Stat, FsError> {
        let ino = self.walk(path, false, "lstat")?;
        self.stat_ino(ino, "lstat", path)
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at or
    /// past the end).
    pub fn read(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        let ino = self.walk(path, true, "read")?;
        self.read_ino(ino, offset, buf, path)
    }

    fn read_ino(
        &self,
        ino: u32,
        offset: u64,
        buf: &mut [u8],
        path: &str,
    ) -> Result<usize, FsError> {
        let st = self.stat_ino(ino, "read", path)?;
        if st.kind == FileKind::Dir {
            return Err(errno(Errno::Eisdir, "read", path));
        }
        if offset >= st.size {
            return Ok(0);
        }
        let mut done = 0;
        while done < buf.len() {
            let want = (buf.len() - done).min(CHUNK);
            let mut got = 0u32;
            // SAFETY: raw is open; the slice holds want bytes.
            let code = unsafe {
                umt_read(
                    self.raw,
                    ino,
                    // No overflow: offset < size, and reads stop at size.
                    offset.saturating_add(done as u64),
                    buf[done..].as_mut_ptr() as *mut c_void,
                    want as u32,
                    &mut got,
                )
            };
            self.check(code, "read", path)?;
            if got == 0 {
                break;
            }
            done += got as usize;
        }
        Ok(done)
    }

    /// The whole contents of a file.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, FsError> {
        let st = self.stat(path)?;
        if st.kind == FileKind::Dir {
            return Err(errno(Errno::Eisdir, "read", path));
        }
        let len = usize::try_from(st.size).map_err(|_| errno(Errno::Efbig, "read", path))?;
        let mut buf = vec![0u8; len];
        let n = self.read(path, 0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Creates an empty regular file (`open(O_CREAT|O_EXCL)`): `EEXIST` if
    /// the name exists. Returns its inode number.
    pub fn create(&mut self, path: &str, perm: u16, uid: u32, gid: u32) -> Result<u32, FsError> {
        self.writable("create", path)?;
        let p = self.parent(path, "create")?;
        self.create_in(&p, perm, uid, gid, path)
    }

    /// [`Ext4::create`] of `name` in directory `dir`.
    pub fn create_at(
        &mut self,
        dir: u32,
        name: &str,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u32, FsError> {
        self.writable("create", name)?;
        let p = self.parent_at(dir, name, "create")?;
        self.create_in(&p, perm, uid, gid, name)
    }

    fn create_in(
        &mut self,
        p: &Parent,
        perm: u16,
        uid: u32,
        gid: u32,
        path: &str,
    ) -> Result<u32, FsError> {
        let node = Node {
            op: "create",
            kind: libc::S_IFREG as u16,
            make: umt_create,
        };
        self.make_in(p, node, perm, uid, gid, path)
    }

    /// Writes `data` at `offset` of an existing file (a final symbolic link
    /// is followed), growing it as needed.
    pub fn write(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), FsError> {
        self.writable("write", path)?;
        let ino = self.walk(path, true, "write")?;
        self.write_ino(ino, offset, data, path)
    }

    fn write_ino(&mut self, ino: u32, offset: u64, data: &[u8], path: &str) -> Result<(), FsError> {
        let st = self.stat_ino(ino, "write", path)?;
        match st.kind {
            FileKind::Dir => return Err(errno(Errno::Eisdir, "write", path)),
            FileKind::File => {}
            _ => return Err(errno(Errno::Einval, "write", path)),
        }
        offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| errno(Errno::Efbig, "write", path))?;
        let mut done = 0;
        // An empty write still updates mtime/ctime, as write(2) does.
        loop {
            let n = (data.len() - done).min(CHUNK);
            // SAFETY: raw is open; the slice holds n bytes.
            let code = unsafe {
                umt_write(
                    self.raw,
                    ino,
                    offset + done as u64,
                    data[done..].as_ptr() as *const c_void,
                    n as u32,
                )
            };
            self.check(code, "write", path)?;
            done += n;
            if done >= data.len() {
                return Ok(());
            }
        }
    }

    /// `open(O_CREAT|O_WRONLY|O_TRUNC)` then `write`: the shell's `>`.
    /// `perm`, `uid`, `gid` are used only if the file is created.
    pub fn write_file(
        &mut self,
        path: &str,
        data: &[u8],
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<(), FsError> {
        let ino = self.open_create(path, perm, uid, gid, "write")?;
        self.truncate_ino(ino, 0, path)?;
        self.write_ino(ino, 0, data, path)
    }

    /// `open(O_CREAT|O_WRONLY|O_APPEND)` then `write`: the shell's `>>`.
    pub fn append_file(
        &mut self,
        path: &str,
        data: &[u8],
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<(), FsError> {
        let ino = self.open_create(path, perm, uid, gid, "write")?;
        let size = self.stat_ino(ino, "write", path)?.size;
        self.write_ino(ino, size, data, path)
    }

    fn open_create(
        &mut self,
        path: &str,
        perm: u16,
        uid: u32,
        gid: u32,
        op: &'static str,
    ) -> Result<u32, FsError> {
        self.writable(op, path)?;
        match self.walk(path, true, op) {
            Ok(ino) => Ok(ino),
            Err(e) if e.errno == Errno::Enoent => self.create(path, perm, uid, gid),
            Err(e) => Err(e),
        }
    }

    /// `truncate(2)`: sets the size, freeing or (sparsely) adding blocks.
    pub fn truncate(&mut self, path: &str, size: u64) -> Result<(), FsError> {
        self.writable("truncate", path)?;
        let ino = self.walk(path, true, "truncate")?;
        self.truncate_ino(ino, size, path)
    }

    fn truncate_ino(&mut self, ino: u32, size: u64, path: &str) -> Result<(), FsError> {
        match self.stat_ino(ino, "truncate", path)?.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(errno(Errno::Eisdir, "truncate", path)),
            _ => return Err(errno(Errno::Einval, "truncate", path)),
        }
        // SAFETY: raw is open.
        let code = unsafe { umt_truncate(self.raw, ino, size) };
        self.check(code, "truncate", path)
    }

    /// The entries of a directory, `.` and `..` included, in on-disk order.
    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let ino = self.walk(path, true, "readdir")?;
        if self.stat_ino(ino, "readdir", path)?.kind != FileKind::Dir {
            return Err(errno(Errno::Enotdir, "readdir", path));
        }
        self.readdir_ino(ino, path)
    }

    fn readdir_ino(&self, ino: u32, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let mut out: Vec<DirEntry> = Vec::new();
        // SAFETY: raw is open; dirent_cb casts the pointer back to this Vec.
        let code = unsafe {
            umt_readdir(
                self.raw,
                ino,
                dirent_cb,
                &mut out as *mut Vec<DirEntry> as *mut c_void,
            )
        };
        self.check(code, "readdir", path)?;
        Ok(out)
    }

    /// `mkdir(2)`.
    pub fn mkdir(&mut self, path: &str, perm: u16, uid: u32, gid: u32) -> Result<u32, FsError> {
        self.writable("mkdir", path)?;
        if path.trim_matches('/').is_empty() {
            return Err(errno(Errno::Eexist, "mkdir", path));
        }
        let p = self.parent(path, "mkdir")?;
        self.mkdir_in(&p, perm, uid, gid, path)
    }

    /// [`Ext4::mkdir`] of `name` in directory `dir`.
    pub fn mkdir_at(
        &mut self,
        dir: u32,
        name: &str,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u32, FsError> {
        self.writable("mkdir", name)?;
        let p = self.parent_at(dir, name, "mkdir")?;
        self.mkdir_in(&p, perm, uid, gid, name)
    }

    fn mkdir_in(
        &mut self,
        p: &Parent,
        perm: u16,
        uid: u32,
        gid: u32,
        path: &str,
    ) -> Result<u32, FsError> {
        let node = Node {
            op: "mkdir",
            kind: libc::S_IFDIR as u16,
            make: umt_mkdir,
        };
        self.make_in(p, node, perm, uid, gid, path)
    }

    /// Makes a new file or directory `p.name` (`EEXIST` if the name exists).
    fn make_in(
        &mut self,
        p: &Parent,
        node: Node,
        perm: u16,
        uid: u32,
        gid: u32,
        path: &str,
    ) -> Result<u32, FsError> {
        if self.lookup_opt(p, node.op, path)?.is_some() {
            return Err(errno(Errno::Eexist, node.op, path));
        }
        let name = cstring(&p.name, node.op, path)?;
        let mut ino = 0;
        let mode = node.kind | (perm & 0o7777);
        // SAFETY: raw is open; name is NUL-terminated.
        let code = unsafe { (node.make)(self.raw, p.dir, name.as_ptr(), mode, uid, gid, &mut ino) };
        self.check(code, node.op, path)?;
        Ok(ino)
    }

    fn is_empty_dir(&self, ino: u32, path: &str) -> Result<bool, FsError> {
        Ok(self
            .readdir_ino(ino, path)?
            .iter()
            .all(|e| e.name == "." || e.name == ".."))
    }

    /// `rmdir(2)`.
    pub fn rmdir(&mut self, path: &str) -> Result<(), FsError> {
        self.writable("rmdir", path)?;
        let p = self.parent(path, "rmdir")?;
        self.rmdir_in(&p, path)
    }

    /// [`Ext4::rmdir`] of `name` in directory `dir`.
    pub fn rmdir_at(&mut self, dir: u32, name: &str) -> Result<(), FsError> {
        self.writable("rmdir", name)?;
        let p = self.parent_at(dir, name, "rmdir")?;
        self.rmdir_in(&p, name)
    }

    fn rmdir_in(&mut self, p: &Parent, path: &str) -> Result<(), FsError> {
        match p.name.as_str() {
            "." => return Err(errno(Errno::Einval, "rmdir", path)),
            ".." => return Err(errno(Errno::Enotempty, "rmdir", path)),
            _ => {}
        }
        let ino = self.lookup_in(p.dir, &p.name, "rmdir", path)?;
        if self.stat_ino(ino, "rmdir", path)?.kind != FileKind::Dir {
            return Err(errno(Errno::Enotdir, "rmdir", path));
        }
        if ino == ROOT_INO {
            return Err(errno(Errno::Ebusy, "rmdir", path));
        }
        if !self.is_empty_dir(ino, path)? {
            return Err(errno(Errno::Enotempty, "rmdir", path));
        }
        let name = cstring(&p.name, "rmdir", path)?;
        // SAFETY: raw is open; name is NUL-terminated.
        let code = unsafe { umt_unlink(self.raw, p.dir, name.as_ptr(), ino, 1) };
        self.check(code, "rmdir", path)
    }

    /// `unlink(2)`: a directory is `EISDIR` (Linux's answer).
    pub fn unlink(&mut self, path: &str) -> Result<(), FsError> {
        self.writable("unlink", path)?;
        let p = self.parent(path, "unlink")?;
        self.unlink_in(&p, path)
    }

    /// [`Ext4::unlink`] of `name` in directory `dir`.
    pub fn unlink_at(&mut self, dir: u32, name: &str) -> Result<(), FsError> {
        self.writable("unlink", name)?;
        let p = self.parent_at(dir, name, "unlink")?;
        self.unlink_in(&p, name)
    }

    fn unlink_in(&mut self, p: &Parent, path: &str) -> Result<(), FsError> {
        let ino = self.lookup_in(p.dir, &p.name, "unlink", path)?;
        if self.stat_ino(ino, "unlink", path)?.kind == FileKind::Dir {
            return Err(errno(Errno::Eisdir, "unlink", path));
        }
        let name = cstring(&p.name, "unlink", path)?;
        // SAFETY: raw is open; name is NUL-terminated.
        let code = unsafe { umt_unlink(self.raw, p.dir, name.as_ptr(), ino, 0) };
        self.check(code, "unlink", path)
    }

    /// `link(2)`: a new name for an existing non-directory.
    pub fn link(&mut self, existing: &str, new: &str) -> Result<(), FsError> {
        self.writable("link", new)?;
        let ino = self.walk(existing, false, "link")?;
        let p = self.parent(new, "link")?;
        self.link_in(ino, existing, &p, new)
    }

    /// [`Ext4::link`]: inode `ino` gets the name `name` in directory `dir`.
    pub fn link_at(&mut self, ino: u32, dir: u32, name: &str) -> Result<(), FsError> {
        self.writable("link", name)?;
        let p = self.parent_at(dir, name, "link")?;
        self.link_in(ino, &format!("#{ino}"), &p, name)
    }

    fn link_in(&mut self, ino: u32, existing: &str, p: &Parent, new: &str) -> Result<(), FsError> {
        let st = self.stat_ino(ino, "link", existing)?;
        if st.kind == FileKind::Dir {
            return Err(errno(Errno::Eperm, "link", existing));
        }
        if st.nlink == u16::MAX {
            return Err(errno(Errno::Emlink, "link", existing));
        }
        if self.lookup_opt(p, "link", new)?.is_some() {
            return Err(errno(Errno::Eexist, "link", new));
        }
        let name = cstring(&p.name, "link", new)?;
        // SAFETY: raw is open; name is NUL-terminated.
        let code = unsafe { umt_link(self.raw, p.dir, name.as_ptr(), ino) };
        self.check(code, "link", new)
    }

    /// `symlink(2)`: `path` becomes a link to `target` (not checked).
    pub fn symlink(
        &mut self,
        target: &str,
        path: &str,
        uid: u32,
        gid: u32,
    ) -> Result<u32, FsError> {
        self.writable("symlink", path)?;
        let p = self.parent(path, "symlink")?;
        self.symlink_in(target, &p, uid, gid, path)
    }

    /// [`Ext4::symlink`] named `name` in directory `dir`.
    pub fn symlink_at(
        &mut self,
        target: &str,
        dir: u32,
        name: &str,
        uid: u32,
        gid: u32,
    ) -> Result<u32, FsError> {
        self.writable("symlink", name)?;
        let p = self.parent_at(dir, name, "symlink")?;
        self.symlink_in(target, &p, uid, gid, name)
    }

    fn symlink_in(
        &mut self,
        target: &str,
        p: &Parent,
        uid: u32,
        gid: u32,
        path: &str,
    ) -> Result<u32, FsError> {
        if target.is_empty() {
            return Err(errno(Errno::Enoent, "symlink", path));
        }
        if target.len() >= 4096 {
            return Err(errno(Errno::Enametoolong, "symlink", path));
        }
        if self.lookup_opt(p, "symlink", path)?.is_some() {
            return Err(errno(Errno::Eexist, "symlink", path));
        }
        let name = cstring(&p.name, "symlink", path)?;
        let target_c = cstring(target, "symlink", path)?;
        let mut ino = 0;
        // SAFETY: raw is open; both strings are NUL-terminated.
        let code = unsafe {
            umt_symlink(
                self.raw,
                p.dir,
                name.as_ptr(),
                target_c.as_ptr(),
                uid,
                gid,
                &mut ino,
            )
        };
        self.check(code, "symlink", path)?;
        Ok(ino)
    }

    /// `readlink(2)`.
    pub fn readlink(&self, path: &str) -> Result<String, FsError> {
        let ino = self.walk(path, false, "readlink")?;
        if self.stat_ino(ino, "readlink", path)?.kind != FileKind::Symlink {
            return Err(errno(Errno::Einval, "readlink", path));
        }
        self.readlink_ino(ino, "readlink", path)
    }

    /// `rename(2)`, with its rules: replacing an empty directory by a
    /// directory, a non-directory by a non-directory; never a directory
    /// into itself.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), FsError> {
        self.writable("rename", from)?;
        let src = self.parent(from, "rename")?;
        let dst = self.parent(to, "rename")?;
        self.rename_in(&src, from, &dst, to)
    }

    /// [`Ext4::rename`] of `name` in `dir` to `new_name` in `new_dir`.
    pub fn rename_at(
        &mut self,
        dir: u32,
        name: &str,
        new_dir: u32,
        new_name: &str,
    ) -> Result<(), FsError> {
        self.writable("rename", name)?;
        let src = self.parent_at(dir, name, "rename")?;
        let dst = self.parent_at(new_dir, new_name, "rename")?;
        self.rename_in(&src, name, &dst, new_name)
    }

    fn rename_in(
        &mut self,
        src: &Parent,
        from: &str,
        dst: &Parent,
        to: &str,
    ) -> Result<(), FsError> {
        if src.name == "." || src.name == ".." {
            return Err(errno(Errno::Einval, "rename", from));
        }
        let ino = self.lookup_in(src.dir, &src.name, "rename", from)?;
        let st = self.stat_ino(ino, "rename", from)?;
        let is_dir = st.kind == FileKind::Dir;
        if dst.name == "." || dst.name == ".." {
            return Err(errno(Errno::Einval, "rename", to));
        }
        if is_dir && self.is_ancestor(ino, dst.dir, to)? {
            return Err(errno(Errno::Einval, "rename", to));
        }
        let existing = self.lookup_opt(dst, "rename", to)?;
        if existing == Some(ino) {
            return Ok(());
        }
        let dst_name = cstring(&dst.name, "rename", to)?;
        let src_name = cstring(&src.name, "rename", from)?;
        if let Some(old) = existing {
            let old_is_dir = self.stat_ino(old, "rename", to)?.kind == FileKind::Dir;
            match (is_dir, old_is_dir) {
                (true, false) => return Err(errno(Errno::Enotdir, "rename", to)),
                (false, true) => return Err(errno(Errno::Eisdir, "rename", to)),
                (true, true) if !self.is_empty_dir(old, to)? => {
                    return Err(errno(Errno::Enotempty, "rename", to))
                }
                _ => {}
            }
            // SAFETY (all calls below): raw is open; names are NUL-terminated.
            let code = unsafe {
                umt_unlink(
                    self.raw,
                    dst.dir,
                    dst_name.as_ptr(),
                    old,
                    c_int::from(old_is_dir),
                )
            };
            self.check(code, "rename", to)?;
        }
        let code = unsafe { umt_link_only(self.raw, dst.dir, dst_name.as_ptr(), ino, st.mode) };
        self.check(code, "rename", to)?;
        let code = unsafe { umt_unlink_only(self.raw, src.dir, src_name.as_ptr()) };
        self.check(code, "rename", from)?;
        if is_dir && src.dir != dst.dir {
            let code = unsafe { umt_set_dotdot(self.raw, ino, dst.dir) };
            self.check(code, "rename", to)?;
            let code = unsafe { umt_adjust_links(self.raw, src.dir, -1) };
            self.check(code, "rename", from)?;
            let code = unsafe { umt_adjust_links(self.raw, dst.dir, 1) };
            self.check(code, "rename", to)?;
        }
        // rename(2) changes the moved inode's ctime.
        let code = unsafe { umt_adjust_links(self.raw, ino, 0) };
        self.check(code, "rename", to)
    }

    /// True if `ancestor` is `dir` or above it.
    fn is_ancestor(&self, ancestor: u32, mut dir: u32, path: &str) -> Result<bool, FsError> {
        // Bounded: a corrupt ".." cycle must not hang the sim.
        for _ in 0..4096 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = self.lookup_in(dir, "..", "rename", path)?;
        }
        Err(errno(Errno::Euclean, "rename", path))
    }

    fn setattr(&mut self, path: &str, op: &'static str, a: SetAttr) -> Result<(), FsError> {
        self.writable(op, path)?;
        let ino = self.walk(path, true, op)?;
        self.setattr_ino(ino, path, op, a)
    }

    fn setattr_ino(
        &mut self,
        ino: u32,
        path: &str,
        op: &'static str,
        a: SetAttr,
    ) -> Result<(), FsError> {
        self.writable(op, path)?;
        // SAFETY: raw is open.
        let code = unsafe {
            umt_setattr(
                self.raw,
                ino,
                a.which,
                a.mode,
                a.uid,
                a.gid,
                a.atime.sec,
                a.atime.nsec,
                a.mtime.sec,
                a.mtime.nsec,
            )
        };
        self.check(code, op, path)
    }

    /// `chmod(2)`: the permission bits (07777) of `path`.
    pub fn chmod(&mut self, path: &str, perm: u16) -> Result<(), FsError> {
        let a = SetAttr {
            which: SET_MODE,
            mode: perm,
            ..SetAttr::default()
        };
        self.setattr(path, "chmod", a)
    }

    /// `chown(2)`: `None` leaves that id unchanged.
    pub fn chown(&mut self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<(), FsError> {
        let a = SetAttr {
            which: if uid.is_some() { SET_UID } else { 0 }
                | if gid.is_some() { SET_GID } else { 0 },
            uid: uid.unwrap_or(0),
            gid: gid.unwrap_or(0),
            ..SetAttr::default()
        };
        self.setattr(path, "chown", a)
    }

    /// `utimensat(2)`: `None` leaves that time unchanged (`UTIME_OMIT`).
    pub fn utimens(
        &mut self,
        path: &str,
        atime: Option<Timespec>,
        mtime: Option<Timespec>,
    ) -> Result<(), FsError> {
        let a = SetAttr {
            which: if atime.is_some() { SET_ATIME } else { 0 }
                | if mtime.is_some() { SET_MTIME } else { 0 },
            atime: atime.unwrap_or_default(),
            mtime: mtime.unwrap_or_default(),
            ..SetAttr::default()
        };
        self.setattr(path, "utimens", a)
    }

    /// [`Ext4::chmod`] of an inode.
    pub fn chmod_inode(&mut self, ino: u32, perm: u16) -> Result<(), FsError> {
        let a = SetAttr {
            which: SET_MODE,
            mode: perm,
            ..SetAttr::default()
        };
        self.setattr_ino(ino, &format!("#{ino}"), "chmod", a)
    }

    /// [`Ext4::chown`] of an inode.
    pub fn chown_inode(
        &mut self,
        ino: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), FsError> {
        let a = SetAttr {
            which: if uid.is_some() { SET_UID } else { 0 }
                | if gid.is_some() { SET_GID } else { 0 },
            uid: uid.unwrap_or(0),
            gid: gid.unwrap_or(0),
            ..SetAttr::default()
        };
        self.setattr_ino(ino, &format!("#{ino}"), "chown", a)
    }

    /// [`Ext4::utimens`] of an inode.
    pub fn utimens_inode(
        &mut self,
        ino: u32,
        atime: Option<Timespec>,
        mtime: Option<Timespec>,
    ) -> Result<(), FsError> {
        let a = SetAttr {
            which: if atime.is_some() { SET_ATIME } else { 0 }
                | if mtime.is_some() { SET_MTIME } else { 0 },
            atime: atime.unwrap_or_default(),
            mtime: mtime.unwrap_or_default(),
            ..SetAttr::default()
        };
        self.setattr_ino(ino, &format!("#{ino}"), "utimens", a)
    }

    /// `sync(2)`: writes bitmaps, group descriptors and the superblock (if
    /// anything changed), then flushes the device.
    pub fn sync(&mut self) -> Result<(), FsError> {
        if self.mode == MountMode::ReadOnly {
            return Ok(());
        }
        // SAFETY: raw is open.
        let code = unsafe { umt_flush(self.raw) };
        self.check(code, "sync", "/")?;
        // SAFETY: ctx is valid; no libext2fs call is running.
        let dev = unsafe { &mut (*self.ctx).dev };
        dev.flush().map_err(|e| FsError {
            errno: Errno::Eio,
            op: "sync",
            path: "/".into(),
            detail: Some(e.to_string()),
        })
    }

    /// `umount`: syncs and gives the device back.
    pub fn unmount(mut self) -> Result<D, FsError> {
        let result = self.sync();
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        let ctx = std::mem::replace(&mut self.ctx, std::ptr::null_mut());
        // SAFETY: raw was open and is not used again (self.raw is null, so
        // Drop skips it); after it is freed nothing refers to ctx.
        let ctx = unsafe {
            umt_abandon(raw);
            Box::from_raw(ctx)
        };
        result.map(|()| ctx.dev)
    }

    /// The device, for reading what was written (e.g. in tests).
    pub fn device(&self) -> &D {
        // SAFETY: ctx is valid while self lives; no libext2fs call is running.
        unsafe { &(*self.ctx).dev }
    }
}

// SAFETY: libext2fs keeps all state of a filesystem in its ext2_filsys (and
// the device in DevCtx), both owned by this value alone; its only global,
// the error-message table, is initialized under pthread_once. So moving an
// Ext4 to another thread is as safe as moving D. (Not Sync: calls mutate.)
unsafe impl<D: BlockDevice + Send> Send for Ext4<D> {}

impl<D: BlockDevice> Drop for Ext4<D> {
    /// Dropping without [`Ext4::unmount`] is a crash: nothing more is written.
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        // SAFETY: raw is open and freed once; ctx is reclaimed after it.
        unsafe {
            umt_abandon(self.raw);
            drop(Box::from_raw(self.ctx));
        }
    }
}

fn errno(e: Errno, op: &'static str, path: &str) -> FsError {
    FsError {
        errno: e,
        op,
        path: path.to_string(),
        detail: None,
    }
}

fn cstring(s: &str, op: &'static str, path: &str) -> Result<CString, FsError> {
    CString::new(s).map_err(|_| errno(Errno::Einval, op, path))
}

fn error_from(code: ErrCode, dev: Option<BlockError>, op: &'static str, path: &str) -> FsError {
    // SAFETY: umt_errno and umt_strerror only read a table; error_message
    // returns a static (or thread-local) NUL-terminated string.
    let (n, msg) = unsafe {
        let m = umt_strerror(code);
        let msg = if m.is_null() {
            format!("libext2fs error {code}")
        } else {
            CStr::from_ptr(m).to_string_lossy().into_owned()
        };
        (umt_errno(code), msg)
    };
    let detail = match dev {
        Some(d) => format!("{msg}: {d}"),
        None => msg,
    };
    FsError {
        errno: if dev_is_io(n) {
            Errno::Eio
        } else {
            Errno::from_code(n)
        },
        op,
        path: path.to_string(),
        detail: Some(detail),
    }
}

fn dev_is_io(n: i32) -> bool {
    n == libc::EIO
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RAM disk, for tests that need no host tools.
    pub(crate) struct Ram {
        pub data: Vec<u8>,
        pub read_only: bool,
    }

    impl BlockDevice for Ram {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
            let o = offset as usize;
            let src = self
                .data
                .get(o..o + buf.len())
                .ok_or(BlockError::OutOfRange {
                    name: "ram".into(),
                    offset,
                    len: buf.len() as u64,
                    size: self.size(),
                })?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), BlockError> {
            let size = self.size();
            let o = offset as usize;
            let dst = self
                .data
                .get_mut(o..o + data.len())
                .ok_or(BlockError::OutOfRange {
                    name: "ram".into(),
                    offset,
                    len: data.len() as u64,
                    size,
                })?;
            dst.copy_from_slice(data);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), BlockError> {
            Ok(())
        }
        fn is_read_only(&self) -> bool {
            self.read_only
        }
    }

    #[test]
    fn a_mounted_filesystem_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Ext4<crate::block::Ubd>>();
    }

    #[test]
    fn errno_numbers_and_messages_are_linuxs() {
        assert_eq!(Errno::Enoent.code(), 2);
        assert_eq!(Errno::from_code(39), Errno::Enotempty);
        assert_eq!(Errno::from_code(9999), Errno::Other(9999));
        assert_eq!(Errno::Erofs.to_string(), "Read-only file system");
    }

    #[test]
    fn garbage_is_refused_at_mount_with_a_message() {
        let dev = Ram {
            data: vec![0x5a; 1 << 20],
            read_only: false,
        };
        let e = Ext4::mount(dev, MountMode::ReadOnly).unwrap_err();
        assert_eq!(e.op, "mount");
        assert!(e.to_string().contains("ext4 mount"), "{e}");
        assert!(
            e.detail
                .as_deref()
                .unwrap_or("")
                .contains("Bad magic number"),
            "{e}"
        );
        assert_eq!(e.errno, Errno::Einval);
    }

    #[test]
    fn read_write_on_a_read_only_device_is_erofs() {
        let dev = Ram {
            data: vec![0; 1 << 20],
            read_only: true,
        };
        let e = Ext4::mount(dev, MountMode::ReadWrite).unwrap_err();
        assert_eq!(e.errno, Errno::Erofs);
    }
}
