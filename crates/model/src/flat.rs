//! A fast reader for the shape nearly every `pulse-v1` message has: one flat
//! JSON object of plain strings, non-negative integers, numbers with a
//! fraction, booleans and nulls. It reads such a message in one pass over its
//! bytes, where serde's derived reader costs a quarter of all the engine's
//! time (docs/BENCHMARKS.md). Anything else (an escape, a nested value, a
//! negative or huge number, a repeated field, a syntax error) makes it give up,
//! and the caller reads the message with serde as before: so every message is
//! read to exactly what serde would read (`flat_agrees_with_serde` checks it),
//! and every error still comes from serde.

use std::borrow::Cow;

use crate::scalar::Scalar;

/// JSON's whitespace (RFC 8259; not form feed, which `is_ascii_whitespace` allows).
fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Reads `value` as a flat object, giving each field to `field` (a null as
/// `None`); `None` when the message is not of that shape or `field`
/// refused one (returned `false`: a repeated field, say).
pub(crate) fn read_flat<'a>(value: &'a [u8], mut field: impl FnMut(&'a str, Option<Scalar<'a>>) -> bool) -> Option<()> {
    // Checked once for the whole message, so that strings can be borrowed
    // without checking each (invalid UTF-8 anywhere is an error for serde too).
    let s = std::str::from_utf8(value).ok()?;
    let b = s.as_bytes();
    let mut i = ws(b, 0);
    (b.get(i) == Some(&b'{')).then_some(())?;
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (ws(b, i + 1) == b.len()).then_some(());
    }
    loop {
        let (key, next) = string(s, i)?;
        i = ws(b, next);
        (b.get(i) == Some(&b':')).then_some(())?;
        let (v, next) = scalar(s, ws(b, i + 1))?;
        field(key, v).then_some(())?;
        i = ws(b, next);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return (ws(b, i + 1) == b.len()).then_some(()),
            _ => return None,
        }
    }
}

