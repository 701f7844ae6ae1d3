//! Turns byte spans in the config text into the file, line, column and dotted key of a
//! [`ConfigError`](super::ConfigError). Keys come from a spanned walk of the parsed document; when
//! the text is not valid TOML, a line scan finds the enclosing table header and key instead.

use std::cell::OnceCell;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::ConfigError;

/// Key reported when an error lies outside every table and key (e.g. garbage on line 1).
const TOP_LEVEL: &str = "(top level)";

/// One key of the document: its dotted path and where the key itself is written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyEntry {
    path: String,
    span: Range<usize>,
}

/// The text being parsed and where it came from; builds errors that point into it.
pub(super) struct Document<'a> {
    text: &'a str,
    file: &'a Path,
    /// Every key with its span, built only when an error needs it.
    keys: OnceCell<Vec<KeyEntry>>,
}

impl<'a> Document<'a> {
    /// Wraps `text`, read from `file`.
    pub(super) fn new(text: &'a str, file: &'a Path) -> Self {
        Self {
            text,
            file,
            keys: OnceCell::new(),
        }
    }

    /// An error at `span` (None = line 1, column 1) for the dotted `key`.
    pub(super) fn invalid(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = span.map_or((1, 1), |s| line_column(self.text, s.start));
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// 1-based line of `span`, for messages that point back at an earlier entry.
    pub(super) fn line_of(&self, span: &Range<usize>) -> usize {
        line_column(self.text, span.start).0
    }

    /// Where the table `name` (a top-level key such as `media`) is first written, if it is.
    pub(super) fn table_span(&self, name: &str) -> Option<Range<usize>> {
        self.keys()
            .iter()
            .filter(|k| k.path == name)
            .map(|k| k.span.clone())
            .min_by_key(|s| s.start)
    }

    /// Converts a TOML syntax or schema error, finding the key it belongs to.
    pub(super) fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span();
        let key = match &span {
            Some(span) => self.key_at(span),
            None => TOP_LEVEL.to_owned(),
        };
        let header_text = span.as_ref().and_then(|s| self.text.get(s.start..));
        let message = if header_text.is_some_and(|t| t.starts_with("[[")) {
            // serde reports this as a type mismatch inside the array, which reads backwards.
            format!(
                "[[{key}]] declares an array of tables, but `{key}` is one table: write [{key}]"
            )
        } else {
            operator_message(error.message())
        };
        self.invalid(span, &key, message)
    }

    fn keys(&self) -> &[KeyEntry] {
        self.keys.get_or_init(|| collect_keys(self.text))
    }

    /// The dotted key an error span belongs to.
    fn key_at(&self, span: &Range<usize>) -> String {
        let keys = self.keys();
        // The span is a key itself: an unknown or misplaced key.
        if let Some(k) = keys.iter().find(|k| k.span.contains(&span.start)) {
            return k.path.clone();
        }
        // The span starts at a table header (`[[sip]]` where a table is expected): the header's key.
        if starts_line_with_bracket(self.text, span.start) {
            if let Some(k) = keys
                .iter()
                .filter(|k| span.contains(&k.span.start))
                .min_by_key(|k| k.span.start)
            {
                return k.path.clone();
            }
        }
        // A value: it belongs to the closest key written before it.
        if let Some(k) = keys
            .iter()
            .filter(|k| k.span.start < span.start)
            .max_by_key(|k| k.span.start)
        {
            return k.path.clone();
        }
        scan_key(self.text, span.start)
    }
}

/// Rewrites serde's wording into the file's: operators write keys and tables, not fields and i64.
fn operator_message(message: &str) -> String {
    let flat = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    flat.replace("unknown field", "unknown key")
        .replace("expected i64", "expected an integer")
}

/// 1-based line and column (in characters) of byte `offset`, clamped into the text.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = text.get(..offset).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Whether `offset` is at the first non-blank character of a line and that character is `[`.
fn starts_line_with_bracket(text: &str, offset: usize) -> bool {
    let Some(before) = text.get(..offset) else {
        return false;
    };
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let indent_only = before
        .get(line_start..)
        .is_some_and(|s| s.chars().all(|c| c == ' ' || c == '\t'));
    indent_only && text.get(offset..).is_some_and(|s| s.starts_with('['))
}

/// Every key of a valid document with its span. For a value the walk cannot descend into (a
/// datetime), the keys collected up to there are kept; for invalid TOML the list is empty.
fn collect_keys(text: &str) -> Vec<KeyEntry> {
    let mut out = Vec::new();
    let walker = KeyWalker {
        prefix: String::new(),
        out: &mut out,
    };
    // An error here only cuts the walk short; what was collected is still right.
    let _ = walker.deserialize(toml::Deserializer::new(text));
    out
}

