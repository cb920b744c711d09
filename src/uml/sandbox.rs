//! The real kernels' sandbox: each `linux.uml` the uml backend starts (and every
//! process it starts, `vde_plug` included) runs under a Landlock domain that lets it
//! read and write only its run folder and a private directory for UML's memory
//! file, read (and execute) the system's programs and libraries, and read the
//! `external` disks of the lab (ARCHITECTURE.md, "Confinement").
//!
//! Why Landlock, and why raw syscalls: it needs no privilege, no user namespace and
//! no helper binary, stacks under whatever confinement the host already has, and is
//! inherited by every process linux.uml forks, including the ptraced processes
//! that run guest code, so a guest's `mount -t hostfs none /mnt -o /etc` gets
//! EACCES outside the allowed trees. The ruleset is built in the parent (allocation,
//! `open(O_PATH)` on every allowed path); the child, between fork and exec, only
//! makes two async-signal-safe syscalls (`prctl(PR_SET_NO_NEW_PRIVS)`,
//! `landlock_restrict_self`). Raw syscalls rather than the `landlock` crate: the
//! ABI (Linux `include/uapi/linux/landlock.h`) is three syscalls and two structs,
//! pinned below, and the code run after fork stays visibly allocation-free and
//! dependency-free. UML's memory file goes to `TMPDIR`, set to a fresh directory
//! in /dev/shm (where UML puts it by default): the one place besides the run
//! folder the domain may write (observed: it stays empty while the guests run,
//! the file has no name). Every right the running kernel knows is handled
//! (ABI 1–7), so what is not allowed is denied:
//! - filesystem: all access rights (ABI 2 `REFER`, 3 `TRUNCATE`, 5 `IOCTL_DEV` when known);
//! - network (ABI 4): TCP bind and connect, none allowed (UML's `port:` consoles,
//!   a guest reaching host TCP services through slirp);
//! - scopes (ABI 6): abstract unix sockets and signals to processes outside the
//!   domain (UML's own children are inside it).
//!
//! Landlock does not cover `connect()` to pathname unix sockets, UDP, or reads of
//! inherited file descriptors: the command-line path checks
//! ([`crate::cmdline::paths`]) keep sockets and files named there inside the run
//! folder. Denials are not logged (Landlock's default after exec, ABI 7's
//! `LOG_NEW_EXEC_ON` not set): a guest hammering denied paths cannot flood the
//! host's audit log.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

// include/uapi/linux/landlock.h
const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: libc::c_int = 1;

const FS_EXECUTE: u64 = 1 << 0;
const FS_WRITE_FILE: u64 = 1 << 1;
const FS_READ_FILE: u64 = 1 << 2;
const FS_READ_DIR: u64 = 1 << 3;
const FS_REFER: u64 = 1 << 13;
const FS_TRUNCATE: u64 = 1 << 14;
const FS_IOCTL_DEV: u64 = 1 << 15;
/// The rights that apply to a regular file (the others only to directories).
const FS_FILE_RIGHTS: u64 = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV;

const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// Sandbox failures.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel has no Landlock (not built in, or not in the `lsm=` list).
    #[error("this kernel offers no Landlock ({0}); Landlock needs Linux 5.13+ with `landlock` in the active LSMs (see /sys/kernel/security/lsm)")]
    Unsupported(io::Error),
    #[error("sandbox: cannot create the Landlock ruleset: {0}")]
    Create(io::Error),
    #[error("sandbox: cannot allow {path}: {source}")]
    Rule {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The Landlock ABI version the running kernel offers.
pub fn abi() -> Result<u32, SandboxError> {
    // SAFETY: the version query takes no attribute pointer and size 0.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        return Err(SandboxError::Unsupported(io::Error::last_os_error()));
    }
    u32::try_from(v).map_err(|_| SandboxError::Unsupported(io::Error::other("bad ABI version")))
}

/// What a confined process may reach.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Everything (create, remove, write, sockets) under these directories.
    pub read_write: Vec<PathBuf>,
    /// Read and execute under these (system programs and libraries).
    pub read_exec: Vec<PathBuf>,
    /// Read only (files or directories).
    pub read_only: Vec<PathBuf>,
    /// Read, write and ioctl these existing files (device nodes such as `/dev/null`).
    pub read_write_files: Vec<PathBuf>,
}

impl Policy {
    /// What `linux.uml` and `vde_plug` need besides the run folder and the
    /// memory-file directory: found by comparing boot logs confined and
    /// unconfined (the same lines once `/proc/cpuinfo` and `/dev/ptmx` were
    /// allowed) and running every lab of `ci/labs.sh` confined; the loader's
    /// files, and `/etc/passwd`/`group`/`nsswitch.conf` for libvdeplug's
    /// `getpwuid` (the port description's `user=`).
    pub fn for_uml(run_dir: &Path, mem_dir: &Path, external: &[PathBuf]) -> Self {
        let existing = |paths: &[&str]| -> Vec<PathBuf> {
            paths
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.exists())
                .collect()
        };
        let mut read_only = existing(&[
            "/etc/ld.so.cache",
            "/etc/ld.so.preload",
            "/etc/passwd",
            "/etc/group",
            "/etc/nsswitch.conf",
            "/etc/localtime",
            // UML's host CPU feature check (arch/um/kernel/um_arch.c); the rest
            // of /proc would show the guest the host's processes through hostfs.
            "/proc/cpuinfo",
            "/dev/zero",
            "/dev/urandom",
            "/dev/random",
        ]);
        read_only.extend(external.iter().cloned());
        Self {
            read_write: vec![run_dir.to_path_buf(), mem_dir.to_path_buf()],
            read_exec: existing(&[
                "/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin",
            ]),
            read_only,
            // Not /dev/ptmx and /dev/pts: UML's pty SIGIO check opens the slave
            // by path, and /dev/pts would let a root guest open the host's
            // terminals through hostfs. Its boot log then says
            // `check_one_sigio failed, errno = 13`, harmless with pipe consoles.
            read_write_files: existing(&["/dev/null", "/dev/full"]),
        }
    }
}

