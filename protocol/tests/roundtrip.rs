//! Property tests: for every wire type, `decode(encode(v)) == v`, the encoding is canonical
//! (any bytes that decode re-encode to themselves), trailing bytes and truncations are refused,
//! and arbitrary bytes never make a decoder panic.

use proptest::prelude::*;
use protocol::*;

fn sig() -> impl Strategy<Value = [u8; 64]> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut s = [0u8; 64];
        s[..32].copy_from_slice(&a);
        s[32..].copy_from_slice(&b);
        s
    })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::A), Just(Role::B)]
}

prop_compose! {
    fn params()(
        domain_bits in any::<u32>(), slot_len in any::<u32>(), reads_per_round in any::<u32>(),
        round_ms in any::<u64>(), t0_ms in any::<u64>(), send_offset_ms in any::<u64>(),
        write_close_ms in any::<u64>(), cutoff_ms in any::<u64>(),
        publish_deadline_ms in any::<u64>(), read_lag in any::<u32>(), c_max in any::<u32>(),
        write_channels in any::<u32>(), max_writers in any::<u32>(),
    ) -> Params {
        Params {
            domain_bits, slot_len, reads_per_round, round_ms, t0_ms, send_offset_ms,
            write_close_ms, cutoff_ms, publish_deadline_ms, read_lag, c_max, write_channels,
            max_writers,
        }
    }
}

prop_compose! {
    fn receipt()(
        role in role(), account in any::<[u8; 32]>(), round in any::<u64>(),
        request_id in any::<[u8; 16]>(), half_hash in any::<[u8; 32]>(), signature in sig(),
    ) -> Receipt {
        Receipt { role, account, round, request_id, half_hash, signature }
    }
}

fn abandon_reason() -> impl Strategy<Value = AbandonReason> {
    prop_oneof![
        Just(AbandonReason::DeadlineMissed),
        Just(AbandonReason::HashMismatch),
        receipt().prop_map(|evidence| AbandonReason::PeerOmittedWrite { evidence }),
        Just(AbandonReason::PeerEquivocated),
        Just(AbandonReason::PeerAbandoned),
        Just(AbandonReason::LocalStateLost),
        any::<u64>().prop_map(|early_ms| AbandonReason::PeerClosedEarly { early_ms }),
    ]
}

prop_compose! {
    fn published()(
        round in any::<u64>(), array_hash in any::<[u8; 32]>(),
        accepted in prop::collection::vec(any::<[u8; 16]>(), 0..8),
        signature_a in sig(), signature_b in sig(),
    ) -> PublishedRound {
        PublishedRound { round, array_hash, accepted, signature_a, signature_b }
    }
}

fn round_status() -> impl Strategy<Value = RoundStatus> {
    prop_oneof![
        Just(RoundStatus::Pending),
        published().prop_map(RoundStatus::Published),
        abandon_reason().prop_map(RoundStatus::Abandoned),
        Just(RoundStatus::Forgotten),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL.to_vec())
}

prop_compose! {
    fn sets()(
        round in any::<u64>(), from in role(), nonce in any::<[u8; 32]>(),
        received in prop::collection::vec(
            (any::<[u8; 32]>(), any::<[u8; 16]>(), any::<[u8; 32]>()).prop_map(
                |(account, request_id, half_hash)| ReceivedWrite { account, request_id, half_hash },
            ),
            0..6,
        ),
        committed in prop::collection::vec(any::<[u8; 16]>(), 0..6),
        early_challenge in prop::option::of(any::<[u8; 16]>()),
    ) -> SetsMessage {
        SetsMessage { round, from, nonce, received, committed, early_challenge }
    }
}

prop_compose! {
    fn audit()(
        round in any::<u64>(), from in role(),
        values in prop::collection::vec(
            (any::<[u8; 16]>(), any::<[u8; 32]>())
                .prop_map(|(request_id, value)| AuditValue { request_id, value }),
            0..6,
        ),
    ) -> AuditMessage {
        AuditMessage { round, from, values }
    }
}

prop_compose! {
    fn shares()(round in any::<u64>(), from in role(), data in bytes(300)) -> SharesMessage {
        SharesMessage { round, from, data: data.into() }
    }
}

prop_compose! {
    fn array_hash_msg()(
        round in any::<u64>(), from in role(), array_hash in any::<[u8; 32]>(),
        accepted_digest in any::<[u8; 32]>(), signature in sig(),
    ) -> ArrayHashMessage {
        ArrayHashMessage { round, from, array_hash, accepted_digest, signature }
    }
}

fn peer_message() -> impl Strategy<Value = PeerMessage> {
    prop_oneof![
        sets().prop_map(PeerMessage::Sets),
        audit().prop_map(PeerMessage::Audit),
        shares().prop_map(PeerMessage::Shares),
        array_hash_msg().prop_map(PeerMessage::ArrayHash),
        (any::<u64>(), role(), abandon_reason()).prop_map(|(round, from, reason)| {
            PeerMessage::Abandon(AbandonMessage {
                round,
                from,
                reason,
            })
        }),
    ]
}

