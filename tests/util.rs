//! Shared helpers for the integration tests: temp dirs, running the umltest
//! binary with full failure dumps, and gating on host tools.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// True when running in CI (`CI=true`): missing tools are then failures, not skips.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "0" && v != "false")
        .unwrap_or(false)
}

/// Returns the tool's path, or `None` after printing why the test is skipped.
/// In CI a missing tool panics: `.ci/run` must install it.
pub fn tool(program: &'static str, package: &'static str) -> Option<PathBuf> {
    match umltest::uml::guest::require_program(program, package) {
        Ok(path) => Some(path),
        Err(missing) => skip_or_fail(&missing.to_string()),
    }
}

/// Scripted-guest tools, or `None` after printing why the test is skipped.
pub fn guest_tools() -> Option<umltest::uml::guest::GuestTools> {
    match umltest::uml::guest::GuestTools::find() {
        Ok(tools) => Some(tools),
        Err(missing) => skip_or_fail(&missing.to_string()),
    }
}

fn skip_or_fail<T>(why: &str) -> Option<T> {
    if in_ci() {
        panic!("CI must provide this: {why}");
    }
    eprintln!("SKIPPED (not a pass): {why}");
    None
}

/// A fresh temporary directory with a short path (unix socket paths are limited to 108 bytes).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ut")
        .tempdir_in("/tmp")
        .expect("create temp dir")
}

/// The umltest binary built for these tests.
pub fn umltest_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_umltest"))
}

/// The result of running a command, with everything needed to understand a failure.
pub struct Run {
    pub cmdline: String,
    pub cwd: PathBuf,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    pub fn dump(&self) -> String {
        format!(
            "command: {}\ncwd: {}\nstatus: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.cwd.display(),
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
    /// Panics with the full dump unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "unexpected exit code\n{}",
            self.dump()
        );
        self
    }
}

/// Runs `program args` in `cwd`.
pub fn run_in(cwd: &Path, program: &Path, args: &[&str]) -> Run {
    let output = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    Run {
        cmdline: format!("{} {}", program.display(), args.join(" ")),
        cwd: cwd.to_path_buf(),
        output,
    }
}

/// Runs `umltest args` in `cwd`.
pub fn umltest(cwd: &Path, args: &[&str]) -> Run {
    run_in(cwd, &umltest_bin(), args)
}

/// Runs `umltest args` in `cwd` with environment changes: `Some(v)` sets, `None` removes.
pub fn umltest_env(cwd: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Run {
    let mut cmd = Command::new(umltest_bin());
    cmd.args(args).current_dir(cwd);
    let mut shown = Vec::new();
    for (key, value) in env {
        match value {
            Some(v) => {
                cmd.env(key, v);
                shown.push(format!("{key}={v}"));
            }
            None => {
                cmd.env_remove(key);
                shown.push(format!("-u {key}"));
            }
        }
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn umltest: {e}"));
    Run {
        cmdline: format!(
            "env {} {} {}",
            shown.join(" "),
            umltest_bin().display(),
            args.join(" ")
        ),
        cwd: cwd.to_path_buf(),
        output,
    }
}

/// In `d`: an 8 MiB ext4 `base.ext4` made from `tree` (paths below the image
/// root, with contents) and a copy `target.ext4` changed by the debugfs
/// commands `edits` (a `write` takes its source from `d`). `None` (skipped)
/// without mkfs.ext4 or debugfs.
pub fn ext4_base_and_edited(d: &Path, tree: &[(&str, &str)], edits: &[&str]) -> Option<()> {
    let mkfs = tool("mkfs.ext4", "e2fsprogs")?;
    let debugfs = tool("debugfs", "e2fsprogs")?;
    let root = d.join("ext4-root");
    for (p, body) in tree {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, body).expect("write");
    }
    let root_arg = root.display().to_string();
    let args = [
        "-q",
        "-F",
        "-E",
        "root_owner=0:0",
        "-d",
        &root_arg,
        "base.ext4",
        "8M",
    ];
    run_in(d, &mkfs, &args).expect_code(0);
    std::fs::copy(d.join("base.ext4"), d.join("target.ext4")).expect("cp");
    for cmd in edits {
        run_in(d, &debugfs, &["-w", "-R", cmd, "target.ext4"]).expect_code(0);
    }
    Some(())
}

/// Writes through the COW `cow` (over `base.ext4`) the 4 KiB blocks in which
/// `target.ext4` differs from it, so the COW's view is the edited image.
pub fn write_changed_blocks(d: &Path, cow: &Path) {
    let base = std::fs::read(d.join("base.ext4")).expect("base");
    let target = std::fs::read(d.join("target.ext4")).expect("target");
    let mut f = umltest::cow::CowFile::open(cow, None, true).expect("open COW");
    for (i, (a, b)) in base.chunks(4096).zip(target.chunks(4096)).enumerate() {
        if a != b {
            f.write_at(b, i as u64 * 4096).expect("write block");
        }
    }
}