/// A built ruleset, ready to be applied in a child before exec.
#[derive(Debug)]
pub struct Sandbox {
    ruleset: OwnedFd,
}

impl Sandbox {
    /// Builds the ruleset for `policy` with every right this kernel knows handled.
    pub fn new(policy: &Policy) -> Result<Self, SandboxError> {
        let abi = abi()?;
        let mut fs = (1u64 << 13) - 1; // ABI 1: EXECUTE ..= MAKE_SYM
        if abi >= 2 {
            fs |= FS_REFER;
        }
        if abi >= 3 {
            fs |= FS_TRUNCATE;
        }
        if abi >= 5 {
            fs |= FS_IOCTL_DEV;
        }
        let attr = RulesetAttr {
            handled_access_fs: fs,
            handled_access_net: if abi >= 4 {
                NET_BIND_TCP | NET_CONNECT_TCP
            } else {
                0
            },
            scoped: if abi >= 6 {
                SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
            } else {
                0
            },
        };
        // Older kernels know a shorter struct; the fields they do not know are zero.
        let size = if abi >= 6 {
            24
        } else if abi >= 4 {
            16
        } else {
            8
        };
        // SAFETY: `attr` is a valid landlock_ruleset_attr of at least `size` bytes.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                size as usize,
                0u32,
            )
        };
        if fd < 0 {
            return Err(SandboxError::Create(io::Error::last_os_error()));
        }
        // SAFETY: the syscall returned a new file descriptor we own (O_CLOEXEC).
        let ruleset = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let read = FS_READ_FILE | FS_READ_DIR;
        let rules = [
            (&policy.read_write, fs),
            (&policy.read_exec, read | FS_EXECUTE),
            (&policy.read_only, read),
            (
                &policy.read_write_files,
                FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV,
            ),
        ];
        for (paths, access) in rules {
            for path in paths {
                add_rule(&ruleset, path, access & fs)?;
            }
        }
        Ok(Self { ruleset })
    }

    /// Confines the calling process. Meant for `pre_exec`: two syscalls, no
    /// allocation, async-signal-safe.
    pub fn restrict_self(&self) -> io::Result<()> {
        // SAFETY: plain syscalls on integers and our own ruleset fd.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::syscall(
                libc::SYS_landlock_restrict_self,
                self.ruleset.as_raw_fd(),
                0u32,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

fn add_rule(ruleset: &OwnedFd, path: &Path, access: u64) -> Result<(), SandboxError> {
    let rule_err = |source| SandboxError::Rule {
        path: path.to_path_buf(),
        source,
    };
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| rule_err(io::Error::other("path contains a NUL byte")))?;
    // SAFETY: `c` is a valid C string; O_PATH opens nothing for reading.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(rule_err(io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let is_dir = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|m| m.is_dir())
        .map_err(rule_err)?;
    let attr = PathBeneathAttr {
        allowed_access: if is_dir {
            access
        } else {
            access & FS_FILE_RIGHTS
        },
        parent_fd: fd.as_raw_fd(),
    };
    // SAFETY: a valid landlock_path_beneath_attr and two descriptors we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if r != 0 {
        return Err(rule_err(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_the_uapi_header() {
        assert_eq!(std::mem::size_of::<RulesetAttr>(), 24);
        assert_eq!(std::mem::size_of::<PathBeneathAttr>(), 12);
    }

    /// A child confined to one folder reads it and nothing beside it.
    #[test]
    fn a_confined_child_reads_only_what_is_allowed() {
        if abi().is_err() {
            eprintln!("SKIPPED (not a pass): no Landlock on this kernel");
            return;
        }
        let allowed = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(allowed.path().join("in"), "in").unwrap();
        std::fs::write(outside.path().join("out"), "out").unwrap();
        let policy = Policy::for_uml(allowed.path(), allowed.path(), &[]);
        let sandbox = std::sync::Arc::new(Sandbox::new(&policy).unwrap());
        let run = |file: &Path| {
            let mut cmd = std::process::Command::new("cat");
            cmd.arg(file);
            let sb = std::sync::Arc::clone(&sandbox);
            // SAFETY: restrict_self only makes two syscalls.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || sb.restrict_self());
            }
            cmd.output().unwrap()
        };
        let inside = run(&allowed.path().join("in"));
        assert!(inside.status.success(), "{inside:?}");
        assert_eq!(inside.stdout, b"in");
        let denied = run(&outside.path().join("out"));
        assert!(!denied.status.success());
        assert!(
            String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
            "{denied:?}"
        );
    }
}
