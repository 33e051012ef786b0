//! Contact codes and safety numbers (docs/protocol.md §5.1).
//!
//! A contact code is `mpm1-` followed by unpadded lower-case RFC 4648 base32 of
//! `version (1) || X25519 public key (32) || checksum (4)`, where the checksum is the first four
//! bytes of SHA-256 over the version and the key. It carries no secret: it is printed, pasted into
//! chats, or shown as a QR code. Decoding ignores case, whitespace and `-` after the prefix, so a
//! code that was wrapped or grouped by a mail client still decodes.

use sha2::{Digest, Sha256};

/// The prefix of every contact code of version 1.
pub const CODE_PREFIX: &str = "mpm1-";
/// The version byte inside the code.
pub const CODE_VERSION: u8 = 1;
const CODE_BYTES: usize = 1 + 32 + 4;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why a contact code was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    /// The code does not start with `mpm1-`.
    #[error("a contact code starts with \"{CODE_PREFIX}\"")]
    Prefix,
    /// A character outside the base32 alphabet.
    #[error("character {0:?} is not part of a contact code")]
    Character(char),
    /// Too short or too long.
    #[error("a contact code has {expected} characters after the prefix, this one has {got}")]
    Length {
        /// Characters expected after the prefix.
        expected: usize,
        /// Characters found.
        got: usize,
    },
    /// The version byte is not one this client understands.
    #[error("contact code version {0} is not supported (this client reads version {CODE_VERSION})")]
    Version(u8),
    /// The checksum does not match: a typo or a truncated copy.
    #[error("checksum mismatch: the code was mistyped or cut short")]
    Checksum,
}

/// Encodes a public key as a contact code.
pub fn encode_code(public_key: &[u8; 32]) -> String {
    let mut raw = Vec::with_capacity(CODE_BYTES);
    raw.push(CODE_VERSION);
    raw.extend_from_slice(public_key);
    let sum = checksum(&raw);
    raw.extend_from_slice(&sum);
    format!("{CODE_PREFIX}{}", base32_encode(&raw))
}

/// Decodes a contact code into the X25519 public key it carries.
pub fn decode_code(code: &str) -> Result<[u8; 32], CodeError> {
    let trimmed = code.trim();
    let lower = trimmed.to_ascii_lowercase();
    let body = lower.strip_prefix(CODE_PREFIX).ok_or(CodeError::Prefix)?;
    let cleaned: String = body
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let expected = base32_len(CODE_BYTES);
    if cleaned.len() != expected {
        return Err(CodeError::Length {
            expected,
            got: cleaned.chars().count(),
        });
    }
    let raw = base32_decode(&cleaned, CODE_BYTES)?;
    let (version, rest) = raw
        .split_first()
        .ok_or(CodeError::Length { expected, got: 0 })?;
    if *version != CODE_VERSION {
        // The checksum is checked first when possible: a typo in the version digit is a typo.
        if checksum(&raw[..33]) != raw[33..] {
            return Err(CodeError::Checksum);
        }
        return Err(CodeError::Version(*version));
    }
    if checksum(&raw[..33]) != raw[33..] {
        return Err(CodeError::Checksum);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&rest[..32]);
    Ok(key)
}

/// The safety number of a pair: 60 decimal digits, the same on both sides.
///
/// Both users compare it over a channel they trust (in person, a call); equal numbers mean that
/// each holds the other's real contact code.
pub fn safety_number(a: &[u8; 32], b: &[u8; 32]) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut bytes = Vec::with_capacity(64);
    for block in 0u8..2 {
        let mut h = Sha256::new();
        h.update(b"mpm/safety-number/v1");
        h.update([block]);
        h.update(lo);
        h.update(hi);
        bytes.extend_from_slice(&h.finalize());
    }
    let groups: Vec<String> = bytes
        .chunks_exact(5)
        .take(12)
        .map(|c| {
            let v = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", v % 100_000)
        })
        .collect();
    groups.join(" ")
}

