//! Server configuration (TOML).

use protocol::{Params, Role};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Who may register accounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum Registration {
    /// Anyone may register (still rate-limited).
    Open,
    /// Only holders of one of these single-use tokens.
    Invite {
        /// The accepted tokens (each usable once).
        tokens: Vec<String>,
    },
    /// Nobody may register.
    Closed,
}

/// One server's configuration. Relative paths are relative to the config file's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This server's role.
    pub role: Role,
    /// Where state lives.
    pub data_dir: PathBuf,
    /// Client-facing TLS listen address.
    pub listen: String,
    /// Peer-facing mutual-TLS listen address.
    pub peer_listen: String,
    /// Loopback admin address (`/metrics`, `/healthz`, `/readyz`), plain HTTP.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// The peer's peer-port address (`host:port`).
    pub peer_addr: String,
    /// The peer's certificate pin (`sha256:<hex>`).
    pub peer_cert_pin: String,
    /// The peer's Ed25519 signing public key (hex).
    pub peer_signing_key: String,
    /// This server's TLS certificate (PEM).
    pub tls_cert: PathBuf,
    /// This server's TLS private key (PEM, PKCS#8).
    pub tls_key: PathBuf,
    /// This server's Ed25519 signing key seed (32 raw bytes, hex encoded in the file).
    pub signing_key: PathBuf,
    /// The pinned parameters.
    pub params: Params,
    /// Registration policy.
    pub registration: Registration,
    /// Registrations accepted per minute (all sources together).
    #[serde(default = "default_registrations_per_minute")]
    pub registrations_per_minute: u32,
    /// Client-port connections served at once, all sources together (further connections
    /// wait in the listen backlog).
    #[serde(default = "default_client_max_connections")]
    pub client_max_connections: usize,
    /// Client-port connections served at once from one IP address; 0 means no per-address
    /// limit. Connections over the limit are closed at once.
    #[serde(default)]
    pub client_max_connections_per_ip: usize,
    /// Test-only misbehaviour (feature `misbehave`, see [`crate::misbehave`]); never read from
    /// or written to a file.
    #[cfg(feature = "misbehave")]
    #[serde(skip)]
    pub misbehave: Option<crate::misbehave::Misbehave>,
}

fn default_registrations_per_minute() -> u32 {
    60
}

fn default_client_max_connections() -> usize {
    1024
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A value is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a TOML config; relative paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if let Some(dir) = path.parent() {
            for p in [
                &mut cfg.data_dir,
                &mut cfg.tls_cert,
                &mut cfg.tls_key,
                &mut cfg.signing_key,
            ] {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a TOML config without validating it or resolving paths (for editing tools).
    pub fn load_raw(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Writes the config as TOML (paths as stored), atomically: a temporary file in the same
    /// directory, fsynced, then renamed over the old one, so a crash never leaves half a file.
    /// Readable by the owner only (mode 0600): it can hold invite tokens.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let io = |source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("toml.tmp");
        transport::write_secret(&tmp, text.as_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Checks values that can be checked without touching the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.params
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.peer_pin()?;
        self.peer_signing_key_bytes()?;
        for (name, addr) in [
            ("listen", &self.listen),
            ("peer_listen", &self.peer_listen),
            ("peer_addr", &self.peer_addr),
        ] {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "{name} {addr:?} is not host:port"
                )));
            }
        }
        if let Some(admin) = &self.admin_listen {
            let addr: std::net::SocketAddr = admin.parse().map_err(|_| {
                ConfigError::Invalid(format!("admin_listen {admin:?} is not ip:port"))
            })?;
            if !addr.ip().is_loopback() {
                return Err(ConfigError::Invalid(
                    "admin_listen serves plain HTTP and must be a loopback address".into(),
                ));
            }
        }
        if self.client_max_connections == 0 {
            return Err(ConfigError::Invalid(
                "client_max_connections must be at least 1".into(),
            ));
        }
        if let Registration::Invite { tokens } = &self.registration
            && tokens
                .iter()
                .any(|t| t.is_empty() || t.len() > protocol::MAX_INVITE_BYTES)
        {
            return Err(ConfigError::Invalid(format!(
                "invite tokens must be 1..={} bytes",
                protocol::MAX_INVITE_BYTES
            )));
        }
        Ok(())
    }

    /// The parsed peer certificate pin.
    pub fn peer_pin(&self) -> Result<transport::Pin, ConfigError> {
        self.peer_cert_pin
            .parse()
            .map_err(|e: transport::TransportError| ConfigError::Invalid(e.to_string()))
    }

    /// The parsed peer signing public key.
    pub fn peer_signing_key_bytes(&self) -> Result<[u8; 32], ConfigError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(self.peer_signing_key.trim(), &mut out).map_err(|_| {
            ConfigError::Invalid("peer_signing_key must be 64 hex digits".to_string())
        })?;
        protocol::VerifyingKey::from_bytes(&out)
            .map_err(|_| ConfigError::Invalid("peer_signing_key is not an Ed25519 key".into()))?;
        Ok(out)
    }
}

/// Reads a signing key file (64 hex digits).
pub fn load_signing_key(path: &Path) -> Result<protocol::SigningKey, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .map_err(|_| ConfigError::Invalid(format!("{} is not 64 hex digits", path.display())))?;
    let key = protocol::signing_key_from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// Writes a fresh signing key file (mode 0600) and returns the key.
pub fn create_signing_key(path: &Path) -> Result<protocol::SigningKey, ConfigError> {
    let key = protocol::generate_signing_key().map_err(|e| ConfigError::Invalid(e.to_string()))?;
    transport::write_secret(path, hex::encode(key.to_bytes()).as_bytes()).map_err(|source| {
        ConfigError::Io {
            path: path.display().to_string(),
            source,
        }
    })?;
    Ok(key)
}
