//! The delivery layer: nothing lost, nothing duplicated, in order (docs/protocol.md §5.3).
//!
//! Per direction of a pair, messages are cut into fragments numbered by a sequence number.
//! Each frame carries at most one fragment and always the cumulative ack (the next sequence
//! number the writer expects from its peer). The sender runs go-back-N over a window of
//! [`WINDOW`] fragments: when the oldest unacked fragment stays unacked for the schedule's round
//! trip ([`crate::schedule::Schedule::retransmit_after`]), it resends from there. The receiver
//! accepts only the next expected fragment, which suppresses duplicates and reorderings, and
//! reassembles messages from fragments in order.
//!
//! These are pure state machines over small values; the store persists them
//! ([`crate::store`]) and the round engine drives them ([`crate::engine`]).

use std::ops::Range;

/// Fragments a sender may have outstanding (sent, unacked) at once.
pub const WINDOW: u32 = 8;

/// The largest message accepted for sending, and the largest a receiver reassembles before
/// delivering what it has (a bound on memory and on the store).
pub const MAX_MESSAGE: usize = 1 << 20;

/// Why a delivery step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The peer acknowledged fragments never sent: its state and ours disagree.
    #[error("peer acknowledged fragment {ack} but only {high} were ever sent")]
    AckBeyondSent {
        /// The ack received.
        ack: u32,
        /// Fragments sent so far.
        high: u32,
    },
    /// Sequence numbers of this direction are exhausted.
    #[error("sequence numbers exhausted for this contact")]
    SequenceExhausted,
    /// Empty message.
    #[error("a message must not be empty")]
    Empty,
    /// Message over [`MAX_MESSAGE`].
    #[error("message of {0} bytes exceeds the maximum of {MAX_MESSAGE} bytes")]
    TooLong(usize),
}

/// Sender state of one direction (go-back-N).
///
/// Invariant: `base <= next <= end`, `base <= high <= end`, `next <= high` after any turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendState {
    /// Oldest unacknowledged sequence number (everything below is acked).
    pub base: u32,
    /// Next sequence number to put in a frame.
    pub next: u32,
    /// One past the highest sequence number ever sent.
    pub high: u32,
    /// One past the last sequence number queued.
    pub end: u32,
    /// Round in which the retransmission timer was (re)started, if running.
    pub timer: Option<u64>,
}

impl SendState {
    /// Assigns `count` new sequence numbers at the end of the queue.
    pub fn enqueue(&mut self, count: u32) -> Result<Range<u32>, DeliveryError> {
        let start = self.end;
        let end = start
            .checked_add(count)
            .ok_or(DeliveryError::SequenceExhausted)?;
        self.end = end;
        Ok(start..end)
    }

    /// Processes a cumulative ack seen in `round`; returns the newly acknowledged range.
    pub fn on_ack(&mut self, ack: u32, round: u64) -> Result<Option<Range<u32>>, DeliveryError> {
        if ack > self.high {
            return Err(DeliveryError::AckBeyondSent {
                ack,
                high: self.high,
            });
        }
        if ack <= self.base {
            return Ok(None);
        }
        let acked = self.base..ack;
        self.base = ack;
        if self.next < ack {
            self.next = ack;
        }
        self.timer = (self.base < self.high).then_some(round);
        Ok(Some(acked))
    }

    /// This direction's write turn in `round`: returns the fragment to send, if any.
    ///
    /// `rto` is the retransmission timeout in rounds; `window` the go-back-N window.
    pub fn turn(&mut self, round: u64, rto: u64, window: u32) -> Option<u32> {
        if let Some(t) = self.timer
            && self.base < self.high
            && round.saturating_sub(t) >= rto
        {
            self.next = self.base;
            self.timer = None;
        }
        if self.next < self.end && self.next < self.base.saturating_add(window) {
            let seq = self.next;
            self.next += 1;
            self.high = self.high.max(self.next);
            if self.timer.is_none() {
                self.timer = Some(round);
            }
            Some(seq)
        } else {
            None
        }
    }

