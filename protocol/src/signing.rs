//! Canonical signed byte strings and Ed25519 helpers.
//!
//! Every string starts with a distinct ASCII domain label, and every variable-length part is
//! length-prefixed, so no signature or hash can be replayed in another context.

use crate::messages::{AccountId, Hash, RequestId, Role, Signature};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Ed25519 failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The public key bytes are not a valid Ed25519 point.
    #[error("invalid Ed25519 public key")]
    BadPublicKey,
    /// The signature does not verify (strict verification).
    #[error("signature does not verify")]
    Invalid,
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

/// `"mpm/write-ctx/v1" || round (u64 LE) || request_id || account`: the ctx bound into the
/// dpf `WriteKey::public_hash`.
pub fn write_ctx(round: u64, request_id: &RequestId, account: &AccountId) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + 8 + 16 + 32);
    m.extend_from_slice(b"mpm/write-ctx/v1");
    m.extend_from_slice(&round.to_le_bytes());
    m.extend_from_slice(request_id);
    m.extend_from_slice(account);
    m
}

/// `"mpm/write/v1" || round || request_id || public_hash`: what the account key signs for a write.
pub fn write_message(round: u64, request_id: &RequestId, public_hash: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + 8 + 16 + 32);
    m.extend_from_slice(b"mpm/write/v1");
    m.extend_from_slice(&round.to_le_bytes());
    m.extend_from_slice(request_id);
    m.extend_from_slice(public_hash);
    m
}

/// `"mpm/receipt/v1" || role bit || account || round || request_id || half_hash`: what a
/// server signs in a receipt.
pub fn receipt_message(
    role: Role,
    account: &AccountId,
    round: u64,
    request_id: &RequestId,
    half_hash: &Hash,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(14 + 1 + 32 + 8 + 16 + 32);
    m.extend_from_slice(b"mpm/receipt/v1");
    m.push(role.party_bit());
    m.extend_from_slice(account);
    m.extend_from_slice(&round.to_le_bytes());
    m.extend_from_slice(request_id);
    m.extend_from_slice(half_hash);
    m
}

/// `SHA-256("mpm/accepted/v1" || count (u64 LE) || ids...)` over the sorted accepted ids.
pub fn accepted_digest(accepted: &[RequestId]) -> Hash {
    let mut h = Sha256::new();
    h.update(b"mpm/accepted/v1");
    h.update((accepted.len() as u64).to_le_bytes());
    for id in accepted {
        h.update(id);
    }
    h.finalize().into()
}

/// `SHA-256(M_r)`, the array hash.
pub fn array_hash(array: &[u8]) -> Hash {
    Sha256::digest(array).into()
}

/// `"mpm/array/v1" || role bit || round || array_hash || accepted_digest`: what each server
/// signs when it has computed `M_r` (and what clients verify for a published round).
pub fn array_hash_message(
    role: Role,
    round: u64,
    array_hash: &Hash,
    accepted_digest: &Hash,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + 1 + 8 + 32 + 32);
    m.extend_from_slice(b"mpm/array/v1");
    m.push(role.party_bit());
    m.extend_from_slice(&round.to_le_bytes());
    m.extend_from_slice(array_hash);
    m.extend_from_slice(accepted_digest);
    m
}

/// `"mpm/read/v1" || round || array_round || account || count || (len (u64 LE) || key)...`:
/// what the account key signs for a read.
pub fn read_message(
    round: u64,
    array_round: u64,
    account: &AccountId,
    keys: &[Vec<u8>],
) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update((keys.len() as u64).to_le_bytes());
    for k in keys {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k);
    }
    let keys_digest: [u8; 32] = h.finalize().into();
    let mut m = Vec::with_capacity(11 + 8 + 8 + 32 + 32);
    m.extend_from_slice(b"mpm/read/v1");
    m.extend_from_slice(&round.to_le_bytes());
    m.extend_from_slice(&array_round.to_le_bytes());
    m.extend_from_slice(account);
    m.extend_from_slice(&keys_digest);
    m
}

