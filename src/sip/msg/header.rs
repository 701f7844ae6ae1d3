//! One header field line kept exactly as received (raw bytes, folding included) with its
//! canonical name and unfolded value decoded once; plus the name table (compact forms, RFC 3261
//! §7.3.3) and the quote- and bracket-aware splitting used by every value decoder.

use std::borrow::Cow;

/// Line terminator a line arrived with; printing reproduces it so untouched lines stay
/// byte-identical (RFC 3261 §7.5 says CRLF, but bare LF is tolerated on input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eol {
    /// `\r\n`
    CrLf,
    /// `\n`
    Lf,
}

impl Eol {
    /// The terminator's bytes.
    pub(crate) fn as_bytes(self) -> &'static [u8] {
        match self {
            Eol::CrLf => b"\r\n",
            Eol::Lf => b"\n",
        }
    }
}

/// Where a header's decoded value lives: a span of the raw line when it was one line of valid
/// UTF-8 (no copy), otherwise an unfolded copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Span { start: usize, end: usize },
    Owned(String),
}

/// One header field: the raw line(s) as received and the decoded name and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Raw bytes without the final line terminator; continuation lines and their inner line
    /// breaks are kept (RFC 3261 §7.3.1 folding).
    raw: Vec<u8>,
    /// Terminator of the last physical line.
    eol: Eol,
    /// Canonical name: lowercase, compact forms expanded.
    name: Cow<'static, str>,
    value: Value,
}

impl Header {
    /// Builds a new header line `Name: value` (CRLF-terminated). CR and LF in `name` or `value`
    /// are replaced by spaces so a value can never inject a line.
    pub fn new(name: &str, value: &str) -> Header {
        let name = sanitize(name.trim());
        let value = sanitize(value.trim());
        let mut raw = Vec::with_capacity(name.len() + 2 + value.len());
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        let start = raw.len();
        raw.extend_from_slice(value.as_bytes());
        let end = raw.len();
        Header {
            raw,
            eol: Eol::CrLf,
            name: canonical_name(&name),
            value: Value::Span { start, end },
        }
    }

    /// Decodes one header from its raw bytes (without the final terminator). `raw` must hold a
    /// colon; the name before it must be a token (checked by the caller, the message parser).
    pub(crate) fn from_raw(raw: Vec<u8>, eol: Eol) -> Option<Header> {
        let colon = raw.iter().position(|&b| b == b':')?;
        let name_bytes = trim_ws(raw.get(..colon)?);
        let name_str = std::str::from_utf8(name_bytes).ok()?;
        if name_str.is_empty() || !name_str.bytes().all(is_token_byte) {
            return None;
        }
        let name = canonical_name(name_str);
        let after = raw.get(colon + 1..)?;
        let folded = after.contains(&b'\n');
        let value = match (folded, std::str::from_utf8(after)) {
            (false, Ok(text)) => {
                let lead = text.len() - text.trim_start_matches(is_ws).len();
                let trimmed = text.trim_matches(is_ws);
                let start = colon + 1 + lead;
                Value::Span {
                    start,
                    end: start + trimmed.len(),
                }
            }
            _ => Value::Owned(unfold(&String::from_utf8_lossy(after))),
        };
        Some(Header {
            raw,
            eol,
            name,
            value,
        })
    }

    /// Canonical name: lowercase full name, compact forms expanded (`i` -> `call-id`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Value with folding undone (each line break plus indentation becomes one space) and
    /// surrounding whitespace trimmed. Non-UTF-8 bytes are replaced (the raw line is unchanged).
    pub fn value(&self) -> &str {
        match &self.value {
            Value::Span { start, end } => self
                .raw
                .get(*start..*end)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or(""),
            Value::Owned(s) => s,
        }
    }

