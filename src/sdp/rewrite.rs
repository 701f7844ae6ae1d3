//! Producing the anchored body: the original lines with the recorded rewrites applied (media
//! ports, connection addresses, `a=rtcp`, ICE lines dropped, origin address). Lines not touched
//! by a rewrite are copied unchanged, terminator included.

use std::net::IpAddr;

use super::parse::{layout, parse_m_line, tokens, Eol, Line};

/// `IP4` or `IP6`, as SDP names the address type of `addr` (RFC 8866 §5.7).
fn addrtype(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// A `c=` line for `addr`.
fn connection_line(addr: IpAddr, eol: Eol) -> Line {
    Line::new(format!("c=IN {} {}", addrtype(addr), addr), eol)
}

/// True for attributes that belong to ICE (RFC 8839 §5): they describe paths around the proxy.
fn is_ice_attr(line: &Line) -> bool {
    line.attr().is_some_and(|(name, _)| {
        let name = name.to_ascii_lowercase();
        name == "candidate"
            || name == "remote-candidates"
            || name == "end-of-candidates"
            || name.starts_with("ice-")
    })
}

/// `text` with the byte range `span` replaced by `with`; `text` unchanged if `span` is not a
/// valid range of it.
fn splice(text: &str, span: std::ops::Range<usize>, with: &str) -> String {
    match (text.get(..span.start), text.get(span.end..)) {
        (Some(head), Some(tail)) => format!("{head}{with}{tail}"),
        _ => text.to_owned(),
    }
}

/// The `o=` line with its address type and unicast address replaced (RFC 8866 §5.2:
/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`); unchanged
/// if it does not have those six fields.
fn origin_line(line: &Line, addr: IpAddr) -> Line {
    let value = line.text.get(2..).unwrap_or_default();
    let toks = tokens(value);
    match (toks.get(4), toks.get(5)) {
        (Some((start, _)), Some((at, tok))) => {
            let span = (start + 2)..(at + 2 + tok.len());
            let with = format!("{} {}", addrtype(addr), addr);
            Line::new(splice(&line.text, span, &with), line.eol)
        }
        _ => line.clone(),
    }
}

/// The `m=` line with its port (and any `/<number of ports>`) replaced by `port`.
fn m_line(line: &Line, port: u16) -> Line {
    match parse_m_line(&line.text) {
        Ok(m) => Line::new(splice(&line.text, m.port_span, &port.to_string()), line.eol),
        Err(_) => line.clone(),
    }
}

/// The `a=rtcp` line pointing at `rtp_port + 1`, with `addr` if it named an address before
/// (RFC 3605 §2.1). `rewrite_media` refuses `rtp_port == 65535` for streams with `a=rtcp`.
fn rtcp_line(line: &Line, value: Option<&str>, addr: IpAddr, rtp_port: u16) -> Line {
    let port = rtp_port.saturating_add(1);
    let had_address = value.is_some_and(|v| tokens(v).len() > 1);
    let text = if had_address {
        format!("a=rtcp:{port} IN {} {addr}", addrtype(addr))
    } else {
        format!("a=rtcp:{port}")
    };
    Line::new(text, line.eol)
}

/// Appends one media section anchored at `addr:port` to `out`. `insert_c`: the stream has no
/// media-level `c=` and the session-level one is not being rewritten, so one is inserted after
/// the `m=` line and its `i=` line (RFC 8866 §5 field order: m, i, c, b, k, a).
fn render_stream(section: &[Line], addr: IpAddr, port: u16, insert_c: bool, out: &mut Vec<Line>) {
    let mut insert_pending = insert_c;
    for (k, line) in section.iter().enumerate() {
        if k == 0 {
            out.push(m_line(line, port));
            continue;
        }
        if insert_pending && !line.is(b'i') {
            out.push(connection_line(addr, eol_after(out)));
            insert_pending = false;
        }
        if line.is(b'c') {
            out.push(connection_line(addr, line.eol));
        } else if is_ice_attr(line) {
            // Dropped: see `is_ice_attr`.
        } else if let Some((_, value)) = line.attr().filter(|(n, _)| n.eq_ignore_ascii_case("rtcp"))
        {
            out.push(rtcp_line(line, value, addr, port));
        } else {
            out.push(line.clone());
        }
    }
    if insert_pending {
        out.push(connection_line(addr, eol_after(out)));
    }
}

/// The terminator for an inserted line: that of the line before it. `Eol::None` (the line before
/// was the body's last) is fixed up at the end of `render`.
fn eol_after(out: &[Line]) -> Eol {
    out.last().map(|l| l.eol).unwrap_or(Eol::CrLf)
}

/// The body `original` with the rewrites applied. `rewrites` has one entry per `m=` section;
/// see the module docs of `sdp` for the anchoring rule.
pub(super) fn render(
    original: &[Line],
    rewrites: &[Option<(IpAddr, u16)>],
    origin: Option<IpAddr>,
) -> Vec<Line> {
    let layout = layout(original);
    // Terminator used where a line gains one it did not have: the body's own style.
    let default_eol = original
        .iter()
        .map(|l| l.eol)
        .find(|e| *e != Eol::None)
        .unwrap_or(Eol::CrLf);
    let section = |r: &std::ops::Range<usize>| original.get(r.clone()).unwrap_or_default();
    let session = original.get(layout.session.clone()).unwrap_or_default();
    let session_has_c = session.iter().any(|l| l.is(b'c'));

    // (port as received, has its own c=) per stream.
    let facts: Vec<(u16, bool)> = layout
        .media
        .iter()
        .map(|r| {
            let lines = section(r);
            let port = lines
                .first()
                .and_then(|l| parse_m_line(&l.text).ok())
                .map(|m| m.port)
                .unwrap_or(0);
            (port, lines.iter().skip(1).any(|l| l.is(b'c')))
        })
        .collect();

    // The session-level address: set when every live stream is anchored at one address.
    let mut live = facts
        .iter()
        .enumerate()
        .filter(|(_, (port, _))| *port != 0)
        .map(|(i, _)| rewrites.get(i).copied().flatten().map(|(a, _)| a));
    let session_addr = match live.next().flatten() {
        Some(first) => live.all(|a| a == Some(first)).then_some(first),
        None => None,
    };

    let mut out = Vec::with_capacity(original.len() + facts.len());
    let mut origin_done = false;
    for line in session {
        match (line.field(), origin, session_addr) {
            (Some((b'o', _)), Some(addr), _) if !origin_done => {
                origin_done = true;
                out.push(origin_line(line, addr));
            }
            (Some((b'c', _)), _, Some(addr)) => out.push(connection_line(addr, line.eol)),
            (Some((b'a', _)), _, Some(_)) if is_ice_attr(line) => {}
            _ => out.push(line.clone()),
        }
    }
    for (i, range) in layout.media.iter().enumerate() {
        let lines = section(range);
        let (port, has_c) = facts.get(i).copied().unwrap_or((0, false));
        match rewrites.get(i).copied().flatten() {
            Some((addr, new_port)) if port != 0 => {
                // The stream needs its own c= unless it has one or the session c= now names addr.
                let session_serves = session_has_c && session_addr == Some(addr);
                let insert_c = !(has_c || session_serves);
                render_stream(lines, addr, new_port, insert_c, &mut out);
            }
            _ => out.extend(lines.iter().cloned()),
        }
    }

    // Line endings: every line but the last is terminated in the body's style; the last one is
    // terminated exactly when the received body's last line was.
    let count = out.len();
    for line in out.iter_mut().take(count.saturating_sub(1)) {
        if line.eol == Eol::None {
            line.eol = default_eol;
        }
    }
    if let (Some(last), Some(orig_last)) = (out.last_mut(), original.last()) {
        last.eol = match (orig_last.eol, last.eol) {
            (Eol::None, _) => Eol::None,
            (_, Eol::None) => default_eol,
            (_, eol) => eol,
        };
    }
    out
}
