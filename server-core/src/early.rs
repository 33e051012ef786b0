//! Writes applied to their round's share as they arrive, before the round closes.
//!
//! Evaluating a write over the whole array is most of a round's work, and it does not need
//! the audit challenge, which exists only after the cutoff. So each accepted write half is
//! handed to a worker thread that XORs it into the round's *early share* during the write
//! window. At the audit the round's job then only audits those writes ([`dpf::write_audit`]),
//! evaluates the accepted ones that were not applied early (e.g. after a restart: the early
//! share lives in memory only), and removes the applied ones that were not accepted (XOR is
//! its own inverse). The result is exactly the share [`crate::compute::run_audit`] computes.
//!
//! When the round's early challenge is known ([`EarlyApply::set_challenge`], drawn from the
//! previous round's nonces), the worker audits each write in the same pass
//! ([`dpf::write_accumulate_audited`]) and keeps its audit value, so if both servers audit the
//! round under that challenge the audit needs no evaluation at all at the close.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use protocol::{RequestId, Role};

use crate::compute::party;

/// Writes of one round applied so far.
#[derive(Default)]
pub struct Early {
    /// The XOR of the applied writes' shares (empty until the first is applied).
    pub share: Vec<u8>,
    /// The applied writes' encoded key halves, by request id.
    pub applied: HashMap<RequestId, Vec<u8>>,
    /// Audit values of applied writes under the challenge below, by request id.
    pub values: HashMap<RequestId, [u8; 32]>,
    /// The challenge `values` were computed under.
    pub challenge: Option<[u8; 16]>,
}

#[derive(Default)]
struct Round {
    early: Early,
    /// Handed to the worker and not yet applied.
    queued: usize,
    /// The round's early challenge, once known.
    challenge: Option<[u8; 16]>,
    /// The round's audit has started ([`EarlyApply::take`]): writes still queued are skipped
    /// and left to the audit, which spreads them over every core.
    taken: bool,
}

struct State {
    rounds: BTreeMap<u64, Round>,
    /// Rounds below this are closed: late work for them is dropped.
    closed_below: u64,
    /// Moving sums of batch wall times (nanoseconds) and batch sizes (writes): their ratio is
    /// the time to apply one write ([`State::write_ns`]), so a batch counts by its size and the
    /// few-write batches at the end of a window do not stand for the full ones of a backlog.
    /// Wall time, so it includes whatever else shares the cores.
    sum_ns: f64,
    sum_writes: f64,
    /// Writes admitted ([`EarlyApply::reserve`]) and not yet handed over or given up.
    reserved: usize,
}

impl std::fmt::Debug for Early {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Early")
            .field("share_bytes", &self.share.len())
            .field("applied", &self.applied.len())
            .field("audited", &self.values.len())
            .finish()
    }
}

/// The early-apply worker and the rounds' early shares.
pub struct EarlyApply {
    state: Arc<(Mutex<State>, Condvar)>,
    /// `None` when the worker thread could not be started.
    tx: Option<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for EarlyApply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.state.0);
        f.debug_struct("EarlyApply")
            .field("rounds", &s.rounds.keys().collect::<Vec<_>>())
            .field("closed_below", &s.closed_below)
            .finish()
    }
}

/// A write half handed to the worker: (round, request id, encoded key, write ctx).
type Job = (u64, RequestId, Vec<u8>, Vec<u8>);

/// Writes applied in one pass over the array.
const BATCH: usize = 32;

impl State {
    /// Adds a batch of `writes` applied in `ns` nanoseconds; each batch keeps 3/4 of the
    /// weight of those before it.
    fn record(&mut self, ns: f64, writes: usize) {
        self.sum_ns = self.sum_ns * 0.75 + ns;
        self.sum_writes = self.sum_writes * 0.75 + writes as f64;
    }

