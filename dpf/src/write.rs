//! Write keys: byte-string outputs of `slot_len` bytes, one slot per leaf, the verifiable-DPF
//! audit, and the batched write kernel.

use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::codec::{self, KIND_WRITE, LEVEL_LEN, Reader};
use crate::prg::{Domain, Hash};
use crate::proof::{AuditChunk, Mac, PROOF_BLOCKS, Sum, leaf_proof};
use crate::rng::RandomSource;
use crate::tree::{self, Scratch, Tree, mask};
use crate::{AuditChallenge, DecodeError, Error, MAX_SLOT_LEN, Party, check_domain};

/// One party's half of a two-party DPF for the function that is `payload` (`slot_len` bytes)
/// at slot `alpha` and zero at every other slot of `2^n`, XOR-shared; plus the proof
/// correction word of the verifiable DPF.
#[derive(Clone)]
pub struct WriteKey {
    domain_bits: u32,
    tree: Tree,
    cw_out: Vec<u128>,
    cs: [u128; PROOF_BLOCKS],
}

impl std::fmt::Debug for WriteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteKey")
            .field("domain_bits", &self.domain_bits)
            .field("slot_len", &self.slot_len())
            .finish_non_exhaustive()
    }
}

fn check_slot_len(slot_len: usize) -> Result<(), Error> {
    if slot_len == 0 || !slot_len.is_multiple_of(16) || slot_len > MAX_SLOT_LEN {
        return Err(Error::SlotLen(slot_len));
    }
    Ok(())
}

