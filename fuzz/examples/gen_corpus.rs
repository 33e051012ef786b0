//! Writes the committed seed corpus: a few valid encodings per fuzz target, under
//! `fuzz/corpus/<target>/`. Deterministic (seeded keys, fixed values); re-run after a format
//! change with `cargo run --example gen_corpus` from `fuzz/`.

use std::path::{Path, PathBuf};

use client::code::encode_code;
use client::frame::{Fragment, Frame, data_capacity, frame_len};
use client::ratchet::{Direction, GgmTree, KeyBlock, Pending};
use client::{ClientConfig, ServerConfig};
use dpf::{ReadKey, SeededRandom, WriteKey};
use mpm_fuzz::{RECORD_NAMES, small_params};
use protocol::*;
use server_core::store::{encode_batch, record_header};
use server_core::{Config, Registration};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Out {
    root: PathBuf,
    total: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
        self.total += bytes.len();
    }
}

fn receipt(role: Role) -> Receipt {
    Receipt {
        role,
        account: [0x11; 32],
        round: 7,
        request_id: [0x22; 16],
        half_hash: [0x33; 32],
        signature: [0x44; 64],
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    if root.exists() {
        std::fs::remove_dir_all(&root).expect("clear old corpus");
    }
    let mut out = Out { root, total: 0 };
    let mut rng = SeededRandom::new([0x42; 32]);
    let p = small_params();

    // ---- dpf keys ----
    for n in [1u32, 6, 7, 8, 12] {
        let (a, b) = ReadKey::r#gen(n, (1u64 << n) - 1, &mut rng).expect("read key");
        for (party, k) in [("a", a), ("b", b)] {
            let mut v = vec![n as u8];
            v.extend_from_slice(&k.encode());
            out.put("dpf_read_key", &format!("n{n}-{party}"), &v);
        }
    }
    for (n, l) in [(1u32, 16usize), (4, 32), (8, 64)] {
        let payload = vec![0xa5u8; l];
        let (a, b) = WriteKey::r#gen(n, l, 1, &payload, &mut rng).expect("write key");
        for (party, k) in [("a", a), ("b", b)] {
            let mut v = vec![n as u8];
            v.extend_from_slice(&(l as u16).to_le_bytes());
            v.extend_from_slice(&k.encode());
            out.put("dpf_write_key", &format!("n{n}-l{l}-{party}"), &v);
        }
    }

    // ---- protocol: client requests ----
    let t = "protocol_client_requests";
    let (wk, _) =
        WriteKey::r#gen(p.domain_bits, p.slot_len as usize, 3, &[7; 64], &mut rng).expect("wk");
    let read_keys: Vec<Vec<u8>> = (0..p.reads_per_round)
        .map(|i| {
            ReadKey::r#gen(p.domain_bits, u64::from(i), &mut rng)
                .expect("rk")
                .0
                .encode()
        })
        .collect();
    let reg = RegisterRequest {
        fingerprint: p.fingerprint(),
        account: [2; 32],
        invite: Some(b"invite-token".to_vec()),
        signature: [3; 64],
    };
    out.put(t, "register", &codec::encode(&reg));
    out.put(
        t,
        "register-open",
        &codec::encode(&RegisterRequest {
            invite: None,
            ..reg.clone()
        }),
    );
    let write = WriteRequest {
        fingerprint: p.fingerprint(),
        round: 9,
        request_id: [4; 16],
        account: [2; 32],
        public_hash: [5; 32],
        key: wk.encode(),
        signature: [6; 64],
    };
    out.put(t, "write", &codec::encode(&write));
    out.put(
        t,
        "commit",
        &codec::encode(&CommitRequest {
            fingerprint: p.fingerprint(),
            peer_receipt: receipt(Role::B),
        }),
    );
    out.put(
        t,
        "read",
        &codec::encode(&ReadRequest {
            fingerprint: p.fingerprint(),
            round: 9,
            array_round: 7,
            account: [2; 32],
            keys: read_keys,
            signature: [6; 64],
        }),
    );
    out.put(
        t,
        "round-status",
        &codec::encode(&RoundStatusRequest { round: 3 }),
    );

    // ---- protocol: server responses ----
    let t = "protocol_server_responses";
    out.put(t, "params-small", &codec::encode(&p));
    out.put(
        t,
        "params-demo",
        &codec::encode(&Params::demo(1_700_000_000_000)),
    );
    out.put(
        t,
        "info",
        &codec::encode(&InfoResponse {
            protocol_version: PROTOCOL_VERSION,
            role: Role::A,
            params: p,
            fingerprint: p.fingerprint(),
            signing_key: [1; 32],
            current_round: Some(5),
            now_ms: 1_700_000_010_000,
        }),
    );
    out.put(
        t,
        "register",
        &codec::encode(&RegisterResponse {
            account: [5; 32],
            already_registered: true,
        }),
    );
    out.put(t, "receipt", &codec::encode(&receipt(Role::A)));
    out.put(
        t,
        "commit-ack",
        &codec::encode(&CommitAck {
            round: 7,
            request_id: [0x22; 16],
        }),
    );
    out.put(
        t,
        "read",
        &codec::encode(&ReadResponse {
            array_round: 7,
            answers: vec![vec![9; 64], vec![8; 64]],
        }),
    );
    let statuses = [
        ("pending", RoundStatus::Pending),
        (
            "published",
            RoundStatus::Published(PublishedRound {
                round: 3,
                array_hash: [6; 32],
                accepted: vec![[7; 16], [8; 16]],
                signature_a: [9; 64],
                signature_b: [10; 64],
            }),
        ),
        (
            "abandoned-omitted",
            RoundStatus::Abandoned(AbandonReason::PeerOmittedWrite {
                evidence: receipt(Role::B),
            }),
        ),
        (
            "abandoned-mismatch",
            RoundStatus::Abandoned(AbandonReason::HashMismatch),
        ),
        ("forgotten", RoundStatus::Forgotten),
    ];
    for (name, status) in &statuses {
        out.put(
            t,
            &format!("status-{name}"),
            &codec::encode(&RoundStatusResponse {
                round: 3,
                status: status.clone(),
            }),
        );
    }
    out.put(
        t,
        "error",
        &codec::encode(&ErrorResponse::new(
            ErrorCode::WrongRound,
            "round 5 is not current (é)",
        )),
    );

    // ---- protocol: peer messages ----
    let t = "protocol_peer_messages";
    let sets = SetsMessage {
        round: 4,
        from: Role::A,
        nonce: [1; 32],
        received: vec![ReceivedWrite {
            account: [2; 32],
            request_id: [3; 16],
            half_hash: [4; 32],
        }],
        committed: vec![[3; 16]],
        early_challenge: Some([5; 16]),
    };
    let audit = AuditMessage {
        round: 4,
        from: Role::B,
        values: vec![AuditValue {
            request_id: [3; 16],
            value: [5; 32],
        }],
    };
    let shares = SharesMessage {
        round: 4,
        from: Role::A,
        data: vec![0x6b; 64].into(),
    };
    let hash = ArrayHashMessage {
        round: 4,
        from: Role::B,
        array_hash: [7; 32],
        accepted_digest: [8; 32],
        signature: [9; 64],
    };
    let abandon = AbandonMessage {
        round: 4,
        from: Role::A,
        reason: AbandonReason::PeerEquivocated,
    };
    let peer = [
        ("sets", PeerMessage::Sets(sets.clone())),
        ("audit", PeerMessage::Audit(audit.clone())),
        ("shares", PeerMessage::Shares(shares.clone())),
        ("hash", PeerMessage::ArrayHash(hash.clone())),
        ("abandon", PeerMessage::Abandon(abandon.clone())),
    ];
    for (name, m) in &peer {
        out.put(t, &format!("peer-{name}"), &codec::encode(m));
    }
    out.put(t, "sets", &codec::encode(&sets));
    out.put(t, "shares", &codec::encode(&shares));
    out.put(t, "ack", &codec::encode(&PeerAck { round: 4 }));

    // ---- client: contact codes ----
    let t = "contact_code";
    for seed in [0u8, 1, 0xff] {
        out.put(
            t,
            &format!("code-{seed}"),
            encode_code(&[seed; 32]).as_bytes(),
        );
    }
    let code = encode_code(&[0x5c; 32]);
    let (prefix, body) = code.split_at(5);
    let grouped: Vec<&str> = body
        .as_bytes()
        .chunks(6)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    let messy = format!(
        "  {}{}\n",
        prefix.to_uppercase(),
        grouped.join(" - ").to_uppercase()
    );
    out.put(t, "code-grouped", messy.as_bytes());

    // ---- client: frames ----
    let t = "client_frame";
    let slot = 128;
    let n = frame_len(slot).expect("frame len");
    let cap = data_capacity(slot).expect("capacity");
    let block = KeyBlock {
        epoch: 2,
        public: [9; 32],
        switch: Some(77),
    };
    let frames = [
        ("padding", Frame::Padding),
        (
            "ack-only",
            Frame::Data {
                ack: 3,
                fragment: None,
                key: None,
            },
        ),
        (
            "fragment",
            Frame::Data {
                ack: 1,
                fragment: Some(Fragment {
                    seq: 2,
                    last: true,
                    data: b"hello".to_vec(),
                }),
                key: None,
            },
        ),
        (
            "fragment-full",
            Frame::Data {
                ack: 0,
                fragment: Some(Fragment {
                    seq: 9,
                    last: false,
                    data: vec![0xee; cap],
                }),
                key: None,
            },
        ),
        (
            "key-block",
            Frame::Data {
                ack: 4,
                fragment: None,
                key: Some(block),
            },
        ),
        (
            "fragment-and-key",
            Frame::Data {
                ack: 5,
                fragment: Some(Fragment {
                    seq: 6,
                    last: true,
                    data: b"hi".to_vec(),
                }),
                key: Some(KeyBlock {
                    switch: None,
                    ..block
                }),
            },
        ),
    ];
    for (name, f) in &frames {
        let mut v = vec![0u8];
        v.extend_from_slice(&f.encode(n).expect("encode frame"));
        out.put(t, name, &v);
    }

    // ---- client: store blobs ----
    let t = "client_store_blobs";
    let mut tree = GgmTree::new(&[0x31; 32]);
    let mut v = Vec::new();
    tree.encode(&mut v);
    out.put(t, "tree-new", &v);
    tree.advance(1_000_003);
    let mut v = Vec::new();
    tree.encode(&mut v);
    out.put(t, "tree-advanced", &v);
    out.put(t, "direction-empty", &Direction::default().to_bytes());
    let dir = Direction {
        cur: Some(tree.clone()),
        next: Some(Pending {
            tree: GgmTree::new(&[0x32; 32]),
            start: Some(1_000_100),
        }),
    };
    out.put(t, "direction-both", &dir.to_bytes());
    out.put(t, "key-block", &block.encode());

    // ---- configs ----
    let server = |port: u16, key: u8| ServerConfig {
        address: format!("127.0.0.1:{port}"),
        cert_pin: format!("sha256:{}", hex(&[key; 32])),
        signing_key: hex(&public_key(&signing_key_from_bytes(&[key; 32]))),
    };
    let c = ClientConfig::from_parts(server(7101, 1), server(7201, 2), Some(p));
    let text = toml::to_string_pretty(&c).expect("client toml");
    out.put("client_config", "config", text.as_bytes());
    let c = ClientConfig::from_parts(server(7101, 1), server(7201, 2), None);
    let text = toml::to_string_pretty(&c).expect("client toml");
    out.put("client_config", "config-no-params", text.as_bytes());

    let demo = toml::to_string(&Params::demo(1_700_000_000_000)).expect("params toml");
    let peer_key = hex(&public_key(&signing_key_from_bytes(&[4; 32])));
    let server_toml = format!(
        "role = \"A\"\ndata_dir = \"data\"\nlisten = \"0.0.0.0:7101\"\n\
         peer_listen = \"0.0.0.0:7102\"\nadmin_listen = \"127.0.0.1:7103\"\n\
         peer_addr = \"server-b.example:7202\"\npeer_cert_pin = \"sha256:{}\"\n\
         peer_signing_key = \"{peer_key}\"\ntls_cert = \"tls/cert.pem\"\n\
         tls_key = \"tls/key.pem\"\nsigning_key = \"signing.key\"\n\
         registrations_per_minute = 30\n\n[params]\n{demo}\n\
         [registration]\npolicy = \"invite\"\ntokens = [\"alpha\", \"beta\"]\n",
        hex(&[3; 32]),
    );
    let mut cfg: Config = toml::from_str(&server_toml).expect("server seed parses");
    cfg.validate().expect("server seed is valid");
    out.put("server_config", "invite", server_toml.as_bytes());
    cfg.registration = Registration::Open;
    cfg.admin_listen = None;
    let text = toml::to_string_pretty(&cfg).expect("server toml");
    out.put("server_config", "open", text.as_bytes());

    // ---- server records ----
    let t = "server_record";
    for (name, payload) in [
        ("empty", Vec::new()),
        ("receipt", codec::encode(&receipt(Role::A))),
        ("outcome", codec::encode(&statuses[1].1)),
    ] {
        let mut v = record_header(&payload).to_vec();
        v.extend_from_slice(&payload);
        out.put(t, name, &v);
    }
    // A batch file's entries (the target also decodes its input as those).
    let rc = codec::encode(&receipt(Role::A));
    out.put(
        t,
        "batch",
        &encode_batch([("write-1", rc.as_slice()), ("commit-1", &[][..])]),
    );
    let t = "server_restore";
    let payloads: [Vec<u8>; 14] = [
        codec::encode(&reg),
        vec![0x77; 32],
        codec::encode(&write),
        codec::encode(&receipt(Role::B)),
        codec::encode(&sets),
        codec::encode(&statuses[1].1),
        vec![0; p.array_bytes() as usize],
        codec::encode(&PeerMessage::Audit(audit.clone())),
        codec::encode(&PeerMessage::ArrayHash(hash.clone())),
        codec::encode(&PeerMessage::Sets(sets.clone())),
        codec::encode(&PeerMessage::Audit(audit)),
        codec::encode(&PeerMessage::Shares(SharesMessage {
            data: vec![0x6b; p.array_bytes() as usize].into(),
            ..shares
        })),
        codec::encode(&PeerMessage::ArrayHash(hash)),
        codec::encode(&PeerMessage::Abandon(abandon)),
    ];
    for (i, payload) in payloads.iter().enumerate() {
        let mut v = vec![i as u8, 4];
        v.extend_from_slice(payload);
        out.put(t, RECORD_NAMES[i], &v);
    }

    println!("wrote {} bytes of seeds", out.total);
}
