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
    use octet_cuda::Gpu;
    use octet_kernels::reference;

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
}