impl WriteKey {
    /// Splits the function "`payload` at slot `alpha`, zero elsewhere" over `2^domain_bits`
    /// slots of `slot_len` bytes into two keys, for parties A and B. Branch-free in `alpha` and
    /// `payload`.
    pub fn r#gen(
        domain_bits: u32,
        slot_len: usize,
        alpha: u64,
        payload: &[u8],
        rng: &mut impl RandomSource,
    ) -> Result<(WriteKey, WriteKey), Error> {
        check_domain(domain_bits)?;
        check_slot_len(slot_len)?;
        if alpha >> domain_bits != 0 {
            return Err(Error::PointOutOfRange { alpha, domain_bits });
        }
        if payload.len() != slot_len {
            return Err(Error::PayloadLen {
                got: payload.len(),
                want: slot_len,
            });
        }
        let mut g = tree::generate(domain_bits, alpha, rng);
        let salt = g.trees[0].salt;
        let blocks = slot_len / 16;
        let mut conv = [0, 1].map(|p| {
            let base = (g.ends[p] & !1) ^ salt;
            let mut v: Vec<u128> = (0..blocks as u128).map(|j| base ^ j).collect();
            Hash::get(Domain::Payload).hash_in_place(&mut v);
            v
        });
        let cw_out: Vec<u128> = payload
            .chunks_exact(16)
            .enumerate()
            .map(|(j, c)| {
                let mut b = [0u8; 16];
                b.copy_from_slice(c);
                let m = u128::from_le_bytes(b);
                b.zeroize();
                conv[0][j] ^ conv[1][j] ^ m
            })
            .collect();
        conv[0].zeroize();
        conv[1].zeroize();
        let mut pi = [0, 1].map(|p| leaf_proof(g.ends[p], salt, alpha));
        let cs = core::array::from_fn(|j| pi[0][j] ^ pi[1][j]);
        pi.zeroize();
        let [ta, tb] = std::mem::replace(&mut g.trees, [empty(), empty()]);
        Ok((
            WriteKey {
                domain_bits,
                tree: ta,
                cw_out: cw_out.clone(),
                cs,
            },
            WriteKey {
                domain_bits,
                tree: tb,
                cw_out,
                cs,
            },
        ))
    }

    /// A key from its parts (for `attacks`, which builds malformed pairs on purpose).
    pub(crate) fn from_parts(
        domain_bits: u32,
        tree: Tree,
        cw_out: Vec<u128>,
        cs: [u128; PROOF_BLOCKS],
    ) -> WriteKey {
        WriteKey {
            domain_bits,
            tree,
            cw_out,
            cs,
        }
    }

    /// The size of an encoded key.
    pub fn encoded_len(domain_bits: u32, slot_len: usize) -> usize {
        3 + 4 + 32 + LEVEL_LEN * domain_bits as usize + slot_len + 16 * PROOF_BLOCKS
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::encoded_len(self.domain_bits, self.slot_len()));
        out.extend_from_slice(&[codec::WRITE_VERSION, KIND_WRITE, self.domain_bits as u8]);
        out.extend_from_slice(&(self.slot_len() as u32).to_le_bytes());
        codec::put_tree(&mut out, &self.tree);
        for b in &self.cw_out {
            out.extend_from_slice(&b.to_le_bytes());
        }
        for b in &self.cs {
            out.extend_from_slice(&b.to_le_bytes());
        }
        out
    }

    /// Decodes a key that must be over `2^domain_bits` slots of `slot_len` bytes.
    pub fn decode(
        bytes: &[u8],
        domain_bits: u32,
        slot_len: usize,
    ) -> Result<WriteKey, DecodeError> {
        check_domain(domain_bits).map_err(|_| DecodeError::Domain {
            got: domain_bits,
            want: domain_bits,
        })?;
        check_slot_len(slot_len).map_err(|_| DecodeError::SlotLen {
            got: slot_len,
            want: slot_len,
        })?;
        let mut r = Reader::new(bytes);
        r.header(KIND_WRITE, domain_bits)?;
        let got = r.u32()? as usize;
        if got != slot_len {
            return Err(DecodeError::SlotLen {
                got,
                want: slot_len,
            });
        }
        let want = Self::encoded_len(domain_bits, slot_len);
        if bytes.len() != want {
            return Err(DecodeError::Length {
                got: bytes.len(),
                want,
            });
        }
        let tree = r.tree(domain_bits)?;
        let mut cw_out = Vec::with_capacity(slot_len / 16);
        for _ in 0..slot_len / 16 {
            cw_out.push(r.block()?);
        }
        let mut cs = [0u128; PROOF_BLOCKS];
        for b in &mut cs {
            *b = r.block()?;
        }
        r.finish()?;
        Ok(WriteKey {
            domain_bits,
            tree,
            cw_out,
            cs,
        })
    }

    /// `log2` of the number of slots.
    pub fn domain_bits(&self) -> u32 {
        self.domain_bits
    }

    /// Bytes per slot.
    pub fn slot_len(&self) -> usize {
        self.cw_out.len() * 16
    }

    /// SHA-256 of the key's public part (everything but the secret root seed; the public part
    /// is the same in both halves of an honest pair) and the caller's context, in a canonical length-prefixed
    /// encoding. Both servers compute it; the client signs it.
    pub fn public_hash(&self, ctx: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"mpm-dpf/v2/write-public");
        h.update([codec::WRITE_VERSION]);
        h.update(self.domain_bits.to_le_bytes());
        h.update((self.slot_len() as u64).to_le_bytes());
        h.update(self.tree.salt.to_le_bytes());
        h.update((self.tree.cw.len() as u64).to_le_bytes());
        for (cw, tr) in self.tree.cw.iter().zip(&self.tree.t_right) {
            h.update(cw.to_le_bytes());
            h.update([*tr]);
        }
        h.update((self.cw_out.len() as u64).to_le_bytes());
        for b in &self.cw_out {
            h.update(b.to_le_bytes());
        }
        h.update((self.cs.len() as u64).to_le_bytes());
        for b in &self.cs {
            h.update(b.to_le_bytes());
        }
        h.update((ctx.len() as u64).to_le_bytes());
        h.update(ctx);
        h.finalize().into()
    }

    /// Slots `lo..hi` of this party's output share, written to `out` (`(hi - lo) * slot_len`
    /// bytes). Panics unless `lo < hi <= 2^n` and `out` has that length.
    pub fn eval_range(&self, party: Party, lo: u64, hi: u64, out: &mut [u8]) {
        assert!(
            lo < hi && hi >> self.domain_bits <= 1 && (hi - 1) >> self.domain_bits == 0,
            "slot range {lo}..{hi} outside the domain of 2^{}",
            self.domain_bits
        );
        assert_eq!(
            out.len() as u64,
            (hi - lo) * self.slot_len() as u64,
            "output buffer length"
        );
        out.fill(0);
        let mut w = Worker::default();
        let step = chunk_leaves(self.slot_len());
        let mut at = lo;
        for part in out.chunks_mut(step as usize * self.slot_len()) {
            let end = (at + step).min(hi);
            w.accumulate(self, party, at, end, part, None);
            at = end;
        }
    }

    /// This party's share of slot `x`. Panics unless `x < 2^n`.
    pub fn eval_point(&self, party: Party, x: u64) -> Vec<u8> {
        let mut out = vec![0u8; self.slot_len()];
        self.eval_range(party, x, x + 1, &mut out);
        out
    }

    /// The whole output share: `2^n * slot_len` bytes. Panics if that does not fit in memory's
    /// address space.
    pub fn eval_full(&self, party: Party) -> Vec<u8> {
        let len = self
            .slot_len()
            .checked_mul(1usize.checked_shl(self.domain_bits).unwrap_or(usize::MAX))
            .filter(|l| *l < isize::MAX as usize)
            .expect("the full output does not fit in memory");
        let mut out = vec![0u8; len];
        self.eval_range(party, 0, 1 << self.domain_bits, &mut out);
        out
    }
}

/// Constant-time comparison of the whole key, secret root included.
impl PartialEq for WriteKey {
    fn eq(&self, other: &WriteKey) -> bool {
        use subtle::ConstantTimeEq;
        self.encode().ct_eq(&other.encode()).into()
    }
}

impl Eq for WriteKey {}

fn empty() -> Tree {
    Tree {
        salt: 0,
        root: 0,
        cw: Vec::new(),
        t_right: Vec::new(),
    }
}

/// Buffers for evaluating ranges of write keys.
#[derive(Default)]
struct Worker {
    s: Scratch,
    pay: Vec<u128>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.pay.zeroize();
    }
}

