//! Root images for the `uml` backend: busybox-static with its applet links, the
//! guest programs of ARCHITECTURE.md copied from the host with their shared
//! libraries and loader, and the harness init, packed with `mkfs.ext4 -d` (no root
//! needed), sparse and reproducible, and cached by content.
//!
//! Reproducibility: `mkfs.ext4` gets a fixed UUID and directory hash seed, a
//! profile of our own (`MKE2FS_CONFIG`, so the host's `/etc/mke2fs.conf` does not
//! matter) and `E2FSPROGS_FAKE_TIME` for the superblock times. `mkfs.ext4 -d`
//! copies each source file's ctime (which no user can set) and stamps crtime with
//! the wall clock, so a `debugfs -w` pass then sets every inode's times and owner
//! to fixed values. Two builds of the same inputs are byte-identical (tested).
//!
//! [`manifest`] describes the default image from the same staging tree (the
//! committed `default-image.manifest`, see [`super::manifest`]);
//! [`build_from_manifest`] packs a manifest the same way with placeholder
//! binaries: the sim's `image = "default"` disk.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::guest::{find_program, MissingTool};
use super::manifest::{is_text, Item, Kind, Manifest};

/// The marker the harness init prints when its console shell is ready for commands.
pub const SHELL_READY: &str = "UMLTEST-SHELL-READY";

/// Where the harness init lives in the image; [`super::args`] appends `init=` with it.
pub const INIT_PATH: &str = "/init";

/// Fixed timestamp of every inode and of the superblock (2001-09-09, non-zero because
/// `E2FSPROGS_FAKE_TIME=0` means "not set").
const FIXED_TIME: u64 = 1_000_000_000;
/// Filesystem UUID and directory hash seed ("umltes" in the last bytes).
const FIXED_UUID: &str = "5b3c2d1e-0000-4000-8000-756d6c746573";
/// Bumped whenever the image layout changes, so cached images are rebuilt.
const LAYOUT_VERSION: &str = "umltest-image-v2";
/// Default image size: the default programs and their libraries take about 20 MB.
pub const DEFAULT_SIZE: u64 = 64 << 20;
/// The largest root image: labs use hundreds of MB; at 64 GiB the sparse image
/// already allocates about 530 MB (measured), most of it the journal.
pub const MAX_SIZE: u64 = 64 << 30;
/// Free space a build leaves on the filesystem it writes to.
const SPACE_MARGIN: u64 = 256 << 20;
/// The longest a build waits for another one holding the cache lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The harness init: mounts, a quiet console (kernel messages would interleave with
/// command output), echo off (no echo confusion), then an interactive shell with
/// the console as controlling tty, so ^C interrupts the foreground command only.
const INIT_SCRIPT: &str = "#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
dmesg -n 1
stty -echo
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export ENV=/etc/umltest-shellrc PS1= PS2=
exec setsid -c /bin/sh -i
";

/// Read by the interactive shell before its first prompt. `trap : INT` keeps the
/// shell going on to the next command of a line when ^C killed the foreground job
/// (ash otherwise abandons the line), so the protocol's end marker still prints.
///
/// Debian's busybox-static runs its own applets before searching `PATH`
/// (`FEATURE_SH_STANDALONE`), so `arping` would be busybox's, not Habets' 2.23: a
/// shell function per copied host program (functions come before applets) makes
/// the name mean the host program in the console shell.
fn shellrc(programs: &[String]) -> String {
    let mut rc = String::from("unset ENV\ntrap : INT\nPS1=\nPS2=\n");
    for path in programs {
        let name = path.rsplit('/').next().unwrap_or_default();
        let ident = name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if ident && !name.is_empty() {
            let _ = writeln!(rc, "{name}() {{ {path} \"$@\"; }}");
        }
    }
    let _ = writeln!(rc, "echo {SHELL_READY}");
    rc
}

/// `tcpdump` drops privileges to the `tcpdump` user as Debian builds it.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:104:109::/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ntcpdump:x:109:\n";

/// Our own mke2fs profile (`MKE2FS_CONFIG`), shared by every filesystem the harness
/// makes: Debian 12's ext4 features and every usage type empty, so neither the
/// host's `/etc/mke2fs.conf` nor the image size changes the layout. The root image
/// lets mke2fs pick a size type; scenario disks name `-T umltest`.
pub const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tsmall = {
\t}
\tfloppy = {
\t}
\tdefault = {
\t}
\tbig = {
\t}
\thuge = {
\t}
\tumltest = {
\t}
";

/// A program of the guest, as the sim models it (ARCHITECTURE.md, "The guest's programs").
#[derive(Debug, Clone, Copy)]
pub struct GuestProgram {
    pub name: &'static str,
    /// Where Debian installs it; the image puts it at the same path.
    pub host_path: &'static str,
    pub package: &'static str,
    /// Arguments that make it print its version (stdout or stderr).
    pub version_args: &'static [&'static str],
    /// The text right before the version number in that output.
    pub version_prefix: &'static str,
    /// The version the sim's emulation follows (`4.99` matches `4.99.3`).
    pub modelled: Option<&'static str>,
}

