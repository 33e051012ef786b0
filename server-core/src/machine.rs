//! The sans-IO round state machine (docs/protocol.md §3). One engine for both roles.
//!
//! Inputs are method calls carrying the current unix-ms time: client requests, peer messages,
//! clock ticks, finished computations, and persisted records at start-up. Outputs are
//! [`Action`]s the shell carries out **in order** (a `Persist` before the `SendPeer` or the
//! response that follows it). The machine never reads a clock, a socket or a file.

use crate::compute::{AuditJob, AuditResult, remove_writes, xor_into, xor_of};
use crate::config::Registration;
use crate::store::RecordKey;
use protocol::{
    AbandonMessage, AbandonReason, AccountId, ArrayHashMessage, AuditMessage, CommitAck,
    CommitRequest, ErrorCode, Hash, InfoResponse, Params, PeerAck, PeerMessage, Phase,
    PublishedRound, ReadRequest, Receipt, ReceivedWrite, RegisterRequest, RegisterResponse,
    RequestId, Role, RoundStatus, RoundStatusResponse, SetsMessage, SharesMessage, SigningKey,
    WriteRequest, codec,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// A request refused by the machine: an error code (which fixes the HTTP status) and a reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    /// The code.
    pub code: ErrorCode,
    /// Why (never contains request contents).
    pub message: String,
}

fn err(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        message: message.into(),
    }
}

/// What the shell must do, in order.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Action {
    /// Durably store a record (before anything after it in the list happens).
    Persist {
        /// Where.
        key: RecordKey,
        /// What.
        bytes: Arc<Vec<u8>>,
    },
    /// Send a message to the peer, retrying until acknowledged.
    SendPeer(PeerMessage),
    /// Run an audit job off the event loop and feed the result to [`Machine::audit_done`].
    Audit(AuditJob),
    /// A round was published.
    Published {
        /// The round.
        round: u64,
    },
    /// A round was abandoned.
    Abandoned {
        /// The round.
        round: u64,
        /// Why.
        reason: AbandonReason,
    },
    /// Something an operator must look at (a fault proved against the peer, lost state).
    Alarm {
        /// The round.
        round: u64,
        /// What happened.
        message: String,
    },
    /// Forget everything of rounds below `below` (files included).
    Prune {
        /// First round kept.
        below: u64,
    },
    /// The audit challenge of `round` is known before its writes arrive (drawn from round
    /// `round - 1`'s nonces, [`early_challenge`]): writes of that round may be audited as
    /// they are applied early ([`crate::early`]). Whether the round is audited under it is
    /// decided at SETS: both servers' frozen views must name the same one.
    EarlyChallenge {
        /// The round.
        round: u64,
        /// Its challenge, if both servers agree to use it.
        challenge: [u8; 16],
    },
    /// The server cannot go on safely (the OS random source failed): it stops, and the
    /// operator is told why. Rounds in progress are abandoned (a restart rejoins the peer).
    Fatal {
        /// What happened.
        message: String,
    },
    /// A step of the round close finished (for metrics; measured with the machine's inputs).
    PhaseDone {
        /// The round.
        round: u64,
        /// Which span of the round close.
        phase: RoundPhase,
        /// Its length in milliseconds.
        ms: u64,
    },
}

/// Spans of the round close reported by [`Action::PhaseDone`] (docs/operations.md §4). All are
/// measured on this server's clock; after a restart a span that began before it includes the
/// downtime (the cutoff-based ones) or is not reported (the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoundPhase {
    /// From the round's nominal CUTOFF instant to holding both frozen views (accepted set
    /// derived).
    CutoffToSets,
    /// From the accepted set to the audit comparison (own evaluation done, the peer's audit
    /// values received, the final share sent).
    Audit,
    /// From the audit comparison to the outcome with both signed hashes (shares swapped,
    /// `M_r` persisted, hashes swapped and compared).
    Exchange,
    /// From the round's nominal CUTOFF instant to PUBLISHED.
    CutoffToPublished,
}

impl RoundPhase {
    /// Every phase, in order.
    pub const ALL: [RoundPhase; 4] = [
        RoundPhase::CutoffToSets,
        RoundPhase::Audit,
        RoundPhase::Exchange,
        RoundPhase::CutoffToPublished,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RoundPhase::CutoffToSets => "cutoff_to_sets",
            RoundPhase::Audit => "audit",
            RoundPhase::Exchange => "exchange",
            RoundPhase::CutoffToPublished => "cutoff_to_published",
        }
    }
}

/// Static configuration of the machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// This server's role.
    pub role: Role,
    /// The pinned parameters.
    pub params: Params,
    /// This server's signing key.
    pub signing_key: SigningKey,
    /// The peer's signing public key.
    pub peer_signing_key: [u8; 32],
    /// Who may register.
    pub registration: Registration,
    /// Registrations per minute.
    pub registrations_per_minute: u32,
}

/// A batch of validated reads of one array, to be answered by the shell.
pub struct ReadJob {
    /// The array round.
    pub array_round: u64,
    /// The array (all zero for an abandoned round).
    pub array: Arc<Vec<u8>>,
    /// The decoded key halves, in request order.
    pub keys: Vec<dpf::ReadKey>,
}

impl std::fmt::Debug for ReadJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadJob")
            .field("array_round", &self.array_round)
            .field("keys", &self.keys.len())
            .finish()
    }
}

#[derive(Debug, Clone)]
struct StoredWrite {
    req: WriteRequest,
    half_hash: Hash,
    /// On disk: no receipt is issued (not even to an identical retry) and no commit is taken
    /// before, so a failed persist or a crash never leaves a receipt for a lost write.
    durable: bool,
}

#[derive(Debug, Default)]
struct RoundState {
    writes: BTreeMap<RequestId, StoredWrite>,
    writers: HashSet<AccountId>,
    readers: HashMap<AccountId, Hash>,
    commits: BTreeMap<RequestId, Receipt>,
    frozen: Option<SetsMessage>,
    peer_sets: Option<SetsMessage>,
    accepted: Option<Vec<RequestId>>,
    audit_running: bool,
    /// Shared with the `Shares` message being sent, so sending needs no copy of the array.
    own_share: Option<Arc<Vec<u8>>>,
    /// Failed writes removed from `own_share` and the share sent to the peer.
    share_final: bool,
    own_audit: Option<AuditMessage>,
    peer_audit: Option<AuditMessage>,
    passed: Option<Vec<RequestId>>,
    peer_shares: Option<Arc<Vec<u8>>>,
    array: Option<Arc<Vec<u8>>>,
    own_hash: Option<ArrayHashMessage>,
    peer_hash: Option<ArrayHashMessage>,
    peer_abandon: Option<AbandonMessage>,
    status: Option<RoundStatus>,
    reads_answered: bool,
    state_lost: bool,
    /// When (this process saw) the accepted set derived; the audit comparison done.
    sets_at: Option<u64>,
    audit_at: Option<u64>,
}

impl RoundState {
    fn is_final(&self) -> bool {
        matches!(
            self.status,
            Some(RoundStatus::Published(_)) | Some(RoundStatus::Abandoned(_))
        )
    }
}

/// Source addresses tracked per minute for the registration limit; past it, registrations
/// wait for the next minute (bounds the table whatever the number of addresses).
const MAX_REG_SOURCES: usize = 65_536;