impl Worker {
    /// The payload through the batched hash: `out[slot i] ^= H((v_i & !1) ^ salt ^ j) ^
    /// (mask(v_i) & cw[j])` for the nodes in `self.s.nodes`.
    fn payload_portable(pay: &mut Vec<u128>, nodes: &[u128], key: &WriteKey, out: &mut [u8]) {
        let blocks = key.cw_out.len();
        let salt = key.tree.salt;
        tree::grow(pay, nodes.len() * blocks);
        for (p, v) in pay.chunks_exact_mut(blocks).zip(nodes) {
            let base = (v & !1) ^ salt;
            for (j, x) in p.iter_mut().enumerate() {
                *x = base ^ j as u128;
            }
        }
        Hash::get(Domain::Payload).hash_in_place(pay);
        for (p, v) in pay.chunks_exact_mut(blocks).zip(nodes) {
            let m = mask(*v);
            for (x, cw) in p.iter_mut().zip(&key.cw_out) {
                *x ^= m & cw;
            }
        }
        xor_blocks_into(out, pay);
    }

    /// XORs slots `lo..hi` of `key`'s share into `out` (skipped when `out` is empty: audit
    /// only); with an audit, returns those leaves' part of the reduced proof sum
    /// `P = XOR kappa(x, j) * pi~_j(x)` (see the crate docs).
    fn accumulate(
        &mut self,
        key: &WriteKey,
        party: Party,
        lo: u64,
        hi: u64,
        out: &mut [u8],
        audit: Option<&AuditChunk>,
    ) -> Sum {
        let salt = key.tree.salt;
        key.tree.expand(party.bit(), lo, hi, &mut self.s);
        let nodes = &self.s.nodes;
        if !out.is_empty() && !Hash::get(Domain::Payload).payload_xor(nodes, salt, &key.cw_out, out)
        {
            Self::payload_portable(&mut self.pay, nodes, key, out);
        }
        let Some(audit) = audit else { return [0; 2] };
        audit.sum(nodes, salt, &key.cs)
    }
}

/// `out ^= blocks` (as little-endian bytes).
fn xor_blocks_into(out: &mut [u8], blocks: &[u128]) {
    for (d, b) in out.chunks_exact_mut(16).zip(blocks) {
        let mut x = [0u8; 16];
        x.copy_from_slice(d);
        d.copy_from_slice(&(u128::from_le_bytes(x) ^ b).to_le_bytes());
    }
}

/// Leaves per pass of [`write_audit`] (no array: only the tree, and the proof round keys and
/// coefficients of 768 bytes per leaf, shared by every key).
const AUDIT_CHUNK_LEAVES: u64 = 512;

/// Leaves per pass of the write kernels: the array chunk they cover stays in L2 while every
/// key is applied to it.
fn chunk_leaves(slot_len: usize) -> u64 {
    ((64 << 10) / slot_len.max(1)).clamp(1, 4096) as u64
}

/// Evaluates `keys` over slots `0..slots`: into `array` when given (`slots * slot_len`
/// bytes), and with the audit sums when `mac` is given.
fn run(
    mut array: Option<&mut [u8]>,
    slots: u64,
    slot_len: usize,
    keys: &[&WriteKey],
    party: Party,
    mac: Option<&Mac>,
) -> Vec<Sum> {
    assert!(slot_len > 0, "slot length must be positive");
    let mut sums = vec![[0u128; 2]; keys.len()];
    for k in keys {
        assert_eq!(
            k.slot_len(),
            slot_len,
            "write key slot length differs from the array's"
        );
    }
    // Audit only: no array chunk to keep in cache, so longer runs of leaves per key.
    let step = if array.is_some() {
        chunk_leaves(slot_len)
    } else {
        AUDIT_CHUNK_LEAVES
    };
    let mut w = Worker::default();
    let mut chunk_audit = AuditChunk::default();
    let mut lo = 0u64;
    while lo < slots {
        let hi = (lo + step).min(slots);
        let chunk: &mut [u8] = match array.as_deref_mut() {
            Some(a) => &mut a[lo as usize * slot_len..hi as usize * slot_len],
            None => &mut [],
        };
        let audit = mac.map(|mac| {
            chunk_audit.fill(mac, lo, (hi - lo) as usize);
            &chunk_audit
        });
        for (k, sum) in keys.iter().zip(sums.iter_mut()) {
            let end = hi.min(1 << k.domain_bits);
            if lo < end {
                let part = match chunk.len() {
                    0 => &mut [],
                    _ => &mut chunk[..(end - lo) as usize * slot_len],
                };
                let [l, h] = w.accumulate(k, party, lo, end, part, audit);
                sum[0] ^= l;
                sum[1] ^= h;
            }
        }
        lo = hi;
    }
    sums
}

/// XORs every key's full output share into `array` (slots of `slot_len` bytes), in one pass
/// over the array for all keys. Slots beyond a key's domain are left alone. Panics if a key's
/// slot length is not `slot_len` (decode keys with the array's slot length).
pub fn write_accumulate(array: &mut [u8], slot_len: usize, keys: &[&WriteKey], party: Party) {
    let slots = (array.len() / slot_len.max(1)) as u64;
    run(Some(array), slots, slot_len, keys, party, None);
}

