//! Syntax colouring of a rule's source for its page: the text cut into spans (comment,
//! string, number, keyword, function name, plain) that the page renders as escaped text in
//! classed elements. It only colours: a file rhai would refuse is still cut into spans, and the
//! concatenated spans are always the source itself.

/// What a span of source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Comment,
    Str,
    Number,
    Keyword,
    /// A name followed by `(`.
    Call,
}

impl Kind {
    /// The CSS class the page gives it (`None`: plain text).
    pub fn class(self) -> Option<&'static str> {
        match self {
            Kind::Plain => None,
            Kind::Comment => Some("hl-c"),
            Kind::Str => Some("hl-s"),
            Kind::Number => Some("hl-n"),
            Kind::Keyword => Some("hl-k"),
            Kind::Call => Some("hl-f"),
        }
    }
}

/// rhai's keywords (and the literals `true`, `false`).
const KEYWORDS: &[&str] = &[
    "let",
    "const",
    "if",
    "else",
    "switch",
    "do",
    "while",
    "until",
    "loop",
    "for",
    "in",
    "break",
    "continue",
    "return",
    "throw",
    "try",
    "catch",
    "fn",
    "private",
    "true",
    "false",
    "this",
    "global",
    "is_def_fn",
    "is_def_var",
    "is_shared",
    "Fn",
    "call",
    "curry",
    "type_of",
    "print",
    "debug",
];

/// `source` cut into lines, each a list of spans; a span never crosses a line end (so each
/// line can be numbered), and the spans of all lines joined with `\n` are `source`.
pub fn lines(source: &str) -> Vec<Vec<(Kind, &str)>> {
    let mut lines: Vec<Vec<(Kind, &str)>> = vec![Vec::new()];
    for (kind, text) in spans(source) {
        let mut parts = text.split('\n');
        if let Some(first) = parts.next()
            && !first.is_empty()
            && let Some(line) = lines.last_mut()
        {
            line.push((kind, first));
        }
        for part in parts {
            lines.push(if part.is_empty() {
                Vec::new()
            } else {
                vec![(kind, part)]
            });
        }
    }
    if source.ends_with('\n') && lines.len() > 1 && lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    lines
}

/// `source` cut into spans, in order.
fn spans<'a>(source: &'a str) -> Vec<(Kind, &'a str)> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut plain_from) = (0, 0);
    let push = |out: &mut Vec<(Kind, &'a str)>, kind, from: usize, to: usize| {
        if to > from
            && let Some(text) = source.get(from..to)
        {
            out.push((kind, text));
        }
    };
    while i < bytes.len() {
        let rest = &bytes[i..];
        let (kind, len) = if rest.starts_with(b"//") {
            (
                Kind::Comment,
                rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len()),
            )
        } else if rest.starts_with(b"/*") {
            let end = rest[2..]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |p| p + 4);
            (Kind::Comment, end)
        } else if matches!(rest[0], b'"' | b'`' | b'\'') {
            (Kind::Str, quoted(rest))
        } else if rest[0].is_ascii_digit() {
            let len = rest
                .iter()
                .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.'))
                .unwrap_or(rest.len());
            (Kind::Number, len)
        } else if rest[0].is_ascii_alphabetic() || rest[0] == b'_' {
            let len = rest
                .iter()
                .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
                .unwrap_or(rest.len());
            let word = &source[i..i + len];
            let kind = if KEYWORDS.contains(&word) {
                Kind::Keyword
            } else if rest[len..].first() == Some(&b'(') {
                Kind::Call
            } else {
                Kind::Plain
            };
            (kind, len)
        } else {
            // Plain: one character (whole, for UTF-8).
            let len = source[i..].chars().next().map_or(1, char::len_utf8);
            (Kind::Plain, len)
        };
        if kind == Kind::Plain {
            i += len;
            continue;
        }
        push(&mut out, Kind::Plain, plain_from, i);
        push(&mut out, kind, i, i + len);
        i += len;
        plain_from = i;
    }
    push(&mut out, Kind::Plain, plain_from, bytes.len());
    out
}

/// The length of the string literal `rest` starts with, its quotes included (to the end when
/// it is not closed).
fn quoted(rest: &[u8]) -> usize {
    let quote = rest[0];
    let mut i = 1;
    while i < rest.len() {
        match rest[i] {
            b'\\' if quote != b'`' => i += 2,
            b if b == quote => return i + 1,
            b'\n' if quote != b'`' => return i,
            _ => i += 1,
        }
    }
    rest.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(lines: &[Vec<(Kind, &str)>]) -> String {
        lines
            .iter()
            .map(|l| l.iter().map(|(_, t)| *t).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_kind_is_found_and_the_text_is_kept_whole() {
        let source = "// open within 24h\nlet n = count(\"mailjet.open\", #{ email: e.email }, 24h);\nif n > 0 { send(\"a\\\"b\") } /* ñ\nend */ x\n";
        let lines = lines(source);
        assert_eq!(joined(&lines) + "\n", source);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], vec![(Kind::Comment, "// open within 24h")]);
        assert!(lines[1].contains(&(Kind::Keyword, "let")));
        assert!(lines[1].contains(&(Kind::Call, "count")));
        assert!(lines[1].contains(&(Kind::Str, "\"mailjet.open\"")));
        assert!(lines[1].contains(&(Kind::Number, "24h")));
        assert!(lines[2].contains(&(Kind::Str, "\"a\\\"b\"")));
        assert!(lines[2].contains(&(Kind::Comment, "/* ñ")));
        assert_eq!(lines[3][0], (Kind::Comment, "end */"));
    }

    #[test]
    fn broken_sources_are_still_cut_whole() {
        for source in ["\"never closed", "/* open", "x = 'a", "", "\n\n", "é`ü\n`"] {
            let lines = lines(source);
            let expected = source.strip_suffix('\n').unwrap_or(source);
            assert_eq!(joined(&lines), expected, "{source:?}");
        }
    }
}
