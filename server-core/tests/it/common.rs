//! Client-side helpers built on the dpf crate directly.

use protocol::*;

/// A test client: an account key.
pub struct TestClient {
    pub key: SigningKey,
    pub account: AccountId,
}

/// The two halves of one write plus what the client keeps.
pub struct WritePair {
    pub a: WriteRequest,
    pub b: WriteRequest,
    #[allow(dead_code)]
    pub slot: u64,
    pub payload: Vec<u8>,
}

impl TestClient {
    pub fn new(seed: u8) -> TestClient {
        let key = signing_key_from_bytes(&[seed; 32]);
        let account = public_key(&key);
        TestClient { key, account }
    }

    pub fn register(&self, p: &Params) -> RegisterRequest {
        let fp = p.fingerprint();
        let sig = sign(&self.key, &register_message(&fp, &self.account, None));
        RegisterRequest {
            fingerprint: fp,
            account: self.account,
            invite: None,
            signature: sig,
        }
    }

    pub fn register_with(&self, p: &Params, invite: &[u8]) -> RegisterRequest {
        let fp = p.fingerprint();
        let sig = sign(
            &self.key,
            &register_message(&fp, &self.account, Some(invite)),
        );
        RegisterRequest {
            fingerprint: fp,
            account: self.account,
            invite: Some(invite.to_vec()),
            signature: sig,
        }
    }

    /// A write of `payload` to `slot` in `round` with request id `id`.
    pub fn write(
        &self,
        p: &Params,
        round: u64,
        id: RequestId,
        slot: u64,
        payload: &[u8],
        seed: u8,
    ) -> WritePair {
        let mut rng = dpf::SeededRandom::new([seed; 32]);
        let (ka, kb) =
            dpf::WriteKey::r#gen(p.domain_bits, p.slot_len as usize, slot, payload, &mut rng)
                .expect("test key generation");
        self.write_from_keys(p, round, id, &ka, &kb, slot, payload)
    }

    /// Builds both requests from explicit key halves (to craft malformed pairs).
    #[allow(clippy::too_many_arguments)]
    pub fn write_from_keys(
        &self,
        p: &Params,
        round: u64,
        id: RequestId,
        ka: &dpf::WriteKey,
        kb: &dpf::WriteKey,
        slot: u64,
        payload: &[u8],
    ) -> WritePair {
        let ctx = write_ctx(round, &id, &self.account);
        let half = |k: &dpf::WriteKey| {
            let public_hash = k.public_hash(&ctx);
            WriteRequest {
                fingerprint: p.fingerprint(),
                round,
                request_id: id,
                account: self.account,
                public_hash,
                key: k.encode(),
                signature: sign(&self.key, &write_message(round, &id, &public_hash)),
            }
        };
        WritePair {
            a: half(ka),
            b: half(kb),
            slot,
            payload: payload.to_vec(),
        }
    }

    /// k read key pairs for `slots` (padded with slot 0), as the two requests.
    pub fn read(
        &self,
        p: &Params,
        round: u64,
        slots: &[u64],
        seed: u8,
    ) -> (ReadRequest, ReadRequest) {
        let mut rng = dpf::SeededRandom::new([seed; 32]);
        let mut ka = Vec::new();
        let mut kb = Vec::new();
        for i in 0..p.reads_per_round as usize {
            let slot = slots.get(i).copied().unwrap_or(0);
            let (a, b) = dpf::ReadKey::r#gen(p.domain_bits, slot, &mut rng).expect("read key");
            ka.push(a.encode());
            kb.push(b.encode());
        }
        let array_round = round - u64::from(p.read_lag);
        let mk = |keys: Vec<Vec<u8>>| {
            let sig = sign(
                &self.key,
                &read_message(round, array_round, &self.account, &keys),
            );
            ReadRequest {
                fingerprint: p.fingerprint(),
                round,
                array_round,
                account: self.account,
                keys,
                signature: sig,
            }
        };
        (mk(ka), mk(kb))
    }
}

/// XOR of two answers.
pub fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// A recognisable payload.
pub fn payload(p: &Params, tag: u8) -> Vec<u8> {
    (0..p.slot_len as usize)
        .map(|i| tag ^ (i as u8).wrapping_mul(7) | 1)
        .collect()
}
