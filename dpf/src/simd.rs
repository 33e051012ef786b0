//! Hand-written x86-64 kernels (VAES fixed-key hash on AVX-512 or, without it, on 256-bit AVX2
//! registers; AVX-512 / AVX2 masked XOR), with run-time detection and the portable code of
//! `prg.rs` and `read.rs` as the fallback.
//!
//! This is the only module of the crate with `unsafe` code: unaligned vector loads and stores
//! within slice bounds checked by the loops, and calls to `#[target_feature]` functions after
//! the features were detected at run time. `prg::tests::vaes_agrees_with_portable` and
//! `read::tests::pir_kernels_agree` check that every kernel gives exactly the portable bytes.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;
    use std::sync::OnceLock;

    /// AES-128 round keys.
    #[derive(Clone, Copy)]
    pub(crate) struct RoundKeys([__m128i; 11]);

    /// Whether the CPU has VAES with AVX-512 (checked once).
    pub(crate) fn has_vaes512() -> bool {
        static V: OnceLock<bool> = OnceLock::new();
        *V.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("vaes")
                && std::is_x86_feature_detected!("aes")
        })
    }

    /// Whether the CPU has VAES on 256-bit registers (AVX2 class, e.g. without AVX-512).
    pub(crate) fn has_vaes256() -> bool {
        static V: OnceLock<bool> = OnceLock::new();
        *V.get_or_init(|| {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("vaes")
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

    /// [`cbc2_xor_sum_vaes512`] one block at a time with AES-NI (the kernels' remainders).
    #[target_feature(enable = "aes,sse2")]
    fn cbc2_xor_sum_one_by_one(rk: &RoundKeys, lo: &[u128], hi: &[u128]) -> u128 {
        let mut sum = 0u128;
        for (l, h) in lo.iter().zip(hi) {
            // SAFETY: each is one 16-byte u128.
            let l = unsafe { _mm_loadu_si128((l as *const u128).cast()) };
            let h = unsafe { _mm_loadu_si128((h as *const u128).cast()) };
            let v = aes1(rk, _mm_xor_si128(aes1(rk, l), h));
            let mut out = 0u128;
            // SAFETY: `out` is 16 writable bytes.
            unsafe { _mm_storeu_si128((&mut out as *mut u128).cast(), v) };
            sum ^= out;
        }
        sum
    }

    /// XOR over `i` of `AES(AES(lo[i]) ^ hi[i])`.
    #[target_feature(enable = "avx512f,vaes,aes")]
    fn cbc2_xor_sum_vaes512(rk: &RoundKeys, lo: &[u128], hi: &[u128]) -> u128 {
        let k: [__m512i; 11] = core::array::from_fn(|i| _mm512_broadcast_i32x4(rk.0[i]));
        let mut acc = _mm512_setzero_si512();
        let n = lo.len().min(hi.len());
        let full = n - n % 16;
        for at in (0..full).step_by(16) {
            let (l, h) = (&lo[at..at + 16], &hi[at..at + 16]);
            let (pl, ph) = (l.as_ptr().cast::<__m512i>(), h.as_ptr().cast::<__m512i>());
            // SAFETY: `l` and `h` are 16 u128 = 4 x 64 bytes each; unaligned loads.
            let x: [__m512i; 4] =
                core::array::from_fn(|i| unsafe { _mm512_loadu_si512(pl.add(i)) });
            let s = aes4(&k, x);
            // SAFETY: as above.
            let y: [__m512i; 4] = core::array::from_fn(|i| {
                _mm512_xor_si512(s[i], unsafe { _mm512_loadu_si512(ph.add(i)) })
            });
            for v in aes4(&k, y) {
                acc = _mm512_xor_si512(acc, v);
            }
        }
        let mut lanes = [0u128; 4];
        // SAFETY: `lanes` is 64 writable bytes.
        unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), acc) };
        lanes[0]
            ^ lanes[1]
            ^ lanes[2]
            ^ lanes[3]
            ^ cbc2_xor_sum_one_by_one(rk, &lo[full..n], &hi[full..n])
    }

    pub(crate) fn cbc2_xor_sum(rk: &RoundKeys, lo: &[u128], hi: &[u128]) -> u128 {
        if use_512() {
            // SAFETY: AVX-512 VAES detected.
            unsafe { cbc2_xor_sum_vaes512(rk, lo, hi) }
        } else {
            debug_assert!(has_vaes256());
            // SAFETY: `RoundKeys` exist only when one of the two VAES levels was detected.
            unsafe { cbc2_xor_sum_vaes256(rk, lo, hi) }
        }
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

    /// [`cbc2_xor_sum_vaes512`] on 256-bit registers.
    #[target_feature(enable = "avx2,vaes,aes")]
    fn cbc2_xor_sum_vaes256(rk: &RoundKeys, lo: &[u128], hi: &[u128]) -> u128 {
        let k = keys256(rk);
        let mut acc = _mm256_setzero_si256();
        let n = lo.len().min(hi.len());
        let full = n - n % 16;
        for at in (0..full).step_by(16) {
            let (l, h) = (&lo[at..at + 16], &hi[at..at + 16]);
            let (pl, ph) = (l.as_ptr().cast::<__m256i>(), h.as_ptr().cast::<__m256i>());
            // SAFETY: `l` and `h` are 16 u128 = 8 x 32 bytes each; unaligned loads.
            let x: [__m256i; 8] =
                core::array::from_fn(|i| unsafe { _mm256_loadu_si256(pl.add(i)) });
            let s = aes8(&k, x);
            // SAFETY: as above.
            let y: [__m256i; 8] = core::array::from_fn(|i| {
                _mm256_xor_si256(s[i], unsafe { _mm256_loadu_si256(ph.add(i)) })
            });
            for v in aes8(&k, y) {
                acc = _mm256_xor_si256(acc, v);
            }
        }
        let mut lanes = [0u128; 2];
        // SAFETY: `lanes` is 32 writable bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
        lanes[0] ^ lanes[1] ^ cbc2_xor_sum_one_by_one(rk, &lo[full..n], &hi[full..n])
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
pub(crate) use x86::{RoundKeys, cbc2_xor_sum, expand_key, mmo, payload_xor};
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
