//! Pair keys, slot addressing and slot encryption (docs/protocol.md §5.1).
//!
//! * Pair root: `HKDF-SHA-256(salt = "mpm/pair-root/v1" || lo || hi, ikm = X25519(me, them))`
//!   where `lo`, `hi` are the two public keys in sorted order. Both sides derive the same root.
//!   These *bootstrap* keys serve only until the pair's first ephemeral exchange takes effect
//!   ([`crate::ratchet`]); the static root also gives the chain key `chain_0 =
//!   HKDF-Expand(root, "mpm/chain/v1")` that the first exchange is mixed into.
//! * Direction `S -> R` (bootstrap epoch): `K_addr = HKDF-Expand(root, "mpm/addr/v1" || S || R)`
//!   and `K_aead = HKDF-Expand(root, "mpm/aead/v1" || S || R)`. The labels carry the sender's and
//!   the recipient's public keys in that order, so `A -> B` and `B -> A` get independent keys
//!   (were they equal, both sides would write to the same slot every round and collide).
//! * Direction `S -> R`, round r, epoch >= 1: from the GGM leaf `x_r` of the direction's tree
//!   ([`crate::ratchet::GgmTree`]), `K_addr = HKDF-Expand(x_r, "mpm/addr/v2" || S || R)` and
//!   `K_aead = HKDF-Expand(x_r, "mpm/aead/v2" || S || R)` ([`DirectionKeys::from_leaf`]).
//! * Slot of round r: `HMAC-SHA-256(K_addr, "slot" || r (u64 LE))`, first 8 bytes as u64 LE,
//!   reduced mod N = 2^domain_bits (a power of two, so the reduction is unbiased).
//! * Round key: `K_round = HKDF-Expand(K_aead, "mpm/round/v1" || r)`. The AEAD is
//!   XChaCha20-Poly1305 with a fresh random 24-byte nonce stored at the front of the slot and
//!   associated data `"mpm/slot/v1" || r || slot || S || R`. A slot is therefore
//!   `nonce (24) || ciphertext || tag (16)`, exactly L bytes, indistinguishable from random.
//! * The self-pair (padding to one's own slot) uses the same construction with keys expanded
//!   from the local random self-pair key and the label `"self"`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use dpf::RandomSource;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::Error;

/// Bytes a slot spends on the nonce and the tag.
pub const SLOT_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// The keys of one direction of one pair (or of the self-pair).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DirectionKeys {
    addr: [u8; 32],
    aead: [u8; 32],
    /// `sender public key || recipient public key`, or `"self"` padded with zeros.
    label: [u8; 64],
}

impl std::fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectionKeys").finish_non_exhaustive()
    }
}

/// A 32-byte secret: redacted in `Debug`, zeroized when dropped.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Secret32(pub(crate) [u8; 32]);

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret32(..)")
    }
}

/// Both directions of a pair under the bootstrap (static) keys, seen from one side.
#[derive(Debug, Clone)]
pub struct PairKeys {
    /// Me -> them: the slot I write to, the key I encrypt with.
    pub outgoing: DirectionKeys,
    /// Them -> me: the slot I read, the key I decrypt with.
    pub incoming: DirectionKeys,
    /// `chain_0`: the chain key the pair's first ephemeral exchange is mixed into.
    pub(crate) chain: Secret32,
}

impl PairKeys {
    /// Derives the pair keys between my static secret and a contact's public key.
    pub fn derive(my_secret: &StaticSecret, their_public: &[u8; 32]) -> Result<Self, Error> {
        let my_public = PublicKey::from(my_secret).to_bytes();
        if &my_public == their_public {
            return Err(Error::SelfContact);
        }
        let shared = my_secret.diffie_hellman(&PublicKey::from(*their_public));
        if !shared.was_contributory() {
            return Err(Error::WeakKey);
        }
        let (lo, hi) = if my_public < *their_public {
            (my_public, *their_public)
        } else {
            (*their_public, my_public)
        };
        let mut salt = Vec::with_capacity(16 + 64);
        salt.extend_from_slice(b"mpm/pair-root/v1");
        salt.extend_from_slice(&lo);
        salt.extend_from_slice(&hi);
        let root = Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes());
        let mut chain = Secret32([0u8; 32]);
        root.expand(b"mpm/chain/v1", &mut chain.0)
            .unwrap_or_else(|_| unreachable!("32-byte HKDF output"));
        Ok(Self {
            outgoing: DirectionKeys::from_root(&root, &my_public, their_public),
            incoming: DirectionKeys::from_root(&root, their_public, &my_public),
            chain,
        })
    }
}

impl DirectionKeys {
    fn from_root(root: &Hkdf<Sha256>, sender: &[u8; 32], recipient: &[u8; 32]) -> Self {
        let mut label = [0u8; 64];
        label[..32].copy_from_slice(sender);
        label[32..].copy_from_slice(recipient);
        Self::expand(root, label)
    }

