//! The write audit's leaf proofs and their reduction (see the crate docs, "The audit", for the
//! construction and its soundness argument).
//!
//! At leaf `x` a party with leaf node `v` (seed and control bit) computes the 512-bit proof
//! `pi(x, v) = (DM_{x,0}(w), .., DM_{x,3}(w))` with `w = v ^ salt` and the Davies-Meyer hash
//! `DM_{x,j}(w) = AES_{K(x,j)}(w) ^ w` under a key of its own for every leaf and block:
//! `K(x, j) = AES_kd((j << 64) | x)`, where `kd` is a public fixed key. `AES_kd` is used as a
//! public permutation, not as a hash: it makes distinct `(x, j)` get distinct keys, so the pair
//! `(x, v)` enters the proof injectively (never as a XOR of the two), and nothing secret passes
//! through it.
//!
//! The corrected proof `pi~ = pi ^ t * cs` is then reduced under the servers' challenge `c`:
//! `P = XOR over x and j of kappa(x, j) * pi~_j(x)`, where `*` is the carry-less product of two
//! 128-bit polynomials over GF(2) (kept whole, 255 bits, so no reduction modulus is needed) and
//! `kappa(x, j) = AES_c((j << 64) | x)`. The sum decomposes over any split of the domain into
//! ranges. The products run on `vpclmulqdq`, a different execution port from the AES rounds
//! of the proofs, so the reduction costs little next to them.
//!
//! The round keys depend only on the leaf and the coefficients only on the leaf and the
//! challenge, so [`AuditChunk`] computes both once per run of leaves and every key of a batch
//! reuses them.

use std::sync::OnceLock;

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes128Enc};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::prg::BATCH;
#[cfg(target_arch = "x86_64")]
use crate::simd;
use crate::tree::mask;

/// Blocks of 128 bits in a leaf proof: 512 bits (see the crate docs for why).
pub(crate) const PROOF_BLOCKS: usize = 4;

/// A reduced audit sum: a polynomial of degree below 256, as its low and high 128 bits.
pub(crate) type Sum = [u128; 2];

/// The public fixed key of the key-derivation permutation, and its VAES round keys.
struct KeyDerivation {
    cipher: Aes128,
    #[cfg(target_arch = "x86_64")]
    vaes: Option<simd::RoundKeys>,
}

fn key_derivation() -> &'static KeyDerivation {
    static KD: OnceLock<KeyDerivation> = OnceLock::new();
    KD.get_or_init(|| {
        let digest = Sha256::new()
            .chain_update(b"mpm-dpf/v2/proof-key")
            .finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        KeyDerivation {
            cipher: Aes128::new(&Array::from(key)),
            #[cfg(target_arch = "x86_64")]
            vaes: simd::expand_key(key),
        }
    })
}

/// The input block `(j << 64) | x` of leaf `x`'s block `j`, for `K(x, j)` and `kappa(x, j)`.
fn leaf_block(x: u64, j: usize) -> [u8; 16] {
    ((j as u128) << 64 | u128::from(x)).to_le_bytes()
}

/// `K(x, j)` for `j < PROOF_BLOCKS`, through the `aes` crate (constant time: `x` is secret
/// during key generation).
fn leaf_key_bytes(x: u64) -> [[u8; 16]; PROOF_BLOCKS] {
    let mut blocks: [Array<u8, _>; PROOF_BLOCKS] =
        core::array::from_fn(|j| Array::from(leaf_block(x, j)));
    key_derivation().cipher.encrypt_blocks(&mut blocks);
    blocks.map(|b| b.into())
}

fn enc(c: &Aes128Enc, x: u128) -> u128 {
    let mut b = Array::from(x.to_le_bytes());
    c.encrypt_block(&mut b);
    let out = u128::from_le_bytes(b.into());
    b.zeroize();
    out
}

/// The uncorrected proof of node `v` at leaf `x` (one leaf: key generation). Constant time in
/// `v` and `x`.
pub(crate) fn leaf_proof(v: u128, salt: u128, x: u64) -> [u128; PROOF_BLOCKS] {
    let w = v ^ salt;
    let mut keys = leaf_key_bytes(x);
    let out = core::array::from_fn(|j| {
        let c = Aes128Enc::new(&Array::from(keys[j]));
        enc(&c, w) ^ w
    });
    keys.zeroize();
    out
}

/// Where leaf `i`'s block `j` sits in a run's coefficient table: groups of four leaves, each
/// block's four leaves together (the layout the vector kernels load).
pub(crate) fn coefficient_index(i: usize, j: usize) -> usize {
    (i / 4 * PROOF_BLOCKS + j) * 4 + i % 4
}

