//! Machine command lines: splitting the scenario's `cmdline` into words, and the
//! words the harness adds. The additions themselves are
//! [`crate::uml::args::effective_argv`] (one function for both backends, so
//! `/proc/cmdline` is the same on `sim` and `uml`); see its docs for the list.

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
