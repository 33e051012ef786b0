//! The heavy, pure computations (DPF evaluation), spread over cores. No I/O, no clock.

use crate::early::Early;
use protocol::{AuditValue, RequestId, Role};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The dpf party of a role.
pub fn party(role: Role) -> dpf::Party {
    match role {
        Role::A => dpf::Party::A,
        Role::B => dpf::Party::B,
    }
}

/// Evaluate every accepted write of a round over the full domain, with audit values.
#[derive(Debug, Clone)]
pub struct AuditJob {
    /// The round.
    pub round: u64,
    /// This server's role (its party bit).
    pub role: Role,
    /// Slots.
    pub n_slots: usize,
    /// Bytes per slot.
    pub slot_len: usize,
    /// `domain_bits` for decoding.
    pub domain_bits: u32,
    /// The audit challenge.
    pub challenge: [u8; 16],
    /// (id, encoded key half, write ctx), in accepted order.
    pub writes: Vec<(RequestId, Vec<u8>, Vec<u8>)>,
}

/// The result of an [`AuditJob`].
#[derive(Debug, Clone)]
pub struct AuditResult {
    /// The round.
    pub round: u64,
    /// The tentative share array (every accepted write applied).
    pub share: Vec<u8>,
    /// One value per write, in job order.
    pub values: Vec<AuditValue>,
}

/// A kernel failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    /// A worker thread panicked.
    #[error("a DPF worker thread panicked")]
    WorkerPanicked,
    /// The caller gave up on the job (its round's deadline passed).
    #[error("the computation was cancelled")]
    Cancelled,
}

/// Writes evaluated between two checks for cancellation.
const CANCEL_CHUNK: usize = 32;

/// Calls `f` on runs of [`CANCEL_CHUNK`] writes and concatenates the audit values; `None` as
/// soon as `cancelled()` says so before a run.
fn in_chunks<'a>(
    writes: &[(&'a dpf::WriteKey, &'a [u8])],
    cancelled: &(dyn Fn() -> bool + Sync),
    mut f: impl FnMut(&[(&'a dpf::WriteKey, &'a [u8])]) -> Vec<[u8; 32]>,
) -> Option<Vec<[u8; 32]>> {
    let mut vals = Vec::with_capacity(writes.len());
    for chunk in writes.chunks(CANCEL_CHUNK) {
        if cancelled() {
            return None;
        }
        vals.extend(f(chunk));
    }
    Some(vals)
}

/// How many worker threads to use for a kernel.
pub fn worker_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16)
}

/// Splits `items` into at most `threads` runs, calls `f` on each run in a thread of its own
/// and returns the results in run order.
fn in_threads<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&[T]) -> R + Sync,
) -> Result<Vec<R>, ComputeError> {
    let chunk = items.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(chunk).map(|run| s.spawn(|| f(run))).collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| ComputeError::WorkerPanicked))
            .collect()
    })
}

/// Runs an audit job: each worker evaluates whole keys into its own partial array (sharding by
/// key keeps every audit whole); partial arrays are XORed together.
pub fn run_audit(job: &AuditJob, threads: usize) -> Result<AuditResult, ComputeError> {
    run_audit_until(job, threads, &|| false)
}

