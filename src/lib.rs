//! recproxy: a transparent SIP proxy that anchors the RTP of each call it relays and records both
//! directions into one stereo WAV per call (left = caller, right = callee), with a JSON metadata
//! sidecar per call.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated with file/line/key errors.
//! - [`sip`]: message layer, sans-IO proxy core (transactions, dialogs, routing), the UDP/TCP
//!   driver, next-hop DNS.
//! - [`sdp`]: SDP parse/print and the rewrite that anchors media at the proxy.
//! - [`media`]: port pool, RTP/RTCP relay with latching, the tap to the recorder.
//! - [`codec`]: PCMU, PCMA, G.722 and Opus decoding (and encoding, for the test agents) to 16-bit
//!   PCM at 8 or 16 kHz, with resampling.
//! - [`record`]: sans-IO timeline aligning both parties, DTMF tracking, WAV writer, the recording
//!   session and the recorder thread.
//! - [`import`]: reading pcap/pcapng captures to rebuild calls offline.
//! - [`call`]: the call registry (single owner of call state) and the metadata sidecar.
//! - [`ops`]: start-up, recovery, shutdown, logging.
//! - [`demo`]: built-in user agents and the `recproxy demo` run.
//!
//! # Time
//! The sans-IO parts (proxy core, timeline) never read the clock: every input carries `now`.
//! Wall-clock times appear only in the metadata, converted once in the registry.
#![warn(missing_docs)]

pub mod call;
pub mod codec;
pub mod config;
pub mod demo;
pub mod import;
pub mod media;
pub mod ops;
pub mod record;
pub mod sdp;
pub mod sip;
