//! Every CUDA kernel against `octet_kernels::reference` (or, for the FP8 codes, the
//! `octet_core::fp8` codec that the reference uses) on random data, in f32 and bf16 storage.
//!
//! Without the `cuda` feature only the stub is checked. With it, each test opens device 0 and returns
//! early with a message on stderr when there is no driver or GPU, so `cargo test --features cuda`
//! stays green on a CPU machine; on the GPU machine they are the kernel checks of `bench/gpu.sh`.

#[cfg(not(feature = "cuda"))]
#[test]
fn stub_says_cuda_is_not_built_in() {
    const { assert!(!octet_cuda::BUILT_WITH_CUDA) };
    let msg = octet_cuda::probe().unwrap_err();
    assert!(msg.contains("not built in"), "{msg}");
}

#[cfg(feature = "cuda")]
mod device {
    use half::bf16;
    use octet_core::fp8::{self, Fp8Format};
    use octet_core::{Rng, Tolerance};
    use std::sync::Arc;

    use octet_core::Layout;
    use octet_core::scaling::{ScalingMeta, ScalingMode};
    use octet_core::{ScaledBuf, StateFormat};
    use octet_cuda::optim::{AdamCoeffs, O2AdamW, O2HostState};
    use octet_cuda::scaling::DeviceScaling;
    use octet_cuda::{AttentionKernel, Gpu};
    use octet_kernels::cpu::adamw_update as adamw_fast;
    use octet_kernels::reference;
    use octet_optim::{AdamWConfig, Fp8AdamW};

