//! Golden bytes, truncation and trailing-byte tests for every wire type.
//!
//! The hex strings below freeze the encoding: changing a wire type must be a deliberate act
//! that updates them (and bumps `PROTOCOL_VERSION` if deployed peers would disagree).

use protocol::*;

fn receipt() -> Receipt {
    Receipt {
        role: Role::B,
        account: [0x11; 32],
        round: 7,
        request_id: [0x22; 16],
        half_hash: [0x33; 32],
        signature: [0x44; 64],
    }
}

/// Encodes `value`, checks it against `golden`, checks it round-trips, that every strict prefix
/// fails to decode and that a trailing byte is rejected.
fn check<T>(name: &str, value: &T, golden: &str, failures: &mut Vec<String>)
where
    T: bincode::Encode + bincode::Decode<()> + PartialEq + std::fmt::Debug,
{
    let bytes = codec::encode(value);
    let got = hex::encode(&bytes);
    if got != golden {
        failures.push(format!("{name}: golden mismatch\n    got \"{got}\""));
    }
    match codec::decode::<T>(&bytes) {
        Ok(back) => assert_eq!(&back, value, "{name}: round trip"),
        Err(e) => panic!("{name}: does not decode: {e}"),
    }
    for cut in 0..bytes.len() {
        assert!(
            codec::decode::<T>(&bytes[..cut]).is_err(),
            "{name}: prefix of {cut} bytes decoded"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(
        matches!(
            codec::decode::<T>(&longer),
            Err(CodecError::TrailingBytes { extra: 1 })
        ),
        "{name}: trailing byte accepted"
    );
}

fn params() -> Params {
    Params::demo(1_700_000_000_000)
}

#[test]
fn golden_bytes_for_every_wire_type() {
    let mut f = Vec::new();
    let p = params();
    check("Params", &p, GOLDEN_PARAMS, &mut f);
    check("InfoRequest", &InfoRequest {}, "", &mut f);
    check(
        "InfoResponse",
        &InfoResponse {
            protocol_version: PROTOCOL_VERSION,
            role: Role::A,
            params: p,
            fingerprint: [0x01; 32],
            signing_key: [0x02; 32],
            current_round: Some(5),
            now_ms: 1_700_000_010_000,
        },
        GOLDEN_INFO_RESPONSE,
        &mut f,
    );
    check(
        "RegisterRequest",
        &RegisterRequest {
            fingerprint: [0x01; 32],
            account: [0x02; 32],
            invite: Some(b"tok".to_vec()),
            signature: [0x03; 64],
        },
        GOLDEN_REGISTER_REQUEST,
        &mut f,
    );
    check(
        "RegisterResponse",
        &RegisterResponse {
            account: [0x05; 32],
            already_registered: true,
        },
        GOLDEN_REGISTER_RESPONSE,
        &mut f,
    );
    check(
        "WriteRequest",
        &WriteRequest {
            fingerprint: [0x01; 32],
            round: 9,
            request_id: [0x02; 16],
            account: [0x03; 32],
            public_hash: [0x04; 32],
            key: vec![0xab, 0xcd],
            signature: [0x05; 64],
        },
        GOLDEN_WRITE_REQUEST,
        &mut f,
    );
    check("Receipt", &receipt(), GOLDEN_RECEIPT, &mut f);
    check(
        "CommitRequest",
        &CommitRequest {
            fingerprint: [0x01; 32],
            peer_receipt: receipt(),
        },
        GOLDEN_COMMIT_REQUEST,
        &mut f,
    );
    check(
        "CommitAck",
        &CommitAck {
            round: 7,
            request_id: [0x22; 16],
        },
        GOLDEN_COMMIT_ACK,
        &mut f,
    );
    check(
        "ReadRequest",
        &ReadRequest {
            fingerprint: [0x01; 32],
            round: 9,
            array_round: 7,
            account: [0x03; 32],
            keys: vec![vec![1], vec![2, 3]],
            signature: [0x05; 64],
        },
        GOLDEN_READ_REQUEST,
        &mut f,
    );
    check(
        "ReadResponse",
        &ReadResponse {
            array_round: 7,
            answers: vec![vec![9; 4], vec![8; 4]],
        },
        GOLDEN_READ_RESPONSE,
        &mut f,
    );
    check(
        "RoundStatusRequest",
        &RoundStatusRequest { round: 3 },
        GOLDEN_ROUND_STATUS_REQUEST,
        &mut f,
    );
    check(
        "RoundStatusResponse/published",
        &RoundStatusResponse {
            round: 3,
            status: RoundStatus::Published(PublishedRound {
                round: 3,
                array_hash: [0x06; 32],
                accepted: vec![[0x07; 16]],
                signature_a: [0x08; 64],
                signature_b: [0x09; 64],
            }),
        },
        GOLDEN_ROUND_STATUS_PUBLISHED,
        &mut f,
    );
    check(
        "RoundStatusResponse/abandoned",
        &RoundStatusResponse {
            round: 3,
            status: RoundStatus::Abandoned(AbandonReason::PeerOmittedWrite {
                evidence: receipt(),
            }),
        },
        GOLDEN_ROUND_STATUS_ABANDONED,
        &mut f,
    );
    check(
        "RoundStatusResponse/pending",
        &RoundStatusResponse {
            round: 4,
            status: RoundStatus::Pending,
        },
        GOLDEN_ROUND_STATUS_PENDING,
        &mut f,
    );
    check(
        "ErrorResponse",
        &ErrorResponse::new(ErrorCode::Duplicate, "dup"),
        GOLDEN_ERROR_RESPONSE,
        &mut f,
    );
    check(
        "PeerMessage/sets",
        &PeerMessage::Sets(SetsMessage {
            round: 3,
            from: Role::A,
            nonce: [0x0a; 32],
            received: vec![ReceivedWrite {
                account: [0x0b; 32],
                request_id: [0x0c; 16],
                half_hash: [0x0d; 32],
            }],
            committed: vec![[0x0c; 16]],
            early_challenge: Some([0x0e; 16]),
        }),
        GOLDEN_PEER_SETS,
        &mut f,
    );
    check(
        "PeerMessage/audit",
        &PeerMessage::Audit(AuditMessage {
            round: 3,
            from: Role::B,
            values: vec![AuditValue {
                request_id: [0x0c; 16],
                value: [0x0e; 32],
            }],
        }),
        GOLDEN_PEER_AUDIT,
        &mut f,
    );
    check(
        "PeerMessage/shares",
        &PeerMessage::Shares(SharesMessage {
            round: 3,
            from: Role::A,
            data: vec![1, 2, 3, 4].into(),
        }),
        GOLDEN_PEER_SHARES,
        &mut f,
    );
    check(
        "PeerMessage/array_hash",
        &PeerMessage::ArrayHash(ArrayHashMessage {
            round: 3,
            from: Role::B,
            array_hash: [0x06; 32],
            accepted_digest: [0x0f; 32],
            signature: [0x10; 64],
        }),
        GOLDEN_PEER_ARRAY_HASH,
        &mut f,
    );
    check(
        "PeerMessage/abandon",
        &PeerMessage::Abandon(AbandonMessage {
            round: 3,
            from: Role::A,
            reason: AbandonReason::HashMismatch,
        }),
        GOLDEN_PEER_ABANDON,
        &mut f,
    );
    check(
        "PeerMessage/abandon-early",
        &PeerMessage::Abandon(AbandonMessage {
            round: 3,
            from: Role::B,
            reason: AbandonReason::PeerClosedEarly { early_ms: 1500 },
        }),
        GOLDEN_PEER_ABANDON_EARLY,
        &mut f,
    );
    check("PeerAck", &PeerAck { round: 3 }, GOLDEN_PEER_ACK, &mut f);
    assert!(f.is_empty(), "{}", f.join("\n"));
}

#[test]
fn lying_length_prefixes_fail_without_allocating() {
    // A ReadRequest whose key vector claims 2^40 entries, followed by nothing.
    let mut bytes = codec::encode(&ReadRequest {
        fingerprint: [0; 32],
        round: 0,
        array_round: 0,
        account: [0; 32],
        keys: vec![],
        signature: [0; 64],
    });
    // keys length sits after fingerprint (32) + round (8) + array_round (8) + account (32).
    bytes[80..88].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        codec::decode::<ReadRequest>(&bytes),
        Err(CodecError::Malformed(_))
    ));
    // A share array claiming 200 MiB with 4 bytes present: fails after reading what is there.
    let mut bytes = codec::encode(&PeerMessage::Shares(SharesMessage {
        round: 1,
        from: Role::A,
        data: vec![1, 2, 3, 4].into(),
    }));
    let at = 4 + 8 + 4;
    bytes[at..at + 8].copy_from_slice(&(200u64 << 20).to_le_bytes());
    assert!(codec::decode::<PeerMessage>(&bytes).is_err());
    // Above the share bound: refused outright.
    bytes[at..at + 8].copy_from_slice(&((MAX_SHARE_BYTES as u64) + 1).to_le_bytes());
    assert!(codec::decode::<PeerMessage>(&bytes).is_err());
}

