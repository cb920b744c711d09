//! The read-write ext4 module (`umltest::guestfs::ext4`) on images made by
//! the host's `mkfs.ext4` with Debian's defaults (metadata_csum, 64bit,
//! extents, flex_bg, journal), 1 KiB and 4 KiB blocks: writes land in a COW
//! file (the backing stays byte-identical), `e2fsck -fn` on the merged image
//! is clean, and `debugfs` reads back what was written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rstest::rstest;
use sha2::{Digest, Sha256};
use umltest::block::{BlockDevice, BlockError, Ubd, UbdFlags, UbdSpec};
use umltest::guestfs::ext4::{Errno, Ext4, FileKind, MountMode, Timespec};

use crate::util;

/// 2026-01-01T00:00:00Z: the virtual clock of these tests.
const T0: i64 = 1_767_225_600;

/// A Debian-default ext4 image of `mib` MiB with `block` byte blocks in `d`.
fn mkfs(d: &Path, name: &str, block: u32, mib: u32) -> Option<PathBuf> {
    mkfs_with(d, name, block, mib, &[])
}

/// [`mkfs`] with more `mkfs.ext4` options.
fn mkfs_with(d: &Path, name: &str, block: u32, mib: u32, extra: &[&str]) -> Option<PathBuf> {
    let mkfs = util::tool("mkfs.ext4", "e2fsprogs")?;
    let b = block.to_string();
    let size = format!("{mib}M");
    // A fixed UUID and hash seed: the images (and so the determinism test's
    // bytes) do not depend on mkfs' randomness; the time is pinned too.
    let out = std::process::Command::new(&mkfs)
        .current_dir(d)
        .env("E2FSPROGS_FAKE_TIME", T0.to_string())
        .args([
            "-q",
            "-F",
            "-b",
            &b,
            "-U",
            "6f2f4c9e-5f1a-4f0e-9a51-3c1b2e7d8a90",
            "-E",
            "hash_seed=0b6b0d2e-8a4f-4b1e-a0a5-6a4f5d3c2b10,root_owner=0:0",
        ])
        .args(extra)
        .args([name, &size])
        .output()
        .expect("run mkfs.ext4");
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
    Some(d.join(name))
}

fn sha(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).expect("read")).to_vec()
}

/// `e2fsck -fn`: its exit code and output.
fn fsck(img: &Path) -> Option<(i32, String)> {
    let e2fsck = util::tool("e2fsck", "e2fsprogs")?;
    let out = std::process::Command::new(e2fsck)
        .args(["-fn"])
        .arg(img)
        .output()
        .expect("run e2fsck");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.code().unwrap_or(-1), text))
}

fn assert_fsck_clean(img: &Path) {
    if let Some((code, text)) = fsck(img) {
        assert_eq!(code, 0, "e2fsck -fn {}:\n{text}", img.display());
    }
}

