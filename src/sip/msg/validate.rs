//! Semantic checks a proxy makes before forwarding a message that framed fine
//! (RFC 3261 §16.3, RFC 4475 §3.1.2 and §3.3, RFC 5118 §4). Parsing is lenient so that the
//! headers needed for a 400/505 stay readable; this is where the message gets refused.

use super::header::split_top_level;
use super::uri::is_scheme;
use super::{parse_name_addr, parse_uri, parse_via, Invalid, Message, ParseError, StartLine};

/// Headers every request and response must carry (RFC 3261 §8.1.1; Max-Forwards is left out
/// for RFC 2543 peers, RFC 4475 §3.4.1).
const REQUIRED: &[(&str, &str)] = &[
    ("via", "Via"),
    ("from", "From"),
    ("to", "To"),
    ("call-id", "Call-ID"),
    ("cseq", "CSeq"),
];

/// Headers whose grammar allows one value only (RFC 4475 §3.3.8, §3.3.9).
const SINGLE: &[(&str, &str)] = &[
    ("call-id", "Call-ID"),
    ("from", "From"),
    ("to", "To"),
    ("cseq", "CSeq"),
    ("max-forwards", "Max-Forwards"),
    ("content-length", "Content-Length"),
    ("content-type", "Content-Type"),
    ("expires", "Expires"),
];

/// RFC 3261 §8.1.1.5: the CSeq number MUST be less than 2^31.
const MAX_CSEQ: u64 = (1 << 31) - 1;
/// RFC 3261 §20.22: Max-Forwards is 0-255.
const MAX_MAX_FORWARDS: u64 = 255;
/// RFC 3261 §20.19 / RFC 4475 §3.1.2.4: delta-seconds beyond 2^32-1 are refused here.
const MAX_EXPIRES: u64 = u32::MAX as u64;

