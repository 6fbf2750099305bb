//! `Structure`: a periodic crystal — a lattice plus one element and one fractional position per site —
//! validated on construction (matching lengths, finite coordinates, no two atoms closer than
//! `MIN_SEPARATION` under periodic boundary conditions).

use std::fmt;

use octet_core::{Error, Result};

use crate::composition::Composition;
use crate::element::Element;
use crate::lattice::Lattice;
use crate::neighbors::{NeighborList, neighbor_list};

/// Two atoms closer than this (A, periodic) make a structure invalid: no real solid has them, and
/// they usually mean a symmetry expansion or unit mistake went wrong.
pub const MIN_SEPARATION: f64 = 0.5;

/// Most atoms per A^3 a structure may hold: sqrt(2) / MIN_SEPARATION^3 (about 11.3), the density of
/// the closest packing of spheres MIN_SEPARATION across. Any denser structure must overlap, so it is
/// refused before the overlap check, whose neighbour search would otherwise grow with the square of
/// the number of atoms crammed together.
pub const MAX_ATOM_DENSITY: f64 = std::f64::consts::SQRT_2 / (MIN_SEPARATION * MIN_SEPARATION * MIN_SEPARATION);

/// Largest |fractional coordinate| accepted: a million cells away is already far beyond any file
/// written in earnest, and periodic image shifts are stored as i32.
pub const MAX_FRACTIONAL: f64 = 1e6;

/// A crystal: `species[i]` sits at `frac_coords[i]` (fractional, not necessarily in [0, 1)).
#[derive(Clone, Debug, PartialEq)]
pub struct Structure {
    pub lattice: Lattice,
    pub species: Vec<Element>,
    pub frac_coords: Vec<[f64; 3]>,
}

/// The closest pair found by `Structure::check_overlaps`: sites `i` <= `j`, with `j`'s image shifted
/// by `shift` cells. `i == j` means a site is too close to its own periodic image (the cell is too
/// small).
#[derive(Clone, Debug, PartialEq)]
pub struct Overlap {
    pub i: usize,
    pub j: usize,
    pub shift: [i32; 3],
    pub distance: f64,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.i == self.j {
            write!(
                f,
                "site {} is {:.4} A from its own periodic image (shift {:?}), closer than {MIN_SEPARATION} A",
                self.i, self.distance, self.shift
            )
        } else {
            write!(
                f,
                "sites {} and {} are {:.4} A apart (image shift {:?}), closer than {MIN_SEPARATION} A",
                self.i, self.j, self.distance, self.shift
            )
        }
    }
}

impl Structure {
    /// Validates and builds a structure; overlapping atoms are an error naming both site indices.
    pub fn new(lattice: Lattice, species: Vec<Element>, frac_coords: Vec<[f64; 3]>) -> Result<Structure> {
        let s = Structure::new_unchecked_overlaps(lattice, species, frac_coords)?;
        if let Some(o) = s.check_overlaps() {
            return Err(Error::Other(o.to_string()));
        }
        Ok(s)
    }

    /// Like `new` but without the overlap check (for callers that check it themselves, such as
    /// readers that want to name file lines in the message). Still refused: a cell that fails
    /// `Lattice::check_plausible`, more than `MAX_ATOM_DENSITY` atoms per A^3, and fractional
    /// coordinates beyond `MAX_FRACTIONAL`.
    pub fn new_unchecked_overlaps(
        lattice: Lattice,
        species: Vec<Element>,
        frac_coords: Vec<[f64; 3]>,
    ) -> Result<Structure> {
        if species.len() != frac_coords.len() {
            return Err(Error::Shape {
                name: "frac_coords".into(),
                expected: vec![species.len(), 3],
                found: vec![frac_coords.len(), 3],
            });
        }
        if let Some(i) = frac_coords.iter().position(|f| f.iter().any(|x| !x.is_finite())) {
            return Err(Error::Other(format!("site {i} has non-finite fractional coordinates {:?}", frac_coords[i])));
        }
        lattice.check_plausible()?;
        if let Some(i) = frac_coords.iter().position(|f| f.iter().any(|x| x.abs() > MAX_FRACTIONAL)) {
            return Err(Error::Other(format!(
                "site {i} has fractional coordinates {:?}, more than {MAX_FRACTIONAL:e} cells from the origin",
                frac_coords[i]
            )));
        }
        let density = species.len() as f64 / lattice.volume();
        if density > MAX_ATOM_DENSITY {
            return Err(Error::Other(format!(
                "{} atoms in {:e} A^3 is {density:.3e} atoms/A^3, denser than {MAX_ATOM_DENSITY:.1} (closest \
                 packing of atoms {MIN_SEPARATION} A apart): atoms must overlap",
                species.len(),
                lattice.volume()
            )));
        }
        Ok(Structure { lattice, species, frac_coords })
    }

