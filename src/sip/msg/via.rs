//! One Via element (RFC 3261 §20.42, §25.1 `via-parm`), with the parameters the proxy routes
//! responses by: branch (§17.2.3), received (§18.2.1) and rport (RFC 3581). IPv6 per RFC 5118.

use super::header::{is_token, is_ws, split_top_level};
use super::uri::{parse_header_params, parse_hostport};
use super::ParseError;

/// A decoded Via element: `SIP/2.0/UDP host:port;branch=...;received=...;rport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token as written (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, or unknown ones).
    pub transport: String,
    /// Sent-by host; IPv6 WITHOUT brackets.
    pub host: String,
    /// Sent-by port, if written.
    pub port: Option<u16>,
    /// `branch` parameter (transaction id; `z9hG4bK` prefix for RFC 3261 peers).
    pub branch: Option<String>,
    /// `received` parameter as written (an IPv6 value may or may not carry brackets,
    /// RFC 5118 §4.5).
    pub received: Option<String>,
    /// `rport`: `Some(None)` when present without a value (request asks for it),
    /// `Some(Some(p))` when filled in.
    pub rport: Option<Option<u16>>,
    /// Every parameter in order, including branch, received and rport.
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    /// Looks a parameter up by name (case-insensitive): `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
}

/// Parses one Via element (not a comma list). LWS is allowed around `/`, `;` and `=`
/// (RFC 4475 §3.1.1.1).
pub fn parse_via(value: &str) -> Result<Via, ParseError> {
    let s = value.trim_matches(is_ws);
    let (name, rest) = s.split_once('/').ok_or(ParseError::BadVia("missing '/'"))?;
    let (version, rest) = rest
        .split_once('/')
        .ok_or(ParseError::BadVia("missing '/'"))?;
    let (name, version) = (name.trim_matches(is_ws), version.trim_matches(is_ws));
    if !is_token(name) || !is_token(version) {
        return Err(ParseError::BadVia(
            "protocol name or version is not a token",
        ));
    }
    let rest = rest.trim_start_matches(is_ws);
    let end = rest.find(is_ws).unwrap_or(rest.len());
    let transport = rest.get(..end).unwrap_or("");
    if !is_token(transport) {
        return Err(ParseError::BadVia("transport is not a token"));
    }
    let rest = rest.get(end..).unwrap_or("");
    let (sent_by, params) = match rest.find(';') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
        None => (rest, ""),
    };
    // sent-by = host [ COLON port ]; COLON may be surrounded by SWS.
    let sent_by: String = sent_by.chars().filter(|c| !is_ws(*c)).collect();
    if sent_by.is_empty() {
        return Err(ParseError::BadVia("missing sent-by"));
    }
    let (host, port) = parse_hostport(&sent_by).map_err(|_| ParseError::BadVia("bad sent-by"))?;
    let params = parse_header_params(params)?;
    let find = |n: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let branch = find("branch").flatten();
    let received = find("received").flatten();
    let rport = match find("rport") {
        None => None,
        Some(None) => Some(None),
        Some(Some(p)) => Some(Some(
            p.parse::<u16>()
                .map_err(|_| ParseError::BadVia("rport is not a port"))?,
        )),
    };
    Ok(Via {
        transport: transport.to_string(),
        host,
        port,
        branch,
        received,
        rport,
        params,
    })
}

/// Like [`parse_via`], but skips empty parameters (`;;`, RFC 4475 §3.1.2.1) so that a
/// malformed request can still be answered with 400 along its Via.
pub(crate) fn parse_via_lenient(value: &str) -> Result<Via, ParseError> {
    parse_via(value).or_else(|err| {
        let cleaned: Vec<&str> = split_top_level(value, b';')
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        parse_via(&cleaned.join(";")).map_err(|_| err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_via() {
        let v = parse_via("SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK77;rport").expect("via");
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.1");
        assert_eq!(v.port, Some(5062));
        assert_eq!(v.branch.as_deref(), Some("z9hG4bK77"));
        assert_eq!(v.rport, Some(None));
        assert_eq!(v.received, None);
        assert_eq!(v.param("RPORT"), Some(None));
    }

    #[test]
    fn tortuous_whitespace() {
        // RFC 4475 §3.1.1.1, after unfolding.
        let v = parse_via("SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8")
            .expect("via");
        assert_eq!(v.transport, "TCP");
        assert_eq!(v.host, "spindle.example.com");
        assert_eq!(v.branch.as_deref(), Some("z9hG4bK9ikj8"));
        let v = parse_via("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw").expect("via");
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
    }

    #[test]
    fn ipv6_sent_by_and_received() {
        let v = parse_via("SIP/2.0/UDP [2001:db8::9:1]:6050;received=[2001:db8::9:255];rport=7")
            .expect("via");
        assert_eq!(v.host, "2001:db8::9:1");
        assert_eq!(v.port, Some(6050));
        assert_eq!(v.received.as_deref(), Some("[2001:db8::9:255]"));
        assert_eq!(v.rport, Some(Some(7)));
        let v = parse_via("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3")
            .expect("via");
        assert_eq!(v.received.as_deref(), Some("2001:db8::9:255"));
    }

    #[test]
    fn bad_vias() {
        for bad in [
            "SIP/2.0/UDP 192.0.2.15;;",
            ";",
            "",
            "SIP/2.0 host",
            "SIP/2.0/UDP",
            "SIP/2.0/UDP host;rport=x",
            "SIP/2.0/UDP host:70000",
            "SIP/2.0/UDP a, SIP/2.0/UDP b",
        ] {
            assert!(parse_via(bad).is_err(), "{bad}");
        }
        let v = parse_via_lenient("SIP/2.0/UDP 192.0.2.15;;branch=z9hG4bK1;").expect("lenient");
        assert_eq!(v.branch.as_deref(), Some("z9hG4bK1"));
        assert!(parse_via_lenient(";").is_err());
    }
}
