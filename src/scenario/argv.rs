//! What the harness adds to a machine's command line. Both backends call
//! [`effective_argv`], so `/proc/cmdline` is the same on `sim` and `uml`.
//!
//! The scenario's words come first, unchanged and in order; the harness then
//! appends, each only when the scenario does not set that option itself:
//! - `con=null con0=fd:0,fd:1`: the console on the process's stdin/stdout pipes.
//!   Skipped entirely when the scenario sets `con=` or any `conN=`, because a
//!   later `con=null` would override the scenario's own console choices.
//! - `umid=<machine>`: the machine's name identifies it (mconsole socket folder).
//! - `uml_dir=<run folder>`: the umid folders live in the run folder (keep its
//!   path short: unix socket paths are limited to 108 bytes).
//! - `init=`[`HARNESS_INIT`]: the harness's init, which drives the console
//!   protocol. A scenario that sets `init=` gets only boot-log expectations
//!   (`wait_console`), since no harness shell runs in its guest.

use std::path::Path;

/// The path of the harness init inside the guest image (the `uml` backend's
/// image builder installs it there; the sim answers to it).
pub const HARNESS_INIT: &str = "/umltest/init";

/// Splits a scenario's command line into words as a shell would.
/// On error: (byte offset into `cmdline`, message).
pub fn split_words(cmdline: &str) -> Result<Vec<String>, (usize, String)> {
    // Until the cmdline module's shell splitter lands, accept only what plain
    // whitespace splitting handles exactly, and say so for anything else.
    if let Some(at) = cmdline.find(['\'', '"', '\\']) {
        return Err((
            at,
            "quotes and backslashes in a command line are not supported yet".to_string(),
        ));
    }
    Ok(cmdline.split_whitespace().map(str::to_string).collect())
}

/// True if `argv` sets the kernel option `key` (`key=...` or a bare `key`).
fn sets(argv: &[String], key: &str) -> bool {
    argv.iter().any(|w| {
        w == key
            || w.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with('='))
    })
}

/// True if `argv` sets `con=` or any `conN=`.
fn sets_console(argv: &[String]) -> bool {
    argv.iter().any(|w| {
        w.strip_prefix("con").is_some_and(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            rest[digits..].starts_with('=')
        })
    })
}

/// The full argv of machine `machine` (without the program name): the
/// scenario's words followed by the harness additions described above.
pub fn effective_argv(scenario_argv: &[String], machine: &str, run_dir: &Path) -> Vec<String> {
    let mut argv = scenario_argv.to_vec();
    if !sets_console(scenario_argv) {
        argv.push("con=null".into());
        argv.push("con0=fd:0,fd:1".into());
    }
    if !sets(scenario_argv, "umid") {
        argv.push(format!("umid={machine}"));
    }
    if !sets(scenario_argv, "uml_dir") {
        argv.push(format!("uml_dir={}", run_dir.display()));
    }
    if !sets(scenario_argv, "init") {
        argv.push(format!("init={HARNESS_INIT}"));
    }
    argv
}

/// True if the harness init runs in this machine (the scenario did not set `init=`).
pub fn has_harness_init(scenario_argv: &[String]) -> bool {
    !sets(scenario_argv, "init")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn appends_what_is_missing() {
        let argv = effective_argv(
            &words("mem=64M ubd0=h1.cow,fs.ext4"),
            "h1",
            Path::new("/tmp/r"),
        );
        assert_eq!(
            argv.join(" "),
            "mem=64M ubd0=h1.cow,fs.ext4 con=null con0=fd:0,fd:1 umid=h1 uml_dir=/tmp/r init=/umltest/init"
        );
    }

    #[test]
    fn never_overrides() {
        let argv = effective_argv(
            &words("con1=null umid=x uml_dir=/u init=/bin/sh"),
            "h1",
            Path::new("/tmp/r"),
        );
        assert_eq!(argv.join(" "), "con1=null umid=x uml_dir=/u init=/bin/sh");
        // `initrd=` is not `init=`, `console=` is not `con=`.
        let argv = effective_argv(&words("initrd=x console=tty0"), "h", Path::new("/r"));
        assert!(argv.contains(&"init=/umltest/init".to_string()));
        assert!(argv.contains(&"con=null".to_string()));
        assert!(has_harness_init(&words("initrd=x")));
        assert!(!has_harness_init(&words("init=/init")));
    }
}
