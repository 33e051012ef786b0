//! Every response a server sends to a client (what the client's `wire` module decodes), plus
//! the pinned `Params`, tried on the same input.
//!
//! Properties: whatever decodes is canonical, round-trips and refuses a trailing byte; the
//! client's checks of announced `Params` and the round and phase arithmetic of any decoded
//! `Params` that validates never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpm_fuzz::canonical;
use protocol::{
    CommitAck, ErrorResponse, InfoResponse, Params, ReadResponse, Receipt, RegisterResponse,
    RoundStatusResponse,
};

fn exercise(p: &Params) {
    // What the client does with the parameters a server announces.
    if client::config::check_params(p).is_ok() {
        assert!(p.validate().is_ok());
        client::config::schedule_of(p).expect("checked params give a schedule");
        let _ = client::config::clock_of(p);
    }
    if p.validate().is_ok() {
        let _ = p.fingerprint();
        let _ = p.array_bytes();
        for now in [
            0,
            p.t0_ms,
            p.t0_ms.saturating_add(p.round_ms.saturating_mul(3)),
            u64::MAX,
        ] {
            if let Some(r) = p.round_at(now) {
                let _ = p.phase_at(r, now);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(p) = canonical!(Params, data) {
        exercise(&p);
    }
    if let Some(info) = canonical!(InfoResponse, data) {
        exercise(&info.params);
    }
    canonical!(RegisterResponse, data);
    canonical!(Receipt, data);
    canonical!(CommitAck, data);
    canonical!(ReadResponse, data);
    canonical!(RoundStatusResponse, data);
    if let Some(e) = canonical!(ErrorResponse, data) {
        let _ = e.code.http_status();
        let _ = e.to_string();
        // Re-building it bounds the message on a char boundary.
        let bounded = ErrorResponse::new(e.code, e.message.clone());
        assert!(bounded.message.len() <= protocol::MAX_ERROR_MESSAGE_BYTES);
        assert!(e.message.starts_with(&bounded.message));
    }
});
