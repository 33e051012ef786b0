//! `dpf::ReadKey::decode`. Input: `domain_bits (u8) || key bytes`.
//!
//! Properties: a decoded key re-encodes to exactly its input (one encoding per key), has the
//! requested domain and the length `encoded_len` announces; evaluating it never panics and never
//! selects a point outside its domain.
#![no_main]

use dpf::{Party, ReadKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, key)) = data.split_first() else {
        return;
    };
    let n = u32::from(n);
    let Ok(k) = ReadKey::decode(key, n) else {
        return;
    };
    assert_eq!(k.encode(), key, "non-canonical read key accepted");
    assert_eq!(k.domain_bits(), n);
    assert_eq!(key.len(), ReadKey::encoded_len(n));
    // Evaluation of small domains: bits past 2^n stay clear whatever the key says.
    if n <= 12 {
        for party in [Party::A, Party::B] {
            let blocks = k.eval_full(party);
            assert_eq!(blocks.len() as u64, k.leaves());
            if n < 7 {
                assert_eq!(blocks[0] >> (1u32 << n), 0, "output bit outside the domain");
            }
            let x = (1u64 << n) - 1;
            assert_eq!(
                k.eval_point(party, x),
                (blocks[(x >> 7) as usize] >> (x & 127)) & 1 == 1
            );
        }
    } else {
        let _ = k.eval_point(Party::B, (1u64 << n) - 1);
    }
});