    /// Fragments queued and not yet acknowledged.
    pub fn unacked(&self) -> u32 {
        self.end - self.base
    }
}

/// Receiver state of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecvState {
    /// Next sequence number expected; also the cumulative ack sent back.
    pub expected: u32,
}

/// What the receiver does with a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next expected fragment: accept it.
    Accept,
    /// Already received: drop it (the ack in our next frame tells the peer).
    Duplicate,
    /// Beyond a gap: drop it (go-back-N resends the gap first).
    Ahead,
}

impl RecvState {
    /// Classifies a fragment; on `Accept` the expected number advances.
    pub fn on_fragment(&mut self, seq: u32) -> Verdict {
        if seq == self.expected {
            self.expected = self.expected.wrapping_add(1);
            Verdict::Accept
        } else if seq < self.expected {
            Verdict::Duplicate
        } else {
            Verdict::Ahead
        }
    }
}

/// Cuts a message into fragments of at most `capacity` bytes; the last is marked.
pub fn fragment(message: &[u8], capacity: usize) -> Result<Vec<(Vec<u8>, bool)>, DeliveryError> {
    if message.is_empty() {
        return Err(DeliveryError::Empty);
    }
    if message.len() > MAX_MESSAGE {
        return Err(DeliveryError::TooLong(message.len()));
    }
    let chunks: Vec<&[u8]> = message.chunks(capacity.max(1)).collect();
    let n = chunks.len();
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_vec(), i + 1 == n))
        .collect())
}

