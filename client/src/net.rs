//! Both servers over TLS with pinned certificates (`transport::HttpsClient`).
//!
//! A request that fails in transport is retried with the **same bytes** at a fixed interval
//! until its phase's deadline; a server's refusal (a non-200 answer) is not retried. Neither
//! depends on what the client decrypted or whether a receipt verified.

use std::time::Duration;

use protocol::{InfoResponse, Params, paths};

use crate::clock::now_ms;
use crate::config::ClientConfig;
use crate::error::Error;
use crate::identity::Identity;
use crate::wire;

/// Interval between retries of a request that failed in transport.
pub const RETRY_MS: u64 = 250;
/// Timeout of one-shot requests (info, register, round status).
pub const ONE_SHOT_TIMEOUT_MS: u64 = 10_000;

/// One of the two servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerId {
    /// Server A, DPF party 0.
    A,
    /// Server B, DPF party 1.
    B,
}

impl ServerId {
    /// `"A"` or `"B"`.
    pub fn name(self) -> &'static str {
        match self {
            ServerId::A => "A",
            ServerId::B => "B",
        }
    }

    /// 0 for A, 1 for B.
    pub fn index(self) -> usize {
        match self {
            ServerId::A => 0,
            ServerId::B => 1,
        }
    }

    /// The server of index `i` (0 = A, anything else = B).
    pub fn from_index(i: usize) -> Self {
        if i == 0 { ServerId::A } else { ServerId::B }
    }
}

/// Connections to both servers.
pub struct Servers {
    links: [transport::HttpsClient; 2],
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Servers").finish_non_exhaustive()
    }
}

fn net_err(server: ServerId, message: impl Into<String>) -> Error {
    Error::Net {
        server: server.name(),
        message: message.into(),
    }
}

impl Servers {
    /// Prepares pinned-TLS clients for both servers (connections are made on first use).
    pub fn connect(config: &ClientConfig) -> Result<Self, Error> {
        let mk = |s: ServerId| -> Result<transport::HttpsClient, Error> {
            let cfg = config.servers()[s.index()];
            transport::HttpsClient::new(&cfg.address, transport::Pin(cfg.cert_pin_bytes()?), None)
                .map_err(|e| net_err(s, e.to_string()))
        };
        Ok(Self {
            links: [mk(ServerId::A)?, mk(ServerId::B)?],
        })
    }