    /// The line(s) exactly as received, without the final line terminator.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The name as spelled on the wire (`l`, `CONTENT-length`), trimmed.
    pub fn wire_name(&self) -> &str {
        let colon = self
            .raw
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(self.raw.len());
        self.raw
            .get(..colon)
            .map(trim_ws)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// Terminator of the last physical line.
    pub(crate) fn eol(&self) -> Eol {
        self.eol
    }

    /// Changes the terminator (new lines follow the message's line-ending style).
    pub(crate) fn set_eol(&mut self, eol: Eol) {
        self.eol = eol;
    }

    /// Appends the raw line and its terminator to `out`.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.raw);
        out.extend_from_slice(self.eol.as_bytes());
    }

    /// A copy of this line with `suffix` appended to its raw text (used to add a To tag while
    /// keeping the rest of the line as received).
    pub(crate) fn with_suffix(&self, suffix: &str) -> Header {
        let mut raw = self.raw.clone();
        raw.extend_from_slice(sanitize(suffix).as_bytes());
        Header::from_raw(raw, self.eol).unwrap_or_else(|| self.clone())
    }

    /// The line with its first top-level comma element removed, keeping the name as spelled
    /// and the remaining elements byte-for-byte. `None` when the line holds a single element.
    pub(crate) fn without_first_element(&self) -> Option<Header> {
        let colon = self.raw.iter().position(|&b| b == b':')?;
        let after = self.raw.get(colon + 1..)?;
        let comma = first_top_level_comma(after)?;
        let rest = trim_ws_start(after.get(comma + 1..)?);
        if trim_ws(rest).is_empty() {
            return None;
        }
        let mut raw = Vec::with_capacity(colon + 2 + rest.len());
        raw.extend_from_slice(self.raw.get(..=colon)?);
        raw.push(b' ');
        raw.extend_from_slice(rest);
        Header::from_raw(raw, self.eol)
    }
}

/// Compact forms (RFC 3261 §7.3.3 and the extensions that registered one letter).
const COMPACT: &[(&str, &str)] = &[
    ("a", "accept-contact"),      // RFC 3841
    ("b", "referred-by"),         // RFC 3892
    ("c", "content-type"),        // RFC 3261
    ("d", "request-disposition"), // RFC 3841
    ("e", "content-encoding"),    // RFC 3261
    ("f", "from"),                // RFC 3261
    ("i", "call-id"),             // RFC 3261
    ("j", "reject-contact"),      // RFC 3841
    ("k", "supported"),           // RFC 3261
    ("l", "content-length"),      // RFC 3261
    ("m", "contact"),             // RFC 3261
    ("n", "identity-info"),       // RFC 4474
    ("o", "event"),               // RFC 6665
    ("r", "refer-to"),            // RFC 3515
    ("s", "subject"),             // RFC 3261
    ("t", "to"),                  // RFC 3261
    ("u", "allow-events"),        // RFC 6665
    ("v", "via"),                 // RFC 3261
    ("x", "session-expires"),     // RFC 4028
    ("y", "identity"),            // RFC 4474
];

/// Names common enough that their canonical form is shared instead of allocated per message.
const KNOWN: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "alert-info",
    "allow",
    "authentication-info",
    "authorization",
    "call-info",
    "content-disposition",
    "content-language",
    "cseq",
    "date",
    "diversion",
    "error-info",
    "expires",
    "history-info",
    "in-reply-to",
    "max-forwards",
    "mime-version",
    "min-expires",
    "min-se",
    "organization",
    "p-asserted-identity",
    "p-preferred-identity",
    "priority",
    "privacy",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-require",
    "rack",
    "reason",
    "record-route",
    "remote-party-id",
    "replaces",
    "reply-to",
    "require",
    "retry-after",
    "route",
    "rseq",
    "server",
    "sip-etag",
    "sip-if-match",
    "subscription-state",
    "timestamp",
    "unsupported",
    "user-agent",
    "warning",
    "www-authenticate",
];