    /// Device 0, or `None` after saying why the test is skipped.
    fn gpu(test: &str) -> Option<Gpu> {
        match Gpu::new(0) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("SKIPPED {test}: {e}");
                None
            }
        }
    }

    fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (rng.normal() * std) as f32).collect()
    }

    fn to_bf16(x: &[f32]) -> Vec<bf16> {
        x.iter().map(|&v| bf16::from_f32(v)).collect()
    }

    fn from_bf16(x: &[bf16]) -> Vec<f32> {
        x.iter().map(|v| v.to_f32()).collect()
    }

    /// Sizes that are not multiples of a block or a warp, so every tail path runs.
    const N: usize = 37 * 257;

    #[test]
    fn residual_matches_reference() {
        let Some(g) = gpu("residual_matches_reference") else { return };
        let s = g.stream();
        let mut rng = Rng::new(1);
        let (a, b) = (normal(&mut rng, N, 1.0), normal(&mut rng, N, 1.0));
        let mut want = vec![0.0f32; N];
        reference::residual_forward(&mut want, &a, &b);

        let (da, db) = (s.clone_htod(&a).unwrap(), s.clone_htod(&b).unwrap());
        let mut out = s.alloc_zeros::<f32>(N).unwrap();
        g.residual_forward(&mut out, &da, &db).unwrap();
        Tolerance::F32.assert_close("residual f32", &s.clone_dtoh(&out).unwrap(), &want);

        let (a16, b16) = (to_bf16(&a), to_bf16(&b));
        reference::residual_forward(&mut want, &from_bf16(&a16), &from_bf16(&b16));
        let (da, db) = (s.clone_htod(&a16).unwrap(), s.clone_htod(&b16).unwrap());
        let mut out = s.alloc_zeros::<bf16>(N).unwrap();
        g.residual_forward(&mut out, &da, &db).unwrap();
        Tolerance::BF16.assert_close("residual bf16", &from_bf16(&s.clone_dtoh(&out).unwrap()), &want);
    }

    #[test]
    fn gelu_forward_and_backward_match_reference() {
        let Some(g) = gpu("gelu_forward_and_backward_match_reference") else { return };
        let s = g.stream();
        let mut rng = Rng::new(2);
        let (x, dout) = (normal(&mut rng, N, 2.0), normal(&mut rng, N, 1.0));
        let (mut want_y, mut want_dx) = (vec![0.0f32; N], vec![0.0f32; N]);
        reference::gelu_forward(&mut want_y, &x);
        reference::gelu_backward(&mut want_dx, &x, &dout);

        let (dx_in, dd) = (s.clone_htod(&x).unwrap(), s.clone_htod(&dout).unwrap());
        let mut y = s.alloc_zeros::<f32>(N).unwrap();
        let mut dx = s.alloc_zeros::<f32>(N).unwrap();
        g.gelu_forward(&mut y, &dx_in).unwrap();
        g.gelu_backward(&mut dx, &dx_in, &dd).unwrap();
        Tolerance::F32.assert_close("gelu_forward f32", &s.clone_dtoh(&y).unwrap(), &want_y);
        Tolerance::F32.assert_close("gelu_backward f32", &s.clone_dtoh(&dx).unwrap(), &want_dx);

        let (x16, d16) = (to_bf16(&x), to_bf16(&dout));
        reference::gelu_forward(&mut want_y, &from_bf16(&x16));
        reference::gelu_backward(&mut want_dx, &from_bf16(&x16), &from_bf16(&d16));
        let (dx_in, dd) = (s.clone_htod(&x16).unwrap(), s.clone_htod(&d16).unwrap());
        let mut y = s.alloc_zeros::<bf16>(N).unwrap();
        let mut dx = s.alloc_zeros::<bf16>(N).unwrap();
        g.gelu_forward(&mut y, &dx_in).unwrap();
        g.gelu_backward(&mut dx, &dx_in, &dd).unwrap();
        Tolerance::BF16.assert_close("gelu_forward bf16", &from_bf16(&s.clone_dtoh(&y).unwrap()), &want_y);
        Tolerance::BF16.assert_close("gelu_backward bf16", &from_bf16(&s.clone_dtoh(&dx).unwrap()), &want_dx);
    }

    #[test]
    fn bias_add_and_backward_match_reference() {
        let Some(g) = gpu("bias_add_and_backward_match_reference") else { return };
        let s = g.stream();
        let (n, oc) = (67, 301);
        let mut rng = Rng::new(3);
        let (x, bias, dout) = (normal(&mut rng, n * oc, 1.0), normal(&mut rng, oc, 1.0), normal(&mut rng, n * oc, 1.0));
        let dbias0 = normal(&mut rng, oc, 1.0);
        // bias add = matmul_forward with an identity weight and the bias.
        let eye: Vec<f32> = (0..oc * oc).map(|i| if i / oc == i % oc { 1.0 } else { 0.0 }).collect();
        let mut want = vec![0.0f32; n * oc];
        reference::matmul_forward(&mut want, &x, &eye, Some(&bias), n, oc, oc);
        let mut want_db = dbias0.clone();
        reference::bias_backward(&mut want_db, &dout, n, oc);

        let mut out = s.clone_htod(&x).unwrap();
        let (dbias_in, ddout) = (s.clone_htod(&bias).unwrap(), s.clone_htod(&dout).unwrap());
        let mut db = s.clone_htod(&dbias0).unwrap();
        g.bias_add(&mut out, &dbias_in, n, oc).unwrap();
        g.bias_backward(&mut db, &ddout, n, oc).unwrap();
        Tolerance::F32.assert_close("bias_add f32", &s.clone_dtoh(&out).unwrap(), &want);
        Tolerance::F32.assert_close("bias_backward f32", &s.clone_dtoh(&db).unwrap(), &want_db);

        let (x16, b16, d16, db16) = (to_bf16(&x), to_bf16(&bias), to_bf16(&dout), to_bf16(&dbias0));
        reference::matmul_forward(&mut want, &from_bf16(&x16), &eye, Some(&from_bf16(&b16)), n, oc, oc);
        let mut want_db = from_bf16(&db16);
        reference::bias_backward(&mut want_db, &from_bf16(&d16), n, oc);
        let mut out = s.clone_htod(&x16).unwrap();
        let (dbias_in, ddout) = (s.clone_htod(&b16).unwrap(), s.clone_htod(&d16).unwrap());
        let mut db = s.clone_htod(&db16).unwrap();
        g.bias_add(&mut out, &dbias_in, n, oc).unwrap();
        g.bias_backward(&mut db, &ddout, n, oc).unwrap();
        Tolerance::BF16.assert_close("bias_add bf16", &from_bf16(&s.clone_dtoh(&out).unwrap()), &want);
        // The column sum is formed in f32 and rounded once to bf16.
        Tolerance::BF16.assert_close("bias_backward bf16", &from_bf16(&s.clone_dtoh(&db).unwrap()), &want_db);
    }

    #[test]
    fn layernorm_forward_matches_reference() {
        let Some(g) = gpu("layernorm_forward_matches_reference") else { return };
        let s = g.stream();
        let (n, c) = (83, 768);
        let mut rng = Rng::new(4);
        // A row offset, so the two-pass variance matters.
        let x: Vec<f32> = normal(&mut rng, n * c, 1.0).iter().map(|v| v + 3.0).collect();
        let (w, b) = (normal(&mut rng, c, 1.0), normal(&mut rng, c, 1.0));
        let (mut want, mut want_m, mut want_r) = (vec![0.0f32; n * c], vec![0.0f32; n], vec![0.0f32; n]);
        reference::layernorm_forward(&mut want, &mut want_m, &mut want_r, &x, &w, &b, n, c);

        let (dx, dw, dbias) = (s.clone_htod(&x).unwrap(), s.clone_htod(&w).unwrap(), s.clone_htod(&b).unwrap());
        let mut out = s.alloc_zeros::<f32>(n * c).unwrap();
        let mut mean = s.alloc_zeros::<f32>(n).unwrap();
        let mut rstd = s.alloc_zeros::<f32>(n).unwrap();
        g.layernorm_forward(&mut out, &mut mean, &mut rstd, &dx, &dw, &dbias, n, c).unwrap();
        Tolerance::F32.assert_close("layernorm out f32", &s.clone_dtoh(&out).unwrap(), &want);
        Tolerance::F32.assert_close("layernorm mean", &s.clone_dtoh(&mean).unwrap(), &want_m);
        Tolerance::F32.assert_close("layernorm rstd", &s.clone_dtoh(&rstd).unwrap(), &want_r);

        let (x16, w16, b16) = (to_bf16(&x), to_bf16(&w), to_bf16(&b));
        reference::layernorm_forward(
            &mut want,
            &mut want_m,
            &mut want_r,
            &from_bf16(&x16),
            &from_bf16(&w16),
            &from_bf16(&b16),
            n,
            c,
        );
        let (dx, dw, dbias) = (s.clone_htod(&x16).unwrap(), s.clone_htod(&w16).unwrap(), s.clone_htod(&b16).unwrap());
        let mut out = s.alloc_zeros::<bf16>(n * c).unwrap();
        g.layernorm_forward(&mut out, &mut mean, &mut rstd, &dx, &dw, &dbias, n, c).unwrap();
        Tolerance::BF16.assert_close("layernorm out bf16", &from_bf16(&s.clone_dtoh(&out).unwrap()), &want);
        Tolerance::F32.assert_close("layernorm rstd (bf16 input)", &s.clone_dtoh(&rstd).unwrap(), &want_r);
    }

    /// Random values across the whole FP8 range at `scale` plus the edge cases: zeros of both signs,
    /// values that overflow (saturate), +-inf (saturate), and subnormals.
    fn fp8_inputs(rng: &mut Rng, format: Fp8Format, scale: f32) -> Vec<f32> {
        let mut x: Vec<f32> = (0..N)
            .map(|_| {
                let mag = (2.0f64).powf(rng.uniform() * 40.0 - 28.0) * format.max() as f64 / 2f64.powi(12);
                let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
                (sign * mag / scale as f64) as f32
            })
            .collect();
        let specials = [
            0.0,
            -0.0,
            format.max() * 4.0 / scale,
            -format.max() * 4.0 / scale,
            f32::INFINITY,
            f32::NEG_INFINITY,
            format.min_subnormal() * 0.5 / scale,
            format.min_subnormal() * 1.5 / scale,
            format.min_normal() / scale,
        ];
        x[..specials.len()].copy_from_slice(&specials);
        x
    }

    #[test]
    fn fp8_quantize_matches_codec_and_reference() {
        let Some(g) = gpu("fp8_quantize_matches_codec_and_reference") else { return };
        let s = g.stream();
        let mut rng = Rng::new(5);
        for format in Fp8Format::ALL {
            let scale = 8.0f32;
            let x = fp8_inputs(&mut rng, format, scale);
            let mut want_codes = vec![0u8; N];
            let want_amax = fp8::quantize(format, &x, scale, &mut want_codes);
            // The dequantised values are the reference's quantise-dequantise (finite inputs only:
            // the reference's amax of an infinite input is inf, as is the codec's).
            let mut want_qdq = vec![0.0f32; N];
            reference::qdq_fp8(&mut want_qdq, &x, format, scale);

            let dx = s.clone_htod(&x).unwrap();
            let mut codes = s.alloc_zeros::<u8>(N).unwrap();
            let mut amax = s.alloc_zeros::<u32>(1).unwrap();
            g.quantize_fp8(format, &mut codes, &mut amax, &dx, scale).unwrap();
            let got = s.clone_dtoh(&codes).unwrap();
            let name = format.name();
            Tolerance::EXACT.assert_close(&format!("{name} codes"), &got, &want_codes);
            let got_amax = f32::from_bits(s.clone_dtoh(&amax).unwrap()[0]);
            assert_eq!(got_amax, want_amax, "{name} amax");
            let mut got_qdq = vec![0.0f32; N];
            fp8::dequantize(format, &got, 1.0 / scale, &mut got_qdq);
            Tolerance::EXACT.assert_close(&format!("{name} dequantised"), &got_qdq, &want_qdq);

            // bf16 storage: the same codes as the codec applied to the bf16 values.
            let x16 = to_bf16(&x);
            fp8::quantize(format, &from_bf16(&x16), scale, &mut want_codes);
            let dx = s.clone_htod(&x16).unwrap();
            let mut amax = s.alloc_zeros::<u32>(1).unwrap();
            g.quantize_fp8(format, &mut codes, &mut amax, &dx, scale).unwrap();
            Tolerance::EXACT.assert_close(&format!("{name} codes (bf16)"), &s.clone_dtoh(&codes).unwrap(), &want_codes);
        }
    }

    #[test]
    fn fp8_qdq_matches_reference() {
        let Some(g) = gpu("fp8_qdq_matches_reference") else { return };
        let s = g.stream();
        let mut rng = Rng::new(12);
        for format in Fp8Format::ALL {
            let scale = 0.5f32;
            // Finite inputs only: the reference's qdq of inf is the saturated value, as the kernel's,
            // but keep the comparison to values an activation can hold.
            let x: Vec<f32> = fp8_inputs(&mut rng, format, scale).into_iter().filter(|v| v.is_finite()).collect();
            let mut want = vec![0.0f32; x.len()];
            let want_amax = reference::qdq_fp8(&mut want, &x, format, scale);
            let mut out = s.alloc_zeros::<f32>(x.len()).unwrap();
            let mut amax = s.alloc_zeros::<u32>(1).unwrap();
            g.qdq_fp8(format, &mut out, &mut amax, &s.clone_htod(&x).unwrap(), scale).unwrap();
            let name = format.name();
            // Decoding is exact and the scale a power of two: bit-identical.
            Tolerance::EXACT.assert_close(&format!("qdq {name} f32"), &s.clone_dtoh(&out).unwrap(), &want);
            assert_eq!(f32::from_bits(s.clone_dtoh(&amax).unwrap()[0]), want_amax, "qdq {name} amax");

            // bf16 storage: an FP8 value (<= 4 significant bits) times a power of two is a bf16.
            let x16 = from_bf16(&to_bf16(&x));
            reference::qdq_fp8(&mut want, &x16, format, scale);
            let mut out = s.alloc_zeros::<bf16>(x.len()).unwrap();
            let mut amax = s.alloc_zeros::<u32>(1).unwrap();
            g.qdq_fp8(format, &mut out, &mut amax, &s.clone_htod(&to_bf16(&x)).unwrap(), scale).unwrap();
            Tolerance::EXACT.assert_close(&format!("qdq {name} bf16"), &from_bf16(&s.clone_dtoh(&out).unwrap()), &want);
        }
    }

    #[test]
    fn fp8_quantize_reports_nan_amax() {
        let Some(g) = gpu("fp8_quantize_reports_nan_amax") else { return };
        let s = g.stream();
        let mut x = vec![1.0f32; 1000];
        x[777] = f32::NAN;
        let dx = s.clone_htod(&x).unwrap();
        let mut codes = s.alloc_zeros::<u8>(x.len()).unwrap();
        let mut amax = s.alloc_zeros::<u32>(1).unwrap();
        g.quantize_fp8(Fp8Format::E4M3, &mut codes, &mut amax, &dx, 1.0).unwrap();
        assert!(f32::from_bits(s.clone_dtoh(&amax).unwrap()[0]).is_nan());
    }

    #[test]
    fn fp8_transpose_is_exact() {
        let Some(g) = gpu("fp8_transpose_is_exact") else { return };
        let s = g.stream();
        for (rows, cols) in [(1, 1), (33, 65), (768, 2304), (100, 31)] {
            let mut rng = Rng::new(rows as u64 * 7919 + cols as u64);
            let x: Vec<u8> = (0..rows * cols).map(|_| rng.next_u32() as u8).collect();
            let want: Vec<u8> = (0..rows * cols).map(|i| x[(i % rows) * cols + i / rows]).collect();
            let dx = s.clone_htod(&x).unwrap();
            let mut out = s.alloc_zeros::<u8>(rows * cols).unwrap();
            g.transpose_fp8(&mut out, &dx, rows, cols).unwrap();
            assert_eq!(s.clone_dtoh(&out).unwrap(), want, "transpose {rows}x{cols}");
        }
    }
    /// Random tokens below `v` with repeats (so the grouped backward sums several rows per token).
    fn tokens(rng: &mut Rng, n: usize, v: usize) -> Vec<u32> {
        (0..n).map(|_| rng.below(v) as u32).collect()
    }

    #[test]
    fn encoder_forward_and_backward_match_reference() {
        let Some(g) = gpu("encoder_forward_and_backward_match_reference") else { return };
        let s = g.stream();
        let (b, t, c, v) = (3, 17, 75, 20);
        let mut rng = Rng::new(6);
        let tok = tokens(&mut rng, b * t, v);
        let (wte, wpe, dout) =
            (normal(&mut rng, v * c, 1.0), normal(&mut rng, t * c, 1.0), normal(&mut rng, b * t * c, 1.0));
        let (dwte0, dwpe0) = (normal(&mut rng, v * c, 1.0), normal(&mut rng, t * c, 1.0));
        let buckets = octet_cuda::TokenBuckets::new(&g, &tok).unwrap();
        assert!(buckets.len() <= v);
        let dtok = s.clone_htod(&tok).unwrap();

        // f32: the grouped sums differ from the reference's row-by-row f64 order only in rounding.
        let mut want = vec![0.0f32; b * t * c];
        reference::encoder_forward(&mut want, &tok, &wte, &wpe, b, t, c);
        let (mut want_dwte, mut want_dwpe) = (dwte0.clone(), dwpe0.clone());
        reference::encoder_backward(&mut want_dwte, &mut want_dwpe, &dout, &tok, b, t, c);
        let mut out = s.alloc_zeros::<f32>(b * t * c).unwrap();
        let (dwte_in, dwpe_in) = (s.clone_htod(&wte).unwrap(), s.clone_htod(&wpe).unwrap());
        g.encoder_forward(&mut out, &dtok, &dwte_in, &dwpe_in, b, t, c).unwrap();
        let (mut dwte, mut dwpe) = (s.clone_htod(&dwte0).unwrap(), s.clone_htod(&dwpe0).unwrap());
        g.encoder_backward(&mut dwte, &mut dwpe, &s.clone_htod(&dout).unwrap(), &buckets, b, t, c).unwrap();
        Tolerance::F32.assert_close("encoder_forward f32", &s.clone_dtoh(&out).unwrap(), &want);
        Tolerance::F32.assert_close("encoder dwte f32", &s.clone_dtoh(&dwte).unwrap(), &want_dwte);
        Tolerance::F32.assert_close("encoder dwpe f32", &s.clone_dtoh(&dwpe).unwrap(), &want_dwpe);

        // bf16 storage: the same bf16 inputs for both; the device rounds each result once.
        let (wte16, wpe16, d16) = (to_bf16(&wte), to_bf16(&wpe), to_bf16(&dout));
        let (dwte16, dwpe16) = (to_bf16(&dwte0), to_bf16(&dwpe0));
        reference::encoder_forward(&mut want, &tok, &from_bf16(&wte16), &from_bf16(&wpe16), b, t, c);
        let (mut want_dwte, mut want_dwpe) = (from_bf16(&dwte16), from_bf16(&dwpe16));
        reference::encoder_backward(&mut want_dwte, &mut want_dwpe, &from_bf16(&d16), &tok, b, t, c);
        let mut out = s.alloc_zeros::<bf16>(b * t * c).unwrap();
        let (dwte_in, dwpe_in) = (s.clone_htod(&wte16).unwrap(), s.clone_htod(&wpe16).unwrap());
        g.encoder_forward(&mut out, &dtok, &dwte_in, &dwpe_in, b, t, c).unwrap();
        let (mut dwte, mut dwpe) = (s.clone_htod(&dwte16).unwrap(), s.clone_htod(&dwpe16).unwrap());
        g.encoder_backward(&mut dwte, &mut dwpe, &s.clone_htod(&d16).unwrap(), &buckets, b, t, c).unwrap();
        Tolerance::BF16.assert_close("encoder_forward bf16", &from_bf16(&s.clone_dtoh(&out).unwrap()), &want);
        Tolerance::BF16.assert_close("encoder dwte bf16", &from_bf16(&s.clone_dtoh(&dwte).unwrap()), &want_dwte);
        Tolerance::BF16.assert_close("encoder dwpe bf16", &from_bf16(&s.clone_dtoh(&dwpe).unwrap()), &want_dwpe);
    }

    #[test]
    fn layernorm_backward_matches_reference() {
        let Some(g) = gpu("layernorm_backward_matches_reference") else { return };
        let s = g.stream();
        let (n, c) = (83, 768);
        let mut rng = Rng::new(7);
        let x: Vec<f32> = normal(&mut rng, n * c, 1.0).iter().map(|v| v + 3.0).collect();
        let (w, b, dout) = (normal(&mut rng, c, 1.0), normal(&mut rng, c, 1.0), normal(&mut rng, n * c, 1.0));
        let (dinp0, dw0, db0) = (normal(&mut rng, n * c, 1.0), normal(&mut rng, c, 1.0), normal(&mut rng, c, 1.0));
        for bf in [false, true] {
            // Storage rounding (identity for f32), so both sides see the same inputs.
            let r = |v: &[f32]| if bf { from_bf16(&to_bf16(v)) } else { v.to_vec() };
            let (x, w, b, dout, dinp0, dw0, db0) = (r(&x), r(&w), r(&b), r(&dout), r(&dinp0), r(&dw0), r(&db0));
            let (mut y, mut mean, mut rstd) = (vec![0.0f32; n * c], vec![0.0f32; n], vec![0.0f32; n]);
            reference::layernorm_forward(&mut y, &mut mean, &mut rstd, &x, &w, &b, n, c);
            let (mut want_dx, mut want_dw, mut want_db) = (dinp0.clone(), dw0.clone(), db0.clone());
            reference::layernorm_backward(&mut want_dx, &mut want_dw, &mut want_db, &dout, &x, &w, &mean, &rstd, n, c);
            let (dm, dr) = (s.clone_htod(&mean).unwrap(), s.clone_htod(&rstd).unwrap());
            let (got_dx, got_dw, got_db, tol, ty) = if bf {
                let up = |v: &[f32]| s.clone_htod(&to_bf16(v)).unwrap();
                let (mut dx, mut dw, mut db) = (up(&dinp0), up(&dw0), up(&db0));
                g.layernorm_backward(&mut dx, &mut dw, &mut db, &up(&dout), &up(&x), &up(&w), &dm, &dr, n, c).unwrap();
                let down = |d: &cudarc::driver::CudaSlice<bf16>| from_bf16(&s.clone_dtoh(d).unwrap());
                (down(&dx), down(&dw), down(&db), Tolerance::BF16, "bf16")
            } else {
                let up = |v: &[f32]| s.clone_htod(v).unwrap();
                let (mut dx, mut dw, mut db) = (up(&dinp0), up(&dw0), up(&db0));
                g.layernorm_backward(&mut dx, &mut dw, &mut db, &up(&dout), &up(&x), &up(&w), &dm, &dr, n, c).unwrap();
                let down = |d: &cudarc::driver::CudaSlice<f32>| s.clone_dtoh(d).unwrap();
                (down(&dx), down(&dw), down(&db), Tolerance::F32, "f32")
            };
            tol.assert_close(&format!("layernorm dinp {ty}"), &got_dx, &want_dx);
            tol.assert_close(&format!("layernorm dw {ty}"), &got_dw, &want_dw);
            tol.assert_close(&format!("layernorm db {ty}"), &got_db, &want_db);
        }
    }

    /// Attention forward and backward for one configuration, f32 or bf16 storage. The backward gets
    /// the reference forward's out and lse on both sides (rounded to the storage type), so it is
    /// checked on its own.
    fn check_attention(g: &Gpu, b: usize, t: usize, nh: usize, hs: usize, bf: bool, seed: u64) {
        let s = g.stream();
        let c = nh * hs;
        let mut rng = Rng::new(seed);
        let r = |v: Vec<f32>| if bf { from_bf16(&to_bf16(&v)) } else { v };
        let qkv = r(normal(&mut rng, b * t * 3 * c, 1.0));
        let dout = r(normal(&mut rng, b * t * c, 1.0));
        let (mut out, mut lse) = (vec![0.0f32; b * t * c], vec![0.0f32; b * nh * t]);
        reference::attention_forward(&mut out, &mut lse, &qkv, b, t, c, nh);
        let out_in = r(out.clone());
        let mut want_dqkv = vec![0.0f32; qkv.len()];
        reference::attention_backward(&mut want_dqkv, &dout, &qkv, &out_in, &lse, b, t, c, nh);
        let name = format!("attention B={b} T={t} NH={nh} hs={hs} {}", if bf { "bf16" } else { "f32" });
        let dlse_in = s.clone_htod(&lse).unwrap();
        let mut got_lse = s.alloc_zeros::<f32>(b * nh * t).unwrap();
        let (got_out, got_dqkv, tol) = if bf {
            let up = |v: &[f32]| s.clone_htod(&to_bf16(v)).unwrap();
            let mut o = s.alloc_zeros::<bf16>(b * t * c).unwrap();
            g.attention_forward(&mut o, &mut got_lse, &up(&qkv), b, t, c, nh).unwrap();
            let mut d = s.alloc_zeros::<bf16>(qkv.len()).unwrap();
            g.attention_backward(&mut d, &up(&dout), &up(&qkv), &up(&out_in), &dlse_in, b, t, c, nh).unwrap();
            (from_bf16(&s.clone_dtoh(&o).unwrap()), from_bf16(&s.clone_dtoh(&d).unwrap()), Tolerance::BF16)
        } else {
            let up = |v: &[f32]| s.clone_htod(v).unwrap();
            let mut o = s.alloc_zeros::<f32>(b * t * c).unwrap();
            g.attention_forward(&mut o, &mut got_lse, &up(&qkv), b, t, c, nh).unwrap();
            let mut d = s.alloc_zeros::<f32>(qkv.len()).unwrap();
            g.attention_backward(&mut d, &up(&dout), &up(&qkv), &up(&out_in), &dlse_in, b, t, c, nh).unwrap();
            (s.clone_dtoh(&o).unwrap(), s.clone_dtoh(&d).unwrap(), Tolerance::F32)
        };
        tol.assert_close(&format!("{name} out"), &got_out, &out);
        // lse is f32 either way, from the same (rounded) inputs.
        Tolerance::F32.assert_close(&format!("{name} lse"), &s.clone_dtoh(&got_lse).unwrap(), &lse);
        tol.assert_close(&format!("{name} dqkv"), &got_dqkv, &want_dqkv);
    }

    #[test]
    fn attention_forward_and_backward_match_reference() {
        let Some(g) = gpu("attention_forward_and_backward_match_reference") else { return };
        // hs = 40: two register slots per lane, the second partly empty; hs = 64: GPT-2's; T = 37 is
        // not a multiple of anything; hs = 256: the largest supported.
        for (i, (b, t, nh, hs)) in [(2, 37, 3, 40), (1, 64, 2, 64), (1, 9, 1, 256)].into_iter().enumerate() {
            for bf in [false, true] {
                check_attention(&g, b, t, nh, hs, bf, 100 + i as u64);
            }
        }
        let mut out = g.stream().alloc_zeros::<f32>(4 * 300).unwrap();
        let mut lse = g.stream().alloc_zeros::<f32>(4).unwrap();
        let qkv = g.stream().alloc_zeros::<f32>(4 * 900).unwrap();
        assert!(g.attention_forward(&mut out, &mut lse, &qkv, 1, 4, 300, 1).is_err(), "hs = 300 > MAX_HEAD_SIZE");
    }

    #[test]
    fn tiled_attention_is_bit_identical_to_the_row_kernels() {
        // kernels::ATTENTION_TILED does each row's arithmetic term for term as kernels::ATTENTION,
        // only staging K/V (Q/dO) tiles in shared memory: out, lse and dqkv must match bit for bit
        // (the CPU emulator checks the same). T = 100 spans four tiles, the last partial; hs = 128 is
        // the tiled kernels' largest.
        let Some(g) = gpu("tiled_attention_is_bit_identical_to_the_row_kernels") else { return };
        let s = g.stream();
        for (i, (b, t, nh, hs)) in [(2, 37, 3, 40), (1, 100, 2, 64), (1, 70, 1, 128)].into_iter().enumerate() {
            let c = nh * hs;
            let mut rng = Rng::new(300 + i as u64);
            let (qkv, dout) = (normal(&mut rng, b * t * 3 * c, 1.0), normal(&mut rng, b * t * c, 1.0));
            let (qkv, dout) = (s.clone_htod(&qkv).unwrap(), s.clone_htod(&dout).unwrap());
            let mut runs = Vec::new();
            for kind in [AttentionKernel::Rows, AttentionKernel::Tiled] {
                assert!(kind.runs_tiled(b, t, c, nh) == (kind == AttentionKernel::Tiled));
                let mut out = s.alloc_zeros::<f32>(b * t * c).unwrap();
                let mut lse = s.alloc_zeros::<f32>(b * nh * t).unwrap();
                g.attention_forward_with(kind, &mut out, &mut lse, &qkv, b, t, c, nh).unwrap();
                let mut d = s.alloc_zeros::<f32>(b * t * 3 * c).unwrap();
                g.attention_backward_with(kind, &mut d, &dout, &qkv, &out, &lse, b, t, c, nh).unwrap();
                let bits = |x: Vec<f32>| x.into_iter().map(f32::to_bits).collect::<Vec<_>>();
                runs.push(
                    [s.clone_dtoh(&out).unwrap(), s.clone_dtoh(&lse).unwrap(), s.clone_dtoh(&d).unwrap()].map(bits),
                );
            }
            for (k, what) in ["out", "lse", "dqkv"].iter().enumerate() {
                assert!(
                    runs[0][k] == runs[1][k],
                    "B={b} T={t} NH={nh} hs={hs}: tiled {what} differs from the row kernels"
                );
            }
        }
    }

    #[test]
    fn classifier_is_softmax_xent_forward_and_backward_in_one_pass() {
        // f32: bit-identical to the two kernels; a target >= V masks its row (loss 0, dlogits 0).
        let Some(g) = gpu("classifier_is_softmax_xent_forward_and_backward_in_one_pass") else { return };
        let s = g.stream();
        let (n, v, vp) = (37, 1000, 1024);
        let mut rng = Rng::new(400);
        let logits = normal(&mut rng, n * vp, 3.0);
        let mut targets: Vec<u32> = (0..n).map(|i| (i * 37 % v) as u32).collect();
        let dloss = 1.0 / n as f32;
        let tg = s.clone_htod(&targets).unwrap();
        let (mut l1, mut p) = (s.alloc_zeros::<f32>(n).unwrap(), s.clone_htod(&logits).unwrap());
        g.softmax_xent_forward(&mut l1, &mut p, &tg, n, v, vp).unwrap();
        g.softmax_xent_backward(&mut p, &tg, dloss, n, v, vp).unwrap();
        let (mut l2, mut q) = (s.alloc_zeros::<f32>(n).unwrap(), s.clone_htod(&logits).unwrap());
        g.classifier(&mut l2, &mut q, &tg, dloss, n, v, vp).unwrap();
        let bits = |x: Vec<f32>| x.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let (two, fused) = (bits(s.clone_dtoh(&p).unwrap()), bits(s.clone_dtoh(&q).unwrap()));
        assert!(two == fused, "dlogits differ");
        assert!(bits(s.clone_dtoh(&l1).unwrap()) == bits(s.clone_dtoh(&l2).unwrap()), "losses differ");
        targets[3] = u32::MAX;
        let tg = s.clone_htod(&targets).unwrap();
        let (mut l3, mut r) = (s.alloc_zeros::<f32>(n).unwrap(), s.clone_htod(&logits).unwrap());
        g.classifier(&mut l3, &mut r, &tg, dloss, n, v, vp).unwrap();
        let (l3, r) = (s.clone_dtoh(&l3).unwrap(), bits(s.clone_dtoh(&r).unwrap()));
        assert_eq!(l3[3], 0.0);
        assert!(r[3 * vp..4 * vp].iter().all(|&x| x == 0), "a masked row has no gradient");
        assert!(r[..3 * vp] == fused[..3 * vp] && r[4 * vp..] == fused[4 * vp..], "other rows unchanged");
    }

    #[test]
    fn device_scaling_follows_scaling_meta() {
        // kernels::SCALING against ScalingMeta's begin_cast / finish_cast over 40 casts of 5 tensors:
        // warm-up, the window, a just-in-time cast every 7th, zero / inf / NaN amaxes at cast 20.
        let Some(g) = gpu("device_scaling_follows_scaling_meta") else { return };
        let s = g.stream();
        for (format, window, margin) in [(Fp8Format::E4M3, 4, 0), (Fp8Format::E5M2, 1, 1), (Fp8Format::E4M3, 16, 0)] {
            let nt = 5;
            let mut dev = DeviceScaling::new(&g, nt, format, window, margin).unwrap();
            let mut metas = vec![ScalingMeta::new(format, window, margin); nt];
            let mut rng = Rng::new(500 + window as u64);
            for step in 0..40 {
                let mode = if step % 7 == 3 { ScalingMode::JustInTime } else { ScalingMode::Delayed };
                let mut a: Vec<f32> =
                    (0..nt).map(|_| (rng.normal().abs() * 10f64.powi((step % 12) - 6)) as f32).collect();
                if step == 20 {
                    (a[1], a[2], a[3]) = (0.0, f32::INFINITY, f32::NAN);
                }
                let up = |v: &[f32]| s.clone_htod(&v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()).unwrap();
                dev.begin(&g, &up(&a), mode == ScalingMode::JustInTime).unwrap();
                let pending: Vec<_> = metas.iter_mut().zip(&a).map(|(m, &x)| m.begin_cast(mode, || x)).collect();
                let got = dev.scales(&g).unwrap();
                for (k, m) in metas.iter().enumerate() {
                    assert_eq!(got[k].to_bits(), m.scale.to_bits(), "window {window} cast {step} tensor {k}");
                }
                let measured: Vec<f32> = a.iter().map(|x| x * 1.5).collect();
                dev.finish(&g, &up(&measured)).unwrap();
                for ((m, p), &x) in metas.iter_mut().zip(pending).zip(&measured) {
                    m.finish_cast(p, x);
                }
            }
        }
    }

    #[test]
    fn softmax_xent_matches_reference() {
        let Some(g) = gpu("softmax_xent_matches_reference") else { return };
        let s = g.stream();
        // V not a multiple of the block, padded to Vp; one row with a large offset (max subtraction).
        let (n, v, vp) = (37, 1000, 1024);
        let mut rng = Rng::new(8);
        let mut logits = normal(&mut rng, n * vp, 3.0);
        logits[5 * vp..6 * vp].iter_mut().for_each(|x| *x += 80.0);
        let tgt = tokens(&mut rng, n, v);
        let dloss = 1.0 / n as f64;
        let dt = s.clone_htod(&tgt).unwrap();
        for bf in [false, true] {
            let logits = if bf { from_bf16(&to_bf16(&logits)) } else { logits.clone() };
            let (mut want_probs, mut want_loss) = (logits.clone(), vec![0.0f32; n]);
            reference::softmax_xent_forward(&mut want_loss, &mut want_probs, &tgt, n, v, vp);
            let mut losses = s.alloc_zeros::<f32>(n).unwrap();
            let (probs, tol, ty) = if bf {
                let mut d = s.clone_htod(&to_bf16(&logits)).unwrap();
                g.softmax_xent_forward(&mut losses, &mut d, &dt, n, v, vp).unwrap();
                (from_bf16(&s.clone_dtoh(&d).unwrap()), Tolerance::BF16, "bf16")
            } else {
                let mut d = s.clone_htod(&logits).unwrap();
                g.softmax_xent_forward(&mut losses, &mut d, &dt, n, v, vp).unwrap();
                (s.clone_dtoh(&d).unwrap(), Tolerance::F32, "f32")
            };
            tol.assert_close(&format!("softmax probs {ty}"), &probs, &want_probs);
            Tolerance::F32.assert_close(&format!("xent losses {ty}"), &s.clone_dtoh(&losses).unwrap(), &want_loss);

            // Backward from the same probabilities on both sides.
            let mut want_d = probs.clone();
            reference::softmax_xent_backward(&mut want_d, &tgt, dloss, n, v, vp);
            let got = if bf {
                let mut d = s.clone_htod(&to_bf16(&probs)).unwrap();
                g.softmax_xent_backward(&mut d, &dt, dloss as f32, n, v, vp).unwrap();
                from_bf16(&s.clone_dtoh(&d).unwrap())
            } else {
                let mut d = s.clone_htod(&probs).unwrap();
                g.softmax_xent_backward(&mut d, &dt, dloss as f32, n, v, vp).unwrap();
                s.clone_dtoh(&d).unwrap()
            };
            tol.assert_close(&format!("xent dlogits {ty}"), &got, &want_d);
        }
    }

    #[test]
    fn amax_and_casts_match_reference() {
        let Some(g) = gpu("amax_and_casts_match_reference") else { return };
        let s = g.stream();
        let mut rng = Rng::new(9);
        let mut x = normal(&mut rng, N, 10.0);
        x[123] = -1e30; // the maximum, negative
        x[7] = f32::from_bits(1); // a subnormal
        let dx = s.clone_htod(&x).unwrap();
        let mut amax = s.alloc_zeros::<u32>(1).unwrap();
        g.amax(&mut amax, &dx).unwrap();
        assert_eq!(f32::from_bits(s.clone_dtoh(&amax).unwrap()[0]), reference::amax(&x), "amax f32");
        let x16 = to_bf16(&x);
        let mut amax = s.alloc_zeros::<u32>(1).unwrap();
        g.amax(&mut amax, &s.clone_htod(&x16).unwrap()).unwrap();
        assert_eq!(f32::from_bits(s.clone_dtoh(&amax).unwrap()[0]), reference::amax(&from_bf16(&x16)), "amax bf16");
        let mut nan = x.clone();
        nan[N - 1] = f32::NAN;
        let mut amax = s.alloc_zeros::<u32>(1).unwrap();
        g.amax(&mut amax, &s.clone_htod(&nan).unwrap()).unwrap();
        assert!(f32::from_bits(s.clone_dtoh(&amax).unwrap()[0]).is_nan(), "amax of a NaN input");

        // Ties and carries: values exactly halfway between bf16 neighbours.
        x[..4].copy_from_slice(&[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -(1.0 + 1.0 / 256.0), 65535.0]);
        let dx = s.clone_htod(&x).unwrap();
        let mut c16 = s.alloc_zeros::<bf16>(N).unwrap();
        g.cast_f32_to_bf16(&mut c16, &dx).unwrap();
        Tolerance::EXACT.assert_close(
            "cast f32 -> bf16",
            &from_bf16(&s.clone_dtoh(&c16).unwrap()),
            &from_bf16(&to_bf16(&x)),
        );
        let mut want = vec![0.0f32; N];
        reference::round_bf16(&mut want, &x);
        let mut r = s.alloc_zeros::<f32>(N).unwrap();
        g.round_bf16(&mut r, &dx).unwrap();
        Tolerance::EXACT.assert_close("round_bf16", &s.clone_dtoh(&r).unwrap(), &want);
    }

    #[test]
    fn adamw_f32_is_bit_identical_to_the_cpu() {
        let Some(g) = gpu("adamw_f32_is_bit_identical_to_the_cpu") else { return };
        let s = g.stream();
        let cfg = AdamWConfig::default();
        let mut rng = Rng::new(10);
        let mut p = normal(&mut rng, N, 0.02);
        let (mut m, mut v) = (vec![0.0f32; N], vec![0.0f32; N]);
        let (mut dp, mut dm, mut dv) =
            (s.clone_htod(&p).unwrap(), s.clone_htod(&m).unwrap(), s.clone_htod(&v).unwrap());
        for t in 1..=4u64 {
            let grad = normal(&mut rng, N, 10f64.powi(t as i32 - 3));
            let (lr, decay) = (6e-4 / t as f64, t % 2 == 1);
            adamw_fast(&mut p, &grad, &mut m, &mut v, t, lr, &cfg, decay);
            let k = AdamCoeffs::new(&cfg, t, lr, decay);
            g.adamw_f32(&mut dp, &mut dm, &mut dv, &s.clone_htod(&grad).unwrap(), &k).unwrap();
        }
        Tolerance::EXACT.assert_close("adamw p", &s.clone_dtoh(&dp).unwrap(), &p);
        Tolerance::EXACT.assert_close("adamw m", &s.clone_dtoh(&dm).unwrap(), &m);
        Tolerance::EXACT.assert_close("adamw v", &s.clone_dtoh(&dv).unwrap(), &v);
    }

    /// The CPU reference's O2 state as the device optimizer holds it.
    fn o2_host_state(master: &ScaledBuf, opt: &Fp8AdamW) -> O2HostState {
        let u16s = |b: &[u8]| b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<u16>>();
        let ((pb, ps), (mb, ms), (vb, vs)) = (master.to_raw(), opt.m.to_raw(), opt.v.to_raw());
        let scales = (0..ps.len()).map(|i| [ps[i], ms[i], vs[i]]).collect();
        O2HostState { master: u16s(&pb), m: mb, v: u16s(&vb), scales, step: opt.step }
    }

    /// Six O2 steps on the device and with `Fp8AdamW` (one skipped), compared bit for bit after each:
    /// from f32 gradients (`update_master`) or from E4M3 gradients with per-tensor scales and a
    /// multiplier (`update_master_scaled`, the trainer's fp8-o1/o2 path).
    fn check_o2(g: &Gpu, e4m3_grads: bool) {
        let s = g.stream();
        // Tensors of different sizes and scales (a tail below a block, one element, a large one).
        let layout =
            Arc::new(Layout::new([("w1", vec![33, 31]), ("b1", vec![1]), ("w2", vec![64, 130]), ("g", vec![77])]));
        let decay = vec![true, false, true, false];
        let cfg = AdamWConfig::default();
        let mut rng = Rng::new(11 + e4m3_grads as u64);
        let p0: Vec<f32> = layout
            .specs()
            .iter()
            .enumerate()
            .flat_map(|(i, spec)| normal(&mut rng, spec.numel(), 0.02 * 10f64.powi(i as i32 - 1)))
            .collect();
        let mut master = ScaledBuf::from_f32(StateFormat::F16, layout.clone(), &p0);
        let mut opt = Fp8AdamW::o2(layout.clone(), decay.clone(), cfg);
        let ranges: Vec<_> = layout.specs().iter().map(|spec| spec.range()).collect();
        let mut dev = O2AdamW::upload(g, cfg, ranges, decay, &o2_host_state(&master, &opt)).unwrap();
        for t in 1..=6 {
            let mut grad = normal(&mut rng, layout.total(), 10f64.powi(t % 3 - 2));
            let lr = 1e-3 / t as f64;
            let (want, got) = if e4m3_grads {
                // A skipped step: an infinite multiplier (inf * 0 = NaN, the rest inf).
                let mult = if t == 4 { f32::INFINITY } else { 0.5 };
                let gbuf = ScaledBuf::from_f32(StateFormat::E4M3, layout.clone(), &grad);
                let want = opt.update_master_scaled(&mut master, &gbuf, mult, lr);
                let (codes, scales) = gbuf.to_raw();
                let (dc, ds) = (s.clone_htod(&codes).unwrap(), s.clone_htod(&scales).unwrap());
                (want, dev.step_e4m3_grads(g, &dc, &ds, mult, lr).unwrap())
            } else {
                if t == 4 {
                    grad[40] = f32::INFINITY; // a skipped step: nothing changes, the counter stays
                }
                let want = opt.update_master(&mut master, &grad, lr);
                (want, dev.step(g, &s.clone_htod(&grad).unwrap(), 1.0, lr).unwrap())
            };
            assert_eq!((got.skipped, got.step), (want.skipped, want.step), "step {t} report");
            // NaN payloads differ between CPU and GPU (0 * inf); anything else is bit-exact.
            let same = got.grad_amax.to_bits() == want.grad_amax.to_bits()
                || (got.grad_amax.is_nan() && want.grad_amax.is_nan());
            assert!(same, "step {t} grad amax {} vs {}", got.grad_amax, want.grad_amax);
            assert_eq!(dev.download(g).unwrap(), o2_host_state(&master, &opt), "step {t} state");
        }
        assert_eq!(dev.steps(), 5);
    }

    #[test]
    fn adam_o2_is_bit_identical_to_fp8_adamw() {
        let Some(g) = gpu("adam_o2_is_bit_identical_to_fp8_adamw") else { return };
        check_o2(&g, false);
    }

    #[test]
    fn adam_o2_with_e4m3_grads_is_bit_identical_to_fp8_adamw() {
        let Some(g) = gpu("adam_o2_with_e4m3_grads_is_bit_identical_to_fp8_adamw") else { return };
        check_o2(&g, true);
    }
}
