//! Network namespaces joined by veth pairs (needs root and `ip` from iproute2).

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::util::run_cmd;

/// Runs `ip ARGS`, failing with its error output.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = run_cmd(Command::new("ip").args(args), None, Duration::from_secs(20))?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), out.stderr.trim());
    }
    Ok(())
}

/// Why namespaces cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    if uid.as_deref() != Some("0") {
        return Some(format!(
            "not running as root (effective uid {})",
            uid.as_deref().unwrap_or("unknown")
        ));
    }
    let probe = name("probe");
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e:#}"));
    }
    let _ = ip(&["netns", "del", &probe]);
    None
}

/// Prefix of the namespaces the tests create: `mpme2e<pid>-<x>`.
pub const PREFIX: &str = "mpme2e";

/// The name of namespace `x` of this test process.
pub fn name(x: &str) -> String {
    format!("{PREFIX}{}-{x}", std::process::id())
}

/// Deletes namespaces left behind by test processes that no longer exist (killed before their
/// guard ran). Returns the names deleted.
pub fn remove_stale() -> Vec<String> {
    let Ok(out) = run_cmd(
        Command::new("ip").args(["netns", "list"]),
        None,
        Duration::from_secs(10),
    ) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for line in out.stdout.lines() {
        let Some(n) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = n
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive && ip(&["netns", "del", n]).is_ok() {
            removed.push(n.to_string());
        }
    }
    removed
}

/// A set of namespaces, deleted (with their veth interfaces) when dropped. Drop every process
/// running inside them first.
#[derive(Debug, Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates namespace `name` with its loopback up.
    pub fn add(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.names.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// A veth pair between `ns1` (interface `if1`, address `addr1`, e.g. `10.77.1.1/24`) and
    /// `ns2` (`if2`, `addr2`), both up.
    pub fn link(
        &self,
        ns1: &str,
        if1: &str,
        addr1: &str,
        ns2: &str,
        if2: &str,
        addr2: &str,
    ) -> Result<()> {
        ip(&[
            "link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns", ns2,
        ])?;
        for (ns, ifc, addr) in [(ns1, if1, addr1), (ns2, if2, addr2)] {
            ip(&["-n", ns, "addr", "add", addr, "dev", ifc])?;
            ip(&["-n", ns, "link", "set", ifc, "up"])?;
        }
        Ok(())
    }

    /// Bytes received and sent on interface `ifc` in namespace `ns`.
    pub fn counters(ns: &str, ifc: &str) -> Result<(u64, u64)> {
        let read = |what: &str| -> Result<u64> {
            let out = run_cmd(
                Command::new("ip").args([
                    "netns",
                    "exec",
                    ns,
                    "cat",
                    &format!("/sys/class/net/{ifc}/statistics/{what}"),
                ]),
                None,
                Duration::from_secs(10),
            )?;
            Ok(out.stdout.trim().parse()?)
        };
        Ok((read("rx_bytes")?, read("tx_bytes")?))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            if let Err(e) = ip(&["netns", "del", n]) {
                eprintln!("cleanup: {e:#}");
            }
        }
    }
}
