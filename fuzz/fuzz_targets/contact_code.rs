//! `client::code::decode_code` on arbitrary text.
//!
//! Properties: a code that decodes is, once trimmed, lower-cased and stripped of the
//! whitespace and dashes decoding ignores, exactly `encode_code` of the key it yields (one
//! spelling per key up to those), and that canonical spelling decodes to the same key.
#![no_main]

use client::code::{CODE_PREFIX, decode_code, encode_code};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(key) = decode_code(text) else {
        return;
    };
    let lower = text.trim().to_ascii_lowercase();
    let body = lower
        .strip_prefix(CODE_PREFIX)
        .expect("a decoded code has the prefix");
    let cleaned: String = body
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let canonical = encode_code(&key);
    assert_eq!(
        format!("{CODE_PREFIX}{cleaned}"),
        canonical,
        "two spellings of one key"
    );
    assert_eq!(decode_code(&canonical), Ok(key));
});
