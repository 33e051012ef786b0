//! Handshake tests: right pin, wrong pin, mutual TLS with a pinned and an unpinned client cert,
//! limits, PEM round trip.

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
