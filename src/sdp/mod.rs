//! SDP (RFC 8866, formerly RFC 4566) bodies as the proxy sees them: parse into raw lines, read
//! per-stream facts (codecs, ports, direction, encryption) and rewrite connection addresses and
//! ports so media is anchored at the proxy, keeping every other byte exactly as received.
//!
//! The body is kept as its original lines (text plus the line ending each one had). Rewrites are
//! recorded as intentions (which stream goes to which address and port, the origin address) and
//! the printed body is re-derived from the original lines after every change, so the result does
//! not depend on the order of the calls and a stream can be re-anchored by calling again.
//!
//! Anchoring rule for connection addresses (`c=`, RFC 8866 §5.7): a stream with its own media-level
//! `c=` gets that line rewritten. For streams that rely on the session-level `c=`, the session line
//! is rewritten when *every* stream with a non-zero port has been rewritten to one and the same
//! address (the usual case: the proxy anchors the whole call); the session-level ICE attributes are
//! then dropped as well, because no path through the proxy can use them. Until then, each rewritten
//! stream that relies on the session `c=` gets its own media-level `c=` inserted after its `m=` line
//! (after the `i=` line if it has one, keeping the §5 field order), and the session line stays as
//! received, so the streams not (yet) anchored keep their original address.
//!
//! This module does no IO and allocates no ports.

mod parse;
mod rewrite;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use parse::{layout, parse_m_line, split_lines, Line};

/// Why an SDP body was rejected or a rewrite refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    /// The body is not valid UTF-8 (RFC 8866 §5: the default charset is UTF-8); `line` is the
    /// 1-based line holding the first invalid byte.
    #[error("SDP body is not valid UTF-8 (line {line})")]
    NotUtf8 {
        /// 1-based line number of the first invalid byte.
        line: usize,
    },
    /// The body does not start with a `v=` line (RFC 8866 §5: `v=` comes first).
    #[error("SDP body does not start with a v= line")]
    MissingVersion,
    /// A non-blank line is not of the form `<letter>=<value>` (RFC 8866 §5).
    #[error("SDP line {line} is not of the form <type>=<value>")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
    },
    /// An `m=` line cannot be understood, so its stream could not be anchored (RFC 8866 §5.14).
    #[error("SDP line {line}: bad m= line: {reason}")]
    BadMediaLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A rewrite named a media stream the body does not have.
    #[error("SDP has no media stream {index} (it has {count})")]
    NoSuchMedia {
        /// The index asked for.
        index: usize,
        /// How many `m=` lines the body has.
        count: usize,
    },
    /// A rewrite named a stream whose port is 0 (rejected or disabled, RFC 3264 §5.1); such
    /// streams are left untouched.
    #[error("SDP media stream {index} has port 0 and is not rewritten")]
    MediaDisabled {
        /// The index asked for.
        index: usize,
    },
    /// The port to rewrite to is unusable: 0 (would disable the stream), or 65535 for a stream
    /// carrying `a=rtcp`, whose RTCP port would be port + 1.
    #[error("cannot anchor media at port {port}")]
    InvalidPort {
        /// The port asked for.
        port: u16,
    },
}

/// Media direction attribute (RFC 8866 §6.7; RFC 3264 §5.1). The default is `sendrecv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// `a=sendrecv` (also the default when no direction attribute is present).
    SendRecv,
    /// `a=sendonly`: the sender of this SDP only sends (e.g. it put the call on hold).
    SendOnly,
    /// `a=recvonly`: the sender of this SDP only receives.
    RecvOnly,
    /// `a=inactive`: no media either way.
    Inactive,
}

/// One `a=rtpmap` attribute (RFC 8866 §6.6): `<payload type> <encoding name>/<clock rate>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// RTP payload type number.
    pub payload_type: u8,
    /// Encoding name as written (case preserved, e.g. `PCMU`, `opus`, `telephone-event`).
    pub encoding: String,
    /// RTP clock rate in Hz.
    pub clock_rate: u32,
    /// Encoding parameters: the channel count for audio, when given.
    pub channels: Option<u8>,
}

/// Read-only facts about one media stream (one `m=` section).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaView {
    /// Position among the `m=` lines, from 0.
    pub index: usize,
    /// Media type: `audio`, `video`, `image`, `application`, ...
    pub kind: String,
    /// Transport port; 0 means the stream is rejected or disabled.
    pub port: u16,
    /// Transport protocol: `RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, ...
    pub proto: String,
    /// Format list as payload types (non-numeric formats and values above 255 are skipped).
    pub payload_types: Vec<u8>,
    /// Media-level `c=` address, else the session-level one; `None` if absent or unparsable
    /// (e.g. an FQDN).
    pub connection: Option<IpAddr>,
    /// `a=rtcp` (RFC 3605): RTCP port and, when given and parsable, address.
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    /// The stream's `a=rtpmap` attributes in order (malformed ones skipped).
    pub rtpmaps: Vec<RtpMap>,
    /// Media-level direction attribute, else session-level, else `sendrecv`.
    pub direction: Direction,
    /// Secure RTP proto (`SAVP`/`SAVPF`), or `a=crypto` (RFC 4568) in the stream, or
    /// `a=fingerprint` (RFC 8122, DTLS-SRTP) in the stream or at session level.
    pub encrypted: bool,
}

