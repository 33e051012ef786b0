//! Property tests of the key encodings: `decode(encode(k))` is `k` (same bytes, same outputs),
//! every byte string that decodes is the one encoding of its key, and no input panics.

use dpf::{DecodeError, Party, ReadKey, SeededRandom, WriteKey};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn read_keys_round_trip(n in 1u32..=24, alpha in any::<u64>(), seed in any::<[u8; 32]>()) {
        let alpha = alpha & ((1u64 << n) - 1);
        let mut rng = SeededRandom::new(seed);
        let (a, b) = ReadKey::r#gen(n, alpha, &mut rng).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (party, k) in [(Party::A, &a), (Party::B, &b)] {
            let bytes = k.encode();
            prop_assert_eq!(bytes.len(), ReadKey::encoded_len(n));
            let back = ReadKey::decode(&bytes, n).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.encode(), bytes.clone());
            prop_assert_eq!(back.eval_point(party, alpha), k.eval_point(party, alpha));
            // Under another domain, with a byte more or a byte less: refused.
            prop_assert!(ReadKey::decode(&bytes, n % 24 + 1).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(ReadKey::decode(&longer, n).is_err());
            prop_assert!(ReadKey::decode(&bytes[..bytes.len() - 1], n).is_err());
        }
        prop_assert!(a.eval_point(Party::A, alpha) != b.eval_point(Party::B, alpha));
    }

    #[test]
    fn write_keys_round_trip(
        n in 1u32..=12, blocks in 1usize..=8, alpha in any::<u64>(), seed in any::<[u8; 32]>(),
        fill in any::<u8>(),
    ) {
        let l = 16 * blocks;
        let alpha = alpha & ((1u64 << n) - 1);
        let payload = vec![fill; l];
        let mut rng = SeededRandom::new(seed);
        let (a, b) = WriteKey::r#gen(n, l, alpha, &payload, &mut rng)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut shares = Vec::new();
        for (party, k) in [(Party::A, &a), (Party::B, &b)] {
            let bytes = k.encode();
            prop_assert_eq!(bytes.len(), WriteKey::encoded_len(n, l));
            let back = WriteKey::decode(&bytes, n, l).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.encode(), bytes.clone());
            prop_assert_eq!(back.public_hash(b"ctx"), k.public_hash(b"ctx"));
            let share = back.eval_point(party, alpha);
            prop_assert_eq!(&share, &k.eval_point(party, alpha));
            shares.push(share);
            let other_slot = WriteKey::decode(&bytes, n, l + 16);
            prop_assert!(matches!(other_slot, Err(DecodeError::SlotLen { .. })), "other slot length");
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(WriteKey::decode(&longer, n, l).is_err());
        }
        let xor: Vec<u8> = shares[0].iter().zip(&shares[1]).map(|(x, y)| x ^ y).collect();
        prop_assert_eq!(xor, payload);
    }

    /// One byte of a valid key changed: the result is refused or is the one encoding of a key.
    #[test]
    fn mutated_keys_decode_canonically_or_not_at_all(
        n in 1u32..=16, seed in any::<[u8; 32]>(), at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut rng = SeededRandom::new(seed);
        let (r, _) = ReadKey::r#gen(n, 0, &mut rng).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut bytes = r.encode();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(k) = ReadKey::decode(&bytes, n) {
            prop_assert_eq!(k.encode(), bytes);
        }
        let (w, _) = WriteKey::r#gen(n, 32, 0, &[1; 32], &mut rng)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut bytes = w.encode();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(k) = WriteKey::decode(&bytes, n, 32) {
            prop_assert_eq!(k.encode(), bytes);
        }
    }

    /// Arbitrary bytes under arbitrary (even unsupported) domains and slot lengths never panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..600), n in any::<u32>(), l in any::<usize>(),
    ) {
        if let Ok(k) = ReadKey::decode(&data, n) {
            prop_assert_eq!(k.encode(), data.clone());
        }
        if let Ok(k) = WriteKey::decode(&data, n, l) {
            prop_assert_eq!(k.encode(), data);
        }
    }
}
