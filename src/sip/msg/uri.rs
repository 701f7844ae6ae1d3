//! SIP/SIPS/tel URIs (RFC 3261 §19.1, RFC 3966, IPv6 references per RFC 5118) and the
//! name-addr / addr-spec form of From, To, Contact, Route and Record-Route (RFC 3261 §20.10).
//! Decoded on demand from header values; never used to reprint a forwarded header.

use std::fmt;
use std::net::Ipv6Addr;

use super::header::{is_token, is_token_byte, is_ws, split_top_level};
use super::ParseError;

/// A parsed `sip:`, `sips:` or `tel:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// Scheme as written (`sip`, `SIPS`, `tel`); compare case-insensitively.
    pub scheme: String,
    /// User part, still %-escaped; for `tel:` the number.
    pub user: Option<String>,
    /// Password part of the userinfo (deprecated, RFC 3261 §19.1.1), still %-escaped.
    pub password: Option<String>,
    /// Host name or address; IPv6 WITHOUT brackets; empty for `tel:`.
    pub host: String,
    /// Port, if written.
    pub port: Option<u16>,
    /// URI parameters in order (`;lr` -> `("lr", None)`).
    pub params: Vec<(String, Option<String>)>,
    /// Raw header part after `?`, if any.
    pub headers: Option<String>,
}

impl SipUri {
    /// Looks a URI parameter up by name (case-insensitive): `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// True when the URI carries `lr` (loose routing, RFC 3261 §16.4).
    pub fn has_lr(&self) -> bool {
        self.param("lr").is_some()
    }

    /// True for the `tel:` scheme.
    pub fn is_tel(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("tel")
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if self.is_tel() {
            f.write_str(self.user.as_deref().unwrap_or(""))?;
        } else {
            if let Some(user) = &self.user {
                f.write_str(user)?;
                if let Some(pw) = &self.password {
                    write!(f, ":{pw}")?;
                }
                f.write_str("@")?;
            }
            if self.host.contains(':') {
                write!(f, "[{}]", self.host)?;
            } else {
                f.write_str(&self.host)?;
            }
            if let Some(port) = self.port {
                write!(f, ":{port}")?;
            }
        }
        for (name, value) in &self.params {
            match value {
                Some(v) => write!(f, ";{name}={v}")?,
                None => write!(f, ";{name}")?,
            }
        }
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

/// True when `scheme` is a syntactically valid URI scheme (RFC 3986 §3.1).
pub(crate) fn is_scheme(scheme: &str) -> bool {
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Bytes no URI may carry unescaped: whitespace, controls, non-ASCII and the delimiters that
/// frame a URI inside a header (RFC 3261 §25.1).
fn is_forbidden_uri_byte(b: u8) -> bool {
    b <= 0x20 || b >= 0x7f || matches!(b, b'<' | b'>' | b'"')
}

/// Parses a `sip:`, `sips:` or `tel:` URI. Other schemes give
/// [`ParseError::UnsupportedScheme`]; the caller decides whether that matters.
pub fn parse_uri(s: &str) -> Result<SipUri, ParseError> {
    let s = s.trim_matches(is_ws);
    let (scheme, rest) = s.split_once(':').ok_or(ParseError::BadUri("no scheme"))?;
    if !is_scheme(scheme) {
        return Err(ParseError::BadUri("invalid scheme"));
    }
    if rest.bytes().any(is_forbidden_uri_byte) {
        return Err(ParseError::BadUri("whitespace or delimiter inside URI"));
    }
    if scheme.eq_ignore_ascii_case("tel") {
        return parse_tel(scheme, rest);
    }
    if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
        return Err(ParseError::UnsupportedScheme(scheme.to_string()));
    }
    // '@' appears unescaped only as the userinfo delimiter (user, password, parameters and
    // headers exclude it), while the user part may contain ';', '?', ',' and ':'
    // (RFC 4475 §3.1.1.2, §3.1.1.9), so the userinfo is everything before the last '@'.
    let (userinfo, hostpart) = match rest.rfind('@') {
        Some(at) => (rest.get(..at), rest.get(at + 1..).unwrap_or("")),
        None => (None, rest),
    };
    let (user, password) = match userinfo {
        Some(ui) => {
            let (user, pw) = match ui.split_once(':') {
                Some((u, p)) => (u, Some(p.to_string())),
                None => (ui, None),
            };
            if user.is_empty() {
                return Err(ParseError::BadUri("empty user"));
            }
            (Some(user.to_string()), pw)
        }
        None => (None, None),
    };
    let (hostport, tail) = split_at_any(hostpart, b";?");
    let (host, port) = parse_hostport(hostport)?;
    let (params, headers) = parse_params_and_headers(tail)?;
    Ok(SipUri {
        scheme: scheme.to_string(),
        user,
        password,
        host,
        port,
        params,
        headers,
    })
}

fn parse_tel(scheme: &str, rest: &str) -> Result<SipUri, ParseError> {
    let (number, tail) = split_at_any(rest, b";?");
    if number.is_empty() {
        return Err(ParseError::BadUri("empty telephone number"));
    }
    let (params, headers) = parse_params_and_headers(tail)?;
    Ok(SipUri {
        scheme: scheme.to_string(),
        user: Some(number.to_string()),
        password: None,
        host: String::new(),
        port: None,
        params,
        headers,
    })
}

/// Splits at the first byte of `set`; the second part starts with that byte.
fn split_at_any<'a>(s: &'a str, set: &[u8]) -> (&'a str, &'a str) {
    match s.bytes().position(|b| set.contains(&b)) {
        Some(i) => (s.get(..i).unwrap_or(""), s.get(i..).unwrap_or("")),
        None => (s, ""),
    }
}

/// `host [":" port]` with IPv6 references in brackets (RFC 5118 §4.3/§4.4/§4.10: the part in
/// brackets must be a valid IPv6 address, a port is only recognised after `]`).
pub(crate) fn parse_hostport(s: &str) -> Result<(String, Option<u16>), ParseError> {
    let (host, port_str) = if let Some(inner) = s.strip_prefix('[') {
        let close = inner
            .find(']')
            .ok_or(ParseError::BadUri("unclosed IPv6 reference"))?;
        let addr = inner.get(..close).unwrap_or("");
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(ParseError::BadUri("invalid IPv6 reference"));
        }
        let after = inner.get(close + 1..).unwrap_or("");
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(ParseError::BadUri("junk after IPv6 reference")),
        };
        (addr.to_string(), port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(ParseError::BadUri("invalid host"));
        }
        (host.to_string(), port)
    };
    let port = match port_str {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(
            p.parse::<u16>()
                .map_err(|_| ParseError::BadUri("port out of range"))?,
        ),
        Some(_) => return Err(ParseError::BadUri("invalid port")),
    };
    Ok((host, port))
}

