//! The GNoME-style energy network on a `GraphBatch`, with a hand-written backward beside the forward.
//! One network serves both GNoME models: the structural model (structure graphs, Gaussian edge
//! basis) and the compositional model (one node per element with its embedding scaled by the atomic
//! fraction, fully connected, no edge features). Generic over `Num`: f32 runs on the fast gemm
//! kernels, f64 on the reference loops for finite-difference checks (tests/gnn_gradcheck.rs).
//!
//! Shapes: N nodes, E edges, B graphs in the batch, D the width, K the basis width.
//! ```text
//! embed     h = scale_n * Embed[Z_n]                          (N, D)   one-hot @ W = a table row
//!           g = Global                                         (B, D)   global node, from zeros
//! step t    [P | Q] = h @ We^T + (g @ Weg^T)_node + be            (N, 2D)
//!           pre_e = P[center_e] + Q[neighbour_e] + basis_e @ Wb^T + bb   (E, D)
//!           agg_n = sum_{e: center_e = n} swish(pre_e) / avg_adj           (N, D)
//!           h += swish([h, agg] @ W1^T + (g @ W1g^T)_node + b1) @ W2^T + b2   (N, D)
//!           g += swish([mean_graph(h), g] @ V1^T + c1) @ V2^T + c2         (B, D)
//! readout   out = swish([mean_graph(h), g] @ R1^T + r1) @ R2^T + r2        (B, 1)
//!           y = scale * out + shift   (per atom);  energy = atoms * y
//! ```
//! The edge update is GNoME's edge MLP on [sender, receiver, edge features, global] (one hidden
//! swish layer): its output layer is linear and the messages are only summed, so that layer is
//! folded into the node MLP's input matrix (linear after linear), and edges carry no state between
//! steps — which keeps every per-edge cost at O(K D + D) and lets all D x D products run per node.
//! The global node's share of the edge and node MLP inputs (the concatenated g) is multiplied once
//! per graph, `(.)_node` broadcasting it to the graph's nodes; an edge and its reverse have the same
//! length, so the basis projection runs once per pair (`GraphBatch::pair_first`).
//! Messages are normalised by the data set's average adjacency (edges per node), as GNoME's
//! `segment_normalized`; node and global updates are residual.
//!
//! Inference (`predict`, `predict_with`) computes the same function faster (`InferenceTables`): each
//! step's basis projection, a function of the edge length alone, is tabulated on a 1/128 A grid and
//! interpolated inside the message kernel (error bound in `InferenceTables`), and step 0's products by
//! the embedding and the global parameter are per-element rows and constants. `predict_exact` is the
//! training forward without saved activations, the reference inference is tested against.
//!
//! Gradient convention (as the kernels crate): parameter gradients accumulate (`+=`), activation
//! gradients overwrite, except the residual streams dh, dg.

use std::sync::Arc;

use octet_core::{Error, Layout, Result, Rng, Slab, TensorId};
use serde::{Deserialize, Serialize};

use crate::graph::{self, BASIS_WIDTH, GraphBatch};
use crate::ops::{self, EdgeFeatures, Num};

/// Rows of the embedding table: atomic numbers 0..=118 (row 0 unused).
pub const NUM_Z: usize = 119;

/// Network hyper-parameters and the constants of the readout and message normalisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GnnConfig {
    /// Width D of every hidden feature.
    pub width: usize,
    /// Message-passing steps.
    pub steps: usize,
    /// Edge basis width K (graph::NUM_BASIS for structures, 0 for compositions).
    pub basis_dim: usize,
    /// Messages are divided by this (mean edges per node of the training set).
    pub avg_adjacency: f64,
    /// y = scale * out + shift: the training targets' standard deviation and mean.
    pub scale: f64,
    pub shift: f64,
}

/// Resolved ids of one step's tensors.
#[derive(Clone, Copy, Debug)]
struct StepIds {
    edge_w: TensorId,
    edge_wg: TensorId,
    edge_b: TensorId,
    basis_w: Option<TensorId>,
    basis_b: TensorId,
    node1_w: TensorId,
    node1_wg: TensorId,
    node1_b: TensorId,
    node2_w: TensorId,
    node2_b: TensorId,
    glob1_w: TensorId,
    glob1_b: TensorId,
    glob2_w: TensorId,
    glob2_b: TensorId,
}

#[derive(Clone, Debug)]
struct Ids {
    embed: TensorId,
    global: TensorId,
    steps: Vec<StepIds>,
    read1_w: TensorId,
    read1_b: TensorId,
    read2_w: TensorId,
    read2_b: TensorId,
}

