//! `client::frame::Frame::decode`, the plaintext of every slot.
//!
//! Input: `mode (u8) || frame bytes`. With the top bit of `mode` clear the frame length is the
//! input's (the normal case), else it is `mode & 0x7f` (length mismatches).
//!
//! Properties: a decoded frame re-encodes to exactly its input (frames are canonical: strict
//! flags, zero padding); fragments never exceed the frame's capacity.
#![no_main]

use client::frame::{Frame, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let frame_len = if mode & 0x80 == 0 {
        bytes.len()
    } else {
        usize::from(mode & 0x7f)
    };
    let _ = client::frame::data_capacity(frame_len + client::session::SLOT_OVERHEAD);
    let Ok(frame) = Frame::decode(bytes, frame_len) else {
        return;
    };
    assert_eq!(bytes.len(), frame_len);
    if let Frame::Data {
        fragment: Some(f), ..
    } = &frame
    {
        assert!(f.data.len() <= frame_len - HEADER_LEN);
    }
    let again = frame
        .encode(frame_len)
        .expect("a decoded frame must encode");
    assert_eq!(again, bytes, "non-canonical frame accepted");
});
