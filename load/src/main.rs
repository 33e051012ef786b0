//! `mpm-load`: drives the two real servers (separate processes, TLS, their own data dirs) with
//! many simulated clients, each doing what a real client does every round: one write (both
//! halves, receipts, both commits) and k reads. Every client writes a fresh message each round
//! to a pseudo-random slot, then reads its slot back `read_lag` rounds later; a message that
//! collided with another client's (same slot, same round), or whose round was not accepted, is
//! written again in a later round. It reports rounds per minute, round close time (cutoff to
//! published, as seen by polling round status), read latency p50/p99, delivered/sent, and the
//! servers' peak memory.
//!
//! ```text
//! mpm-load run --clients 50 --rounds 8 --round-ms 2000
//! mpm-load run --clients 1000 --reads 8 --domain-bits 16 --slot-len 256 --round-ms 5000
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dpf::{RandomSource, ReadKey, SeededRandom, WriteKey};
use protocol::{
    AccountId, CommitAck, CommitRequest, ErrorResponse, InfoRequest, InfoResponse, Params,
    ReadRequest, ReadResponse, Receipt, RegisterRequest, RegisterResponse, Role, RoundStatus,
    RoundStatusRequest, RoundStatusResponse, SigningKey, WriteRequest, codec, paths, public_key,
    read_message, register_message, sign, signing_key_from_bytes, write_ctx, write_message,
};
use server_core::ops;
use transport::{HttpsClient, Pin};

/// One request: encodes, posts, decodes the answer or the typed error. A macro rather than a
/// generic function, so the bincode trait bounds stay inside `protocol::codec`.
macro_rules! call {
    ($c:expr, $path:expr, $req:expr, $resp:ty) => {
        async {
            let (status, body) = $c.post($path, codec::encode($req)).await?;
            if status == 200 {
                Ok::<$resp, anyhow::Error>(codec::decode::<$resp>(&body)?)
            } else {
                let e: ErrorResponse = codec::decode(&body)?;
                Err(anyhow::anyhow!(
                    "{}: {status} {:?} {}",
                    $path,
                    e.code,
                    e.message
                ))
            }
        }
    };
}

#[derive(Parser, Debug)]
#[command(
    name = "mpm-load",
    about = "Load generator for the two-server messenger"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start both servers and drive them with simulated clients; exit 1 below --min-delivery.
    Run(RunArgs),
    /// Run one server from its config (the load generator starts two of these processes; it
    /// is the same code path as `server-a run` / `server-b run`).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Simulated clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Rounds in which every client writes a new message.
    #[arg(long, default_value_t = 8)]
    rounds: u64,
    /// Extra rounds at most, after the last new message, to retransmit and read back.
    #[arg(long, default_value_t = 8)]
    max_drain_rounds: u64,
    /// Round length D in milliseconds.
    #[arg(long, default_value_t = 2000)]
    round_ms: u64,
    /// N = 2^domain_bits slots.
    #[arg(long, default_value_t = 12)]
    domain_bits: u32,
    /// Slot length L in bytes.
    #[arg(long, default_value_t = 256)]
    slot_len: u32,
    /// Read keys per client per round (k).
    #[arg(long, default_value_t = 4)]
    reads: u32,
    /// Working directory (default: a fresh temporary directory, deleted afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Fail (exit 1) when fewer than this fraction of messages were delivered.
    #[arg(long, default_value_t = 1.0)]
    min_delivery: f64,
}

