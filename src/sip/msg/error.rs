//! The two error types of the message layer: [`ParseError`] (the bytes are not a SIP message,
//! or a value decoder failed) and [`Invalid`] (a well-framed message a proxy must not forward,
//! found by `Message::validate`, RFC 3261 §16.3 and RFC 4475 §3.1.2/§3.3).

/// The bytes cannot be framed as a SIP message, or a header value cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but line breaks (or nothing at all) before the start line.
    #[error("empty message")]
    Empty,
    /// The end of the header section (an empty line) was not found; over a stream more bytes
    /// may complete it.
    #[error("incomplete message: no empty line after the headers")]
    Incomplete,
    /// The start line is neither `Method SP Request-URI SP SIP-Version` nor a status line.
    #[error("malformed start line: {0}")]
    StartLine(&'static str),
    /// The status code is not three digits in 100..=699 (RFC 4475 §3.1.2.19).
    #[error("malformed status code")]
    StatusCode,
    /// A header line without a colon.
    #[error("header line {line} has no colon")]
    MissingColon {
        /// 1-based line number in the message (the start line is line 1).
        line: usize,
    },
    /// A header name that is not a token.
    #[error("header line {line} has an invalid name")]
    HeaderName {
        /// 1-based line number in the message.
        line: usize,
    },
    /// More header lines than any real message has (a guard against hostile input).
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
    /// The first line after the start line begins with whitespace (a continuation of nothing).
    #[error("continuation line without a header")]
    ContinuationWithoutHeader,
    /// Content-Length is not a non-negative decimal number (RFC 4475 §3.1.2.3).
    #[error("invalid Content-Length")]
    ContentLength,
    /// Content-Length announces more body than there is (RFC 4475 §3.1.2.2: 400 over UDP;
    /// over a stream, wait for more bytes).
    #[error("Content-Length {declared} exceeds the {available} body bytes present")]
    BodyTruncated {
        /// The Content-Length value.
        declared: usize,
        /// Bytes present after the header section.
        available: usize,
    },
    /// Stream framing needs Content-Length (RFC 3261 §18.3).
    #[error("Content-Length is required on stream transports")]
    MissingContentLength,
    /// A URI that cannot be decoded.
    #[error("invalid URI: {0}")]
    BadUri(&'static str),
    /// A URI scheme other than sip, sips and tel.
    #[error("unsupported URI scheme {0:?}")]
    UnsupportedScheme(String),
    /// A Via element that cannot be decoded.
    #[error("invalid Via: {0}")]
    BadVia(&'static str),
    /// A name-addr / addr-spec value that cannot be decoded.
    #[error("invalid name-addr: {0}")]
    BadNameAddr(&'static str),
    /// A header parameter list that cannot be decoded.
    #[error("invalid header parameter: {0}")]
    BadParam(&'static str),
}

/// A message that framed fine but must be rejected (or, for responses, dropped) by a proxy.
/// Every variant leaves the headers readable, so a 400 or 505 can be built from the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// SIP-Version other than SIP/2.0 (RFC 4475 §3.1.2.16): answer 505.
    #[error("unsupported SIP version {0:?}")]
    Version(String),
    /// A mandatory header is absent (RFC 3261 §8.1.1, RFC 4475 §3.3.1).
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A single-value header appears more than once (RFC 4475 §3.3.8, §3.3.9).
    #[error("more than one {0} value")]
    MultipleValues(&'static str),
    /// A numeric header that is not a number (CSeq, Max-Forwards, Expires).
    #[error("invalid {header} value {value:?}")]
    BadNumber {
        /// Header name.
        header: &'static str,
        /// The value as received.
        value: String,
    },
    /// A number beyond its allowed range (RFC 4475 §3.1.2.4/§3.1.2.5): CSeq above 2^31-1,
    /// Max-Forwards above 255, Expires above 2^32-1.
    #[error("{header} value {value:?} is too large")]
    Overlarge {
        /// Header name.
        header: &'static str,
        /// The value as received.
        value: String,
    },
    /// The CSeq method differs from the request method (RFC 4475 §3.1.2.17/§3.1.2.18).
    #[error("CSeq method {cseq_method:?} does not match request method {method:?}")]
    CSeqMismatch {
        /// Method of the request line.
        method: String,
        /// Method in CSeq.
        cseq_method: String,
    },
    /// A header whose value cannot be decoded (From/To/Contact/Via/Route/Record-Route).
    #[error("invalid {header} header: {source}")]
    BadHeader {
        /// Header name.
        header: &'static str,
        /// What the decoder said.
        source: ParseError,
    },
    /// An empty element between commas (RFC 4475 §3.1.2.1).
    #[error("empty element in {0} header")]
    EmptyElement(&'static str),
    /// The Request-URI is malformed: in `<>`, with embedded LWS, with URI headers, or a
    /// sip/sips URI that does not parse (RFC 4475 §3.1.2.7/§3.1.2.8/§3.1.2.11, RFC 5118 §4.2).
    #[error("invalid Request-URI {uri:?}: {reason}")]
    RequestUri {
        /// The Request-URI as received.
        uri: String,
        /// Why it was refused.
        reason: &'static str,
    },
}
