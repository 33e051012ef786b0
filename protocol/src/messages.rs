//! Every wire type: client requests and responses, receipts, errors, and peer messages.
//!
//! All are encoded with [`crate::codec`]. Variable-length fields are bounded twice: by the codec's
//! [`crate::codec::LIMIT`] before any allocation, and by the `check_shape` methods (counts and
//! lengths against the pinned [`Params`]) before any use.

use crate::Params;
use crate::codec::decode_chunked_bytes;
use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// An account: the account's Ed25519 public key.
pub type AccountId = [u8; 32];
/// A write's request id: 16 random bytes, fresh per account and round.
pub type RequestId = [u8; 16];
/// A SHA-256 digest.
pub type Hash = [u8; 32];
/// An Ed25519 signature.
pub type Signature = [u8; 64];

/// Largest encoded DPF key (read or write) a server accepts before checking the exact length.
pub const MAX_KEY_BYTES: usize = 128 << 10;
/// Largest invite token in bytes.
pub const MAX_INVITE_BYTES: usize = 256;
/// Largest human-readable error message carried in an [`ErrorResponse`].
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// HTTP paths (all `POST`, bodies encoded with [`crate::codec`]).
pub mod paths {
    /// [`super::InfoRequest`] -> [`super::InfoResponse`].
    pub const INFO: &str = "/v1/info";
    /// [`super::RegisterRequest`] -> [`super::RegisterResponse`].
    pub const REGISTER: &str = "/v1/register";
    /// [`super::WriteRequest`] -> [`super::Receipt`].
    pub const WRITE: &str = "/v1/write";
    /// [`super::CommitRequest`] -> [`super::CommitAck`].
    pub const COMMIT: &str = "/v1/commit";
    /// [`super::ReadRequest`] -> [`super::ReadResponse`].
    pub const READ: &str = "/v1/read";
    /// [`super::RoundStatusRequest`] -> [`super::RoundStatusResponse`].
    pub const ROUND_STATUS: &str = "/v1/round-status";
    /// Peer port only: [`super::PeerMessage`] -> [`super::PeerAck`].
    pub const PEER: &str = "/peer/v1/message";
}

/// A server's role. `A` is DPF party 0, `B` is party 1.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
pub enum Role {
    /// Server A, party 0.
    A,
    /// Server B, party 1.
    B,
}

impl Role {
    /// The DPF party bit: 0 for A, 1 for B.
    pub fn party_bit(self) -> u8 {
        match self {
            Role::A => 0,
            Role::B => 1,
        }
    }
    /// The other role.
    pub fn peer(self) -> Role {
        match self {
            Role::A => Role::B,
            Role::B => Role::A,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::A => "A",
            Role::B => "B",
        })
    }
}

/// Why a request in hand does not fit the pinned parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    /// Wrong number of keys in a read.
    #[error("expected {expected} read keys, got {got}")]
    KeyCount {
        /// k.
        expected: usize,
        /// What was sent.
        got: usize,
    },
    /// A key is longer than [`MAX_KEY_BYTES`] or empty.
    #[error("key of {len} bytes is outside 1..={MAX_KEY_BYTES}")]
    KeyLength {
        /// Its length.
        len: usize,
    },
    /// The invite token is too long.
    #[error("invite token longer than {MAX_INVITE_BYTES} bytes")]
    InviteLength,
}

fn check_key_len(len: usize) -> Result<(), ShapeError> {
    if len == 0 || len > MAX_KEY_BYTES {
        Err(ShapeError::KeyLength { len })
    } else {
        Ok(())
    }
}

/// Asks a server for its role, parameters and keys. Carries nothing.
#[derive(Clone, Debug, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub struct InfoRequest {}