/// Resolves a compact form to its full name; other names are returned unchanged (any case).
pub(crate) fn resolve_compact(name: &str) -> &str {
    if name.len() == 1 {
        for (short, full) in COMPACT {
            if short.eq_ignore_ascii_case(name) {
                return full;
            }
        }
    }
    name
}

/// Canonical (lowercase, expanded) form of a header name.
pub(crate) fn canonical_name(name: &str) -> Cow<'static, str> {
    let name = resolve_compact(name);
    for (_, full) in COMPACT {
        if full.eq_ignore_ascii_case(name) {
            return Cow::Borrowed(full);
        }
    }
    for known in KNOWN {
        if known.eq_ignore_ascii_case(name) {
            return Cow::Borrowed(known);
        }
    }
    Cow::Owned(name.to_ascii_lowercase())
}

/// True when `header_name` (canonical) is what the query `name` (any case, compact or full)
/// asks for.
pub(crate) fn name_matches(header_name: &str, query: &str) -> bool {
    header_name.eq_ignore_ascii_case(resolve_compact(query.trim()))
}

/// RFC 3261 §25.1 `token` characters.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// True when `s` is a non-empty token.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// Linear whitespace inside one line (and the line breaks of folded values).
pub(crate) fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_ws_byte(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_ws(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| !is_ws_byte(c)).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|&c| !is_ws_byte(c))
        .map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

fn trim_ws_start(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| !is_ws_byte(c)).unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}

/// Undoes folding: every physical line is trimmed and the non-empty pieces are joined by one
/// space (RFC 3261 §7.3.1: folding LWS is equivalent to a single SP).
fn unfold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for piece in text.split('\n').map(|l| l.trim_matches(is_ws)) {
        if piece.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(piece);
    }
    out
}

fn sanitize(s: &str) -> Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        Cow::Owned(s.replace(['\r', '\n'], " "))
    } else {
        Cow::Borrowed(s)
    }
}

/// Byte index of the first comma outside quoted strings and `<...>` in `b`.
fn first_top_level_comma(b: &[u8]) -> Option<usize> {
    let mut state = Scan::default();
    for (i, &c) in b.iter().enumerate() {
        if state.step(c) && c == b',' {
            return Some(i);
        }
    }
    None
}

/// Quote/bracket state while scanning a header value left to right.
#[derive(Default)]
struct Scan {
    in_quote: bool,
    escaped: bool,
    angle: u32,
}

impl Scan {
    /// Feeds one byte; returns true when the byte is at top level (outside quotes and `<>`)
    /// and not itself a quote or bracket.
    fn step(&mut self, c: u8) -> bool {
        if self.in_quote {
            if self.escaped {
                self.escaped = false;
            } else if c == b'\\' {
                self.escaped = true;
            } else if c == b'"' {
                self.in_quote = false;
            }
            return false;
        }
        match c {
            b'"' => {
                self.in_quote = true;
                false
            }
            b'<' => {
                self.angle = self.angle.saturating_add(1);
                false
            }
            b'>' => {
                self.angle = self.angle.saturating_sub(1);
                false
            }
            _ => self.angle == 0,
        }
    }
}

/// Splits `s` on `sep` where it is outside quoted strings (with `\` escapes, RFC 3261 §25.1)
/// and outside `<...>`. Pieces are trimmed; empty pieces are kept so callers can reject
/// extraneous separators (RFC 4475 §3.1.2.1).
pub(crate) fn split_top_level(s: &str, sep: u8) -> Vec<&str> {
    let mut out = Vec::new();
    let mut state = Scan::default();
    let mut start = 0;
    for (i, c) in s.bytes().enumerate() {
        if state.step(c) && c == sep {
            out.push(s.get(start..i).unwrap_or("").trim_matches(is_ws));
            start = i + 1;
        }
    }
    out.push(s.get(start..).unwrap_or("").trim_matches(is_ws));
    out
}