#[test]
fn shape_checks_bound_counts_and_lengths() {
    let p = params();
    let mut r = ReadRequest {
        fingerprint: p.fingerprint(),
        round: 5,
        array_round: 3,
        account: [0; 32],
        keys: vec![vec![1; 10]; p.reads_per_round as usize],
        signature: [0; 64],
    };
    assert_eq!(r.check_shape(&p), Ok(()));
    r.keys.push(vec![1]);
    assert!(matches!(
        r.check_shape(&p),
        Err(ShapeError::KeyCount { .. })
    ));
    r.keys.pop();
    r.keys[0] = vec![0; MAX_KEY_BYTES + 1];
    assert!(matches!(
        r.check_shape(&p),
        Err(ShapeError::KeyLength { .. })
    ));
    let w = WriteRequest {
        fingerprint: [0; 32],
        round: 0,
        request_id: [0; 16],
        account: [0; 32],
        public_hash: [0; 32],
        key: vec![],
        signature: [0; 64],
    };
    assert!(w.check_shape().is_err());
    let reg = RegisterRequest {
        fingerprint: [0; 32],
        account: [0; 32],
        invite: Some(vec![0; 257]),
        signature: [0; 64],
    };
    assert_eq!(reg.check_shape(), Err(ShapeError::InviteLength));
}

