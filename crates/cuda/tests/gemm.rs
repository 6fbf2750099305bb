//! cuBLASLt GEMMs (`octet_cuda::gemm`) against the CPU: bf16 against `reference::matmul_forward` on the
//! same bf16 values, FP8 against `octet_kernels::fp8_gemm::gemm_reference` on the same codes and
//! scales (the spec of what an FP8 tensor-core GEMM computes). Each test opens device 0 and returns
//! early with a SKIPPED message on stderr when there is no driver, GPU or libcublasLt, as
//! tests/kernels.rs does.

#[cfg(feature = "cuda")]
mod device {
    use half::bf16;
    use octet_core::fp8::{self, Fp8Format};
    use octet_core::{Rng, Tolerance};
    use octet_cuda::Gpu;
    use octet_cuda::gemm::{Blas, Dims, Input, Output};
    use octet_kernels::fp8_gemm::{Epilogue, Fp8Mat, OutPrecision, gemm_reference};
    use octet_kernels::reference;

    fn setup(test: &str) -> Option<(Gpu, Blas)> {
        let opened = Gpu::new(0).and_then(|g| Blas::new(&g).map(|b| (g, b)));
        match opened {
            Ok(gb) => Some(gb),
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

    /// Largest sum over k of |a_ik b_jk| (row-major A (rows, k), B (cols, k), decoded): the scale of
    /// a tensor core's accumulation error, which is relative to the terms, not to the result.
    fn term_sum_max(a: &[f32], b: &[f32], rows: usize, cols: usize, k: usize) -> f64 {
        let mut worst = 0.0f64;
        for i in 0..rows {
            for j in 0..cols {
                let t: f64 = (0..k).map(|p| (a[i * k + p] as f64 * b[j * k + p] as f64).abs()).sum();
                worst = worst.max(t);
            }
        }
        worst
    }

    /// `base` widened by the accumulation error of a tensor-core GEMM: products are exact, but a
    /// group of them is aligned to its largest exponent and summed with a limited number of
    /// significand bits before the f32 accumulator: about 14 for Hopper's FP8 MMA (DeepSeek-V3
    /// report, section 3.3.2: cuBLASLt's default split accumulation promotes to f32 between groups,
    /// which bounds the total, not the per-group loss), and f32 with truncation for bf16 (Fasi et
    /// al. 2021, "Numerical behavior of NVIDIA tensor cores"). So |error| <= 2^-bits * sum |terms|,
    /// with bits = 12 (FP8, a factor 4 of margin) or 21 (bf16, f32's 24 less margin).
    fn accumulation(base: Tolerance, term_sum: f64, bits: i32) -> Tolerance {
        Tolerance { atol: base.atol + term_sum * 2f64.powi(-bits), rtol: base.rtol }
    }

    /// Sizes of a small linear layer that are not multiples of a tile (bf16 has no alignment rule).
    const ROWS: usize = 67;
    const COLS: usize = 45;
    const K: usize = 96;

    #[test]
    fn bf16_gemm_matches_reference() {
        let Some((g, blas)) = setup("bf16_gemm_matches_reference") else { return };
        let s = g.stream();
        let mut rng = Rng::new(20);
        let (a, b, a2) = (
            to_bf16(&normal(&mut rng, ROWS * K, 1.0)),
            to_bf16(&normal(&mut rng, COLS * K, 1.0)),
            to_bf16(&normal(&mut rng, ROWS * K, 1.0)),
        );
        // Y = A B^T is matmul_forward with inp = A (N, IC), w = B (OC, IC).
        let mut want = vec![0.0f32; ROWS * COLS];
        reference::matmul_forward(&mut want, &from_bf16(&a), &from_bf16(&b), None, ROWS, K, COLS);
        let (da, db, da2) = (s.clone_htod(&a).unwrap(), s.clone_htod(&b).unwrap(), s.clone_htod(&a2).unwrap());
        let terms = term_sum_max(&from_bf16(&a), &from_bf16(&b), ROWS, COLS, K)
            + term_sum_max(&from_bf16(&a2), &from_bf16(&b), ROWS, COLS, K);
        let (f32_tol, bf16_tol) = (accumulation(Tolerance::F32, terms, 21), accumulation(Tolerance::BF16, terms, 21));
        let dims = Dims { rows: ROWS, cols: COLS, k: K, accumulate: false };
        let mut d = s.alloc_zeros::<f32>(ROWS * COLS).unwrap();
        blas.matmul(Output::F32(d.as_view_mut()), Input::Bf16(da.as_view()), Input::Bf16(db.as_view()), dims, None)
            .unwrap();
        // Products of bf16 values are exact in f32; only the f32 summation differs.
        f32_tol.assert_close("bf16 gemm -> f32", &s.clone_dtoh(&d).unwrap(), &want);

        // Accumulate a second product: D += A2 B^T (a parameter gradient's `+=`).
        let mut more = vec![0.0f32; ROWS * COLS];
        reference::matmul_forward(&mut more, &from_bf16(&a2), &from_bf16(&b), None, ROWS, K, COLS);
        let want_acc: Vec<f32> = want.iter().zip(&more).map(|(x, y)| x + y).collect();
        let acc = Dims { accumulate: true, ..dims };
        blas.matmul(Output::F32(d.as_view_mut()), Input::Bf16(da2.as_view()), Input::Bf16(db.as_view()), acc, None)
            .unwrap();
        f32_tol.assert_close("bf16 gemm += f32", &s.clone_dtoh(&d).unwrap(), &want_acc);

        // bf16 output: the f32 result rounded once.
        let mut d16 = s.alloc_zeros::<bf16>(ROWS * COLS).unwrap();
        blas.matmul(Output::Bf16(d16.as_view_mut()), Input::Bf16(da.as_view()), Input::Bf16(db.as_view()), dims, None)
            .unwrap();
        bf16_tol.assert_close("bf16 gemm -> bf16", &from_bf16(&s.clone_dtoh(&d16).unwrap()), &want);
    }

    /// Random FP8 codes of `format` for `n` values of standard deviation `std` at `scale`.
    fn fp8_operand(rng: &mut Rng, format: Fp8Format, n: usize, std: f64, scale: f32) -> Vec<u8> {
        let x = normal(rng, n, std);
        let mut codes = vec![0u8; n];
        fp8::quantize(format, &x, scale, &mut codes);
        codes
    }

    /// One FP8 case: A (rows, k) in `fa` at scale `sa`, B (cols, k) in `fb` at `sb`; checks f32 and
    /// bf16 outputs, accumulation, and an FP8 output with its scale and amax.
    fn check_fp8(g: &Gpu, blas: &Blas, fa: Fp8Format, fb: Fp8Format, seed: u64) {
        let s = g.stream();
        let (rows, cols, k) = (48, 80, 112); // FP8: k and cols multiples of 16
        let mut rng = Rng::new(seed);
        let (sa, sb) = (8.0f32, 0.25f32);
        let a = fp8_operand(&mut rng, fa, rows * k, 1.0, sa);
        let b = fp8_operand(&mut rng, fb, cols * k, 4.0, sb);
        let name = format!("{} x {}", fa.name(), fb.name());
        let (ma, mb) = (Fp8Mat::rm(&a, rows, k, fa, 1.0 / sa), Fp8Mat::rm(&b, cols, k, fb, 1.0 / sb).t());
        let mut want = vec![0.0f32; rows * cols];
        let want_amax = gemm_reference(&mut want, ma, mb, Epilogue { amax: true, ..Default::default() }).unwrap();
        let (mut xa, mut xb) = (vec![0.0f32; rows * k], vec![0.0f32; cols * k]);
        fp8::dequantize(fa, &a, 1.0 / sa, &mut xa);
        fp8::dequantize(fb, &b, 1.0 / sb, &mut xb);
        let terms = term_sum_max(&xa, &xb, rows, cols, k);
        // Twice for the accumulated case (two GEMMs' errors).
        let tol = |base: Tolerance| accumulation(base, 2.0 * terms, 12);

        let (da, db) = (s.clone_htod(&a).unwrap(), s.clone_htod(&b).unwrap());
        let (ia, ib) = (s.clone_htod(&[1.0 / sa]).unwrap(), s.clone_htod(&[1.0 / sb]).unwrap());
        let inputs = || {
            (
                Input::Fp8 { format: fa, codes: da.as_view(), scale_inv: ia.as_view() },
                Input::Fp8 { format: fb, codes: db.as_view(), scale_inv: ib.as_view() },
            )
        };
        let dims = Dims { rows, cols, k, accumulate: false };

        // f32 output: exactly dequantised products, f32 accumulation.
        let mut d = s.alloc_zeros::<f32>(rows * cols).unwrap();
        let (x, y) = inputs();
        blas.matmul(Output::F32(d.as_view_mut()), x, y, dims, None).unwrap();
        let got = s.clone_dtoh(&d).unwrap();
        tol(Tolerance::F32).assert_close(&format!("{name} -> f32"), &got, &want);

        // Accumulate the same product again: D = 2 (A B^T).
        let (x, y) = inputs();
        blas.matmul(Output::F32(d.as_view_mut()), x, y, Dims { accumulate: true, ..dims }, None).unwrap();
        let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
        tol(Tolerance::F32).assert_close(&format!("{name} += f32"), &s.clone_dtoh(&d).unwrap(), &twice);

        // bf16 output, against the reference's bf16 rounding of its f32 result.
        let mut want16 = vec![0.0f32; rows * cols];
        let bf = Epilogue { precision: OutPrecision::Bf16, ..Default::default() };
        gemm_reference(&mut want16, ma, mb, bf);
        let mut d16 = s.alloc_zeros::<bf16>(rows * cols).unwrap();
        let (x, y) = inputs();
        blas.matmul(Output::Bf16(d16.as_view_mut()), x, y, dims, None).unwrap();
        tol(Tolerance::BF16).assert_close(
            &format!("{name} -> bf16"),
            &from_bf16(&s.clone_dtoh(&d16).unwrap()),
            &want16,
        );

        // FP8 output at the scale the reference amax implies, with the device amax of the result.
        let out_format = Fp8Format::E4M3;
        let scale_d = octet_core::scaling::compute_scale(want_amax, out_format.max(), 0, 1.0);
        let dsd = s.clone_htod(&[scale_d]).unwrap();
        let mut q = s.alloc_zeros::<u8>(rows * cols).unwrap();
        let mut amax = s.alloc_zeros::<f32>(1).unwrap();
        let (x, y) = inputs();
        let out = Output::Fp8 { format: out_format, codes: q.as_view_mut(), scale: dsd.as_view() };
        blas.matmul(out, x, y, dims, Some(amax.as_view_mut())).unwrap();
        let mut deq = vec![0.0f32; rows * cols];
        fp8::dequantize(out_format, &s.clone_dtoh(&q).unwrap(), 1.0 / scale_d, &mut deq);
        tol(Tolerance::E4M3).assert_close(&format!("{name} -> e4m3"), &deq, &want);
        let got_amax = s.clone_dtoh(&amax).unwrap()[0];
        tol(Tolerance::F32).assert_close(&format!("{name} amax"), &[got_amax], &[want_amax]);
    }

    #[test]
    fn fp8_gemms_match_reference() {
        let Some((g, blas)) = setup("fp8_gemms_match_reference") else { return };
        // Forward (E4M3 x E4M3) and the gradient GEMMs (E5M2 gradient with an E4M3 operand, on
        // either side).
        check_fp8(&g, &blas, Fp8Format::E4M3, Fp8Format::E4M3, 21);
        check_fp8(&g, &blas, Fp8Format::E5M2, Fp8Format::E4M3, 22);
        check_fp8(&g, &blas, Fp8Format::E4M3, Fp8Format::E5M2, 23);
    }

    #[test]
    fn unsupported_fp8_shapes_and_types_are_errors() {
        let Some((g, blas)) = setup("unsupported_fp8_shapes_and_types_are_errors") else { return };
        let s = g.stream();
        let (codes, inv) = (s.alloc_zeros::<u8>(16 * 24).unwrap(), s.clone_htod(&[1.0f32]).unwrap());
        let mut d = s.alloc_zeros::<f32>(16 * 16).unwrap();
        let fp8 = |format| Input::Fp8 { format, codes: codes.as_view(), scale_inv: inv.as_view() };
        // k = 24 is not a multiple of 16.
        let dims = Dims { rows: 16, cols: 16, k: 24, accumulate: false };
        let e4 = Fp8Format::E4M3;
        assert!(blas.matmul(Output::F32(d.as_view_mut()), fp8(e4), fp8(e4), dims, None).is_err());
        let e5 = Fp8Format::E5M2;
        let (codes, d16) = (s.alloc_zeros::<u8>(16 * 16).unwrap(), Dims { k: 16, ..dims });
        let fp8 = |format| Input::Fp8 { format, codes: codes.as_view(), scale_inv: inv.as_view() };
        assert!(blas.matmul(Output::F32(d.as_view_mut()), fp8(e5), fp8(e5), d16, None).is_err(), "E5M2 x E5M2");
        assert!(blas.matmul(Output::F32(d.as_view_mut()), fp8(e4), fp8(e4), d16, None).is_ok());
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn gemm_needs_the_cuda_feature() {
    const { assert!(!octet_cuda::BUILT_WITH_CUDA) };
}
