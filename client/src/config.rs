//! The client config (`config.toml` in the home directory, mode 0600).
//!
//! ```toml
//! [server_a]
//! address = "127.0.0.1:7101"          # host:port of the client API
//! cert_pin = "sha256:<hex>"           # SHA-256 of the server's DER certificate
//! signing_key = "<hex>"               # the server's Ed25519 key for receipts and hashes
//!
//! [server_b]
//! address = "127.0.0.1:7201"
//! cert_pin = "sha256:<hex>"
//! signing_key = "<hex>"
//!
//! [params]                            # protocol::Params, the pinned parameters
//! domain_bits = 12
//! # ...
//! ```
//!
//! `client init --config-from FILE` takes a file of this shape (what the operators publish);
//! the parameters are pinned at init and never change afterwards (a parameter epoch is a new
//! config). The client refuses servers that announce other parameters.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::clock::RoundClock;
use crate::error::Error;
use crate::frame;
use crate::fsutil::write_private_atomic;
use crate::schedule::Schedule;

/// How to reach and authenticate one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port` of the server's client API.
    pub address: String,
    /// `sha256:<hex>` of the server's DER certificate.
    pub cert_pin: String,
    /// The server's Ed25519 signing public key, hex.
    pub signing_key: String,
}

/// The client config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Server A (DPF party 0).
    pub server_a: ServerConfig,
    /// Server B (DPF party 1).
    pub server_b: ServerConfig,
    /// The pinned parameters; `None` only between `init` and the servers' `Info`.
    pub params: Option<protocol::Params>,
}

#[derive(Deserialize)]
struct ParamsFile {
    params: protocol::Params,
}

impl ServerConfig {
    /// The signing key as bytes.
    pub fn signing_key_bytes(&self) -> Result<[u8; 32], Error> {
        let v = hex::decode(self.signing_key.trim())
            .map_err(|e| Error::Config(format!("signing_key of {}: {e}", self.address)))?;
        <[u8; 32]>::try_from(v.as_slice()).map_err(|_| {
            Error::Config(format!(
                "signing_key of {} must be 32 bytes of hex",
                self.address
            ))
        })
    }

    /// The certificate pin as bytes.
    pub fn cert_pin_bytes(&self) -> Result<[u8; 32], Error> {
        let hex_part = self
            .cert_pin
            .trim()
            .strip_prefix("sha256:")
            .ok_or_else(|| {
                Error::Config(format!(
                    "cert_pin of {} must start with sha256:",
                    self.address
                ))
            })?;
        let v = hex::decode(hex_part)
            .map_err(|e| Error::Config(format!("cert_pin of {}: {e}", self.address)))?;
        <[u8; 32]>::try_from(v.as_slice())
            .map_err(|_| Error::Config(format!("cert_pin of {} must be 32 bytes", self.address)))
    }

    fn check(&self, which: &str) -> Result<(), Error> {
        if self.address.trim().is_empty() {
            return Err(Error::Config(format!("server {which}: empty address")));
        }
        self.signing_key_bytes()?;
        self.cert_pin_bytes()?;
        Ok(())
    }
}

impl ClientConfig {
    /// A config from flags; `params` may be fetched from the servers later.
    pub fn from_parts(
        server_a: ServerConfig,
        server_b: ServerConfig,
        params: Option<protocol::Params>,
    ) -> Self {
        Self {
            server_a,
            server_b,
            params,
        }
    }

    /// Reads a config file without requiring the parameters.
    pub fn load_unchecked(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.server_a.check("A")?;
        cfg.server_b.check("B")?;
        if let Some(p) = &cfg.params {
            check_params(p)?;
        }
        Ok(cfg)
    }

    /// Reads a config file that must pin parameters.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let cfg = Self::load_unchecked(path)?;
        cfg.params()?;
        Ok(cfg)
    }

    /// Reads a `[params]` table from a TOML file.
    pub fn load_params(path: &Path) -> Result<protocol::Params, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let f: ParamsFile =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        check_params(&f.params)?;
        Ok(f.params)
    }

    /// Writes the config (mode 0600, atomically).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| Error::Config(format!("cannot encode config: {e}")))?;
        write_private_atomic(path, text.as_bytes())
    }

    /// The pinned parameters.
    pub fn params(&self) -> Result<&protocol::Params, Error> {
        self.params
            .as_ref()
            .ok_or_else(|| Error::Config("no pinned [params]".into()))
    }

    /// The schedule of the pinned parameters.
    pub fn schedule(&self) -> Result<Schedule, Error> {
        schedule_of(self.params()?)
    }

    /// The round clock of the pinned parameters.
    pub fn clock(&self) -> Result<RoundClock, Error> {
        Ok(clock_of(self.params()?))
    }

    /// The server configs, A then B.
    pub fn servers(&self) -> [&ServerConfig; 2] {
        [&self.server_a, &self.server_b]
    }
}

/// The schedule of a parameter set.
pub fn schedule_of(p: &protocol::Params) -> Result<Schedule, Error> {
    let usize_of = |v: u32, what: &str| {
        usize::try_from(v).map_err(|_| Error::UnsupportedParams(format!("{what} = {v}")))
    };
    Schedule::new(
        p.domain_bits,
        usize_of(p.reads_per_round, "reads_per_round")?,
        usize_of(p.c_max, "c_max")?,
        u64::from(p.write_channels),
        u64::from(p.read_lag),
    )
}

/// The round clock of a parameter set.
pub fn clock_of(p: &protocol::Params) -> RoundClock {
    RoundClock {
        t0_ms: p.t0_ms,
        round_ms: p.round_ms,
        send_offset_ms: p.send_offset_ms,
        write_close_ms: p.write_close_ms,
        cutoff_ms: p.cutoff_ms,
        publish_deadline_ms: p.publish_deadline_ms,
    }
}

/// Checks that this client can work with a parameter set.
pub fn check_params(p: &protocol::Params) -> Result<(), Error> {
    p.validate()
        .map_err(|e| Error::UnsupportedParams(e.to_string()))?;
    schedule_of(p)?;
    let cap = frame::data_capacity(p.slot_len as usize)
        .map_err(|e| Error::UnsupportedParams(e.to_string()))?;
    if cap < crate::ratchet::KEY_BLOCK_LEN {
        return Err(Error::UnsupportedParams(format!(
            "slot_len = {} leaves {cap} bytes per frame; the key blocks of forward secrecy \
             need {}",
            p.slot_len,
            crate::ratchet::KEY_BLOCK_LEN
        )));
    }
    Ok(())
}
