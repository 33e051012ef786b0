//! The payloads of the server's persisted records, fed to `Machine::restore` as start-up does
//! (after the file framing checked out), followed by `Machine::resume`.
//!
//! Input: `record selector (u8) || round (u8) || payload`; the selector picks one of the record
//! names start-up knows (or, past them, an unknown one).
//!
//! Properties: restoring and resuming never panic; a record whose payload is a valid encoding
//! of its type is restored, one that is not is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpm_fuzz::{RECORD_NAMES, record_is_per_round, small_params};
use protocol::{
    PeerMessage, Receipt, RegisterRequest, Role, RoundStatus, SetsMessage, WriteRequest, codec,
};
use server_core::Registration;
use server_core::machine::{Machine, MachineConfig};
use server_core::store::RecordKey;

fn machine() -> Machine {
    let cfg = MachineConfig {
        role: Role::A,
        params: small_params(),
        signing_key: protocol::signing_key_from_bytes(&[7; 32]),
        peer_signing_key: protocol::public_key(&protocol::signing_key_from_bytes(&[8; 32])),
        registration: Registration::Open,
        registrations_per_minute: 60,
    };
    Machine::new(
        cfg,
        Box::new(|b: &mut [u8]| {
            b.fill(0x5a);
            Ok(())
        }),
    )
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let i = usize::from(data[0]) % (RECORD_NAMES.len() + 1);
    let round = u64::from(data[1]);
    let payload = &data[2..];
    let key = match RECORD_NAMES.get(i) {
        Some(name) if record_is_per_round(i) => RecordKey::round(round, *name),
        Some(name) => RecordKey::global(*name),
        None => RecordKey::round(round, "unknown"),
    };
    let mut m = machine();
    let restored = m.restore(&key, payload).is_ok();
    let decodes = match key.name.as_str() {
        "account-x" => codec::decode::<RegisterRequest>(payload).is_ok(),
        "invite-x" => payload.len() == 32,
        "write-x" => codec::decode::<WriteRequest>(payload).is_ok(),
        "commit-x" => codec::decode::<Receipt>(payload).is_ok(),
        "frozen" => codec::decode::<SetsMessage>(payload).is_ok(),
        "outcome" => codec::decode::<RoundStatus>(payload).is_ok(),
        "array" => payload.len() as u64 == small_params().array_bytes(),
        "own-audit" => matches!(codec::decode(payload), Ok(PeerMessage::Audit(_))),
        "own-hash" => matches!(codec::decode(payload), Ok(PeerMessage::ArrayHash(_))),
        "unknown" => false,
        _ => codec::decode::<PeerMessage>(payload).is_ok(),
    };
    assert_eq!(
        restored, decodes,
        "restore of {} disagrees with its decoder",
        key.name
    );
    let p = small_params();
    let now = p.t0_ms + (round + 1) * p.round_ms + p.cutoff_ms;
    let _ = m.resume(now);
    let _ = m.round_status(round);
    let _ = m.info(now);
});
