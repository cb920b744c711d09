//! COW files: golden bytes against the real uml_mkcow/uml_moo, CowFile and merge
//! against a flat model, the kernel's open semantics, and the `umltest cow` CLI.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use umltest::block::{BlockDevice, Level, Ubd, UbdFlags, UbdSpec};
use umltest::cow::{
    create, header::BROKEN_V3_MESSAGE, merge_in_place, merge_to_new, CowError, CowFile,
    CreateOptions, Header, MergeOptions, Version,
};

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
    merge_in_place(
        &cow2,
        &MergeOptions {
            backing: Some(dir2.path().join("back.img")),
            ..MergeOptions::default()
        },
    )
    .expect("ours -d");
    let t = std::fs::read(&backing).expect("theirs -d");
    assert!(t == model, "uml_moo -d differs from model");
    assert!(std::fs::read(dir2.path().join("back.img")).expect("ours -d") == t);
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
