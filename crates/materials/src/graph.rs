//! The featurizer, apart from the network (as GNoME's `crystal.py` keeps it apart from `gnn.py`):
//! a structure or a composition -> a `Graph` (nodes with species and a scale, directed edges with a
//! Gaussian distance basis), and many graphs -> one `GraphBatch` whose node and edge arrays are
//! concatenated so that every dense layer of the network is one GEMM over the whole batch.
//!
//! Structure graphs: one node per site (scale 1); an edge for every periodic neighbour pair closer
//! than the cutoff (GNoME: 4 A), both directions; edge features are `NUM_BASIS` = 30 Gaussians
//! exp(-(r - r_k)^2 / w^2), r_k evenly spaced over 0.05..4 A, w = 0.5 A (as GNoME's
//! `standard_gaussian_features`). Composition graphs: one node per element, scaled by its atomic
//! fraction, fully connected (every ordered pair of distinct elements), no edge features.
//!
//! Edge conventions: edge e runs from `centers[e]` (the node that aggregates it) to `neighbors[e]`;
//! edges are grouped by center in node order (`edge_offsets`), and `reverse[e]` is the edge with
//! center and neighbour swapped (periodic image negated), which every graph here has because its
//! neighbour relation is symmetric. The backward pass uses `reverse` to turn scatters into
//! per-node sums.

use std::collections::HashMap;

use octet_core::{Error, Result};

use crate::composition::Composition;
use crate::structure::Structure;

/// GNoME's neighbour cutoff (A).
pub const CUTOFF: f64 = 4.0;
/// Gaussians in the edge basis.
pub const NUM_BASIS: usize = 30;
/// First and last Gaussian centre (A).
pub const BASIS_RANGE: (f64, f64) = (0.05, 4.0);
/// Gaussian width w in exp(-(r - r_k)^2 / w^2) (A).
pub const BASIS_WIDTH: f64 = 0.5;

/// Centre of Gaussian k of `NUM_BASIS`.
pub fn basis_center(k: usize) -> f64 {
    BASIS_RANGE.0 + (BASIS_RANGE.1 - BASIS_RANGE.0) * k as f64 / (NUM_BASIS - 1) as f64
}

/// out (E, NUM_BASIS) = exp(-(r_e - r_k)^2 / w^2) in f32; centres precomputed, f32 exp.
pub fn gaussian_basis(out: &mut [f32], distances: &[f64]) {
    let centers: [f32; NUM_BASIS] = std::array::from_fn(|k| basis_center(k) as f32);
    let inv_w2 = (1.0 / (BASIS_WIDTH * BASIS_WIDTH)) as f32;
    crate::ops::with_simd(
        #[inline(always)]
        || {
            for (row, &r) in out.chunks_mut(NUM_BASIS).zip(distances) {
                let r = r as f32;
                for (o, &c) in row.iter_mut().zip(&centers) {
                    let t = r - c;
                    *o = crate::ops::exp_f32(-t * t * inv_w2);
                }
            }
        },
    )
}

/// The spec of `gaussian_basis`, in f64.
pub fn reference_gaussian_basis(out: &mut [f64], distances: &[f64]) {
    for (e, &r) in distances.iter().enumerate() {
        for k in 0..NUM_BASIS {
            let t = r - basis_center(k);
            out[e * NUM_BASIS + k] = (-t * t / (BASIS_WIDTH * BASIS_WIDTH)).exp();
        }
    }
}

/// One graph (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// Atomic number per node.
    pub species: Vec<u8>,
    /// Scale of each node's embedding (1 for sites, the atomic fraction for composition nodes).
    pub node_scale: Vec<f32>,
    pub centers: Vec<u32>,
    pub neighbors: Vec<u32>,
    pub reverse: Vec<u32>,
    /// (E, basis) row-major; empty for composition graphs.
    pub basis: Vec<f32>,
    /// Columns of `basis` (NUM_BASIS or 0).
    pub basis_dim: usize,
    /// Edge lengths (A), from which `basis` is computed (inference interpolates a per-model table
    /// of the projected basis in them instead); empty for composition graphs.
    pub distances: Vec<f32>,
    /// The readout multiplier: atoms in the cell (structures) or 1 (compositions).
    pub atoms: f32,
}

