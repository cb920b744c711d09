//! glibc `getopt` as the guest's dynamically linked programs (arping, tcpdump)
//! see it: clustered flags, `-cN` and `-c N`, operands permuted after options,
//! `--` ends options, and glibc's two error messages.

/// One option occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    pub flag: char,
    pub arg: Option<String>,
}

/// Options in command-line order, then the operands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub opts: Vec<Opt>,
    pub operands: Vec<String>,
}

/// Parses `args` with `optstring` (`c:` takes an argument). `Err` holds the
/// message glibc prints to stderr, with `prog` as argv\[0\].
pub fn getopt(prog: &str, args: &[String], optstring: &str) -> Result<Parsed, String> {
    let takes_arg = |c: char| -> Option<bool> {
        let at = optstring.find(c)?;
        Some(optstring[at + c.len_utf8()..].starts_with(':'))
    };
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            parsed.operands.extend(args[i..].iter().cloned());
            break;
        }
        if !a.starts_with('-') || a == "-" {
            parsed.operands.push(a.clone());
            continue;
        }
        if a.starts_with("--") {
            return Err(format!("{prog}: unrecognized option '{a}'\n"));
        }
        let body: Vec<char> = a.chars().skip(1).collect();
        let mut j = 0;
        while j < body.len() {
            let c = body[j];
            j += 1;
            let kind = if c == ':' { None } else { takes_arg(c) };
            match kind {
                None => return Err(format!("{prog}: invalid option -- '{c}'\n")),
                Some(false) => parsed.opts.push(Opt { flag: c, arg: None }),
                Some(true) => {
                    let rest: String = body[j..].iter().collect();
                    let arg = if !rest.is_empty() {
                        rest
                    } else if let Some(next) = args.get(i) {
                        i += 1;
                        next.clone()
                    } else {
                        return Err(format!("{prog}: option requires an argument -- '{c}'\n"));
                    };
                    parsed.opts.push(Opt {
                        flag: c,
                        arg: Some(arg),
                    });
                    break;
                }
            }
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn clustered_flags_and_permuted_operands() {
        let p = getopt("arping", &v("-0i eth0 1.1.1.1 -c1"), "0c:i:").unwrap();
        assert_eq!(
            p.opts,
            [
                Opt {
                    flag: '0',
                    arg: None
                },
                Opt {
                    flag: 'i',
                    arg: Some("eth0".into())
                },
                Opt {
                    flag: 'c',
                    arg: Some("1".into())
                },
            ]
        );
        assert_eq!(p.operands, ["1.1.1.1"]);
    }

    /// Messages as the real arping printed them (argv\[0\] aside).
    #[test]
    fn glibc_messages() {
        assert_eq!(
            getopt("arping", &v("-Y"), "0c:"),
            Err("arping: invalid option -- 'Y'\n".into())
        );
        assert_eq!(
            getopt("arping", &v("-c"), "0c:"),
            Err("arping: option requires an argument -- 'c'\n".into())
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(args in proptest::collection::vec("\\PC{0,6}", 0..6)) {
            let _ = getopt("p", &args, "0aAbBC:c:i:");
        }
    }
}
