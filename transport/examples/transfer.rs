//! Times one large body over pinned mutual TLS on loopback, the way the servers exchange their
//! share arrays, next to a plain TCP copy of the same bytes (the floor).
//!
//! `cargo run --release -p transport --example transfer [MiB]` (default 128).

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 128,
    };
    let len = mib << 20;
    let server = generate_identity("server-b")?;
    let client_id = generate_identity("server-a")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cfg = server_config(&server, Some(client_id.pin()))?;
    let limits = ServerLimits {
        max_body_bytes: len + 4096,
        ..ServerLimits::default()
    };
    tokio::spawn(serve(
        listener,
        Some(cfg),
        limits,
        |req: Request| async move { Response::binary(200, req.body[..8].to_vec()) },
        std::future::pending(),
    ));
    let client = HttpsClient::new(addr, server.pin(), Some(&client_id))?
        .with_timeouts(Duration::from_secs(5), Duration::from_secs(60));
    let body: Bytes = (0..len)
        .map(|i| (i * 7 + 3) as u8)
        .collect::<Vec<u8>>()
        .into();
    println!("{mib} MiB per transfer, 3 runs each");
    for _ in 0..3 {
        let t = Instant::now();
        let (status, resp) = client.post("/x", body.clone()).await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!((status, &resp[..]), (200, &body[..8]));
        println!(
            "  ours (HTTPS, mutual TLS): {ms:8.1} ms  {:7.0} MB/s",
            len as f64 / ms / 1e3
        );
    }
    // Floor: the same bytes over plain loopback TCP into one pre-sized buffer.
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let raw_addr = raw.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = raw.accept().await {
            let mut buf = vec![0u8; len];
            if s.read_exact(&mut buf).await.is_ok() {
                let _ = s.write_all(&buf[..8]).await;
            }
        }
    });
    for _ in 0..3 {
        let t = Instant::now();
        let mut s = tokio::net::TcpStream::connect(raw_addr).await?;
        s.write_all(&body).await?;
        let mut ack = [0u8; 8];
        s.read_exact(&mut ack).await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "  floor (plain TCP):        {ms:8.1} ms  {:7.0} MB/s",
            len as f64 / ms / 1e3
        );
    }
    Ok(())
}
