//! Each graph-network kernel (swish, edge gather, segment sums and broadcasts, Gaussian basis)
//! against its naive reference, the edge-gather backward against the plain scatter, and the fused
//! message step with a tabulated edge term against f64 interpolation + gather + swish + sum.

use octet_core::{Rng, Tolerance};
use octet_materials::graph::{self, NUM_BASIS, reference_gaussian_basis};
use octet_materials::ops;

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (2.0 * rng.normal()) as f32).collect()
}

#[test]
fn swish_matches_reference() {
    let mut rng = Rng::new(1);
    let x = randn(&mut rng, 50_000);
    let g = randn(&mut rng, 50_000);
    let (mut a, mut b) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
    ops::swish_forward(&mut a, &x);
    ops::reference_swish_forward(&mut b, &x);
    Tolerance::F32.assert_close("swish", &a, &b);
    ops::swish_backward(&mut a, &x, &g);
    ops::reference_swish_backward(&mut b, &x, &g);
    Tolerance::F32.assert_close("dswish", &a, &b);
}

/// A random symmetric directed graph over `n` nodes, grouped by center, with its reverse index.
fn random_edges(rng: &mut Rng, n: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut pairs = Vec::new();
    for i in 0..n {
        for j in 0..n {
            // Symmetric: keep the pair when a hash of the unordered pair says so, and duplicate
            // edges for i == j images.
            let (lo, hi) = (i.min(j), i.max(j));
            if (lo * 31 + hi * 17) % 3 == 0 || rng.below(100) == 200 {
                pairs.push((i as u32, j as u32));
            }
        }
    }
    pairs.sort();
    let centers: Vec<u32> = pairs.iter().map(|p| p.0).collect();
    let neighbors: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    let reverse: Vec<u32> = pairs.iter().map(|&(i, j)| pairs.binary_search(&(j, i)).unwrap() as u32).collect();
    let mut offsets = vec![0u32; n + 1];
    for &c in &centers {
        offsets[c as usize + 1] += 1;
    }
    for i in 0..n {
        offsets[i + 1] += offsets[i];
    }
    (centers, neighbors, reverse, offsets)
}

#[test]
fn edge_gather_and_its_adjoint_match_reference() {
    let mut rng = Rng::new(2);
    let (n, d) = (70, 9);
    let (c, nb, rev, off) = random_edges(&mut rng, n);
    let e = c.len();
    let pq = randn(&mut rng, n * 2 * d);
    let fb = randn(&mut rng, e * d);
    let (mut a, mut b) = (vec![0.0f32; e * d], vec![0.0f32; e * d]);
    ops::edge_gather_forward(&mut a, &pq, &fb, &c, &nb, d);
    ops::reference_edge_gather_forward(&mut b, &pq, &fb, &c, &nb, d);
    Tolerance::F32.assert_close("pre", &a, &b);
    let dpre = randn(&mut rng, e * d);
    let (mut a, mut b) = (vec![1.0f32; n * 2 * d], vec![0.0f32; n * 2 * d]);
    ops::edge_gather_backward(&mut a, &dpre, &off, &rev, d);
    ops::reference_edge_gather_backward(&mut b, &dpre, &c, &nb, n, d);
    Tolerance::F32.assert_close("dpq", &a, &b);
}

