//! The thin tokio shell around the [`Machine`]: listeners, the clock, persistence, peer
//! delivery, batched reads, metrics.

use crate::compute::{ComputeError, answer_reads, run_audit_with_early_until, worker_count};
use crate::config::{Config, ConfigError, load_signing_key};
use crate::early::EarlyApply;
use crate::health::{ReadinessInput, readiness};
use crate::machine::{Action, ApiError, Machine, MachineConfig, NoRandomness, ReadJob};
use crate::metrics::Metrics;
use crate::store::{RecordKey, Store, StoreError};
use protocol::{ErrorCode, ErrorResponse, Params, PeerAck, PeerMessage, Role, codec, paths};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use transport::{HttpsClient, Identity, Request, Response, ServerLimits};

/// After a shutdown request, how long past the publish deadline of the round current at the
/// request the server keeps waiting for the peer to acknowledge its last messages.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// How long an identical retry waits for its first copy's persist before it is answered
/// `Unavailable` (a group commit normally takes milliseconds).
const RETRY_WAIT: Duration = Duration::from_secs(5);
/// Client port: time allowed for a TLS handshake.
pub const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Client port: time allowed for a request's headers (also the idle keep-alive limit), and
/// separately for its body.
pub const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Peer port: connections at once, in total.
pub const PEER_MAX_CONNECTIONS: usize = 64;
/// Peer port: connections at once from one IP address.
pub const PEER_MAX_CONNECTIONS_PER_IP: usize = 32;
/// Peer port: time allowed for a TLS handshake.
pub const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS or identity problem.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// Storage problem at start-up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server could not go on safely and stopped (see the message).
    #[error("stopped: {0}")]
    Fatal(String),
    /// Socket problem.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Unix time in milliseconds from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type ReadReply = oneshot::Sender<Result<Vec<Vec<u8>>, ApiError>>;

struct Shared {
    machine: Mutex<Machine>,
    store: Store,
    peer: HttpsClient,
    peer_pin: transport::Pin,
    metrics: Arc<Metrics>,
    role: Role,
    params: Params,
    reads: mpsc::Sender<(ReadJob, ReadReply)>,
    /// Hard stop: every task ends. Also "stopped" once the sender is gone (`run` was dropped).
    stop: watch::Receiver<bool>,
    /// Listeners are serving.
    listening: AtomicBool,
    /// A shutdown was requested: no new writes or registrations; rounds are being finished.
    /// Set while holding the machine lock, so no write slips in after it.
    draining: AtomicBool,
    /// Unix ms at which this process started serving.
    started_ms: u64,
    /// Unix ms of the last successful exchange with the peer (0: none yet).
    last_peer_ok_ms: AtomicU64,
    /// Unix ms of the last delivery attempt that could not reach the peer at all (connect,
    /// TLS or timeout error; 0: none yet).
    last_peer_unreachable_ms: AtomicU64,
    /// Peer messages not yet acknowledged, by round.
    pending_deliveries: Mutex<BTreeMap<u64, usize>>,
    /// Background tasks (peer deliveries, audits), ended at shutdown.
    background: Mutex<JoinSet<()>>,
    /// Writes applied to their round's share as they arrive.
    early: Arc<EarlyApply>,
    /// Records to persist, group-committed by [`persister`].
    persists: mpsc::Sender<PersistJob>,
    /// Woken whenever a fresh write's persist settles (done or failed): identical retries
    /// wait on it, so no receipt is ever sent for a write that is not on disk.
    write_settled: tokio::sync::Notify,
    /// Set (and `fatal_notify` woken) when the machine asks to stop: `run` then stops and
    /// returns [`ServerError::Fatal`].
    fatal: Mutex<Option<String>>,
    fatal_notify: tokio::sync::Notify,
    /// Test-only misbehaviour (see [`crate::misbehave`]).
    #[cfg(feature = "misbehave")]
    misbehave: Option<crate::misbehave::Misbehave>,
}