/// Whether the token with SHA-256 `h` is one of `tokens`, in time independent of the tokens'
/// contents: every token is hashed and compared in full, without an early exit.
fn invite_matches(tokens: &[String], h: &Hash) -> bool {
    let mut found = 0u8;
    for t in tokens {
        let d = protocol::sha256(t.as_bytes());
        let diff = d.iter().zip(h).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // 1 exactly when `diff` is 0, without a branch.
        found |= ((u16::from(diff) + 0xff) >> 8) as u8 ^ 1;
    }
    found == 1
}

/// Fills a buffer with randomness (round nonces), or says it cannot. Injected so tests are
/// deterministic.
pub type RandomFill = Box<dyn FnMut(&mut [u8]) -> Result<(), NoRandomness> + Send>;

/// The OS random source failed. A round nonce is never replaced by anything predictable (the
/// audit challenge is derived from the nonces): the server stops instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRandomness;

/// The round state machine of one server.
pub struct Machine {
    cfg: MachineConfig,
    fingerprint: Hash,
    public_key: [u8; 32],
    accounts: HashSet<AccountId>,
    used_invites: HashSet<Hash>,
    reg_minute: u64,
    /// Registrations accepted this minute, per source address (cleared every minute).
    reg_counts: HashMap<std::net::IpAddr, u32>,
    rounds: BTreeMap<u64, RoundState>,
    zero: Option<Arc<Vec<u8>>>,
    forgotten_below: u64,
    rng: RandomFill,
    #[cfg(feature = "misbehave")]
    misbehave: Option<crate::misbehave::Misbehave>,
}

