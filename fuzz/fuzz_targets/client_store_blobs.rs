//! The binary columns of the client store's forward-secrecy state: a direction's key trees
//! (`ratchet::Direction::from_bytes`), one GGM tree (`GgmTree::decode`) and a key block
//! (`KeyBlock::decode`, also the last 44 bytes of a frame), tried on the same input.
//!
//! Properties: whatever decodes re-encodes to exactly the bytes it consumed; a decoded tree's
//! leaf derivation never panics.
#![no_main]

use client::ratchet::{Direction, GgmTree, KeyBlock};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Direction::from_bytes(data) {
        assert_eq!(
            &d.to_bytes()[..],
            data,
            "non-canonical ratchet direction accepted"
        );
    }
    let mut rest = data;
    if let Ok(mut t) = GgmTree::decode(&mut rest) {
        let used = &data[..data.len() - rest.len()];
        let mut again = Vec::new();
        t.encode(&mut again);
        assert_eq!(again, used, "non-canonical ratchet tree accepted");
        let next = t.next();
        assert!(t.leaf(next).is_some(), "the next round's leaf is held");
        if next > 0 {
            assert!(t.leaf(next - 1).is_none(), "a used leaf is still derivable");
        }
        let to = next.saturating_add(u64::from(data[0]));
        t.advance(to);
        assert_eq!(t.next(), to);
        assert!(t.leaf(to).is_some());
    }
    if let Some(k) = KeyBlock::decode(data) {
        assert_eq!(k.encode(), data, "non-canonical key block accepted");
    }
});
