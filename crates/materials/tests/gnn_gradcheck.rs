//! Finite-difference check of every parameter gradient of the GNoME network, structural and
//! compositional, in f64 on the reference dense layers; and the f32 fast path against the f64 one.

use octet_core::{Rng, Slab, Tolerance};
use octet_materials::gnn::{Acts, Gnn, GnnConfig};
use octet_materials::graph::{self, GraphBatch, NUM_BASIS};
use octet_materials::{Composition, Element, Lattice, Structure};

fn el(s: &str) -> Element {
    Element::from_symbol(s).unwrap()
}

/// Three small crystals of different sizes: rock salt (2 atoms, fcc cell), a skewed 3-atom cell,
/// and a 1-atom cell (self-image edges only).
fn structures() -> Vec<Structure> {
    let fcc = Lattice::new([[0.0, 2.8, 2.8], [2.8, 0.0, 2.8], [2.8, 2.8, 0.0]]).unwrap();
    let nacl = Structure::new(fcc, vec![el("Na"), el("Cl")], vec![[0.0; 3], [0.5; 3]]).unwrap();
    let skew = Lattice::from_parameters(3.1, 3.4, 4.0, 80.0, 95.0, 110.0).unwrap();
    let three =
        Structure::new(skew, vec![el("Ti"), el("O"), el("O")], vec![[0.0; 3], [0.3, 0.3, 0.1], [0.7, 0.6, 0.5]])
            .unwrap();
    let one = Structure::new(Lattice::cubic(2.9).unwrap(), vec![el("Fe")], vec![[0.0; 3]]).unwrap();
    vec![nacl, three, one]
}

fn structure_batch() -> GraphBatch {
    let gs: Vec<_> = structures().iter().map(|s| graph::structure_graph(s, 3.2).unwrap()).collect();
    GraphBatch::new(&gs.iter().collect::<Vec<_>>()).unwrap()
}

fn composition_batch() -> GraphBatch {
    let gs: Vec<_> = ["Fe2O3", "Li", "NaCl", "BaTiO3"]
        .iter()
        .map(|f| graph::composition_graph(&Composition::parse(f).unwrap()).unwrap())
        .collect();
    GraphBatch::new(&gs.iter().collect::<Vec<_>>()).unwrap()
}

fn config(basis_dim: usize) -> GnnConfig {
    GnnConfig { width: 4, steps: 2, basis_dim, avg_adjacency: 7.5, scale: 0.7, shift: -0.3 }
}

/// Random parameters everywhere (biases too), so that no gradient is trivially zero.
fn random_model(cfg: GnnConfig, seed: u64) -> Gnn<f64> {
    let mut rng = Rng::new(seed);
    let n = cfg.layout().total();
    Gnn::from_params(cfg, (0..n).map(|_| 0.5 * rng.normal()).collect()).unwrap()
}

/// L = sum_b w_b y_b with fixed random w: dL/dy = w.
fn loss(m: &Gnn<f64>, batch: &GraphBatch, w: &[f64]) -> f64 {
    let y = m.forward(&mut Acts::default(), batch).unwrap();
    y.iter().zip(w).map(|(a, b)| a * b).sum()
}

fn gradcheck(cfg: GnnConfig, batch: &GraphBatch) {
    let mut m = random_model(cfg, 11);
    let mut rng = Rng::new(5);
    let w: Vec<f64> = (0..batch.num_graphs()).map(|_| rng.normal()).collect();
    let mut acts = Acts::default();
    m.forward(&mut acts, batch).unwrap();
    let mut grads = Slab::<f64>::zeros(m.params.layout.clone());
    m.backward(&mut grads, &acts, batch, &w);

    // Central differences: truncation O(eps^2 f''') ~ 1e-10 relative, roundoff ulp(L)/eps ~ 1e-10
    // absolute; |g - fd| <= 1e-8 + 1e-6 |fd| leaves a wide margin.
    let tol = Tolerance { atol: 1e-8, rtol: 1e-6 };
    let eps = 1e-5;
    let used: Vec<usize> = batch.species.iter().map(|&z| z as usize).collect();
    let layout = m.params.layout.clone();
    let mut checked = 0;
    for s in layout.specs() {
        for k in 0..s.numel() {
            // Embedding rows of absent elements: gradient exactly zero, no need to difference.
            if s.name == "embed" && !used.contains(&(k / m.cfg.width)) {
                assert_eq!(grads.data[s.offset + k], 0.0, "embed row {} has a gradient", k / m.cfg.width);
                continue;
            }
            let i = s.offset + k;
            let x = m.params.data[i];
            m.params.data[i] = x + eps;
            let up = loss(&m, batch, &w);
            m.params.data[i] = x - eps;
            let down = loss(&m, batch, &w);
            m.params.data[i] = x;
            let fd = (up - down) / (2.0 * eps);
            assert!(tol.close(grads.data[i], fd), "{}[{k}]: analytic {:e} vs fd {fd:e}", s.name, grads.data[i]);
            checked += 1;
        }
    }
    assert!(checked > 400, "only {checked} parameters checked");
}