    /// One POST; `Ok` only for a 200 answer.
    async fn post_once(
        &self,
        s: ServerId,
        path: &str,
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<Vec<u8>, Attempt> {
        let fut = self.links[s.index()].post(path, body.to_vec());
        match tokio::time::timeout(Duration::from_millis(timeout_ms.max(1)), fut).await {
            Err(_) => Err(Attempt::Transport("no answer in time".into())),
            Ok(Err(e)) => Err(Attempt::Transport(e.to_string())),
            Ok(Ok((200, resp))) => Ok(resp),
            Ok(Ok((status, resp))) => Err(Attempt::Refused(wire::error_message(status, &resp))),
        }
    }

    /// POSTs `body`, retrying transport failures with the same bytes until `deadline_ms`.
    pub async fn post_until(
        &self,
        s: ServerId,
        path: &str,
        body: &[u8],
        deadline_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        loop {
            let now = now_ms();
            if now >= deadline_ms {
                return Err(net_err(s, format!("{path}: no answer before the deadline")));
            }
            match self.post_once(s, path, body, deadline_ms - now).await {
                Ok(resp) => return Ok(resp),
                Err(Attempt::Refused(m)) => {
                    return Err(Error::Refused {
                        server: s.name(),
                        message: format!("{path}: {m}"),
                    });
                }
                Err(Attempt::Transport(m)) => {
                    if now_ms().saturating_add(RETRY_MS) >= deadline_ms {
                        return Err(net_err(s, format!("{path}: {m}")));
                    }
                    tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
                }
            }
        }
    }

    /// POSTs an optional body (nothing to send is not an error).
    pub async fn post_opt(
        &self,
        s: ServerId,
        path: &str,
        body: Option<&[u8]>,
        deadline_ms: u64,
    ) -> Result<Option<Vec<u8>>, Error> {
        match body {
            Some(b) => self.post_until(s, path, b, deadline_ms).await.map(Some),
            None => Ok(None),
        }
    }

    /// Both servers' `Info`, each result on its own.
    pub async fn info_each(&self) -> [Result<InfoResponse, Error>; 2] {
        let deadline = now_ms() + ONE_SHOT_TIMEOUT_MS;
        let body = protocol::codec::encode(&protocol::InfoRequest {});
        let one = |s: ServerId| {
            let body = &body;
            async move {
                let resp = self.post_until(s, paths::INFO, body, deadline).await?;
                wire::parse_info(s, &resp)
            }
        };
        let (a, b) = tokio::join!(one(ServerId::A), one(ServerId::B));
        [a, b]
    }

    /// Both servers' `Info`; fails if either is unreachable.
    pub async fn info_both(&self) -> Result<[InfoResponse; 2], Error> {
        let [a, b] = self.info_each().await;
        Ok([a?, b?])
    }

    /// Registers the account with both servers, in parallel.
    pub async fn register_both(
        &self,
        identity: &Identity,
        params: &Params,
        invite: Option<&str>,
    ) -> Result<(), Error> {
        let body = wire::register_request(params, identity, invite);
        let deadline = now_ms() + ONE_SHOT_TIMEOUT_MS;
        let one = |s: ServerId| {
            let body = &body;
            async move {
                let resp = self.post_until(s, paths::REGISTER, body, deadline).await?;
                wire::parse_register(s, identity, &resp)
            }
        };
        let (a, b) = tokio::join!(one(ServerId::A), one(ServerId::B));
        a?;
        b?;
        Ok(())
    }

    /// Whether our write of `round` is in its accepted set, asking both servers in parallel
    /// (every round, whatever happened to the write); `None` if neither knows by `deadline_ms`.
    pub async fn accepted(
        &self,
        config: &ClientConfig,
        round: u64,
        request_id: &[u8],
        deadline_ms: u64,
    ) -> Option<bool> {
        let body = wire::round_status_request(round);
        let one = |s: ServerId| {
            let body = &body;
            async move {
                let resp = self
                    .post_until(s, paths::ROUND_STATUS, body, deadline_ms)
                    .await?;
                wire::parse_round_status(config, s, round, request_id, &resp)
            }
        };
        let (a, b) = tokio::join!(one(ServerId::A), one(ServerId::B));
        let mut known = None;
        for (s, r) in [(ServerId::A, a), (ServerId::B, b)] {
            match r {
                Ok(Some(v)) => {
                    known.get_or_insert(v);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(server = s.name(), error = %e, "round status"),
            }
        }
        known
    }
}

enum Attempt {
    Transport(String),
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn terr(e: transport::TransportError) -> Error {
        Error::Config(e.to_string())
    }

    fn ioerr(e: std::io::Error) -> Error {
        Error::io(Path::new("socket"), e)
    }

    fn server_cfg(address: String, pin: String) -> ServerConfig {
        ServerConfig {
            address,
            cert_pin: pin,
            signing_key: hex::encode([0u8; 32]),
        }
    }

    /// Runs the real transport server with a handler that echoes `/ok` and refuses the rest.
    #[tokio::test]
    async fn refusals_are_final_transport_failures_are_retried_until_the_deadline()
    -> Result<(), Error> {
        let id = transport::generate_identity("server-a").map_err(terr)?;
        let other = transport::generate_identity("impostor").map_err(terr)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(ioerr)?;
        let addr = listener.local_addr().map_err(ioerr)?;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(ioerr)?;
            l.local_addr().map_err(ioerr)?
        };
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let tls = transport::server_config(&id, None).map_err(terr)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(transport::serve(
            listener,
            Some(tls),
            transport::ServerLimits::default(),
            move |req: transport::Request| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if req.path == "/ok" {
                        transport::Response::binary(200, req.body)
                    } else {
                        let e =
                            protocol::ErrorResponse::new(protocol::ErrorCode::Duplicate, "again");
                        transport::Response::binary(409, protocol::codec::encode(&e))
                    }
                }
            },
            async {
                let _ = stop_rx.await;
            },
        ));
        let pin = id.pin().to_string();
        let cfg = ClientConfig::from_parts(
            server_cfg(addr.to_string(), pin.clone()),
            server_cfg(closed.to_string(), pin),
            None,
        );
        let servers = Servers::connect(&cfg)?;
        let echo = servers
            .post_until(ServerId::A, "/ok", b"same bytes", now_ms() + 5000)
            .await?;
        assert_eq!(echo, b"same bytes");
        let before = hits.load(Ordering::SeqCst);
        let r = servers
            .post_until(ServerId::A, "/v1/write", b"x", now_ms() + 5000)
            .await;
        assert!(
            matches!(&r, Err(Error::Refused { server: "A", message }) if message.contains("duplicate")),
            "{r:?}"
        );
        assert_eq!(
            hits.load(Ordering::SeqCst) - before,
            1,
            "a refusal is not retried"
        );
        // A server that is down: retried until the deadline, then reported as unreachable.
        let t = now_ms();
        let r = servers
            .post_until(ServerId::B, "/v1/write", b"x", t + 1000)
            .await;
        assert!(matches!(r, Err(Error::Net { server: "B", .. })), "{r:?}");
        assert!(now_ms() >= t + 700, "gave up before the deadline");
        // A server presenting another certificate than the pinned one is never talked to.
        let wrong = ClientConfig::from_parts(
            server_cfg(addr.to_string(), other.pin().to_string()),
            server_cfg(addr.to_string(), other.pin().to_string()),
            None,
        );
        let before = hits.load(Ordering::SeqCst);
        let r = Servers::connect(&wrong)?
            .post_until(ServerId::A, "/ok", b"secret", now_ms() + 600)
            .await;
        assert!(matches!(r, Err(Error::Net { .. })), "{r:?}");
        assert_eq!(hits.load(Ordering::SeqCst), before);
        let _ = stop_tx.send(());
        server
            .await
            .map_err(|e| Error::Config(e.to_string()))?
            .map_err(ioerr)?;
        Ok(())
    }
}