    /// The measured time to apply one write (nanoseconds; 0 until a write was applied).
    fn write_ns(&self) -> u64 {
        match self.sum_writes > 0.0 {
            true => (self.sum_ns / self.sum_writes).max(1.0) as u64,
            false => 0,
        }
    }
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl EarlyApply {
    /// Starts the worker thread for arrays of `slots` slots of `slot_len` bytes.
    pub fn start(role: Role, domain_bits: u32, slots: usize, slot_len: usize) -> EarlyApply {
        let state = Arc::new((
            Mutex::new(State {
                rounds: BTreeMap::new(),
                closed_below: 0,
                sum_ns: 0.0,
                sum_writes: 0.0,
                reserved: 0,
            }),
            Condvar::new(),
        ));
        let (tx, rx) = mpsc::channel::<Job>();
        let st = state.clone();
        let spawned = std::thread::Builder::new()
            .name("early-apply".into())
            .spawn(move || {
                calibrate(&st, role, domain_bits, slots, slot_len);
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(w) => batch.push(w),
                            Err(_) => break,
                        }
                    }
                    batch.sort_by_key(|w| w.0);
                    for group in batch.chunk_by(|x, y| x.0 == y.0) {
                        apply(&st, role, domain_bits, slots, slot_len, group);
                    }
                }
            });
        if let Err(e) = &spawned {
            // Without the worker every write is evaluated at the audit, as after a restart.
            tracing::warn!(error = %e, "cannot start the early-apply thread");
        }
        EarlyApply {
            state,
            tx: spawned.ok().map(|_| tx),
        }
    }

    /// Sets the early challenge of `round`: writes of the round applied from now on are
    /// audited in the same pass.
    pub fn set_challenge(&self, round: u64, challenge: [u8; 16]) {
        let mut s = lock(&self.state.0);
        if round >= s.closed_below {
            s.rounds.entry(round).or_default().challenge = Some(challenge);
        }
    }

    /// Hands an accepted write half of `round` (with its write ctx) to the worker.
    pub fn push(&self, round: u64, id: RequestId, key: Vec<u8>, ctx: Vec<u8>) {
        let Some(tx) = &self.tx else { return };
        {
            let mut s = lock(&self.state.0);
            if round < s.closed_below {
                return;
            }
            s.rounds.entry(round).or_default().queued += 1;
        }
        if tx.send((round, id, key, ctx)).is_err() {
            let mut s = lock(&self.state.0);
            if let Some(r) = s.rounds.get_mut(&round) {
                r.queued -= 1;
            }
            self.state.1.notify_all();
        }
    }

    /// Whether one more write can be applied, after everything already queued, within
    /// `ms_left` milliseconds at the measured rate (one batch, until a rate is measured). The
    /// server sheds writes that cannot: under overload a round then holds what the servers can
    /// evaluate before its cutoff and is published, instead of every round missing its
    /// deadline; the refused clients send again in a later round.
    ///
    /// An admitted write holds a [`Reservation`] until it is handed over with [`push`] (or
    /// given up): a burst of requests that all pass admission before any is queued would
    /// otherwise all be admitted.
    ///
    /// [`push`]: EarlyApply::push
    pub fn reserve(&self, ms_left: u64) -> Option<Reservation> {
        let mut s = lock(&self.state.0);
        let queued: usize = s
            .rounds
            .values()
            .filter(|r| !r.taken)
            .map(|r| r.queued)
            .sum();
        if !fits(queued + s.reserved, s.write_ns(), ms_left) {
            return None;
        }
        s.reserved += 1;
        Some(Reservation {
            state: self.state.clone(),
        })
    }

    /// The measured wall time to apply one write, in nanoseconds (0 until measured).
    pub fn write_ns(&self) -> u64 {
        lock(&self.state.0).write_ns()
    }

    /// Stops applying writes of `round` (those still queued are skipped: the audit evaluates
    /// them), waits for the batch in progress, then takes the round's early share (`None` if
    /// nothing was applied). Blocks: call from a blocking thread.
    pub fn take(&self, round: u64) -> Option<Early> {
        let (m, cv) = &*self.state;
        let mut s = lock(m);
        // The entry stays, marked taken, until the round is forgotten: a write handed over
        // later is skipped rather than applied to a fresh share nobody will take.
        s.rounds.entry(round).or_default().taken = true;
        while s.rounds.get(&round).is_some_and(|r| r.queued > 0) {
            s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.rounds
            .get_mut(&round)
            .map(|r| std::mem::take(&mut r.early))
            .filter(|e| !e.applied.is_empty())
    }

    /// Waits until the worker has applied every write handed over for `round`.
    #[cfg(test)]
    fn wait_applied(&self, round: u64) {
        let (m, cv) = &*self.state;
        let mut s = lock(m);
        while s.rounds.get(&round).is_some_and(|r| r.queued > 0) {
            s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Drops the early shares of rounds below `below` (abandoned or pruned).
    pub fn forget_below(&self, below: u64) {
        let mut s = lock(&self.state.0);
        s.closed_below = s.closed_below.max(below);
        // Rounds with writes in flight keep their entry until the worker is done with it.
        s.rounds.retain(|r, st| *r >= below || st.queued > 0);
    }
}

fn apply(
    state: &(Mutex<State>, Condvar),
    role: Role,
    domain_bits: u32,
    slots: usize,
    slot_len: usize,
    group: &[Job],
) {
    let round = group[0].0;
    let (m, cv) = state;
    // The share is taken out while it is computed on (a `take` waits for `queued`).
    let (mut early, challenge) = {
        let mut s = lock(m);
        let closed = round < s.closed_below;
        let r = s.rounds.entry(round).or_default();
        if closed || r.taken {
            // Too late: the round is being audited (or is gone). Under overload this keeps
            // the worker from spending a round's time on rounds that no longer want it.
            r.queued = r.queued.saturating_sub(group.len());
            if closed && r.queued == 0 {
                s.rounds.remove(&round);
            }
            cv.notify_all();
            return;
        }
        (std::mem::take(&mut r.early), r.challenge)
    };
    if early.share.is_empty() {
        early.share = vec![0u8; slots * slot_len];
    }
    // A write is applied once, even if it was handed over twice.
    let mut seen = std::collections::HashSet::new();
    let decoded: Vec<(RequestId, dpf::WriteKey, &Vec<u8>, &[u8])> = group
        .iter()
        .filter(|(_, id, _, _)| !early.applied.contains_key(id) && seen.insert(*id))
        .filter_map(|(_, id, k, ctx)| {
            // Keys were validated when accepted; one that does not decode is left to the audit.
            dpf::WriteKey::decode(k, domain_bits, slot_len)
                .ok()
                .map(|d| (*id, d, k, ctx.as_slice()))
        })
        .collect();
    let started = std::time::Instant::now();
    // Values computed under an earlier challenge (none is ever replaced) stay comparable.
    match challenge.filter(|c| early.challenge.is_none_or(|e| e == *c)) {
        Some(c) => {
            let writes: Vec<(&dpf::WriteKey, &[u8])> =
                decoded.iter().map(|(_, k, _, ctx)| (k, *ctx)).collect();
            let values = dpf::write_accumulate_audited(
                &mut early.share,
                slot_len,
                &writes,
                party(role),
                &dpf::AuditChallenge(c),
            );
            early.challenge = Some(c);
            early
                .values
                .extend(decoded.iter().map(|(id, ..)| *id).zip(values));
        }
        None => {
            let refs: Vec<&dpf::WriteKey> = decoded.iter().map(|(_, k, ..)| k).collect();
            dpf::write_accumulate(&mut early.share, slot_len, &refs, party(role));
        }
    }
    for (id, _, k, _) in &decoded {
        early.applied.insert(*id, (*k).clone());
    }
    let mut s = lock(m);
    if !decoded.is_empty() {
        s.record(started.elapsed().as_nanos() as f64, decoded.len());
    }
    let closed = round < s.closed_below;
    let r = s.rounds.entry(round).or_default();
    r.queued = r.queued.saturating_sub(group.len());
    if !closed {
        r.early = early;
    }
    if closed && r.queued == 0 {
        s.rounds.remove(&round);
    }
    cv.notify_all();
}

/// Measures the time to apply one write before the first real one arrives, so admission has a
/// rate from the first round on: one throw-away write (a key pair of the server's parameters,
/// from a fixed seed) applied and audited over a scratch array. One write per pass is the
/// slowest case, so the first estimate errs on the side of admitting fewer.
fn calibrate(
    state: &(Mutex<State>, Condvar),
    role: Role,
    domain_bits: u32,
    slots: usize,
    slot_len: usize,
) {
    let mut rng = dpf::SeededRandom::new([0x5a; 32]);
    let payload = vec![0u8; slot_len];
    let Ok((a, b)) = dpf::WriteKey::r#gen(domain_bits, slot_len, 0, &payload, &mut rng) else {
        return;
    };
    let key = if role == Role::A { a } else { b };
    let mut scratch = vec![0u8; slots * slot_len];
    let started = std::time::Instant::now();
    dpf::write_accumulate_audited(
        &mut scratch,
        slot_len,
        &[(&key, b"calibration".as_slice())],
        party(role),
        &dpf::AuditChallenge([0; 16]),
    );
    let ns = started.elapsed().as_nanos() as f64;
    let mut s = lock(&state.0);
    // A real batch that finished first is the better measure.
    if s.sum_writes == 0.0 {
        s.record(ns, 1);
    }
}

/// An admitted write's place in the early worker's schedule (released when dropped: after the
/// write was handed over, or when it was not accepted after all).
pub struct Reservation {
    state: Arc<(Mutex<State>, Condvar)>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reservation")
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut s = lock(&self.state.0);
        s.reserved = s.reserved.saturating_sub(1);
    }
}