/// The guest's programs. busybox provides sh, ip, ifconfig, cat, dd, sync, mount,
/// sysctl, echo, sleep, halt, poweroff; the others are copied with their libraries.
pub const GUEST_PROGRAMS: &[GuestProgram] = &[
    GuestProgram {
        name: "busybox",
        host_path: "/bin/busybox",
        package: "busybox-static",
        version_args: &[],
        version_prefix: "BusyBox v",
        modelled: Some("1.35"),
    },
    GuestProgram {
        name: "arping",
        host_path: "/usr/sbin/arping",
        package: "arping",
        version_args: &["--version"],
        version_prefix: "ARPing ",
        modelled: Some("2.23"),
    },
    GuestProgram {
        name: "tcpdump",
        host_path: "/usr/bin/tcpdump",
        package: "tcpdump",
        version_args: &["--version"],
        version_prefix: "tcpdump version ",
        modelled: Some("4.99"),
    },
    GuestProgram {
        name: "lsblk",
        host_path: "/usr/bin/lsblk",
        package: "util-linux",
        version_args: &["--version"],
        version_prefix: "lsblk from util-linux ",
        modelled: None,
    },
    GuestProgram {
        name: "blkid",
        host_path: "/usr/sbin/blkid",
        package: "util-linux",
        version_args: &["--version"],
        version_prefix: "blkid from util-linux ",
        modelled: None,
    },
];

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    MissingTool(#[from] MissingTool),
    /// busybox is there but dynamically linked: the image needs busybox-static.
    #[error("{0}: busybox is not statically linked (install it with: apt-get install -y busybox-static)")]
    BusyboxNotStatic(PathBuf),
    #[error("{path}: cannot add to the image: {why}")]
    BadInput { path: PathBuf, why: String },
    #[error("ldd {program}: {why}")]
    Ldd { program: PathBuf, why: String },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The image is larger than [`MAX_SIZE`].
    #[error("image size {size} bytes ({} GiB) is over the limit of {} GiB for a root image", size >> 30, max >> 30)]
    TooLarge { size: u64, max: u64 },
    /// The image's allocation would not fit on the disk it goes to.
    #[error("image size {size} bytes needs about {needed} MiB on {path} (the sparse image's journal and metadata{}), which has {free} MiB free", if *copies > 1 { ", twice: the cache entry and the run folder's copy" } else { "" })]
    NoSpace {
        size: u64,
        path: PathBuf,
        needed: u64,
        free: u64,
        copies: u64,
    },
    /// The files alone would not fit in the image.
    #[error("image size {size} bytes is too small for its {files} bytes of files (the default image needs 32M or more)")]
    TooSmall { size: u64, files: u64 },
    /// Another build held the cache lock for too long.
    #[error("image cache {path} stayed locked by another build for {} s", LOCK_WAIT.as_secs())]
    Locked { path: PathBuf },
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io {
        context,
        path,
        source,
    }
}

/// What to put in an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Host programs besides busybox (default: the [`GUEST_PROGRAMS`] found on the host).
    pub programs: Vec<PathBuf>,
    pub size: u64,
    /// Cache directory (`$XDG_CACHE_HOME/umltest`); `None` builds without caching.
    pub cache_dir: Option<PathBuf>,
}

impl ImageSpec {
    /// The default image: the guest programs plus `extra`, cached in the user's cache dir.
    pub fn default_with(extra: &[PathBuf]) -> Self {
        let mut programs: Vec<PathBuf> = GUEST_PROGRAMS
            .iter()
            .filter(|p| p.name != "busybox")
            .map(|p| PathBuf::from(p.host_path))
            .collect();
        for e in extra {
            if !programs.contains(e) {
                programs.push(e.clone());
            }
        }
        Self {
            programs,
            size: DEFAULT_SIZE,
            cache_dir: default_cache_dir(),
        }
    }
}

/// `$XDG_CACHE_HOME/umltest`, else `~/.cache/umltest`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("umltest"))
}

/// A guest program found on the host, with its version.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgramReport {
    pub name: String,
    pub path: PathBuf,
    pub version: Option<String>,
    pub modelled: Option<String>,
    /// Set when the version differs from the one the sim models.
    pub warning: Option<String>,
}

/// The result of [`build`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageReport {
    pub out: PathBuf,
    /// sha256 of the image's inputs; the cache key.
    pub content_key: String,
    pub cache_hit: bool,
    pub cached_at: Option<PathBuf>,
    pub programs: Vec<ProgramReport>,
    pub mkfs_version: String,
}

/// One entry of the image's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File {
        source: PathBuf,
        mode: u32,
    },
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    /// A file of `size` bytes standing in for a host binary (the sim's image):
    /// staged empty, then given its blocks as unwritten extents (`debugfs
    /// fallocate`), so the filesystem counts them as for the real program (`df`
    /// agrees), they read as zeros, and the image file stays sparse: a run's
    /// copy of it costs what an empty filesystem's does.
    Placeholder {
        size: u64,
        mode: u32,
    },
    Symlink(String),
}

/// `mkfs.ext4` and `debugfs` on the host, and what identifies their version.
struct E2fsTools {
    mkfs: PathBuf,
    debugfs: PathBuf,
    version: String,
}

