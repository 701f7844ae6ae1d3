//! The proxy core's view of a call: the dialog created by an initial INVITE, keyed by Call-ID.
//! It tells which party sent an in-dialog request (for SDP anchoring and end reasons) and when
//! the call was answered or ended. Pure data, no IO.

use std::net::SocketAddr;

/// Where a call stands, as seen in signalling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Initial INVITE forwarded, no final response yet.
    Proceeding,
    /// The INVITE was challenged (401/407); the caller may re-send it with credentials.
    Challenged,
    /// A 2xx arrived: the call is up.
    Confirmed,
}

/// One call known to the proxy core.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// From tag of the initial INVITE: requests carrying it as From tag come from the caller.
    pub caller_tag: String,
    /// Source address of the initial INVITE.
    pub caller_source: SocketAddr,
    /// Signalling state.
    pub state: DialogState,
    /// Status of the challenge while `Challenged` (to report it if the call is given up).
    pub challenge: Option<(u16, String)>,
    /// To tag of the 2xx that confirmed the call: with forking (RFC 3261 §16.7 step 10 / §13.2.2.4)
    /// other early or even confirmed dialogs of the same Call-ID exist, and only this one is the
    /// recorded call.
    pub callee_tag: Option<String>,
    /// When the session timer (RFC 4028) runs out unless a refresh comes.
    pub session_expires: Option<std::time::Instant>,
    /// The party that sent an INVITE without SDP whose 2xx carried an offer: its ACK owes the
    /// answer (RFC 3261 §13.2.1, RFC 3264 §4).
    pub late_offer: Option<crate::sip::proxy::Party>,
}

impl Dialog {
    /// Whether a message with these From and To tags belongs to this call's dialog. Before the
    /// call is confirmed every early dialog of the INVITE counts.
    pub fn owns(&self, from_tag: &str, to_tag: &str) -> bool {
        match &self.callee_tag {
            None => true,
            Some(callee) => {
                (from_tag == self.caller_tag && to_tag == callee)
                    || (from_tag == callee && to_tag == self.caller_tag)
            }
        }
    }
}
