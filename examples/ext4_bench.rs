//! Measures the guest ext4 (`umltest::guestfs::ext4`): 1000 small files
//! created and written in one directory, then `sync`, on Debian-default
//! `mkfs.ext4` images with 1 KiB and 4 KiB blocks, in memory and through a
//! `ubd` COW file; then `e2fsck -fn` on the result. The numbers for
//! `docs/ext4-choice.md`:
//!
//! ```sh
//! cargo run --release --example ext4_bench
//! ```

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use umltest::block::{BlockDevice, BlockError, Ubd, UbdFlags, UbdSpec};
use umltest::guestfs::ext4::{Ext4, MountMode};

struct Mem(Vec<u8>);

impl BlockDevice for Mem {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), BlockError> {
        let o = offset as usize;
        self.0[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

const FILES: usize = 1000;

fn workload<D: BlockDevice>(dev: D) -> (f64, D) {
    let mut fs = Ext4::mount(dev, MountMode::ReadWrite).expect("mount");
    fs.set_clock(1_767_225_600);
    let t = Instant::now();
    fs.mkdir("/many", 0o755, 0, 0).expect("mkdir");
    for i in 0..FILES {
        fs.write_file(
            &format!("/many/file-{i:04}"),
            format!("{i}\n").as_bytes(),
            0o644,
            0,
            0,
        )
        .expect("write");
    }
    fs.sync().expect("sync");
    let secs = t.elapsed().as_secs_f64();
    (secs, fs.unmount().expect("unmount"))
}

fn fsck(img: &Path) -> String {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("e2fsck");
    format!("e2fsck -fn exit {}", out.status.code().unwrap_or(-1))
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for block in [1024u32, 4096] {
        let base = d.join(format!("base{block}.ext4"));
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", &block.to_string()])
            .arg(&base)
            .arg("64M")
            .status()
            .expect("mkfs.ext4")
            .success();
        assert!(ok, "mkfs.ext4 failed");

        let (secs, mem) = workload(Mem(std::fs::read(&base).expect("read")));
        let out = d.join("mem.ext4");
        std::fs::write(&out, &mem.0).expect("write");
        println!(
            "{block:>4}-byte blocks, memory: {FILES} files in {:.1} ms = {:.0} files/s; {}",
            secs * 1e3,
            FILES as f64 / secs,
            fsck(&out)
        );

        let cow = d.join(format!("h{block}.cow"));
        let spec = UbdSpec {
            index: 0,
            file: cow.clone(),
            backing: Some(base.clone()),
            flags: UbdFlags::default(),
            cwd: d.to_path_buf(),
            owner_pid: 1,
            confined: true,
            readable: vec![],
        };
        let ubd = Ubd::open(&spec).result.expect("ubd");
        let (secs, ubd) = workload(ubd);
        drop(ubd);
        let merged = d.join("merged.ext4");
        umltest::cow::merge::merge_to_new(&cow, &merged, &Default::default()).expect("merge");
        let cow_bytes = std::fs::metadata(&cow).map(|m| m.len()).unwrap_or(0);
        println!(
            "{block:>4}-byte blocks, ubd COW: {FILES} files in {:.1} ms = {:.0} files/s; COW file {} KiB (sparse length); {}",
            secs * 1e3,
            FILES as f64 / secs,
            cow_bytes / 1024,
            fsck(&merged)
        );
    }
}
