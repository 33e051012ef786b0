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
        out.extend_from_slice(&[codec::READ_VERSION, KIND_READ, self.domain_bits as u8]);
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

/// Bytes of the array per pass of [`pir_answer`]: a chunk this size stays in the core's L2
/// cache while every group of keys sweeps it.
const PIR_CHUNK_BYTES: usize = 256 << 10;

/// Rows per chunk: a multiple of 128 (one read-key leaf) of about [`PIR_CHUNK_BYTES`].
fn pir_chunk_rows(row_len: usize) -> usize {
    ((PIR_CHUNK_BYTES / row_len.max(1)) & !127).max(128)
}

/// Keys whose selection bits are expanded at once (`leaves * 16` bytes each); the array is
/// read from memory once per batch.
const PIR_KEY_BATCH: usize = 128;

/// Two-server PIR answer: for each key, the XOR of the rows of `db` (rows of `row_len` bytes)
/// that the key's output shares select. One pass over `db` serves all keys; the inner loop is
/// a mask-and-XOR, so the memory access pattern and instruction stream do not depend on the
/// keys. Rows beyond a key's domain are never selected.
pub fn pir_answer(db: &[u8], row_len: usize, keys: &[&ReadKey], party: Party) -> Vec<Vec<u8>> {
    let mut acc = vec![vec![0u8; row_len]; keys.len()];
    if row_len == 0 || keys.is_empty() {
        return acc;
    }
    let rows = db.len() / row_len;
    let chunk = pir_chunk_rows(row_len);
    let mut s = Scratch::default();
    let mut sel: Vec<Vec<u128>> = vec![Vec::new(); PIR_KEY_BATCH.min(keys.len())];
    // One mask byte (0 or 0xff) per row of the chunk, one run per key of a group.
    let mut masks = vec![0u8; simd::PIR_GROUP * chunk];
    for (batch, batch_acc) in keys
        .chunks(PIR_KEY_BATCH)
        .zip(acc.chunks_mut(PIR_KEY_BATCH))
    {
        // Every selection bit of the batch's keys, in one full-domain expansion per key.
        for (key, bits) in batch.iter().zip(sel.iter_mut()) {
            key.blocks_into(party, 0, key.leaves(), &mut s, bits);
        }
        for r0 in (0..rows).step_by(chunk) {
            let r1 = (r0 + chunk).min(rows);
            let rows_bytes = &db[r0 * row_len..r1 * row_len];
            let blk = r0 >> LEAF_BITS;
            for ((ks, bits), accs) in batch
                .chunks(simd::PIR_GROUP)
                .zip(sel.chunks(simd::PIR_GROUP))
                .zip(batch_acc.chunks_mut(simd::PIR_GROUP))
            {
                for ((key, b), m) in ks.iter().zip(bits).zip(masks.chunks_exact_mut(chunk)) {
                    let m = &mut m[..r1 - r0];
                    // Rows past the key's domain are never selected.
                    let covered = (key.leaves() as usize).saturating_sub(blk) << LEAF_BITS;
                    let (inside, outside) = m.split_at_mut(covered.min(m.len()));
                    simd::expand_bits(&b[blk.min(b.len())..], inside);
                    outside.fill(0);
                }
                simd::pir_rows(accs, rows_bytes, row_len, &masks, chunk);
            }
        }
    }
    for b in sel.iter_mut() {
        b.zeroize();
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
    fn mask_expansion_kernels_agree() {
        crate::prg::tests::on_every_kernel_width(mask_expansion_kernels_agree_here);
    }

    fn mask_expansion_kernels_agree_here() {
        let mut rng = SeededRandom::new([7; 32]);
        for n in [0usize, 1, 63, 64, 65, 128, 200, 1024] {
            let mut raw = vec![0u8; n.div_ceil(128).max(1) * 16];
            rng.fill(&mut raw);
            let bits: Vec<u128> = raw
                .chunks_exact(16)
                .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
                .collect();
            let (mut fast, mut slow) = (vec![1u8; n], vec![2u8; n]);
            simd::expand_bits(&bits, &mut fast);
            simd::expand_bits_portable(&bits, &mut slow);
            assert_eq!(fast, slow, "n = {n}");
        }
    }

    #[test]
    fn pir_kernels_agree() {
        crate::prg::tests::on_every_kernel_width(pir_kernels_agree_here);
    }

    fn pir_kernels_agree_here() {
        let mut rng = SeededRandom::new([5; 32]);
        for (rows, row_len, keys) in [
            (300usize, 48usize, 3usize),
            (1024, 256, 8),
            (7, 16, 1),
            (64, 1000, 5),
            (200, 320, 13),
            (130, 16, 7),
            (50, 1024, 6),
            (33, 96, 12),
        ] {
            let mut db = vec![0u8; rows * row_len];
            rng.fill(&mut db);
            let mut masks = vec![0u8; rows * keys];
            rng.fill(&mut masks);
            for m in masks.iter_mut() {
                *m = 0u8.wrapping_sub(*m & 1);
            }
            let mut fast = vec![vec![0u8; row_len]; keys];
            let mut slow = fast.clone();
            simd::pir_rows(&mut fast, &db, row_len, &masks, rows);
            simd::pir_rows_portable(&mut slow, &db, row_len, &masks, rows);
            assert_eq!(fast, slow);
        }
    }
}
