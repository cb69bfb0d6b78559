//! The host <-> guest agent protocol and its two ends.
//!
//! The guest agent is this same binary running as PID 1 in the guest (see
//! [`crate::guest`]); the host end lives in the sandbox process. They talk over
//! virtio-vsock: one control connection carrying request/response frames, plus one
//! connection per stdio stream.

pub mod client;
pub mod protocol;