    fn expand(root: &Hkdf<Sha256>, label: [u8; 64]) -> Self {
        Self::expand_labelled(root, b"mpm/addr/v1", b"mpm/aead/v1", label)
    }

    fn expand_labelled(
        root: &Hkdf<Sha256>,
        addr_label: &[u8],
        aead_label: &[u8],
        label: [u8; 64],
    ) -> Self {
        let mut addr = [0u8; 32];
        let mut aead = [0u8; 32];
        let mut info = Vec::with_capacity(16 + 64);
        info.extend_from_slice(addr_label);
        info.extend_from_slice(&label);
        // A 32-byte output is far below HKDF-SHA-256's limit of 8160 bytes.
        root.expand(&info, &mut addr)
            .unwrap_or_else(|_| unreachable!("32-byte HKDF output"));
        info.clear();
        info.extend_from_slice(aead_label);
        info.extend_from_slice(&label);
        root.expand(&info, &mut aead)
            .unwrap_or_else(|_| unreachable!("32-byte HKDF output"));
        Self { addr, aead, label }
    }

    /// The keys of one round of direction `sender -> recipient` in an epoch >= 1, from the
    /// round's GGM leaf: `K_addr = HKDF-Expand(leaf, "mpm/addr/v2" || S || R)`, `K_aead =
    /// HKDF-Expand(leaf, "mpm/aead/v2" || S || R)`. Valid for that round only.
    pub fn from_leaf(leaf: &[u8; 32], sender: &[u8; 32], recipient: &[u8; 32]) -> Self {
        let prk = Hkdf::<Sha256>::from_prk(leaf)
            .unwrap_or_else(|_| unreachable!("a 32-byte PRK is valid for HKDF-SHA-256"));
        let mut label = [0u8; 64];
        label[..32].copy_from_slice(sender);
        label[32..].copy_from_slice(recipient);
        Self::expand_labelled(&prk, b"mpm/addr/v2", b"mpm/aead/v2", label)
    }

    /// The address key (tests compare keys across sides).
    #[cfg(test)]
    pub(crate) fn addr_key(&self) -> [u8; 32] {
        self.addr
    }

    /// The self-pair keys, from the local random self-pair key.
    pub fn self_pair(self_key: &[u8; 32]) -> Self {
        let root = Hkdf::<Sha256>::new(Some(b"mpm/self-pair/v1"), self_key);
        let mut label = [0u8; 64];
        label[..4].copy_from_slice(b"self");
        Self::expand(&root, label)
    }

