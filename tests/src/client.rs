//! Clients driven through the `client` binary: one-shot commands and the `run` daemon.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bins::Bins;
use crate::server::ServerInfo;
use crate::util::{append_file, now_ms, run_cmd, stop_child, tail};

/// Longest a one-shot command may take (`init` retries unreachable servers for 10 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(40);

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The receiver's name for the sender.
    pub from: String,
    /// The exact text.
    pub text: String,
    /// The round whose read completed it.
    pub round: u64,
}

/// An outgoing message's delivery state (`client status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Message id.
    pub id: i64,
    /// The contact.
    pub contact: String,
    /// `queued`, `sent` or `delivered`.
    pub state: String,
    /// Fragments in total.
    pub fragments: u64,
    /// Fragments acknowledged.
    pub acked: u64,
    /// Round in which delivery completed.
    pub delivered_round: Option<u64>,
}

/// One client home; while its daemon runs, the `client run` process (killed when dropped).
#[derive(Debug)]
pub struct Client {
    /// Its name (also the name every other client gives it as a contact).
    pub name: String,
    /// Home directory.
    pub home: PathBuf,
    /// Daemon log (stdout and stderr of every `run`, appended).
    pub log: PathBuf,
    bin: PathBuf,
    netns: Option<String>,
    daemon: Option<Child>,
}

impl Client {
    /// A client named `name` with its home under `root` (not initialised yet).
    pub fn new(bins: &Bins, root: &std::path::Path, name: &str, netns: Option<String>) -> Self {
        Client {
            name: name.to_string(),
            home: root.join(name),
            log: root.join(format!("client-{name}.log")),
            bin: bins.client.clone(),
            netns,
            daemon: None,
        }
    }

    fn command(&self) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        c.arg("--home").arg(&self.home).env("MPM_LOG", "warn");
        c
    }

    /// Runs one command (`client --home H ARGS`), returning its standard output.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
        let mut cmd = self.command();
        cmd.args(args);
        let out = run_cmd(&mut cmd, stdin, COMMAND_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "`client {}` for {} failed ({}): {}{}",
                args.join(" "),
                self.name,
                out.status,
                out.stderr,
                out.stdout
            );
        }
        Ok(out.stdout)
    }

    fn cli_json(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all, stdin)?;
        serde_json::from_str(&out).with_context(|| format!("JSON from `client {args:?}`: {out}"))
    }

    /// `client init` with both servers (parameters pinned from what they announce).
    pub fn init(&self, a: &ServerInfo, b: &ServerInfo) -> Result<()> {
        self.cli(
            &[
                "init",
                "--server-a",
                &a.address,
                "--server-a-pin",
                &a.cert_pin,
                "--server-a-key",
                &a.signing_key,
                "--server-b",
                &b.address,
                "--server-b-pin",
                &b.cert_pin,
                "--server-b-key",
                &b.signing_key,
            ],
            None,
        )?;
        Ok(())
    }

    /// The contact code.
    pub fn code(&self) -> Result<String> {
        let v = self.cli_json(&["code"], None)?;
        v["contact_code"]
            .as_str()
            .map(str::to_string)
            .context("no contact_code")
    }

    /// Adds `other` as a contact under `other.name`; returns the safety number.
    pub fn add(&self, other: &Client) -> Result<String> {
        let code = other.code()?;
        let v = self.cli_json(&["add", &other.name, &code], None)?;
        v["safety_number"]
            .as_str()
            .map(str::to_string)
            .context("no safety_number")
    }

    /// Queues `text` to the contact `to` (the text goes through stdin, byte for byte);
    /// returns the number of fragments.
    pub fn send(&self, to: &str, text: &str) -> Result<u64> {
        let v = self.cli_json(&["send", to, "-"], Some(text.as_bytes()))?;
        if v["bytes"].as_u64() != Some(text.len() as u64) {
            bail!("send queued {} bytes, expected {}", v["bytes"], text.len());
        }
        v["fragments"].as_u64().context("no fragments")
    }

    /// The inbox, oldest first.
    pub fn inbox(&self) -> Result<Vec<Received>> {
        let v = self.cli_json(&["inbox"], None)?;
        let list = v.as_array().context("inbox is not a list")?;
        list.iter()
            .map(|m| {
                Ok(Received {
                    from: m["from"].as_str().context("from")?.to_string(),
                    text: m["text"].as_str().context("text")?.to_string(),
                    round: m["round"].as_u64().context("round")?,
                })
            })
            .collect()
    }

    /// `client --json status`.
    pub fn status(&self) -> Result<Value> {
        self.cli_json(&["status"], None)
    }

    /// The outgoing messages' states.
    pub fn outgoing(&self) -> Result<Vec<Outgoing>> {
        let v = self.status()?;
        let list = v["messages"].as_array().context("status.messages")?;
        list.iter()
            .map(|m| {
                Ok(Outgoing {
                    id: m["id"].as_i64().context("id")?,
                    contact: m["contact"].as_str().context("contact")?.to_string(),
                    state: m["state"].as_str().context("state")?.to_string(),
                    fragments: m["fragments"].as_u64().context("fragments")?,
                    acked: m["fragments_acked"].as_u64().context("acked")?,
                    delivered_round: m["delivered_round"].as_u64(),
                })
            })
            .collect()
    }

    /// How this client's write of `round` fared, from `status` (recent rounds only):
    /// `None` if the round is not listed, else (final, accepted into the published set).
    pub fn write_outcome(&self, round: u64) -> Result<Option<(bool, Option<bool>)>> {
        let v = self.status()?;
        let rounds = v["rounds"].as_array().context("status.rounds")?;
        Ok(rounds
            .iter()
            .find(|r| r["round"].as_u64() == Some(round))
            .map(|r| {
                (
                    r["is_final"].as_bool() == Some(true),
                    r["accepted"].as_bool(),
                )
            }))
    }

    /// Starts the daemon (`client run`, logging at info level to [`Client::log`]).
    pub fn start(&mut self) -> Result<()> {
        if self.daemon.is_some() {
            bail!("{}: daemon already started", self.name);
        }
        let mut log = append_file(&self.log)?;
        writeln!(log, "===== e2e: client run at {} =====", now_ms())?;
        let mut cmd = self.command();
        cmd.arg("run")
            .env("MPM_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.daemon = Some(cmd.spawn().context("spawning client run")?);
        Ok(())
    }

    /// Fails if the daemon was started and has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.daemon.as_mut()
            && let Some(st) = c.try_wait()?
        {
            bail!(
                "{}'s daemon exited ({st}); log tail:\n{}",
                self.name,
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// Stops the daemon (SIGINT, as Ctrl-C; SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            stop_child(&mut c, "INT", Duration::from_secs(5));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
