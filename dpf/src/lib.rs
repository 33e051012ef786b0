//! Two-party distributed point functions (Boyle-Gilboa-Ishai tree DPF) for a two-server
//! metadata-private messenger, with a verifiable-DPF audit against malicious clients and
//! batched kernels for the servers' hot loops.
//!
//! * [`ReadKey`]: bit outputs over `2^n` points with early termination (each leaf yields 128
//!   output bits), the selection vector of a two-server PIR read; [`pir_answer`] answers many
//!   reads in one pass over the database.
//! * [`WriteKey`]: byte-string outputs of `slot_len` bytes, one slot per leaf;
//!   [`write_accumulate`] and [`write_accumulate_audited`] XOR many writes into a share array
//!   in one pass over it.
//!
//! Outputs are XOR-shared: party A's share XOR party B's share is the point function. The
//! party comes from the caller (the server's role), never from the key.
//!
//! # Construction
//!
//! A node is 128 bits: bit 0 is the control bit `t`, the rest the seed. Children are
//! `H_left((v & !1) ^ salt)` and `H_right((v & !1) ^ salt)`, corrected by the level's
//! correction word when `t = 1`. `H_d(x) = AES_{k_d}(sigma(x)) ^ sigma(x)` is fixed-key AES in
//! sigma-MMO form, a circular-correlation-robust hash (Guo-Katz-Wang-Yu 2020); each domain
//! (left, right, read-leaf conversion, payload, two proof halves) has its own fixed key
//! `SHA-256("mpm-dpf/v1/prg/" || name)[..16]`, and every key has a public random 128-bit salt
//! XORed into every input for multi-instance security. Party A's root has `t = 0`, B's
//! `t = 1`. Key generation is the BGI construction over the XOR group with the keep/lose choice
//! made by masks, so it has no branch or memory index that depends on the point or payload.
//!
//! # The audit (verifiable DPF, de Castro-Polychroniadou 2022)
//!
//! A write key carries a proof correction word `cs` (256 bits). At leaf `x`, a party with leaf
//! node `v` (seed and control bit) computes `pi = (H_proof_lo(u), H_proof_hi(u))` with
//! `u = v ^ salt ^ (x << 64)`, and `pi~ = pi ^ t * cs`. Generation sets `cs = pi_A ^ pi_B` at
//! the point, so for an honest pair `pi~_A = pi~_B` at every leaf: off the point the nodes are
//! equal, on it the correction makes them equal.
//!
//! Each server then reduces its proofs to `P = XOR_x F_c(x, pi~^x)`, where
//! `F_c(x, lo, hi) = AES_c(AES_c(AES_c(x) ^ lo) ^ hi)` is a three-block CBC-MAC (a PRF on
//! fixed-length inputs) under AES with key `c`, the challenge the servers draw together after
//! every key of the round is fixed, and outputs
//! `SHA-256("mpm-dpf/v1/audit" || P || public_hash(ctx))`. `public_hash` covers every public
//! field of the half (version, domain, slot length, salt, every correction word and control
//! correction, the output correction words, `cs`) and the caller's context, length-prefixed.
//!
//! Soundness, informally: equal audit values imply, except with negligible probability,
//! (1) equal public parts and contexts (SHA-256 collision resistance), so both halves use the
//! same correction words; and (2) `pi~_A^x = pi~_B^x` at every leaf `x`. For (2): the MAC input
//! includes the leaf index, so the inputs `(x, pi~_A^x)` and `(x, pi~_B^x)` of a leaf where
//! the proofs differ appear nowhere else in either sum; the client fixed its keys before `c`
//! existed, so `P_A ^ P_B` is then a XOR of PRF outputs on distinct inputs, zero with
//! probability about `2^-128`. (An earlier version MACed only the proof and let a client swap
//! equal proofs between two leaves; `write::tests::the_leaf_swap_forgery_is_rejected` keeps
//! that forgery out.) From (2), at most one leaf has `v_A != v_B`: where the nodes differ with
//! equal control bits the proofs differ unless `H_proof` collides; where the control bits
//! differ, the proofs agree only if `H_proof(u_A) ^ H_proof(u_B) = cs`, a 256-bit condition on
//! hash outputs at that leaf, which a client cannot meet at two leaves without a
//! generalised-birthday search over 256-bit outputs (about `2^85` work; plausible, not proven
//! here). Since a leaf's output is a function of its node and the shared correction words,
//! leaves with equal nodes have equal output shares: the pair XORs to zero on every slot but at
//! most one. The node hashed includes the control bit, so a leaf whose seeds agree but whose
//! control bits differ (which would apply the output correction to one side only) is caught
//! too.
//!
//! The audit adds two hash and two MAC blocks per leaf and key, plus one `AES_c(x)` per leaf
//! shared by all keys, to the `slot_len / 16` payload blocks and about two tree blocks: for
//! 256-byte slots about 22% more AES work.
//!
//! # Speed
//!
//! The hash runs on a hand-written VAES + AVX-512 kernel (16 blocks in flight) where the CPU has
//! it, else through the `aes` crate (AES-NI or constant-time software). Trees are expanded level
//! by level over chunks of leaves, so every hash call has hundreds of blocks in flight and the
//! working set stays in cache. `pir_answer` expands a batch of keys' selection bits once, then
//! keeps six keys' accumulators (four 64-byte stripes each) in AVX-512 registers while an
//! L2-sized chunk of rows streams past. `cargo run --release -p dpf --example compare` prints ours, a
//! published DPF (`fss-rs`) and the AES and memory floors side by side; `cargo bench -p dpf`
//! runs the criterion benchmarks. Every kernel has a portable twin and a test that both agree.
//!
//! # Constant time
//!
//! Generation and evaluation have no branch and no memory index that depends on a seed, a
//! control bit, the point or the payload: selections are masks, and the kernels read and
//! write every row or slot in order whatever the keys (the PIR kernel selects rows with
//! AVX-512 write masks or byte masks, never a branch). The only data-dependent loop bounds are
//! public (domain size, slot length, ranges). Secret seeds are wiped when keys and buffers are
//! dropped or reallocated; key equality is constant-time. `encode` returns a plain `Vec` holding
//! the root seed: callers that keep it should wipe it.
//!
//! How this was checked: by reading the code and the generated assembly of the hot kernels
//! (`perf annotate` of `rows_512_block`, `payload_xor_vaes512`, `mmo_vaes512`: the only
//! conditional branches are loop counters over public lengths; selections are `vpxorq` under a
//! write mask or `vpternlogq` with a mask register), not with a statistical timing tool.