#[test]
fn structural_model_gradients_match_central_differences() {
    let batch = structure_batch();
    assert!(batch.num_edges() > 20 && batch.basis_dim == NUM_BASIS);
    gradcheck(config(NUM_BASIS), &batch);
}

#[test]
fn compositional_model_gradients_match_central_differences() {
    gradcheck(config(0), &composition_batch());
}

#[test]
fn f32_fast_path_matches_f64_reference_path() {
    for (batch, k) in [(structure_batch(), NUM_BASIS), (composition_batch(), 0)] {
        let cfg = GnnConfig { width: 16, steps: 3, ..config(k) };
        let m32 = Gnn::<f32>::init(cfg, 3).unwrap();
        let m64 = m32.to_f64();
        let mut a32 = Acts::default();
        let mut a64 = Acts::default();
        let y32 = m32.forward(&mut a32, &batch).unwrap();
        let y64 = m64.forward(&mut a64, &batch).unwrap();
        Tolerance::F32_MODEL.assert_close("y", &y32, &y64);
        let dy: Vec<f64> = (0..batch.num_graphs()).map(|g| 1.0 + g as f64).collect();
        let dy32: Vec<f32> = dy.iter().map(|&x| x as f32).collect();
        let mut g32 = Slab::<f32>::zeros(m32.params.layout.clone());
        let mut g64 = Slab::<f64>::zeros(m64.params.layout.clone());
        m32.backward(&mut g32, &a32, &batch, &dy32);
        m64.backward(&mut g64, &a64, &batch, &dy);
        for (spec, g) in g32.iter() {
            Tolerance::F32_MODEL.assert_close(&spec.name, g, &g64.data[spec.range()]);
        }
    }
}

#[test]
fn energy_is_invariant_to_cell_choice_and_site_order() {
    // A 2x1x1 supercell of rock salt has the same per-atom prediction (mean readout, normalised
    // messages); so does the cell with its sites listed in another order.
    let s = &structures()[0];
    let m = matrix_doubled(s);
    let swapped = Structure::new(s.lattice.clone(), vec![el("Cl"), el("Na")], vec![[0.5; 3], [0.0; 3]]).unwrap();
    let gs: Vec<_> = [s, &m, &swapped].iter().map(|s| graph::structure_graph(s, 4.0).unwrap()).collect();
    let batch = GraphBatch::new(&gs.iter().collect::<Vec<_>>()).unwrap();
    let model = Gnn::<f64>::init(GnnConfig { width: 8, steps: 3, ..config(NUM_BASIS) }, 1).unwrap();
    let y = model.forward(&mut Acts::default(), &batch).unwrap();
    Tolerance { atol: 1e-10, rtol: 1e-10 }.assert_close("supercell", &y[1..2], &y[0..1]);
    Tolerance { atol: 1e-10, rtol: 1e-10 }.assert_close("order", &y[2..3], &y[0..1]);
}

fn matrix_doubled(s: &Structure) -> Structure {
    let m = s.lattice.matrix();
    let l = Lattice::new([[2.0 * m[0][0], 2.0 * m[0][1], 2.0 * m[0][2]], m[1], m[2]]).unwrap();
    let mut species = Vec::new();
    let mut frac = Vec::new();
    for shift in [0.0, 1.0] {
        for (e, f) in s.species.iter().zip(&s.frac_coords) {
            species.push(*e);
            frac.push([(f[0] + shift) / 2.0, f[1], f[2]]);
        }
    }
    Structure::new(l, species, frac).unwrap()
}