/// What a server announces about itself.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct InfoResponse {
    /// [`crate::PROTOCOL_VERSION`] of the server.
    pub protocol_version: u16,
    /// The server's role.
    pub role: Role,
    /// The server's pinned parameters (a client refuses a server announcing others).
    pub params: Params,
    /// `params.fingerprint()`.
    pub fingerprint: Hash,
    /// The server's Ed25519 signing public key (receipts, array hashes).
    pub signing_key: [u8; 32],
    /// The current round by the server's clock, `None` before `t0`.
    pub current_round: Option<u64>,
    /// The server's clock (unix ms) when it answered.
    pub now_ms: u64,
}

/// Registers an account key with one server.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct RegisterRequest {
    /// Fingerprint of the client's pinned parameters.
    pub fingerprint: Hash,
    /// The account's Ed25519 public key.
    pub account: AccountId,
    /// An invite token when registration is by invitation.
    pub invite: Option<Vec<u8>>,
    /// Account-key signature over [`crate::register_message`] (proof of possession).
    pub signature: Signature,
}

impl RegisterRequest {
    /// Bounds the invite length.
    pub fn check_shape(&self) -> Result<(), ShapeError> {
        match &self.invite {
            Some(t) if t.len() > MAX_INVITE_BYTES => Err(ShapeError::InviteLength),
            _ => Ok(()),
        }
    }
}

/// Registration outcome (registering an already registered key again succeeds).
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct RegisterResponse {
    /// The registered account.
    pub account: AccountId,
    /// True if the account was already registered before this request.
    pub already_registered: bool,
}

/// One half of a client's write for `round`.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct WriteRequest {
    /// Fingerprint of the client's pinned parameters.
    pub fingerprint: Hash,
    /// The round the write is for (must be the server's current round).
    pub round: u64,
    /// Fresh random id, identical in both halves.
    pub request_id: RequestId,
    /// The writing account.
    pub account: AccountId,
    /// `WriteKey::public_hash(write_ctx(round, request_id, account))`.
    pub public_hash: Hash,
    /// The encoded dpf `WriteKey` half for this server.
    pub key: Vec<u8>,
    /// Account-key signature over [`crate::write_message`].
    pub signature: Signature,
}

impl WriteRequest {
    /// Bounds the key length (the server then checks the exact dpf length).
    pub fn check_shape(&self) -> Result<(), ShapeError> {
        check_key_len(self.key.len())
    }
}

/// A server's signed statement that it persisted a write half.
#[derive(Clone, Debug, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub struct Receipt {
    /// The issuing server.
    pub role: Role,
    /// The writing account.
    pub account: AccountId,
    /// The write's round.
    pub round: u64,
    /// The write's request id.
    pub request_id: RequestId,
    /// SHA-256 of the encoded key half the server holds.
    pub half_hash: Hash,
    /// The server's signature over [`crate::receipt_message`].
    pub signature: Signature,
}

/// Commits a write at one server by presenting the OTHER server's receipt.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct CommitRequest {
    /// Fingerprint of the client's pinned parameters.
    pub fingerprint: Hash,
    /// The peer server's receipt for the same (account, round, request id).
    pub peer_receipt: Receipt,
}

/// A persisted commit.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct CommitAck {
    /// The committed write's round.
    pub round: u64,
    /// The committed write's id.
    pub request_id: RequestId,
}

/// k read keys over the array of `array_round`.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ReadRequest {
    /// Fingerprint of the client's pinned parameters.
    pub fingerprint: Hash,
    /// The round the read is sent in (the server's current round).
    pub round: u64,
    /// The array read: `round - read_lag`.
    pub array_round: u64,
    /// The reading account.
    pub account: AccountId,
    /// Exactly k encoded dpf `ReadKey` halves, freshly shuffled.
    pub keys: Vec<Vec<u8>>,
    /// Account-key signature over [`crate::read_message`].
    pub signature: Signature,
}

