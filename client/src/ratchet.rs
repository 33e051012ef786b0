//! Forward secrecy for pair sessions (docs/protocol.md §5.1, "Forward secrecy").
//!
//! Each side keeps, per contact, a [`Ratchet`]: the pair's *epoch* (how many ephemeral
//! Diffie-Hellman steps are done), the epoch's chain key, the side's pending announcement, and
//! for each direction the GGM tree of the epoch's per-round keys.
//!
//! * **Epoch 0 (bootstrap)**: the static keys of [`crate::session::PairKeys`], as before
//!   forward secrecy existed. They serve until the first exchange takes effect.
//! * **Key blocks**: a side announces `(epoch, ephemeral public key, switch round)` in a
//!   [`KeyBlock`] carried at the end of its frames to the peer
//!   ([`crate::frame::Frame::Data::key`]), outside the sequenced stream, in every frame until
//!   the announcement is *confirmed*: the side decrypts a frame of the peer's at an array round
//!   at or after its own switch round, which the peer can only have written once it knew the
//!   block. No ack field is needed and nothing waits behind queued data.
//! * **A DH step** (epoch `e -> e + 1`): the initiator draws an ephemeral X25519 secret `a`,
//!   keeps it in the store and announces `(e + 1, A = aG, no switch)`. A side that holds the
//!   peer's block for `e + 1` and its own secret (its pending one, or a fresh one if it is the
//!   responder) computes `root = HKDF-Extract(salt = chain_e, ikm = X25519(secret, peer's
//!   key))` and deletes the secret at once. From `root`: `chain_{e+1} = HKDF-Expand(root,
//!   "mpm/chain/v1")` replaces `chain_e`, and direction `S -> R` gets the GGM tree seeded with
//!   `HKDF-Expand(root, "mpm/tree/v1" || pk_S || pk_R)`.
//! * **Switch rounds**: the *reader* of a direction picks when it starts reading the new
//!   epoch: `s = t + margin`, where t is the round in which it picks and margin the schedule's
//!   round trip `2 * lag + w + 1`, and announces s in its block. The writer uses the new tree
//!   for every round `>= s` it writes once it knows s. The reader therefore always knows which
//!   key an array round is read with. The two sides pick *in turn*: the first chooser is the
//!   responder (or, if both started the step at once, the side with the lower static public
//!   key); the second chooser picks only after it has learned the first one's switch round.
//!   This ordering is what makes the step deadlock-free under any loss or absence: a
//!   direction is broken only between its reader's switch round and the moment its writer
//!   learns it, and while the first chooser's direction may be broken the other one is intact
//!   (its reader has not switched), so the first chooser's block keeps arriving; once the
//!   second chooser picks it already knows the first's round, so its own direction to the
//!   first chooser stays intact and carries its block. Frames lost in a broken window are
//!   retransmitted by the delivery layer.
//! * **Per-round keys**: a GGM tree of depth 64 over the round index
//!   ([`GgmTree`]: `child(x, b) = HMAC-SHA-256(x, "mpm/ggm/v1" || b)`). A side keeps only the
//!   frontier covering the rounds not used yet: the writer advances past round r when it has
//!   built r's write, the reader when it has processed the reads of array round r. Skipping
//!   2^40 rounds costs at most 3 * 64 HMACs.
//! * **Deletion**: a side deletes its ephemeral secret and the previous chain key in the
//!   transaction that computes the new root, and the previous epoch's trees in the transaction
//!   that switches the direction. The store runs with `secure_delete` and is checkpointed with
//!   `wal_checkpoint(TRUNCATE)` after every round, so the bytes leave the files too.
//! * **Healing**: a side starts a new step [`HEAL_EVERY`] rounds after its current epoch began
//!   (at once in epoch 0), provided its last block is confirmed and both directions have
//!   switched. An attacker who copied the device before the step and stays passive cannot
//!   follow it.

use dpf::RandomSource;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::Error;
use crate::session::{DirectionKeys, PairKeys, Secret32};

/// Rounds after an epoch began before a side starts the next DH step (healing). With 2-second
/// rounds about 34 minutes, with 5-second rounds about 85 minutes.
pub const HEAL_EVERY: u64 = 1024;

/// Bytes of an encoded [`KeyBlock`].
pub const KEY_BLOCK_LEN: usize = 4 + 32 + 8;

/// The most nodes a frontier holds: the decomposition of `[n, 2^64)` into aligned subtrees.
const MAX_NODES: usize = 64;

/// One subtree of a [`GgmTree`] frontier: the node at `depth` whose round indexes start with
/// the `depth`-bit `prefix`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct Node {
    depth: u8,
    prefix: u64,
    seed: [u8; 32],
}

impl Node {
    /// The rounds it covers, `[start, end)`.
    fn range(&self) -> (u128, u128) {
        let span = 1u128 << (64 - u32::from(self.depth));
        let start = u128::from(self.prefix) * span;
        (start, start + span)
    }

    fn children(&self) -> (Node, Node) {
        let child = |bit: u8| Node {
            depth: self.depth + 1,
            prefix: (self.prefix << 1) | u64::from(bit),
            seed: prg(&self.seed, bit),
        };
        (child(0), child(1))
    }
}

