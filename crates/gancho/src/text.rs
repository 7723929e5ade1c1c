//! Text from outside (event fields, keys, reasons, error bodies, rule errors) made safe to print
//! on an operator's terminal: a posted event type holding `ESC [2J` or an OSC title must not
//! reach the terminal as a command.

use std::borrow::Cow;

/// `text` with every control character (C0 including newline and tab, DEL, C1) written as a
/// `\u{…}` escape; unchanged when it has none.
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn control_characters_are_escaped_and_other_text_is_left_alone() {
        assert_eq!(shown("open"), "open");
        assert_eq!(shown("ñandú ✓"), "ñandú ✓");
        assert_eq!(shown("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(shown("\u{1b}]0;title\u{7}"), "\\u{1b}]0;title\\u{7}");
        assert_eq!(
            shown("x\ny\tz\u{7f}\u{9b}"),
            "x\\u{a}y\\u{9}z\\u{7f}\\u{9b}"
        );
    }
}