    /// From Cartesian positions (A).
    pub fn from_cartesian(lattice: Lattice, species: Vec<Element>, cart: &[[f64; 3]]) -> Result<Structure> {
        let frac = cart.iter().map(|r| lattice.to_fractional(r)).collect();
        Structure::new(lattice, species, frac)
    }

    pub fn num_sites(&self) -> usize {
        self.species.len()
    }

    /// Cartesian positions r = f M (A).
    pub fn cart_coords(&self) -> Vec<[f64; 3]> {
        self.frac_coords.iter().map(|f| self.lattice.to_cartesian(f)).collect()
    }

    pub fn composition(&self) -> Composition {
        Composition::from_elements(&self.species)
    }

    /// Reduced formula (see `Composition::reduced_formula` for the ordering).
    pub fn reduced_formula(&self) -> String {
        self.composition().reduced_formula()
    }

    /// Periodic edges within `cutoff` (A); see `neighbors`.
    pub fn neighbor_list(&self, cutoff: f64) -> Result<NeighborList> {
        neighbor_list(&self.lattice, &self.frac_coords, cutoff)
    }

    /// The closest pair of atoms (or atom and own image) nearer than `MIN_SEPARATION`, if any.
    pub fn check_overlaps(&self) -> Option<Overlap> {
        let nl = self.neighbor_list(MIN_SEPARATION).expect("MIN_SEPARATION is a valid cutoff");
        (0..nl.len())
            .filter(|&e| nl.senders[e] <= nl.receivers[e])
            .min_by(|&a, &b| nl.distances[a].total_cmp(&nl.distances[b]))
            .map(|e| Overlap {
                i: nl.senders[e] as usize,
                j: nl.receivers[e] as usize,
                shift: nl.shifts[e],
                distance: nl.distances[e],
            })
    }

    /// Same structure with every fractional coordinate wrapped into [0, 1).
    pub fn wrapped(&self) -> Structure {
        let frac_coords = self
            .frac_coords
            .iter()
            .map(|f| {
                f.map(|x| {
                    let w = x - x.floor();
                    if w >= 1.0 { 0.0 } else { w }
                })
            })
            .collect();
        Structure { lattice: self.lattice.clone(), species: self.species.clone(), frac_coords }
    }

    /// Same fractional coordinates in the cell isotropically scaled to `factor` times the volume
    /// (GNoME's test-time augmentation scans factors 0.8..1.2). Shrinking can create overlaps, so
    /// the result is checked again.
    pub fn with_volume_scaled(&self, factor: f64) -> Result<Structure> {
        let lattice = self.lattice.scaled_to_volume(factor * self.lattice.volume())?;
        Structure::new(lattice, self.species.clone(), self.frac_coords.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(s: &str) -> Element {
        Element::from_symbol(s).unwrap()
    }

    #[test]
    fn overlap_error_names_both_sites() {
        let l = Lattice::cubic(4.0).unwrap();
        let err =
            Structure::new(l, vec![el("Na"), el("Cl"), el("Cl")], vec![[0.0; 3], [0.5, 0.5, 0.5], [0.99, 0.0, 0.0]])
                .unwrap_err()
                .to_string();
        assert!(err.contains("sites 0 and 2"), "{err}");
    }

    #[test]
    fn tiny_cell_overlaps_with_own_image() {
        // 0.45^3 A^3 per atom is just under MAX_ATOM_DENSITY: the overlap search names the site.
        let l = Lattice::cubic(0.45).unwrap();
        let err = Structure::new(l, vec![el("H")], vec![[0.0; 3]]).unwrap_err().to_string();
        assert!(err.contains("site 0") && err.contains("own periodic image"), "{err}");
        // A smaller cell is refused by its density before any search.
        let l = Lattice::cubic(0.4).unwrap();
        let err = Structure::new(l, vec![el("H")], vec![[0.0; 3]]).unwrap_err().to_string();
        assert!(err.contains("denser than"), "{err}");
    }

    #[test]
    fn mismatched_lengths_are_a_shape_error() {
        let l = Lattice::cubic(4.0).unwrap();
        assert!(matches!(Structure::new(l, vec![el("Na")], vec![]), Err(Error::Shape { .. })));
    }

    #[test]
    fn volume_scaling_keeps_fractional_coordinates() {
        let l = Lattice::cubic(4.0).unwrap();
        let s = Structure::new(l, vec![el("Na"), el("Cl")], vec![[0.0; 3], [0.5; 3]]).unwrap();
        let t = s.with_volume_scaled(0.8).unwrap();
        assert_eq!(t.frac_coords, s.frac_coords);
        assert!((t.lattice.volume() - 0.8 * 64.0).abs() < 1e-9);
    }
}
