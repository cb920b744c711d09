//! The scripted-guest helper boots the real kernel and reads back what it printed.

use std::time::Duration;

use umltest::uml::guest::{boot, standard_args, RootFs};

use crate::util;

#[test]
fn scripted_guest_reports_proc_cmdline_and_exit() {
    let Some(tools) = util::guest_tools() else {
        return;
    };
    let dir = util::tempdir();
    RootFs::with_script("echo BEGIN cmdline; cat /proc/cmdline; echo END cmdline")
        .build(&tools, &dir.path().join("root.ext4"))
        .expect("build root image");
    let args = standard_args("root.ext4");
    let out = boot(&tools, dir.path(), &args, Duration::from_secs(60)).expect("boot");
    assert!(!out.timed_out, "guest timed out\n{}", out.dump());
    let cmdline = out
        .section("cmdline")
        .unwrap_or_else(|| panic!("no cmdline section\n{}", out.dump()));
    // UML appends console=tty0 after the user's words (kernel-cmdline.md §1).
    assert_eq!(
        cmdline.trim_end(),
        format!("{} console=tty0", args.join(" ")),
        "{}",
        out.dump()
    );
}
