//! The pipeline linux.uml 6.1 runs over its argv, step by step:
//!
//! 1. `linux_main` (arch/um/kernel/um_arch.c): UML-level options by prefix, the
//!    kept argv elements joined into the command line, `root=98:0` and
//!    `console=tty0` appended;
//! 2. `parse_early_param` and `parse_args` (init/main.c, kernel/params.c): words,
//!    quotes, `__setup` handlers by prefix, init's argv and environment, `--`;
//! 3. the late initcalls: ubd devices, network transports in registration order,
//!    vector devices, console and serial lines.
//!
//! Every handler works on one [`Buf`], like the kernel's `static_command_line`.

use super::cstr::{memparse, strtoul_str, Buf};
use super::model::*;
use super::net;

/// `COMMAND_LINE_SIZE` on UML.
pub(crate) const COMMAND_LINE_SIZE: usize = 4096;
/// `CONFIG_INIT_ENV_ARG_LIMIT` in the Debian build.
pub(crate) const MAX_INIT_ARGS: usize = 128;
pub(crate) const MAX_INIT_ENVS: usize = 128;
/// `MAX_DEV` of ubd_kern.c.
pub(crate) const UBD_MAX_DEV: u64 = 16;
/// Consoles and serial lines (`MAX_TTYS`, `NR_PORTS`).
pub(crate) const MAX_CONSOLES: u32 = 16;
pub(crate) const MAX_SERIAL: u32 = 64;
/// Default RAM of the 6.1 build.
pub(crate) const DEFAULT_MEM: u64 = 64 << 20;
/// What `setup_physmem` needs before any RAM is usable, with address
/// randomisation off (`setarch -R`): `Too few physical memory! Needed=16777216`.
pub(crate) const MIN_MEM_RESERVED: u64 = 16 << 20;
const PAGE_SIZE: u64 = 4096;
/// `UMID_LEN`.
const UMID_LEN: usize = 64;

/// The kernel's `isspace`: its ctype table also counts 0xA0 (Latin-1 NBSP).
pub(crate) fn kernel_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0)
}

/// Maps kernel command-line offsets back to input offsets.
#[derive(Debug, Clone, Default)]
struct SpanMap {
    /// (kernel start, length, input start) per kept argv element.
    segments: Vec<(usize, usize, usize)>,
    input_len: usize,
}

impl SpanMap {
    fn map(&self, k: usize) -> usize {
        for &(ks, len, is) in &self.segments {
            if k >= ks && k <= ks + len {
                return (is + (k - ks)).min(self.input_len);
            }
        }
        self.input_len
    }

    fn span(&self, start: usize, end: usize) -> Span {
        let s = self.map(start);
        let e = self.map(end).max(s);
        [s, e]
    }
}

#[derive(Debug, Clone, Default)]
struct UbdSlot {
    /// The file field (buffer text at setup time); `None`: not configured.
    file: Option<String>,
    backing: Option<String>,
    serial: Option<String>,
    write: bool,
    sync: bool,
    // These three live on the device, not in the flags, so they stick even when
    // the definition fails (ubd_kern.c sets them inside the flag loop).
    no_cow: bool,
    shared: bool,
    no_trim: bool,
    span: Span,
}

/// An `eth<N>=` entry waiting for its transport (`struct eth_init`).
#[derive(Debug, Clone)]
pub(crate) struct EthInit {
    pub(crate) index: i32,
    /// Offset of the text after `=` in the buffer.
    pub(crate) init: usize,
    pub(crate) span: Span,
}

pub(crate) struct Kernel {
    pub(crate) buf: Buf,
    map: SpanMap,
    pub(crate) diags: Vec<Diagnostic>,
    argv: Vec<String>,
    input: String,
    proc_cmdline: String,
    boots: bool,
    physmem: u64,
    umid: Option<String>,
    umid_inited: bool,
    uml_dir: Option<String>,
    root: String,
    root_rw: bool,
    init: Option<String>,
    argv_init: Vec<String>,
    envp_init: Vec<String>,
    panic_later: Option<(&'static str, String)>,
    quiet: bool,
    ubd: Vec<UbdSlot>,
    ubd_global_sync: bool,
    pub(crate) eth_cmd_line: Vec<EthInit>,
    pub(crate) vec_cmd_line: Vec<EthInit>,
    con: LineConfig,
    ssl: LineConfig,
    mconsole_notify: Option<String>,
    pub(crate) net: Vec<NetDevice>,
    /// Set by `iomem=` for the current argv element: where parse_iomem cut it.
    iomem_cut: Option<usize>,
    /// Spans of the words that went to init (for the "Unknown ..." message).
    unknown_spans: Vec<Span>,
}

/// Runs the whole pipeline.
pub(crate) fn run(argv: &[String]) -> Parsed {
    let input = argv.join(" ");
    let mut k = Kernel {
        buf: Buf::new(b""),
        map: SpanMap {
            segments: Vec::new(),
            input_len: input.len(),
        },
        diags: Vec::new(),
        argv: argv.to_vec(),
        input,
        proc_cmdline: String::new(),
        boots: true,
        physmem: DEFAULT_MEM,
        umid: None,
        umid_inited: false,
        uml_dir: None,
        root: String::new(),
        root_rw: false,
        init: None,
        argv_init: vec!["init".to_string()],
        envp_init: vec!["HOME=/".to_string(), "TERM=linux".to_string()],
        panic_later: None,
        quiet: false,
        ubd: vec![UbdSlot::default(); UBD_MAX_DEV as usize],
        ubd_global_sync: false,
        eth_cmd_line: Vec::new(),
        vec_cmd_line: Vec::new(),
        con: LineConfig::default(),
        ssl: LineConfig::default(),
        mconsole_notify: None,
        net: Vec::new(),
        iomem_cut: None,
        unknown_spans: Vec::new(),
    };
    if k.linux_main() {
        k.start_kernel();
    }
    k.finish()
}

impl Kernel {
    pub(crate) fn diag(
        &mut self,
        severity: Severity,
        channel: Channel,
        message: impl Into<String>,
        span: Span,
        effect: impl Into<String>,
        help: Option<String>,
    ) {
        self.diags.push(Diagnostic {
            severity,
            message: message.into(),
            channel,
            span,
            effect: effect.into(),
            help,
        });
    }

