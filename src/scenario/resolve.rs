//! From scenario text to a validated [`Plan`]: TOML syntax and unknown keys
//! (serde), then names, paths, sizes, durations and step options, collecting
//! every problem with its span so a user sees them all at once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::backend::{Fault, SwitchSpec};
use super::diag::{Diagnostic, Diagnostics, LineIndex};
use super::plan::{Action, DiskContent, DiskPlan, Expect, MachinePlan, Plan, Step};
use super::schema::{RawDisk, RawExpect, RawScenario, RawStep, SizeText, STEP_KINDS};
use super::units::{parse_duration, parse_size};

/// The largest scenario file read. Parsing takes about 100 times the file's
/// size in memory (50k steps: 1.5 MB of text, 160 MB), so this bounds it to
/// about 400 MB; a real lab is a few kilobytes.
pub const MAX_SCENARIO_BYTES: u64 = 4 << 20;

/// The most RAM a lab machine may have (`mem=`).
pub const MAX_MEM: u64 = 4 << 30;

/// Reads and resolves a scenario file.
pub fn load(file: &Path) -> Result<Plan, Diagnostics> {
    let fail = |message: String| Err(Diagnostics(vec![Diagnostic::new(file, "", None, message)]));
    let mut text = String::new();
    let read = std::fs::File::open(file).and_then(|f| {
        std::io::Read::read_to_string(
            &mut std::io::Read::take(f, MAX_SCENARIO_BYTES + 1),
            &mut text,
        )
    });
    match read {
        Err(e) => fail(format!("cannot read scenario file: {e}")),
        Ok(n) if n as u64 > MAX_SCENARIO_BYTES => fail(format!(
            "the scenario file is larger than the maximum of {} MiB",
            MAX_SCENARIO_BYTES >> 20
        )),
        Ok(_) => parse(file, &text),
    }
}

/// Resolves scenario `text` (read from `file`, which only names it in messages).
pub fn parse(file: &Path, text: &str) -> Result<Plan, Diagnostics> {
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        Diagnostics(vec![Diagnostic::new(
            file,
            text,
            e.span(),
            e.message().trim_end().to_string(),
        )])
    })?;
    let mut r = Resolver {
        file,
        text,
        shared: Arc::from(text),
        lines: LineIndex::new(text),
        diags: Vec::new(),
        omitted: 0,
    };
    let plan = r.resolve(raw);
    if r.diags.is_empty() {
        return Ok(plan);
    }
    if r.omitted > 0 {
        r.diags.push(Diagnostic::shared(
            file,
            r.shared.clone(),
            None,
            format!(
                "{} more problems not shown (the first {MAX_DIAGNOSTICS} are)",
                r.omitted
            ),
        ));
    }
    Err(Diagnostics(r.diags))
}

/// Problems reported per file; the rest are counted. Rendering one costs a
/// scan of the file up to it, so 50k of them would make `check` quadratic.
pub const MAX_DIAGNOSTICS: usize = 100;

struct Resolver<'a> {
    file: &'a Path,
    text: &'a str,
    shared: Arc<str>,
    lines: LineIndex,
    diags: Vec<Diagnostic>,
    /// Problems past [`MAX_DIAGNOSTICS`].
    omitted: usize,
}

/// The steps' view of the lab's names.
struct Names {
    machines: BTreeSet<String>,
    switches: BTreeSet<String>,
    external: BTreeSet<String>,
    /// COW files over an external disk (declared, made by `mkcow`, or created
    /// by a kernel from a command line), by name: their backing is read-only.
    over_external: BTreeMap<String, String>,
}

