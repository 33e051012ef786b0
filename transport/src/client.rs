//! A small HTTPS client that talks to exactly one pinned server.

use crate::{Identity, Pin, TransportError, client_config};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::sync::Mutex;
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// Default time allowed for TCP connect plus TLS handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed from sending a request to having its whole response body.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default response body limit.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;
const MAX_IDLE_CONNECTIONS: usize = 4;

/// An HTTPS client for one server, pinned by certificate; optionally presents a client
/// certificate (server-to-server mutual TLS). Connections are reused; requests may run
/// concurrently (each takes an idle connection or opens a new one).
pub struct HttpsClient {
    addr: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    connect_timeout: Duration,
    response_timeout: Duration,
    max_response_bytes: usize,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient")
            .field("addr", &self.addr)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

impl HttpsClient {
    /// A client for `addr` (`host:port`, or anything that displays as such, e.g. a
    /// `SocketAddr`) that accepts only the certificate pinned by `server_pin`.
    pub fn new(
        addr: impl std::fmt::Display,
        server_pin: Pin,
        client_identity: Option<&Identity>,
    ) -> Result<HttpsClient, TransportError> {
        let addr = addr.to_string();
        let host = split_host(&addr)?;
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| TransportError::InvalidAddress(addr.clone()))?;
        let config = client_config(server_pin, client_identity)?;
        Ok(HttpsClient {
            addr,
            server_name,
            connector: TlsConnector::from(config),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sets the connect (TCP + TLS) and response timeouts.
    pub fn with_timeouts(mut self, connect: Duration, response: Duration) -> HttpsClient {
        self.connect_timeout = connect;
        self.response_timeout = response;
        self
    }

    /// Sets the largest response body accepted.
    pub fn with_max_response_bytes(mut self, limit: usize) -> HttpsClient {
        self.max_response_bytes = limit;
        self
    }

    /// The `host:port` this client talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// POSTs `body` to `path`; returns the HTTP status and the response body (at most the
    /// configured limit). Fails on connect/handshake errors (including a pin mismatch),
    /// timeouts, and oversized responses.
    ///
    /// A request sent on a reused connection that the server had already closed is retried
    /// once on a fresh connection (every request of this protocol is idempotent).
    ///
    /// A `Bytes` body is sent without a copy, so a large body can be retried for free.
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<(u16, Vec<u8>), TransportError> {
        let body = body.into();
        if let Some(sender) = self.take_idle() {
            match self.exchange(sender, path, body.clone()).await {
                Err(TransportError::Http(_)) => {}
                other => return other,
            }
        }
        let sender = self.connect().await?;
        self.exchange(sender, path, body).await
    }

    async fn exchange(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, Vec<u8>), TransportError> {
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, self.addr.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(body))
            .map_err(|e| TransportError::Http(e.to_string()))?;
        let limit = self.max_response_bytes;
        let exchange = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| TransportError::Http(e.to_string()))?;
            let status = resp.status().as_u16();
            if let Some(len) = resp
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                && len > limit as u64
            {
                return Err(TransportError::ResponseTooLarge { limit });
            }
            let collected = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        TransportError::ResponseTooLarge { limit }
                    } else {
                        TransportError::Http(e.to_string())
                    }
                })?;
            Ok((status, collected.to_bytes().to_vec()))
        };
        let out = tokio::time::timeout(self.response_timeout, exchange)
            .await
            .map_err(|_| TransportError::Timeout("waiting for the response"))??;
        self.put_idle(sender);
        Ok(out)
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() && s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(sender);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let connecting = async {
            let tcp = tokio::net::TcpStream::connect(self.addr.as_str()).await?;
            tcp.set_nodelay(true)?;
            let tls = self
                .connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| TransportError::Tls(e.to_string()))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| TransportError::Http(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "client connection ended");
                }
            });
            Ok::<_, TransportError>(sender)
        };
        tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| TransportError::Timeout("connecting"))?
    }
}

/// Splits the host out of `host:port` / `[v6]:port`, checking the port.
fn split_host(addr: &str) -> Result<&str, TransportError> {
    let bad = || TransportError::InvalidAddress(addr.chars().take(100).collect());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    Ok(host)
}