impl Graph {
    pub fn num_nodes(&self) -> usize {
        self.species.len()
    }
    pub fn num_edges(&self) -> usize {
        self.centers.len()
    }
}

/// `reverse[e]` for symmetric directed edges keyed by (center, neighbour, image shift).
fn reverse_index(centers: &[u32], neighbors: &[u32], shifts: &[[i32; 3]]) -> Result<Vec<u32>> {
    let key = |e: usize| (centers[e], neighbors[e], shifts[e]);
    let index: HashMap<(u32, u32, [i32; 3]), u32> = (0..centers.len()).map(|e| (key(e), e as u32)).collect();
    (0..centers.len())
        .map(|e| {
            let (c, n, s) = key(e);
            index.get(&(n, c, s.map(|x| -x))).copied().ok_or_else(|| {
                Error::Other(format!("edge {c} -> {n} (image {s:?}) has no reverse: neighbour list not symmetric"))
            })
        })
        .collect()
}

/// A structure's graph with the given cutoff (A).
pub fn structure_graph(s: &Structure, cutoff: f64) -> Result<Graph> {
    let nl = s.neighbor_list(cutoff)?;
    let reverse = reverse_index(&nl.senders, &nl.receivers, &nl.shifts)?;
    let mut basis = vec![0.0f32; nl.len() * NUM_BASIS];
    gaussian_basis(&mut basis, &nl.distances);
    Ok(Graph {
        species: s.species.iter().map(|e| e.z()).collect(),
        node_scale: vec![1.0; s.num_sites()],
        centers: nl.senders,
        neighbors: nl.receivers,
        reverse,
        basis,
        basis_dim: NUM_BASIS,
        distances: nl.distances.iter().map(|&r| r as f32).collect(),
        atoms: s.num_sites() as f32,
    })
}

/// A composition's fully connected graph (one node per element, embedding scaled by fraction).
pub fn composition_graph(c: &Composition) -> Result<Graph> {
    let frac = c.fractional();
    if frac.is_empty() {
        return Err(Error::Other("empty composition".into()));
    }
    let n = frac.len() as u32;
    let (mut centers, mut neighbors, mut reverse) = (Vec::new(), Vec::new(), Vec::new());
    // Edge (i, j), j != i, sits at i * (n - 1) + (j if j < i else j - 1).
    let at = |i: u32, j: u32| i * (n - 1) + if j < i { j } else { j - 1 };
    for i in 0..n {
        for j in (0..n).filter(|&j| j != i) {
            centers.push(i);
            neighbors.push(j);
            reverse.push(at(j, i));
        }
    }
    Ok(Graph {
        species: frac.iter().map(|(e, _)| e.z()).collect(),
        node_scale: frac.iter().map(|&(_, x)| x as f32).collect(),
        centers,
        neighbors,
        reverse,
        basis: Vec::new(),
        basis_dim: 0,
        distances: Vec::new(),
        atoms: 1.0,
    })
}

/// Many graphs as one: node, edge and basis arrays concatenated, indices shifted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphBatch {
    pub species: Vec<u8>,
    pub node_scale: Vec<f32>,
    /// Graph g owns nodes `node_offsets[g]..node_offsets[g+1]`.
    pub node_offsets: Vec<u32>,
    /// Node n owns edges `edge_offsets[n]..edge_offsets[n+1]` (its edges as center).
    pub edge_offsets: Vec<u32>,
    pub centers: Vec<u32>,
    pub neighbors: Vec<u32>,
    pub reverse: Vec<u32>,
    pub basis: Vec<f32>,
    pub basis_dim: usize,
    /// Edge lengths (A) (E), empty for composition graphs.
    pub distances: Vec<f32>,
    /// One edge of each (edge, reverse) pair, in edge order: e with e <= reverse[e]. The two edges
    /// of a pair have the same length, hence the same basis row, so the model projects the basis
    /// once per pair.
    pub pair_first: Vec<u32>,
    /// Readout multiplier per graph.
    pub atoms: Vec<f32>,
}

