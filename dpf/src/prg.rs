//! The fixed-key pseudo-random generator: AES-128 under public fixed keys used as a
//! circular-correlation-robust hash in sigma-MMO form (Guo, Katz, Wang, Yu 2020):
//!
//! `H_d(x) = AES_{k_d}(sigma(x)) ^ sigma(x)`, with `sigma(hi || lo) = (hi ^ lo || hi)`.
//!
//! Every use has its own domain `d` and so its own key `k_d`, derived once from a label with
//! SHA-256, so a value hashed in one role never equals a value hashed in another. Callers XOR a
//! per-key public salt into every input (multi-instance security). Plain `AES_k(x)` is never
//! used as a hash.
//!
//! AES runs through the `aes` crate, which detects AES-NI, VAES-256 and AVX-512 VAES at run
//! time and falls back to a constant-time bitsliced software AES. Its VAES path works on groups
//! of 64 blocks, so every batch below is cut into chunks of [`BATCH`] blocks.

use std::sync::OnceLock;

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::simd;

/// Blocks per AES call: the `aes` crate's VAES backend processes 64 blocks at a time.
pub(crate) const BATCH: usize = 64;

/// The hash domains. Each has its own fixed key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Domain {
    /// Left child of a tree node.
    Left = 0,
    /// Right child of a tree node.
    Right = 1,
    /// Leaf conversion of a read key (128 output bits per leaf).
    Leaf = 2,
    /// Payload blocks of a write key.
    Payload = 3,
}

const DOMAIN_LABELS: [&str; 4] = ["left", "right", "leaf", "payload"];

/// sigma(hi || lo) = (hi ^ lo || hi): a linear orthomorphism.
#[inline(always)]
pub(crate) fn sigma(x: u128) -> u128 {
    x.rotate_left(64) ^ (x & (u128::from(u64::MAX) << 64))
}

/// One fixed-key hash.
pub(crate) struct Hash {
    cipher: Aes128,
    /// Round keys for the VAES kernel, when the CPU has it.
    #[cfg(target_arch = "x86_64")]
    vaes: Option<simd::RoundKeys>,
}

impl Hash {
    fn new(key: [u8; 16]) -> Hash {
        Hash {
            cipher: Aes128::new(&Array::from(key)),
            #[cfg(target_arch = "x86_64")]
            vaes: simd::expand_key(key),
        }
    }

