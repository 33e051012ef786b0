//! # transport: pinned TLS between the messenger's parties
//!
//! There is no certificate authority. Every party pins the exact certificate of the party it
//! talks to: a [`Pin`] is `sha256:<hex of SHA-256 of the DER certificate>`. Clients pin both
//! servers; the two servers use mutual TLS on their peer port and each pins the other's
//! certificate. TLS 1.3 only, rustls with the ring provider. Handshake signatures are still
//! verified with the provider's algorithms, so holding a pinned certificate without its key
//! does not help an attacker.
//!
//! ## Layout
//! * [`Pin`], [`pin_of`]: certificate pins.
//! * [`Identity`], [`generate_identity`]: a self-signed certificate and key, PEM save/load.
//! * [`PinnedServerCertVerifier`], [`PinnedClientCertVerifier`], [`server_config`],
//!   [`client_config`]: rustls configurations that accept exactly one certificate.
//! * [`HttpsClient`]: `post(path, body) -> (status, body)` with connect/response timeouts and a
//!   response-size limit.
//! * [`serve`], [`serve_with_stats`]: a bounded HTTP/1.1 server loop (body limit, global and
//!   per-IP connection limits, handshake/header/body timeouts against slow clients,
//!   graceful shutdown) used by `server-core`.
//!
//! Plain HTTP is only ever served on the loopback admin port; parties never talk without TLS.
//!
//! ## Example
//! ```no_run
//! # async fn demo() -> Result<(), transport::TransportError> {
//! use transport::{generate_identity, server_config, HttpsClient, Response, ServerLimits};
//! let id = generate_identity("server-a")?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let cfg = server_config(&id, None)?;
//! tokio::spawn(transport::serve(listener, Some(cfg), ServerLimits::default(),
//!     |req: transport::Request| async move { Response::binary(200, req.body) },
//!     std::future::pending()));
//! let client = HttpsClient::new(addr, id.pin(), None)?;
//! let (status, body) = client.post("/echo", b"hi".to_vec()).await?;
//! assert_eq!((status, body.as_slice()), (200, &b"hi"[..]));
//! # Ok(()) }
//! ```

pub use bytes::Bytes;

mod client;
mod error;
mod identity;
mod pin;
mod server;
mod tls;

pub use client::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RESPONSE_TIMEOUT, HttpsClient,
};
pub use error::TransportError;
pub use identity::{Identity, generate_identity, write_secret};
pub use pin::{Pin, pin_of};
pub use server::{Request, Response, ServerLimits, ServerStats, serve, serve_with_stats};
pub use tls::{
    PinnedClientCertVerifier, PinnedServerCertVerifier, client_config, provider, server_config,
};