    pub(crate) fn span_of(&self, start: usize, end: usize) -> Span {
        self.map.span(start, end)
    }

    fn fatal_stdout(&mut self, message: &str, span: Span, effect: &str, help: Option<String>) {
        self.boots = false;
        self.diag(
            Severity::Fatal,
            Channel::Stdout,
            message,
            span,
            effect,
            help,
        );
    }

    /// Step 1. Returns false when the UML process exits before the kernel starts.
    fn linux_main(&mut self) -> bool {
        let mut cmdline: Vec<u8> = Vec::new();
        let mut have_root = false;
        let mut have_console = false;
        let mut in_at = 0usize;
        let argv = self.argv.clone();
        self.lint_spaces(&argv);
        for (i, arg) in argv.iter().enumerate() {
            let here = in_at;
            in_at += arg.len() + 1;
            let span: Span = [here, here + arg.len()];
            // C strings end at the first NUL byte.
            let arg = arg.split('\0').next().unwrap_or("");
            if i == 0 && arg.starts_with(' ') {
                continue;
            }
            let mut add = true;
            if !self.uml_checksetup(arg, span, &mut add, &mut have_root, &mut have_console) {
                return false;
            }
            let arg = match self.iomem_cut.take() {
                Some(cut) => arg.get(..cut).unwrap_or(arg),
                None => arg,
            };
            if add && !self.add_arg(&mut cmdline, arg, here, span) {
                return false;
            }
        }
        let end = self.input.len();
        if !have_root && !self.add_arg(&mut cmdline, "root=98:0", end, [end, end]) {
            return false;
        }
        if !have_console && !self.add_arg(&mut cmdline, "console=tty0", end, [end, end]) {
            return false;
        }
        self.proc_cmdline = String::from_utf8_lossy(&cmdline).into_owned();
        // The whole line must fit the page left after the reserved area.
        if self.physmem <= MIN_MEM_RESERVED {
            let msg = format!(
                "Too few physical memory! Needed={MIN_MEM_RESERVED}, given={}",
                self.physmem
            );
            let span = self.last_word_span("mem=");
            self.fatal_stdout(
                &msg,
                span,
                "linux.uml exits with status 1 before the kernel starts",
                Some("give more than 16M, e.g. mem=64M".into()),
            );
            return false;
        }
        self.buf = Buf::new(&cmdline);
        true
    }

    /// umltest's own remarks on options cut in two by a space: the kernel splits
    /// words at blanks and never rejoins them, so `eth0=vde, sw` is `eth0=vde,`
    /// plus a word `sw` for init.
    fn lint_spaces(&mut self, argv: &[String]) {
        let mut at = 0;
        let mut spans = Vec::new();
        for (i, arg) in argv.iter().enumerate() {
            let span: Span = [at, at + arg.len()];
            at += arg.len() + 1;
            let option_like = |w: &str| {
                w.contains('=')
                    || w.starts_with("vec")
                    || w.starts_with("ubd")
                    || w.starts_with("eth")
            };
            if arg.bytes().any(kernel_isspace) && option_like(arg) && !arg.contains('"') {
                let cut = arg.bytes().position(kernel_isspace).unwrap_or(arg.len());
                let first =
                    String::from_utf8_lossy(arg.as_bytes().get(..cut).unwrap_or(&[])).into_owned();
                let (message, help) = if arg.chars().any(|c| c.is_whitespace()) {
                    let joined: String = arg.split_whitespace().collect();
                    (
                        format!("argv element `{arg}` contains a space"),
                        format!("no spaces inside an option: write {joined}"),
                    )
                } else {
                    (
                        format!("argv element `{arg}` contains the byte 0xA0 (inside a UTF-8 character), which the kernel treats as a space"),
                        "use ASCII in option values".to_string(),
                    )
                };
                spans.push((
                    span,
                    message,
                    format!("the kernel sees separate words; `{}` is the option and the rest goes to init", first),
                    help,
                ));
            } else if (arg.ends_with(',') || arg.ends_with(':') || arg.ends_with('='))
                && option_like(arg)
            {
                let next_is_word = |w: &&String| !w.contains('=') && w.as_str() != "--";
                if let Some(next) = argv.get(i + 1).filter(next_is_word) {
                    spans.push((
                        [span[0], span[1] + 1 + next.len()],
                        format!("`{arg}` ends the option and `{next}` is a separate word"),
                        format!("`{next}` is not part of the option: it goes to init (or is parsed on its own)"),
                        format!("no spaces inside an option: write {arg}{next}"),
                    ));
                }
            }
        }
        for (span, message, effect, help) in spans {
            self.diag(
                Severity::Warning,
                Channel::Lint,
                message,
                span,
                effect,
                Some(help),
            );
        }
    }

