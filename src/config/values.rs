//! Value syntaxes of the configuration file: SIP addresses (`udp:IP:PORT`), IP literals, port
//! ranges (`LOW-HIGH`), durations (`60s`), and the called numbers and recording rules of
//! services. Each parser returns a [`ValueError`] whose text says what is wrong and how to write
//! it; the caller attaches file, line and key.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// Why a configuration value could not be used; the text is meant for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

impl ValueError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Why names are refused wherever an address is expected; shared so every key says the same.
const NO_HOSTNAMES: &str = "hostnames are not accepted (recproxy resolves no names: it recognises \
     the PBX by source address and writes addresses into SDP), so write the IP literal";

/// SIP transport of a listen or PBX address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// SIP over UDP (RFC 3261 §18).
    Udp,
    /// SIP over TCP (RFC 3261 §18), framed by Content-Length.
    Tcp,
}

impl Transport {
    /// The lower-case prefix used in the config file (`udp`, `tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport plus socket address, written `udp:1.2.3.4:5060` or `udp:[::1]:5060`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SipAddr {
    /// Transport the address is served or reached on.
    pub transport: Transport,
    /// IP literal and port (port 0 = ephemeral, for tests).
    pub addr: SocketAddr,
}

impl fmt::Display for SipAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SocketAddr's Display already brackets IPv6 literals, as the syntax requires.
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

impl FromStr for SipAddr {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const FORMAT: &str = "write \"udp:IP:PORT\" or \"tcp:IP:PORT\", IPv6 as \"udp:[::1]:5060\"";
        let Some((prefix, rest)) = s.split_once(':') else {
            return Err(ValueError(format!("\"{s}\" has no transport: {FORMAT}")));
        };
        let transport = if prefix.eq_ignore_ascii_case("udp") {
            Transport::Udp
        } else if prefix.eq_ignore_ascii_case("tcp") {
            Transport::Tcp
        } else {
            return Err(ValueError(format!(
                "unknown transport \"{prefix}\" in \"{s}\": expected \"udp\" or \"tcp\"; {FORMAT}"
            )));
        };
        let addr = socket_addr(rest, s, &format!("{FORMAT}, e.g. \"udp:10.0.0.5:5060\""))?;
        Ok(SipAddr { transport, addr })
    }
}

/// A name server: `IP` (port 53) or `IP:PORT` (`[IPv6]:PORT`).
pub fn parse_dns_server(s: &str) -> Result<SocketAddr, ValueError> {
    if let Ok(ip) = parse_ip(s) {
        return Ok(SocketAddr::new(ip, 53));
    }
    if !s.contains(':') {
        // Not an IP and no port: parse_ip says why (a host name, say).
        return parse_ip(s).map(|ip| SocketAddr::new(ip, 53));
    }
    socket_addr(
        s,
        s,
        "write \"IP\" or \"IP:PORT\", e.g. \"192.0.2.53\" or \"[2001:db8::53]:53\"",
    )
}

/// `IP:PORT` / `[IPv6]:PORT` (`text`, part of the whole value `whole`); `how` says how to write
/// it when it has no port or an unclosed bracket.
fn socket_addr(text: &str, whole: &str, how: &str) -> Result<SocketAddr, ValueError> {
    let (host, port) =
        split_host_port(text).map_err(|why| ValueError(format!("{why} in \"{whole}\": {how}")))?;
    let ip = parse_ip(host)?;
    let port: u16 = port.parse().map_err(|_| {
        ValueError(format!(
            "port \"{port}\" in \"{whole}\" is not a number in 0..=65535"
        ))
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// Splits `IP:PORT` / `[IPv6]:PORT` into host and port text, naming what is missing.
fn split_host_port(rest: &str) -> Result<(&str, &str), &'static str> {
    if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err("unclosed '[' around the IPv6 address");
        };
        return match after.strip_prefix(':') {
            Some(port) if !port.is_empty() => Ok((host, port)),
            _ => Err("missing port"),
        };
    }
    if rest.parse::<Ipv6Addr>().is_ok() {
        return Err("missing port (an IPv6 address needs brackets before the port)");
    }
    match rest.rsplit_once(':') {
        Some((_, "")) | None => Err("missing port"),
        Some((host, _)) if host.contains(':') => {
            Err("an IPv6 address needs brackets before the port")
        }
        Some((host, port)) => Ok((host, port)),
    }
}

