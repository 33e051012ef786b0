//! Certificate pins: `sha256:<hex of SHA-256 of the DER certificate>`.

use crate::TransportError;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A certificate pin: the SHA-256 of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin(pub [u8; 32]);

/// The pin of a DER certificate.
pub fn pin_of(cert_der: &[u8]) -> Pin {
    Pin(Sha256::digest(cert_der).into())
}

impl Pin {
    /// True if `cert_der` is the pinned certificate.
    pub fn matches(&self, cert_der: &[u8]) -> bool {
        pin_of(cert_der) == *self
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

impl FromStr for Pin {
    type Err = TransportError;
    fn from_str(s: &str) -> Result<Pin, TransportError> {
        let bad = || TransportError::InvalidPin(s.chars().take(80).collect());
        let hex_part = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad())?;
        Ok(Pin(out))
    }
}
