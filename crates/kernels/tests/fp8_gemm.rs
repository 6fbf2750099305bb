//! FP8 GEMM on the CPU: the fast GEMM against its reference (`Tolerance::F32`, since dequantisation
//! is exact both compute the same products), the FP8 GEMM against the f32 matmul on unquantised data
//! (a per-element bound derived from the formats, below), and the backend's linear op
//! (`linear_gemm`) against the GEMM over FP8 bytes, bit for bit. The linear layer's scaling behaviour
//! and the differential FP8 MLP run are in `octet-lm`'s `tests/fp8_linear.rs`.

use octet_core::fp8::{self, Fp8Format};
use octet_core::scaling::{Fp8Tensor, ScalingMeta, ScalingMode, pow2};
use octet_core::{Rng, Tolerance};
use octet_kernels::backend::{Cast, GemmRole};
use octet_kernels::cpu;
use octet_kernels::fp8_gemm::{self, Epilogue, Fp8Mat, Fp8Scratch, OutPrecision};
use octet_kernels::gemm::{Mat, par_for, sgemm};
use octet_kernels::{Backend, CpuBackend, RefBackend};

fn randn(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * std) as f32).collect()
}

/// Cast with a fresh just-in-time scale (no saturation: amax * scale <= fp_max); returns the bytes
/// and the scale_inv they were cast with.
fn cast(fmt: Fp8Format, src: &[f32]) -> (Vec<u8>, f32) {
    let mut meta = ScalingMeta::new(fmt, 1, 0);
    let mut bytes = vec![0u8; src.len()];
    meta.quantize(ScalingMode::JustInTime, src, &mut bytes);
    (bytes, meta.scale_inv)
}

/// Row-major (cols, rows) transpose of a row-major (rows, cols) matrix.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = src[i * cols + j];
        }
    }
    t
}