impl GnnConfig {
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.steps == 0 {
            return Err(Error::config("width/steps", "must be positive"));
        }
        for (name, v) in [("avg_adjacency", self.avg_adjacency), ("scale", self.scale), ("shift", self.shift)] {
            if !v.is_finite() {
                return Err(Error::config(name, format!("must be finite, got {v}")));
            }
        }
        if self.avg_adjacency <= 0.0 || self.scale <= 0.0 {
            return Err(Error::config("avg_adjacency/scale", "must be positive"));
        }
        Ok(())
    }

    /// The parameter table: (name, shape) in order; weights are (out, in) as the gemm kernels take.
    pub fn layout(&self) -> Layout {
        let (d, k) = (self.width, self.basis_dim);
        let mut t: Vec<(String, Vec<usize>)> = vec![("embed".into(), vec![NUM_Z, d]), ("global".into(), vec![d])];
        for s in 0..self.steps {
            let p = |n: &str| format!("step{s}.{n}");
            t.push((p("edge.w"), vec![2 * d, d]));
            t.push((p("edge.wg"), vec![2 * d, d]));
            t.push((p("edge.b"), vec![2 * d]));
            if k > 0 {
                t.push((p("basis.w"), vec![d, k]));
            }
            t.push((p("basis.b"), vec![d]));
            t.push((p("node1.w"), vec![d, 2 * d]));
            t.push((p("node1.wg"), vec![d, d]));
            t.push((p("node1.b"), vec![d]));
            t.push((p("node2.w"), vec![d, d]));
            t.push((p("node2.b"), vec![d]));
            t.push((p("glob1.w"), vec![d, 2 * d]));
            t.push((p("glob1.b"), vec![d]));
            t.push((p("glob2.w"), vec![d, d]));
            t.push((p("glob2.b"), vec![d]));
        }
        t.push(("readout1.w".into(), vec![d, 2 * d]));
        t.push(("readout1.b".into(), vec![d]));
        t.push(("readout2.w".into(), vec![1, d]));
        t.push(("readout2.b".into(), vec![1]));
        Layout::new(t)
    }

    fn ids(&self, l: &Layout) -> Ids {
        let steps = (0..self.steps)
            .map(|s| {
                let id = |n: &str| l.expect_id(&format!("step{s}.{n}"));
                StepIds {
                    edge_w: id("edge.w"),
                    edge_wg: id("edge.wg"),
                    edge_b: id("edge.b"),
                    basis_w: l.id(&format!("step{s}.basis.w")),
                    basis_b: id("basis.b"),
                    node1_w: id("node1.w"),
                    node1_wg: id("node1.wg"),
                    node1_b: id("node1.b"),
                    node2_w: id("node2.w"),
                    node2_b: id("node2.b"),
                    glob1_w: id("glob1.w"),
                    glob1_b: id("glob1.b"),
                    glob2_w: id("glob2.w"),
                    glob2_b: id("glob2.b"),
                }
            })
            .collect();
        Ids {
            embed: l.expect_id("embed"),
            global: l.expect_id("global"),
            steps,
            read1_w: l.expect_id("readout1.w"),
            read1_b: l.expect_id("readout1.b"),
            read2_w: l.expect_id("readout2.w"),
            read2_b: l.expect_id("readout2.b"),
        }
    }
}

/// The network: configuration plus one parameter slab.
#[derive(Clone, Debug)]
pub struct Gnn<T> {
    pub cfg: GnnConfig,
    pub params: Slab<T>,
    ids: Ids,
}

/// Saved activations of one step.
#[derive(Clone, Debug, Default)]
struct StepActs<T> {
    h: Vec<T>,   // (N, D) h at the start of the step
    g: Vec<T>,   // (B, D) g at the start of the step
    pre: Vec<T>, // (E, D)
    xn: Vec<T>,  // (N, 2D) [h, agg]
    a: Vec<T>,   // (N, D)
    s: Vec<T>,   // (N, D)
    xg: Vec<T>,  // (B, 2D) [mean h, g]
    ag: Vec<T>,  // (B, D)
    sg: Vec<T>,  // (B, D)
}

/// Everything the backward pass needs from a forward pass.
#[derive(Clone, Debug, Default)]
pub struct Acts<T> {
    steps: Vec<StepActs<T>>,
    xr: Vec<T>,        // (B, 2D)
    ar: Vec<T>,        // (B, D)
    sr: Vec<T>,        // (B, D)
    ones: Vec<T>,      // (B) 1
    inv_nodes: Vec<T>, // (B) 1 / nodes of the graph
}

impl<T: Num> Gnn<T> {
    /// Parameters drawn from `seed`: embedding N(0, 1); each weight N(0, gain / fan_in) with gain 2
    /// for layers feeding a swish and 1 for output layers; biases and the global node 0.
    pub fn init(cfg: GnnConfig, seed: u64) -> Result<Gnn<T>> {
        cfg.validate()?;
        let layout = Arc::new(cfg.layout());
        let mut params = Slab::zeros(layout.clone());
        let mut rng = Rng::new(seed);
        for spec in layout.specs() {
            let name = spec.name.as_str();
            let std = if name == "embed" {
                1.0
            } else if name.ends_with(".w") {
                let fan_in = spec.shape[1] as f64;
                let gain = if name.contains("node2") || name.contains("glob2") || name.contains("readout2") {
                    1.0
                } else {
                    2.0
                };
                (gain / fan_in).sqrt()
            } else {
                0.0
            };
            if std > 0.0 {
                for x in &mut params.data[spec.range()] {
                    *x = T::from_f64(std * rng.normal());
                }
            }
        }
        let ids = cfg.ids(&layout);
        Ok(Gnn { cfg, params, ids })
    }

