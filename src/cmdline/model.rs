//! The prediction: plain data (serde `Serialize`) describing what linux.uml 6.1
//! configures from a command line. Both backends build machines from it.

use std::collections::BTreeMap;

use serde::Serialize;

/// A byte range `[start, end)` into [`Parsed::input`] (the argv joined with single
/// spaces). Text the kernel appends itself (`root=98:0`, `console=tty0`) has the
/// empty span at the end of the input.
pub type Span = [usize; 2];

/// Everything linux.uml 6.1 configures from one command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parsed {
    /// The argv elements as given (without the program name).
    pub argv: Vec<String>,
    /// `argv` joined with single spaces: what spans point into.
    pub input: String,
    /// The kernel command line as `/proc/cmdline` shows it: the argv elements UML
    /// keeps (it drops `umid=`), then `root=98:0` and `console=tty0` unless given.
    pub proc_cmdline: String,
    /// Block devices in unit order, including the implicit `ubd0=root_fs`.
    pub ubd: Vec<UbdDevice>,
    /// `ubd=sync` was given: devices defined after it open with O_SYNC.
    pub ubd_sync_all: bool,
    /// Network devices in the order the kernel configures them (transport
    /// registration order, then command-line order; `vec` devices last).
    pub net: Vec<NetDevice>,
    /// Effective RAM in bytes (`mem=`, default 64 MiB, whole pages), without the
    /// random "exec-shield gap" address randomisation adds.
    pub mem_bytes: u64,
    /// The root device as given by the last `root=` (default `98:0`, i.e. ubda).
    pub root: String,
    /// The root filesystem is mounted read-write (`rw`); default read-only.
    pub root_rw: bool,
    /// `init=` (last one wins); `None`: the kernel tries /sbin/init, /etc/init,
    /// /bin/init, /bin/sh.
    pub init: Option<String>,
    /// init's argv, `argv[0]` included (the `init=` path, or `/sbin/init` when
    /// none is given, the first path the kernel tries).
    pub init_argv: Vec<String>,
    /// init's environment (`HOME=/`, `TERM=linux`, then the unknown `name=value`
    /// words; a later word with the same name replaces the earlier one in place).
    pub init_env: Vec<String>,
    /// `umid=` as accepted (first one, at most 63 bytes); `None`: random.
    pub umid: Option<String>,
    /// `uml_dir=` with the trailing `/` UML adds (last one wins); `None`: `~/.uml/`.
    pub uml_dir: Option<String>,
    /// `con=`/`con<N>=` configuration.
    pub con: LineConfig,
    /// `ssl=`/`ssl<N>=` configuration.
    pub ssl: LineConfig,
    /// `quiet`: the console only shows messages more severe than KERN_WARNING.
    pub quiet: bool,
    /// `mconsole=notify:<socket>`.
    pub mconsole_notify: Option<String>,
    /// What the kernel prints about the command line, in the order it prints it.
    pub diagnostics: Vec<Diagnostic>,
    /// False when the kernel will not come up: too little memory, a too long
    /// command line, `--help`/`--version`/`--showconfig`, too many init args/env.
    pub boots: bool,
}

/// One `ubd` block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UbdDevice {
    /// Unit number 0–15.
    pub index: u32,
    /// `ubda` … `ubdp` (`/dev/ubda`, block major 98, minor `index * 16`).
    pub name: String,
    /// The image, or the COW file when `backing` is set (relative to the
    /// machine's working directory).
    pub file: String,
    /// The backing file of a COW pair (second field).
    pub backing: Option<String>,
    /// The serial (third field); sysfs shows `(null)` when unset.
    pub serial: Option<String>,
    /// Flag `r`.
    pub read_only: bool,
    /// Flag `s` (or `ubd=sync` before this device): O_SYNC.
    pub sync: bool,
    /// Flag `d`: never look for a COW header.
    pub no_cow: bool,
    /// Flag `c`: no host file locking.
    pub shared: bool,
    /// Flag `t`: no TRIM/discard.
    pub no_trim: bool,
    /// Size in 512-byte sectors, filled in by a size lookup when the files exist.
    pub size_sectors: Option<u64>,
    /// True for the `ubd0=root_fs` the kernel adds when unit 0 is not configured.
    pub implicit: bool,
    pub span: Span,
}

impl UbdDevice {
    /// The flags that are set, as (command-line letter, name), in the order
    /// the kernel's `ubd<N><flags>=` parser accepts them.
    pub fn flags(&self) -> impl Iterator<Item = (char, &'static str)> {
        [
            (self.read_only, 'r', "ro"),
            (self.sync, 's', "sync"),
            (self.no_cow, 'd', "no-cow"),
            (self.shared, 'c', "shared"),
            (self.no_trim, 't', "no-trim"),
        ]
        .into_iter()
        .filter_map(|(on, letter, name)| on.then_some((letter, name)))
    }
}

