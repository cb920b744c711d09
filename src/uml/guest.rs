//! Scripted guests: boot a real `linux.uml` with a busybox root whose `/init` is a
//! shell script, collect everything it prints, and return when it powers off.
//!
//! This is the smallest reliable way to ask the real kernel a question (what is
//! `/proc/cmdline`, what did `dd` write to `/dev/ubdb`): no interactive console,
//! the answer is printed between markers and the guest halts itself. The COW,
//! command-line and switch interop tests share it, and the `uml` backend's image
//! builder grows from it.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Host programs a real guest needs.
#[derive(Debug, Clone)]
pub struct GuestTools {
    /// `linux.uml` (Debian package `user-mode-linux`).
    pub linux: PathBuf,
    /// A statically linked busybox (Debian package `busybox-static`).
    pub busybox: PathBuf,
    /// `mkfs.ext4` (e2fsprogs), used with `-d` to build a root image without root.
    pub mkfs_ext4: PathBuf,
}

/// A host program that is missing, with the Debian package that provides it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{program} not found on PATH (install it with: apt-get install -y {package})")]
pub struct MissingTool {
    pub program: &'static str,
    pub package: &'static str,
}

/// Finds `program` in `$PATH` (and the sbin directories, which a non-root PATH lacks).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Finds a program or says which package to install.
pub fn require_program(
    program: &'static str,
    package: &'static str,
) -> Result<PathBuf, MissingTool> {
    find_program(program).ok_or(MissingTool { program, package })
}

impl GuestTools {
    /// Locates `linux.uml`, a static busybox and `mkfs.ext4`.
    pub fn find() -> Result<Self, MissingTool> {
        let linux = require_program("linux.uml", "user-mode-linux")?;
        let busybox = find_static_busybox().ok_or(MissingTool {
            program: "busybox (static)",
            package: "busybox-static",
        })?;
        let mkfs_ext4 = require_program("mkfs.ext4", "e2fsprogs")?;
        Ok(Self {
            linux,
            busybox,
            mkfs_ext4,
        })
    }
}

/// The static busybox: Debian's `busybox-static` installs `/bin/busybox`; the dynamic
/// `busybox` package uses the same path, so check that it has no interpreter.
fn find_static_busybox() -> Option<PathBuf> {
    let path = find_program("busybox")?;
    let bytes = std::fs::read(&path).ok()?;
    is_static_elf(&bytes).then_some(path)
}

/// True for an ELF file without a `PT_INTERP` program header.
pub(crate) fn is_static_elf(bytes: &[u8]) -> bool {
    // ELF64 little-endian only: that is what linux.uml on x86_64 runs.
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let phoff = u64_at(32) as usize;
    let phentsize = u16_at(54) as usize;
    let phnum = u16_at(56) as usize;
    (0..phnum).all(|i| {
        let off = phoff + i * phentsize;
        match bytes.get(off..off + 4) {
            Some(p_type) => p_type != [3, 0, 0, 0], // PT_INTERP
            None => true,
        }
    })
}

/// A root filesystem description: busybox with all applet links, an `/init`
/// script, and extra files.
#[derive(Debug, Clone, Default)]
pub struct RootFs {
    /// Body of `/init`; a `#!/bin/sh` line, /proc, /sys and /dev mounts are added.
    pub init_script: String,
    /// Extra files: (absolute guest path, contents, mode).
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Image size in bytes (default 32 MiB).
    pub size: Option<u64>,
}

/// Marker printed by the standard init prologue; everything after it is the script's.
pub const INIT_STARTED: &str = "UMLTEST-INIT-STARTED";

impl RootFs {
    /// A root whose `/init` runs `script` and then powers the machine off.
    pub fn with_script(script: &str) -> Self {
        Self {
            init_script: script.to_string(),
            ..Self::default()
        }
    }

    /// Builds the image at `image` (an ext4 file made with `mkfs.ext4 -d`, no root needed).
    pub fn build(&self, tools: &GuestTools, image: &Path) -> std::io::Result<()> {
        let staging = tempfile::Builder::new().prefix("umltest-root").tempdir()?;
        let root = staging.path();
        for dir in [
            "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc", "mnt",
        ] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        std::fs::copy(&tools.busybox, root.join("bin/busybox"))?;
        let applets = Command::new(&tools.busybox).arg("--list-full").output()?;
        for applet in String::from_utf8_lossy(&applets.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
                continue;
            }
            let link = root.join(applet);
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if !link.exists() {
                std::os::unix::fs::symlink("/bin/busybox", &link)?;
            }
        }
        let init = format!(
            "#!/bin/sh\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             mount -t devtmpfs dev /dev 2>/dev/null\n\
             echo {INIT_STARTED}\n\
             {}\n\
             sync\n\
             poweroff -f\n",
            self.init_script
        );
        write_file(root, "/init", init.as_bytes(), 0o755)?;
        for (path, contents, mode) in &self.files {
            write_file(root, path, contents, *mode)?;
        }
        let size = self.size.unwrap_or(32 << 20);
        let _ = std::fs::remove_file(image);
        let out = Command::new(&tools.mkfs_ext4)
            .args(["-q", "-F", "-d"])
            .arg(root)
            .arg(image)
            .arg(format!("{}k", size / 1024))
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "mkfs.ext4 -d failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }
}