/// `run_version`: ask mkfs for its version (the report shows it); else the
/// binaries' path, size, mtime and inode stand for it.
fn e2fs_tools(run_version: bool) -> Result<E2fsTools, ImageError> {
    let mkfs = find_program("mkfs.ext4").ok_or(MissingTool {
        program: "mkfs.ext4",
        package: "e2fsprogs",
    })?;
    let debugfs = find_program("debugfs").ok_or(MissingTool {
        program: "debugfs",
        package: "e2fsprogs",
    })?;
    let version = if run_version {
        tool_output(&mkfs, &["-V"])
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    } else {
        // The binaries' identity: as good a cache key, without a process per run.
        use std::os::unix::fs::MetadataExt;
        let id = |p: &Path| match std::fs::metadata(p) {
            Ok(m) => format!("{} {} {} {}", p.display(), m.len(), m.mtime(), m.ino()),
            Err(_) => p.display().to_string(),
        };
        format!("{}; {}", id(&mkfs), id(&debugfs))
    };
    Ok(E2fsTools {
        mkfs,
        debugfs,
        version,
    })
}

/// Builds (or takes from the cache) the image described by `spec` and writes it to `out`.
pub fn build(spec: &ImageSpec, out: &Path) -> Result<ImageReport, ImageError> {
    let (tree, programs) = staging_tree(spec)?;
    let tools = e2fs_tools(true)?;
    build_tree(
        &tree,
        spec.size,
        spec.cache_dir.as_deref(),
        &tools,
        programs,
        out,
    )
}

/// The manifest of the image `spec` describes, from the tree [`build`] stages
/// (plus `/` and `/lost+found`, which mkfs makes): see [`super::manifest`].
pub fn manifest(spec: &ImageSpec) -> Result<Manifest, ImageError> {
    let (tree, _) = staging_tree(spec)?;
    let dir = |mode| Item {
        kind: Kind::Dir,
        mode,
        uid: 0,
        gid: 0,
    };
    let mut items = BTreeMap::from([
        ("/".to_string(), dir(0o755)),
        ("/lost+found".to_string(), dir(0o700)),
    ]);
    for (path, entry) in &tree {
        let (kind, mode) = match entry {
            Entry::Dir => (Kind::Dir, 0o755),
            Entry::Symlink(target) => (Kind::Symlink(target.clone()), 0o777),
            Entry::Bytes { data, mode } => (file_kind(data), *mode),
            Entry::Placeholder { size, mode } => (Kind::Binary { size: *size }, *mode),
            Entry::File { source, mode } => {
                let data = std::fs::read(source).map_err(io_err("read", source))?;
                (file_kind(&data), *mode)
            }
        };
        items.insert(
            path.clone(),
            Item {
                kind,
                mode,
                uid: 0,
                gid: 0,
            },
        );
    }
    Ok(Manifest { items })
}

fn file_kind(data: &[u8]) -> Kind {
    if is_text(data) {
        Kind::Text(data.to_vec())
    } else {
        Kind::Binary {
            size: data.len() as u64,
        }
    }
}

/// Builds (or takes from the cache) an image holding what `manifest` describes,
/// with placeholders (unwritten extents, read as zeros) for its binaries, the same way as [`build`]
/// (staging tree, `mkfs.ext4 -d`, pinned times and owners): the sim's
/// `image = "default"` disk. Needs no guest program, only e2fsprogs.
pub fn build_from_manifest(
    manifest: &Manifest,
    size: u64,
    cache_dir: Option<&Path>,
    out: &Path,
) -> Result<ImageReport, ImageError> {
    let mut tree = BTreeMap::new();
    let mut bytes = 0u64;
    for (path, item) in &manifest.items {
        let bad = |why: String| ImageError::BadInput {
            path: PathBuf::from(path),
            why,
        };
        if (item.uid, item.gid) != (0, 0) {
            return Err(bad(format!(
                "owner {}:{}: images hold root's files only",
                item.uid, item.gid
            )));
        }
        // mkfs makes these two itself.
        if path == "/" || path == "/lost+found" {
            continue;
        }
        let entry = match &item.kind {
            Kind::Dir if item.mode == 0o755 => Entry::Dir,
            Kind::Dir => {
                return Err(bad(format!(
                    "directory mode {:04o}: images hold 0755 directories only",
                    item.mode
                )))
            }
            Kind::Symlink(target) => Entry::Symlink(target.clone()),
            Kind::Text(data) => {
                bytes += data.len() as u64;
                Entry::Bytes {
                    data: data.clone(),
                    mode: item.mode,
                }
            }
            Kind::Binary { size } => {
                bytes += size;
                Entry::Placeholder {
                    size: *size,
                    mode: item.mode,
                }
            }
        };
        tree.insert(path.clone(), entry);
    }
    if bytes >= size {
        return Err(ImageError::TooSmall { size, files: bytes });
    }
    let tools = e2fs_tools(false)?;
    build_tree(&tree, size, cache_dir, &tools, Vec::new(), out)
}

