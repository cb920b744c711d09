//! Rendering a prediction back into a canonical argv: one option per word, every
//! default spelled out where that keeps the meaning, so that parsing the rendered
//! argv configures the same machine ([`Parsed::config_eq`]).

use super::model::*;

impl Parsed {
    /// A canonical argv that configures the same machine: memory, umid/uml_dir,
    /// disks, network devices (within a transport, devices without a MAC first,
    /// so none inherits a MAC it did not have), consoles, root, init, init's
    /// environment, `console=tty0`, then `--` and init's arguments.
    pub fn to_argv(&self) -> Vec<String> {
        let mut out = Vec::new();
        // `mem=` and `uml_dir=` words stay on the command line and reach init, so
        // when init's words hold them they set the value again; spell them out
        // only when they do not.
        let reaches_init = |prefix: &str| {
            self.init_env
                .iter()
                .chain(self.init_argv.iter().skip(1))
                .any(|w| w.starts_with(prefix))
        };
        if !reaches_init("mem=") && self.mem_bytes != super::kernel::DEFAULT_MEM {
            out.push(format!("mem={}K", self.mem_bytes / 1024));
        }
        if let Some(umid) = &self.umid {
            out.push(format!("umid={umid}"));
        }
        if let (Some(dir), false) = (&self.uml_dir, reaches_init("uml_dir=")) {
            out.push(format!("uml_dir={dir}"));
        }
        for d in self.ubd.iter().filter(|d| !d.implicit) {
            let flags: String = d.flags().map(|(letter, _)| letter).collect();
            let mut value = d.file.clone();
            if d.backing.is_some() || d.serial.is_some() {
                value.push(',');
                value.push_str(d.backing.as_deref().unwrap_or(""));
            }
            if let Some(serial) = &d.serial {
                value.push(',');
                value.push_str(serial);
            }
            out.push(format!("ubd{}{flags}={value}", d.index));
        }
        if self.ubd_sync_all {
            out.push("ubd=sync".into());
        }
        let mut nets: Vec<&NetDevice> = self.net.iter().collect();
        // Stable: configuration order, but MAC-less devices first in a transport.
        nets.sort_by_key(|n| n.mac.is_some());
        for n in nets {
            if let Some(word) = render_net(n) {
                out.push(word);
            }
        }
        for (kind, cfg) in [("con", &self.con), ("ssl", &self.ssl)] {
            if let Some(def) = &cfg.default {
                out.push(format!("{kind}={def}"));
            }
            for (n, chan) in &cfg.lines {
                out.push(format!("{kind}{n}={chan}"));
            }
        }
        if let Some(sock) = &self.mconsole_notify {
            out.push(format!("mconsole=notify:{sock}"));
        }
        if !self.root.is_empty() {
            out.push(format!("root={}", self.root));
        }
        if self.root_rw {
            out.push("rw".into());
        }
        if self.quiet {
            out.push("quiet".into());
        }
        if let Some(init) = &self.init {
            out.push(format!("init={init}"));
        }
        for e in &self.init_env {
            out.push(match e.split_once('=') {
                Some((k, v)) if v.contains(' ') => format!("{k}=\"{v}\""),
                _ => e.clone(),
            });
        }
        // Given explicitly so that UML appends nothing after `--`.
        out.push("console=tty0".into());
        out.push("--".into());
        out.extend(self.init_argv.iter().skip(1).cloned());
        out
    }

    /// True when `other` configures the same machine: disks, network devices (by
    /// name), memory, root, init with argv and environment, umid, uml_dir,
    /// consoles, quiet, mconsole. Spans, messages and diagnostics are not compared.
    pub fn config_eq(&self, other: &Parsed) -> bool {
        let strip_ubd = |p: &Parsed| -> Vec<UbdDevice> {
            p.ubd
                .iter()
                .map(|d| UbdDevice {
                    span: [0, 0],
                    ..d.clone()
                })
                .collect()
        };
        let strip_net = |p: &Parsed| -> Vec<(String, String, NetParams, Option<String>, bool)> {
            let mut v: Vec<_> = p
                .net
                .iter()
                .map(|n| {
                    (
                        n.name.clone(),
                        n.transport.clone(),
                        n.params.clone(),
                        n.mac.clone(),
                        n.mac_random,
                    )
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        strip_ubd(self) == strip_ubd(other)
            && self.ubd_sync_all == other.ubd_sync_all
            && strip_net(self) == strip_net(other)
            && self.mem_bytes == other.mem_bytes
            && self.root == other.root
            && self.root_rw == other.root_rw
            && self.init == other.init
            && self.init_argv == other.init_argv
            && self.init_env == other.init_env
            && self.umid == other.umid
            && self.uml_dir == other.uml_dir
            && self.con == other.con
            && self.ssl == other.ssl
            && self.quiet == other.quiet
            && self.mconsole_notify == other.mconsole_notify
            && self.boots == other.boots
    }
}

/// One network device as a single word.
fn render_net(n: &NetDevice) -> Option<String> {
    let mac = n.mac.clone().unwrap_or_default();
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let rest = match &n.params {
        NetParams::Daemon {
            sock_type,
            ctl_sock,
        } => format!("daemon,{mac},{sock_type},{ctl_sock}"),
        NetParams::Vde {
            switch,
            port,
            group,
            mode,
            description,
        } => format!(
            "vde,{},{mac},{},{},{},{}",
            opt(switch),
            if *port == 0 {
                String::new()
            } else {
                port.to_string()
            },
            opt(group),
            mode.map(|m| format!("0{m:o}")).unwrap_or_default(),
            opt(description)
        ),
        NetParams::Mcast { addr, port, ttl } => format!("mcast,{mac},{addr},{port},{ttl}"),
        NetParams::Ucast {
            addr,
            listen_port,
            remote_port,
        } => format!("ucast,{mac},{addr},{listen_port},{remote_port}"),
        NetParams::Tuntap {
            dev_name,
            gate_addr,
        } => format!("tuntap,{},{mac},{}", opt(dev_name), opt(gate_addr)),
        NetParams::Ethertap {
            dev_name,
            gate_addr,
        } => format!("ethertap,{dev_name},{mac},{}", opt(gate_addr)),
        NetParams::Slip { gate_addr } => match gate_addr {
            Some(ip) => format!("slip,{ip}"),
            None => "slip".to_string(),
        },
        NetParams::Slirp { argv } => {
            let args: Vec<String> = argv.iter().map(|a| a.replace(' ', "_")).collect();
            format!("slirp,{mac},{}", args.join(","))
        }
        NetParams::Vector { options } => {
            let opts: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Some(format!("vec{}:{}", n.index, opts.join(",")));
        }
    };
    Some(format!("eth{}={rest}", n.index))
}