type Params = Vec<(String, Option<String>)>;

/// `*(";" param) ["?" headers]`
fn parse_params_and_headers(tail: &str) -> Result<(Params, Option<String>), ParseError> {
    let (params_part, headers) = match tail.split_once('?') {
        Some((_, "")) => return Err(ParseError::BadUri("empty header part")),
        Some((p, h)) => (p, Some(h.to_string())),
        None => (tail, None),
    };
    let mut params = Vec::new();
    if let Some(list) = params_part.strip_prefix(';') {
        for piece in list.split(';') {
            let (name, value) = match piece.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (piece, None),
            };
            if name.is_empty() {
                return Err(ParseError::BadUri("empty parameter name"));
            }
            params.push((name.to_string(), value));
        }
    } else if !params_part.is_empty() {
        return Err(ParseError::BadUri("junk after host"));
    }
    Ok((params, headers))
}

/// A From/To/Contact/Route value: optional display name, URI and header parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name: a quoted string's content (unescaped) or the unquoted token words.
    pub display: Option<String>,
    /// The URI text, as written (any scheme), without the angle brackets.
    pub uri: String,
    /// Header parameters (`tag`, `expires`, `q`, …) in order; values as written.
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    /// The `tag` parameter (RFC 3261 §19.3).
    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    /// Looks a header parameter up by name (case-insensitive): `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
}