/// The tree [`build`] stages for `spec`, and the programs found on the host.
fn staging_tree(
    spec: &ImageSpec,
) -> Result<(BTreeMap<String, Entry>, Vec<ProgramReport>), ImageError> {
    let busybox = find_program("busybox").ok_or(MissingTool {
        program: "busybox",
        package: "busybox-static",
    })?;
    let busybox_bytes = std::fs::read(&busybox).map_err(io_err("read", &busybox))?;
    if !super::guest::is_static_elf(&busybox_bytes) {
        return Err(ImageError::BusyboxNotStatic(busybox));
    }
    let mut tree: BTreeMap<String, Entry> = BTreeMap::new();
    for dir in [
        "/bin",
        "/sbin",
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/etc",
        "/mnt",
        "/root",
        "/lib",
        "/lib64",
    ] {
        tree.insert(dir.into(), Entry::Dir);
    }
    tree.insert(
        "/bin/busybox".into(),
        Entry::File {
            source: busybox.clone(),
            mode: 0o755,
        },
    );
    let applets = tool_output(&busybox, &["--list-full"]);
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        add_parents(&mut tree, &format!("/{applet}"));
        tree.entry(format!("/{applet}"))
            .or_insert_with(|| Entry::Symlink("/bin/busybox".into()));
    }

    let mut guest_programs = Vec::new();
    let mut programs = vec![program_report("busybox", &busybox, GUEST_PROGRAMS.first())];
    for program in &spec.programs {
        let host = resolve_program(program)?;
        let guest_path = guest_path_of(program, &host)?;
        let meta = std::fs::metadata(&host).map_err(io_err("stat", &host))?;
        // The host program replaces busybox's applet of the same name wherever it
        // is linked (busybox has `arping` and `blkid` applets in other directories).
        let base = format!("/{}", guest_path.rsplit('/').next().unwrap_or_default());
        tree.retain(|path, entry| !(path.ends_with(&base) && matches!(entry, Entry::Symlink(_))));
        add_parents(&mut tree, &guest_path);
        guest_programs.push(guest_path.clone());
        tree.insert(
            guest_path.clone(),
            Entry::File {
                source: host.clone(),
                mode: meta.permissions().mode() & 0o7777,
            },
        );
        for lib in shared_libraries(&host)? {
            let lib_guest = lib.to_string_lossy().into_owned();
            add_parents(&mut tree, &lib_guest);
            tree.insert(
                lib_guest,
                Entry::File {
                    source: lib.clone(),
                    mode: 0o755,
                },
            );
        }
        let name = host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let known = GUEST_PROGRAMS.iter().find(|p| p.name == name);
        programs.push(program_report(&name, &host, known));
    }
    tree.insert(
        INIT_PATH.into(),
        Entry::Bytes {
            data: INIT_SCRIPT.as_bytes().to_vec(),
            mode: 0o755,
        },
    );
    let files: [(&str, Vec<u8>); 4] = [
        (
            "/etc/umltest-shellrc",
            shellrc(&guest_programs).into_bytes(),
        ),
        ("/etc/passwd", PASSWD.as_bytes().to_vec()),
        ("/etc/group", GROUP.as_bytes().to_vec()),
        ("/etc/hostname", b"(none)\n".to_vec()),
    ];
    for (path, data) in files {
        tree.insert(path.into(), Entry::Bytes { data, mode: 0o644 });
    }
    Ok((tree, programs))
}

/// Packs `tree` into an image of `size` bytes at `out`, through the cache when given.
fn build_tree(
    tree: &BTreeMap<String, Entry>,
    size: u64,
    cache_dir: Option<&Path>,
    tools: &E2fsTools,
    programs: Vec<ProgramReport>,
    out: &Path,
) -> Result<ImageReport, ImageError> {
    let (mkfs, debugfs) = (&tools.mkfs, &tools.debugfs);
    let content_key = content_key(tree, size, &tools.version)?;
    let mut report = ImageReport {
        out: out.to_path_buf(),
        content_key: content_key.clone(),
        cache_hit: false,
        cached_at: None,
        programs,
        mkfs_version: tools.version.clone(),
    };
    check_space(size, cache_dir, out)?;
    let Some(cache_dir) = cache_dir else {
        let work = tempfile::Builder::new()
            .prefix("umltest-image")
            .tempdir()
            .map_err(io_err("create temp dir", Path::new("/tmp")))?;
        let tmp_image = work.path().join("image.ext4");
        make_image(tree, size, mkfs, debugfs, work.path(), &tmp_image)?;
        sparse_copy_atomic(&tmp_image, out)?;
        return Ok(report);
    };
    std::fs::create_dir_all(cache_dir).map_err(io_err("create", cache_dir))?;
    let cached = cache_dir.join(format!("rootfs-{}.ext4", &content_key[..32]));
    // Parallel runs share the cache: one builds while the others wait, then
    // find the entry. The lock goes with the process, however it ends. A hit
    // needs no lock (entries appear by rename), so a read-only cache serves.
    let lock = if cached.is_file() {
        None
    } else {
        Some(lock_cache(cache_dir)?)
    };
    if cached.is_file() {
        report.cache_hit = true;
    } else {
        remove_stale_builds(cache_dir);
        // Built inside the cache dir and renamed into place: a concurrent or killed
        // build never leaves a half-written image under the final name, and a
        // failed one leaves nothing (the temporary dir goes with it).
        let work = tempfile::Builder::new()
            .prefix(".build")
            .tempdir_in(cache_dir)
            .map_err(io_err("create temp dir in", cache_dir))?;
        let tmp_image = work.path().join("image.ext4");
        make_image(tree, size, mkfs, debugfs, work.path(), &tmp_image)?;
        std::fs::rename(&tmp_image, &cached).map_err(io_err("rename into", &cached))?;
    }
    drop(lock);
    sparse_copy_atomic(&cached, out)?;
    report.cached_at = Some(cached);
    Ok(report)
}