/// The three GEMMs of a linear layer over the same FP8 X (N,IC), W (OC,IC), dY (N,OC): name, output
/// rows and cols, A view, B view (see the table in the module doc of `fp8_gemm`).
fn linear_layouts<'a>(x: Fp8Mat<'a>, w: Fp8Mat<'a>, dy: Fp8Mat<'a>) -> [(&'static str, Fp8Mat<'a>, Fp8Mat<'a>); 3] {
    [("forward Y = X W^T", x, w.t()), ("data grad dX = dY W", dy, w), ("weight grad dW = dY^T X", dy.t(), x)]
}

#[test]
fn dequantised_fp8_values_are_exact_in_f32() {
    // The premise of the fast GEMM: decode(q) * scale_inv loses nothing for every code and every
    // power-of-two scale_inv in the range scales take (down to 2^-126, where E5M2's min subnormal
    // lands at 2^-142, still above f32's 2^-149).
    for fmt in Fp8Format::ALL {
        for k in [-126, -100, -20, 0, 20, 100] {
            let s = pow2(k);
            for code in 0..=255u8 {
                let v = fp8::decode(fmt, code);
                if v.is_finite() {
                    assert_eq!((v * s) as f64, v as f64 * s as f64, "{fmt} code {code:#04x} * 2^{k}");
                }
            }
        }
    }
}

#[test]
fn fast_gemm_matches_reference_in_every_linear_layout() {
    // 300 x 256 = 76800 input bytes: above fp8::PARALLEL_THRESHOLD, so dequantisation splits.
    for (seed, (n, ic, oc)) in [(3usize, 17usize, 5usize), (300, 256, 48)].into_iter().enumerate() {
        let mut r = Rng::new(10 + seed as u64);
        let (x, sx) = cast(Fp8Format::E4M3, &randn(&mut r, n * ic, 1.0));
        let (w, sw) = cast(Fp8Format::E4M3, &randn(&mut r, oc * ic, 0.05));
        let (dy, sdy) = cast(Fp8Format::E5M2, &randn(&mut r, n * oc, 1e-3));
        let x = Fp8Mat::rm(&x, n, ic, Fp8Format::E4M3, sx);
        let w = Fp8Mat::rm(&w, oc, ic, Fp8Format::E4M3, sw);
        let dy = Fp8Mat::rm(&dy, n, oc, Fp8Format::E5M2, sdy);
        let mut scratch = Fp8Scratch::default();
        for (name, a, b) in linear_layouts(x, w, dy) {
            let (m, cols) = (a.rows, b.cols);
            let bias = randn(&mut r, cols, 0.5);
            let prior = randn(&mut r, m * cols, 0.5);
            for (use_bias, accumulate) in [(false, false), (true, false), (false, true), (true, true)] {
                let ep =
                    Epilogue { bias: use_bias.then_some(&bias[..]), accumulate, amax: true, ..Epilogue::default() };
                let (mut fast, mut want) = (prior.clone(), prior.clone());
                let amax_fast = fp8_gemm::gemm(&mut fast, a, b, ep, &mut scratch);
                let amax_want = fp8_gemm::gemm_reference(&mut want, a, b, ep);
                let what = format!("{name} ({n},{ic},{oc}) bias {use_bias} accumulate {accumulate}");
                Tolerance::F32.assert_close(&what, &fast, &want);
                Tolerance::F32.assert_close(&what, &[amax_fast.unwrap()], &[amax_want.unwrap()]);
            }
        }
    }
}

#[test]
fn bf16_output_is_the_rounded_f32_result_and_amax_is_max_abs() {
    let (m, k, n) = (23, 40, 31);
    let mut r = Rng::new(20);
    let (a, sa) = cast(Fp8Format::E4M3, &randn(&mut r, m * k, 3.0));
    let (b, sb) = cast(Fp8Format::E5M2, &randn(&mut r, k * n, 0.1));
    let (a, b) = (Fp8Mat::rm(&a, m, k, Fp8Format::E4M3, sa), Fp8Mat::rm(&b, k, n, Fp8Format::E5M2, sb));
    let bias = randn(&mut r, n, 1.0);
    let mut scratch = Fp8Scratch::default();
    let f32_ep = Epilogue { bias: Some(&bias), ..Epilogue::default() };
    let bf16_ep = Epilogue { precision: OutPrecision::Bf16, amax: true, ..f32_ep };
    for fast in [true, false] {
        let run = |out: &mut [f32], ep, scratch: &mut Fp8Scratch| {
            if fast { fp8_gemm::gemm(out, a, b, ep, scratch) } else { fp8_gemm::gemm_reference(out, a, b, ep) }
        };
        let (mut c32, mut c16) = (vec![0.0; m * n], vec![0.0; m * n]);
        assert_eq!(run(&mut c32, f32_ep, &mut scratch), None, "amax only when asked");
        let amax = run(&mut c16, bf16_ep, &mut scratch).unwrap();
        let rounded: Vec<f32> = c32.iter().map(|&v| octet_core::dtype::round_bf16(v)).collect();
        Tolerance::EXACT.assert_close("bf16 out = round_bf16(f32 out)", &c16, &rounded);
        let max_abs = c16.iter().fold(0.0f32, |acc, v| acc.max(v.abs()));
        assert_eq!(amax, max_abs, "amax of the bf16 output (fast {fast})");
    }
}

/// Bound on |fp8 GEMM - f32 GEMM| for C = A (M,K) @ B (K,N) given as logical row-major f32 copies of
/// the unquantised operands, each cast to `fmt` with `scale_inv` and no saturation.
///
/// Derivation: a value in the format's normal range is rounded to nearest with relative error at most
/// u = 2^-(mantissa_bits + 1) (E4M3 2^-4, E5M2 2^-3); in the subnormal range the absolute error is at
/// most half the subnormal spacing, e = min_subnormal / 2 * scale_inv in unscaled units. So
/// |da| <= u_a |a| + e_a =: d_a and likewise for b, and
/// |(a + da)(b + db) - ab| <= (|a| + d_a)(|b| + d_b) - |a||b|, summed over k:
/// bound = (|A| + D_A) @ (|B| + D_B) - |A| @ |B|. Both products are also accumulated in f32 (in
/// different orders), which `Tolerance::F32` covers relative to |A| @ |B|. The bound is relative to
/// |A| @ |B| rather than to |C| because a sum with cancellation has no relative guarantee.
fn format_bound(
    a: &[f32],
    fa: (Fp8Format, f32),
    b: &[f32],
    fb: (Fp8Format, f32),
    (m, k, n): (usize, usize, usize),
) -> Vec<f64> {
    let delta = |v: f32, (fmt, scale_inv): (Fp8Format, f32)| {
        let u = 0.5f64.powi(fmt.mantissa_bits() as i32 + 1);
        u * v.abs() as f64 + fmt.min_subnormal() as f64 / 2.0 * scale_inv as f64
    };
    let mut bound = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut perturbed, mut exact) = (0.0f64, 0.0f64);
            for p in 0..k {
                let (x, y) = (a[i * k + p], b[p * n + j]);
                let (ax, ay) = (x.abs() as f64, y.abs() as f64);
                perturbed += (ax + delta(x, fa)) * (ay + delta(y, fb));
                exact += ax * ay;
            }
            let f32_roundoff = Tolerance::F32.atol + Tolerance::F32.rtol * exact;
            bound[i * n + j] = perturbed - exact + f32_roundoff;
        }
    }
    bound
}

