//! Crystal symmetry of a structure through the `moyo` crate (spglib's Rust successor): the space
//! group number and, per site, its Wyckoff orbit (the index of the orbit's first site) and letter.
//! The discovery loop uses the orbits for SAPS partial substitutions (one symmetry-equivalent site
//! set replaced at a time) and the number as the space group of the deduplication key.

use octet_core::{Error, Result};

use crate::structure::Structure;

/// Position tolerance (A) for the symmetry search: loose enough for relaxed structures printed to
/// a few decimals, tight against accidental near-symmetry of random cells.
pub const SYMPREC: f64 = 1e-3;

/// What `analyse` found.
#[derive(Clone, Debug, PartialEq)]
pub struct Symmetry {
    /// International space group number, 1..=230.
    pub number: u16,
    /// Per site: the index of the first site of its orbit (sites sharing it are equivalent).
    pub orbits: Vec<usize>,
    /// Per site: its Wyckoff letter.
    pub wyckoffs: Vec<char>,
}

impl Symmetry {
    /// The distinct orbits, each as its site indices, in order of first site.
    pub fn orbit_sets(&self) -> Vec<Vec<usize>> {
        let mut reps: Vec<usize> = self.orbits.clone();
        reps.sort_unstable();
        reps.dedup();
        reps.iter().map(|&r| (0..self.orbits.len()).filter(|&i| self.orbits[i] == r).collect()).collect()
    }
}

/// Space group and Wyckoff orbits of `s` at tolerance `symprec` (A).
pub fn analyse(s: &Structure, symprec: f64) -> Result<Symmetry> {
    let m = s.lattice.matrix();
    let basis = moyo::base::Lattice::new(nalgebra::Matrix3::from_row_slice(&[
        m[0][0], m[0][1], m[0][2], m[1][0], m[1][1], m[1][2], m[2][0], m[2][1], m[2][2],
    ]));
    let positions = s.frac_coords.iter().map(|f| nalgebra::Vector3::new(f[0], f[1], f[2])).collect();
    let numbers = s.species.iter().map(|e| e.z() as i32).collect();
    let cell = moyo::base::Cell::new(basis, positions, numbers);
    let d = moyo::MoyoDataset::new(&cell, symprec, moyo::base::AngleTolerance::Default, moyo::data::Setting::Standard)
        .map_err(|e| Error::Other(format!("symmetry of {}: {e:?}", s.reduced_formula())))?;
    Ok(Symmetry { number: d.number as u16, orbits: d.orbits, wyckoffs: d.wyckoffs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::Element;
    use crate::lattice::Lattice;

    /// Cu3Au (L1_2): Pm-3m (221), Au on 1a, the three Cu on one 3c orbit.
    #[test]
    fn l12_orbits() {
        let (cu, au) = (Element::from_symbol("Cu").unwrap(), Element::from_symbol("Au").unwrap());
        let s = Structure::new(
            Lattice::cubic(3.75).unwrap(),
            vec![au, cu, cu, cu],
            vec![[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]],
        )
        .unwrap();
        let sym = analyse(&s, SYMPREC).unwrap();
        assert_eq!(sym.number, 221);
        assert_eq!(sym.orbit_sets(), vec![vec![0], vec![1, 2, 3]]);
        assert_eq!(sym.wyckoffs[0], 'a');
        assert_eq!(sym.wyckoffs[1], 'c');
    }
}
