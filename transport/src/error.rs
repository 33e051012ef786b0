//! The transport error type.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A pin string is not `sha256:<64 hex digits>`.
    #[error("invalid certificate pin {0:?}: expected sha256:<64 hex digits>")]
    InvalidPin(String),
    /// An address is not `host:port`.
    #[error("invalid address {0:?}: expected host:port")]
    InvalidAddress(String),
    /// Certificate or key generation failed.
    #[error("certificate generation failed: {0}")]
    CertGen(String),
    /// A PEM file could not be parsed.
    #[error("cannot parse PEM in {path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A file or socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration or handshake failed (including a pin mismatch).
    #[error("TLS error: {0}")]
    Tls(String),
    /// The HTTP exchange failed.
    #[error("HTTP error: {0}")]
    Http(String),
    /// Connecting or waiting for the response took too long.
    #[error("timed out while {0}")]
    Timeout(&'static str),
    /// The response body exceeded the client's limit.
    #[error("response body exceeds {limit} bytes")]
    ResponseTooLarge {
        /// The limit.
        limit: usize,
    },
}

impl From<rustls::Error> for TransportError {
    fn from(e: rustls::Error) -> Self {
        TransportError::Tls(e.to_string())
    }
}
