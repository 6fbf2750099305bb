//! Llama's CUDA kernels (RMSNorm, RoPE, SwiGLU, repeat_kv, token embedding; `llama_ops`) against
//! `octet_kernels::reference` on random data, in f32 and bf16 storage.
//!
//! Tolerances: `Tolerance::F32` for f32 storage (the kernels sum in f32 where the reference sums in
//! f64, and `expf`/FMA contraction differ by ulps); `Tolerance::BF16` for bf16 storage, where both
//! sides get the same bf16-rounded inputs and the device rounds each output once; the pure copies
//! (repeat_kv forward, embedding forward) exact. The saved 1/rms is f32 whatever the storage type.
//!
//! Without the `cuda` feature there is nothing to run. With it, each test opens device 0 and returns
//! early with `SKIPPED <test>: <reason>` on stderr when there is no driver or GPU, so
//! `cargo test --features cuda` stays green on a CPU machine; bench/gpu.sh runs them on the GPU.

#[cfg(feature = "cuda")]
mod device {
    use cudarc::driver::CudaSlice;
    use half::bf16;
    use octet_core::{Rng, Tolerance};
    use octet_cuda::{Gpu, TokenBuckets};
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

    /// The storage rounding of the bf16 runs (identity for f32), so both sides see the same inputs.
    fn storage(bf: bool, v: &[f32]) -> Vec<f32> {
        if bf { from_bf16(&to_bf16(v)) } else { v.to_vec() }
    }

    /// Uploads `inputs` in f32 storage, runs `f` on them (in order; outputs that accumulate are uploaded
    /// with their initial values, overwritten ones as NaN) and reads every buffer back.
    fn run_f32(g: &Gpu, inputs: &[&[f32]], f: impl FnOnce(&Gpu, &mut [CudaSlice<f32>])) -> Vec<Vec<f32>> {
        let s = g.stream();
        let mut bufs: Vec<CudaSlice<f32>> = inputs.iter().map(|v| s.clone_htod(*v).unwrap()).collect();
        f(g, &mut bufs);
        bufs.iter().map(|b| s.clone_dtoh(b).unwrap()).collect()
    }

    /// `run_f32` in bf16 storage (inputs rounded to bf16 on upload, read back as f32).
    fn run_bf16(g: &Gpu, inputs: &[&[f32]], f: impl FnOnce(&Gpu, &mut [CudaSlice<bf16>])) -> Vec<Vec<f32>> {
        let s = g.stream();
        let mut bufs: Vec<CudaSlice<bf16>> = inputs.iter().map(|v| s.clone_htod(&to_bf16(v)).unwrap()).collect();
        f(g, &mut bufs);
        bufs.iter().map(|b| from_bf16(&s.clone_dtoh(b).unwrap())).collect()
    }

    /// The first two buffers mutable and the rest shared (outputs first, then inputs).
    fn split2<T>(b: &mut [T]) -> (&mut T, &mut T, &[T]) {
        let (first, rest) = b.split_at_mut(1);
        let (second, rest) = rest.split_at_mut(1);
        (&mut first[0], &mut second[0], rest)
    }

    /// The first buffer and the rest, both mutable.
    fn split1<T>(b: &mut [T]) -> (&mut T, &mut [T]) {
        let (first, rest) = b.split_at_mut(1);
        (&mut first[0], rest)
    }

