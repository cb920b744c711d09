//! `docs/scenario-reference.md`, generated from the schema's documentation
//! tables ([`super::schema`]); a test fails when the committed file is stale
//! (regenerate with `umltest check --reference > docs/scenario-reference.md`).

use std::fmt::Write;

use super::schema::{EXPECT_FIELDS, STEP_KINDS, STEP_OPTIONS, TABLES};
use super::units::format_duration;
use crate::uml::args::UML_DIR;
use crate::uml::image::INIT_PATH;

/// The reference document, in Markdown.
pub fn markdown() -> String {
    let mut s = String::new();
    s.push_str("# Scenario file reference\n\n");
    s.push_str("<!-- Generated from src/scenario/schema.rs by `umltest check --reference`; do not edit. -->\n\n");
    s.push_str(
        "A scenario is a TOML file. Unknown keys are errors; every error names the file, \
         line and column. Sizes are bytes or `300M`-style (binary K/M/G/T, `+N` extra bytes); \
         durations are `5s`, `250ms`, `2m`, at most one day (`1440m`). File names are plain names in the run folder \
         (no `/`, no `..`) unless a disk is `external`.\n\n",
    );
    for t in TABLES {
        let _ = writeln!(s, "## `{}`\n\n{}\n", t.header, t.doc);
        table(&mut s, t.fields.iter().map(|f| (f.key, f.ty, f.doc)));
    }
    s.push_str("## `[[step]]`\n\nSteps run in order. Each has exactly one kind key:\n\n");
    s.push_str("| kind | value | default timeout | options | what it does |\n| --- | --- | --- | --- | --- |\n");
    for k in STEP_KINDS {
        let timeout = k
            .default_timeout_ms
            .map(|ms| format_duration(std::time::Duration::from_millis(ms)))
            .unwrap_or_else(|| "—".into());
        let options = if k.options.is_empty() {
            "—".to_string()
        } else {
            k.options
                .iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} |",
            k.key, k.ty, timeout, options, k.doc
        );
    }
    s.push_str("\n### Step options\n\n");
    table(&mut s, STEP_OPTIONS.iter().map(|f| (f.key, f.ty, f.doc)));
    s.push_str("### `expect = { ... }`\n\nOn `run`, `wait_job` and host-side steps. A host-side step without `expect` must exit 0; a guest command without `expect` is only recorded.\n\n");
    table(&mut s, EXPECT_FIELDS.iter().map(|f| (f.key, f.ty, f.doc)));
    let _ = write!(
        s,
        "## What the harness adds to a command line\n\n\
         The `cmdline` is split into words as a shell would. The harness appends, each only \
         when the scenario does not set it: `con0=fd:0,fd:1`, `con=null`, `umid=<machine>`, \
         `uml_dir={UML_DIR}` (relative: inside the run folder), `init={INIT_PATH}` (the harness \
         init; a machine whose `init=` the scenario sets gets only `wait_console` checks). A NIC \
         word without a MAC gets `fe:fd:00:00:<nic>:<machine#>` (machine# counts from 1 in file \
         order; from machine 256 on, its higher bytes go in the third and fourth: machine 257 \
         gets `fe:fd:00:01:<nic>:01`) filled into its MAC field. Two NICs with one MAC on one \
         switch are an error. Words after `--` stay last. The console artifact \
         starts with the effective command line. Host-side steps (`write`, `copy`, `mkcow`, \
         `merge`, `check`) are recorded with their output in the `host.log` artifact.\n"
    );
    s
}

fn table<'a>(s: &mut String, rows: impl Iterator<Item = (&'a str, &'a str, &'a str)>) {
    s.push_str("| key | type | meaning |\n| --- | --- | --- |\n");
    for (key, ty, doc) in rows {
        let _ = writeln!(s, "| `{key}` | {ty} | {} |", doc.replace('|', "\\|"));
    }
    s.push('\n');
}
