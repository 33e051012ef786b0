//! The command line: argument parsing and output (human text, or JSON with `--json`).

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::client::{Client, InitOptions};
use crate::config::{ClientConfig, ServerConfig};
use crate::error::Error;

/// `client`: the messenger's command-line client and daemon.
#[derive(Debug, Parser)]
#[command(name = "client", version, about, long_about = None)]
pub struct Cli {
    /// The client's home directory (key file, store, config).
    #[arg(long, env = "MPM_HOME", global = true)]
    pub home: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the identity, store and config, and register with both servers.
    Init(InitArgs),
    /// Print your contact code (give it to people you want to talk to).
    Code {
        /// Also draw it as a QR code in the terminal.
        #[arg(long)]
        qr: bool,
    },
    /// Add a contact from their contact code; prints the safety number to compare.
    Add {
        /// Your name for the contact.
        name: String,
        /// Their contact code (spaces inside are ignored).
        #[arg(required = true, num_args = 1..)]
        code: Vec<String>,
    },
    /// List contacts.
    Contacts,
    /// Rename a contact.
    Rename {
        /// Current name.
        old: String,
        /// New name.
        new: String,
    },
    /// Remove a contact and its queued messages (received messages stay).
    Remove {
        /// The contact.
        name: String,
    },
    /// Queue a message (any length) to a contact; `-` reads it from stdin.
    Send {
        /// The contact.
        name: String,
        /// The message, or `-` for stdin.
        message: String,
    },
    /// Run the daemon: take part in every round until interrupted.
    Run,
    /// Take part in N rounds, then exit.
    Sync {
        /// How many rounds.
        #[arg(long, default_value_t = 1)]
        rounds: u64,
    },
    /// Show received messages.
    Inbox,
    /// Show message delivery, rounds and server links.
    Status,
}

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// A client config file (TOML) with both servers and the pinned parameters.
    #[arg(long, conflicts_with_all = ["server_a", "server_b"])]
    pub config_from: Option<PathBuf>,
    /// Server A as `host:port`.
    #[arg(long, requires_all = ["server_a_pin", "server_a_key", "server_b"])]
    pub server_a: Option<String>,
    /// Server A's certificate pin, `sha256:<hex>`.
    #[arg(long)]
    pub server_a_pin: Option<String>,
    /// Server A's Ed25519 signing public key (hex).
    #[arg(long)]
    pub server_a_key: Option<String>,
    /// Server B as `host:port`.
    #[arg(long, requires_all = ["server_b_pin", "server_b_key", "server_a"])]
    pub server_b: Option<String>,
    /// Server B's certificate pin, `sha256:<hex>`.
    #[arg(long)]
    pub server_b_pin: Option<String>,
    /// Server B's Ed25519 signing public key (hex).
    #[arg(long)]
    pub server_b_key: Option<String>,
    /// The pinned parameters (TOML file with a `[params]` table). Without it, the parameters
    /// both servers announce are pinned, provided they announce the same ones.
    #[arg(long)]
    pub params_from: Option<PathBuf>,
    /// Invite token for registration, if the servers require one.
    #[arg(long)]
    pub invite: Option<String>,
}

/// The default home: `$HOME/.mpm-client`.
pub fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".mpm-client")
}

fn print_json(out: &mut impl Write, v: &impl Serialize) -> Result<(), Error> {
    let s =
        serde_json::to_string_pretty(v).map_err(|e| Error::Config(format!("JSON output: {e}")))?;
    writeln!(out, "{s}").map_err(stdout_err)
}

fn stdout_err(e: std::io::Error) -> Error {
    Error::io(std::path::Path::new("<stdout>"), e)
}

macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err(stdout_err)?
    };
}

fn server_from_flags(
    addr: Option<String>,
    pin: Option<String>,
    key: Option<String>,
    which: &str,
) -> Result<ServerConfig, Error> {
    match (addr, pin, key) {
        (Some(address), Some(cert_pin), Some(signing_key)) => Ok(ServerConfig {
            address,
            cert_pin,
            signing_key,
        }),
        _ => Err(Error::Config(format!(
            "server {which}: give --server-{w}, --server-{w}-pin and --server-{w}-key",
            w = which.to_ascii_lowercase()
        ))),
    }
}