/// Parses an IP literal (no port, no hostname).
pub fn parse_ip(s: &str) -> Result<IpAddr, ValueError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip);
    }
    if s.is_empty() {
        return Err(ValueError::new("missing IP address"));
    }
    if s.parse::<SocketAddr>().is_ok() {
        return Err(ValueError(format!(
            "\"{s}\" has a port: write the IP address alone"
        )));
    }
    let name_like = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if name_like && s.chars().any(|c| c.is_ascii_alphabetic()) {
        Err(ValueError(format!(
            "\"{s}\" is not an IP address; {NO_HOSTNAMES}"
        )))
    } else {
        Err(ValueError(format!(
            "\"{s}\" is not an IP address (e.g. 192.0.2.10 or 2001:db8::10)"
        )))
    }
}

/// An inclusive UDP port range for media; `low` is even (RTP on even ports, RTCP on the odd port
/// above, RFC 3550 §11), both ends are at least 1024 and it holds at least four ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port (even).
    pub low: u16,
    /// Last port (inclusive).
    pub high: u16,
}

impl PortRange {
    /// Lowest port an operator may configure: the ports below are reserved for system services.
    pub const MIN_PORT: u16 = 1024;
    /// Fewest ports a range may hold: one call needs an RTP/RTCP pair towards each party.
    pub const MIN_PORTS: u32 = 4;

    /// Number of ports in the range (0 for a hand-built range with `high < low`).
    pub fn len(&self) -> u32 {
        if self.high < self.low {
            0
        } else {
            u32::from(self.high) - u32::from(self.low) + 1
        }
    }

    /// True only for a hand-built range with `high < low`; parsed ranges are never empty.
    pub fn is_empty(&self) -> bool {
        self.high < self.low
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl FromStr for PortRange {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let format = || {
            ValueError(format!(
                "\"{s}\" is not a port range: write \"LOW-HIGH\", e.g. \"30000-39999\""
            ))
        };
        let (low, high) = s.split_once('-').ok_or_else(format)?;
        let low: u16 = low.trim().parse().map_err(|_| format())?;
        let high: u16 = high.trim().parse().map_err(|_| format())?;
        if low < Self::MIN_PORT {
            return Err(ValueError(format!(
                "LOW ({low}) must be at least {}: lower ports are reserved for system services",
                Self::MIN_PORT
            )));
        }
        if low >= high {
            return Err(ValueError(format!(
                "LOW ({low}) must be lower than HIGH ({high})"
            )));
        }
        if low % 2 != 0 {
            return Err(ValueError(format!(
                "LOW ({low}) must be even: RTP uses even ports and RTCP the odd port above (RFC 3550 §11)"
            )));
        }
        let range = PortRange { low, high };
        if range.len() < Self::MIN_PORTS {
            return Err(ValueError(format!(
                "\"{s}\" holds {} ports; at least {} are needed (one call uses an RTP/RTCP pair towards each party)",
                range.len(),
                Self::MIN_PORTS
            )));
        }
        Ok(range)
    }
}

/// A called number a `[[service]]` claims: the exact Request-URI user part, or a prefix of it
/// written with a trailing `*` (`"+35829512*"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberPattern {
    /// Matches this number only.
    Exact(String),
    /// Matches every number that starts with this text (written without the `*`).
    Prefix(String),
}

impl NumberPattern {
    /// Whether the called number `number` is one this pattern claims.
    pub fn matches(&self, number: &str) -> bool {
        match self {
            NumberPattern::Exact(exact) => exact == number,
            NumberPattern::Prefix(prefix) => number.starts_with(prefix.as_str()),
        }
    }

    /// Whether every number `other` matches is matched by `self` too: `other` placed after
    /// `self` can never be the first match.
    pub fn covers(&self, other: &NumberPattern) -> bool {
        match (self, other) {
            (NumberPattern::Exact(a), NumberPattern::Exact(b)) => a == b,
            (NumberPattern::Exact(_), NumberPattern::Prefix(_)) => false,
            (NumberPattern::Prefix(p), NumberPattern::Exact(b) | NumberPattern::Prefix(b)) => {
                b.starts_with(p.as_str())
            }
        }
    }
}