impl ReadRequest {
    /// Checks the key count against k and bounds each key's length.
    pub fn check_shape(&self, params: &Params) -> Result<(), ShapeError> {
        let k = params.reads_per_round as usize;
        if self.keys.len() != k {
            return Err(ShapeError::KeyCount {
                expected: k,
                got: self.keys.len(),
            });
        }
        self.keys
            .iter()
            .try_for_each(|key| check_key_len(key.len()))
    }
}

/// One answer per read key, in request order, each `slot_len` bytes.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ReadResponse {
    /// The array round answered.
    pub array_round: u64,
    /// XOR of the slots each key half selects.
    pub answers: Vec<Vec<u8>>,
}

/// Asks for the outcome of a round.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct RoundStatusRequest {
    /// The round asked about.
    pub round: u64,
}

/// Why a round was abandoned.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
#[non_exhaustive]
pub enum AbandonReason {
    /// The publish deadline passed without two equal signed hashes.
    DeadlineMissed,
    /// The two servers' array hashes differ.
    HashMismatch,
    /// The peer omitted or altered a write this server holds the peer's receipt for.
    PeerOmittedWrite {
        /// The peer's own receipt: proof that it received the write.
        evidence: Receipt,
    },
    /// The peer sent contradictory messages for the round.
    PeerEquivocated,
    /// The peer announced that it abandoned the round.
    PeerAbandoned,
    /// This server lost the state needed to close the round (e.g. restarted without it).
    LocalStateLost,
    /// The peer closed the round early: its sets arrived this many ms before the cutoff
    /// (beyond the allowed clock skew).
    PeerClosedEarly {
        /// How long before the cutoff the peer's sets arrived.
        early_ms: u64,
    },
}

/// The signed outcome of a published round.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct PublishedRound {
    /// The round.
    pub round: u64,
    /// `SHA-256(M_r)`.
    pub array_hash: Hash,
    /// Accepted (and audited) request ids, sorted.
    pub accepted: Vec<RequestId>,
    /// Server A's signature over [`crate::array_hash_message`] (role A).
    pub signature_a: Signature,
    /// Server B's signature over [`crate::array_hash_message`] (role B).
    pub signature_b: Signature,
}

/// A round's state as one server sees it.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum RoundStatus {
    /// Not yet final.
    Pending,
    /// Published with both signatures.
    Published(PublishedRound),
    /// Abandoned: reads of it are answered from an all-zero array.
    Abandoned(AbandonReason),
    /// Too old: the server no longer keeps it.
    Forgotten,
}

/// Answer to [`RoundStatusRequest`].
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct RoundStatusResponse {
    /// The round asked about.
    pub round: u64,
    /// Its status.
    pub status: RoundStatus,
}

