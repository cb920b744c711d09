//! COW files: golden bytes against the real uml_mkcow/uml_moo, CowFile and merge
//! against a flat model, the kernel's open semantics, and the `umltest cow` CLI.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use std::time::Duration;

use umltest::block::{BlockDevice, Level, Ubd, UbdFlags, UbdSpec};
use umltest::cow::{
    create, header::BROKEN_V3_MESSAGE, merge_in_place, merge_to_new, CowError, CowFile,
    CreateOptions, Header, MergeOptions, Version,
};
use umltest::uml::guest::{boot, standard_args, RootFs};

use crate::util;

/// 2024-01-02 03:04:05 UTC, the digest's example mtime.
const MTIME: i64 = 1_704_164_645;

fn set_mtime(path: &Path, secs: i64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open for mtime");
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .expect("set mtime");
}

/// A backing file of `len` bytes: sparse, with a recognisable pattern in `data`.
fn make_backing(path: &Path, len: u64, data: &[(u64, Vec<u8>)]) {
    let f = std::fs::File::create(path).expect("create backing");
    f.set_len(len).expect("set_len");
    for (off, bytes) in data {
        std::os::unix::fs::FileExt::write_all_at(&f, bytes, *off).expect("write backing");
    }
    drop(f);
    set_mtime(path, MTIME);
}

fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).expect("canonicalize")
}

/// Parses the committed fixtures' format: `length N` then `offset hexbytes` rows.
fn load_hex(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cow")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("read fixture");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (a, b) = line.split_once(' ').expect("fixture line");
        if a == "length" {
            out = vec![0u8; b.parse().expect("length")];
            continue;
        }
        let off = usize::from_str_radix(a, 16).expect("offset");
        for (i, pair) in b.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).expect("hex");
            out[off + i] = u8::from_str_radix(s, 16).expect("hex byte");
        }
    }
    out
}

// ---------------------------------------------------------------- golden bytes

/// Our `create` writes byte-identical files to the real uml_mkcow (whole file,
/// including length), for the digest's worked sizes.
#[test]
fn create_matches_real_uml_mkcow_bytes() {
    let Some(mkcow) = util::tool("uml_mkcow", "uml-utilities") else {
        return;
    };
    let dir = util::tempdir();
    for size in [0u64, 1000, 32768, 65536, 1 << 20, (64 << 20) + 1] {
        let backing = dir.path().join(format!("b{size}.img"));
        make_backing(&backing, size, &[]);
        let theirs = format!("theirs{size}.cow");
        let ours = dir.path().join(format!("ours{size}.cow"));
        util::run_in(dir.path(), &mkcow, &[&theirs, &format!("b{size}.img")]).expect_code(0);
        let h = create(
            &ours,
            Path::new(&format!("b{size}.img")),
            &CreateOptions {
                force: false,
                cwd: Some(dir.path().to_path_buf()),
            },
        )
        .expect("create");
        let a = std::fs::read(dir.path().join(&theirs)).expect("read theirs");
        let b = std::fs::read(&ours).expect("read ours");
        assert_eq!(a.len(), b.len(), "length for backing size {size}");
        assert!(a == b, "bytes differ for backing size {size}");
        let d = Header::decode(&a[..4136.min(a.len())]).expect("decode uml_mkcow header");
        assert_eq!(d, h);
        assert_eq!(d.version, Version::V3);
        assert_eq!(d.size, size);
        assert_eq!(i64::from(d.mtime), MTIME);
        assert_eq!((d.sectorsize, d.alignment, d.cow_format), (512, 4096, 0));
        assert_eq!(d.backing_path(), canon(&backing));
        let meta = std::fs::metadata(&ours).expect("meta");
        assert_eq!(meta.mode() & 0o777, 0o644 & !0o022 & meta.mode());
    }
}

/// The hand-built v1, v2 and broken-v3 fixtures decode to the fields they were
/// built from, re-encode to the same header bytes, and the real uml_moo merges
/// them to the same image as ours.
#[test]
fn hand_built_fixtures_decode_and_merge_like_real_uml_moo() {
    let moo = util::tool("uml_moo", "uml-utilities");
    let dir = util::tempdir();
    let backing = dir.path().join("base.img");
    let pattern: Vec<u8> = (0..4096u32).map(|i| 0x10 + (i / 512) as u8).collect();
    make_backing(&backing, 4096, &[(0, pattern.clone())]);
    let mut want = pattern.clone();
    want[..512].fill(b'A');
    want[1536..2048].fill(b'B');
    for (name, version, header_len) in [
        ("v1.hex", Version::V1, 280usize),
        ("v2.hex", Version::V2, 4120),
        ("v3-broken.hex", Version::V3Broken, 4136),
    ] {
        let bytes = load_hex(name);
        let h = Header::decode(&bytes[..4136.min(bytes.len())]).expect("decode fixture");
        assert_eq!(h.version, version, "{name}");
        assert_eq!(h.backing_file, b"/nonexistent/base.img", "{name}");
        assert_eq!(
            (i64::from(h.mtime), h.size, h.sectorsize),
            (MTIME, 4096, 512),
            "{name}"
        );
        assert_eq!(
            h.encode(),
            bytes[..header_len].to_vec(),
            "{name}: re-encode"
        );
        let cow = dir.path().join(format!("{name}.cow"));
        std::fs::write(&cow, &bytes).expect("write fixture");
        let ours = dir.path().join(format!("{name}.ours"));
        let report = merge_to_new(
            &cow,
            &ours,
            &MergeOptions {
                backing: Some(backing.clone()),
                ..MergeOptions::default()
            },
        )
        .expect("our merge");
        assert_eq!(
            std::fs::read(&ours).expect("read ours"),
            want,
            "{name}: ours"
        );
        assert_eq!(
            report.messages,
            if version == Version::V3Broken {
                vec![BROKEN_V3_MESSAGE.to_string()]
            } else {
                vec![]
            }
        );
        if let Some(moo) = &moo {
            let theirs = format!("{name}.theirs");
            let run = util::run_in(
                dir.path(),
                moo,
                &["-b", "base.img", &format!("{name}.cow"), &theirs],
            );
            run.expect_code(0);
            if version == Version::V3Broken {
                assert!(run.stdout().contains(BROKEN_V3_MESSAGE), "{}", run.dump());
            }
            assert_eq!(
                std::fs::read(dir.path().join(&theirs)).expect("read theirs"),
                want,
                "{name}: uml_moo"
            );
        }
    }
}

// ---------------------------------------------------------------- model tests

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: usize, byte: u8 },
    Read { offset: u64, len: usize },
}

fn ops(size: u64) -> impl Strategy<Value = Vec<Op>> {
    let dev = size.div_ceil(512) * 512;
    let op = (0..dev.max(1), 1usize..3000, any::<u8>(), any::<bool>()).prop_map(
        move |(offset, len, byte, write)| {
            let len = len.min((dev - offset.min(dev)) as usize);
            if write {
                Op::Write { offset, len, byte }
            } else {
                Op::Read { offset, len }
            }
        },
    );
    proptest::collection::vec(op, 0..25)
}

fn sizes() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        1u64..2048,
        Just(32768),
        Just(65536),
        65536u64..300_000,
        Just((1 << 20) + 1),
    ]
}