fn write_file(root: &Path, guest_path: &str, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let path = root.join(guest_path.trim_start_matches('/'));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, contents)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
}

/// What a finished boot printed.
#[derive(Debug, Clone)]
pub struct BootOutput {
    /// The exact argv given to `linux.uml` (without the program itself).
    pub args: Vec<String>,
    /// Everything written to the host's stdout: the kernel console (`con0=fd:0,fd:1`)
    /// and the host-side messages of the UML process.
    pub stdout: String,
    pub stderr: String,
    /// Exit status of the `linux.uml` process (`None` if killed by a signal).
    pub status: Option<i32>,
    pub timed_out: bool,
}

impl BootOutput {
    /// The lines printed by the init script (after the prologue's marker), with
    /// console `\r\n` turned into `\n`.
    pub fn script_output(&self) -> String {
        let text = self.stdout.replace("\r\n", "\n");
        match text.find(INIT_STARTED) {
            Some(at) => text[at + INIT_STARTED.len()..]
                .trim_start_matches('\n')
                .to_string(),
            None => String::new(),
        }
    }

    /// The text between `BEGIN <name>` and `END <name>` lines of the script output.
    pub fn section(&self, name: &str) -> Option<String> {
        let out = self.script_output();
        let begin = format!("BEGIN {name}\n");
        let end = format!("END {name}");
        let start = out.find(&begin)? + begin.len();
        let len = out[start..].find(&end)?;
        Some(out[start..start + len].to_string())
    }

    /// Everything a failing test should show.
    pub fn dump(&self) -> String {
        format!(
            "linux.uml {}\nstatus: {:?} timed out: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.timed_out,
            self.stdout,
            self.stderr
        )
    }
}

/// Boots `linux.uml ARGS` in `cwd` with address randomisation off (`setarch -R`),
/// stdin at /dev/null, and waits for it to exit or for `timeout` (then the whole
/// process group is killed). The caller provides every argument, so tests control
/// the exact command line.
pub fn boot(
    tools: &GuestTools,
    cwd: &Path,
    args: &[String],
    timeout: Duration,
) -> std::io::Result<BootOutput> {
    let mut cmd = match find_program("setarch") {
        Some(setarch) => {
            let mut c = Command::new(setarch);
            c.arg(std::env::consts::ARCH).arg("-R").arg(&tools.linux);
            c
        }
        None => Command::new(&tools.linux),
    };
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("TMPDIR", cwd)
        .process_group(0);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; it makes the kernel
    // stop the guest if the test process dies (SIGTERM: UML then kills its own
    // helpers; after SIGKILL two of them survive), so no stray linux.uml remains.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pgid = child.id() as i32;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr pipe"))?;
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // SAFETY: plain syscall on a process group we created.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // UML's helper processes share the group and may hold the pipes open.
    // SAFETY: as above.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Ok(BootOutput {
        args: args.to_vec(),
        stdout,
        stderr,
        status: status.code(),
        timed_out,
    })
}

/// The arguments every scripted boot needs: the root on `ubd0` (read-only, so
/// many guests can share one image), the console on stdio, no other consoles.
/// Tests that study the command line itself build their own list instead.
pub fn standard_args(root_image: &str) -> Vec<String> {
    vec![
        "mem=64M".into(),
        format!("ubd0r={root_image}"),
        "root=/dev/ubda".into(),
        "init=/init".into(),
        "con=null".into(),
        "con0=fd:0,fd:1".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_elf_detection_rejects_garbage() {
        assert!(!is_static_elf(b""));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        assert!(!is_static_elf(&[0x7f, b'E', b'L', b'F', 2, 1, 0, 0]));
    }

    #[test]
    fn section_extracts_between_markers() {
        let out = BootOutput {
            args: vec![],
            stdout: format!("kernel noise\r\n{INIT_STARTED}\r\nBEGIN a\r\nx\r\ny\r\nEND a\r\n"),
            stderr: String::new(),
            status: Some(0),
            timed_out: false,
        };
        assert_eq!(out.section("a").as_deref(), Some("x\ny\n"));
        assert_eq!(out.section("b"), None);
    }
}
