//! The kernels of the simplified transformer blocks (shaped attention, scalar gains, accumulate):
//! each reference backward against central finite differences of its reference forward in f64, and
//! each fast CPU kernel against its reference at `Tolerance::F32`.

use octet_core::{Rng, Tolerance};
use octet_kernels::{cpu, reference as r};

/// Central differences with h = 1e-6 err by O(h^2) ~ 1e-12 plus roundoff 1e-16/h ~ 1e-10.
const FD: Tolerance = Tolerance { atol: 1e-8, rtol: 1e-6 };
const TOL: Tolerance = Tolerance::F32;

fn randn(rng: &mut Rng, n: usize, std: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * std).collect()
}

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// d/dx_i of f(x) by central differences, for every i.
fn fd_grad(x: &[f64], f: &dyn Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    (0..x.len())
        .map(|i| {
            let (mut a, mut b) = (x.to_vec(), x.to_vec());
            a[i] += h;
            b[i] -= h;
            (f(&a) - f(&b)) / (2.0 * h)
        })
        .collect()
}

struct Sa {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
}

impl Sa {
    fn fwd(&self, qk: &[f64], v: &[f64], al: &[f64], be: &[f64], ga: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (b, t, c, nh) = (self.b, self.t, self.c, self.nh);
        let (mut o, mut l) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
        r::shaped_attention_forward(&mut o, &mut l, qk, v, al, be, ga, b, t, c, nh);
        (o, l)
    }
}

#[test]
fn shaped_attention_is_the_identity_at_initialisation() {
    // q = 0 makes P the uniform causal matrix C; alpha = beta = gamma = 1 then gives A = I.
    let s = Sa { b: 2, t: 7, c: 12, nh: 3 };
    let mut rng = Rng::new(1);
    let mut qk = randn(&mut rng, s.b * s.t * 2 * s.c, 1.0);
    for row in qk.chunks_mut(2 * s.c) {
        row[..s.c].fill(0.0);
    }
    let v = randn(&mut rng, s.b * s.t * s.c, 1.0);
    let ones = vec![1.0; s.nh];
    let (o, _) = s.fwd(&qk, &v, &ones, &ones, &ones);
    Tolerance { atol: 1e-14, rtol: 1e-14 }.assert_close("A = I", &o, &v);
    let (mut o32, mut l32) = (vec![0.0f32; o.len()], vec![0.0f32; s.b * s.nh * s.t]);
    let ones32 = vec![1.0f32; s.nh];
    cpu::shaped_attention_forward(
        &mut o32,
        &mut l32,
        &f32s(&qk),
        &f32s(&v),
        &ones32,
        &ones32,
        &ones32,
        s.b,
        s.t,
        s.c,
        s.nh,
    );
    TOL.assert_close("cpu A = I", &o32, &v);
}

#[test]
fn shaped_attention_backward_matches_finite_differences() {
    let s = Sa { b: 2, t: 5, c: 8, nh: 2 };
    let mut rng = Rng::new(2);
    let qk = randn(&mut rng, s.b * s.t * 2 * s.c, 1.0);
    let v = randn(&mut rng, s.b * s.t * s.c, 1.0);
    let (al, be, ga) = (randn(&mut rng, s.nh, 1.0), randn(&mut rng, s.nh, 1.0), randn(&mut rng, s.nh, 1.0));
    let d = randn(&mut rng, s.b * s.t * s.c, 1.0);
    let (_, lse) = s.fwd(&qk, &v, &al, &be, &ga);
    let (mut dqk, mut dv) = (vec![3.0; qk.len()], vec![3.0; v.len()]);
    let (mut da, mut db, mut dg) = (vec![0.5; s.nh], vec![0.5; s.nh], vec![0.5; s.nh]);
    r::shaped_attention_backward(
        &mut dqk, &mut dv, &mut da, &mut db, &mut dg, &d, &qk, &v, &lse, &al, &be, &ga, s.b, s.t, s.c, s.nh,
    );
    let loss = |qk: &[f64], v: &[f64], al: &[f64], be: &[f64], ga: &[f64]| dot(&s.fwd(qk, v, al, be, ga).0, &d);
    FD.assert_close("dqk", &dqk, &fd_grad(&qk, &|x| loss(x, &v, &al, &be, &ga)));
    FD.assert_close("dv", &dv, &fd_grad(&v, &|x| loss(&qk, x, &al, &be, &ga)));
    // The gain gradients accumulate onto 0.5.
    let shift = |g: Vec<f64>| g.iter().map(|x| x + 0.5).collect::<Vec<_>>();
    FD.assert_close("dalpha", &da, &shift(fd_grad(&al, &|x| loss(&qk, &v, x, &be, &ga))));
    FD.assert_close("dbeta", &db, &shift(fd_grad(&be, &|x| loss(&qk, &v, &al, x, &ga))));
    FD.assert_close("dgamma", &dg, &shift(fd_grad(&ga, &|x| loss(&qk, &v, &al, &be, x))));
}