/// Runs ops through a fresh COW over a random backing; returns the model (the
/// device content) and the paths.
fn run_model(dir: &Path, size: u64, seed: u8, ops: &[Op]) -> (Vec<u8>, PathBuf, PathBuf) {
    let backing = dir.join("back.img");
    let data: Vec<(u64, Vec<u8>)> = (0..size)
        .step_by(7919)
        .map(|o| {
            (
                o,
                vec![seed.wrapping_add(o as u8) | 1; 100.min((size - o) as usize)],
            )
        })
        .collect();
    make_backing(&backing, size, &data);
    let cow = dir.join("x.cow");
    let _ = std::fs::remove_file(&cow);
    create(&cow, &backing, &CreateOptions::default()).expect("create");
    let dev = size.div_ceil(512) * 512;
    let mut model = std::fs::read(&backing).expect("read backing");
    model.resize(dev as usize, 0);
    let mut f = CowFile::open(&cow, None, true).expect("open cow");
    assert_eq!(f.size(), dev);
    for op in ops {
        match *op {
            Op::Write { offset, len, byte } => {
                let buf = vec![byte; len];
                f.write_at(&buf, offset).expect("write");
                model[offset as usize..offset as usize + len].fill(byte);
            }
            Op::Read { offset, len } => {
                let mut buf = vec![0xeeu8; len];
                f.read_at(&mut buf, offset).expect("read");
                assert_eq!(buf, model[offset as usize..offset as usize + len].to_vec());
            }
        }
    }
    let mut all = vec![0u8; dev as usize];
    f.read_at(&mut all, 0).expect("read all");
    assert!(all == model, "full read differs from model");
    // Reopening sees the same thing (the bitmap is on disk).
    let f = CowFile::open(&cow, None, false).expect("reopen");
    let mut again = vec![0u8; dev as usize];
    f.read_at(&mut again, 0).expect("read all again");
    assert!(again == model, "reopened read differs from model");
    (model, cow, backing)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Random writes through CowFile agree with a flat model; merge == model.
    #[test]
    fn cowfile_and_merge_agree_with_model((size, ops) in sizes().prop_flat_map(|s| (Just(s), ops(s))), seed in any::<u8>()) {
        let dir = util::tempdir();
        let (model, cow, _backing) = run_model(dir.path(), size, seed, &ops);
        let out = dir.path().join("merged.img");
        merge_to_new(&cow, &out, &MergeOptions::default()).expect("merge");
        let merged = std::fs::read(&out).expect("read merged");
        prop_assert_eq!(merged.len() as u64, size);
        prop_assert!(merged == model[..size as usize].to_vec(), "merge differs from model");
    }

    /// An in-place merge interrupted after any number of writes, then re-run,
    /// leaves the backing equal to the model.
    #[test]
    fn interrupted_in_place_merge_resumes_to_model((size, ops) in (512u64..400_000).prop_flat_map(|s| (Just(s), ops(s))), seed in any::<u8>(), fail_after in 0u64..6) {
        let dir = util::tempdir();
        let (model, cow, backing) = run_model(dir.path(), size, seed, &ops);
        let first = merge_in_place(&cow, &MergeOptions { fail_after_writes: Some(fail_after), ..MergeOptions::default() });
        match first {
            Ok(_) => {}
            Err(CowError::Injected { .. }) => {
                let r = merge_in_place(&cow, &MergeOptions::default()).expect("resume");
                prop_assert!(r.resumed || r.dirty_sectors == 0);
            }
            Err(e) => panic!("unexpected: {e}"),
        }
        let merged = std::fs::read(&backing).expect("read backing");
        prop_assert_eq!(merged.len() as u64, size);
        prop_assert!(merged == model[..size as usize].to_vec(), "in-place merge differs from model");
        prop_assert!(!umltest::cow::merge::journal_path(&cow).exists());
    }
}

/// A COW we create, written through CowFile, is merged by the real uml_moo to
/// the same bytes as ours (new image and in place).
#[test]
fn our_cow_merges_identically_with_real_uml_moo() {
    let Some(moo) = util::tool("uml_moo", "uml-utilities") else {
        return;
    };
    let dir = util::tempdir();
    let ops = vec![
        Op::Write {
            offset: 0,
            len: 4096,
            byte: 0xaa,
        },
        Op::Write {
            offset: 70_000,
            len: 10,
            byte: 0x55,
        },
        Op::Write {
            offset: 200_704,
            len: 8192,
            byte: 0,
        },
        Op::Write {
            offset: 1_047_552,
            len: 1024,
            byte: 7,
        },
    ];
    let (model, cow, backing) = run_model(dir.path(), 1 << 20, 3, &ops);
    let ours = dir.path().join("ours.img");
    merge_to_new(&cow, &ours, &MergeOptions::default()).expect("merge");
    util::run_in(dir.path(), &moo, &["x.cow", "theirs.img"]).expect_code(0);
    let theirs = std::fs::read(dir.path().join("theirs.img")).expect("read theirs");
    assert!(theirs == model, "uml_moo differs from model");
    assert!(
        std::fs::read(&ours).expect("ours") == theirs,
        "ours differs from uml_moo"
    );
    // Allocation: ours is no larger than uml_moo's.
    let a = std::fs::metadata(&ours).expect("meta").blocks();
    let b = std::fs::metadata(dir.path().join("theirs.img"))
        .expect("meta")
        .blocks();
    assert!(a <= b, "ours allocates {a} blocks, uml_moo {b}");
    // In place: copy backing+cow, run uml_moo -d on one copy and ours on the other.
    let dir2 = util::tempdir();
    std::fs::copy(&backing, dir2.path().join("back.img")).expect("copy");
    set_mtime(&dir2.path().join("back.img"), MTIME);
    let cow2 = dir2.path().join("y.cow");
    std::fs::copy(&cow, &cow2).expect("copy cow");
    util::run_in(dir.path(), &moo, &["-d", "x.cow"]).expect_code(0);
    umltest::cow::merge::merge_in_place_durable(
        &cow2,
        &MergeOptions {
            backing: Some(dir2.path().join("back.img")),
            ..MergeOptions::default()
        },
        true,
    )
    .expect("ours -d");
    let t = std::fs::read(&backing).expect("theirs -d");
    assert!(t == model, "uml_moo -d differs from model");
    assert!(std::fs::read(dir2.path().join("back.img")).expect("ours -d") == t);
}