/// A string without escapes or control characters at `i`, and the index
/// after it.
fn string(s: &str, i: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    (b.get(i) == Some(&b'"')).then_some(())?;
    let len = b[i + 1..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    let end = i + 1 + len;
    // The quote is ASCII, so `i + 1` and `end` are character boundaries.
    (b[end] == b'"').then(|| (&s[i + 1..end], end + 1))
}

/// A value at `i` that is not an object or an array, and the index after it.
fn scalar(s: &str, i: usize) -> Option<(Option<Scalar<'_>>, usize)> {
    let b = s.as_bytes();
    let word = |w: &str, v: Option<Scalar<'static>>| b[i..].starts_with(w.as_bytes()).then_some((v, i + w.len()));
    match *b.get(i)? {
        b'"' => string(s, i).map(|(v, end)| (Some(Scalar::Str(Cow::Borrowed(v))), end)),
        b't' => word("true", Some(Scalar::Bool(true))),
        b'f' => word("false", Some(Scalar::Bool(false))),
        b'n' => word("null", None),
        b'0'..=b'9' => number(s, i).map(|(v, end)| (Some(v), end)),
        _ => None,
    }
}

/// A non-negative number at `i` in JSON's grammar, and the index after it.
fn number(s: &str, i: usize) -> Option<(Scalar<'_>, usize)> {
    let b = s.as_bytes();
    let digits = |from: usize| from + b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let int_end = digits(i);
    // JSON has no leading zeros.
    (b[i] != b'0' || int_end == i + 1).then_some(())?;
    let mut end = int_end;
    if b.get(end) == Some(&b'.') {
        let frac_end = digits(end + 1);
        (frac_end > end + 1).then_some(())?;
        end = frac_end;
    }
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(end + 1), Some(b'+' | b'-')));
        let exp_end = digits(end + 1 + sign);
        (exp_end > end + 1 + sign).then_some(())?;
        end = exp_end;
    }
    let text = &s[i..end];
    if end == int_end {
        // Up to 18 digits always fit an i64; longer ones are serde's to read.
        if text.len() > 18 {
            return None;
        }
        return Some((Scalar::Int(text.parse().ok()?), end));
    }
    // Correctly rounded, as serde_json reads with `float_roundtrip`; out of
    // range is an error there, so serde's to report.
    let x: f64 = text.parse().ok()?;
    x.is_finite().then_some((Scalar::Float(x), end))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What serde reads: every field of a flat object, or `None` where it
    /// refuses the message or finds something other than a scalar.
    fn serde_fields(value: &[u8]) -> Option<Vec<(String, Option<Scalar<'_>>)>> {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(value).ok()?;
        map.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::Bool(b) => Some(Scalar::Bool(b)),
                    serde_json::Value::String(s) => Some(Scalar::Str(Cow::Owned(s))),
                    serde_json::Value::Number(n) => Some(match n.as_i64() {
                        Some(i) => Scalar::Int(i),
                        None => Scalar::Float(n.as_f64()?),
                    }),
                    _ => return None,
                };
                Some((k, v))
            })
            .collect()
    }

    fn flat_fields(value: &[u8]) -> Option<Vec<(String, Option<Scalar<'_>>)>> {
        let mut fields = Vec::new();
        read_flat(value, |k, v| {
            fields.push((k.to_owned(), v));
            true
        })?;
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Some(fields)
    }

    /// Whenever the fast reader reads a message, serde reads the same fields
    /// from it (repeated keys aside: the caller refuses those).
    fn agrees(value: &[u8]) {
        let Some(flat) = flat_fields(value) else { return };
        let keys: std::collections::BTreeSet<&str> = flat.iter().map(|(k, _)| k.as_str()).collect();
        if keys.len() < flat.len() {
            return;
        }
        let serde = serde_fields(value);
        assert_eq!(Some(&flat), serde.as_ref(), "{:?}", String::from_utf8_lossy(value));
    }

    #[test]
    fn it_reads_a_flat_message_and_gives_up_on_anything_else() {
        let msg = br#" {"v":1,"id":"e-1","ts":1743465600000,"minutes":12.25,"percent":1e2,"pass":true,"org":null} "#;
        let fields = flat_fields(msg).expect("flat");
        assert_eq!(fields.len(), 7);
        assert!(fields.contains(&("minutes".to_owned(), Some(Scalar::Float(12.25)))));
        assert!(fields.contains(&("percent".to_owned(), Some(Scalar::Float(100.0)))));
        assert!(fields.contains(&("org".to_owned(), None)));
        agrees(msg);
        for other in [
            &br#"{"id":"a\"b"}"#[..],
            br#"{"id":{"x":1}}"#,
            br#"{"n":-1}"#,
            br#"{"n":01}"#,
            br#"{"n":1.}"#,
            br#"{"n":1e400}"#,
            br#"{"n":12345678901234567890}"#,
            br#"{"n":1} x"#,
            b"{\"n\":1}\x0c",
            br#"[1]"#,
            br#"{"n":1,}"#,
            b"{\"id\":\"\xff\"}",
        ] {
            assert!(flat_fields(other).is_none(), "{:?}", String::from_utf8_lossy(other));
        }
    }

    proptest! {
        /// Messages built from JSON's pieces, well-formed or not.
        #[test]
        fn flat_agrees_with_serde(pieces in proptest::collection::vec(prop_oneof![
            Just("{".to_owned()), Just("}".to_owned()), Just(",".to_owned()), Just(":".to_owned()),
            Just(" ".to_owned()), Just("\n".to_owned()), Just("\"k\"".to_owned()), Just("\"v\"".to_owned()),
            Just("null".to_owned()), Just("true".to_owned()), Just("[]".to_owned()), Just("\"\\n\"".to_owned()),
            "[a-z]{0,3}".prop_map(|s| format!("\"{s}\"")),
            "-?[0-9]{1,20}(\\.[0-9]{0,20})?([eE][+-]?[0-9]{0,4})?",
            any::<f64>().prop_map(|x| x.to_string()),
        ], 0..14)) {
            agrees(pieces.concat().as_bytes());
        }

        #[test]
        fn flat_objects_agree_with_serde(fields in proptest::collection::vec(("[a-e]{1,2}", prop_oneof![
            "[ -~&&[^\"\\\\]]{0,8}".prop_map(|s| format!("\"{s}\"")),
            (0u64..u64::MAX).prop_map(|n| n.to_string()),
            (0.0f64..1e9).prop_map(|x| x.to_string()),
            Just("false".to_owned()),
        ]), 0..8)) {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let msg = format!("{{{}}}", body.join(","));
            agrees(msg.as_bytes());
            prop_assert!(flat_fields(msg.as_bytes()).is_some() || fields.iter().any(|(_, v)| v.len() > 18), "{msg}");
        }
    }
}