    #[test]
    fn rmsnorm_forward_and_backward_match_reference() {
        let Some(g) = gpu("rmsnorm_forward_and_backward_match_reference") else { return };
        let s = g.stream();
        // C not a multiple of 32 (a partial last lane round), N not a multiple of the rows per block.
        let (n, c, eps) = (83, 300, 1e-5);
        let mut rng = Rng::new(21);
        let (x0, w0, dout0) = (normal(&mut rng, n * c, 2.0), normal(&mut rng, c, 1.0), normal(&mut rng, n * c, 1.0));
        let (dinp00, dw00) = (normal(&mut rng, n * c, 1.0), normal(&mut rng, c, 1.0));
        for bf in [false, true] {
            let r = |v: &[f32]| storage(bf, v);
            let (x, w, dout, dinp0, dw0) = (r(&x0), r(&w0), r(&dout0), r(&dinp00), r(&dw00));
            let (mut want_y, mut want_rr) = (vec![0.0f32; n * c], vec![0.0f32; n]);
            reference::rmsnorm_forward(&mut want_y, &mut want_rr, &x, &w, n, c, eps);
            let (mut want_dx, mut want_dw) = (dinp0.clone(), dw0.clone());
            reference::rmsnorm_backward(&mut want_dx, &mut want_dw, &dout, &x, &w, &want_rr, n, c);

            // Saved 1/rms: f32 on both sides; the backward reads the reference's, so it is checked alone.
            let mut rr = s.alloc_zeros::<f32>(n).unwrap();
            let drr = s.clone_htod(&want_rr).unwrap();
            let zeros = vec![0.0f32; n * c];
            let inputs: [&[f32]; 6] = [&zeros, &dinp0, &dw0, &x, &w, &dout];
            let (got, tol, ty) = if bf {
                let got = run_bf16(&g, &inputs, |g, b| {
                    let (y, rest) = split1(b);
                    let (dx, dw, rest) = split2(rest);
                    g.rmsnorm_forward(y, &mut rr, &rest[0], &rest[1], n, c, eps).unwrap();
                    g.rmsnorm_backward(dx, dw, &rest[2], &rest[0], &rest[1], &drr, n, c).unwrap();
                });
                (got, Tolerance::BF16, "bf16")
            } else {
                let got = run_f32(&g, &inputs, |g, b| {
                    let (y, rest) = split1(b);
                    let (dx, dw, rest) = split2(rest);
                    g.rmsnorm_forward(y, &mut rr, &rest[0], &rest[1], n, c, eps).unwrap();
                    g.rmsnorm_backward(dx, dw, &rest[2], &rest[0], &rest[1], &drr, n, c).unwrap();
                });
                (got, Tolerance::F32, "f32")
            };
            tol.assert_close(&format!("rmsnorm out {ty}"), &got[0], &want_y);
            Tolerance::F32.assert_close(&format!("rmsnorm rrms {ty}"), &s.clone_dtoh(&rr).unwrap(), &want_rr);
            tol.assert_close(&format!("rmsnorm dinp {ty}"), &got[1], &want_dx);
            tol.assert_close(&format!("rmsnorm dw {ty}"), &got[2], &want_dw);
        }
    }

    #[test]
    fn rope_forward_and_backward_match_reference() {
        let Some(g) = gpu("rope_forward_and_backward_match_reference") else { return };
        // (B, T, pos0, NH, NKV, hs, base): training rows from position 0, and an inference chunk far
        // into a sequence (angles ~4000 rad: the f64 angle matters there).
        for (case, &(b, t, pos0, nh, nkv, hs, base)) in
            [(2, 37, 0, 3, 1, 16, 1e4), (1, 5, 4000, 9, 3, 64, 1e5), (3, 11, 7, 4, 4, 32, 1e4)].iter().enumerate()
        {
            let (w, rot) = ((nh + 2 * nkv) * hs, (nh + nkv) * hs);
            let mut rng = Rng::new(30 + case as u64);
            let (x0, d0) = (normal(&mut rng, b * t * w, 1.0), normal(&mut rng, b * t * w, 1.0));
            for bf in [false, true] {
                let (x, d) = (storage(bf, &x0), storage(bf, &d0));
                let (mut want_y, mut want_dx) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
                reference::rope_forward(&mut want_y, &x, b, t, pos0, w, rot, hs, base);
                reference::rope_backward(&mut want_dx, &d, b, t, pos0, w, rot, hs, base);
                let nan = vec![f32::NAN; x.len()];
                let inputs: [&[f32]; 4] = [&nan, &nan, &x, &d];
                let name = format!("rope B={b} T={t} pos0={pos0} NH={nh} NKV={nkv} hs={hs}");
                let (got, tol) = if bf {
                    let got = run_bf16(&g, &inputs, |g, bu| {
                        let (y, dx, rest) = split2(bu);
                        g.rope_forward(y, &rest[0], b, t, pos0, w, rot, hs, base).unwrap();
                        g.rope_backward(dx, &rest[1], b, t, pos0, w, rot, hs, base).unwrap();
                    });
                    (got, Tolerance::BF16)
                } else {
                    let got = run_f32(&g, &inputs, |g, bu| {
                        let (y, dx, rest) = split2(bu);
                        g.rope_forward(y, &rest[0], b, t, pos0, w, rot, hs, base).unwrap();
                        g.rope_backward(dx, &rest[1], b, t, pos0, w, rot, hs, base).unwrap();
                    });
                    (got, Tolerance::F32)
                };
                let ty = if bf { "bf16" } else { "f32" };
                tol.assert_close(&format!("{name} forward {ty}"), &got[0], &want_y);
                tol.assert_close(&format!("{name} backward {ty}"), &got[1], &want_dx);
            }
        }
    }