fn debugfs(img: &Path, cmd: &str) -> Option<String> {
    let debugfs = util::tool("debugfs", "e2fsprogs")?;
    let out = std::process::Command::new(debugfs)
        .args(["-R", cmd])
        .arg(img)
        .output()
        .expect("run debugfs");
    assert!(out.status.success(), "debugfs -R {cmd}: {out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ubd0=h1.cow,base.ext4` in `d`, as a machine opens it.
fn cow_device(d: &Path, backing: &str) -> Ubd {
    let spec = UbdSpec {
        index: 0,
        file: "h1.cow".into(),
        backing: Some(backing.into()),
        flags: UbdFlags::default(),
        cwd: d.to_path_buf(),
        owner_pid: 1001,
        confined: true,
        readable: vec![],
    };
    Ubd::open(&spec).result.expect("open the COW device")
}

fn merged(d: &Path) -> PathBuf {
    let out = d.join("merged.ext4");
    let _ = std::fs::remove_file(&out);
    umltest::cow::merge::merge_to_new(&d.join("h1.cow"), &out, &Default::default())
        .expect("merge the COW");
    out
}

/// The lab of issue #11 and then some: every write call, through a COW.
fn exercise<D: BlockDevice>(fs: &mut Ext4<D>) {
    fs.set_clock(T0 + 10);
    fs.mkdir("/root", 0o700, 0, 0).expect("mkdir /root");
    fs.write_file("/root/notes.txt", b"hello\n", 0o644, 0, 0)
        .expect("write notes");
    fs.append_file("/root/notes.txt", b"world\n", 0o644, 0, 0)
        .expect("append notes");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs.write_file("/big.bin", &big, 0o600, 1000, 1000)
        .expect("write big");
    fs.truncate("/big.bin", 123_457).expect("truncate big");
    fs.mkdir("/many", 0o755, 0, 0).expect("mkdir many");
    for i in 0..300 {
        fs.write_file(
            &format!("/many/file-{i:04}"),
            format!("{i}\n").as_bytes(),
            0o644,
            0,
            0,
        )
        .expect("write many");
    }
    for i in (0..300).step_by(3) {
        fs.unlink(&format!("/many/file-{i:04}")).expect("unlink");
    }
    fs.symlink("/root/notes.txt", "/notes-link", 0, 0)
        .expect("symlink");
    let long_target = "x/".repeat(200);
    fs.symlink(&long_target, "/long-link", 0, 0)
        .expect("slow symlink");
    fs.link("/root/notes.txt", "/root/hard").expect("link");
    fs.mkdir("/a", 0o755, 0, 0).expect("mkdir a");
    fs.mkdir("/a/b", 0o755, 0, 0).expect("mkdir a/b");
    fs.write_file("/a/b/c", b"c", 0o644, 0, 0).expect("write c");
    fs.rename("/a/b", "/root/b")
        .expect("rename dir across parents");
    fs.rename("/root/hard", "/a/hard2").expect("rename file");
    fs.mkdir("/gone", 0o755, 0, 0).expect("mkdir gone");
    fs.rmdir("/gone").expect("rmdir gone");
    fs.chmod("/root/notes.txt", 0o640).expect("chmod");
    fs.chown("/root/notes.txt", Some(1000), Some(100))
        .expect("chown");
    fs.utimens(
        "/root/notes.txt",
        Some(Timespec {
            sec: T0 - 86_400,
            nsec: 0,
        }),
        Some(Timespec {
            sec: T0 - 3_600,
            nsec: 500,
        }),
    )
    .expect("utimens");
}

#[rstest]
#[case::blocks_1k(1024, &[])]
#[case::blocks_4k(4096, &[])]
// Group checksums by CRC-16 instead of metadata_csum's CRC-32C.
#[case::uninit_bg_without_metadata_csum(4096, &["-O", "^metadata_csum,uninit_bg"])]
// ext2: no extents, no journal (block maps).
#[case::ext2(1024, &["-t", "ext2"])]
fn ext4_writes_land_in_the_cow_and_e2fsck_is_clean(#[case] block: u32, #[case] extra: &[&str]) {
    let dir = util::tempdir();
    let d = dir.path();
    let Some(base) = mkfs_with(d, "base.ext4", block, 32, extra) else {
        return;
    };
    let before = sha(&base);
    let mut fs = Ext4::mount(cow_device(d, "base.ext4"), MountMode::ReadWrite).expect("mount");
    assert_eq!(fs.info().block_size, block);
    exercise(&mut fs);

    // What the module itself reads back.
    assert_eq!(fs.read_file("/root/notes.txt").unwrap(), b"hello\nworld\n");
    assert_eq!(fs.read_file("/notes-link").unwrap(), b"hello\nworld\n");
    assert_eq!(fs.readlink("/long-link").unwrap(), "x/".repeat(200));
    let st = fs.lstat("/root/notes.txt").unwrap();
    assert_eq!(
        (st.mode & 0o7777, st.uid, st.gid, st.nlink),
        (0o640, 1000, 100, 2)
    );
    assert_eq!(
        st.mtime,
        Timespec {
            sec: T0 - 3_600,
            nsec: 500
        }
    );
    assert_eq!(st.ctime.sec, T0 + 10, "ctime comes from the virtual clock");
    assert_eq!(fs.stat("/big.bin").unwrap().size, 123_457);
    assert_eq!(fs.lstat("/notes-link").unwrap().kind, FileKind::Symlink);
    assert_eq!(fs.stat("/root/b").unwrap().nlink, 2);
    assert_eq!(fs.stat("/root").unwrap().nlink, 3, "/root holds b");
    assert_eq!(fs.stat("/a").unwrap().nlink, 2, "b moved out of /a");
    assert_eq!(fs.readdir("/many").unwrap().len(), 2 + 200);
    fs.unmount().expect("unmount");

    assert_eq!(sha(&base), before, "the backing file is unchanged");
    let img = merged(d);
    assert_fsck_clean(&img);
    let Some(cat) = debugfs(&img, "cat /root/notes.txt") else {
        return;
    };
    assert_eq!(cat, "hello\nworld\n");
    assert_eq!(debugfs(&img, "cat /a/hard2").unwrap(), "hello\nworld\n");
    assert_eq!(debugfs(&img, "cat /root/b/c").unwrap(), "c");
    assert_eq!(debugfs(&img, "cat /many/file-0298").unwrap(), "298\n");
    let ls = debugfs(&img, "ls -p /many").unwrap();
    assert!(
        ls.contains("/file-0299/") && !ls.contains("/file-0297/"),
        "{ls}"
    );
    let big = debugfs(&img, "stat /big.bin").unwrap();
    assert!(big.contains("Size: 123457"), "{big}");
    assert!(big.contains("User:  1000"), "{big}");
    let link = debugfs(&img, "stat /notes-link").unwrap();
    assert!(
        link.contains("Fast link dest: \"/root/notes.txt\""),
        "{link}"
    );
}

/// The errno of each refused call: what the shell will print.
#[test]
fn ext4_refusals_carry_the_kernels_errno() {
    let dir = util::tempdir();
    let d = dir.path();
    let Some(_) = mkfs(d, "base.ext4", 4096, 16) else {
        return;
    };
    let mut fs = Ext4::mount(cow_device(d, "base.ext4"), MountMode::ReadWrite).expect("mount");
    fs.set_clock(T0);
    fs.mkdir("/d", 0o755, 0, 0).unwrap();
    fs.write_file("/d/f", b"x", 0o644, 0, 0).unwrap();
    fs.symlink("loop", "/loop", 0, 0).unwrap();
    let e = |r: Result<(), umltest::guestfs::ext4::FsError>| r.unwrap_err().errno;
    assert_eq!(e(fs.mkdir("/d", 0o755, 0, 0).map(drop)), Errno::Eexist);
    assert_eq!(e(fs.create("/d/f", 0o644, 0, 0).map(drop)), Errno::Eexist);
    assert_eq!(e(fs.rmdir("/d")), Errno::Enotempty);
    assert_eq!(e(fs.rmdir("/d/f")), Errno::Enotdir);
    assert_eq!(e(fs.unlink("/d")), Errno::Eisdir);
    assert_eq!(e(fs.unlink("/nope")), Errno::Enoent);
    assert_eq!(e(fs.write_file("/d/f/g", b"", 0o644, 0, 0)), Errno::Enotdir);
    assert_eq!(e(fs.read_file("/d").map(drop)), Errno::Eisdir);
    assert_eq!(e(fs.stat("/loop").map(drop)), Errno::Eloop);
    // A deliberate gap (module doc): Linux would create /missing.
    fs.symlink("/missing", "/dangling", 0, 0).unwrap();
    assert_eq!(
        e(fs.write_file("/dangling", b"x", 0o644, 0, 0)),
        Errno::Eexist
    );
    assert_eq!(e(fs.rename("/d", "/d/sub")), Errno::Einval);
    assert_eq!(e(fs.link("/d", "/d2")), Errno::Eperm);
    assert_eq!(
        e(fs.mkdir(&"n".repeat(256), 0o755, 0, 0).map(drop)),
        Errno::Enametoolong
    );
    // rename(2)'s rules for what it replaces.
    fs.mkdir("/empty", 0o755, 0, 0).unwrap();
    fs.mkdir("/full", 0o755, 0, 0).unwrap();
    fs.write_file("/full/x", b"x", 0o644, 0, 0).unwrap();
    assert_eq!(e(fs.rename("/d/f", "/empty")), Errno::Eisdir);
    assert_eq!(e(fs.rename("/empty", "/d/f")), Errno::Enotdir);
    assert_eq!(e(fs.rename("/d", "/full")), Errno::Enotempty);
    fs.rename("/d", "/empty")
        .expect("a directory replaces an empty one");
    assert_eq!(fs.read_file("/empty/f").unwrap(), b"x");
    assert_eq!(
        fs.stat("/").unwrap().nlink,
        3 + 2,
        "/, lost+found, empty, full"
    );
    assert_eq!(e(fs.stat("/d").map(drop)), Errno::Enoent);
    fs.rename("/empty", "/full/sub")
        .expect("move into another directory");
    assert_eq!(
        fs.lookup("/full/sub/..").unwrap(),
        fs.lookup("/full").unwrap()
    );
    assert_eq!(fs.stat("/full").unwrap().nlink, 3);
    let msg = fs.unlink("/nope").unwrap_err().to_string();
    assert!(
        msg.contains("\"/nope\": No such file or directory"),
        "{msg}"
    );
    fs.unmount().unwrap();

    // Read-only: every change is EROFS, reads work, nothing is written.
    let cow_before = sha(&d.join("h1.cow"));
    let mut ro = Ext4::mount(cow_device(d, "base.ext4"), MountMode::ReadOnly).expect("mount ro");
    assert_eq!(ro.read_file("/full/sub/f").unwrap(), b"x");
    assert_eq!(e(ro.write_file("/b", b"", 0o644, 0, 0)), Errno::Erofs);
    assert_eq!(e(ro.mkdir("/e", 0o755, 0, 0).map(drop)), Errno::Erofs);
    assert_eq!(e(ro.unlink("/full/x")), Errno::Erofs);
    ro.unmount().unwrap();
    assert_eq!(
        sha(&d.join("h1.cow")),
        cow_before,
        "a read-only mount wrote"
    );
    assert_fsck_clean(&merged(d));
}

/// A device that counts writes: a machine that never writes must cost none.
struct Counting {
    data: Vec<u8>,
    writes: usize,
}

impl BlockDevice for Counting {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let o = usize::try_from(offset).expect("offset");
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), BlockError> {
        let o = usize::try_from(offset).expect("offset");
        self.data[o..o + data.len()].copy_from_slice(data);
        self.writes += 1;
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

#[test]
fn ext4_read_write_mount_that_only_reads_writes_nothing() {
    let dir = util::tempdir();
    let Some(img) = mkfs(dir.path(), "base.ext4", 1024, 16) else {
        return;
    };
    let data = std::fs::read(&img).unwrap();
    let dev = Counting {
        data: data.clone(),
        writes: 0,
    };
    let mut fs = Ext4::mount(dev, MountMode::ReadWrite).unwrap();
    fs.set_clock(T0);
    assert!(fs
        .readdir("/")
        .unwrap()
        .iter()
        .any(|e| e.name == "lost+found"));
    fs.sync().unwrap();
    let dev = fs.unmount().unwrap();
    assert_eq!(dev.writes, 0);
    assert!(dev.data == data, "bytes changed");
}

/// Runs `ops` on a fresh copy of `base` in memory; returns the image.
fn run_ops(base: &[u8], ops: &[Op]) -> (Vec<u8>, Model, Vec<String>) {
    let dev = Counting {
        data: base.to_vec(),
        writes: 0,
    };
    let mut fs = Ext4::mount(dev, MountMode::ReadWrite).expect("mount");
    let mut model = Model::default();
    let mut log = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        fs.set_clock(T0 + i as i64);
        let got = op.apply(&mut fs);
        let want = op.apply_model(&mut model);
        log.push(format!("{op:?} -> {got:?}"));
        assert_eq!(
            got,
            want,
            "op {i} {op:?} disagrees with the model; ops so far:\n{}",
            log.join("\n")
        );
    }
    check_tree(&fs, &model, &log);
    let dev = fs.unmount().expect("unmount");
    (dev.data, model, log)
}

const DIRS: [&str; 3] = ["", "/x", "/y"];
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn path(d: usize, n: usize) -> String {
    format!("{}/{}", DIRS[d], NAMES[n])
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize, usize, Vec<u8>),
    Append(usize, usize, Vec<u8>),
    Truncate(usize, usize, u64),
    Unlink(usize, usize),
    Mkdir(usize),
    Rmdir(usize),
    Rename(usize, usize, usize, usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    File(Vec<u8>),
    Dir,
}

/// The model: paths to nodes ("/x" and "/y" are directories when present).
#[derive(Debug, Default)]
struct Model {
    nodes: BTreeMap<String, Node>,
}

impl Model {
    fn parent_ok(&self, d: usize) -> Result<(), Errno> {
        if d == 0 {
            return Ok(());
        }
        match self.nodes.get(DIRS[d]) {
            Some(Node::Dir) => Ok(()),
            Some(Node::File(_)) => Err(Errno::Enotdir),
            None => Err(Errno::Enoent),
        }
    }
    fn children(&self, dir: &str) -> usize {
        let prefix = format!("{dir}/");
        self.nodes.keys().filter(|k| k.starts_with(&prefix)).count()
    }
}

impl Op {
    fn apply<D: BlockDevice>(&self, fs: &mut Ext4<D>) -> Result<(), Errno> {
        let r = match self {
            Op::Write(d, n, data) => fs.write_file(&path(*d, *n), data, 0o644, 0, 0),
            Op::Append(d, n, data) => fs.append_file(&path(*d, *n), data, 0o644, 0, 0),
            Op::Truncate(d, n, s) => fs.truncate(&path(*d, *n), *s),
            Op::Unlink(d, n) => fs.unlink(&path(*d, *n)),
            Op::Mkdir(d) => fs.mkdir(DIRS[*d], 0o755, 0, 0).map(drop),
            Op::Rmdir(d) => fs.rmdir(DIRS[*d]),
            Op::Rename(d1, n1, d2, n2) => fs.rename(&path(*d1, *n1), &path(*d2, *n2)),
        };
        r.map_err(|e| e.errno)
    }

    fn apply_model(&self, m: &mut Model) -> Result<(), Errno> {
        match self {
            Op::Write(d, n, data) | Op::Append(d, n, data) => {
                m.parent_ok(*d)?;
                let p = path(*d, *n);
                let append = matches!(self, Op::Append(..));
                match m.nodes.entry(p).or_insert_with(|| Node::File(Vec::new())) {
                    Node::File(f) => {
                        if !append {
                            f.clear();
                        }
                        f.extend_from_slice(data);
                        Ok(())
                    }
                    Node::Dir => Err(Errno::Eisdir),
                }
            }
            Op::Truncate(d, n, s) => {
                m.parent_ok(*d)?;
                match m.nodes.get_mut(&path(*d, *n)) {
                    Some(Node::File(f)) => {
                        f.resize(*s as usize, 0);
                        Ok(())
                    }
                    Some(Node::Dir) => Err(Errno::Eisdir),
                    None => Err(Errno::Enoent),
                }
            }
            Op::Unlink(d, n) => {
                m.parent_ok(*d)?;
                let p = path(*d, *n);
                match m.nodes.get(&p) {
                    Some(Node::File(_)) => {
                        m.nodes.remove(&p);
                        Ok(())
                    }
                    Some(Node::Dir) => Err(Errno::Eisdir),
                    None => Err(Errno::Enoent),
                }
            }
            Op::Mkdir(d) => {
                if *d == 0 || m.nodes.contains_key(DIRS[*d]) {
                    return Err(Errno::Eexist);
                }
                m.nodes.insert(DIRS[*d].to_string(), Node::Dir);
                Ok(())
            }
            Op::Rmdir(d) => match m.nodes.get(DIRS[*d]) {
                _ if *d == 0 => Err(Errno::Ebusy),
                Some(Node::Dir) if m.children(DIRS[*d]) > 0 => Err(Errno::Enotempty),
                Some(Node::Dir) => {
                    m.nodes.remove(DIRS[*d]);
                    Ok(())
                }
                Some(Node::File(_)) => Err(Errno::Enotdir),
                None => Err(Errno::Enoent),
            },
            Op::Rename(d1, n1, d2, n2) => {
                m.parent_ok(*d1)?;
                let (from, to) = (path(*d1, *n1), path(*d2, *n2));
                let Some(node) = m.nodes.get(&from).cloned() else {
                    return Err(Errno::Enoent);
                };
                m.parent_ok(*d2)?;
                // Only files are named a..d here, so no directory rules apply.
                if let Some(Node::Dir) = m.nodes.get(&to) {
                    return Err(Errno::Eisdir);
                }
                if from != to {
                    m.nodes.remove(&from);
                    m.nodes.insert(to, node);
                }
                Ok(())
            }
        }
    }
}

/// The filesystem's tree equals the model's (names, kinds, contents).
fn check_tree<D: BlockDevice>(fs: &Ext4<D>, m: &Model, log: &[String]) {
    let mut seen = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let shown = if dir.is_empty() { "/" } else { dir.as_str() };
        for e in fs.readdir(shown).expect("readdir") {
            if e.name == "." || e.name == ".." || e.name == "lost+found" {
                continue;
            }
            let p = format!("{dir}/{}", e.name);
            match e.kind {
                FileKind::Dir => {
                    seen.insert(p.clone(), Node::Dir);
                    stack.push(p);
                }
                _ => {
                    let data = fs.read_file(&p).expect("read");
                    assert_eq!(fs.stat(&p).unwrap().size, data.len() as u64);
                    seen.insert(p, Node::File(data));
                }
            }
        }
    }
    assert!(
        seen == m.nodes,
        "tree differs from the model\nfs:    {seen:?}\nmodel: {:?}\nops:\n{}",
        m.nodes,
        log.join("\n")
    );
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let d = 0..DIRS.len();
    let n = 0..NAMES.len();
    let data = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 1000..20_000),
    ];
    prop_oneof![
        3 => (d.clone(), n.clone(), data.clone()).prop_map(|(d, n, x)| Op::Write(d, n, x)),
        2 => (d.clone(), n.clone(), data).prop_map(|(d, n, x)| Op::Append(d, n, x)),
        1 => (d.clone(), n.clone(), 0u64..30_000).prop_map(|(d, n, s)| Op::Truncate(d, n, s)),
        2 => (d.clone(), n.clone()).prop_map(|(d, n)| Op::Unlink(d, n)),
        1 => d.clone().prop_map(Op::Mkdir),
        1 => d.clone().prop_map(Op::Rmdir),
        2 => (d.clone(), n.clone(), d, n).prop_map(|(a, b, c, e)| Op::Rename(a, b, c, e)),
    ]
}