impl Resolver<'_> {
    fn err(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        if self.diags.len() >= MAX_DIAGNOSTICS {
            self.omitted += 1;
            return;
        }
        self.diags.push(Diagnostic::shared(
            self.file,
            self.shared.clone(),
            span,
            message.into(),
        ));
    }

    fn resolve(&mut self, raw: RawScenario) -> Plan {
        let name = raw.scenario.name.get_ref().clone();
        if !is_plain_name(&name) {
            self.err(
                Some(raw.scenario.name.span()),
                format!("scenario name `{name}` must be letters, digits, `.`, `_` or `-` (it names the snapshot folder)"),
            );
        }
        let mut taken: BTreeMap<String, &'static str> = BTreeMap::new();
        let mut switches = Vec::new();
        for sw in &raw.switch {
            let sw = sw.get_ref();
            let name = self.unique_name(&sw.name, "switch", &mut taken);
            let numports = match &sw.ports {
                Some(p) if *p.get_ref() == 0 => {
                    self.err(Some(p.span()), "a switch needs at least one port");
                    32
                }
                Some(p) => *p.get_ref(),
                None => 32,
            };
            switches.push(SwitchSpec {
                name,
                hub: sw.hub.unwrap_or(false),
                numports,
            });
        }
        let mut disks = Vec::new();
        let mut external = BTreeSet::new();
        for disk in &raw.disk {
            if let Some(d) = self.disk(disk.get_ref(), &disks) {
                if d.content == DiskContent::External {
                    external.insert(d.name.clone());
                }
                disks.push(d);
            }
        }
        let mut disk_names = BTreeSet::new();
        for (d, raw) in disks.iter().zip(&raw.disk) {
            if !disk_names.insert(d.name.clone()) {
                self.err(
                    Some(raw.get_ref().name.span()),
                    format!("a disk named `{}` is already defined", d.name),
                );
            }
        }
        // Files a machine may name: the disks, and files host-side steps make.
        let mut files: BTreeSet<String> = disk_names.clone();
        for step in &raw.step {
            let s = step.get_ref();
            for made in [&s.to, &s.mkcow, &s.into].into_iter().flatten() {
                files.insert(made.get_ref().clone());
            }
        }
        let mut over_external: BTreeMap<String, String> = BTreeMap::new();
        for d in &disks {
            if let DiskContent::Cow { backing } = &d.content {
                if external.contains(backing) {
                    over_external.insert(d.name.clone(), backing.clone());
                }
            }
        }
        for step in &raw.step {
            let s = step.get_ref();
            if let (Some(cow), Some(b)) = (&s.mkcow, &s.backing) {
                if external.contains(b.get_ref()) {
                    over_external.insert(cow.get_ref().clone(), b.get_ref().clone());
                }
            }
        }
        let switch_names: BTreeSet<String> = switches.iter().map(|s| s.name.clone()).collect();
        let mut machines = Vec::new();
        let mut macs = BTreeMap::new();
        if raw.machine.len() > crate::uml::args::MAX_MACHINES {
            self.err(
                raw.machine
                    .get(crate::uml::args::MAX_MACHINES)
                    .map(|m| m.span()),
                format!(
                    "{} machines: at most {} fit the default MACs",
                    raw.machine.len(),
                    crate::uml::args::MAX_MACHINES
                ),
            );
        }
        for (index, m) in raw.machine.iter().enumerate() {
            let m = m.get_ref();
            let name = self.unique_name(&m.name, "machine", &mut taken);
            let argv = self.cmdline(&m.cmdline);
            self.cmdline_names(&m.cmdline, &argv, &files, &external, &switch_names);
            self.unique_macs(&m.cmdline, &argv, &name, index, &mut macs);
            self.bounded_mem(&m.cmdline, &argv);
            for dev in crate::cmdline::parse(&argv).ubd {
                if let Some(b) = dev.backing.filter(|b| external.contains(b)) {
                    over_external.insert(dev.file, b);
                }
            }
            machines.push(MachinePlan { name, argv });
        }
        let names = Names {
            machines: machines.iter().map(|m| m.name.clone()).collect(),
            switches: switches.iter().map(|s| s.name.clone()).collect(),
            external,
            over_external,
        };
        let mut steps = Vec::new();
        let mut jobs: BTreeMap<String, String> = BTreeMap::new();
        for (i, step) in raw.step.iter().enumerate() {
            let line = self.lines.line(step.span().start);
            if let Some(s) = self.step(i + 1, line, step, &names, &mut jobs) {
                steps.push(s);
            }
        }
        Plan {
            file: self.file.to_path_buf(),
            name,
            about: raw.scenario.about.unwrap_or_default(),
            seed: raw.scenario.seed.unwrap_or(1),
            switches,
            disks,
            machines,
            steps,
        }
    }

    /// Machine and switch names share one namespace: both become entries of the
    /// run folder (a switch's socket folder, a machine's umid folder).
    fn unique_name(
        &mut self,
        name: &Spanned<String>,
        what: &'static str,
        taken: &mut BTreeMap<String, &'static str>,
    ) -> String {
        let n = name.get_ref().clone();
        if !is_plain_name(&n) {
            self.err(
                Some(name.span()),
                format!("{what} name `{n}` must be letters, digits, `.`, `_` or `-`"),
            );
        } else if let Some(other) = taken.insert(n.clone(), what) {
            self.err(
                Some(name.span()),
                format!("`{n}` is already the name of a {other}"),
            );
        }
        n
    }

    fn disk(&mut self, d: &RawDisk, earlier: &[DiskPlan]) -> Option<DiskPlan> {
        let name = d.name.get_ref().clone();
        let external = d.external.as_ref().is_some_and(|e| *e.get_ref());
        if external {
            if let Some(extra) = [
                d.size.as_ref().map(|s| s.span()),
                d.mkfs.as_ref().map(|s| s.span()),
                d.image.as_ref().map(|s| s.span()),
                d.backing.as_ref().map(|s| s.span()),
            ]
            .into_iter()
            .flatten()
            .next()
            {
                self.err(
                    Some(extra),
                    "an external disk is used as it is: it takes no size, mkfs, image or backing",
                );
                return None;
            }
            if name.is_empty() {
                self.err(
                    Some(d.name.span()),
                    "an external disk needs the path of a host file",
                );
                return None;
            }
            return Some(DiskPlan {
                name,
                content: DiskContent::External,
            });
        }
        if let Err(why) = check_run_folder_name(&name) {
            self.err(
                Some(d.name.span()),
                format!("{why} (mark the disk `external = true` to use a host file, read-only)"),
            );
            return None;
        }
        let size = match &d.size {
            Some(s) => match parse_size(&s.get_ref().0) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.err(Some(s.span()), e);
                    return None;
                }
            },
            None => None,
        };
        if let Some(backing) = &d.backing {
            if let Some(extra) = [
                d.size.as_ref().map(|s| s.span()),
                d.mkfs.as_ref().map(|s| s.span()),
                d.image.as_ref().map(|s| s.span()),
            ]
            .into_iter()
            .flatten()
            .next()
            {
                self.err(
                    Some(extra),
                    "a COW disk takes its size and contents from its backing file",
                );
                return None;
            }
            let b = backing.get_ref();
            if !earlier.iter().any(|e| &e.name == b) {
                self.err(
                    Some(backing.span()),
                    format!("backing `{b}` is not a disk defined above"),
                );
                return None;
            }
            return Some(DiskPlan {
                name,
                content: DiskContent::Cow { backing: b.clone() },
            });
        }
        let Some(size) = size else {
            self.err(
                Some(d.name.span()),
                format!("disk `{name}` needs a `size` (or `backing`, or `external = true`)"),
            );
            return None;
        };
        let content = match (&d.mkfs, &d.image) {
            (Some(m), Some(_)) => {
                self.err(
                    Some(m.span()),
                    "a disk has either `mkfs` or `image`, not both",
                );
                return None;
            }
            (Some(m), None) if m.get_ref() == "ext4" => {
                // mkfs writes every inode table (lazy_itable_init=0), so its
                // cost grows with the size: the image disk's bound.
                self.formatted_size(d, size, "an ext4 disk", "mkfs writes its metadata in full")?;
                DiskContent::Ext4 { size }
            }
            (Some(m), None) => {
                self.err(
                    Some(m.span()),
                    format!("unknown mkfs `{}`: only \"ext4\"", m.get_ref()),
                );
                return None;
            }
            (None, Some(i)) if i.get_ref() == "default" => {
                self.formatted_size(d, size, "an image disk", "the root image of a lab")?;
                DiskContent::Image {
                    image: "default".into(),
                    size,
                }
            }
            (None, Some(i)) => {
                self.err(
                    Some(i.span()),
                    format!("unknown image `{}`: only \"default\"", i.get_ref()),
                );
                return None;
            }
            (None, None) => DiskContent::Raw { size },
        };
        Some(DiskPlan { name, content })
    }

    /// A disk umltest formats (`mkfs`, `image`) is at most
    /// [`crate::uml::image::MAX_SIZE`]: its cost grows with its size.
    fn formatted_size(&mut self, d: &RawDisk, size: u64, what: &str, why: &str) -> Option<()> {
        let max = crate::uml::image::MAX_SIZE;
        if size <= max {
            return Some(());
        }
        self.err(
            d.size.as_ref().map(|s| s.span()),
            format!(
                "{what} is at most {} GiB ({why}; this one is {} GiB)",
                max >> 30,
                size >> 30
            ),
        );
        None
    }

    fn cmdline(&mut self, cmdline: &Spanned<String>) -> Vec<String> {
        match super::argv::split_words(cmdline.get_ref()) {
            Ok(words) => words,
            Err((offset, message)) => {
                let span = self.inner_span(cmdline, offset);
                self.err(Some(span), format!("in cmdline: {message}"));
                Vec::new()
            }
        }
    }

    /// Files and switches named in a command line must exist in the lab: ubd
    /// images and backing files are disks (or files made by steps; a COW file
    /// with a backing file may be new, the kernel creates it), VDE sockets are
    /// switches, and nothing reaches outside the run folder.
    fn cmdline_names(
        &mut self,
        cmdline: &Spanned<String>,
        argv: &[String],
        files: &BTreeSet<String>,
        external: &BTreeSet<String>,
        switches: &BTreeSet<String>,
    ) {
        let parsed = crate::cmdline::parse(argv);
        let span_of = |r: &Self, s: crate::cmdline::Span| r.cmdline_span(cmdline, &parsed, s);
        let known: Vec<&str> = files.iter().map(String::as_str).collect();
        for dev in parsed.ubd.iter().filter(|d| !d.implicit) {
            let span = span_of(self, dev.span);
            let mut names = vec![(&dev.file, dev.backing.is_none())];
            if let Some(b) = &dev.backing {
                names.push((b, true));
            }
            for (file, must_exist) in names {
                if external.contains(file) {
                    continue;
                }
                if let Err(why) = check_run_folder_name(file) {
                    self.err(Some(span.clone()), format!("{}: {why} (declare it as a disk with `external = true` to use a host file, read-only)", dev.name));
                } else if must_exist && !files.contains(file) {
                    self.err(
                        Some(span.clone()),
                        format!(
                            "{}: unknown disk `{file}` (disks: {})",
                            dev.name,
                            list_or_none(&known)
                        ),
                    );
                }
            }
        }
        // Every other host path the command line names (iomem=, initrd=,
        // uml_dir=, umid=, hostfs=, sockets, ...): inside the run folder.
        let mut refused = BTreeSet::new();
        for path in crate::cmdline::paths::host_paths(&parsed) {
            if path.kind == crate::cmdline::paths::HostPathKind::Disk {
                continue; // checked above, with the disks' stricter rules
            }
            if let Err(why) = path.check() {
                refused.insert(path.span);
                let span = span_of(self, path.span);
                self.err(Some(span), why);
            }
        }
        let known: Vec<&str> = switches.iter().map(String::as_str).collect();
        for dev in &parsed.net {
            if refused.contains(&dev.span) {
                continue;
            }
            let socket = match &dev.params {
                crate::cmdline::NetParams::Vde {
                    switch: Some(s), ..
                } => s.clone(),
                crate::cmdline::NetParams::Daemon { ctl_sock, .. } => {
                    ctl_sock.split('/').next().unwrap_or_default().to_string()
                }
                _ => continue,
            };
            if !switches.contains(&socket) {
                let span = span_of(self, dev.span);
                self.err(
                    Some(span),
                    format!(
                        "{}: unknown switch `{socket}` (switches: {})",
                        dev.name,
                        list_or_none(&known)
                    ),
                );
            }
        }
    }

    /// The file span of `s`, a span of `parsed` (the parse of `cmdline`'s words).
    fn cmdline_span(
        &self,
        cmdline: &Spanned<String>,
        parsed: &crate::cmdline::Parsed,
        s: crate::cmdline::Span,
    ) -> Range<usize> {
        // Spans index `parsed.input` (the words joined by single spaces); they
        // map onto the file only when the cmdline was written exactly so.
        if parsed.input == *cmdline.get_ref() {
            let start = self.inner_span(cmdline, s[0]).start;
            let end = self.inner_span(cmdline, s[1]).start;
            start..end.max(start + 1)
        } else {
            cmdline.span()
        }
    }

    /// Two NICs with one MAC on one switch: the switch learns only one of
    /// them and ARP to the other silently fails. Checked on the MACs the
    /// machines really get (the harness fills in defaults: [`effective_argv`]).
    ///
    /// [`effective_argv`]: crate::uml::args::effective_argv
    /// A machine's RAM is a file the real kernel maps (in `/dev/shm` under the
    /// sandbox): a lab may not ask the host for more than [`MAX_MEM`].
    fn bounded_mem(&mut self, cmdline: &Spanned<String>, argv: &[String]) {
        let mem = crate::cmdline::parse(argv).mem_bytes;
        if mem <= MAX_MEM {
            return;
        }
        let text = cmdline.get_ref();
        let word = text
            .match_indices("mem=")
            .filter(|(at, _)| *at == 0 || text.as_bytes()[at - 1].is_ascii_whitespace())
            .last()
            .map(|(at, _)| {
                let len = text[at..]
                    .find(char::is_whitespace)
                    .unwrap_or(text.len() - at);
                let inner = self.inner_span(cmdline, at);
                if inner.len() <= 1 {
                    inner.start..inner.start + len
                } else {
                    inner
                }
            });
        self.err(
            word.or(Some(cmdline.span())),
            format!(
                "a machine has at most {} GiB of memory (umltest's bound on what a lab may take from the host); this one asks for {} MiB",
                MAX_MEM >> 30,
                mem >> 20
            ),
        );
    }

    fn unique_macs(
        &mut self,
        cmdline: &Spanned<String>,
        argv: &[String],
        machine: &str,
        index: usize,
        seen: &mut BTreeMap<(String, String), (String, String, usize)>,
    ) {
        let own = crate::cmdline::parse(argv);
        let effective =
            crate::cmdline::parse(&crate::uml::args::effective_argv(argv, machine, index));
        for dev in &effective.net {
            let switch = match &dev.params {
                crate::cmdline::NetParams::Vde {
                    switch: Some(s), ..
                } => s.clone(),
                crate::cmdline::NetParams::Daemon { ctl_sock, .. } => {
                    ctl_sock.split('/').next().unwrap_or_default().to_string()
                }
                _ => continue,
            };
            let Some(mac) = &dev.mac else { continue };
            let written = own.net.iter().find(|d| d.name == dev.name);
            let span = match written {
                Some(d) => self.cmdline_span(cmdline, &own, d.span),
                None => cmdline.span(),
            };
            let line = self.lines.line(span.start);
            let key = (switch.clone(), mac.clone());
            match seen.get(&key) {
                Some((other, other_nic, other_line)) => {
                    let given = if written.and_then(|d| d.mac.as_ref()).is_some() {
                        ""
                    } else {
                        " (the default the harness gives it: set a MAC to choose another)"
                    };
                    self.err(
                        Some(span),
                        format!(
                            "{}: MAC {mac}{given} is also {other}'s {other_nic} (line {other_line}) on switch `{switch}`: the switch would deliver to only one of them",
                            dev.name
                        ),
                    );
                }
                None => {
                    seen.insert(key, (machine.to_string(), dev.name.clone(), line));
                }
            }
        }
    }

    /// The file span of byte `offset` inside a string value: exact for a plain
    /// `"..."` or `'...'` literal without escapes, else the whole value.
    fn inner_span(&self, value: &Spanned<String>, offset: usize) -> Range<usize> {
        let span = value.span();
        let raw = self.text.get(span.clone()).unwrap_or("");
        let simple = (raw.starts_with('"') && !raw.starts_with("\"\"\"") && !raw.contains('\\'))
            || (raw.starts_with('\'') && !raw.starts_with("'''"));
        if simple && raw.len() == value.get_ref().len() + 2 && offset <= value.get_ref().len() {
            let at = span.start + 1 + offset;
            at..(at + 1).min(span.end - 1).max(at)
        } else {
            span
        }
    }

    fn step(
        &mut self,
        number: usize,
        line: usize,
        step: &Spanned<RawStep>,
        names: &Names,
        jobs: &mut BTreeMap<String, String>,
    ) -> Option<Step> {
        let s = step.get_ref();
        let present = present_keys(s);
        let kinds: Vec<_> = present
            .iter()
            .filter(|(k, _)| STEP_KINDS.iter().any(|d| d.key == *k))
            .collect();
        let kind = match kinds.as_slice() {
            [one] => STEP_KINDS.iter().find(|d| d.key == one.0)?,
            [] => {
                let all: Vec<_> = STEP_KINDS.iter().map(|k| k.key).collect();
                self.err(
                    Some(step.span()),
                    format!("this step does nothing: give it one of {}", all.join(", ")),
                );
                return None;
            }
            [_, second, ..] => {
                self.err(
                    Some(second.1.clone()),
                    format!(
                        "a step does one thing: `{}` and `{}` are both step kinds",
                        kinds[0].0, second.0
                    ),
                );
                return None;
            }
        };
        let mut ok = true;
        for (key, span) in &present {
            if *key != kind.key && !kind.options.contains(key) {
                let allowed = if kind.options.is_empty() {
                    "none".to_string()
                } else {
                    kind.options.join(", ")
                };
                self.err(
                    Some(span.clone()),
                    format!(
                        "`{key}` does not apply to a `{}` step (its options: {allowed})",
                        kind.key
                    ),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        let timeout = match &s.timeout {
            Some(t) => match parse_duration(t.get_ref()) {
                Ok(d) if d.is_zero() => {
                    self.err(Some(t.span()), "a timeout must be longer than 0");
                    return None;
                }
                Ok(d) => Some(d),
                Err(e) => {
                    self.err(Some(t.span()), e);
                    return None;
                }
            },
            None => kind.default_timeout_ms.map(Duration::from_millis),
        };
        let expect = match &s.expect {
            Some(e) => Some(self.expect(e)?),
            None => None,
        };
        let action = self.action(s, step.span(), names, jobs)?;
        Some(Step {
            number,
            line,
            action,
            timeout,
            expect,
        })
    }

    fn expect(&mut self, e: &Spanned<RawExpect>) -> Option<Expect> {
        let raw = e.get_ref();
        if let Some(re) = &raw.stdout_matches {
            if let Err(err) = regex::RegexBuilder::new(re.get_ref())
                .multi_line(true)
                .build()
            {
                self.err(
                    Some(re.span()),
                    format!("invalid regular expression: {err}"),
                );
                return None;
            }
        }
        Some(Expect {
            exit: raw.exit,
            stdout: raw
                .stdout
                .as_ref()
                .map(|t| t.get_ref().0.clone())
                .unwrap_or_default(),
            stdout_lacks: raw
                .stdout_lacks
                .as_ref()
                .map(|t| t.get_ref().0.clone())
                .unwrap_or_default(),
            stdout_matches: raw.stdout_matches.as_ref().map(|r| r.get_ref().clone()),
            interrupted: raw.interrupted,
        })
    }

    fn machine(&mut self, value: &Spanned<String>, names: &Names) -> Option<String> {
        self.machine_at(value.get_ref(), Some(value.span()), names)
    }

    fn machine_at(
        &mut self,
        name: &str,
        span: Option<Range<usize>>,
        names: &Names,
    ) -> Option<String> {
        if names.machines.contains(name) {
            Some(name.to_string())
        } else {
            let known: Vec<_> = names.machines.iter().map(String::as_str).collect();
            self.err(
                span,
                format!(
                    "unknown machine `{name}` (machines: {})",
                    list_or_none(&known)
                ),
            );
            None
        }
    }

    fn on(
        &mut self,
        s: &RawStep,
        step_span: Range<usize>,
        names: &Names,
        kind: &str,
    ) -> Option<String> {
        match &s.on {
            Some(on) => self.machine(on, names),
            None => {
                self.err(
                    Some(step_span),
                    format!("a `{kind}` step needs `on = \"<machine>\"`"),
                );
                None
            }
        }
    }

    fn machine_list(
        &mut self,
        list: &Spanned<super::schema::Names>,
        names: &Names,
    ) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut ok = true;
        if list.get_ref().0.is_empty() {
            self.err(Some(list.span()), "the list of machines is empty");
            return None;
        }
        for (name, span) in &list.get_ref().0 {
            let span = span.clone().or_else(|| Some(list.span()));
            match self.machine_at(name, span, names) {
                Some(m) => out.push(m),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A file a host-side step touches: a plain name in the run folder.
    fn run_file(&mut self, value: &Spanned<String>, names: &Names, writes: bool) -> Option<String> {
        let name = value.get_ref();
        if names.external.contains(name) {
            if writes {
                self.err(
                    Some(value.span()),
                    format!("`{name}` is an external disk: it is read-only"),
                );
                return None;
            }
            return Some(name.clone());
        }
        match check_run_folder_name(name) {
            Ok(()) => Some(name.clone()),
            Err(why) => {
                self.err(Some(value.span()), why);
                None
            }
        }
    }

    fn action(
        &mut self,
        s: &RawStep,
        span: Range<usize>,
        names: &Names,
        jobs: &mut BTreeMap<String, String>,
    ) -> Option<Action> {
        if let Some(list) = &s.boot {
            return Some(Action::Boot(self.machine_list(list, names)?));
        }
        if let Some(list) = &s.halt {
            return Some(Action::Halt(self.machine_list(list, names)?));
        }
        if let Some(m) = &s.kill {
            return Some(Action::Kill(self.machine(m, names)?));
        }
        if let Some(cmd) = &s.run {
            let on = self.on(s, span.clone(), names, "run")?;
            let command = cmd.get_ref().clone();
            let background = s.background.as_ref().is_some_and(|b| *b.get_ref());
            return match (&s.id, background) {
                (Some(id), true) => {
                    if jobs.insert(id.get_ref().clone(), on.clone()).is_some() {
                        self.err(
                            Some(id.span()),
                            format!(
                                "a background command `{}` was already started",
                                id.get_ref()
                            ),
                        );
                        return None;
                    }
                    if s.expect.is_some() {
                        self.err(
                            s.expect.as_ref().map(|e| e.span()),
                            "a background command's expectations go on its `wait_job` step",
                        );
                        return None;
                    }
                    Some(Action::Spawn {
                        on,
                        command,
                        id: id.get_ref().clone(),
                    })
                }
                (None, true) => {
                    self.err(
                        s.background.as_ref().map(|b| b.span()),
                        "a background command needs an `id` to wait for",
                    );
                    None
                }
                (Some(id), false) => {
                    self.err(
                        Some(id.span()),
                        "`id` names a background command: add `background = true`",
                    );
                    None
                }
                (None, false) => Some(Action::Run { on, command }),
            };
        }
        if let Some(id) = &s.wait_job {
            return match jobs.get(id.get_ref()) {
                Some(on) => Some(Action::WaitJob {
                    id: id.get_ref().clone(),
                    on: on.clone(),
                }),
                None => {
                    self.err(
                        Some(id.span()),
                        format!(
                            "no background command `{}` started by an earlier step",
                            id.get_ref()
                        ),
                    );
                    None
                }
            };
        }
        if let Some(pattern) = &s.wait_console {
            let on = self.on(s, span, names, "wait_console")?;
            return Some(Action::WaitConsole {
                on,
                pattern: pattern.get_ref().clone(),
            });
        }
        if let Some(d) = &s.sleep {
            return match parse_duration(d.get_ref()) {
                Ok(d) => Some(Action::Sleep(d)),
                Err(e) => {
                    self.err(Some(d.span()), e);
                    None
                }
            };
        }
        if let Some(state) = &s.link {
            let up = match state.get_ref().as_str() {
                "up" => true,
                "down" => false,
                other => {
                    self.err(
                        Some(state.span()),
                        format!("link is \"up\" or \"down\", not `{other}`"),
                    );
                    return None;
                }
            };
            let on = self.on(s, span, names, "link")?;
            let nic = s
                .nic
                .as_ref()
                .map_or_else(|| "eth0".to_string(), |n| n.get_ref().clone());
            if !nic
                .strip_prefix("eth")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                self.err(
                    s.nic.as_ref().map(|n| n.span()),
                    format!("`{nic}` is not a NIC name like eth0"),
                );
                return None;
            }
            return Some(Action::Link { on, nic, up });
        }
        if let Some(file) = &s.write {
            let file = self.run_file(file, names, true)?;
            let offset = match &s.offset {
                Some(o) => self.size(o)?,
                None => 0,
            };
            let bytes = match (&s.data, &s.hex) {
                (Some(d), None) => d.get_ref().as_bytes().to_vec(),
                (None, Some(h)) => match decode_hex(h.get_ref()) {
                    Some(b) => b,
                    None => {
                        self.err(
                            Some(h.span()),
                            "hex must be pairs of hex digits, e.g. \"deadbeef\"",
                        );
                        return None;
                    }
                },
                (Some(_), Some(h)) => {
                    self.err(Some(h.span()), "a write has `data` or `hex`, not both");
                    return None;
                }
                (None, None) => {
                    self.err(
                        Some(span),
                        "a write needs `data = \"...\"` or `hex = \"...\"`",
                    );
                    return None;
                }
            };
            return Some(Action::Write {
                file,
                offset,
                bytes,
            });
        }
        if let Some(from) = &s.copy {
            let from = self.run_file(from, names, false)?;
            let Some(to) = &s.to else {
                self.err(Some(span), "a copy needs `to = \"<file>\"`");
                return None;
            };
            let to = self.run_file(to, names, true)?;
            return Some(Action::Copy {
                from,
                to,
                preserve: s.preserve.as_ref().is_some_and(|b| *b.get_ref()),
                sparse: s.sparse.as_ref().is_some_and(|b| *b.get_ref()),
            });
        }
        if let Some(cow) = &s.mkcow {
            let cow = self.run_file(cow, names, true)?;
            let Some(backing) = &s.backing else {
                self.err(Some(span), "mkcow needs `backing = \"<file>\"`");
                return None;
            };
            let backing = self.run_file(backing, names, false)?;
            return Some(Action::Mkcow { cow, backing });
        }
        if let Some(cow_value) = &s.merge {
            let cow = self.run_file(cow_value, names, false)?;
            let into = match &s.into {
                Some(i) => Some(self.run_file(i, names, true)?),
                None => None,
            };
            // In place (no `into`), the merge writes the backing file: it
            // must not be an external disk. Writing a new image only reads it.
            let backing = match &s.backing {
                Some(b) => Some(self.run_file(b, names, into.is_none())?),
                None => None,
            };
            if into.is_none() && backing.is_none() {
                let why = if names.external.contains(&cow) {
                    Some(format!("`{cow}` is an external disk: merging it in place would write the backing file its header names"))
                } else {
                    names.over_external.get(&cow).map(|b| {
                        format!("`{cow}` is a COW file over the external disk `{b}`, which is read-only: merging it in place would write it")
                    })
                };
                if let Some(why) = why {
                    self.err(
                        Some(cow_value.span()),
                        format!("{why} (merge it into a new image with `into = \"<file>\"`)"),
                    );
                    return None;
                }
            }
            return Some(Action::Merge { cow, into, backing });
        }
        if let Some(cow) = &s.check {
            let cow = self.run_file(cow, names, false)?;
            return Some(Action::Check { cow });
        }
        if let Some(device) = &s.fault {
            return self.fault(s, device, span, names);
        }
        if let Some(sw) = &s.expect_trace {
            if !names.switches.contains(sw.get_ref()) {
                let known: Vec<_> = names.switches.iter().map(String::as_str).collect();
                self.err(
                    Some(sw.span()),
                    format!(
                        "unknown switch `{}` (switches: {})",
                        sw.get_ref(),
                        list_or_none(&known)
                    ),
                );
                return None;
            }
            let contains = s
                .contains
                .as_ref()
                .map(|t| t.get_ref().0.clone())
                .unwrap_or_default();
            let lacks = s
                .lacks
                .as_ref()
                .map(|t| t.get_ref().0.clone())
                .unwrap_or_default();
            if contains.is_empty() && lacks.is_empty() {
                self.err(Some(span), "expect_trace needs `contains` or `lacks`");
                return None;
            }
            return Some(Action::ExpectTrace {
                switch: sw.get_ref().clone(),
                contains,
                lacks,
            });
        }
        None
    }

    /// A `fault` step: a NIC takes `loss`/`duplicate`/`delay`, a disk `fail_write`.
    fn fault(
        &mut self,
        s: &RawStep,
        device: &Spanned<String>,
        span: Range<usize>,
        names: &Names,
    ) -> Option<Action> {
        let on = self.on(s, span, names, "fault")?;
        let name = device.get_ref();
        let number = |prefix: &str| {
            name.strip_prefix(prefix)
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u32>().ok())
        };
        let misplaced = |keys: &[(&'static str, Option<Range<usize>>)]| {
            keys.iter()
                .find_map(|(k, sp)| sp.clone().map(|sp| (*k, sp)))
        };
        if number("eth").is_some() {
            if let Some((key, sp)) =
                misplaced(&[("fail_write", s.fail_write.as_ref().map(|v| v.span()))])
            {
                self.err(
                    Some(sp),
                    format!("`{key}` is a disk fault; `{name}` is a NIC"),
                );
                return None;
            }
            let mut probability = |v: &Option<Spanned<f64>>, key: &str| match v {
                Some(p) if (0.0..=1.0).contains(p.get_ref()) => Some(*p.get_ref()),
                Some(p) => {
                    self.err(
                        Some(p.span()),
                        format!("`{key}` is a probability from 0 to 1, not {}", p.get_ref()),
                    );
                    None
                }
                None => Some(0.0),
            };
            let loss = probability(&s.loss, "loss");
            let duplicate = probability(&s.duplicate, "duplicate");
            let delay = match &s.delay {
                Some(d) => match parse_duration(d.get_ref()) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.err(Some(d.span()), e);
                        None
                    }
                },
                None => Some(Duration::ZERO),
            };
            return Some(Action::Fault {
                on,
                fault: Fault::Port {
                    nic: name.clone(),
                    loss: loss?,
                    duplicate: duplicate?,
                    delay: delay?,
                },
            });
        }
        if let Some(unit) = number("ubd") {
            if let Some((key, sp)) = misplaced(&[
                ("loss", s.loss.as_ref().map(|v| v.span())),
                ("duplicate", s.duplicate.as_ref().map(|v| v.span())),
                ("delay", s.delay.as_ref().map(|v| v.span())),
            ]) {
                self.err(
                    Some(sp),
                    format!("`{key}` is a NIC fault; `{name}` is a disk"),
                );
                return None;
            }
            let fail_write = match &s.fail_write {
                Some(n) if *n.get_ref() == 0 => {
                    self.err(Some(n.span()), "`fail_write` counts writes from 1");
                    return None;
                }
                Some(n) => Some(*n.get_ref()),
                None => None,
            };
            return Some(Action::Fault {
                on,
                fault: Fault::Disk { unit, fail_write },
            });
        }
        self.err(
            Some(device.span()),
            format!("`{name}` is not a device: a NIC like \"eth0\" or a disk like \"ubd1\""),
        );
        None
    }

    fn size(&mut self, value: &Spanned<SizeText>) -> Option<u64> {
        match parse_size(&value.get_ref().0) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(Some(value.span()), e);
                None
            }
        }
    }
}

