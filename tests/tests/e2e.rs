//! End-to-end tests: the real `server-a` and `server-b` binaries as separate processes, each
//! with its own data dir, TLS certificate and signing key, pinned to each other; real clients
//! (the `client` binary: one-shot commands and the `run` daemon). See `e2e::bins` for how the
//! binaries are found and built.
//!
//! Every scenario has a temp dir and loopback ports of its own (so they run in parallel), a
//! deadline that bounds every wait, and prints the tail of every log when it fails. Rounds are
//! the servers' defaults (`Params::demo`: 2 s rounds, write channel `r mod 4`, read lag 2), so a
//! conversation moves one fragment per direction every four rounds.
//!
//! | test | what it checks |
//! | --- | --- |
//! | `s1_*` | four clients, five pairs talking at once, both directions, long messages, a client and contacts added while the daemons run: exactly-once, in-order, exact delivery |
//! | `s2_*` | each server SIGKILLed in the middle of a conversation and restarted from its data dir (A between commits and cutoff, at once; B while writes are open, for two rounds): nothing lost or duplicated, order kept, the interrupted round's writes accepted |
//! | `s3_*` | on the wire (a TLS-record-counting proxy in front of each server): a chatting client and two idle ones send records of identical sizes at the same points of every round |
//! | `s4_*` | server A, server B and the clients in three network namespaces joined by veth pairs (10.77.x.y), TLS across them |
//! | `s6_*` | the A-B link cut for four rounds and restored (the peer ports behind TCP proxies the test stops and restarts) while two clients chat: the cut rounds are abandoned by both servers (none applied on one side), clients keep their schedule, every message arrives exactly once after the link heals |
//! | `s5_*` | eight SIGKILLs of a random server at offsets spread over the whole round (accept, cutoff, audit, exchange, persist, publish of the previous round), down for up to a round each, while two clients chat: exactly-once in-order delivery, both servers agree on the last published round afterwards |

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use e2e::client::Client;
use e2e::expect::Expect;
use e2e::netns::{self, Namespaces};
use e2e::proxy::Proxy;
use e2e::scene::{Scene, befriend, run_scene};
use e2e::server::{Listen, Server, Timing, create_pair};
use e2e::traffic::{View, compare, first_active_round, render, view};
use e2e::util::{free_port, now_ms, sleep_until_ms, wait_for};

/// A recognisable text of about `len` bytes (several fragments: a frame carries ~200 bytes).
fn long_text(tag: &str, len: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < len {
        i += 1;
        s.push_str(&format!(
            "[{tag} part {i:02}: the quick brown fox jumps over the lazy dog] "
        ));
    }
    s.push_str("END");
    s
}

/// No alarm on either server, and both published rounds.
fn servers_healthy(s: &Scene, servers: [&Server; 2]) -> Result<()> {
    for srv in servers {
        let m = srv.metrics()?;
        let role = format!("{:?}", srv.role);
        s.say(format!(
            "server {role}: published {} abandoned {} alarms {} writes {} read keys {}",
            m.get("mpm_rounds_published_total", &[]),
            m.get("mpm_rounds_abandoned_total", &[]),
            m.get("mpm_alarms_total", &[]),
            m.get("mpm_writes_accepted_total", &[]),
            m.get("mpm_read_keys_answered_total", &[]),
        ));
        ensure!(
            m.get("mpm_alarms_total", &[]) == 0.0,
            "server {role} raised an alarm"
        );
        ensure!(
            m.get("mpm_rounds_published_total", &[]) > 0.0,
            "server {role} published no round"
        );
    }
    Ok(())
}