fn base_image(block: u32) -> Option<(tempfile::TempDir, Vec<u8>)> {
    let dir = util::tempdir();
    let img = mkfs(dir.path(), "base.ext4", block, 8)?;
    let data = std::fs::read(img).expect("read base");
    Some((dir, data))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random file operations agree with the model, and the image is
    /// `e2fsck -fn` clean afterwards.
    #[test]
    fn ext4_random_operations_match_the_model_and_fsck_clean(
        block in prop_oneof![Just(1024u32), Just(4096u32)],
        ops in proptest::collection::vec(op_strategy(), 1..40),
    ) {
        let Some((dir, base)) = base_image(block) else {
            return Ok(());
        };
        let (img, _, log) = run_ops(&base, &ops);
        let out = dir.path().join("after.ext4");
        std::fs::write(&out, &img).unwrap();
        if let Some((code, text)) = fsck(&out) {
            prop_assert_eq!(code, 0, "e2fsck -fn:\n{}\nops:\n{}", text, log.join("\n"));
        }
    }
}

/// Same image, same operations, same clock: the same bytes.
#[test]
fn ext4_same_operations_give_byte_identical_images() {
    let Some((_dir, base)) = base_image(1024) else {
        return;
    };
    let ops = vec![
        Op::Mkdir(1),
        Op::Write(1, 0, vec![1; 5000]),
        Op::Write(0, 1, b"hello".to_vec()),
        Op::Rename(0, 1, 1, 2),
        Op::Append(1, 2, vec![2; 3000]),
        Op::Unlink(1, 0),
        Op::Mkdir(2),
        Op::Write(2, 3, vec![3; 70_000]),
    ];
    let (a, _, _) = run_ops(&base, &ops);
    let (b, _, _) = run_ops(&base, &ops);
    assert!(a != base, "the operations changed nothing");
    assert!(a == b, "two runs differ");
}

