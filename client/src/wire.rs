//! The client's requests and the checks on the servers' responses, in the `protocol` crate's
//! types and its one codec. Pure: no I/O.

use dpf::{RandomSource, ReadKey, WriteKey};
use protocol::{
    CommitAck, CommitRequest, InfoResponse, Params, ReadRequest, ReadResponse, Receipt,
    RegisterRequest, RegisterResponse, Role, RoundStatus, RoundStatusResponse, WriteRequest, codec,
};

use crate::config::ClientConfig;
use crate::engine::{PlanEntry, SlotWrite};
use crate::error::Error;
use crate::identity::Identity;
use crate::net::ServerId;
use crate::store::RoundRecord;

fn role_of(server: ServerId) -> Role {
    match server {
        ServerId::A => Role::A,
        ServerId::B => Role::B,
    }
}

fn protocol_err(server: ServerId, message: impl Into<String>) -> Error {
    Error::Protocol {
        server: server.name(),
        message: message.into(),
    }
}

fn account(identity: &Identity) -> [u8; 32] {
    identity.account_public().to_bytes()
}

/// Checks a server's `Info` against the config: version, role, signing key, and (when given)
/// the pinned parameters and their fingerprint.
pub fn check_info(
    server: ServerId,
    info: &InfoResponse,
    config: &ClientConfig,
    pinned: Option<&Params>,
) -> Result<(), Error> {
    if info.protocol_version != protocol::PROTOCOL_VERSION {
        return Err(protocol_err(
            server,
            format!(
                "speaks protocol version {}, this client {}",
                info.protocol_version,
                protocol::PROTOCOL_VERSION
            ),
        ));
    }
    if info.role != role_of(server) {
        return Err(protocol_err(
            server,
            format!(
                "announces role {} but is configured as {}",
                info.role,
                server.name()
            ),
        ));
    }
    let pinned_key = config.servers()[server.index()].signing_key_bytes()?;
    if info.signing_key != pinned_key {
        return Err(protocol_err(
            server,
            "announces a signing key other than the pinned one",
        ));
    }
    if info.fingerprint != info.params.fingerprint() {
        return Err(protocol_err(
            server,
            "announces an inconsistent parameter fingerprint",
        ));
    }
    if let Some(p) = pinned
        && info.params != *p
    {
        return Err(Error::ParamsMismatch(format!(
            "server {} announces parameters other than the pinned ones; refusing it",
            server.name()
        )));
    }
    Ok(())
}

/// The parameters both servers announce, if they announce the same.
pub fn agreed_params(infos: &[InfoResponse; 2], config: &ClientConfig) -> Result<Params, Error> {
    check_info(ServerId::A, &infos[0], config, None)?;
    check_info(ServerId::B, &infos[1], config, None)?;
    if infos[0].params != infos[1].params {
        return Err(Error::ParamsMismatch(
            "servers A and B announce different parameters; refusing both".into(),
        ));
    }
    Ok(infos[0].params)
}

/// Decodes an `Info` response.
pub fn parse_info(server: ServerId, body: &[u8]) -> Result<InfoResponse, Error> {
    codec::decode(body).map_err(|e| protocol_err(server, format!("info: {e}")))
}

/// The `Register` request (same body for both servers).
pub fn register_request(params: &Params, identity: &Identity, invite: Option<&str>) -> Vec<u8> {
    let fingerprint = params.fingerprint();
    let account = account(identity);
    let invite = invite.map(|t| t.as_bytes().to_vec());
    let msg = protocol::register_message(&fingerprint, &account, invite.as_deref());
    codec::encode(&RegisterRequest {
        fingerprint,
        account,
        invite,
        signature: identity.sign(&msg),
    })
}

/// Checks a `Register` response names our account.
pub fn parse_register(server: ServerId, identity: &Identity, body: &[u8]) -> Result<(), Error> {
    let r: RegisterResponse =
        codec::decode(body).map_err(|e| protocol_err(server, format!("register: {e}")))?;
    if r.account != account(identity) {
        return Err(protocol_err(server, "registered another account"));
    }
    Ok(())
}