impl Message {
    /// Semantic checks a proxy must make before forwarding (RFC 3261 §16.3, RFC 4475
    /// §3.1.2/§3.3): missing To/From/Call-ID/CSeq/Via, SIP version (505), CSeq method !=
    /// request method, several values in single-value fields, unparsable From/To/Contact/Via/
    /// Route/Record-Route, malformed Request-URI (in `<>`, embedded LWS, URI headers, IPv6 host
    /// without brackets or with a bad reference), overlarge CSeq/Max-Forwards/Expires, extra
    /// comma separators.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (name, label) in REQUIRED {
            if self.header(name).is_none_or(|v| v.is_empty()) {
                return Err(Invalid::MissingHeader(label));
            }
        }
        if !self.version().eq_ignore_ascii_case("SIP/2.0") {
            return Err(Invalid::Version(self.version().to_string()));
        }
        if let StartLine::Request { uri, .. } = &self.start {
            check_request_uri(uri)?;
        }
        for (name, label) in SINGLE {
            if self.header_all(name).count() > 1 {
                return Err(Invalid::MultipleValues(label));
            }
        }
        let call_id = self.call_id().unwrap_or("");
        if call_id.contains(|c: char| c == ',' || c.is_whitespace()) {
            return Err(Invalid::MultipleValues("Call-ID"));
        }
        self.check_cseq()?;
        check_number(
            self.header("max-forwards"),
            "Max-Forwards",
            MAX_MAX_FORWARDS,
            true,
        )?;
        check_number(self.header("expires"), "Expires", MAX_EXPIRES, false)?;
        for (name, label) in [("from", "From"), ("to", "To")] {
            if let Some(value) = self.header(name) {
                check_name_addr(value, label)?;
            }
        }
        for value in self.header_all("via") {
            for element in split_top_level(value, b',') {
                if element.is_empty() {
                    return Err(Invalid::EmptyElement("Via"));
                }
                parse_via(element).map_err(|source| Invalid::BadHeader {
                    header: "Via",
                    source,
                })?;
            }
        }
        for (name, label) in [
            ("contact", "Contact"),
            ("route", "Route"),
            ("record-route", "Record-Route"),
        ] {
            for value in self.header_all(name) {
                if name == "contact" && value == "*" {
                    continue;
                }
                for element in split_top_level(value, b',') {
                    if element.is_empty() {
                        return Err(Invalid::EmptyElement(label));
                    }
                    check_name_addr(element, label)?;
                }
            }
        }
        Ok(())
    }

    fn check_cseq(&self) -> Result<(), Invalid> {
        let value = self.header("cseq").unwrap_or("");
        let bad = || Invalid::BadNumber {
            header: "CSeq",
            value: value.to_string(),
        };
        let mut parts = value.split_whitespace();
        let (Some(number), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        if !super::header::is_token(method) {
            return Err(bad());
        }
        check_number(Some(number), "CSeq", MAX_CSEQ, true).map_err(|e| match e {
            Invalid::BadNumber { .. } => bad(),
            Invalid::Overlarge { header, .. } => Invalid::Overlarge {
                header,
                value: value.to_string(),
            },
            other => other,
        })?;
        if let Some(request_method) = self.method() {
            // Methods are case-sensitive (RFC 3261 §7.1).
            if method != request_method {
                return Err(Invalid::CSeqMismatch {
                    method: request_method.to_string(),
                    cseq_method: method.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// A decimal number no larger than `max`. With `strict`, a non-number is an error; without it
/// (Expires, which RFC 2543 allowed as a date) only an overlarge number is.
fn check_number(
    value: Option<&str>,
    header: &'static str,
    max: u64,
    strict: bool,
) -> Result<(), Invalid> {
    let Some(value) = value else {
        return Ok(());
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        if strict {
            return Err(Invalid::BadNumber {
                header,
                value: value.to_string(),
            });
        }
        return Ok(());
    }
    match value.parse::<u64>() {
        Ok(n) if n <= max => Ok(()),
        _ => Err(Invalid::Overlarge {
            header,
            value: value.to_string(),
        }),
    }
}

/// A name-addr or addr-spec whose sip/sips URI, if any, parses.
fn check_name_addr(value: &str, header: &'static str) -> Result<(), Invalid> {
    let bad = |source| Invalid::BadHeader { header, source };
    let na = parse_name_addr(value).map_err(bad)?;
    match parse_uri(&na.uri) {
        Ok(_) | Err(ParseError::UnsupportedScheme(_)) => Ok(()),
        Err(e) => Err(bad(e)),
    }
}

fn check_request_uri(uri: &str) -> Result<(), Invalid> {
    let refuse = |reason| {
        Err(Invalid::RequestUri {
            uri: uri.to_string(),
            reason,
        })
    };
    if uri.contains(char::is_whitespace) {
        // RFC 4475 §3.1.2.8 (lwsruri).
        return refuse("embedded whitespace");
    }
    if uri.starts_with('<') {
        // RFC 4475 §3.1.2.7 (ltgtruri): never forward the brackets.
        return refuse("enclosed in <>");
    }
    let Some((scheme, _)) = uri.split_once(':') else {
        return refuse("no scheme");
    };
    if !is_scheme(scheme) {
        return refuse("invalid scheme");
    }
    match parse_uri(uri) {
        // RFC 3261 §19.1.1 table 1: headers are not allowed in a Request-URI; RFC 4475
        // §3.1.2.11: a proxy must not forward them.
        Ok(parsed) if parsed.headers.is_some() => refuse("contains URI headers"),
        Ok(_) => Ok(()),
        // Unknown schemes are well-formed; routing answers 416 if it cannot use them.
        Err(ParseError::UnsupportedScheme(_)) => Ok(()),
        // RFC 5118 §4.2 and §4.10: IPv6 host without brackets, three colons.
        Err(_) => refuse("malformed sip/sips/tel URI"),
    }
}
