//! Normalisation of artifacts before comparing a real `uml` run with the sim
//! (`--backend both`) or with snapshots: what is noise on a real kernel (wall-clock
//! times, printk timestamps, carriage returns) is removed, what is behaviour
//! (order, contents) is kept.

/// A trace with its time column dropped: `<seq> <time> port ...` becomes
/// `<seq> port ...` (the real backend's times are wall-clock). ICMP echo ids
/// are numbered in order of first appearance (`id #1`): a real arping draws
/// them at random, while a reply echoing its request's id is behaviour and
/// stays visible.
pub fn trace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut ids: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let line = match (parts.next(), parts.next(), parts.next()) {
            (Some(seq), Some(time), Some(rest)) if is_time(time) => format!("{seq} {rest}"),
            _ => line.to_string(),
        };
        out.push_str(&number_icmp_id(&line, &mut ids));
        out.push('\n');
    }
    out
}

/// `ICMP echo request, id 58478, seq 0` → `ICMP echo request, id #1, seq 0`,
/// the number being the id's position in `ids` (appended when new).
fn number_icmp_id(line: &str, ids: &mut Vec<String>) -> String {
    const KEYS: [&str; 2] = ["ICMP echo request, id ", "ICMP echo reply, id "];
    let Some((key_end, digits)) = KEYS.iter().find_map(|k| {
        let end = line.find(k)? + k.len();
        let n = line[end..].bytes().take_while(u8::is_ascii_digit).count();
        (n > 0 && line[end + n..].starts_with(',')).then_some((end, n))
    }) else {
        return line.to_string();
    };
    let id = &line[key_end..key_end + digits];
    let number = match ids.iter().position(|x| x == id) {
        Some(i) => i + 1,
        None => {
            ids.push(id.to_string());
            ids.len()
        }
    };
    format!("{}#{number}{}", &line[..key_end], &line[key_end + digits..])
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
        out.push_str(&redact_backing_mtime(strip_printk_time(line)));
    }
    out
}

/// Every line of `text` with the backing mtime of an mtime mismatch redacted
/// (see [`redact_backing_mtime`]), for artifacts other than consoles that quote
/// it (`host.log`'s `check` output, a disk diff that cannot open its COW file).
pub fn backing_mtimes(text: &str) -> String {
    text.split_inclusive('\n')
        .map(redact_backing_mtime)
        .collect()
}

/// In the kernel's `mtime mismatch (HEADER vs BACKING) of COW header vs backing
/// file` (and `umltest cow check`'s line quoting it), BACKING is the backing
/// file's mtime: the host's clock when a careless copy made it on a real run, the
/// sim's virtual clock otherwise. Every occurrence of it in the line becomes
/// `<mtime>`; the header's value (fixed by the harness) stays.
fn redact_backing_mtime(line: &str) -> std::borrow::Cow<'_, str> {
    const KEY: &str = "mtime mismatch (";
    let backing = line.find(KEY).and_then(|at| {
        let rest = &line[at + KEY.len()..];
        let (_, after) = rest.split_once(" vs ")?;
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        (digits > 0 && after[digits..].starts_with(')')).then(|| &after[..digits])
    });
    match backing {
        Some(b) => {
            let mut out = String::with_capacity(line.len());
            let mut rest = line;
            while let Some(i) = rest.find(b) {
                let before = rest[..i].bytes().next_back();
                let after = rest[i + b.len()..].bytes().next();
                out.push_str(&rest[..i]);
                // Only the whole number, not a longer one containing it.
                if before.is_some_and(|c| c.is_ascii_digit())
                    || after.is_some_and(|c| c.is_ascii_digit())
                {
                    out.push_str(b);
                } else {
                    out.push_str("<mtime>");
                }
                rest = &rest[i + b.len()..];
            }
            out.push_str(rest);
            std::borrow::Cow::Owned(out)
        }
        None => std::borrow::Cow::Borrowed(line),
    }
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
    fn icmp_ids_are_numbered_by_first_appearance() {
        let t = "1 0.1 port 1 -> 2: x: ICMP echo request, id 58478, seq 0, length 28\n\
                 2 0.2 port 2 -> 1: x: ICMP echo reply, id 58478, seq 0, length 28\n\
                 3 0.3 port 1 -> 2: x: ICMP echo request, id 7, seq 1, length 28\n\
                 4 0.4 port 2 -> 1: x: ICMP echo reply, id 58478, seq 1, length 28\n\
                 5 0.5 port 1 -> 2: x: ICMP echo request, id 12x, seq 1\n";
        assert_eq!(
            trace(t),
            "1 port 1 -> 2: x: ICMP echo request, id #1, seq 0, length 28\n\
             2 port 2 -> 1: x: ICMP echo reply, id #1, seq 0, length 28\n\
             3 port 1 -> 2: x: ICMP echo request, id #2, seq 1, length 28\n\
             4 port 2 -> 1: x: ICMP echo reply, id #1, seq 1, length 28\n\
             5 port 1 -> 2: x: ICMP echo request, id 12x, seq 1\n"
        );
    }

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

    #[test]
    fn console_redacts_the_backing_mtime_of_a_mismatch() {
        assert_eq!(
            console(
                "[ 1.0] mtime mismatch (1700000000 vs 1764400000) of COW header vs backing file\n"
            ),
            "mtime mismatch (1700000000 vs <mtime>) of COW header vs backing file\n"
        );
        assert_eq!(
            console("error: mtime mismatch (1 vs 17) of x: the mtime (17) not (170)\nmtime 17\n"),
            "error: mtime mismatch (1 vs <mtime>) of x: the mtime (<mtime>) not (170)\nmtime 17\n"
        );
        assert_eq!(
            console("mtime mismatch (1 vs x)\n"),
            "mtime mismatch (1 vs x)\n"
        );
        assert_eq!(
            backing_mtimes(
                "cannot read it: c.cow: mtime mismatch (1 vs 99) of COW header\nok 99\n"
            ),
            "cannot read it: c.cow: mtime mismatch (1 vs <mtime>) of COW header\nok 99\n"
        );
    }

    proptest! {
        #[test]
        fn never_panic(s in "\\PC*") {
            let _ = trace(&s);
            let _ = console(&s);
            let _ = backing_mtimes(&s);
        }

        #[test]
        fn trace_lines_lose_exactly_their_time(seq in 1u64..1_000_000, us in 0u64..10_000_000_000, rest in "[ -~]{0,40}") {
            let time = std::time::Duration::from_micros(us);
            let line = format!("{seq} {} port {rest}", crate::net::wire::format_time(time));
            prop_assert_eq!(trace(&line), format!("{seq} port {rest}\n"));
        }
    }
}