impl GraphBatch {
    pub fn num_graphs(&self) -> usize {
        self.atoms.len()
    }
    pub fn num_nodes(&self) -> usize {
        self.species.len()
    }
    pub fn num_edges(&self) -> usize {
        self.centers.len()
    }

    /// Concatenates graphs (all with the same basis width).
    pub fn new(graphs: &[&Graph]) -> Result<GraphBatch> {
        let basis_dim = graphs.first().map_or(0, |g| g.basis_dim);
        if let Some(g) = graphs.iter().find(|g| g.basis_dim != basis_dim) {
            return Err(Error::Other(format!("graphs with basis widths {basis_dim} and {} in one batch", g.basis_dim)));
        }
        let (nodes, edges): (usize, usize) =
            graphs.iter().fold((0, 0), |(n, e), g| (n + g.num_nodes(), e + g.num_edges()));
        let mut b = GraphBatch {
            species: Vec::with_capacity(nodes),
            node_scale: Vec::with_capacity(nodes),
            node_offsets: Vec::with_capacity(graphs.len() + 1),
            edge_offsets: Vec::with_capacity(nodes + 1),
            centers: Vec::with_capacity(edges),
            neighbors: Vec::with_capacity(edges),
            reverse: Vec::with_capacity(edges),
            basis: Vec::with_capacity(edges * basis_dim),
            basis_dim,
            distances: Vec::with_capacity(if basis_dim > 0 { edges } else { 0 }),
            pair_first: Vec::with_capacity(edges / 2 + 1),
            atoms: Vec::with_capacity(graphs.len()),
        };
        b.node_offsets.push(0);
        b.edge_offsets.push(0);
        for g in graphs {
            let (n0, e0) = (b.species.len() as u32, b.centers.len() as u32);
            if g.num_nodes() == 0 {
                return Err(Error::Other("a graph without nodes".into()));
            }
            b.species.extend_from_slice(&g.species);
            b.node_scale.extend_from_slice(&g.node_scale);
            b.centers.extend(g.centers.iter().map(|&c| c + n0));
            b.neighbors.extend(g.neighbors.iter().map(|&c| c + n0));
            b.reverse.extend(g.reverse.iter().map(|&c| c + e0));
            b.basis.extend_from_slice(&g.basis);
            b.distances.extend_from_slice(&g.distances);
            b.atoms.push(g.atoms);
            // Edges are grouped by center in node order: count per node.
            let mut counts = vec![0u32; g.num_nodes()];
            for (k, &c) in g.centers.iter().enumerate() {
                if k > 0 && c < g.centers[k - 1] {
                    return Err(Error::Other("graph edges are not grouped by center".into()));
                }
                counts[c as usize] += 1;
            }
            for c in counts {
                let last = *b.edge_offsets.last().expect("starts with 0");
                b.edge_offsets.push(last + c);
            }
            b.node_offsets.push(b.species.len() as u32);
        }
        b.pair_first = (0..b.reverse.len() as u32).filter(|&e| e <= b.reverse[e as usize]).collect();
        Ok(b)
    }

    /// The longest edge (A), 0 without edge lengths.
    pub fn max_distance(&self) -> f32 {
        self.distances.iter().fold(0.0f32, |m, &r| m.max(r))
    }

    /// Nodes per graph.
    pub fn nodes_of(&self, g: usize) -> usize {
        (self.node_offsets[g + 1] - self.node_offsets[g]) as usize
    }
}

/// Mean edges per node over graphs (the message normalisation "average adjacency").
pub fn average_adjacency<'a>(graphs: impl IntoIterator<Item = &'a Graph>) -> f64 {
    let (mut n, mut e) = (0usize, 0usize);
    for g in graphs {
        n += g.num_nodes();
        e += g.num_edges();
    }
    if n == 0 || e == 0 { 1.0 } else { e as f64 / n as f64 }
}