/// Both halves of the round's write: DPF key pair for `slot -> payload`, signed with the
/// account key. Returns the encoded `WriteRequest` for A and for B.
pub fn write_requests(
    params: &Params,
    identity: &Identity,
    round: u64,
    request_id: &[u8; 16],
    write: &SlotWrite,
    rng: &mut impl RandomSource,
) -> Result<[Vec<u8>; 2], Error> {
    let (ka, kb) = WriteKey::r#gen(
        params.domain_bits,
        params.slot_len as usize,
        write.slot,
        &write.payload,
        rng,
    )
    .map_err(|e| Error::Dpf(e.to_string()))?;
    let account = account(identity);
    let ctx = protocol::write_ctx(round, request_id, &account);
    let public_hash = ka.public_hash(&ctx);
    if kb.public_hash(&ctx) != public_hash {
        return Err(Error::Dpf(
            "the two key halves disagree on their public part".into(),
        ));
    }
    let signature = identity.sign(&protocol::write_message(round, request_id, &public_hash));
    let fingerprint = params.fingerprint();
    let req = |key: &WriteKey| {
        codec::try_encode(&WriteRequest {
            fingerprint,
            round,
            request_id: *request_id,
            account,
            public_hash,
            key: key.encode(),
            signature,
        })
        .map_err(|e| Error::Dpf(e.to_string()))
    };
    Ok([req(&ka)?, req(&kb)?])
}

/// Both halves of the round's k reads, in the plan's (shuffled) order.
pub fn read_requests(
    params: &Params,
    identity: &Identity,
    round: u64,
    array_round: u64,
    plan: &[PlanEntry],
    rng: &mut impl RandomSource,
) -> Result<[Vec<u8>; 2], Error> {
    let mut keys_a = Vec::with_capacity(plan.len());
    let mut keys_b = Vec::with_capacity(plan.len());
    for e in plan {
        let (a, b) = ReadKey::r#gen(params.domain_bits, e.slot, rng)
            .map_err(|e| Error::Dpf(e.to_string()))?;
        keys_a.push(a.encode());
        keys_b.push(b.encode());
    }
    let account = account(identity);
    let fingerprint = params.fingerprint();
    let req = |keys: Vec<Vec<u8>>| {
        let signature = identity.sign(&protocol::read_message(round, array_round, &account, &keys));
        codec::try_encode(&ReadRequest {
            fingerprint,
            round,
            array_round,
            account,
            keys,
            signature,
        })
        .map_err(|e| Error::Dpf(e.to_string()))
    };
    Ok([req(keys_a)?, req(keys_b)?])
}

/// Verifies a receipt for our write of `rec`: the server's pinned key signed it, and it names
/// this server's role, our account, the round, the request id and the hash of the half we
/// sent. Returns the receipt's encoding (what the store keeps and the commit carries).
pub fn parse_receipt(
    config: &ClientConfig,
    identity: &Identity,
    server: ServerId,
    rec: &RoundRecord,
    body: &[u8],
) -> Result<Vec<u8>, Error> {
    let r: Receipt =
        codec::decode(body).map_err(|e| protocol_err(server, format!("receipt: {e}")))?;
    let sent = match server {
        ServerId::A => rec.write_a.as_deref(),
        ServerId::B => rec.write_b.as_deref(),
    }
    .ok_or_else(|| protocol_err(server, "receipt for a write no longer held"))?;
    let req: WriteRequest = codec::decode(sent)
        .map_err(|e| Error::Corrupt(format!("stored write of round {}: {e}", rec.round)))?;
    let half_hash = protocol::sha256(&req.key);
    let ok = r.role == role_of(server)
        && r.account == account(identity)
        && r.round == rec.round
        && r.request_id[..] == rec.request_id[..]
        && r.half_hash == half_hash;
    if !ok {
        return Err(protocol_err(
            server,
            "receipt does not match the write sent",
        ));
    }
    let key = config.servers()[server.index()].signing_key_bytes()?;
    let msg = protocol::receipt_message(r.role, &r.account, r.round, &r.request_id, &r.half_hash);
    protocol::verify(&key, &msg, &r.signature)
        .map_err(|e| protocol_err(server, format!("receipt signature: {e}")))?;
    Ok(body.to_vec())
}

