//! Every request a client sends to a server (`protocol::codec::decode` as the server's handlers
//! call it), tried on the same input.
//!
//! Properties: whatever decodes is canonical (re-encodes to exactly the input), round-trips,
//! refuses a trailing byte, and its `check_shape` never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpm_fuzz::canonical;
use protocol::{
    CommitRequest, InfoRequest, ReadRequest, RegisterRequest, RoundStatusRequest, WriteRequest,
};

fuzz_target!(|data: &[u8]| {
    let params = mpm_fuzz::small_params();
    canonical!(InfoRequest, data);
    if let Some(r) = canonical!(RegisterRequest, data) {
        let _ = r.check_shape();
    }
    if let Some(r) = canonical!(WriteRequest, data) {
        assert_eq!(
            r.check_shape().is_ok(),
            (1..=protocol::MAX_KEY_BYTES).contains(&r.key.len())
        );
        let _ = dpf::WriteKey::decode(&r.key, params.domain_bits, params.slot_len as usize);
    }
    canonical!(CommitRequest, data);
    if let Some(r) = canonical!(ReadRequest, data)
        && r.check_shape(&params).is_ok()
    {
        assert_eq!(r.keys.len(), params.reads_per_round as usize);
        for k in &r.keys {
            let _ = dpf::ReadKey::decode(k, params.domain_bits);
        }
    }
    canonical!(RoundStatusRequest, data);
});
