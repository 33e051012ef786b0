//! Handshake tests: right pin, wrong pin, mutual TLS with a pinned and an unpinned client cert,
//! limits (body size, slow clients, connections per IP), PEM round trip.

use std::time::Duration;
use transport::*;

async fn echo_server(
    server: &Identity,
    client_pin: Option<Pin>,
    limits: ServerLimits,
) -> Result<(std::net::SocketAddr, tokio::sync::oneshot::Sender<()>), TransportError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cfg = server_config(server, client_pin)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        Some(cfg),
        limits,
        |req: Request| async move {
            let mut body = req.path.into_bytes();
            body.push(b'|');
            body.extend_from_slice(
                req.client_pin
                    .map(|p| p.to_string())
                    .unwrap_or_default()
                    .as_bytes(),
            );
            body.push(b'|');
            body.extend_from_slice(&req.body);
            Response::binary(200, body)
        },
        async {
            let _ = rx.await;
        },
    ));
    Ok((addr, tx))
}

fn client(
    addr: std::net::SocketAddr,
    pin: Pin,
    id: Option<&Identity>,
) -> Result<HttpsClient, TransportError> {
    Ok(HttpsClient::new(addr, pin, id)?
        .with_timeouts(Duration::from_secs(2), Duration::from_secs(2)))
}

#[tokio::test]
async fn right_pin_succeeds_and_connection_is_reused() -> Result<(), TransportError> {
    let server = generate_identity("server-a")?;
    let (addr, _stop) = echo_server(&server, None, ServerLimits::default()).await?;
    let c = client(addr, server.pin(), None)?;
    for i in 0..3u8 {
        let (status, body) = c.post("/x", vec![i; 3]).await?;
        assert_eq!(status, 200);
        assert_eq!(body, [b"/x||".as_slice(), &[i; 3]].concat());
    }
    Ok(())
}