#[test]
fn error_codes_have_distinct_names_and_error_statuses() {
    let mut names = std::collections::HashSet::new();
    for c in ErrorCode::ALL {
        assert!(names.insert(c.as_str()));
        assert!((400..600).contains(&c.http_status()));
    }
    let long = "é".repeat(2000);
    let e = ErrorResponse::new(ErrorCode::Internal, long);
    assert!(e.message.len() <= MAX_ERROR_MESSAGE_BYTES);
}

#[test]
fn params_fingerprint_is_frozen() {
    assert_eq!(
        hex::encode(params().fingerprint()),
        GOLDEN_PARAMS_FINGERPRINT
    );
}

const GOLDEN_PARAMS: &str = "0c0000000001000004000000d0070000000000000068e5cf8b01000064000000000000008403000000000000b004000000000000100e00000000000002000000040000000400000040000000";
const GOLDEN_PARAMS_FINGERPRINT: &str =
    "2ea139631ed1333707587e29f2682ffdf987799c69fbbbc0077078f53991ac07";
const GOLDEN_INFO_RESPONSE: &str = "0100000000000c0000000001000004000000d0070000000000000068e5cf8b01000064000000000000008403000000000000b004000000000000100e0000000000000200000004000000040000004000000001010101010101010101010101010101010101010101010101010101010101010202020202020202020202020202020202020202020202020202020202020202010500000000000000108fe5cf8b010000";
const GOLDEN_REGISTER_REQUEST: &str = "01010101010101010101010101010101010101010101010101010101010101010202020202020202020202020202020202020202020202020202020202020202010300000000000000746f6b03030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303";
const GOLDEN_REGISTER_RESPONSE: &str =
    "050505050505050505050505050505050505050505050505050505050505050501";