    /// A network with given parameters (same layout as `cfg.layout()`).
    pub fn from_params(cfg: GnnConfig, data: Vec<T>) -> Result<Gnn<T>> {
        cfg.validate()?;
        let layout = Arc::new(cfg.layout());
        let ids = cfg.ids(&layout);
        Ok(Gnn { cfg, params: Slab::from_vec(layout, data)?, ids })
    }

    pub fn num_params(&self) -> usize {
        self.params.data.len()
    }

    fn p(&self, id: TensorId) -> &[T] {
        self.params.get(id)
    }

    /// Per-atom predictions y (B) for every graph of the batch; saves what `backward` needs.
    pub fn forward(&self, acts: &mut Acts<T>, batch: &GraphBatch) -> Result<Vec<T>> {
        self.forward_impl(acts, batch, true)
    }

    /// The exact forward without saving activations: every edge's basis projected by the dense
    /// layer, as in training (the reference `predict` is tested against).
    pub fn predict_exact(&self, acts: &mut Acts<T>, batch: &GraphBatch) -> Result<Vec<T>> {
        self.forward_impl(acts, batch, false)
    }

    /// Per-atom predictions y (B) for inference: `predict_with` on tables built for this batch's
    /// longest edge. Screening many batches with one model should build the tables once
    /// (`inference_tables`) and call `predict_with`.
    pub fn predict(&self, batch: &GraphBatch) -> Result<Vec<T>> {
        let tables = self.inference_tables(batch.max_distance() as f64);
        self.predict_with(&tables, batch)
    }

    fn forward_impl(&self, acts: &mut Acts<T>, batch: &GraphBatch, save: bool) -> Result<Vec<T>> {
        let (n, e, b, d, k) =
            (batch.num_nodes(), batch.num_edges(), batch.num_graphs(), self.cfg.width, self.cfg.basis_dim);
        self.check_batch(batch)?;
        let basis = T::from_f32_slice(&batch.basis);
        acts.ones = vec![T::one(); b];
        acts.inv_nodes = (0..b).map(|g| T::from_f64(1.0 / batch.nodes_of(g) as f64)).collect();
        let inv_adj = T::from_f64(1.0 / self.cfg.avg_adjacency);
        acts.steps.resize_with(self.cfg.steps, StepActs::default);

        // Embedding and global node.
        let emb = self.p(self.ids.embed);
        let mut h = vec![T::zero(); n * d];
        for (i, row) in h.chunks_mut(d).enumerate() {
            let (z, c) = (batch.species[i] as usize, T::from_f32(batch.node_scale[i]));
            for (o, &w) in row.iter_mut().zip(&emb[z * d..][..d]) {
                *o = w * c;
            }
        }
        let mut g: Vec<T> = self.p(self.ids.global).iter().copied().cycle().take(b * d).collect();

        let mut gpq = vec![T::zero(); b * 2 * d];
        let mut gpq_node = vec![T::zero(); n * 2 * d];
        let mut pq = vec![T::zero(); n * 2 * d];
        let u = batch.pair_first.len();
        let basis_pair = pair_rows(&basis, &batch.pair_first, k);
        let (mut fb, mut fb_pair) = match k {
            0 => (Vec::new(), Vec::new()),
            _ => (vec![T::zero(); e * d], vec![T::zero(); u * d]),
        };
        let mut agg = vec![T::zero(); n * d];
        let mut tmp_n = vec![T::zero(); n * d];
        let mut hm = vec![T::zero(); b * d];
        let mut tmp_b = vec![T::zero(); b * d];
        for (t, ids) in self.ids.steps.iter().enumerate() {
            let sa = &mut acts.steps[t];
            // [P | Q] = h We^T + be + broadcast(g Weg^T).
            T::matmul_forward(&mut pq, &h, self.p(ids.edge_w), Some(self.p(ids.edge_b)), n, d, 2 * d);
            T::matmul_forward(&mut gpq, &g, self.p(ids.edge_wg), None, b, d, 2 * d);
            ops::segment_broadcast(&mut gpq_node, &gpq, &batch.node_offsets, &acts.ones, 2 * d);
            pq.iter_mut().zip(&gpq_node).for_each(|(p, &x)| *p = *p + x);
            // fb = basis Wb^T + bb, projected once per (edge, reverse) pair.
            let fb_src = match ids.basis_w {
                Some(w) => {
                    T::matmul_forward(&mut fb_pair, &basis_pair, self.p(w), Some(self.p(ids.basis_b)), u, k, d);
                    for (h, &e0) in batch.pair_first.iter().enumerate() {
                        let row = &fb_pair[h * d..][..d];
                        fb[e0 as usize * d..][..d].copy_from_slice(row);
                        fb[batch.reverse[e0 as usize] as usize * d..][..d].copy_from_slice(row);
                    }
                    EdgeFeatures::Rows(&fb)
                }
                None => EdgeFeatures::Const(self.p(ids.basis_b)),
            };
            if save {
                sa.pre.resize(e * d, T::zero());
            }
            let pre = if save { Some(&mut sa.pre[..]) } else { None };
            ops::edge_message_forward(&mut agg, pre, &pq, fb_src, &batch.edge_offsets, &batch.neighbors, inv_adj, d);
            // a = [h, agg] W1^T + b1 + broadcast(g W1g^T).
            sa.xn.resize(n * 2 * d, T::zero());
            ops::concat_columns(&mut sa.xn, &[(&h, d), (&agg, d)]);
            sa.a.resize(n * d, T::zero());
            T::matmul_forward(&mut sa.a, &sa.xn, self.p(ids.node1_w), Some(self.p(ids.node1_b)), n, 2 * d, d);
            T::matmul_forward(&mut tmp_b, &g, self.p(ids.node1_wg), None, b, d, d);
            ops::segment_broadcast(&mut tmp_n, &tmp_b, &batch.node_offsets, &acts.ones, d);
            sa.a.iter_mut().zip(&tmp_n).for_each(|(a, &x)| *a = *a + x);
            sa.s.resize(n * d, T::zero());
            ops::swish_forward(&mut sa.s, &sa.a);
            T::matmul_forward(&mut tmp_n, &sa.s, self.p(ids.node2_w), Some(self.p(ids.node2_b)), n, d, d);
            if save {
                sa.h.clone_from(&h);
                sa.g.clone_from(&g);
            }
            h.iter_mut().zip(&tmp_n).for_each(|(h, &u)| *h = *h + u);

            ops::segment_sum(&mut hm, &h, &batch.node_offsets, &acts.inv_nodes, d);
            sa.xg.resize(b * 2 * d, T::zero());
            ops::concat_columns(&mut sa.xg, &[(&hm, d), (&g, d)]);
            sa.ag.resize(b * d, T::zero());
            T::matmul_forward(&mut sa.ag, &sa.xg, self.p(ids.glob1_w), Some(self.p(ids.glob1_b)), b, 2 * d, d);
            sa.sg.resize(b * d, T::zero());
            ops::swish_forward(&mut sa.sg, &sa.ag);
            T::matmul_forward(&mut tmp_b, &sa.sg, self.p(ids.glob2_w), Some(self.p(ids.glob2_b)), b, d, d);
            g.iter_mut().zip(&tmp_b).for_each(|(g, &u)| *g = *g + u);
        }

        ops::segment_sum(&mut hm, &h, &batch.node_offsets, &acts.inv_nodes, d);
        acts.xr.resize(b * 2 * d, T::zero());
        ops::concat_columns(&mut acts.xr, &[(&hm, d), (&g, d)]);
        acts.ar.resize(b * d, T::zero());
        T::matmul_forward(
            &mut acts.ar,
            &acts.xr,
            self.p(self.ids.read1_w),
            Some(self.p(self.ids.read1_b)),
            b,
            2 * d,
            d,
        );
        acts.sr.resize(b * d, T::zero());
        ops::swish_forward(&mut acts.sr, &acts.ar);
        let mut out = vec![T::zero(); b];
        T::matmul_forward(&mut out, &acts.sr, self.p(self.ids.read2_w), Some(self.p(self.ids.read2_b)), b, d, 1);
        let (scale, shift) = (T::from_f64(self.cfg.scale), T::from_f64(self.cfg.shift));
        Ok(out.into_iter().map(|o| scale * o + shift).collect())
    }