/// libext2fs falls back to the host clock when its time is 0: a mount whose
/// clock was never set (or set to 0) must still write fixed times.
#[test]
fn ext4_without_a_clock_never_writes_the_host_time() {
    let Some((_dir, base)) = base_image(4096) else {
        return;
    };
    let dev = Counting {
        data: base,
        writes: 0,
    };
    let mut fs = Ext4::mount(dev, MountMode::ReadWrite).expect("mount");
    fs.write_file("/a", b"a", 0o644, 0, 0).unwrap();
    fs.set_clock(0);
    fs.mkdir("/d", 0o755, 0, 0).unwrap();
    for p in ["/a", "/d"] {
        let st = fs.stat(p).unwrap();
        for t in [st.atime, st.mtime, st.ctime, st.crtime] {
            assert_eq!(t, Timespec { sec: 1, nsec: 0 }, "{p}: {st:?}");
        }
    }
}

/// e2fsprogs' crc32c.c, crc16.c, nls_utf8.c and (via kernel-jbd.h)
/// mkjournal.c are GPL-2: csrc/ext2fs_lgpl_only.c replaces the symbols they
/// would be linked for, so none of their functions may be in the binary.
#[test]
fn ext4_links_no_gpl_member_of_libext2fs() {
    let Some(nm) = util::tool("nm", "binutils") else {
        return;
    };
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(nm)
        .arg(&exe)
        .output()
        .expect("run nm");
    let syms = String::from_utf8_lossy(&out.stdout);
    assert!(
        syms.contains(" T ext2fs_open2"),
        "libext2fs is not linked statically"
    );
    for gpl_only in [
        "ext2fs_crc32_be",
        "ext2fs_casefold_cmp",
        "ext2fs_add_journal_inode3",
        "ext2fs_create_journal_superblock2",
    ] {
        assert!(
            !syms.lines().any(|l| l.ends_with(&format!(" {gpl_only}"))),
            "{gpl_only} (a GPL-2 member of libext2fs.a) is linked"
        );
    }
}

