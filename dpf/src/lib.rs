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
//! (left, right, read-leaf conversion, payload) has its own fixed key
//! `SHA-256("mpm-dpf/v1/prg/" || name)[..16]`, and every key has a public random 128-bit salt
//! XORed into every input for multi-instance security. Party A's root has `t = 0`, B's
//! `t = 1`. Key generation is the BGI construction over the XOR group with the keep/lose choice
//! made by masks, so it has no branch or memory index that depends on the point or payload.
//!
//! # The audit (verifiable DPF, after de Castro-Polychroniadou 2022)
//!
//! A write key (format version 2) carries a proof correction word `cs` of 512 bits. At leaf
//! `x` a party with leaf node `v` (seed and control bit) computes the leaf proof
//!
//! `pi(x, v) = (DM_{x,0}(w), DM_{x,1}(w), DM_{x,2}(w), DM_{x,3}(w))`, with `w = v ^ salt` and
//! `DM_{x,j}(w) = AES_{K(x,j)}(w) ^ w`,
//!
//! a Davies-Meyer hash under a key of its own for every leaf and block,
//! `K(x, j) = AES_kd((j << 64) | x)` with the public fixed key
//! `kd = SHA-256("mpm-dpf/v2/proof-key")[..16]`. `AES_kd` is a public permutation, so distinct
//! `(x, j)` get distinct keys: the leaf enters the proof through the key and the node through
//! the input, injectively (version 1 XORed the leaf index into the node, which let one
//! correction word satisfy two leaves; `attacks::sibling_forgery` rebuilds that forgery and
//! the tests check it is refused). The corrected proof is `pi~ = pi ^ t * cs`; generation sets
//! `cs = pi(alpha, v_A) ^ pi(alpha, v_B)`, so for an honest pair `pi~_A = pi~_B` at every leaf.
//!
//! Each server reduces its proofs under the challenge `c` (an AES key the servers draw
//! together, unknown to every client while it builds its keys) to
//! `P = XOR over x and j of kappa(x, j) * pi~_j(x)`, where `kappa(x, j) = AES_c((j << 64) | x)`
//! and `*` is the carry-less product of two 128-bit polynomials over GF(2), kept whole (255
//! bits, so no modulus is involved). It outputs
//! `SHA-256("mpm-dpf/v2/audit" || P || public_hash(ctx))`, where `public_hash` covers every
//! public field of the half (version, domain, slot length, salt, every correction word and
//! control correction, the output correction words, `cs`) and the caller's context,
//! length-prefixed. The sum decomposes over any split of the domain into ranges, so workers
//! that each evaluate a subtree can add their parts.
//!
//! ## Soundness against adversarial halves
//!
//! The client chooses both halves entirely: related or equal roots, the salt, every correction
//! word. Claim: if the two audit values are equal, the two output shares differ in at most one
//! slot, except with probability at most
//!
//! `Adv_coll(SHA-256) + Adv_prp(AES) + 1 / (2^128 - 2^(n+2)) + 4 q^4 / 2^512`
//!
//! per write, for a client that made `q < 2^126` evaluations of the proof hash (`n` is the
//! domain's bit count; `W` forged writes succeed with at most `W` times this). The last term
//! models AES under the public, structured leaf keys as an ideal cipher, a stronger assumption
//! than the PRP security the other terms use. For `q = 2^100` the last term is `2^-110`; it
//! reaches 1 only near `q = 2^127`: 128-bit security against any offline search, generalised
//! birthday (Wagner) included.
//!
//! The claim needs `c` to be independent of everything the client knows when it fixes its
//! keys. That is a real requirement, not a formality: `cs` enters `P` linearly, so a client
//! that knows `c` can take any two-slot pair and solve `XOR_j K_j * cs_j = T` (255 equations
//! over GF(2) in 512 unknowns) for a `cs` that passes. The servers derive `c` from nonces
//! that only they hold and never send to clients (`docs/protocol.md`, "Early challenge"); a
//! server that leaked them could as well corrupt its share of the array, which the published
//! array hashes catch.
//!
//! 1. *Public parts.* Equal SHA-256 outputs mean equal `P` and equal `public_hash` (else a
//!    collision), hence equal contexts and equal public fields: the halves differ in their
//!    roots only, and share every correction word, `cw_out` and `cs`.
//! 2. *Every leaf's proofs agree.* Let `d(x) = pi~_A(x) ^ pi~_B(x)`. By bilinearity
//!    `P_A ^ P_B = XOR kappa(x, j) * d_j(x)`, and `d` is fixed independently of `c`. Replace
//!    `AES_c` by a random permutation (`Adv_prp`). If some `d_j(x) != 0`, then given every other
//!    coefficient, `kappa(x, j)` is uniform over at least `2^128 - 2^(n+2)` values, and
//!    `k -> k * d_j(x)` is injective (`GF(2)[X]` has no zero divisors), so the sum is zero with
//!    probability at most `1 / (2^128 - 2^(n+2))`. So equal audits mean `d(x) = 0` everywhere.
//! 3. *At most one leaf differs.* Take a leaf where `v_A != v_B` (so `w_A != w_B`). If the
//!    control bits are equal, `d(x) = 0` is `pi(x, v_A) = pi(x, v_B)`: a Davies-Meyer collision
//!    under all four keys of leaf `x` at once. If they differ, it is
//!    `pi(x, v_A) ^ pi(x, v_B) = cs`. Two leaves `x1 != x2` of the second kind need
//!    `pi(x1, a1) ^ pi(x1, b1) ^ pi(x2, a2) ^ pi(x2, b2) = 0` on four distinct
//!    (key, input) pairs (different leaves use different keys), and one leaf of each kind needs
//!    a collision. In the ideal-cipher model the last of the four (or two) queries of any such
//!    tuple answers uniformly in four independent permutations, so one tuple succeeds with
//!    probability at most `(2^128 - q)^-4 < (4/3)^4 / 2^512` for `q < 2^126`; a union bound
//!    over at most `q^4` tuples gives the last term. Whatever the tree, the salt or the roots, no search cheaper than that finds
//!    two differing leaves, and the bound does not depend on how many proofs a client
//!    precomputes across rounds.
//! 4. *Outputs.* A leaf's output share is a function of its node and the shared `cw_out`, so
//!    leaves with equal nodes (control bit included) have equal shares: the pair writes at most
//!    one slot. (Neither the control bit nor the seed can differ alone, since `v` includes
//!    both.)
//!
//! The best attack we know is far below that bound: the tree lets a client pick a parent whose
//! two children are both "control bits differ" leaves, and a collision between one list per
//! party (`f(r_A) = g(r_B, cw)`) gives a two-slot pair in about `2^256` evaluations.
//! `write::forgery_tests::the_distinct_halves_birthday_attack_costs_what_the_argument_says` runs it at
//! reduced widths (16 to 32 bits) and measures 4 to 10 times `2^(w/2)` evaluations. Identical
//! halves (the version 1 forgery) give a server nothing to check beyond this argument; servers
//! still refuse a write whose two halves hash the same, as a cheap second line.
//! An adversarial review of this construction and what it tried is in
//! `docs/audit-review.md`.
//!
//! The audit adds, per leaf and key, four Davies-Meyer blocks under the leaf's keys and four
//! carry-less products (on a different execution port from the AES rounds); per leaf and run of
//! leaves, shared by every key of a batch, four key derivations, four key schedules and four
//! coefficient blocks. At 1 KiB slots that is about a fifth more than the plain write; at
//! 256-byte slots about two thirds (the compare example prints both).
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

#[doc(hidden)]
pub mod attacks;
mod codec;
mod prg;
mod proof;
mod read;
mod rng;
mod simd;
mod tree;
mod write;

pub use codec::{READ_VERSION, WRITE_VERSION};
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
