//! What a rule's text says without running it: the fields of `event` it reads, the longest
//! literal window it queries, and the mistakes `gancho check` can see against the configured
//! sources. Scans of the text with comments and strings blanked out; never a second parser.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use crate::diagnostic::Diagnostic;

/// The names a script reads as `event.NAME` (or `event?.NAME`), if every use of the word
/// `event` in it is such a read; `None` otherwise (passed to a function, indexed with `[]`,
/// assigned, or named in a back-quoted string, whose `${…}` may hold code): a scan of the
/// text without its comments and double-quoted strings, so it errs on the side of the whole
/// map.
pub(crate) fn event_fields(text: &str) -> Option<HashSet<String>> {
    let code = without_comments_and_strings(text);
    let text = code.as_str();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    let mut fields = HashSet::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("event") {
        let start = from + found;
        let end = start + "event".len();
        from = end;
        if (start > 0 && ident(bytes[start - 1])) || bytes.get(end).is_some_and(|b| ident(*b)) {
            continue;
        }
        let rest = text[end..].trim_start();
        let rest = rest
            .strip_prefix("?.")
            .or_else(|| rest.strip_prefix('.'))?
            .trim_start();
        let name_len = rest.bytes().take_while(|b| ident(*b)).count();
        // `event.NAME(…)` is a method call on the whole map (`get`, `keys`, a script's own
        // function reading `this`): it needs every field.
        if name_len == 0 || rest[name_len..].trim_start().starts_with('(') {
            return None;
        }
        fields.insert(rest[..name_len].to_owned());
    }
    Some(fields)
}

/// The longest window (ms) written as a literal duration in the rule's window queries
/// (`count`, `exists`, `first`, `last`, `events`): `days(40)`, `hours(24)`, within the call's
/// parentheses. Windows computed at run time are not seen here (the engine warns at their
/// first query instead).
pub(crate) fn longest_literal_window_ms(text: &str) -> Option<i64> {
    const QUERIES: [&str; 5] = ["count", "exists", "first", "last", "events"];
    const UNITS: [(&str, i64); 5] = [
        ("weeks", 604_800_000),
        ("days", 86_400_000),
        ("hours", 3_600_000),
        ("minutes", 60_000),
        ("seconds", 1_000),
    ];
    let code = without_comments_and_strings(text);
    let mut longest = None;
    for query in QUERIES {
        for (start, end) in calls_of(&code, query) {
            let args = &code[start..end];
            for (unit, ms) in UNITS {
                for (a, b) in calls_of(args, unit) {
                    if let Ok(n) = args[a..b].trim().parse::<i64>() {
                        let window = n.saturating_abs().saturating_mul(ms);
                        longest = Some(longest.map_or(window, |l: i64| l.max(window)));
                    }
                }
            }
        }
    }
    longest
}