impl fmt::Display for NumberPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumberPattern::Exact(exact) => f.write_str(exact),
            NumberPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl FromStr for NumberPattern {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ValueError::new(
                "empty number: write a called number such as \"+358295120000\", or a prefix \
                 ending in * such as \"+35829512*\"",
            ));
        }
        if s == "*" {
            return Err(ValueError::new(
                "\"*\" alone matches every number: leave `numbers` out to make this the default \
                 service",
            ));
        }
        let (body, prefix) = match s.strip_suffix('*') {
            Some(body) => (body, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(ValueError(format!(
                "\"{s}\": * may only end a prefix, e.g. \"+35829512*\""
            )));
        }
        if body.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValueError(format!(
                "\"{s}\" contains white space: numbers are matched against the Request-URI user \
                 part, which has none"
            )));
        }
        let body = body.to_owned();
        Ok(if prefix {
            NumberPattern::Prefix(body)
        } else {
            NumberPattern::Exact(body)
        })
    }
}

/// Which of a service's answered calls are recorded (`record = ...`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RecordRule {
    /// `"all"`: every answered call.
    All,
    /// `"none"`: no call; each still gets its sidecar saying so.
    None,
    /// `{ sample = share }`: this share (0.0..=1.0) of the calls, chosen by Call-ID and
    /// `policy.sample_seed`.
    Sample(f64),
}

/// Parses a duration written as a whole number and a unit: `500ms`, `60s`, `5m` (or `5min`), `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    const UNITS: &str = "ms, s, m or min, h";
    let text = s.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(ValueError(format!(
            "\"{s}\" is not a duration: write a whole number and a unit ({UNITS}), e.g. \"60s\""
        )));
    }
    if unit.is_empty() {
        return Err(ValueError(format!(
            "\"{s}\" has no unit: write e.g. \"{number}s\" (units: {UNITS})"
        )));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| ValueError(format!("\"{s}\" is too large")))?;
    if unit.starts_with('.') || unit.starts_with(',') {
        return Err(ValueError(format!(
            "\"{s}\" is not a whole number: use a smaller unit, e.g. \"1500ms\" for 1.5s"
        )));
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(ValueError(format!(
                "unknown unit \"{unit}\" in \"{s}\": use {UNITS}"
            )))
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| ValueError(format!("\"{s}\" is too large")))
}

