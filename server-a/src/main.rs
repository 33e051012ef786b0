//! Server A: parse arguments, set up tracing, call `server_core` with role A.

use anyhow::Context;
use clap::{Parser, Subcommand};
use protocol::Role;
use server_core::Registration;
use server_core::ops;
use std::path::PathBuf;

const ROLE: Role = Role::A;

#[derive(Parser, Debug)]
#[command(
    name = "server-a",
    version,
    about = "Server A of the two-server metadata-private messenger"
)]
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
        #[arg(long, default_value = "127.0.0.1:7101")]
        listen: String,
        /// Peer (mutual TLS) listen address.
        #[arg(long, default_value = "127.0.0.1:7102")]
        peer_listen: String,
        /// Admin listen address (loopback only); "none" disables it.
        #[arg(long, default_value = "127.0.0.1:7103")]
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
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
                role: ROLE,
                data_dir,
                listen,
                peer_listen,
                admin_listen: (admin_listen != "none").then_some(admin_listen),
                params_t0,
                registration,
            })?;
            println!("config: {}", out.config_path.display());
            println!("role: {ROLE}");
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
            let c = ops::check_config(&config)
                .with_context(|| format!("checking {}", config.display()))?;
            anyhow::ensure!(
                c.config.role == ROLE,
                "config is for role {}, this is server-a",
                c.config.role
            );
            println!(
                "ok: role {} cert_pin {} signing_key {}",
                c.config.role,
                c.cert_pin,
                hex::encode(c.signing_public_key)
            );
        }
        Command::Run { config } => {
            let c = ops::check_config(&config)
                .with_context(|| format!("checking {}", config.display()))?;
            anyhow::ensure!(
                c.config.role == ROLE,
                "config is for role {}, this is server-a",
                c.config.role
            );
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(ops::run_from_config(&config))?;
        }
    }
    Ok(())
}
