//! What an observer of a client's connections sees, per round: which connections it opens and
//! the size and time of every TLS record it sends; and the comparison of two clients' views.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::RangeInclusive;

use anyhow::{Result, bail};

use crate::proxy::{Dir, Event, Kind, Proxy};
use crate::server::Timing;

/// One TLS record as observed: content type, length, offset in its round (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    /// TLS content type.
    pub content_type: u8,
    /// Record length.
    pub len: u16,
    /// Offset inside the round (ms).
    pub offset_ms: u64,
}

/// One round of one client towards one server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundTraffic {
    /// Connections opened (offsets).
    pub opened: Vec<u64>,
    /// Records client -> server, sorted by (type, length, offset).
    pub up: Vec<Seen>,
    /// Records server -> client, sorted by (type, length, offset).
    pub down: Vec<Seen>,
    /// Connections whose bytes were not TLS records.
    pub not_tls: usize,
}

/// A client's traffic: (round, server name) -> what was seen.
pub type View = BTreeMap<(u64, &'static str), RoundTraffic>;

/// Groups the events of a client's proxies (one per server) by round, from unix time
/// `since_ms` on.
pub fn view(proxies: &[(&'static str, &Proxy)], timing: &Timing, since_ms: u64) -> View {
    let mut v = View::new();
    for (server, p) in proxies {
        for Event {
            at_ms, dir, kind, ..
        } in p.events()
        {
            if at_ms < since_ms {
                continue;
            }
            let round = timing.round_at(at_ms);
            let offset_ms = timing.offset(at_ms);
            let t = v.entry((round, *server)).or_default();
            match kind {
                Kind::Open => t.opened.push(offset_ms),
                Kind::Record { content_type, len } => {
                    let s = Seen {
                        content_type,
                        len,
                        offset_ms,
                    };
                    match dir {
                        Dir::Up => t.up.push(s),
                        Dir::Down => t.down.push(s),
                    }
                }
                Kind::NotTls => t.not_tls += 1,
                Kind::Closed => {}
            }
        }
    }
    for t in v.values_mut() {
        t.up.sort();
        t.down.sort();
        t.opened.sort();
    }
    v
}

/// The first round in which the view has client -> server records.
pub fn first_active_round(v: &View) -> Option<u64> {
    v.iter()
        .filter(|(_, t)| !t.up.is_empty())
        .map(|((r, _), _)| *r)
        .min()
}

fn seq(list: &[Seen]) -> Vec<(u8, u16)> {
    list.iter().map(|s| (s.content_type, s.len)).collect()
}

/// How two views compare.
#[derive(Debug, Clone, Copy, Default)]
pub struct Comparison {
    /// Client -> server records compared.
    pub records: usize,
    /// Server -> client records compared.
    pub responses: usize,
    /// Largest time difference between paired records (ms).
    pub max_skew_ms: u64,
}

/// Checks that `other` sent exactly what `reference` sent in every round of `rounds` to every
/// server in `servers`: the same connections opened, the same multiset of (record type, record
/// length) client -> server, and each record (paired in order of type, length, time) within
/// `tolerance_ms` of the other's in its round. From round `responses_from` on, the same for
/// server -> client records.
pub fn compare(
    reference: (&str, &View),
    other: (&str, &View),
    servers: &[&'static str],
    rounds: RangeInclusive<u64>,
    tolerance_ms: u64,
    responses_from: u64,
) -> Result<Comparison> {
    let empty = RoundTraffic::default();
    let mut c = Comparison::default();
    let mut problems = Vec::new();
    for r in rounds {
        for s in servers {
            let x = reference.1.get(&(r, *s)).unwrap_or(&empty);
            let y = other.1.get(&(r, *s)).unwrap_or(&empty);
            let at = format!("round {r}, server {s}");
            if x.not_tls + y.not_tls > 0 {
                problems.push(format!("{at}: bytes that are not TLS records"));
            }
            if x.opened.len() != y.opened.len() {
                problems.push(format!(
                    "{at}: {} opened {} connection(s) at {:?} ms, {} opened {} at {:?} ms",
                    reference.0,
                    x.opened.len(),
                    x.opened,
                    other.0,
                    y.opened.len(),
                    y.opened
                ));
            }
            for (what, xs, ys) in [("up", &x.up, &y.up), ("down", &x.down, &y.down)] {
                if what == "down" && r < responses_from {
                    continue;
                }
                if seq(xs) != seq(ys) {
                    problems.push(format!(
                        "{at}, {what}: record sizes differ: {} {:?} vs {} {:?}",
                        reference.0,
                        seq(xs),
                        other.0,
                        seq(ys)
                    ));
                    continue;
                }
                for (p, q) in xs.iter().zip(ys) {
                    let skew = p.offset_ms.abs_diff(q.offset_ms);
                    c.max_skew_ms = c.max_skew_ms.max(skew);
                    if skew > tolerance_ms {
                        problems.push(format!(
                            "{at}, {what}: a {}-byte record at {} ms ({}) vs {} ms ({})",
                            p.len, p.offset_ms, reference.0, q.offset_ms, other.0
                        ));
                    }
                }
                match what {
                    "up" => c.records += xs.len(),
                    _ => c.responses += xs.len(),
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} and {} differ on the wire:\n  {}",
            reference.0,
            other.0,
            problems.join("\n  ")
        );
    }
    Ok(c)
}

/// A table of a view's rounds for diagnostics: per round and server, the connections opened and
/// each record as `type:len@offset`.
pub fn render(name: &str, v: &View, rounds: RangeInclusive<u64>) -> String {
    let mut out = format!("== {name}\n");
    for ((r, s), t) in v.range((*rounds.start(), "")..) {
        if r > rounds.end() {
            break;
        }
        let fmt = |l: &[Seen]| {
            let mut by_time = l.to_vec();
            by_time.sort_by_key(|x| x.offset_ms);
            by_time
                .iter()
                .map(|x| format!("{}:{}@{}", x.content_type, x.len, x.offset_ms))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "round {r} {s}: open {:?}\n    up   {}\n    down {}",
            t.opened,
            fmt(&t.up),
            fmt(&t.down)
        );
    }
    out
}