    /// The input span of the last argv element starting with `prefix`.
    fn last_word_span(&self, prefix: &str) -> Span {
        let mut at = 0;
        let mut found = [self.input.len(), self.input.len()];
        for arg in &self.argv {
            if arg.starts_with(prefix) {
                found = [at, at + arg.len()];
            }
            at += arg.len() + 1;
        }
        found
    }

    fn add_arg(&mut self, cmdline: &mut Vec<u8>, arg: &str, in_at: usize, span: Span) -> bool {
        if cmdline.len() + arg.len() + 1 > COMMAND_LINE_SIZE {
            self.fatal_stdout(
                "add_arg: Too many command line arguments!",
                span,
                "linux.uml exits with status 1 before the kernel starts",
                Some(format!(
                    "the kernel command line holds at most {} bytes",
                    COMMAND_LINE_SIZE - 1
                )),
            );
            return false;
        }
        if !cmdline.is_empty() {
            cmdline.push(b' ');
        }
        self.map.segments.push((cmdline.len(), arg.len(), in_at));
        cmdline.extend_from_slice(arg.as_bytes());
        true
    }

    /// The `__uml_setup` table, by prefix, in link order. Returns false on exit.
    fn uml_checksetup(
        &mut self,
        arg: &str,
        span: Span,
        add: &mut bool,
        have_root: &mut bool,
        have_console: &mut bool,
    ) -> bool {
        let exit0 = |k: &mut Kernel, what: &str| {
            k.boots = false;
            k.diag(
                Severity::Fatal,
                Channel::Stdout,
                format!("({what} printed on stdout)"),
                span,
                "linux.uml prints it and exits with status 0; the kernel never starts",
                None,
            );
        };
        if arg.starts_with("--showconfig") {
            exit0(self, "the build configuration");
            return false;
        }
        if let Some(rest) = arg.strip_prefix("iomem=") {
            // parse_iomem cuts the argv element at the ',' in place, so only
            // `iomem=<name>` reaches the kernel command line.
            match rest.split_once(',') {
                None => self.diag(
                    Severity::Warning,
                    Channel::Stdout,
                    "parse_iomem : failed to parse iomem",
                    span,
                    "ignored",
                    Some("write iomem=<name>,<file>".into()),
                ),
                Some((_, file)) => {
                    self.iomem_cut = Some(arg.len() - file.len() - 1);
                    self.diag(
                        Severity::Info,
                        Channel::Lint,
                        format!("iomem region from host file {file}"),
                        span,
                        "linux.uml maps the file (failures are reported on the host as parse_iomem - ...); only iomem=<name> stays on the command line",
                        None,
                    );
                }
            }
        }
        if let Some(rest) = arg.strip_prefix("mem=") {
            self.physmem = memparse(rest).0;
        }
        if arg.starts_with("--help") {
            exit0(self, "the usage text");
            return false;
        }
        if arg.starts_with("console=") {
            *have_console = true;
        }
        if arg.starts_with("debug") {
            for line in [
                "'debug' is not necessary to gdb UML in skas mode - run ",
                "'gdb linux'",
            ] {
                self.diag(
                    Severity::Info,
                    Channel::Stdout,
                    line,
                    span,
                    "no effect on UML (the generic kernel then raises the log level)",
                    None,
                );
            }
        }
        if arg.starts_with("root=") {
            *have_root = true;
        }
        if arg.starts_with("--version") {
            self.boots = false;
            self.diag(
                Severity::Fatal,
                Channel::Stdout,
                "6.1.176",
                span,
                "linux.uml prints its version and exits with status 0",
                None,
            );
            return false;
        }
        if let Some(name) = arg.strip_prefix("umid=") {
            if self.umid_inited {
                self.diag(
                    Severity::Warning,
                    Channel::Stdout,
                    "umid already set",
                    span,
                    "only the first umid= counts; this word stays on the command line and reaches init's environment",
                    Some("give umid= once".into()),
                );
            } else {
                *add = false;
                if name.len() < UMID_LEN {
                    self.umid = Some(name.to_string()).filter(|n| !n.is_empty());
                    self.umid_inited = true;
                } else {
                    self.diag(
                        Severity::Warning,
                        Channel::Lint,
                        format!("umid longer than {} bytes", UMID_LEN - 1),
                        span,
                        "the kernel drops it silently and picks a random umid",
                        Some("use a name of at most 63 bytes".into()),
                    );
                }
            }
        }
        if let Some(dir) = arg.strip_prefix("uml_dir=") {
            if dir.is_empty() {
                self.diag(
                    Severity::Warning,
                    Channel::Stdout,
                    "uml_dir can't be an empty string",
                    span,
                    "ignored; the default ~/.uml/ is used",
                    None,
                );
            } else if dir.ends_with('/') {
                self.uml_dir = Some(dir.to_string());
            } else {
                self.uml_dir = Some(format!("{dir}/"));
            }
        }
        true
    }

