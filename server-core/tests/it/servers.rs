//! Two real servers over TLS on 127.0.0.1:0, in-process; clients use the dpf crate directly.

use crate::common::*;
use protocol::*;
use server_core::config::{Config, Registration, create_signing_key};
use server_core::metrics::Metrics;
use server_core::server::{now_ms, run_with_force};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use transport::{HttpsClient, Identity, generate_identity};

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

struct Server {
    client_addr: SocketAddr,
    admin_addr: SocketAddr,
    pin: transport::Pin,
    config: Config,
    metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// A second stop request: skip the graceful drain.
    force: Option<tokio::sync::oneshot::Sender<()>>,
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
    let (force_tx, force_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = config.clone();
    let m = metrics.clone();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = rx.await;
        };
        let force = async {
            if force_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        run_with_force(cfg, client, peer, Some(admin), shutdown, force, m)
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
        force: Some(force_tx),
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

    /// Stops the server abruptly (a crash or `kill -9`): its task is dropped mid-flight, no
    /// round is finished first.
    async fn kill(&mut self) {
        self.stop.take();
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Starts the server again on its ports and data dir (after `shutdown` or `kill`).
    async fn restart(&mut self) {
        // After `kill` the old listeners close as their aborted tasks are dropped: retry.
        async fn rebind(addr: &str) -> TcpListener {
            for _ in 0..100 {
                if let Ok(l) = TcpListener::bind(addr).await {
                    return l;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("cannot rebind {addr}");
        }
        let cfg = self.config.clone();
        let client = rebind(&self.client_addr.to_string()).await;
        let peer = rebind(&cfg.peer_listen).await;
        *self = spawn(cfg, client, peer, bind().await).await;
    }

    /// GET on the admin port: (status, body).
    async fn admin(&self, path: &str) -> (u16, String) {
        let raw = plain_get(self.admin_addr, path).await;
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }

    /// Polls `/readyz` every 50 ms until it answers `status`; returns the body.
    async fn wait_readyz(&self, status: u16, within: Duration) -> String {
        let start = std::time::Instant::now();
        loop {
            let (s, body) = self.admin("/readyz").await;
            if s == status {
                return body;
            }
            assert!(
                start.elapsed() < within,
                "/readyz still {s} {body:?} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn status(&self, round: u64) -> RoundStatus {
        call!(
            self.client(),
            paths::ROUND_STATUS,
            RoundStatusRequest { round },
            RoundStatusResponse
        )
        .expect("status")
        .status
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
    start_pair_with(registration, |_| {}).await
}

/// [`start_pair`] with both configs adjusted by `tweak`.
async fn start_pair_with(registration: Registration, tweak: impl Fn(&mut Config)) -> Pair {
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
            client_max_connections: 1024,
            client_max_connections_per_ip: 0,
            misbehave: None,
        });
    }
    configs.iter_mut().for_each(&tweak);
    let mut it = listeners.into_iter();
    let (ca, pa, aa) = it.next().expect("a");
    let (cb, pb, ab) = it.next().expect("b");
    let b_cfg = configs.pop().expect("b");
    let a_cfg = configs.pop().expect("a");
    let a = spawn(a_cfg, ca, pa, aa).await;
    let b = spawn(b_cfg, cb, pb, ab).await;
    Pair { a, b, p, _dir: dir }
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
        metrics.contains("mpm_errors_total{role=\"A\",endpoint=\"write\",code=\"duplicate\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("mpm_rounds_published_total{role=\"A\"}"));
    assert!(
        metrics.contains("mpm_errors_total{role=\"A\",endpoint=\"write\",code=\"malformed\"} 1"),
        "{metrics}"
    );
    // Two reads (Alice's, Bob's) were answered by A; one array is N * L bytes.
    assert!(metrics.contains("mpm_reads_answered_total{role=\"A\"} 2"));
    assert!(metrics.contains(&format!(
        "mpm_array_bytes{{role=\"A\"}} {}",
        p.array_bytes()
    )));
    // Round r (at least) went through every phase of the close.
    for phase in server_core::machine::RoundPhase::ALL {
        assert!(
            pair.a.metrics.phase_histogram(phase).count() >= 1,
            "{phase:?}"
        );
    }
    let close = pair
        .a
        .metrics
        .phase_histogram(server_core::machine::RoundPhase::CutoffToPublished);
    assert!(close.last_ms() < p.publish_deadline_ms - p.cutoff_ms);
    let ready = plain_get(pair.a.admin_addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
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

/// The version 1 audit's two-slot forgery over TLS: identical halves refused at commit, the
/// distinct-roots variant refused by the audit, an honest write of the round delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sibling_forgery_is_refused_over_tls() {
    let mut pair = start_pair(Registration::Open).await;
    let p = pair.p;
    let l = p.slot_len as usize;
    let (honest, cheat, cheat2) = (
        TestClient::new(24),
        TestClient::new(25),
        TestClient::new(26),
    );
    for c in [&honest, &cheat, &cheat2] {
        register_both(&pair, c).await;
    }

    let r = next_round(&p);
    sleep_until(p.at_offset_ms(r, p.send_offset_ms)).await;
    let wh = honest.write(&p, r, [1; 16], 5, &payload(&p, 0x55), 1);
    write(&pair, &wh, true, true).await;

    let mut rng = dpf::SeededRandom::new([98; 32]);
    let fake = payload(&p, 0x66);
    let (ka, kb) = dpf::attacks::sibling_forgery(p.domain_bits, l, 30, &fake, 0, false, &mut rng)
        .expect("forgery");
    let same = cheat.write_from_keys(&p, r, [2; 16], &ka, &kb, 60, &fake);
    let (ra, rb) = write(&pair, &same, false, false).await;
    for (server, receipt) in [(&pair.a, rb), (&pair.b, ra)] {
        let (status, e) = call!(
            server.client(),
            paths::COMMIT,
            CommitRequest {
                fingerprint: p.fingerprint(),
                peer_receipt: receipt
            },
            CommitAck
        )
        .expect_err("identical halves");
        assert_eq!((status, e.code), (400, ErrorCode::BadKey), "{e:?}");
    }

    let (ka, kb) = dpf::attacks::sibling_forgery(p.domain_bits, l, 31, &fake, 2, true, &mut rng)
        .expect("forgery");
    let distinct = cheat2.write_from_keys(&p, r, [3; 16], &ka, &kb, 62, &fake);
    write(&pair, &distinct, true, true).await;

    sleep_until(p.at_offset_ms(r + 2, p.send_offset_ms)).await;
    let got = read(&pair, &honest, r + 2, &[5, 60], 3).await;
    assert_eq!(
        got[0], wh.payload,
        "honest write of the same round is delivered"
    );
    let got2 = read(&pair, &cheat, r + 2, &[61, 62], 4).await;
    let got3 = read(&pair, &cheat2, r + 2, &[63, 0], 5).await;
    for a in [&got[1], &got2[0], &got2[1], &got3[0]] {
        assert!(a.iter().all(|b| *b == 0), "the forgeries changed nothing");
    }
    assert_eq!(published(&pair, r).await.accepted, vec![[1; 16]]);
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
    // A crashes before CUTOFF and restarts: it must close round r from its persisted halves
    // and commits. (A graceful shutdown would finish round r first.)
    pair.a.kill().await;
    pair.a.restart().await;
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
    // B crashes before CUTOFF and comes back only after round r's publish deadline. (A graceful
    // shutdown would finish round r with A first.)
    pair.b.kill().await;
    sleep_until(p.at_offset_ms(r, p.publish_deadline_ms) + 50).await;
    pair.b.restart().await;

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

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_mid_round_finishes_it_with_the_peer_and_the_restart_is_in_sync() {
    let test_start = std::time::Instant::now();
    let mut pair = start_pair(Registration::Open).await;
    let p = pair.p;
    let (alice, bob, carol) = (
        TestClient::new(51),
        TestClient::new(52),
        TestClient::new(53),
    );
    for c in [&alice, &bob, &carol] {
        register_both(&pair, c).await;
    }
    let r = next_round(&p);
    sleep_until(p.at_offset_ms(r, p.send_offset_ms)).await;
    let wa = alice.write(&p, r, [51; 16], 10, &payload(&p, 0x51), 1);
    write(&pair, &wa, true, true).await;
    // Carol's halves reach both servers before the signal; she commits after it.
    let wc = carol.write(&p, r, [53; 16], 30, &payload(&p, 0x53), 3);
    let (rca, rcb) = write(&pair, &wc, false, false).await;

    // SIGTERM to A in the middle of round r's OPEN phase.
    let signal_at = now_ms();
    assert_eq!(p.phase_at(r, signal_at), Phase::Open, "test timing");
    let _ = pair.a.stop.take().expect("running").send(());
    let task = pair.a.task.take().expect("running");
    let body = pair.a.wait_readyz(503, Duration::from_secs(1)).await;
    assert!(body.contains("shutting down"), "{body}");
    // No new writes...
    let wb = bob.write(&p, r, [52; 16], 20, &payload(&p, 0x52), 2);
    let (status, e) =
        call!(pair.a.client(), paths::WRITE, wb.a.clone(), Receipt).expect_err("refused");
    assert_eq!((status, e.code), (503, ErrorCode::Unavailable));
    call!(pair.b.client(), paths::WRITE, wb.b.clone(), Receipt).expect("B takes its half");
    // ...but a retry of an accepted write gets its receipt again, and commits of writes received
    // before the signal still complete the round.
    call!(pair.a.client(), paths::WRITE, wa.a.clone(), Receipt).expect("identical retry");
    let fp = p.fingerprint();
    for (s, receipt) in [(&pair.a, rcb), (&pair.b, rca)] {
        call!(
            s.client(),
            paths::COMMIT,
            CommitRequest {
                fingerprint: fp,
                peer_receipt: receipt
            },
            CommitAck
        )
        .expect("commit during the drain");
    }
    // A exits once round r is final and B acknowledged A's messages: before the deadline, with
    // round r published (not abandoned by the deadline, not left half-done).
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("stops in time")
        .expect("no panic");
    let stopped_at = now_ms();
    eprintln!(
        "graceful shutdown: signal at +{} ms in round {r}, exit after {} ms (deadline at +{} ms)",
        signal_at - p.round_start_ms(r),
        stopped_at - signal_at,
        p.publish_deadline_ms
    );
    assert!(stopped_at < p.at_offset_ms(r, p.publish_deadline_ms));
    assert_eq!(load(&pair.a.metrics.last_published_round), r);
    assert_eq!(load(&pair.a.metrics.rounds_abandoned), 0);
    assert!(matches!(pair.b.status(r).await, RoundStatus::Published(_)));

    // Restarted, A reports the same outcome as B, and the content matches.
    pair.a.restart().await;
    assert_eq!(
        published(&pair, r).await.accepted,
        vec![[51; 16], [53; 16]],
        "both finished round r with Alice's and Carol's writes, not Bob's"
    );
    let r2 = next_round(&p);
    assert!(r2 <= r + 2, "restart took too long for this test");
    sleep_until(p.at_offset_ms(r2, p.send_offset_ms)).await;
    let w2 = alice.write(&p, r2, [54; 16], 11, &payload(&p, 0x54), 4);
    write(&pair, &w2, true, true).await;
    sleep_until(p.at_offset_ms(r + 2, p.send_offset_ms)).await;
    let got = read(&pair, &bob, r + 2, &[10, 30], 5).await;
    assert_eq!((&got[0], &got[1]), (&wa.payload, &wc.payload));
    // The next rounds publish on both.
    sleep_until(p.at_offset_ms(r2, p.publish_deadline_ms) + 50).await;
    assert_eq!(published(&pair, r2).await.accepted, vec![[54; 16]]);
    for r in r + 1..r2 {
        assert!(matches!(pair.a.status(r).await, RoundStatus::Published(_)));
    }
    assert_eq!(
        load(&pair.a.metrics.alarms) + load(&pair.b.metrics.alarms),
        0
    );
    pair.a.shutdown().await;
    pair.b.shutdown().await;
    eprintln!("test took {:?}", test_start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_peer_link_and_a_shutdown_without_the_peer_stays_consistent() {
    let test_start = std::time::Instant::now();
    let mut pair = start_pair(Registration::Open).await;
    let p = pair.p;
    let alice = TestClient::new(71);
    register_both(&pair, &alice).await;
    // Ready at once: listeners up, no exchange due yet.
    let (status, body) = pair.a.admin("/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(pair.a.admin("/healthz").await.0, 200);
    // Let one round close with the peer.
    let start = std::time::Instant::now();
    while load(&pair.a.metrics.rounds_published) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no round published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(load(&pair.a.metrics.ready), 1);

    // B crashes: A reports it within 2 round lengths of the last exchange (plus a poll).
    pair.b.kill().await;
    let killed = std::time::Instant::now();
    let limit = Duration::from_millis(2 * p.round_ms);
    let body = pair
        .a
        .wait_readyz(503, limit + Duration::from_secs(1))
        .await;
    let noticed = killed.elapsed();
    assert!(body.starts_with("not ready: peer link down"), "{body}");
    assert_eq!(body.lines().count(), 1, "{body}");
    // Healthy links exchange at least once per round, so the last exchange was at most about
    // one round length before the crash.
    assert!(
        noticed >= limit - Duration::from_millis(p.round_ms + 300),
        "{noticed:?}"
    );
    // B returns: its restart resends its messages and A is ready again.
    pair.b.restart().await;
    let back = std::time::Instant::now();
    pair.a.wait_readyz(200, limit).await;
    let recovered = back.elapsed();

    // A graceful stop of A while B is down (B crashed in round r's OPEN phase, after Alice's
    // write was committed at both): A cannot finish round r with B, and stops once a delivery
    // to B fails a round length after the last exchange, long before round r's deadline.
    let r = p.round_at(now_ms()).expect("round") + 1;
    sleep_until(p.at_offset_ms(r, p.send_offset_ms)).await;
    let w = alice.write(&p, r, [71; 16], 7, &payload(&p, 0x71), 1);
    write(&pair, &w, true, true).await;
    pair.b.kill().await;
    let signal_at = now_ms();
    pair.a.shutdown().await;
    let stopped_at = now_ms();
    assert!(
        stopped_at < p.at_offset_ms(r, p.publish_deadline_ms),
        "stopped {} ms into round {r}",
        stopped_at - p.round_start_ms(r)
    );
    assert!(
        load(&pair.a.metrics.last_final_round) < r,
        "round r left open"
    );
    // Both come back before the deadline and finish round r together, with Alice's write.
    pair.b.restart().await;
    pair.a.restart().await;
    let restarted_at = now_ms();
    loop {
        let (a, b) = (pair.a.status(r).await, pair.b.status(r).await);
        if a != RoundStatus::Pending && b != RoundStatus::Pending {
            break;
        }
        assert!(now_ms() < p.at_offset_ms(r, p.publish_deadline_ms) + 500);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(published(&pair, r).await.accepted, vec![[71; 16]]);
    eprintln!(
        "readyz: 503 {noticed:?} after the peer crashed, 200 {recovered:?} after it returned; \
         graceful stop without the peer at +{} ms in round {r} took {} ms; both restarted at \
         +{} ms and published round {r}; test took {:?}",
        signal_at - p.round_start_ms(r),
        stopped_at - signal_at,
        restarted_at - p.round_start_ms(r),
        test_start.elapsed()
    );
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

/// How one slow client misbehaves.
#[derive(Clone, Copy, Debug)]
enum Slow {
    /// TCP, then a TLS record header and the rest of a ClientHello one byte at a time.
    Handshake,
    /// A full TLS handshake, then request headers one byte at a time.
    Headers,
    /// A full TLS handshake and complete headers, then the body one byte at a time.
    Body,
}

/// Connects from `from_ip` and trickles one byte every 100 ms until the server closes the
/// connection.
async fn slowloris(addr: SocketAddr, pin: transport::Pin, from_ip: &'static str, kind: Slow) {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn trickle<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, bytes: &[u8]) {
        let mut buf = [0u8; 256];
        for b in bytes.iter().cycle() {
            if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                _ => {}
            }
        }
    }
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(from_ip.parse().expect("ip"), 0))
        .expect("bind");
    let Ok(tcp) = sock.connect(addr).await else {
        return;
    };
    if let Slow::Handshake = kind {
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        hello.extend([0u8; 64]);
        return trickle(tcp, &hello).await;
    }
    let connector =
        tokio_rustls::TlsConnector::from(transport::client_config(pin, None).expect("config"));
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    // Refused at once by the per-IP limit: the handshake fails.
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return;
    };
    match kind {
        Slow::Headers => {
            let head = b"POST /v1/write HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
            trickle(tls, head).await
        }
        _ => {
            let head = b"POST /v1/write HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n";
            if tls.write_all(head).await.is_ok() && tls.flush().await.is_ok() {
                trickle(tls, &[0u8; 64]).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_delay_the_round_close() {
    let test_start = std::time::Instant::now();
    let per_ip = 64;
    let mut pair = start_pair_with(Registration::Open, |c| {
        c.client_max_connections_per_ip = per_ip;
    })
    .await;
    let p = pair.p;
    let honest: Vec<TestClient> = (61..65).map(TestClient::new).collect();
    for c in &honest {
        register_both(&pair, c).await;
    }
    // Slow clients on both client ports: 120 from 127.0.0.2 (over its per-IP limit of 64) and
    // 30 from 127.0.0.3, a third each stuck in the handshake, in the headers and in the body.
    // On B's peer port, 40 stuck handshakes from 127.0.0.2 (per-IP limit 32 there).
    let kinds = [Slow::Handshake, Slow::Headers, Slow::Body];
    let mut attack = tokio::task::JoinSet::new();
    for s in [&pair.a, &pair.b] {
        for (ip, n) in [("127.0.0.2", 120), ("127.0.0.3", 30)] {
            for i in 0..n {
                attack.spawn(slowloris(s.client_addr, s.pin, ip, kinds[i % 3]));
            }
        }
    }
    let b_peer: SocketAddr = pair.b.config.peer_listen.parse().expect("addr");
    for _ in 0..40 {
        attack.spawn(slowloris(b_peer, pair.b.pin, "127.0.0.2", Slow::Handshake));
    }
    // Wait until the servers hold them all (what is over the per-IP limits is closed at once).
    let held = per_ip as u64 + 30;
    let start = std::time::Instant::now();
    while load(&pair.a.metrics.port("client").open) < held
        || load(&pair.b.metrics.port("client").open) < held
        || load(&pair.b.metrics.port("peer").open) < 32
    {
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "attack not set up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_a = load(&pair.a.metrics.port("client").open);

    // Honest clients write and commit in round r under attack.
    let r = next_round(&p);
    sleep_until(p.at_offset_ms(r, p.send_offset_ms)).await;
    let mut slowest = Duration::ZERO;
    for (i, c) in honest.iter().enumerate() {
        let t = std::time::Instant::now();
        let w = c.write(
            &p,
            r,
            [61 + i as u8; 16],
            3 * i as u64,
            &payload(&p, i as u8),
            7,
        );
        write(&pair, &w, true, true).await;
        slowest = slowest.max(t.elapsed());
    }
    assert!(now_ms() < p.at_offset_ms(r, p.write_close_ms));
    // The round is published by both well before its deadline.
    let cutoff = p.at_offset_ms(r, p.cutoff_ms);
    sleep_until(cutoff).await;
    let published_after = loop {
        let (a, b) = (pair.a.status(r).await, pair.b.status(r).await);
        if matches!(a, RoundStatus::Published(_)) && matches!(b, RoundStatus::Published(_)) {
            break now_ms() - cutoff;
        }
        assert!(
            now_ms() < p.at_offset_ms(r, p.publish_deadline_ms),
            "not published by the deadline: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let ids: Vec<RequestId> = (61..65).map(|i| [i; 16]).collect();
    assert_eq!(published(&pair, r).await.accepted, ids);

    // The slow connections were held through the whole round (the handshake timeout is 5 s,
    // the header and body timeouts 10 s), and the per-IP limits closed the excess at once.
    let a_client = pair.a.metrics.port("client");
    let b_peer_stats = pair.b.metrics.port("peer");
    let open_a_after = load(&a_client.open);
    let open_b_peer = load(&b_peer_stats.open);
    assert!(
        open_a_after >= held,
        "held slow connections on A: {open_a}, then {open_a_after}"
    );
    assert!(open_b_peer >= 32, "held on B's peer port: {open_b_peer}");
    assert!(load(&a_client.refused_per_ip) >= 120 - per_ip as u64);
    assert!(load(&b_peer_stats.refused_per_ip) >= 40 - 32);
    attack.abort_all();
    let metrics = plain_get(pair.a.admin_addr, "/metrics").await;
    assert!(metrics.contains(
        "mpm_connections_closed_total{role=\"A\",port=\"client\",reason=\"per_ip_limit\"}"
    ));
    eprintln!(
        "slow clients: {open_a} then {open_a_after} open on A's client port, {open_b_peer} on \
         B's peer port; honest write+commit at most {slowest:?}; round published {published_after} ms after cutoff \
         (deadline {} ms after cutoff); cutoff_to_published on A {} ms; test took {:?}",
        p.publish_deadline_ms - p.cutoff_ms,
        pair.a
            .metrics
            .phase_histogram(server_core::machine::RoundPhase::CutoffToPublished)
            .last_ms(),
        test_start.elapsed()
    );
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_request_skips_the_drain_and_the_restart_is_consistent() {
    let mut pair = start_pair(Registration::Open).await;
    let p = pair.p;
    let alice = TestClient::new(71);
    register_both(&pair, &alice).await;
    let r = next_round(&p);
    sleep_until(p.at_offset_ms(r, p.send_offset_ms)).await;
    let w = alice.write(&p, r, [71; 16], 5, &payload(&p, 0x71), 1);
    write(&pair, &w, true, true).await;
    // B is gone: A's graceful stop would wait for it (at least a round length) or for round
    // r's deadline. A second request stops A at once.
    pair.b.kill().await;
    let killed_at = now_ms();
    let _ = pair.a.stop.take().expect("running").send(());
    pair.a.wait_readyz(503, Duration::from_secs(1)).await;
    let _ = pair.a.force.take().expect("running").send(());
    let task = pair.a.task.take().expect("running");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("no panic");
    let stopped_at = now_ms();
    assert!(
        stopped_at < killed_at + p.round_ms,
        "A stopped {} ms after B was killed: before the drain could have given up on B",
        stopped_at - killed_at
    );
    // Both come back and agree on round r.
    pair.a.restart().await;
    pair.b.restart().await;
    sleep_until(p.at_offset_ms(r, p.publish_deadline_ms) + 200).await;
    let (sa, sb) = (pair.a.status(r).await, pair.b.status(r).await);
    assert_eq!(sa, sb, "both servers report the same outcome for round {r}");
    assert!(
        !matches!(sa, RoundStatus::Pending),
        "round {r} is final: {sa:?}"
    );
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

mod misbehave;
