//! The characters a name shown to people may hold: key and provider names, usernames, model
//! names. A name is how a person tells one object from another in a table, a log line or
//! an audit export, so it may not hold characters that change how other characters are
//! shown or that show nothing: controls (Cc), format characters (Cf: the bidi overrides
//! and isolates, zero-width spaces and joiners, the BOM, tags), line and paragraph
//! separators (Zl, Zp) and private-use characters (Co), whose look depends on the font.
//! With them `billing\u{202E}1dorp` is shown as another name, and `prod\u{200B}` as `prod`.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// The most characters a username has.
pub const MAX_USERNAME: usize = 64;

/// The first character of `s` that no name may hold, if any.
pub fn hidden_char(s: &str) -> Option<char> {
    s.chars().find(|c| {
        matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
                | GeneralCategory::PrivateUse
                | GeneralCategory::Surrogate
        )
    })
}

/// Why `c` is refused, naming it by code point (it may not show in the message).
pub fn hidden_char_text(field: &str, c: char) -> String {
    let kind = match c.general_category() {
        GeneralCategory::Control => "a control character",
        GeneralCategory::Format => {
            "a format character (a bidi control or a zero-width character changes how a name is displayed)"
        }
        GeneralCategory::PrivateUse => "a private-use character",
        _ => "a line or paragraph separator",
    };
    format!("{field} must not contain U+{:04X}, {kind}", u32::from(c))
}

/// Why `s` is not a username, if it is not: 1 to 64 of ASCII letters, digits, `.`, `_`, `-`.
pub fn username_problem(s: &str) -> Option<String> {
    let n = s.chars().count();
    if n == 0 || n > MAX_USERNAME {
        return Some(format!("username must be 1 to {MAX_USERNAME} characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Some("username may contain only letters, digits, '.', '_' and '-'".to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_control_characters_are_found() {
        for (s, c) in [
            ("billing\u{202E}1dorp", '\u{202E}'),
            ("prod\u{200B}", '\u{200B}'),
            ("a\u{2066}b", '\u{2066}'),
            ("\u{FEFF}x", '\u{FEFF}'),
            ("tag\u{E0041}", '\u{E0041}'),
            ("soft\u{AD}hyphen", '\u{AD}'),
            ("line\u{2028}", '\u{2028}'),
            ("bell\u{7}", '\u{7}'),
            ("pua\u{E000}", '\u{E000}'),
            ("arabic\u{061C}", '\u{061C}'),
        ] {
            assert_eq!(hidden_char(s), Some(c), "{s:?}");
        }
        for ok in [
            "billing prod",
            "Zürich-Ω",
            "日本語キー",
            "emoji 🔑",
            "a.b_c-d",
        ] {
            assert_eq!(hidden_char(ok), None, "{ok:?}");
        }
        assert!(hidden_char_text("name", '\u{202E}').contains("U+202E"));
    }

    #[test]
    fn usernames_are_short_and_plain() {
        assert!(username_problem("alice.b-c_1").is_none());
        for bad in ["", "a b", "ålice", "a\u{200B}", &"x".repeat(65)] {
            assert!(username_problem(bad).is_some(), "{bad:?}");
        }
    }
}
