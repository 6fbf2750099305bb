//! octet-materials: crystal structures, structure file formats, periodic graphs and GNoME-style models.
//!
//! Layers, each usable alone: `element` (periodic table) -> `lattice`, `composition` ->
//! `structure` (validated crystal) -> `neighbors` (periodic edge lists for graph networks) ->
//! `io` (CIF, POSCAR, extended XYZ) and `dataset` (matminer flla conversion, JSON-lines data sets,
//! formula-hash split). `pyliteral` parses the Python-literal dicts the flla CSV stores.
//! Models: `graph` (featurizer: structures and compositions -> batched graphs) -> `ops` (GNN
//! kernels) -> `gnn` (the GNoME network, forward and backward) -> `train` (training) and `ensemble`
//! (trained models: the model directory format, checkpoints, baselines, inference; `Ensemble::default_model`
//! is the one octet ships).
//! Discovery loop: `oracle` (external energy/relaxation workers) and `hull` (formation energies,
//! energy above the convex hull, decompositions).
//! The loop itself: `candidates` (AIRSS random cells, substitutions, deduplication), `journal`
//! (append-only run state), `discover` (`octet materials discover`) and `plot` (its metrics figure).
//! `symmetry` (space groups and Wyckoff orbits through the `moyo` crate).

pub mod bench;
pub mod candidates;
pub mod composition;
pub mod composition_data;
pub mod dataset;
pub mod discover;
pub mod element;
pub mod ensemble;
pub mod fetch;
pub mod gnn;
pub mod graph;
pub mod hull;
pub mod io;
pub mod journal;
pub mod lattice;
pub mod neighbors;
pub mod ops;
pub mod oracle;
pub mod plot;
pub mod pyliteral;
pub mod structure;
pub mod symmetry;
pub mod train;

pub use composition::Composition;
pub use dataset::{Conversion, DatasetHeader, Entry, Split};
pub use element::Element;
pub use io::{read_structure, write_structure};
pub use lattice::Lattice;
pub use neighbors::{NeighborList, neighbor_list};
pub use structure::{MIN_SEPARATION, Overlap, Structure};
