//! Two real servers over TLS on 127.0.0.1:0, in-process; clients use the dpf crate directly.

use crate::common::*;
use protocol::*;
use server_core::config::{Config, Registration, create_signing_key};
use server_core::metrics::Metrics;
use server_core::server::{now_ms, run_with_metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use transport::{HttpsClient, Identity, generate_identity};

struct Server {
    client_addr: SocketAddr,
    admin_addr: SocketAddr,
    pin: transport::Pin,
    config: Config,
    metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Pair {
    a: Server,
    b: Server,
    p: Params,
    _dir: tempfile::TempDir,
}

fn test_params(t0: u64) -> Params {
    Params {
        domain_bits: 8,
        slot_len: 64,
        reads_per_round: 2,
        // Wide phases: a loaded 2-core CI machine runs debug builds with TLS handshakes.
        round_ms: 1500,
        t0_ms: t0,
        send_offset_ms: 20,
        write_close_ms: 900,
        cutoff_ms: 1000,
        publish_deadline_ms: 2900,
        read_lag: 2,
        c_max: 2,
        write_channels: 2,
        max_writers: 16,
    }
}

async fn spawn(
    config: Config,
    client: TcpListener,
    peer: TcpListener,
    admin: TcpListener,
) -> Server {
    let client_addr = client.local_addr().expect("addr");
    let admin_addr = admin.local_addr().expect("addr");
    let pin = Identity::load_pem(&config.tls_cert, &config.tls_key)
        .expect("identity")
        .pin();
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = config.clone();
    let m = metrics.clone();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = rx.await;
        };
        run_with_metrics(cfg, client, peer, Some(admin), shutdown, m)
            .await
            .expect("server runs");
    });
    Server {
        client_addr,
        admin_addr,
        pin,
        config,
        metrics,
        stop: Some(tx),
        task: Some(task),
    }
}

impl Server {
    async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("stops in time")
                .expect("no panic");
        }
    }

    fn client(&self) -> HttpsClient {
        HttpsClient::new(self.client_addr, self.pin, None)
            .expect("client")
            .with_timeouts(Duration::from_secs(2), Duration::from_secs(5))
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

async fn start_pair(registration: Registration) -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    // Round 0 starts shortly; tests act from round 1 on.
    let t0 = now_ms() + 300;
    let p = test_params(t0);
    let mut listeners = Vec::new();
    for _ in 0..2 {
        listeners.push((bind().await, bind().await, bind().await));
    }
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    for role in ["a", "b"] {
        let d = dir.path().join(role);
        std::fs::create_dir_all(&d).expect("mkdir");
        let id = generate_identity(&format!("server-{role}")).expect("identity");
        id.save_pem(&d.join("tls.crt"), &d.join("tls.key"))
            .expect("save");
        let sk = create_signing_key(&d.join("signing.key")).expect("signing key");
        ids.push(id);
        keys.push(public_key(&sk));
    }
    let mut configs = Vec::new();
    for (i, role) in [Role::A, Role::B].into_iter().enumerate() {
        let d = dir.path().join(if i == 0 { "a" } else { "b" });
        let other = 1 - i;
        configs.push(Config {
            role,
            data_dir: d.join("data"),
            listen: listeners[i].0.local_addr().expect("addr").to_string(),
            peer_listen: listeners[i].1.local_addr().expect("addr").to_string(),
            admin_listen: None,
            peer_addr: listeners[other].1.local_addr().expect("addr").to_string(),
            peer_cert_pin: ids[other].pin().to_string(),
            peer_signing_key: hex::encode(keys[other]),
            tls_cert: d.join("tls.crt"),
            tls_key: d.join("tls.key"),
            signing_key: d.join("signing.key"),
            params: p,
            registration: registration.clone(),
            registrations_per_minute: 1000,
        });
    }
    let mut it = listeners.into_iter();
    let (ca, pa, aa) = it.next().expect("a");
    let (cb, pb, ab) = it.next().expect("b");
    let b_cfg = configs.pop().expect("b");
    let a_cfg = configs.pop().expect("a");
    let a = spawn(a_cfg, ca, pa, aa).await;
    let b = spawn(b_cfg, cb, pb, ab).await;
    Pair { a, b, p, _dir: dir }
}

/// POSTs an encoded request; decodes a 200 body as `$resp`, otherwise the ErrorResponse.
macro_rules! call {
    ($client:expr, $path:expr, $req:expr, $resp:ty) => {{
        let (status, body) = $client
            .post($path, codec::encode(&$req))
            .await
            .expect("transport");
        if status == 200 {
            Ok::<$resp, (u16, ErrorResponse)>(codec::decode::<$resp>(&body).expect("decodes"))
        } else {
            Err((
                status,
                codec::decode::<ErrorResponse>(&body).expect("error decodes"),
            ))
        }
    }};
}

