//! Server processes: `init`, `set-peer`, `run`, SIGKILL and restart from the data dir, metrics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bins::Bins;
use crate::util::{Deadline, append_file, now_ms, run_cmd, stop_child, tail, wait_for};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Server A (DPF party 0).
    A,
    /// Server B (DPF party 1).
    B,
}

impl Role {
    /// `"a"` or `"b"`.
    pub fn lower(self) -> &'static str {
        match self {
            Role::A => "a",
            Role::B => "b",
        }
    }
}

/// Where a server listens.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Client port (`host:port`).
    pub client: String,
    /// Peer port (`host:port`).
    pub peer: String,
    /// Admin port (loopback), if any.
    pub admin: Option<String>,
}

impl Listen {
    /// Three fresh ports on 127.0.0.1.
    pub fn loopback() -> Result<Listen> {
        Ok(Listen {
            client: crate::util::free_loopback_addr()?,
            peer: crate::util::free_loopback_addr()?,
            admin: Some(crate::util::free_loopback_addr()?),
        })
    }
}

/// What a client needs to know about a server.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Address of the client port as the client should dial it.
    pub address: String,
    /// `sha256:<hex>` certificate pin.
    pub cert_pin: String,
    /// Ed25519 signing key (hex).
    pub signing_key: String,
}

/// The round timing of the pinned parameters (docs/protocol.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Start of round 0 (unix ms).
    pub t0_ms: u64,
    /// Round length.
    pub round_ms: u64,
    /// Writes are sent at this offset.
    pub send_offset_ms: u64,
    /// Commits and reads are sent at this offset.
    pub write_close_ms: u64,
    /// Commits are accepted until this offset.
    pub cutoff_ms: u64,
    /// A round is final by this offset.
    pub publish_deadline_ms: u64,
}

impl Timing {
    /// The round containing unix time `t_ms` (0 before t0).
    pub fn round_at(&self, t_ms: u64) -> u64 {
        t_ms.saturating_sub(self.t0_ms) / self.round_ms
    }

    /// Offset of `t_ms` inside its round.
    pub fn offset(&self, t_ms: u64) -> u64 {
        t_ms.saturating_sub(self.t0_ms) % self.round_ms
    }

    /// Start of `round` (unix ms).
    pub fn start(&self, round: u64) -> u64 {
        self.t0_ms + round * self.round_ms
    }

    /// The next unix time (from now) at `offset_ms` into a round, at least `min_ahead_ms` away.
    pub fn next_at_offset(&self, offset_ms: u64, min_ahead_ms: u64) -> u64 {
        let now = now_ms() + min_ahead_ms;
        let r = self.round_at(now);
        let t = self.start(r) + offset_ms;
        if t >= now { t } else { t + self.round_ms }
    }
}

/// One server: its data dir and, while running, its process (killed when dropped).
#[derive(Debug)]
pub struct Server {
    /// A or B.
    pub role: Role,
    /// Data dir (config, keys, state).
    pub dir: PathBuf,
    /// `config.toml`.
    pub config: PathBuf,
    /// Where it listens.
    pub listen: Listen,
    /// Certificate pin.
    pub cert_pin: String,
    /// Signing key (hex).
    pub signing_key: String,
    /// Log file (stdout and stderr of every run, appended).
    pub log: PathBuf,
    bin: PathBuf,
    netns: Option<String>,
    child: Option<Child>,
    starts: usize,
}

impl Server {
    /// Runs `server-x init` into `dir` (which must not exist yet or be empty).
    pub fn init(
        bins: &Bins,
        role: Role,
        dir: &Path,
        listen: Listen,
        t0_ms: u64,
        netns: Option<String>,
    ) -> Result<Server> {
        let bin = match role {
            Role::A => bins.server_a.clone(),
            Role::B => bins.server_b.clone(),
        };
        let mut cmd = Command::new(&bin);
        cmd.arg("init")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", &listen.client])
            .args(["--peer-listen", &listen.peer])
            .args(["--admin-listen", listen.admin.as_deref().unwrap_or("none")])
            .args(["--params-t0", &t0_ms.to_string()]);
        let out = run_cmd(&mut cmd, None, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!("server-{} init failed: {}", role.lower(), out.stderr);
        }
        let field = |k: &str| -> Result<String> {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .map(str::to_string)
                .with_context(|| format!("no `{k}:` in the init output:\n{}", out.stdout))
        };
        let log = dir
            .parent()
            .context("data dir parent")?
            .join(format!("server-{}.log", role.lower()));
        Ok(Server {
            role,
            config: dir.join("config.toml"),
            dir: dir.to_path_buf(),
            cert_pin: field("cert_pin")?,
            signing_key: field("signing_key")?,
            listen,
            log,
            bin,
            netns,
            child: None,
            starts: 0,
        })
    }

    /// Runs `set-peer`, pinning `peer` at `peer_addr` (its peer port as this server dials it).
    pub fn set_peer(&self, peer: &Server) -> Result<()> {
        self.set_peer_via(peer, &peer.listen.peer)
    }