    #[test]
    fn swiglu_forward_and_backward_match_reference() {
        let Some(g) = gpu("swiglu_forward_and_backward_match_reference") else { return };
        let (n, h) = (67, 301);
        let mut rng = Rng::new(40);
        let mut x0 = normal(&mut rng, n * 2 * h, 3.0);
        // Saturated gates: e^-g overflows (silu -> 0) or vanishes (silu -> g).
        x0[..4].copy_from_slice(&[-100.0, 100.0, -1e4, 0.0]);
        let d0 = normal(&mut rng, n * h, 1.0);
        for bf in [false, true] {
            let (x, d) = (storage(bf, &x0), storage(bf, &d0));
            let (mut want_y, mut want_dx) = (vec![0.0f32; n * h], vec![0.0f32; n * 2 * h]);
            reference::swiglu_forward(&mut want_y, &x, n, h);
            reference::swiglu_backward(&mut want_dx, &x, &d, n, h);
            let (y0, dx0) = (vec![f32::NAN; n * h], vec![f32::NAN; n * 2 * h]);
            let inputs: [&[f32]; 4] = [&y0, &dx0, &x, &d];
            let (got, tol, ty) = if bf {
                let got = run_bf16(&g, &inputs, |g, b| {
                    let (y, dx, rest) = split2(b);
                    g.swiglu_forward(y, &rest[0], n, h).unwrap();
                    g.swiglu_backward(dx, &rest[0], &rest[1], n, h).unwrap();
                });
                (got, Tolerance::BF16, "bf16")
            } else {
                let got = run_f32(&g, &inputs, |g, b| {
                    let (y, dx, rest) = split2(b);
                    g.swiglu_forward(y, &rest[0], n, h).unwrap();
                    g.swiglu_backward(dx, &rest[0], &rest[1], n, h).unwrap();
                });
                (got, Tolerance::F32, "f32")
            };
            tol.assert_close(&format!("swiglu forward {ty}"), &got[0], &want_y);
            tol.assert_close(&format!("swiglu backward {ty}"), &got[1], &want_dx);
        }
    }