/// How far apart the two servers' clocks may be. Peer sets that arrive earlier than this
/// before the cutoff mean the peer closed the round early; the round is abandoned.
pub const MAX_CLOCK_SKEW_MS: u64 = 250;

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("role", &self.cfg.role)
            .field("accounts", &self.accounts.len())
            .field("rounds", &self.rounds.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn id_hex(id: &[u8]) -> String {
    hex::encode(id)
}

impl Machine {
    /// A machine with no state. `rng` fills buffers with randomness (round nonces).
    pub fn new(cfg: MachineConfig, rng: RandomFill) -> Machine {
        let fingerprint = cfg.params.fingerprint();
        let public_key = protocol::public_key(&cfg.signing_key);
        Machine {
            cfg,
            fingerprint,
            public_key,
            accounts: HashSet::new(),
            used_invites: HashSet::new(),
            reg_minute: 0,
            reg_counts: HashMap::new(),
            rounds: BTreeMap::new(),
            zero: None,
            forgotten_below: 0,
            rng,
            #[cfg(feature = "misbehave")]
            misbehave: None,
        }
    }

    /// Makes this machine misbehave (tests only; see [`crate::misbehave`]).
    #[cfg(feature = "misbehave")]
    pub fn set_misbehave(&mut self, m: Option<crate::misbehave::Misbehave>) {
        self.misbehave = m;
    }

    /// How much before the cutoff this machine freezes `round` (0 unless misbehaving).
    fn early_ms(&self, _round: u64) -> u64 {
        #[cfg(feature = "misbehave")]
        if let Some(m) = &self.misbehave {
            return m.early_ms(_round);
        }
        0
    }

    /// The pinned parameters.
    pub fn params(&self) -> &Params {
        &self.cfg.params
    }

    /// This server's role.
    pub fn role(&self) -> Role {
        self.cfg.role
    }

    /// Number of registered accounts.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// The status of `round` (`Pending` if unknown but not forgotten).
    pub fn status(&self, round: u64) -> RoundStatus {
        if round < self.forgotten_below {
            return RoundStatus::Forgotten;
        }
        self.rounds
            .get(&round)
            .and_then(|s| s.status.clone())
            .unwrap_or(RoundStatus::Pending)
    }

    /// The published array of `round`, if published and kept.
    pub fn published_array(&self, round: u64) -> Option<Arc<Vec<u8>>> {
        let s = self.rounds.get(&round)?;
        match s.status {
            Some(RoundStatus::Published(_)) => s.array.clone(),
            _ => None,
        }
    }

    /// The latest round that is final (published or abandoned) among the rounds still kept.
    pub fn last_final_round(&self) -> Option<u64> {
        self.rounds
            .iter()
            .rev()
            .find(|(_, s)| s.is_final())
            .map(|(r, _)| *r)
    }

    /// Whether every kept round up to and including `round` is final (older rounds are
    /// forgotten, hence final too).
    pub fn all_final_through(&self, round: u64) -> bool {
        self.rounds
            .range(..=round)
            .all(|(r, s)| *r < self.forgotten_below || s.is_final())
    }

    /// Bytes held in arrays and share arrays of the kept rounds (the all-zero array included).
    pub fn held_array_bytes(&self) -> u64 {
        let len = |v: Option<usize>| v.unwrap_or(0) as u64;
        let rounds: u64 = self
            .rounds
            .values()
            .map(|s| {
                len(s.array.as_ref().map(|a| a.len()))
                    + len(s.own_share.as_ref().map(|a| a.len()))
                    + len(s.peer_shares.as_ref().map(|a| a.len()))
            })
            .sum();
        rounds + len(self.zero.as_ref().map(|z| z.len()))
    }

    fn check_fingerprint(&self, fp: &Hash) -> Result<(), ApiError> {
        if fp != &self.fingerprint {
            return Err(err(
                ErrorCode::ParamsMismatch,
                "parameter fingerprint differs",
            ));
        }
        Ok(())
    }

    fn current_round(&self, now: u64) -> Result<u64, ApiError> {
        self.cfg
            .params
            .round_at(now)
            .ok_or_else(|| err(ErrorCode::WrongRound, "round 0 has not started"))
    }

    fn round_mut(&mut self, round: u64) -> &mut RoundState {
        self.rounds.entry(round).or_default()
    }

    // -----------------------------------------------------------------------------------------
    // Client requests
    // -----------------------------------------------------------------------------------------

    /// `Info`.
    pub fn info(&self, now: u64) -> InfoResponse {
        InfoResponse {
            protocol_version: protocol::PROTOCOL_VERSION,
            role: self.cfg.role,
            params: self.cfg.params,
            fingerprint: self.fingerprint,
            signing_key: self.public_key,
            current_round: self.cfg.params.round_at(now),
            now_ms: now,
        }
    }

    /// `RoundStatus`.
    pub fn round_status(&self, round: u64) -> RoundStatusResponse {
        RoundStatusResponse {
            round,
            status: self.status(round),
        }
    }

    /// `Register`: verifies proof of possession and policy; the returned actions persist the
    /// account (and the consumed invite) and must complete before the response is sent.
    /// `source` is the connection's address: the rate limit is per source, so one address
    /// cannot use up everybody's registrations.
    pub fn handle_register(
        &mut self,
        now: u64,
        req: &RegisterRequest,
        source: std::net::IpAddr,
    ) -> Result<(RegisterResponse, Vec<Action>), ApiError> {
        self.check_fingerprint(&req.fingerprint)?;
        req.check_shape()
            .map_err(|e| err(ErrorCode::Malformed, e.to_string()))?;
        let msg = protocol::register_message(&req.fingerprint, &req.account, req.invite.as_deref());
        protocol::verify(&req.account, &msg, &req.signature).map_err(|_| {
            err(
                ErrorCode::BadSignature,
                "registration signature does not verify",
            )
        })?;
        if self.accounts.contains(&req.account) {
            return Ok((
                RegisterResponse {
                    account: req.account,
                    already_registered: true,
                },
                Vec::new(),
            ));
        }
        // Checked before an invite is consumed, so a refused registration burns nothing.
        let minute = now / 60_000;
        if minute != self.reg_minute {
            self.reg_minute = minute;
            self.reg_counts.clear();
        }
        let used = self.reg_counts.get(&source).copied().unwrap_or(0);
        if used >= self.cfg.registrations_per_minute || self.reg_counts.len() >= MAX_REG_SOURCES {
            return Err(err(
                ErrorCode::RateLimited,
                "too many registrations from this address, retry later",
            ));
        }
        let mut actions = Vec::new();
        match &self.cfg.registration {
            Registration::Closed => {
                return Err(err(
                    ErrorCode::RegistrationRefused,
                    "registration is closed",
                ));
            }
            Registration::Open => {}
            Registration::Invite { tokens } => {
                let token = req.invite.as_deref().ok_or_else(|| {
                    err(
                        ErrorCode::RegistrationRefused,
                        "an invite token is required",
                    )
                })?;
                let h = protocol::sha256(token);
                if !invite_matches(tokens, &h) {
                    return Err(err(ErrorCode::RegistrationRefused, "unknown invite token"));
                }
                if self.used_invites.contains(&h) {
                    return Err(err(
                        ErrorCode::RegistrationRefused,
                        "invite token already used",
                    ));
                }
                self.used_invites.insert(h);
                actions.push(Action::Persist {
                    key: RecordKey::global(format!("invite-{}", hex::encode(h))),
                    bytes: h.to_vec().into(),
                });
            }
        }
        *self.reg_counts.entry(source).or_insert(0) += 1;
        self.accounts.insert(req.account);
        actions.push(Action::Persist {
            key: RecordKey::global(format!("account-{}", hex::encode(req.account))),
            bytes: codec::encode(req).into(),
        });
        Ok((
            RegisterResponse {
                account: req.account,
                already_registered: false,
            },
            actions,
        ))
    }

    /// Undo a registration whose persistence failed.
    pub fn rollback_register(&mut self, req: &RegisterRequest) {
        self.accounts.remove(&req.account);
        if let Some(t) = &req.invite {
            self.used_invites.remove(&protocol::sha256(t));
        }
    }

    /// `Write`: validates the half and returns the signed receipt plus the `Persist` action
    /// that must complete before the receipt is sent.
    pub fn handle_write(
        &mut self,
        now: u64,
        req: WriteRequest,
    ) -> Result<(Receipt, Vec<Action>), ApiError> {
        self.check_fingerprint(&req.fingerprint)?;
        let p = self.cfg.params;
        let cur = self.current_round(now)?;
        if req.round != cur {
            return Err(err(
                ErrorCode::WrongRound,
                format!("writes are for round {cur}"),
            ));
        }
        if p.phase_at(cur, now) != Phase::Open {
            return Err(err(ErrorCode::TooLate, "writes for this round are closed"));
        }
        req.check_shape()
            .map_err(|e| err(ErrorCode::Malformed, e.to_string()))?;
        // The signature first: whether an account is registered, or already wrote this round,
        // is told only to the account's key holder.
        let msg = protocol::write_message(req.round, &req.request_id, &req.public_hash);
        protocol::verify(&req.account, &msg, &req.signature)
            .map_err(|_| err(ErrorCode::BadSignature, "write signature does not verify"))?;
        if !self.accounts.contains(&req.account) {
            return Err(err(ErrorCode::UnknownAccount, "account is not registered"));
        }
        // An identical retry (the client lost our answer) gets the same receipt again, once
        // the first copy is on disk (the shell waits for that; see `write_pending`).
        if let Some(prev) = self
            .rounds
            .get(&cur)
            .and_then(|s| s.writes.get(&req.request_id))
            && prev.req == req
        {
            if !prev.durable {
                return Err(err(
                    ErrorCode::Unavailable,
                    "the first copy of this write is still being stored: send it again",
                ));
            }
            return Ok((self.receipt_for(cur, &prev.req, prev.half_hash), Vec::new()));
        }
        {
            let st = self.rounds.get(&cur);
            if st.is_some_and(|s| s.writers.contains(&req.account)) {
                return Err(err(
                    ErrorCode::Duplicate,
                    "this account already wrote this round",
                ));
            }
            if st.is_some_and(|s| s.writes.contains_key(&req.request_id)) {
                return Err(err(
                    ErrorCode::Duplicate,
                    "request id already used this round",
                ));
            }
        }
        let slot_len = p.slot_len as usize;
        if req.key.len() != dpf::WriteKey::encoded_len(p.domain_bits, slot_len) {
            return Err(err(ErrorCode::BadKey, "write key has the wrong length"));
        }
        let key = dpf::WriteKey::decode(&req.key, p.domain_bits, slot_len)
            .map_err(|_| err(ErrorCode::BadKey, "write key does not decode"))?;
        let ctx = protocol::write_ctx(req.round, &req.request_id, &req.account);
        if key.public_hash(&ctx) != req.public_hash {
            return Err(err(
                ErrorCode::PublicHashMismatch,
                "key public hash differs from the signed one",
            ));
        }
        let half_hash = protocol::sha256(&req.key);
        let receipt = self.receipt_for(cur, &req, half_hash);
        let action = Action::Persist {
            key: RecordKey::round(cur, format!("write-{}", id_hex(&req.request_id))),
            bytes: codec::encode(&req).into(),
        };
        let st = self.round_mut(cur);
        st.writers.insert(req.account);
        st.writes.insert(
            req.request_id,
            StoredWrite {
                req,
                half_hash,
                durable: false,
            },
        );
        Ok((receipt, vec![action]))
    }

    fn receipt_for(&self, round: u64, req: &WriteRequest, half_hash: Hash) -> Receipt {
        let msg = protocol::receipt_message(
            self.cfg.role,
            &req.account,
            round,
            &req.request_id,
            &half_hash,
        );
        Receipt {
            role: self.cfg.role,
            account: req.account,
            round,
            request_id: req.request_id,
            half_hash,
            signature: protocol::sign(&self.cfg.signing_key, &msg),
        }
    }

    /// Whether `req` is an identical copy of a write whose first copy is still being
    /// persisted (the shell waits for it to settle, then calls [`Machine::handle_write`]).
    pub fn write_pending(&self, req: &WriteRequest) -> bool {
        self.rounds
            .get(&req.round)
            .and_then(|s| s.writes.get(&req.request_id))
            .is_some_and(|w| !w.durable && w.req == *req)
    }

    /// The write's record is on disk: its receipt may be sent, to it and to identical retries.
    pub fn write_persisted(&mut self, round: u64, request_id: &RequestId) {
        if let Some(w) = self
            .rounds
            .get_mut(&round)
            .and_then(|s| s.writes.get_mut(request_id))
        {
            w.durable = true;
        }
    }

    /// Undo a write whose persistence failed (no receipt was sent).
    pub fn rollback_write(&mut self, round: u64, request_id: &RequestId) {
        if let Some(st) = self.rounds.get_mut(&round)
            && st.frozen.is_none()
            && let Some(w) = st.writes.remove(request_id)
        {
            st.writers.remove(&w.req.account);
        }
    }

    /// `Commit`: verifies the peer's receipt for a write this server holds; returns the ack and
    /// the `Persist` action that must complete before it is sent.
    pub fn handle_commit(
        &mut self,
        now: u64,
        req: &CommitRequest,
    ) -> Result<(CommitAck, Vec<Action>), ApiError> {
        self.check_fingerprint(&req.fingerprint)?;
        let r = &req.peer_receipt;
        if r.role != self.cfg.role.peer() {
            return Err(err(
                ErrorCode::BadReceipt,
                "the receipt must be the other server's",
            ));
        }
        let msg =
            protocol::receipt_message(r.role, &r.account, r.round, &r.request_id, &r.half_hash);
        protocol::verify(&self.cfg.peer_signing_key, &msg, &r.signature)
            .map_err(|_| err(ErrorCode::BadReceipt, "receipt signature does not verify"))?;
        let p = self.cfg.params;
        match p.phase_at(r.round, now) {
            Phase::Open | Phase::Committing => {}
            Phase::NotStarted => return Err(err(ErrorCode::WrongRound, "round has not started")),
            _ => return Err(err(ErrorCode::TooLate, "commits for this round are closed")),
        }
        let st = self
            .rounds
            .get_mut(&r.round)
            .ok_or_else(|| err(ErrorCode::UnknownWrite, "no such write"))?;
        if st.frozen.is_some() {
            return Err(err(ErrorCode::TooLate, "commits for this round are closed"));
        }
        let w = st
            .writes
            .get(&r.request_id)
            .ok_or_else(|| err(ErrorCode::UnknownWrite, "no such write"))?;
        if w.req.account != r.account {
            return Err(err(ErrorCode::BadReceipt, "receipt names another account"));
        }
        if !w.durable {
            return Err(err(
                ErrorCode::Unavailable,
                "this write is still being stored: commit it again",
            ));
        }
        // Identical halves evaluate to zero everywhere on an honest pair, so only a forgery
        // sends them (the version 1 audit's two-slot forgery did). The audit refuses them on
        // its own; this is a cheap second line that both servers apply identically, since
        // each sees both hashes.
        if w.half_hash == r.half_hash {
            return Err(err(
                ErrorCode::BadKey,
                "the two halves of this write are identical",
            ));
        }
        if let Some(existing) = st.commits.get(&r.request_id) {
            if existing == r {
                return Ok((
                    CommitAck {
                        round: r.round,
                        request_id: r.request_id,
                    },
                    Vec::new(),
                ));
            }
            return Err(err(
                ErrorCode::Duplicate,
                "write already committed with another receipt",
            ));
        }
        st.commits.insert(r.request_id, r.clone());
        let action = Action::Persist {
            key: RecordKey::round(r.round, format!("commit-{}", id_hex(&r.request_id))),
            bytes: codec::encode(r).into(),
        };
        Ok((
            CommitAck {
                round: r.round,
                request_id: r.request_id,
            },
            vec![action],
        ))
    }

    /// Undo a commit whose persistence failed.
    pub fn rollback_commit(&mut self, round: u64, request_id: &RequestId) {
        if let Some(st) = self.rounds.get_mut(&round)
            && st.frozen.is_none()
        {
            st.commits.remove(request_id);
        }
    }

    /// `Read`: validates and returns the job the shell answers (in a batch).
    /// Validates a read. A first read of the account in the round comes with a `Persist` of
    /// its digest, which the shell carries out before answering (so a restart still refuses a
    /// different second read); an identical retry comes with none.
    pub fn handle_read(
        &mut self,
        now: u64,
        req: &ReadRequest,
    ) -> Result<(ReadJob, Vec<Action>), ApiError> {
        self.check_fingerprint(&req.fingerprint)?;
        let p = self.cfg.params;
        let cur = self.current_round(now)?;
        if req.round != cur {
            return Err(err(
                ErrorCode::WrongRound,
                format!("reads are sent in round {cur}"),
            ));
        }
        if Some(req.array_round) != p.read_array_round(cur) {
            return Err(err(
                ErrorCode::WrongRound,
                "reads name array round = round - read_lag",
            ));
        }
        req.check_shape(&p)
            .map_err(|e| err(ErrorCode::Malformed, e.to_string()))?;
        // The signature first, as for writes: registration and "already read" are told only
        // to the account's key holder.
        let msg = protocol::read_message(req.round, req.array_round, &req.account, &req.keys);
        protocol::verify(&req.account, &msg, &req.signature)
            .map_err(|_| err(ErrorCode::BadSignature, "read signature does not verify"))?;
        if !self.accounts.contains(&req.account) {
            return Err(err(ErrorCode::UnknownAccount, "account is not registered"));
        }
        // One read per account and round; an identical retry is answered again (it reveals
        // nothing new), a different second read is refused.
        let digest = protocol::sha256(&codec::encode(req));
        if let Some(prev) = self
            .rounds
            .get(&cur)
            .and_then(|s| s.readers.get(&req.account))
            && *prev != digest
        {
            return Err(err(
                ErrorCode::Duplicate,
                "this account already read this round",
            ));
        }
        let want = dpf::ReadKey::encoded_len(p.domain_bits);
        let mut keys = Vec::with_capacity(req.keys.len());
        for k in &req.keys {
            if k.len() != want {
                return Err(err(ErrorCode::BadKey, "read key has the wrong length"));
            }
            keys.push(
                dpf::ReadKey::decode(k, p.domain_bits)
                    .map_err(|_| err(ErrorCode::BadKey, "read key does not decode"))?,
            );
        }
        let array = match self.status(req.array_round) {
            RoundStatus::Published(_) => self
                .published_array(req.array_round)
                .ok_or_else(|| err(ErrorCode::Internal, "published array missing"))?,
            RoundStatus::Abandoned(_) => self.zero_array(),
            RoundStatus::Pending => return Err(err(ErrorCode::NotReady, "array is not final yet")),
            RoundStatus::Forgotten => return Err(err(ErrorCode::Gone, "array no longer kept")),
        };
        if let Some(st) = self.rounds.get_mut(&req.array_round) {
            st.reads_answered = true;
        }
        let actions = match self.round_mut(cur).readers.insert(req.account, digest) {
            Some(_) => Vec::new(),
            None => vec![Action::Persist {
                key: RecordKey::round(cur, format!("read-{}", hex::encode(req.account))),
                bytes: digest.to_vec().into(),
            }],
        };
        Ok((
            ReadJob {
                array_round: req.array_round,
                array,
                keys,
            },
            actions,
        ))
    }

    fn zero_array(&mut self) -> Arc<Vec<u8>> {
        let len = self.cfg.params.array_bytes() as usize;
        self.zero
            .get_or_insert_with(|| Arc::new(vec![0u8; len]))
            .clone()
    }

    // -----------------------------------------------------------------------------------------
    // Peer messages
    // -----------------------------------------------------------------------------------------

    /// A message from the peer (authenticated by mutual TLS). The returned actions start with
    /// the `Persist` of the message; the ack is sent only after they are carried out.
    pub fn handle_peer(
        &mut self,
        now: u64,
        msg: PeerMessage,
    ) -> Result<(PeerAck, Vec<Action>), ApiError> {
        let encoded = Arc::new(codec::encode(&msg));
        self.handle_peer_encoded(now, msg, encoded)
    }

    /// [`Machine::handle_peer`] for a message whose encoding is at hand (the request body it
    /// was decoded from): that is what gets persisted, so a share array is not encoded again.
    pub fn handle_peer_encoded(
        &mut self,
        now: u64,
        msg: PeerMessage,
        encoded: Arc<Vec<u8>>,
    ) -> Result<(PeerAck, Vec<Action>), ApiError> {
        let peer = self.cfg.role.peer();
        let round = msg.round();
        if msg.from() != peer {
            return Err(err(
                ErrorCode::Malformed,
                "message does not come from the peer role",
            ));
        }
        let cur = self.cfg.params.round_at(now).unwrap_or(0);
        if round > cur.saturating_add(1) {
            return Err(err(ErrorCode::WrongRound, "message for a future round"));
        }
        let ack = PeerAck { round };
        if round < self.forgotten_below {
            return Ok((ack, Vec::new()));
        }
        let p = self.cfg.params;
        // Validate contents that do not depend on state.
        match &msg {
            PeerMessage::Shares(m) if m.data.len() as u64 != p.array_bytes() => {
                return Err(err(
                    ErrorCode::Malformed,
                    "share array has the wrong length",
                ));
            }
            PeerMessage::ArrayHash(m) => {
                let text =
                    protocol::array_hash_message(peer, m.round, &m.array_hash, &m.accepted_digest);
                protocol::verify(&self.cfg.peer_signing_key, &text, &m.signature).map_err(
                    |_| {
                        err(
                            ErrorCode::BadSignature,
                            "array hash signature does not verify",
                        )
                    },
                )?;
            }
            _ => {}
        }
        let mut actions = Vec::new();
        // Both servers freeze at the cutoff, up to the clock skew: sets that arrive earlier
        // mean the peer closed the round early (and would exclude honest late writes).
        if let PeerMessage::Sets(_) = &msg {
            let cutoff = p.at_offset_ms(round, p.cutoff_ms);
            if now.saturating_add(MAX_CLOCK_SKEW_MS) < cutoff && !self.round_mut(round).is_final() {
                let early_ms = cutoff - now;
                actions.push(Action::Alarm {
                    round,
                    message: format!(
                        "peer sent its sets for round {round} {early_ms} ms before the cutoff"
                    ),
                });
                actions.extend(self.abandon(
                    round,
                    AbandonReason::PeerClosedEarly { early_ms },
                    true,
                ));
                return Ok((ack, actions));
            }
        }
        let st = self.round_mut(round);
        if st.is_final() {
            // A late abandon after we published: if nobody has read the array yet, follow the
            // peer so both answer reads identically.
            if let PeerMessage::Abandon(m) = &msg
                && matches!(st.status, Some(RoundStatus::Published(_)))
            {
                let answered = st.reads_answered;
                st.peer_abandon = Some(m.clone());
                actions.push(Action::Alarm {
                    round,
                    message: format!(
                        "peer abandoned round {round} after we published it ({:?}); reads answered already: {answered}",
                        m.reason
                    ),
                });
                actions.extend(self.abandon(round, AbandonReason::PeerAbandoned, false));
            }
            return Ok((ack, actions));
        }
        let name = match &msg {
            PeerMessage::Sets(_) => "peer-sets",
            PeerMessage::Audit(_) => "peer-audit",
            PeerMessage::Shares(_) => "peer-shares",
            PeerMessage::ArrayHash(_) => "peer-hash",
            PeerMessage::Abandon(_) => "peer-abandon",
        };
        let equivocated;
        let fresh;
        match msg {
            PeerMessage::Sets(m) => (fresh, equivocated) = store_once(&mut st.peer_sets, m),
            PeerMessage::Audit(m) => (fresh, equivocated) = store_once(&mut st.peer_audit, m),
            PeerMessage::Shares(m) => {
                (fresh, equivocated) = store_once(&mut st.peer_shares, m.data)
            }
            PeerMessage::ArrayHash(m) => (fresh, equivocated) = store_once(&mut st.peer_hash, m),
            PeerMessage::Abandon(m) => (fresh, equivocated) = store_once(&mut st.peer_abandon, m),
        }
        if equivocated {
            actions.extend(self.abandon(round, AbandonReason::PeerEquivocated, true));
            return Ok((ack, actions));
        }
        if fresh {
            actions.push(Action::Persist {
                key: RecordKey::round(round, name),
                bytes: encoded,
            });
            actions.extend(self.advance(round, now));
        }
        Ok((ack, actions))
    }

    // -----------------------------------------------------------------------------------------
    // Time and computations
    // -----------------------------------------------------------------------------------------

    /// Clock tick: creates the current rounds' state, moves every round along, prunes.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let p = self.cfg.params;
        let Some(cur) = p.round_at(now) else {
            return Vec::new();
        };
        let keep_from = cur.saturating_sub(u64::from(p.read_lag) + 1);
        let mut actions = Vec::new();
        if keep_from > self.forgotten_below {
            self.forgotten_below = keep_from;
            let old: Vec<u64> = self.rounds.range(..keep_from).map(|(r, _)| *r).collect();
            for r in old {
                self.rounds.remove(&r);
            }
            actions.push(Action::Prune { below: keep_from });
        }
        for r in keep_from..=cur {
            self.rounds.entry(r).or_default();
        }
        let rounds: Vec<u64> = self.rounds.keys().copied().collect();
        for r in rounds {
            actions.extend(self.advance(r, now));
        }
        actions
    }

    /// The result of an [`Action::Audit`] job.
    pub fn audit_done(&mut self, now: u64, result: AuditResult) -> Vec<Action> {
        let round = result.round;
        let role = self.cfg.role;
        let Some(st) = self.rounds.get_mut(&round) else {
            return Vec::new();
        };
        st.audit_running = false;
        if st.is_final() {
            return Vec::new();
        }
        #[cfg(feature = "misbehave")]
        let result = {
            let mut result = result;
            if let Some(m) = &self.misbehave {
                for v in result.values.iter_mut() {
                    if st
                        .writes
                        .get(&v.request_id)
                        .is_some_and(|w| m.fails_audit(round, &w.req.account))
                    {
                        v.value[0] ^= 1;
                    }
                }
            }
            result
        };
        let msg = AuditMessage {
            round,
            from: role,
            values: result.values,
        };
        let mut actions = Vec::new();
        match &st.own_audit {
            Some(prev) if prev != &msg => {
                // Recomputed after a restart and the values changed: our own state is unreliable.
                st.state_lost = true;
            }
            Some(_) => {
                st.own_share = Some(Arc::new(result.share));
            }
            None => {
                st.own_share = Some(Arc::new(result.share));
                st.own_audit = Some(msg.clone());
                let wrapped = PeerMessage::Audit(msg);
                actions.push(Action::Persist {
                    key: RecordKey::round(round, "own-audit"),
                    bytes: codec::encode(&wrapped).into(),
                });
                actions.push(Action::SendPeer(wrapped));
            }
        }
        actions.extend(self.advance(round, now));
        actions
    }

    /// A `Persist` of a round record failed: the round cannot be closed safely.
    pub fn persist_failed(&mut self, now: u64, round: u64) -> Vec<Action> {
        if let Some(st) = self.rounds.get_mut(&round) {
            st.state_lost = true;
        }
        self.advance(round, now)
    }

    /// A computation failed: the round cannot be closed safely.
    /// The audit computation of `round` was given up after the round's deadline: the round is
    /// abandoned for the deadline (not for lost state), as it would have been anyway.
    pub fn compute_cancelled(&mut self, now: u64, round: u64) -> Vec<Action> {
        if let Some(st) = self.rounds.get_mut(&round) {
            st.audit_running = false;
        }
        self.advance(round, now)
    }

    pub fn compute_failed(&mut self, now: u64, round: u64) -> Vec<Action> {
        if let Some(st) = self.rounds.get_mut(&round) {
            st.audit_running = false;
            st.state_lost = true;
        }
        self.advance(round, now)
    }

    fn abandon(&mut self, round: u64, reason: AbandonReason, alarm: bool) -> Vec<Action> {
        let role = self.cfg.role;
        let st = self.round_mut(round);
        let status = RoundStatus::Abandoned(reason.clone());
        st.status = Some(status.clone());
        st.own_share = None;
        st.peer_shares = None;
        st.array = None;
        let mut actions = vec![Action::Persist {
            key: RecordKey::round(round, "outcome"),
            bytes: codec::encode(&status).into(),
        }];
        if reason != AbandonReason::PeerAbandoned {
            actions.push(Action::SendPeer(PeerMessage::Abandon(AbandonMessage {
                round,
                from: role,
                reason: reason.clone(),
            })));
        }
        if alarm {
            actions.push(Action::Alarm {
                round,
                message: format!("round {round} abandoned: {reason:?}"),
            });
        }
        actions.push(Action::Abandoned { round, reason });
        actions
    }

    /// Moves one round as far as its inputs allow.
    fn advance(&mut self, round: u64, now: u64) -> Vec<Action> {
        let p = self.cfg.params;
        let role = self.cfg.role;
        let mut actions = Vec::new();
        let Some(st) = self.rounds.get(&round) else {
            return actions;
        };
        if st.is_final() {
            return actions;
        }
        if st.state_lost {
            return self.abandon(round, AbandonReason::LocalStateLost, true);
        }
        if st.peer_abandon.is_some() {
            return self.abandon(round, AbandonReason::PeerAbandoned, false);
        }
        if now >= p.at_offset_ms(round, p.publish_deadline_ms) {
            return self.abandon(round, AbandonReason::DeadlineMissed, false);
        }
        // CUTOFF: freeze.
        let cutoff = p
            .at_offset_ms(round, p.cutoff_ms)
            .saturating_sub(self.early_ms(round));
        if st.frozen.is_none() && now >= cutoff {
            // The early challenge of this round, if we hold both nonces of the round before.
            let early_challenge = self.early_challenge_of(round);
            let mut nonce = [0u8; 32];
            if (self.rng)(&mut nonce).is_err() {
                actions.extend(self.abandon(round, AbandonReason::LocalStateLost, true));
                actions.push(Action::Fatal {
                    message: "the OS random source failed, so no round nonce can be drawn: \
                              stopping (restart once the random source works)"
                        .into(),
                });
                return actions;
            }
            let st = self.rounds.entry(round).or_default();
            let frozen = SetsMessage {
                round,
                from: role,
                nonce,
                received: st
                    .writes
                    .values()
                    .map(|w| ReceivedWrite {
                        account: w.req.account,
                        request_id: w.req.request_id,
                        half_hash: w.half_hash,
                    })
                    .collect(),
                committed: st.commits.keys().copied().collect(),
                early_challenge,
            };
            st.frozen = Some(frozen.clone());
            actions.push(Action::Persist {
                key: RecordKey::round(round, "frozen"),
                bytes: codec::encode(&frozen).into(),
            });
            actions.push(Action::SendPeer(PeerMessage::Sets(frozen)));
        }
        // SETS: intersection, fault detection, admission.
        let st = self.rounds.entry(round).or_default();
        if st.accepted.is_none()
            && let (Some(own), Some(peer)) = (&st.frozen, &st.peer_sets)
        {
            let peer_received: HashMap<&RequestId, &ReceivedWrite> =
                peer.received.iter().map(|w| (&w.request_id, w)).collect();
            for id in &own.committed {
                let Some(receipt) = st.commits.get(id) else {
                    st.state_lost = true;
                    break;
                };
                let ok = peer_received.get(id).is_some_and(|w| {
                    w.account == receipt.account && w.half_hash == receipt.half_hash
                });
                if !ok {
                    let evidence = receipt.clone();
                    let mut out = actions;
                    out.push(Action::Alarm {
                        round,
                        message: format!(
                            "peer omitted or altered write {} that it signed a receipt for",
                            id_hex(id)
                        ),
                    });
                    out.extend(self.abandon(
                        round,
                        AbandonReason::PeerOmittedWrite { evidence },
                        true,
                    ));
                    return out;
                }
            }
            let peer_committed: HashSet<&RequestId> = peer.committed.iter().collect();
            let mut accepted: Vec<RequestId> = own
                .committed
                .iter()
                .filter(|id| peer_committed.contains(id) && st.writes.contains_key(*id))
                .copied()
                .collect();
            accepted.sort_unstable();
            accepted.dedup();
            let (na, nb) = match role {
                Role::A => (own.nonce, peer.nonce),
                Role::B => (peer.nonce, own.nonce),
            };
            let accepted = admit(accepted, p.max_writers as usize, round, &na, &nb);
            st.accepted = Some(accepted);
            // Both nonces of this round are known: so is the next round's early challenge.
            actions.push(Action::EarlyChallenge {
                round: round + 1,
                challenge: self::early_challenge(round + 1, &na, &nb),
            });
            st.sets_at = Some(now);
            actions.push(Action::PhaseDone {
                round,
                phase: RoundPhase::CutoffToSets,
                ms: now.saturating_sub(p.at_offset_ms(round, p.cutoff_ms)),
            });
        }
        if st.state_lost {
            return self.abandon(round, AbandonReason::LocalStateLost, true);
        }
        // AUDIT: (re)compute our share and audit values.
        if let (Some(accepted), Some(own), Some(peer)) = (&st.accepted, &st.frozen, &st.peer_sets)
            && st.own_share.is_none()
            && !st.share_final
            && !st.audit_running
        {
            let (na, nb) = match role {
                Role::A => (own.nonce, peer.nonce),
                Role::B => (peer.nonce, own.nonce),
            };
            let writes = accepted
                .iter()
                .filter_map(|id| st.writes.get(id))
                .map(|w| {
                    (
                        w.req.request_id,
                        w.req.key.clone(),
                        protocol::write_ctx(round, &w.req.request_id, &w.req.account),
                    )
                })
                .collect();
            st.audit_running = true;
            actions.push(Action::Audit(AuditJob {
                round,
                role,
                n_slots: p.n_slots() as usize,
                slot_len: p.slot_len as usize,
                domain_bits: p.domain_bits,
                // Both servers decide alike from the two frozen views: the early challenge if
                // both named the same one at CUTOFF, else the one drawn from this round's nonces.
                challenge: own
                    .early_challenge
                    .filter(|c| peer.early_challenge == Some(*c))
                    .unwrap_or_else(|| challenge(round, &na, &nb)),
                writes,
            }));
        }
        // Audit comparison: drop failed writes from our share, send it.
        if !st.share_final
            && let (Some(accepted), Some(own), Some(peer), Some(_)) =
                (&st.accepted, &st.own_audit, &st.peer_audit, &st.own_share)
        {
            let peer_vals: HashMap<&RequestId, &[u8; 32]> = peer
                .values
                .iter()
                .map(|v| (&v.request_id, &v.value))
                .collect();
            let own_vals: HashMap<&RequestId, &[u8; 32]> = own
                .values
                .iter()
                .map(|v| (&v.request_id, &v.value))
                .collect();
            let mut passed = Vec::new();
            let mut failed = Vec::new();
            for id in accepted {
                match (own_vals.get(id), peer_vals.get(id)) {
                    (Some(a), Some(b)) if a == b => passed.push(*id),
                    _ => failed.push(*id),
                }
            }
            let failed_keys: Vec<dpf::WriteKey> = failed
                .iter()
                .filter_map(|id| st.writes.get(id))
                .filter_map(|w| {
                    dpf::WriteKey::decode(&w.req.key, p.domain_bits, p.slot_len as usize).ok()
                })
                .collect();
            if let Some(share) = st.own_share.as_mut()
                && !failed_keys.is_empty()
            {
                // Not sent yet, so not shared: no copy.
                remove_writes(
                    Arc::make_mut(share).as_mut_slice(),
                    p.slot_len as usize,
                    &failed_keys,
                    role,
                );
            }
            if !failed.is_empty() {
                actions.push(Action::Alarm {
                    round,
                    message: format!(
                        "{} write(s) failed the audit and were dropped by both servers",
                        failed.len()
                    ),
                });
            }
            st.passed = Some(passed);
            st.share_final = true;
            st.audit_at = Some(now);
            if let Some(t) = st.sets_at {
                actions.push(Action::PhaseDone {
                    round,
                    phase: RoundPhase::Audit,
                    ms: now.saturating_sub(t),
                });
            }
            // Sent even if we already hold M_r (after a restart): the peer may not have it.
            if let Some(share) = &st.own_share {
                actions.push(Action::SendPeer(PeerMessage::Shares(SharesMessage {
                    round,
                    from: role,
                    data: share.clone(),
                })));
            }
        }
        // EXCHANGE: M_r = W_A xor W_B, persisted, hash signed and sent.
        if st.array.is_none()
            && st.share_final
            && st.peer_shares.is_some()
            && let (Some(own), Some(peer)) = (st.own_share.take(), &st.peer_shares)
        {
            // Our share is not needed any more (it was sent; a restart recomputes it), so M_r
            // is computed in its buffer when the message being sent no longer holds it, else
            // in one fresh buffer (never a copy followed by a second pass).
            let m = match Arc::try_unwrap(own) {
                Ok(mut m) => {
                    xor_into(&mut m, peer);
                    m
                }
                Err(own) => xor_of(&own, peer),
            };
            let array = Arc::new(m);
            // Restored after a crash between our signed hash and M_r reaching the disk: the
            // recomputed M_r must be the one we signed, and it is persisted now.
            if let Some(h) = &st.own_hash {
                if protocol::array_hash(&array) != h.array_hash {
                    st.state_lost = true;
                    actions.extend(self.abandon(round, AbandonReason::LocalStateLost, true));
                    return actions;
                }
                actions.push(Action::Persist {
                    key: RecordKey::round(round, "array"),
                    bytes: array.clone(),
                });
            }
            st.array = Some(array);
        }
        if st.own_hash.is_none()
            && let (Some(array), Some(passed)) = (&st.array, &st.passed)
        {
            let array_hash = protocol::array_hash(array);
            let digest = protocol::accepted_digest(passed);
            let text = protocol::array_hash_message(role, round, &array_hash, &digest);
            let msg = ArrayHashMessage {
                round,
                from: role,
                array_hash,
                accepted_digest: digest,
                signature: protocol::sign(&self.cfg.signing_key, &text),
            };
            // The hash goes out before M_r is on disk: both shares that make M_r are (the
            // peer's was persisted before it was acknowledged, ours is recomputed from the
            // persisted writes), so after a crash here the same M_r, hash and signature are
            // computed again. This takes one array write off the round's critical path. The
            // outcome is queued after the array, so it never becomes durable first.
            let wrapped = PeerMessage::ArrayHash(msg.clone());
            actions.push(Action::Persist {
                key: RecordKey::round(round, "own-hash"),
                bytes: codec::encode(&wrapped).into(),
            });
            actions.push(Action::SendPeer(wrapped));
            actions.push(Action::Persist {
                key: RecordKey::round(round, "array"),
                bytes: array.clone(),
            });
            st.own_hash = Some(msg);
        }
        // PUBLISHED or ABANDONED (only with M_r in hand: after a restart the signed hash may be
        // back before the array is recomputed).
        if let (Some(own), Some(peer), Some(_), Some(_)) =
            (&st.own_hash, &st.peer_hash, &st.passed, &st.array)
        {
            if own.array_hash == peer.array_hash && own.accepted_digest == peer.accepted_digest {
                let passed = st.passed.clone().unwrap_or_default();
                if protocol::accepted_digest(&passed) != own.accepted_digest {
                    st.state_lost = true;
                    actions.extend(self.abandon(round, AbandonReason::LocalStateLost, true));
                    return actions;
                }
                let (signature_a, signature_b) = match role {
                    Role::A => (own.signature, peer.signature),
                    Role::B => (peer.signature, own.signature),
                };
                let published = PublishedRound {
                    round,
                    array_hash: own.array_hash,
                    accepted: passed,
                    signature_a,
                    signature_b,
                };
                let status = RoundStatus::Published(published);
                st.status = Some(status.clone());
                st.own_share = None;
                st.peer_shares = None;
                actions.push(Action::Persist {
                    key: RecordKey::round(round, "outcome"),
                    bytes: codec::encode(&status).into(),
                });
                if let Some(t) = st.audit_at {
                    actions.push(Action::PhaseDone {
                        round,
                        phase: RoundPhase::Exchange,
                        ms: now.saturating_sub(t),
                    });
                }
                actions.push(Action::PhaseDone {
                    round,
                    phase: RoundPhase::CutoffToPublished,
                    ms: now.saturating_sub(p.at_offset_ms(round, p.cutoff_ms)),
                });
                actions.push(Action::Published { round });
            } else {
                actions.extend(self.abandon(round, AbandonReason::HashMismatch, true));
            }
        }
        actions
    }

    // -----------------------------------------------------------------------------------------
    // Recovery
    // -----------------------------------------------------------------------------------------

    /// Feeds one persisted record at start-up. Unknown or undecodable records of a round mark
    /// that round's state as lost (it will be abandoned, never closed from partial state).
    pub fn restore(&mut self, key: &RecordKey, bytes: &[u8]) -> Result<(), RestoreError> {
        let bad = || RestoreError {
            name: key.name.clone(),
            round: key.round,
        };
        let Some(round) = key.round else {
            if key.name.starts_with("account-") {
                let req: RegisterRequest = codec::decode(bytes).map_err(|_| bad())?;
                self.accounts.insert(req.account);
            } else if key.name.starts_with("invite-") {
                let h: Hash = bytes.try_into().map_err(|_| bad())?;
                self.used_invites.insert(h);
            } else {
                return Err(bad());
            }
            return Ok(());
        };
        let result = self.restore_round(round, &key.name, bytes);
        if result.is_none() {
            self.round_mut(round).state_lost = true;
            return Err(bad());
        }
        Ok(())
    }

    fn restore_round(&mut self, round: u64, name: &str, bytes: &[u8]) -> Option<()> {
        let p = self.cfg.params;
        let st = self.round_mut(round);
        if name.starts_with("write-") {
            let req: WriteRequest = codec::decode(bytes).ok()?;
            let half_hash = protocol::sha256(&req.key);
            st.writers.insert(req.account);
            st.writes.insert(
                req.request_id,
                StoredWrite {
                    req,
                    half_hash,
                    durable: true,
                },
            );
            return Some(());
        }
        if name.starts_with("commit-") {
            let r: Receipt = codec::decode(bytes).ok()?;
            st.commits.insert(r.request_id, r);
            return Some(());
        }
        if let Some(account) = name.strip_prefix("read-") {
            let account: AccountId = hex::decode(account).ok()?.try_into().ok()?;
            let digest: Hash = bytes.try_into().ok()?;
            st.readers.insert(account, digest);
            return Some(());
        }
        match name {
            "frozen" => st.frozen = Some(codec::decode(bytes).ok()?),
            "outcome" => st.status = Some(codec::decode(bytes).ok()?),
            "array" => {
                if bytes.len() as u64 != p.array_bytes() {
                    return None;
                }
                st.array = Some(Arc::new(bytes.to_vec()));
            }
            "own-audit" => match codec::decode(bytes).ok()? {
                PeerMessage::Audit(m) => st.own_audit = Some(m),
                _ => return None,
            },
            "own-hash" => match codec::decode(bytes).ok()? {
                PeerMessage::ArrayHash(m) => st.own_hash = Some(m),
                _ => return None,
            },
            "peer-sets" | "peer-audit" | "peer-shares" | "peer-hash" | "peer-abandon" => {
                match codec::decode(bytes).ok()? {
                    PeerMessage::Sets(m) => st.peer_sets = Some(m),
                    PeerMessage::Audit(m) => st.peer_audit = Some(m),
                    PeerMessage::Shares(m) => st.peer_shares = Some(m.data),
                    PeerMessage::ArrayHash(m) => st.peer_hash = Some(m),
                    PeerMessage::Abandon(m) => st.peer_abandon = Some(m),
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// A record of `round` could not be read (corrupted): the round will be abandoned.
    pub fn restore_corrupt(&mut self, round: Option<u64>) {
        if let Some(r) = round {
            self.round_mut(r).state_lost = true;
        }
    }

    /// The early challenge of `round` if this server holds both nonces of `round - 1`.
    fn early_challenge_of(&self, round: u64) -> Option<[u8; 16]> {
        let prev = self.rounds.get(&round.checked_sub(1)?)?;
        let (own, peer) = (prev.frozen.as_ref()?, prev.peer_sets.as_ref()?);
        let (na, nb) = match self.cfg.role {
            Role::A => (own.nonce, peer.nonce),
            Role::B => (peer.nonce, own.nonce),
        };
        Some(early_challenge(round, &na, &nb))
    }

    /// After all records are restored: recomputes what was derived, re-sends every own message
    /// of unfinished rounds (the peer treats repeats as no-ops) and moves rounds along.
    pub fn resume(&mut self, now: u64) -> Vec<Action> {
        let p = self.cfg.params;
        let mut actions = Vec::new();
        let rounds: Vec<u64> = self.rounds.keys().copied().collect();
        for r in rounds {
            let Some(st) = self.rounds.get_mut(&r) else {
                continue;
            };
            // A published round must have its array, with the published hash.
            if let Some(RoundStatus::Published(pubd)) = &st.status {
                let ok = st
                    .array
                    .as_ref()
                    .is_some_and(|a| protocol::array_hash(a) == pubd.array_hash);
                if ok {
                    // The peer may have missed our signed hash (lost with the crash).
                    if let Some(h) = &st.own_hash {
                        actions.push(Action::SendPeer(PeerMessage::ArrayHash(h.clone())));
                    }
                    continue;
                }
                st.status = None;
                st.state_lost = true;
            }
            if let Some(RoundStatus::Abandoned(reason)) = &st.status {
                // The peer may have missed our abandon notice.
                if *reason != AbandonReason::PeerAbandoned {
                    actions.push(Action::SendPeer(PeerMessage::Abandon(AbandonMessage {
                        round: r,
                        from: self.cfg.role,
                        reason: reason.clone(),
                    })));
                }
                continue;
            }
            // The array is trusted only together with our own signed hash of it.
            if let (Some(a), Some(h)) = (&st.array, &st.own_hash)
                && protocol::array_hash(a) != h.array_hash
            {
                st.state_lost = true;
            }
            if st.array.is_some() && st.own_hash.is_none() {
                st.array = None;
            }
            if let Some(f) = &st.frozen {
                actions.push(Action::SendPeer(PeerMessage::Sets(f.clone())));
            }
            if let Some(a) = &st.own_audit {
                actions.push(Action::SendPeer(PeerMessage::Audit(a.clone())));
            }
            if let Some(h) = &st.own_hash {
                actions.push(Action::SendPeer(PeerMessage::ArrayHash(h.clone())));
                // Recompute the passed set from both audits for publishing (the array is held,
                // or recomputed from both shares if the crash came before it reached the disk).
                if let (Some(own), Some(peer), None) = (&st.own_audit, &st.peer_audit, &st.passed) {
                    let peer_vals: HashMap<&RequestId, &[u8; 32]> = peer
                        .values
                        .iter()
                        .map(|v| (&v.request_id, &v.value))
                        .collect();
                    let passed: Vec<RequestId> = own
                        .values
                        .iter()
                        .filter(|v| peer_vals.get(&v.request_id) == Some(&&v.value))
                        .map(|v| v.request_id)
                        .collect();
                    st.passed = Some(passed);
                } else if st.passed.is_none() {
                    st.state_lost = true;
                }
            }
            let _ = p;
        }
        actions.extend(self.tick(now));
        actions
    }
}

/// A record that could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot restore record {name} of round {round:?}")]
pub struct RestoreError {
    /// Record name.
    pub name: String,
    /// Its round.
    pub round: Option<u64>,
}

/// Stores `value` in `slot` if empty. Returns (fresh, equivocated).
fn store_once<T: PartialEq>(slot: &mut Option<T>, value: T) -> (bool, bool) {
    match slot {
        None => {
            *slot = Some(value);
            (true, false)
        }
        Some(prev) => (false, *prev != value),
    }
}

/// `SHA-256("mpm/challenge/v1" || round || nonce_A || nonce_B)[..16]`.
pub fn challenge(round: u64, nonce_a: &[u8; 32], nonce_b: &[u8; 32]) -> [u8; 16] {
    challenge_under(b"mpm/challenge/v1", round, nonce_a, nonce_b)
}

/// The early audit challenge of `round`:
/// `SHA-256("mpm/challenge-early/v1" || round || nonce_A(round - 1) || nonce_B(round - 1))[..16]`,
/// from the nonces the servers exchanged at the previous round's CUTOFF (never sent to
/// clients), so known to both servers before the round's first write.
pub fn early_challenge(round: u64, prev_nonce_a: &[u8; 32], prev_nonce_b: &[u8; 32]) -> [u8; 16] {
    challenge_under(b"mpm/challenge-early/v1", round, prev_nonce_a, prev_nonce_b)
}

/// `SHA-256(label || round (u64 LE) || a || b)[..16]`.
fn challenge_under(label: &[u8], round: u64, a: &[u8; 32], b: &[u8; 32]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(label);
    h.update(round.to_le_bytes());
    h.update(a);
    h.update(b);
    let d: [u8; 32] = h.finalize().into();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// Random admission: if more than `max` ids, keep a subset chosen by a Fisher-Yates shuffle
/// driven by `SHA-256("mpm/admission/v1" || round || nonce_A || nonce_B || counter)`; both
/// servers compute the same subset. The result is sorted.
pub fn admit(
    mut ids: Vec<RequestId>,
    max: usize,
    round: u64,
    nonce_a: &[u8; 32],
    nonce_b: &[u8; 32],
) -> Vec<RequestId> {
    if ids.len() <= max {
        return ids;
    }
    let mut counter = 0u64;
    let mut next = || {
        let mut h = Sha256::new();
        h.update(b"mpm/admission/v1");
        h.update(round.to_le_bytes());
        h.update(nonce_a);
        h.update(nonce_b);
        h.update(counter.to_le_bytes());
        counter += 1;
        let d: [u8; 32] = h.finalize().into();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    };
    for i in (1..ids.len()).rev() {
        // Rejection sampling for an unbiased index in [0, i].
        let bound = (i as u64) + 1;
        let zone = u64::MAX - (u64::MAX % bound);
        let j = loop {
            let x = next();
            if x < zone {
                break (x % bound) as usize;
            }
        };
        ids.swap(i, j);
    }
    ids.truncate(max);
    ids.sort_unstable();
    ids
}