/// Scenario 1: four clients (dave joins mid-way), five pairs talking, messages in both
/// directions, two long messages of several fragments, contacts added while daemons run.
#[test]
fn s1_many_clients_and_conversations_deliver_exactly_once_in_order() -> Result<()> {
    run_scene("conversations", Duration::from_secs(210), |s| {
        let (a, b) = s.loopback_servers()?;
        let (ia, ib) = (a.info(), b.info());
        let mut alice = s.init_client("alice", &ia, &ib)?;
        let mut bob = s.init_client("bob", &ia, &ib)?;
        let mut carol = s.init_client("carol", &ia, &ib)?;
        befriend(&alice, &bob)?;
        befriend(&alice, &carol)?;
        befriend(&bob, &carol)?;

        let mut ex = Expect::default();
        ex.send(&alice, &bob, "alice to bob #1: hello bob")?;
        let long_ab = long_text("alice to bob #2", 520);
        let f = ex.send(&alice, &bob, &long_ab)?;
        ensure!(
            f >= 3,
            "the long message should span several fragments, got {f}"
        );
        ex.send(&alice, &bob, "alice to bob #3: sent after the long one")?;
        ex.send(&bob, &alice, "bob to alice #1: hi alice")?;
        ex.send(
            &bob,
            &alice,
            "bob to alice #2: ünïcödé ✓ 🦀, \"quotes\", tabs\tand\nnewlines",
        )?;
        ex.send(&carol, &alice, "carol to alice #1")?;
        ex.send(&alice, &carol, "alice to carol #1")?;
        ex.send(&bob, &carol, "bob to carol #1")?;
        let long_cb = long_text("carol to bob #1", 420);
        let f = ex.send(&carol, &bob, &long_cb)?;
        ensure!(
            f >= 2,
            "the long message should span several fragments, got {f}"
        );

        alice.start()?;
        bob.start()?;
        carol.start()?;
        s.say("alice, bob and carol run");

        // Mid-way: once bob has alice's first message, dave joins and makes friends with
        // carol and alice, whose daemons keep running; more messages are queued meanwhile.
        wait_for(
            s.deadline,
            "bob to receive alice's first message",
            Duration::from_millis(500),
            || {
                for c in [&mut alice, &mut bob, &mut carol] {
                    c.check_alive()?;
                }
                let inbox = bob.inbox()?;
                ex.check_inbox("bob", &inbox)?;
                Ok(inbox.iter().any(|m| m.from == "alice").then_some(()))
            },
        )?;
        let mut dave = s.init_client("dave", &ia, &ib)?;
        befriend(&carol, &dave)?;
        befriend(&alice, &dave)?;
        ex.send(&carol, &dave, "carol to dave #1: welcome, dave")?;
        ex.send(&dave, &carol, "dave to carol #1: thanks carol")?;
        ex.send(&dave, &alice, "dave to alice #1")?;
        ex.send(&alice, &dave, "alice to dave #1")?;
        ex.send(
            &bob,
            &alice,
            "bob to alice #3: queued while the daemons run",
        )?;
        dave.start()?;
        s.say("dave joined");

        ex.wait_delivered(
            &mut [&mut alice, &mut bob, &mut carol, &mut dave],
            s.deadline,
        )?;
        servers_healthy(s, [&a, &b])?;
        Ok(())
    })
}

