//! Read keys: bit outputs with early termination, and the batched PIR kernel.

use zeroize::Zeroize;

use crate::codec::{self, KIND_READ, LEVEL_LEN, Reader};
use crate::prg::{Domain, Hash};
use crate::rng::RandomSource;
use crate::simd;
use crate::tree::{self, Scratch, Tree, mask};
use crate::{DecodeError, Error, Party, check_domain};

/// Points per leaf of a read key: each leaf yields one 128-bit block of output bits.
pub const LEAF_BITS: u32 = 7;

/// One party's half of a two-party DPF for the point function that is 1 at `alpha` and 0
/// elsewhere over `2^n` points (bit outputs, XOR-shared). Used to select a PIR row.
#[derive(Clone)]
pub struct ReadKey {
    domain_bits: u32,
    tree: Tree,
    cw_out: u128,
}

impl std::fmt::Debug for ReadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadKey")
            .field("domain_bits", &self.domain_bits)
            .finish_non_exhaustive()
    }
}

fn depth_of(domain_bits: u32) -> u32 {
    domain_bits.saturating_sub(LEAF_BITS)
}

impl ReadKey {
    /// Splits the point function `x == alpha` over `2^domain_bits` points into two keys, for
    /// parties A and B. Branch-free in `alpha`.
    pub fn r#gen(
        domain_bits: u32,
        alpha: u64,
        rng: &mut impl RandomSource,
    ) -> Result<(ReadKey, ReadKey), Error> {
        check_domain(domain_bits)?;
        if alpha >> domain_bits != 0 {
            return Err(Error::PointOutOfRange { alpha, domain_bits });
        }
        let depth = depth_of(domain_bits);
        let mut g = tree::generate(depth, alpha >> LEAF_BITS, rng);
        let leaf = Hash::get(Domain::Leaf);
        let mut conv = [
            (g.ends[0] & !1) ^ g.trees[0].salt,
            (g.ends[1] & !1) ^ g.trees[1].salt,
        ];
        leaf.hash_in_place(&mut conv);
        // e_{alpha mod 128}, built without a secret-dependent shift or index.
        let low = (alpha & 127) as u32;
        let mut e = 0u128;
        for j in 0..128u32 {
            e |= mask(u128::from(j == low)) & (1u128 << j);
        }
        let cw_out = conv[0] ^ conv[1] ^ e;
        conv.zeroize();
        let [ta, tb] = std::mem::replace(&mut g.trees, [empty(), empty()]);
        Ok((
            ReadKey {
                domain_bits,
                tree: ta,
                cw_out,
            },
            ReadKey {
                domain_bits,
                tree: tb,
                cw_out,
            },
        ))
    }

    /// The size of an encoded key over `2^domain_bits` points.
    pub fn encoded_len(domain_bits: u32) -> usize {
        3 + 32 + LEVEL_LEN * depth_of(domain_bits) as usize + 16
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::encoded_len(self.domain_bits));
        out.extend_from_slice(&[codec::VERSION, KIND_READ, self.domain_bits as u8]);
        codec::put_tree(&mut out, &self.tree);
        out.extend_from_slice(&self.cw_out.to_le_bytes());
        out
    }

    /// Decodes a key that must be over `2^domain_bits` points.
    pub fn decode(bytes: &[u8], domain_bits: u32) -> Result<ReadKey, DecodeError> {
        check_domain(domain_bits).map_err(|_| DecodeError::Domain {
            got: domain_bits,
            want: domain_bits,
        })?;
        let want = Self::encoded_len(domain_bits);
        let mut r = Reader::new(bytes);
        r.header(KIND_READ, domain_bits)?;
        if bytes.len() != want {
            return Err(DecodeError::Length {
                got: bytes.len(),
                want,
            });
        }
        let tree = r.tree(depth_of(domain_bits))?;
        let cw_out = r.block()?;
        r.finish()?;
        Ok(ReadKey {
            domain_bits,
            tree,
            cw_out,
        })
    }

    /// `log2` of the number of points.
    pub fn domain_bits(&self) -> u32 {
        self.domain_bits
    }

    /// Number of 128-bit output blocks (leaves).
    pub fn leaves(&self) -> u64 {
        1 << self.tree.depth()
    }

    /// Output blocks `lo..hi` for `party`: bit `j` of block `i` is the share of point
    /// `128 i + j`. Panics unless `lo < hi <= self.leaves()`.
    pub fn eval_blocks(&self, party: Party, lo: u64, hi: u64) -> Vec<u128> {
        assert!(
            lo < hi && hi <= self.leaves(),
            "block range {lo}..{hi} outside the key's {} leaves",
            self.leaves()
        );
        let mut s = Scratch::default();
        let mut out = Vec::new();
        self.blocks_into(party, lo, hi, &mut s, &mut out);
        out
    }

    /// The whole output: `2^n` bits in `ceil(2^n / 128)` blocks.
    pub fn eval_full(&self, party: Party) -> Vec<u128> {
        self.eval_blocks(party, 0, self.leaves())
    }

    /// This party's share of the output at point `x`. Panics unless `x < 2^n`.
    pub fn eval_point(&self, party: Party, x: u64) -> bool {
        assert!(
            x >> self.domain_bits == 0,
            "point {x} outside the domain of 2^{}",
            self.domain_bits
        );
        let b = self.eval_blocks(party, x >> LEAF_BITS, (x >> LEAF_BITS) + 1)[0];
        (b >> (x & 127)) & 1 == 1
    }

    fn blocks_into(&self, party: Party, lo: u64, hi: u64, s: &mut Scratch, out: &mut Vec<u128>) {
        self.tree.expand(party.bit(), lo, hi, s);
        out.clear();
        out.extend(s.nodes.iter().map(|v| (v & !1) ^ self.tree.salt));
        Hash::get(Domain::Leaf).hash_in_place(out);
        // Below 128 points the one leaf has bits past the domain: they are zero in every
        // honest pair; clear them so a crafted key cannot select rows outside its domain.
        let keep = if self.domain_bits < LEAF_BITS {
            (1u128 << (1u32 << self.domain_bits)) - 1
        } else {
            !0
        };
        for (o, v) in out.iter_mut().zip(&s.nodes) {
            *o = (*o ^ (mask(*v) & self.cw_out)) & keep;
        }
    }
}

