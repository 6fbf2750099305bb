//! Inference (`Gnn::predict_with`: tabulated edge-basis projection, per-element step-0 rows)
//! against the exact forward (`Gnn::predict_exact`), and the tables' interpolation bound against
//! the exact projection at every length on a fine grid.

use octet_core::Tolerance;
use octet_materials::gnn::{Acts, Gnn, GnnConfig, TABLE_STEP};
use octet_materials::graph::{self, GraphBatch, NUM_BASIS};
use octet_materials::{Composition, Element, Lattice, Structure};

fn el(s: &str) -> Element {
    Element::from_symbol(s).unwrap()
}

fn structure_batch(cutoff: f64) -> GraphBatch {
    let fcc = Lattice::new([[0.0, 2.8, 2.8], [2.8, 0.0, 2.8], [2.8, 2.8, 0.0]]).unwrap();
    let nacl = Structure::new(fcc, vec![el("Na"), el("Cl")], vec![[0.0; 3], [0.5; 3]]).unwrap();
    let skew = Lattice::from_parameters(3.1, 3.4, 4.0, 80.0, 95.0, 110.0).unwrap();
    let three =
        Structure::new(skew, vec![el("Ti"), el("O"), el("O")], vec![[0.0; 3], [0.3, 0.3, 0.1], [0.7, 0.6, 0.5]])
            .unwrap();
    let one = Structure::new(Lattice::cubic(2.9).unwrap(), vec![el("Fe")], vec![[0.0; 3]]).unwrap();
    let gs: Vec<_> = [nacl, three, one].iter().map(|s| graph::structure_graph(s, cutoff).unwrap()).collect();
    GraphBatch::new(&gs.iter().collect::<Vec<_>>()).unwrap()
}

fn config(basis_dim: usize) -> GnnConfig {
    GnnConfig { width: 32, steps: 3, basis_dim, avg_adjacency: 12.0, scale: 0.7, shift: -0.3 }
}

/// A model as training leaves it: every parameter moved off its initial value (biases and the
/// global node included), so no step-0 shortcut is tested on zeros.
fn trained_like(cfg: GnnConfig, seed: u64) -> Gnn<f32> {
    let mut m = Gnn::<f32>::init(cfg, seed).unwrap();
    let mut rng = octet_core::Rng::new(seed + 100);
    for x in &mut m.params.data {
        *x += (0.05 * rng.normal()) as f32;
    }
    m
}

/// Predictions from the tables differ from the exact path by the interpolation error propagated
/// through the network (bound ~1e-5 here) plus f32 rounding: `F32_MODEL`.
#[test]
fn tabulated_inference_matches_exact_forward() {
    for cutoff in [4.0, 5.0] {
        let batch = structure_batch(cutoff);
        for seed in 0..3 {
            let m = trained_like(config(NUM_BASIS), seed);
            let exact = m.predict_exact(&mut Acts::default(), &batch).unwrap();
            let fast = m.predict(&batch).unwrap();
            Tolerance::F32_MODEL.assert_close("y", &fast, &exact);
            // Tables built for a longer range give the same result up to f32 rounding.
            let wide = m.inference_tables(8.0);
            Tolerance::F32_MODEL.assert_close("y (wide tables)", &m.predict_with(&wide, &batch).unwrap(), &exact);
        }
    }
}

#[test]
fn compositional_inference_matches_exact_forward() {
    let gs: Vec<_> = ["Fe2O3", "Li", "NaCl", "BaTiO3"]
        .iter()
        .map(|f| graph::composition_graph(&Composition::parse(f).unwrap()).unwrap())
        .collect();
    let batch = GraphBatch::new(&gs.iter().collect::<Vec<_>>()).unwrap();
    let m = trained_like(config(0), 4);
    let exact = m.predict_exact(&mut Acts::default(), &batch).unwrap();
    Tolerance::F32_MODEL.assert_close("y", &m.predict(&batch).unwrap(), &exact);
}

