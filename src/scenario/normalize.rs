//! Normalisation of artifacts before comparing a real `uml` run with the sim
//! (`--backend both`) or with snapshots: what is noise on a real kernel (wall-clock
//! times, printk timestamps, carriage returns) is removed, what is behaviour
//! (order, contents) is kept.

/// A trace with its time column dropped: `<seq> <time> port ...` becomes
/// `<seq> port ...` (the real backend's times are wall-clock).
pub fn trace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(seq), Some(time), Some(rest)) if is_time(time) => {
                out.push_str(seq);
                out.push(' ');
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn is_time(word: &str) -> bool {
    match word.split_once('.') {
        Some((s, us)) => {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && !us.is_empty()
                && us.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// A console transcript without `\r` and without printk timestamps
/// (`[    1.234567] `) at the start of lines.
pub fn console(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text
        .replace("\r\n", "\n")
        .replace('\r', "")
        .split_inclusive('\n')
    {
        out.push_str(strip_printk_time(line));
    }
    out
}

fn strip_printk_time(line: &str) -> &str {
    let Some(rest) = line.strip_prefix('[') else {
        return line;
    };
    let Some(end) = rest.find(']') else {
        return line;
    };
    if is_time(rest[..end].trim_start()) {
        rest[end + 1..]
            .strip_prefix(' ')
            .unwrap_or(&rest[end + 1..])
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn trace_drops_time_only() {
        assert_eq!(
            trace("3 0.001000 port 1 -> 2,3: a > b, ARP\nnot a trace line\n"),
            "3 port 1 -> 2,3: a > b, ARP\nnot a trace line\n"
        );
    }

    #[test]
    fn console_drops_printk_times_and_cr() {
        assert_eq!(
            console("[    0.000000] Linux version 6.1\r\n[x] kept\r\nplain\n"),
            "Linux version 6.1\n[x] kept\nplain\n"
        );
    }

    proptest! {
        #[test]
        fn never_panic(s in "\\PC*") {
            let _ = trace(&s);
            let _ = console(&s);
        }

        #[test]
        fn trace_lines_lose_exactly_their_time(seq in 1u64..1_000_000, us in 0u64..10_000_000_000, rest in "[ -~]{0,40}") {
            let time = std::time::Duration::from_micros(us);
            let line = format!("{seq} {} port {rest}", crate::net::wire::format_time(time));
            prop_assert_eq!(trace(&line), format!("{seq} port {rest}\n"));
        }
    }
}