/// Runs one command, writing its output to `out`.
pub async fn execute(cli: Cli, out: &mut impl Write) -> Result<(), Error> {
    let home = cli.home.clone().unwrap_or_else(default_home);
    let json = cli.json;
    match cli.command {
        Command::Init(args) => {
            let opts = if let Some(path) = args.config_from {
                InitOptions {
                    config: ClientConfig::load_unchecked(&path)?,
                    params_from_servers: false,
                    invite: args.invite,
                }
            } else {
                let a =
                    server_from_flags(args.server_a, args.server_a_pin, args.server_a_key, "A")?;
                let b =
                    server_from_flags(args.server_b, args.server_b_pin, args.server_b_key, "B")?;
                let params = match &args.params_from {
                    Some(p) => Some(ClientConfig::load_params(p)?),
                    None => None,
                };
                InitOptions {
                    params_from_servers: params.is_none(),
                    config: ClientConfig::from_parts(a, b, params),
                    invite: args.invite,
                }
            };
            let client = Client::init(&home, opts).await?;
            let v = client.whoami();
            if json {
                print_json(out, &v)?;
            } else {
                say!(out, "initialised {}", home.display());
                say!(out, "your contact code: {}", v.contact_code);
            }
        }
        Command::Code { qr } => {
            let client = Client::open(&home)?;
            let v = client.whoami();
            if json {
                print_json(out, &v)?;
            } else {
                say!(out, "{}", v.contact_code);
                if qr {
                    say!(out, "{}", crate::client::qr_text(&v.contact_code)?);
                }
            }
        }
        Command::Add { name, code } => {
            let mut client = Client::open(&home)?;
            let v = client.add_contact(&name, &code.join(""))?;
            if json {
                print_json(out, &v)?;
            } else {
                say!(out, "added {}", v.name);
                say!(out, "safety number (compare with {} in person):", v.name);
                say!(out, "  {}", v.safety_number);
            }
        }
        Command::Contacts => {
            let mut client = Client::open(&home)?;
            let list = client.contacts()?;
            if json {
                print_json(out, &list)?;
            } else if list.is_empty() {
                say!(out, "no contacts (add one with `client add NAME CODE`)");
            } else {
                for c in list {
                    let keys = match c.epoch_since_round {
                        Some(r) => format!("forward-secret epoch {} since round {r}", c.epoch),
                        None => "bootstrap keys (not forward secret until the first exchange)"
                            .to_string(),
                    };
                    say!(
                        out,
                        "{}  {}  safety {}  {keys}",
                        c.name,
                        c.contact_code,
                        c.safety_number
                    );
                }
            }
        }
        Command::Rename { old, new } => {
            let mut client = Client::open(&home)?;
            client.rename_contact(&old, &new)?;
            if json {
                print_json(out, &serde_json::json!({ "renamed": old, "to": new }))?;
            } else {
                say!(out, "renamed {old} to {new}");
            }
        }
        Command::Remove { name } => {
            let mut client = Client::open(&home)?;
            client.remove_contact(&name)?;
            if json {
                print_json(out, &serde_json::json!({ "removed": name }))?;
            } else {
                say!(out, "removed {name} and its session keys");
                say!(
                    out,
                    "to talk to {name} again later, you must both remove and re-add each other"
                );
            }
        }
        Command::Send { name, message } => {
            let body = if message == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(|e| Error::io(std::path::Path::new("<stdin>"), e))?;
                buf
            } else {
                message.into_bytes()
            };
            let mut client = Client::open(&home)?;
            let v = client.send(&name, &body)?;
            if json {
                print_json(out, &v)?;
            } else {
                say!(
                    out,
                    "queued message {} to {} ({} bytes, {} fragment(s))",
                    v.id,
                    v.contact,
                    v.bytes,
                    v.fragments
                );
            }
        }
        Command::Run => {
            let mut client = Client::open(&home)?;
            client.check_servers().await?;
            if !json {
                say!(out, "running; Ctrl-C to stop");
                out.flush().map_err(stdout_err)?;
            }
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let report = client.run(shutdown).await?;
            if json {
                print_json(out, &report)?;
            } else {
                say!(out, "stopped after {} round(s)", report.rounds);
            }
        }
        Command::Sync { rounds } => {
            let mut client = Client::open(&home)?;
            client.check_servers().await?;
            let report = client.sync_rounds(rounds).await?;
            if json {
                print_json(out, &report)?;
            } else {
                say!(
                    out,
                    "{} round(s): {} write(s) committed to both servers, {} message(s) received",
                    report.rounds,
                    report.committed,
                    report.received
                );
            }
        }
        Command::Inbox => {
            let mut client = Client::open(&home)?;
            let list = client.inbox()?;
            if json {
                print_json(out, &list)?;
            } else if list.is_empty() {
                say!(out, "no messages");
            } else {
                for m in list {
                    say!(
                        out,
                        "[{}] round {} from {}: {}",
                        m.id,
                        m.round,
                        m.from,
                        m.text
                    );
                }
            }
        }
        Command::Status => {
            let mut client = Client::open(&home)?;
            let s = client.status()?;
            if json {
                print_json(out, &s)?;
            } else {
                match s.current_round {
                    Some(r) => say!(out, "current round {r}"),
                    None => say!(out, "round 0 has not started yet"),
                }
                for l in &s.links {
                    let state = if l.up { "up" } else { "DOWN" };
                    match &l.last_error {
                        Some(e) => say!(out, "server {}: {state} ({e})", l.server),
                        None => say!(out, "server {}: {state}", l.server),
                    }
                }
                if s.messages.is_empty() {
                    say!(out, "no outgoing messages");
                }
                for m in &s.messages {
                    say!(
                        out,
                        "message {} to {}: {} ({}/{} fragments sent, {}/{} acknowledged)",
                        m.id,
                        m.contact,
                        m.state,
                        m.fragments_sent,
                        m.fragments,
                        m.fragments_acked,
                        m.fragments
                    );
                }
                for r in &s.rounds {
                    let acc = match r.accepted {
                        Some(true) => "accepted",
                        Some(false) => "NOT accepted",
                        None => "acceptance unknown",
                    };
                    say!(
                        out,
                        "round {}: receipts {}/{} commits {}/{} reads {} {}",
                        r.round,
                        yn(r.receipt_a),
                        yn(r.receipt_b),
                        yn(r.committed_a),
                        yn(r.committed_b),
                        if r.reads_done { "done" } else { "pending" },
                        acc
                    );
                }
            }
        }
    }
    Ok(())
}

fn yn(b: bool) -> &'static str {
    if b { "y" } else { "n" }
}