#[cfg(test)]
thread_local! {
    /// PRG evaluations on this thread (tests check that skipping ahead is cheap).
    static PRG_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The GGM length-doubling PRG: `HMAC-SHA-256(seed, "mpm/ggm/v1" || bit)`.
fn prg(seed: &[u8; 32], bit: u8) -> [u8; 32] {
    #[cfg(test)]
    PRG_CALLS.with(|c| c.set(c.get() + 1));
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(seed)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"mpm/ggm/v1");
    mac.update(&[bit]);
    mac.finalize().into_bytes().into()
}

/// A GGM tree of depth 64 over the round index, of which only the frontier covering the rounds
/// `>= next` is kept: at most 64 subtree seeds. The leaf of round r is derived by descending
/// from the subtree that covers it; [`GgmTree::advance`] deletes every seed below a round.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct GgmTree {
    next: u64,
    /// Disjoint, ordered by start; their union is `[next, 2^64)`.
    nodes: Vec<Node>,
}

impl std::fmt::Debug for GgmTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgmTree")
            .field("next", &self.next)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl GgmTree {
    /// The tree whose root seed is `seed` (covering every round).
    pub fn new(seed: &[u8; 32]) -> Self {
        let mut nodes = Vec::with_capacity(MAX_NODES);
        nodes.push(Node {
            depth: 0,
            prefix: 0,
            seed: *seed,
        });
        Self { next: 0, nodes }
    }

    /// The first round whose leaf can still be derived.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Seeds held (at most 64).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the frontier is empty (never: the last round is always covered).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Deletes (zeroizes) every seed that covers only rounds `< to`, splitting the one subtree
    /// that straddles `to`. Costs at most 2 * 64 PRG calls.
    pub fn advance(&mut self, to: u64) {
        if to <= self.next {
            return;
        }
        let to128 = u128::from(to);
        let mut out: Vec<Node> = Vec::with_capacity(MAX_NODES);
        // Right siblings kept while descending the straddling node, deepest last.
        let mut rights: Vec<Node> = Vec::with_capacity(MAX_NODES);
        for node in std::mem::take(&mut self.nodes) {
            let (start, end) = node.range();
            if end <= to128 {
                continue; // dropped: zeroized
            }
            if start >= to128 {
                out.extend(rights.drain(..).rev());
                out.push(node);
                continue;
            }
            // start < to < end: descend towards `to`.
            let mut cur = node;
            loop {
                let (left, right) = cur.children();
                drop(cur);
                let (mid, _) = right.range();
                if to128 < mid {
                    rights.push(right);
                    cur = left;
                } else if to128 == mid {
                    drop(left);
                    rights.push(right);
                    break;
                } else {
                    drop(left);
                    cur = right;
                }
            }
            out.extend(rights.drain(..).rev());
        }
        out.extend(rights.drain(..).rev());
        self.nodes = out;
        self.next = to;
    }

    /// The leaf seed of `round`, or `None` if it was deleted (`round < next`). The frontier is
    /// not changed (callers advance it once the round is used).
    pub fn leaf(&self, round: u64) -> Option<Zeroizing<[u8; 32]>> {
        if round < self.next {
            return None;
        }
        let r = u128::from(round);
        let node = self.nodes.iter().find(|n| {
            let (s, e) = n.range();
            s <= r && r < e
        })?;
        let mut seed = Zeroizing::new(node.seed);
        for level in u32::from(node.depth)..64 {
            let bit = ((round >> (63 - level)) & 1) as u8;
            let next = prg(&seed, bit);
            *seed = next;
        }
        Some(seed)
    }

    /// `next (u64 LE) || count (u8) || count * (depth (u8) || prefix (u64 LE) || seed (32))`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.next.to_le_bytes());
        out.push(self.nodes.len() as u8);
        for n in &self.nodes {
            out.push(n.depth);
            out.extend_from_slice(&n.prefix.to_le_bytes());
            out.extend_from_slice(&n.seed);
        }
    }

    /// Decodes from the front of `input` (advancing it) and checks the frontier's invariant.
    pub fn decode(input: &mut &[u8]) -> Result<Self, Error> {
        let bad = |why: &str| Error::Corrupt(format!("ratchet tree: {why}"));
        let next = take_u64(input).ok_or_else(|| bad("truncated"))?;
        let count = usize::from(take(input, 1).ok_or_else(|| bad("truncated"))?[0]);
        if count == 0 || count > MAX_NODES {
            return Err(bad("node count"));
        }
        let mut nodes = Vec::with_capacity(MAX_NODES);
        let mut expect = u128::from(next);
        for _ in 0..count {
            let depth = take(input, 1).ok_or_else(|| bad("truncated"))?[0];
            let prefix = take_u64(input).ok_or_else(|| bad("truncated"))?;
            let seed_bytes = take(input, 32).ok_or_else(|| bad("truncated"))?;
            if depth > 64 || (depth < 64 && prefix >> depth != 0) {
                return Err(bad("node out of range"));
            }
            let mut seed = [0u8; 32];
            seed.copy_from_slice(seed_bytes);
            let node = Node {
                depth,
                prefix,
                seed,
            };
            let (start, end) = node.range();
            if start != expect {
                return Err(bad("frontier is not contiguous"));
            }
            expect = end;
            nodes.push(node);
        }
        if expect != 1u128 << 64 {
            return Err(bad("frontier does not reach the last round"));
        }
        Ok(Self { next, nodes })
    }
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Some(head)
}

