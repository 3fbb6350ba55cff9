//! Text the daemon passes on to its logs and audit records: the characters that could end
//! a line where a reader sees none, or reorder what a reader sees, are refused in what
//! callers name, and escaped wherever else they reach an audit record (a token's key
//! labels, OCI's answers).

/// Whether `c` is a control character, a line or paragraph separator (U+2028, U+2029), or
/// a bidirectional control (marks, embeddings, overrides, isolates: U+061C, U+200E-U+200F,
/// U+202A-U+202E, U+2066-U+2069), which can make a log line read as something else.
pub(crate) fn is_deceptive(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Whether `s` holds any character of [`is_deceptive`].
pub(crate) fn has_deceptive(s: &str) -> bool {
    s.chars().any(is_deceptive)
}

/// `value` as one JSON line in which the characters of [`is_deceptive`] are escaped
/// (`\uXXXX`), as JSON allows: the record reads back the same, and no log viewer sees a
/// line break or a reordering inside it.
pub(crate) fn json_line<T: serde::Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Escaping);
    value.serialize(&mut ser)?;
    Ok(out)
}

struct Escaping;

impl serde_json::ser::Formatter for Escaping {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        // Every character of `is_deceptive` that serde_json leaves to us (it escapes C0
        // controls itself) is DEL or starts with one of these bytes (C1 controls: C2;
        // U+061C: D8; the rest: E2): most fragments have none and go out as they are.
        if !fragment
            .bytes()
            .any(|b| matches!(b, 0x7F | 0xC2 | 0xD8 | 0xE2))
        {
            return w.write_all(fragment.as_bytes());
        }
        let mut rest = fragment;
        while let Some(i) = rest.find(is_deceptive) {
            w.write_all(&rest.as_bytes()[..i])?;
            let c = rest[i..].chars().next().expect("found at i");
            // serde_json has escaped C0 controls and DEL is harmless in JSON: the rest here
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(w, "\\u{u:04x}")?;
            }
            rest = &rest[i + c.len_utf8()..];
        }
        w.write_all(rest.as_bytes())
    }
}

/// The causes of `e` (its `source()` chain, not `e` itself), each as ": cause": for one-line
/// messages that keep the reason a library error wraps, e.g. "connection refused".
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Libraries often wrap an error in one that says the same: said once.
        let said = c.to_string();
        if said != last && !last.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        last = said;
        cur = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_and_overrides_are_escaped_and_read_back() {
        let v = serde_json::json!({"label": "evil\u{2028}{\"outcome\":\"allowed\"}\u{202E}txt.exe\u{85}"});
        let line = json_line(&v).unwrap();
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(
            !text.contains('\u{2028}') && !text.contains('\u{202E}') && !text.contains('\u{85}'),
            "{text}"
        );
        assert!(
            text.contains("\\u2028") && text.contains("\\u202e"),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, v);
        assert!(has_deceptive("a\u{2066}b") && !has_deceptive("demo-aes-256 é"));
    }
}