/// The COW's data area read through a counter (issue #16: the in-place merge
/// read each dirty run with its own 4 KiB `pread`, one synchronous disk read
/// per run on a cold page cache).
struct CountingReader {
    file: std::fs::File,
    reads: std::sync::Arc<std::sync::atomic::AtomicU64>,
    hinted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl umltest::cow::merge::ReadAt for CountingReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
    }
    fn will_need(&self, _offset: u64, len: u64) {
        self.hinted
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Many small scattered dirty runs (one sector in every four, 2000 runs over
/// 4 MiB, none adjacent) are merged in place with far fewer reads of the
/// COW than runs, all of them hinted ahead, to the same bytes as a merge to a
/// new image and as the model.
#[test]
fn in_place_merge_of_scattered_runs_reads_in_windows() {
    let dir = util::tempdir();
    let ops: Vec<Op> = (0..2000u64)
        .map(|i| Op::Write {
            offset: i * 2048 + 512 * (i % 3),
            len: 512,
            byte: (i % 251) as u8 + 1,
        })
        .collect();
    let (model, cow, backing) = run_model(dir.path(), 4 << 20, 9, &ops);
    let runs = CowFile::open(&cow, None, false).expect("open").dirty_runs();
    let want = dir.path().join("want.img");
    merge_to_new(&cow, &want, &MergeOptions::default()).expect("merge to new");
    // The runs the old code read one by one.
    assert_eq!(runs.len(), 2000);
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hinted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let report = umltest::cow::merge::merge_in_place_reading(
        &cow,
        &MergeOptions::default(),
        false,
        |file| CountingReader {
            file,
            reads: reads.clone(),
            hinted: hinted.clone(),
        },
    )
    .expect("merge -d");
    let reads = reads.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        reads > 0 && reads * 50 <= runs.len() as u64,
        "{reads} reads for {} dirty runs",
        runs.len()
    );
    // All but the first span was asked for before it was read.
    let hinted = hinted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(hinted >= 3 << 20, "{hinted} bytes hinted");
    assert_eq!(report.dirty_sectors, 2000);
    let merged = std::fs::read(&backing).expect("read backing");
    assert!(merged == model, "in-place merge differs from the model");
    assert!(
        merged == std::fs::read(&want).expect("want"),
        "differs from merge to new"
    );
}

// ---------------------------------------------------------------- block::Ubd

fn spec(dir: &Path, file: &str, backing: Option<&str>, owner: u32) -> UbdSpec {
    UbdSpec {
        index: 1,
        file: file.into(),
        backing: backing.map(PathBuf::from),
        flags: UbdFlags::default(),
        cwd: dir.to_path_buf(),
        owner_pid: owner,
        confined: false,
        readable: vec![],
    }
}

fn texts(log: &[umltest::block::LogLine]) -> Vec<String> {
    log.iter().map(|l| l.text.clone()).collect()
}

#[test]
fn ubd_creates_missing_cow_like_the_kernel() {
    let dir = util::tempdir();
    make_backing(&dir.path().join("fs.img"), 66536, &[(0, vec![9; 66536])]);
    let opened = Ubd::open(&spec(dir.path(), "h1.cow", Some("fs.img"), 100));
    assert_eq!(
        texts(&opened.log),
        vec!["Creating \"h1.cow\" as COW file for \"fs.img\"".to_string()]
    );
    assert_eq!(opened.log[0].level, Level::Info);
    let mut dev = opened.result.expect("open");
    assert!(!dev.as_cow().expect("a COW device").kernel_hangs_on_write());
    // 66536 bytes round up to a 130-sector device; the tail reads as zeros.
    assert_eq!(dev.size(), 66560);
    let mut tail = [0xffu8; 512];
    dev.read_at(&mut tail, 66048).expect("read tail");
    assert_eq!(&tail[..488], &[9u8; 488][..]);
    assert_eq!(&tail[488..], &[0u8; 24][..]);
    // Writing the last sector grows the COW to data_offset + ROUND_UP(size, 512).
    dev.write_at(&[1u8; 512], 66048).expect("write tail");
    assert_eq!(
        std::fs::metadata(dir.path().join("h1.cow"))
            .expect("meta")
            .len(),
        78848
    );
    drop(dev);
    // Identical to uml_mkcow's header: the kernel and the tool agree.
    let h = Header::decode(&std::fs::read(dir.path().join("h1.cow")).expect("read")[..4128])
        .expect("decode");
    assert_eq!(h.backing_path(), canon(&dir.path().join("fs.img")));
}

#[test]
fn ubd_reports_mtime_mismatch_with_kernel_messages() {
    let dir = util::tempdir();
    make_backing(&dir.path().join("fs.img"), 65536, &[]);
    drop(
        Ubd::open(&spec(dir.path(), "h1.cow", Some("fs.img"), 100))
            .result
            .expect("create"),
    );
    set_mtime(&dir.path().join("fs.img"), MTIME + 60);
    let opened = Ubd::open(&spec(dir.path(), "h1.cow", Some("fs.img"), 100));
    let err = opened.result.expect_err("mismatch");
    assert_eq!(
        texts(&opened.log),
        vec![
            format!(
                "mtime mismatch ({MTIME} vs {}) of COW header vs backing file",
                MTIME + 60
            ),
            "Failed to open 'h1.cow', errno = 22".to_string(),
            "ubdb: Can't open \"h1.cow\": errno = 22".to_string(),
        ]
    );
    assert_eq!(err.to_string(), "ubdb: Can't open \"h1.cow\": errno = 22");
}

#[test]
fn ubd_lock_conflict_between_two_machines() {
    let dir = util::tempdir();
    make_backing(&dir.path().join("fs.img"), 65536, &[]);
    let first = Ubd::open(&spec(dir.path(), "h1.cow", Some("fs.img"), 1001))
        .result
        .expect("first");
    let second = Ubd::open(&spec(dir.path(), "h1.cow", Some("fs.img"), 1002));
    assert!(second.result.is_err());
    assert_eq!(
        texts(&second.log),
        vec![
            "F_SETLK failed, file already locked by pid 1001".to_string(),
            "Failed to lock 'h1.cow', err = 11".to_string(),
            "Failed to open 'h1.cow', errno = 11".to_string(),
            "ubdb: Can't open \"h1.cow\": errno = 11".to_string(),
        ]
    );
    // Two COW files over one backing: read locks on the backing do not conflict.
    let other = Ubd::open(&spec(dir.path(), "h2.cow", Some("fs.img"), 1002));
    assert!(other.result.is_ok(), "{:?}", other.log);
    drop(first);
    assert!(Ubd::open(&spec(dir.path(), "h1.cow", Some("fs.img"), 1003))
        .result
        .is_ok());
}

#[test]
fn ubd_plain_file_and_non_cow_with_backing() {
    let dir = util::tempdir();
    std::fs::write(dir.path().join("data.img"), vec![5u8; 1000]).expect("write");
    let opened = Ubd::open(&spec(dir.path(), "data.img", None, 1));
    assert!(opened.log.is_empty(), "{:?}", opened.log);
    let dev = opened.result.expect("plain");
    assert_eq!(dev.size(), 1024);
    assert!(dev.as_cow().is_none());
    // A plain file named as a COW with a backing: the kernel refuses it.
    make_backing(&dir.path().join("fs.img"), 4096, &[]);
    let opened = Ubd::open(&spec(dir.path(), "data.img", Some("fs.img"), 1));
    assert!(opened.result.is_err());
    assert_eq!(
        texts(&opened.log),
        vec![
            "Failed to read COW header from COW file \"data.img\", errno = 22".to_string(),
            "Failed to open 'data.img', errno = 22".to_string(),
            "ubdb: Can't open \"data.img\": errno = 22".to_string(),
        ]
    );
}

// ---------------------------------------------------------------- CLI

/// Every file under `dir` with its length, mtime and content hash: "nothing
/// written" means this does not change.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, i64, Vec<u8>)> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("meta");
            if m.is_dir() {
                stack.push(p.clone());
                out.push((p, 0, m.mtime(), vec![]));
            } else if m.is_file() {
                let h = Sha256::digest(std::fs::read(&p).unwrap_or_default()).to_vec();
                out.push((p, m.len(), m.mtime(), h));
            } else {
                out.push((p, 0, m.mtime(), vec![]));
            }
        }
    }
    out.sort();
    out
}

