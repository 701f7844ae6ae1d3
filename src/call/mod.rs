//! Calls: the registry that owns every call's state and lifecycle, and the metadata record
//! (sidecar) written for each call.

pub mod metadata;
pub mod registry;