/// The first round whose write phase starts at least 50 ms from now, so a test's writes are
/// never late however long the setup took.
fn next_round(p: &Params) -> u64 {
    let now = now_ms();
    let mut r = p.round_at(now).unwrap_or(0);
    while p.at_offset_ms(r, p.send_offset_ms) < now + 50 {
        r += 1;
    }
    r.max(1)
}

async fn sleep_until(t: u64) {
    let now = now_ms();
    if t > now {
        tokio::time::sleep(Duration::from_millis(t - now)).await;
    }
}

async fn register_both(pair: &Pair, c: &TestClient) {
    for s in [&pair.a, &pair.b] {
        let r = call!(
            s.client(),
            paths::REGISTER,
            c.register(&pair.p),
            RegisterResponse
        )
        .expect("register");
        assert_eq!(r.account, c.account);
    }
}

/// Writes at both servers; commits where asked. Returns the receipts.
async fn write(pair: &Pair, w: &WritePair, commit_a: bool, commit_b: bool) -> (Receipt, Receipt) {
    let ra = call!(pair.a.client(), paths::WRITE, w.a.clone(), Receipt).expect("write A");
    let rb = call!(pair.b.client(), paths::WRITE, w.b.clone(), Receipt).expect("write B");
    let fp = pair.p.fingerprint();
    if commit_a {
        call!(
            pair.a.client(),
            paths::COMMIT,
            CommitRequest {
                fingerprint: fp,
                peer_receipt: rb.clone()
            },
            CommitAck
        )
        .expect("commit A");
    }
    if commit_b {
        call!(
            pair.b.client(),
            paths::COMMIT,
            CommitRequest {
                fingerprint: fp,
                peer_receipt: ra.clone()
            },
            CommitAck
        )
        .expect("commit B");
    }
    (ra, rb)
}

async fn read(pair: &Pair, c: &TestClient, round: u64, slots: &[u64], seed: u8) -> Vec<Vec<u8>> {
    let (qa, qb) = c.read(&pair.p, round, slots, seed);
    let ra = call!(pair.a.client(), paths::READ, qa, ReadResponse).expect("read A");
    let rb = call!(pair.b.client(), paths::READ, qb, ReadResponse).expect("read B");
    assert_eq!(ra.answers.len(), pair.p.reads_per_round as usize);
    ra.answers
        .iter()
        .zip(&rb.answers)
        .map(|(x, y)| xor(x, y))
        .collect()
}