/// Appends an accepted fragment to the partial message; returns the messages it completes
/// (usually none or one).
///
/// A partial message that would exceed [`MAX_MESSAGE`] is delivered as it stands and the new
/// fragment starts the next one, so a misbehaving peer cannot grow it without bound.
pub fn reassemble(partial: &mut Vec<u8>, data: &[u8], last: bool) -> Vec<Vec<u8>> {
    let mut done = Vec::new();
    if !partial.is_empty() && partial.len() + data.len() > MAX_MESSAGE {
        done.push(std::mem::take(partial));
    }
    partial.extend_from_slice(data);
    if last {
        done.push(std::mem::take(partial));
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpf::{RandomSource, SeededRandom};
    use std::collections::BTreeMap;

    fn rand_u64(rng: &mut SeededRandom) -> u64 {
        let mut b = [0u8; 8];
        rng.fill(&mut b);
        u64::from_le_bytes(b)
    }

    #[test]
    fn go_back_n_window_and_timeout() -> Result<(), DeliveryError> {
        let mut s = SendState::default();
        assert_eq!(s.enqueue(20)?, 0..20);
        let sent: Vec<u32> = (0..10).filter_map(|r| s.turn(r, 5, 4)).collect();
        // Window 4: only 0..4 go out until acked; timeout at round 5 goes back to 0.
        assert_eq!(sent, vec![0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(s.on_ack(2, 10)?, Some(0..2));
        assert_eq!(s.on_ack(1, 10)?, None, "stale ack changes nothing");
        // The window slides: 4 and 5 go out, then it is full again.
        assert_eq!(s.turn(10, 5, 4), Some(4));
        assert_eq!(s.turn(11, 5, 4), Some(5));
        assert_eq!(s.turn(12, 5, 4), None);
        assert!(matches!(
            s.on_ack(9, 12),
            Err(DeliveryError::AckBeyondSent { ack: 9, high: 6 })
        ));
        // The ack in round 10 restarted the timer: at round 15 go back to the base, 2.
        assert_eq!(s.turn(14, 5, 4), None);
        assert_eq!(s.turn(15, 5, 4), Some(2));
        Ok(())
    }

    #[test]
    fn ack_of_fragments_sent_before_a_go_back_advances_next() -> Result<(), DeliveryError> {
        let mut s = SendState::default();
        s.enqueue(6)?;
        for r in 0..6 {
            s.turn(r, 100, 8);
        }
        assert_eq!((s.next, s.high), (6, 6));
        // Timeout: back to 0, then the late ack for all six arrives.
        assert_eq!(s.turn(200, 100, 8), Some(0));
        assert_eq!(s.next, 1);
        assert_eq!(s.on_ack(6, 201)?, Some(0..6));
        assert_eq!((s.base, s.next, s.timer), (6, 6, None));
        assert_eq!(s.turn(202, 100, 8), None);
        Ok(())
    }

    #[test]
    fn receiver_accepts_only_the_next_fragment() {
        let mut r = RecvState::default();
        assert_eq!(r.on_fragment(1), Verdict::Ahead);
        assert_eq!(r.on_fragment(0), Verdict::Accept);
        assert_eq!(r.on_fragment(0), Verdict::Duplicate);
        assert_eq!(r.on_fragment(1), Verdict::Accept);
        assert_eq!(r.expected, 2);
    }

    #[test]
    fn fragmentation_and_reassembly_are_inverse() -> Result<(), DeliveryError> {
        let msg: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        for cap in [1, 7, 204, 999, 1000, 5000] {
            let frags = fragment(&msg, cap)?;
            assert_eq!(frags.len(), msg.len().div_ceil(cap));
            assert!(frags.iter().rev().skip(1).all(|(_, last)| !last));
            let mut partial = Vec::new();
            let mut out = Vec::new();
            for (data, last) in &frags {
                out.extend(reassemble(&mut partial, data, *last));
            }
            assert_eq!(out, vec![msg.clone()]);
        }
        assert_eq!(fragment(b"", 10), Err(DeliveryError::Empty));
        assert_eq!(
            fragment(&vec![0; MAX_MESSAGE + 1], 10),
            Err(DeliveryError::TooLong(MAX_MESSAGE + 1))
        );
        Ok(())
    }

    /// One side of a simulated pair: the real state machines plus in-memory storage.
    #[derive(Default)]
    struct Endpoint {
        send: SendState,
        recv: RecvState,
        outgoing: Vec<(Vec<u8>, bool)>,
        partial: Vec<u8>,
        inbox: Vec<Vec<u8>>,
        online: bool,
    }

    /// A frame in flight: (ack, optional (seq, data, last)).
    type Wire = (u32, Option<(u32, Vec<u8>, bool)>);

    impl Endpoint {
        fn queue(&mut self, msg: &[u8], cap: usize) -> Result<(), DeliveryError> {
            let frags = fragment(msg, cap)?;
            self.send.enqueue(frags.len() as u32)?;
            self.outgoing.extend(frags);
            Ok(())
        }
        fn write(&mut self, round: u64, rto: u64) -> Wire {
            let frag = self.send.turn(round, rto, WINDOW).map(|seq| {
                let (d, l) = &self.outgoing[seq as usize];
                (seq, d.clone(), *l)
            });
            (self.recv.expected, frag)
        }
        fn read(&mut self, round: u64, w: &Wire) -> Result<(), DeliveryError> {
            self.send.on_ack(w.0, round)?;
            if let Some((seq, data, last)) = &w.1
                && self.recv.on_fragment(*seq) == Verdict::Accept
            {
                let done = reassemble(&mut self.partial, data, *last);
                self.inbox.extend(done);
            }
            Ok(())
        }
    }

    struct Net {
        loss_per_mille: u64,
        dup_per_mille: u64,
        max_extra_delay: u64,
    }

    /// Runs two endpoints for `rounds` rounds with channel indexes 0 and 1 of `w`, lag `lag`.
    fn simulate(
        a: &mut Endpoint,
        b: &mut Endpoint,
        rounds: u64,
        net: &Net,
        offline_b: Range<u64>,
        seed: u8,
    ) -> Result<(), DeliveryError> {
        let (w, lag) = (4u64, 2u64);
        let rto = 2 * lag + w + 1;
        let mut rng = SeededRandom::new([seed; 32]);
        // arrival round -> frames, per receiving side (0 = a, 1 = b)
        let mut in_flight: [BTreeMap<u64, Vec<Wire>>; 2] = [BTreeMap::new(), BTreeMap::new()];
        for r in 0..rounds {
            b.online = !offline_b.contains(&r);
            a.online = true;
            // Writes: a on channel 0, b on channel 1.
            for (side, ep) in [(0usize, &mut *a), (1usize, &mut *b)] {
                if !ep.online || r % w != side as u64 {
                    continue;
                }
                let wire = ep.write(r, rto);
                let to = 1 - side;
                if rand_u64(&mut rng) % 1000 < net.loss_per_mille {
                    continue;
                }
                let copies = if rand_u64(&mut rng) % 1000 < net.dup_per_mille {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let extra = if net.max_extra_delay > 0 {
                        rand_u64(&mut rng) % (net.max_extra_delay + 1)
                    } else {
                        0
                    };
                    in_flight[to]
                        .entry(r + lag + extra)
                        .or_default()
                        .push(wire.clone());
                }
            }
            // Reads: frames arriving this round; an offline side loses them.
            for (side, ep) in [(0usize, &mut *a), (1usize, &mut *b)] {
                if let Some(frames) = in_flight[side].remove(&r)
                    && ep.online
                {
                    for f in &frames {
                        ep.read(r, f)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn messages(n: usize, seed: u8) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let len = 1 + (i * 37 + usize::from(seed)) % 700;
                (0..len).map(|j| (i + j) as u8).collect()
            })
            .collect()
    }

    fn run_case(net: Net, offline_b: Range<u64>, seed: u8) -> Result<(), DeliveryError> {
        let cap = 50;
        let (mut a, mut b) = (Endpoint::default(), Endpoint::default());
        let (ma, mb) = (messages(12, seed), messages(9, seed.wrapping_add(1)));
        for m in &ma {
            a.queue(m, cap)?;
        }
        for m in &mb {
            b.queue(m, cap)?;
        }
        simulate(&mut a, &mut b, 6000, &net, offline_b, seed)?;
        assert_eq!(b.inbox, ma, "a -> b: every message once, in order");
        assert_eq!(a.inbox, mb, "b -> a: every message once, in order");
        assert_eq!(a.send.unacked(), 0, "a's queue fully acknowledged");
        assert_eq!(b.send.unacked(), 0, "b's queue fully acknowledged");
        Ok(())
    }

    #[test]
    fn clean_channel_delivers_everything() -> Result<(), DeliveryError> {
        let net = Net {
            loss_per_mille: 0,
            dup_per_mille: 0,
            max_extra_delay: 0,
        };
        run_case(net, 0..0, 1)
    }

    #[test]
    fn lossy_channel_delivers_everything_once_in_order() -> Result<(), DeliveryError> {
        for seed in 0..5 {
            let net = Net {
                loss_per_mille: 300,
                dup_per_mille: 0,
                max_extra_delay: 0,
            };
            run_case(net, 0..0, seed)?;
        }
        Ok(())
    }

    #[test]
    fn duplicates_and_reordering_are_suppressed() -> Result<(), DeliveryError> {
        for seed in 10..15 {
            let net = Net {
                loss_per_mille: 100,
                dup_per_mille: 300,
                max_extra_delay: 9,
            };
            run_case(net, 0..0, seed)?;
        }
        Ok(())
    }

    #[test]
    fn offline_peer_catches_up() -> Result<(), DeliveryError> {
        let net = Net {
            loss_per_mille: 50,
            dup_per_mille: 0,
            max_extra_delay: 0,
        };
        run_case(net, 10..400, 20)
    }

    #[test]
    fn reassembly_bounds_a_runaway_partial_message() {
        let mut partial = vec![1u8; MAX_MESSAGE];
        let out = reassemble(&mut partial, &[2, 3], false);
        assert_eq!(
            out.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_MESSAGE]
        );
        assert_eq!(partial, vec![2, 3]);
        let mut partial = vec![1u8; MAX_MESSAGE];
        let out = reassemble(&mut partial, &[4], true);
        assert_eq!(out, vec![vec![1u8; MAX_MESSAGE], vec![4]]);
        assert!(partial.is_empty());
    }
}