    /// Step 2 and 3.
    fn start_kernel(&mut self) {
        self.parse_early_param();
        let after_dashes = self.parse_args(0, Pass::Boot);
        self.print_unknown_bootoptions();
        if let Some(at) = after_dashes {
            self.parse_args(at, Pass::InitArgs);
        }
        if let Some((kind, param)) = self.panic_later.clone() {
            self.boots = false;
            let span = [self.input.len(), self.input.len()];
            let limit = if kind == "env" {
                MAX_INIT_ENVS
            } else {
                MAX_INIT_ARGS
            };
            self.diag(
                Severity::Fatal,
                Channel::Log,
                format!("Kernel panic - not syncing: Too many boot {kind} vars at `{param}'"),
                span,
                "the kernel panics before running init",
                Some(format!(
                    "init gets at most {limit} {} from the command line",
                    if kind == "env" {
                        "environment variables (HOME and TERM included)"
                    } else {
                        "arguments"
                    }
                )),
            );
            return;
        }
        self.ubd_init();
        self.con_init();
        net::configure_all(self);
    }

    fn finish(self) -> Parsed {
        let mut ubd = Vec::new();
        for (i, slot) in self.ubd.iter().enumerate() {
            if let Some(file) = &slot.file {
                ubd.push(UbdDevice {
                    index: i as u32,
                    name: format!("ubd{}", char::from(b'a' + i as u8)),
                    file: file.clone(),
                    backing: slot.backing.clone(),
                    serial: slot.serial.clone(),
                    read_only: !slot.write,
                    sync: slot.sync,
                    no_cow: slot.no_cow,
                    shared: slot.shared,
                    no_trim: slot.no_trim,
                    size_sectors: None,
                    implicit: slot.span == [usize::MAX, usize::MAX],
                    span: if slot.span == [usize::MAX, usize::MAX] {
                        [self.input.len(), self.input.len()]
                    } else {
                        slot.span
                    },
                });
            }
        }
        let mut init_argv = self.argv_init.clone();
        if let Some(first) = init_argv.first_mut() {
            *first = self.init.clone().unwrap_or_else(|| "/sbin/init".into());
        }
        Parsed {
            argv: self.argv,
            input: self.input,
            proc_cmdline: self.proc_cmdline,
            ubd: if self.boots { ubd } else { Vec::new() },
            ubd_sync_all: self.ubd_global_sync,
            net: if self.boots { self.net } else { Vec::new() },
            mem_bytes: self.physmem & !(PAGE_SIZE - 1),
            root: self.root,
            root_rw: self.root_rw,
            init: self.init,
            init_argv,
            init_env: self.envp_init,
            umid: self.umid,
            uml_dir: self.uml_dir,
            con: self.con,
            ssl: self.ssl,
            quiet: self.quiet,
            mconsole_notify: self.mconsole_notify,
            diagnostics: self.diags,
            boots: self.boots,
        }
    }

    // ---- kernel/params.c -------------------------------------------------