/// An SDP body: its original lines, the rewrites asked for, and the body they produce.
///
/// Equality compares all of these, so two values compare equal when they came from the same
/// bytes and had the same rewrites applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// Lines as received; never modified.
    original: Vec<Line>,
    /// Per `m=` section: where that stream is to be received (address, port), if rewritten.
    rewrites: Vec<Option<(IpAddr, u16)>>,
    /// New `o=` unicast address, if rewritten.
    origin: Option<IpAddr>,
    /// `original` with the rewrites applied; what `to_bytes` prints and `media` reads.
    current: Vec<Line>,
}

impl Sdp {
    /// Parses an SDP body.
    ///
    /// Requires UTF-8, a `v=` first line, every non-blank line of the form `<letter>=<value>`
    /// and every `m=` line to carry a media type, a numeric port and a proto. Tolerates unknown
    /// line types and attributes, CRLF or bare LF line endings (RFC 8866 §5 asks parsers to
    /// accept LF), trailing whitespace, blank lines and a missing final newline; all of these
    /// are kept so that printing an unmodified body gives back the exact input bytes.
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        let text = std::str::from_utf8(body).map_err(|e| {
            let good = body.get(..e.valid_up_to()).unwrap_or_default();
            SdpError::NotUtf8 {
                line: good.iter().filter(|&&b| b == b'\n').count() + 1,
            }
        })?;
        let lines = split_lines(text);
        parse::validate(&lines)?;
        let count = layout(&lines).media.len();
        Ok(Sdp {
            current: lines.clone(),
            original: lines,
            rewrites: vec![None; count],
            origin: None,
        })
    }

    /// Facts about every media stream, in `m=` order, as the body currently reads (after any
    /// rewrites).
    pub fn media(&self) -> Vec<MediaView> {
        parse::views(&self.current)
    }

    /// Rewrites media stream `index` to be received at `addr:port`.
    ///
    /// - the `m=` port becomes `port` (a `/<number of ports>` suffix is dropped: the proxy
    ///   anchors exactly one RTP port per stream);
    /// - the stream's connection address becomes `addr`, with `IN IP4`/`IN IP6` following `addr`
    ///   (see the module docs for when the session-level `c=` is rewritten and when a media-level
    ///   `c=` is inserted instead);
    /// - `a=rtcp:PORT [IN IP4 x]` (RFC 3605) becomes `port + 1`, and carries `addr` if it carried
    ///   an address before;
    /// - the stream's ICE lines (`a=candidate`, `a=remote-candidates`, `a=end-of-candidates`,
    ///   `a=ice-*`, RFC 8839) are dropped: the proxy terminates the media path, and ICE checks
    ///   through it would fail.
    ///
    /// Calling it again for the same stream replaces the earlier rewrite. Streams with port 0 are
    /// left untouched and give [`SdpError::MediaDisabled`].
    pub fn rewrite_media(&mut self, index: usize, addr: IpAddr, port: u16) -> Result<(), SdpError> {
        let layout = layout(&self.original);
        let count = layout.media.len();
        let section = layout
            .media
            .get(index)
            .and_then(|r| self.original.get(r.clone()))
            .ok_or(SdpError::NoSuchMedia { index, count })?;
        let current_port = section
            .first()
            .and_then(|l| parse_m_line(&l.text).ok())
            .map(|m| m.port)
            .unwrap_or(0);
        if current_port == 0 {
            return Err(SdpError::MediaDisabled { index });
        }
        let has_rtcp = section.iter().any(|l| {
            l.attr()
                .is_some_and(|(name, _)| name.eq_ignore_ascii_case("rtcp"))
        });
        if port == 0 || (port == u16::MAX && has_rtcp) {
            return Err(SdpError::InvalidPort { port });
        }
        if let Some(slot) = self.rewrites.get_mut(index) {
            *slot = Some((addr, port));
        }
        self.rerender();
        Ok(())
    }

    /// Rewrites the `o=` line's unicast address to `addr` (the proxy becomes the visible origin,
    /// RFC 8866 §5.2), with the address type following `addr`. Username, session id and version
    /// stay as received; keeping the version increasing across re-offers is the caller's concern.
    /// A body without a well-formed `o=` line is left unchanged.
    pub fn rewrite_origin_address(&mut self, addr: IpAddr) {
        self.origin = Some(addr);
        self.rerender();
    }

    /// Prints the body: the original bytes with the rewrites applied.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = self
            .current
            .iter()
            .map(|l| l.text.len() + l.eol.as_bytes().len())
            .sum();
        let mut out = Vec::with_capacity(len);
        for line in &self.current {
            out.extend_from_slice(line.text.as_bytes());
            out.extend_from_slice(line.eol.as_bytes());
        }
        out
    }

    /// Re-derives `current` from `original` and the recorded rewrites.
    fn rerender(&mut self) {
        self.current = rewrite::render(&self.original, &self.rewrites, self.origin);
    }
}