/// Machine-readable error kinds; each maps to one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The body did not decode, or a field is out of bounds.
    Malformed,
    /// The request's parameter fingerprint differs from the server's.
    ParamsMismatch,
    /// The account is not registered.
    UnknownAccount,
    /// The request names a round other than the one it may name now.
    WrongRound,
    /// The round's window for this request kind has closed.
    TooLate,
    /// The account already wrote (or read) this round.
    Duplicate,
    /// A signature does not verify.
    BadSignature,
    /// The DPF key does not decode under the pinned parameters.
    BadKey,
    /// The key's public hash differs from the signed one.
    PublicHashMismatch,
    /// The receipt is not a valid receipt of the peer for a write this server holds.
    BadReceipt,
    /// A commit names a write this server never received.
    UnknownWrite,
    /// The array asked for is not published or abandoned yet.
    NotReady,
    /// The array asked for is no longer kept.
    Gone,
    /// Registration is closed or the invite token is invalid.
    RegistrationRefused,
    /// Too many requests.
    RateLimited,
    /// Unknown path.
    NotFound,
    /// Server-side failure (disk, ...).
    Internal,
    /// The server is shutting down or not ready.
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status that carries this error.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Malformed | ErrorCode::BadKey | ErrorCode::PublicHashMismatch => 400,
            ErrorCode::BadSignature | ErrorCode::BadReceipt => 401,
            ErrorCode::UnknownAccount | ErrorCode::RegistrationRefused => 403,
            ErrorCode::NotFound | ErrorCode::UnknownWrite => 404,
            ErrorCode::Duplicate | ErrorCode::WrongRound | ErrorCode::TooLate => 409,
            ErrorCode::Gone => 410,
            ErrorCode::ParamsMismatch => 412,
            ErrorCode::NotReady => 425,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// A short stable name (used as a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::ParamsMismatch => "params_mismatch",
            ErrorCode::UnknownAccount => "unknown_account",
            ErrorCode::WrongRound => "wrong_round",
            ErrorCode::TooLate => "too_late",
            ErrorCode::Duplicate => "duplicate",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::BadKey => "bad_key",
            ErrorCode::PublicHashMismatch => "public_hash_mismatch",
            ErrorCode::BadReceipt => "bad_receipt",
            ErrorCode::UnknownWrite => "unknown_write",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Gone => "gone",
            ErrorCode::RegistrationRefused => "registration_refused",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// Every code, for metrics registration and tests.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::Malformed,
        ErrorCode::ParamsMismatch,
        ErrorCode::UnknownAccount,
        ErrorCode::WrongRound,
        ErrorCode::TooLate,
        ErrorCode::Duplicate,
        ErrorCode::BadSignature,
        ErrorCode::BadKey,
        ErrorCode::PublicHashMismatch,
        ErrorCode::BadReceipt,
        ErrorCode::UnknownWrite,
        ErrorCode::NotReady,
        ErrorCode::Gone,
        ErrorCode::RegistrationRefused,
        ErrorCode::RateLimited,
        ErrorCode::NotFound,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];
}

/// The body of every non-200 response.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ErrorResponse {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail (at most [`MAX_ERROR_MESSAGE_BYTES`], never request contents).
    pub message: String,
}

impl ErrorResponse {
    /// Builds an error response, truncating the message to its bound on a char boundary.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorResponse {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_BYTES {
            let mut cut = MAX_ERROR_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        ErrorResponse { code, message }
    }
}

impl std::fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code.as_str(),
            self.code.http_status(),
            self.message
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Peer messages (server <-> server, mutual TLS)
// ---------------------------------------------------------------------------------------------

/// One write a server received (frozen at CUTOFF).
#[derive(Clone, Debug, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub struct ReceivedWrite {
    /// The writing account.
    pub account: AccountId,
    /// The write's id.
    pub request_id: RequestId,
    /// SHA-256 of the key half this server holds.
    pub half_hash: Hash,
}

/// A server's frozen view of a round at CUTOFF.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SetsMessage {
    /// The round.
    pub round: u64,
    /// The sender.
    pub from: Role,
    /// The sender's random nonce for this round.
    pub nonce: [u8; 32],
    /// Every write half received for the round, sorted by request id.
    pub received: Vec<ReceivedWrite>,
    /// Ids for which the sender holds the receiver's receipt, sorted.
    pub committed: Vec<RequestId>,
    /// The round's early audit challenge as the sender derived it from both servers' nonces of
    /// round `round - 1` when it froze this round (`None` if it did not hold both). The round
    /// is audited under it only if both senders name the same one (docs/protocol.md §3.3,
    /// *Early challenge*); the servers knew it, and clients did not, before the round's writes
    /// came in, so each write can be audited as it arrives.
    pub early_challenge: Option<[u8; 16]>,
}

/// One audit value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub struct AuditValue {
    /// The write.
    pub request_id: RequestId,
    /// dpf `write_accumulate_audited` output for it.
    pub value: Hash,
}

/// A server's audit values for the accepted writes of a round.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct AuditMessage {
    /// The round.
    pub round: u64,
    /// The sender.
    pub from: Role,
    /// One value per accepted write, in accepted order.
    pub values: Vec<AuditValue>,
}