/// A 1 MiB backing `base.img` and `x.cow` over it with sectors 0-7 and 100 dirty.
fn cli_setup(dir: &Path) {
    make_backing(&dir.join("base.img"), 1 << 20, &[(4096, vec![0x11; 8192])]);
    create(
        &dir.join("x.cow"),
        &dir.join("base.img"),
        &CreateOptions::default(),
    )
    .expect("create");
    let mut f = CowFile::open(&dir.join("x.cow"), None, true).expect("open");
    f.write_at(&[0x22; 4096], 0).expect("write");
    f.write_at(&[0x33; 10], 100 * 512 + 3).expect("write");
}

#[test]
fn cli_create_merge_info_diff() {
    let dir = util::tempdir();
    let d = dir.path();
    cli_setup(d);
    let info = util::umltest(d, &["cow", "info", "--json", "x.cow"]);
    info.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&info.stdout()).expect("json");
    assert_eq!(v["dirty_sectors"], 9, "{}", info.dump());
    assert_eq!(v["dirty_ranges"], 2);
    assert_eq!(v["layout"]["data_offset"], 12288);
    assert_eq!(v["header"]["version"], "v3");
    assert_eq!(v["backing"]["mtime_matches"], true);
    let diff = util::umltest(d, &["cow", "diff", "x.cow"]);
    diff.expect_code(0);
    assert_eq!(
        diff.stdout().lines().skip(1).collect::<Vec<_>>(),
        vec![
            "sectors 0-7 (bytes 0-4095): 4096 bytes changed",
            "sectors 100-100 (bytes 51200-51711): 10 bytes changed",
        ],
        "{}",
        diff.dump()
    );
    let hex = util::umltest(d, &["cow", "diff", "--hexdump", "--json", "x.cow"]);
    let v: serde_json::Value = serde_json::from_str(&hex.stdout()).expect("json");
    assert_eq!(v["changed_bytes"], 4106);
    assert_eq!(v["ranges"][1]["rows"][0]["offset"], 51200);
    assert_eq!(
        v["ranges"][1]["rows"][0]["cow"],
        "000000333333333333333333330000000"[..32].to_string()
    );
    util::umltest(d, &["cow", "merge", "x.cow", "new.img"]).expect_code(0);
    let merged = std::fs::read(d.join("new.img")).expect("merged");
    assert_eq!(&merged[..4096], &[0x22; 4096][..]);
    assert_eq!(&merged[4096..12288], &[0x11; 8192][..]);
    // -b and -d in either order.
    std::fs::copy(d.join("x.cow"), d.join("y.cow")).expect("copy");
    util::umltest(d, &["cow", "merge", "-b", "base.img", "-d", "x.cow"]).expect_code(0);
    assert!(std::fs::read(d.join("base.img")).expect("base") == merged);
    let stale = util::umltest(d, &["cow", "merge", "-d", "-b", "base.img", "y.cow"]);
    // The first in-place merge changed the backing: y.cow is now stale, unless
    // the merge happened within the same second (mtime has 1 s resolution).
    if std::fs::metadata(d.join("base.img")).expect("meta").mtime() != MTIME {
        stale.expect_code(1);
        assert!(
            stale.stderr().contains("mtime mismatch"),
            "{}",
            stale.dump()
        );
    }
    // create -f truncates: no stale dirty bits survive.
    util::umltest(d, &["cow", "create", "-f", "x.cow", "base.img"]).expect_code(0);
    let v: serde_json::Value =
        serde_json::from_str(&util::umltest(d, &["cow", "info", "--json", "x.cow"]).stdout())
            .expect("json");
    assert_eq!(v["dirty_sectors"], 0);
}

#[test]
fn cli_check_explains_and_fixes_mtime_in_cow_header_only() {
    let dir = util::tempdir();
    let d = dir.path();
    cli_setup(d);
    set_mtime(&d.join("base.img"), MTIME + 3600);
    let before = std::fs::read(d.join("base.img")).expect("base");
    let r = util::umltest(d, &["cow", "check", "x.cow"]);
    r.expect_code(1);
    assert!(
        r.stdout().contains(&format!(
            "mtime mismatch ({MTIME} vs {}) of COW header vs backing file",
            MTIME + 3600
        )),
        "{}",
        r.dump()
    );
    assert!(
        r.stdout().contains("without preserving times"),
        "{}",
        r.dump()
    );
    let r = util::umltest(d, &["cow", "merge", "x.cow", "o.img"]);
    r.expect_code(1);
    assert!(!d.join("o.img").exists());
    util::umltest(d, &["cow", "check", "--fix-mtime", "x.cow"]).expect_code(0);
    util::umltest(d, &["cow", "check", "x.cow"]).expect_code(0);
    assert_eq!(std::fs::read(d.join("base.img")).expect("base"), before);
    assert_eq!(
        std::fs::metadata(d.join("base.img")).expect("meta").mtime(),
        MTIME + 3600
    );
    util::umltest(d, &["cow", "merge", "x.cow", "o.img"]).expect_code(0);
}

#[test]
fn cli_rebase_to_moved_backing() {
    let dir = util::tempdir();
    let d = dir.path();
    cli_setup(d);
    std::fs::create_dir(d.join("moved")).expect("mkdir");
    std::fs::rename(d.join("base.img"), d.join("moved/base.img")).expect("mv");
    let r = util::umltest(d, &["cow", "merge", "x.cow", "o.img"]);
    r.expect_code(1);
    assert!(
        r.stderr().contains("No such file or directory"),
        "{}",
        r.dump()
    );
    util::umltest(d, &["cow", "rebase", "x.cow", "moved/base.img"]).expect_code(0);
    let h = Header::decode(&std::fs::read(d.join("x.cow")).expect("cow")[..4128]).expect("hdr");
    assert_eq!(h.backing_path(), canon(&d.join("moved/base.img")));
    util::umltest(d, &["cow", "merge", "x.cow", "o.img"]).expect_code(0);
    // A copy without -a has another mtime: rebase refuses, nothing changes.
    std::fs::copy(d.join("moved/base.img"), d.join("copy.img")).expect("cp");
    set_mtime(&d.join("copy.img"), MTIME + 5);
    let snap = snapshot(d);
    let r = util::umltest(d, &["cow", "rebase", "x.cow", "copy.img"]);
    r.expect_code(1);
    assert!(r.stderr().contains("mtime mismatch"), "{}", r.dump());
    assert_eq!(snapshot(d), snap);
}

