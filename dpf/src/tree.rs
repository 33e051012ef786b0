//! The BGI tree shared by read and write keys: correction words, generation and level-by-level
//! expansion of any range of leaves.
//!
//! A node is one `u128`: bit 0 is the control bit `t`, bits 1..128 the seed. Expanding a node
//! `v` hashes `(v & !1) ^ salt` under the left and right domains and, when `t = 1`, XORs the
//! level's correction word into both children (`cw` for the left child, `cw` with its low bit
//! replaced by `t_right` for the right one). Everything is branch-free on seeds and control
//! bits; the only data-dependent choices are on public range bounds.

use zeroize::Zeroize;

use crate::prg::{Domain, Hash};
use crate::rng::RandomSource;

/// All ones if the low bit of `bit` is set, else zero.
#[inline(always)]
pub(crate) fn mask(bit: u128) -> u128 {
    0u128.wrapping_sub(bit & 1)
}

/// `if bit { a } else { b }` without a branch.
#[inline(always)]
pub(crate) fn select(bit: u128, a: u128, b: u128) -> u128 {
    let m = mask(bit);
    (a & m) | (b & !m)
}

/// The tree part of a key.
#[derive(Clone)]
pub(crate) struct Tree {
    /// Public per-key salt XORed into every hash input.
    pub salt: u128,
    /// This party's root seed, low bit clear (secret).
    pub root: u128,
    /// Per level: the seed correction word with the left control correction in bit 0.
    pub cw: Vec<u128>,
    /// Per level: the right control correction, 0 or 1.
    pub t_right: Vec<u8>,
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.root.zeroize();
    }
}

/// Output of [`generate`]: the two trees and the two parties' nodes at the end of the path.
pub(crate) struct Generated {
    pub trees: [Tree; 2],
    pub ends: [u128; 2],
}

impl Drop for Generated {
    fn drop(&mut self) {
        self.ends.zeroize();
    }
}

/// Builds a pair of trees of `depth` levels whose paths agree everywhere except along `path`
/// (the `depth` low bits of `path`, most significant first). At the end of the path the two
/// nodes differ in seed and their control bits XOR to 1; everywhere else they are equal.
pub(crate) fn generate(depth: u32, path: u64, rng: &mut impl RandomSource) -> Generated {
    let salt = rng.u128();
    let mut roots = [rng.u128() & !1, rng.u128() & !1];
    let mut v = [roots[0], roots[1] | 1];
    let (left, right) = (Hash::get(Domain::Left), Hash::get(Domain::Right));
    let mut cw = Vec::with_capacity(depth as usize);
    let mut t_right = Vec::with_capacity(depth as usize);
    for level in 0..depth {
        let a = u128::from((path >> (depth - 1 - level)) & 1);
        let mut inp = [(v[0] & !1) ^ salt, (v[1] & !1) ^ salt];
        let (mut l, mut r) = ([0u128; 2], [0u128; 2]);
        left.hash(&inp, &mut l);
        right.hash(&inp, &mut r);
        // Keep the child on the path, correct the other one to equality.
        let mut lose = [select(a, l[0], r[0]), select(a, l[1], r[1])];
        let scw = (lose[0] ^ lose[1]) & !1;
        let tl = (l[0] ^ l[1] ^ a ^ 1) & 1;
        let tr = (r[0] ^ r[1] ^ a) & 1;
        let cw_keep = select(a, scw | tr, scw | tl);
        for p in 0..2 {
            let keep = select(a, r[p], l[p]);
            v[p] = keep ^ (mask(v[p]) & cw_keep);
        }
        inp.zeroize();
        lose.zeroize();
        l.zeroize();
        r.zeroize();
        cw.push(scw | tl);
        t_right.push(tr as u8);
    }
    let trees = [0, 1].map(|p| Tree {
        salt,
        root: roots[p],
        cw: cw.clone(),
        t_right: t_right.clone(),
    });
    roots.zeroize();
    Generated { trees, ends: v }
}

/// Reusable buffers for expansion, wiped when dropped (they hold seeds).
#[derive(Default)]
pub(crate) struct Scratch {
    pub nodes: Vec<u128>,
    next: Vec<u128>,
    l: Vec<u128>,
    r: Vec<u128>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.nodes.zeroize();
        self.next.zeroize();
        self.l.zeroize();
        self.r.zeroize();
    }
}