/// The section of a name-addr / addr-spec header value that holds the header parameters:
/// after the closing `>` when the URI is bracketed, else from the first top-level `;`
/// (RFC 3261 §20.10: in an addr-spec, parameters after the URI belong to the header).
pub(crate) fn header_param_section(value: &str) -> &str {
    let mut state = Scan::default();
    for (i, c) in value.bytes().enumerate() {
        let top = state.step(c);
        if c == b'<' && !state.in_quote && state.angle == 1 {
            // Bracketed: parameters follow the matching '>'.
            let rest = value.get(i..).unwrap_or("");
            return match rest.find('>') {
                Some(gt) => rest.get(gt + 1..).unwrap_or(""),
                None => "",
            };
        }
        if top && c == b';' {
            return value.get(i..).unwrap_or("");
        }
    }
    ""
}

/// Looks a parameter up in a `;name=value;flag` section without allocating. Returns
/// `Some(None)` for a flag parameter, `Some(Some(v))` for a valued one.
pub(crate) fn find_param<'a>(section: &'a str, name: &str) -> Option<Option<&'a str>> {
    for piece in split_top_level(section, b';') {
        let (n, v) = match piece.split_once('=') {
            Some((n, v)) => (n.trim_matches(is_ws), Some(v.trim_matches(is_ws))),
            None => (piece, None),
        };
        if n.eq_ignore_ascii_case(name) {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_names_expand_and_known_names_are_lowercased() {
        assert_eq!(canonical_name("i"), "call-id");
        assert_eq!(canonical_name("V"), "via");
        assert_eq!(canonical_name("MaX-fOrWaRdS"), "max-forwards");
        assert_eq!(canonical_name("X-Agent-ID"), "x-agent-id");
        assert!(name_matches("call-id", "I"));
        assert!(name_matches("call-id", "Call-ID"));
        assert!(!name_matches("call-info", "i"));
    }

    #[test]
    fn folded_value_is_unfolded_and_raw_kept() {
        let raw = b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw".to_vec();
        let h = Header::from_raw(raw.clone(), Eol::CrLf).expect("header");
        assert_eq!(h.name(), "via");
        assert_eq!(h.wire_name(), "Via");
        assert_eq!(h.value(), "SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw");
        assert_eq!(h.raw(), &raw[..]);
    }

    #[test]
    fn split_respects_quotes_and_brackets() {
        let v = r#""a,\"b" <sip:x;p=1,2>;q=1 , <sip:y>,,"#;
        assert_eq!(
            split_top_level(v, b','),
            vec![r#""a,\"b" <sip:x;p=1,2>;q=1"#, "<sip:y>", "", ""]
        );
    }

    #[test]
    fn param_section_and_lookup() {
        let v = r#""J \"x;" <sip:a@b;tag=no>;tag=yes;lr"#;
        let sec = header_param_section(v);
        assert_eq!(sec, ";tag=yes;lr");
        assert_eq!(find_param(sec, "TAG"), Some(Some("yes")));
        assert_eq!(find_param(sec, "lr"), Some(None));
        assert_eq!(find_param(sec, "x"), None);
        assert_eq!(header_param_section("sip:a@b ; tag = 9"), "; tag = 9");
        assert_eq!(find_param("; tag = 9", "tag"), Some(Some("9")));
    }

    #[test]
    fn first_element_removal_keeps_rest_raw() {
        let h = Header::from_raw(
            b"v: SIP/2.0/UDP a;branch=1 ,\r\n SIP/2.0/TCP  b".to_vec(),
            Eol::Lf,
        )
        .expect("header");
        let rest = h.without_first_element().expect("two elements");
        assert_eq!(rest.raw(), b"v: SIP/2.0/TCP  b");
        assert_eq!(rest.value(), "SIP/2.0/TCP  b");
        assert!(rest.without_first_element().is_none());
    }

    #[test]
    fn new_header_cannot_inject_lines() {
        let h = Header::new("X-Test", "a\r\nVia: evil");
        assert_eq!(h.raw(), b"X-Test: a  Via: evil");
    }
}
