//! `dpf::WriteKey::decode`. Input: `domain_bits (u8) || slot_len (u16 LE) || key bytes`.
//!
//! Properties: a decoded key re-encodes to exactly its input, has the requested domain and slot
//! length; hashing and evaluating it never panic, and point evaluation agrees with full
//! evaluation.
#![no_main]

use dpf::{Party, WriteKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let n = u32::from(data[0]);
    let slot_len = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let key = &data[3..];
    let Ok(k) = WriteKey::decode(key, n, slot_len) else {
        return;
    };
    assert_eq!(k.encode(), key, "non-canonical write key accepted");
    assert_eq!(k.domain_bits(), n);
    assert_eq!(k.slot_len(), slot_len);
    assert_eq!(key.len(), WriteKey::encoded_len(n, slot_len));
    let _ = k.public_hash(b"ctx");
    if n <= 8 && slot_len <= 256 {
        for party in [Party::A, Party::B] {
            let full = k.eval_full(party);
            assert_eq!(full.len(), slot_len << n);
            let x = (1u64 << n) - 1;
            let at = x as usize * slot_len;
            assert_eq!(k.eval_point(party, x), full[at..at + slot_len]);
        }
    } else {
        let _ = k.eval_point(Party::A, 0);
    }
});
