//! The scenario file as written: plain serde structs, unknown keys rejected, spans
//! kept for every value an error may point at. Behaviour lives in `resolve` and
//! `engine`; the documentation tables at the bottom drive both the step-option
//! validation and `docs/scenario-reference.md`, so they cannot drift apart.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// A whole scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    pub scenario: RawHeader,
    #[serde(default)]
    pub switch: Vec<Spanned<RawSwitch>>,
    #[serde(default)]
    pub disk: Vec<Spanned<RawDisk>>,
    #[serde(default)]
    pub machine: Vec<Spanned<RawMachine>>,
    #[serde(default)]
    pub step: Vec<Spanned<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeader {
    pub name: Spanned<String>,
    pub about: Option<String>,
    pub seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSwitch {
    pub name: Spanned<String>,
    pub hub: Option<bool>,
    pub ports: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisk {
    pub name: Spanned<String>,
    pub size: Option<Spanned<SizeText>>,
    pub mkfs: Option<Spanned<String>>,
    pub image: Option<Spanned<String>>,
    pub external: Option<Spanned<bool>>,
    pub backing: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMachine {
    pub name: Spanned<String>,
    pub cmdline: Spanned<String>,
}

/// One `[[step]]`: exactly one kind key (`boot`, `run`, ...) plus the options
/// that kind allows (see [`STEP_KINDS`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub boot: Option<Spanned<Names>>,
    pub run: Option<Spanned<String>>,
    pub wait_job: Option<Spanned<String>>,
    pub wait_console: Option<Spanned<String>>,
    pub sleep: Option<Spanned<String>>,
    pub link: Option<Spanned<String>>,
    pub write: Option<Spanned<String>>,
    pub copy: Option<Spanned<String>>,
    pub mkcow: Option<Spanned<String>>,
    pub merge: Option<Spanned<String>>,
    pub check: Option<Spanned<String>>,
    pub halt: Option<Spanned<Names>>,
    pub kill: Option<Spanned<String>>,
    pub expect_trace: Option<Spanned<String>>,
    pub fault: Option<Spanned<String>>,

    pub on: Option<Spanned<String>>,
    pub background: Option<Spanned<bool>>,
    pub id: Option<Spanned<String>>,
    pub nic: Option<Spanned<String>>,
    pub offset: Option<Spanned<SizeText>>,
    pub data: Option<Spanned<String>>,
    pub hex: Option<Spanned<String>>,
    pub to: Option<Spanned<String>>,
    pub preserve: Option<Spanned<bool>>,
    pub sparse: Option<Spanned<bool>>,
    pub backing: Option<Spanned<String>>,
    pub into: Option<Spanned<String>>,
    pub contains: Option<Spanned<Texts>>,
    pub lacks: Option<Spanned<Texts>>,
    pub timeout: Option<Spanned<String>>,
    pub expect: Option<Spanned<RawExpect>>,
    pub loss: Option<Spanned<f64>>,
    pub duplicate: Option<Spanned<f64>>,
    pub delay: Option<Spanned<String>>,
    pub fail_write: Option<Spanned<u64>>,
}

/// What a command step must produce.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    pub exit: Option<i32>,
    pub stdout: Option<Spanned<Texts>>,
    pub stdout_lacks: Option<Spanned<Texts>>,
    pub stdout_matches: Option<Spanned<String>>,
    pub interrupted: Option<bool>,
}

/// A size or offset: a TOML integer (bytes) or a string like `300M+1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeText(pub String);

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size: bytes as an integer, or a string like \"300M\" or \"300M+1\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeText, E> {
                if v < 0 {
                    return Err(E::custom("a size cannot be negative"));
                }
                Ok(SizeText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One machine name or a list of them (`boot = "h1"` or `boot = ["h1", "h2"]`),
/// each with its span when written as a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names(pub Vec<(String, Option<std::ops::Range<usize>>)>);

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Names;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a machine name or a list of machine names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Names, E> {
                Ok(Names(vec![(v.to_string(), None)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<Spanned<String>>()? {
                    let span = name.span();
                    names.push((name.into_inner(), Some(span)));
                }
                Ok(Names(names))
            }
        }
        d.deserialize_any(V)
    }
}

/// One text or a list of texts (`stdout = "x"` or `stdout = ["x", "y"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Texts(pub Vec<String>);

impl<'de> Deserialize<'de> for Texts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Texts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Texts, E> {
                Ok(Texts(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Texts, A::Error> {
                let mut texts = Vec::new();
                while let Some(t) = seq.next_element::<String>()? {
                    texts.push(t);
                }
                Ok(Texts(texts))
            }
        }
        d.deserialize_any(V)
    }
}

/// A key of a table, documented (for the reference document).
#[derive(Debug, Clone, Copy)]
pub struct FieldDoc {
    pub key: &'static str,
    pub ty: &'static str,
    pub doc: &'static str,
}

/// A table of the scenario file and its keys.
#[derive(Debug, Clone, Copy)]
pub struct TableDoc {
    pub header: &'static str,
    pub doc: &'static str,
    pub fields: &'static [FieldDoc],
}

/// A step kind: its key, what it does, its default timeout and the options it takes.
#[derive(Debug, Clone, Copy)]
pub struct StepKindDoc {
    pub key: &'static str,
    pub ty: &'static str,
    pub doc: &'static str,
    /// Default `timeout` in milliseconds; `None` for host-side steps, which run to completion.
    pub default_timeout_ms: Option<u64>,
    /// Options allowed besides the kind key (each must be in [`STEP_OPTIONS`]).
    pub options: &'static [&'static str],
}

const fn f(key: &'static str, ty: &'static str, doc: &'static str) -> FieldDoc {
    FieldDoc { key, ty, doc }
}

/// The tables other than `[[step]]`, in file order.
pub const TABLES: &[TableDoc] = &[
    TableDoc {
        header: "[scenario]",
        doc: "What the lab is.",
        fields: &[
            f("name", "string", "Names the snapshot folder `snapshots/<name>/`; letters, digits, `.`, `_`, `-`."),
            f("about", "string", "One line saying what the lab shows."),
            f("seed", "integer", "Seed of every random stream of the sim (default 1); `umltest run --seed N` overrides it."),
        ],
    },
    TableDoc {
        header: "[[switch]]",
        doc: "A switch (a VDE switch socket folder `<name>` in the run folder); a machine plugs in with `ethN=vde,<name>`.",
        fields: &[
            f("name", "string", "The socket folder's name; also names the `<name>.trace` and `<name>.pcap` artifacts."),
            f("hub", "bool", "Hub mode (`vde_switch -x`): every frame goes to every other port (default false)."),
            f("ports", "integer", "Number of ports (`vde_switch -n`, default 32)."),
        ],
    },
    TableDoc {
        header: "[[disk]]",
        doc: "A file the harness puts in the run folder before the first step.",
        fields: &[
            f("name", "string", "File name in the run folder (no `..`, not absolute), or the host path of an `external` image."),
            f("size", "size", "Exact apparent size, created sparse: bytes, or `300M` (binary suffixes K/M/G/T), `300M+1` for 300 MiB and one byte."),
            f("mkfs", "string", "`\"ext4\"`: make an ext4 filesystem, reproducibly (fixed UUID, hash seed, time, options; the host's mke2fs.conf is not read)."),
            f("image", "string", "`\"default\"`: the guest image: on `uml` the built root image with the guest programs, on `sim` the same tree from the committed manifest, with placeholder programs (`size` at least 32M, at most 64 GiB)."),
            f("external", "bool", "The file lives outside the run folder (`name` may be absolute); it is opened read-only and never written."),
            f("backing", "string", "Make this disk a COW file over the named disk (as `uml_mkcow`); `size` is then the backing file's."),
        ],
    },
    TableDoc {
        header: "[[machine]]",
        doc: "A UML machine: its kernel command line. File and switch names in it resolve in the run folder.",
        fields: &[
            f("name", "string", "The machine's name (`umid`, artifact names `<name>.console`, `<name>.ubdN.diff`)."),
            f("cmdline", "string", "The `linux` command line, split as a shell would; the harness only appends what it needs (see below)."),
        ],
    },
];

/// Step kinds: each `[[step]]` has exactly one of these keys.
pub const STEP_KINDS: &[StepKindDoc] = &[
    StepKindDoc { key: "boot", ty: "names", doc: "Boot machines (in parallel) and wait for their shells, or for the kernel to fail as it would. A machine that halted, was killed or failed to boot boots again over the same disk files (a new `linux.uml` process, same command line); booting a running machine stops the run.", default_timeout_ms: Some(60_000), options: &["timeout"] },
    StepKindDoc { key: "run", ty: "string", doc: "Run a shell command on machine `on`. At `timeout` a command still running gets SIGINT, as from Ctrl-C; its output and exit code are kept. With `background = true` and an `id` it runs in the background until `wait_job`.", default_timeout_ms: Some(10_000), options: &["on", "timeout", "background", "id", "expect"] },
    StepKindDoc { key: "wait_job", ty: "string", doc: "Wait for the background command with this `id` (SIGINT at `timeout`).", default_timeout_ms: Some(10_000), options: &["timeout", "expect"] },
    StepKindDoc { key: "wait_console", ty: "string", doc: "Wait until machine `on`'s console shows this text; a failure at `timeout`.", default_timeout_ms: Some(30_000), options: &["on", "timeout"] },
    StepKindDoc { key: "sleep", ty: "duration", doc: "Let time pass (virtual time on the sim).", default_timeout_ms: None, options: &[] },
    StepKindDoc { key: "link", ty: "\"up\" | \"down\"", doc: "Plug machine `on`'s NIC `nic` (default `eth0`) into its switch, or pull the cable.", default_timeout_ms: Some(10_000), options: &["on", "nic", "timeout"] },
    StepKindDoc { key: "write", ty: "path", doc: "Host side: write `data` (text) or `hex` bytes into a run-folder file at `offset` (default 0), like `dd conv=notrunc`.", default_timeout_ms: None, options: &["offset", "data", "hex", "expect"] },
    StepKindDoc { key: "copy", ty: "path", doc: "Host side: copy a run-folder file `to` another. `preserve = true` keeps the mtime (`cp -a`), `sparse = true` keeps holes (`--sparse=always`); both default to false, a careless `cp`: every block allocated, and the mtime of the copy (on the sim its virtual clock from 2023-11-15 22:13:20 UTC, never the host's). The `host.log` artifact shows both files' apparent sizes and allocation (`sparse`: at most half allocated; `fully allocated`; else `partly allocated`).", default_timeout_ms: None, options: &["to", "preserve", "sparse", "expect"] },
    StepKindDoc { key: "mkcow", ty: "path", doc: "Host side: create a COW file over `backing` (as `uml_mkcow`).", default_timeout_ms: None, options: &["backing", "expect"] },
    StepKindDoc { key: "merge", ty: "path", doc: "Host side: merge a COW file into a new image `into` (as `uml_moo COW NEW`), or into its backing file in place when `into` is absent (`uml_moo -d`); `backing` overrides the backing file's name.", default_timeout_ms: None, options: &["into", "backing", "expect"] },
    StepKindDoc { key: "check", ty: "path", doc: "Host side: check a COW file against its backing file (exit 0 when consistent, 1 otherwise, with the report as output).", default_timeout_ms: None, options: &["expect"] },
    StepKindDoc { key: "halt", ty: "names", doc: "Halt machines cleanly, so their disks are consistent.", default_timeout_ms: Some(30_000), options: &["timeout"] },
    StepKindDoc { key: "kill", ty: "string", doc: "Kill a machine abruptly, as the host killing its process.", default_timeout_ms: Some(10_000), options: &["timeout"] },
    StepKindDoc { key: "fault", ty: "device", doc: "Fault injection on machine `on`, from now on (before its boot is fine), drawn from the scenario seed: on a NIC (`\"eth0\"`) frame `loss`, `duplicate` and `delay` at its switch port; on a disk (`\"ubd1\"`) `fail_write`. Unset keys clear that fault. The sim only: the `uml` backend stops with `not supported on the uml backend: fault`.", default_timeout_ms: None, options: &["on", "loss", "duplicate", "delay", "fail_write"] },
    StepKindDoc { key: "expect_trace", ty: "string", doc: "The named switch's trace (the whole run's, checked at the end) `contains` / `lacks` these texts.", default_timeout_ms: None, options: &["contains", "lacks"] },
];

/// Options of steps (which kinds take which: [`STEP_KINDS`]).
pub const STEP_OPTIONS: &[FieldDoc] = &[
    f("on", "string", "The machine the step acts on."),
    f(
        "timeout",
        "duration",
        "How long the step may take: `5s`, `250ms`, `2m` (defaults per kind, above).",
    ),
    f(
        "background",
        "bool",
        "Run the command in the background (needs `id`).",
    ),
    f("id", "string", "Names a background command for `wait_job`."),
    f("nic", "string", "The NIC of `link` (default `eth0`)."),
    f("offset", "size", "Byte offset of `write` (default 0)."),
    f(
        "data",
        "string",
        "Text bytes to `write` (TOML escapes such as `\\u0000` allowed).",
    ),
    f(
        "hex",
        "string",
        "Bytes to `write` as hex digits, e.g. `\"deadbeef\"`.",
    ),
    f("to", "path", "Destination of `copy`."),
    f("preserve", "bool", "`copy` keeps the modification time."),
    f(
        "sparse",
        "bool",
        "`copy` keeps holes: zero blocks are not allocated.",
    ),
    f("backing", "path", "Backing file of `mkcow` / `merge`; an external disk only where nothing writes it (not an in-place `merge`)."),
    f("into", "path", "New image written by `merge`."),
    f("contains", "text(s)", "Texts the trace must contain."),
    f("lacks", "text(s)", "Texts the trace must not contain."),
    f(
        "expect",
        "table",
        "What the command must produce: see `expect` below.",
    ),
    f(
        "loss",
        "number",
        "`fault` on a NIC: probability (0 to 1) that a frame it sends is lost before the switch sees it.",
    ),
    f(
        "duplicate",
        "number",
        "`fault` on a NIC: probability (0 to 1) that a frame it sends reaches the switch twice.",
    ),
    f(
        "delay",
        "duration",
        "`fault` on a NIC: extra delay of every frame it sends, e.g. `\"20ms\"`.",
    ),
    f(
        "fail_write",
        "integer",
        "`fault` on a disk: its Nth block write from now on (1 = the next) fails with EIO; the others succeed.",
    ),
];

/// Keys of a step's `expect = { ... }`.
pub const EXPECT_FIELDS: &[FieldDoc] = &[
    f(
        "exit",
        "integer",
        "The exit code (130 after SIGINT, as a shell reports it).",
    ),
    f("stdout", "text(s)", "Texts the output must contain."),
    f(
        "stdout_lacks",
        "text(s)",
        "Texts the output must not contain.",
    ),
    f(
        "stdout_matches",
        "regex",
        "A regular expression the output must match (multi-line mode).",
    ),
    f(
        "interrupted",
        "bool",
        "Whether the command was still running at its timeout and got SIGINT.",
    ),
];
