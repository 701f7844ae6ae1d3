//! Framing: splits a buffer into start line, raw header lines and body (RFC 3261 §7, §18.3).
//! Tolerates bare LF, folding and leading CRLFs; decodes nothing beyond what framing needs
//! (the start line and Content-Length).

use super::header::{is_token, is_token_byte, Eol, Header};
use super::{Message, ParseError, StartLine};

/// Upper bound on header lines, so hostile input cannot make us build a huge vector from a
/// small buffer of one-byte lines.
const MAX_HEADERS: usize = 1024;

/// Where the body ends when no Content-Length is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// Datagram: the body is the rest of the buffer (RFC 3261 §18.3 allows omitting
    /// Content-Length over UDP).
    Datagram,
    /// Stream: Content-Length is mandatory.
    Stream,
}

/// One physical line: content without terminator, terminator, and where the next line starts.
fn next_line(buf: &[u8], pos: usize) -> Option<(&[u8], Eol, usize)> {
    let rest = buf.get(pos..)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let line = rest.get(..nl)?;
    match line.split_last() {
        Some((b'\r', content)) => Some((content, Eol::CrLf, pos + nl + 1)),
        _ => Some((line, Eol::Lf, pos + nl + 1)),
    }
}

pub(super) fn parse(buf: &[u8], framing: Framing) -> Result<(Message, usize), ParseError> {
    // RFC 3261 §7.5: CRLFs before the start line are ignored.
    let mut pos = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or(ParseError::Empty)?;
    let (line, start_eol, next) = next_line(buf, pos).ok_or(ParseError::Incomplete)?;
    let (start, start_raw) = parse_start_line(line)?;
    pos = next;

    let mut headers: Vec<Header> = Vec::new();
    // Current header being accumulated: (first byte, end of content, terminator, line no).
    let mut current: Option<(usize, usize, Eol, usize)> = None;
    let mut line_no = 1;
    let end_eol = loop {
        let line_start = pos;
        let (line, eol, next) = next_line(buf, pos).ok_or(ParseError::Incomplete)?;
        line_no += 1;
        pos = next;
        if line.is_empty() {
            break eol;
        }
        let content_end = line_start + line.len();
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // RFC 3261 §7.3.1: a line starting with whitespace continues the header above.
            let cur = current
                .as_mut()
                .ok_or(ParseError::ContinuationWithoutHeader)?;
            cur.1 = content_end;
            cur.2 = eol;
            continue;
        }
        if let Some(done) = current.take() {
            push_header(&mut headers, buf, done)?;
        }
        if !line.contains(&b':') {
            return Err(ParseError::MissingColon { line: line_no });
        }
        current = Some((line_start, content_end, eol, line_no));
    };
    if let Some(done) = current.take() {
        push_header(&mut headers, buf, done)?;
    }

    let available = buf.len().saturating_sub(pos);
    let mut content_length = None;
    for h in headers.iter().filter(|h| h.name() == "content-length") {
        let n = parse_content_length(h.value())?;
        // The first one frames the message; validate() rejects duplicates (RFC 4475 §3.3.9).
        content_length.get_or_insert(n);
    }
    let body_len = match (content_length, framing) {
        (Some(n), _) => n,
        (None, Framing::Datagram) => available,
        (None, Framing::Stream) => return Err(ParseError::MissingContentLength),
    };
    if body_len > available {
        return Err(ParseError::BodyTruncated {
            declared: body_len,
            available,
        });
    }
    let body = buf.get(pos..pos + body_len).unwrap_or_default().to_vec();
    let msg = Message {
        start,
        start_raw,
        start_eol,
        headers,
        end_eol,
        body,
    };
    Ok((msg, pos + body_len))
}

fn push_header(
    headers: &mut Vec<Header>,
    buf: &[u8],
    (start, end, eol, line): (usize, usize, Eol, usize),
) -> Result<(), ParseError> {
    if headers.len() >= MAX_HEADERS {
        return Err(ParseError::TooManyHeaders(MAX_HEADERS));
    }
    let raw = buf.get(start..end).unwrap_or_default().to_vec();
    let header = Header::from_raw(raw, eol).ok_or(ParseError::HeaderName { line })?;
    headers.push(header);
    Ok(())
}

fn parse_content_length(value: &str) -> Result<usize, ParseError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::ContentLength);
    }
    value
        .parse::<usize>()
        .map_err(|_| ParseError::ContentLength)
}

fn is_sp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses the start line; returns it and the bytes to print for it. A request line is
/// reprinted in canonical form (single SP separators), which removes the extra SP of
/// RFC 4475 §3.1.2.9/§3.1.2.10 when such a request is forwarded; a status line is kept as
/// received, reason phrase bytes included.
fn parse_start_line(line: &[u8]) -> Result<(StartLine, Vec<u8>), ParseError> {
    if line.len() >= 4
        && line
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
    {
        return parse_status_line(line);
    }
    let text = std::str::from_utf8(line).map_err(|_| ParseError::StartLine("not UTF-8"))?;
    let text = text.trim_end_matches([' ', '\t']);
    let method_end = text
        .bytes()
        .position(is_sp)
        .ok_or(ParseError::StartLine("no Request-URI"))?;
    let method = text.get(..method_end).unwrap_or("");
    if !is_token(method) {
        return Err(ParseError::StartLine("method is not a token"));
    }
    let version_start = text.bytes().rposition(is_sp).map_or(0, |i| i + 1);
    let version = text.get(version_start..).unwrap_or("");
    if !version
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
        || !version.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ParseError::StartLine("no SIP version"));
    }
    let uri = text
        .get(method_end..version_start)
        .unwrap_or("")
        .trim_matches([' ', '\t']);
    if uri.is_empty() {
        return Err(ParseError::StartLine("no Request-URI"));
    }
    let raw = format!("{method} {uri} {version}").into_bytes();
    Ok((
        StartLine::Request {
            method: method.to_string(),
            uri: uri.to_string(),
            version: version.to_string(),
        },
        raw,
    ))
}

fn parse_status_line(line: &[u8]) -> Result<(StartLine, Vec<u8>), ParseError> {
    let sp = line
        .iter()
        .position(|&b| is_sp(b))
        .ok_or(ParseError::StatusCode)?;
    let version = line.get(..sp).unwrap_or_default();
    if !version.iter().all(|&b| is_token_byte(b) || b == b'/') {
        return Err(ParseError::StartLine("bad version"));
    }
    let rest = line.get(sp..).unwrap_or_default();
    let skip = rest.iter().position(|&b| !is_sp(b)).unwrap_or(rest.len());
    let rest = rest.get(skip..).unwrap_or_default();
    // Status-Code = 3DIGIT, followed by SP Reason-Phrase (RFC 3261 §7.2); an absent SP is
    // tolerated when nothing follows.
    let digits = rest.get(..3).ok_or(ParseError::StatusCode)?;
    if !digits.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| !is_sp(b)) {
        return Err(ParseError::StatusCode);
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if !(100..=699).contains(&code) {
        return Err(ParseError::StatusCode);
    }
    let reason = String::from_utf8_lossy(rest.get(4..).unwrap_or_default()).into_owned();
    Ok((
        StartLine::Response {
            version: String::from_utf8_lossy(version).into_owned(),
            code,
            reason,
        },
        line.to_vec(),
    ))
}