#[test]
fn shaped_attention_cpu_matches_reference() {
    // T = 70 > one gemm tile; several batch rows reduce their gain partials in order.
    for (b, t, c, nh) in [(2, 13, 24, 3), (3, 70, 32, 4)] {
        let mut rng = Rng::new(3);
        let qk = randn(&mut rng, b * t * 2 * c, 1.0);
        let v = randn(&mut rng, b * t * c, 1.0);
        let (al, be, ga) = (randn(&mut rng, nh, 1.0), randn(&mut rng, nh, 1.0), randn(&mut rng, nh, 1.0));
        let d = randn(&mut rng, b * t * c, 1.0);
        let s = Sa { b, t, c, nh };
        let (o, lse) = s.fwd(&qk, &v, &al, &be, &ga);
        let (qk32, v32, d32) = (f32s(&qk), f32s(&v), f32s(&d));
        let (al32, be32, ga32) = (f32s(&al), f32s(&be), f32s(&ga));
        let (mut o32, mut l32) = (vec![0.0f32; o.len()], vec![0.0f32; lse.len()]);
        cpu::shaped_attention_forward(&mut o32, &mut l32, &qk32, &v32, &al32, &be32, &ga32, b, t, c, nh);
        TOL.assert_close("sa out", &o32, &o);
        TOL.assert_close("sa lse", &l32, &lse);

        let (mut dqk, mut dv) = (vec![3.0; qk.len()], vec![3.0; v.len()]);
        let (mut da, mut db, mut dg) = (vec![0.5; nh], vec![0.5; nh], vec![0.5; nh]);
        r::shaped_attention_backward(
            &mut dqk, &mut dv, &mut da, &mut db, &mut dg, &d, &qk, &v, &lse, &al, &be, &ga, b, t, c, nh,
        );
        let (mut dqk32, mut dv32) = (vec![3.0f32; qk.len()], vec![3.0f32; v.len()]);
        let (mut da32, mut db32, mut dg32) = (vec![0.5f32; nh], vec![0.5f32; nh], vec![0.5f32; nh]);
        cpu::shaped_attention_backward(
            &mut dqk32, &mut dv32, &mut da32, &mut db32, &mut dg32, &d32, &qk32, &v32, &l32, &al32, &be32, &ga32, b, t,
            c, nh,
        );
        TOL.assert_close("sa dqk", &dqk32, &dqk);
        TOL.assert_close("sa dv", &dv32, &dv);
        // Gain gradients sum B*T*T products: relative error grows like sqrt(count) * 6e-8.
        let sums = Tolerance { atol: 1e-4, rtol: 1e-4 };
        sums.assert_close("sa dalpha", &da32, &da);
        sums.assert_close("sa dbeta", &db32, &db);
        sums.assert_close("sa dgamma", &dg32, &dg);
    }
}

#[test]
fn gain_kernels_match_finite_differences_and_cpu() {
    let n = 11;
    let mut rng = Rng::new(4);
    let (x, y, d) = (randn(&mut rng, n, 1.0), randn(&mut rng, n, 1.0), randn(&mut rng, n, 1.0));
    let (a, b) = ([0.7], [-1.3]);
    // scale
    let sf = |x: &[f64], g: &[f64]| {
        let mut o = vec![0.0; n];
        r::scale_forward(&mut o, x, g);
        dot(&o, &d)
    };
    let (mut dx, mut dg) = (vec![9.0; n], vec![0.25]);
    r::scale_backward(&mut dx, &mut dg, &d, &x, &a);
    FD.assert_close("scale dx", &dx, &fd_grad(&x, &|x| sf(x, &a)));
    FD.assert_close("scale dg", &[dg[0] - 0.25], &fd_grad(&a, &|g| sf(&x, g)));
    // scale_add
    let saf = |x: &[f64], y: &[f64], a: &[f64], b: &[f64]| {
        let mut o = vec![0.0; n];
        r::scale_add_forward(&mut o, x, y, a, b);
        dot(&o, &d)
    };
    let (mut dx, mut dy, mut da, mut db) = (vec![9.0; n], vec![9.0; n], vec![0.25], vec![0.25]);
    r::scale_add_backward(&mut dx, &mut dy, &mut da, &mut db, &d, &x, &y, &a, &b);
    FD.assert_close("scale_add dx", &dx, &fd_grad(&x, &|x| saf(x, &y, &a, &b)));
    FD.assert_close("scale_add dy", &dy, &fd_grad(&y, &|y| saf(&x, y, &a, &b)));
    FD.assert_close("scale_add da", &[da[0] - 0.25], &fd_grad(&a, &|a| saf(&x, &y, a, &b)));
    FD.assert_close("scale_add db", &[db[0] - 0.25], &fd_grad(&b, &|b| saf(&x, &y, &a, b)));

    // CPU against reference on several parallel chunks.
    let n = 40_000;
    let (x, y, d) = (randn(&mut rng, n, 1.0), randn(&mut rng, n, 1.0), randn(&mut rng, n, 1.0));
    let (x32, y32, d32) = (f32s(&x), f32s(&y), f32s(&d));
    let (mut o, mut o32) = (vec![0.0; n], vec![0.0f32; n]);
    r::scale_forward(&mut o, &x, &a);
    cpu::scale_forward(&mut o32, &x32, &[0.7]);
    TOL.assert_close("cpu scale", &o32, &o);
    r::scale_add_forward(&mut o, &x, &y, &a, &b);
    cpu::scale_add_forward(&mut o32, &x32, &y32, &[0.7], &[-1.3]);
    TOL.assert_close("cpu scale_add", &o32, &o);
    let (mut dx, mut dg) = (vec![0.0; n], vec![0.25]);
    let (mut dx32, mut dg32) = (vec![0.0f32; n], vec![0.25f32]);
    r::scale_backward(&mut dx, &mut dg, &d, &x, &a);
    cpu::scale_backward(&mut dx32, &mut dg32, &d32, &x32, &[0.7]);
    TOL.assert_close("cpu scale dx", &dx32, &dx);
    TOL.assert_close("cpu scale dg", &dg32, &dg);
    let (mut dy, mut da, mut db) = (vec![0.0; n], vec![0.25], vec![0.25]);
    let (mut dy32, mut da32, mut db32) = (vec![0.0f32; n], vec![0.25f32], vec![0.25f32]);
    r::scale_add_backward(&mut dx, &mut dy, &mut da, &mut db, &d, &x, &y, &a, &b);
    cpu::scale_add_backward(&mut dx32, &mut dy32, &mut da32, &mut db32, &d32, &x32, &y32, &[0.7], &[-1.3]);
    TOL.assert_close("cpu scale_add dx", &dx32, &dx);
    TOL.assert_close("cpu scale_add dy", &dy32, &dy);
    TOL.assert_close("cpu scale_add da", &da32, &da);
    TOL.assert_close("cpu scale_add db", &db32, &db);
    let (mut acc, mut acc32) = (y.clone(), y32.clone());
    r::accumulate(&mut acc, &x);
    cpu::accumulate(&mut acc32, &x32);
    TOL.assert_close("cpu accumulate", &acc32, &acc);
}