/// Formats a duration the way the config file writes it, for messages: whole hours as `h`,
/// whole seconds as `s` (so limits read "60s", as documented), anything else as `ms`.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 3_600_000 && ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_servers_default_to_port_53_and_refuse_names() {
        assert_eq!(
            parse_dns_server("192.0.2.53").unwrap(),
            "192.0.2.53:53".parse().unwrap()
        );
        assert_eq!(
            parse_dns_server("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_dns_server("[2001:db8::53]:5353").unwrap(),
            "[2001:db8::53]:5353".parse().unwrap()
        );
        assert_eq!(
            parse_dns_server("2001:db8::53").unwrap(),
            "[2001:db8::53]:53".parse().unwrap()
        );
        assert!(parse_dns_server("ns1.example.com")
            .unwrap_err()
            .0
            .contains("hostnames"));
        assert!(parse_dns_server("127.0.0.1:x")
            .unwrap_err()
            .0
            .contains("port"));
    }

    #[test]
    fn sip_addr_accepts_udp_tcp_and_ipv6() {
        let cases = [
            ("udp:10.0.0.5:5060", "udp:10.0.0.5:5060", Transport::Udp),
            ("tcp:0.0.0.0:5060", "tcp:0.0.0.0:5060", Transport::Tcp),
            ("udp:[::1]:5060", "udp:[::1]:5060", Transport::Udp),
            ("UDP:127.0.0.1:0", "udp:127.0.0.1:0", Transport::Udp),
        ];
        for (input, printed, transport) in cases {
            let addr: SipAddr = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(addr.to_string(), printed, "{input}");
            assert_eq!(addr.transport, transport, "{input}");
        }
    }

    #[test]
    fn sip_addr_errors_name_the_problem() {
        let cases = [
            ("xdp:1.2.3.4:5060", "unknown transport \"xdp\""),
            ("1.2.3.4", "has no transport"),
            ("udp:10.0.0.5", "missing port"),
            ("udp:10.0.0.5:", "missing port"),
            ("udp:[::1]", "missing port"),
            ("udp:::1", "needs brackets"),
            ("udp:::1:5060", "needs brackets"),
            ("udp:[::1:5060", "unclosed"),
            ("udp:pbx.example.com:5060", "hostnames are not accepted"),
            ("udp:10.0.0.5:70000", "not a number in 0..=65535"),
            ("udp::5060", "missing IP address"),
        ];
        for (input, fragment) in cases {
            let err = input.parse::<SipAddr>().expect_err(input).to_string();
            assert!(err.contains(fragment), "{input}: {err}");
        }
    }

    #[test]
    fn ip_literals_only() {
        assert_eq!(parse_ip("192.0.2.10"), Ok("192.0.2.10".parse().unwrap()));
        assert!(parse_ip("media.example.com")
            .unwrap_err()
            .0
            .contains("hostnames are not accepted"));
        assert!(parse_ip("192.0.2.10:5060")
            .unwrap_err()
            .0
            .contains("has a port"));
        assert!(parse_ip("300.1.1.1")
            .unwrap_err()
            .0
            .contains("not an IP address"));
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            "30000-39999".parse::<PortRange>(),
            Ok(PortRange {
                low: 30000,
                high: 39999
            })
        );
        assert_eq!("30000-30003".parse::<PortRange>().map(|r| r.len()), Ok(4));
        assert_eq!(
            PortRange {
                low: 2000,
                high: 1000
            }
            .len(),
            0
        );
        assert!(PortRange {
            low: 2000,
            high: 1000
        }
        .is_empty());
        let cases = [
            ("40000-30000", "must be lower than HIGH"),
            ("30001-39999", "must be even"),
            ("30000-30002", "at least 4 are needed"),
            ("1000-2000", "at least 1024"),
            ("30000", "write \"LOW-HIGH\""),
            ("a-b", "write \"LOW-HIGH\""),
            ("30000-70000", "write \"LOW-HIGH\""),
        ];
        for (input, fragment) in cases {
            let err = input.parse::<PortRange>().expect_err(input).to_string();
            assert!(err.contains(fragment), "{input}: {err}");
        }
    }

    #[test]
    fn durations() {
        let ok = [
            ("500ms", 500),
            ("60s", 60_000),
            ("5m", 300_000),
            ("5min", 300_000),
            ("1h", 3_600_000),
            ("10 s", 10_000),
        ];
        for (input, ms) in ok {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_millis(ms)),
                "{input}"
            );
        }
        let bad = [
            ("60", "has no unit"),
            ("s", "is not a duration"),
            ("1.5s", "not a whole number"),
            ("3 days", "unknown unit"),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615h", "too large"),
        ];
        for (input, fragment) in bad {
            let err = parse_duration(input).expect_err(input).to_string();
            assert!(err.contains(fragment), "{input}: {err}");
        }
    }

    #[test]
    fn number_patterns_match_and_cover() {
        let p = |s: &str| {
            s.parse::<NumberPattern>()
                .unwrap_or_else(|e| panic!("{s}: {e}"))
        };
        assert_eq!(
            p("+358295120000"),
            NumberPattern::Exact("+358295120000".into())
        );
        assert_eq!(p("+35829512*"), NumberPattern::Prefix("+35829512".into()));
        assert_eq!(p("+35829512*").to_string(), "+35829512*");
        assert!(p("+35829512*").matches("+358295120000"));
        assert!(!p("+35829512*").matches("+35829513"));
        assert!(p("100").matches("100") && !p("100").matches("1000"));
        assert!(p("+358*").covers(&p("+35829512*")));
        assert!(p("+358*").covers(&p("+358295120000")));
        assert!(p("100").covers(&p("100")));
        assert!(!p("100").covers(&p("100*")));
        assert!(!p("+35829512*").covers(&p("+358*")));
        let bad = [
            ("", "empty number"),
            ("*", "leave `numbers` out"),
            ("+358*12*", "* may only end a prefix"),
            ("029 512", "contains white space"),
        ];
        for (input, fragment) in bad {
            let err = input.parse::<NumberPattern>().expect_err(input).to_string();
            assert!(err.contains(fragment), "{input}: {err}");
        }
    }

    #[test]
    fn durations_format_back() {
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }
}