    /// The slot this direction uses in `round`, in `[0, 2^domain_bits)`.
    pub fn slot(&self, round: u64, domain_bits: u32) -> u64 {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.addr)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"slot");
        mac.update(&round.to_le_bytes());
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        let v = u64::from_le_bytes(first);
        if domain_bits >= 64 {
            v
        } else {
            v & ((1u64 << domain_bits) - 1)
        }
    }

    fn round_cipher(&self, round: u64) -> XChaCha20Poly1305 {
        let prk = Hkdf::<Sha256>::from_prk(&self.aead)
            .unwrap_or_else(|_| unreachable!("a 32-byte PRK is valid for HKDF-SHA-256"));
        let mut info = [0u8; 12 + 8];
        info[..12].copy_from_slice(b"mpm/round/v1");
        info[12..].copy_from_slice(&round.to_le_bytes());
        let mut key = Zeroizing::new([0u8; 32]);
        prk.expand(&info, &mut key[..])
            .unwrap_or_else(|_| unreachable!("32-byte HKDF output"));
        XChaCha20Poly1305::new(&chacha20poly1305::Key::from(*key))
    }

    fn associated_data(&self, round: u64, slot: u64) -> Vec<u8> {
        let mut ad = Vec::with_capacity(11 + 16 + 64);
        ad.extend_from_slice(b"mpm/slot/v1");
        ad.extend_from_slice(&round.to_le_bytes());
        ad.extend_from_slice(&slot.to_le_bytes());
        ad.extend_from_slice(&self.label);
        ad
    }

    /// Encrypts a frame for `(round, slot)`: returns `nonce || ciphertext || tag`,
    /// `plaintext.len() + SLOT_OVERHEAD` bytes.
    pub fn seal(
        &self,
        round: u64,
        slot: u64,
        plaintext: &[u8],
        rng: &mut impl RandomSource,
    ) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce);
        let ad = self.associated_data(round, slot);
        let ct = self
            .round_cipher(round)
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &ad,
                },
            )
            .map_err(|_| Error::Crypto("slot encryption failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts a slot read back for `(round, slot)`. `None` when it is not ours (another
    /// pair's data, an empty slot, a collision, or a corrupted answer): all look alike.
    pub fn open(&self, round: u64, slot: u64, data: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if data.len() < SLOT_OVERHEAD {
            return None;
        }
        let (nonce, ct) = data.split_at(NONCE_LEN);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        let ad = self.associated_data(round, slot);
        self.round_cipher(round)
            .decrypt(&XNonce::from(n), Payload { msg: ct, aad: &ad })
            .ok()
            .map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpf::SeededRandom;

    fn secret(seed: u8) -> StaticSecret {
        StaticSecret::from([seed; 32])
    }

    #[test]
    fn both_sides_derive_matching_keys() -> Result<(), Error> {
        let (a, b) = (secret(1), secret(2));
        let (pa, pb) = (
            PublicKey::from(&a).to_bytes(),
            PublicKey::from(&b).to_bytes(),
        );
        let ab = PairKeys::derive(&a, &pb)?;
        let ba = PairKeys::derive(&b, &pa)?;
        for r in 0..20 {
            assert_eq!(ab.outgoing.slot(r, 12), ba.incoming.slot(r, 12));
            assert_eq!(ab.incoming.slot(r, 12), ba.outgoing.slot(r, 12));
        }
        let mut rng = SeededRandom::new([1; 32]);
        let slot = ab.outgoing.slot(7, 12);
        let sealed = ab.outgoing.seal(7, slot, b"hello bob", &mut rng)?;
        assert_eq!(sealed.len(), 9 + SLOT_OVERHEAD);
        let opened = ba.incoming.open(7, slot, &sealed);
        assert_eq!(
            opened.as_deref().map(Vec::as_slice),
            Some(&b"hello bob"[..])
        );
        Ok(())
    }

    #[test]
    fn the_two_directions_differ() -> Result<(), Error> {
        let (a, b) = (secret(3), secret(4));
        let pb = PublicKey::from(&b).to_bytes();
        let ab = PairKeys::derive(&a, &pb)?;
        assert_ne!(ab.outgoing.addr, ab.incoming.addr);
        assert_ne!(ab.outgoing.aead, ab.incoming.aead);
        let same = (0..256)
            .filter(|&r| ab.outgoing.slot(r, 12) == ab.incoming.slot(r, 12))
            .count();
        // Independent slots collide with probability 2^-12 per round.
        assert!(same <= 2, "directions collide in {same} of 256 rounds");
        let mut rng = SeededRandom::new([2; 32]);
        let slot = ab.outgoing.slot(1, 12);
        let sealed = ab.outgoing.seal(1, slot, b"x", &mut rng)?;
        assert!(ab.incoming.open(1, slot, &sealed).is_none());
        Ok(())
    }

    #[test]
    fn ciphertext_is_bound_to_round_slot_and_pair() -> Result<(), Error> {
        let (a, b, c) = (secret(5), secret(6), secret(7));
        let (pa, pb) = (
            PublicKey::from(&a).to_bytes(),
            PublicKey::from(&b).to_bytes(),
        );
        let ab = PairKeys::derive(&a, &pb)?;
        let ba = PairKeys::derive(&b, &pa)?;
        let ca = PairKeys::derive(&c, &pa)?;
        let mut rng = SeededRandom::new([3; 32]);
        let sealed = ab.outgoing.seal(10, 99, b"payload", &mut rng)?;
        assert!(ba.incoming.open(10, 99, &sealed).is_some());
        assert!(ba.incoming.open(11, 99, &sealed).is_none());
        assert!(ba.incoming.open(10, 98, &sealed).is_none());
        assert!(ca.incoming.open(10, 99, &sealed).is_none());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(ba.incoming.open(10, 99, &flipped).is_none());
        assert!(ba.incoming.open(10, 99, &sealed[..10]).is_none());
        Ok(())
    }

    #[test]
    fn self_contact_and_low_order_keys_are_refused() {
        let a = secret(8);
        let pa = PublicKey::from(&a).to_bytes();
        assert!(matches!(PairKeys::derive(&a, &pa), Err(Error::SelfContact)));
        assert!(matches!(
            PairKeys::derive(&a, &[0u8; 32]),
            Err(Error::WeakKey)
        ));
    }

    #[test]
    fn slots_stay_in_the_domain_and_spread() {
        let keys = DirectionKeys::self_pair(&[9; 32]);
        let mut seen = std::collections::HashSet::new();
        for r in 0..1000 {
            let s = keys.slot(r, 10);
            assert!(s < 1024);
            seen.insert(s);
        }
        assert!(seen.len() > 500, "slots do not spread: {}", seen.len());
        assert_ne!(
            DirectionKeys::self_pair(&[9; 32]).slot(5, 20),
            DirectionKeys::self_pair(&[10; 32]).slot(5, 20)
        );
    }
}
