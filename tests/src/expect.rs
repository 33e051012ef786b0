//! Exact delivery: every message sent arrives exactly once, in the order it was sent (per
//! sender and receiver), with its exact text, and is acknowledged to its sender.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::client::{Client, Received};
use crate::util::{Deadline, wait_for};

/// What was sent, per receiver and sender, in order.
#[derive(Debug, Default, Clone)]
pub struct Expect {
    /// receiver -> sender -> texts in sending order.
    want: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// sender -> texts in sending order (all receivers).
    sent: BTreeMap<String, Vec<String>>,
}

/// How far delivery has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Messages received so far (all correct).
    pub received: usize,
    /// Messages sent.
    pub expected: usize,
}

impl Progress {
    /// Everything arrived.
    pub fn complete(&self) -> bool {
        self.received == self.expected
    }
}

fn short(s: &str) -> String {
    if s.chars().count() <= 60 {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(50).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}

impl Expect {
    /// Queues `text` from `from` to `to` (through `client send`) and records it; returns the
    /// number of fragments it was cut into.
    pub fn send(&mut self, from: &Client, to: &Client, text: &str) -> Result<u64> {
        let fragments = from
            .send(&to.name, text)
            .with_context(|| format!("{} sending to {}", from.name, to.name))?;
        self.want
            .entry(to.name.clone())
            .or_default()
            .entry(from.name.clone())
            .or_default()
            .push(text.to_string());
        self.sent
            .entry(from.name.clone())
            .or_default()
            .push(text.to_string());
        println!(
            "queued {} -> {}: {} ({fragments} fragment(s))",
            from.name,
            to.name,
            short(text)
        );
        Ok(fragments)
    }

    /// Total messages sent.
    pub fn expected(&self) -> usize {
        self.sent.values().map(Vec::len).sum()
    }

    /// Checks one receiver's inbox against what was sent to it: per sender, what arrived must
    /// be a prefix of what was sent (no duplicate, no reordering, no altered or unknown text).
    /// Returns how many arrived.
    pub fn check_inbox(&self, receiver: &str, inbox: &[Received]) -> Result<usize> {
        let empty = BTreeMap::new();
        let want = self.want.get(receiver).unwrap_or(&empty);
        let mut got: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for m in inbox {
            got.entry(m.from.as_str())
                .or_default()
                .push(m.text.as_str());
        }
        for (sender, texts) in &got {
            let Some(w) = want.get(*sender) else {
                bail!(
                    "{receiver} received {} message(s) from {sender}, who sent it none: {}",
                    texts.len(),
                    short(texts[0])
                );
            };
            for (i, t) in texts.iter().enumerate() {
                if w.get(i).map(String::as_str) == Some(*t) {
                    continue;
                }
                let why = if texts[..i].contains(t) {
                    "a DUPLICATE of an earlier message"
                } else if w.iter().any(|x| x == t) {
                    "OUT OF ORDER"
                } else {
                    "a text that was never sent (altered?)"
                };
                bail!(
                    "{receiver}'s message #{i} from {sender} is {why}: got {}, expected {}; \
                     received in order: [{}]",
                    short(t),
                    w.get(i).map_or("nothing more".to_string(), |x| short(x)),
                    texts
                        .iter()
                        .map(|x| short(x))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(inbox.len())
    }

    /// Checks every receiver among `clients`; returns the progress.
    pub fn check(&self, clients: &[&Client]) -> Result<Progress> {
        let mut received = 0;
        for r in self.want.keys() {
            let c = clients
                .iter()
                .find(|c| &c.name == r)
                .with_context(|| format!("receiver {r} not among the clients checked"))?;
            received += self.check_inbox(r, &c.inbox()?)?;
        }
        Ok(Progress {
            received,
            expected: self.expected(),
        })
    }

    /// Whether every sender's status shows each of its messages as delivered (acknowledged),
    /// with the texts in the order they were queued. Returns a description of what is missing.
    pub fn undelivered(&self, clients: &[&Client]) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for (sender, texts) in &self.sent {
            let c = clients
                .iter()
                .find(|c| &c.name == sender)
                .with_context(|| format!("sender {sender} not among the clients checked"))?;
            let status = c.status()?;
            let msgs = status["messages"]
                .as_array()
                .context("status.messages")?
                .clone();
            let queued: Vec<&str> = msgs.iter().filter_map(|m| m["text"].as_str()).collect();
            if queued != texts.iter().map(String::as_str).collect::<Vec<_>>() {
                bail!(
                    "{sender}'s outgoing messages are not what it queued: {:?}",
                    queued.iter().map(|t| short(t)).collect::<Vec<_>>()
                );
            }
            for m in &msgs {
                if m["state"].as_str() != Some("delivered") {
                    missing.push(format!(
                        "{sender}->{}: {} {}/{} acked",
                        m["contact"].as_str().unwrap_or("?"),
                        m["state"].as_str().unwrap_or("?"),
                        m["fragments_acked"],
                        m["fragments"]
                    ));
                }
            }
        }
        Ok(missing)
    }

    /// Waits until every message has arrived and been acknowledged, failing at once on a
    /// duplicate, a reordering or a wrong text, and when a daemon dies. Then checks every inbox
    /// once more: exactly what was sent, nothing else.
    pub fn wait_delivered(&self, clients: &mut [&mut Client], deadline: Deadline) -> Result<()> {
        let mut last = None;
        wait_for(
            deadline,
            &format!("all {} messages received and acknowledged", self.expected()),
            Duration::from_millis(1000),
            || {
                for c in clients.iter_mut() {
                    c.check_alive()?;
                }
                let view: Vec<&Client> = clients.iter().map(|c| &**c).collect();
                let p = self.check(&view)?;
                let missing = if p.complete() {
                    self.undelivered(&view)?
                } else {
                    vec!["(not all received)".into()]
                };
                let line = format!(
                    "received {}/{}; not yet acknowledged: {}",
                    p.received,
                    p.expected,
                    missing.len()
                );
                if last.as_ref() != Some(&line) {
                    println!("[{:6.1}s] {line} {missing:?}", deadline.elapsed_s());
                    last = Some(line);
                }
                Ok((p.complete() && missing.is_empty()).then_some(()))
            },
        )?;
        let view: Vec<&Client> = clients.iter().map(|c| &**c).collect();
        self.check_exact(&view)
    }

    /// Every receiver's inbox is exactly what was sent to it (per sender, in order).
    pub fn check_exact(&self, clients: &[&Client]) -> Result<()> {
        let p = self.check(clients)?;
        if !p.complete() {
            bail!("{} of {} messages received", p.received, p.expected);
        }
        for c in clients {
            let inbox = c.inbox()?;
            let n = self.check_inbox(&c.name, &inbox)?;
            let want: usize = self
                .want
                .get(&c.name)
                .map_or(0, |m| m.values().map(Vec::len).sum());
            if n != want {
                bail!("{} has {n} messages, expected {want}", c.name);
            }
        }
        Ok(())
    }
}