/// The projected basis interpolated from the tables stays within `interpolation_bound` (plus f32
/// rounding of values of order 1: 1e-5) of the exact projection, at lengths between grid points.
#[test]
fn table_interpolation_error_is_within_its_bound() {
    let m = trained_like(config(NUM_BASIS), 7).to_f64();
    let t = m.inference_tables(4.0);
    assert!(t.interpolation_bound > 0.0 && t.interpolation_bound < 1e-3, "bound {}", t.interpolation_bound);
    let r: Vec<f32> = (0..4000).map(|i| (0.001 + 3.998 * i as f64 / 3999.0) as f32).collect();
    // Exact: basis(r) Wb^T + bb per step, in f64, vs the table row the kernel interpolates.
    let (d, k) = (m.cfg.width, NUM_BASIS);
    let mut basis = vec![0.0f64; r.len() * k];
    graph::reference_gaussian_basis(&mut basis, &r.iter().map(|&x| x as f64).collect::<Vec<_>>());
    let mut worst = 0.0f64;
    for s in 0..m.cfg.steps {
        let w = m.params.get(m.params.layout.expect_id(&format!("step{s}.basis.w")));
        let b = m.params.get(m.params.layout.expect_id(&format!("step{s}.basis.b")));
        let fast = t.edge_rows(s, &r);
        for e in 0..r.len() {
            for j in 0..d {
                let exact: f64 = b[j] + (0..k).map(|q| w[j * k + q] * basis[e * k + q]).sum::<f64>();
                worst = worst.max((fast[e * d + j] - exact).abs());
            }
        }
    }
    assert!(worst <= t.interpolation_bound + 1e-5, "worst {worst} > bound {}", t.interpolation_bound);
    // Interpolation does change the values (so the check above is not comparing a path to itself),
    // and by more than rounding alone at this spacing.
    assert!(worst > 1e-9, "worst {worst} at h = {TABLE_STEP}");
}

/// Members run in parallel per batch (`ensemble::predict_members`) give each member's predictions
/// exactly as running it alone, batch after batch, does.
#[test]
fn members_in_parallel_predict_as_each_alone() {
    let fcc = Lattice::new([[0.0, 2.8, 2.8], [2.8, 0.0, 2.8], [2.8, 2.8, 0.0]]).unwrap();
    let gs: Vec<_> = (0..7)
        .map(|i| {
            let f = fcc.clone();
            let s =
                Structure::new(f, vec![el("Na"), el(if i % 2 == 0 { "Cl" } else { "Br" })], vec![[0.0; 3], [0.5; 3]])
                    .unwrap();
            graph::structure_graph(&s.with_volume_scaled(0.9 + 0.03 * i as f64).unwrap(), 4.0).unwrap()
        })
        .collect();
    let refs: Vec<_> = gs.iter().collect();
    let models: Vec<Gnn<f32>> = (0..3).map(|s| trained_like(config(NUM_BASIS), s)).collect();
    let all = octet_materials::ensemble::predict_members(&models.iter().collect::<Vec<_>>(), &refs, 3).unwrap();
    for (m, y) in models.iter().zip(&all) {
        let alone = octet_materials::ensemble::predict_graphs(m, &refs, 3).unwrap();
        Tolerance::EXACT.assert_close("member", y, &alone);
    }
}

/// `octet bench materials` reports `structures_per_s` in the unit: a structure through a
/// k-member ensemble counts as k, so it is k times `ensemble_structures_per_s`.
#[test]
fn bench_counts_a_structure_through_k_members_as_k() {
    let structures = octet_materials::bench::synthetic_structures(12).unwrap();
    let cfg = octet_materials::bench::BenchConfig {
        width: 8,
        steps: 2,
        ensemble: 3,
        batch: 4,
        train_batch: 4,
        train_steps: 1,
    };
    let r = octet_materials::bench::bench(&cfg, &structures, "synthetic").unwrap();
    assert!(r.structures_per_s > 0.0 && r.passes_per_s > 0.0);
    assert!((r.structures_per_s - 3.0 * r.ensemble_structures_per_s).abs() <= 1e-9 * r.structures_per_s);
}