/// Each bad input: a clear message naming the file, exit 1, nothing written.
#[test]
fn cli_bad_inputs_fail_cleanly_and_write_nothing() {
    type Setup = fn(&Path);
    let cases: Vec<(&str, Setup, &str)> = vec![
        (
            "bad magic",
            |d| std::fs::write(d.join("x.cow"), vec![0u8; 16384]).expect("w"),
            "x.cow: not a COW file: bad magic 0x00000000 at offset 0",
        ),
        (
            "unknown version",
            |d| {
                let mut b = std::fs::read(d.join("x.cow")).expect("r");
                b[7] = 7;
                std::fs::write(d.join("x.cow"), b).expect("w");
            },
            "x.cow: read_cow_header - invalid COW version",
        ),
        (
            "truncated header",
            |d| {
                let b = std::fs::read(d.join("x.cow")).expect("r");
                std::fs::write(d.join("x.cow"), &b[..100]).expect("w");
            },
            "x.cow: read_cow_header - failed to read V3 header",
        ),
        (
            "short header",
            |d| std::fs::write(d.join("x.cow"), b"OOOM").expect("w"),
            "x.cow: read_cow_header - short header",
        ),
        (
            "truncated bitmap",
            |d| {
                let b = std::fs::read(d.join("x.cow")).expect("r");
                std::fs::write(d.join("x.cow"), &b[..8200]).expect("w");
            },
            "x.cow: truncated COW file: the bitmap needs 256 bytes at offset 8192, the file holds 8 of them",
        ),
        (
            "missing backing",
            |d| std::fs::rename(d.join("base.img"), d.join("elsewhere.img")).expect("mv"),
            "base.img\": No such file or directory",
        ),
        (
            "size mismatch",
            |d| {
                let f = std::fs::File::options().write(true).open(d.join("base.img")).expect("o");
                f.set_len(2 << 20).expect("len");
                drop(f);
                set_mtime(&d.join("base.img"), MTIME);
            },
            "x.cow: Size mismatch (1048576 vs 2097152) of COW header vs backing file",
        ),
        (
            "mtime mismatch",
            |d| set_mtime(&d.join("base.img"), MTIME + 1),
            "x.cow: mtime mismatch (1704164645 vs 1704164646) of COW header vs backing file",
        ),
        (
            "directory",
            |d| {
                std::fs::remove_file(d.join("x.cow")).expect("rm");
                std::fs::create_dir(d.join("x.cow")).expect("mkdir");
            },
            "x.cow: not a regular file (it is a directory)",
        ),
        (
            "fifo",
            |d| {
                std::fs::remove_file(d.join("x.cow")).expect("rm");
                nix::unistd::mkfifo(&d.join("x.cow"), nix::sys::stat::Mode::from_bits_truncate(0o644))
                    .expect("mkfifo");
            },
            "x.cow: not a regular file (it is a FIFO)",
        ),
    ];
    for (name, setup, want) in cases {
        for args in [
            vec!["cow", "merge", "x.cow", "out.img"],
            vec!["cow", "merge", "-d", "x.cow"],
            vec!["cow", "diff", "x.cow"],
        ] {
            let dir = util::tempdir();
            let d = dir.path();
            cli_setup(d);
            setup(d);
            let snap = snapshot(d);
            let r = util::umltest(d, &args);
            r.expect_code(1);
            assert!(
                r.stderr().contains(want),
                "{name}: want {want:?}\n{}",
                r.dump()
            );
            assert!(!r.stderr().contains("panicked"), "{name}\n{}", r.dump());
            assert_eq!(snapshot(d), snap, "{name}: files changed\n{}", r.dump());
        }
    }
}

/// Root reads mode-000 files, so "no permission" runs the binary as nobody.
#[test]
fn cli_no_permission_as_unprivileged_user() {
    let Some(setpriv) = util::tool("setpriv", "util-linux") else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED (not a pass): needs root to switch to an unprivileged user");
        return;
    }
    let dir = util::tempdir();
    let d = dir.path();
    cli_setup(d);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(d.join("x.cow"), std::fs::Permissions::from_mode(0o000))
        .expect("chmod");
    let bin = util::umltest_bin();
    let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let snap = snapshot(d);
    for (args, want) in [
        (
            vec!["cow", "merge", "x.cow", "/tmp/never.img"],
            "open COW file x.cow: Permission denied",
        ),
        (
            vec!["cow", "info", "x.cow"],
            "open COW file x.cow: Permission denied",
        ),
    ] {
        let mut full: Vec<&str> = nobody.to_vec();
        full.push(bin.to_str().expect("utf8 path"));
        full.extend(args);
        let r = util::run_in(d, &setpriv, &full);
        r.expect_code(1);
        assert!(r.stderr().contains(want), "{}", r.dump());
    }
    // Readable COW, but the output directory is not writable by nobody.
    std::fs::set_permissions(d.join("x.cow"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let snap2 = snapshot(d);
    let mut full: Vec<&str> = nobody.to_vec();
    full.push(bin.to_str().expect("utf8 path"));
    full.extend(["cow", "merge", "x.cow", "out.img"]);
    let r = util::run_in(d, &setpriv, &full);
    r.expect_code(1);
    assert!(
        r.stderr().contains("create temporary file in"),
        "{}",
        r.dump()
    );
    assert!(r.stderr().contains("Permission denied"), "{}", r.dump());
    assert_eq!(snapshot(d), snap2);
    // In place needs write access to the backing file.
    let mut full: Vec<&str> = nobody.to_vec();
    full.push(bin.to_str().expect("utf8 path"));
    full.extend(["cow", "merge", "-d", "x.cow"]);
    let r = util::run_in(d, &setpriv, &full);
    r.expect_code(1);
    assert!(r.stderr().contains("Permission denied"), "{}", r.dump());
    assert_eq!(snapshot(d).len(), snap.len());
}

/// Disk full: a 64 KiB tmpfs in a private mount namespace.
#[test]
fn cli_disk_full_leaves_nothing_behind() {
    let Some(unshare) = util::tool("unshare", "util-linux") else {
        return;
    };
    let dir = util::tempdir();
    let d = dir.path();
    cli_setup(d);
    let mut f = CowFile::open(&d.join("x.cow"), None, true).expect("open");
    f.write_at(&vec![0x5a; 512 * 1024], 0).expect("fill");
    drop(f);
    std::fs::create_dir(d.join("full")).expect("mkdir");
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs full || exit 77; {} cow merge x.cow full/out.img; rc=$?; ls -A full; exit $rc",
        util::umltest_bin().display()
    );
    let r = util::run_in(d, &unshare, &["-m", "sh", "-c", &script]);
    if r.code() == Some(77) {
        eprintln!(
            "SKIPPED (not a pass): cannot mount a tmpfs here\n{}",
            r.dump()
        );
        return;
    }
    r.expect_code(1);
    assert!(
        r.stderr().contains("No space left on device"),
        "{}",
        r.dump()
    );
    assert!(r.stderr().contains("full/out.img"), "{}", r.dump());
    assert_eq!(
        r.stdout().trim(),
        "",
        "files left in the full filesystem\n{}",
        r.dump()
    );
}

// ---------------------------------------------------------------- real kernel

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One guest: writes known data through a COW the kernel creates
/// (`ubd1=x.cow,back.img`), then reports what it reads back.
struct GuestCase {
    name: &'static str,
    backing_len: u64,
}

impl GuestCase {
    fn script(&self) -> String {
        let sectors = self.backing_len.div_ceil(512);
        let floor = self.backing_len / 512 * 512;
        format!(
            "dd if=/data.bin of=/dev/ubdb bs=4096 seek=2 conv=notrunc 2>/dev/null\n\
             dd if=/data.bin of=/dev/ubdb bs=512 seek={last} count=1 conv=notrunc 2>/dev/null\n\
             sync\n\
             echo BEGIN size; cat /sys/block/ubdb/size; echo END size\n\
             echo BEGIN all; sha256sum /dev/ubdb; echo END all\n\
             echo BEGIN exact; head -c {len} /dev/ubdb | sha256sum; echo END exact\n\
             echo BEGIN floor; head -c {floor} /dev/ubdb | sha256sum; echo END floor",
            last = sectors - 1,
            len = self.backing_len,
        )
    }
}

