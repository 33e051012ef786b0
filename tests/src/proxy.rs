//! A TCP proxy that forwards bytes unchanged and records, per connection, every TLS record
//! header it sees in each direction (content type, length) with the time it arrived: what an
//! observer on the wire (or the server's operator) can see of a client's traffic.
//!
//! TLS is end to end (the client pins the server's certificate through the proxy); the proxy
//! never decrypts anything. TLS 1.3 records carry their length in clear, so the lengths it
//! records are exactly the sizes of the client's requests (plus a fixed AEAD overhead) and of the
//! handshakes.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::util::now_ms;

/// Direction of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The client opened the connection.
    Open,
    /// A TLS record header: content type and length.
    Record {
        /// TLS content type (22 handshake, 23 application data, 21 alert, 20 CCS).
        content_type: u8,
        /// Length of the record's payload.
        len: u16,
    },
    /// Bytes that are not a TLS record (the stream is no longer parsed).
    NotTls,
    /// One direction ended (EOF or error).
    Closed,
}

/// One observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Connection number (per proxy, from 0).
    pub conn: u64,
    /// Unix ms at which it was seen.
    pub at_ms: u64,
    /// Direction.
    pub dir: Dir,
    /// What.
    pub kind: Kind,
}

type Log = Arc<Mutex<Vec<Event>>>;

/// A running proxy (stopped, and its connections cut, when dropped).
#[derive(Debug)]
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it forwards to.
    pub upstream: SocketAddr,
    log: Log,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` and forwards every connection to `upstream`.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> Result<Proxy> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("proxy binding {listen}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let log: Log = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accept = {
            let (log, stop, streams) = (log.clone(), stop.clone(), streams.clone());
            let next = AtomicU64::new(0);
            std::thread::spawn(move || {
                // Non-blocking accept polled every 10 ms, so a stop is seen promptly.
                while !stop.load(Ordering::SeqCst) {
                    let down = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    if down.set_nonblocking(false).is_err() {
                        continue;
                    }
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    push(&log, id, Dir::Up, Kind::Open);
                    let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
                    else {
                        push(&log, id, Dir::Up, Kind::Closed);
                        continue;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (Ok(d2), Ok(u2)) = (down.try_clone(), up.try_clone()) else {
                        continue;
                    };
                    if let (Ok(d3), Ok(u3)) = (down.try_clone(), up.try_clone()) {
                        let mut s = streams.lock().unwrap_or_else(|p| p.into_inner());
                        s.push(d3);
                        s.push(u3);
                    }
                    let l1 = log.clone();
                    std::thread::spawn(move || pump(down, up, id, Dir::Up, &l1));
                    let l2 = log.clone();
                    std::thread::spawn(move || pump(u2, d2, id, Dir::Down, &l2));
                }
            })
        };
        Ok(Proxy {
            addr,
            upstream,
            log,
            stop,
            streams,
            accept: Some(accept),
        })
    }

    /// Everything recorded so far, in the order seen.
    pub fn events(&self) -> Vec<Event> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn push(log: &Log, conn: u64, dir: Dir, kind: Kind) {
    log.lock().unwrap_or_else(|p| p.into_inner()).push(Event {
        conn,
        at_ms: now_ms(),
        dir,
        kind,
    });
}

/// Copies `from` to `to`, recording TLS record headers.
fn pump(mut from: TcpStream, mut to: TcpStream, conn: u64, dir: Dir, log: &Log) {
    let mut parser = RecordParser::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for kind in parser.feed(&buf[..n]) {
            push(log, conn, dir, kind);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    push(log, conn, dir, Kind::Closed);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// Splits a byte stream into TLS records (header: type (1), version (2), length (2)).
#[derive(Debug, Default)]
pub struct RecordParser {
    header: [u8; 5],
    have: usize,
    skip: usize,
    broken: bool,
}

impl RecordParser {
    /// Feeds bytes; returns the records whose headers completed.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<Kind> {
        let mut out = Vec::new();
        while !data.is_empty() && !self.broken {
            if self.skip > 0 {
                let k = self.skip.min(data.len());
                self.skip -= k;
                data = &data[k..];
                continue;
            }
            let k = (5 - self.have).min(data.len());
            self.header[self.have..self.have + k].copy_from_slice(&data[..k]);
            self.have += k;
            data = &data[k..];
            if self.have == 5 {
                self.have = 0;
                let content_type = self.header[0];
                let len = u16::from_be_bytes([self.header[3], self.header[4]]);
                if !(20..=24).contains(&content_type) || self.header[1] != 3 {
                    self.broken = true;
                    out.push(Kind::NotTls);
                    break;
                }
                self.skip = usize::from(len);
                out.push(Kind::Record { content_type, len });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_split_across_reads() {
        let mut p = RecordParser::default();
        let mut stream = vec![22, 3, 1, 0, 3, 1, 2, 3];
        stream.extend_from_slice(&[23, 3, 3, 0, 2, 9, 9]);
        let mut got = Vec::new();
        for chunk in stream.chunks(3) {
            got.extend(p.feed(chunk));
        }
        assert_eq!(
            got,
            vec![
                Kind::Record {
                    content_type: 22,
                    len: 3
                },
                Kind::Record {
                    content_type: 23,
                    len: 2
                }
            ]
        );
        assert_eq!(p.feed(b"GET / HTTP/1.1"), vec![Kind::NotTls]);
    }
}