/// One record to persist and where to report that it is durable.
struct PersistJob {
    key: RecordKey,
    bytes: Arc<Vec<u8>>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Records per group commit at most.
const PERSIST_BATCH: usize = 256;

/// Persists records in group commits: whatever is queued while one batch is being written
/// goes into the next, so a burst of writes and commits costs a few journal commits instead of
/// two fsyncs each. A record is reported durable only after its batch is.
async fn persister(store: Store, mut rx: mpsc::Receiver<PersistJob>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < PERSIST_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let records: Vec<(RecordKey, Arc<Vec<u8>>)> = batch
            .iter_mut()
            .map(|j| (j.key.clone(), std::mem::take(&mut j.bytes)))
            .collect();
        let store = store.clone();
        let res = tokio::task::spawn_blocking(move || {
            let refs: Vec<(&RecordKey, &[u8])> =
                records.iter().map(|(k, v)| (k, v.as_slice())).collect();
            store.put_many(&refs).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        for j in batch {
            let r = res.clone().map_err(|e| StoreError::Io {
                path: j.key.name.clone(),
                source: std::io::Error::other(e),
            });
            let _ = j.done.send(r);
        }
    }
}

impl Shared {
    /// Persists one record (through the group committer).
    async fn persist(&self, key: RecordKey, bytes: Arc<Vec<u8>>) -> Result<(), StoreError> {
        #[cfg(feature = "misbehave")]
        if let Some(ms) = self
            .misbehave
            .as_ref()
            .and_then(|m| m.failing_persist(key.round, &key.name))
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return Err(StoreError::Io {
                path: key.name.clone(),
                source: std::io::Error::other("misbehave: failing disk"),
            });
        }
        let (done, wait) = oneshot::channel();
        let stopped = || StoreError::Io {
            path: key.name.clone(),
            source: std::io::Error::other("the server is stopping"),
        };
        if self
            .persists
            .send(PersistJob {
                key: key.clone(),
                bytes,
                done,
            })
            .await
            .is_err()
        {
            return Err(stopped());
        }
        wait.await.unwrap_or_else(|_| Err(stopped()))
    }

    fn machine(&self) -> MutexGuard<'_, Machine> {
        // A panic while holding the lock cannot leave the machine half-updated in a way that
        // matters more than stopping would; keep serving.
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn peer_ok(&self) {
        self.last_peer_ok_ms.fetch_max(now_ms(), Ordering::Relaxed);
    }

    fn spawn_background(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.background.lock().unwrap_or_else(|p| p.into_inner());
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    fn deliveries_pending_through(&self, round: u64) -> bool {
        let pending = self
            .pending_deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending.range(..=round).any(|(_, n)| *n > 0)
    }

    /// The readiness rule's inputs at `now`, given the machine's latest final round.
    fn readiness_input(&self, now: u64, last_final_round: Option<u64>) -> ReadinessInput {
        let last = self.last_peer_ok_ms.load(Ordering::Relaxed);
        ReadinessInput {
            now_ms: now,
            params: self.params,
            listeners_up: self.listening.load(Ordering::Relaxed),
            draining: self.draining(),
            started_ms: self.started_ms,
            last_peer_ok_ms: (last > 0).then_some(last),
            last_final_round,
        }
    }
}

/// Counts one unacknowledged peer message of a round while it lives.
struct PendingDelivery {
    shared: Arc<Shared>,
    round: u64,
}

impl PendingDelivery {
    fn new(shared: Arc<Shared>, round: u64) -> PendingDelivery {
        *shared
            .pending_deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(round)
            .or_insert(0) += 1;
        PendingDelivery { shared, round }
    }
}

impl Drop for PendingDelivery {
    fn drop(&mut self) {
        let mut pending = self
            .shared
            .pending_deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pending.get_mut(&self.round) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pending.remove(&self.round);
            }
        }
    }
}

fn error_response(metrics: &Metrics, endpoint: &str, e: &ApiError) -> Response {
    metrics.error(endpoint, e.code);
    let body = codec::encode(&ErrorResponse::new(e.code, e.message.clone()));
    Response::binary(e.code.http_status(), body)
}

fn api(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        message: message.into(),
    }
}

/// Runs one server until `shutdown` completes, then shuts down gracefully: `/readyz` turns 503,
/// new writes and registrations are refused (`unavailable`), the rounds up to the current one
/// are finished with the peer (see `drain`), then every task stops and `run` returns. Every
/// state change is persisted before it takes effect, so there is nothing left to flush.
/// Listeners are bound by the caller (tests bind `127.0.0.1:0`). The admin listener serves
/// plain HTTP and must be on loopback.
pub async fn run(
    config: Config,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    admin_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    run_with_metrics(
        config,
        client_listener,
        peer_listener,
        admin_listener,
        shutdown,
        Arc::default(),
    )
    .await
}

/// [`run`], sharing a [`Metrics`] the caller can inspect (tests).
pub async fn run_with_metrics(
    config: Config,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    admin_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
    metrics: Arc<Metrics>,
) -> Result<(), ServerError> {
    run_with_force(
        config,
        client_listener,
        peer_listener,
        admin_listener,
        shutdown,
        std::future::pending(),
        metrics,
    )
    .await
}

