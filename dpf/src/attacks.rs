//! Known attacks on the write audit, as key pairs that the tests of every layer (this crate, the
//! servers, the end-to-end suite) hand to the audit to check that they are refused. Not part of
//! the API: nothing here is useful except as a forgery that must fail.

use crate::prg::{Domain, Hash};
use crate::proof::leaf_proof;
use crate::rng::RandomSource;
use crate::tree::Tree;
use crate::{Error, WriteKey, check_domain};

fn h(d: Domain, x: u128) -> u128 {
    let mut out = [0u128];
    Hash::get(d).hash(&[x], &mut out);
    out[0]
}

/// The two-slot forgery of the version 1 audit (a key pair that passed it under every
/// challenge while writing slots `2p` and `2p + 1`), rebuilt against this crate's audit:
///
/// 1. both halves get the same root seed, so party A's root is `r` and B's `r | 1`: equal
///    seeds, different control bits;
/// 2. levels `0..n - 1` follow the bits of `p` with correction words whose seed part is zero,
///    which keeps "equal seeds, different control bits" on the path and makes every other node
///    equal on both sides;
/// 3. the last level's correction word is `c = L(s) ^ R(s) ^ (1 << 64)` (retried until its low
///    bit is 1), so one party's leaves are `L(s), R(s)` and the other's `R(s) ^ (1 << 64),
///    L(s) ^ (1 << 64)`: under version 1 the proof inputs `v ^ salt ^ (x << 64)` of the two
///    leaves were swapped between the parties and one proof correction fixed both;
/// 4. `cw_out` puts `payload` into slot `2p`.
///
/// Under the version 2 proofs the leaf enters the hash through its own key, so a proof
/// correction can make the corrected proofs agree at one of the two leaves only: `fix` picks
/// which (`0` for `2p`, `1` for `2p + 1`), and `2` takes the XOR of both corrections. With
/// `distinct_roots`, party B's root seed is changed afterwards (so that the two halves differ
/// and a server's "identical halves" check does not apply; the pair is then simply malformed).
pub fn sibling_forgery(
    domain_bits: u32,
    slot_len: usize,
    p: u64,
    payload: &[u8],
    fix: u8,
    distinct_roots: bool,
    rng: &mut impl RandomSource,
) -> Result<(WriteKey, WriteKey), Error> {
    check_domain(domain_bits)?;
    let n = domain_bits;
    if p >> (n - 1) != 0 {
        return Err(Error::PointOutOfRange {
            alpha: 2 * p,
            domain_bits,
        });
    }
    if payload.len() != slot_len || slot_len == 0 || !slot_len.is_multiple_of(16) {
        return Err(Error::PayloadLen {
            got: payload.len(),
            want: slot_len,
        });
    }
    loop {
        let salt = rng.u128();
        let r = rng.u128() & !1;
        let mut v = [r, r | 1];
        let mut cw = Vec::new();
        let mut t_right = Vec::new();
        for level in 0..n - 1 {
            let bit = (p >> (n - 2 - level)) & 1;
            let (c, tr) = if bit == 0 { (1u128, 0u8) } else { (0, 1) };
            let cwr = (c & !1) | u128::from(tr);
            for x in &mut v {
                let s = (*x & !1) ^ salt;
                let t = *x & 1;
                *x = if bit == 0 {
                    h(Domain::Left, s) ^ (t * c)
                } else {
                    h(Domain::Right, s) ^ (t * cwr)
                };
            }
            cw.push(c);
            t_right.push(tr);
        }
        debug_assert_eq!(v[0] & !1, v[1] & !1);
        let s = (v[0] & !1) ^ salt;
        let (l, rr) = (h(Domain::Left, s), h(Domain::Right, s));
        let c = l ^ rr ^ (1u128 << 64);
        if c & 1 == 0 {
            continue;
        }
        cw.push(c);
        t_right.push(1);
        // Leaves 2p and 2p + 1 of each party.
        let leaves = v.map(|x| {
            let t = x & 1;
            [l ^ (t * c), rr ^ (t * c)]
        });
        let blocks = slot_len / 16;
        let conv = |x: u128| -> Vec<u128> {
            let mut b: Vec<u128> = (0..blocks as u128).map(|j| ((x & !1) ^ salt) ^ j).collect();
            Hash::get(Domain::Payload).hash_in_place(&mut b);
            b
        };
        let (ga, gb) = (conv(leaves[0][0]), conv(leaves[1][0]));
        let cw_out: Vec<u128> = payload
            .chunks_exact(16)
            .zip(ga.iter().zip(&gb))
            .map(|(m, (a, b))| {
                let mut x = [0u8; 16];
                x.copy_from_slice(m);
                u128::from_le_bytes(x) ^ a ^ b
            })
            .collect();
        let correction = |i: usize| {
            let x = 2 * p + i as u64;
            let (pa, pb) = (
                leaf_proof(leaves[0][i], salt, x),
                leaf_proof(leaves[1][i], salt, x),
            );
            core::array::from_fn(|j| pa[j] ^ pb[j])
        };
        let cs: [u128; 4] = match fix {
            0 => correction(0),
            1 => correction(1),
            _ => {
                let (a, b) = (correction(0), correction(1));
                core::array::from_fn(|j| a[j] ^ b[j])
            }
        };
        let root_b = if distinct_roots {
            r ^ (rng.u128() & !1 | 2)
        } else {
            r
        };
        let key = |root: u128| {
            WriteKey::from_parts(
                n,
                Tree {
                    salt,
                    root,
                    cw: cw.clone(),
                    t_right: t_right.clone(),
                },
                cw_out.clone(),
                cs,
            )
        };
        return Ok((key(r), key(root_b)));
    }
}
