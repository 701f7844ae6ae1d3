//! SIP message layer: parse and print one message, keeping every header line raw (name
//! spelling, spacing, folding) so what the proxy does not edit is forwarded byte-for-byte;
//! values are decoded on demand (the ezk pattern). No IO.
//!
//! Layout: `parse` frames bytes, `header` holds the raw lines and the name table, `uri` and
//! `via` decode values, `validate` holds the checks a proxy makes before forwarding.

mod error;
mod header;
mod parse;
mod uri;
mod validate;
mod via;

#[cfg(test)]
mod tests;

pub use error::{Invalid, ParseError};
pub use header::Header;
pub use uri::{parse_name_addr, parse_uri, NameAddr, SipUri};
pub use via::{parse_via, Via};

use header::{find_param, header_param_section, name_matches, split_top_level, Eol};
use parse::Framing;

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP-Version`
    Request {
        /// Method token, case-sensitive (RFC 3261 §7.1); extension methods allowed.
        method: String,
        /// Request-URI as received (any scheme).
        uri: String,
        /// SIP-Version as received (`SIP/2.0`; anything else fails `validate`).
        version: String,
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`
    Response {
        /// SIP-Version as received.
        version: String,
        /// Status code, 100..=699.
        code: u16,
        /// Reason phrase (non-UTF-8 bytes replaced; the raw line is printed unchanged).
        reason: String,
    },
}

/// One SIP message: start line, raw header lines in order, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    start: StartLine,
    /// Bytes printed for the start line (without terminator).
    start_raw: Vec<u8>,
    start_eol: Eol,
    headers: Vec<Header>,
    /// Terminator of the empty line that ends the header section.
    end_eol: Eol,
    body: Vec<u8>,
}

impl Message {
    /// Parses one message from the start of `buf`. Returns the message and the number of bytes
    /// consumed (leading CRLFs + start line + headers + Content-Length bytes of body). For UDP
    /// the caller ignores trailing bytes (RFC 4475 §3.1.1.8); for TCP framing use
    /// [`Message::parse_stream`]. Datagram semantics: without Content-Length the rest of
    /// `buf` is the body (RFC 3261 §18.3).
    pub fn parse(buf: &[u8]) -> Result<(Message, usize), ParseError> {
        parse::parse(buf, Framing::Datagram)
    }

    /// Like [`Message::parse`] with stream semantics: Content-Length is mandatory
    /// ([`ParseError::MissingContentLength`]); [`ParseError::Incomplete`] and
    /// [`ParseError::BodyTruncated`] mean "read more bytes".
    pub fn parse_stream(buf: &[u8]) -> Result<(Message, usize), ParseError> {
        parse::parse(buf, Framing::Stream)
    }

    /// A new request `method uri SIP/2.0` without headers or body.
    pub fn request(method: &str, uri: &str) -> Message {
        let start = StartLine::Request {
            method: method.to_string(),
            uri: uri.to_string(),
            version: "SIP/2.0".to_string(),
        };
        Message::with_start(start)
    }

    /// A new response `SIP/2.0 code reason` without headers or body.
    pub fn response(code: u16, reason: &str) -> Message {
        let start = StartLine::Response {
            version: "SIP/2.0".to_string(),
            code,
            reason: reason.replace(['\r', '\n'], " "),
        };
        Message::with_start(start)
    }

    fn with_start(start: StartLine) -> Message {
        let mut msg = Message {
            start,
            start_raw: Vec::new(),
            start_eol: Eol::CrLf,
            headers: Vec::new(),
            end_eol: Eol::CrLf,
            body: Vec::new(),
        };
        msg.regenerate_start_line();
        msg
    }

    fn regenerate_start_line(&mut self) {
        let text = match &self.start {
            StartLine::Request {
                method,
                uri,
                version,
            } => format!("{method} {uri} {version}"),
            StartLine::Response {
                version,
                code,
                reason,
            } => format!("{version} {code} {reason}"),
        };
        self.start_raw = text.replace(['\r', '\n'], " ").into_bytes();
    }