    #[test]
    fn repeat_kv_forward_and_backward_match_reference() {
        let Some(g) = gpu("repeat_kv_forward_and_backward_match_reference") else { return };
        // SmolLM2's grouping (3 query heads per kv head), plain multi-head (NKV = NH), one kv head.
        for (case, &(n, nh, nkv, hs)) in [(13, 9, 3, 20), (7, 4, 4, 8), (5, 3, 1, 33)].iter().enumerate() {
            let (c, kvd) = (nh * hs, nkv * hs);
            let mut rng = Rng::new(50 + case as u64);
            let (x0, d0) = (normal(&mut rng, n * (c + 2 * kvd), 1.0), normal(&mut rng, n * 3 * c, 1.0));
            for bf in [false, true] {
                let (x, d) = (storage(bf, &x0), storage(bf, &d0));
                let (mut want_y, mut want_dx) = (vec![0.0f32; d.len()], vec![0.0f32; x.len()]);
                reference::repeat_kv_forward(&mut want_y, &x, n, nh, nkv, hs);
                reference::repeat_kv_backward(&mut want_dx, &d, n, nh, nkv, hs);
                let (y0, dx0) = (vec![f32::NAN; d.len()], vec![f32::NAN; x.len()]);
                let inputs: [&[f32]; 4] = [&y0, &dx0, &x, &d];
                let (got, tol) = if bf {
                    let got = run_bf16(&g, &inputs, |g, b| {
                        let (y, dx, rest) = split2(b);
                        g.repeat_kv_forward(y, &rest[0], n, nh, nkv, hs).unwrap();
                        g.repeat_kv_backward(dx, &rest[1], n, nh, nkv, hs).unwrap();
                    });
                    (got, Tolerance::BF16)
                } else {
                    let got = run_f32(&g, &inputs, |g, b| {
                        let (y, dx, rest) = split2(b);
                        g.repeat_kv_forward(y, &rest[0], n, nh, nkv, hs).unwrap();
                        g.repeat_kv_backward(dx, &rest[1], n, nh, nkv, hs).unwrap();
                    });
                    (got, Tolerance::F32)
                };
                let name = format!("repeat_kv N={n} NH={nh} NKV={nkv} hs={hs} {}", if bf { "bf16" } else { "f32" });
                // The forward copies storage values: exact in either type.
                Tolerance::EXACT.assert_close(&format!("{name} forward"), &got[0], &want_y);
                tol.assert_close(&format!("{name} backward"), &got[1], &want_dx);
            }
        }
    }

    #[test]
    fn embed_forward_and_backward_match_reference() {
        let Some(g) = gpu("embed_forward_and_backward_match_reference") else { return };
        let s = g.stream();
        let (n, c, v) = (51, 75, 20);
        let mut rng = Rng::new(60);
        // Random tokens below V with repeats, so the grouped backward sums several rows per token.
        let tok: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
        let (wte0, d0, dwte00) =
            (normal(&mut rng, v * c, 1.0), normal(&mut rng, n * c, 1.0), normal(&mut rng, v * c, 1.0));
        let dtok = s.clone_htod(&tok).unwrap();
        let buckets = TokenBuckets::new(&g, &tok).unwrap();
        for bf in [false, true] {
            let (wte, d, dwte0) = (storage(bf, &wte0), storage(bf, &d0), storage(bf, &dwte00));
            let mut want_y = vec![0.0f32; n * c];
            reference::embed_forward(&mut want_y, &tok, &wte, n, c);
            let mut want_dwte = dwte0.clone();
            reference::embed_backward(&mut want_dwte, &d, &tok, n, c);
            let y0 = vec![f32::NAN; n * c];
            let inputs: [&[f32]; 4] = [&y0, &dwte0, &wte, &d];
            let (got, tol) = if bf {
                let got = run_bf16(&g, &inputs, |g, b| {
                    let (y, dwte, rest) = split2(b);
                    g.embed_forward(y, &dtok, &rest[0], n, c).unwrap();
                    g.embed_backward(dwte, &rest[1], &buckets, n, c).unwrap();
                });
                (got, Tolerance::BF16)
            } else {
                let got = run_f32(&g, &inputs, |g, b| {
                    let (y, dwte, rest) = split2(b);
                    g.embed_forward(y, &dtok, &rest[0], n, c).unwrap();
                    g.embed_backward(dwte, &rest[1], &buckets, n, c).unwrap();
                });
                (got, Tolerance::F32)
            };
            let ty = if bf { "bf16" } else { "f32" };
            Tolerance::EXACT.assert_close(&format!("embed forward {ty}"), &got[0], &want_y);
            tol.assert_close(&format!("embed dwte {ty}"), &got[1], &want_dwte);
        }
    }
}