fn checksum(data: &[u8]) -> [u8; 4] {
    let d = Sha256::digest(data);
    [d[0], d[1], d[2], d[3]]
}

fn base32_len(bytes: usize) -> usize {
    (bytes * 8).div_ceil(5)
}

fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(base32_len(data.len()));
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

fn base32_decode(text: &str, len: usize) -> Result<Vec<u8>, CodeError> {
    let mut out = Vec::with_capacity(len);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in text.chars() {
        let v = ALPHABET
            .iter()
            .position(|a| char::from(*a) == c)
            .ok_or(CodeError::Character(c))? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    // Leftover bits must be zero padding, or two spellings would decode to one code.
    if acc != 0 || out.len() != len {
        return Err(CodeError::Checksum);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> [u8; 32] {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = seed.wrapping_mul(31).wrapping_add(i as u8);
        }
        k
    }

    #[test]
    fn code_round_trips_and_has_fixed_shape() {
        for seed in 0..50u8 {
            let code = encode_code(&key(seed));
            assert!(code.starts_with(CODE_PREFIX));
            assert_eq!(code.len(), CODE_PREFIX.len() + 60);
            assert_eq!(decode_code(&code), Ok(key(seed)));
        }
    }

    #[test]
    fn code_tolerates_case_spaces_and_dashes() {
        let code = encode_code(&key(7));
        let body = &code[CODE_PREFIX.len()..];
        let grouped: Vec<&str> = body
            .as_bytes()
            .chunks(6)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        let messy = format!("  MPM1-{}\n", grouped.join(" - ").to_uppercase());
        assert_eq!(decode_code(&messy), Ok(key(7)));
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let code = encode_code(&key(3));
        let prefix = CODE_PREFIX.len();
        for pos in prefix..code.len() {
            for &replacement in ALPHABET {
                let mut bytes = code.clone().into_bytes();
                if bytes[pos] == replacement {
                    continue;
                }
                bytes[pos] = replacement;
                let typo = String::from_utf8(bytes).unwrap_or_default();
                assert!(decode_code(&typo).is_err(), "typo at {pos} accepted");
            }
        }
    }

    #[test]
    fn malformed_codes_are_rejected_with_reasons() {
        let code = encode_code(&key(9));
        assert_eq!(decode_code("hello"), Err(CodeError::Prefix));
        assert!(matches!(
            decode_code(&code[..code.len() - 1]),
            Err(CodeError::Length { .. })
        ));
        let mut bad = code.clone();
        bad.push('a');
        assert!(matches!(decode_code(&bad), Err(CodeError::Length { .. })));
        let with_bad_char = code.replacen('a', "1", 1).replacen('b', "1", 1);
        if with_bad_char != code {
            assert!(matches!(
                decode_code(&with_bad_char),
                Err(CodeError::Character('1'))
            ));
        }
        // A well-formed code of another version.
        let mut raw = vec![2u8];
        raw.extend_from_slice(&key(9));
        let sum = checksum(&raw);
        raw.extend_from_slice(&sum);
        let v2 = format!("{CODE_PREFIX}{}", base32_encode(&raw));
        assert_eq!(decode_code(&v2), Err(CodeError::Version(2)));
    }

    #[test]
    fn safety_number_is_symmetric_and_pair_specific() {
        let (a, b, c) = (key(1), key(2), key(3));
        let ab = safety_number(&a, &b);
        assert_eq!(ab, safety_number(&b, &a));
        assert_ne!(ab, safety_number(&a, &c));
        let digits: String = ab.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(digits.len(), 60);
        assert!(digits.chars().all(|c| c.is_ascii_digit()));
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        // RFC 4648 §10, lower case, without padding.
        let cases = [
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base32_encode(plain.as_bytes()), enc);
            assert_eq!(
                base32_decode(enc, plain.len()).as_deref(),
                Ok(plain.as_bytes())
            );
        }
    }
}