fn take_u64(input: &mut &[u8]) -> Option<u64> {
    let b = take(input, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// The next epoch's tree of a direction, waiting for its switch round.
#[derive(Debug, Clone, Zeroize, ZeroizeOnDrop)]
pub struct Pending {
    /// The tree of the next epoch.
    pub tree: GgmTree,
    /// The first round it is used for (`None`: the writer has not learned it yet).
    pub start: Option<u64>,
}

/// The key state of one direction of a pair.
#[derive(Debug, Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct Direction {
    /// The tree in use (`None`: epoch 0, the static bootstrap keys).
    pub cur: Option<GgmTree>,
    /// The next epoch's tree, until its switch round.
    pub next: Option<Pending>,
}

impl Direction {
    /// Switches to the next epoch's tree if `round` is at or past its switch round: the old
    /// tree is deleted.
    pub fn promote(&mut self, round: u64) {
        let due = matches!(&self.next, Some(Pending { start: Some(s), .. }) if round >= *s);
        if due && let Some(mut p) = self.next.take() {
            let tree = std::mem::replace(&mut p.tree, GgmTree::new(&[0; 32]));
            self.cur = Some(tree);
        }
    }

    /// The keys of `round` (switching first if due; deleting every seed below `round`), or
    /// `None` if `round` was already used.
    fn keys(
        &mut self,
        round: u64,
        statics: &DirectionKeys,
        sender: &[u8; 32],
        recipient: &[u8; 32],
    ) -> Option<DirectionKeys> {
        self.promote(round);
        match &mut self.cur {
            None => Some(statics.clone()),
            Some(t) => {
                t.advance(round);
                let leaf = t.leaf(round)?;
                Some(DirectionKeys::from_leaf(&leaf, sender, recipient))
            }
        }
    }

    /// The keys of `round` without changing anything (for tests and diagnostics).
    fn peek(
        &self,
        round: u64,
        statics: &DirectionKeys,
        sender: &[u8; 32],
        recipient: &[u8; 32],
    ) -> Option<DirectionKeys> {
        let tree = match &self.next {
            Some(Pending {
                start: Some(s),
                tree,
            }) if round >= *s => Some(tree),
            _ => self.cur.as_ref(),
        };
        match tree {
            None => Some(statics.clone()),
            Some(t) => Some(DirectionKeys::from_leaf(
                &*t.leaf(round)?,
                sender,
                recipient,
            )),
        }
    }

    /// `round` is used: delete its leaf and everything below, in both trees.
    pub fn consumed(&mut self, round: u64) {
        let to = round.saturating_add(1);
        if let Some(t) = &mut self.cur {
            t.advance(to);
        }
        if let Some(p) = &mut self.next {
            p.tree.advance(to.max(p.start.unwrap_or(0)));
        }
    }

    /// `Direction` encoding: `cur (0 | 1 tree) || next (0 | 1 || start (0 | 1 u64) || tree)`.
    fn encode(&self, out: &mut Vec<u8>) {
        match &self.cur {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                t.encode(out);
            }
        }
        match &self.next {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                match p.start {
                    None => out.push(0),
                    Some(s) => {
                        out.push(1);
                        out.extend_from_slice(&s.to_le_bytes());
                    }
                }
                p.tree.encode(out);
            }
        }
    }

    fn decode(mut input: &[u8]) -> Result<Self, Error> {
        let bad = |why: &str| Error::Corrupt(format!("ratchet direction: {why}"));
        let input = &mut input;
        let flag = |input: &mut &[u8]| -> Result<bool, Error> {
            match take(input, 1).map(|b| b[0]) {
                Some(0) => Ok(false),
                Some(1) => Ok(true),
                _ => Err(bad("bad flag")),
            }
        };
        let cur = if flag(input)? {
            Some(GgmTree::decode(input)?)
        } else {
            None
        };
        let next = if flag(input)? {
            let start = if flag(input)? {
                Some(take_u64(input).ok_or_else(|| bad("truncated"))?)
            } else {
                None
            };
            Some(Pending {
                tree: GgmTree::decode(input)?,
                start,
            })
        } else {
            None
        };
        if !input.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Self { cur, next })
    }

    /// Every seed held, in both trees (tests look for them in the store files).
    #[cfg(test)]
    pub(crate) fn seeds(&self) -> Vec<[u8; 32]> {
        let trees = self.cur.iter().chain(self.next.iter().map(|p| &p.tree));
        trees.flat_map(|t| t.nodes.iter().map(|n| n.seed)).collect()
    }

    /// The trees held (tests try every one of them as an attacker would).
    #[cfg(test)]
    pub(crate) fn trees(&self) -> Vec<&GgmTree> {
        self.cur
            .iter()
            .chain(self.next.iter().map(|p| &p.tree))
            .collect()
    }

    /// Encoded form, for the store.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(2 + 2 * (9 + MAX_NODES * 41) + 9));
        self.encode(&mut out);
        out
    }

    /// Decodes the store's form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        Self::decode(bytes)
    }
}

