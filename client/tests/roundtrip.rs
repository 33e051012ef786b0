//! Property tests of the client's encodings: contact codes, frames and key blocks decode to
//! what was encoded, every input that decodes is the one encoding of its value, and none
//! panics.

use client::code::{CODE_PREFIX, decode_code, encode_code};
use client::frame::{Fragment, Frame, data_capacity, frame_len};
use client::ratchet::{KEY_BLOCK_LEN, KeyBlock};
use proptest::prelude::*;

fn key_block() -> impl Strategy<Value = KeyBlock> {
    (1u32.., any::<[u8; 32]>(), prop::option::of(1u64..)).prop_map(|(epoch, public, switch)| {
        KeyBlock {
            epoch,
            public,
            switch,
        }
    })
}

/// A slot length (96 to 1024 bytes, room for a key block) and a frame that fits it.
fn slot_and_frame() -> impl Strategy<Value = (usize, Frame)> {
    (6usize..=64).prop_flat_map(|blocks| {
        let slot = blocks * 16;
        let cap = data_capacity(slot).unwrap_or(0);
        let data = (
            any::<u32>(),
            prop::option::of(key_block()),
            any::<bool>(),
            any::<u32>(),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..=cap),
        )
            .prop_map(move |(ack, key, has_fragment, seq, last, mut data)| {
                let room = if key.is_some() {
                    cap - KEY_BLOCK_LEN
                } else {
                    cap
                };
                data.truncate(room);
                Frame::Data {
                    ack,
                    fragment: has_fragment.then_some(Fragment { seq, last, data }),
                    key,
                }
            });
        (
            Just(slot),
            prop_oneof![1 => Just(Frame::Padding), 9 => data],
        )
    })
}

fn canonical_spelling(text: &str) -> Option<String> {
    let lower = text.trim().to_ascii_lowercase();
    let body = lower.strip_prefix(CODE_PREFIX)?;
    let cleaned: String = body
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    Some(format!("{CODE_PREFIX}{cleaned}"))
}

proptest! {
    #[test]
    fn contact_codes_round_trip(key in any::<[u8; 32]>(), group in 1usize..12, upper in any::<bool>()) {
        let code = encode_code(&key);
        prop_assert!(code.starts_with(CODE_PREFIX));
        prop_assert_eq!(decode_code(&code), Ok(key));
        // Grouped, wrapped and upper-cased as a mail client might: still the same key.
        let body = &code[CODE_PREFIX.len()..];
        let groups: Vec<String> = body
            .as_bytes()
            .chunks(group)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let mut messy = format!(" {CODE_PREFIX}{}\n", groups.join("- \n"));
        if upper {
            messy = messy.to_uppercase();
        }
        prop_assert_eq!(decode_code(&messy), Ok(key));
    }

    /// Random text, and valid codes with one character changed: whatever decodes is, once
    /// normalised, exactly the code of the key it yields.
    #[test]
    fn decoded_codes_are_canonical(
        text in "(mpm1-|MPM1-)?[a-z2-7A-Z -]{0,70}",
        key in any::<[u8; 32]>(),
        at in any::<prop::sample::Index>(),
        c in "[a-z2-7]",
    ) {
        let mut typo = encode_code(&key).into_bytes();
        let i = CODE_PREFIX.len() + at.index(typo.len() - CODE_PREFIX.len());
        typo[i] = c.as_bytes()[0];
        let typo = String::from_utf8_lossy(&typo).into_owned();
        for t in [text, typo] {
            if let Ok(k) = decode_code(&t) {
                prop_assert_eq!(canonical_spelling(&t), Some(encode_code(&k)));
            }
        }
    }

    #[test]
    fn frames_round_trip((slot, f) in slot_and_frame()) {
        let n = frame_len(slot).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let bytes = f.encode(n).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(bytes.len(), n);
        prop_assert_eq!(Frame::decode(&bytes, n), Ok(f));
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(Frame::decode(&longer, n).is_err());
        prop_assert!(Frame::decode(&bytes[..n - 1], n).is_err());
    }

    /// Arbitrary bytes (with a plausible header) never panic; what decodes re-encodes to
    /// exactly those bytes.
    #[test]
    fn arbitrary_frames_decode_canonically_or_not_at_all(
        data in prop::collection::vec(any::<u8>(), 0..300),
        flags in any::<u8>(),
        len in any::<u8>(),
        zero_tail in any::<bool>(),
    ) {
        let mut data = data;
        if data.len() >= 12 {
            data[0] = 1;
            data[1] = flags & 0x0f;
            data[10..12].copy_from_slice(&u16::from(len).to_le_bytes());
            if zero_tail {
                let end = (12 + usize::from(len)).min(data.len());
                data[end..].fill(0);
            }
        }
        let n = data.len();
        if let Ok(f) = Frame::decode(&data, n) {
            prop_assert_eq!(f.encode(n).map_err(|e| TestCaseError::fail(e.to_string()))?, data);
        }
    }

    #[test]
    fn key_blocks_round_trip(k in key_block(), data in prop::collection::vec(any::<u8>(), KEY_BLOCK_LEN)) {
        prop_assert_eq!(KeyBlock::decode(&k.encode()), Some(k));
        if let Some(b) = KeyBlock::decode(&data) {
            prop_assert_eq!(b.encode().to_vec(), data);
        }
    }
}
