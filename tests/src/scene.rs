//! One scenario's context: its temp dir, the binaries, its deadline, and the diagnostics
//! printed when it fails (the tail of every server and client log).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::bins::{Bins, bins};
use crate::client::Client;
use crate::server::{Listen, Server, ServerInfo, create_pair};
use crate::util::{Deadline, tail};

/// A running scenario.
#[derive(Debug)]
pub struct Scene {
    /// Its name.
    pub name: String,
    /// The binaries.
    pub bins: Bins,
    /// Its deadline: every wait ends by then.
    pub deadline: Deadline,
    dir: tempfile::TempDir,
}

/// Lines of each log printed on failure.
const TAIL_LINES: usize = 60;

/// Runs `body` with a fresh scene: a temp dir of its own, a deadline `budget` from now. On
/// failure (after `body`'s processes are gone) prints the error and every log's tail. Set
/// `MPM_E2E_KEEP=1` to keep the temp dir.
pub fn run_scene(
    name: &str,
    budget: Duration,
    body: impl FnOnce(&Scene) -> Result<()>,
) -> Result<()> {
    let bins = bins()?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("mpm-e2e-{name}-"))
        .tempdir()
        .context("creating the scene's temp dir")?;
    let scene = Scene {
        name: name.to_string(),
        bins,
        deadline: Deadline::after(budget),
        dir,
    };
    println!("[{name}] starting in {}", scene.path().display());
    let started = Instant::now();
    let result = body(&scene);
    let secs = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => println!("[{name}] passed in {secs:.1}s"),
        Err(e) => {
            println!("[{name}] FAILED after {secs:.1}s: {e:#}");
            for log in scene.logs() {
                println!(
                    "----- tail of {} -----\n{}",
                    log.display(),
                    tail(&log, TAIL_LINES)
                );
            }
            println!("----- end of logs ({}) -----", scene.path().display());
        }
    }
    if std::env::var_os("MPM_E2E_KEEP").is_some() {
        let kept = scene.dir.keep();
        println!("[{name}] kept {}", kept.display());
    }
    result
}

impl Scene {
    /// The temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Every `*.log` file of the scene, sorted.
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path())
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// A progress line with the scene's clock.
    pub fn say(&self, what: impl std::fmt::Display) {
        println!("[{:6.1}s] {what}", self.deadline.elapsed_s());
    }

    /// Server A and server B on loopback ports of their own, pinned to each other, started
    /// and ready.
    pub fn loopback_servers(&self) -> Result<(Server, Server)> {
        let (mut a, mut b) = self.loopback_pair()?;
        self.start_servers(&mut a, &mut b)?;
        Ok((a, b))
    }

    /// [`Scene::loopback_servers`], initialised and pinned but not started (to adjust their
    /// configs first).
    pub fn loopback_pair(&self) -> Result<(Server, Server)> {
        create_pair(
            &self.bins,
            self.path(),
            [Listen::loopback()?, Listen::loopback()?],
            [None, None],
        )
    }

    /// Starts both servers and waits until both are ready.
    pub fn start_servers(&self, a: &mut Server, b: &mut Server) -> Result<()> {
        a.start()?;
        b.start()?;
        a.wait_ready(self.deadline)?;
        b.wait_ready(self.deadline)?;
        self.say(format!(
            "servers up: A client {} peer {}, B client {} peer {}",
            a.listen.client, a.listen.peer, b.listen.client, b.listen.peer
        ));
        Ok(())
    }

    /// Alice and Bob, initialised with both servers and contacts of each other.
    pub fn alice_and_bob(&self, a: &Server, b: &Server) -> Result<(Client, Client)> {
        let (ia, ib) = (a.info(), b.info());
        let alice = self.init_client("alice", &ia, &ib)?;
        let bob = self.init_client("bob", &ia, &ib)?;
        befriend(&alice, &bob)?;
        Ok((alice, bob))
    }

    /// A client handle (home under the scene dir), not initialised.
    pub fn client(&self, name: &str, netns: Option<String>) -> Client {
        Client::new(&self.bins, self.path(), name, netns)
    }

    /// A client initialised with both servers (registered with both).
    pub fn init_client(&self, name: &str, a: &ServerInfo, b: &ServerInfo) -> Result<Client> {
        let c = self.client(name, None);
        c.init(a, b)
            .with_context(|| format!("initialising {name}"))?;
        Ok(c)
    }
}

/// Makes `x` and `y` contacts of each other (each under the other's name); checks both see
/// the same safety number.
pub fn befriend(x: &Client, y: &Client) -> Result<()> {
    let sx = x.add(y)?;
    let sy = y.add(x)?;
    anyhow::ensure!(
        sx == sy,
        "{} and {} see different safety numbers: {sx} / {sy}",
        x.name,
        y.name
    );
    Ok(())
}