/// [`write_accumulate`] plus the verifiable-DPF audit: returns, for each `(key, ctx)`, the
/// audit value `SHA-256("mpm-dpf/v2/audit" || P || public_hash(ctx))`, where `P` is the
/// reduced leaf-proof sum. The two servers'
/// values for a write are equal if and only if (except with negligible probability) the two
/// halves form a point function with at most one non-zero slot and have the same public part
/// and context. See the crate docs for the argument. `challenge` must be drawn jointly by the
/// servers after the keys are fixed.
pub fn write_accumulate_audited(
    array: &mut [u8],
    slot_len: usize,
    writes: &[(&WriteKey, &[u8])],
    party: Party,
    challenge: &AuditChallenge,
) -> Vec<[u8; 32]> {
    let slots = (array.len() / slot_len.max(1)) as u64;
    audited(Some(array), slots, slot_len, writes, party, challenge)
}

/// The audit values of [`write_accumulate_audited`] over an array of `slots` slots, without
/// applying the writes: for a server that applied them earlier with [`write_accumulate`]
/// (before the challenge existed) and audits once it is drawn. Costs the tree expansion, the
/// leaf proofs and their reduction, without the payload blocks (the compare example prints it).
pub fn write_audit(
    slots: usize,
    slot_len: usize,
    writes: &[(&WriteKey, &[u8])],
    party: Party,
    challenge: &AuditChallenge,
) -> Vec<[u8; 32]> {
    audited(None, slots as u64, slot_len, writes, party, challenge)
}