/// Finds a `--with` program: a path as given, or a name on `PATH`.
fn resolve_program(program: &Path) -> Result<PathBuf, ImageError> {
    let found = if program.components().count() > 1 {
        program.is_file().then(|| program.to_path_buf())
    } else {
        find_program(&program.to_string_lossy())
    };
    found.ok_or_else(|| ImageError::BadInput {
        path: program.to_path_buf(),
        why: "no such program on the host".into(),
    })
}

/// The program goes to the same absolute path in the guest.
fn guest_path_of(asked: &Path, host: &Path) -> Result<String, ImageError> {
    let path = if asked.is_absolute() { asked } else { host };
    let text = path.to_string_lossy().into_owned();
    if !path.is_absolute() || text.contains("..") || text.chars().any(char::is_whitespace) {
        return Err(ImageError::BadInput {
            path: path.to_path_buf(),
            why: "needs an absolute path without `..` or spaces".into(),
        });
    }
    Ok(text)
}

fn add_parents(tree: &mut BTreeMap<String, Entry>, path: &str) {
    let mut at = path;
    while let Some(slash) = at.rfind('/') {
        at = &at[..slash];
        if at.is_empty() {
            break;
        }
        tree.entry(at.to_string()).or_insert(Entry::Dir);
    }
}

/// The shared libraries and loader `program` needs, from `ldd` (empty for static
/// programs).
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let bytes = std::fs::read(program).map_err(io_err("read", program))?;
    if super::guest::is_static_elf(&bytes) {
        return Ok(Vec::new());
    }
    let ldd = find_program("ldd").ok_or(MissingTool {
        program: "ldd",
        package: "libc-bin",
    })?;
    let out = Command::new(ldd)
        .arg(program)
        .output()
        .map_err(io_err("run ldd on", program))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(ImageError::Ldd {
            program: program.to_path_buf(),
            why: format!("{}{}", text, String::from_utf8_lossy(&out.stderr)),
        });
    }
    parse_ldd(&text).map_err(|why| ImageError::Ldd {
        program: program.to_path_buf(),
        why,
    })
}

/// Parses `ldd` output: `libx.so => /path (0x...)`, `/lib64/ld-linux-x86-64.so.2
/// (0x...)`; the vDSO (no path) is skipped; `=> not found` is an error.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("library {} not found", name.trim()));
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            let path = PathBuf::from(path);
            if !libs.contains(&path) {
                libs.push(path);
            }
        }
    }
    Ok(libs)
}

fn tool_output(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => String::new(),
    }
}

fn program_report(name: &str, path: &Path, known: Option<&GuestProgram>) -> ProgramReport {
    let (version, modelled) = match known {
        Some(k) => (
            extract_version(&tool_output(path, k.version_args), k.version_prefix),
            k.modelled,
        ),
        None => (None, None),
    };
    let warning = match (modelled, &version) {
        (Some(m), Some(v)) if !version_matches(v, m) => Some(format!(
            "{name} {v} on the host, but the sim models {name} {m}: outputs may differ"
        )),
        (Some(m), None) => Some(format!(
            "{name}: could not read its version; the sim models {name} {m}"
        )),
        _ => None,
    };
    ProgramReport {
        name: name.to_string(),
        path: path.to_path_buf(),
        version,
        modelled: modelled.map(str::to_string),
        warning,
    }
}