#[test]
fn fp8_gemm_is_within_the_format_bound_of_the_f32_matmul() {
    let (n, ic, oc) = (64, 96, 40);
    let mut r = Rng::new(30);
    // Heavy-tailed-ish data (mixed scales) so that some values land in the subnormal range.
    let x: Vec<f32> = randn(&mut r, n * ic, 1.0)
        .into_iter()
        .enumerate()
        .map(|(i, v)| if i % 7 == 0 { v * 1e-3 } else { v })
        .collect();
    let w = randn(&mut r, oc * ic, 0.1);
    let dy = randn(&mut r, n * oc, 1e-2);
    let (e4, e5) = (Fp8Format::E4M3, Fp8Format::E5M2);
    let ((xq, sx), (wq, sw), (dyq, sdy)) = (cast(e4, &x), cast(e4, &w), cast(e5, &dy));
    let mut scratch = Fp8Scratch::default();

    // The f32 references: the CPU matmul on unquantised data (forward, then backward with dw = 0).
    let mut y32 = vec![0.0; n * oc];
    cpu::matmul_forward(&mut y32, &x, &w, None, n, ic, oc);
    let (mut dx32, mut dw32) = (vec![0.0; n * ic], vec![0.0; oc * ic]);
    cpu::matmul_backward(&mut dx32, &mut dw32, None, &dy, &x, &w, n, ic, oc);

    let xm = Fp8Mat::rm(&xq, n, ic, e4, sx);
    let wm = Fp8Mat::rm(&wq, oc, ic, e4, sw);
    let dym = Fp8Mat::rm(&dyq, n, oc, e5, sdy);
    let (wt, dyt) = (transpose(&w, oc, ic), transpose(&dy, n, oc));
    // (name, A view, B view, logical A (M,K), its format, logical B (K,N), its format, f32 result)
    let cases = [
        ("forward", xm, wm.t(), &x, (e4, sx), &wt, (e4, sw), &y32),
        ("data grad", dym, wm, &dy, (e5, sdy), &w, (e4, sw), &dx32),
        ("weight grad", dym.t(), xm, &dyt, (e5, sdy), &x, (e4, sx), &dw32),
    ];
    for (name, a, b, a32, fa, b32, fb, want) in cases {
        let dims = (a.rows, a.cols, b.cols);
        let mut got = vec![0.0; dims.0 * dims.2];
        fp8_gemm::gemm(&mut got, a, b, Epilogue::default(), &mut scratch);
        let bound = format_bound(a32, fa, b32, fb, dims);
        let mut worst = 0.0f64;
        for (i, ((&g, &y), &bd)) in got.iter().zip(want.iter()).zip(&bound).enumerate() {
            let err = (g as f64 - y as f64).abs();
            assert!(err <= bd, "{name}[{i}]: fp8 {g:e} vs f32 {y:e}: |err| {err:e} > bound {bd:e}");
            worst = worst.max(err / bd);
        }
        // Not vacuous: the quantisation error uses a visible part of the bound.
        println!("{name}: worst |err| / bound = {worst:.3}");
        assert!(worst > 0.05, "{name}: bound {worst} looser than expected; is anything quantised?");
    }
}

#[test]
fn fp8_mat_from_tensor_checks_its_shape() {
    let src = [1.0f32, -2.0, 3.0, 0.5, 0.25, 8.0];
    let meta = ScalingMeta::new(Fp8Format::E4M3, 1, 0);
    let t = Fp8Tensor::quantize(&src, &[2, 3], meta, ScalingMode::JustInTime).unwrap();
    let m = Fp8Mat::from_tensor(&t, 2, 3).unwrap();
    assert_eq!((m.rows, m.cols, m.scale_inv), (2, 3, t.meta.scale_inv));
    assert_eq!(m.t().get(2, 1), 8.0); // element (1, 2) of the (2, 3) tensor, exact in E4M3
    assert!(Fp8Mat::from_tensor(&t, 4, 2).is_err());
}