/// Whether `queued + 1` writes at `write_ns` each take at most `ms_left` milliseconds. Before
/// any write was measured (`write_ns == 0`), one batch's worth is admitted: its application
/// measures the rate.
fn fits(queued: usize, write_ns: u64, ms_left: u64) -> bool {
    if write_ns == 0 {
        return queued < BATCH;
    }
    let need_ns = (queued as u128 + 1) * u128::from(write_ns);
    need_ns <= u128::from(ms_left) * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::{AuditJob, run_audit, run_audit_with_early};
    use dpf::SeededRandom;

    /// Whatever was applied early (some accepted writes, one write that is then not accepted,
    /// a duplicate hand-over, none at all), with or without the round's challenge known in
    /// advance (or a different one), the audit ends with the share and the values of an audit
    /// that evaluated everything at once.
    #[test]
    fn early_application_gives_the_same_share_and_values() {
        let (n, l) = (9u32, 64usize);
        let mut rng = SeededRandom::new([4; 32]);
        let mut writes = Vec::new();
        for i in 0..7u8 {
            let (a, b) =
                dpf::WriteKey::r#gen(n, l, u64::from(i) * 61, &[i + 1; 64], &mut rng).expect("gen");
            // Write 5 is malformed: its halves come from two different pairs.
            let half = if i == 5 { b.encode() } else { a.encode() };
            writes.push(([i; 16], half, vec![i; 12]));
        }
        let job = AuditJob {
            round: 3,
            role: Role::A,
            n_slots: 1 << n,
            slot_len: l,
            domain_bits: n,
            challenge: [8; 16],
            // Write 6 is applied early but not accepted.
            writes: writes[..6].to_vec(),
        };
        let want = run_audit(&job, 2).expect("audit");
        for challenge in [None, Some(job.challenge), Some([9; 16])] {
            for applied in [
                vec![],
                vec![0usize, 2, 5, 6],
                vec![0, 1, 2, 3, 4, 5, 6],
                vec![6],
            ] {
                let early = EarlyApply::start(Role::A, n, 1 << n, l);
                // The challenge may become known after the first write was applied.
                if let Some(&i) = applied.first() {
                    early.push(3, writes[i].0, writes[i].1.clone(), writes[i].2.clone());
                }
                if let Some(c) = challenge {
                    early.set_challenge(3, c);
                }
                for &i in &applied {
                    early.push(3, writes[i].0, writes[i].1.clone(), writes[i].2.clone());
                }
                // Taken at once, writes still queued are skipped and left to the audit;
                // taken once the worker is idle, every write after the challenge is audited.
                let idle = applied.len() % 2 == 0;
                if idle {
                    early.wait_applied(3);
                }
                let taken = early.take(3);
                if idle && challenge == Some(job.challenge) && applied.len() > 1 {
                    let audited = taken.as_ref().map_or(0, |e| e.values.len());
                    assert!(audited > 0, "some writes audited early: {applied:?}");
                }
                let got = run_audit_with_early(&job, taken, 2).expect("audit");
                assert!(
                    got.share == want.share,
                    "share differs, applied early: {applied:?}, challenge {challenge:?}"
                );
                let ids = |r: &crate::compute::AuditResult| -> Vec<RequestId> {
                    r.values.iter().map(|v| v.request_id).collect()
                };
                assert_eq!(ids(&got), ids(&want));
                for (g, w) in got.values.iter().zip(&want.values) {
                    // The malformed write's halves do not decode as one pair; an honest one's
                    // value is deterministic.
                    assert_eq!(g.value, w.value, "write {:?}", g.request_id[0]);
                }
            }
        }
    }

    #[test]
    fn a_write_is_admitted_only_if_the_queue_and_it_fit_before_the_cutoff() {
        // Nothing measured yet: one batch is admitted, whatever the time left.
        assert!(fits(BATCH - 1, 0, 0));
        assert!(!fits(BATCH, 0, 60_000));
        // 10 writes of 10 ms fit in 100 ms, 11 do not; nothing fits in no time.
        assert!(fits(9, 10_000_000, 100));
        assert!(!fits(10, 10_000_000, 100));
        assert!(!fits(0, 1, 0));
        // No overflow at the extremes.
        assert!(!fits(usize::MAX, u64::MAX, u64::MAX));

        // The rate is measured from real applications.
        let (n, l) = (10u32, 256usize);
        let early = EarlyApply::start(Role::B, n, 1 << n, l);
        // The worker measures one throw-away write when it starts.
        let t = std::time::Instant::now();
        while early.write_ns() == 0 && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(early.write_ns() > 0, "calibrated at start");
        // Reservations not yet handed over count: a burst admitted within a time budget holds
        // its places.
        let per = early.write_ns();
        let budget_ms = (per * 3).div_ceil(1_000_000);
        let held: Vec<Reservation> = (0..1000).map_while(|_| early.reserve(budget_ms)).collect();
        assert!(
            !held.is_empty() && held.len() < 1000,
            "{} admitted",
            held.len()
        );
        assert!(
            early.reserve(budget_ms).is_none(),
            "the burst filled the budget"
        );
        drop(held);
        assert!(early.reserve(budget_ms).is_some(), "released when dropped");
        let mut rng = SeededRandom::new([7; 32]);
        for i in 0..4u8 {
            let (_, b) =
                dpf::WriteKey::r#gen(n, l, u64::from(i), &[i; 256], &mut rng).expect("gen");
            early.push(5, [i; 16], b.encode(), vec![i; 8]);
        }
        early.wait_applied(5);
        assert!(early.write_ns() > 0, "measured");
        assert!(early.reserve(0).is_none(), "no time left");
        assert!(
            early.reserve(60_000).is_some(),
            "a minute is plenty for one write of 2^10 slots"
        );
    }

    #[test]
    fn a_cancelled_audit_stops_and_says_so() {
        use crate::compute::{ComputeError, run_audit_until, run_audit_with_early_until};
        let mut rng = SeededRandom::new([6; 32]);
        let (a, _) = dpf::WriteKey::r#gen(6, 32, 3, &[1; 32], &mut rng).expect("gen");
        let job = AuditJob {
            round: 1,
            role: Role::A,
            n_slots: 64,
            slot_len: 32,
            domain_bits: 6,
            challenge: [1; 16],
            writes: vec![([1; 16], a.encode(), vec![])],
        };
        let never = || false;
        let now = || true;
        assert!(run_audit_until(&job, 2, &never).is_ok());
        assert_eq!(
            run_audit_until(&job, 2, &now).map(|_| ()),
            Err(ComputeError::Cancelled)
        );
        // Applied early without its audit value: the audit left at the close is cancelled too.
        let early = EarlyApply::start(Role::A, 6, 64, 32);
        early.push(1, [1; 16], a.encode(), vec![]);
        early.wait_applied(1);
        assert_eq!(
            run_audit_with_early_until(&job, early.take(1), 2, &now).map(|_| ()),
            Err(ComputeError::Cancelled)
        );
    }

    #[test]
    fn forgotten_rounds_drop_their_share_and_late_work() {
        let early = EarlyApply::start(Role::B, 6, 64, 32);
        let mut rng = SeededRandom::new([5; 32]);
        let (a, _) = dpf::WriteKey::r#gen(6, 32, 3, &[1; 32], &mut rng).expect("gen");
        early.push(1, [1; 16], a.encode(), vec![]);
        early.push(2, [2; 16], a.encode(), vec![]);
        early.forget_below(2);
        early.push(1, [3; 16], a.encode(), vec![]);
        assert!(early.take(1).is_none(), "round 1 is closed");
        // (A take skips what is still queued: wait for the worker first.)
        early.wait_applied(2);
        let two = early.take(2).expect("round 2 kept");
        assert_eq!(two.applied.len(), 1);
        // A write handed over after its round was taken is not applied.
        early.push(2, [4; 16], a.encode(), vec![]);
        early.wait_applied(2);
        assert!(early.take(2).is_none(), "nothing applied after the take");
    }
}
