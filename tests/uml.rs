//! The real backend: root images, the machine driver's console protocol, mconsole.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::util;

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    format!("{:x}", Sha256::digest(&bytes))
}

/// `umltest args` in `cwd` with extra environment variables.
fn umltest_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> util::Run {
    let output = std::process::Command::new(util::umltest_bin())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("spawn umltest");
    util::Run {
        cmdline: format!("{env:?} umltest {}", args.join(" ")),
        cwd: cwd.to_path_buf(),
        output,
    }
}

fn debugfs_ls(image: &Path, dir: &str) -> String {
    let debugfs = util::tool("debugfs", "e2fsprogs").expect("debugfs");
    let out = std::process::Command::new(debugfs)
        .args(["-R", &format!("ls -l {dir}")])
        .arg(image)
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn image_build_is_reproducible_sparse_cached_and_holds_the_guest_programs() {
    if util::guest_tools().is_none() || util::tool("arping", "arping").is_none() {
        return;
    }
    let dir = util::tempdir();
    let cache = dir.path().join("cache");
    let cache_env = cache.to_string_lossy().into_owned();
    let build = |out: &str, extra: &[&str]| {
        let mut args = vec!["image", "build"];
        args.extend_from_slice(extra);
        args.push(out);
        let run = umltest_env(dir.path(), &args, &[("XDG_CACHE_HOME", &cache_env)]);
        run.expect_code(0);
        run
    };
    // Two builds from scratch (no cache) must be byte-identical.
    build("a.ext4", &["--no-cache"]);
    build("b.ext4", &["--no-cache"]);
    let a = dir.path().join("a.ext4");
    assert_eq!(sha256_file(&a), sha256_file(&dir.path().join("b.ext4")));
    // The cache: first build fills it, the second is a hit with the same bytes.
    let first = build("c.ext4", &[]);
    assert!(
        first.stdout().contains("built and cached:"),
        "{}",
        first.dump()
    );
    let second = build("d.ext4", &[]);
    assert!(second.stdout().contains("cached: "), "{}", second.dump());
    assert!(
        !second.stdout().contains("built and cached"),
        "{}",
        second.dump()
    );
    assert_eq!(sha256_file(&a), sha256_file(&dir.path().join("d.ext4")));
    // Sparse: 64 MiB long, far fewer bytes allocated.
    let meta = std::fs::metadata(&a).expect("stat");
    assert_eq!(meta.len(), 64 << 20);
    assert!(meta.blocks() * 512 < 40 << 20, "{} blocks", meta.blocks());
    // Contents: the host programs (not busybox applet links), their loader, the init.
    let sbin = debugfs_ls(&a, "/usr/sbin");
    let arping = sbin
        .lines()
        .find(|l| l.ends_with(" arping"))
        .unwrap_or_else(|| panic!("no arping in /usr/sbin:\n{sbin}"));
    assert!(
        arping.contains("100755"),
        "arping is not a regular file: {arping}"
    );
    assert!(debugfs_ls(&a, "/lib64").contains("ld-linux-x86-64.so.2"));
    assert!(debugfs_ls(&a, "/lib/x86_64-linux-gnu").contains("libpcap.so.0.8"));
    assert!(debugfs_ls(&a, "/usr/bin").contains(" tcpdump"));
    assert!(debugfs_ls(&a, "/").contains(" init"));
    // The report names the versions found.
    assert!(first.stdout().contains("arping   2.23"), "{}", first.dump());
}

#[test]
fn image_build_with_a_missing_program_names_it() {
    if util::guest_tools().is_none() {
        return;
    }
    let dir = util::tempdir();
    let run = util::umltest(
        dir.path(),
        &[
            "image",
            "build",
            "--no-cache",
            "--with",
            "/nonexistent/prog",
            "x.ext4",
        ],
    );
    run.expect_code(1);
    assert!(run.stderr().contains("/nonexistent/prog"), "{}", run.dump());
    assert!(!dir.path().join("x.ext4").exists());
}