/// One network device (`eth<N>=` or `vec<N>:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetDevice {
    /// `eth<N>` or `vec<N>`.
    pub name: String,
    pub index: u32,
    /// Transport name: `daemon`, `vde`, `mcast`, `ucast`, `tuntap`, `ethertap`,
    /// `slip`, `slirp`, or for vector devices `vector`.
    pub transport: String,
    /// The transport's parameters with the kernel's defaults filled in.
    pub params: NetParams,
    /// The MAC address the device gets (`fe:fd:00:00:00:01` form); `None` when
    /// the kernel picks a random one, and for `slip`/`slirp`, which have no
    /// link-layer address at all.
    pub mac: Option<String>,
    /// The kernel picks a random locally administered MAC (first byte has bit
    /// 0x02 set and bit 0x01 clear).
    pub mac_random: bool,
    /// The lines the kernel prints while configuring the device (a random MAC
    /// shows as `<random>`).
    pub messages: Vec<String>,
    /// A host socket the kernel connects to while configuring the device (the
    /// `daemon` transport's control socket): when the connection fails it prints
    /// `daemon_open : control connect failed, errno = <n>` and drops the device.
    pub connects_at_boot: Option<String>,
    pub span: Span,
}

/// Transport parameters, defaults filled in as the 6.1 Debian build does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NetParams {
    /// `daemon,<mac>,<sock type>,<ctl socket>` (uml_switch protocol).
    Daemon { sock_type: String, ctl_sock: String },
    /// `vde,<switch>,<mac>,<port>,<group>,<mode>,<description>`; `switch: None`
    /// is vde's default socket, `port: 0` any port, `mode: None` 0700.
    Vde {
        switch: Option<String>,
        port: u32,
        group: Option<String>,
        mode: Option<u32>,
        description: Option<String>,
    },
    /// `mcast,<mac>,<addr>,<port>,<ttl>`.
    Mcast { addr: String, port: u16, ttl: u32 },
    /// `ucast,<mac>,<remote addr>,<listen port>,<remote port>`.
    Ucast {
        addr: String,
        listen_port: u16,
        remote_port: u16,
    },
    /// `tuntap,<tap dev>,<mac>,<gate ip>`; no device: created via `uml_net`.
    Tuntap {
        dev_name: Option<String>,
        gate_addr: Option<String>,
    },
    /// `ethertap,<tap dev>,<mac>,<gate ip>`.
    Ethertap {
        dev_name: String,
        gate_addr: Option<String>,
    },
    /// `slip,<gate ip>`.
    Slip { gate_addr: Option<String> },
    /// `slirp,<mac>,<cmd>,<arg>...` (`_` in arguments becomes a space).
    Slirp { argv: Vec<String> },
    /// `vec<N>:key=value,...`, in the order given.
    Vector { options: Vec<(String, String)> },
}

/// `con`/`ssl` line configuration as given on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LineConfig {
    /// `con=`/`ssl=`: the channel for every line without its own.
    pub default: Option<String>,
    /// `con<N>=`/`ssl<N>=`: per line (last one wins).
    pub lines: BTreeMap<u32, String>,
}

impl LineConfig {
    /// The channel console line `n` gets: its own, else `con=`, else the build's
    /// default (`fd:0,fd:1` for con0, `x-terminal-emulator` for the others).
    pub fn console_channel(&self, n: u32) -> &str {
        self.channel(
            n,
            if n == 0 {
                "fd:0,fd:1"
            } else {
                "x-terminal-emulator"
            },
        )
    }

    /// The channel serial line `n` gets (build default `pty`).
    pub fn serial_channel(&self, n: u32) -> &str {
        self.channel(n, "pty")
    }

    fn channel<'a>(&'a self, n: u32, build_default: &'a str) -> &'a str {
        self.lines
            .get(&n)
            .or(self.default.as_ref())
            .map(String::as_str)
            .unwrap_or(build_default)
    }
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The kernel does not start (or exits).
    Fatal,
    /// Something asked for is not configured (KERN_ERR and worse).
    Error,
    /// Configured, but probably not as meant (KERN_WARNING).
    Warning,
    /// Informational (KERN_NOTICE/KERN_INFO, or host stdout chatter).
    Info,
}

/// Where the kernel prints a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The kernel log (`dmesg`, and the console subject to the log level).
    Log,
    /// The UML process itself, before the kernel runs: on the host's stderr
    /// (`os_warn`/`os_info`), or stdout for `--help`, `--version`, `--showconfig`.
    /// (The name predates that finding; peers match on it.)
    Stdout,
    /// umltest's own remark: the kernel prints nothing (e.g. a silently ignored
    /// option, or an option cut in two by a space).
    Lint,
}

/// One message the kernel prints about the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The kernel's exact text (one line, no newline).
    pub message: String,
    pub channel: Channel,
    /// The option the message is about: byte offsets into [`Parsed::input`].
    pub span: Span,
    /// What the kernel does about it, in plain words.
    pub effect: String,
    /// A suggested fix, when there is an obvious one.
    pub help: Option<String>,
}
