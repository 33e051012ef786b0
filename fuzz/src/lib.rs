//! Shared helpers of the fuzz targets and the seed-corpus generator.

use protocol::Params;

/// Decodes `$data` as `$ty` with the project codec; if that succeeds, checks that the encoding
/// is canonical (re-encoding gives back exactly the input), that the value round-trips, and
/// that one extra byte is refused as trailing. Evaluates to the decoded value, if any.
#[macro_export]
macro_rules! canonical {
    ($ty:ty, $data:expr) => {{
        let data: &[u8] = $data;
        match ::protocol::codec::decode::<$ty>(data) {
            Ok(v) => {
                let again = ::protocol::codec::try_encode(&v)
                    .expect(concat!(stringify!($ty), ": a decoded value must encode"));
                assert_eq!(
                    again.as_slice(),
                    data,
                    concat!(
                        stringify!($ty),
                        ": decode accepted a non-canonical encoding"
                    )
                );
                let back: $ty = ::protocol::codec::decode(&again)
                    .expect(concat!(stringify!($ty), ": re-encoding does not decode"));
                assert_eq!(back, v, concat!(stringify!($ty), ": round trip"));
                let mut longer = data.to_vec();
                longer.push(0);
                assert!(
                    matches!(
                        ::protocol::codec::decode::<$ty>(&longer),
                        Err(::protocol::CodecError::TrailingBytes { extra: 1 })
                    ),
                    concat!(stringify!($ty), ": trailing byte accepted")
                );
                Some(v)
            }
            Err(_) => None,
        }
    }};
}

/// Small valid parameters (256 slots of 64 bytes) so that targets which build arrays stay fast.
pub fn small_params() -> Params {
    let mut p = Params::demo(1_700_000_000_000);
    p.domain_bits = 8;
    p.slot_len = 64;
    p.max_writers = 4;
    assert!(p.validate().is_ok(), "small fuzz params must be valid");
    p
}

/// The record names the server's start-up restore knows, by prefix or in full.
pub const RECORD_NAMES: [&str; 14] = [
    "account-x",
    "invite-x",
    "write-x",
    "commit-x",
    "frozen",
    "outcome",
    "array",
    "own-audit",
    "own-hash",
    "peer-sets",
    "peer-audit",
    "peer-shares",
    "peer-hash",
    "peer-abandon",
];

/// Whether the record `RECORD_NAMES[i]` is per-round (all but accounts and invites).
pub fn record_is_per_round(i: usize) -> bool {
    i >= 2
}