fn audited(
    array: Option<&mut [u8]>,
    slots: u64,
    slot_len: usize,
    writes: &[(&WriteKey, &[u8])],
    party: Party,
    challenge: &AuditChallenge,
) -> Vec<[u8; 32]> {
    let mac = Mac::new(challenge.0);
    let keys: Vec<&WriteKey> = writes.iter().map(|w| w.0).collect();
    let sums = run(array, slots, slot_len, &keys, party, Some(&mac));
    writes
        .iter()
        .zip(sums)
        .map(|((k, ctx), sum)| {
            // A key whose domain is smaller than the array still has all its leaves covered;
            // one larger than the array is audited only over the array's slots, so evaluate the
            // rest of its proof here to keep the audit over the whole domain.
            let mut sum = sum;
            let full = 1u64 << k.domain_bits;
            if slots < full {
                let mut w = Worker::default();
                let step = chunk_leaves(slot_len);
                let mut chunk = AuditChunk::default();
                let mut lo = slots;
                while lo < full {
                    let hi = (lo + step).min(full);
                    chunk.fill(&mac, lo, (hi - lo) as usize);
                    // Audit only: these slots are outside the array.
                    let [l, h] = w.accumulate(k, party, lo, hi, &mut [], Some(&chunk));
                    sum[0] ^= l;
                    sum[1] ^= h;
                    lo = hi;
                }
            }
            Sha256::new()
                .chain_update(b"mpm-dpf/v2/audit")
                .chain_update(sum[0].to_le_bytes())
                .chain_update(sum[1].to_le_bytes())
                .chain_update(k.public_hash(ctx))
                .finalize()
                .into()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{RandomSource, SeededRandom};

    const N: u32 = 8;
    const L: usize = 32;

    fn pair(alpha: u64, seed: u8) -> (WriteKey, WriteKey) {
        let payload: Vec<u8> = (0..L as u8).map(|i| i ^ seed).collect();
        WriteKey::r#gen(N, L, alpha, &payload, &mut SeededRandom::new([seed; 32])).expect("gen")
    }

    /// The two servers' audit values, with a context each.
    fn audit(a: &WriteKey, b: &WriteKey, ctx_a: &[u8], ctx_b: &[u8]) -> ([u8; 32], [u8; 32]) {
        let ch = AuditChallenge([9; 16]);
        let mut arr_a = vec![0u8; L << N];
        let mut arr_b = vec![0u8; L << N];
        let va = write_accumulate_audited(&mut arr_a, L, &[(a, ctx_a)], Party::A, &ch);
        let vb = write_accumulate_audited(&mut arr_b, L, &[(b, ctx_b)], Party::B, &ch);
        (va[0], vb[0])
    }

    fn accepted(a: &WriteKey, b: &WriteKey) -> bool {
        let (x, y) = audit(a, b, b"ctx", b"ctx");
        x == y
    }

    /// Slots where the pair's shares XOR to non-zero.
    fn nonzero_slots(a: &WriteKey, b: &WriteKey) -> usize {
        let (fa, fb) = (a.eval_full(Party::A), b.eval_full(Party::B));
        fa.chunks(L)
            .zip(fb.chunks(L))
            .filter(|(x, y)| x != y)
            .count()
    }

    #[test]
    fn honest_pairs_pass() {
        for alpha in [0, 1, 77, 255] {
            let (a, b) = pair(alpha, alpha as u8);
            assert_eq!(nonzero_slots(&a, &b), 1);
            assert!(accepted(&a, &b));
        }
    }

    #[test]
    fn a_zero_payload_is_a_valid_write() {
        let (a, b) =
            WriteKey::r#gen(N, L, 5, &[0; L], &mut SeededRandom::new([1; 32])).expect("gen");
        assert_eq!(nonzero_slots(&a, &b), 0);
        assert!(accepted(&a, &b));
    }

    #[test]
    fn every_public_field_changed_on_one_half_is_rejected() {
        let (a, b) = pair(100, 7);
        for level in 0..N as usize {
            for bit in [0u32, 1, 64, 127] {
                let mut t = b.clone();
                t.tree.cw[level] ^= 1 << bit;
                assert!(!accepted(&a, &t), "cw level {level} bit {bit}");
            }
            let mut t = b.clone();
            t.tree.t_right[level] ^= 1;
            assert!(!accepted(&a, &t), "t_right level {level}");
        }
        for j in 0..L / 16 {
            let mut t = b.clone();
            t.cw_out[j] ^= 1 << 40;
            assert!(!accepted(&a, &t), "cw_out {j}");
        }
        for block in 0..PROOF_BLOCKS {
            let mut t = a.clone();
            t.cs[block] ^= 1;
            assert!(!accepted(&t, &b), "cs {block}");
        }
        let mut t = a.clone();
        t.tree.salt ^= 1 << 100;
        assert!(!accepted(&t, &b), "salt");
        // Context: round, request id or account differ.
        let (x, y) = audit(&a, &b, b"round 1", b"round 2");
        assert_ne!(x, y);
        // Slot size and domain are in the public hash: a half claiming other ones is rejected
        // even if its evaluation were somehow accepted.
        let mut t = b.clone();
        t.cw_out.push(0);
        assert_ne!(t.public_hash(b"c"), a.public_hash(b"c"));
        let mut t = b.clone();
        t.domain_bits += 1;
        assert_ne!(t.public_hash(b"c"), a.public_hash(b"c"));
    }

    #[test]
    fn flipped_seeds_and_mismatched_halves_are_rejected() {
        let (a, b) = pair(3, 1);
        for bit in [1u32, 2, 63, 64, 127] {
            let mut t = a.clone();
            t.tree.root ^= 1 << bit;
            assert!(!accepted(&t, &b), "root bit {bit}");
        }
        let (_, b2) = pair(3, 2);
        assert!(!accepted(&a, &b2));
        // Both halves from the same party.
        let (x, y) = {
            let ch = AuditChallenge([9; 16]);
            let mut arr = vec![0u8; L << N];
            let va =
                write_accumulate_audited(&mut arr, L, &[(&a, b"ctx".as_slice())], Party::A, &ch);
            let vb =
                write_accumulate_audited(&mut arr, L, &[(&a, b"ctx".as_slice())], Party::B, &ch);
            (va[0], vb[0])
        };
        assert_ne!(x, y);
    }

    #[test]
    fn two_point_and_many_point_functions_are_rejected() {
        // Last level uncorrected: both children of the point's parent differ.
        let (mut a, mut b) = pair(10, 3);
        for k in [&mut a, &mut b] {
            k.tree.cw[N as usize - 1] = 1;
            k.tree.t_right[N as usize - 1] = 1;
        }
        assert_eq!(nonzero_slots(&a, &b), 2);
        assert!(!accepted(&a, &b));

        // No correction anywhere: every leaf differs.
        let (mut a, mut b) = pair(10, 4);
        for k in [&mut a, &mut b] {
            k.tree.cw.iter_mut().for_each(|c| *c = 0);
            k.tree.t_right.iter_mut().for_each(|t| *t = 0);
        }
        assert!(nonzero_slots(&a, &b) > 100);
        assert!(!accepted(&a, &b));

        // Equal seeds, control bits differing at every leaf, zero proof correction: the
        // output correction applies on one side only at every slot.
        let (mut a, mut b) = pair(10, 5);
        b.tree.root = a.tree.root;
        for k in [&mut a, &mut b] {
            k.tree.cw.iter_mut().for_each(|c| *c = 1);
            k.tree.t_right.iter_mut().for_each(|t| *t = 1);
            k.cs = [0; PROOF_BLOCKS];
        }
        assert_eq!(nonzero_slots(&a, &b), 1 << N);
        assert!(!accepted(&a, &b));
    }

    /// The first forgery found in review (of an audit whose MAC did not bind the leaf index):
    /// a last level chosen so one party's left leaf equals the other's right leaf shifted by the
    /// leaf-index tweak, and `cs` fixing the other pair. The corrected proofs then agreed as
    /// multisets but at swapped leaves. Must be rejected.
    fn forge_two_slot_write(n: u32, p: u64, rng: &mut impl RandomSource) -> (WriteKey, WriteKey) {
        let g = tree::generate(n - 1, p, rng);
        let salt = g.trees[0].salt;
        let ends = g.ends;
        let (z, o) = if ends[0] & 1 == 0 { (0, 1) } else { (1, 0) };
        let h = |d: Domain, x: u128| {
            let mut out = [0u128];
            Hash::get(d).hash(&[x], &mut out);
            out[0]
        };
        let inp = |v: u128| (v & !1) ^ salt;
        let (lz, rz) = (
            h(Domain::Left, inp(ends[z])),
            h(Domain::Right, inp(ends[z])),
        );
        let (lo, ro) = (
            h(Domain::Left, inp(ends[o])),
            h(Domain::Right, inp(ends[o])),
        );
        let cwl = lo ^ rz ^ (1u128 << 64);
        let tr = (ro ^ lz ^ 1) & 1;
        let cwr = (cwl & !1) | tr;
        let pa = leaf_proof(lz, salt, 2 * p);
        let pb = leaf_proof(ro ^ cwr, salt, 2 * p + 1);
        let cs = core::array::from_fn(|j| pa[j] ^ pb[j]);
        let mut cw = g.trees[0].cw.clone();
        cw.push(cwl);
        let mut t_right = g.trees[0].t_right.clone();
        t_right.push(tr as u8);
        let mk = |i: usize| WriteKey {
            domain_bits: n,
            tree: Tree {
                salt,
                root: g.trees[i].root,
                cw: cw.clone(),
                t_right: t_right.clone(),
            },
            cw_out: vec![0x1234; L / 16],
            cs,
        };
        (mk(0), mk(1))
    }

    #[test]
    fn the_leaf_swap_forgery_is_rejected() {
        let mut rng = SeededRandom::new([0x5a; 32]);
        for p in [0u64, 37, 127] {
            let (a, b) = forge_two_slot_write(N, p, &mut rng);
            let (a, b) = (
                WriteKey::decode(&a.encode(), N, L).expect("decodes"),
                WriteKey::decode(&b.encode(), N, L).expect("decodes"),
            );
            assert_eq!(a.public_hash(b"ctx"), b.public_hash(b"ctx"));
            assert_eq!(nonzero_slots(&a, &b), 2, "the forgery writes two slots");
            for c in 0..20u8 {
                let ch = AuditChallenge([c; 16]);
                let mut arr_a = vec![0u8; L << N];
                let mut arr_b = vec![0u8; L << N];
                let va = write_accumulate_audited(
                    &mut arr_a,
                    L,
                    &[(&a, b"ctx".as_slice())],
                    Party::A,
                    &ch,
                );
                let vb = write_accumulate_audited(
                    &mut arr_b,
                    L,
                    &[(&b, b"ctx".as_slice())],
                    Party::B,
                    &ch,
                );
                assert_ne!(va, vb, "forgery at {p} passed challenge {c}");
            }
        }
    }

    #[test]
    fn fused_payload_kernel_agrees_with_portable() {
        crate::prg::tests::on_every_kernel_width(fused_payload_kernel_agrees_with_portable_here);
    }

    fn fused_payload_kernel_agrees_with_portable_here() {
        let mut rng = SeededRandom::new([3; 32]);
        for l in [64usize, 256, 1024, 48] {
            let payload = vec![0xab; l];
            let (k, _) = WriteKey::r#gen(9, l, 77, &payload, &mut rng).expect("gen");
            let mut w = Worker::default();
            k.tree.expand(1, 3, 300, &mut w.s);
            let mut fast = vec![0u8; 297 * l];
            rng.fill(&mut fast);
            let mut slow = fast.clone();
            let used = Hash::get(Domain::Payload).payload_xor(
                &w.s.nodes,
                k.tree.salt,
                &k.cw_out,
                &mut fast,
            );
            Worker::payload_portable(&mut w.pay, &w.s.nodes, &k, &mut slow);
            if used {
                assert_eq!(fast, slow, "slot length {l}");
            } else {
                assert_ne!(fast, slow, "no fast path: the output is untouched");
            }
        }
    }

    #[test]
    fn audit_does_not_depend_on_how_keys_are_batched() {
        let keys: Vec<(WriteKey, WriteKey)> = (0..5).map(|i| pair(i * 50, i as u8)).collect();
        let ch = AuditChallenge([1; 16]);
        let ctx = b"c".as_slice();
        let all: Vec<(&WriteKey, &[u8])> = keys.iter().map(|k| (&k.0, ctx)).collect();
        let mut arr = vec![0u8; L << N];
        let batch = write_accumulate_audited(&mut arr, L, &all, Party::A, &ch);
        let mut arr1 = vec![0u8; L << N];
        for (i, w) in all.iter().enumerate() {
            let v = write_accumulate_audited(&mut arr1, L, &[*w], Party::A, &ch);
            assert_eq!(v[0], batch[i]);
        }
        assert_eq!(arr, arr1);
    }

    #[test]
    fn a_key_larger_than_the_array_is_audited_over_its_whole_domain() {
        let (a, b) = pair(200, 8);
        let ch = AuditChallenge([2; 16]);
        let mut small_a = vec![0u8; L * 100];
        let mut small_b = vec![0u8; L * 100];
        let va = write_accumulate_audited(&mut small_a, L, &[(&a, b"c".as_slice())], Party::A, &ch);
        let vb = write_accumulate_audited(&mut small_b, L, &[(&b, b"c".as_slice())], Party::B, &ch);
        assert_eq!(va, vb);
        assert_eq!(small_a, small_b, "the point is outside the array");
    }
}

#[cfg(test)]
mod forgery_tests {
    //! The audit against the strongest forgeries we know: the two-slot construction that broke
    //! the version 1 audit, at every domain size, and the cheapest attack on this version's
    //! proofs at reduced width, whose cost must match the argument in the crate docs.

    use std::collections::HashMap;

    use super::*;
    use crate::attacks::sibling_forgery;
    use crate::rng::SeededRandom;
    use crate::tree::mask;

    /// Both parties' audit values over the key's whole domain (with the payload applied into an
    /// array when it is small enough, else through the audit-only path).
    fn audit_values(a: &WriteKey, b: &WriteKey, l: usize, ch: &AuditChallenge) -> [[u8; 32]; 2] {
        let slots = 1usize << a.domain_bits;
        let ctx = b"round 7 / id / account".as_slice();
        [(a, Party::A), (b, Party::B)].map(|(k, party)| {
            if slots * l <= 1 << 22 {
                let mut arr = vec![0u8; slots * l];
                let v = write_accumulate_audited(&mut arr, l, &[(k, ctx)], party, ch)[0];
                assert_eq!(v, write_audit(slots, l, &[(k, ctx)], party, ch)[0]);
                v
            } else {
                write_audit(slots, l, &[(k, ctx)], party, ch)[0]
            }
        })
    }

    /// The leaves' corrected proofs of both parties, compared leaf by leaf: what the reduced
    /// sums test for (up to the reduction's own error).
    fn proofs_agree_at(a: &WriteKey, b: &WriteKey, x: u64) -> bool {
        let mut s = Scratch::default();
        let mut node = |k: &WriteKey, party: Party| {
            k.tree.expand(party.bit(), x, x + 1, &mut s);
            s.nodes[0]
        };
        let (va, vb) = (node(a, Party::A), node(b, Party::B));
        let corrected = |v: u128, k: &WriteKey| {
            let p = leaf_proof(v, k.tree.salt, x);
            core::array::from_fn::<u128, PROOF_BLOCKS, _>(|j| p[j] ^ (mask(v) & k.cs[j]))
        };
        corrected(va, a) == corrected(vb, b)
    }

    #[test]
    fn the_version_1_two_slot_forgery_is_rejected_at_every_domain_size() {
        let mut rng = SeededRandom::new([0x20; 32]);
        for n in 1..=20u32 {
            for l in [16usize, 32, 256] {
                let half = 1u64 << (n - 1);
                let points: Vec<u64> = if n == 1 {
                    vec![0]
                } else {
                    vec![0, half / 2, half - 1]
                };
                for p in points {
                    let payload: Vec<u8> = (0..l).map(|i| (i as u8) ^ 0xa5).collect();
                    for fix in 0..3u8 {
                        let (a, b) = sibling_forgery(n, l, p, &payload, fix, false, &mut rng)
                            .expect("forge");
                        let ctx = b"c";
                        assert_eq!(a.public_hash(ctx), b.public_hash(ctx));
                        assert_eq!(a, b, "the construction's halves are identical");
                        // It writes the payload into slot 2p and junk into slot 2p + 1.
                        let x = 2 * p;
                        let (sa, sb) = (a.eval_point(Party::A, x), b.eval_point(Party::B, x));
                        let got: Vec<u8> = sa.iter().zip(&sb).map(|(u, v)| u ^ v).collect();
                        assert_eq!(got, payload, "n {n} l {l} p {p}");
                        assert_ne!(
                            a.eval_point(Party::A, x + 1),
                            b.eval_point(Party::B, x + 1),
                            "the sibling slot is written too"
                        );
                        // The proof correction fixes at most one of the two leaves.
                        let agree = [0, 1].map(|i| proofs_agree_at(&a, &b, x + i));
                        assert_eq!(agree, [fix == 0, fix == 1], "n {n} l {l} p {p} fix {fix}");
                        // And the audit refuses it under every challenge tried.
                        let tries = if n <= 12 { 3 } else { 1 };
                        for c in 0..tries {
                            let ch = AuditChallenge([c ^ n as u8; 16]);
                            let [va, vb] = audit_values(&a, &b, l, &ch);
                            assert_ne!(va, vb, "n {n} l {l} p {p} fix {fix}: accepted");
                        }
                    }
                }
            }
        }
    }

    /// `pi(x, v)` cut to its low `w` bits: the audit at reduced width.
    fn short_proof(v: u128, salt: u128, x: u64, w: u32) -> u128 {
        leaf_proof(v, salt, x)[0] & ((1u128 << w) - 1)
    }

    fn h(d: Domain, x: u128) -> u128 {
        let mut out = [0u128];
        Hash::get(d).hash(&[x], &mut out);
        out[0]
    }

    /// The cheapest attack we know on the proofs, with distinct halves, in a domain of two
    /// slots (the parent of both leaves is the root, which the client chooses freely):
    /// A's root has control bit 0, so A's leaves `L(rA), R(rA)` do not depend on the correction
    /// word, and `f(rA) = pi(0, a0) ^ pi(1, a1)`; B's root has control bit 1, so B's leaves
    /// are `L(rB) ^ cw, R(rB) ^ cw'` and `g(rB, cw) = pi(0, b0) ^ pi(1, b1)`. The corrected
    /// proofs agree at both leaves exactly when `f = g` (with `cs` fixing leaf 0), a collision
    /// between two lists: about `2^(w/2)` evaluations at width `w`, `2^256` at the full 512.
    /// Returns the pair and the number of `f` and `g` evaluations it took.
    fn birthday_forgery(w: u32, seed: u8) -> (WriteKey, WriteKey, u64) {
        let mut rng = SeededRandom::new([seed; 32]);
        let salt = rng.u128();
        let mut evaluations = 0u64;
        let mut table: HashMap<u128, u128> = HashMap::new();
        let size = 1usize << w.div_ceil(2);
        while table.len() < size {
            evaluations += 1;
            let ra = rng.u128() & !1;
            let s = ra ^ salt;
            let (a0, a1) = (h(Domain::Left, s), h(Domain::Right, s));
            // Control bits 0 at A's leaves, so the correction applies on B's side at both.
            if (a0 | a1) & 1 != 0 {
                continue;
            }
            table.insert(
                short_proof(a0, salt, 0, w) ^ short_proof(a1, salt, 1, w),
                ra,
            );
        }
        loop {
            evaluations += 1;
            let rb = rng.u128() & !1;
            let seed_part = rng.u128() & !1;
            let s = rb ^ salt;
            let (l, r) = (h(Domain::Left, s), h(Domain::Right, s));
            let cw = seed_part | (1 ^ (l & 1));
            let tr = 1 ^ (r & 1);
            let (b0, b1) = (l ^ cw, r ^ (seed_part | tr));
            let g = short_proof(b0, salt, 0, w) ^ short_proof(b1, salt, 1, w);
            let Some(&ra) = table.get(&g) else { continue };
            let s_a = ra ^ salt;
            let a0 = h(Domain::Left, s_a);
            let mut cs = [0u128; PROOF_BLOCKS];
            cs[0] = leaf_proof(a0, salt, 0)[0] ^ leaf_proof(b0, salt, 0)[0];
            let key = |root: u128| {
                WriteKey::from_parts(
                    1,
                    Tree {
                        salt,
                        root,
                        cw: vec![cw],
                        t_right: vec![tr as u8],
                    },
                    vec![7; 1],
                    cs,
                )
            };
            return (key(ra), key(rb), evaluations);
        }
    }

    /// The reduced-width audit: the corrected proofs' low `w` bits agree at every leaf.
    fn accepted_at_width(a: &WriteKey, b: &WriteKey, w: u32) -> bool {
        (0..1u64 << a.domain_bits).all(|x| {
            let mut s = Scratch::default();
            let mut node = |k: &WriteKey, party: Party| {
                k.tree.expand(party.bit(), x, x + 1, &mut s);
                s.nodes[0]
            };
            let (va, vb) = (node(a, Party::A), node(b, Party::B));
            let m = (1u128 << w) - 1;
            let c =
                |v: u128, k: &WriteKey| short_proof(v, k.tree.salt, x, w) ^ (mask(v) & k.cs[0] & m);
            c(va, a) == c(vb, b)
        })
    }

    #[test]
    fn the_distinct_halves_birthday_attack_costs_what_the_argument_says() {
        let mut report = String::new();
        for (w, runs) in [(16u32, 4u8), (20, 4), (24, 3), (28, 2), (32, 1)] {
            for run in 0..runs {
                let (a, b, evaluations) = birthday_forgery(w, (w as u8).wrapping_mul(16) ^ run);
                assert_ne!(a.encode(), b.encode(), "distinct halves");
                assert!(
                    accepted_at_width(&a, &b, w),
                    "width {w}: the collision passes"
                );
                // It writes two slots ...
                for x in 0..2 {
                    assert_ne!(a.eval_point(Party::A, x), b.eval_point(Party::B, x));
                }
                // ... and the full-width audit refuses it.
                let [va, vb] = audit_values(&a, &b, 16, &AuditChallenge([w as u8; 16]));
                assert_ne!(va, vb);
                let ratio = evaluations as f64 / 2f64.powf(f64::from(w) / 2.0);
                report += &format!("width {w}: {evaluations} evaluations, {ratio:.1} x 2^(w/2)\n");
                // About 4 x 2^(w/2) to fill the list (a quarter of A's roots are usable) plus
                // a geometric number of B tries with mean 2^(w/2): the cost grows as 2^(w/2).
                assert!(
                    (1.0..=64.0).contains(&ratio),
                    "width {w}: {evaluations} evaluations is not about 2^(w/2)\n{report}"
                );
            }
        }
        eprintln!("{report}");
    }
}