/// The `Commit` to each server: it carries the OTHER server's receipt. When that receipt did
/// not come back (or did not verify), the commit carries a placeholder receipt of the same
/// encoded size (the other role, our account, round and id, zero hash and signature), which the
/// server refuses. So what each server receives, and its size and time, does not depend on
/// whether the other server's receipt arrived.
pub fn commit_requests(
    params: &Params,
    identity: &Identity,
    rec: &RoundRecord,
    receipts: &[Option<Vec<u8>>; 2],
) -> Result<[Vec<u8>; 2], Error> {
    let request_id: [u8; 16] = rec
        .request_id
        .as_slice()
        .try_into()
        .map_err(|_| Error::Corrupt(format!("request id of round {}", rec.round)))?;
    let one = |to: ServerId| -> Result<Vec<u8>, Error> {
        let other = ServerId::from_index(1 - to.index());
        let peer_receipt = match &receipts[other.index()] {
            Some(bytes) => {
                codec::decode(bytes).map_err(|e| Error::Corrupt(format!("stored receipt: {e}")))?
            }
            None => Receipt {
                role: role_of(other),
                account: account(identity),
                round: rec.round,
                request_id,
                half_hash: [0; 32],
                signature: [0; 64],
            },
        };
        Ok(codec::encode(&CommitRequest {
            fingerprint: params.fingerprint(),
            peer_receipt,
        }))
    };
    Ok([one(ServerId::A)?, one(ServerId::B)?])
}

/// Checks a `CommitAck` names our write.
pub fn parse_commit_ack(server: ServerId, rec: &RoundRecord, body: &[u8]) -> Result<(), Error> {
    let a: CommitAck =
        codec::decode(body).map_err(|e| protocol_err(server, format!("commit ack: {e}")))?;
    if a.round != rec.round || a.request_id[..] != rec.request_id[..] {
        return Err(protocol_err(server, "commit ack names another write"));
    }
    Ok(())
}

/// Decodes a read answer: k answers of L bytes for `array_round`.
pub fn parse_read_answer(
    params: &Params,
    server: ServerId,
    array_round: u64,
    body: &[u8],
) -> Result<Vec<Vec<u8>>, Error> {
    let r: ReadResponse =
        codec::decode(body).map_err(|e| protocol_err(server, format!("read answer: {e}")))?;
    let k = params.reads_per_round as usize;
    let l = params.slot_len as usize;
    if r.array_round != array_round
        || r.answers.len() != k
        || r.answers.iter().any(|a| a.len() != l)
    {
        return Err(protocol_err(server, "read answer of the wrong shape"));
    }
    Ok(r.answers)
}

/// The `RoundStatus` request.
pub fn round_status_request(round: u64) -> Vec<u8> {
    codec::encode(&protocol::RoundStatusRequest { round })
}

/// Whether our write of `round` is in the published accepted set, from a `RoundStatus`
/// answer: `Some(true/false)` for a published round whose two signatures verify under the
/// pinned keys, `Some(false)` for an abandoned round, `None` when not known.
pub fn parse_round_status(
    config: &ClientConfig,
    server: ServerId,
    round: u64,
    request_id: &[u8],
    body: &[u8],
) -> Result<Option<bool>, Error> {
    let r: RoundStatusResponse =
        codec::decode(body).map_err(|e| protocol_err(server, format!("round status: {e}")))?;
    if r.round != round {
        return Err(protocol_err(server, "round status of another round"));
    }
    match r.status {
        RoundStatus::Published(p) => {
            if p.round != round {
                return Err(protocol_err(server, "published round of another round"));
            }
            let digest = protocol::accepted_digest(&p.accepted);
            for (role, sig, cfg) in [
                (Role::A, &p.signature_a, &config.server_a),
                (Role::B, &p.signature_b, &config.server_b),
            ] {
                let msg = protocol::array_hash_message(role, round, &p.array_hash, &digest);
                protocol::verify(&cfg.signing_key_bytes()?, &msg, sig).map_err(|e| {
                    protocol_err(server, format!("published set signature of {role}: {e}"))
                })?;
            }
            Ok(Some(p.accepted.iter().any(|id| id[..] == request_id[..])))
        }
        RoundStatus::Abandoned(_) => Ok(Some(false)),
        RoundStatus::Pending | RoundStatus::Forgotten => Ok(None),
    }
}