/// Hashed (htree) directories: a directory indexed by `e2fsck -fD` (as the
/// kernel indexes large ones) takes new names, loses old ones, and stays
/// indexed and e2fsck-clean; every name is found through the index.
#[test]
fn ext4_htree_directory_stays_indexed_and_clean() {
    let dir = util::tempdir();
    let d = dir.path();
    let Some(img) = mkfs(d, "base.ext4", 1024, 32) else {
        return;
    };
    let Some(e2fsck) = util::tool("e2fsck", "e2fsprogs") else {
        return;
    };
    let load = |p: &Path| Counting {
        data: std::fs::read(p).expect("read image"),
        writes: 0,
    };
    let mut fs = Ext4::mount(load(&img), MountMode::ReadWrite).unwrap();
    fs.set_clock(T0);
    fs.mkdir("/big", 0o755, 0, 0).unwrap();
    for i in 0..400 {
        fs.write_file(&format!("/big/entry-{i:05}"), b"", 0o644, 0, 0)
            .unwrap();
    }
    std::fs::write(&img, fs.unmount().unwrap().data).unwrap();
    // -D indexes every directory of more than one block.
    let out = std::process::Command::new(&e2fsck)
        .args(["-fyD"])
        .arg(&img)
        .output()
        .expect("e2fsck -fyD");
    assert!(out.status.code().unwrap_or(-1) <= 1, "e2fsck -fyD: {out:?}");
    let stat = debugfs(&img, "stat /big").unwrap();
    assert!(stat.contains("Flags: 0x81000"), "not indexed: {stat}");

    let mut fs = Ext4::mount(load(&img), MountMode::ReadWrite).unwrap();
    fs.set_clock(T0 + 1);
    for i in 400..900 {
        fs.write_file(&format!("/big/entry-{i:05}"), b"n", 0o644, 0, 0)
            .unwrap();
    }
    for i in (0..900).step_by(2) {
        fs.unlink(&format!("/big/entry-{i:05}")).unwrap();
    }
    for i in 0..900 {
        let found = fs.lstat(&format!("/big/entry-{i:05}")).is_ok();
        assert_eq!(found, i % 2 == 1, "entry {i}");
    }
    std::fs::write(&img, fs.unmount().unwrap().data).unwrap();
    assert_fsck_clean(&img);
    let stat = debugfs(&img, "stat /big").unwrap();
    assert!(stat.contains("Flags: 0x81000"), "index dropped: {stat}");
    let htree = debugfs(&img, "htree /big").unwrap();
    assert!(htree.contains("entry-00899"), "{htree}");
}