/// Scenario 2: each server is killed with SIGKILL in the middle of a conversation and started
/// again from its data dir: A between the clients' commits and the cutoff, restarted at once
/// (it must close that round from what it persisted: both writes of the round are accepted);
/// B while writes are open, down for two rounds while messages are queued.
#[test]
fn s2_servers_killed_and_restarted_lose_and_duplicate_nothing() -> Result<()> {
    run_scene("restarts", Duration::from_secs(220), |s| {
        let (mut a, mut b) = s.loopback_servers()?;
        let timing = a.timing()?;
        let (mut alice, mut bob) = s.alice_and_bob(&a, &b)?;
        let mut ex = Expect::default();
        ex.send(&alice, &bob, "alice #1: before any restart")?;
        ex.send(&alice, &bob, &long_text("alice #2", 450))?;
        ex.send(&bob, &alice, "bob #1: before any restart")?;
        ex.send(&bob, &alice, "bob #2: before any restart")?;
        alice.start()?;
        bob.start()?;

        let received = |ex: &Expect, alice: &Client, bob: &Client| -> Result<usize> {
            Ok(ex.check(&[alice, bob])?.received)
        };
        wait_for(
            s.deadline,
            "the conversation to be under way (a first message received)",
            Duration::from_millis(500),
            || {
                alice.check_alive()?;
                bob.check_alive()?;
                Ok((received(&ex, &alice, &bob)? >= 1).then_some(()))
            },
        )?;

        // Kill A inside round r after the clients' commits (900 ms), before the cutoff
        // (1200 ms), and start it again at once: it must close round r from what it persisted.
        let at = timing.next_at_offset(timing.write_close_ms + 50, 0);
        let r_a = timing.round_at(at);
        sleep_until_ms(at);
        a.kill9()?;
        a.start()?;
        a.wait_ready(s.deadline)?;
        let back = now_ms();
        s.say(format!(
            "server A killed (SIGKILL) in round {r_a} at offset {} ms, running again at \
             offset {} ms",
            timing.offset(at),
            back - timing.start(r_a)
        ));
        ex.send(&alice, &bob, "alice #3: queued after A's restart")?;
        ex.send(&bob, &alice, "bob #3: queued after A's restart")?;
        if back < timing.start(r_a) + timing.cutoff_ms {
            // Both writes of round r were acknowledged (receipts, commits) before or after the
            // crash; A was back before the cutoff: both must be in the published round.
            wait_for(
                s.deadline,
                &format!("both clients to learn the outcome of round {r_a}"),
                Duration::from_millis(500),
                || {
                    a.check_alive()?;
                    let mut all = true;
                    for c in [&alice, &bob] {
                        match c.write_outcome(r_a)? {
                            Some((true, accepted)) => ensure!(
                                accepted == Some(true),
                                "{}'s write of round {r_a} (the round A was killed in) was \
                                 not accepted: {accepted:?}",
                                c.name
                            ),
                            Some((false, _)) => all = false,
                            None => bail!("round {r_a} is not in {}'s status", c.name),
                        }
                    }
                    Ok(all.then_some(()))
                },
            )?;
            s.say(format!(
                "round {r_a}: both writes accepted despite the crash"
            ));
        } else {
            s.say(format!(
                "server A came back after round {r_a}'s cutoff (slow machine): not checking \
                 that round's writes"
            ));
        }
        let before = received(&ex, &alice, &bob)?;
        wait_for(
            s.deadline,
            "one more message to arrive",
            Duration::from_millis(500),
            || {
                a.check_alive()?;
                alice.check_alive()?;
                bob.check_alive()?;
                Ok((received(&ex, &alice, &bob)? > before).then_some(()))
            },
        )?;

        // Kill B while round r's writes are open (after the clients sent their halves), keep
        // it down for two rounds (their commits fail, the rounds are lost), queue messages
        // meanwhile, start it again.
        let at = timing.next_at_offset(timing.send_offset_ms + 300, 0);
        sleep_until_ms(at);
        b.kill9()?;
        s.say(format!(
            "server B killed (SIGKILL) in round {} at offset {} ms",
            timing.round_at(at),
            timing.offset(at)
        ));
        ex.send(&alice, &bob, "alice #4: queued while B is down")?;
        ex.send(&bob, &alice, "bob #4: queued while B is down")?;
        std::thread::sleep(Duration::from_millis(2 * timing.round_ms));
        b.start()?;
        b.wait_ready(s.deadline)?;
        s.say("server B restarted from its data dir");
        ex.send(&alice, &bob, "alice #5: after both restarts")?;

        ex.wait_delivered(&mut [&mut alice, &mut bob], s.deadline)?;
        for srv in [&a, &b] {
            let m = srv.metrics()?;
            s.say(format!(
                "server {:?} since its restart: published {} abandoned {} alarms {}",
                srv.role,
                m.get("mpm_rounds_published_total", &[]),
                m.get("mpm_rounds_abandoned_total", &[]),
                m.get("mpm_alarms_total", &[]),
            ));
            ensure!(
                m.get("mpm_rounds_published_total", &[]) > 0.0,
                "server {:?} published nothing after its restart",
                srv.role
            );
        }
        Ok(())
    })
}

/// Waits until both servers, sampled in the middle of a round, report the same last
/// published round, at least `at_least`: they agree on which rounds are published.
fn same_last_published(
    s: &Scene,
    timing: &Timing,
    servers: [&Server; 2],
    at_least: u64,
) -> Result<()> {
    wait_for(
        s.deadline,
        "both servers to report the same last published round",
        Duration::from_millis(100),
        || {
            sleep_until_ms(timing.next_at_offset(timing.round_ms / 2, 0));
            let last = |srv: &Server| -> Result<f64> {
                Ok(srv.metrics()?.get("mpm_last_published_round", &[]))
            };
            let (la, lb) = (last(servers[0])?, last(servers[1])?);
            s.say(format!("last published round: A {la}, B {lb}"));
            Ok((la == lb && la >= at_least as f64).then_some(()))
        },
    )
}