fn empty() -> Tree {
    Tree {
        salt: 0,
        root: 0,
        cw: Vec::new(),
        t_right: Vec::new(),
    }
}

/// Rows per pass of [`pir_answer`]: selection bits for this many rows are computed per key,
/// then every row of the chunk is read once for all keys.
const PIR_CHUNK_ROWS: u64 = 1024;

/// Two-server PIR answer: for each key, the XOR of the rows of `db` (rows of `row_len` bytes)
/// that the key's output shares select. One pass over `db` serves all keys; the inner loop is
/// a mask-and-XOR, so the memory access pattern and instruction stream do not depend on the
/// keys. Rows beyond a key's domain are never selected.
pub fn pir_answer(db: &[u8], row_len: usize, keys: &[&ReadKey], party: Party) -> Vec<Vec<u8>> {
    let mut acc = vec![vec![0u8; row_len]; keys.len()];
    if row_len == 0 || keys.is_empty() {
        return acc;
    }
    let rows = (db.len() / row_len) as u64;
    let mut s = Scratch::default();
    let mut sel: Vec<Vec<u128>> = vec![Vec::new(); keys.len()];
    let mut masks: Vec<u8> = Vec::new();
    let stride = simd::mask_stride(keys.len());
    let mut r0 = 0u64;
    while r0 < rows {
        let r1 = (r0 + PIR_CHUNK_ROWS).min(rows);
        let (b0, b1) = (r0 >> LEAF_BITS, (r1 - 1) >> LEAF_BITS);
        for (k, key) in keys.iter().enumerate() {
            sel[k].clear();
            if b0 < key.leaves() {
                key.blocks_into(party, b0, (b1 + 1).min(key.leaves()), &mut s, &mut sel[k]);
            }
            sel[k].resize((b1 - b0 + 1) as usize, 0);
        }
        // One mask byte (0 or 0xff) per row and key, then one pass over the rows.
        masks.clear();
        masks.resize((r1 - r0) as usize * stride, 0);
        for (k, sk) in sel.iter().enumerate() {
            for (i, m) in masks.chunks_exact_mut(stride).enumerate() {
                let r = r0 + i as u64;
                let (blk, bit) = (((r >> LEAF_BITS) - b0) as usize, r & 127);
                m[k] = 0u8.wrapping_sub(((sk[blk] >> bit) & 1) as u8);
            }
        }
        let rows_bytes = &db[r0 as usize * row_len..r1 as usize * row_len];
        simd::pir_rows(&mut acc, rows_bytes, row_len, &masks);
        r0 = r1;
    }
    for s in sel.iter_mut() {
        s.zeroize();
    }
    masks.zeroize();
    acc
}

/// Constant-time comparison of the whole key, secret root included.
impl PartialEq for ReadKey {
    fn eq(&self, other: &ReadKey) -> bool {
        use subtle::ConstantTimeEq;
        self.encode().ct_eq(&other.encode()).into()
    }
}

impl Eq for ReadKey {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{RandomSource, SeededRandom};

    #[test]
    fn a_small_key_cannot_select_rows_past_its_domain() {
        let mut rng = SeededRandom::new([6; 32]);
        let (mut a, mut b) = ReadKey::r#gen(3, 5, &mut rng).expect("gen");
        // A crafted output correction that would also select row 100 of a 128-row table.
        a.cw_out ^= 1 << 100;
        b.cw_out ^= 1 << 100;
        let row = 16;
        let mut db = vec![0u8; 128 * row];
        rng.fill(&mut db);
        let (x, y) = (
            pir_answer(&db, row, &[&a], Party::A),
            pir_answer(&db, row, &[&b], Party::B),
        );
        let got: Vec<u8> = x[0].iter().zip(&y[0]).map(|(p, q)| p ^ q).collect();
        assert_eq!(got, &db[5 * row..6 * row]);
    }

    #[test]
    fn pir_kernels_agree() {
        let mut rng = SeededRandom::new([5; 32]);
        for (rows, row_len, keys) in [
            (300usize, 48usize, 3usize),
            (1024, 256, 8),
            (7, 16, 1),
            (64, 1000, 5),
        ] {
            let mut db = vec![0u8; rows * row_len];
            rng.fill(&mut db);
            let mut masks = vec![0u8; rows * simd::mask_stride(keys)];
            rng.fill(&mut masks);
            for (i, m) in masks.iter_mut().enumerate() {
                if i % simd::mask_stride(keys) >= keys {
                    *m = 0;
                }
            }
            for m in masks.iter_mut() {
                *m = 0u8.wrapping_sub(*m & 1);
            }
            let mut fast = vec![vec![0u8; row_len]; keys];
            let mut slow = fast.clone();
            simd::pir_rows(&mut fast, &db, row_len, &masks);
            simd::pir_rows_portable(&mut slow, &db, row_len, &masks);
            assert_eq!(fast, slow);
        }
    }
}