/// The carry-less product of two 128-bit polynomials, constant time (a bit at a time under
/// masks; the portable path only).
pub(crate) fn clmul(a: u128, b: u128) -> Sum {
    let mut lo = a & mask(b);
    let mut hi = 0u128;
    for i in 1..128 {
        let m = mask(b >> i);
        lo ^= (a << i) & m;
        hi ^= (a >> (128 - i)) & m;
    }
    [lo, hi]
}

/// The audit's key under the servers' joint challenge `c` (a fresh random AES key the client
/// does not know when it builds its keys).
pub(crate) struct Mac {
    cipher: Aes128,
}

impl Mac {
    pub(crate) fn new(key: [u8; 16]) -> Mac {
        Mac {
            cipher: Aes128::new(&Array::from(key)),
        }
    }

    /// `kappa(x, j)` for leaves `first..first + len` in the table layout
    /// ([`coefficient_index`]); the table is resized to whole groups of four leaves.
    fn coefficients(&self, first: u64, len: usize, out: &mut Vec<u128>) {
        let groups = len.div_ceil(4);
        out.resize(groups * 4 * PROOF_BLOCKS, 0);
        let mut buf = [[0u8; 16]; BATCH];
        for (c, oc) in out.chunks_mut(BATCH).enumerate() {
            let buf = &mut buf[..oc.len()];
            for (k, b) in buf.iter_mut().enumerate() {
                // Entry `e` of the table is leaf `4 (e / 16) + e % 4`, block `(e / 4) % 4`.
                let e = c * BATCH + k;
                let i = e / (4 * PROOF_BLOCKS) * 4 + e % 4;
                *b = leaf_block(first + i as u64, (e / 4) % PROOF_BLOCKS);
            }
            self.cipher
                .encrypt_blocks(Array::cast_slice_from_core_mut(buf));
            for (o, b) in oc.iter_mut().zip(buf.iter()) {
                *o = u128::from_le_bytes(*b);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn encrypt(&self, x: u128) -> u128 {
        let mut b = Array::from(x.to_le_bytes());
        self.cipher.encrypt_block(&mut b);
        u128::from_le_bytes(b.into())
    }
}

/// What the audit of a run of consecutive leaves needs, shared by every key evaluated over it:
/// the proofs' round keys and the reduction's coefficients.
#[derive(Default)]
pub(crate) struct AuditChunk {
    len: usize,
    coeffs: Vec<u128>,
    /// VAES layout (see `simd::leaf_round_keys`), when the CPU has the vector kernels.
    #[cfg(target_arch = "x86_64")]
    table: Vec<u128>,
    /// Otherwise one cipher per leaf and block, `[i * PROOF_BLOCKS + j]`.
    ciphers: Vec<Aes128Enc>,
}

impl AuditChunk {
    /// Prepares leaves `first..first + len` under `mac`.
    pub(crate) fn fill(&mut self, mac: &Mac, first: u64, len: usize) {
        self.len = len;
        mac.coefficients(first, len, &mut self.coeffs);
        #[cfg(target_arch = "x86_64")]
        if let Some(kd) = &key_derivation().vaes {
            self.ciphers.clear();
            self.table.resize(simd::leaf_table_len(len), 0);
            simd::leaf_round_keys(kd, first, &mut self.table);
            return;
        }
        self.fill_portable(first, len);
    }

    /// The round keys through the `aes` crate only.
    fn fill_portable(&mut self, first: u64, len: usize) {
        #[cfg(target_arch = "x86_64")]
        self.table.clear();
        self.ciphers.clear();
        for x in first..first + len as u64 {
            for k in leaf_key_bytes(x) {
                self.ciphers.push(Aes128Enc::new(&Array::from(k)));
            }
        }
    }

    /// One key's reduced audit sum over these leaves: XOR over leaf `first + i` and block `j`
    /// of `kappa(x, j) * pi~_j(x, nodes[i])`. `nodes` may cover a prefix of the leaves (a key
    /// whose domain ends inside the run).
    pub(crate) fn sum(&self, nodes: &[u128], salt: u128, cs: &[u128; PROOF_BLOCKS]) -> Sum {
        assert!(nodes.len() <= self.len);
        #[cfg(target_arch = "x86_64")]
        if !self.table.is_empty() {
            return simd::proof_sum(&self.table, &self.coeffs, nodes, salt, cs);
        }
        self.sum_portable(nodes, salt, cs)
    }

    fn sum_portable(&self, nodes: &[u128], salt: u128, cs: &[u128; PROOF_BLOCKS]) -> Sum {
        assert_eq!(
            self.ciphers.len(),
            self.len * PROOF_BLOCKS,
            "portable leaf keys"
        );
        let mut acc = [0u128; 2];
        for (i, (v, keys)) in nodes
            .iter()
            .zip(self.ciphers.chunks_exact(PROOF_BLOCKS))
            .enumerate()
        {
            let w = v ^ salt;
            let m = mask(*v);
            for (j, (k, c)) in keys.iter().zip(cs).enumerate() {
                let p = enc(k, w) ^ w ^ (m & c);
                let [lo, hi] = clmul(p, self.coeffs[coefficient_index(i, j)]);
                acc[0] ^= lo;
                acc[1] ^= hi;
            }
        }
        acc
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The sum (under challenge `[0x5c; 16]`) of the widest kernel, of the 256-bit kernel where
    /// the CPU has it, and of the portable code, for the same leaves and nodes.
    fn sums(first: u64, nodes: &[u128], salt: u128, cs: &[u128; 4]) -> Vec<Sum> {
        let mac = Mac::new([0x5c; 16]);
        let mut out = Vec::new();
        let fast = || {
            let mut k = AuditChunk::default();
            k.fill(&mac, first, nodes.len() + 3);
            k.sum(nodes, salt, cs)
        };
        out.push(fast());
        #[cfg(target_arch = "x86_64")]
        if simd::has_vaes256() {
            out.push(simd::with_256_bit_kernels(fast));
        }
        let mut k = AuditChunk::default();
        k.fill(&mac, first, nodes.len() + 3);
        k.fill_portable(first, nodes.len() + 3);
        out.push(k.sum(nodes, salt, cs));
        out
    }

    #[test]
    fn every_kernel_gives_the_portable_sum() {
        for len in [0usize, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 33, 64, 100] {
            for first in [0u64, 1, 6, (1 << 40) + 3] {
                let nodes: Vec<u128> = (0..len as u128)
                    .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834) ^ (i << 90))
                    .collect();
                let cs = [1, 2 << 70, 3 << 100, u128::MAX];
                let s = sums(first, &nodes, 0x77 << 64, &cs);
                assert!(
                    s.windows(2).all(|w| w[0] == w[1]),
                    "len {len} first {first}: {s:x?}"
                );
            }
        }
    }

    #[test]
    fn the_sum_follows_the_definition() {
        // One leaf and block at a time with `leaf_proof` and `clmul`, against the batched sum.
        let mac = Mac::new([0x5c; 16]);
        let salt = 0xabcd << 40;
        let cs = [5, 6, 7, 8];
        let first = 1000u64;
        let nodes: Vec<u128> = (0..9u128)
            .map(|i| (i * 0x1234_5678) << 33 | (i & 1))
            .collect();
        let mut want = [0u128; 2];
        for (i, v) in nodes.iter().enumerate() {
            let x = first + i as u64;
            let pi = leaf_proof(*v, salt, x);
            for j in 0..PROOF_BLOCKS {
                let kappa = mac.encrypt(u128::from_le_bytes(leaf_block(x, j)));
                let [lo, hi] = clmul(kappa, pi[j] ^ (mask(*v) & cs[j]));
                want[0] ^= lo;
                want[1] ^= hi;
            }
        }
        for got in sums(first, &nodes, salt, &cs) {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn clmul_is_the_carry_less_product() {
        assert_eq!(clmul(0, u128::MAX), [0, 0]);
        assert_eq!(clmul(1, 0xdead), [0xdead, 0]);
        assert_eq!(clmul(3, 3), [5, 0]);
        assert_eq!(clmul(1 << 127, 1 << 127), [0, 1 << 126]);
        assert_eq!(clmul(u128::MAX, 2), [u128::MAX << 1, 1]);
        // Commutative, and distributes over XOR.
        let (a, b, c) = (0x1234_5678_9abc_def0_1122u128 << 40, u128::MAX / 7, 0xf00d);
        assert_eq!(clmul(a, b), clmul(b, a));
        let [l1, h1] = clmul(a, b ^ c);
        let ([l2, h2], [l3, h3]) = (clmul(a, b), clmul(a, c));
        assert_eq!([l1, h1], [l2 ^ l3, h2 ^ h3]);
    }

    #[test]
    fn leaf_keys_differ_for_every_leaf_and_block() {
        let mut seen = std::collections::HashSet::new();
        for x in 0..512u64 {
            for k in leaf_key_bytes(x) {
                assert!(seen.insert(k), "leaf {x}: a key repeats");
            }
        }
    }
}