/// Parses `"Bob" <sip:...>;tag=x`, `Bob <sip:...>`, `<sip:...>` or an addr-spec
/// `sip:bob@h;tag=x` (whose parameters belong to the header, RFC 3261 §20.10). An addr-spec
/// holding `?` or `,` must have been bracketed and is rejected (RFC 4475 §3.1.2.13).
pub fn parse_name_addr(value: &str) -> Result<NameAddr, ParseError> {
    let s = value.trim_matches(is_ws);
    if s.is_empty() {
        return Err(ParseError::BadNameAddr("empty value"));
    }
    let (display, rest) = if let Some(quoted) = s.strip_prefix('"') {
        let (display, after) = parse_quoted(quoted)?;
        let after = after.trim_start_matches(is_ws);
        if !after.starts_with('<') {
            return Err(ParseError::BadNameAddr("quoted display name without <URI>"));
        }
        (Some(display), after)
    } else if let Some(lt) = s.find('<') {
        let words = s.get(..lt).unwrap_or("").trim_matches(is_ws);
        // RFC 3261 §25.1: display-name = *(token LWS) / quoted-string (RFC 4475 §3.1.2.15).
        if !words
            .bytes()
            .all(|b| is_token_byte(b) || b == b' ' || b == b'\t')
        {
            return Err(ParseError::BadNameAddr(
                "display name is neither token nor quoted",
            ));
        }
        let display = (!words.is_empty()).then(|| words.to_string());
        (display, s.get(lt..).unwrap_or(""))
    } else {
        (None, s)
    };
    let (uri, param_section) = if let Some(inner) = rest.strip_prefix('<') {
        let gt = inner
            .find('>')
            .ok_or(ParseError::BadNameAddr("missing >"))?;
        // RFC 4475 §3.1.2.14 (badaspec): spaces inside <> are tolerated, not forwarded.
        let uri = inner.get(..gt).unwrap_or("").trim_matches(is_ws);
        (uri, inner.get(gt + 1..).unwrap_or(""))
    } else {
        let (uri, params) = match rest.find(';') {
            Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
            None => (rest, ""),
        };
        let uri = uri.trim_matches(is_ws);
        if uri.contains(['?', ',']) || uri.contains(is_ws) {
            return Err(ParseError::BadNameAddr(
                "addr-spec with '?', ',' or space must be in <>",
            ));
        }
        (uri, params)
    };
    match uri.split_once(':') {
        Some((scheme, _)) if is_scheme(scheme) => {}
        _ => return Err(ParseError::BadNameAddr("URI without a valid scheme")),
    }
    if uri.bytes().any(|b| b <= 0x20 || b == b'<' || b == b'"') {
        return Err(ParseError::BadNameAddr("space or delimiter inside URI"));
    }
    let params = parse_header_params(param_section)?;
    Ok(NameAddr {
        display,
        uri: uri.to_string(),
        params,
    })
}

/// Parses the content of a quoted string after its opening quote; returns the unescaped
/// content and the text after the closing quote.
fn parse_quoted(s: &str) -> Result<(String, &str), ParseError> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => out.push(escaped),
                None => break,
            },
            '"' => return Ok((out, s.get(i + 1..).unwrap_or(""))),
            _ => out.push(c),
        }
    }
    Err(ParseError::BadNameAddr("unterminated quoted string"))
}