/// A side's announcement, carried in the last [`KEY_BLOCK_LEN`] bytes of its frames:
/// `epoch (u32 LE) || ephemeral public key (32) || switch round (u64 LE, 0 = not chosen)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Zeroize)]
pub struct KeyBlock {
    /// The epoch the step leads to.
    pub epoch: u32,
    /// The sender's ephemeral X25519 public key for that epoch.
    pub public: [u8; 32],
    /// From this array round on, the sender reads the recipient's direction under the new
    /// epoch (`None` until the sender has chosen).
    pub switch: Option<u64>,
}

impl KeyBlock {
    /// Encodes to [`KEY_BLOCK_LEN`] bytes.
    pub fn encode(&self) -> [u8; KEY_BLOCK_LEN] {
        let mut out = [0u8; KEY_BLOCK_LEN];
        out[..4].copy_from_slice(&self.epoch.to_le_bytes());
        out[4..36].copy_from_slice(&self.public);
        out[36..].copy_from_slice(&self.switch.unwrap_or(0).to_le_bytes());
        out
    }

    /// Decodes; `None` unless exactly [`KEY_BLOCK_LEN`] bytes with a non-zero epoch.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != KEY_BLOCK_LEN {
            return None;
        }
        let mut e = [0u8; 4];
        e.copy_from_slice(&bytes[..4]);
        let mut public = [0u8; 32];
        public.copy_from_slice(&bytes[4..36]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&bytes[36..]);
        let epoch = u32::from_le_bytes(e);
        let switch = u64::from_le_bytes(s);
        (epoch != 0).then_some(Self {
            epoch,
            public,
            switch: (switch != 0).then_some(switch),
        })
    }
}

/// The two public keys of a pair and its bootstrap keys, seen from one side.
#[derive(Debug, Clone)]
pub struct PairCtx {
    /// My X25519 public key.
    pub me: [u8; 32],
    /// The contact's.
    pub them: [u8; 32],
    /// The static bootstrap keys (epoch 0) and `chain_0`.
    pub statics: PairKeys,
}

/// What [`Ratchet::on_block`] did with the peer's key block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOutcome {
    /// A new epoch's root was computed (and maybe our switch round chosen).
    NewEpoch,
    /// The peer's switch round was learned (and maybe ours chosen).
    SwitchLearned,
    /// Nothing new.
    Ignored,
}

/// One side's forward-secrecy state for one contact.
#[derive(Debug, Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct Ratchet {
    /// DH steps done (0: the bootstrap keys).
    pub epoch: u32,
    /// The round in which this side computed the current epoch's root.
    pub established: u64,
    /// `chain_epoch` (`None` in epoch 0: `chain_0` comes from the static keys).
    pub(crate) chain: Option<Secret32>,
    /// The pending ephemeral secret of a step this side started (for epoch `epoch + 1`).
    pub(crate) eph: Option<Secret32>,
    /// This side's announcement, sent until confirmed.
    pub block: Option<KeyBlock>,
    /// Them -> me.
    pub incoming: Direction,
    /// Me -> them.
    pub outgoing: Direction,
}

impl Ratchet {
    /// The state of a new pair: epoch 0, bootstrap keys, no step started.
    pub fn new() -> Self {
        Self::default()
    }

    /// The chain key and the pending ephemeral secret (tests look for them in the store).
    #[cfg(test)]
    pub(crate) fn secrets(&self) -> Vec<[u8; 32]> {
        self.chain
            .iter()
            .chain(self.eph.iter())
            .map(|c| c.0)
            .collect()
    }

    /// Whether this side should start a DH step in `round`: nothing is pending (no secret, no
    /// unconfirmed block, both directions on the current epoch) and the epoch is 0 or
    /// `heal_every` rounds old.
    pub fn wants_step(&self, round: u64, heal_every: u64) -> bool {
        self.eph.is_none()
            && self.block.is_none()
            && self.incoming.next.is_none()
            && self.outgoing.next.is_none()
            && (self.epoch == 0 || round >= self.established.saturating_add(heal_every))
    }

    /// Starts a DH step: draws and keeps the ephemeral secret and announces its public key.
    pub fn start_step(&mut self, rng: &mut impl RandomSource) {
        let mut secret = Secret32([0u8; 32]);
        rng.fill(&mut secret.0);
        let public = PublicKey::from(&StaticSecret::from(secret.0)).to_bytes();
        self.eph = Some(secret);
        self.block = Some(KeyBlock {
            epoch: self.epoch.saturating_add(1),
            public,
            switch: None,
        });
    }

    /// The keys to write `round` with (deleting what lies below), or `None` if `round` was
    /// already written.
    pub fn outgoing_keys(&mut self, round: u64, pair: &PairCtx) -> Option<DirectionKeys> {
        self.outgoing
            .keys(round, &pair.statics.outgoing, &pair.me, &pair.them)
    }

    /// The keys to read array round `array` with (deleting what lies below), or `None` if it
    /// was already read.
    pub fn incoming_keys(&mut self, array: u64, pair: &PairCtx) -> Option<DirectionKeys> {
        self.incoming
            .keys(array, &pair.statics.incoming, &pair.them, &pair.me)
    }

    /// The outgoing keys of `round`, changing nothing.
    pub fn peek_outgoing(&self, round: u64, pair: &PairCtx) -> Option<DirectionKeys> {
        self.outgoing
            .peek(round, &pair.statics.outgoing, &pair.me, &pair.them)
    }