/// The version number following `prefix` in a program's version output.
pub fn extract_version(output: &str, prefix: &str) -> Option<String> {
    let at = output.find(prefix)? + prefix.len();
    let version: String = output[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .collect();
    (!version.is_empty()).then_some(version)
}

/// `4.99.3` matches the modelled `4.99`; `2.23` matches `2.23`; `2.230` does not.
pub fn version_matches(found: &str, modelled: &str) -> bool {
    found == modelled
        || found
            .strip_prefix(modelled)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// sha256 over everything that ends up in the image (paths, modes, contents,
/// link targets), the size and the mkfs version.
fn content_key(
    tree: &BTreeMap<String, Entry>,
    size: u64,
    mkfs_version: &str,
) -> Result<String, ImageError> {
    let mut hasher = Sha256::new();
    hasher.update(format!("{LAYOUT_VERSION}\n{size}\n{mkfs_version}\n"));
    for (path, entry) in tree {
        match entry {
            Entry::Dir => hasher.update(format!("D {path}\n")),
            Entry::Symlink(target) => hasher.update(format!("L {path} {target}\n")),
            Entry::Bytes { data, mode } => {
                hasher.update(format!("F {path} {mode:o} {}\n", data.len()));
                hasher.update(data);
            }
            Entry::File { source, mode } => {
                let data = std::fs::read(source).map_err(io_err("read", source))?;
                hasher.update(format!("F {path} {mode:o} {}\n", data.len()));
                hasher.update(&data);
            }
            Entry::Placeholder { size, mode } => {
                hasher.update(format!("P {path} {mode:o} {size} fallocate\n"));
            }
        }
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Stages the tree in `work/root`, runs `mkfs.ext4 -d`, then pins inode times and owners.
fn make_image(
    tree: &BTreeMap<String, Entry>,
    size: u64,
    mkfs: &Path,
    debugfs: &Path,
    work: &Path,
    image: &Path,
) -> Result<(), ImageError> {
    let root = work.join("root");
    std::fs::create_dir_all(&root).map_err(io_err("create", &root))?;
    // Explicit modes: mkfs copies the staging tree's, which the umask would decide.
    set_mode(&root, 0o755)?;
    for (path, entry) in tree {
        let host = root.join(path.trim_start_matches('/'));
        match entry {
            Entry::Dir => {
                std::fs::create_dir_all(&host).map_err(io_err("create", &host))?;
                set_mode(&host, 0o755)?;
            }
            Entry::Placeholder { mode, .. } => {
                File::create(&host).map_err(io_err("create", &host))?;
                set_mode(&host, *mode)?;
            }
            Entry::Symlink(target) => {
                std::os::unix::fs::symlink(target, &host).map_err(io_err("symlink", &host))?
            }
            Entry::File { source, mode } => {
                std::fs::copy(source, &host).map_err(io_err("copy to", &host))?;
                set_mode(&host, *mode)?;
            }
            Entry::Bytes { data, mode } => {
                std::fs::write(&host, data).map_err(io_err("write", &host))?;
                set_mode(&host, *mode)?;
            }
        }
    }
    let conf = work.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).map_err(io_err("write", &conf))?;
    let out = Command::new(mkfs)
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", FIXED_TIME.to_string())
        .args(["-q", "-F", "-t", "ext4", "-U", FIXED_UUID, "-E"])
        .arg(format!("hash_seed={FIXED_UUID},root_owner=0:0"))
        .arg("-d")
        .arg(&root)
        .arg(image)
        .arg(format!("{}k", size / 1024))
        .output()
        .map_err(io_err("run", mkfs))?;
    check_tool("mkfs.ext4", &out)?;
    let mut script = String::new();
    // Before the times are pinned: fallocate stamps them.
    for (path, entry) in tree {
        if let Entry::Placeholder { size, .. } = entry {
            if *size > 0 {
                // MKE2FS_CONF's 4 KiB blocks.
                let _ = writeln!(script, "fallocate \"{path}\" 0 {}", size.div_ceil(4096) - 1);
                let _ = writeln!(script, "sif \"{path}\" size {size}");
            }
        }
    }
    for path in std::iter::once("/").chain(tree.keys().map(String::as_str)) {
        for (field, value) in [
            ("uid", 0),
            ("gid", 0),
            ("atime", FIXED_TIME),
            ("mtime", FIXED_TIME),
            ("ctime", FIXED_TIME),
            ("crtime", FIXED_TIME),
            ("atime_extra", 0),
            ("mtime_extra", 0),
            ("ctime_extra", 0),
            ("crtime_extra", 0),
        ] {
            let _ = writeln!(script, "sif \"{path}\" {field} {value}");
        }
    }
    let cmds = work.join("debugfs.cmds");
    std::fs::write(&cmds, script).map_err(io_err("write", &cmds))?;
    let out = Command::new(debugfs)
        .env("E2FSPROGS_FAKE_TIME", FIXED_TIME.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(image)
        .output()
        .map_err(io_err("run", debugfs))?;
    check_tool("debugfs", &out)?;
    // debugfs reports per-command failures on stderr but exits 0: any line other
    // than its banner means an inode was not pinned and the image is not reproducible.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(bad) = stderr.lines().find(|l| !l.starts_with("debugfs ")) {
        return Err(ImageError::ToolFailed {
            tool: "debugfs".into(),
            status: "exit 0".into(),
            stderr: bad.to_string(),
        });
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}

fn check_tool(tool: &str, out: &std::process::Output) -> Result<(), ImageError> {
    if out.status.success() {
        return Ok(());
    }
    Err(ImageError::ToolFailed {
        tool: tool.into(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The next data extent of `file` at or after `pos`, as `[start, end)`; `None`
/// when only a hole is left. Where SEEK_DATA is not supported, all of it is data.
fn data_extent(file: &File, pos: u64, len: u64) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let at = i64::try_from(pos).ok()?;
    // SAFETY: lseek on a descriptor we own.
    let start = unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_DATA) };
    if start < 0 {
        let e = std::io::Error::last_os_error();
        return (e.raw_os_error() != Some(libc::ENXIO)).then_some((pos, len));
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(file.as_raw_fd(), start, libc::SEEK_HOLE) };
    let end = if end < 0 { len } else { (end as u64).min(len) };
    Some((start as u64, end))
}

/// What `mkfs.ext4` allocates for an image of `size` bytes with our profile
/// (lazy inode tables), generously: the journal (e2fsprogs'
/// `ext2fs_default_journal_size`, 4 KiB blocks), one block and inode bitmap
/// per 128 MiB group, and 64 MiB for the tree and the group descriptors.
/// Measured allocations: 1 GiB 33 MB, 8 GiB 70 MB, 64 GiB 529 MB, 1 TiB 1.06 GB.
pub fn estimated_allocation(size: u64) -> u64 {
    let blocks = size / 4096;
    let journal_blocks: u64 = match blocks {
        0..2048 => 0,
        2048..32768 => 1024,
        32768..262144 => 4096,
        262144..524288 => 8192,
        524288..4194304 => 16384,
        4194304..8388608 => 32768,
        8388608..16777216 => 65536,
        16777216..33554432 => 131072,
        _ => 262144,
    };
    journal_blocks * 4096 + (size / (128 << 20) + 1) * 8192 + (64 << 20)
}

/// Refuses an image over [`MAX_SIZE`], or one whose allocation (in the cache and
/// at `out`) would not fit, before anything is written.
fn check_space(size: u64, cache_dir: Option<&Path>, out: &Path) -> Result<(), ImageError> {
    check_space_with(size, cache_dir, out, &|p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(p).map_err(io_err("stat", p))?.dev();
        let st = nix::sys::statvfs::statvfs(p).map_err(|e| ImageError::Io {
            context: "statvfs",
            path: p.to_path_buf(),
            source: e.into(),
        })?;
        Ok((dev, st.blocks_available() * st.fragment_size()))
    })
}

/// `(device, free bytes)` of the filesystem holding a directory.
type FsOf<'a> = &'a dyn Fn(&Path) -> Result<(u64, u64), ImageError>;

/// [`check_space`] with `fs_of` telling the filesystem of a directory.
fn check_space_with(
    size: u64,
    cache_dir: Option<&Path>,
    out: &Path,
    fs_of: FsOf,
) -> Result<(), ImageError> {
    if size > MAX_SIZE {
        return Err(ImageError::TooLarge {
            size,
            max: MAX_SIZE,
        });
    }
    let need = estimated_allocation(size);
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The cache dir may not exist yet: its nearest existing ancestor.
    let cache = cache_dir.map(|d| {
        d.ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"))
            .to_path_buf()
    });
    let mut places = vec![(out_dir.clone(), fs_of(&out_dir)?)];
    if let Some(c) = cache {
        places.push((c.clone(), fs_of(&c)?));
    }
    for (path, (dev, free)) in &places {
        let copies = places.iter().filter(|(_, (d, _))| d == dev).count() as u64;
        let needed = need * copies + SPACE_MARGIN;
        if needed > *free {
            return Err(ImageError::NoSpace {
                size,
                path: path.clone(),
                needed: needed >> 20,
                free: free >> 20,
                copies,
            });
        }
    }
    Ok(())
}

/// Takes the cache's lock file (`flock`), waiting at most [`LOCK_WAIT`].
fn lock_cache(cache_dir: &Path) -> Result<File, ImageError> {
    use std::os::fd::AsRawFd;
    let path = cache_dir.join(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err("lock", &path)(e));
        }
        if std::time::Instant::now() >= deadline {
            return Err(ImageError::Locked { path });
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Removes `.build*` dirs left by builds that were killed (called with the lock
/// held, so none of them is in progress).
fn remove_stale_builds(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(".build") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Copies `src` to `dst` keeping holes (all-zero blocks are skipped), through a
/// temporary file renamed into place.
fn sparse_copy_atomic(src: &Path, dst: &Path) -> Result<(), ImageError> {
    let dir = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut input = File::open(src).map_err(io_err("open", src))?;
    let len = input.metadata().map_err(io_err("stat", src))?.len();
    let mut tmp = tempfile::Builder::new()
        .prefix(".umltest-image")
        .tempfile_in(&dir)
        .map_err(io_err("create temp file in", &dir))?;
    let mut buf = vec![0u8; 64 << 10];
    // Only the data extents are read (SEEK_DATA/SEEK_HOLE): a large sparse
    // image copies in the time its allocation takes, not its size.
    let mut pos = 0u64;
    while pos < len {
        let Some((start, end)) = data_extent(&input, pos, len) else {
            break;
        };
        input
            .seek(SeekFrom::Start(start))
            .map_err(io_err("seek", src))?;
        tmp.as_file_mut()
            .seek(SeekFrom::Start(start))
            .map_err(io_err("seek", dst))?;
        let mut left = end - start;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = input
                .read(buf.get_mut(..want).unwrap_or_default())
                .map_err(io_err("read", src))?;
            if n == 0 {
                break;
            }
            left -= n as u64;
            let chunk = buf.get(..n).unwrap_or_default();
            // 4 KiB granularity: the filesystem's block size, so holes stay holes.
            for block in chunk.chunks(4096) {
                if block.iter().all(|&b| b == 0) {
                    tmp.as_file_mut()
                        .seek(SeekFrom::Current(block.len() as i64))
                        .map_err(io_err("seek", dst))?;
                } else {
                    tmp.as_file_mut()
                        .write_all(block)
                        .map_err(io_err("write", dst))?;
                }
            }
        }
        pos = end;
    }
    tmp.as_file_mut()
        .set_len(len)
        .map_err(io_err("truncate", dst))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err("chmod", dst))?;
    tmp.persist(dst).map_err(|e| ImageError::Io {
        context: "rename into",
        path: dst.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Allocations measured with `mkfs.ext4` 1.47 and [`MKE2FS_CONF`] (`du -k`).
    #[test]
    fn the_allocation_estimate_covers_what_mkfs_allocates() {
        for (size, measured_kib) in [
            (1u64 << 30, 33_428u64),
            (8 << 30, 69_824),
            (64 << 30, 529_100),
        ] {
            let est = estimated_allocation(size);
            assert!(
                est >= measured_kib * 1024,
                "{size}: {est} < {measured_kib} KiB"
            );
            assert!(
                est <= measured_kib * 1024 * 2 + (64 << 20),
                "{size}: {est} far above {measured_kib} KiB"
            );
        }
    }

    #[test]
    fn an_image_over_the_limit_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let err = check_space(1 << 40, Some(&cache), &dir.path().join("fs.ext4")).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("1024 GiB"), "{err}");
        assert!(check_space(64 << 20, Some(&cache), &dir.path().join("fs.ext4")).is_ok());
        assert!(!cache.exists());
    }

    #[test]
    fn an_image_whose_allocation_does_not_fit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fs.ext4");
        let cache = dir.path().join("cache");
        // One filesystem with 1 GiB free: a 64 GiB image (about 580 MiB
        // allocated) fits once, not twice (cache entry and run-folder copy).
        let one_fs = |_: &Path| Ok((1, 1 << 30));
        let err = check_space_with(64 << 30, Some(&cache), &out, &one_fs).unwrap_err();
        assert!(
            matches!(err, ImageError::NoSpace { copies: 2, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("twice: the cache entry and the run folder's copy"),
            "{err}"
        );
        assert!(check_space_with(64 << 30, None, &out, &one_fs).is_ok());
        // The cache on another filesystem, 1 GiB free each: it fits.
        std::fs::create_dir(&cache).unwrap();
        let two_fs = |p: &Path| Ok((u64::from(p == cache.as_path()), 1 << 30));
        assert!(check_space_with(64 << 30, Some(&cache), &out, &two_fs).is_ok());
        // The default size fits anywhere with 512 MiB free.
        assert!(
            check_space_with(DEFAULT_SIZE, Some(&cache), &out, &|_| Ok((1, 512 << 20))).is_ok()
        );
    }

    #[test]
    fn a_sparse_copy_reads_only_data_extents() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(1 << 40).unwrap(); // 1 TiB of hole: reading it would take hours
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (1 << 40) - 4).unwrap();
        let dst = dir.path().join("dst");
        sparse_copy_atomic(&src, &dst).unwrap();
        let out = File::open(&dst).unwrap();
        assert_eq!(out.metadata().unwrap().len(), 1 << 40);
        let mut b = [0u8; 4];
        out.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"head");
        out.read_exact_at(&mut b, (1 << 40) - 4).unwrap();
        assert_eq!(&b, b"tail");
    }

    #[test]
    fn ldd_output_of_arping_is_parsed() {
        // `ldd /usr/sbin/arping` on Debian 12, abridged.
        let text = "\tlinux-vdso.so.1 (0x00007fdee33d7000)\n\
            \tlibpcap.so.0.8 => /lib/x86_64-linux-gnu/libpcap.so.0.8 (0x00007fdee336d000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fdee306f000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007fdee33d9000)\n";
        assert_eq!(
            parse_ldd(text).unwrap_or_default(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libpcap.so.0.8"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn versions_are_read_from_real_outputs() {
        // Outputs of the Debian 12 binaries.
        let cases = [
            (
                "ARPing 2.23, by Thomas Habets <thomas@habets.se>\nusage: arping",
                "ARPing ",
                "2.23",
            ),
            (
                "tcpdump version 4.99.3\nlibpcap version 1.10.3",
                "tcpdump version ",
                "4.99.3",
            ),
            (
                "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call",
                "BusyBox v",
                "1.35.0",
            ),
            (
                "blkid from util-linux 2.38.1  (libblkid 2.38.1, 04-Aug-2022)",
                "blkid from util-linux ",
                "2.38.1",
            ),
        ];
        for (out, prefix, want) in cases {
            assert_eq!(extract_version(out, prefix).as_deref(), Some(want));
        }
        assert_eq!(extract_version("nothing here", "ARPing "), None);
        assert!(version_matches("4.99.3", "4.99"));
        assert!(version_matches("2.23", "2.23"));
        assert!(!version_matches("2.230", "2.23"));
        assert!(!version_matches("2.21", "2.23"));
    }

    #[test]
    fn parents_are_added() {
        let mut tree = BTreeMap::new();
        add_parents(&mut tree, "/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(
            tree.keys().cloned().collect::<Vec<_>>(),
            vec!["/lib".to_string(), "/lib/x86_64-linux-gnu".to_string()]
        );
    }

    proptest! {
        #[test]
        fn ldd_parser_never_panics(text in "\\PC*") {
            let _ = parse_ldd(&text);
            let _ = extract_version(&text, "v");
        }
    }
}
