//! Operator commands shared by the `server-a` and `server-b` binaries: `init`, `set-peer`,
//! `check-config`, and running from a config file with signal handling.

use crate::config::{Config, ConfigError, Registration, create_signing_key, load_signing_key};
use crate::server::{ServerError, now_ms, run_with_force};
use protocol::{Params, Role};
use std::path::{Path, PathBuf};
use transport::{Identity, Pin, generate_identity};

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The role of the new server.
    pub role: Role,
    /// Directory to create (config.toml, TLS key and certificate, signing key, state).
    pub data_dir: PathBuf,
    /// Client listen address.
    pub listen: String,
    /// Peer listen address.
    pub peer_listen: String,
    /// Admin listen address (loopback).
    pub admin_listen: Option<String>,
    /// Round 0 start (unix ms); defaults to now rounded down to a minute.
    pub params_t0: Option<u64>,
    /// Registration policy.
    pub registration: Registration,
}

/// What `init` prints for the other operator and the clients.
#[derive(Debug, Clone)]
pub struct InitOutput {
    /// The written config file.
    pub config_path: PathBuf,
    /// This server's certificate pin.
    pub cert_pin: Pin,
    /// This server's signing public key.
    pub signing_public_key: [u8; 32],
    /// The parameters written (both operators must use the same).
    pub params: Params,
}

/// Placeholder written by `init` until `set-peer` fills in the peer.
pub const UNSET: &str = "UNSET";

/// Creates a data dir: config.toml, TLS key + self-signed certificate, Ed25519 signing key
/// (mode 0600). Refuses to overwrite an existing config.
pub fn init(opts: &InitOptions) -> Result<InitOutput, ConfigError> {
    let d = &opts.data_dir;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ConfigError::Io { path, source }
    };
    std::fs::create_dir_all(d).map_err(io(d))?;
    let config_path = d.join("config.toml");
    // Never overwrite key material (a restored backup, or another server's keys).
    for f in ["config.toml", "tls.crt", "tls.key", "signing.key"] {
        if d.join(f).exists() {
            return Err(ConfigError::Invalid(format!(
                "{} already exists; init never overwrites keys or configs",
                d.join(f).display()
            )));
        }
    }
    let name = match opts.role {
        Role::A => "mpm-server-a",
        Role::B => "mpm-server-b",
    };
    let identity = generate_identity(name).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    identity
        .save_pem(&d.join("tls.crt"), &d.join("tls.key"))
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let key = create_signing_key(&d.join("signing.key"))?;
    let t0 = opts.params_t0.unwrap_or_else(|| now_ms() / 60_000 * 60_000);
    let params = Params::demo(t0);
    let config = Config {
        role: opts.role,
        data_dir: PathBuf::from("."),
        listen: opts.listen.clone(),
        peer_listen: opts.peer_listen.clone(),
        admin_listen: opts.admin_listen.clone(),
        peer_addr: UNSET.into(),
        peer_cert_pin: UNSET.into(),
        peer_signing_key: UNSET.into(),
        tls_cert: PathBuf::from("tls.crt"),
        tls_key: PathBuf::from("tls.key"),
        signing_key: PathBuf::from("signing.key"),
        params,
        registration: opts.registration.clone(),
        registrations_per_minute: 60,
        client_max_connections: 1024,
        client_max_connections_per_ip: 0,
        #[cfg(feature = "misbehave")]
        misbehave: None,
    };
    config.save(&config_path)?;
    Ok(InitOutput {
        config_path,
        cert_pin: identity.pin(),
        signing_public_key: protocol::public_key(&key),
        params,
    })
}

/// Writes the peer's address, certificate pin and signing key into a config file.
pub fn set_peer(
    config_path: &Path,
    peer_addr: &str,
    peer_pin: &str,
    peer_signing_key: &str,
) -> Result<(), ConfigError> {
    let mut cfg = Config::load_raw(config_path)?;
    cfg.peer_addr = peer_addr.to_string();
    cfg.peer_cert_pin = peer_pin.to_string();
    cfg.peer_signing_key = peer_signing_key.to_string();
    cfg.validate()?;
    cfg.save(config_path)
}

/// A loaded, fully checked configuration and what it implies.
#[derive(Debug)]
pub struct Checked {
    /// The configuration (paths resolved).
    pub config: Config,
    /// This server's certificate pin.
    pub cert_pin: Pin,
    /// This server's signing public key.
    pub signing_public_key: [u8; 32],
}

/// Loads a config and everything it points to (certificate, keys); reports the first problem.
pub fn check_config(path: &Path) -> Result<Checked, ServerError> {
    let config = Config::load(path)?;
    let identity = Identity::load_pem(&config.tls_cert, &config.tls_key)?;
    // Check the certificate and key belong together by building a server configuration.
    transport::server_config(&identity, None)?;
    let key = load_signing_key(&config.signing_key)?;
    Ok(Checked {
        cert_pin: identity.pin(),
        signing_public_key: protocol::public_key(&key),
        config,
    })
}

/// Binds the configured addresses and runs until SIGINT or SIGTERM.
pub async fn run_from_config(path: &Path) -> Result<(), ServerError> {
    let checked = check_config(path)?;
    let cfg = checked.config;
    let client = tokio::net::TcpListener::bind(cfg.listen.as_str()).await?;
    let peer = tokio::net::TcpListener::bind(cfg.peer_listen.as_str()).await?;
    let admin = match &cfg.admin_listen {
        Some(a) => Some(tokio::net::TcpListener::bind(a.as_str()).await?),
        None => None,
    };
    tracing::info!(
        role = %cfg.role,
        listen = %cfg.listen,
        peer_listen = %cfg.peer_listen,
        cert_pin = %checked.cert_pin,
        "starting"
    );
    let (graceful, force) = stop_signals();
    run_with_force(
        cfg,
        client,
        peer,
        admin,
        graceful,
        force,
        Default::default(),
    )
    .await
}

/// The first SIGINT (Ctrl-C) or SIGTERM completes the first future (a graceful stop: the
/// rounds in progress are finished with the peer); a second one completes the second (stop
/// at once, as a crash would; the restart finishes or abandons those rounds with the peer).
pub fn stop_signals() -> (
    impl Future<Output = ()> + Send + 'static,
    impl Future<Output = ()> + Send + 'static,
) {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        #[cfg(not(unix))]
        let mut term: Option<()> = None;
        for (i, tx) in [first_tx, second_tx].into_iter().enumerate() {
            one_signal(&mut term).await;
            if i == 0 {
                tracing::info!(
                    "stop requested: finishing the rounds in progress with the peer; signal \
                     again to stop at once"
                );
            }
            let _ = tx.send(());
        }
    });
    // A sender dropped without sending (no signal handling) never completes the future.
    let wait = |rx: tokio::sync::oneshot::Receiver<()>| async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    (wait(first_rx), wait(second_rx))
}

#[cfg(unix)]
async fn one_signal(term: &mut Option<tokio::signal::unix::Signal>) {
    match term {
        Some(t) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = t.recv() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn one_signal(_: &mut Option<()>) {
    let _ = tokio::signal::ctrl_c().await;
}