#[tokio::test]
async fn wrong_pin_fails() -> Result<(), TransportError> {
    let server = generate_identity("server-a")?;
    let other = generate_identity("server-a")?;
    let (addr, _stop) = echo_server(&server, None, ServerLimits::default()).await?;
    let c = client(addr, other.pin(), None)?;
    match c.post("/x", vec![]).await {
        Err(TransportError::Tls(msg)) => assert!(msg.contains("certificate"), "{msg}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn mutual_tls_accepts_only_the_pinned_client() -> Result<(), TransportError> {
    let server = generate_identity("server-b")?;
    let peer = generate_identity("server-a")?;
    let stranger = generate_identity("server-a")?;
    let (addr, _stop) = echo_server(&server, Some(peer.pin()), ServerLimits::default()).await?;

    let (status, body) = client(addr, server.pin(), Some(&peer))?
        .post("/p", vec![7])
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!("/p|{}|\x07", peer.pin()).into_bytes(),
        "handler sees the client pin"
    );

    // An unpinned client certificate and no certificate at all are both refused.
    assert!(
        client(addr, server.pin(), Some(&stranger))?
            .post("/p", vec![])
            .await
            .is_err()
    );
    assert!(
        client(addr, server.pin(), None)?
            .post("/p", vec![])
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn body_limits_are_enforced_both_ways() -> Result<(), TransportError> {
    let server = generate_identity("s")?;
    let limits = ServerLimits {
        max_body_bytes: 1000,
        ..ServerLimits::default()
    };
    let (addr, _stop) = echo_server(&server, None, limits).await?;
    let (status, _) = client(addr, server.pin(), None)?
        .post("/x", vec![0; 1001])
        .await?;
    assert_eq!(status, 413);
    let small = client(addr, server.pin(), None)?.with_max_response_bytes(100);
    match small.post("/x", vec![0; 500]).await {
        Err(TransportError::ResponseTooLarge { limit: 100 }) => {}
        other => panic!("expected ResponseTooLarge, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn connect_timeout_and_refused_are_errors() -> Result<(), TransportError> {
    let id = generate_identity("s")?;
    // A listener that never completes a TLS handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = silent.local_addr()?;
    let c = HttpsClient::new(addr, id.pin(), None)?
        .with_timeouts(Duration::from_millis(200), Duration::from_millis(200));
    assert!(matches!(
        c.post("/", vec![]).await,
        Err(TransportError::Timeout(_))
    ));
    drop(silent);
    assert!(c.post("/", vec![]).await.is_err());
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_the_server() -> Result<(), TransportError> {
    let server = generate_identity("s")?;
    let (addr, stop) = echo_server(&server, None, ServerLimits::default()).await?;
    let c = client(addr, server.pin(), None)?;
    assert_eq!(c.post("/", vec![]).await?.0, 200);
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = client(addr, server.pin(), None)?;
    assert!(fresh.post("/", vec![]).await.is_err());
    Ok(())
}

#[test]
fn pem_round_trip_and_pin_parsing() -> Result<(), TransportError> {
    let id = generate_identity("server-a")?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    id.save_pem(&cert, &key)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    }
    let back = Identity::load_pem(&cert, &key)?;
    assert_eq!(back, id);
    let pin = id.pin();
    let text = pin.to_string();
    assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
    assert_eq!(text.parse::<Pin>()?, pin);
    assert_eq!(pin, pin_of(&id.cert_der));
    for bad in [
        "",
        "sha256:",
        "sha1:00",
        "sha256:zz",
        &text[..text.len() - 2],
    ] {
        assert!(bad.parse::<Pin>().is_err(), "{bad:?} parsed");
    }
    assert!(
        Identity::load_pem(&key, &key).is_err(),
        "a key is not a certificate"
    );
    Ok(())
}

#[test]
fn bad_addresses_are_rejected() -> Result<(), TransportError> {
    let pin = Pin([0; 32]);
    for bad in ["nohost", ":80", "h:notaport", "h:70000"] {
        assert!(
            matches!(
                HttpsClient::new(bad, pin, None),
                Err(TransportError::InvalidAddress(_))
            ),
            "{bad}"
        );
    }
    assert!(HttpsClient::new("localhost:443", pin, None).is_ok());
    assert!(HttpsClient::new("[::1]:443", pin, None).is_ok());
    Ok(())
}

#[tokio::test]
async fn a_connection_closed_by_the_server_while_idle_is_replaced() -> Result<(), TransportError> {
    let server = generate_identity("s")?;
    let limits = ServerLimits {
        read_timeout: Duration::from_millis(150),
        ..ServerLimits::default()
    };
    let (addr, _stop) = echo_server(&server, None, limits).await?;
    let c = client(addr, server.pin(), None)?;
    assert_eq!(c.post("/1", vec![]).await?.0, 200);
    // The server drops the idle keep-alive connection after its header read timeout.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = c.post("/2", vec![5]).await?;
    assert_eq!((status, body), (200, b"/2||\x05".to_vec()));
    Ok(())
}

/// An echo server on 127.0.0.1 that shares its connection counters.
async fn counted_server(
    server: &Identity,
    limits: ServerLimits,
) -> Result<
    (
        std::net::SocketAddr,
        std::sync::Arc<ServerStats>,
        tokio::sync::oneshot::Sender<()>,
    ),
    TransportError,
> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cfg = server_config(server, None)?;
    let stats = std::sync::Arc::new(ServerStats::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_with_stats(
        listener,
        Some(cfg),
        limits,
        stats.clone(),
        |req: Request| async move { Response::binary(200, req.body) },
        async {
            let _ = rx.await;
        },
    ));
    Ok((addr, stats, tx))
}

/// A TLS connection that completed its handshake and then sends nothing by itself.
async fn tls_connect(
    addr: std::net::SocketAddr,
    pin: Pin,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(client_config(pin, None).expect("config"));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("handshake")
}

/// Sends `bytes` one at a time, `gap` apart (a slow client), then keeps the connection open.
/// Returns how long the server took to close it and what it answered before closing.
async fn trickle_until_closed<S>(mut s: S, bytes: &[u8], gap: Duration) -> (Duration, Vec<u8>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let mut next = 0;
    while start.elapsed() < Duration::from_secs(10) {
        if next < bytes.len() {
            if s.write_all(&bytes[next..=next]).await.is_err() || s.flush().await.is_err() {
                return (start.elapsed(), got);
            }
            next += 1;
        }
        match tokio::time::timeout(gap, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (start.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    panic!("the server never closed the slow connection");
}

#[tokio::test]
async fn slow_clients_are_cut_off_by_total_timeouts_that_trickling_does_not_extend()
-> Result<(), TransportError> {
    let server = generate_identity("s")?;
    let timeout = Duration::from_millis(300);
    let limits = ServerLimits {
        handshake_timeout: timeout,
        read_timeout: timeout,
        ..ServerLimits::default()
    };
    let (addr, stats, _stop) = counted_server(&server, limits).await?;
    let gap = Duration::from_millis(40);
    // Long enough that trickling it takes far longer than any timeout.
    let filler = vec![b'a'; 200];

    // 1. A partial TLS handshake: a record header announcing 512 bytes, then one byte at a time.
    let partial_hello = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut bytes = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        bytes.extend(vec![0u8; 200]);
        trickle_until_closed(tcp, &bytes, gap).await
    };
    // 2. A finished handshake, then silence.
    let idle = async {
        let s = tls_connect(addr, server.pin()).await;
        trickle_until_closed(s, &[], gap).await
    };
    // 3. A finished handshake, then request headers one byte at a time.
    let slow_headers = async {
        let s = tls_connect(addr, server.pin()).await;
        let mut head = b"POST /x HTTP/1.1\r\nHost: a\r\nX-Slow: ".to_vec();
        head.extend_from_slice(&filler);
        trickle_until_closed(s, &head, gap).await
    };
    // 4. Complete headers at once, then the body one byte at a time: answered 408.
    let slow_body = async {
        use tokio::io::AsyncWriteExt;
        let mut s = tls_connect(addr, server.pin()).await;
        s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 200\r\n\r\n")
            .await
            .expect("headers");
        s.flush().await.expect("flush");
        trickle_until_closed(s, &filler, gap).await
    };
    // An honest client is served meanwhile.
    let honest = async {
        let c = client(addr, server.pin(), None).expect("client");
        for i in 0..5u8 {
            let (status, body) = c.post("/ok", vec![i]).await.expect("honest request");
            assert_eq!((status, body), (200, vec![i]));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let ((t1, _), (t2, _), (t3, _), (t4, _), ()) =
        tokio::join!(partial_hello, idle, slow_headers, slow_body, honest);
    // Each was closed after about one timeout (not after the 8 s of trickling it wanted).
    for (what, t) in [
        ("partial handshake", t1),
        ("idle after handshake", t2),
        ("slow headers", t3),
        ("slow body", t4),
    ] {
        assert!(
            t >= Duration::from_millis(250) && t < Duration::from_millis(1500),
            "{what}: closed after {t:?}"
        );
    }
    // The 408 answer itself may be lost to the reset that closing a socket with unread input
    // causes; the counter shows it was sent.
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&stats.handshake_timeouts), 1);
    assert!(
        load(&stats.header_timeouts) >= 2,
        "idle + slow headers: {stats:?}"
    );
    assert_eq!(load(&stats.body_timeouts), 1, "{stats:?} {t4:?}");
    Ok(())
}

#[tokio::test]
async fn the_per_ip_limit_closes_excess_connections_at_once() -> Result<(), TransportError> {
    use tokio::io::AsyncReadExt;
    let server = generate_identity("s")?;
    let limits = ServerLimits {
        max_connections_per_ip: 3,
        handshake_timeout: Duration::from_secs(5),
        ..ServerLimits::default()
    };
    let (addr, stats, _stop) = counted_server(&server, limits).await?;
    // Another loopback address stands for another host.
    let from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        async move {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind((ip, 0).into()).expect("bind");
            sock.connect(addr).await.expect("connect")
        }
    };
    // Is the server still holding this connection after `wait`?
    async fn held(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
        let mut b = [0u8; 1];
        tokio::time::timeout(wait, s.read(&mut b)).await.is_err()
    }
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(from("127.0.0.2").await);
    }
    for s in &mut kept {
        assert!(held(s, Duration::from_millis(100)).await);
    }
    let mut excess = from("127.0.0.2").await;
    assert!(
        !held(&mut excess, Duration::from_secs(2)).await,
        "the fourth connection from one address is closed at once"
    );
    // Other addresses are unaffected.
    let c = client(addr, server.pin(), None)?;
    assert_eq!(c.post("/x", vec![1]).await?, (200, vec![1]));
    let mut other = from("127.0.0.3").await;
    assert!(held(&mut other, Duration::from_millis(100)).await);
    // A slot is released when its connection ends.
    drop(kept.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut s = from("127.0.0.2").await;
        if held(&mut s, Duration::from_millis(100)).await {
            again = Some(s);
            break;
        }
    }
    assert!(again.is_some(), "the freed slot is reusable");
    assert!(
        stats
            .refused_per_ip
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    Ok(())
}