async fn published(pair: &Pair, round: u64) -> PublishedRound {
    let info_a = call!(pair.a.client(), paths::INFO, InfoRequest {}, InfoResponse).expect("info");
    let info_b = call!(pair.b.client(), paths::INFO, InfoRequest {}, InfoResponse).expect("info");
    let sa = call!(
        pair.a.client(),
        paths::ROUND_STATUS,
        RoundStatusRequest { round },
        RoundStatusResponse
    )
    .expect("status");
    let sb = call!(
        pair.b.client(),
        paths::ROUND_STATUS,
        RoundStatusRequest { round },
        RoundStatusResponse
    )
    .expect("status");
    assert_eq!(sa, sb, "both servers report the same outcome");
    let RoundStatus::Published(p) = sa.status else {
        panic!("round {round} not published: {:?}", sa.status)
    };
    let digest = accepted_digest(&p.accepted);
    verify(
        &info_a.signing_key,
        &array_hash_message(Role::A, round, &p.array_hash, &digest),
        &p.signature_a,
    )
    .expect("sig A");
    verify(
        &info_b.signing_key,
        &array_hash_message(Role::B, round, &p.array_hash, &digest),
        &p.signature_b,
    )
    .expect("sig B");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_half_writes_and_duplicates_over_tls() {
    let mut pair = start_pair(Registration::Open).await;
    let p = pair.p;
    let (alice, bob, carol) = (TestClient::new(1), TestClient::new(2), TestClient::new(3));
    for c in [&alice, &bob, &carol] {
        register_both(&pair, c).await;
    }
    let info = call!(pair.a.client(), paths::INFO, InfoRequest {}, InfoResponse).expect("info");
    assert_eq!(
        (info.role, info.params, info.fingerprint),
        (Role::A, p, p.fingerprint())
    );

    let r = next_round(&p);
    sleep_until(p.at_offset_ms(r, p.send_offset_ms)).await;
    let wa = alice.write(&p, r, [1; 16], 17, &payload(&p, 0xa1), 1);
    write(&pair, &wa, true, true).await;
    // Bob's write is committed at A only: a half-write.
    let wb = bob.write(&p, r, [2; 16], 99, &payload(&p, 0xb2), 2);
    write(&pair, &wb, true, false).await;
    // Carol writes to A only.
    let wc = carol.write(&p, r, [3; 16], 150, &payload(&p, 0xc3), 3);
    call!(pair.a.client(), paths::WRITE, wc.a.clone(), Receipt).expect("one half");
    // A second write by Alice in the same round is refused, with a typed error and status.
    let again = alice.write(&p, r, [4; 16], 18, &payload(&p, 0xa2), 4);
    let (status, e) =
        call!(pair.a.client(), paths::WRITE, again.a.clone(), Receipt).expect_err("duplicate");
    assert_eq!((status, e.code), (409, ErrorCode::Duplicate));
    // Garbage is a typed 400, not a crash.
    let (status, body) = pair
        .a
        .client()
        .post(paths::WRITE, vec![1, 2, 3])
        .await
        .expect("transport");
    assert_eq!(status, 400);
    assert_eq!(
        codec::decode::<ErrorResponse>(&body).expect("error").code,
        ErrorCode::Malformed
    );

    // Reads in round r + 2 see round r's array: only Alice's message.
    sleep_until(p.at_offset_ms(r + 2, p.send_offset_ms)).await;
    let got = read(&pair, &alice, r + 2, &[17, 99], 9).await;
    assert_eq!(
        got[0], wa.payload,
        "the message written in round r is read back exactly"
    );
    assert!(
        got[1].iter().all(|b| *b == 0),
        "the half-write was dropped on both servers"
    );
    let got = read(&pair, &bob, r + 2, &[150, 17], 10).await;
    assert!(
        got[0].iter().all(|b| *b == 0),
        "the one-server write was dropped"
    );
    assert_eq!(got[1], wa.payload);
    let pubd = published(&pair, r).await;
    assert_eq!(pubd.accepted, vec![[1; 16]]);
    // A read of a round that is not final is refused.
    let (qa, _) = carol.read(&p, r + 2, &[0], 11);
    let mut early = qa.clone();
    early.array_round = r + 1;
    let (status, e) =
        call!(pair.a.client(), paths::READ, early, ReadResponse).expect_err("wrong array round");
    assert_eq!((status, e.code), (409, ErrorCode::WrongRound));

    // Metrics on the admin port count the rejected requests, with no per-client labels.
    let metrics = plain_get(pair.a.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("mpm_errors_total{role=\"A\",code=\"duplicate\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("mpm_rounds_published_total{role=\"A\"}"));
    assert!(
        plain_get(pair.a.admin_addr, "/readyz")
            .await
            .contains("ready")
    );
    assert!(pair.a.metrics.errors_of(ErrorCode::Malformed) >= 1);
    assert_eq!(
        pair.a
            .metrics
            .alarms
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_key_pair_is_rejected_by_the_audit_over_tls() {
    let mut pair = start_pair(Registration::Invite {
        tokens: vec!["t1".into(), "t2".into()],
    })
    .await;
    let p = pair.p;
    let (honest, cheat) = (TestClient::new(21), TestClient::new(22));
    for (c, tok) in [(&honest, "t1"), (&cheat, "t2")] {
        for s in [&pair.a, &pair.b] {
            call!(
                s.client(),
                paths::REGISTER,
                c.register_with(&p, tok.as_bytes()),
                RegisterResponse
            )
            .expect("register");
        }
    }
    // A third account without a token is refused.
    let (status, e) = call!(
        pair.a.client(),
        paths::REGISTER,
        TestClient::new(23).register(&p),
        RegisterResponse
    )
    .expect_err("no token");
    assert_eq!((status, e.code), (403, ErrorCode::RegistrationRefused));

    let r = next_round(&p);
    sleep_until(p.at_offset_ms(r, p.send_offset_ms)).await;
    let wh = honest.write(&p, r, [1; 16], 5, &payload(&p, 0x55), 1);
    write(&pair, &wh, true, true).await;
    let mut rng = dpf::SeededRandom::new([99; 32]);
    let (k1a, _) =
        dpf::WriteKey::r#gen(p.domain_bits, 64, 60, &payload(&p, 0x66), &mut rng).expect("gen");
    let (_, k2b) =
        dpf::WriteKey::r#gen(p.domain_bits, 64, 61, &payload(&p, 0x77), &mut rng).expect("gen");
    let wc = cheat.write_from_keys(&p, r, [2; 16], &k1a, &k2b, 60, &payload(&p, 0x66));
    write(&pair, &wc, true, true).await;

    sleep_until(p.at_offset_ms(r + 2, p.send_offset_ms)).await;
    let got = read(&pair, &honest, r + 2, &[5, 60], 3).await;
    assert_eq!(
        got[0], wh.payload,
        "honest write of the same round is delivered"
    );
    assert!(
        got[1].iter().all(|b| *b == 0),
        "the malformed write changed nothing"
    );
    let got = read(&pair, &cheat, r + 2, &[61, 0], 4).await;
    assert!(got.iter().all(|a| a.iter().all(|b| *b == 0)));
    assert_eq!(published(&pair, r).await.accepted, vec![[1; 16]]);
    assert!(
        pair.a
            .metrics
            .alarms
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the audit failure is alarmed"
    );
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_recovers_and_the_peer_port_requires_the_pinned_cert() {
    let mut pair = start_pair(Registration::Open).await;
    let p = pair.p;
    let alice = TestClient::new(31);
    register_both(&pair, &alice).await;
    let r = next_round(&p);
    sleep_until(p.at_offset_ms(r, p.send_offset_ms)).await;
    let w = alice.write(&p, r, [7; 16], 33, &payload(&p, 0x31), 1);
    write(&pair, &w, true, true).await;
    // Restart A before CUTOFF: it must close round r from its persisted halves and commits.
    pair.a.shutdown().await;
    let cfg = pair.a.config.clone();
    let client = TcpListener::bind(pair.a.client_addr).await.expect("rebind");
    let peer = TcpListener::bind(cfg.peer_listen.as_str())
        .await
        .expect("rebind");
    pair.a = spawn(cfg, client, peer, bind().await).await;
    sleep_until(p.at_offset_ms(r + 2, p.send_offset_ms)).await;
    let got = read(&pair, &alice, r + 2, &[33, 1], 2).await;
    assert_eq!(got[0], w.payload);
    assert_eq!(published(&pair, r).await.accepted, vec![[7; 16]]);

    // The peer port refuses a client that does not present the pinned certificate.
    let stranger = generate_identity("server-a").expect("identity");
    let peer_client = HttpsClient::new(
        pair.b.config.peer_listen.as_str(),
        pair.b.pin,
        Some(&stranger),
    )
    .expect("client")
    .with_timeouts(Duration::from_secs(2), Duration::from_secs(2));
    assert!(peer_client.post(paths::PEER, vec![]).await.is_err());
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

async fn plain_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_loss_abandons_the_round_on_both_and_reads_get_zeros() {
    let mut pair = start_pair(Registration::Open).await;
    let p = pair.p;
    let alice = TestClient::new(41);
    register_both(&pair, &alice).await;
    let r = next_round(&p);
    sleep_until(p.at_offset_ms(r, p.send_offset_ms)).await;
    let w = alice.write(&p, r, [9; 16], 44, &payload(&p, 0x41), 1);
    write(&pair, &w, true, true).await;
    // B goes away before CUTOFF and comes back only after round r's publish deadline.
    pair.b.shutdown().await;
    sleep_until(p.at_offset_ms(r, p.publish_deadline_ms) + 50).await;
    let cfg = pair.b.config.clone();
    let client = TcpListener::bind(pair.b.client_addr).await.expect("rebind");
    let peer = TcpListener::bind(cfg.peer_listen.as_str())
        .await
        .expect("rebind");
    pair.b = spawn(cfg, client, peer, bind().await).await;

    sleep_until(p.at_offset_ms(r + 2, p.send_offset_ms)).await;
    for s in [&pair.a, &pair.b] {
        let st = call!(
            s.client(),
            paths::ROUND_STATUS,
            RoundStatusRequest { round: r },
            RoundStatusResponse
        )
        .expect("status");
        assert!(
            matches!(st.status, RoundStatus::Abandoned(_)),
            "{:?}",
            st.status
        );
    }
    let got = read(&pair, &alice, r + 2, &[44, 0], 5).await;
    assert!(
        got.iter().all(|a| a.iter().all(|b| *b == 0)),
        "abandoned round reads as zeros on both"
    );
    assert!(
        pair.a
            .metrics
            .rounds_abandoned
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // The pair recovers: a later round is published again.
    let w2 = alice.write(&p, r + 2, [10; 16], 45, &payload(&p, 0x42), 2);
    write(&pair, &w2, true, true).await;
    sleep_until(p.at_offset_ms(r + 4, p.send_offset_ms)).await;
    let got = read(&pair, &alice, r + 4, &[45, 0], 6).await;
    assert_eq!(got[0], w2.payload);
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}