/// Where the arguments of each call of `name` are in `text`: the (start, end) of the text
/// within its balanced parentheses.
pub(crate) fn calls_of(text: &str, name: &str) -> Vec<(usize, usize)> {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(name) {
        let start = from + at;
        from = start + name.len();
        if start > 0 && ident(bytes[start - 1]) {
            continue;
        }
        let rest = &text[from..];
        let open = from + (rest.len() - rest.trim_start().len());
        if bytes.get(open) != Some(&b'(') {
            continue;
        }
        let mut depth = 0usize;
        for (i, b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        found.push((open + 1, i));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    found
}

/// What `gancho check` knows of a source, to check rules against: the event types it sends
/// (when known), its correlation keys, and in cluster mode how its events are partitioned.
#[derive(Debug, Clone, Default)]
pub struct SourceFacts {
    pub types: Option<BTreeSet<String>>,
    pub keys: BTreeSet<String>,
    /// Its `partition_key` and the keys `colocated` with it; `None` when it has none (a json
    /// source must name one in cluster mode).
    pub partition: Option<(String, BTreeSet<String>)>,
}

/// The mistakes of a rule that compiles but cannot work as written, against the config's
/// sources: an `ON` type whose source is not configured or that the source never sends, and a
/// literal key name in a window query or `expect` that is not one of the source's correlation
/// keys. Each with the file, line and column.
pub(crate) fn lint(
    path: &Path,
    text: &str,
    on_text: &[String],
    sources: &BTreeMap<String, SourceFacts>,
) -> Vec<Diagnostic> {
    let mut found = Vec::new();
    let diag = |at: usize, message: String| Diagnostic::at(path, text, at, message);
    // Where `const ON` is declared (not in a comment or string, not `const ONE`).
    let on_at = {
        let code = without_comments_and_strings(text);
        let mut from = 0;
        let mut found = 0;
        while let Some(at) = code[from..].find("const ON") {
            let at = from + at;
            let next = code.as_bytes().get(at + "const ON".len());
            if next.is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_')) {
                found = at;
                break;
            }
            from = at + 1;
        }
        found
    };
    for pattern in on_text {
        let Some((source, kind)) = pattern.split_once('.') else {
            continue;
        };
        if source.contains('*') || ["timer", "cron"].contains(&source) {
            continue;
        }
        let Some(facts) = sources.get(source) else {
            found.push(diag(
                on_at,
                format!(
                    "ON: {pattern:?}: no source {source:?} in the config (sources: {})",
                    sources.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
            continue;
        };
        if let Some(types) = &facts.types
            && !kind.contains('*')
            && !types.contains(kind)
        {
            found.push(diag(
                on_at,
                format!(
                    "ON: {pattern:?}: {source} sends no type {kind:?} (it sends {})",
                    types.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    // Window queries and `expect` with a literal type and a literal map of keys.
    let code = without_comments_and_strings(text);
    for call in ["count", "exists", "first", "last", "events", "expect"] {
        for (start, end) in calls_of(&code, call) {
            let args = &text[start..end];
            let Some(open) = args.find('"') else {
                continue;
            };
            let Some(close) = args[open + 1..].find('"') else {
                continue;
            };
            let ty = &args[open + 1..open + 1 + close];
            let Some((source, _)) = ty.split_once('.') else {
                continue;
            };
            let Some(facts) = sources.get(source) else {
                continue;
            };
            let Some(map) = code[start..end].find("#{") else {
                continue;
            };
            for (name, at) in literal_map_keys(&code[start + map..end]) {
                if !facts.keys.contains(&name) {
                    found.push(diag(
                        start + map + at,
                        format!(
                            "{call}: {name:?} is not a correlation key of source {source:?} (keys: {})",
                            facts.keys.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
    }
    found
}

/// The key names of a map literal `#{ a: …, b: … }` at the start of `code` (strings
/// blanked, so quoted keys are not seen: they are not checked), with their offsets, at its top
/// level only.
pub(crate) fn literal_map_keys(code: &str) -> Vec<(String, usize)> {
    let bytes = code.as_bytes();
    let mut keys = Vec::new();
    let mut depth = 0usize;
    let mut expecting_key = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'(' | b'[' => {
                depth += 1;
                if depth == 1 {
                    expecting_key = true;
                }
            }
            b'}' | b')' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => expecting_key = true,
            b if depth == 1 && expecting_key && (b.is_ascii_alphabetic() || b == b'_') => {
                let len = bytes[i..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                    .count();
                let rest = code[i + len..].trim_start();
                if rest.starts_with(':') {
                    keys.push((code[i..i + len].to_owned(), i));
                }
                expecting_key = false;
                i += len;
                continue;
            }
            b if !b.is_ascii_whitespace() && depth == 1 => expecting_key = false,
            _ => {}
        }
        i += 1;
    }
    keys
}
/// The text with comments (`//`, nested `/* */`) and the insides of double-quoted and raw
/// (`#"…"#`) strings blanked out; character literals and back-quoted strings are kept (their
/// `${…}` is code).
pub(crate) fn without_comments_and_strings(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'/', Some(b'/')) => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    out.push(b' ');
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                let mut depth = 0;
                while i < bytes.len() {
                    match (bytes[i], bytes.get(i + 1)) {
                        (b'/', Some(b'*')) => {
                            depth += 1;
                            out.extend_from_slice(b"  ");
                            i += 2;
                        }
                        (b'*', Some(b'/')) => {
                            depth -= 1;
                            out.extend_from_slice(b"  ");
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {
                            out.push(b' ');
                            i += 1;
                        }
                    }
                }
            }
            // A raw string: `#"…"#`, with as many `#` on both sides; no escapes inside.
            (b'#', Some(b'#' | b'"')) if bytes[i..].iter().find(|b| **b != b'#') == Some(&b'"') => {
                let hashes = bytes[i..].iter().take_while(|b| **b == b'#').count();
                out.extend(std::iter::repeat_n(b'#', hashes));
                out.push(b'"');
                i += hashes + 1;
                let mut closing = vec![b'"'];
                closing.extend(std::iter::repeat_n(b'#', hashes));
                while i < bytes.len() && !bytes[i..].starts_with(&closing) {
                    out.push(b' ');
                    i += 1;
                }
                let end = (i + closing.len()).min(bytes.len());
                out.extend_from_slice(&bytes[i..end]);
                i = end;
            }
            (b'"', _) => {
                out.push(b'"');
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    let skip = if bytes[i] == b'\\' { 2 } else { 1 };
                    out.extend(std::iter::repeat_n(b' ', skip.min(bytes.len() - i)));
                    i += skip;
                }
                if i < bytes.len() {
                    out.push(b'"');
                    i += 1;
                }
            }
            // A back-quoted string is copied as it is (`${…}` is code; `//` inside is not a
            // comment); rhai reads it verbatim: no backslash escapes.
            (b'`', _) => {
                out.push(b'`');
                i += 1;
                while i < bytes.len() && bytes[i] != b'`' {
                    out.push(bytes[i]);
                    i += 1;
                }
                if i < bytes.len() {
                    out.push(b'`');
                    i += 1;
                }
            }
            // A character literal is copied as it is (a '"' must not open a string).
            (quote @ b'\'', _) => {
                out.push(quote);
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    let skip = if bytes[i] == b'\\' { 2 } else { 1 };
                    out.extend_from_slice(&bytes[i..(i + skip).min(bytes.len())]);
                    i += skip;
                }
                if i < bytes.len() {
                    out.push(quote);
                    i += 1;
                }
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were replaced, by ASCII spaces; anything else was copied whole or
    // blanked whole (multi-byte characters inside comments and strings become spaces).
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod field_tests {
    #![allow(clippy::unwrap_used)]

    use super::{event_fields, longest_literal_window_ms};

    #[test]
    fn literal_windows_of_queries_are_found_and_others_are_not() {
        let cases: &[(&str, Option<i64>)] = &[
            (r#"count("m.open", #{}, days(40))"#, Some(40 * 86_400_000)),
            (
                r#"let a = exists("m.open", hours(24)); let b = events("m.x", #{ k: 1 }, back(days(2)), 10);"#,
                Some(2 * 86_400_000),
            ),
            // A timer's delay is not a window; a commented-out query is not a query.
            (
                r#"after("t", days(400), "f", #{}); // count("m.open", days(90))"#,
                None,
            ),
            (r#"recount("x", days(9))"#, None),
            (
                r#"first("m.open", #{}, between(hours(-1), minutes(30)))"#,
                Some(3_600_000),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(longest_literal_window_ms(text), *expected, "{text}");
        }
    }

    #[test]
    fn only_dotted_reads_of_event_narrow_its_fields() {
        let fields = event_fields(
            "const ON = [\"mailjet.open\"];\nif event.email != () && event ?. keys.MessageID > 0 {\n  let eventual = 1;\n  email(#{ to: event.email });\n}\n",
        )
        .unwrap();
        let mut names: Vec<_> = fields.into_iter().collect();
        names.sort();
        assert_eq!(names, ["email", "keys"]);
        // Comments and plain strings do not count; back-quoted strings do.
        let fields = event_fields(
            "// every event\n/* an event /* nested event */ */ log(\"the \\\"event\\\" \"); log(event.a);",
        )
        .unwrap();
        assert_eq!(fields.into_iter().collect::<Vec<_>>(), ["a"]);
        for whole in [
            "log(event);",
            "let x = event[\"a\"];",
            "log(`the ${event}`);",
            "let q = '\"'; log(event);",
            "log(`a // ${event}`);",
            "log(#\"a\\\"#); log(event);",
            "log(event.get(\"email\"));",
            "log(event.keys());",
            "fn f() { this.x } log(event.f());",
            "let root = `C:\\data\\`; let glob = `logs/*`; let all = event; log(all.amount);",
            "log(##\"x \"# y\"##); log(event);",
            "let e = event; e.x",
            "event.",
        ] {
            assert_eq!(event_fields(whole), None, "{whole}");
        }
        assert_eq!(event_fields("log(1);").unwrap().len(), 0);
    }
}
