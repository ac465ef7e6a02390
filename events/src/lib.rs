//! Keyward's event model.
//!
//! Everything a compliance team needs to verify the audit log offline lives here: the
//! envelope, the event types, the canonical encoding, the hash chain and the upcasters.
//! The crate does no I/O so that an offline verifier can depend on it alone.

pub mod canonical;
pub mod chain;
pub mod compact;
pub mod envelope;
pub mod export;
pub mod hash;
pub mod merkle;
pub mod note;
pub mod time;
pub mod types;
pub mod upcast;
pub mod verify;

pub use chain::{ChainBreak, ChainVerifier, Head};
pub use envelope::{Envelope, ExpectedVersion, NewEvent};
pub use hash::Hash32;
pub use types::*;
pub use upcast::DecodeError;