/// A journal with unreplayed changes (`needs_recovery`): read-write is
/// refused with EUCLEAN (no replay yet), read-only works.
#[test]
fn ext4_needs_recovery_is_refused_read_write() {
    let dir = util::tempdir();
    let d = dir.path();
    let Some(img) = mkfs(d, "base.ext4", 4096, 16) else {
        return;
    };
    let Some(debugfs_bin) = util::tool("debugfs", "e2fsprogs") else {
        return;
    };
    util::run_in(
        d,
        &debugfs_bin,
        &["-w", "-R", "feature needs_recovery", "base.ext4"],
    )
    .expect_code(0);
    let data = std::fs::read(&img).unwrap();
    let e = Ext4::mount(
        Counting {
            data: data.clone(),
            writes: 0,
        },
        MountMode::ReadWrite,
    )
    .unwrap_err();
    assert_eq!(e.errno, Errno::Euclean, "{e}");
    assert!(e.to_string().contains("journal needs recovery"), "{e}");
    let ro = Ext4::mount(Counting { data, writes: 0 }, MountMode::ReadOnly).unwrap();
    assert!(ro
        .readdir("/")
        .unwrap()
        .iter()
        .any(|e| e.name == "lost+found"));
}

/// A machine killed after `sync`: everything synced is on the COW, and the
/// image is clean; reads at absurd offsets return nothing, not a panic.
#[test]
fn ext4_killed_after_sync_keeps_what_was_synced() {
    let dir = util::tempdir();
    let d = dir.path();
    let Some(_) = mkfs(d, "base.ext4", 1024, 16) else {
        return;
    };
    let mut fs = Ext4::mount(cow_device(d, "base.ext4"), MountMode::ReadWrite).expect("mount");
    fs.set_clock(T0);
    fs.mkdir("/root", 0o700, 0, 0).unwrap();
    fs.write_file("/root/kept", &[7u8; 10_000], 0o644, 0, 0)
        .unwrap();
    fs.sync().unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(fs.read("/root/kept", u64::MAX - 3, &mut buf).unwrap(), 0);
    assert_eq!(fs.read("/root/kept", 9_990, &mut buf).unwrap(), 10);
    drop(fs); // the kill: no unmount
    let img = merged(d);
    assert_fsck_clean(&img);
    let Some(stat) = debugfs(&img, "stat /root/kept") else {
        return;
    };
    assert!(stat.contains("Size: 10000"), "{stat}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A disk image is untrusted input: with metadata bytes overwritten, every
    /// call returns (an error or a value); nothing panics, crashes or hangs.
    #[test]
    fn ext4_corrupted_images_give_errors_not_crashes(
        block in prop_oneof![Just(1024u32), Just(4096u32)],
        // Past the primary superblock (whose checksum refuses the mount):
        // group descriptors, bitmaps, inode tables, directory and extent blocks.
        hits in proptest::collection::vec((2048usize..400_000, any::<u8>()), 1..40),
    ) {
        let Some((_dir, mut data)) = base_image(block) else {
            return Ok(());
        };
        {
            // Some content first, so there are extents and entries to break.
            let mut fs = Ext4::mount(Counting { data, writes: 0 }, MountMode::ReadWrite).unwrap();
            fs.set_clock(T0);
            fs.mkdir("/d", 0o755, 0, 0).unwrap();
            for i in 0..40 {
                fs.write_file(&format!("/d/f{i}"), &vec![i as u8; 3000], 0o644, 0, 0).unwrap();
            }
            data = fs.unmount().unwrap().data;
        }
        for (off, byte) in hits {
            if let Some(b) = data.get_mut(off) {
                *b = byte;
            }
        }
        let Ok(mut fs) = Ext4::mount(Counting { data, writes: 0 }, MountMode::ReadWrite) else {
            return Ok(());
        };
        fs.set_clock(T0 + 1);
        let _ = fs.readdir("/d");
        for i in 0..40 {
            let p = format!("/d/f{i}");
            let _ = fs.read_file(&p);
            let _ = fs.append_file(&p, b"more", 0o644, 0, 0);
            if i % 3 == 0 {
                let _ = fs.unlink(&p);
            }
        }
        let _ = fs.rename("/d", "/e");
        let _ = fs.mkdir("/n", 0o755, 0, 0);
        let _ = fs.sync();
    }
}

/// The inode-level calls a VFS walks with: lookups per component, then I/O
/// on the inode (as an open file descriptor would).
#[test]
fn ext4_inode_level_calls_for_a_vfs() {
    let Some((_dir, base)) = base_image(4096) else {
        return;
    };
    let mut fs = Ext4::mount(
        Counting {
            data: base,
            writes: 0,
        },
        MountMode::ReadWrite,
    )
    .unwrap();
    fs.set_clock(T0);
    fs.mkdir("/etc", 0o755, 0, 0).unwrap();
    let created = fs.create("/etc/hostname", 0o644, 0, 0).unwrap();
    fs.symlink("hostname", "/etc/name", 0, 0).unwrap();
    let etc = fs.lookup_at(2, "etc").unwrap();
    let ino = fs.lookup_at(etc, "hostname").unwrap();
    assert_eq!(ino, created);
    assert_eq!(fs.lookup_at(etc, "..").unwrap(), 2);
    assert_eq!(fs.lookup_at(ino, "x").unwrap_err().errno, Errno::Enotdir);
    assert_eq!(fs.lookup_at(etc, "nope").unwrap_err().errno, Errno::Enoent);
    fs.write_inode(ino, 0, b"h1\n").unwrap();
    fs.write_inode(ino, 3, b"more").unwrap();
    fs.truncate_inode(ino, 2).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(fs.read_inode(ino, 0, &mut buf).unwrap(), 2);
    assert_eq!(&buf[..2], b"h1");
    assert_eq!(fs.stat_inode(ino).unwrap().size, 2);
    let link = fs.lookup_at(etc, "name").unwrap();
    assert_eq!(fs.readlink_inode(link).unwrap(), "hostname");
    assert_eq!(fs.readlink_inode(ino).unwrap_err().errno, Errno::Einval);
    let names: Vec<String> = fs
        .readdir_inode(etc)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, [".", "..", "hostname", "name"]);
    assert_eq!(fs.readdir_inode(ino).unwrap_err().errno, Errno::Enotdir);
    assert_eq!(
        fs.write_inode(etc, 0, b"x").unwrap_err().errno,
        Errno::Eisdir
    );

    fs.chmod_inode(ino, 0o600).unwrap();
    fs.chown_inode(ino, None, Some(42)).unwrap();
    fs.utimens_inode(ino, None, Some(Timespec { sec: 5, nsec: 6 }))
        .unwrap();
    let st = fs.stat_inode(ino).unwrap();
    assert_eq!((st.mode & 0o7777, st.uid, st.gid), (0o600, 0, 42));
    assert_eq!(st.mtime, Timespec { sec: 5, nsec: 6 });

    // Directory changes by (directory inode, name).
    let d = fs.mkdir_at(etc, "init.d", 0o755, 0, 0).unwrap();
    let f = fs.create_at(d, "rcS", 0o755, 0, 0).unwrap();
    assert_eq!(
        fs.create_at(d, "rcS", 0o755, 0, 0).unwrap_err().errno,
        Errno::Eexist
    );
    assert_eq!(
        fs.create_at(d, "a/b", 0o755, 0, 0).unwrap_err().errno,
        Errno::Einval
    );
    assert_eq!(
        fs.create_at(f, "x", 0o755, 0, 0).unwrap_err().errno,
        Errno::Enotdir
    );
    fs.link_at(f, etc, "rc").unwrap();
    assert_eq!(fs.stat_inode(f).unwrap().nlink, 2);
    fs.symlink_at("init.d/rcS", etc, "rcS", 0, 0).unwrap();
    fs.rename_at(etc, "rc", d, "rc.old").unwrap();
    assert_eq!(fs.lookup_at(d, "rc.old").unwrap(), f);
    fs.unlink_at(d, "rc.old").unwrap();
    fs.unlink_at(etc, "rcS").unwrap();
    assert_eq!(
        fs.rmdir_at(etc, "init.d").unwrap_err().errno,
        Errno::Enotempty
    );
    fs.unlink_at(d, "rcS").unwrap();
    fs.rmdir_at(etc, "init.d").unwrap();
    assert_eq!(
        fs.lookup_at(etc, "init.d").unwrap_err().errno,
        Errno::Enoent
    );
    let dir = util::tempdir();
    let img = dir.path().join("after.ext4");
    std::fs::write(&img, fs.unmount().unwrap().data).unwrap();
    assert_fsck_clean(&img);
}