fn first_word(s: Option<String>) -> String {
    s.unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A booted linux.uml writes through a COW; our merge, uml_moo's merge and what
/// the guest read back agree: fully for a multiple-of-512 backing; for a
/// 4 MiB + 1 byte backing ours equals the guest's view cut to the backing's size
/// (uml_moo's equals it cut to the last full sector).
#[test]
fn real_guest_writes_merge_to_what_the_guest_saw() {
    let Some(tools) = util::guest_tools() else {
        return;
    };
    let Some(moo) = util::tool("uml_moo", "uml-utilities") else {
        return;
    };
    let dir = util::tempdir();
    // Whole pages at page-aligned offsets: on a device whose size is not a
    // multiple of 4096 (512-byte blocks), linux.uml 6.1 reads back wrong data
    // after a write that covers part of a page (see the report in the README).
    let data: Vec<u8> = (0..16_384u32).map(|i| (i * 7 + i / 511) as u8).collect();
    let cases = [
        GuestCase {
            name: "aligned",
            backing_len: 4 << 20,
        },
        GuestCase {
            name: "plus1",
            backing_len: (4 << 20) + 1,
        },
    ];
    let handles: Vec<_> = cases
        .iter()
        .map(|case| {
            let case_dir = dir.path().join(case.name);
            std::fs::create_dir(&case_dir).expect("mkdir");
            let pattern: Vec<(u64, Vec<u8>)> = (0..case.backing_len)
                .step_by(65536)
                .map(|o| {
                    (
                        o,
                        vec![(o >> 16) as u8 | 0x80; 4096.min((case.backing_len - o) as usize)],
                    )
                })
                .collect();
            make_backing(&case_dir.join("back.img"), case.backing_len, &pattern);
            let mut root = RootFs::with_script(&case.script());
            root.files.push(("/data.bin".into(), data.clone(), 0o644));
            root.build(&tools, &case_dir.join("root.ext4"))
                .expect("root image");
            let tools = tools.clone();
            std::thread::spawn(move || {
                let mut args = standard_args("root.ext4");
                args.push("ubd1=x.cow,back.img".into());
                boot(&tools, &case_dir, &args, Duration::from_secs(120)).expect("boot")
            })
        })
        .collect();
    let outs: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("guest thread"))
        .collect();
    for (case, out) in cases.iter().zip(outs) {
        let d = dir.path().join(case.name);
        assert!(
            !out.timed_out,
            "{}: guest timed out\n{}",
            case.name,
            out.dump()
        );
        assert!(
            out.stdout
                .contains("Creating \"x.cow\" as COW file for \"back.img\""),
            "{}",
            out.dump()
        );
        let sectors: u64 = first_word(out.section("size")).parse().expect("size");
        assert_eq!(sectors, case.backing_len.div_ceil(512), "{}", out.dump());
        // The header the real kernel wrote: right fields, and byte-identical to ours.
        let kernel = std::fs::read(d.join("x.cow")).expect("read kernel COW");
        let h = Header::decode(&kernel[..4136]).expect("decode kernel header");
        assert_eq!(h.version, Version::V3);
        assert_eq!((h.size, i64::from(h.mtime)), (case.backing_len, MTIME));
        assert_eq!((h.sectorsize, h.alignment, h.cow_format), (512, 4096, 0));
        assert_eq!(h.backing_path(), canon(&d.join("back.img")));
        let ours_hdr = create(
            &d.join("same.cow"),
            Path::new("back.img"),
            &CreateOptions {
                force: false,
                cwd: Some(d.clone()),
            },
        )
        .expect("our create");
        assert_eq!(ours_hdr, h);
        let ours_cow = std::fs::read(d.join("same.cow")).expect("read our COW");
        // Up to the path's NUL and from the end of the header to the bitmap the
        // bytes are identical; the kernel does not clear the rest of the path
        // field (heap memory: non-zero bytes were seen there).
        let nul = 32 + h.backing_file.len();
        assert_eq!(
            ours_cow[..=nul],
            kernel[..=nul],
            "{}: header bytes",
            case.name
        );
        assert_eq!(
            ours_cow[4128..8192],
            kernel[4128..8192],
            "{}: padding",
            case.name
        );
        // The guest really wrote through the COW: the backing is untouched.
        assert_eq!(
            std::fs::metadata(d.join("back.img")).expect("meta").mtime(),
            MTIME
        );
        umltest::cow::merge_to_new(
            &d.join("x.cow"),
            &d.join("ours.img"),
            &MergeOptions::default(),
        )
        .expect("our merge");
        util::run_in(&d, &moo, &["x.cow", "moo.img"]).expect_code(0);
        let ours = std::fs::read(d.join("ours.img")).expect("ours");
        let theirs = std::fs::read(d.join("moo.img")).expect("moo");
        assert_eq!(ours.len() as u64, case.backing_len);
        assert_eq!(
            sha256_hex(&ours),
            first_word(out.section("exact")),
            "{}: ours vs guest",
            case.name
        );
        assert_eq!(
            sha256_hex(&theirs),
            first_word(out.section("floor")),
            "{}: uml_moo vs guest",
            case.name
        );
        if case.backing_len % 512 == 0 {
            assert_eq!(
                first_word(out.section("all")),
                first_word(out.section("exact"))
            );
            assert!(ours == theirs, "{}: ours vs uml_moo", case.name);
            // In place gives the same image.
            merge_in_place(&d.join("x.cow"), &MergeOptions::default()).expect("ours -d");
            assert!(std::fs::read(d.join("back.img")).expect("back") == ours);
        } else {
            assert_eq!(theirs.len() as u64, case.backing_len / 512 * 512);
            assert!(
                ours[..theirs.len()] == theirs[..],
                "{}: ours vs uml_moo prefix",
                case.name
            );
        }
    }
}

/// Sizes the real tools handle badly get warnings, and nothing is lost.
#[test]
fn cli_warns_about_partial_tail_and_tiny_backing() {
    let dir = util::tempdir();
    let d = dir.path();
    make_backing(&d.join("tiny.img"), 1000, &[(0, vec![0x44; 1000])]);
    let r = util::umltest(d, &["cow", "create", "t.cow", "tiny.img"]);
    r.expect_code(0);
    assert!(
        r.stderr().contains("hangs on its first write"),
        "{}",
        r.dump()
    );
    let mut f = CowFile::open(&d.join("t.cow"), None, true).expect("open");
    assert_eq!(f.size(), 1024);
    f.write_at(&[0x55; 600], 400)
        .expect("write across the tail");
    drop(f);
    let r = util::umltest(d, &["cow", "merge", "t.cow", "out.img"]);
    r.expect_code(0);
    assert!(
        r.stderr().contains("is 1000 bytes, not a multiple of 512: the last sector (bytes 512..1000) is partial; it is dirty: its first 488 bytes were taken from the COW file, the guest's 24 bytes beyond the backing's end are dropped. uml_moo would drop these 488 bytes and produce 512 bytes"),
        "{}",
        r.dump()
    );
    assert!(r.stderr().contains("32 KiB or less"), "{}", r.dump());
    let out = std::fs::read(d.join("out.img")).expect("out");
    let mut want = vec![0x44u8; 1000];
    want[400..].fill(0x55);
    assert_eq!(out, want);
    // The real uml_moo drops the partial sector (documented, checked here).
    if let Some(moo) = util::tool("uml_moo", "uml-utilities") {
        util::run_in(d, &moo, &["t.cow", "moo.img"]).expect_code(0);
        assert_eq!(
            std::fs::read(d.join("moo.img")).expect("moo"),
            want[..512].to_vec()
        );
    }
}

