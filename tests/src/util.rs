//! Small helpers: deadlines, bounded waits, free ports, commands with a timeout, log tails.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A point in time after which waiting is a failure.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    start: Instant,
    end: Instant,
}

impl Deadline {
    /// `budget` from now.
    pub fn after(budget: Duration) -> Self {
        let start = Instant::now();
        Self {
            start,
            end: start + budget,
        }
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.end
    }

    /// The earlier of this deadline and `d` from now.
    pub fn within(&self, d: Duration) -> Deadline {
        Deadline {
            start: self.start,
            end: self.end.min(Instant::now() + d),
        }
    }

    /// Seconds since the deadline's scenario started (for progress lines).
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// Polls `probe` every `every` until it returns `Some`, failing when `deadline` passes or the
/// probe fails. Prints a progress line (with `progress`'s text) about every 10 s.
pub fn wait_for<T>(
    deadline: Deadline,
    what: &str,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        if let Some(v) = probe().with_context(|| format!("while waiting for {what}"))? {
            println!(
                "[{:6.1}s] done: {what} (after {:.1}s)",
                deadline.elapsed_s(),
                started.elapsed().as_secs_f64()
            );
            return Ok(v);
        }
        if deadline.expired() {
            bail!(
                "timed out after {:.1}s waiting for {what}",
                started.elapsed().as_secs_f64()
            );
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "[{:6.1}s] still waiting for {what} ({:.0}s so far)",
                deadline.elapsed_s(),
                started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(
            every
                .min(deadline.remaining())
                .max(Duration::from_millis(1)),
        );
    }
}

static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port that was free on `ip` a moment ago and that this process has not handed out
/// before (so parallel tests in this binary never get the same one).
pub fn free_port(ip: IpAddr) -> Result<u16> {
    for _ in 0..100 {
        let l = TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
        let port = l.local_addr()?.port();
        let mut g = PORTS.lock().unwrap_or_else(|p| p.into_inner());
        if g.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("no fresh free port on {ip}")
}

/// `127.0.0.1:<free port>`.
pub fn free_loopback_addr() -> Result<String> {
    let ip = IpAddr::from([127, 0, 0, 1]);
    Ok(format!("{ip}:{}", free_port(ip)?))
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `cmd` to completion with `stdin` as its input, killing it after `timeout`.
pub fn run_cmd(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {desc}"))?;
    let input = stdin.map(<[u8]>::to_vec);
    let writer = child.stdin.take().map(|mut s| {
        std::thread::spawn(move || {
            if let Some(data) = input {
                let _ = s.write_all(&data);
            }
        })
    });
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out_t = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err_t = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = wait_child(&mut child, timeout).with_context(|| format!("running {desc}"))?;
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => {
            bail!("{desc} did not finish within {timeout:?}; stdout: {stdout} stderr: {stderr}")
        }
    }
}

/// Waits for `child` to exit for at most `timeout`; kills it (SIGKILL) if it does not.
/// Returns `None` when it had to be killed.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (e.g. `"INT"`, `"TERM"`) to a process with `kill(1)`.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill(1)")?;
    if !st.success() {
        bail!("kill -{signal} {pid} failed: {st}");
    }
    Ok(())
}

/// Stops a child gracefully with `sig`, then SIGKILL after `grace`.
pub fn stop_child(child: &mut Child, sig: &str, grace: Duration) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = signal(child.id(), sig);
        let _ = wait_child(child, grace);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `n` lines of a text file (or a note that it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Opens `path` for appending (creating it), for child process output.
pub fn append_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Sleeps until unix time `t_ms` (at once if it has passed).
pub fn sleep_until_ms(t_ms: u64) {
    let now = now_ms();
    if t_ms > now {
        std::thread::sleep(Duration::from_millis(t_ms - now));
    }
}