/// CPU seconds of this process, all threads (sum of /proc/self/task/*/schedstat run times).
fn cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return f64::NAN };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

#[test]
#[ignore = "benchmark: cargo test --release -p octet-kernels --test shaped_attention -- --ignored --nocapture"]
fn shaped_vs_standard_attention_cost() {
    // The issue-4 shape: B=8, T=128, C=256, 8 heads. Forward + backward, median CPU time of 9 runs.
    let (b, t, c, nh) = (8, 128, 256, 8);
    let mut rng = Rng::new(9);
    let qkv = f32s(&randn(&mut rng, b * t * 3 * c, 1.0));
    let qk = f32s(&randn(&mut rng, b * t * 2 * c, 1.0));
    let v = f32s(&randn(&mut rng, b * t * c, 1.0));
    let d = f32s(&randn(&mut rng, b * t * c, 1.0));
    let g = vec![1.0f32; nh];
    let (mut o, mut l) = (vec![0.0f32; b * t * c], vec![0.0f32; b * nh * t]);
    let (mut dqkv, mut dqk, mut dv) = (vec![0.0f32; qkv.len()], vec![0.0f32; qk.len()], vec![0.0f32; v.len()]);
    let (mut da, mut db, mut dg) = (vec![0.0f32; nh], vec![0.0f32; nh], vec![0.0f32; nh]);
    let time = |f: &mut dyn FnMut()| {
        let mut v: Vec<f64> = (0..9)
            .map(|_| {
                let c0 = cpu_seconds();
                f();
                cpu_seconds() - c0
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[4] * 1e3
    };
    let std_ms = time(&mut || {
        cpu::attention_forward(&mut o, &mut l, &qkv, b, t, c, nh);
        cpu::attention_backward(&mut dqkv, &d, &qkv, &o, &l, b, t, c, nh);
    });
    let sa_ms = time(&mut || {
        cpu::shaped_attention_forward(&mut o, &mut l, &qk, &v, &g, &g, &g, b, t, c, nh);
        cpu::shaped_attention_backward(
            &mut dqk, &mut dv, &mut da, &mut db, &mut dg, &d, &qk, &v, &l, &g, &g, &g, b, t, c, nh,
        );
    });
    let n = b * t * c;
    let (x, y) = (f32s(&randn(&mut rng, n, 1.0)), f32s(&randn(&mut rng, n, 1.0)));
    let (mut dx, mut dy, mut ga, mut gb) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32], vec![0.0f32]);
    let gain_ms = time(&mut || {
        cpu::scale_add_forward(&mut dx, &x, &y, &[0.5], &[0.5]);
        cpu::scale_add_backward(&mut dx, &mut dy, &mut ga, &mut gb, &d, &x, &y, &[0.5], &[0.5]);
    });
    println!("attention fwd+bwd: standard {std_ms:.1} ms, shaped {sa_ms:.1} ms CPU; scale_add fwd+bwd {gain_ms:.2} ms");
}
