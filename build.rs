//! Builds csrc/ext4_shim.c and links libext2fs (e2fsprogs) statically.
//!
//! The library is pinned: its version decides the bytes the sim's guest
//! filesystem writes (allocation, directory layout), so a different
//! e2fsprogs would change snapshots. The build refuses any other version
//! with the package to install.

const PINNED: &str = "1.47.0";

fn main() {
    println!("cargo:rerun-if-changed=csrc/ext4_shim.c");
    println!("cargo:rerun-if-changed=csrc/ext2fs_lgpl_only.c");
    println!("cargo:rerun-if-changed=build.rs");
    let out = std::process::Command::new("pkg-config")
        .args(["--modversion", "ext2fs"])
        .output();
    let version = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => panic!(
            "libext2fs not found (pkg-config ext2fs): install it with `apt-get install libext2fs-dev pkg-config`"
        ),
    };
    if version != PINNED {
        panic!(
            "libext2fs {version} found, umltest is pinned to {PINNED} (the guest filesystem's bytes depend on it): install e2fsprogs' libext2fs-dev {PINNED}"
        );
    }
    cc::Build::new()
        .file("csrc/ext4_shim.c")
        // Listed before libext2fs.a: keeps its GPL-2 members out of the link.
        .file("csrc/ext2fs_lgpl_only.c")
        .warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .compile("umt_ext4_shim");
    // Static, so the binary carries the pinned library and not whatever
    // libext2fs.so.2 the host has at run time.
    let libdir = std::process::Command::new("pkg-config")
        .args(["--variable=libdir", "ext2fs"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if !libdir.is_empty() {
        println!("cargo:rustc-link-search=native={libdir}");
    }
    println!("cargo:rustc-link-lib=static=ext2fs");
    println!("cargo:rustc-link-lib=static=com_err");
}