/// [`run_with_metrics`] with a second stop request: when `force` completes during the
/// graceful stop, the server stops at once instead of waiting for the rounds in progress to
/// finish with the peer (as after a crash, the restart finishes or abandons them together
/// with the peer). The binaries map a second SIGTERM or Ctrl-C to it.
pub async fn run_with_force(
    config: Config,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    admin_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
    metrics: Arc<Metrics>,
) -> Result<(), ServerError> {
    config.validate()?;
    let identity = Identity::load_pem(&config.tls_cert, &config.tls_key)?;
    let signing_key = load_signing_key(&config.signing_key)?;
    let peer_pin = config.peer_pin()?;
    let peer_signing_key = config.peer_signing_key_bytes()?;
    let params = config.params;
    let role = config.role;
    std::fs::create_dir_all(&config.data_dir)?;
    let store = Store::open(&config.data_dir)?;

    let mut machine = Machine::new(
        MachineConfig {
            role,
            params,
            signing_key,
            peer_signing_key,
            registration: config.registration.clone(),
            registrations_per_minute: config.registrations_per_minute,
        },
        Box::new(|buf: &mut [u8]| getrandom::fill(buf).map_err(|_| NoRandomness)),
    );
    #[cfg(feature = "misbehave")]
    if let Some(m) = &config.misbehave {
        tracing::warn!(misbehaviour = ?m, "{}", crate::misbehave::MARKER);
        machine.set_misbehave(Some(m.clone()));
    }
    let now = now_ms();
    restore(&mut machine, &store, &metrics, now)?;
    metrics
        .accounts
        .store(machine.account_count() as u64, Ordering::Relaxed);
    let resumed = machine.resume(now);

    let peer = HttpsClient::new(&config.peer_addr, peer_pin, Some(&identity))?
        .with_timeouts(Duration::from_secs(2), Duration::from_secs(10))
        .with_max_response_bytes(64 << 10);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (read_tx, read_rx) = mpsc::channel(1024);
    let (persist_tx, persist_rx) = mpsc::channel(4096);
    // Ends when the last sender (in `Shared`) is gone.
    tokio::spawn(persister(store.clone(), persist_rx));
    metrics
        .array_bytes
        .store(params.array_bytes(), Ordering::Relaxed);
    let shared = Arc::new(Shared {
        machine: Mutex::new(machine),
        store,
        peer,
        peer_pin,
        metrics: metrics.clone(),
        role,
        params,
        reads: read_tx,
        stop: stop_rx.clone(),
        listening: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        started_ms: now,
        last_peer_ok_ms: AtomicU64::new(0),
        last_peer_unreachable_ms: AtomicU64::new(0),
        pending_deliveries: Mutex::new(BTreeMap::new()),
        background: Mutex::new(JoinSet::new()),
        persists: persist_tx,
        write_settled: tokio::sync::Notify::new(),
        fatal: Mutex::new(None),
        fatal_notify: tokio::sync::Notify::new(),
        early: Arc::new(EarlyApply::start(
            role,
            params.domain_bits,
            params.n_slots() as usize,
            params.slot_len as usize,
        )),
        #[cfg(feature = "misbehave")]
        misbehave: config.misbehave.clone(),
    });
    let _ = execute(shared.clone(), resumed).await;

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = JoinSet::new();
    // Clock.
    {
        let shared = shared.clone();
        let mut stop = stop_rx.clone();
        let tick = Duration::from_millis((params.round_ms / 50).clamp(5, 50));
        tasks.spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let now = now_ms();
                if let Some(r) = params.round_at(now) {
                    shared.metrics.current_round.store(r, Ordering::Relaxed);
                }
                let (actions, last_final, held) = {
                    let mut m = shared.machine();
                    let actions = m.tick(now);
                    (actions, m.last_final_round(), m.held_array_bytes())
                };
                let m = &shared.metrics;
                m.arrays_held_bytes.store(held, Ordering::Relaxed);
                if let Some(f) = last_final {
                    m.last_final_round.fetch_max(f, Ordering::Relaxed);
                }
                let ready = readiness(&shared.readiness_input(now, last_final)).is_ok();
                m.ready.store(u64::from(ready), Ordering::Relaxed);
                let _ = execute(shared.clone(), actions).await;
            }
        });
    }
    // Read batcher.
    tasks.spawn(read_batcher(shared.clone(), read_rx, stop_rx.clone()));
    // Listeners (bound by the caller, so connections queue in the backlog until now). A
    // listener task that ends while the server runs clears this again.
    shared.listening.store(true, Ordering::Relaxed);
    // Client port.
    {
        let shared = shared.clone();
        let tls = transport::server_config(&identity, None)?;
        let limits = ServerLimits {
            max_body_bytes: 1 << 20,
            max_connections: config.client_max_connections.max(1),
            max_connections_per_ip: match config.client_max_connections_per_ip {
                0 => usize::MAX,
                n => n,
            },
            handshake_timeout: CLIENT_HANDSHAKE_TIMEOUT,
            read_timeout: CLIENT_READ_TIMEOUT,
            ..ServerLimits::default()
        };
        let stats = metrics.port("client");
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            let watch = shared.clone();
            let handler = move |req: Request| {
                let shared = shared.clone();
                async move { handle_client(shared, req).await }
            };
            let r = transport::serve_with_stats(
                client_listener,
                Some(tls),
                limits,
                stats,
                handler,
                stop,
            )
            .await;
            listener_ended(&watch, "client", r);
        });
    }
    // Peer port (mutual TLS, only the pinned peer certificate).
    {
        let shared = shared.clone();
        let tls = transport::server_config(&identity, Some(peer_pin))?;
        let limits = ServerLimits {
            max_body_bytes: params.array_bytes() as usize + 4096,
            max_connections: PEER_MAX_CONNECTIONS,
            max_connections_per_ip: PEER_MAX_CONNECTIONS_PER_IP,
            handshake_timeout: PEER_HANDSHAKE_TIMEOUT,
            ..ServerLimits::default()
        };
        let stats = metrics.port("peer");
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            let watch = shared.clone();
            let handler = move |req: Request| {
                let shared = shared.clone();
                async move { handle_peer(shared, req).await }
            };
            let r =
                transport::serve_with_stats(peer_listener, Some(tls), limits, stats, handler, stop)
                    .await;
            listener_ended(&watch, "peer", r);
        });
    }
    // Admin port (plain HTTP, loopback).
    if let Some(admin) = admin_listener {
        let shared = shared.clone();
        let limits = ServerLimits {
            max_body_bytes: 1024,
            max_connections: 16,
            ..ServerLimits::default()
        };
        let stats = metrics.port("admin");
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            let watch = shared.clone();
            let handler = move |req: Request| {
                let shared = shared.clone();
                async move { handle_admin(&shared, &req) }
            };
            let r = transport::serve_with_stats(admin, None, limits, stats, handler, stop).await;
            listener_ended(&watch, "admin", r);
        });
    }
    tracing::info!(role = %role, "server running");
    let fatal = tokio::select! {
        _ = shutdown => false,
        _ = shared.fatal_notify.notified() => true,
    };
    // A fatal stop does not drain: finishing rounds needs what just failed. The peer abandons
    // them at their deadlines and a restart rejoins it.
    tokio::select! {
        _ = drain(&shared), if !fatal => {}
        _ = std::future::ready(()), if fatal => {}
        _ = force => {
            tracing::warn!(
                "second stop request: stopping without finishing the rounds in progress; a \
                 restart finishes or abandons them together with the peer"
            );
        }
    }
    shared.listening.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let drain_tasks = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain_tasks)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop in time");
    }
    // Peer deliveries stop at once; an audit still computing is dropped (a restart recomputes
    // it from the persisted halves).
    let mut background =
        std::mem::take(&mut *shared.background.lock().unwrap_or_else(|p| p.into_inner()));
    let ended = async { while background.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), ended)
        .await
        .is_err()
    {
        background.abort_all();
    }
    // Every state change was persisted before it took effect; nothing is left to flush.
    tracing::info!(role = %role, "stopped");
    let fatal = shared
        .fatal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match fatal {
        Some(message) => Err(ServerError::Fatal(message)),
        None => Ok(()),
    }
}