/// Largest share array accepted in a [`SharesMessage`] (equals the params cap).
pub const MAX_SHARE_BYTES: usize = crate::params::MAX_ARRAY_BYTES as usize;

/// A server's share array W for a round (`N * L` bytes).
///
/// Its byte string is decoded in chunks, so a lying length prefix cannot force an allocation
/// larger than the bytes that actually arrived.
#[derive(Clone, PartialEq, Eq)]
pub struct SharesMessage {
    /// The round.
    pub round: u64,
    /// The sender.
    pub from: Role,
    /// The share array (shared, so sending it needs no copy of the whole array).
    pub data: Arc<Vec<u8>>,
}

impl std::fmt::Debug for SharesMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharesMessage")
            .field("round", &self.round)
            .field("from", &self.from)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl bincode::Encode for SharesMessage {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.round.encode(encoder)?;
        self.from.encode(encoder)?;
        self.data.as_ref().encode(encoder)
    }
}

impl<Ctx> bincode::Decode<Ctx> for SharesMessage {
    fn decode<D: Decoder<Context = Ctx>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let round = u64::decode(decoder)?;
        let from = Role::decode(decoder)?;
        let data = Arc::new(decode_chunked_bytes(decoder, MAX_SHARE_BYTES)?);
        Ok(SharesMessage { round, from, data })
    }
}
bincode::impl_borrow_decode!(SharesMessage);

/// A server's signed hash of its `M_r`, bound to the accepted set.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ArrayHashMessage {
    /// The round.
    pub round: u64,
    /// The sender.
    pub from: Role,
    /// `SHA-256(M_r)`.
    pub array_hash: Hash,
    /// [`crate::accepted_digest`] of the audited accepted ids.
    pub accepted_digest: Hash,
    /// The sender's signature over [`crate::array_hash_message`].
    pub signature: Signature,
}

/// A server tells its peer it abandoned a round.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct AbandonMessage {
    /// The round.
    pub round: u64,
    /// The sender.
    pub from: Role,
    /// Why.
    pub reason: AbandonReason,
}

/// Every server-to-server message. Each is retried until acknowledged; receiving one twice is a
/// no-op, receiving two different ones of the same kind for a round is equivocation.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum PeerMessage {
    /// SETS step.
    Sets(SetsMessage),
    /// AUDIT step.
    Audit(AuditMessage),
    /// EXCHANGE step: the share array.
    Shares(SharesMessage),
    /// EXCHANGE step: the signed hash.
    ArrayHash(ArrayHashMessage),
    /// The sender abandoned the round.
    Abandon(AbandonMessage),
}

impl PeerMessage {
    /// The round the message is about.
    pub fn round(&self) -> u64 {
        match self {
            PeerMessage::Sets(m) => m.round,
            PeerMessage::Audit(m) => m.round,
            PeerMessage::Shares(m) => m.round,
            PeerMessage::ArrayHash(m) => m.round,
            PeerMessage::Abandon(m) => m.round,
        }
    }
    /// The claimed sender.
    pub fn from(&self) -> Role {
        match self {
            PeerMessage::Sets(m) => m.from,
            PeerMessage::Audit(m) => m.from,
            PeerMessage::Shares(m) => m.from,
            PeerMessage::ArrayHash(m) => m.from,
            PeerMessage::Abandon(m) => m.from,
        }
    }
    /// A short name of the kind (logs, metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMessage::Sets(_) => "sets",
            PeerMessage::Audit(_) => "audit",
            PeerMessage::Shares(_) => "shares",
            PeerMessage::ArrayHash(_) => "array_hash",
            PeerMessage::Abandon(_) => "abandon",
        }
    }
}

/// Acknowledges a [`PeerMessage`]: the receiver persisted or already held it.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct PeerAck {
    /// The round of the acknowledged message.
    pub round: u64,
}