/// The benchmark runs end to end on a small image and prints its ratios (the
/// numbers themselves are only meaningful from a release build on 1 GiB).
#[test]
fn bench_cow_smoke() {
    if util::tool("uml_moo", "uml-utilities").is_none()
        || util::tool("mkfs.ext4", "e2fsprogs").is_none()
    {
        return;
    }
    let dir = util::tempdir();
    let r = util::umltest(
        dir.path(),
        &[
            "bench",
            "cow",
            "--size",
            "16M",
            "--percent",
            "1,50",
            "--runs",
            "1",
            // Dropping the page cache (as root) would slow every other
            // process on the machine: the cold path is run by hand.
            "--cache",
            "warm",
            "--dir",
            ".",
        ],
    );
    r.expect_code(0);
    let out = r.stdout();
    assert!(
        out.contains("  1%  warm |") && out.contains(" 50%  warm |") && !out.contains("cold |"),
        "{}",
        r.dump()
    );
    assert_eq!(out.matches("| same bytes,").count(), 2, "{}", r.dump());
}

/// `diff --files`: an ext4 image changed with debugfs (rm, write, chmod); the
/// changed blocks are written through a COW, and both views are read without
/// mounting.
#[test]
fn cli_diff_files_lists_ext4_changes() {
    let dir = util::tempdir();
    let d = dir.path();
    std::fs::write(d.join("new.txt"), "new data\n").expect("write");
    let tree = [
        ("etc/hosts", "hello\n"),
        ("d/keep", "keep\n"),
        ("d/gone", "gone\n"),
    ];
    let edits = [
        "rm /d/gone",
        "write new.txt /d/new",
        "sif /etc/hosts mode 0100600",
    ];
    if util::ext4_base_and_edited(d, &tree, &edits).is_none() {
        return;
    }
    set_mtime(&d.join("base.ext4"), MTIME);
    create(
        &d.join("x.cow"),
        &d.join("base.ext4"),
        &CreateOptions::default(),
    )
    .expect("create");
    util::write_changed_blocks(d, &d.join("x.cow"));
    let r = util::umltest(d, &["cow", "diff", "--files", "x.cow"]);
    r.expect_code(0);
    let stdout = r.stdout();
    let files: Vec<&str> = stdout.lines().filter(|l| !l.contains("sector")).collect();
    assert_eq!(
        files,
        vec!["D /d/gone", "A /d/new", "M /etc/hosts (mode)"],
        "{}",
        r.dump()
    );
    let r = util::umltest(d, &["cow", "diff", "--files", "--json", "x.cow"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout()).expect("json");
    assert_eq!(v["files"][1]["path"], "/d/new");
    assert_eq!(v["files"][1]["change"], "added");
    // Not an ext4 disk: a clear error naming the file.
    make_backing(&d.join("raw.img"), 1 << 20, &[]);
    create(
        &d.join("r.cow"),
        &d.join("raw.img"),
        &CreateOptions::default(),
    )
    .expect("create");
    let r = util::umltest(d, &["cow", "diff", "--files", "r.cow"]);
    r.expect_code(1);
    assert!(
        r.stderr().contains("raw.img: backing view:"),
        "{}",
        r.dump()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Whatever a file holds (random bytes behind a valid magic and version),
    /// info, check, diff, CowFile and Ubd::open return errors, never panic.
    #[test]
    fn corrupt_cow_files_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..9000),
        version in 0u32..5,
        magic in any::<bool>(),
    ) {
        if magic && bytes.len() >= 8 {
            bytes[..4].copy_from_slice(b"OOOM");
            bytes[4..8].copy_from_slice(&version.to_be_bytes());
        }
        let dir = util::tempdir();
        let p = dir.path().join("c.cow");
        std::fs::write(&p, &bytes).expect("write");
        let _ = umltest::cow::inspect::info(&p, None);
        let _ = umltest::cow::inspect::check(&p, None, false);
        let _ = umltest::cow::inspect::diff(&p, None, true);
        let _ = CowFile::open(&p, None, false);
        let _ = Ubd::open(&spec(dir.path(), "c.cow", None, 7)).result;
        prop_assert_eq!(std::fs::read(&p).expect("read"), bytes);
    }
}

#[test]
fn cli_info_reports_missing_backing() {
    let dir = util::tempdir();
    let d = dir.path();
    cli_setup(d);
    std::fs::remove_file(d.join("base.img")).expect("rm");
    let r = util::umltest(d, &["cow", "info", "x.cow"]);
    r.expect_code(0);
    assert!(
        r.stdout()
            .contains("backing status:  missing (No such file or directory"),
        "{}",
        r.dump()
    );
    let r = util::umltest(d, &["cow", "check", "x.cow"]);
    r.expect_code(1);
    assert!(r.stdout().contains("error: backing file"), "{}", r.dump());
    assert!(
        r.stdout().contains("cow rebase x.cow NEW_BACKING"),
        "{}",
        r.dump()
    );
}

#[test]
fn cli_merge_refuses_to_replace_backing_or_cow() {
    let dir = util::tempdir();
    let d = dir.path();
    cli_setup(d);
    let snap = snapshot(d);
    for out in ["base.img", "x.cow"] {
        let r = util::umltest(d, &["cow", "merge", "x.cow", out]);
        r.expect_code(1);
        assert!(
            r.stderr().contains("refusing to replace the"),
            "{}",
            r.dump()
        );
    }
    assert_eq!(snapshot(d), snap);
}

/// v1/v2 round the bitmap down: `check` says which sectors have no bit.
#[test]
fn cli_check_warns_about_v2_bitmap_rounding() {
    let dir = util::tempdir();
    let d = dir.path();
    make_backing(&d.join("b.img"), 1000, &[]);
    let mut h = Header::new_v3(
        canon(&d.join("b.img"))
            .into_os_string()
            .into_encoded_bytes(),
        MTIME as u32,
        1000,
    );
    h.version = Version::V2;
    h.alignment = 512;
    let l = h.layout().expect("layout");
    let mut bytes = h.encode();
    bytes.resize((l.data_offset + 1000) as usize, 0);
    std::fs::write(d.join("v2.cow"), &bytes).expect("write");
    let r = util::umltest(d, &["cow", "check", "v2.cow"]);
    r.expect_code(0);
    assert!(
        r.stdout().contains(
            "the 0-byte v2 bitmap covers 0 of the 2 sectors (the historical rounding bug)"
        ),
        "{}",
        r.dump()
    );
}

/// An in-place merge stopped after one write (as if killed) leaves its journal;
/// the same command then completes it, although the backing's mtime changed.
#[test]
fn cli_interrupted_in_place_merge_completes_on_rerun() {
    let dir = util::tempdir();
    let d = dir.path();
    cli_setup(d);
    util::umltest(d, &["cow", "merge", "x.cow", "want.img"]).expect_code(0);
    let out = std::process::Command::new(util::umltest_bin())
        .args(["cow", "merge", "-d", "x.cow"])
        .current_dir(d)
        .env("UMLTEST_COW_FAIL_AFTER_WRITES", "1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("injected failure after 1 writes"));
    assert!(d.join("x.cow.merging").exists());
    // Simulate the clock moving on: the partial merge changed the backing's mtime.
    set_mtime(&d.join("base.img"), MTIME + 10);
    let r = util::umltest(d, &["cow", "merge", "-d", "x.cow"]);
    r.expect_code(0);
    assert!(
        r.stderr()
            .contains("completed an interrupted in-place merge"),
        "{}",
        r.dump()
    );
    assert!(r.stderr().contains("are now stale"), "{}", r.dump());
    assert!(!d.join("x.cow.merging").exists());
    assert!(
        std::fs::read(d.join("base.img")).expect("base")
            == std::fs::read(d.join("want.img")).expect("want")
    );
}

/// Starts `umltest args` with the merge test hook pausing it after `writes`
/// writes, and returns it once it says so.
pub(crate) fn start_paused(cwd: &Path, args: &[&str], writes: u64) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new(util::umltest_bin())
        .args(args)
        .current_dir(cwd)
        .env("UMLTEST_COW_PAUSE_AFTER_WRITES", writes.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn umltest");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let marker = format!("merge paused after {writes} writes");
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(&marker) => break,
            Some(Ok(_)) => {}
            other => {
                let _ = child.kill();
                panic!("umltest {} ended before pausing: {other:?}", args.join(" "));
            }
        }
    }
    child
}

