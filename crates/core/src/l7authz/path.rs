//! Request paths as policy sees them and as the waypoint forwards them: the query removed for
//! matching, `.`/`..` segments resolved (RFC 3986 §5.2.4), percent-encoded unreserved bytes
//! decoded. A path whose meaning an application could read differently from the policy (an
//! encoded `/` or `\`, a backslash, a NUL or control byte, a bad escape) is refused instead:
//! the policy must authorize exactly the path the application serves.

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with /")]
    NotAbsolute,
    #[error("path contains an encoded or literal slash, backslash or control byte")]
    Ambiguous,
    #[error("path contains an invalid percent escape")]
    BadEscape,
}

/// The normalized path (without the query) and the query (with its `?`), to forward.
pub fn normalize(target: &str) -> Result<(String, &str), PathError> {
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, ""),
    };
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(path)?;
    Ok((remove_dot_segments(&decoded), query))
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' || b.is_ascii_control() || b == b'#' {
            return Err(PathError::Ambiguous);
        }
        if b != b'%' {
            // Non-ASCII bytes arrive only as part of valid UTF-8 (the input is a str).
            let ch = path[i..].chars().next().ok_or(PathError::BadEscape)?;
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        let (hi, lo) = match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (Some(h), Some(l)) => (h, l),
            _ => return Err(PathError::BadEscape),
        };
        let v = hi * 16 + lo;
        if v == b'/' || v == b'\\' || v.is_ascii_control() {
            return Err(PathError::Ambiguous);
        }
        if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
            out.push(v as char);
        } else {
            // Kept encoded, upper-case: one spelling for each byte.
            out.push('%');
            out.push_str(&format!("{v:02X}"));
        }
        i += 3;
    }
    Ok(out)
}

fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Expected<'a> = Result<(&'a str, &'a str), PathError>;

    #[test]
    fn normalization_table() {
        #[rustfmt::skip]
        let cases: Vec<(&str, Expected<'_>)> = vec![
            ("/", Ok(("/", ""))),
            ("/a/b", Ok(("/a/b", ""))),
            ("/a/b?x=1&y=/..", Ok(("/a/b", "?x=1&y=/.."))),
            ("/a/./b", Ok(("/a/b", ""))),
            ("/a/../b", Ok(("/b", ""))),
            ("/public/../admin", Ok(("/admin", ""))),
            ("/../../etc", Ok(("/etc", ""))),
            ("/a/b/..", Ok(("/a/", ""))),
            ("/a/.", Ok(("/a/", ""))),
            ("/a//b", Ok(("/a//b", ""))),
            ("/%61dmin", Ok(("/admin", ""))),
            ("/%2e%2e/admin", Ok(("/admin", ""))),
            ("/a%20b", Ok(("/a%20b", ""))),
            ("/a%3f", Ok(("/a%3F", ""))),
            ("/caf\u{e9}", Ok(("/caf\u{e9}", ""))),
            ("/a%2fb", Err(PathError::Ambiguous)),
            ("/a%5Cb", Err(PathError::Ambiguous)),
            ("/a\\b", Err(PathError::Ambiguous)),
            ("/a%00", Err(PathError::Ambiguous)),
            ("/a%zz", Err(PathError::BadEscape)),
            ("/a%4", Err(PathError::BadEscape)),
            ("admin", Err(PathError::NotAbsolute)),
            ("*", Err(PathError::NotAbsolute)),
        ];
        for (input, want) in cases {
            let got = normalize(input);
            let got = got.as_ref().map(|(p, q)| (p.as_str(), *q)).map_err(|e| e.clone());
            assert_eq!(got, want, "{input}");
        }
    }
}