/// The `serve` subcommand runs a server: same allocator as `server-a` and `server-b`.
#[global_allocator]
static ALLOC: server_core::alloc::ReuseLarge = server_core::alloc::ReuseLarge;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Serve { config } => rt.block_on(async {
            server_core::cli::init_logging(false);
            ops::run_from_config(&config)
                .await
                .map_err(anyhow::Error::from)
        }),
        Cmd::Run(args) => {
            let report = rt.block_on(run(args.clone()))?;
            println!("{report}");
            if report.delivery() < args.min_delivery {
                bail!(
                    "delivered {}/{} messages, below {:.0}%",
                    report.delivered,
                    report.sent,
                    args.min_delivery * 100.0
                );
            }
            Ok(())
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn free_port() -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

/// Parameters for a load run: phases as fractions of the round.
fn params(a: &RunArgs, t0: u64) -> Params {
    let d = a.round_ms;
    let max_writers = (a.clients as u64 * 2).clamp(16, 1 << a.domain_bits) as u32;
    Params {
        domain_bits: a.domain_bits,
        slot_len: a.slot_len,
        reads_per_round: a.reads,
        round_ms: d,
        t0_ms: t0,
        send_offset_ms: d / 50,
        write_close_ms: d * 2 / 5,
        cutoff_ms: d / 2,
        publish_deadline_ms: d * 19 / 10,
        read_lag: 2,
        c_max: 4,
        write_channels: 1,
        max_writers,
    }
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    client: Arc<HttpsClient>,
    pid: u32,
    addr: String,
    pin: Pin,
}

/// A pinned HTTPS client for one server (its own connection pool).
fn connect(addr: &str, pin: Pin) -> Result<HttpsClient> {
    Ok(HttpsClient::new(addr, pin, None)?
        .with_timeouts(Duration::from_secs(5), Duration::from_secs(60)))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Peak resident memory (VmHWM) in MiB, from /proc.
    fn peak_mib(&self) -> Option<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

/// Creates both servers' data dirs and configs, pinned to each other, and starts them.
async fn start_servers(dir: &Path, p: &Params) -> Result<(Server, Server)> {
    let mut outs = Vec::new();
    let mut ports = Vec::new();
    for role in [Role::A, Role::B] {
        let (listen, peer_listen) = (free_port()?, free_port()?);
        let data_dir = dir.join(match role {
            Role::A => "a",
            Role::B => "b",
        });
        let out = ops::init(&ops::InitOptions {
            role,
            data_dir,
            listen: listen.clone(),
            peer_listen: peer_listen.clone(),
            admin_listen: None,
            params_t0: Some(p.t0_ms),
            registration: server_core::Registration::Open,
        })?;
        let mut cfg = server_core::Config::load_raw(&out.config_path)?;
        cfg.params = *p;
        cfg.registrations_per_minute = 100_000;
        cfg.save(&out.config_path)?;
        outs.push(out);
        ports.push((listen, peer_listen));
    }
    for (i, out) in outs.iter().enumerate() {
        let o = &outs[1 - i];
        ops::set_peer(
            &out.config_path,
            &ports[1 - i].1,
            &o.cert_pin.to_string(),
            &hex::encode(o.signing_public_key),
        )?;
    }
    let exe = std::env::current_exe()?;
    let mut servers = Vec::new();
    for (i, out) in outs.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("server-{i}.log")))?;
        let child = Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(&out.config_path)
            // `MPM_LOAD_SERVER_LOG` sets the servers' log filter (e.g. `warn,server_core=debug`
            // for the time of every round-close phase in `server-<i>.log`).
            .env(
                "RUST_LOG",
                std::env::var("MPM_LOAD_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a server process")?;
        let pid = child.id();
        let client = Arc::new(connect(&ports[i].0, out.cert_pin)?);
        servers.push(Server {
            child,
            client,
            pid,
            addr: ports[i].0.clone(),
            pin: out.cert_pin,
        });
    }
    // Wait until both answer Info.
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &servers {
        loop {
            if call!(&s.client, paths::INFO, &InfoRequest {}, InfoResponse)
                .await
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("a server did not come up; see {}", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let b = servers.pop().context("server b")?;
    let a = servers.pop().context("server a")?;
    Ok((a, b))
}

/// A simulated client.
struct SimClient {
    key: SigningKey,
    account: AccountId,
    rng: SeededRandom,
    /// Its own connections to both servers, kept across rounds as a real client keeps them.
    servers: [Arc<HttpsClient>; 2],
    /// Messages not yet read back: (id, payload).
    queue: VecDeque<(u64, Vec<u8>)>,
}

/// What a client wrote in a round, to check later.
#[derive(Clone)]
struct Written {
    client: usize,
    msg: u64,
    slot: u64,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Report {
    clients: usize,
    rounds: u64,
    sent: u64,
    delivered: u64,
    writes: u64,
    write_errors: u64,
    published: u64,
    abandoned: u64,
    close_ms: Vec<u64>,
    read_ms: Vec<u64>,
    elapsed: Duration,
    peak_mib: [Option<f64>; 2],
    params: Option<Params>,
}

impl Report {
    fn delivery(&self) -> f64 {
        if self.sent == 0 {
            1.0
        } else {
            self.delivered as f64 / self.sent as f64
        }
    }
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    s[((s.len() - 1) as f64 * p).round() as usize]
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = &self.params {
            writeln!(
                f,
                "params: N = 2^{} slots x {} B, k = {}, rounds of {} ms, {} clients",
                p.domain_bits, p.slot_len, p.reads_per_round, p.round_ms, self.clients
            )?;
        }
        let minutes = self.elapsed.as_secs_f64() / 60.0;
        writeln!(
            f,
            "rounds driven: {} ({} published, {} abandoned), {:.1} published rounds per minute",
            self.rounds,
            self.published,
            self.abandoned,
            self.published as f64 / minutes.max(1e-9)
        )?;
        writeln!(
            f,
            "writes: {} sent, {} refused or failed",
            self.writes, self.write_errors
        )?;
        writeln!(
            f,
            "round close (cutoff to published, polled every 20 ms): p50 {} ms, p99 {} ms, max {} ms",
            pct(&self.close_ms, 0.5),
            pct(&self.close_ms, 0.99),
            self.close_ms.iter().max().copied().unwrap_or(0)
        )?;
        writeln!(
            f,
            "read latency (both servers, k keys each): p50 {} ms, p99 {} ms",
            pct(&self.read_ms, 0.5),
            pct(&self.read_ms, 0.99)
        )?;
        let mem = |m: Option<f64>| m.map_or("n/a".to_string(), |v| format!("{v:.0} MiB"));
        writeln!(
            f,
            "server peak memory: A {}, B {}",
            mem(self.peak_mib[0]),
            mem(self.peak_mib[1])
        )?;
        write!(
            f,
            "delivered {}/{} messages ({:.1}%)",
            self.delivered,
            self.sent,
            self.delivery() * 100.0
        )
    }
}

async fn run(args: RunArgs) -> Result<Report> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let t0 = now_ms() + 500;
    let p = params(&args, t0);
    p.validate()
        .map_err(|e| anyhow::anyhow!("parameters: {e}"))?;
    let (a, b) = start_servers(&dir, &p).await?;
    let servers = [a.client.clone(), b.client.clone()];
    let fp = p.fingerprint();

    let mut clients: Vec<SimClient> = (0..args.clients)
        .map(|i| -> Result<SimClient> {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seed[8] = 0x4c;
            let key = signing_key_from_bytes(&seed);
            let account = public_key(&key);
            Ok(SimClient {
                key,
                account,
                rng: SeededRandom::new(seed),
                servers: [
                    Arc::new(connect(&a.addr, a.pin)?),
                    Arc::new(connect(&b.addr, b.pin)?),
                ],
                queue: VecDeque::new(),
            })
        })
        .collect::<Result<_>>()?;
    // Register every client with both servers.
    for c in &clients {
        for s in &c.servers {
            let req = RegisterRequest {
                fingerprint: fp,
                account: c.account,
                invite: None,
                signature: sign(&c.key, &register_message(&fp, &c.account, None)),
            };
            call!(s, paths::REGISTER, &req, RegisterResponse).await?;
        }
    }

    let mut report = Report {
        clients: args.clients,
        params: Some(p),
        ..Report::default()
    };
    let first = p.round_at(now_ms()).unwrap_or(0) + 1;
    let mut written: HashMap<u64, Vec<Written>> = HashMap::new();
    let mut next_msg = 0u64;
    let started = Instant::now();
    let mut round = first;
    let last_new = first + args.rounds - 1;
    let mut status_tasks = Vec::new();
    loop {
        let outstanding: usize = clients.iter().map(|c| c.queue.len()).sum();
        if round > last_new && (outstanding == 0 || round > last_new + args.max_drain_rounds) {
            break;
        }
        // New messages while the test is in its sending phase.
        if round <= last_new {
            for c in clients.iter_mut() {
                let mut payload = vec![0u8; p.slot_len as usize];
                c.rng.fill(&mut payload);
                payload[..8].copy_from_slice(&next_msg.to_le_bytes());
                c.queue.push_back((next_msg, payload));
                next_msg += 1;
                report.sent += 1;
            }
        }
        let at = p.at_offset_ms(round, p.send_offset_ms);
        let now = now_ms();
        if at > now {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
        report.rounds += 1;
        // Every client: one write (its oldest undelivered message, or padding) and k reads.
        let mut tasks = Vec::new();
        for (i, c) in clients.iter_mut().enumerate() {
            let mut id = [0u8; 16];
            c.rng.fill(&mut id);
            let slot = (c.rng.u128() as u64) & ((1u64 << p.domain_bits) - 1);
            // The oldest message not yet confirmed by a read-back is written every round until
            // a read-back confirms it (a confirmation arrives `read_lag` rounds later); later
            // copies of a confirmed message are not counted again.
            let (msg, payload) = match c.queue.front() {
                Some((m, pl)) => (*m, pl.clone()),
                None => (u64::MAX, vec![0u8; p.slot_len as usize]),
            };
            let (ka, kb) = WriteKey::r#gen(
                p.domain_bits,
                p.slot_len as usize,
                slot,
                &payload,
                &mut c.rng,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let ctx = write_ctx(round, &id, &c.account);
            let ph = ka.public_hash(&ctx);
            let sig = sign(&c.key, &write_message(round, &id, &ph));
            let mk = |k: &WriteKey| WriteRequest {
                fingerprint: fp,
                round,
                request_id: id,
                account: c.account,
                public_hash: ph,
                key: k.encode(),
                signature: sig,
            };
            let (wa, wb) = (mk(&ka), mk(&kb));
            // Reads of round - lag: the slot this client wrote then, plus random slots.
            let array_round = round.checked_sub(u64::from(p.read_lag));
            let own = array_round
                .and_then(|r| written.get(&r))
                .and_then(|ws| ws.iter().find(|w| w.client == i).map(|w| w.slot));
            let mut ra = Vec::new();
            let mut rb = Vec::new();
            for j in 0..p.reads_per_round {
                let s = match (j, own) {
                    (0, Some(s)) => s,
                    _ => (c.rng.u128() as u64) & ((1u64 << p.domain_bits) - 1),
                };
                let (x, y) = ReadKey::r#gen(p.domain_bits, s, &mut c.rng)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                ra.push(x.encode());
                rb.push(y.encode());
            }
            let read = array_round.map(|ar| {
                let mk = |keys: Vec<Vec<u8>>| ReadRequest {
                    fingerprint: fp,
                    round,
                    array_round: ar,
                    account: c.account,
                    signature: sign(&c.key, &read_message(round, ar, &c.account, &keys)),
                    keys,
                };
                (mk(ra), mk(rb))
            });
            let servers = c.servers.clone();
            let w = Written {
                client: i,
                msg,
                slot,
                payload,
            };
            tasks.push(tokio::spawn(async move {
                (w, client_round(servers, fp, wa, wb, read).await)
            }));
        }
        let mut this_round = Vec::new();
        let mut answers: HashMap<usize, Vec<u8>> = HashMap::new();
        for t in tasks {
            let (w, r) = t.await?;
            report.writes += 1;
            match r {
                Ok(out) => {
                    if let Some((ms, first_answer)) = out.read {
                        report.read_ms.push(ms);
                        answers.insert(w.client, first_answer);
                    }
                    if out.committed {
                        this_round.push(w);
                    } else {
                        report.write_errors += 1;
                    }
                }
                Err(e) => {
                    report.write_errors += 1;
                    if report.write_errors <= 3 {
                        eprintln!("round {round}: {e:#}");
                    }
                }
            }
        }
        // Check read-backs of round - lag: a client's message arrived if the answer equals it.
        if let Some(ws) = round
            .checked_sub(u64::from(p.read_lag))
            .and_then(|ar| written.remove(&ar))
        {
            for w in ws {
                if w.msg == u64::MAX {
                    continue;
                }
                let ok = answers.get(&w.client).is_some_and(|a| *a == w.payload);
                let c = &mut clients[w.client];
                if ok && c.queue.front().is_some_and(|(m, _)| *m == w.msg) {
                    c.queue.pop_front();
                    report.delivered += 1;
                }
            }
        }
        written.insert(round, this_round);
        // Watch the round close: poll its status from cutoff until final.
        let s = servers[0].clone();
        let cutoff = p.at_offset_ms(round, p.cutoff_ms);
        let deadline = p.at_offset_ms(round, p.publish_deadline_ms) + 1000;
        status_tasks.push(tokio::spawn(async move {
            watch_close(s, round, cutoff, deadline).await
        }));
        round += 1;
    }
    report.elapsed = started.elapsed();
    for t in status_tasks {
        match t.await? {
            Some(Ok(ms)) => {
                report.published += 1;
                report.close_ms.push(ms);
            }
            Some(Err(())) => report.abandoned += 1,
            None => {}
        }
    }
    report.peak_mib = [a.peak_mib(), b.peak_mib()];
    Ok(report)
}

struct RoundOut {
    committed: bool,
    /// Read latency and the XOR of both servers' first answers.
    read: Option<(u64, Vec<u8>)>,
}

/// One client's round: both write halves in parallel, both commits, then both reads.
async fn client_round(
    servers: [Arc<HttpsClient>; 2],
    fp: [u8; 32],
    wa: WriteRequest,
    wb: WriteRequest,
    read: Option<(ReadRequest, ReadRequest)>,
) -> Result<RoundOut> {
    let (ra, rb) = tokio::join!(
        call!(&servers[0], paths::WRITE, &wa, Receipt),
        call!(&servers[1], paths::WRITE, &wb, Receipt)
    );
    let committed = match (ra, rb) {
        (Err(e), _) | (_, Err(e)) => return Err(e),
        (Ok(ra), Ok(rb)) => {
            let to_a = CommitRequest {
                fingerprint: fp,
                peer_receipt: rb,
            };
            let to_b = CommitRequest {
                fingerprint: fp,
                peer_receipt: ra,
            };
            let (ca, cb) = tokio::join!(
                call!(&servers[0], paths::COMMIT, &to_a, CommitAck),
                call!(&servers[1], paths::COMMIT, &to_b, CommitAck)
            );
            ca?;
            cb?;
            true
        }
    };
    let read = match read {
        Some((qa, qb)) => {
            let t = Instant::now();
            let (xa, xb) = tokio::join!(
                call!(&servers[0], paths::READ, &qa, ReadResponse),
                call!(&servers[1], paths::READ, &qb, ReadResponse)
            );
            match (xa, xb) {
                (Ok(xa), Ok(xb)) => {
                    let ms = t.elapsed().as_millis() as u64;
                    let first = xa
                        .answers
                        .first()
                        .zip(xb.answers.first())
                        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p ^ q).collect::<Vec<u8>>());
                    first.map(|f| (ms, f))
                }
                _ => None,
            }
        }
        None => None,
    };
    Ok(RoundOut { committed, read })
}

/// Polls a round's status from its cutoff; Ok(ms from cutoff to published) or Err if abandoned.
async fn watch_close(
    s: Arc<HttpsClient>,
    round: u64,
    cutoff: u64,
    deadline: u64,
) -> Option<Result<u64, ()>> {
    let now = now_ms();
    if cutoff > now {
        tokio::time::sleep(Duration::from_millis(cutoff - now)).await;
    }
    while now_ms() < deadline {
        if let Ok(r) = call!(
            &s,
            paths::ROUND_STATUS,
            &RoundStatusRequest { round },
            RoundStatusResponse
        )
        .await
        {
            match r.status {
                RoundStatus::Published(_) => return Some(Ok(now_ms().saturating_sub(cutoff))),
                RoundStatus::Abandoned(_) => return Some(Err(())),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