#[test]
fn linear_gemm_is_the_fp8_gemm_over_the_cast_bytes() {
    // The FP8 linear is one backend op (`Backend::linear_gemm`, three roles). On the CPU it casts by a
    // quantise-dequantise into f32 scratch; at the same scales it must equal this module's GEMM over
    // the FP8 bytes bit for bit (the emulation the precision levels have always used), return the
    // amaxes of the sources it cast, and match the reference op (f64 sums) at F32. Sizes past the
    // kernels' parallel thresholds; IC, OC not multiples of the sgemm tiles.
    let (n, ic, oc) = (300, 72, 40);
    let mut r = Rng::new(40);
    let x = randn(&mut r, n * ic, 1.0);
    let w = randn(&mut r, oc * ic, 0.2);
    let bias = randn(&mut r, oc, 0.1);
    let dy = randn(&mut r, n * oc, 1e-2);
    let (e4, e5) = (Fp8Format::E4M3, Fp8Format::E5M2);
    let ((xq, sx), (wq, sw), (dyq, sdy)) = (cast(e4, &x), cast(e4, &w), cast(e5, &dy));
    let fp8 = |format, scale_inv: f32| Cast::Fp8 { format, scale: scale_inv.recip() };
    let (xm, wm, dym) =
        (Fp8Mat::rm(&xq, n, ic, e4, sx), Fp8Mat::rm(&wq, oc, ic, e4, sw), Fp8Mat::rm(&dyq, n, oc, e5, sdy));
    // (role, A, B, A cast, B cast, bias, the same GEMM over the FP8 bytes)
    let cases = [
        (GemmRole::Forward, &x, &w, fp8(e4, sx), fp8(e4, sw), Some(&bias[..]), xm, wm.t()),
        (GemmRole::DataGrad, &dy, &w, fp8(e5, sdy), fp8(e4, sw), None, dym, wm),
        (GemmRole::WeightGrad, &dy, &x, fp8(e5, sdy), fp8(e4, sx), None, dym.t(), xm),
    ];
    let mut scratch = Fp8Scratch::default();
    for (role, a, b, ca, cb, bias, am, bm) in cases {
        let (la, lb, lo) = role.sizes(n, ic, oc);
        let prior = randn(&mut r, lo, 1e-2);
        let accumulate = role == GemmRole::WeightGrad;
        let init = if accumulate { prior.clone() } else { vec![f32::NAN; lo] };
        let (mut got, mut want, mut spec) = (init.clone(), init.clone(), prior.iter().map(|&v| v as f64).collect());
        let (mut qa, mut qb) = (vec![0.0f32; la], vec![0.0f32; lb]);
        let amaxes = CpuBackend.linear_gemm(&mut got, &mut qa, &mut qb, a, b, bias, role, ca, cb, n, ic, oc);
        assert_eq!(amaxes, [fp8::amax(a), fp8::amax(b)], "{role:?}: amaxes of the cast sources");
        let ep = Epilogue { bias, accumulate, ..Epilogue::default() };
        fp8_gemm::gemm(&mut want, am, bm, ep, &mut scratch);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{role:?}: linear_gemm differs from the FP8 GEMM over the bytes");
        let (a64, b64): (Vec<f64>, Vec<f64>) =
            (a.iter().map(|&v| v as f64).collect(), b.iter().map(|&v| v as f64).collect());
        let bias64: Option<Vec<f64>> = bias.map(|b| b.iter().map(|&v| v as f64).collect());
        let (mut qa64, mut qb64) = (vec![0.0f64; la], vec![0.0f64; lb]);
        if !accumulate {
            spec = vec![0.0; lo];
        }
        RefBackend::<f64>::new().linear_gemm(
            &mut spec,
            &mut qa64,
            &mut qb64,
            &a64,
            &b64,
            bias64.as_deref(),
            role,
            ca,
            cb,
            n,
            ic,
            oc,
        );
        Tolerance::F32.assert_close(&format!("{role:?} vs the reference op"), &got, &spec);
    }
}

