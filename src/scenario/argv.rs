//! Machine command lines: the scenario's `cmdline` is split into words by
//! [`crate::cmdline::split_shell_words`] (as a shell would), and the harness's
//! additions are [`crate::uml::args::effective_argv`] (one function for both
//! backends, so `/proc/cmdline` is the same on `sim` and `uml`).

/// Splits a scenario's command line into words as a shell would.
/// On error: (byte offset into `cmdline`, message).
pub fn split_words(cmdline: &str) -> Result<Vec<String>, (usize, String)> {
    crate::cmdline::split_shell_words(cmdline).map_err(|e| (e.offset(), e.to_string()))
}