/// `"mpm/register/v1" || fingerprint || account || invite flag || len || invite`: what the
/// account key signs to register (proof of possession).
pub fn register_message(fingerprint: &Hash, account: &AccountId, invite: Option<&[u8]>) -> Vec<u8> {
    let mut m = Vec::with_capacity(15 + 32 + 32 + 9 + invite.map_or(0, <[u8]>::len));
    m.extend_from_slice(b"mpm/register/v1");
    m.extend_from_slice(fingerprint);
    m.extend_from_slice(account);
    match invite {
        None => m.push(0),
        Some(t) => {
            m.push(1);
            m.extend_from_slice(&(t.len() as u64).to_le_bytes());
            m.extend_from_slice(t);
        }
    }
    m
}

/// `SHA-256` of arbitrary bytes (e.g. the receipt's half hash of an encoded key).
pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// A fresh Ed25519 signing key from 32 bytes of the OS random source.
pub fn generate_signing_key() -> Result<SigningKey, SignatureError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SignatureError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// The signing key for a stored 32-byte seed.
pub fn signing_key_from_bytes(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

/// The 32-byte public key of `key`.
pub fn public_key(key: &SigningKey) -> [u8; 32] {
    key.verifying_key().to_bytes()
}

/// Signs `message`.
pub fn sign(key: &SigningKey, message: &[u8]) -> Signature {
    key.sign(message).to_bytes()
}

/// Strictly verifies `signature` on `message` under the 32-byte `public_key`.
pub fn verify(
    public_key: &[u8; 32],
    message: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    let vk = VerifyingKey::from_bytes(public_key).map_err(|_| SignatureError::BadPublicKey)?;
    let sig = ed25519_dalek::Signature::from_bytes(signature);
    vk.verify_strict(message, &sig)
        .map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_roundtrip_and_tamper() -> Result<(), SignatureError> {
        let k = generate_signing_key()?;
        let pk = public_key(&k);
        let msg = write_message(7, &[1; 16], &[2; 32]);
        let sig = sign(&k, &msg);
        verify(&pk, &msg, &sig)?;
        let other = write_message(8, &[1; 16], &[2; 32]);
        assert_eq!(verify(&pk, &other, &sig), Err(SignatureError::Invalid));
        let mut bad = sig;
        bad[0] ^= 1;
        assert_eq!(verify(&pk, &msg, &bad), Err(SignatureError::Invalid));
        Ok(())
    }

    #[test]
    fn canonical_strings_are_frozen() {
        assert_eq!(
            hex::encode(write_ctx(1, &[0xaa; 16], &[0xbb; 32])),
            format!(
                "{}0100000000000000{}{}",
                hex::encode("mpm/write-ctx/v1"),
                "aa".repeat(16),
                "bb".repeat(32)
            )
        );
        assert_eq!(
            hex::encode(receipt_message(Role::B, &[1; 32], 2, &[3; 16], &[4; 32])),
            format!(
                "{}01{}0200000000000000{}{}",
                hex::encode("mpm/receipt/v1"),
                "01".repeat(32),
                "03".repeat(16),
                "04".repeat(32)
            )
        );
        // Distinct roles give distinct messages (a receipt of A is no receipt of B).
        assert_ne!(
            receipt_message(Role::A, &[1; 32], 2, &[3; 16], &[4; 32]),
            receipt_message(Role::B, &[1; 32], 2, &[3; 16], &[4; 32])
        );
        assert_ne!(accepted_digest(&[]), accepted_digest(&[[0; 16]]));
        assert_ne!(
            register_message(&[0; 32], &[0; 32], None),
            register_message(&[0; 32], &[0; 32], Some(&[]))
        );
        assert_ne!(
            read_message(1, 0, &[0; 32], &[vec![1, 2], vec![3]]),
            read_message(1, 0, &[0; 32], &[vec![1], vec![2, 3]])
        );
    }
}