/// A readable message from an error response body.
pub fn error_message(status: u16, body: &[u8]) -> String {
    match codec::decode::<protocol::ErrorResponse>(body) {
        Ok(e) => e.to_string(),
        Err(_) => format!("HTTP {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use dpf::SeededRandom;
    use protocol::{PublishedRound, SigningKey};

    struct Fixture {
        keys: [SigningKey; 2],
        config: ClientConfig,
        identity: Identity,
        params: Params,
    }

    fn fixture() -> Fixture {
        let keys = [
            protocol::signing_key_from_bytes(&[1; 32]),
            protocol::signing_key_from_bytes(&[2; 32]),
        ];
        let cfg = |k: &SigningKey, port: u16| ServerConfig {
            address: format!("127.0.0.1:{port}"),
            cert_pin: format!("sha256:{}", hex::encode([port as u8; 32])),
            signing_key: hex::encode(protocol::public_key(k)),
        };
        let params = Params::demo(1_000_000);
        Fixture {
            config: ClientConfig::from_parts(cfg(&keys[0], 1), cfg(&keys[1], 2), Some(params)),
            keys,
            identity: Identity::generate(&mut SeededRandom::new([3; 32])),
            params,
        }
    }

    fn record(f: &Fixture) -> RoundRecord {
        let req = |key: Vec<u8>| {
            codec::encode(&WriteRequest {
                fingerprint: f.params.fingerprint(),
                round: 50,
                request_id: [9; 16],
                account: account(&f.identity),
                public_hash: [4; 32],
                key,
                signature: [0; 64],
            })
        };
        RoundRecord {
            round: 50,
            request_id: vec![9; 16],
            write_a: Some(req(vec![1, 2, 3])),
            write_b: Some(req(vec![4, 5, 6])),
            ..RoundRecord::default()
        }
    }

    fn receipt(f: &Fixture, server: ServerId, half: &[u8], round: u64) -> Vec<u8> {
        let role = role_of(server);
        let acc = account(&f.identity);
        let half_hash = protocol::sha256(half);
        let msg = protocol::receipt_message(role, &acc, round, &[9; 16], &half_hash);
        codec::encode(&Receipt {
            role,
            account: acc,
            round,
            request_id: [9; 16],
            half_hash,
            signature: protocol::sign(&f.keys[server.index()], &msg),
        })
    }

    #[test]
    fn receipts_are_verified_against_the_write_sent() -> Result<(), Error> {
        let f = fixture();
        let rec = record(&f);
        let good_a = receipt(&f, ServerId::A, &[1, 2, 3], 50);
        assert_eq!(
            parse_receipt(&f.config, &f.identity, ServerId::A, &rec, &good_a)?,
            good_a
        );
        let good_b = receipt(&f, ServerId::B, &[4, 5, 6], 50);
        parse_receipt(&f.config, &f.identity, ServerId::B, &rec, &good_b)?;
        // A's receipt presented as B's, a receipt over the other half, another round, garbage.
        assert!(parse_receipt(&f.config, &f.identity, ServerId::B, &rec, &good_a).is_err());
        let wrong_half = receipt(&f, ServerId::A, &[4, 5, 6], 50);
        assert!(parse_receipt(&f.config, &f.identity, ServerId::A, &rec, &wrong_half).is_err());
        let wrong_round = receipt(&f, ServerId::A, &[1, 2, 3], 51);
        assert!(parse_receipt(&f.config, &f.identity, ServerId::A, &rec, &wrong_round).is_err());
        assert!(parse_receipt(&f.config, &f.identity, ServerId::A, &rec, b"junk").is_err());
        let mut forged: Receipt =
            codec::decode(&good_a).map_err(|e| Error::Corrupt(e.to_string()))?;
        forged.signature[0] ^= 1;
        let forged = codec::encode(&forged);
        assert!(matches!(
            parse_receipt(&f.config, &f.identity, ServerId::A, &rec, &forged),
            Err(Error::Protocol { server: "A", .. })
        ));
        Ok(())
    }

    #[test]
    fn placeholder_commits_have_the_size_of_real_ones() -> Result<(), Error> {
        let f = fixture();
        let rec = record(&f);
        let receipts = [
            Some(receipt(&f, ServerId::A, &[1, 2, 3], 50)),
            Some(receipt(&f, ServerId::B, &[4, 5, 6], 50)),
        ];
        let real = commit_requests(&f.params, &f.identity, &rec, &receipts)?;
        let none = commit_requests(&f.params, &f.identity, &rec, &[None, None])?;
        let half = commit_requests(&f.params, &f.identity, &rec, &[receipts[0].clone(), None])?;
        for i in 0..2 {
            assert_eq!(real[i].len(), none[i].len());
            assert_eq!(real[i].len(), half[i].len());
        }
        // The commit to A carries B's receipt and vice versa.
        let to_a: CommitRequest =
            codec::decode(&real[0]).map_err(|e| Error::Corrupt(e.to_string()))?;
        assert_eq!(to_a.peer_receipt.role, Role::B);
        let to_b: CommitRequest =
            codec::decode(&half[1]).map_err(|e| Error::Corrupt(e.to_string()))?;
        assert_eq!(to_b.peer_receipt.role, Role::A);
        let placeholder: CommitRequest =
            codec::decode(&half[0]).map_err(|e| Error::Corrupt(e.to_string()))?;
        assert_eq!(placeholder.peer_receipt.signature, [0; 64]);
        Ok(())
    }

    fn info(f: &Fixture, server: ServerId, params: Params) -> InfoResponse {
        InfoResponse {
            protocol_version: protocol::PROTOCOL_VERSION,
            role: role_of(server),
            params,
            fingerprint: params.fingerprint(),
            signing_key: protocol::public_key(&f.keys[server.index()]),
            current_round: Some(1),
            now_ms: 0,
        }
    }

    #[test]
    fn servers_announcing_other_parameters_are_refused() -> Result<(), Error> {
        let f = fixture();
        let (a, b) = (
            info(&f, ServerId::A, f.params),
            info(&f, ServerId::B, f.params),
        );
        check_info(ServerId::A, &a, &f.config, Some(&f.params))?;
        assert_eq!(agreed_params(&[a.clone(), b.clone()], &f.config)?, f.params);
        let mut other = f.params;
        other.reads_per_round = 8;
        let b2 = info(&f, ServerId::B, other);
        assert!(matches!(
            check_info(ServerId::B, &b2, &f.config, Some(&f.params)),
            Err(Error::ParamsMismatch(_))
        ));
        assert!(matches!(
            agreed_params(&[a.clone(), b2], &f.config),
            Err(Error::ParamsMismatch(_))
        ));
        // Wrong role, wrong key, inconsistent fingerprint.
        assert!(check_info(ServerId::B, &a, &f.config, None).is_err());
        let mut bad_key = a.clone();
        bad_key.signing_key = protocol::public_key(&f.keys[1]);
        assert!(check_info(ServerId::A, &bad_key, &f.config, None).is_err());
        let mut bad_fp = a;
        bad_fp.fingerprint = [0; 32];
        assert!(check_info(ServerId::A, &bad_fp, &f.config, None).is_err());
        Ok(())
    }

    #[test]
    fn published_sets_are_checked_under_both_keys() -> Result<(), Error> {
        let f = fixture();
        let accepted = vec![[1u8; 16], [9; 16]];
        let digest = protocol::accepted_digest(&accepted);
        let sig = |i: usize, role| {
            protocol::sign(
                &f.keys[i],
                &protocol::array_hash_message(role, 50, &[5; 32], &digest),
            )
        };
        let published = |signature_b| {
            codec::encode(&RoundStatusResponse {
                round: 50,
                status: RoundStatus::Published(PublishedRound {
                    round: 50,
                    array_hash: [5; 32],
                    accepted: accepted.clone(),
                    signature_a: sig(0, Role::A),
                    signature_b,
                }),
            })
        };
        let ok = published(sig(1, Role::B));
        assert_eq!(
            parse_round_status(&f.config, ServerId::A, 50, &[9; 16], &ok)?,
            Some(true)
        );
        assert_eq!(
            parse_round_status(&f.config, ServerId::A, 50, &[8; 16], &ok)?,
            Some(false)
        );
        let forged = published(sig(0, Role::B));
        assert!(parse_round_status(&f.config, ServerId::A, 50, &[9; 16], &forged).is_err());
        let pending = codec::encode(&RoundStatusResponse {
            round: 50,
            status: RoundStatus::Pending,
        });
        assert_eq!(
            parse_round_status(&f.config, ServerId::B, 50, &[9; 16], &pending)?,
            None
        );
        assert!(parse_round_status(&f.config, ServerId::B, 51, &[9; 16], &pending).is_err());
        Ok(())
    }

    #[test]
    fn read_answers_must_have_the_pinned_shape() -> Result<(), Error> {
        let f = fixture();
        let k = f.params.reads_per_round as usize;
        let l = f.params.slot_len as usize;
        let enc = |array_round, answers: Vec<Vec<u8>>| {
            codec::encode(&ReadResponse {
                array_round,
                answers,
            })
        };
        assert_eq!(
            parse_read_answer(&f.params, ServerId::A, 7, &enc(7, vec![vec![0; l]; k]))?.len(),
            k
        );
        assert!(
            parse_read_answer(&f.params, ServerId::A, 7, &enc(6, vec![vec![0; l]; k])).is_err()
        );
        assert!(
            parse_read_answer(&f.params, ServerId::A, 7, &enc(7, vec![vec![0; l]; k - 1])).is_err()
        );
        assert!(
            parse_read_answer(&f.params, ServerId::A, 7, &enc(7, vec![vec![0; l - 1]; k])).is_err()
        );
        Ok(())
    }
}
