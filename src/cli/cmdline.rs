//! `umltest cmdline`: what linux.uml 6.1 will configure from a command line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use crate::cmdline::{self, Channel, Diagnostic, NetParams, Parsed, Severity};

/// Predict what linux.uml 6.1 configures from a command line.
///
/// Give the command line as one string, split as a shell would
/// (`umltest cmdline "mem=64M ubd0=a.cow,fs.ext4"`), or after `--` as the exact
/// argv elements linux.uml receives (`umltest cmdline -- mem=64M 'ubd2=a b'`).
#[derive(Debug, Args)]
pub struct CmdlineArgs {
    /// Resolve disk files against DIR (the machine's working directory) and
    /// report their sizes; without it, no file is looked at.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print the prediction as JSON.
    #[arg(long)]
    pub json: bool,
    /// The command line as one string, split as a shell would.
    #[arg(value_name = "LINE", conflicts_with = "args")]
    pub line: Option<String>,
    /// The argv elements of linux.uml, one per argument (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

pub fn run(args: CmdlineArgs) -> anyhow::Result<ExitCode> {
    let argv = match &args.line {
        Some(line) => cmdline::split_shell_words(line).map_err(|e| {
            anyhow::anyhow!(
                "cannot split the command line: {e}\n  {line}\n  {}^",
                " ".repeat(line[..e.offset().min(line.len())].chars().count())
            )
        })?,
        None => args.args.clone(),
    };
    let mut parsed = cmdline::parse(&argv);
    if let Some(dir) = &args.dir {
        anyhow::ensure!(dir.is_dir(), "--dir {}: not a directory", dir.display());
        let dir = dir.clone();
        cmdline::resolve_sizes(&mut parsed, &|file| host_file(&dir, file));
    }
    if args.json {
        let text = serde_json::to_string_pretty(&parsed).context("encode JSON")?;
        println!("{text}");
    } else {
        print!("{}", render_table(&parsed, args.dir.is_some()));
    }
    Ok(if parsed.boots {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Size and COW header of `file` relative to `dir`.
pub fn host_file(dir: &Path, file: &str) -> cmdline::HostFile {
    let path = dir.join(file);
    let Ok(f) = std::fs::File::open(&path) else {
        return cmdline::HostFile::default();
    };
    let Ok(meta) = f.metadata() else {
        return cmdline::HostFile::default();
    };
    if !meta.is_file() {
        return cmdline::HostFile::default();
    }
    let cow_backing = crate::cow::file::read_header(&f, &path)
        .ok()
        .map(|h| String::from_utf8_lossy(&h.backing_file).into_owned());
    cmdline::HostFile {
        size: Some(meta.len()),
        cow_backing,
    }
}

/// The human-readable report.
pub fn render_table(p: &Parsed, sizes: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "/proc/cmdline: {}", p.proc_cmdline);
    let _ = writeln!(
        out,
        "boots: {}",
        if p.boots {
            "yes"
        } else {
            "no (see the diagnostics)"
        }
    );
    let _ = writeln!(
        out,
        "memory: {} bytes ({})",
        p.mem_bytes,
        human_bytes(p.mem_bytes)
    );
    let _ = writeln!(
        out,
        "root: {} ({})",
        if p.root.is_empty() { "(none)" } else { &p.root },
        if p.root_rw { "read-write" } else { "read-only" }
    );
    let _ = writeln!(
        out,
        "init: {}",
        p.init
            .as_deref()
            .unwrap_or("(not given: /sbin/init, /etc/init, /bin/init, /bin/sh)")
    );
    let _ = writeln!(out, "init argv: {}", quote_all(&p.init_argv));
    let _ = writeln!(out, "init env: {}", quote_all(&p.init_env));
    let _ = writeln!(
        out,
        "umid: {}    uml_dir: {}",
        p.umid.as_deref().unwrap_or("(random)"),
        p.uml_dir.as_deref().unwrap_or("~/.uml/")
    );
    let _ = writeln!(
        out,
        "con0: {}    other consoles: {}    serial lines: {}",
        p.con.console_channel(0),
        p.con.console_channel(1),
        p.ssl.serial_channel(0)
    );

    let _ = writeln!(out, "\nblock devices:");
    let mut rows = vec![vec![
        "NAME".to_string(),
        "FILE".into(),
        "BACKING".into(),
        "FLAGS".into(),
        "SERIAL".into(),
        "SECTORS".into(),
    ]];
    for d in &p.ubd {
        let mut flags = String::from(if d.read_only { "ro" } else { "rw" });
        for (_, name) in d.flags().filter(|&(letter, _)| letter != 'r') {
            flags.push(',');
            flags.push_str(name);
        }
        rows.push(vec![
            d.name.clone(),
            if d.implicit {
                format!("{} (implicit)", d.file)
            } else {
                d.file.clone()
            },
            d.backing.clone().unwrap_or_else(|| "-".into()),
            flags,
            d.serial.clone().unwrap_or_else(|| "-".into()),
            match d.size_sectors {
                Some(s) => s.to_string(),
                None if sizes => "missing".into(),
                None => "?".into(),
            },
        ]);
    }
    out.push_str(&table(&rows));

    let _ = writeln!(out, "\nnetwork devices (in configuration order):");
    let mut rows = vec![vec![
        "NAME".to_string(),
        "TRANSPORT".into(),
        "MAC".into(),
        "PARAMETERS".into(),
    ]];
    for n in &p.net {
        rows.push(vec![
            n.name.clone(),
            n.transport.clone(),
            n.mac.clone().unwrap_or_else(|| "random".into()),
            describe_params(&n.params),
        ]);
    }
    if p.net.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&table(&rows));
    }

    let _ = writeln!(out, "\ndiagnostics:");
    if p.diagnostics.is_empty() {
        out.push_str("  (none)\n");
    }
    // Runs of messages that differ only in a number (the 15 consoles without a
    // channel) are shown once, with a count.
    let shape = |d: &Diagnostic| {
        let mut msg = String::new();
        for c in d.message.chars() {
            if !c.is_ascii_digit() {
                msg.push(c);
            } else if !msg.ends_with('#') {
                msg.push('#');
            }
        }
        (msg, d.span, d.help.clone(), d.severity, d.channel)
    };
    let mut i = 0;
    while i < p.diagnostics.len() {
        let d = &p.diagnostics[i];
        let mut run = 1;
        while p
            .diagnostics
            .get(i + run)
            .is_some_and(|n| shape(n) == shape(d))
        {
            run += 1;
        }
        out.push_str(&render_diagnostic(&p.input, d));
        if run > 2 {
            let _ = writeln!(out, "  ({} more like this; --json lists them all)", run - 1);
        } else if run == 2 {
            out.push_str(&render_diagnostic(&p.input, &p.diagnostics[i + 1]));
        }
        i += run;
    }
    out
}

/// One diagnostic with a caret line under the option it is about.
pub fn render_diagnostic(input: &str, d: &Diagnostic) -> String {
    let mut out = String::new();
    let sev = match d.severity {
        Severity::Fatal => "fatal",
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "info",
    };
    let origin = match d.channel {
        Channel::Log => "kernel log",
        Channel::Stdout => "linux.uml on the host",
        Channel::Lint => "umltest",
    };
    let _ = writeln!(out, "{sev} [{origin}]: {}", d.message);
    let [start, end] = d.span;
    if start < input.len() {
        let prefix = input.get(..start).unwrap_or("");
        let body = input.get(start..end.min(input.len())).unwrap_or("");
        let _ = writeln!(out, "  | {input}");
        let _ = writeln!(
            out,
            "  | {}{}",
            " ".repeat(prefix.chars().count()),
            "^".repeat(body.chars().count().max(1))
        );
    } else {
        let _ = writeln!(out, "  | (added by the kernel at the end of the line)");
    }
    if !d.effect.is_empty() {
        let _ = writeln!(out, "  = kernel: {}", d.effect);
    }
    if let Some(help) = &d.help {
        let _ = writeln!(out, "  = help: {help}");
    }
    out
}

fn describe_params(p: &NetParams) -> String {
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    match p {
        NetParams::Daemon {
            sock_type,
            ctl_sock,
        } => format!("{sock_type}:{ctl_sock}"),
        NetParams::Vde {
            switch,
            port,
            group,
            mode,
            description,
        } => format!(
            "switch={} port={} group={} mode={} description={}",
            switch.as_deref().unwrap_or("(default socket)"),
            if *port == 0 {
                "any".to_string()
            } else {
                port.to_string()
            },
            opt(group),
            mode.map(|m| format!("{m:o}"))
                .unwrap_or_else(|| "700".into()),
            description.as_deref().unwrap_or("UML vde_transport"),
        ),
        NetParams::Mcast { addr, port, ttl } => format!("{addr}:{port} ttl={ttl}"),
        NetParams::Ucast {
            addr,
            listen_port,
            remote_port,
        } => format!("listen :{listen_port} -> {addr}:{remote_port}"),
        NetParams::Tuntap {
            dev_name,
            gate_addr,
        } => format!(
            "dev={} gate={}",
            dev_name.as_deref().unwrap_or("(created by uml_net)"),
            opt(gate_addr)
        ),
        NetParams::Ethertap {
            dev_name,
            gate_addr,
        } => format!("dev={dev_name} gate={}", opt(gate_addr)),
        NetParams::Slip { gate_addr } => format!("gate={}", opt(gate_addr)),
        NetParams::Slirp { argv } => format!("argv={}", quote_all(argv)),
        NetParams::Vector { options } => options
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn quote_all(words: &[String]) -> String {
    words
        .iter()
        .map(|w| cmdline::quote_shell_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 && n % (1 << 30) == 0 {
        format!("{} GiB", n >> 30)
    } else if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n / 1024)
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::from(" ");
        for (c, cell) in r.iter().enumerate() {
            let w = widths.get(c).copied().unwrap_or(0);
            let _ = write!(line, " {cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