/// Serde visitor that records each map key's dotted path and span.
struct KeyWalker<'o> {
    prefix: String,
    out: &'o mut Vec<KeyEntry>,
}

impl<'de> DeserializeSeed<'de> for KeyWalker<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyWalker<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        while let Some(key) = map.next_key::<toml::Spanned<String>>()? {
            let path = if self.prefix.is_empty() {
                key.get_ref().clone()
            } else {
                format!("{}.{}", self.prefix, key.get_ref())
            };
            self.out.push(KeyEntry {
                path: path.clone(),
                span: key.span(),
            });
            map.next_value_seed(KeyWalker {
                prefix: path,
                out: self.out,
            })?;
        }
        Ok(())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        // Array elements share their array's key: tables in `[[x]]` report as `x.key`.
        while seq
            .next_element_seed(KeyWalker {
                prefix: self.prefix.clone(),
                out: self.out,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// Fallback for text that is not valid TOML: the last table header at or above `offset` plus the
/// last `key =` line between that header and `offset`'s line.
fn scan_key(text: &str, offset: usize) -> String {
    let (error_line, _) = line_column(text, offset);
    let mut table: Option<String> = None;
    let mut key: Option<String> = None;
    for (index, line) in text.lines().enumerate().take(error_line) {
        let trimmed = line.trim_start();
        if let Some(header) = trimmed.strip_prefix('[') {
            let name = header.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or("");
            table = Some(normalize_key(name)).filter(|t| !t.is_empty());
            key = None;
            if index + 1 == error_line {
                break;
            }
        } else if let Some(k) = leading_key(trimmed) {
            key = Some(k);
        }
    }
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k,
        (None, None) => TOP_LEVEL.to_owned(),
    }
}

/// The key of a `key = value` line, if the line starts with one.
fn leading_key(line: &str) -> Option<String> {
    let (candidate, _) = line.split_once('=')?;
    let plausible = !candidate.trim().is_empty()
        && candidate.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '\t' | '"' | '\'')
        });
    plausible
        .then(|| normalize_key(candidate))
        .filter(|k| !k.is_empty())
}

/// `a . "b"` -> `a.b`: drops the spacing and quoting a dotted key may be written with.
fn normalize_key(raw: &str) -> String {
    raw.split('.')
        .map(|part| part.trim().trim_matches(|c| c == '"' || c == '\''))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // 'é' is two bytes but one column.
        let quote = text.find('"').unwrap_or(0);
        assert_eq!(line_column(text, quote), (2, 6));
        // Out of range and mid-character offsets are clamped, not panics.
        assert_eq!(line_column(text, 1000), (3, 1));
        assert_eq!(line_column(text, 8), (2, 2));
    }

    #[test]
    fn keys_are_collected_with_dotted_paths() {
        let text = "[sip]\nlisten = [\"udp:a\"]\n[media.x]\ny = 1\n[[service]]\nname = \"a\"\n";
        let keys: Vec<String> = collect_keys(text).into_iter().map(|k| k.path).collect();
        assert_eq!(
            keys,
            [
                "sip",
                "sip.listen",
                "media",
                "media.x",
                "media.x.y",
                "service",
                "service.name"
            ]
        );
    }

    #[test]
    fn datetime_values_keep_the_keys_before_them() {
        let text = "[sip]\npbx = \"x\"\nwhen = 1979-05-27\n";
        let keys: Vec<String> = collect_keys(text).into_iter().map(|k| k.path).collect();
        assert_eq!(keys, ["sip", "sip.pbx", "sip.when"]);
    }

    #[test]
    fn scanner_finds_table_and_key_in_broken_text() {
        let text = "[sip]\npbx = \"x\n[media]\n\"bind\" = [\n  1,\n  oops\n";
        assert_eq!(scan_key(text, 8), "sip.pbx");
        let oops = text.find("oops").unwrap_or(0);
        assert_eq!(scan_key(text, oops), "media.bind");
        assert_eq!(scan_key("!!!\n", 0), TOP_LEVEL);
        assert_eq!(scan_key("[ a . b ]\n", 0), "a.b");
        assert_eq!(scan_key("[\nx = 1\n", 1), TOP_LEVEL);
        assert_eq!(scan_key("[[\n", 2), TOP_LEVEL);
    }
}