/// [`run_audit`] that stops with [`ComputeError::Cancelled`] once `cancelled()` returns true
/// (checked every [`CANCEL_CHUNK`] writes per thread), so an overloaded server does not spend
/// its cores on a round that has already missed its deadline.
pub fn run_audit_until(
    job: &AuditJob,
    threads: usize,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<AuditResult, ComputeError> {
    let array_len = job.n_slots * job.slot_len;
    // Keys were validated when received; one that no longer decodes gets this server's
    // "undecodable" audit value, which never matches the peer's, so the write is dropped by
    // both.
    let decoded: Vec<Option<dpf::WriteKey>> = job
        .writes
        .iter()
        .map(|(_, k, _)| dpf::WriteKey::decode(k, job.domain_bits, job.slot_len).ok())
        .collect();
    let idx: Vec<usize> = (0..job.writes.len()).collect();
    let parts = in_threads(&idx, threads, |ids| {
        let mut arr = vec![0u8; array_len];
        let mut pairs: Vec<(usize, &dpf::WriteKey, &[u8])> = Vec::new();
        let mut out = Vec::new();
        for &i in ids {
            match &decoded[i] {
                Some(k) => pairs.push((i, k, job.writes[i].2.as_slice())),
                None => out.push((i, undecodable(job.role))),
            }
        }
        let writes: Vec<(&dpf::WriteKey, &[u8])> = pairs.iter().map(|(_, k, c)| (*k, *c)).collect();
        let vals = in_chunks(&writes, cancelled, |chunk| {
            dpf::write_accumulate_audited(
                &mut arr,
                job.slot_len,
                chunk,
                party(job.role),
                &dpf::AuditChallenge(job.challenge),
            )
        })?;
        out.extend(pairs.iter().map(|p| p.0).zip(vals));
        Some((arr, out))
    })?
    .into_iter()
    .collect::<Option<Vec<_>>>()
    .ok_or(ComputeError::Cancelled)?;
    let mut share = vec![0u8; array_len];
    let mut values = vec![[0u8; 32]; job.writes.len()];
    let mut filled = vec![false; job.writes.len()];
    for (arr, vals) in parts {
        xor_into(&mut share, &arr);
        for (i, v) in vals {
            values[i] = v;
            filled[i] = true;
        }
    }
    for (i, f) in filled.iter().enumerate() {
        if !f {
            values[i] = undecodable(job.role);
        }
    }
    Ok(AuditResult {
        round: job.round,
        share,
        values: job
            .writes
            .iter()
            .zip(values)
            .map(|((id, _, _), value)| AuditValue {
                request_id: *id,
                value,
            })
            .collect(),
    })
}

/// [`run_audit`] for a round some of whose writes were applied early (see [`crate::early`]):
/// the same share and the same values, at a fraction of the cost when most were.
pub fn run_audit_with_early(
    job: &AuditJob,
    early: Option<Early>,
    threads: usize,
) -> Result<AuditResult, ComputeError> {
    run_audit_with_early_until(job, early, threads, &|| false)
}

/// [`run_audit_with_early`] that stops with [`ComputeError::Cancelled`] once `cancelled()`
/// returns true (see [`run_audit_until`]).
pub fn run_audit_with_early_until(
    job: &AuditJob,
    early: Option<Early>,
    threads: usize,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<AuditResult, ComputeError> {
    let Some(early) = early else {
        return run_audit_until(job, threads, cancelled);
    };
    let decode = |k: &[u8]| dpf::WriteKey::decode(k, job.domain_bits, job.slot_len).ok();
    let is_early = |id: &RequestId| early.applied.contains_key(id);
    // Accepted but not applied early: evaluated now, with their audit values.
    let late = AuditJob {
        round: job.round,
        role: job.role,
        n_slots: job.n_slots,
        slot_len: job.slot_len,
        domain_bits: job.domain_bits,
        challenge: job.challenge,
        writes: job
            .writes
            .iter()
            .filter(|w| !is_early(&w.0))
            .cloned()
            .collect(),
    };
    let mut share = early.share;
    let mut values: HashMap<RequestId, [u8; 32]> = HashMap::new();
    if !late.writes.is_empty() {
        let r = run_audit_until(&late, threads, cancelled)?;
        xor_into(&mut share, &r.share);
        values.extend(r.values.into_iter().map(|v| (v.request_id, v.value)));
    }
    // Applied early but not accepted: removed again (XOR is its own inverse).
    let accepted: HashSet<&RequestId> = job.writes.iter().map(|w| &w.0).collect();
    let stale: Vec<dpf::WriteKey> = early
        .applied
        .iter()
        .filter(|(id, _)| !accepted.contains(id))
        .filter_map(|(_, k)| decode(k))
        .collect();
    remove_writes(&mut share, job.slot_len, &stale, job.role);
    // Applied and audited early under this round's challenge: nothing left to do.
    let no_values = HashMap::new();
    let early_values = match early.challenge == Some(job.challenge) {
        true => &early.values,
        false => &no_values,
    };
    values.extend(
        job.writes
            .iter()
            .filter_map(|(id, _, _)| early_values.get(id).map(|v| (*id, *v))),
    );
    // Applied early (not audited) and accepted: audited only, keys split over the workers.
    let audited: Vec<(RequestId, dpf::WriteKey, &[u8])> = job
        .writes
        .iter()
        .filter(|w| is_early(&w.0) && !early_values.contains_key(&w.0))
        .filter_map(|(id, k, ctx)| decode(k).map(|d| (*id, d, ctx.as_slice())))
        .collect();
    let parts = in_threads(&audited, threads, |part| {
        let writes: Vec<(&dpf::WriteKey, &[u8])> = part.iter().map(|(_, k, c)| (k, *c)).collect();
        let vals = in_chunks(&writes, cancelled, |chunk| {
            dpf::write_audit(
                job.n_slots,
                job.slot_len,
                chunk,
                party(job.role),
                &dpf::AuditChallenge(job.challenge),
            )
        })?;
        Some(
            part.iter()
                .map(|(id, _, _)| *id)
                .zip(vals)
                .collect::<Vec<_>>(),
        )
    })?;
    for part in parts {
        values.extend(part.ok_or(ComputeError::Cancelled)?);
    }
    Ok(AuditResult {
        round: job.round,
        share,
        values: job
            .writes
            .iter()
            .map(|(id, _, _)| AuditValue {
                request_id: *id,
                // A key that no longer decodes, as in `run_audit`.
                value: values
                    .get(id)
                    .copied()
                    .unwrap_or_else(|| undecodable(job.role)),
            })
            .collect(),
    })
}

/// The audit value a server reports for a key it cannot evaluate: different for the two
/// servers, so the write always fails the audit (a random value would, except when the OS
/// random source fails; then both servers' fallback would be equal and the write "pass").
/// Also never a real audit value: those are SHA-256 outputs of a different prefix.
pub fn undecodable(role: Role) -> [u8; 32] {
    protocol::sha256(&[b"mpm/audit-undecodable/".as_slice(), &[role as u8]].concat())
}

/// `dst ^= src` (equal lengths; extra bytes of the longer are ignored).
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

/// `a xor b` in a new buffer.
pub fn xor_of(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Removes writes from a share array (XOR is its own inverse).
pub fn remove_writes(share: &mut [u8], slot_len: usize, keys: &[dpf::WriteKey], role: Role) {
    let refs: Vec<&dpf::WriteKey> = keys.iter().collect();
    dpf::write_accumulate(share, slot_len, &refs, party(role));
}

/// Answers a batch of reads of one array: one pass over the array per worker, workers split the
/// keys between them.
pub fn answer_reads(
    array: &Arc<Vec<u8>>,
    slot_len: usize,
    keys: &[dpf::ReadKey],
    role: Role,
    threads: usize,
) -> Result<Vec<Vec<u8>>, ComputeError> {
    let parts = in_threads(keys, threads, |ks| {
        let refs: Vec<&dpf::ReadKey> = ks.iter().collect();
        dpf::pir_answer(array, slot_len, &refs, party(role))
    })?;
    Ok(parts.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key that does not decode gets values that differ between the servers, whatever the
    /// OS random source does: the write can never pass.
    #[test]
    fn an_undecodable_key_never_passes_the_audit() {
        let job = |role| AuditJob {
            round: 3,
            role,
            n_slots: 16,
            slot_len: 32,
            domain_bits: 4,
            challenge: [7; 16],
            writes: vec![([1; 16], vec![0xff; 40], b"ctx".to_vec())],
        };
        let a = run_audit(&job(Role::A), 1).expect("audit A");
        let b = run_audit(&job(Role::B), 1).expect("audit B");
        assert_ne!(a.values[0].value, b.values[0].value);
        assert_eq!(a.values[0].value, undecodable(Role::A));
        assert!(a.share.iter().all(|x| *x == 0), "nothing is applied");
        for role in [Role::A, Role::B] {
            let r = run_audit_with_early(&job(role), None, 1).expect("audit");
            assert_eq!(r.values[0].value, undecodable(role));
        }
    }
}