/// SIGKILL in the middle of `merge -d`, after its first write to the backing:
/// `cow check` says to finish the merge instead of blaming a careless copy,
/// `--fix-mtime` refuses (the header's mtime is what lets the merge finish:
/// rewriting it left the backing half-merged for good), and the re-run
/// completes the merge.
#[test]
fn sigkill_during_in_place_merge_then_check_refuses_fix_mtime() {
    let dir = util::tempdir();
    let d = dir.path();
    cli_setup(d);
    util::umltest(d, &["cow", "merge", "x.cow", "want.img"]).expect_code(0);
    let mut child = start_paused(d, &["cow", "merge", "-d", "x.cow"], 1);
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(d.join("x.cow.merging").exists());
    let half = std::fs::read(d.join("base.img")).expect("base");
    assert!(
        half != std::fs::read(d.join("want.img")).expect("want"),
        "the kill came too late"
    );
    // The write moved the mtime on; pin it so the test does not depend on the second.
    set_mtime(&d.join("base.img"), MTIME + 10);
    let header = std::fs::read(d.join("x.cow")).expect("cow");
    let r = util::umltest(d, &["cow", "check", "x.cow"]);
    r.expect_code(1);
    assert!(
        r.stdout().contains("was interrupted (x.cow.merging exists): the backing file may be half-merged; finish it with `umltest cow merge -d x.cow`"),
        "{}",
        r.dump()
    );
    assert!(!r.stdout().contains("--fix-mtime"), "{}", r.dump());
    let r = util::umltest(d, &["cow", "check", "--fix-mtime", "x.cow"]);
    r.expect_code(1);
    assert!(
        r.stdout().contains(&format!(
            "mtime mismatch ({MTIME} vs {}) of COW header vs backing file",
            MTIME + 10
        )),
        "{}",
        r.dump()
    );
    assert!(
        r.stdout()
            .contains("--fix-mtime refused: the header's mtime is what lets the merge finish"),
        "{}",
        r.dump()
    );
    assert!(
        std::fs::read(d.join("x.cow")).expect("cow") == header,
        "header rewritten"
    );
    assert!(std::fs::read(d.join("base.img")).expect("base") == half);
    let r = util::umltest(d, &["cow", "merge", "-d", "x.cow"]);
    r.expect_code(0);
    assert!(
        r.stderr()
            .contains("completed an interrupted in-place merge"),
        "{}",
        r.dump()
    );
    assert!(!d.join("x.cow.merging").exists());
    assert!(
        std::fs::read(d.join("base.img")).expect("base")
            == std::fs::read(d.join("want.img")).expect("want")
    );
    util::umltest(d, &["cow", "check", "x.cow"]).expect_code(1);
}

/// The kill can also come between creating the journal and writing it (an
/// older umltest, or a power loss without `--sync`): an empty journal over a
/// backing that still has the header's mtime means nothing was merged, and
/// the merge starts afresh; with the mtime changed it cannot be trusted.
#[test]
fn empty_merge_journal_is_nothing_merged_yet_when_the_backing_is_untouched() {
    let dir = util::tempdir();
    let d = dir.path();
    cli_setup(d);
    util::umltest(d, &["cow", "merge", "x.cow", "want.img"]).expect_code(0);
    std::fs::write(d.join("x.cow.merging"), b"").expect("empty journal");
    // A journal killed before its rename into place.
    std::fs::write(d.join("x.cow.merging.new"), b"{\"backing\":").expect("partial");
    let r = util::umltest(d, &["cow", "check", "x.cow"]);
    r.expect_code(1);
    assert!(
        r.stdout()
            .contains("an incomplete merge journal x.cow.merging exists"),
        "{}",
        r.dump()
    );
    let r = util::umltest(d, &["cow", "merge", "-d", "x.cow"]);
    r.expect_code(0);
    assert!(
        r.stderr().contains("removed the incomplete merge journal x.cow.merging: the backing file still has the size and mtime the COW header records, so nothing had been merged"),
        "{}",
        r.dump()
    );
    assert!(!d.join("x.cow.merging").exists() && !d.join("x.cow.merging.new").exists());
    assert!(
        std::fs::read(d.join("base.img")).expect("base")
            == std::fs::read(d.join("want.img")).expect("want")
    );

    let dir = util::tempdir();
    let d = dir.path();
    cli_setup(d);
    std::fs::write(d.join("x.cow.merging"), b"{\"backing\": \"/x\", \"si")
        .expect("partial journal");
    set_mtime(&d.join("base.img"), MTIME + 5);
    let before = std::fs::read(d.join("base.img")).expect("base");
    let r = util::umltest(d, &["cow", "merge", "-d", "x.cow"]);
    r.expect_code(1);
    assert!(
        r.stderr().contains("unreadable merge journal (EOF while parsing a string at line 1 column 21), and the backing file")
            && r.stderr().contains(&format!(
                "no longer has the mtime the COW header records ({MTIME} vs {}): an interrupted merge may have written part of it",
                MTIME + 5
            )),
        "{}",
        r.dump()
    );
    assert!(std::fs::read(d.join("base.img")).expect("base") == before);
    assert!(d.join("x.cow.merging").exists());
}

#[test]
fn ubd_size_stage_and_shared_flag_messages() {
    let dir = util::tempdir();
    // Missing backing named on the command line: the size stage fails.
    let opened = Ubd::open(&spec(dir.path(), "h1.cow", Some("nope.img"), 1));
    assert!(opened.result.is_err());
    assert_eq!(
        texts(&opened.log),
        vec![
            "Couldn't stat \"nope.img\" : err = 2".to_string(),
            "Failed to initialize ubd device 1 :Couldn't determine size of device's file"
                .to_string(),
        ]
    );
    assert!(!dir.path().join("h1.cow").exists());
    // Shared (c): no host locks, and the kernel says so for both files.
    make_backing(&dir.path().join("fs.img"), 65536, &[]);
    drop(
        Ubd::open(&spec(dir.path(), "h1.cow", Some("fs.img"), 1))
            .result
            .expect("create"),
    );
    let mut s = spec(dir.path(), "h1.cow", Some("fs.img"), 2);
    s.flags.shared = true;
    let a = Ubd::open(&s);
    let b = Ubd::open(&s);
    assert!(a.result.is_ok() && b.result.is_ok());
    let backing = canon(&dir.path().join("fs.img"));
    assert_eq!(
        texts(&b.log),
        vec![
            "Not locking \"h1.cow\" on the host".to_string(),
            format!("Not locking \"{}\" on the host", backing.display()),
        ]
    );
}