/// Resizes `v` to `n` elements; when that needs a new allocation, the old one is wiped first
/// (a plain `resize` would free it with seeds still in it).
pub(crate) fn grow(v: &mut Vec<u128>, n: usize) {
    if v.capacity() < n {
        let mut new = Vec::with_capacity(n.max(2 * v.capacity()));
        new.extend_from_slice(v);
        v.zeroize();
        *v = new;
    }
    v.resize(n, 0);
}

impl Tree {
    pub(crate) fn depth(&self) -> u32 {
        self.cw.len() as u32
    }

    /// Leaves to `scratch.nodes`: the nodes of leaves `lo..hi` (`lo < hi <= 2^depth`) for the
    /// party whose control bit at the root is `party`. Works level by level so every hash call
    /// has a whole level's worth of blocks in flight.
    pub(crate) fn expand(&self, party: u128, lo: u64, hi: u64, s: &mut Scratch) {
        assert!(
            lo < hi && hi <= 1u64 << self.depth(),
            "leaf range {lo}..{hi} outside the tree"
        );
        let d = self.depth();
        let salt = self.salt;
        s.nodes.clear();
        grow(&mut s.nodes, 1);
        s.nodes[0] = self.root | (party & 1);
        let (left, right) = (Hash::get(Domain::Left), Hash::get(Domain::Right));
        // `s.nodes` holds the nodes `start..start + len` of the current level.
        let mut start = 0u64;
        for level in 0..d {
            let shift = d - level - 1;
            let (cs, ce) = (lo >> shift, (hi - 1) >> shift);
            let n = s.nodes.len();
            grow(&mut s.l, n);
            grow(&mut s.r, n);
            left.hash_map(&s.nodes, |v| (v & !1) ^ salt, &mut s.l);
            right.hash_map(&s.nodes, |v| (v & !1) ^ salt, &mut s.r);
            let cwl = self.cw[level as usize];
            let cwr = (cwl & !1) | u128::from(self.t_right[level as usize]);
            grow(&mut s.next, 2 * n);
            for (((c, v), l), r) in s.next.chunks_exact_mut(2).zip(&s.nodes).zip(&s.l).zip(&s.r) {
                let m = mask(*v);
                c[0] = l ^ (m & cwl);
                c[1] = r ^ (m & cwr);
            }
            // Children of the parents start.. are 2 start..; keep cs..=ce.
            let skip = (cs - 2 * start) as usize;
            let keep = (ce - cs + 1) as usize;
            if skip > 0 {
                s.next.copy_within(skip..skip + keep, 0);
            }
            s.next.truncate(keep);
            std::mem::swap(&mut s.nodes, &mut s.next);
            start = cs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRandom;

    #[test]
    fn paths_agree_off_the_point_and_differ_on_it() {
        let mut rng = SeededRandom::new([3; 32]);
        for depth in 0..=8u32 {
            for path in 0..(1u64 << depth) {
                let g = generate(depth, path, &mut rng);
                let mut sa = Scratch::default();
                let mut sb = Scratch::default();
                g.trees[0].expand(0, 0, 1 << depth, &mut sa);
                g.trees[1].expand(1, 0, 1 << depth, &mut sb);
                for x in 0..(1u64 << depth) {
                    let (a, b) = (sa.nodes[x as usize], sb.nodes[x as usize]);
                    if x == path {
                        assert_eq!((a ^ b) & 1, 1);
                        assert_ne!(a & !1, b & !1);
                        assert_eq!([a, b], g.ends);
                    } else {
                        assert_eq!(a, b);
                    }
                }
            }
        }
    }

    #[test]
    fn any_range_equals_the_slice_of_the_full_expansion() {
        let mut rng = SeededRandom::new([4; 32]);
        let g = generate(7, 77, &mut rng);
        let mut full = Scratch::default();
        g.trees[1].expand(1, 0, 128, &mut full);
        let mut s = Scratch::default();
        for lo in 0..128u64 {
            for hi in (lo + 1)..=128 {
                g.trees[1].expand(1, lo, hi, &mut s);
                assert_eq!(s.nodes[..], full.nodes[lo as usize..hi as usize]);
            }
        }
    }
}
