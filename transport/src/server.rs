//! A bounded HTTP/1.1 server loop over TLS (or plain TCP for the loopback admin port).

use crate::{Pin, pin_of};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
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
    /// Connections served at once; further connections wait in the listen backlog.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to receive request headers, and to receive a body.
    pub read_timeout: Duration,
    /// Time allowed for in-flight connections to finish after shutdown.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_body_bytes: 4 << 20,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then stops accepting and gives
/// in-flight connections `limits.shutdown_grace` to finish. With `tls`, every connection is TLS
/// (the configuration decides whether a pinned client certificate is required); without, plain
/// HTTP (use only on loopback, for the admin port).
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
    let acceptor = tls.map(TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, _remote) = tokio::select! {
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
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let stop_rx = stop_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acc) => {
                    let tls = match tokio::time::timeout(limits.handshake_timeout, acc.accept(tcp))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let client_pin = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| pin_of(c.as_ref()));
                    serve_conn(TokioIo::new(tls), client_pin, limits, handler, stop_rx).await;
                }
                None => serve_conn(TokioIo::new(tcp), None, limits, handler, stop_rx).await,
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
    client_pin: Option<Pin>,
    limits: ServerLimits,
    handler: H,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let resp = handle(req, client_pin, limits, handler).await;
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

async fn handle<H, Fut>(
    req: hyper::Request<Incoming>,
    client_pin: Option<Pin>,
    limits: ServerLimits,
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
        return Response::text(413, "request body too large");
    }
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let body = match tokio::time::timeout(
        limits.read_timeout,
        Limited::new(req.into_body(), max).collect(),
    )
    .await
    {
        Ok(Ok(c)) => c.to_bytes().to_vec(),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Response::text(413, "request body too large");
            }
            return Response::text(400, "cannot read request body");
        }
        Err(_) => return Response::text(408, "request body timed out"),
    };
    handler(Request {
        method,
        path,
        body,
        client_pin,
    })
    .await
}