    /// Returns the hash for `domain`, built on first use.
    pub(crate) fn get(domain: Domain) -> &'static Hash {
        static KEYS: OnceLock<[Hash; 4]> = OnceLock::new();
        let keys = KEYS.get_or_init(|| {
            core::array::from_fn(|i| {
                let digest = Sha256::new()
                    .chain_update(b"mpm-dpf/v1/prg/")
                    .chain_update(DOMAIN_LABELS[i].as_bytes())
                    .finalize();
                let mut key = [0u8; 16];
                key.copy_from_slice(&digest[..16]);
                Hash::new(key)
            })
        });
        &keys[domain as usize]
    }

    /// `out[i] = H(inp[i])` for every `i`.
    pub(crate) fn hash(&self, inp: &[u128], out: &mut [u128]) {
        self.hash_map(inp, |x| x, out)
    }

    /// `out[i] = H(f(inp[i]))` for every `i`: the input transform is fused into the batch.
    #[inline(always)]
    pub(crate) fn hash_map(&self, inp: &[u128], f: impl Fn(u128) -> u128, out: &mut [u128]) {
        debug_assert_eq!(inp.len(), out.len());
        #[cfg(target_arch = "x86_64")]
        if let Some(rk) = &self.vaes {
            for (o, x) in out.iter_mut().zip(inp) {
                *o = f(*x);
            }
            simd::mmo(rk, out);
            return;
        }
        self.hash_map_portable(inp, f, out)
    }

    /// [`Hash::hash_map`] through the `aes` crate only.
    pub(crate) fn hash_map_portable(
        &self,
        inp: &[u128],
        f: impl Fn(u128) -> u128,
        out: &mut [u128],
    ) {
        let mut buf = [[0u8; 16]; BATCH];
        for (ic, oc) in inp.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            let buf = &mut buf[..ic.len()];
            for ((b, x), o) in buf.iter_mut().zip(ic).zip(oc.iter_mut()) {
                let y = sigma(f(*x));
                *o = y;
                *b = y.to_le_bytes();
            }
            self.cipher
                .encrypt_blocks(Array::cast_slice_from_core_mut(buf));
            for (o, b) in oc.iter_mut().zip(buf.iter()) {
                *o ^= u128::from_le_bytes(*b);
            }
        }
        // The buffer held AES_k(sigma(seed ^ salt)) under a public key: invertible to seeds.
        buf.zeroize();
    }

    /// The fused payload kernel (see `simd::payload_xor`), when this CPU and slot size have it:
    /// `out[slot i] ^= H((v_i & !1) ^ salt ^ j) ^ (mask(v_i) & cw[j])`. Returns false (and does
    /// nothing) otherwise.
    pub(crate) fn payload_xor(
        &self,
        nodes: &[u128],
        salt: u128,
        cw: &[u128],
        out: &mut [u8],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some(rk) = &self.vaes {
            return simd::payload_xor(rk, nodes, salt, cw, out);
        }
        let _ = (nodes, salt, cw, out);
        false
    }

    /// In place: `x[i] = H(x[i])`.
    pub(crate) fn hash_in_place(&self, x: &mut [u128]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(rk) = &self.vaes {
            simd::mmo(rk, x);
            return;
        }
        let mut buf = [[0u8; 16]; BATCH];
        for c in x.chunks_mut(BATCH) {
            let buf = &mut buf[..c.len()];
            for (b, v) in buf.iter_mut().zip(c.iter_mut()) {
                *v = sigma(*v);
                *b = v.to_le_bytes();
            }
            self.cipher
                .encrypt_blocks(Array::cast_slice_from_core_mut(buf));
            for (v, b) in c.iter_mut().zip(buf.iter()) {
                *v ^= u128::from_le_bytes(*b);
            }
        }
        buf.zeroize();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn sigma_is_the_orthomorphism() {
        let x = (0x1111_2222_3333_4444u128 << 64) | 0xaaaa_bbbb_cccc_dddd;
        let hi = 0x1111_2222_3333_4444u128;
        let lo = 0xaaaa_bbbb_cccc_ddddu128;
        assert_eq!(sigma(x), ((hi ^ lo) << 64) | hi);
        // sigma(x) ^ x is also a permutation: check it is injective on a few values.
        let a = sigma(1) ^ 1;
        let b = sigma(2) ^ 2;
        assert_ne!(a, b);
    }

    #[test]
    fn batched_and_in_place_agree_with_one_block_at_a_time() {
        for domain in [Domain::Left, Domain::Right, Domain::Leaf, Domain::Payload] {
            let h = Hash::get(domain);
            let inp: Vec<u128> = (0..200u128)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect();
            let mut out = vec![0; inp.len()];
            h.hash(&inp, &mut out);
            let mut inplace = inp.clone();
            h.hash_in_place(&mut inplace);
            assert_eq!(out, inplace);
            for (x, y) in inp.iter().zip(&out) {
                let mut one = [0u128];
                h.hash(&[*x], &mut one);
                assert_eq!(one[0], *y);
            }
        }
    }

    /// Runs `check` on the widest kernels of this CPU, then, where the CPU has them, on the
    /// 256-bit kernels (which an AVX-512 CPU would otherwise never run).
    pub(crate) fn on_every_kernel_width(check: impl Fn()) {
        check();
        #[cfg(target_arch = "x86_64")]
        if simd::has_vaes256() {
            simd::with_256_bit_kernels(check);
        }
    }

    #[test]
    fn vaes_agrees_with_portable() {
        // On a CPU without VAES both sides are the portable path and this checks nothing new.
        on_every_kernel_width(vaes_agrees_with_portable_here);
    }

    fn vaes_agrees_with_portable_here() {
        for domain in [Domain::Left, Domain::Right, Domain::Payload] {
            let h = Hash::get(domain);
            for len in [0usize, 1, 3, 4, 5, 15, 16, 17, 63, 64, 65, 200] {
                let inp: Vec<u128> = (0..len as u128)
                    .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834) ^ (i << 100))
                    .collect();
                let mut fast = vec![0; len];
                let mut slow = vec![0; len];
                h.hash_map(&inp, |x| x ^ 1, &mut fast);
                h.hash_map_portable(&inp, |x| x ^ 1, &mut slow);
                assert_eq!(fast, slow, "len {len}");
                let mut inplace: Vec<u128> = inp.iter().map(|x| x ^ 1).collect();
                h.hash_in_place(&mut inplace);
                assert_eq!(inplace, slow);
            }
        }
    }

    /// Known answers for every domain (committed in `tests/vectors/prg.txt`); regenerate with
    /// `DPF_BLESS=1` only for an intentional change of the hash.
    #[test]
    fn known_answers() {
        let names = DOMAIN_LABELS;
        let domains = [Domain::Left, Domain::Right, Domain::Leaf, Domain::Payload];
        let inputs: [u128; 3] = [0, 1, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210];
        let mut out = String::new();
        for (name, d) in names.iter().zip(domains) {
            let mut h = inputs;
            Hash::get(d).hash_in_place(&mut h);
            for (x, y) in inputs.iter().zip(h) {
                out += &format!("{name} {x:032x} {y:032x}\n");
            }
        }
        // The write audit: leaf proofs, and one MAC sum over leaves 5..8.
        for (x, v) in [(0u64, 0u128), (1, 1), (0xfedc_ba98_7654, inputs[2])] {
            let p = crate::proof::leaf_proof(v, 0x42 << 64, x);
            let p: Vec<String> = p.iter().map(|b| format!("{b:032x}")).collect();
            out += &format!("proof {x:012x} {v:032x} {}\n", p.join(" "));
        }
        let mac = crate::proof::Mac::new([0x42; 16]);
        let mut chunk = crate::proof::AuditChunk::default();
        chunk.fill(&mac, 5, 3);
        let [lo, hi] = chunk.sum(&inputs, 9, &[7, 8, 9, 10]);
        out += &format!("audit sum {hi:032x}{lo:032x}\n");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/prg.txt");
        if std::env::var_os("DPF_BLESS").is_some() {
            std::fs::write(path, &out).expect("write vectors");
        }
        let want = std::fs::read_to_string(path).expect("vectors file");
        assert_eq!(out, want);
    }

    #[test]
    fn domains_differ() {
        let mut outs = Vec::new();
        for d in [Domain::Left, Domain::Right, Domain::Leaf, Domain::Payload] {
            let mut o = [0u128];
            Hash::get(d).hash(&[42], &mut o);
            outs.push(o[0]);
        }
        for i in 0..outs.len() {
            for j in i + 1..outs.len() {
                assert_ne!(outs[i], outs[j]);
            }
        }
    }
}