mod codec;
mod prg;
mod read;
mod rng;
mod simd;
mod tree;
mod write;

pub use codec::VERSION;
pub use read::{LEAF_BITS, ReadKey, pir_answer};
pub use rng::{OsRandom, RandomSource, SeededRandom};
pub use write::{WriteKey, write_accumulate, write_accumulate_audited, write_audit};

/// The fixed-key hash alone over `blocks`, in place: the AES floor that benchmarks compare the
/// DPF against (every DPF evaluation is at least this many hash blocks). Not for other uses.
#[doc(hidden)]
pub fn floor_hash(blocks: &mut [u128]) {
    prg::Hash::get(prg::Domain::Payload).hash_in_place(blocks);
}

/// Largest supported `log2` of the domain size.
pub const MAX_DOMAIN_BITS: u32 = 48;
/// Largest supported write slot, in bytes.
pub const MAX_SLOT_LEN: usize = 1 << 20;

/// Which of the two servers evaluates a key. Comes from the server's configured role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Party {
    /// The first server (control bit 0 at the root).
    A,
    /// The second server (control bit 1 at the root).
    B,
}

impl Party {
    pub(crate) fn bit(self) -> u128 {
        match self {
            Party::A => 0,
            Party::B => 1,
        }
    }
}

/// The servers' joint random challenge for the audit, used as an AES-128 key. It must be
/// unpredictable to clients until every key of the round is fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditChallenge(pub [u8; 16]);

/// Invalid arguments to key generation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The domain size is out of range.
    #[error("domain of 2^{0} points is not supported (1 to {MAX_DOMAIN_BITS} bits)")]
    DomainBits(u32),
    /// The point is not in the domain.
    #[error("point {alpha} is outside the domain of 2^{domain_bits} points")]
    PointOutOfRange {
        /// The point.
        alpha: u64,
        /// `log2` of the domain size.
        domain_bits: u32,
    },
    /// The slot length is not a positive multiple of 16 up to [`MAX_SLOT_LEN`].
    #[error("slot length {0} is not a positive multiple of 16 up to {MAX_SLOT_LEN}")]
    SlotLen(usize),
    /// The payload does not fill the slot exactly.
    #[error("payload is {got} bytes but a slot is {want}")]
    PayloadLen {
        /// Payload length.
        got: usize,
        /// Slot length.
        want: usize,
    },
}

/// Why bytes are not a valid key encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Unknown format version.
    #[error("unknown key format version {0}")]
    Version(u8),
    /// A read key where a write key was expected, or the reverse.
    #[error("wrong key kind {0}")]
    Kind(u8),
    /// The key is for a different domain size (or the expected one is unsupported).
    #[error("key is for a domain of 2^{got} points, expected 2^{want}")]
    Domain {
        /// Domain bits in the key.
        got: u32,
        /// Domain bits expected.
        want: u32,
    },
    /// The key is for a different slot length (or the expected one is unsupported).
    #[error("key is for {got}-byte slots, expected {want}")]
    SlotLen {
        /// Slot length in the key.
        got: usize,
        /// Slot length expected.
        want: usize,
    },
    /// Wrong total length.
    #[error("key is {got} bytes, expected {want}")]
    Length {
        /// Bytes given.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The input ended inside the header.
    #[error("key is truncated")]
    Truncated,
    /// Bytes after the end of the key.
    #[error("{0} trailing bytes after the key")]
    TrailingBytes(usize),
    /// A field has a value no encoder produces.
    #[error("non-canonical key: {0}")]
    NonCanonical(&'static str),
}

pub(crate) fn check_domain(domain_bits: u32) -> Result<(), Error> {
    if (1..=MAX_DOMAIN_BITS).contains(&domain_bits) {
        Ok(())
    } else {
        Err(Error::DomainBits(domain_bits))
    }
}