/// Parses a header parameter section `*( SEMI generic-param )` (RFC 3261 §25.1): names are
/// tokens, values tokens, hosts or quoted strings; LWS around `;` and `=` is allowed.
pub(crate) fn parse_header_params(section: &str) -> Result<Params, ParseError> {
    let section = section.trim_matches(is_ws);
    if section.is_empty() {
        return Ok(Vec::new());
    }
    let list = section
        .strip_prefix(';')
        .ok_or(ParseError::BadParam("expected ';' before parameter"))?;
    let mut params = Vec::new();
    for piece in split_top_level(list, b';') {
        let (name, value) = match piece.split_once('=') {
            Some((n, v)) => (n.trim_matches(is_ws), Some(v.trim_matches(is_ws))),
            None => (piece, None),
        };
        if !is_token(name) {
            return Err(ParseError::BadParam("parameter name is not a token"));
        }
        if let Some(v) = value {
            let ok = if v.starts_with('"') {
                v.len() >= 2 && v.ends_with('"') && parse_quoted(v.get(1..).unwrap_or("")).is_ok()
            } else {
                !v.is_empty()
                    && v.bytes().all(|b| {
                        b > 0x20 && b < 0x7f && !matches!(b, b'"' | b';' | b',' | b'<' | b'>')
                    })
            };
            if !ok {
                return Err(ParseError::BadParam("invalid parameter value"));
            }
        }
        params.push((name.to_string(), value.map(str::to_string)));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_with_everything() {
        let u =
            parse_uri("sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?Subject=hi").expect("uri");
        assert_eq!(u.scheme, "sips");
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("pw"));
        assert_eq!(u.host, "2001:db8::1");
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.param("TRANSPORT"), Some(Some("tcp")));
        assert!(u.has_lr());
        assert_eq!(u.headers.as_deref(), Some("Subject=hi"));
        assert_eq!(
            u.to_string(),
            "sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?Subject=hi"
        );
    }

    #[test]
    fn torture_user_parts() {
        // RFC 4475 §3.1.1.2: ';', '?', ',' and ':' are legal in the userinfo.
        let u = parse_uri("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com").expect("uri");
        assert_eq!(
            u.user.as_deref(),
            Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        );
        assert_eq!(
            u.password.as_deref(),
            Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        );
        assert_eq!(u.host, "example.com");
        // §3.1.1.9
        let u = parse_uri("sip:user;par=u%40example.net@example.com").expect("uri");
        assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
        assert!(u.params.is_empty());
    }

    #[test]
    fn ipv6_references_follow_rfc5118() {
        assert!(parse_uri("sip:2001:db8::10").is_err()); // §4.2
        assert_eq!(
            parse_uri("sip:[2001:db8::10:5070]").expect("4.3").port,
            None
        );
        let u = parse_uri("sip:[2001:db8::10]:5070").expect("4.4");
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::10", Some(5070)));
        assert!(parse_uri("sip:user@[2001:db8:::192.0.2.1]").is_err()); // §4.10
        assert!(parse_uri("sip:user@[2001:db8::192.0.2.1]").is_ok());
    }

    #[test]
    fn bad_uris_are_errors() {
        for bad in [
            "<sip:a@b>",
            "sip:a@b; lr",
            "sip:",
            "sip:a@",
            "sip:@b",
            "sip:a@b:99999",
            "sip:a@b:x",
            "sip:a@b;;x",
            "sip:a@b?",
            "1sip:a@b",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_uri("soap.beep://192.0.2.103:3002"),
            Err(ParseError::UnsupportedScheme(_))
        ));
    }

    #[test]
    fn tel_uri() {
        let u = parse_uri("tel:+358401234567;phone-context=example.com").expect("tel");
        assert_eq!(u.user.as_deref(), Some("+358401234567"));
        assert_eq!(u.host, "");
        assert_eq!(u.to_string(), "tel:+358401234567;phone-context=example.com");
    }

    #[test]
    fn name_addr_forms() {
        let na =
            parse_name_addr(r#""J Rosenberg \\\""  <sip:jdrosen@example.com> ; tag = 98asjd8"#)
                .expect("quoted");
        assert_eq!(na.display.as_deref(), Some(r#"J Rosenberg \""#));
        assert_eq!(na.uri, "sip:jdrosen@example.com");
        assert_eq!(na.tag(), Some("98asjd8"));

        let na = parse_name_addr("caller<sip:caller@example.com>;tag=323").expect("lwsdisp");
        assert_eq!(na.display.as_deref(), Some("caller"));

        let na = parse_name_addr("sip:+1972@gw1.example.net;unknownparam").expect("addr-spec");
        assert_eq!(na.uri, "sip:+1972@gw1.example.net");
        assert_eq!(na.param("unknownparam"), Some(None));

        let na = parse_name_addr("isbn:2983792873").expect("other scheme");
        assert_eq!(na.uri, "isbn:2983792873");
    }

    #[test]
    fn name_addr_rejections() {
        for bad in [
            r#""Mr. J. User <sip:j.user@example.com>"#,
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            r#""Joe" <sip:joe@example.org>;;;;"#,
            "<sip:a@b",
            "",
            "no-scheme",
            "<sip:a@b>;tag=",
        ] {
            assert!(parse_name_addr(bad).is_err(), "{bad}");
        }
    }
}