/// A listener returned: expected at shutdown; otherwise the server is no longer ready.
fn listener_ended(shared: &Shared, port: &str, result: std::io::Result<()>) {
    if let Err(e) = &result {
        tracing::error!(port, error = %e, "listener failed");
    }
    if !shared.stopped() {
        tracing::error!(port, "listener stopped while the server runs");
        shared.listening.store(false, Ordering::Relaxed);
    }
}

/// Graceful shutdown, first part: refuse new writes and registrations, then keep closing rounds
/// with the peer until every round up to the one current at the request is final (published
/// or abandoned) and the peer acknowledged every message of those rounds. Stops waiting
/// otherwise [`DRAIN_GRACE`] after that round's publish deadline (by its deadline the round is
/// final anyway: the machine abandons it), or as soon as the peer is gone (a delivery
/// could not reach it since the request, and nothing was exchanged for a round length; a
/// healthy peer exchanges several messages per round). Stopping early is what a crash does:
/// the restart logic keeps both servers consistent. Reads, commits (of writes already
/// received), round status and the peer port keep working meanwhile.
async fn drain(shared: &Arc<Shared>) {
    {
        let _machine = shared.machine();
        shared.draining.store(true, Ordering::Relaxed);
    }
    shared.metrics.ready.store(0, Ordering::Relaxed);
    let p = shared.params;
    let started = now_ms();
    let Some(round) = p.round_at(started) else {
        tracing::info!(role = %shared.role, "shutting down (before round 0)");
        return;
    };
    let limit = p
        .at_offset_ms(round, p.publish_deadline_ms)
        .saturating_add(DRAIN_GRACE.as_millis() as u64);
    tracing::info!(
        role = %shared.role,
        round,
        "shutting down: no new writes; finishing rounds up to {round} with the peer"
    );
    loop {
        let final_ = shared.machine().all_final_through(round);
        if final_ && !shared.deliveries_pending_through(round) {
            let outcome = match shared.machine().status(round) {
                protocol::RoundStatus::Published(_) => "published",
                protocol::RoundStatus::Abandoned(_) => "abandoned",
                _ => "forgotten",
            };
            tracing::info!(
                round,
                outcome,
                ms = now_ms().saturating_sub(started),
                "rounds finished with the peer"
            );
            return;
        }
        let now = now_ms();
        let last_ok = shared.last_peer_ok_ms.load(Ordering::Relaxed);
        let unreachable = shared.last_peer_unreachable_ms.load(Ordering::Relaxed);
        let peer_gone = unreachable >= started
            && unreachable > last_ok
            && now.saturating_sub(last_ok) >= p.round_ms;
        if now >= limit || peer_gone || shared.stopped() {
            tracing::warn!(
                round,
                final_,
                peer_gone,
                "stopping before every round was finished with the peer; a restart resends \
                 our messages and finishes or abandons those rounds together with the peer"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn restore(
    machine: &mut Machine,
    store: &Store,
    metrics: &Metrics,
    now: u64,
) -> Result<(), StoreError> {
    let p = *machine.params();
    for name in store.list(None)? {
        let key = RecordKey::global(name);
        match store.get(&key) {
            Ok(Some(bytes)) => {
                if let Err(e) = machine.restore(&key, &bytes) {
                    tracing::error!(error = %e, "unusable record");
                    metrics.corrupt_files.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "corrupted record ignored");
                metrics.corrupt_files.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let keep_from = p
        .round_at(now)
        .map_or(0, |c| c.saturating_sub(u64::from(p.read_lag) + 1));
    for round in store.rounds()? {
        if round < keep_from {
            store.remove_round(round)?;
            continue;
        }
        let loaded = store.load_round(round)?;
        for path in &loaded.corrupt {
            tracing::error!(
                path,
                round,
                "corrupted record file; round will be abandoned"
            );
            metrics.corrupt_files.fetch_add(1, Ordering::Relaxed);
            machine.restore_corrupt(Some(round));
        }
        for (name, bytes) in loaded.records {
            let key = RecordKey::round(round, name);
            if let Err(e) = machine.restore(&key, &bytes) {
                tracing::error!(error = %e, "unusable record; round will be abandoned");
                metrics.corrupt_files.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Carries out actions in order. Returns an error if a `Persist` failed (the remaining actions
/// are dropped and the machine is told, so the round is abandoned rather than closed wrongly).
fn execute(
    shared: Arc<Shared>,
    actions: Vec<Action>,
) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>> {
    Box::pin(async move {
        for action in actions {
            match action {
                Action::Persist { key, bytes } => {
                    let res = shared.persist(key.clone(), bytes).await;
                    if let Err(e) = res {
                        shared
                            .metrics
                            .persist_failures
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "persist failed");
                        if let Some(round) = key.round {
                            let more = shared.machine().persist_failed(now_ms(), round);
                            let _ = execute(shared.clone(), more).await;
                        }
                        return Err(e);
                    }
                }
                Action::Fatal { message } => {
                    tracing::error!(%message, "stopping");
                    shared
                        .fatal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(message);
                    // `notify_one` keeps a permit, so `run` sees it even if it is not waiting
                    // yet.
                    shared.fatal_notify.notify_one();
                }
                Action::SendPeer(msg) => {
                    #[cfg(feature = "misbehave")]
                    let msg = match &shared.misbehave {
                        Some(m) => m.outgoing(msg),
                        None => msg,
                    };
                    // Counted before the task starts, so a drain never misses it.
                    let pending = PendingDelivery::new(shared.clone(), msg.round());
                    shared.spawn_background(deliver(shared.clone(), msg, pending));
                }
                Action::Audit(job) => {
                    let task_shared = shared.clone();
                    shared.spawn_background(async move {
                        let shared = task_shared;
                        let round = job.round;
                        let started = Instant::now();
                        let early = shared.early.clone();
                        let p = shared.params;
                        let deadline = p.at_offset_ms(round, p.publish_deadline_ms);
                        let res = tokio::task::spawn_blocking(move || {
                            let applied = early.take(job.round);
                            tracing::debug!(
                                round,
                                writes = job.writes.len(),
                                applied_early = applied.as_ref().map_or(0, |e| e.applied.len()),
                                audited_early = applied.as_ref().map_or(0, |e| e.values.len()),
                                early_write_us = early.write_ns() / 1000,
                                "audit started"
                            );
                            // Past the deadline the round is abandoned whatever this computes.
                            let late = || now_ms() >= deadline;
                            run_audit_with_early_until(&job, applied, worker_count(), &late)
                        })
                        .await;
                        if shared.stopped() {
                            // Stopped meanwhile: a restart recomputes the audit.
                            return;
                        }
                        let ms = started.elapsed().as_millis() as u64;
                        shared.metrics.audit_eval.observe_ms(ms);
                        tracing::debug!(round, ms, "audit computed");
                        let now = now_ms();
                        let more = match res {
                            Ok(Ok(result)) => shared.machine().audit_done(now, result),
                            Ok(Err(ComputeError::Cancelled)) => {
                                tracing::warn!(
                                    round,
                                    "audit given up: the round's deadline passed"
                                );
                                shared.machine().compute_cancelled(now, round)
                            }
                            Ok(Err(e)) => {
                                tracing::error!(error = %e, round, "audit computation failed");
                                shared.machine().compute_failed(now, round)
                            }
                            Err(e) => {
                                tracing::error!(error = %e, round, "audit task failed");
                                shared.machine().compute_failed(now, round)
                            }
                        };
                        let _ = execute(shared, more).await;
                    });
                }
                Action::Published { round } => {
                    shared
                        .metrics
                        .rounds_published
                        .fetch_add(1, Ordering::Relaxed);
                    shared
                        .metrics
                        .last_published_round
                        .fetch_max(round, Ordering::Relaxed);
                    shared
                        .metrics
                        .last_final_round
                        .fetch_max(round, Ordering::Relaxed);
                    tracing::info!(round, "round published");
                }
                Action::Abandoned { round, reason } => {
                    shared
                        .metrics
                        .rounds_abandoned
                        .fetch_add(1, Ordering::Relaxed);
                    shared
                        .metrics
                        .last_final_round
                        .fetch_max(round, Ordering::Relaxed);
                    tracing::warn!(round, ?reason, "round abandoned");
                }
                Action::EarlyChallenge { round, challenge } => {
                    shared.early.set_challenge(round, challenge);
                }
                Action::PhaseDone { round, phase, ms } => {
                    shared.metrics.phase(phase, ms);
                    tracing::debug!(round, phase = phase.as_str(), ms, "round phase done");
                }
                Action::Alarm { round, message } => {
                    shared.metrics.alarms.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(round, alarm = %message, "ALARM");
                }
                Action::Prune { below } => {
                    shared.early.forget_below(below);
                    let store = shared.store.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Ok(rounds) = store.rounds() {
                            for r in rounds.into_iter().filter(|r| *r < below) {
                                if let Err(e) = store.remove_round(r) {
                                    tracing::warn!(error = %e, "cannot prune round");
                                }
                            }
                        }
                    })
                    .await;
                }
            }
        }
        Ok(())
    })
}

/// Delivers one peer message, retrying with backoff until acknowledged, the round is
/// forgotten, or the server stops. `_pending` counts it as unacknowledged until it returns.
async fn deliver(shared: Arc<Shared>, msg: PeerMessage, _pending: PendingDelivery) {
    // Encoded once; every retry sends the same bytes without copying them. The message is
    // dropped here, so a share array it held is not kept alive by the delivery.
    let body = transport::Bytes::from(codec::encode(&msg));
    let (round, kind) = (msg.round(), msg.kind());
    drop(msg);
    let mut backoff = Duration::from_millis(50);
    let mut stop = shared.stop.clone();
    loop {
        if shared.stopped() {
            return;
        }
        if shared.machine().status(round) == protocol::RoundStatus::Forgotten {
            return;
        }
        match shared.peer.post(paths::PEER, body.clone()).await {
            Ok((200, resp)) if codec::decode::<PeerAck>(&resp).is_ok_and(|a| a.round == round) => {
                shared.peer_ok();
                shared
                    .metrics
                    .peer_messages_sent
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(round, kind, "peer message delivered");
                return;
            }
            Ok((status, resp)) => {
                shared
                    .metrics
                    .peer_send_failures
                    .fetch_add(1, Ordering::Relaxed);
                let detail = codec::decode::<ErrorResponse>(&resp)
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                tracing::warn!(round, kind, status, %detail, "peer refused message");
                // A refusal for malformed content will not change on retry.
                if matches!(status, 400 | 401) {
                    return;
                }
            }
            Err(e) => {
                shared
                    .last_peer_unreachable_ms
                    .fetch_max(now_ms(), Ordering::Relaxed);
                shared
                    .metrics
                    .peer_send_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(round, kind, error = %e, "peer unreachable, will retry");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn read_batcher(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<(ReadJob, ReadReply)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            j = rx.recv() => match j { Some(j) => j, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // Group by array round; one pass over each array for all its keys.
        batch.sort_by_key(|(j, _)| j.array_round);
        let mut groups: Vec<Vec<(ReadJob, ReadReply)>> = Vec::new();
        for item in batch {
            match groups.last_mut() {
                Some(g) if g[0].0.array_round == item.0.array_round => g.push(item),
                _ => groups.push(vec![item]),
            }
        }
        for mut group in groups {
            let array = group[0].0.array.clone();
            let counts: Vec<usize> = group.iter().map(|(j, _)| j.keys.len()).collect();
            let keys: Vec<dpf::ReadKey> = group
                .iter_mut()
                .flat_map(|(j, _)| std::mem::take(&mut j.keys))
                .collect();
            let (slot_len, role) = (shared.params.slot_len as usize, shared.role);
            let res = tokio::task::spawn_blocking(move || {
                answer_reads(&array, slot_len, &keys, role, worker_count())
            })
            .await;
            match res {
                Ok(Ok(answers)) => {
                    shared
                        .metrics
                        .read_keys_answered
                        .fetch_add(answers.len() as u64, Ordering::Relaxed);
                    shared
                        .metrics
                        .reads_answered
                        .fetch_add(group.len() as u64, Ordering::Relaxed);
                    let mut it = answers.into_iter();
                    for ((_, reply), n) in group.into_iter().zip(counts) {
                        let _ = reply.send(Ok(it.by_ref().take(n).collect()));
                    }
                }
                _ => {
                    for (_, reply) in group {
                        let _ =
                            reply.send(Err(api(ErrorCode::Internal, "read computation failed")));
                    }
                }
            }
        }
    }
}

fn decode<T: bincode_free::Decodable>(body: &[u8]) -> Result<T, ApiError> {
    T::decode_body(body)
}

/// Keeps bincode out of this crate: `protocol::codec` is the only decoder.
mod bincode_free {
    use super::*;
    pub trait Decodable: Sized {
        fn decode_body(body: &[u8]) -> Result<Self, ApiError>;
    }
    macro_rules! decodable {
        ($($t:ty),*) => {$(
            impl Decodable for $t {
                fn decode_body(body: &[u8]) -> Result<Self, ApiError> {
                    codec::decode(body).map_err(|e| api(ErrorCode::Malformed, e.to_string()))
                }
            }
        )*};
    }
    decodable!(
        protocol::InfoRequest,
        protocol::RegisterRequest,
        protocol::WriteRequest,
        protocol::CommitRequest,
        protocol::ReadRequest,
        protocol::RoundStatusRequest,
        protocol::PeerMessage
    );
}

async fn handle_client(shared: Arc<Shared>, req: Request) -> Response {
    let endpoint = match req.path.as_str() {
        paths::INFO => "info",
        paths::REGISTER => "register",
        paths::WRITE => "write",
        paths::COMMIT => "commit",
        paths::READ => "read",
        paths::ROUND_STATUS => "round_status",
        _ => "unknown",
    };
    shared.metrics.request(endpoint);
    if req.method != "POST" {
        return error_response(
            &shared.metrics,
            endpoint,
            &api(ErrorCode::NotFound, "use POST"),
        );
    }
    match client_request(&shared, endpoint, &req.body, req.remote_ip).await {
        Ok(body) => Response::binary(200, body),
        Err(e) => {
            tracing::debug!(endpoint, code = e.code.as_str(), "request refused");
            error_response(&shared.metrics, endpoint, &e)
        }
    }
}

async fn client_request(
    shared: &Arc<Shared>,
    endpoint: &str,
    body: &[u8],
    source: std::net::IpAddr,
) -> Result<Vec<u8>, ApiError> {
    let now = now_ms();
    let internal = |_| api(ErrorCode::Internal, "cannot persist, try again");
    let shutting_down = || api(ErrorCode::Unavailable, "the server is shutting down");
    match endpoint {
        "info" => {
            let _: protocol::InfoRequest = decode(body)?;
            Ok(codec::encode(&shared.machine().info(now)))
        }
        "round_status" => {
            let r: protocol::RoundStatusRequest = decode(body)?;
            Ok(codec::encode(&shared.machine().round_status(r.round)))
        }
        "register" => {
            let r: protocol::RegisterRequest = decode(body)?;
            let (resp, actions) = {
                let mut m = shared.machine();
                let (resp, actions) = m.handle_register(now, &r, source)?;
                if !actions.is_empty() && shared.draining() {
                    m.rollback_register(&r);
                    return Err(shutting_down());
                }
                (resp, actions)
            };
            if let Err(e) = execute(shared.clone(), actions).await {
                shared.machine().rollback_register(&r);
                return Err(internal(e));
            }
            let n = shared.machine().account_count();
            shared.metrics.accounts.store(n as u64, Ordering::Relaxed);
            Ok(codec::encode(&resp))
        }
        "write" => {
            let w: protocol::WriteRequest = decode(body)?;
            // An identical retry of a write whose first copy is still being persisted waits
            // until that settles: it then gets the receipt (stored) or is taken as a fresh
            // write (the first copy failed and was rolled back). Bounded: past the wait,
            // `handle_write` answers `Unavailable` and the client sends it again.
            let wait_until = tokio::time::Instant::now() + RETRY_WAIT;
            loop {
                let settled = shared.write_settled.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                if !shared.machine().write_pending(&w)
                    || tokio::time::timeout_at(wait_until, settled).await.is_err()
                {
                    break;
                }
            }
            let (round, id) = (w.round, w.request_id);
            let key = w.key.clone();
            let ctx = protocol::write_ctx(round, &id, &w.account);
            let (receipt, actions, _reservation) = {
                // New writes are refused once a shutdown began (an identical retry of one
                // accepted before still gets its receipt: it needs no action).
                let mut m = shared.machine();
                let (receipt, actions) = m.handle_write(now, w)?;
                if !actions.is_empty() && shared.draining() {
                    m.rollback_write(round, &id);
                    return Err(shutting_down());
                }
                // Load shedding: a fresh write this server cannot evaluate in time is refused
                // (the client sends its message again in a later round), so an overloaded
                // server still publishes full rounds instead of missing deadlines. In time:
                // the early worker's queue done a quarter of the close budget after the
                // cutoff; the audit evaluates what is left over on every core, and the rest
                // of the budget is for it, the exchange and publishing.
                let p = shared.params;
                let horizon = p.cutoff_ms + (p.publish_deadline_ms - p.cutoff_ms) / 4;
                let ms_left = p.at_offset_ms(round, horizon).saturating_sub(now);
                let reservation = match actions.is_empty() {
                    true => None,
                    false => shared.early.reserve(ms_left),
                };
                if !actions.is_empty() && reservation.is_none() {
                    m.rollback_write(round, &id);
                    shared.metrics.writes_shed.fetch_add(1, Ordering::Relaxed);
                    return Err(api(
                        ErrorCode::Unavailable,
                        "at capacity for this round: send again in a later round",
                    ));
                }
                (receipt, actions, reservation)
            };
            let fresh = !actions.is_empty();
            // Settled in a task of its own, so a client that hangs up mid-persist cannot
            // leave the write neither stored nor rolled back.
            let settle = {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let res = execute(shared.clone(), actions).await;
                    match &res {
                        Err(_) => shared.machine().rollback_write(round, &id),
                        Ok(()) if fresh => shared.machine().write_persisted(round, &id),
                        Ok(()) => {}
                    }
                    shared.write_settled.notify_waiters();
                    res
                })
            };
            match settle.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(internal(e)),
                Err(_) => return Err(api(ErrorCode::Internal, "cannot persist, try again")),
            }
            if fresh {
                // Persisted and acknowledged: apply it to the round's share while the round
                // is still open (an identical retry is not applied twice).
                shared.early.push(round, id, key, ctx);
            }
            shared
                .metrics
                .writes_accepted
                .fetch_add(1, Ordering::Relaxed);
            Ok(codec::encode(&receipt))
        }
        "commit" => {
            let c: protocol::CommitRequest = decode(body)?;
            let (ack, actions) = shared.machine().handle_commit(now, &c)?;
            if let Err(e) = execute(shared.clone(), actions).await {
                shared.machine().rollback_commit(ack.round, &ack.request_id);
                return Err(internal(e));
            }
            shared
                .metrics
                .commits_accepted
                .fetch_add(1, Ordering::Relaxed);
            Ok(codec::encode(&ack))
        }
        "read" => {
            let r: protocol::ReadRequest = decode(body)?;
            let (job, actions) = shared.machine().handle_read(now, &r)?;
            // The account's read of this round is on disk before it is answered.
            execute(shared.clone(), actions).await.map_err(internal)?;
            let array_round = job.array_round;
            let (tx, rx) = oneshot::channel();
            shared
                .reads
                .send((job, tx))
                .await
                .map_err(|_| api(ErrorCode::Unavailable, "shutting down"))?;
            #[allow(unused_mut)]
            let mut answers = rx
                .await
                .map_err(|_| api(ErrorCode::Unavailable, "shutting down"))??;
            #[cfg(feature = "misbehave")]
            if let Some(m) = &shared.misbehave {
                m.read_answers(r.round, &r.account, &mut answers);
            }
            Ok(codec::encode(&protocol::ReadResponse {
                array_round,
                answers,
            }))
        }
        _ => Err(api(ErrorCode::NotFound, "unknown path")),
    }
}

async fn handle_peer(shared: Arc<Shared>, req: Request) -> Response {
    shared.metrics.request("peer");
    let result = async {
        if req.client_pin != Some(shared.peer_pin) {
            return Err(api(ErrorCode::BadSignature, "not the pinned peer"));
        }
        if req.method != "POST" || req.path != paths::PEER {
            return Err(api(ErrorCode::NotFound, "unknown path"));
        }
        let msg: PeerMessage = decode(&req.body)?;
        let kind = msg.kind();
        let (ack, actions) =
            shared
                .machine()
                .handle_peer_encoded(now_ms(), msg, Arc::new(req.body))?;
        tracing::debug!(round = ack.round, kind, "peer message received");
        execute(shared.clone(), actions)
            .await
            .map_err(|_| api(ErrorCode::Internal, "cannot persist"))?;
        shared.peer_ok();
        Ok(codec::encode(&ack))
    }
    .await;
    match result {
        Ok(body) => Response::binary(200, body),
        Err(e) => {
            tracing::warn!(code = e.code.as_str(), reason = %e.message, "peer message refused");
            error_response(&shared.metrics, "peer", &e)
        }
    }
}

fn handle_admin(shared: &Shared, req: &Request) -> Response {
    match req.path.as_str() {
        "/metrics" => {
            let role = shared.role.to_string();
            let mut r = Response::text(200, shared.metrics.render(&role));
            r.content_type = "text/plain; version=0.0.4";
            r
        }
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            let now = now_ms();
            let last_final = shared.machine().last_final_round();
            match readiness(&shared.readiness_input(now, last_final)) {
                Ok(()) => Response::text(200, "ready\n"),
                Err(reason) => Response::text(503, format!("not ready: {reason}\n")),
            }
        }
        _ => Response::text(404, "not found\n"),
    }
}
