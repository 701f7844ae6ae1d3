//! Splitting an SDP body into raw lines, validating its shape, and reading per-stream facts
//! (`MediaView`) out of the lines. Nothing here changes a line; values are read with trailing
//! whitespace ignored, the raw text is kept for printing.

use std::net::IpAddr;
use std::ops::Range;
use std::str::FromStr;

use super::{Direction, MediaView, RtpMap, SdpError};

/// How a line was terminated in the received body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Eol {
    /// `\r\n`, as RFC 8866 §5 prescribes.
    CrLf,
    /// A bare `\n`, which RFC 8866 §5 asks parsers to accept.
    Lf,
    /// The last line of a body without a final newline.
    None,
}

impl Eol {
    /// The terminator's bytes.
    pub(super) fn as_bytes(self) -> &'static [u8] {
        match self {
            Eol::CrLf => b"\r\n",
            Eol::Lf => b"\n",
            Eol::None => b"",
        }
    }
}

/// One line of the body: its text without the terminator, and the terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    /// Text as received (trailing whitespace included, terminator excluded).
    pub(super) text: String,
    /// How the line ended.
    pub(super) eol: Eol,
}

impl Line {
    /// A new line.
    pub(super) fn new(text: String, eol: Eol) -> Line {
        Line { text, eol }
    }

    /// The type letter and the value (trailing whitespace trimmed) of a `<type>=<value>` line;
    /// `None` for a blank or malformed line.
    pub(super) fn field(&self) -> Option<(u8, &str)> {
        let bytes = self.text.as_bytes();
        let kind = *bytes.first()?;
        if !kind.is_ascii_alphabetic() || bytes.get(1) != Some(&b'=') {
            return None;
        }
        // Index 2 is a char boundary: the first two bytes are ASCII.
        let value = self.text.get(2..)?;
        Some((kind, trim_end(value)))
    }

    /// For an `a=` line, the attribute name and its value (after the first `:`), if any
    /// (RFC 8866 §5.13: `a=<attribute-name>[:<attribute-value>]`).
    pub(super) fn attr(&self) -> Option<(&str, Option<&str>)> {
        match self.field()? {
            (b'a', v) => Some(match v.split_once(':') {
                Some((name, value)) => (name, Some(value)),
                None => (v, None),
            }),
            _ => None,
        }
    }

    /// True for a line of the given type letter.
    pub(super) fn is(&self, kind: u8) -> bool {
        self.field().is_some_and(|(k, _)| k == kind)
    }

    /// True for a line holding only whitespace (tolerated, e.g. an extra newline at the end).
    fn is_blank(&self) -> bool {
        trim_end(&self.text).is_empty()
    }
}

/// `s` without trailing spaces, tabs and stray carriage returns.
fn trim_end(s: &str) -> &str {
    s.trim_end_matches([' ', '\t', '\r'])
}

/// Splits a body into lines, remembering each line's terminator.
pub(super) fn split_lines(body: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        match rest.split_once('\n') {
            Some((raw, tail)) => {
                match raw.strip_suffix('\r') {
                    Some(text) => lines.push(Line::new(text.to_owned(), Eol::CrLf)),
                    None => lines.push(Line::new(raw.to_owned(), Eol::Lf)),
                }
                rest = tail;
            }
            None => {
                lines.push(Line::new(rest.to_owned(), Eol::None));
                rest = "";
            }
        }
    }
    lines
}

/// Where the session part and each media section are, as line index ranges.
pub(super) struct Layout {
    /// Lines before the first `m=` line.
    pub(super) session: Range<usize>,
    /// One range per `m=` section: its `m=` line up to (not including) the next `m=` line.
    pub(super) media: Vec<Range<usize>>,
}

/// Finds the session part and the media sections.
pub(super) fn layout(lines: &[Line]) -> Layout {
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is(b'm'))
        .map(|(i, _)| i)
        .collect();
    let session_end = starts.first().copied().unwrap_or(lines.len());
    let media = starts
        .iter()
        .enumerate()
        .map(|(k, &start)| start..starts.get(k + 1).copied().unwrap_or(lines.len()))
        .collect();
    Layout {
        session: 0..session_end,
        media,
    }
}

