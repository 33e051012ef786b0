//! Hand-written x86-64 kernels (VAES fixed-key hash on AVX-512 or, without it, on 256-bit AVX2
//! registers; AVX-512 / AVX2 masked XOR), with run-time detection and the portable code of
//! `prg.rs` and `read.rs` as the fallback.
//!
//! This is the only module of the crate with `unsafe` code: unaligned vector loads and stores
//! within slice bounds checked by the loops, and calls to `#[target_feature]` functions after
//! the features were detected at run time. `prg::tests::vaes_agrees_with_portable`,
//! `read::tests::pir_kernels_agree`, `read::tests::mask_expansion_kernels_agree` and
//! `proof::tests::every_kernel_gives_the_portable_sum` check that every kernel gives exactly
//! the portable bytes.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;
    use std::sync::OnceLock;

    /// AES-128 round keys.
    #[derive(Clone, Copy)]
    pub(crate) struct RoundKeys([__m128i; 11]);

    /// Whether the CPU has VAES and VPCLMULQDQ with AVX-512 (checked once; every CPU with VAES
    /// so far has VPCLMULQDQ, which the audit's kernels need).
    pub(crate) fn has_vaes512() -> bool {
        static V: OnceLock<bool> = OnceLock::new();
        *V.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("vaes")
                && std::is_x86_feature_detected!("vpclmulqdq")
                && std::is_x86_feature_detected!("pclmulqdq")
                && std::is_x86_feature_detected!("aes")
        })
    }

    /// Whether the CPU has VAES and VPCLMULQDQ on 256-bit registers (AVX2 class, e.g. without
    /// AVX-512).
    pub(crate) fn has_vaes256() -> bool {
        static V: OnceLock<bool> = OnceLock::new();
        *V.get_or_init(|| {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("vaes")
                && std::is_x86_feature_detected!("vpclmulqdq")
                && std::is_x86_feature_detected!("pclmulqdq")
                && std::is_x86_feature_detected!("aes")
        })
    }

    #[cfg(test)]
    thread_local! {
        static FORCE_256: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Runs `f` with the 256-bit kernels (VAES on ymm, AVX2 PIR) even on an AVX-512 CPU (this
    /// thread only), so tests check both widths against the portable code wherever they run.
    #[cfg(test)]
    pub(crate) fn with_256_bit_kernels<R>(f: impl FnOnce() -> R) -> R {
        FORCE_256.with(|c| c.set(true));
        let r = f();
        FORCE_256.with(|c| c.set(false));
        r
    }

    /// Whether the kernels take their AVX-512 path (else the 256-bit one).
    fn use_512() -> bool {
        #[cfg(test)]
        if FORCE_256.with(|c| c.get()) {
            return false;
        }
        has_vaes512()
    }

    /// Whether the PIR kernels' AVX-512 path (VAES-class CPU with AVX-512BW) is there.
    fn has_avx512bw() -> bool {
        static V: OnceLock<bool> = OnceLock::new();
        *V.get_or_init(|| has_vaes512() && std::is_x86_feature_detected!("avx512bw"))
    }

    /// Whether the PIR kernels take the AVX-512 path (else AVX2, if present).
    fn use_avx512bw() -> bool {
        use_512() && has_avx512bw()
    }

    pub(crate) fn has_avx2() -> bool {
        static V: OnceLock<bool> = OnceLock::new();
        *V.get_or_init(|| std::is_x86_feature_detected!("avx2"))
    }

    #[target_feature(enable = "aes,sse2")]
    fn expand_step<const RCON: i32>(k: __m128i) -> __m128i {
        let t = _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<RCON>(k));
        let mut k = k;
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        _mm_xor_si128(k, t)
    }

    #[target_feature(enable = "aes,sse2")]
    fn expand_key_ni(key: [u8; 16]) -> RoundKeys {
        // SAFETY: `key` is 16 readable bytes; the load is unaligned.
        let k0 = unsafe { _mm_loadu_si128(key.as_ptr().cast()) };
        let k1 = expand_step::<0x01>(k0);
        let k2 = expand_step::<0x02>(k1);
        let k3 = expand_step::<0x04>(k2);
        let k4 = expand_step::<0x08>(k3);
        let k5 = expand_step::<0x10>(k4);
        let k6 = expand_step::<0x20>(k5);
        let k7 = expand_step::<0x40>(k6);
        let k8 = expand_step::<0x80>(k7);
        let k9 = expand_step::<0x1b>(k8);
        let k10 = expand_step::<0x36>(k9);
        RoundKeys([k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10])
    }

    /// The AES-128 key schedule, if the CPU has VAES (the only user of these keys).
    pub(crate) fn expand_key(key: [u8; 16]) -> Option<RoundKeys> {
        if has_vaes512() || has_vaes256() {
            // SAFETY: AES-NI is present (checked by both).
            Some(unsafe { expand_key_ni(key) })
        } else {
            None
        }
    }

    /// In place: `x = AES(sigma(x)) ^ sigma(x)`, 16 blocks per iteration (4 registers of 4).
    #[target_feature(enable = "avx512f,vaes,aes")]
    fn mmo_vaes512(rk: &RoundKeys, x: &mut [u128]) {
        let k: [__m512i; 11] = core::array::from_fn(|i| _mm512_broadcast_i32x4(rk.0[i]));
        let hi = _mm512_set_epi64(-1, 0, -1, 0, -1, 0, -1, 0);
        let sigma =
            |v: __m512i| _mm512_xor_si512(_mm512_shuffle_epi32::<0x4E>(v), _mm512_and_si512(v, hi));
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            let p = c.as_mut_ptr().cast::<__m512i>();
            // SAFETY: `c` is 16 u128 = 4 x 64 bytes; loads are unaligned.
            let y: [__m512i; 4] =
                core::array::from_fn(|i| sigma(unsafe { _mm512_loadu_si512(p.add(i)) }));
            let mut s = [
                _mm512_xor_si512(y[0], k[0]),
                _mm512_xor_si512(y[1], k[0]),
                _mm512_xor_si512(y[2], k[0]),
                _mm512_xor_si512(y[3], k[0]),
            ];
            for rk in &k[1..10] {
                for b in s.iter_mut() {
                    *b = _mm512_aesenc_epi128(*b, *rk);
                }
            }
            for i in 0..4 {
                let o = _mm512_xor_si512(_mm512_aesenclast_epi128(s[i], k[10]), y[i]);
                // SAFETY: as above, within `c`.
                unsafe { _mm512_storeu_si512(p.add(i), o) };
            }
        }
        let rest = chunks.into_remainder();
        let mut four = rest.chunks_exact_mut(4);
        for c in &mut four {
            let p = c.as_mut_ptr().cast::<__m512i>();
            // SAFETY: `c` is 4 u128 = 64 bytes.
            let y = sigma(unsafe { _mm512_loadu_si512(p) });
            let mut s = _mm512_xor_si512(y, k[0]);
            for rk in &k[1..10] {
                s = _mm512_aesenc_epi128(s, *rk);
            }
            // SAFETY: as above.
            unsafe {
                _mm512_storeu_si512(p, _mm512_xor_si512(_mm512_aesenclast_epi128(s, k[10]), y))
            };
        }
        for b in four.into_remainder() {
            mmo1(rk, b);
        }
    }

    #[target_feature(enable = "avx512f,vaes,aes")]
    fn aes4(k: &[__m512i; 11], mut s: [__m512i; 4]) -> [__m512i; 4] {
        for b in s.iter_mut() {
            *b = _mm512_xor_si512(*b, k[0]);
        }
        for rk in &k[1..10] {
            for b in s.iter_mut() {
                *b = _mm512_aesenc_epi128(*b, *rk);
            }
        }
        for b in s.iter_mut() {
            *b = _mm512_aesenclast_epi128(*b, k[10]);
        }
        s
    }

    #[target_feature(enable = "aes,sse2")]
    fn aes1(rk: &RoundKeys, b: __m128i) -> __m128i {
        let mut s = _mm_xor_si128(b, rk.0[0]);
        for r in &rk.0[1..10] {
            s = _mm_aesenc_si128(s, *r);
        }
        _mm_aesenclast_si128(s, rk.0[10])
    }

    /// The fused write kernel: for every leaf `i` with node `v`, XORs into slot `i` of `out`
    /// the payload blocks `H((v & !1) ^ salt ^ j) ^ (mask(v) & cw[j])`. Blocks go four to a
    /// register and four registers at a time through AES, straight from the node to the array,
    /// with no intermediate buffer. Requires `cw.len()` to be a multiple of 4.
    #[target_feature(enable = "avx512f,vaes,aes")]
    fn payload_xor_vaes512(
        rk: &RoundKeys,
        nodes: &[u128],
        salt: u128,
        cw: &[u128],
        out: &mut [u8],
    ) {
        let k: [__m512i; 11] = core::array::from_fn(|i| _mm512_broadcast_i32x4(rk.0[i]));
        let groups = cw.len() / 4;
        let slot = cw.len() * 16;
        // sigma is linear: sigma(base ^ j) = sigma(base) ^ sigma(j), and sigma(j) for a block
        // index j (low half) is j in the high half. `sj` walks the four block indices of a
        // register, `inc` steps it to the next four.
        let sj0 = _mm512_set_epi64(3, 0, 2, 0, 1, 0, 0, 0);
        let inc = _mm512_set_epi64(4, 0, 4, 0, 4, 0, 4, 0);
        for (leaf, &v) in nodes.iter().enumerate() {
            let base = (v & !1) ^ salt;
            let sb = base.rotate_left(64) ^ (base & (u128::MAX << 64));
            let sb = _mm512_broadcast_i32x4(_mm_set_epi64x((sb >> 64) as i64, sb as u64 as i64));
            // All ones when the control bit is set: the correction applies (branch-free).
            let m = _mm512_set1_epi64(0i64.wrapping_sub((v & 1) as i64));
            let dst = &mut out[leaf * slot..(leaf + 1) * slot];
            let mut sj = sj0;
            let mut g = 0;
            while g < groups {
                // Four registers (16 blocks) in flight; a short tail repeats its last unit
                // and stores only the real ones.
                let n = (groups - g).min(4);
                let mut y = [_mm512_setzero_si512(); 4];
                let mut c = [_mm512_setzero_si512(); 4];
                for i in 0..4 {
                    let gi = g + i.min(n - 1);
                    let s = if i < n { sj } else { _mm512_sub_epi64(sj, inc) };
                    y[i] = _mm512_xor_si512(sb, s);
                    let cw4 = &cw[4 * gi..4 * gi + 4];
                    // SAFETY: `cw4` is 4 u128 = 64 readable bytes.
                    c[i] = unsafe { _mm512_loadu_si512(cw4.as_ptr().cast()) };
                    if i + 1 < n {
                        sj = _mm512_add_epi64(sj, inc);
                    }
                }
                let mut st = [
                    _mm512_xor_si512(y[0], k[0]),
                    _mm512_xor_si512(y[1], k[0]),
                    _mm512_xor_si512(y[2], k[0]),
                    _mm512_xor_si512(y[3], k[0]),
                ];
                // y ^ (cw & m)
                let yc: [__m512i; 4] =
                    core::array::from_fn(|i| _mm512_ternarylogic_epi64::<0x78>(y[i], c[i], m));
                for rk in &k[1..10] {
                    for s in st.iter_mut() {
                        *s = _mm512_aesenc_epi128(*s, *rk);
                    }
                }
                for i in 0..n {
                    let h = _mm512_aesenclast_epi128(st[i], k[10]);
                    let d = &mut dst[64 * (g + i)..64 * (g + i + 1)];
                    // SAFETY: `d` is 64 bytes; unaligned load and store.
                    unsafe {
                        let x = _mm512_loadu_si512(d.as_ptr().cast());
                        let x = _mm512_ternarylogic_epi64::<0x96>(x, h, yc[i]);
                        _mm512_storeu_si512(d.as_mut_ptr().cast(), x);
                    }
                }
                sj = _mm512_add_epi64(sj, inc);
                g += n;
            }
        }
    }

    /// See [`payload_xor_vaes512`]; false when this CPU or slot size has no fast path.
    pub(crate) fn payload_xor(
        rk: &RoundKeys,
        nodes: &[u128],
        salt: u128,
        cw: &[u128],
        out: &mut [u8],
    ) -> bool {
        let wide = use_512();
        let unit = if wide { 4 } else { 2 };
        if !cw.len().is_multiple_of(unit) || out.len() < nodes.len() * cw.len() * 16 {
            return false;
        }
        if wide {
            // SAFETY: AVX-512 VAES detected.
            unsafe { payload_xor_vaes512(rk, nodes, salt, cw, out) };
        } else {
            debug_assert!(has_vaes256());
            // SAFETY: `RoundKeys` exist only when one of the two VAES levels was detected.
            unsafe { payload_xor_vaes256(rk, nodes, salt, cw, out) };
        }
        true
    }

    pub(crate) fn mmo(rk: &RoundKeys, x: &mut [u128]) {
        if use_512() {
            // SAFETY: AVX-512 VAES detected.
            unsafe { mmo_vaes512(rk, x) }
        } else {
            debug_assert!(has_vaes256());
            // SAFETY: `RoundKeys` exist only when one of the two VAES levels was detected.
            unsafe { mmo_vaes256(rk, x) }
        }
    }

    // ---------------------------------------------------------------------------------------
    // The same kernels on 256-bit registers (VAES without AVX-512): two blocks per register,
    // eight registers (16 blocks) in flight to cover the AES latency.
    // ---------------------------------------------------------------------------------------

    /// One 16-byte block through `x = AES(sigma(x)) ^ sigma(x)` with AES-NI (the remainders
    /// of both widths' MMO kernels).
    #[target_feature(enable = "aes,sse2")]
    fn mmo1(rk: &RoundKeys, b: &mut u128) {
        let p = (b as *mut u128).cast::<__m128i>();
        // SAFETY: one u128 is 16 bytes.
        let v = unsafe { _mm_loadu_si128(p) };
        let y = _mm_xor_si128(
            _mm_shuffle_epi32::<0x4E>(v),
            _mm_and_si128(v, _mm_set_epi64x(-1, 0)),
        );
        // SAFETY: as above.
        unsafe { _mm_storeu_si128(p, _mm_xor_si128(aes1(rk, y), y)) };
    }

    #[target_feature(enable = "avx2,vaes,aes")]
    fn aes8(k: &[__m256i; 11], mut s: [__m256i; 8]) -> [__m256i; 8] {
        for b in s.iter_mut() {
            *b = _mm256_xor_si256(*b, k[0]);
        }
        for rk in &k[1..10] {
            for b in s.iter_mut() {
                *b = _mm256_aesenc_epi128(*b, *rk);
            }
        }
        for b in s.iter_mut() {
            *b = _mm256_aesenclast_epi128(*b, k[10]);
        }
        s
    }

    #[target_feature(enable = "avx2,vaes,aes")]
    fn keys256(rk: &RoundKeys) -> [__m256i; 11] {
        core::array::from_fn(|i| _mm256_broadcastsi128_si256(rk.0[i]))
    }

    /// [`mmo_vaes512`] on 256-bit registers.
    #[target_feature(enable = "avx2,vaes,aes")]
    fn mmo_vaes256(rk: &RoundKeys, x: &mut [u128]) {
        let k = keys256(rk);
        let hi = _mm256_set_epi64x(-1, 0, -1, 0);
        let sigma =
            |v: __m256i| _mm256_xor_si256(_mm256_shuffle_epi32::<0x4E>(v), _mm256_and_si256(v, hi));
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            let p = c.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `c` is 16 u128 = 8 x 32 bytes; loads are unaligned.
            let y: [__m256i; 8] =
                core::array::from_fn(|i| sigma(unsafe { _mm256_loadu_si256(p.add(i)) }));
            let s = aes8(&k, y);
            for i in 0..8 {
                // SAFETY: as above, within `c`.
                unsafe { _mm256_storeu_si256(p.add(i), _mm256_xor_si256(s[i], y[i])) };
            }
        }
        for b in chunks.into_remainder() {
            mmo1(rk, b);
        }
    }

    /// [`payload_xor_vaes512`] on 256-bit registers. Requires `cw.len()` to be even.
    #[target_feature(enable = "avx2,vaes,aes")]
    fn payload_xor_vaes256(
        rk: &RoundKeys,
        nodes: &[u128],
        salt: u128,
        cw: &[u128],
        out: &mut [u8],
    ) {
        let k = keys256(rk);
        let pairs = cw.len() / 2;
        let slot = cw.len() * 16;
        // As in the 512-bit kernel: `sj` holds sigma(j) for the register's two block indices.
        let sj0 = _mm256_set_epi64x(1, 0, 0, 0);
        let inc = _mm256_set_epi64x(2, 0, 2, 0);
        for (leaf, &v) in nodes.iter().enumerate() {
            let base = (v & !1) ^ salt;
            let sb = base.rotate_left(64) ^ (base & (u128::MAX << 64));
            let sb =
                _mm256_broadcastsi128_si256(_mm_set_epi64x((sb >> 64) as i64, sb as u64 as i64));
            // All ones when the control bit is set: the correction applies (branch-free).
            let m = _mm256_set1_epi64x(0i64.wrapping_sub((v & 1) as i64));
            let dst = &mut out[leaf * slot..(leaf + 1) * slot];
            let mut sj = sj0;
            let mut g = 0;
            while g < pairs {
                // Eight registers in flight; a short tail repeats its last pair of correction
                // words and stores only the real registers.
                let n = (pairs - g).min(8);
                let mut y = [_mm256_setzero_si256(); 8];
                let mut c = [_mm256_setzero_si256(); 8];
                for i in 0..8 {
                    let gi = g + i.min(n - 1);
                    y[i] = _mm256_xor_si256(sb, sj);
                    let cw2 = &cw[2 * gi..2 * gi + 2];
                    // SAFETY: `cw2` is 2 u128 = 32 readable bytes.
                    c[i] = unsafe { _mm256_loadu_si256(cw2.as_ptr().cast()) };
                    sj = _mm256_add_epi64(sj, inc);
                }
                let h = aes8(&k, y);
                for i in 0..n {
                    // y ^ (cw & m) ^ AES(y)
                    let add =
                        _mm256_xor_si256(_mm256_xor_si256(h[i], y[i]), _mm256_and_si256(c[i], m));
                    let d = &mut dst[32 * (g + i)..32 * (g + i + 1)];
                    // SAFETY: `d` is 32 bytes; unaligned load and store.
                    unsafe {
                        let x = _mm256_loadu_si256(d.as_ptr().cast());
                        _mm256_storeu_si256(d.as_mut_ptr().cast(), _mm256_xor_si256(x, add));
                    }
                }
                g += n;
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // The write audit's leaf proofs (see `proof.rs`): per-leaf AES-128 keys and the fused
    // Davies-Meyer proofs and their carry-less reduction. Round keys live in a table laid out for 4-lane loads:
    // entry `(((i / 4) * 4 + j) * 11 + r) * 4 + i % 4` is round key `r` of leaf `i`'s block `j`.
    // ---------------------------------------------------------------------------------------

    /// AES-128 round constants.
    const RCON: [i32; 10] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36];

    /// `u128` per group of four leaves in the round-key table.
    const GROUP_KEYS: usize = 4 * 11 * 4;

    /// The table length for `leaves` leaves (whole groups of four).
    pub(crate) fn leaf_table_len(leaves: usize) -> usize {
        leaves.div_ceil(4) * GROUP_KEYS
    }

    /// One step of the AES-128 key schedule in each 128-bit lane: `SubWord` through
    /// `aesenclast` on the broadcast last word (all four columns equal, so `ShiftRows` does
    /// nothing), `RotWord` as a rotation by 8 bits, and the prefix XOR of the four words.
    #[target_feature(enable = "avx512f,vaes,aes")]
    fn key_step_512(k: __m512i, rcon: i32) -> __m512i {
        let t = _mm512_shuffle_epi32::<0xFF>(k);
        let t = _mm512_aesenclast_epi128(t, _mm512_set1_epi32(rcon << 8));
        let t = _mm512_ror_epi32::<8>(t);
        let k = _mm512_xor_si512(k, _mm512_maskz_shuffle_epi32::<0x90>(0xEEEE, k));
        let k = _mm512_xor_si512(k, _mm512_maskz_shuffle_epi32::<0x40>(0xCCCC, k));
        _mm512_xor_si512(k, t)
    }

    /// Fills `table` (whole groups) with the round keys of leaves `first..`: for block `j` of
    /// leaf `x`, the key schedule of `K = AES_kd((j << 64) | x)`.
    #[target_feature(enable = "avx512f,vaes,aes")]
    fn leaf_round_keys_vaes512(kd: &RoundKeys, first: u64, table: &mut [u128]) {
        let k: [__m512i; 11] = core::array::from_fn(|i| _mm512_broadcast_i32x4(kd.0[i]));
        for (g, t) in table.chunks_exact_mut(GROUP_KEYS).enumerate() {
            let x = (first + 4 * g as u64) as i64;
            let mut key = aes4(
                &k,
                core::array::from_fn(|j| {
                    let j = j as i64;
                    _mm512_set_epi64(j, x + 3, j, x + 2, j, x + 1, j, x)
                }),
            );
            let p = t.as_mut_ptr().cast::<__m512i>();
            for r in 0..11 {
                for (j, kj) in key.iter_mut().enumerate() {
                    if r > 0 {
                        *kj = key_step_512(*kj, RCON[r - 1]);
                    }
                    // SAFETY: entry `j * 11 + r` of 44 64-byte entries of `t`.
                    unsafe { _mm512_storeu_si512(p.add(j * 11 + r), *kj) };
                }
            }
        }
    }

    /// [`key_step_512`] on 256-bit registers.
    #[target_feature(enable = "avx2,vaes,aes")]
    fn key_step_256(k: __m256i, rcon: i32) -> __m256i {
        let t = _mm256_shuffle_epi32::<0xFF>(k);
        let t = _mm256_aesenclast_epi128(t, _mm256_set1_epi32(rcon << 8));
        let t = _mm256_or_si256(_mm256_srli_epi32::<8>(t), _mm256_slli_epi32::<24>(t));
        let k = _mm256_xor_si256(k, _mm256_slli_si256::<4>(k));
        let k = _mm256_xor_si256(k, _mm256_slli_si256::<8>(k));
        _mm256_xor_si256(k, t)
    }

    /// [`leaf_round_keys_vaes512`] on 256-bit registers (each 4-lane entry as two halves).
    #[target_feature(enable = "avx2,vaes,aes")]
    fn leaf_round_keys_vaes256(kd: &RoundKeys, first: u64, table: &mut [u128]) {
        let k = keys256(kd);
        for (g, t) in table.chunks_exact_mut(GROUP_KEYS).enumerate() {
            let x = (first + 4 * g as u64) as i64;
            // Register `2 j + h` holds leaves `2 h` and `2 h + 1` of the group, block `j`.
            let mut key = aes8(
                &k,
                core::array::from_fn(|i| {
                    let (j, h) = ((i / 2) as i64, 2 * (i % 2) as i64);
                    _mm256_set_epi64x(j, x + h + 1, j, x + h)
                }),
            );
            let p = t.as_mut_ptr().cast::<__m256i>();
            for r in 0..11 {
                for (i, ki) in key.iter_mut().enumerate() {
                    if r > 0 {
                        *ki = key_step_256(*ki, RCON[r - 1]);
                    }
                    let (j, h) = (i / 2, i % 2);
                    // SAFETY: half `h` of entry `j * 11 + r` of 44 64-byte entries of `t`.
                    unsafe { _mm256_storeu_si256(p.add((j * 11 + r) * 2 + h), *ki) };
                }
            }
        }
    }

    /// See [`leaf_round_keys_vaes512`]; `table.len()` must be a multiple of a group's keys.
    pub(crate) fn leaf_round_keys(kd: &RoundKeys, first: u64, table: &mut [u128]) {
        assert!(table.len().is_multiple_of(GROUP_KEYS));
        if use_512() {
            // SAFETY: AVX-512 VAES detected.
            unsafe { leaf_round_keys_vaes512(kd, first, table) }
        } else {
            debug_assert!(has_vaes256());
            // SAFETY: `RoundKeys` exist only when one of the two VAES levels was detected.
            unsafe { leaf_round_keys_vaes256(kd, first, table) }
        }
    }

    #[inline(always)]
    fn m128(x: u128) -> [u64; 2] {
        [x as u64, (x >> 64) as u64]
    }

    /// The three partial sums of carry-less products kept by the proof kernels: `lo` of the
    /// low halves, `hi` of the high halves, `mid` of the cross terms. The 256-bit total is
    /// `lo ^ (mid << 64) ^ (hi << 128)`, folded once at the end (every step is linear).
    fn fold(lo: u128, mid: u128, hi: u128) -> [u128; 2] {
        [lo ^ (mid << 64), hi ^ (mid >> 64)]
    }

    /// One leaf's term of [`proof_vaes512`] with AES-NI and PCLMULQDQ (the kernels'
    /// remainders): returns its `(lo, mid, hi)` partial products.
    #[target_feature(enable = "aes,pclmulqdq,sse2")]
    fn proof_one(
        table: &[u128],
        coeffs: &[u128],
        i: usize,
        v: u128,
        salt: u128,
        cs: &[u128; 4],
    ) -> [u128; 3] {
        let ld = |x: &u128| {
            // SAFETY: one u128 is 16 readable bytes.
            unsafe { _mm_loadu_si128((x as *const u128).cast()) }
        };
        let w = _mm_xor_si128(ld(&v), ld(&salt));
        let m = _mm_set1_epi64x(0u64.wrapping_sub((v & 1) as u64) as i64);
        let base = (i / 4) * GROUP_KEYS + i % 4;
        let (mut lo, mut mid, mut hi) = (
            _mm_setzero_si128(),
            _mm_setzero_si128(),
            _mm_setzero_si128(),
        );
        for (j, csj) in cs.iter().enumerate() {
            let rk = |r: usize| ld(&table[base + (j * 11 + r) * 4]);
            let mut st = _mm_xor_si128(w, rk(0));
            for r in 1..10 {
                st = _mm_aesenc_si128(st, rk(r));
            }
            st = _mm_aesenclast_si128(st, rk(10));
            let [cl, ch] = m128(*csj);
            let p = _mm_xor_si128(
                _mm_xor_si128(st, w),
                _mm_and_si128(m, _mm_set_epi64x(ch as i64, cl as i64)),
            );
            let k = ld(&coeffs[(i / 4 * 4 + j) * 4 + i % 4]);
            lo = _mm_xor_si128(lo, _mm_clmulepi64_si128::<0x00>(p, k));
            hi = _mm_xor_si128(hi, _mm_clmulepi64_si128::<0x11>(p, k));
            mid = _mm_xor_si128(
                mid,
                _mm_xor_si128(
                    _mm_clmulepi64_si128::<0x01>(p, k),
                    _mm_clmulepi64_si128::<0x10>(p, k),
                ),
            );
        }
        let mut out = [0u128; 3];
        for (o, x) in out.iter_mut().zip([lo, mid, hi]) {
            // SAFETY: `o` is 16 writable bytes.
            unsafe { _mm_storeu_si128((o as *mut u128).cast(), x) };
        }
        out
    }

    /// `G` consecutive groups of four leaves of [`proof_vaes512`] from group `g0`, `4 G`
    /// Davies-Meyer chains in flight; adds each proof block's carry-less product with its
    /// coefficient to `acc` (`lo`, `mid`, `hi`).
    #[target_feature(enable = "avx512f,vaes,vpclmulqdq,aes")]
    fn proof_groups_512<const G: usize>(
        table: &[u128],
        coeffs: &[u128],
        nodes: &[u128],
        sv: __m512i,
        csv: &[__m512i; 4],
        g0: usize,
        acc: &mut [__m512i; 3],
    ) {
        let one = _mm512_set_epi64(0, 1, 0, 1, 0, 1, 0, 1);
        let zero = _mm512_setzero_si512();
        let at = 4 * g0;
        let rows = &table[g0 * GROUP_KEYS..(g0 + G) * GROUP_KEYS];
        let kap = &coeffs[g0 * 16..(g0 + G) * 16];
        assert!(nodes.len() >= at + 4 * G);
        // SAFETY: nodes `at..at + 4 G` exist (asserted); unaligned loads.
        let v: [__m512i; G] = core::array::from_fn(|i| unsafe {
            _mm512_loadu_si512(nodes.as_ptr().add(at + 4 * i).cast())
        });
        let w: [__m512i; G] = core::array::from_fn(|i| _mm512_xor_si512(v[i], sv));
        // All ones in a lane whose control bit is set (branch-free).
        let m: [__m512i; G] = core::array::from_fn(|i| {
            _mm512_shuffle_epi32::<0x44>(_mm512_sub_epi64(zero, _mm512_and_si512(v[i], one)))
        });
        let rk = rows.as_ptr().cast::<__m512i>();
        // SAFETY: group `i < G`'s entry `j * 11 + r < 44` lies in `rows` (G groups of 44
        // 64-byte entries).
        let key = |i: usize, j: usize, r: usize| unsafe {
            _mm512_loadu_si512(rk.add(i * 44 + j * 11 + r))
        };
        let mut s: [[__m512i; 4]; G] = core::array::from_fn(|i| {
            core::array::from_fn(|j| _mm512_xor_si512(w[i], key(i, j, 0)))
        });
        for r in 1..10 {
            for (i, si) in s.iter_mut().enumerate() {
                for (j, sij) in si.iter_mut().enumerate() {
                    *sij = _mm512_aesenc_epi128(*sij, key(i, j, r));
                }
            }
        }
        let [mut lo, mut mid, mut hi] = *acc;
        for (i, si) in s.into_iter().enumerate() {
            for (j, sij) in si.into_iter().enumerate() {
                let h = _mm512_aesenclast_epi128(sij, key(i, j, 10));
                let p = _mm512_ternarylogic_epi64::<0x96>(h, w[i], _mm512_and_si512(m[i], csv[j]));
                // SAFETY: group `i`'s block `j` coefficients: 4 u128 inside `kap`.
                let k = unsafe { _mm512_loadu_si512(kap.as_ptr().add(16 * i + 4 * j).cast()) };
                lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128::<0x00>(p, k));
                hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128::<0x11>(p, k));
                mid = _mm512_ternarylogic_epi64::<0x96>(
                    mid,
                    _mm512_clmulepi64_epi128::<0x01>(p, k),
                    _mm512_clmulepi64_epi128::<0x10>(p, k),
                );
            }
        }
        *acc = [lo, mid, hi];
    }

    /// The audit sum of one key over a run of leaves: for each group of four leaves, the four
    /// Davies-Meyer proof blocks under the leaves' own round keys (from `table`), corrected by
    /// `cs` under the control-bit mask, each multiplied (carry-less) by its coefficient from
    /// `coeffs` and added up. Nothing but the sum leaves the registers.
    #[target_feature(enable = "avx512f,vaes,vpclmulqdq,aes,pclmulqdq")]
    fn proof_vaes512(
        table: &[u128],
        coeffs: &[u128],
        nodes: &[u128],
        salt: u128,
        cs: &[u128; 4],
    ) -> [u128; 2] {
        let b = |x: u128| {
            let [lo, hi] = m128(x);
            _mm512_broadcast_i32x4(_mm_set_epi64x(hi as i64, lo as i64))
        };
        let sv = b(salt);
        let csv: [__m512i; 4] = core::array::from_fn(|j| b(cs[j]));
        let mut acc = [_mm512_setzero_si512(); 3];
        let groups = nodes.len() / 4;
        let mut g = 0;
        while g + 4 <= groups {
            proof_groups_512::<4>(table, coeffs, nodes, sv, &csv, g, &mut acc);
            g += 4;
        }
        while g < groups {
            proof_groups_512::<1>(table, coeffs, nodes, sv, &csv, g, &mut acc);
            g += 1;
        }
        let mut parts = [0u128; 3];
        for (p, a) in parts.iter_mut().zip(acc) {
            let mut lanes = [0u128; 4];
            // SAFETY: `lanes` is 64 writable bytes.
            unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), a) };
            *p = lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
        }
        for (i, &node) in nodes.iter().enumerate().skip(4 * groups) {
            let t = proof_one(table, coeffs, i, node, salt, cs);
            for (p, x) in parts.iter_mut().zip(t) {
                *p ^= x;
            }
        }
        fold(parts[0], parts[1], parts[2])
    }

    /// [`proof_vaes512`] on 256-bit registers: a group's four leaves as two halves.
    #[target_feature(enable = "avx2,vaes,vpclmulqdq,aes,pclmulqdq")]
    fn proof_vaes256(
        table: &[u128],
        coeffs: &[u128],
        nodes: &[u128],
        salt: u128,
        cs: &[u128; 4],
    ) -> [u128; 2] {
        let b = |x: u128| {
            let [lo, hi] = m128(x);
            _mm256_broadcastsi128_si256(_mm_set_epi64x(hi as i64, lo as i64))
        };
        let sv = b(salt);
        let csv: [__m256i; 4] = core::array::from_fn(|j| b(cs[j]));
        let one = _mm256_set_epi64x(0, 1, 0, 1);
        let zero = _mm256_setzero_si256();
        let (mut lo, mut mid, mut hi) = (zero, zero, zero);
        let groups = nodes.len() / 4;
        for g in 0..groups {
            let rk = table[g * GROUP_KEYS..(g + 1) * GROUP_KEYS]
                .as_ptr()
                .cast::<__m256i>();
            let kap = &coeffs[g * 16..(g + 1) * 16];
            let at = 4 * g;
            // SAFETY: nodes `at..at + 4` exist (`g < nodes.len() / 4`).
            let v: [__m256i; 2] = core::array::from_fn(|h| unsafe {
                _mm256_loadu_si256(nodes.as_ptr().add(at + 2 * h).cast())
            });
            let w: [__m256i; 2] = core::array::from_fn(|h| _mm256_xor_si256(v[h], sv));
            let m: [__m256i; 2] = core::array::from_fn(|h| {
                _mm256_shuffle_epi32::<0x44>(_mm256_sub_epi64(zero, _mm256_and_si256(v[h], one)))
            });
            // SAFETY: half `h` of entry `j * 11 + r < 44` of the group's entries.
            let key = |h: usize, j: usize, r: usize| unsafe {
                _mm256_loadu_si256(rk.add((j * 11 + r) * 2 + h))
            };
            let mut s: [[__m256i; 4]; 2] = core::array::from_fn(|h| {
                core::array::from_fn(|j| _mm256_xor_si256(w[h], key(h, j, 0)))
            });
            for r in 1..10 {
                for (h, sh) in s.iter_mut().enumerate() {
                    for (j, shj) in sh.iter_mut().enumerate() {
                        *shj = _mm256_aesenc_epi128(*shj, key(h, j, r));
                    }
                }
            }
            for (h, sh) in s.into_iter().enumerate() {
                for (j, shj) in sh.into_iter().enumerate() {
                    let x = _mm256_aesenclast_epi128(shj, key(h, j, 10));
                    let p =
                        _mm256_xor_si256(_mm256_xor_si256(x, w[h]), _mm256_and_si256(m[h], csv[j]));
                    // SAFETY: leaves `2 h, 2 h + 1` of block `j`: 2 u128 inside `kap`.
                    let k = unsafe { _mm256_loadu_si256(kap.as_ptr().add(4 * j + 2 * h).cast()) };
                    lo = _mm256_xor_si256(lo, _mm256_clmulepi64_epi128::<0x00>(p, k));
                    hi = _mm256_xor_si256(hi, _mm256_clmulepi64_epi128::<0x11>(p, k));
                    mid = _mm256_xor_si256(
                        mid,
                        _mm256_xor_si256(
                            _mm256_clmulepi64_epi128::<0x01>(p, k),
                            _mm256_clmulepi64_epi128::<0x10>(p, k),
                        ),
                    );
                }
            }
        }
        let mut parts = [0u128; 3];
        for (p, a) in parts.iter_mut().zip([lo, mid, hi]) {
            let mut lanes = [0u128; 2];
            // SAFETY: `lanes` is 32 writable bytes.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), a) };
            *p = lanes[0] ^ lanes[1];
        }
        for (i, &node) in nodes.iter().enumerate().skip(4 * groups) {
            let t = proof_one(table, coeffs, i, node, salt, cs);
            for (p, x) in parts.iter_mut().zip(t) {
                *p ^= x;
            }
        }
        fold(parts[0], parts[1], parts[2])
    }

    /// See [`proof_vaes512`]. `table` and `coeffs` must cover at least `nodes.len()` leaves.
    pub(crate) fn proof_sum(
        table: &[u128],
        coeffs: &[u128],
        nodes: &[u128],
        salt: u128,
        cs: &[u128; 4],
    ) -> [u128; 2] {
        assert!(
            table.len() >= leaf_table_len(nodes.len())
                && coeffs.len() >= nodes.len().div_ceil(4) * 16
        );
        if use_512() {
            // SAFETY: AVX-512 VAES and VPCLMULQDQ detected.
            unsafe { proof_vaes512(table, coeffs, nodes, salt, cs) }
        } else {
            debug_assert!(has_vaes256());
            // SAFETY: the table exists only when one of the two vector levels was detected.
            unsafe { proof_vaes256(table, coeffs, nodes, salt, cs) }
        }
    }

    /// Register-blocked PIR loop for `G` keys and `S` 64-byte column stripes starting at byte
    /// `s0` of each row: the `G * S` accumulators stay in registers while every row streams
    /// past; each stripe of a row is loaded once and XORed into every accumulator under that
    /// key's mask byte (an AVX-512 write mask, all lanes or none, so no branch on the
    /// selection bits).
    #[target_feature(enable = "avx512f,avx512bw")]
    fn rows_512_block<const G: usize, const S: usize>(
        acc: &mut [Vec<u8>],
        rows: &[u8],
        row_len: usize,
        s0: usize,
        masks: &[u8],
        mstride: usize,
    ) {
        let n = rows.len() / row_len;
        // Every stripe starts inside the row (the caller picks S); the last may be partial.
        let lanes: [__mmask64; S] = core::array::from_fn(|j| {
            let w = (row_len - (s0 + 64 * j)).min(64);
            if w == 64 { !0 } else { (1u64 << w) - 1 }
        });
        let mut a = [[_mm512_setzero_si512(); S]; G];
        #[allow(clippy::needless_range_loop)]
        for k in 0..G {
            let src = &acc[k][s0..];
            for j in 0..S {
                // SAFETY: the stripe starts inside `src` and its lane mask covers at most the
                // bytes left in it.
                a[k][j] =
                    unsafe { _mm512_maskz_loadu_epi8(lanes[j], src.as_ptr().add(64 * j).cast()) };
            }
        }
        assert!(acc.len() == G && G > 0 && masks.len() >= (G - 1) * mstride + n && mstride >= n);
        for r in 0..n {
            let row = &rows[r * row_len + s0..(r + 1) * row_len];
            // SAFETY: as for the accumulators: inside the row, lane mask within its bytes.
            let v: [__m512i; S] = core::array::from_fn(|j| unsafe {
                _mm512_maskz_loadu_epi8(lanes[j], row.as_ptr().add(64 * j).cast())
            });
            #[allow(clippy::needless_range_loop)]
            for k in 0..G {
                // SAFETY: `k * mstride + r < (G - 1) * mstride + n <= masks.len()` (asserted).
                let m = unsafe { *masks.get_unchecked(k * mstride + r) };
                for j in 0..S {
                    a[k][j] = _mm512_mask_xor_epi64(a[k][j], m, a[k][j], v[j]);
                }
            }
        }
        #[allow(clippy::needless_range_loop)]
        for k in 0..G {
            let dst = &mut acc[k][s0..];
            for j in 0..S {
                // SAFETY: as for the loads.
                unsafe {
                    _mm512_mask_storeu_epi8(dst.as_mut_ptr().add(64 * j).cast(), lanes[j], a[k][j])
                };
            }
        }
    }

    /// The PIR row loop on AVX-512: keys in groups of [`super::PIR_GROUP`], columns in sets
    /// of up to four 64-byte stripes, one register-blocked sweep over the rows for each.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn rows_512(acc: &mut [Vec<u8>], rows: &[u8], row_len: usize, masks: &[u8], mstride: usize) {
        let stripes = row_len.div_ceil(64);
        for (g, accs) in acc.chunks_mut(super::PIR_GROUP).enumerate() {
            let m = &masks[g * super::PIR_GROUP * mstride..];
            for s in (0..stripes).step_by(4) {
                let s0 = 64 * s;
                macro_rules! sweep {
                    ($g:literal) => {
                        match (stripes - s).min(4) {
                            1 => rows_512_block::<$g, 1>(accs, rows, row_len, s0, m, mstride),
                            2 => rows_512_block::<$g, 2>(accs, rows, row_len, s0, m, mstride),
                            3 => rows_512_block::<$g, 3>(accs, rows, row_len, s0, m, mstride),
                            _ => rows_512_block::<$g, 4>(accs, rows, row_len, s0, m, mstride),
                        }
                    };
                }
                match accs.len() {
                    1 => sweep!(1),
                    2 => sweep!(2),
                    3 => sweep!(3),
                    4 => sweep!(4),
                    5 => sweep!(5),
                    _ => sweep!(6),
                }
            }
        }
    }

    /// `out[i] = 0xff` if bit `i` of the little-endian bit string `bits` is set, else 0.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn expand_bits_512(bits: &[u128], out: &mut [u8]) {
        let words = bits.iter().flat_map(|b| [*b as u64, (*b >> 64) as u64]);
        for (o, w) in out.chunks_mut(64).zip(words) {
            let v = _mm512_movm_epi8(w);
            // SAFETY: the store mask covers at most `o.len()` bytes.
            let lanes: __mmask64 = if o.len() == 64 {
                !0
            } else {
                (1u64 << o.len()) - 1
            };
            unsafe { _mm512_mask_storeu_epi8(o.as_mut_ptr().cast(), lanes, v) };
        }
    }

    pub(crate) fn expand_bits(bits: &[u128], out: &mut [u8]) -> bool {
        if use_avx512bw() {
            // SAFETY: features detected.
            unsafe { expand_bits_512(bits, out) };
            true
        } else if has_avx2() {
            // SAFETY: feature detected.
            unsafe { expand_bits_256(bits, out) };
            true
        } else {
            false
        }
    }

    /// [`rows_512_block`] on AVX2: `G` keys and `S` 32-byte column stripes from byte `s0`, all
    /// stripes inside the row. The mask byte is broadcast to a register and ANDed (no branch).
    #[target_feature(enable = "avx2")]
    fn rows_256_block<const G: usize, const S: usize>(
        acc: &mut [Vec<u8>],
        rows: &[u8],
        row_len: usize,
        s0: usize,
        masks: &[u8],
        mstride: usize,
    ) {
        let n = rows.len() / row_len;
        assert!(acc.len() == G && G > 0 && masks.len() >= (G - 1) * mstride + n && mstride >= n);
        assert!(s0 + 32 * S <= row_len && acc.iter().all(|a| a.len() >= row_len));
        let mut a = [[_mm256_setzero_si256(); S]; G];
        #[allow(clippy::needless_range_loop)]
        for k in 0..G {
            for j in 0..S {
                // SAFETY: `s0 + 32 * (j + 1) <= row_len <= acc[k].len()` (asserted).
                a[k][j] = unsafe { _mm256_loadu_si256(acc[k].as_ptr().add(s0 + 32 * j).cast()) };
            }
        }
        for r in 0..n {
            let row = &rows[r * row_len + s0..r * row_len + s0 + 32 * S];
            // SAFETY: `row` is `32 * S` bytes.
            let v: [__m256i; S] = core::array::from_fn(|j| unsafe {
                _mm256_loadu_si256(row.as_ptr().add(32 * j).cast())
            });
            #[allow(clippy::needless_range_loop)]
            for k in 0..G {
                // SAFETY: `k * mstride + r < (G - 1) * mstride + n <= masks.len()` (asserted).
                let m = _mm256_set1_epi8(unsafe { *masks.get_unchecked(k * mstride + r) } as i8);
                for j in 0..S {
                    a[k][j] = _mm256_xor_si256(a[k][j], _mm256_and_si256(v[j], m));
                }
            }
        }
        #[allow(clippy::needless_range_loop)]
        for k in 0..G {
            for j in 0..S {
                // SAFETY: as for the loads.
                unsafe {
                    _mm256_storeu_si256(acc[k].as_mut_ptr().add(s0 + 32 * j).cast(), a[k][j])
                };
            }
        }
    }

    /// The PIR row loop on AVX2: keys in groups of [`super::PIR_GROUP`], columns in pairs of
    /// 32-byte stripes (12 accumulators, 2 row and 1 mask register of the 16), a row's last
    /// `row_len % 32` bytes by the portable loop.
    #[target_feature(enable = "avx2")]
    fn rows_256(acc: &mut [Vec<u8>], rows: &[u8], row_len: usize, masks: &[u8], mstride: usize) {
        let full = row_len / 32;
        for (g, accs) in acc.chunks_mut(super::PIR_GROUP).enumerate() {
            let m = &masks[g * super::PIR_GROUP * mstride..];
            for s in (0..full).step_by(2) {
                let s0 = 32 * s;
                macro_rules! sweep {
                    ($g:literal) => {
                        match full - s {
                            1 => rows_256_block::<$g, 1>(accs, rows, row_len, s0, m, mstride),
                            _ => rows_256_block::<$g, 2>(accs, rows, row_len, s0, m, mstride),
                        }
                    };
                }
                match accs.len() {
                    1 => sweep!(1),
                    2 => sweep!(2),
                    3 => sweep!(3),
                    4 => sweep!(4),
                    5 => sweep!(5),
                    _ => sweep!(6),
                }
            }
            let t0 = full * 32;
            if t0 < row_len {
                for (r, row) in rows.chunks_exact(row_len).enumerate() {
                    for (k, a) in accs.iter_mut().enumerate() {
                        super::masked_xor_portable(&mut a[t0..], &row[t0..], m[k * mstride + r]);
                    }
                }
            }
        }
    }

    /// [`expand_bits_512`] on AVX2: each 32-bit word of the bit string is broadcast, its byte
    /// `i / 8` shuffled into output byte `i`, and bit `i % 8` of it compared to all ones.
    #[target_feature(enable = "avx2")]
    fn expand_bits_256(bits: &[u128], out: &mut [u8]) {
        let pick = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let words = bits.iter().flat_map(|b| {
            [
                *b as u32,
                (*b >> 32) as u32,
                (*b >> 64) as u32,
                (*b >> 96) as u32,
            ]
        });
        for (o, w) in out.chunks_mut(32).zip(words) {
            let x = _mm256_shuffle_epi8(_mm256_set1_epi32(w as i32), pick);
            let v = _mm256_cmpeq_epi8(_mm256_and_si256(x, bit), bit);
            if o.len() == 32 {
                // SAFETY: `o` is 32 writable bytes.
                unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), v) };
            } else {
                let mut t = [0u8; 32];
                // SAFETY: `t` is 32 writable bytes.
                unsafe { _mm256_storeu_si256(t.as_mut_ptr().cast(), v) };
                o.copy_from_slice(&t[..o.len()]);
            }
        }
    }

    /// Dispatches the PIR row loop to the widest vector unit present.
    pub(crate) fn rows(
        acc: &mut [Vec<u8>],
        rows: &[u8],
        row_len: usize,
        masks: &[u8],
        mstride: usize,
    ) -> bool {
        if use_avx512bw() {
            // SAFETY: features detected.
            unsafe { rows_512(acc, rows, row_len, masks, mstride) };
            true
        } else if has_avx2() {
            // SAFETY: feature detected.
            unsafe { rows_256(acc, rows, row_len, masks, mstride) };
            true
        } else {
            false
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{
    RoundKeys, expand_key, leaf_round_keys, leaf_table_len, mmo, payload_xor, proof_sum,
};
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) use x86::{has_vaes256, with_256_bit_kernels};

/// `acc ^= row & m` bytewise (`m` is 0 or 0xff).
#[inline(always)]
pub(crate) fn masked_xor_portable(acc: &mut [u8], row: &[u8], m: u8) {
    for (a, r) in acc.iter_mut().zip(row) {
        *a ^= r & m;
    }
}

/// Keys per register block of the PIR kernel: 6 keys x 4 stripes of 64 bytes are 24
/// accumulator registers, plus 4 for the row, of AVX-512's 32.
pub(crate) const PIR_GROUP: usize = 6;

/// For each row `r` of `rows` and each accumulator `k`:
/// `acc[k] ^= row_r & masks[k * mstride + r]` (mask bytes 0 or 0xff, one run per key).
#[inline(always)]
pub(crate) fn rows_portable(
    acc: &mut [Vec<u8>],
    rows: &[u8],
    row_len: usize,
    masks: &[u8],
    mstride: usize,
    xor: impl Fn(&mut [u8], &[u8], u8),
) {
    for (r, row) in rows.chunks_exact(row_len).enumerate() {
        for (k, a) in acc.iter_mut().enumerate() {
            xor(a, row, masks[k * mstride + r]);
        }
    }
}

/// The PIR row loop on the best kernel for this CPU (see [`rows_portable`]).
pub(crate) fn pir_rows(
    acc: &mut [Vec<u8>],
    rows: &[u8],
    row_len: usize,
    masks: &[u8],
    mstride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if x86::rows(acc, rows, row_len, masks, mstride) {
        return;
    }
    rows_portable(acc, rows, row_len, masks, mstride, masked_xor_portable)
}

/// The PIR row loop on the portable kernel (for tests).
#[cfg(test)]
pub(crate) fn pir_rows_portable(
    acc: &mut [Vec<u8>],
    rows: &[u8],
    row_len: usize,
    masks: &[u8],
    mstride: usize,
) {
    rows_portable(acc, rows, row_len, masks, mstride, masked_xor_portable)
}

/// `out[i] = 0xff` if bit `i` of the little-endian bit string `bits` is set, else 0
/// (branch-free; `bits` holds at least `out.len()` bits).
pub(crate) fn expand_bits(bits: &[u128], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if x86::expand_bits(bits, out) {
        return;
    }
    expand_bits_portable(bits, out)
}

pub(crate) fn expand_bits_portable(bits: &[u128], out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = 0u8.wrapping_sub(((bits[i / 128] >> (i % 128)) & 1) as u8);
    }
}
