//! The framing of the server's persisted record files (`server_core::store::decode_record`,
//! what start-up applies to every file) and of the entries of a round's batch file
//! (`decode_batch`, applied to a batch file's payload).
//!
//! Properties: a record that decodes is exactly `record_header(payload) || payload` (no
//! trailing bytes, one encoding); any payload framed with its header decodes back to itself;
//! batch entries that decode encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use server_core::store::{HEADER, decode_batch, decode_record, encode_batch, record_header};

fuzz_target!(|data: &[u8]| {
    if let Some(entries) = decode_batch(data) {
        let again = encode_batch(entries.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        assert_eq!(again, data, "batch entries have one encoding");
    }
    if let Some(payload) = decode_record(data) {
        assert_eq!(payload.len() + HEADER, data.len());
        assert_eq!(record_header(&payload)[..], data[..HEADER]);
        assert_eq!(payload, data[HEADER..]);
    }
    let mut framed = record_header(data).to_vec();
    framed.extend_from_slice(data);
    assert_eq!(decode_record(&framed).as_deref(), Some(data));
    if !data.is_empty() {
        framed.pop();
        assert_eq!(decode_record(&framed), None, "truncated record accepted");
    }
});