    /// `next_arg` at `args`: returns (param, val, next). Writes NULs in place.
    fn next_arg(&mut self, args: usize) -> (usize, Option<usize>, usize) {
        let b = &mut self.buf;
        let mut args = args;
        let mut in_quote = false;
        let mut quoted = false;
        if b.at(args) == b'"' {
            args += 1;
            in_quote = true;
            quoted = true;
        }
        let mut equals = 0usize;
        let mut i = 0usize;
        loop {
            let c = b.at(args + i);
            if c == 0 || (kernel_isspace(c) && !in_quote) {
                break;
            }
            if equals == 0 && c == b'=' {
                equals = i;
            }
            if c == b'"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        let param = args;
        let val = if equals == 0 {
            None
        } else {
            b.set(args + equals, 0);
            let mut v = args + equals + 1;
            if b.at(v) == b'"' {
                v += 1;
                if i > 0 && b.at(args + i - 1) == b'"' {
                    b.set(args + i - 1, 0);
                }
            }
            Some(v)
        };
        if quoted && i > 0 && b.at(args + i - 1) == b'"' {
            b.set(args + i - 1, 0);
        }
        let mut next = args + i;
        if b.at(next) != 0 {
            b.set(next, 0);
            next += 1;
        }
        while kernel_isspace(b.at(next)) {
            next += 1;
        }
        (param, val, next)
    }

    /// `repair_env_string`: turns `param\0val` back into `param=val`.
    fn repair_env_string(&mut self, param: usize, val: Option<usize>) {
        if let Some(val) = val {
            let plen = self.buf.strlen(param);
            if val == param + plen + 1 {
                self.buf.set(val - 1, b'=');
            } else if val == param + plen + 2 {
                self.buf.set(val - 2, b'=');
                let n = self.buf.strlen(val) + 1;
                self.buf.memmove(val - 1, val, n);
            }
        }
    }

    fn skip_spaces(&self, mut at: usize) -> usize {
        while kernel_isspace(self.buf.at(at)) {
            at += 1;
        }
        at
    }

    /// `parse_early_param` on a copy of the line: `debug`, `quiet`, `loglevel=`
    /// (exact names; they stop at `--` like the main pass).
    fn parse_early_param(&mut self) {
        let saved = self.buf.clone();
        let mut args = self.skip_spaces(0);
        while self.buf.at(args) != 0 {
            let (param, val, next) = self.next_arg(args);
            let name = self.buf.cstr(param);
            if val.is_none() && name == "--" {
                break;
            }
            if name == "quiet" {
                self.quiet = true;
            } else if name == "debug" || name == "loglevel" {
                // Raising the log level cancels nothing we model except quiet's effect.
                self.quiet = false;
            }
            args = next;
        }
        self.buf = saved;
    }

    /// `parse_args`. Returns the offset after a `--` word, if any.
    fn parse_args(&mut self, start: usize, pass: Pass) -> Option<usize> {
        let mut args = self.skip_spaces(start);
        while self.buf.at(args) != 0 {
            let word_start = args;
            let (param, val, next) = self.next_arg(args);
            let word_end = next;
            if val.is_none() && self.buf.cstr(param) == "--" {
                return Some(next);
            }
            let span = self.span_of(word_start, self.trim_end(word_start, word_end));
            match pass {
                Pass::Boot => {
                    if !self.kernel_param(param, val) {
                        self.unknown_bootoption(param, val, span);
                    }
                }
                Pass::InitArgs => self.set_init_arg(param, val),
            }
            args = next;
        }
        None
    }

    /// End of the word that started at `start` (for spans), before NUL/space.
    fn trim_end(&self, start: usize, next: usize) -> usize {
        let mut end = next;
        while end > start && (self.buf.at(end - 1) == 0 || kernel_isspace(self.buf.at(end - 1))) {
            end -= 1;
        }
        // The word may contain NULs written by next_arg; use the raw length.
        end.max(start)
    }

    /// Parameters of the kernel's parameter table (core and built-in module
    /// parameters): consumed without reaching init.
    fn kernel_param(&mut self, param: usize, _val: Option<usize>) -> bool {
        let name = self.buf.cstr(param);
        const CORE: &[&str] = &[
            "panic",
            "panic_print",
            "pause_on_oops",
            "panic_on_warn",
            "crash_kexec_post_notifiers",
            "initcall_debug",
        ];
        CORE.iter().any(|c| parameq(&name, c))
    }

    fn unknown_bootoption(&mut self, param: usize, val: Option<usize>, span: Span) {
        let name_len = self.buf.strlen(param);
        self.repair_env_string(param, val);
        if self.obsolete_checksetup(param, span) {
            return;
        }
        let line = self.buf.cstr(param);
        // Unused module parameter: a `.` in the name part.
        if line.as_bytes().iter().take(name_len).any(|&b| b == b'.') {
            return;
        }
        if self.panic_later.is_some() {
            return;
        }
        self.unknown_spans.push(span);
        if val.is_some() {
            let mut i = 0;
            // The name part, compared as the kernel does: `strncmp(param, env, len + 1)`.
            let name: Vec<u8> = (0..name_len).map(|i| self.buf.at(param + i)).collect();
            let key = format!("{}=", String::from_utf8_lossy(&name));
            while i < self.envp_init.len() {
                if i == MAX_INIT_ENVS {
                    self.panic_later = Some(("env", line.clone()));
                }
                if self.envp_init[i].as_bytes().starts_with(key.as_bytes()) {
                    break;
                }
                i += 1;
            }
            if i < self.envp_init.len() {
                self.envp_init[i] = line;
            } else if i <= MAX_INIT_ENVS + 1 {
                self.envp_init.push(line);
            }
        } else {
            if self.argv_init.len() > MAX_INIT_ARGS {
                self.panic_later = Some(("init", line.clone()));
            }
            if self.argv_init.len() <= MAX_INIT_ARGS + 1 {
                self.argv_init.push(line);
            }
        }
    }

    fn set_init_arg(&mut self, param: usize, val: Option<usize>) {
        if self.panic_later.is_some() {
            return;
        }
        self.repair_env_string(param, val);
        let line = self.buf.cstr(param);
        if self.argv_init.len() > MAX_INIT_ARGS {
            self.panic_later = Some(("init", line));
            return;
        }
        self.argv_init.push(line);
    }

    fn print_unknown_bootoptions(&mut self) {
        if self.panic_later.is_some() || (self.argv_init.len() < 2 && self.envp_init.len() < 3) {
            return;
        }
        let words: Vec<&str> = self
            .argv_init
            .iter()
            .skip(1)
            .chain(self.envp_init.iter().skip(2))
            .map(String::as_str)
            .collect();
        let msg = format!(
            "Unknown kernel command line parameters \"{}\", will be passed to user space.",
            words.join(" ")
        );
        let start = self.unknown_spans.iter().map(|s| s[0]).min().unwrap_or(0);
        let end = self.unknown_spans.iter().map(|s| s[1]).max().unwrap_or(0);
        let span = [start, end.max(start)];
        self.diag(
            Severity::Info,
            Channel::Log,
            msg,
            span,
            "words without '=' become init's arguments, name=value words its environment",
            None,
        );
    }

    /// `obsolete_checksetup`: the `__setup` handlers, matched by prefix (with `-`
    /// and `_` equal) in link order; the first that returns 1 consumes the word.
    fn obsolete_checksetup(&mut self, line: usize, span: Span) -> bool {
        let text = self.buf.cstr(line);
        let mut had_early = false;
        for &(key, handler) in SETUP_TABLE {
            if !parameqn(&text, key) {
                continue;
            }
            let rest = line + key.len();
            if handler == Handler::Early {
                let next = text.as_bytes().get(key.len()).copied().unwrap_or(0);
                if next == 0 || next == b'=' {
                    had_early = true;
                }
                continue;
            }
            if self.setup(handler, rest, span) {
                return true;
            }
        }
        had_early
    }

    /// Runs one `__setup` handler on the text at `s`; returns its result.
    fn setup(&mut self, handler: Handler, s: usize, span: Span) -> bool {
        let text = self.buf.cstr(s);
        match handler {
            Handler::Early => false,
            Handler::Init => {
                self.init = Some(text);
                // init= forgets the arguments collected before it (LILO's "auto").
                self.argv_init.truncate(1);
                true
            }
            Handler::Consume => true,
            Handler::ExactFlag(flag) => {
                if !text.is_empty() {
                    return false;
                }
                match flag {
                    "ro" => self.root_rw = false,
                    "rw" => self.root_rw = true,
                    _ => {}
                }
                true
            }
            Handler::Root => {
                self.root = text;
                true
            }
            Handler::Ubd => {
                self.ubd_setup(s, span);
                true
            }
            Handler::Udb => {
                self.diag(
                    Severity::Warning,
                    Channel::Log,
                    format!(
                        "udb{text} specified on command line is almost certainly a ubd -> udb TYPO"
                    ),
                    span,
                    "ignored: no device is configured",
                    Some(format!("write ubd{text}")),
                );
                true
            }
            Handler::FakeIde => {
                self.diag(
                    Severity::Warning,
                    Channel::Log,
                    "The fake_ide option has been removed",
                    span,
                    "ignored",
                    Some("drop fake_ide".into()),
                );
                true
            }
            Handler::Eth => {
                net::eth_setup(self, s, span);
                true
            }
            Handler::Vec => {
                net::vector_setup(self, s, span);
                true
            }
            Handler::Con => {
                if text.starts_with("sole=") {
                    return false;
                }
                self.line_setup(s, span, true);
                true
            }
            Handler::Ssl => {
                self.line_setup(s, span, false);
                true
            }
            Handler::Mconsole => {
                if let Some(sock) = text.strip_prefix("notify:") {
                    self.mconsole_notify = Some(sock.to_string());
                } else {
                    self.diag(
                        Severity::Error,
                        Channel::Log,
                        format!("mconsole_setup : Unknown option - '{text}'"),
                        span,
                        "ignored",
                        Some("the only option is mconsole=notify:<socket>".into()),
                    );
                }
                true
            }
        }
    }

    // ---- ubd_kern.c ------------------------------------------------------

    fn ubd_setup(&mut self, s: usize, span: Span) {
        if let Err((err, effect, help)) = self.ubd_setup_common(s, span) {
            // Printed after the parser split the value in place (strsep).
            let shown = self.buf.cstr(s);
            self.diag(
                Severity::Error,
                Channel::Log,
                format!("Failed to initialize device with \"{shown}\" : {err}"),
                span,
                effect,
                help,
            );
        }
    }

    #[allow(clippy::type_complexity)]
    fn ubd_setup_common(
        &mut self,
        s: usize,
        span: Span,
    ) -> Result<(), (&'static str, String, Option<String>)> {
        let mut str_ = s;
        if self.buf.at(str_) == b'=' {
            str_ += 1;
            if self.buf.cstr(str_) == "sync" {
                self.ubd_global_sync = true;
            } else {
                self.diag(
                    Severity::Warning,
                    Channel::Log,
                    "fake major not supported any more",
                    span,
                    "ignored",
                    Some("the only ubd= value is ubd=sync".into()),
                );
            }
            return Ok(());
        }
        // parse_unit: digits (base 0) or one lowercase letter.
        let c = self.buf.at(str_);
        let n: i64 = if c.is_ascii_digit() {
            let (v, end) = self.buf.strtoul(str_, 0);
            str_ = end;
            i64::from(v as u32 as i32)
        } else if c.is_ascii_lowercase() {
            str_ += 1;
            i64::from(c - b'a')
        } else {
            -1
        };
        let not_configured = "the device is not configured".to_string();
        if n < 0 {
            return Err((
                "Couldn't parse device number",
                not_configured,
                Some("write ubd<N>=<file> with N a number 0-15 or a letter a-p".into()),
            ));
        }
        if n >= UBD_MAX_DEV as i64 {
            return Err((
                "Device number out of range",
                not_configured,
                Some("units are 0-15 (ubda-ubdp)".into()),
            ));
        }
        let n = n as usize;
        if self.ubd.get(n).is_some_and(|d| d.file.is_some()) {
            return Err((
                "Device is already configured",
                "the earlier definition stays; this one is ignored".into(),
                Some("define each unit once".into()),
            ));
        }
        let mut write = true;
        let mut sync = self.ubd_global_sync;
        let mut terminated = false;
        for _ in 0.."rscdt=".len() + 1 {
            let c = self.buf.at(str_);
            let slot = &mut self.ubd[n];
            match c {
                b'r' => write = false,
                b's' => sync = true,
                b'd' => slot.no_cow = true,
                b'c' => slot.shared = true,
                b't' => slot.no_trim = true,
                b'=' => {
                    str_ += 1;
                    terminated = true;
                    break;
                }
                _ => {
                    return Err((
                        "Expected '=' or flag letter (r, s, c, t or d)",
                        not_configured,
                        Some(if c == 0 {
                            "add '=<file>' after the unit and flags".into()
                        } else {
                            format!(
                                "'{}' is not a flag; no spaces inside an option",
                                char::from(c).escape_default()
                            )
                        }),
                    ));
                }
            }
            str_ += 1;
        }
        if !terminated {
            return Err(if self.buf.at(str_) == b'=' {
                (
                    "Too many flags specified",
                    not_configured,
                    Some("give each flag once (at most 6 letters)".into()),
                )
            } else {
                ("Missing '='", not_configured, None)
            });
        }
        let mut p = Some(str_);
        let file = self.buf.strsep(&mut p, b",:");
        let backing = self.buf.strsep(&mut p, b",:");
        let serial = self.buf.strsep(&mut p, b",:");
        let nonempty =
            |k: &Kernel, at: Option<usize>| at.map(|a| k.buf.cstr(a)).filter(|t| !t.is_empty());
        let file = nonempty(self, file);
        let backing = nonempty(self, backing);
        let serial = nonempty(self, serial);
        if backing.is_some() && self.ubd[n].no_cow {
            return Err((
                "Can't specify both 'd' and a cow file",
                not_configured,
                Some("drop the 'd' flag to use a COW file, or the second file".into()),
            ));
        }
        if file.is_none() {
            self.diag(
                Severity::Warning,
                Channel::Lint,
                "no file given",
                span,
                "the kernel silently leaves the unit unconfigured",
                Some("write ubd<N>=<file>[,<backing>]".into()),
            );
        }
        let slot = &mut self.ubd[n];
        slot.file = file;
        slot.backing = backing;
        slot.serial = serial;
        slot.write = write;
        slot.sync = sync;
        slot.span = span;
        Ok(())
    }

    fn ubd_init(&mut self) {
        // ubd0_init: unit 0 defaults to "root_fs" in the working directory.
        if self.ubd[0].file.is_none() {
            let slot = &mut self.ubd[0];
            slot.file = Some("root_fs".into());
            slot.write = true;
            slot.sync = false;
            slot.span = [usize::MAX, usize::MAX];
        }
    }

    // ---- line.c / chan_kern.c --------------------------------------------

    fn line_setup(&mut self, s: usize, span: Span, console: bool) {
        let init = self.buf.cstr(s);
        let (name, num) = if console {
            ("console", MAX_CONSOLES)
        } else {
            ("serial line", MAX_SERIAL)
        };
        let cfg = if console {
            &mut self.con
        } else {
            &mut self.ssl
        };
        if let Some(def) = init.strip_prefix('=') {
            cfg.default = Some(def.to_string());
            return;
        }
        let (n, used) = strtoul_str(&init, 0);
        let error = if init.as_bytes().get(used) != Some(&b'=') {
            "Couldn't parse device number"
        } else if (n as u32) >= num {
            "Device number out of range"
        } else {
            cfg.lines
                .insert(n as u32, init.get(used + 1..).unwrap_or("").to_string());
            return;
        };
        let kind = if console { "con" } else { "ssl" };
        self.diag(
            Severity::Error,
            Channel::Log,
            format!("Failed to set up {name} with configuration string \"{init}\" : {error}"),
            span,
            "ignored",
            Some(format!(
                "write {kind}=<channel> or {kind}<N>=<channel> with N below {num}"
            )),
        );
    }

    /// The option that configured line `n` (for spans).
    fn line_span(&self, console: bool, n: u32, explicit: bool) -> Span {
        if !explicit {
            return [self.input.len(), self.input.len()];
        }
        let prefix = if console { "con" } else { "ssl" };
        let word = self.last_word_span(&format!("{prefix}{n}="));
        if word[0] < self.input.len() {
            word
        } else {
            self.last_word_span(&format!("{prefix}="))
        }
    }

    fn con_init(&mut self) {
        for (console, count) in [(true, MAX_CONSOLES), (false, MAX_SERIAL)] {
            for n in 0..count {
                let (conf, explicit) = {
                    let cfg = if console { &self.con } else { &self.ssl };
                    let explicit = cfg.lines.contains_key(&n) || cfg.default.is_some();
                    let c = if console {
                        cfg.console_channel(n)
                    } else {
                        cfg.serial_channel(n)
                    };
                    (c.to_string(), explicit)
                };
                if conf == "none" {
                    let span = self.line_span(console, n, explicit);
                    self.diag(
                        Severity::Info,
                        Channel::Log,
                        format!("setup_one_line failed for device {n} : configured as 'none'"),
                        span,
                        "the line is disabled, as asked",
                        None,
                    );
                    continue;
                }
                let mut msgs = Vec::new();
                if parse_chan_pair(&conf, &mut msgs) {
                    continue;
                }
                let span = self.line_span(console, n, explicit);
                for m in msgs {
                    self.diag(Severity::Error, Channel::Log, m, span, "", None);
                }
                let kind = if console { "con" } else { "ssl" };
                self.diag(
                    Severity::Error,
                    Channel::Log,
                    format!("setup_one_line failed for device {n} : failed to parse channel pair"),
                    span,
                    format!("{kind}{n} has no channel"),
                    Some(if explicit {
                        "channels: fd:<n>, null, port:<port>, pty, pts, tty:<dev>, xterm, none; `in,out` for separate directions".into()
                    } else {
                        format!("the build's default channel does not exist; add {kind}=null to silence this")
                    }),
                );
            }
        }
    }
}

/// Which pass of `parse_args` is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Boot,
    InitArgs,
}

/// `__setup` handlers that matter on UML, in link order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    /// `early_param`: consumed when the name matches exactly.
    Early,
    Init,
    /// Consumes any value (the effect is outside what umltest models).
    Consume,
    /// Consumed only when nothing follows the name (`ro`, `rw`, `rootwait`).
    ExactFlag(&'static str),
    Root,
    Ubd,
    Udb,
    FakeIde,
    Eth,
    Vec,
    Con,
    Ssl,
    Mconsole,
}

const SETUP_TABLE: &[(&str, Handler)] = &[
    // init/main.c
    ("debug", Handler::Early),
    ("quiet", Handler::Early),
    ("loglevel", Handler::Early),
    ("init=", Handler::Init),
    ("rdinit=", Handler::Consume),
    ("initcall_blacklist=", Handler::Consume),
    // init/do_mounts*.c
    ("load_ramdisk=", Handler::Consume),
    ("ro", Handler::ExactFlag("ro")),
    ("rw", Handler::ExactFlag("rw")),
    ("root=", Handler::Root),
    ("rootwait", Handler::ExactFlag("rootwait")),
    ("rootflags=", Handler::Consume),
    ("rootfstype=", Handler::Consume),
    ("rootdelay=", Handler::Consume),
    ("noinitrd", Handler::ExactFlag("noinitrd")),
    ("initrd", Handler::Early),
    ("ramdisk_size=", Handler::Consume),
    ("lpj=", Handler::Consume),
    // kernel/printk
    ("console=", Handler::Consume),
    ("log_buf_len", Handler::Early),
    ("ignore_loglevel", Handler::Early),
    ("keep_bootcon", Handler::Early),
    ("reboot=", Handler::Consume),
    ("iomem=", Handler::Consume),
    ("audit=", Handler::Consume),
    ("security=", Handler::Consume),
    ("selinux=", Handler::Consume),
    ("apparmor=", Handler::Consume),
    ("lsm=", Handler::Consume),
    // arch/um/drivers
    ("con", Handler::Con),
    ("ssl-non-raw", Handler::Consume),
    ("ssl", Handler::Ssl),
    ("vec", Handler::Vec),
    ("eth", Handler::Eth),
    ("mconsole=", Handler::Mconsole),
    ("udb", Handler::Udb),
    ("ubd", Handler::Ubd),
    ("fake_ide", Handler::FakeIde),
    ("xterm=", Handler::Consume),
];

/// `parameqn`: prefix comparison with `-` and `_` equal.
fn parameqn(text: &str, key: &str) -> bool {
    let (t, k) = (text.as_bytes(), key.as_bytes());
    t.len() >= k.len()
        && t.iter().zip(k).all(|(&a, &b)| {
            let norm = |c: u8| if c == b'-' { b'_' } else { c };
            norm(a) == norm(b)
        })
}

/// `parameq`: whole-name comparison with `-` and `_` equal.
fn parameq(text: &str, key: &str) -> bool {
    text.len() == key.len() && parameqn(text, key)
}

/// `parse_chan_pair` on a copy: true if the channel description is valid.
fn parse_chan_pair(conf: &str, msgs: &mut Vec<String>) -> bool {
    match conf.split_once(',') {
        Some((input, output)) => parse_chan(input, msgs) && parse_chan(output, msgs),
        None => parse_chan(conf, msgs),
    }
}

/// `parse_chan`: the channel type by prefix, then its own init checks.
fn parse_chan(s: &str, msgs: &mut Vec<String>) -> bool {
    const TYPES: &[&str] = &["fd", "null", "port", "pty", "pts", "tty", "xterm"];
    let Some(kind) = TYPES.iter().find(|t| s.starts_with(**t)) else {
        return false;
    };
    let rest = &s[kind.len()..];
    match *kind {
        "fd" | "port" => {
            let Some(num) = rest.strip_prefix(':') else {
                msgs.push(if *kind == "fd" {
                    "fd_init : channel type 'fd' must specify a file descriptor".into()
                } else {
                    "port_init : channel type 'port' must specify a port number".into()
                });
                return false;
            };
            let (_, used) = strtoul_str(num, 0);
            if used == 0 || used != num.len() {
                msgs.push(if *kind == "fd" {
                    format!("fd_init : couldn't parse file descriptor '{num}'")
                } else {
                    format!("port_init : couldn't parse port '{num}'")
                });
                return false;
            }
            true
        }
        "tty" => {
            if rest.starts_with(':') {
                true
            } else {
                msgs.push("tty_init : channel type 'tty' must specify a device".into());
                false
            }
        }
        _ => true,
    }
}