    /// The incoming keys of `round`, changing nothing.
    pub fn peek_incoming(&self, round: u64, pair: &PairCtx) -> Option<DirectionKeys> {
        self.incoming
            .peek(round, &pair.statics.incoming, &pair.them, &pair.me)
    }

    /// A frame of the peer's from array round `array` decrypted: if it lies at or after our
    /// announced switch round, the peer knew our block, which is confirmed and no longer sent.
    pub fn on_decrypted(&mut self, array: u64) {
        if let Some(b) = &self.block
            && b.epoch == self.epoch
            && b.switch.is_some_and(|s| array >= s)
        {
            self.block = None;
        }
    }

    /// Picks our switch round for the peer's direction: `round + margin`.
    fn choose(&mut self, round: u64, margin: u64) {
        let s = round.saturating_add(margin).max(1);
        if let Some(p) = &mut self.incoming.next {
            p.start = Some(s);
            p.tree.advance(s);
        }
        if let Some(b) = &mut self.block {
            b.switch = Some(s);
        }
    }

    /// Processes the peer's key block, read in `round` from a frame of array round `array`.
    /// `margin`: rounds between choosing a switch round and reading under it.
    pub fn on_block(
        &mut self,
        peer: &KeyBlock,
        round: u64,
        array: u64,
        margin: u64,
        pair: &PairCtx,
        rng: &mut impl RandomSource,
    ) -> BlockOutcome {
        if peer.epoch == self.epoch && self.epoch >= 1 {
            // The root is computed; what may be new is the peer's switch round.
            let Some(s) = peer.switch else {
                return BlockOutcome::Ignored;
            };
            let Some(p) = &mut self.outgoing.next else {
                return BlockOutcome::Ignored;
            };
            if p.start.is_some() {
                return BlockOutcome::Ignored;
            }
            p.start = Some(s);
            p.tree.advance(s.max(round.saturating_add(1)));
            // The second chooser picks once it knows the first one's round.
            if self
                .incoming
                .next
                .as_ref()
                .is_some_and(|p| p.start.is_none())
            {
                self.choose(round, margin);
            }
            return BlockOutcome::SwitchLearned;
        }
        if peer.epoch != self.epoch.saturating_add(1) {
            return BlockOutcome::Ignored;
        }
        // A new step. The peer sends one only once both our directions use the current epoch;
        // anything else is ignored (the peer repeats its block).
        self.outgoing.promote(round.saturating_add(1));
        self.incoming.promote(array.saturating_add(1));
        if self.incoming.next.is_some() || self.outgoing.next.is_some() {
            return BlockOutcome::Ignored;
        }
        // Our half: the pending secret of a step we started, or a fresh one (never stored).
        let initiated = self.eph.is_some();
        let secret = match self.eph.take() {
            Some(s) => s,
            None => {
                let mut s = Secret32([0u8; 32]);
                rng.fill(&mut s.0);
                s
            }
        };
        let secret = StaticSecret::from(secret.0);
        let public = PublicKey::from(&secret).to_bytes();
        let shared = secret.diffie_hellman(&PublicKey::from(peer.public));
        drop(secret);
        if !shared.was_contributory() {
            // Only the (authenticated) peer can send this; it breaks only its own pair.
            tracing::warn!("ignoring a low-order ephemeral key from a contact");
            return BlockOutcome::Ignored;
        }
        let salt = Zeroizing::new(match &self.chain {
            Some(c) => c.0,
            None => pair.statics.chain.0,
        });
        let root = Hkdf::<Sha256>::new(Some(&salt[..]), shared.as_bytes());
        drop(shared);
        let expand = |parts: &[&[u8]]| {
            let mut out = Secret32([0u8; 32]);
            root.expand_multi_info(parts, &mut out.0)
                .unwrap_or_else(|_| unreachable!("32-byte HKDF output"));
            out
        };
        let chain = expand(&[b"mpm/chain/v1"]);
        let tree_out = expand(&[b"mpm/tree/v1", &pair.me, &pair.them]);
        let tree_in = expand(&[b"mpm/tree/v1", &pair.them, &pair.me]);
        let mut outgoing = GgmTree::new(&tree_out.0);
        outgoing.advance(peer.switch.unwrap_or(0).max(round.saturating_add(1)));
        let mut incoming = GgmTree::new(&tree_in.0);
        incoming.advance(array.saturating_add(1));
        self.outgoing.next = Some(Pending {
            tree: outgoing,
            start: peer.switch,
        });
        self.incoming.next = Some(Pending {
            tree: incoming,
            start: None,
        });
        self.chain = Some(chain); // the previous chain key is zeroized on drop
        self.epoch = self.epoch.saturating_add(1);
        self.established = round;
        self.block = Some(KeyBlock {
            epoch: self.epoch,
            public,
            switch: None,
        });
        // Who picks a switch round now: the second chooser (the peer has picked), the
        // responder, or, when both started at once, the side with the lower static key.
        let first = !initiated || pair.me < pair.them;
        if peer.switch.is_some() || first {
            self.choose(round, margin);
        }
        BlockOutcome::NewEpoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpf::SeededRandom;

    fn prg_calls() -> u64 {
        PRG_CALLS.with(|c| c.get())
    }

    /// The leaf of `round` by descending from the root, for comparison.
    fn naive_leaf(seed: &[u8; 32], round: u64) -> [u8; 32] {
        let mut s = *seed;
        for level in 0..64 {
            s = prg(&s, ((round >> (63 - level)) & 1) as u8);
        }
        s
    }

    #[test]
    fn ggm_leaves_survive_advancing_and_used_rounds_are_gone() {
        let seed = [7u8; 32];
        let mut t = GgmTree::new(&seed);
        let mut rng = SeededRandom::new([1; 32]);
        let mut r = 0u64;
        for _ in 0..200 {
            let mut b = [0u8; 2];
            rng.fill(&mut b);
            r += u64::from(u16::from_le_bytes(b) % 37);
            t.advance(r);
            assert!(t.len() <= MAX_NODES && !t.is_empty());
            assert_eq!(t.leaf(r).as_deref(), Some(&naive_leaf(&seed, r)));
            assert_eq!(t.leaf(r + 5).as_deref(), Some(&naive_leaf(&seed, r + 5)));
            if r > 0 {
                assert!(t.leaf(r - 1).is_none(), "a used round's leaf is gone");
            }
            // The frontier holds no seed of any round below r: every node starts at or after r.
            assert!(t.nodes.iter().all(|n| n.range().0 >= u128::from(r)));
        }
        let mut last = GgmTree::new(&seed);
        last.advance(u64::MAX);
        assert_eq!(last.len(), 1);
        assert_eq!(
            last.leaf(u64::MAX).as_deref(),
            Some(&naive_leaf(&seed, u64::MAX))
        );
    }

    #[test]
    fn ggm_skips_far_ahead_cheaply() {
        let seed = [9u8; 32];
        let mut t = GgmTree::new(&seed);
        t.advance(1000);
        let before = prg_calls();
        // An offline client coming back after ~10^12 rounds.
        let far = (1u64 << 40) + 12_345;
        t.advance(far);
        let leaf = t.leaf(far);
        let used = prg_calls() - before;
        assert!(used <= 3 * 64, "{used} PRG calls to skip 2^40 rounds");
        assert!(t.len() <= MAX_NODES);
        assert_eq!(leaf.as_deref(), Some(&naive_leaf(&seed, far)));
    }

    #[test]
    fn ggm_encoding_round_trips_and_rejects_garbage() -> Result<(), Error> {
        let mut t = GgmTree::new(&[3; 32]);
        t.advance(123_456_789);
        let mut bytes = Vec::new();
        t.encode(&mut bytes);
        let back = GgmTree::decode(&mut bytes.as_slice())?;
        assert_eq!(back.next(), t.next());
        assert_eq!(back.leaf(123_456_800), t.leaf(123_456_800));
        // A node out of range, a truncated frontier and one that does not reach the end.
        let mut gap = bytes.clone();
        gap[9] = 0xff; // depth of the first node
        assert!(GgmTree::decode(&mut gap.as_slice()).is_err());
        assert!(GgmTree::decode(&mut &bytes[..bytes.len() - 1]).is_err());
        let mut short = bytes.clone();
        short[8] -= 1;
        short.truncate(bytes.len() - 41);
        assert!(GgmTree::decode(&mut short.as_slice()).is_err());
        let mut d = Direction {
            cur: Some(t.clone()),
            next: Some(Pending {
                tree: GgmTree::new(&[4; 32]),
                start: None,
            }),
        };
        let back = Direction::from_bytes(&d.to_bytes())?;
        assert_eq!(back.next.as_ref().and_then(|p| p.start), None);
        d.next = None;
        d.cur = None;
        let back = Direction::from_bytes(&d.to_bytes())?;
        assert!(back.cur.is_none() && back.next.is_none());
        assert!(Direction::from_bytes(&[2, 0]).is_err());
        Ok(())
    }

    #[test]
    fn key_blocks_round_trip() {
        for switch in [None, Some(1), Some(u64::MAX)] {
            let b = KeyBlock {
                epoch: 3,
                public: [5; 32],
                switch,
            };
            assert_eq!(KeyBlock::decode(&b.encode()), Some(b));
        }
        assert_eq!(KeyBlock::decode(&[0u8; KEY_BLOCK_LEN]), None, "epoch 0");
        assert_eq!(KeyBlock::decode(&[1u8; KEY_BLOCK_LEN - 1]), None);
    }

    // ---- two sides, simulated ----
    //
    // Each side writes one frame to the other every round (the real schedule writes every w
    // rounds; that only scales time). The frame of round r reaches the peer in round r + LAG,
    // and only if the peer is online, the frame is not lost, *and the peer reads array round r
    // with the key the writer used*: exactly the condition under which a real slot decrypts.

    const LAG: u64 = 2;
    const MARGIN: u64 = 9;

    fn pair_ctx(me: u8, them: u8) -> Result<PairCtx, Error> {
        let my = StaticSecret::from([me; 32]);
        let their = PublicKey::from(&StaticSecret::from([them; 32])).to_bytes();
        Ok(PairCtx {
            me: PublicKey::from(&my).to_bytes(),
            them: their,
            statics: PairKeys::derive(&my, &their)?,
        })
    }

    struct Side {
        r: Ratchet,
        ctx: PairCtx,
        rng: SeededRandom,
        /// Per round written: the K_addr used and the key block carried.
        wrote: std::collections::HashMap<u64, ([u8; 32], Option<KeyBlock>)>,
        /// Whether this side starts steps itself (else it only answers).
        starts: bool,
        /// No step is started from this round on.
        stop_at: u64,
    }

    impl Side {
        fn new(me: u8, them: u8) -> Result<Self, Error> {
            Ok(Self {
                r: Ratchet::new(),
                ctx: pair_ctx(me, them)?,
                rng: SeededRandom::new([me; 32]),
                wrote: Default::default(),
                starts: true,
                stop_at: u64::MAX,
            })
        }

        fn write(&mut self, round: u64, heal: u64) {
            self.r.outgoing.promote(round);
            if self.starts && round < self.stop_at && self.r.wants_step(round, heal) {
                self.r.start_step(&mut self.rng);
            }
            if let Some(k) = self.r.outgoing_keys(round, &self.ctx) {
                self.wrote.insert(round, (k.addr_key(), self.r.block));
            }
            self.r.outgoing.consumed(round);
        }

        /// Reads array round `round - LAG` of `peer`'s writes; true if it decrypted.
        fn read(&mut self, round: u64, peer: &Side, lost: bool) -> bool {
            let Some(array) = round.checked_sub(LAG) else {
                return false;
            };
            let key = self.r.incoming_keys(array, &self.ctx).map(|k| k.addr_key());
            let frame = peer.wrote.get(&array).copied();
            let mut ok = false;
            if let (Some(k), Some((wk, block))) = (key, frame)
                && k == wk
                && !lost
            {
                ok = true;
                self.r.on_decrypted(array);
                if let Some(b) = block {
                    let ctx = self.ctx.clone();
                    self.r
                        .on_block(&b, round, array, MARGIN, &ctx, &mut self.rng);
                }
            }
            self.r.incoming.consumed(array);
            ok
        }
    }

    /// Runs A and B for `rounds`; `down(side, round)` says a side is offline, `lost(side,
    /// round)` that the frame read by `side` is lost. Returns the array rounds each side
    /// decrypted (A's reads of B, B's reads of A).
    fn run(
        a: &mut Side,
        b: &mut Side,
        rounds: std::ops::Range<u64>,
        heal: u64,
        down: &dyn Fn(usize, u64) -> bool,
        lost: &dyn Fn(usize, u64) -> bool,
    ) -> [Vec<u64>; 2] {
        let mut got: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        for r in rounds {
            if !down(0, r) {
                a.write(r, heal);
            }
            if !down(1, r) {
                b.write(r, heal);
            }
            if !down(0, r) && a.read(r, b, lost(0, r)) {
                got[0].push(r - LAG);
            }
            if !down(1, r) && b.read(r, a, lost(1, r)) {
                got[1].push(r - LAG);
            }
        }
        got
    }

    fn never(_: usize, _: u64) -> bool {
        false
    }

    /// Both sides on the same epoch, nothing pending, and the same keys for future rounds in
    /// each direction; the two directions differ.
    fn check_agreement(a: &Side, b: &Side, from: u64) {
        assert_eq!(a.r.epoch, b.r.epoch);
        for r in from..from + 50 {
            let ao = a.r.peek_outgoing(r, &a.ctx).map(|k| k.addr_key());
            let bi = b.r.peek_incoming(r, &b.ctx).map(|k| k.addr_key());
            let bo = b.r.peek_outgoing(r, &b.ctx).map(|k| k.addr_key());
            let ai = a.r.peek_incoming(r, &a.ctx).map(|k| k.addr_key());
            assert!(ao.is_some() && bo.is_some());
            assert_eq!(ao, bi, "A -> B keys of round {r}");
            assert_eq!(bo, ai, "B -> A keys of round {r}");
            assert_ne!(ao, bo, "the two directions differ");
        }
    }

    fn settled(s: &Side) -> bool {
        s.r.eph.is_none()
            && s.r.block.is_none()
            && s.r.incoming.next.is_none()
            && s.r.outgoing.next.is_none()
    }

    #[test]
    fn both_sides_derive_the_same_keys_after_each_step() -> Result<(), Error> {
        let (mut a, mut b) = (Side::new(1, 2)?, Side::new(2, 1)?);
        // Steps every 100 rounds until round 400, then quiet.
        (a.stop_at, b.stop_at) = (400, 400);
        let got = run(&mut a, &mut b, 0..600, 100, &never, &never);
        assert!(a.r.epoch >= 4, "epoch {}", a.r.epoch);
        assert!(settled(&a) && settled(&b));
        check_agreement(&a, &b, 600);
        check_agreement(&b, &a, 600);
        // With no loss, every frame is read with the key it was written with, through every
        // switch: the switch rounds were learned in time.
        for g in &got {
            assert_eq!(g.len(), 598, "{:?}", (0..598).find(|r| !g.contains(r)));
        }
        Ok(())
    }

    #[test]
    fn only_one_side_starts_and_the_other_answers() -> Result<(), Error> {
        for (me, them) in [(3, 4), (4, 3)] {
            let (mut a, mut b) = (Side::new(me, them)?, Side::new(them, me)?);
            b.starts = false;
            let got = run(&mut a, &mut b, 0..60, 10_000, &never, &never);
            assert_eq!((a.r.epoch, b.r.epoch), (1, 1));
            assert!(settled(&a) && settled(&b), "no secret or block pending");
            check_agreement(&a, &b, 60);
            assert!(got[0].contains(&57) && got[1].contains(&57));
        }
        Ok(())
    }

    #[test]
    fn lost_frames_and_absences_only_delay_the_step() -> Result<(), Error> {
        // Random loss (up to 90% of the frames) and random absences of either side, over many
        // seeds: every run ends with both sides on the same epoch, nothing pending, and the
        // same keys. (A deadlock would leave a block pending forever.)
        for seed in 0u8..12 {
            let (mut a, mut b) = (
                Side::new(10 + seed, 200 - seed)?,
                Side::new(200 - seed, 10 + seed)?,
            );
            (a.stop_at, b.stop_at) = (1_000, 1_000);
            let loss = u64::from(seed % 4) * 300; // per mille: up to 90%
            let noise = |side: usize, r: u64, salt: u64| {
                let mut x = r ^ (salt << 40) ^ ((side as u64) << 50) ^ (u64::from(seed) << 56);
                x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                x ^= x >> 29;
                x.wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 32
            };
            let lost = move |side: usize, r: u64| noise(side, r, 1) % 1000 < loss;
            // Absences: windows of 30 to 300 rounds, about a third of the time.
            let down = move |side: usize, r: u64| {
                let window = r / 97;
                noise(side, window, 2) % 3 == 0 && r % 97 < 30 + noise(side, window, 3) % 67
            };
            run(&mut a, &mut b, 0..1_000, 60, &down, &lost);
            // Then a quiet period with both online and no loss.
            run(&mut a, &mut b, 1_000..1_600, 60, &never, &never);
            assert!(a.r.epoch >= 2, "seed {seed}: epoch {}", a.r.epoch);
            assert!(settled(&a) && settled(&b), "seed {seed}: a step is stuck");
            check_agreement(&a, &b, 1_600);
        }
        Ok(())
    }

    #[test]
    fn both_start_at_once_and_one_leaves_right_after_computing_the_root() -> Result<(), Error> {
        // The case that deadlocks if both sides pick switch rounds independently: both start
        // the step, each computes the root from the other's first block, and the side that
        // would announce first disappears before its announcement gets through.
        for (me, them) in [(20, 21), (21, 20)] {
            let (mut a, mut b) = (Side::new(me, them)?, Side::new(them, me)?);
            // Round 0: both blocks go out; round 2: each computes the root from the other's;
            // B leaves before writing round 3, its first frame with a switch round.
            let away = |side: usize, r: u64| side == 1 && (3..400).contains(&r);
            run(&mut a, &mut b, 0..500, 10_000, &away, &never);
            assert_eq!((a.r.epoch, b.r.epoch), (1, 1));
            assert!(settled(&a) && settled(&b));
            check_agreement(&a, &b, 500);
        }
        Ok(())
    }

    #[test]
    fn a_side_offline_for_many_rounds_catches_up_cheaply() -> Result<(), Error> {
        let (mut a, mut b) = (Side::new(5, 6)?, Side::new(6, 5)?);
        run(&mut a, &mut b, 0..200, 10_000, &never, &never);
        assert!(settled(&a) && settled(&b));
        // B is away for 2^40 rounds: it skips its trees ahead in a few HMACs.
        let back = 200 + (1u64 << 40);
        let before = prg_calls();
        let got = run(&mut a, &mut b, back..back + 20, 10_000, &never, &never);
        assert!(prg_calls() - before < 20 * 400, "{}", prg_calls() - before);
        assert_eq!(
            got[1].len(),
            18,
            "B reads every frame of A's after its return"
        );
        check_agreement(&a, &b, back + 20);
        Ok(())
    }

    #[test]
    fn blocks_that_do_not_fit_the_state_are_ignored() -> Result<(), Error> {
        let mut a = Side::new(7, 8)?;
        let mut b = Side::new(8, 7)?;
        a.r.start_step(&mut a.rng);
        let first = a.r.block.ok_or(Error::Crypto("no block"))?;
        let ctx = b.ctx.clone();
        assert_eq!(
            b.r.on_block(&first, 10, 8, MARGIN, &ctx, &mut b.rng),
            BlockOutcome::NewEpoch
        );
        // B answered (no step of its own): it picks its switch round at once.
        assert_eq!(b.r.block.and_then(|k| k.switch), Some(10 + MARGIN));
        assert!(b.r.eph.is_none(), "the responder's secret is never kept");
        // An epoch-2 block now (before B's directions switched) is ignored; so are repeats.
        let early = KeyBlock {
            epoch: 2,
            public: [9; 32],
            switch: None,
        };
        assert_eq!(
            b.r.on_block(&early, 11, 9, MARGIN, &ctx, &mut b.rng),
            BlockOutcome::Ignored
        );
        assert_eq!(
            b.r.on_block(&first, 12, 10, MARGIN, &ctx, &mut b.rng),
            BlockOutcome::Ignored
        );
        assert_eq!(b.r.epoch, 1);
        // A low-order ephemeral key is refused.
        let mut c = Side::new(9, 8)?;
        let ctx_c = c.ctx.clone();
        let weak = KeyBlock {
            epoch: 1,
            public: [0; 32],
            switch: None,
        };
        assert_eq!(
            c.r.on_block(&weak, 5, 3, MARGIN, &ctx_c, &mut c.rng),
            BlockOutcome::Ignored
        );
        assert_eq!(c.r.epoch, 0);
        Ok(())
    }
}
