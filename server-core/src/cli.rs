//! The command line of both server binaries (`init`, `set-peer`, `check-config`, `run`):
//! parse arguments, set up tracing, call [`crate::ops`].

use crate::Registration;
use crate::ops;
use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use protocol::Role;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true, env = "MPM_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a data dir: config.toml, TLS key and certificate, signing key.
    Init {
        /// Directory to create.
        #[arg(long, env = "MPM_DATA_DIR")]
        data_dir: PathBuf,
        /// Client listen address.
        #[arg(long)]
        listen: String,
        /// Peer (mutual TLS) listen address.
        #[arg(long)]
        peer_listen: String,
        /// Admin listen address (loopback only); "none" disables it.
        #[arg(long)]
        admin_listen: String,
        /// Round 0 start, unix ms (both operators must use the same value).
        #[arg(long)]
        params_t0: Option<u64>,
        /// Accept registrations only with one of these single-use tokens (repeatable).
        #[arg(long = "invite-token")]
        invite_tokens: Vec<String>,
    },
    /// Write the peer's address, certificate pin and signing key into a config.
    SetPeer {
        /// The config file.
        #[arg(long, env = "MPM_CONFIG")]
        config: PathBuf,
        /// The peer's peer-port address (host:port).
        #[arg(long)]
        peer_addr: String,
        /// The peer's certificate pin (sha256:<hex>).
        #[arg(long)]
        peer_pin: String,
        /// The peer's signing public key (hex).
        #[arg(long)]
        peer_signing_key: String,
    },
    /// Load and check a config and the files it names.
    CheckConfig {
        /// The config file.
        #[arg(long, env = "MPM_CONFIG")]
        config: PathBuf,
    },
    /// Run the server until SIGINT/SIGTERM.
    #[command(alias = "serve")]
    Run {
        /// The config file.
        #[arg(long, env = "MPM_CONFIG")]
        config: PathBuf,
    },
}

/// Runs the `server-a` or `server-b` binary: the two differ only in `role`, which sets the
/// program name, the default ports (A 7101-7103, B 7201-7203) and the role a config must have.
pub fn main(role: Role) -> anyhow::Result<()> {
    let (name, about, ports) = match role {
        Role::A => (
            "server-a",
            "Server A of the two-server metadata-private messenger",
            ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"],
        ),
        Role::B => (
            "server-b",
            "Server B of the two-server metadata-private messenger",
            ["127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"],
        ),
    };
    let command = Cli::command()
        .name(name)
        .bin_name(name)
        .about(about)
        .mut_subcommand("init", |c| {
            c.mut_arg("listen", |a| a.default_value(ports[0]).required(false))
                .mut_arg("peer_listen", |a| a.default_value(ports[1]).required(false))
                .mut_arg("admin_listen", |a| {
                    a.default_value(ports[2]).required(false)
                })
        });
    let cli = Cli::from_arg_matches(&command.get_matches())?;
    // The config must be for this binary's role.
    let checked = |config: &std::path::Path| -> anyhow::Result<ops::Checked> {
        let c =
            ops::check_config(config).with_context(|| format!("checking {}", config.display()))?;
        anyhow::ensure!(
            c.config.role == role,
            "config is for role {}, this is {name}",
            c.config.role
        );
        Ok(c)
    };
    init_logging(cli.log_json);
    match cli.command {
        Command::Init {
            data_dir,
            listen,
            peer_listen,
            admin_listen,
            params_t0,
            invite_tokens,
        } => {
            let registration = if invite_tokens.is_empty() {
                Registration::Open
            } else {
                Registration::Invite {
                    tokens: invite_tokens,
                }
            };
            let out = ops::init(&ops::InitOptions {
                role,
                data_dir,
                listen,
                peer_listen,
                admin_listen: (admin_listen != "none").then_some(admin_listen),
                params_t0,
                registration,
            })?;
            println!("config: {}", out.config_path.display());
            println!("role: {role}");
            println!("cert_pin: {}", out.cert_pin);
            println!("signing_key: {}", hex::encode(out.signing_public_key));
            println!("params_t0: {}", out.params.t0_ms);
            println!(
                "params_fingerprint: {}",
                hex::encode(out.params.fingerprint())
            );
            println!(
                "next: set-peer --config {} --peer-addr .. --peer-pin .. --peer-signing-key ..",
                out.config_path.display()
            );
        }
        Command::SetPeer {
            config,
            peer_addr,
            peer_pin,
            peer_signing_key,
        } => {
            ops::set_peer(&config, &peer_addr, &peer_pin, &peer_signing_key)?;
            println!("peer set in {}", config.display());
        }
        Command::CheckConfig { config } => {
            let c = checked(&config)?;
            println!(
                "ok: role {} cert_pin {} signing_key {}",
                c.config.role,
                c.cert_pin,
                hex::encode(c.signing_public_key)
            );
        }
        Command::Run { config } => {
            checked(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(ops::run_from_config(&config))?;
        }
    }
    Ok(())
}

/// Logs with `tracing` to stderr, filtered by `RUST_LOG` (`info` when unset), as JSON lines
/// if `json`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}
