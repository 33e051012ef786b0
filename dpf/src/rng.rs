//! Randomness for key generation.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// A source of uniformly random bytes.
pub trait RandomSource {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);

    /// One random 128-bit value.
    fn u128(&mut self) -> u128 {
        let mut b = [0u8; 16];
        self.fill(&mut b);
        let v = u128::from_le_bytes(b);
        b.zeroize();
        v
    }
}

/// The operating system's generator (`getrandom`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        // Without an OS generator no key can be made safely; there is no sane fallback.
        getrandom::fill(buf).expect("the operating system's random generator failed");
    }
}

/// A deterministic generator for tests and known-answer vectors: AES-128 in counter mode under
/// a key derived from a 32-byte seed. Never use it for real keys.
pub struct SeededRandom {
    cipher: Aes128,
    counter: u128,
    buf: [u8; 16 * 16],
    used: usize,
}

impl std::fmt::Debug for SeededRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededRandom").finish_non_exhaustive()
    }
}

impl SeededRandom {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: [u8; 32]) -> SeededRandom {
        let digest = Sha256::new()
            .chain_update(b"mpm-dpf/v1/seeded-random")
            .chain_update(seed)
            .finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        let cipher = Aes128::new(&Array::from(key));
        key.zeroize();
        SeededRandom {
            cipher,
            counter: 0,
            buf: [0; 256],
            used: 256,
        }
    }

    fn refill(&mut self) {
        let mut blocks = [[0u8; 16]; 16];
        for b in blocks.iter_mut() {
            *b = self.counter.to_le_bytes();
            self.counter = self.counter.wrapping_add(1);
        }
        self.cipher
            .encrypt_blocks(Array::cast_slice_from_core_mut(&mut blocks));
        for (d, s) in self.buf.chunks_exact_mut(16).zip(blocks.iter()) {
            d.copy_from_slice(s);
        }
        self.used = 0;
    }
}

impl RandomSource for SeededRandom {
    fn fill(&mut self, mut buf: &mut [u8]) {
        while !buf.is_empty() {
            if self.used == self.buf.len() {
                self.refill();
            }
            let n = buf.len().min(self.buf.len() - self.used);
            buf[..n].copy_from_slice(&self.buf[self.used..self.used + n]);
            self.used += n;
            buf = &mut buf[n..];
        }
    }
}

impl Drop for SeededRandom {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl<R: RandomSource + ?Sized> RandomSource for &mut R {
    fn fill(&mut self, buf: &mut [u8]) {
        (**self).fill(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_deterministic_and_split_independent() {
        let mut a = SeededRandom::new([1; 32]);
        let mut b = SeededRandom::new([1; 32]);
        let mut whole = [0u8; 1000];
        a.fill(&mut whole);
        let mut parts = [0u8; 1000];
        let (x, y) = parts.split_at_mut(333);
        b.fill(x);
        b.fill(y);
        assert_eq!(whole, parts);
        let mut c = SeededRandom::new([2; 32]);
        let mut other = [0u8; 1000];
        c.fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn os_random_is_not_constant() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        OsRandom.fill(&mut a);
        OsRandom.fill(&mut b);
        assert_ne!(a, b);
    }
}