    /// [`Server::set_peer`], dialling the peer at `addr` (e.g. a proxy in front of it).
    pub fn set_peer_via(&self, peer: &Server, addr: &str) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("set-peer")
            .arg("--config")
            .arg(&self.config)
            .args(["--peer-addr", addr])
            .args(["--peer-pin", &peer.cert_pin])
            .args(["--peer-signing-key", &peer.signing_key]);
        let out = run_cmd(&mut cmd, None, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!("set-peer failed: {}", out.stderr);
        }
        Ok(())
    }

    /// What clients need (dialling the client port directly).
    pub fn info(&self) -> ServerInfo {
        self.info_via(&self.listen.client)
    }

    /// What clients need, dialling `address` (e.g. a proxy in front of the client port).
    pub fn info_via(&self, address: &str) -> ServerInfo {
        ServerInfo {
            address: address.to_string(),
            cert_pin: self.cert_pin.clone(),
            signing_key: self.signing_key.clone(),
        }
    }

    /// The pinned round timing, read from `config.toml`.
    pub fn timing(&self) -> Result<Timing> {
        let text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        let mut in_params = false;
        let mut get = std::collections::HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_params = line == "[params]";
            } else if in_params
                && let Some((k, v)) = line.split_once('=')
                && let Ok(v) = v.trim().parse::<u64>()
            {
                get.insert(k.trim().to_string(), v);
            }
        }
        let g = |k: &str| {
            get.get(k)
                .copied()
                .with_context(|| format!("no params.{k} in {}", self.config.display()))
        };
        Ok(Timing {
            t0_ms: g("t0_ms")?,
            round_ms: g("round_ms")?,
            send_offset_ms: g("send_offset_ms")?,
            write_close_ms: g("write_close_ms")?,
            cutoff_ms: g("cutoff_ms")?,
            publish_deadline_ms: g("publish_deadline_ms")?,
        })
    }

    /// Starts `server-x run --config ...` (inside the network namespace, if any).
    pub fn start(&mut self) -> Result<()> {
        if self.running() {
            bail!("server {:?} is already running", self.role);
        }
        let mut log = append_file(&self.log)?;
        self.starts += 1;
        writeln!(
            log,
            "===== e2e: start #{} of server-{} at {} =====",
            self.starts,
            self.role.lower(),
            now_ms()
        )?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().context("spawning the server")?);
        Ok(())
    }

    /// Whether the process is running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Fails if the process is not running (with the log's tail).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Some(st) = c.try_wait()?
        {
            bail!(
                "server-{} exited ({st}); log tail:\n{}",
                self.role.lower(),
                tail(&self.log, 30)
            );
        }
        if self.child.is_none() {
            bail!("server-{} is not started", self.role.lower());
        }
        Ok(())
    }

    /// Waits until the server's listeners are up: `/readyz` on the admin port when it can be
    /// reached from here, else the `starting` line of this run in the log.
    pub fn wait_ready(&mut self, deadline: Deadline) -> Result<()> {
        let what = format!("server-{} to be ready", self.role.lower());
        let admin = match (&self.netns, &self.listen.admin) {
            (None, Some(a)) => Some(a.clone()),
            _ => None,
        };
        let starts = self.starts;
        let log = self.log.clone();
        wait_for(
            deadline.within(Duration::from_secs(30)),
            &what,
            Duration::from_millis(50),
            || {
                self.check_alive()?;
                let ready = match &admin {
                    Some(a) => matches!(http_get(a, "/readyz"), Ok((200, _))),
                    None => {
                        let text = std::fs::read_to_string(&log).unwrap_or_default();
                        text.split("===== e2e: start #").count() > starts
                            && text
                                .rsplit("===== e2e: start #")
                                .next()
                                .is_some_and(|last| last.contains("starting"))
                    }
                };
                Ok(ready.then_some(()))
            },
        )
    }

    /// Kills the process with SIGKILL (no chance to clean up), and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        let mut c = self.child.take().context("server not running")?;
        c.kill().context("SIGKILL")?;
        c.wait()?;
        let mut log = append_file(&self.log)?;
        writeln!(log, "===== e2e: SIGKILL at {} =====", now_ms())?;
        Ok(())
    }

    /// Stops the process (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, "TERM", Duration::from_secs(5));
        }
    }

    /// The Prometheus text of `/metrics` (admin port on loopback only).
    pub fn metrics(&self) -> Result<Metrics> {
        let a = self.listen.admin.as_deref().context("no admin port")?;
        let (status, body) = http_get(a, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(Metrics(body))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `/metrics` page.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of all samples of metric `name` whose labels contain every `label` given
    /// (e.g. `endpoint="write"`).
    pub fn get(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                let (n, rest) = match key.split_once('{') {
                    Some((n, rest)) => (n, rest),
                    None => (key, ""),
                };
                (n == name && labels.iter().all(|lab| rest.contains(lab)))
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum()
    }
}

/// A plain HTTP/1.0 GET (the admin port); returns status and body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let sa: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("resolving {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("bad HTTP answer from {addr}"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Creates server A and server B under `root/a` and `root/b`, pinned to each other, with
/// round 0 starting now. Not started.
pub fn create_pair(
    bins: &Bins,
    root: &Path,
    listen: [Listen; 2],
    netns: [Option<String>; 2],
) -> Result<(Server, Server)> {
    let t0 = now_ms();
    let [la, lb] = listen;
    let [na, nb] = netns;
    let a = Server::init(bins, Role::A, &root.join("a"), la, t0, na)?;
    let b = Server::init(bins, Role::B, &root.join("b"), lb, t0, nb)?;
    a.set_peer(&b)?;
    b.set_peer(&a)?;
    Ok((a, b))
}
