//! # protocol: what clients and servers say to each other
//!
//! The wire types, pinned parameters and signed byte strings of the two-server metadata-private
//! messenger (see `docs/protocol.md`). Shared by the `client` and `server-core` crates; it does no
//! I/O and holds no state.
//!
//! ## Layout
//! * [`params`]: [`Params`] (docs/protocol.md §2), [`Params::validate`], [`Params::fingerprint`],
//!   and pure round/phase arithmetic ([`Params::round_at`], [`Params::phase_at`]).
//! * [`messages`]: every request, response, receipt, error and peer message, plus the HTTP
//!   [`paths`]. Each request with variable-length fields has a `check_shape` method.
//! * [`signing`]: the canonical byte strings that are signed or hashed ([`write_ctx`],
//!   [`write_message`], [`receipt_message`], [`array_hash_message`], ...) and Ed25519 helpers.
//! * [`codec`]: the ONE bincode configuration (fixed-width integers, size limit, no trailing
//!   bytes). Nothing else in the workspace calls bincode.
//!
//! ## Assumptions
//! The two servers do not collude. Each server's signing key and certificate are pinned by the
//! clients and by the other server; nothing here trusts a key it was not configured with.
//!
//! ## Example
//! ```
//! use protocol::{codec, Params, RoundStatusRequest};
//! let params = Params::demo(1_700_000_000_000);
//! params.validate().expect("demo params are valid");
//! assert_eq!(params.round_at(1_700_000_004_500), Some(2));
//! let bytes = codec::encode(&RoundStatusRequest { round: 2 });
//! let back: RoundStatusRequest = codec::decode(&bytes).expect("round trip");
//! assert_eq!(back.round, 2);
//! assert!(codec::decode::<RoundStatusRequest>(&[bytes.as_slice(), &[0]].concat()).is_err());
//! ```

pub mod codec;
pub mod messages;
pub mod params;
pub mod signing;

pub use codec::CodecError;
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use messages::*;
pub use params::{Params, ParamsError, Phase, current_round, phase_at};
pub use signing::{
    SignatureError, accepted_digest, array_hash, array_hash_message, generate_signing_key,
    public_key, read_message, receipt_message, register_message, sha256, sign,
    signing_key_from_bytes, verify, write_ctx, write_message,
};

/// The wire protocol version (paths are prefixed `/v1/`).
pub const PROTOCOL_VERSION: u16 = 1;