/// A small deterministic generator (xorshift64*) for the kill schedule.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Scenario 5: either server SIGKILLed many times at points spread over the round, each time
/// restarted from its data dir after up to a round, while a conversation goes on.
#[test]
fn s5_random_kills_of_either_server_lose_and_duplicate_nothing() -> Result<()> {
    const KILLS: u64 = 8;
    run_scene("random-kills", Duration::from_secs(330), |s| {
        let (mut a, mut b) = s.loopback_servers()?;
        let timing = a.timing()?;
        let (mut alice, mut bob) = s.alice_and_bob(&a, &b)?;
        let mut ex = Expect::default();
        ex.send(&alice, &bob, &long_text("alice #0", 300))?;
        alice.start()?;
        bob.start()?;
        // The schedule is printed, and replayed with MPM_E2E_SEED=<seed>.
        let seed = std::env::var("MPM_E2E_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| now_ms() | 1);
        s.say(format!("kill schedule seed {seed} (MPM_E2E_SEED)"));
        let mut dice = Dice(seed);
        let stratum = timing.round_ms / KILLS;
        for i in 0..KILLS {
            // A message each way before every other kill (the channel moves one fragment per
            // direction every four rounds; more would only lengthen the test).
            if i % 2 == 0 {
                ex.send(&alice, &bob, &format!("alice #{}: before kill {i}", i + 1))?;
                ex.send(&bob, &alice, &format!("bob #{}: before kill {i}", i + 1))?;
            }
            // Kill i lands in the i-th eighth of a round, somewhere random inside it.
            let offset = i * stratum + dice.below(stratum);
            let at = timing.next_at_offset(offset, timing.round_ms);
            let down_ms = dice.below(timing.round_ms);
            let srv = if dice.below(2) == 0 { &mut a } else { &mut b };
            sleep_until_ms(at);
            srv.kill9()?;
            std::thread::sleep(Duration::from_millis(down_ms));
            srv.start()?;
            srv.wait_ready(s.deadline)?;
            s.say(format!(
                "kill {i}: server {:?} SIGKILLed in round {} at offset {offset} ms, down {down_ms} ms, ready again",
                srv.role,
                timing.round_at(at)
            ));
            alice.check_alive()?;
            bob.check_alive()?;
        }
        ex.send(&alice, &bob, "alice #last: after every kill")?;
        ex.send(&bob, &alice, "bob #last: after every kill")?;
        ex.wait_delivered(&mut [&mut alice, &mut bob], s.deadline)?;
        same_last_published(s, &timing, [&a, &b], 1)?;
        Ok(())
    })
}

/// Scenario 6: a partition between A and B (the clients still reach both).
#[test]
fn s6_a_partition_between_the_servers_applies_nothing_one_sided_and_heals() -> Result<()> {
    run_scene("partition", Duration::from_secs(240), |s| {
        let (mut a, mut b) = s.loopback_pair()?;
        // Each server dials its peer through a proxy: cutting both proxies is the partition.
        let via_a: SocketAddr = e2e::util::free_loopback_addr()?.parse()?;
        let via_b: SocketAddr = e2e::util::free_loopback_addr()?.parse()?;
        let (peer_a, peer_b): (SocketAddr, SocketAddr) =
            (a.listen.peer.parse()?, b.listen.peer.parse()?);
        let link = || -> Result<[Proxy; 2]> {
            Ok([Proxy::start(via_b, peer_b)?, Proxy::start(via_a, peer_a)?])
        };
        a.set_peer_via(&b, &via_b.to_string())?;
        b.set_peer_via(&a, &via_a.to_string())?;
        let mut proxies = Some(link()?);
        s.start_servers(&mut a, &mut b)?;
        let timing = a.timing()?;
        let (mut alice, mut bob) = s.alice_and_bob(&a, &b)?;
        let mut ex = Expect::default();
        ex.send(&alice, &bob, "alice #1: before the partition")?;
        ex.send(&bob, &alice, "bob #1: before the partition")?;
        alice.start()?;
        bob.start()?;
        wait_for(
            s.deadline,
            "a first message to arrive",
            Duration::from_millis(500),
            || Ok((ex.check(&[&alice, &bob])?.received >= 1).then_some(())),
        )?;
        let published = |srv: &Server| -> Result<(f64, f64)> {
            let m = srv.metrics()?;
            Ok((
                m.get("mpm_rounds_published_total", &[]),
                m.get("mpm_rounds_abandoned_total", &[]),
            ))
        };
        let before = [published(&a)?, published(&b)?];

        // Cut the link at the start of a round, for four rounds.
        let cut_at = timing.next_at_offset(0, 0);
        sleep_until_ms(cut_at);
        proxies.take();
        let first_cut = timing.round_at(cut_at);
        s.say(format!("A-B link cut at the start of round {first_cut}"));
        ex.send(&alice, &bob, "alice #2: sent during the partition")?;
        ex.send(&bob, &alice, "bob #2: sent during the partition")?;
        sleep_until_ms(timing.start(first_cut + 4));
        proxies = Some(link()?);
        let healed = timing.round_at(now_ms());
        s.say(format!("A-B link restored in round {healed}"));
        // The rounds the link was down for are abandoned by both: nothing published on one
        // side only.
        sleep_until_ms(timing.start(healed + 2));
        let after = [published(&a)?, published(&b)?];
        for (i, srv) in [&a, &b].into_iter().enumerate() {
            let abandoned = after[i].1 - before[i].1;
            s.say(format!(
                "server {:?} during the cut: {abandoned} round(s) abandoned",
                srv.role
            ));
            ensure!(
                abandoned >= 3.0,
                "server {:?} abandoned {abandoned} rounds",
                srv.role
            );
        }
        for c in [&mut alice, &mut bob] {
            c.check_alive()?;
            for r in first_cut..first_cut + 3 {
                ensure!(
                    !matches!(c.write_outcome(r)?, Some((true, Some(true)))),
                    "{}'s write of round {r} (link down) was accepted",
                    c.name
                );
            }
        }
        ex.send(&alice, &bob, "alice #3: after the link healed")?;
        ex.wait_delivered(&mut [&mut alice, &mut bob], s.deadline)?;
        same_last_published(s, &timing, [&a, &b], healed)?;
        drop(proxies);
        Ok(())
    })
}

/// Scenario 3: what the servers (and the network) see of an idle client and a chatting one.
#[test]
fn s3_idle_and_chatting_clients_send_identical_traffic() -> Result<()> {
    run_scene("wire", Duration::from_secs(150), idle_and_chatting)
}

/// Rounds compared on the wire.
const WIRE_ROUNDS: u64 = 14;
/// How far apart (ms) two clients' corresponding records may be inside their round. The
/// pinned send points are 800 ms apart (writes at 100 ms, commits and reads at 900 ms).
const WIRE_TOLERANCE_MS: u64 = 250;

/// One proxy per observed client in front of `upstream`, all on the same port on 127.0.0.20,
/// 127.0.0.21, ...: every client's configured server address (and so the HTTP `Host` header
/// inside its TLS records) has the same length.
fn proxies_on_one_port(upstream: &str, n: u8) -> Result<Vec<Proxy>> {
    let upstream: SocketAddr = upstream.parse()?;
    for _ in 0..20 {
        let port = free_port(IpAddr::from([127, 0, 0, 20]))?;
        let mut v = Vec::new();
        for i in 0..n {
            match Proxy::start(SocketAddr::from(([127, 0, 0, 20 + i], port)), upstream) {
                Ok(p) => v.push(p),
                Err(_) => break,
            }
        }
        if v.len() == usize::from(n) {
            return Ok(v);
        }
    }
    bail!("no port free on 127.0.0.20-{}", 20 + n - 1)
}

fn idle_and_chatting(s: &Scene) -> Result<()> {
    let (a, b) = s.loopback_servers()?;
    let timing = a.timing()?;
    let observed = [
        "alice (chatting)",
        "ivan (idle, no contact)",
        "ida (idle, one contact)",
    ];
    let pa = proxies_on_one_port(&a.listen.client, 3)?;
    let pb = proxies_on_one_port(&b.listen.client, 3)?;
    let via = |i: usize| {
        (
            a.info_via(&pa[i].addr.to_string()),
            b.info_via(&pb[i].addr.to_string()),
        )
    };
    let (ia0, ib0) = via(0);
    let (ia1, ib1) = via(1);
    let (ia2, ib2) = via(2);
    let mut alice = s.init_client("alice", &ia0, &ib0)?;
    let mut ivan = s.init_client("ivan", &ia1, &ib1)?;
    let mut ida = s.init_client("ida", &ia2, &ib2)?;
    // Not observed: alice's partner, and ida's contact (never online).
    let mut bob = s.init_client("bob", &a.info(), &b.info())?;
    let olga = s.init_client("olga", &a.info(), &b.info())?;
    befriend(&alice, &bob)?;
    befriend(&ida, &olga)?;
    let mut ex = Expect::default();
    ex.send(&alice, &bob, "hi bob, are you there?")?;
    ex.send(&alice, &bob, &long_text("alice to bob", 500))?;
    ex.send(&bob, &alice, "hi alice, yes!")?;
    ex.send(&bob, &alice, &long_text("bob to alice", 300))?;

    // Start everyone together just after a round's send point, so the next round is the
    // first for all of them.
    sleep_until_ms(timing.next_at_offset(timing.send_offset_ms + 200, 300));
    let since = now_ms();
    for c in [&mut alice, &mut ivan, &mut ida, &mut bob] {
        c.start()?;
    }
    let started = timing.round_at(now_ms());
    let first = started + 1;
    let last = first + WIRE_ROUNDS - 1;
    s.say(format!(
        "clients started in round {started}; observing rounds {first}..={last}"
    ));
    // Stop everyone late in the round after the last one observed (its requests and the
    // round-status queries that follow the reads are over by then).
    let stop_at = timing.start(last + 1) + timing.round_ms * 17 / 20;
    wait_for(
        s.deadline,
        "the observed rounds to pass",
        Duration::from_millis(500),
        || {
            for c in [&mut alice, &mut ivan, &mut ida, &mut bob] {
                c.check_alive()?;
            }
            Ok((now_ms() >= stop_at).then_some(()))
        },
    )?;
    for c in [&mut alice, &mut ivan, &mut ida, &mut bob] {
        c.stop();
    }

    // alice really chatted in the observed rounds: she received from bob, and bob from her.
    let window = first..=last;
    let got_a = alice.inbox()?;
    let got_b = bob.inbox()?;
    ex.check_inbox("alice", &got_a)?;
    ex.check_inbox("bob", &got_b)?;
    s.say(format!(
        "in the window alice received {:?}, bob received {:?}",
        got_a.iter().map(|m| m.round).collect::<Vec<_>>(),
        got_b.iter().map(|m| m.round).collect::<Vec<_>>()
    ));
    ensure!(
        got_a.iter().any(|m| window.contains(&m.round)),
        "alice received nothing from bob in rounds {first}..={last}: not a chatting client"
    );
    ensure!(
        got_b.iter().any(|m| window.contains(&m.round)),
        "bob received nothing from alice in rounds {first}..={last}: not a chatting client"
    );

    let views: Vec<View> = (0..3)
        .map(|i| view(&[("A", &pa[i]), ("B", &pb[i])], &timing, since))
        .collect();
    let tables = || {
        observed
            .iter()
            .zip(&views)
            .map(|(n, v)| render(n, v, started..=last + 1))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let starts: Vec<Option<u64>> = views.iter().map(first_active_round).collect();
    if starts.iter().any(|r| *r != Some(started)) {
        println!("{}", tables());
        bail!("the observed clients did not all start in round {started}: {starts:?}");
    }
    for (i, name) in observed.iter().enumerate().skip(1) {
        // What the clients send: from the startup round (TLS handshakes and `Info`) through
        // every observed round. What the servers answer: from the first observed round (in
        // the startup round, the full handshakes' ECDSA certificate signatures differ in
        // length by a byte from one handshake to the next: the server's randomness).
        let c = compare(
            (observed[0], &views[0]),
            (name, &views[i]),
            &["A", "B"],
            started..=last,
            WIRE_TOLERANCE_MS,
            first,
        )
        .inspect_err(|_| println!("{}", tables()))?;
        s.say(format!(
            "{name} vs {}: {} records sent and {} received in {} rounds, identical sizes, \
             max skew {} ms",
            observed[0],
            c.records,
            c.responses,
            last - started + 1,
            c.max_skew_ms
        ));
        ensure!(
            c.records >= (WIRE_ROUNDS as usize) * 2 * 3,
            "too few records compared ({}): not every round was observed",
            c.records
        );
    }
    if std::env::var_os("MPM_E2E_SHOW_WIRE").is_some() {
        println!("{}", tables());
    }
    servers_healthy(s, [&a, &b])?;
    Ok(())
}

/// Scenario 4: server A, server B and the clients in three network namespaces.
#[test]
fn s4_servers_and_clients_in_separate_network_namespaces() -> Result<()> {
    if let Some(why) = netns::unavailable() {
        // Printed even when the output is captured (cargo shows it for `--nocapture` only).
        eprintln!("SKIPPED s4 (network namespaces): {why}");
        println!("SKIPPED s4 (network namespaces): {why}");
        return Ok(());
    }
    run_scene("netns", Duration::from_secs(150), |s| {
        let stale = netns::remove_stale();
        if !stale.is_empty() {
            s.say(format!(
                "deleted namespaces left by dead test runs: {stale:?}"
            ));
        }
        let (na, nb, nc) = (netns::name("a"), netns::name("b"), netns::name("c"));
        // Declared first: dropped (namespaces deleted) after every process below is killed.
        let mut ns = Namespaces::default();
        for n in [&na, &nb, &nc] {
            ns.add(n)?;
        }
        // A <-> B (peer link), clients <-> A, clients <-> B: three point-to-point links.
        ns.link(&na, "peer0", "10.77.1.1/24", &nb, "peer1", "10.77.1.2/24")?;
        ns.link(&nc, "to-a", "10.77.2.2/24", &na, "clients", "10.77.2.1/24")?;
        ns.link(&nc, "to-b", "10.77.3.2/24", &nb, "clients", "10.77.3.1/24")?;
        s.say(format!("namespaces {na} {nb} {nc} linked"));
        let listen = [
            Listen {
                client: "10.77.2.1:7101".into(),
                peer: "10.77.1.1:7102".into(),
                admin: Some("127.0.0.1:7103".into()),
            },
            Listen {
                client: "10.77.3.1:7201".into(),
                peer: "10.77.1.2:7202".into(),
                admin: Some("127.0.0.1:7203".into()),
            },
        ];
        let (mut a, mut b) = create_pair(
            &s.bins,
            s.path(),
            listen,
            [Some(na.clone()), Some(nb.clone())],
        )?;
        a.start()?;
        b.start()?;
        a.wait_ready(s.deadline)?;
        b.wait_ready(s.deadline)?;
        let mut alice = s.client("alice", Some(nc.clone()));
        let mut bob = s.client("bob", Some(nc.clone()));
        alice.init(&a.info(), &b.info()).context("alice init")?;
        bob.init(&a.info(), &b.info()).context("bob init")?;
        befriend(&alice, &bob)?;
        let mut ex = Expect::default();
        ex.send(&alice, &bob, "alice to bob across namespaces")?;
        ex.send(&alice, &bob, &long_text("alice to bob #2", 300))?;
        ex.send(&bob, &alice, "bob to alice across namespaces")?;
        alice.start()?;
        bob.start()?;
        ex.wait_delivered(&mut [&mut alice, &mut bob], s.deadline)?;
        // The traffic went over the veth links: client links of both servers and the peer link.
        for (n, ifc) in [
            (&na, "peer0"),
            (&nb, "peer1"),
            (&na, "clients"),
            (&nb, "clients"),
        ] {
            let (rx, tx) = Namespaces::counters(n, ifc)?;
            s.say(format!("{n}/{ifc}: rx {rx} B, tx {tx} B"));
            ensure!(rx > 10_000 && tx > 10_000, "little traffic on {n}/{ifc}");
        }
        alice.stop();
        bob.stop();
        a.stop();
        b.stop();
        Ok(())
    })
}