#[test]
fn linear_gemm_bf16_and_uncast() {
    // Cast::Bf16 multiplies the bf16-rounded operands, Cast::None the operands as they are: each
    // equal, bit for bit, to the f32 matmul of those values; amaxes 0 (nothing FP8-cast).
    let (n, ic, oc) = (70, 40, 24);
    let mut r = Rng::new(41);
    let (x, w) = (randn(&mut r, n * ic, 1.0), randn(&mut r, oc * ic, 0.2));
    let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| octet_core::dtype::round_bf16(x)).collect() };
    for (cast, xv, wv) in [(Cast::Bf16, round(&x), round(&w)), (Cast::None, x.clone(), w.clone())] {
        let (mut got, mut want) = (vec![0.0f32; n * oc], vec![0.0f32; n * oc]);
        let (mut qa, mut qb) = (vec![0.0f32; n * ic], vec![0.0f32; oc * ic]);
        let am =
            CpuBackend.linear_gemm(&mut got, &mut qa, &mut qb, &x, &w, None, GemmRole::Forward, cast, cast, n, ic, oc);
        cpu::matmul_forward(&mut want, &xv, &wv, None, n, ic, oc);
        assert_eq!(am, [0.0, 0.0]);
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{cast:?}");
    }
}

/// Best-of wall time of `f` in seconds.
fn best_time(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: page faults, thread pool
    (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
#[ignore = "timing; run with --ignored --nocapture"]
fn fp8_gemm_throughput_vs_sgemm() {
    // GPT-2 small MLP up-projection: (N, IC, OC) = (2048, 768, 3072), 2 N IC OC = 9.7 GFLOP.
    let (n, ic, oc) = (2048, 768, 3072);
    let flop = 2.0 * (n * ic * oc) as f64;
    let mut r = Rng::new(70);
    let (x, w, dy) = (randn(&mut r, n * ic, 1.0), randn(&mut r, oc * ic, 0.02), randn(&mut r, n * oc, 1e-3));
    let (e4, e5) = (Fp8Format::E4M3, Fp8Format::E5M2);
    let ((xq, sx), (wq, sw), (dyq, sdy)) = (cast(e4, &x), cast(e4, &w), cast(e5, &dy));
    let (xm, wm, dym) =
        (Fp8Mat::rm(&xq, n, ic, e4, sx), Fp8Mat::rm(&wq, oc, ic, e4, sw), Fp8Mat::rm(&dyq, n, oc, e5, sdy));
    let mut scratch = Fp8Scratch::default();
    let threads = rayon::current_num_threads();
    println!("(N, IC, OC) = ({n}, {ic}, {oc}), {threads} threads, best of 5");
    let f32_views = [
        (Mat::rm(&x, n, ic), Mat::rm_t(&w, ic, oc)),
        (Mat::rm(&dy, n, oc), Mat::rm(&w, oc, ic)),
        (Mat::rm(&dy, n, oc).t(), Mat::rm(&x, n, ic)),
    ];
    for ((name, a, b), (a32, b32)) in linear_layouts(xm, wm, dym).into_iter().zip(f32_views) {
        let mut out = vec![0.0f32; a.rows * b.cols];
        let t_f32 = best_time(5, || {
            let par = par_for(a.rows, b.cols, a.cols);
            sgemm(&mut out, b.cols, false, a32, b32, 1.0, par);
        });
        let t_fp8 = best_time(5, || {
            fp8_gemm::gemm(&mut out, a, b, Epilogue::default(), &mut scratch);
        });
        let (mut da, mut db) = (vec![0.0f32; a.bytes.len()], vec![0.0f32; b.bytes.len()]);
        let t_deq = best_time(5, || {
            fp8::dequantize(a.format, a.bytes, a.scale_inv, &mut da);
            fp8::dequantize(b.format, b.bytes, b.scale_inv, &mut db);
        });
        println!(
            "{name:24}: f32 sgemm {:7.1} GFLOP/s ({:6.1} ms) | fp8 dequantise + sgemm {:7.1} GFLOP/s \
             ({:6.1} ms, dequantise alone {:5.2} ms) | overhead {:+.1}%",
            flop / t_f32 / 1e9,
            t_f32 * 1e3,
            flop / t_fp8 / 1e9,
            t_fp8 * 1e3,
            t_deq * 1e3,
            (t_fp8 / t_f32 - 1.0) * 100.0
        );
    }
}
