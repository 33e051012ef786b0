//! Where the `server-a`, `server-b` and `client` binaries are.
//!
//! Cargo only builds the binaries of the package under test (`e2e` has none), so the tests find
//! the workspace's binaries in the target directory next to the test executable
//! (`target/<profile>/deps/e2e-*` -> `target/<profile>/`). Before the first use in a test
//! process they run `cargo build --locked --bins` (the command of `deploy/local/demo.sh`) in the
//! workspace with the same target directory and profile, so the binaries are never stale: a
//! no-op taking under a second when they are up to date; about 20 s on 2 cores right after
//! `cargo test --workspace` compiled the libraries (CI). Set `MPM_E2E_NO_BUILD=1` to skip the
//! build and use the binaries found there as they are (the tests fail if one is missing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::run_cmd;

/// Paths of the three binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `server-a`.
    pub server_a: PathBuf,
    /// `server-b`.
    pub server_b: PathBuf,
    /// `client`.
    pub client: PathBuf,
}

/// Longest time the build may take (a cold build on 2 cores takes a few minutes).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

static BINS: OnceLock<std::result::Result<Bins, String>> = OnceLock::new();

/// The binaries, built (once per test process) if needed.
pub fn bins() -> Result<Bins> {
    BINS.get_or_init(|| locate_and_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn locate_and_build() -> Result<Bins> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in target/<profile>/deps")?
        .to_path_buf();
    let name = |n: &str| profile_dir.join(format!("{n}{}", std::env::consts::EXE_SUFFIX));
    let bins = Bins {
        server_a: name("server-a"),
        server_b: name("server-b"),
        client: name("client"),
    };
    if std::env::var_os("MPM_E2E_NO_BUILD").is_none() {
        build(&profile_dir)?;
    }
    for p in [&bins.server_a, &bins.server_b, &bins.client] {
        if !p.is_file() {
            bail!(
                "{} is missing: run `cargo build --bins` (or unset MPM_E2E_NO_BUILD)",
                p.display()
            );
        }
    }
    // The servers under test are the operators' build: without server-core's test-only
    // misbehaving mode (whose start-up message would be in the binary).
    let marker = concat!("mpm-misbehave: ", "this server misbehaves on purpose");
    for p in [&bins.server_a, &bins.server_b] {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        if bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            bail!(
                "{} has the test-only misbehaving mode compiled in (feature server-core/misbehave)",
                p.display()
            );
        }
    }
    Ok(bins)
}

fn build(profile_dir: &Path) -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let target_dir = profile_dir.parent().context("target dir")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--locked", "--bins"])
        .arg("--target-dir")
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    println!("building the binaries: {cmd:?}");
    let started = std::time::Instant::now();
    let out = run_cmd(&mut cmd, None, BUILD_TIMEOUT)?;
    println!(
        "cargo build of the binaries: {} in {:.1}s",
        out.status,
        started.elapsed().as_secs_f64()
    );
    if !out.status.success() {
        bail!(
            "cargo build of the binaries failed ({}):\n{}",
            out.status,
            out.stderr
        );
    }
    Ok(())
}
