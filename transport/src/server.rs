//! A bounded HTTP/1.1 server loop over TLS (or plain TCP for the loopback admin port).

use crate::{Pin, pin_of};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A decoded request handed to the handler: the body is complete and within the limit.
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method, upper case.
    pub method: String,
    /// The request path (without query).
    pub path: String,
    /// The full body.
    pub body: Vec<u8>,
    /// Pin of the client certificate, when the connection used mutual TLS.
    pub client_pin: Option<Pin>,
    /// The address the connection came from (for per-source limits).
    pub remote_ip: std::net::IpAddr,
}

/// What the handler returns.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A binary (`application/octet-stream`) response.
    pub fn binary(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: "application/octet-stream",
            body,
        }
    }
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

/// Limits of the server loop.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Largest request body accepted (larger requests get 413 before being read).
    pub max_body_bytes: usize,
    /// Connections served at once (all sources together); further connections wait in the
    /// listen backlog.
    pub max_connections: usize,
    /// Connections served at once from one IP address; a connection over this limit is closed
    /// right after it is accepted (it never waits for a slot). `usize::MAX`: no per-IP limit.
    pub max_connections_per_ip: usize,
    /// Time allowed for the whole TLS handshake (not extended by trickled bytes).
    pub handshake_timeout: Duration,
    /// Time allowed to receive a request's headers (counted from the moment the server starts
    /// waiting for them, so it also closes idle keep-alive connections), and, separately, to
    /// receive its whole body. Trickled bytes do not extend either.
    pub read_timeout: Duration,
    /// Time allowed for in-flight connections to finish after shutdown.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_body_bytes: 4 << 20,
            max_connections: 1024,
            max_connections_per_ip: usize::MAX,
            handshake_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Connection counters of one [`serve`] loop (shared with the caller through
/// [`serve_with_stats`]). Connections that never reach the handler are counted here only.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted (including those closed at once by the per-IP limit).
    pub accepted: AtomicU64,
    /// Connections open now (gauge).
    pub open: AtomicU64,
    /// Connections closed at once because their IP address had too many open.
    pub refused_per_ip: AtomicU64,
    /// TLS handshakes that did not finish within the handshake timeout.
    pub handshake_timeouts: AtomicU64,
    /// TLS handshakes that failed (bad bytes, wrong or missing client certificate, ...).
    pub handshake_failures: AtomicU64,
    /// Connections closed because request headers did not arrive within the read timeout
    /// (includes idle keep-alive connections).
    pub header_timeouts: AtomicU64,
    /// Requests answered 408 because the body did not arrive within the read timeout.
    pub body_timeouts: AtomicU64,
    /// Requests answered 413 (body over the limit).
    pub bodies_too_large: AtomicU64,
}

impl ServerStats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Open connections per IP address; a slot is released when its guard drops.
#[derive(Debug, Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Decrements the open-connection gauge when a connection task ends (or is aborted).
struct OpenGuard(Arc<ServerStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then stops accepting and gives
/// in-flight connections `limits.shutdown_grace` to finish. With `tls`, every connection is TLS
/// (the configuration decides whether a pinned client certificate is required); without, plain
/// HTTP (use only on loopback, for the admin port).
///
/// Slow clients: the handshake, the request headers and the request body each have a total
/// time limit ([`ServerLimits::handshake_timeout`], [`ServerLimits::read_timeout`]) that
/// trickled bytes do not extend, and connections are limited globally and per IP address.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ServerLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    serve_with_stats(listener, tls, limits, Arc::default(), handler, shutdown).await
}

/// [`serve`], counting connection events in `stats`.
pub async fn serve_with_stats<H, Fut>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ServerLimits,
    stats: Arc<ServerStats>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let acceptor = tls.map(TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = Arc::new(PerIp::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        ServerStats::add(&stats.accepted);
        let Some(ip_slot) = per_ip.take(remote.ip(), limits.max_connections_per_ip.max(1)) else {
            // Closed at once: one address must not hold every slot (slow-client attacks).
            ServerStats::add(&stats.refused_per_ip);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let mut stop_rx = stop_rx.clone();
        let stats = stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        let open = OpenGuard(stats.clone());
        conns.spawn(async move {
            let _permit = permit;
            let _ip_slot = ip_slot;
            let _open = open;
            match acceptor {
                Some(acc) => {
                    let handshake = tokio::time::timeout(limits.handshake_timeout, acc.accept(tcp));
                    let tls = tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                ServerStats::add(&stats.handshake_failures);
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                ServerStats::add(&stats.handshake_timeouts);
                                return;
                            }
                        },
                        // A connection still in its handshake at shutdown has sent no request.
                        _ = stop_rx.wait_for(|s| *s) => return,
                    };
                    let client_pin = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| pin_of(c.as_ref()));
                    serve_conn(
                        TokioIo::new(tls),
                        (client_pin, remote.ip()),
                        limits,
                        &stats,
                        handler,
                        stop_rx,
                    )
                    .await;
                }
                None => {
                    let who = (None, remote.ip());
                    serve_conn(TokioIo::new(tcp), who, limits, &stats, handler, stop_rx).await
                }
            }
        });
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(limits.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    Ok(())
}

async fn serve_conn<I, H, Fut>(
    io: I,
    who: (Option<Pin>, std::net::IpAddr),
    limits: ServerLimits,
    stats: &Arc<ServerStats>,
    handler: H,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let conn_stats = stats.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let handler = handler.clone();
        let stats = conn_stats.clone();
        async move {
            let resp = handle(req, who, limits, &stats, handler).await;
            let mut out = hyper::Response::new(Full::new(Bytes::from(resp.body)));
            *out.status_mut() = hyper::StatusCode::from_u16(resp.status)
                .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
            out.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(resp.content_type),
            );
            Ok::<_, std::convert::Infallible>(out)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .serve_connection(io, service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        ServerStats::add(&stats.header_timeouts);
                    }
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                if changed.is_err() || *stop.borrow() {
                    let _ = conn.as_mut().await;
                    return;
                }
            }
        }
    }
}

enum BodyError {
    TooLarge,
    Read,
}

/// Reads a body of at most `max` bytes into one buffer of `capacity` bytes (the declared
/// length, already checked against `max`).
async fn read_body(mut body: Incoming, capacity: usize, max: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(capacity.min(max));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if data.len() > max - out.len() {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

async fn handle<H, Fut>(
    req: hyper::Request<Incoming>,
    (client_pin, remote_ip): (Option<Pin>, std::net::IpAddr),
    limits: ServerLimits,
    stats: &ServerStats,
    handler: H,
) -> Response
where
    H: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let max = limits.max_body_bytes;
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        ServerStats::add(&stats.bodies_too_large);
        return Response::text(413, "request body too large");
    }
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    // The declared length is bounded above, so it may size the buffer: one copy of the body
    // out of hyper's read buffers, straight into the `Vec` the handler gets.
    let capacity = declared.map_or(0, |len| len as usize);
    let body = match tokio::time::timeout(
        limits.read_timeout,
        read_body(req.into_body(), capacity, max),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => {
            ServerStats::add(&stats.bodies_too_large);
            return Response::text(413, "request body too large");
        }
        Ok(Err(BodyError::Read)) => return Response::text(400, "cannot read request body"),
        Err(_) => {
            ServerStats::add(&stats.body_timeouts);
            return Response::text(408, "request body timed out");
        }
    };
    handler(Request {
        method,
        path,
        body,
        client_pin,
        remote_ip,
    })
    .await
}