/// Checks the shape `Sdp::parse` promises: `v=` first, every non-blank line `<letter>=...`,
/// every `m=` line understood.
pub(super) fn validate(lines: &[Line]) -> Result<(), SdpError> {
    match lines.first().and_then(Line::field) {
        Some((b'v', _)) => {}
        _ => return Err(SdpError::MissingVersion),
    }
    for (i, line) in lines.iter().enumerate() {
        if line.is_blank() {
            continue;
        }
        match line.field() {
            None => return Err(SdpError::MalformedLine { line: i + 1 }),
            Some((b'm', _)) => {
                parse_m_line(&line.text).map_err(|reason| SdpError::BadMediaLine {
                    line: i + 1,
                    reason,
                })?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Whitespace-separated tokens of `s` with their byte offsets. RFC 8866 separates fields by a
/// single space; runs of spaces and tabs are accepted too.
pub(super) fn tokens(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in s.char_indices() {
        let ws = c == ' ' || c == '\t';
        match (ws, start) {
            (true, Some(st)) => {
                if let Some(tok) = s.get(st..i) {
                    out.push((st, tok));
                }
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(st) = start {
        if let Some(tok) = s.get(st..) {
            out.push((st, tok));
        }
    }
    out
}

/// An unsigned number written with ASCII digits only (`str::parse` would also take a `+`).
pub(super) fn number<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The parts of an `m=` line (RFC 8866 §5.14: `m=<media> <port>[/<number of ports>] <proto> <fmt> ...`).
pub(super) struct MLine<'a> {
    /// Media type.
    pub(super) kind: &'a str,
    /// Port.
    pub(super) port: u16,
    /// Byte range of the port token (including any `/<number>`) in the line's text.
    pub(super) port_span: Range<usize>,
    /// Transport protocol.
    pub(super) proto: &'a str,
    /// Format tokens.
    pub(super) fmts: Vec<&'a str>,
}

/// Parses an `m=` line's text (including the `m=` prefix). An empty format list is tolerated.
pub(super) fn parse_m_line(text: &str) -> Result<MLine<'_>, &'static str> {
    let value = text.get(2..).map(trim_end).ok_or("missing fields")?;
    let toks = tokens(value);
    let (kind, (port_at, port_tok), proto) = match toks.as_slice() {
        [(_, kind), port, (_, proto), ..] => (*kind, *port, *proto),
        _ => return Err("needs media, port and proto"),
    };
    let (port_str, count) = match port_tok.split_once('/') {
        Some((p, n)) => (p, Some(n)),
        None => (port_tok, None),
    };
    let port = number::<u16>(port_str).ok_or("port is not a number from 0 to 65535")?;
    if let Some(n) = count {
        number::<u32>(n).ok_or("number of ports is not a number")?;
    }
    let start = port_at + 2;
    Ok(MLine {
        kind,
        port,
        port_span: start..start + port_tok.len(),
        proto,
        fmts: toks.iter().skip(3).map(|(_, t)| *t).collect(),
    })
}

/// The address of a connection value `<nettype> <addrtype> <address>[/ttl][/count]`
/// (RFC 8866 §5.7); `None` for FQDNs, a type that does not match the address, or junk.
pub(super) fn parse_connection(value: &str) -> Option<IpAddr> {
    let toks = tokens(value);
    match toks.as_slice() {
        [(_, net), (_, addrtype), (_, addr), ..] => connection_address(net, addrtype, addr),
        _ => None,
    }
}

/// Checks `IN IP4|IP6 <address>` and parses the address, ignoring multicast `/ttl/count`.
fn connection_address(net: &str, addrtype: &str, addr: &str) -> Option<IpAddr> {
    if !net.eq_ignore_ascii_case("IN") {
        return None;
    }
    let base = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = base.parse().ok()?;
    let type_matches = match ip {
        IpAddr::V4(_) => addrtype.eq_ignore_ascii_case("IP4"),
        IpAddr::V6(_) => addrtype.eq_ignore_ascii_case("IP6"),
    };
    type_matches.then_some(ip)
}

/// Parses an `a=rtpmap` value: `<pt> <encoding>/<clock rate>[/<channels>]` (RFC 8866 §6.6).
fn parse_rtpmap(value: &str) -> Option<RtpMap> {
    let toks = tokens(value);
    let [(_, pt), (_, spec), ..] = toks.as_slice() else {
        return None;
    };
    let mut parts = spec.split('/');
    let encoding = parts.next().filter(|e| !e.is_empty())?;
    let clock_rate = number::<u32>(parts.next()?)?;
    let channels = match parts.next() {
        Some(c) => Some(number::<u8>(c)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(RtpMap {
        payload_type: number::<u8>(pt)?,
        encoding: encoding.to_owned(),
        clock_rate,
        channels,
    })
}

/// Parses an `a=rtcp` value: `<port> [<nettype> <addrtype> <address>]` (RFC 3605 §2.1).
pub(super) fn parse_rtcp(value: &str) -> Option<(u16, Option<IpAddr>)> {
    let toks = tokens(value);
    let (_, port) = toks.first()?;
    let port = number::<u16>(port)?;
    let addr = match toks.as_slice() {
        [_, (_, net), (_, addrtype), (_, addr), ..] => connection_address(net, addrtype, addr),
        _ => None,
    };
    Some((port, addr))
}

/// The direction a direction attribute names, if it is one (RFC 8866 §6.7).
fn direction_of(line: &Line) -> Option<Direction> {
    let (name, _) = line.attr()?;
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

/// True for an attribute line named `name` (ASCII case-insensitive).
fn has_attr(lines: &[Line], name: &str) -> bool {
    lines
        .iter()
        .any(|l| l.attr().is_some_and(|(n, _)| n.eq_ignore_ascii_case(name)))
}

/// The first `c=` address among `lines`, if any `c=` line is there: `Some(None)` when the line is
/// present but unparsable.
fn connection_in(lines: &[Line]) -> Option<Option<IpAddr>> {
    lines.iter().find_map(|l| match l.field() {
        Some((b'c', v)) => Some(parse_connection(v)),
        _ => None,
    })
}

/// Facts about every media stream of a validated body.
pub(super) fn views(lines: &[Line]) -> Vec<MediaView> {
    let layout = layout(lines);
    let session = lines.get(layout.session.clone()).unwrap_or_default();
    let session_connection = connection_in(session).flatten();
    let session_direction = session.iter().find_map(direction_of);
    let session_fingerprint = has_attr(session, "fingerprint");
    layout
        .media
        .iter()
        .enumerate()
        .map(|(index, range)| {
            let section = lines.get(range.clone()).unwrap_or_default();
            let (kind, port, proto, fmts) = match section.first().map(|l| parse_m_line(&l.text)) {
                Some(Ok(m)) => (m.kind, m.port, m.proto, m.fmts),
                // Unreachable for a validated body; an empty view keeps indices aligned.
                _ => ("", 0, "", Vec::new()),
            };
            let attrs = section.get(1..).unwrap_or_default();
            let rtcp = attrs.iter().find_map(|l| match l.attr() {
                Some((name, Some(v))) if name.eq_ignore_ascii_case("rtcp") => parse_rtcp(v),
                _ => None,
            });
            let rtpmaps = attrs
                .iter()
                .filter_map(|l| match l.attr() {
                    Some((name, Some(v))) if name.eq_ignore_ascii_case("rtpmap") => parse_rtpmap(v),
                    _ => None,
                })
                .collect();
            let encrypted = proto.to_ascii_uppercase().contains("SAVP")
                || has_attr(attrs, "crypto")
                || has_attr(attrs, "fingerprint")
                || session_fingerprint;
            MediaView {
                index,
                kind: kind.to_owned(),
                port,
                proto: proto.to_owned(),
                payload_types: fmts.iter().filter_map(|f| number::<u8>(f)).collect(),
                connection: match connection_in(attrs) {
                    Some(media_level) => media_level,
                    None => session_connection,
                },
                rtcp,
                rtpmaps,
                direction: attrs
                    .iter()
                    .find_map(direction_of)
                    .or(session_direction)
                    .unwrap_or(Direction::SendRecv),
                encrypted,
            }
        })
        .collect()
}
