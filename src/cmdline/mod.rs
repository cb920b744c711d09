//! The UML 6.1 kernel command line: what `linux.uml` (Debian 6.1.176) configures
//! from its argv, quirks included. A pure core: no I/O, no clock, no randomness.
//!
//! Two entry points:
//! - [`split_shell_words`] splits one string into argv as a POSIX shell would
//!   (quotes and backslashes, no expansions); the scenario engine uses it for a
//!   machine's `cmdline`.
//! - [`parse`] takes argv exactly as `linux.uml` receives it (one `String` per
//!   argv element, without the program name) and returns a [`Parsed`]: plain data
//!   (serde `Serialize`) the backends build machines from: block devices
//!   ([`UbdDevice`]), network devices ([`NetDevice`] with [`NetParams`]), memory,
//!   root, init with its argv and environment, umid/uml_dir, consoles, the effective
//!   `/proc/cmdline`, whether the kernel boots at all, and [`Diagnostic`]s: the
//!   kernel's own messages, verbatim, each pointing at the option it is about.
//!
//! Byte spans ([`Span`]) refer to [`Parsed::input`]: the argv joined with single
//! spaces, which is also the kernel command line before UML drops `umid=` and
//! appends `root=98:0`/`console=tty0`.
//!
//! How it is modelled (see `../shared/spec/kernel-cmdline.md`; the real binary was
//! the judge where the digest was silent or wrong): the same steps the kernel runs,
//! on one mutable byte buffer like its `static_command_line` (module `kernel`):
//! UML's prefix-matched `__uml_setup` options, the generic `next_arg` tokeniser with
//! its quote handling, `__setup` handlers matched by prefix in link order (so
//! `ethernet=x` reaches the `eth` handler), the ubd unit/flags/`strsep` parser, the
//! network transports configured in registration order with `split_if_spec` and
//! `setup_etheraddr` reading C strings from the buffer (hence MAC inheritance and
//! MACs that "continue into the next word"), `mem=` via `memparse`, and init's
//! argv/environment rules (`init=` forgets earlier arguments, `--`, limits).
//!
//! [`paths::host_paths`] lists the host paths a command line names (for the
//! run-folder confinement checks).
//!
//! Not modelled: anything that depends on host files or processes (whether an
//! image exists, the umid directory, sockets); [`resolve_sizes`] fills in disk sizes
//! when given a lookup. Memory predictions assume `setarch -R` (no exec-shield gap).
//!
//! Nothing here panics on any input: every buffer access is bounds-checked.

mod cstr;
mod kernel;
mod model;
mod net;
pub mod paths;
mod render;
mod shell;

pub use model::{
    Channel, Diagnostic, LineConfig, NetDevice, NetParams, Parsed, Severity, Span, UbdDevice,
};
pub use net::TRANSPORTS;
pub use shell::{quote_shell_word, split_shell_words, SplitError};

/// Predicts what linux.uml 6.1 configures from `argv` (each element one argv
/// element of `linux.uml`, as the kernel receives them, without the program name).
pub fn parse(argv: &[String]) -> Parsed {
    kernel::run(argv)
}

/// Splits `line` as a shell would, then [`parse`]s it.
pub fn parse_shell(line: &str) -> Result<Parsed, SplitError> {
    Ok(parse(&split_shell_words(line)?))
}

/// What [`resolve_sizes`] needs to know about a host file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFile {
    /// Size in bytes; `None` when the file does not exist (or is no regular file).
    pub size: Option<u64>,
    /// The backing file named in the file's COW header, when it has one.
    pub cow_backing: Option<String>,
}

/// Fills in [`UbdDevice::size_sectors`] the way `ubd_file_size` decides it, and
/// adds the kernel's boot-time message for devices whose size it cannot determine:
/// with a backing file on the command line, that file's size; else, for a COW
/// file, the size of the backing file its header names; else the file's own size;
/// rounded up to whole sectors. `lookup` is the caller's access to the host files
/// (paths as written on the command line, relative to the machine's directory).
pub fn resolve_sizes(parsed: &mut Parsed, lookup: &dyn Fn(&str) -> HostFile) {
    let mut diags = Vec::new();
    for dev in &mut parsed.ubd {
        let size = match &dev.backing {
            Some(backing) => lookup(backing).size,
            None => {
                let own = lookup(&dev.file);
                match (&own.size, &own.cow_backing) {
                    (None, _) => None,
                    (Some(_), Some(backing)) => lookup(backing).size,
                    (Some(size), None) => Some(*size),
                }
            }
        };
        match size {
            Some(bytes) => dev.size_sectors = Some(bytes.div_ceil(512)),
            None => {
                dev.size_sectors = None;
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    message: format!(
                        "Failed to initialize ubd device {} :Couldn't determine size of device's file",
                        dev.index
                    ),
                    channel: Channel::Log,
                    span: dev.span,
                    effect: format!("/dev/{} does not exist in the guest", dev.name),
                    help: Some(if dev.implicit {
                        "ubd0 defaults to the file root_fs; give ubd0=<image>".to_string()
                    } else {
                        "check that the file exists (paths are relative to the machine's directory)".to_string()
                    }),
                });
            }
        }
    }
    parsed.diagnostics.extend(diags);
}

impl Parsed {
    /// The diagnostics the kernel itself prints (not umltest's own remarks).
    pub fn kernel_messages(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.channel != Channel::Lint)
    }
}