/// The keys a step sets, with their spans, in [`RawStep`] field order.
fn present_keys(s: &RawStep) -> Vec<(&'static str, Range<usize>)> {
    let mut out = Vec::new();
    macro_rules! keys {
        ($($field:ident),*) => {
            $(if let Some(v) = &s.$field { out.push((stringify!($field), v.span())); })*
        };
    }
    keys!(
        boot,
        run,
        wait_job,
        wait_console,
        sleep,
        link,
        write,
        copy,
        mkcow,
        merge,
        check,
        halt,
        kill,
        expect_trace,
        fault,
        on,
        background,
        id,
        nic,
        offset,
        data,
        hex,
        to,
        preserve,
        sparse,
        backing,
        into,
        contains,
        lacks,
        timeout,
        expect,
        loss,
        duplicate,
        delay,
        fail_write
    );
    out
}

/// Letters, digits, `.`, `_`, `-`; not empty, not `.`/`..`, no leading `-`.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A name that must stay inside the run folder: one plain file name.
fn check_run_folder_name(name: &str) -> Result<(), String> {
    if name.starts_with('/') {
        Err(format!(
            "`{name}` is an absolute path: files live in the run folder"
        ))
    } else if name.split('/').any(|c| c == "..") {
        Err(format!("`{name}` reaches outside the run folder"))
    } else if !is_plain_name(name) {
        Err(format!(
            "`{name}` is not a plain file name (letters, digits, `.`, `_`, `-`)"
        ))
    } else {
        Ok(())
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 || digits.is_empty() {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}