    /// Accumulates into `grads` (laid out as `params`) the gradient of a loss whose derivative with
    /// respect to the predictions y is `dy` (B), using the activations of `forward` on `batch`.
    pub fn backward(&self, grads: &mut Slab<T>, acts: &Acts<T>, batch: &GraphBatch, dy: &[T]) {
        let (n, e, b, d, k) =
            (batch.num_nodes(), batch.num_edges(), batch.num_graphs(), self.cfg.width, self.cfg.basis_dim);
        let scale = T::from_f64(self.cfg.scale);
        let inv_adj = T::from_f64(1.0 / self.cfg.avg_adjacency);
        let dout: Vec<T> = dy.iter().map(|&x| x * scale).collect();
        let basis = T::from_f32_slice(&batch.basis);

        let mut dsr = vec![T::zero(); b * d];
        self.dense_backward(grads, self.ids.read2_w, Some(self.ids.read2_b), &mut dsr, &dout, &acts.sr, b, d, 1);
        let mut dar = vec![T::zero(); b * d];
        ops::swish_backward(&mut dar, &acts.ar, &dsr);
        let mut dx2 = vec![T::zero(); b * 2 * d];
        self.dense_backward(grads, self.ids.read1_w, Some(self.ids.read1_b), &mut dx2, &dar, &acts.xr, b, 2 * d, d);
        // Residual streams: dh (N, D) and dg (B, D).
        let mut dhm = vec![T::zero(); b * d];
        ops::copy_columns(&mut dhm, &dx2, 0, d, 2 * d);
        let mut dh = vec![T::zero(); n * d];
        ops::segment_broadcast(&mut dh, &dhm, &batch.node_offsets, &acts.inv_nodes, d);
        let mut dg = vec![T::zero(); b * d];
        ops::copy_columns(&mut dg, &dx2, d, d, 2 * d);

        let mut dsb = vec![T::zero(); b * d];
        let mut dab = vec![T::zero(); b * d];
        let mut dsn = vec![T::zero(); n * d];
        let mut dan = vec![T::zero(); n * d];
        let mut dxn = vec![T::zero(); n * 2 * d];
        let mut dpre = vec![T::zero(); e * d];
        let mut dpq = vec![T::zero(); n * 2 * d];
        let mut dgpq = vec![T::zero(); b * 2 * d];
        let u = batch.pair_first.len();
        let basis_pair = pair_rows(&basis, &batch.pair_first, k);
        let mut dfb_pair = vec![T::zero(); u * d];
        let mut dbasis = vec![T::zero(); u * k];
        let mut tmp_b = vec![T::zero(); b * d];
        for (t, ids) in self.ids.steps.iter().enumerate().rev() {
            let sa = &acts.steps[t];
            // g' = g + MLP([mean h', g]).
            self.dense_backward(grads, ids.glob2_w, Some(ids.glob2_b), &mut dsb, &dg, &sa.sg, b, d, d);
            ops::swish_backward(&mut dab, &sa.ag, &dsb);
            self.dense_backward(grads, ids.glob1_w, Some(ids.glob1_b), &mut dx2, &dab, &sa.xg, b, 2 * d, d);
            ops::copy_columns(&mut dhm, &dx2, 0, d, 2 * d);
            ops::segment_broadcast(&mut dsn, &dhm, &batch.node_offsets, &acts.inv_nodes, d);
            dh.iter_mut().zip(&dsn).for_each(|(a, &x)| *a = *a + x);
            ops::add_columns(&mut dg, &dx2, d, d, 2 * d);
            // h' = h + swish([h, agg] W1^T + b1 + (g W1g^T)_node) W2^T + b2.
            self.dense_backward(grads, ids.node2_w, Some(ids.node2_b), &mut dsn, &dh, &sa.s, n, d, d);
            ops::swish_backward(&mut dan, &sa.a, &dsn);
            self.dense_backward(grads, ids.node1_w, Some(ids.node1_b), &mut dxn, &dan, &sa.xn, n, 2 * d, d);
            ops::segment_sum(&mut dab, &dan, &batch.node_offsets, &acts.ones, d);
            self.dense_backward(grads, ids.node1_wg, None, &mut tmp_b, &dab, &sa.g, b, d, d);
            dg.iter_mut().zip(&tmp_b).for_each(|(a, &x)| *a = *a + x);
            ops::add_columns(&mut dh, &dxn, 0, d, 2 * d);
            // agg = sum swish(pre) / avg_adj.
            ops::copy_columns(&mut dsn, &dxn, d, d, 2 * d);
            ops::edge_message_backward(&mut dpre, &sa.pre, &dsn, &batch.edge_offsets, inv_adj, d);
            match ids.basis_w {
                Some(w) => {
                    // The pair's two edges share their fb row: dfb_pair = dpre[e] + dpre[reverse e].
                    for (h, &e0) in batch.pair_first.iter().enumerate() {
                        let (e0, e1) = (e0 as usize, batch.reverse[e0 as usize] as usize);
                        let row = &mut dfb_pair[h * d..][..d];
                        row.copy_from_slice(&dpre[e0 * d..][..d]);
                        if e1 != e0 {
                            row.iter_mut().zip(&dpre[e1 * d..][..d]).for_each(|(a, &x)| *a = *a + x);
                        }
                    }
                    self.dense_backward(grads, w, Some(ids.basis_b), &mut dbasis, &dfb_pair, &basis_pair, u, k, d)
                }
                None => {
                    let db = grads.get_mut(ids.basis_b);
                    for row in dpre.chunks(d) {
                        db.iter_mut().zip(row).for_each(|(a, &x)| *a = *a + x);
                    }
                }
            }
            // pre = P[center] + Q[neighbour] + fb; [P | Q] = h We^T + be + (g Weg^T)_node.
            ops::edge_gather_backward(&mut dpq, &dpre, &batch.edge_offsets, &batch.reverse, d);
            self.dense_backward(grads, ids.edge_w, Some(ids.edge_b), &mut dsn, &dpq, &sa.h, n, d, 2 * d);
            dh.iter_mut().zip(&dsn).for_each(|(a, &x)| *a = *a + x);
            ops::segment_sum(&mut dgpq, &dpq, &batch.node_offsets, &acts.ones, 2 * d);
            self.dense_backward(grads, ids.edge_wg, None, &mut tmp_b, &dgpq, &sa.g, b, d, 2 * d);
            dg.iter_mut().zip(&tmp_b).for_each(|(a, &x)| *a = *a + x);
        }

        // h = scale_n * Embed[Z_n]; g = Global.
        let demb = grads.get_mut(self.ids.embed);
        for (i, row) in dh.chunks(d).enumerate() {
            let (z, c) = (batch.species[i] as usize, T::from_f32(batch.node_scale[i]));
            for (a, &x) in demb[z * d..][..d].iter_mut().zip(row) {
                *a = *a + x * c;
            }
        }
        let dglob = grads.get_mut(self.ids.global);
        for row in dg.chunks(d) {
            dglob.iter_mut().zip(row).for_each(|(a, &x)| *a = *a + x);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dense_backward(
        &self,
        grads: &mut Slab<T>,
        w: TensorId,
        bias: Option<TensorId>,
        dinp: &mut [T],
        dout: &[T],
        inp: &[T],
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        let l = grads.layout.clone();
        match bias {
            Some(bias) => {
                let [dw, db] = grads.disjoint_mut([l.range(w), l.range(bias)]);
                T::matmul_backward(dinp, dw, Some(db), dout, inp, self.p(w), n, ic, oc);
            }
            None => T::matmul_backward(dinp, grads.get_mut(w), None, dout, inp, self.p(w), n, ic, oc),
        }
    }
}

/// Grid spacing h (A) of the tabulated edge-basis projection used by inference.
pub const TABLE_STEP: f64 = 1.0 / 128.0;

/// What inference precomputes once per model (`Gnn::inference_tables`).
///
/// Edge basis: fb(r) = basis(r) Wb^T + bb depends on the edge length alone, so each step's
/// projection is tabulated at r_i = i h (h = `TABLE_STEP`) and linearly interpolated per edge
/// (`ops::EdgeFeatures::Table`): no per-edge K x D product and no (E, D) fb matrix. Error: linear
/// interpolation of a C^2 function on a grid of spacing h errs by at most h^2/8 max|f''|; each
/// Gaussian exp(-(r - c)^2 / w^2) has |second derivative| <= 2 / w^2 (at r = c), so
/// |fb_j(r) - interpolated| <= h^2 / (4 w^2) sum_k |Wb_jk| (`interpolation_bound`, the maximum over
/// steps and output columns; plus f32 rounding).
///
/// Step 0: every node starts from `h = scale_n Embed[Z_n]` and every graph's global node from the
/// same parameter g0, so the step-0 products by h and g are per-element rows and constants:
/// `[P | Q] = scale_n (Embed We^T)[Z_n] + (be + g0 Weg^T)`, and the node MLP's h and g terms
/// `scale_n (Embed W1h^T)[Z_n] + (b1 + g0 W1g^T)`; only `agg W1a^T` remains a product per node.
#[derive(Clone, Debug)]
pub struct InferenceTables<T> {
    /// Per step: fb(r_i) (R, D); empty without an edge basis.
    basis: Vec<Vec<T>>,
    /// Longest edge the tables cover (A): (R - 2) h (one spare row past it).
    pub r_max: f64,
    /// See the type doc (A^0: same unit as the pre-activations).
    pub interpolation_bound: f64,
    elem_pq: Vec<T>, // (NUM_Z, 2D) Embed We^T
    elem_a: Vec<T>,  // (NUM_Z, D) Embed W1h^T
    c_pq: Vec<T>,    // (2D) be + g0 Weg^T
    c_a: Vec<T>,     // (D) b1 + g0 W1g^T
    w1_agg: Vec<T>,  // (D, D) columns D..2D of step 0's node1.w
}

impl<T: Num> InferenceTables<T> {
    /// Step `step`'s interpolated fb rows (E, D) for edge lengths `distances` (what the fused
    /// message kernel computes per edge; for tests and inspection).
    pub fn edge_rows(&self, step: usize, distances: &[f32]) -> Vec<T> {
        let d = self.c_a.len();
        let mut out = vec![T::zero(); distances.len() * d];
        let f = EdgeFeatures::Table { table: &self.basis[step], inv_h: 1.0 / TABLE_STEP, distances };
        ops::expand_edge_features(&mut out, &f, d);
        out
    }
}

impl<T: Num> Gnn<T> {
    /// Inference tables for edges up to `r_max` A (see `InferenceTables`).
    pub fn inference_tables(&self, r_max: f64) -> InferenceTables<T> {
        let (d, k) = (self.cfg.width, self.cfg.basis_dim);
        let r_max = if r_max.is_finite() { r_max.max(0.0) } else { 0.0 };
        let rows = (r_max / TABLE_STEP).ceil() as usize + 2;
        let grid: Vec<f64> = (0..rows).map(|i| i as f64 * TABLE_STEP).collect();
        let mut basis_grid = vec![0.0f32; if k > 0 { rows * k } else { 0 }];
        if k > 0 {
            graph::gaussian_basis(&mut basis_grid, &grid);
        }
        let basis_grid = T::from_f32_slice(&basis_grid);
        let mut bound = 0.0f64;
        let basis = self
            .ids
            .steps
            .iter()
            .map(|ids| match ids.basis_w {
                Some(w) => {
                    let wb = self.p(w);
                    for row in wb.chunks(k) {
                        let l1: f64 = row.iter().map(|&x| Into::<f64>::into(x).abs()).sum();
                        bound = bound.max(l1 * TABLE_STEP * TABLE_STEP / (4.0 * BASIS_WIDTH * BASIS_WIDTH));
                    }
                    let mut t = vec![T::zero(); rows * d];
                    T::matmul_forward(&mut t, &basis_grid, wb, Some(self.p(ids.basis_b)), rows, k, d);
                    t
                }
                None => Vec::new(),
            })
            .collect();
        let s0 = &self.ids.steps[0];
        let emb = self.p(self.ids.embed);
        let g0 = self.p(self.ids.global);
        let mut elem_pq = vec![T::zero(); NUM_Z * 2 * d];
        T::matmul_forward(&mut elem_pq, emb, self.p(s0.edge_w), None, NUM_Z, d, 2 * d);
        let mut c_pq = vec![T::zero(); 2 * d];
        T::matmul_forward(&mut c_pq, g0, self.p(s0.edge_wg), Some(self.p(s0.edge_b)), 1, d, 2 * d);
        let w1 = self.p(s0.node1_w); // (D, 2D): [W1h | W1a]
        let (mut w1_h, mut w1_agg) = (vec![T::zero(); d * d], vec![T::zero(); d * d]);
        ops::copy_columns(&mut w1_h, w1, 0, d, 2 * d);
        ops::copy_columns(&mut w1_agg, w1, d, d, 2 * d);
        let mut elem_a = vec![T::zero(); NUM_Z * d];
        T::matmul_forward(&mut elem_a, emb, &w1_h, None, NUM_Z, d, d);
        let mut c_a = vec![T::zero(); d];
        T::matmul_forward(&mut c_a, g0, self.p(s0.node1_wg), Some(self.p(s0.node1_b)), 1, d, d);
        InferenceTables {
            basis,
            r_max: (rows - 2) as f64 * TABLE_STEP,
            interpolation_bound: bound,
            elem_pq,
            elem_a,
            c_pq,
            c_a,
            w1_agg,
        }
    }

    /// Per-atom predictions y (B) from tables of this model (`inference_tables`): the same
    /// function as `predict_exact` up to the tables' interpolation error (and f32 rounding).
    pub fn predict_with(&self, tables: &InferenceTables<T>, batch: &GraphBatch) -> Result<Vec<T>> {
        let (n, b, d, k) = (batch.num_nodes(), batch.num_graphs(), self.cfg.width, self.cfg.basis_dim);
        self.check_batch(batch)?;
        if k > 0 {
            if batch.distances.len() != batch.num_edges() {
                return Err(Error::config("distances", "the batch has no edge lengths for the tabulated basis"));
            }
            let r = batch.max_distance() as f64;
            if r > tables.r_max {
                return Err(Error::config(
                    "r_max",
                    format!("an edge of {r} A is longer than the tables' {} A", tables.r_max),
                ));
            }
        }
        let ones = vec![T::one(); b];
        let inv_nodes: Vec<T> = (0..b).map(|g| T::from_f64(1.0 / batch.nodes_of(g) as f64)).collect();
        let inv_adj = T::from_f64(1.0 / self.cfg.avg_adjacency);
        let inv_h = 1.0 / TABLE_STEP;

        let mut h = vec![T::zero(); n * d];
        let mut pq = vec![T::zero(); n * 2 * d];
        let mut a = vec![T::zero(); n * d];
        let emb = self.p(self.ids.embed);
        for (i, ((hr, pr), ar)) in h.chunks_mut(d).zip(pq.chunks_mut(2 * d)).zip(a.chunks_mut(d)).enumerate() {
            let (z, c) = (batch.species[i] as usize, T::from_f32(batch.node_scale[i]));
            for ((o, &w), &x) in pr.iter_mut().zip(&tables.elem_pq[z * 2 * d..][..2 * d]).zip(&tables.c_pq) {
                *o = c * w + x;
            }
            for ((o, &w), &x) in ar.iter_mut().zip(&tables.elem_a[z * d..][..d]).zip(&tables.c_a) {
                *o = c * w + x;
            }
            for (o, &w) in hr.iter_mut().zip(&emb[z * d..][..d]) {
                *o = c * w;
            }
        }
        let mut g: Vec<T> = self.p(self.ids.global).iter().copied().cycle().take(b * d).collect();

        let mut gpq = vec![T::zero(); b * 2 * d];
        let mut gpq_node = vec![T::zero(); n * 2 * d];
        let mut agg = vec![T::zero(); n * d];
        let mut tmp_n = vec![T::zero(); n * d];
        let mut s = vec![T::zero(); n * d];
        let mut xn = vec![T::zero(); n * 2 * d];
        let mut hm = vec![T::zero(); b * d];
        let mut xg = vec![T::zero(); b * 2 * d];
        let mut ag = vec![T::zero(); b * d];
        let mut tmp_b = vec![T::zero(); b * d];
        for (t, ids) in self.ids.steps.iter().enumerate() {
            if t > 0 {
                // [P | Q] = h We^T + be + broadcast(g Weg^T).
                T::matmul_forward(&mut pq, &h, self.p(ids.edge_w), Some(self.p(ids.edge_b)), n, d, 2 * d);
                T::matmul_forward(&mut gpq, &g, self.p(ids.edge_wg), None, b, d, 2 * d);
                ops::segment_broadcast(&mut gpq_node, &gpq, &batch.node_offsets, &ones, 2 * d);
                pq.iter_mut().zip(&gpq_node).for_each(|(p, &x)| *p = *p + x);
            }
            let fb = match ids.basis_w {
                Some(_) => EdgeFeatures::Table { table: &tables.basis[t], inv_h, distances: &batch.distances },
                None => EdgeFeatures::Const(self.p(ids.basis_b)),
            };
            ops::edge_message_forward(&mut agg, None, &pq, fb, &batch.edge_offsets, &batch.neighbors, inv_adj, d);
            if t == 0 {
                // a = (per-element and constant terms, above) + agg W1a^T.
                T::matmul_forward(&mut tmp_n, &agg, &tables.w1_agg, None, n, d, d);
                a.iter_mut().zip(&tmp_n).for_each(|(a, &x)| *a = *a + x);
            } else {
                // a = [h, agg] W1^T + b1 + broadcast(g W1g^T).
                ops::concat_columns(&mut xn, &[(&h, d), (&agg, d)]);
                T::matmul_forward(&mut a, &xn, self.p(ids.node1_w), Some(self.p(ids.node1_b)), n, 2 * d, d);
                T::matmul_forward(&mut tmp_b, &g, self.p(ids.node1_wg), None, b, d, d);
                ops::segment_broadcast(&mut tmp_n, &tmp_b, &batch.node_offsets, &ones, d);
                a.iter_mut().zip(&tmp_n).for_each(|(a, &x)| *a = *a + x);
            }
            ops::swish_forward(&mut s, &a);
            T::matmul_forward(&mut tmp_n, &s, self.p(ids.node2_w), Some(self.p(ids.node2_b)), n, d, d);
            h.iter_mut().zip(&tmp_n).for_each(|(h, &u)| *h = *h + u);

            ops::segment_sum(&mut hm, &h, &batch.node_offsets, &inv_nodes, d);
            ops::concat_columns(&mut xg, &[(&hm, d), (&g, d)]);
            T::matmul_forward(&mut ag, &xg, self.p(ids.glob1_w), Some(self.p(ids.glob1_b)), b, 2 * d, d);
            ops::swish_forward(&mut tmp_b, &ag);
            T::matmul_forward(&mut ag, &tmp_b, self.p(ids.glob2_w), Some(self.p(ids.glob2_b)), b, d, d);
            g.iter_mut().zip(&ag).for_each(|(g, &u)| *g = *g + u);
        }
        Ok(self.readout(&h, &g, batch, &inv_nodes))
    }

    /// y = scale * (swish([mean_graph(h), g] R1^T + r1) R2^T + r2) + shift (inference).
    fn readout(&self, h: &[T], g: &[T], batch: &GraphBatch, inv_nodes: &[T]) -> Vec<T> {
        let (b, d) = (batch.num_graphs(), self.cfg.width);
        let mut hm = vec![T::zero(); b * d];
        ops::segment_sum(&mut hm, h, &batch.node_offsets, inv_nodes, d);
        let mut xr = vec![T::zero(); b * 2 * d];
        ops::concat_columns(&mut xr, &[(&hm, d), (g, d)]);
        let mut ar = vec![T::zero(); b * d];
        T::matmul_forward(&mut ar, &xr, self.p(self.ids.read1_w), Some(self.p(self.ids.read1_b)), b, 2 * d, d);
        let mut sr = vec![T::zero(); b * d];
        ops::swish_forward(&mut sr, &ar);
        let mut out = vec![T::zero(); b];
        T::matmul_forward(&mut out, &sr, self.p(self.ids.read2_w), Some(self.p(self.ids.read2_b)), b, d, 1);
        let (scale, shift) = (T::from_f64(self.cfg.scale), T::from_f64(self.cfg.shift));
        out.into_iter().map(|o| scale * o + shift).collect()
    }

    /// The batch matches the model (basis width, atomic numbers in the embedding table).
    fn check_batch(&self, batch: &GraphBatch) -> Result<()> {
        let k = self.cfg.basis_dim;
        if batch.basis_dim != k {
            return Err(Error::config(
                "basis_dim",
                format!("model expects edge basis {k}, batch has {}", batch.basis_dim),
            ));
        }
        if let Some(&z) = batch.species.iter().find(|&&z| z as usize >= NUM_Z || z == 0) {
            return Err(Error::config("species", format!("atomic number {z} outside 1..{NUM_Z}")));
        }
        Ok(())
    }
}

/// Rows `rows` of a (R, k) matrix.
fn pair_rows<T: Num>(x: &[T], rows: &[u32], k: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len() * k);
    for &r in rows {
        out.extend_from_slice(&x[r as usize * k..][..k]);
    }
    out
}

impl Gnn<f32> {
    /// The same network in f64 (for reference checks).
    pub fn to_f64(&self) -> Gnn<f64> {
        Gnn::from_params(self.cfg.clone(), self.params.data.iter().map(|&x| x as f64).collect()).expect("same layout")
    }
}