/// The identity, canonicity, trailing-byte and truncation properties for one value; `cut`
/// picks the truncation point.
fn check<T>(value: &T, cut: prop::sample::Index) -> Result<(), TestCaseError>
where
    T: bincode::Encode + bincode::Decode<()> + PartialEq + std::fmt::Debug,
{
    let bytes = codec::try_encode(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T = codec::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, value);
    prop_assert_eq!(codec::encode(&back), bytes.clone());
    let mut longer = bytes.clone();
    longer.push(0);
    let trailing = matches!(
        codec::decode::<T>(&longer),
        Err(CodecError::TrailingBytes { extra: 1 })
    );
    prop_assert!(trailing, "a trailing byte was not refused");
    if !bytes.is_empty() {
        let at = cut.index(bytes.len());
        prop_assert!(
            codec::decode::<T>(&bytes[..at]).is_err(),
            "prefix of {} bytes",
            at
        );
    }
    Ok(())
}

/// Arbitrary bytes: decoding never panics and whatever decodes is canonical.
fn canonical_or_error<T>(data: &[u8]) -> Result<(), TestCaseError>
where
    T: bincode::Encode + bincode::Decode<()> + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = codec::decode::<T>(data) {
        prop_assert_eq!(codec::encode(&v), data.to_vec());
    }
    Ok(())
}

proptest! {
    #[test]
    fn client_requests_round_trip(
        p in params(), fp in any::<[u8; 32]>(), account in any::<[u8; 32]>(),
        invite in prop::option::of(bytes(300)), round in any::<u64>(),
        array_round in any::<u64>(), request_id in any::<[u8; 16]>(),
        public_hash in any::<[u8; 32]>(), key in bytes(400),
        keys in prop::collection::vec(bytes(80), 0..6), s in sig(), r in receipt(),
        cut in any::<prop::sample::Index>(),
    ) {
        check(&p, cut)?;
        check(&InfoRequest {}, cut)?;
        check(&RegisterRequest { fingerprint: fp, account, invite, signature: s }, cut)?;
        check(
            &WriteRequest {
                fingerprint: fp, round, request_id, account, public_hash, key, signature: s,
            },
            cut,
        )?;
        check(&CommitRequest { fingerprint: fp, peer_receipt: r }, cut)?;
        check(&ReadRequest { fingerprint: fp, round, array_round, account, keys, signature: s }, cut)?;
        check(&RoundStatusRequest { round }, cut)?;
    }

    #[test]
    fn server_responses_round_trip(
        p in params(), role in role(), fp in any::<[u8; 32]>(), key in any::<[u8; 32]>(),
        current_round in any::<Option<u64>>(), now_ms in any::<u64>(), flag in any::<bool>(),
        r in receipt(), round in any::<u64>(), request_id in any::<[u8; 16]>(),
        answers in prop::collection::vec(bytes(64), 0..6), status in round_status(),
        code in error_code(), message in ".{0,40}", cut in any::<prop::sample::Index>(),
    ) {
        check(
            &InfoResponse {
                protocol_version: PROTOCOL_VERSION, role, params: p, fingerprint: fp,
                signing_key: key, current_round, now_ms,
            },
            cut,
        )?;
        check(&RegisterResponse { account: key, already_registered: flag }, cut)?;
        check(&r, cut)?;
        check(&CommitAck { round, request_id }, cut)?;
        check(&ReadResponse { array_round: round, answers }, cut)?;
        check(&RoundStatusResponse { round, status }, cut)?;
        check(&ErrorResponse::new(code, message), cut)?;
    }

    #[test]
    fn peer_messages_round_trip(
        m in peer_message(), round in any::<u64>(), cut in any::<prop::sample::Index>(),
    ) {
        check(&m, cut)?;
        match &m {
            PeerMessage::Sets(x) => check(x, cut)?,
            PeerMessage::Audit(x) => check(x, cut)?,
            PeerMessage::Shares(x) => check(x, cut)?,
            PeerMessage::ArrayHash(x) => check(x, cut)?,
            PeerMessage::Abandon(x) => check(x, cut)?,
        }
        check(&PeerAck { round }, cut)?;
    }

    #[test]
    fn error_messages_are_bounded_on_char_boundaries(code in error_code(), message in ".{0,1100}") {
        let e = ErrorResponse::new(code, message.clone());
        prop_assert!(e.message.len() <= MAX_ERROR_MESSAGE_BYTES);
        prop_assert!(message.starts_with(&e.message));
        if message.len() <= MAX_ERROR_MESSAGE_BYTES {
            prop_assert_eq!(&e.message, &message);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_decode_canonically(data in bytes(512)) {
        canonical_or_error::<Params>(&data)?;
        canonical_or_error::<RegisterRequest>(&data)?;
        canonical_or_error::<WriteRequest>(&data)?;
        canonical_or_error::<CommitRequest>(&data)?;
        canonical_or_error::<ReadRequest>(&data)?;
        canonical_or_error::<InfoResponse>(&data)?;
        canonical_or_error::<ReadResponse>(&data)?;
        canonical_or_error::<RoundStatusResponse>(&data)?;
        canonical_or_error::<ErrorResponse>(&data)?;
        canonical_or_error::<PeerMessage>(&data)?;
        canonical_or_error::<PeerAck>(&data)?;
    }

    /// A valid encoding with one byte changed either fails to decode or decodes canonically.
    #[test]
    fn mutated_encodings_decode_canonically_or_not_at_all(
        m in peer_message(), at in any::<prop::sample::Index>(), byte in any::<u8>(),
    ) {
        let mut bytes = codec::encode(&m);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        canonical_or_error::<PeerMessage>(&bytes)?;
    }
}
