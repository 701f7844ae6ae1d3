//! Calls: the registry that owns every call's state and lifecycle, the metadata record
//! (sidecar) written for each call, the recording policy (service and decision) applied to it,
//! and the reading of a call's SDP they and the importer share.

pub(crate) mod media_state;
pub mod metadata;
pub mod policy;
pub mod registry;
