//! `umltest switch`: a VDE switch daemon with vde_switch's options and
//! meanings (vde-protocol.md §1, §7), plus `--pcap` and `--trace`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::net::switch::SwitchConfig;
use crate::net::vde::daemon::{
    block_shutdown_signals, write_pidfile, Daemon, DaemonConfig, LogTarget,
};

fn octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("'{s}' is not an octal mode like 660"))
}

/// `umltest switch` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Management console (-M SOCK, or stdin without -d): vde_switch 2.3.2's commands and \
answers. There is one VLAN (0) with every port untagged in it and no spanning tree: \
vlan/print, vlan/allprint and fstp/print show that; vlan/create, vlan/addport, \
fstp/setfstp 1, fstp/setedge and fstp/bonus answer 1038 Function not implemented \
once their arguments pass vde_switch's checks (bad ones get its 1022/1006/1098).

--pcap: records are buffered in 1 MiB chunks and written by a background thread; \
when the disk falls 8 MiB behind, forwarding waits (nothing is dropped).")]
pub struct SwitchArgs {
    /// Control directory (default /var/run/vde.ctl as root, else /tmp/vde.ctl).
    #[arg(short = 's', long = "sock", visible_aliases = ["vdesock", "unix"], value_name = "DIR")]
    pub sock: Option<PathBuf>,
    /// Hub mode: every frame to every other port, no learning.
    #[arg(short = 'x', long)]
    pub hub: bool,
    /// Number of ports (0..N-1; clients get 1..N-1 unless they ask for 0).
    #[arg(short = 'n', long = "numports", value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub numports: u16,
    /// File of management commands run at start.
    #[arg(short = 'f', long = "rcfile", value_name = "FILE")]
    pub rcfile: Option<PathBuf>,
    /// Management socket (vdeterm/unixterm).
    #[arg(short = 'M', long = "mgmt", value_name = "SOCK")]
    pub mgmt: Option<PathBuf>,
    /// Mode of the management socket (octal).
    #[arg(long = "mgmtmode", value_name = "MODE", value_parser = octal)]
    pub mgmtmode: Option<u32>,
    /// Run in the background; log to syslog.
    #[arg(short = 'd', long)]
    pub daemon: bool,
    /// Write the daemon's pid to FILE (must not exist).
    #[arg(short = 'p', long = "pidfile", value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Mode of the control socket (octal); the directory gets matching x bits.
    #[arg(short = 'm', long = "mode", visible_alias = "mod", value_name = "MODE", value_parser = octal)]
    pub mode: Option<u32>,
    /// Mode of the socket directory (octal); without -m the control socket
    /// gets it minus the x bits.
    #[arg(long = "dirmode", value_name = "MODE", value_parser = octal)]
    pub dirmode: Option<u32>,
    /// Group owner of the directory and sockets.
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    pub group: Option<String>,
    /// Group owner of the management socket.
    #[arg(long = "mgmtgroup", value_name = "GROUP")]
    pub mgmtgroup: Option<String>,
    /// MAC table buckets (a power of two).
    #[arg(long = "hashsize", value_name = "N", default_value_t = 128)]
    pub hashsize: u32,
    /// Capture every frame the switch receives (classic pcap).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Write one trace line per frame: `<seq> <time> port <in> -> <outs>: <tcpdump -n -e>`.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
}

/// Runs the switch until it is stopped.
pub fn run(args: SwitchArgs) -> anyhow::Result<ExitCode> {
    let root = nix::unistd::geteuid().is_root();
    let dir = args.sock.clone().unwrap_or_else(|| {
        PathBuf::from(if root {
            "/var/run/vde.ctl"
        } else {
            "/tmp/vde.ctl"
        })
    });
    // vde_switch's wording; checked before anything is created.
    let gid = |name: &Option<String>| -> anyhow::Result<Option<u32>> {
        match name {
            None => Ok(None),
            Some(name) => match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
                _ => bail!("No such group '{name}'"),
            },
        }
    };
    let group = gid(&args.group)?;
    let mgmt_group = gid(&args.mgmtgroup)?;
    let hash_size = args.hashsize.max(1);
    if !hash_size.is_power_of_two() {
        eprintln!(
            "umltest switch: Hash size must be a power of 2. {hash_size} rounded to {}",
            hash_size.next_power_of_two()
        );
    }
    let opt_abs = |p: &Option<PathBuf>| p.as_deref().map(absolute).transpose();
    let config = DaemonConfig {
        dir,
        switch: SwitchConfig {
            numports: args.numports,
            hub: args.hub,
            hash_size: hash_size.next_power_of_two(),
            ..SwitchConfig::default()
        },
        mode: args.mode,
        dirmode: args.dirmode,
        group,
        mgmt: opt_abs(&args.mgmt)?,
        mgmt_mode: args.mgmtmode.unwrap_or(0o600),
        mgmt_group,
        rcfile: args.rcfile.clone(),
        pcap: opt_abs(&args.pcap)?,
        trace: opt_abs(&args.trace)?,
        stdin_console: !args.daemon,
        pidfile: opt_abs(&args.pidfile)?,
        cable_command: false,
    };
    let pidfile = config.pidfile.clone();
    // Before the sockets exist: see block_shutdown_signals.
    block_shutdown_signals().context("block shutdown signals")?;
    let mut daemon = Daemon::bind(config, LogTarget::Stderr)?;
    if args.daemon {
        nix::unistd::daemon(false, false).context("daemon")?;
        daemon.set_log(LogTarget::Syslog);
    }
    if let Some(p) = &pidfile {
        if let Err(e) = write_pidfile(p) {
            let msg = format!("Error in pidfile creation: {e} ({})", p.display());
            if args.daemon {
                // The parent has exited already: syslog is the only place left.
                if let Ok(c) = std::ffi::CString::new(msg) {
                    // SAFETY: "%s" with one valid NUL-terminated string argument.
                    unsafe { libc::syslog(libc::LOG_ERR, c"%s".as_ptr(), c.as_ptr()) };
                }
                return Ok(ExitCode::from(1));
            }
            bail!(msg);
        }
    }
    daemon.run().context("switch loop")?;
    Ok(ExitCode::SUCCESS)
}