    /// The start line.
    pub fn start_line(&self) -> &StartLine {
        &self.start
    }

    /// True for requests.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// Method of a request; `None` for responses.
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// Request-URI of a request; `None` for responses.
    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// Status code of a response; `None` for requests.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// SIP-Version of the start line.
    pub fn version(&self) -> &str {
        match &self.start {
            StartLine::Request { version, .. } | StartLine::Response { version, .. } => version,
        }
    }

    /// All header lines in order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Value of the first line called `name` (case-insensitive; compact forms accepted on both
    /// sides: `header("i")` finds `Call-ID`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| name_matches(h.name(), name))
            .map(Header::value)
    }

    /// The value of every line called `name`, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| name_matches(h.name(), name))
            .map(Header::value)
    }

    /// Every comma-separated element across all lines called `name` (commas inside quotes and
    /// `<>` do not split); empty elements are skipped. For Via, Route, Record-Route, Contact.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|h| name_matches(h.name(), name))
            .flat_map(|h| split_top_level(h.value(), b','))
            .filter(|e| !e.is_empty())
            .collect()
    }

    /// Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.header("call-id")
    }

    /// CSeq number and method; `None` when absent or not `number SP method` with a number
    /// that fits in 32 bits.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let value = self.header("cseq")?;
        let mut parts = value
            .split(|c: char| header::is_ws(c))
            .filter(|p| !p.is_empty());
        let number = parts.next()?;
        let method = parts.next()?;
        if parts.next().is_some() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((number.parse().ok()?, method))
    }

    /// `tag` parameter of From.
    pub fn from_tag(&self) -> Option<&str> {
        find_param(header_param_section(self.header("from")?), "tag").flatten()
    }

    /// `tag` parameter of To.
    pub fn to_tag(&self) -> Option<&str> {
        find_param(header_param_section(self.header("to")?), "tag").flatten()
    }

    /// The first Via element, decoded; `None` when absent or malformed. Empty parameters
    /// (`;;`) are skipped here so a 400 can still be routed back (validate() rejects them).
    pub fn top_via(&self) -> Option<Via> {
        self.values("via")
            .first()
            .and_then(|v| via::parse_via_lenient(v).ok())
    }

    /// Max-Forwards; `None` when absent or not a decimal number that fits in 32 bits.
    pub fn max_forwards(&self) -> Option<u32> {
        let v = self.header("max-forwards")?;
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    }

    /// The body (exactly Content-Length bytes, or the rest of the datagram without one).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// True when the headers needed to answer (Via, From, To, Call-ID, CSeq) are readable, so
    /// a 400/505 can be sent (RFC 3261 §8.2.6.2).
    pub fn can_reply(&self) -> bool {
        self.top_via().is_some()
            && self.header("from").is_some()
            && self.header("to").is_some()
            && self.call_id().is_some()
            && self.header("cseq").is_some()
    }

    // ----- editing: every untouched header line stays byte-for-byte as received -------------

    /// Inserts a new line `name: value` before the first existing line of the same name, or
    /// before all headers if there is none (for our Via and Record-Route, RFC 3261 §16.6).
    pub fn push_header_top(&mut self, name: &str, value: &str) {
        let header = self.new_header(name, value);
        let at = self
            .headers
            .iter()
            .position(|h| name_matches(h.name(), name))
            .unwrap_or(0);
        self.headers.insert(at, header);
    }

    /// Appends a new line `name: value` after all headers.
    pub fn append_header(&mut self, name: &str, value: &str) {
        let header = self.new_header(name, value);
        self.headers.push(header);
    }

    /// Removes the first comma element of the first line called `name` (the whole line when it
    /// had one element) and returns it. The rest of that line keeps its bytes. For popping our
    /// Via (RFC 3261 §16.7 step 3) and our Route (§16.4), which may share a line with others.
    pub fn remove_first_value(&mut self, name: &str) -> Option<String> {
        let idx = self
            .headers
            .iter()
            .position(|h| name_matches(h.name(), name))?;
        let header = self.headers.get(idx)?;
        let first = split_top_level(header.value(), b',')
            .into_iter()
            .next()
            .unwrap_or("")
            .to_string();
        match header.without_first_element() {
            Some(rest) => {
                if let Some(slot) = self.headers.get_mut(idx) {
                    *slot = rest;
                }
            }
            None => {
                self.headers.remove(idx);
            }
        }
        Some(first)
    }

    /// Replaces the first line called `name` by a regenerated `Name: value` line (the name
    /// keeps its received spelling, e.g. compact `l`), or appends one if absent.
    pub fn set_header(&mut self, name: &str, value: &str) {
        match self
            .headers
            .iter()
            .position(|h| name_matches(h.name(), name))
        {
            Some(idx) => {
                if let Some(slot) = self.headers.get_mut(idx) {
                    let mut header = Header::new(slot.wire_name(), value);
                    header.set_eol(slot.eol());
                    *slot = header;
                }
            }
            None => self.append_header(name, value),
        }
    }

    /// Removes every line called `name`.
    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|h| !name_matches(h.name(), name));
    }

    /// Replaces the Request-URI (requests only; ignored for responses).
    pub fn set_request_uri(&mut self, new_uri: &str) {
        if let StartLine::Request { uri, .. } = &mut self.start {
            *uri = new_uri.replace(['\r', '\n', ' ', '\t'], "");
            self.regenerate_start_line();
        }
    }

    /// Replaces the body and rewrites Content-Length (the first such line keeps its spelling,
    /// compact `l` included; further ones are dropped; one is appended if there was none).
    pub fn set_body(&mut self, body: Vec<u8>) {
        let len = body.len().to_string();
        self.body = body;
        let mut seen = false;
        self.headers.retain(|h| {
            if h.name() != "content-length" {
                return true;
            }
            let keep = !seen;
            seen = true;
            keep
        });
        if seen {
            self.set_header("content-length", &len);
        } else {
            // A new line uses the full name, as RFC 3261 §7.3.3 recommends.
            self.append_header("Content-Length", &len);
        }
    }

    /// Appends start line, raw header lines, the empty line and the body to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.size_hint());
        out.extend_from_slice(&self.start_raw);
        out.extend_from_slice(self.start_eol.as_bytes());
        for h in &self.headers {
            h.write_to(out);
        }
        out.extend_from_slice(self.end_eol.as_bytes());
        out.extend_from_slice(&self.body);
    }

    /// The message as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_hint());
        self.write_to(&mut out);
        out
    }

    fn size_hint(&self) -> usize {
        self.start_raw.len()
            + 4
            + self
                .headers
                .iter()
                .map(|h| h.raw().len() + 2)
                .sum::<usize>()
            + self.body.len()
    }

    /// A new line in this message's line-ending style.
    fn new_header(&self, name: &str, value: &str) -> Header {
        let mut header = Header::new(name, value);
        header.set_eol(self.start_eol);
        header
    }

    /// Builds a response to `req` (RFC 3261 §8.2.6): see [`make_response`] with no To tag.
    pub fn response_to(req: &Message, code: u16, reason: &str) -> Message {
        make_response(req, code, reason, None)
    }
}

/// Builds a response to `req` (RFC 3261 §8.2.6.2): copies every Via line raw, From, To,
/// Call-ID and CSeq (and Timestamp for 100, §8.2.6.1), adds `;tag=<to_tag>` to To when given
/// and To has no tag yet, and ends with `Content-Length: 0`.
pub fn make_response(req: &Message, code: u16, reason: &str, to_tag: Option<&str>) -> Message {
    let mut resp = Message::response(code, reason);
    for h in req.headers() {
        let copy = match h.name() {
            "via" | "from" | "call-id" | "cseq" => h.clone(),
            "timestamp" if code == 100 => h.clone(),
            "to" => match to_tag {
                Some(tag) if find_param(header_param_section(h.value()), "tag").is_none() => {
                    h.with_suffix(&format!(";tag={tag}"))
                }
                _ => h.clone(),
            },
            _ => continue,
        };
        resp.headers.push(copy);
    }
    resp.append_header("Content-Length", "0");
    resp
}