#[test]
fn segment_sum_and_broadcast_match_reference_and_are_adjoint() {
    let mut rng = Rng::new(3);
    let d = 5;
    let sizes = [3usize, 0, 7, 1, 130, 2];
    let mut offsets = vec![0u32];
    for s in sizes {
        offsets.push(offsets.last().unwrap() + s as u32);
    }
    let rows = *offsets.last().unwrap() as usize;
    let scale: Vec<f32> = (0..sizes.len()).map(|s| 0.5 + s as f32).collect();
    let x = randn(&mut rng, rows * d);
    let (mut a, mut b) = (vec![9.0f32; sizes.len() * d], vec![0.0f32; sizes.len() * d]);
    ops::segment_sum(&mut a, &x, &offsets, &scale, d);
    ops::reference_segment_sum(&mut b, &x, &offsets, &scale, d);
    Tolerance::F32.assert_close("segment_sum", &a, &b);
    let y = randn(&mut rng, sizes.len() * d);
    let (mut c, mut e) = (vec![9.0f32; rows * d], vec![0.0f32; rows * d]);
    ops::segment_broadcast(&mut c, &y, &offsets, &scale, d);
    ops::reference_segment_broadcast(&mut e, &y, &offsets, &scale, d);
    Tolerance::F32.assert_close("segment_broadcast", &c, &e);
    // <y, S x> == <B y, x>.
    let lhs: f64 = y.iter().zip(&a).map(|(p, q)| (*p as f64) * (*q as f64)).sum();
    let rhs: f64 = c.iter().zip(&x).map(|(p, q)| (*p as f64) * (*q as f64)).sum();
    assert!((lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
}

#[test]
fn gaussian_basis_matches_reference() {
    let r: Vec<f64> = (0..500).map(|i| 0.5 + 3.5 * i as f64 / 499.0).collect();
    let mut a = vec![0.0f32; r.len() * NUM_BASIS];
    let mut b = vec![0.0f64; r.len() * NUM_BASIS];
    graph::gaussian_basis(&mut a, &r);
    reference_gaussian_basis(&mut b, &r);
    Tolerance::F32.assert_close("basis", &a, &b);
    // The first centre is 0.05 A, the last 4 A, width 0.5 A: r = 4 gives 1 in the last column.
    assert!((b[499 * NUM_BASIS + NUM_BASIS - 1] - 1.0).abs() < 1e-12);
}

#[test]
fn fused_message_step_matches_gather_swish_sum() {
    let mut rng = Rng::new(4);
    let (n, d) = (40, 7);
    let (c, nb, _, off) = random_edges(&mut rng, n);
    let e = c.len();
    let pq = randn(&mut rng, n * 2 * d);
    let fb = randn(&mut rng, e * d);
    let inv = 1.0 / 6.5f32;
    // Reference: gather, swish, scaled segment sum, each by its reference.
    let mut pre_ref = vec![0.0f32; e * d];
    ops::reference_edge_gather_forward(&mut pre_ref, &pq, &fb, &c, &nb, d);
    let mut m = vec![0.0f32; e * d];
    ops::reference_swish_forward(&mut m, &pre_ref);
    let mut agg_ref = vec![0.0f32; n * d];
    ops::reference_segment_sum(&mut agg_ref, &m, &off, &vec![inv; n], d);
    let (mut agg, mut pre) = (vec![5.0f32; n * d], vec![5.0f32; e * d]);
    ops::edge_message_forward(&mut agg, Some(&mut pre), &pq, ops::EdgeFeatures::Rows(&fb), &off, &nb, inv, d);
    Tolerance::F32.assert_close("pre", &pre, &pre_ref);
    Tolerance::F32.assert_close("agg", &agg, &agg_ref);
    let mut agg2 = vec![5.0f32; n * d];
    ops::edge_message_forward(&mut agg2, None, &pq, ops::EdgeFeatures::Rows(&fb), &off, &nb, inv, d);
    Tolerance::EXACT.assert_close("agg without saving", &agg2, &agg);
    // Backward: dpre = swish'(pre) * broadcast(dagg * inv).
    let dagg = randn(&mut rng, n * d);
    let mut dm = vec![0.0f32; e * d];
    ops::reference_segment_broadcast(&mut dm, &dagg, &off, &vec![inv; n], d);
    let mut dpre_ref = vec![0.0f32; e * d];
    ops::reference_swish_backward(&mut dpre_ref, &pre_ref, &dm);
    let mut dpre = vec![5.0f32; e * d];
    ops::edge_message_backward(&mut dpre, &pre, &dagg, &off, inv, d);
    Tolerance::F32.assert_close("dpre", &dpre, &dpre_ref);
}

#[test]
fn fused_message_step_with_table_matches_interpolated_rows() {
    let mut rng = Rng::new(9);
    let (n, d, rows) = (30, 6, 50);
    let (c, nb, _, off) = random_edges(&mut rng, n);
    let e = c.len();
    let pq = randn(&mut rng, n * 2 * d);
    let table = randn(&mut rng, rows * d);
    let h = 0.05f64;
    // Lengths anywhere in [0, (rows - 1) h], including both ends.
    let mut dist: Vec<f32> = (0..e).map(|_| (rng.uniform() * (rows - 1) as f64 * h) as f32).collect();
    dist[0] = 0.0;
    dist[e - 1] = ((rows - 1) as f64 * h) as f32;
    // Reference: f64 linear interpolation, then gather, swish and sum by their references.
    let mut fb = vec![0.0f32; e * d];
    for (row, &r) in fb.chunks_mut(d).zip(&dist) {
        let t = r as f64 / h;
        let i = (t.floor() as usize).min(rows - 2);
        let w = t - i as f64;
        for k in 0..d {
            let (a, b) = (table[i * d + k] as f64, table[(i + 1) * d + k] as f64);
            row[k] = (a + w * (b - a)) as f32;
        }
    }
    let mut pre_ref = vec![0.0f32; e * d];
    ops::reference_edge_gather_forward(&mut pre_ref, &pq, &fb, &c, &nb, d);
    let mut m = vec![0.0f32; e * d];
    ops::reference_swish_forward(&mut m, &pre_ref);
    let inv = 0.25f32;
    let mut agg_ref = vec![0.0f32; n * d];
    ops::reference_segment_sum(&mut agg_ref, &m, &off, &vec![inv; n], d);
    let f = ops::EdgeFeatures::Table { table: &table, inv_h: 1.0 / h, distances: &dist };
    let mut expanded = vec![0.0f32; e * d];
    ops::expand_edge_features(&mut expanded, &f, d);
    Tolerance::F32.assert_close("interpolated rows", &expanded, &fb);
    let (mut agg, mut pre) = (vec![5.0f32; n * d], vec![5.0f32; e * d]);
    ops::edge_message_forward(&mut agg, Some(&mut pre), &pq, f, &off, &nb, inv, d);
    Tolerance::F32.assert_close("pre", &pre, &pre_ref);
    Tolerance::F32.assert_close("agg", &agg, &agg_ref);
}