const GOLDEN_WRITE_REQUEST: &str = "0101010101010101010101010101010101010101010101010101010101010101090000000000000002020202020202020202020202020202030303030303030303030303030303030303030303030303030303030303030304040404040404040404040404040404040404040404040404040404040404040200000000000000abcd05050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505";
const GOLDEN_RECEIPT: &str = "010000001111111111111111111111111111111111111111111111111111111111111111070000000000000022222222222222222222222222222222333333333333333333333333333333333333333333333333333333333333333344444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444";
const GOLDEN_COMMIT_REQUEST: &str = "0101010101010101010101010101010101010101010101010101010101010101010000001111111111111111111111111111111111111111111111111111111111111111070000000000000022222222222222222222222222222222333333333333333333333333333333333333333333333333333333333333333344444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444";
const GOLDEN_COMMIT_ACK: &str = "070000000000000022222222222222222222222222222222";
const GOLDEN_READ_REQUEST: &str = "010101010101010101010101010101010101010101010101010101010101010109000000000000000700000000000000030303030303030303030303030303030303030303030303030303030303030302000000000000000100000000000000010200000000000000020305050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505050505";
const GOLDEN_READ_RESPONSE: &str =
    "07000000000000000200000000000000040000000000000009090909040000000000000008080808";
const GOLDEN_ROUND_STATUS_REQUEST: &str = "0300000000000000";
const GOLDEN_ROUND_STATUS_PUBLISHED: &str = "030000000000000001000000030000000000000006060606060606060606060606060606060606060606060606060606060606060100000000000000070707070707070707070707070707070808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080809090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909";
const GOLDEN_ROUND_STATUS_ABANDONED: &str = "03000000000000000200000002000000010000001111111111111111111111111111111111111111111111111111111111111111070000000000000022222222222222222222222222222222333333333333333333333333333333333333333333333333333333333333333344444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444";
const GOLDEN_ROUND_STATUS_PENDING: &str = "040000000000000000000000";
const GOLDEN_ERROR_RESPONSE: &str = "050000000300000000000000647570";
const GOLDEN_PEER_SETS: &str = "000000000300000000000000000000000a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a01000000000000000b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d01000000000000000c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c010e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e";
const GOLDEN_PEER_AUDIT: &str = "0100000003000000000000000100000001000000000000000c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e";
const GOLDEN_PEER_SHARES: &str = "02000000030000000000000000000000040000000000000001020304";
const GOLDEN_PEER_ARRAY_HASH: &str = "0300000003000000000000000100000006060606060606060606060606060606060606060606060606060606060606060f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f10101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010";
const GOLDEN_PEER_ABANDON: &str = "0400000003000000000000000000000001000000";
const GOLDEN_PEER_ABANDON_EARLY: &str = "0400000003000000000000000100000006000000dc05000000000000";
const GOLDEN_PEER_ACK: &str = "0300000000000000";

/// Random and mutated inputs never panic, and whatever does decode is canonical: it encodes
/// back to exactly the input bytes (so one message has one encoding, and signatures or hashes
/// over encodings cannot be malleated).
#[test]
fn random_and_mutated_inputs_do_not_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds = [
        codec::encode(&receipt()),
        codec::encode(&PeerMessage::Shares(SharesMessage {
            round: 1,
            from: Role::A,
            data: vec![7; 64].into(),
        })),
        codec::encode(&RoundStatusResponse {
            round: 1,
            status: RoundStatus::Pending,
        }),
    ];
    for i in 0..3000 {
        let mut bytes = if i % 2 == 0 {
            (0..(next() % 300) as usize)
                .map(|_| next() as u8)
                .collect::<Vec<u8>>()
        } else {
            seeds[i % seeds.len()].clone()
        };
        if !bytes.is_empty() {
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
        }
        fn canonical<T: bincode::Encode + bincode::Decode<()>>(bytes: &[u8]) -> bool {
            codec::decode::<T>(bytes).map_or(true, |v| codec::encode(&v) == bytes)
        }
        assert!(canonical::<PeerMessage>(&bytes));
        assert!(canonical::<ReadRequest>(&bytes));
        assert!(canonical::<WriteRequest>(&bytes));
        assert!(canonical::<RoundStatusResponse>(&bytes));
        assert!(canonical::<RegisterRequest>(&bytes));
        assert!(canonical::<ErrorResponse>(&bytes));
        assert!(canonical::<Params>(&bytes));
    }
}
