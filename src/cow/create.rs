//! Creating COW files (`uml_mkcow`, and the kernel at boot) and the backing-path
//! absolutization they share (`cow-format.md` §8, §9, §11).

use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::header::{Header, Layout, PATH_LEN_V3};
use super::{backing_stat, CowError};

/// `absolutize`: the path stored in a new header. The directory part is resolved
/// physically (symlinks and `..`, as `chdir` + `getcwd` do) relative to `cwd`;
/// the last component is kept verbatim.
///
/// With `kernel_quirks`, a path whose only slash is the first character (a file
/// directly in `/`) fails as in the kernel and uml_mkcow (`chdir("")`); without,
/// it resolves to itself.
pub fn absolutize(name: &Path, cwd: &Path, kernel_quirks: bool) -> Result<Vec<u8>, CowError> {
    let bytes = name.as_os_str().as_bytes();
    let shown = || String::from_utf8_lossy(bytes).into_owned();
    if bytes.len() > PATH_LEN_V3 - 1 {
        return Err(CowError::NameTooLong { name: shown() });
    }
    let cant_cd = |e: std::io::Error| CowError::CantCd {
        name: shown(),
        errno: e.raw_os_error().unwrap_or(libc::EINVAL),
    };
    let resolve_dir = |dir: &Path| -> Result<Vec<u8>, CowError> {
        let abs = std::fs::canonicalize(cwd.join(dir)).map_err(cant_cd)?;
        if !abs.is_dir() {
            return Err(cant_cd(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        Ok(abs.as_os_str().as_bytes().to_vec())
    };
    let mut out = match bytes.iter().rposition(|&c| c == b'/') {
        Some(0) if kernel_quirks => {
            return Err(cant_cd(std::io::Error::from_raw_os_error(libc::ENOENT)))
        }
        Some(0) => Vec::new(),
        Some(i) => {
            let dir = resolve_dir(Path::new(std::ffi::OsStr::from_bytes(&bytes[..i])))?;
            if dir == b"/" {
                Vec::new()
            } else {
                dir
            }
        }
        None => {
            let dir = resolve_dir(Path::new("."))?;
            if dir == b"/" {
                Vec::new()
            } else {
                dir
            }
        }
    };
    let last = match bytes.iter().rposition(|&c| c == b'/') {
        Some(i) => &bytes[i..],
        None => {
            out.push(b'/');
            bytes
        }
    };
    out.extend_from_slice(last);
    if out.len() > PATH_LEN_V3 - 1 {
        return Err(CowError::NoFit { name: shown() });
    }
    Ok(out)
}

/// Options of [`create`].
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Replace an existing COW file. Unlike `uml_mkcow -f` (which rewrites the
    /// header in place and keeps old dirty bits and data), the new file starts empty.
    pub force: bool,
    /// The directory relative paths are resolved from (the process's cwd if `None`).
    pub cwd: Option<PathBuf>,
}

/// The header a new COW over `backing` gets, and the backing's absolute path.
pub fn new_header(backing: &Path, cwd: &Path, kernel_quirks: bool) -> Result<Header, CowError> {
    let abs = absolutize(backing, cwd, kernel_quirks)?;
    let abs_path = PathBuf::from(std::ffi::OsStr::from_bytes(&abs));
    let (size, mtime) =
        backing_stat(&abs_path).map_err(|e| CowError::io("stat backing file", &abs_path, e))?;
    // The header keeps the low 32 bits of the mtime (`time32_t`).
    Ok(Header::new_v3(abs, mtime as u32, size))
}

/// `init_cow_file`: writes the header and one zero byte at `data_offset + size - 1`
/// (which sets the file length and leaves the bitmap a hole of zeros).
pub fn init_cow_file(file: &File, header: &Header) -> std::io::Result<Layout> {
    let layout = header
        .layout()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    file.write_all_at(&header.encode(), 0)?;
    let end = layout.data_offset + header.size;
    file.write_all_at(&[0], end.saturating_sub(1))?;
    Ok(layout)
}

pub(crate) fn umask() -> u32 {
    // Read it from /proc: setting and restoring it would race other threads.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// `uml_mkcow [-f] COW BACKING`: a v3 COW file byte-identical to uml_mkcow's
/// (and the kernel's). Everything is checked and written to a temporary file in
/// the COW's directory, then renamed: on any error nothing is left behind.
pub fn create(cow: &Path, backing: &Path, opts: &CreateOptions) -> Result<Header, CowError> {
    let cwd = match &opts.cwd {
        Some(c) => c.clone(),
        None => std::env::current_dir().map_err(|e| CowError::io("getcwd for", backing, e))?,
    };
    let header = new_header(backing, &cwd, false)?;
    let cow_abs = cwd.join(cow);
    if !opts.force && std::fs::symlink_metadata(&cow_abs).is_ok() {
        return Err(CowError::Exists {
            path: cow.to_path_buf(),
        });
    }
    if let Ok(meta) = std::fs::metadata(&cow_abs) {
        if !meta.is_file() {
            return Err(CowError::NotRegular {
                path: cow.to_path_buf(),
                kind: super::open::kind_name(meta.file_type()),
            });
        }
    }
    let dir = match cow_abs.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => cwd.clone(),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".umltest-cow")
        .tempfile_in(&dir)
        .map_err(|e| CowError::io("create temporary file in", &dir, e))?;
    init_cow_file(tmp.as_file(), &header).map_err(|e| CowError::io("write", cow, e))?;
    tmp.flush().map_err(|e| CowError::io("write", cow, e))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644 & !umask()))
        .map_err(|e| CowError::io("chmod", cow, e))?;
    if opts.force {
        tmp.persist(&cow_abs)
            .map_err(|e| CowError::io("rename temporary file to", cow, e.error))?;
    } else {
        tmp.persist_noclobber(&cow_abs).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                CowError::Exists {
                    path: cow.to_path_buf(),
                }
            } else {
                CowError::io("rename temporary file to", cow, e.error)
            }
        })?;
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolutize_resolves_directory_keeps_last_component() {
        let dir = tempfile::tempdir().expect("tmp");
        let real = std::fs::canonicalize(dir.path()).expect("canon");
        std::fs::create_dir(real.join("a")).expect("mkdir");
        let rel = absolutize(Path::new("a/../x.img"), &real, true).expect("abs");
        assert_eq!(rel, [real.as_os_str().as_bytes(), b"/x.img"].concat());
        let bare = absolutize(Path::new("y.img"), &real.join("a"), true).expect("abs");
        assert_eq!(bare, [real.as_os_str().as_bytes(), b"/a/y.img"].concat());
        let e = absolutize(Path::new("/base.img"), &real, true).expect_err("quirk");
        assert_eq!(
            e.to_string(),
            "absolutize : Can't cd to '/base.img' - errno = 2"
        );
        assert_eq!(
            absolutize(Path::new("/base.img"), &real, false).expect("lenient"),
            b"/base.img"
        );
        let e = absolutize(Path::new("nodir/f"), &real, true).expect_err("missing dir");
        assert_eq!(
            e.to_string(),
            "absolutize : Can't cd to 'nodir/f' - errno = 2"
        );
        let long = "x".repeat(4096);
        let e = absolutize(Path::new(&long), &real, true).expect_err("long");
        assert!(e.to_string().starts_with("Backing file name \"xxx"), "{e}");
        assert!(e
            .to_string()
            .ends_with("names are limited to 4095 characters"));
    }
}
