//! Convex hull of formation energies in any number of elements: formation energy per atom, energy
//! above hull, stability and decomposition products, the stability test of the GNoME loop.
//!
//! Formation energies are taken against the diagram's own elemental references: for each element
//! the lowest energy per atom among its elemental entries (pymatgen's `el_refs`), so an oracle's
//! energies are only ever compared with the same oracle's. With `f` an entry's fractional
//! composition (sum 1) and `E` its total energy over `n` atoms, `E_f = E / n - sum_i f_i mu_i`.
//!
//! The hull energy at a composition `c` is the lower convex envelope of the points `(f_j, E_f_j)`:
//!
//! ```text
//! h(c) = min_x sum_j x_j E_f_j   s.t.  sum_j x_j f_j = c,  x >= 0
//! ```
//!
//! (summing the element rows gives `sum_j x_j = 1`). This linear program is solved with `microlp`,
//! restricted to phases whose elements lie within those of `c` (the other columns are forced to
//! zero by the rows of the missing elements). The optimal basis is then polished: the phases with
//! `x_j > 0` are linearly independent, so `A_S x_S = c` is solved again by least squares in f64,
//! which removes the solver's 1e-7 feasibility slack from the energy. `e_above_hull = E_f - h(c)`;
//! the decomposition is the phases with `x_j > 0` and their atom fractions.
//!
//! Stability follows pymatgen's `PhaseDiagram`: per reduced composition only the lowest entry by
//! energy per atom (ties: the smaller name) can be stable; it is stable when it lies strictly below
//! the hull of the other compositions (by more than `ON_HULL_TOL`). A phase exactly on a hull facet
//! but not a vertex (a collinear middle point) is not stable, as qhull's vertices exclude it; its
//! energy above hull is 0 and its decomposition names the vertices.
//!
//! Cost: one LP per composition to classify, one per query. Fine for thousands of entries; a
//! qhull-style incremental hull would be needed for millions.

use std::collections::BTreeMap;

use microlp::{ComparisonOp, OptimizationDirection, Problem};
use octet_core::{Error, Result};

use crate::composition::Composition;
use crate::element::Element;

/// A phase within this (eV/atom) of the hull spanned by the other compositions counts as on it, not
/// as a vertex. Far above f64 round-off of polished hull energies (~1e-15), far below any physical
/// energy difference.
pub const ON_HULL_TOL: f64 = 1e-9;

/// LP amounts at most this are taken as zero before polishing (microlp's feasibility tolerance is
/// 1e-7 on rows of order 1, so a basic variable meant to be zero sits well below it).
const AMOUNT_EPS: f64 = 1e-9;

/// One computed phase: a name (unique within a diagram), its composition, its total energy (eV).
#[derive(Clone, Debug, PartialEq)]
pub struct HullEntry {
    pub name: String,
    pub composition: Composition,
    pub energy: f64,
}

impl HullEntry {
    pub fn new(name: impl Into<String>, composition: Composition, energy: f64) -> HullEntry {
        HullEntry { name: name.into(), composition, energy }
    }

    pub fn energy_per_atom(&self) -> f64 {
        self.energy / self.composition.num_atoms()
    }
}

/// Where a composition and energy stand against the hull.
#[derive(Clone, Debug, PartialEq)]
pub struct Stability {
    /// eV/atom against the diagram's elemental references.
    pub e_form_per_atom: f64,
    /// `E_f - h(c)` in eV/atom; negative for a candidate below the current hull.
    pub e_above_hull: f64,
    /// Hull formation energy `h(c)` in eV/atom.
    pub hull_e_form_per_atom: f64,
    /// (entry index, atom fraction) of the stable phases the composition decomposes into, fractions
    /// summing to 1, by increasing index.
    pub decomposition: Vec<(usize, f64)>,
}

/// A set of entries over a fixed element set, with each entry's stability precomputed.
#[derive(Clone, Debug)]
pub struct PhaseDiagram {
    entries: Vec<HullEntry>,
    /// Elements of the diagram, by atomic number; the rows of every composition vector.
    elements: Vec<Element>,
    /// Index into `entries` of each element's reference, same order as `elements`.
    el_refs: Vec<usize>,
    /// Per entry: fractional composition over `elements`, and formation energy per atom.
    frac: Vec<Vec<f64>>,
    e_form: Vec<f64>,
    stable: Vec<bool>,
    /// Per entry: the analysis against the hull (entries need no second LP when asked).
    analysis: Vec<Stability>,
}

impl PhaseDiagram {
    /// Builds the diagram. Every element that occurs must have an elemental entry; energies must be
    /// finite and compositions non-empty.
    pub fn new(entries: Vec<HullEntry>) -> Result<PhaseDiagram> {
        if entries.is_empty() {
            return Err(Error::Other("phase diagram: no entries".into()));
        }
        let mut elements: Vec<Element> = Vec::new();
        for e in &entries {
            if e.composition.is_empty() || !e.energy.is_finite() {
                return Err(Error::Other(format!(
                    "phase diagram: entry `{}` needs a non-empty composition and a finite energy (got {})",
                    e.name, e.energy
                )));
            }
            for (el, _) in e.composition.sorted() {
                if !elements.contains(&el) {
                    elements.push(el);
                }
            }
        }
        elements.sort();
        let mut el_refs = Vec::with_capacity(elements.len());
        for &el in &elements {
            let best = (0..entries.len())
                .filter(|&j| {
                    let c = entries[j].composition.sorted();
                    c.len() == 1 && c[0].0 == el
                })
                .min_by(|&a, &b| lowest_first(&entries[a], &entries[b]));
            match best {
                Some(j) => el_refs.push(j),
                None => return Err(Error::Other(format!("phase diagram: no elemental entry for {el}"))),
            }
        }
        let frac: Vec<Vec<f64>> = entries.iter().map(|e| fractions(&elements, &e.composition)).collect();
        let mu: Vec<f64> = el_refs.iter().map(|&j| entries[j].energy_per_atom()).collect();
        let e_form: Vec<f64> = entries.iter().zip(&frac).map(|(e, f)| e.energy_per_atom() - dot(f, &mu)).collect();

        // Lowest entry per reduced composition (the only candidates for the hull).
        // Fractions keyed on a 1e-10 grid: `Li0.5CoO2` and `LiCo2O4` divide differently in f64.
        let mut groups: BTreeMap<Vec<i64>, usize> = BTreeMap::new();
        for (j, f) in frac.iter().enumerate() {
            let key: Vec<i64> = f.iter().map(|x| (x * 1e10).round() as i64).collect();
            let slot = groups.entry(key).or_insert(j);
            if lowest_first(&entries[j], &entries[*slot]).is_lt() {
                *slot = j;
            }
        }
        let minima: Vec<usize> = groups.into_values().collect();
        let mut pd =
            PhaseDiagram { entries, elements, el_refs, frac, e_form, stable: Vec::new(), analysis: Vec::new() };
        let mut stable = vec![false; pd.entries.len()];
        for &j in &minima {
            stable[j] = pd.el_refs.contains(&j) || {
                let others: Vec<usize> = minima.iter().copied().filter(|&k| k != j).collect();
                match pd.hull(&pd.frac[j], &others)? {
                    Some((h, _)) => pd.e_form[j] < h - ON_HULL_TOL,
                    None => true,
                }
            };
        }
        pd.stable = stable;
        let stable_idx = pd.stable_entries();
        let mut analysis = Vec::with_capacity(pd.entries.len());
        for j in 0..pd.entries.len() {
            analysis.push(if pd.stable[j] {
                Stability {
                    e_form_per_atom: pd.e_form[j],
                    e_above_hull: 0.0,
                    hull_e_form_per_atom: pd.e_form[j],
                    decomposition: vec![(j, 1.0)],
                }
            } else {
                pd.against(&pd.frac[j], pd.e_form[j], &stable_idx)?
            });
        }
        pd.analysis = analysis;
        Ok(pd)
    }

    pub fn entries(&self) -> &[HullEntry] {
        &self.entries
    }

    pub fn elements(&self) -> &[Element] {
        &self.elements
    }

    /// Index of each element's reference entry (lowest energy per atom), in `elements()` order.
    pub fn elemental_references(&self) -> &[usize] {
        &self.el_refs
    }

    pub fn formation_energy_per_atom(&self, i: usize) -> f64 {
        self.e_form[i]
    }

    pub fn e_above_hull(&self, i: usize) -> f64 {
        self.analysis[i].e_above_hull
    }

    pub fn decomposition(&self, i: usize) -> &[(usize, f64)] {
        &self.analysis[i].decomposition
    }

    pub fn stability(&self, i: usize) -> &Stability {
        &self.analysis[i]
    }

    /// A vertex of the hull (see the module doc for ties and collinear points).
    pub fn is_stable(&self, i: usize) -> bool {
        self.stable[i]
    }

    /// Indices of the stable entries, increasing.
    pub fn stable_entries(&self) -> Vec<usize> {
        (0..self.entries.len()).filter(|&j| self.stable[j]).collect()
    }

    /// Formation energy per atom of a total `energy` at `composition` against this diagram's
    /// references; an error if it has an element the diagram lacks.
    pub fn formation_energy_of(&self, composition: &Composition, energy: f64) -> Result<f64> {
        let f = self.fractions_checked(composition)?;
        let mu: Vec<f64> = self.el_refs.iter().map(|&j| self.entries[j].energy_per_atom()).collect();
        Ok(energy / composition.num_atoms() - dot(&f, &mu))
    }

    /// A candidate not in the diagram (total `energy`, eV) against the hull of the stable entries:
    /// its energy above hull is negative when it would break the hull.
    pub fn analyse(&self, composition: &Composition, energy: f64) -> Result<Stability> {
        if !energy.is_finite() {
            return Err(Error::Other(format!("phase diagram: candidate energy {energy} is not finite")));
        }
        let f = self.fractions_checked(composition)?;
        let e_form = self.formation_energy_of(composition, energy)?;
        self.against(&f, e_form, &self.stable_entries())
    }

    fn fractions_checked(&self, composition: &Composition) -> Result<Vec<f64>> {
        if composition.is_empty() {
            return Err(Error::Other("phase diagram: empty composition".into()));
        }
        for (el, _) in composition.sorted() {
            if !self.elements.contains(&el) {
                return Err(Error::Other(format!("phase diagram: {el} is not among its elements")));
            }
        }
        Ok(fractions(&self.elements, composition))
    }

    /// `c` with formation energy `e_form` against the hull of `phases` (which span the elements).
    fn against(&self, c: &[f64], e_form: f64, phases: &[usize]) -> Result<Stability> {
        let (h, decomposition) = self.hull(c, phases)?.ok_or_else(|| {
            Error::Other("phase diagram: the stable phases do not span a composition (internal error)".into())
        })?;
        Ok(Stability { e_form_per_atom: e_form, e_above_hull: e_form - h, hull_e_form_per_atom: h, decomposition })
    }

    /// Solves the hull LP at fractional composition `c` over `phases`; `None` if no combination of
    /// them has that composition.
    fn hull(&self, c: &[f64], phases: &[usize]) -> Result<Option<(f64, Decomposition)>> {
        // Columns within the chemical subspace of c; rows are the elements present in c.
        let rows: Vec<usize> = (0..c.len()).filter(|&r| c[r] > 0.0).collect();
        let cols: Vec<usize> =
            phases.iter().copied().filter(|&j| (0..c.len()).all(|r| c[r] > 0.0 || self.frac[j][r] == 0.0)).collect();
        if cols.is_empty() {
            return Ok(None);
        }
        let mut lp = Problem::new(OptimizationDirection::Minimize);
        let vars: Vec<_> = cols.iter().map(|&j| lp.add_var(self.e_form[j], (0.0, f64::INFINITY))).collect();
        for &r in &rows {
            let terms: Vec<_> = cols
                .iter()
                .zip(&vars)
                .filter(|(j, _)| self.frac[**j][r] != 0.0)
                .map(|(j, &v)| (v, self.frac[*j][r]))
                .collect();
            lp.add_constraint(terms.as_slice(), ComparisonOp::Eq, c[r]);
        }
        let solution = match lp.solve() {
            Ok(outcome) => outcome
                .into_solution()
                .map_err(|i| Error::Other(format!("phase diagram: hull LP interrupted: {i:?}")))?,
            Err(microlp::Error::Infeasible) => return Ok(None),
            Err(e) => return Err(Error::Other(format!("phase diagram: hull LP failed: {e}"))),
        };
        let support: Vec<(usize, f64)> = cols
            .iter()
            .zip(&vars)
            .map(|(&j, &v)| (j, solution.var_value(v)))
            .filter(|&(_, x)| x > AMOUNT_EPS)
            .collect();
        let support = self.polish(c, &rows, support);
        let h = support.iter().map(|&(j, x)| x * self.e_form[j]).sum();
        Ok(Some((h, support)))
    }

    /// Re-solves `A_S x = c` on the LP's support by least squares (normal equations, Gaussian
    /// elimination with partial pivoting); keeps the LP's amounts if that fails or goes negative.
    fn polish(&self, c: &[f64], rows: &[usize], support: Vec<(usize, f64)>) -> Vec<(usize, f64)> {
        let k = support.len();
        // (A^T A) x = A^T c, with A (rows x k).
        let mut m = vec![vec![0.0; k + 1]; k];
        for a in 0..k {
            for b in 0..k {
                m[a][b] = rows.iter().map(|&r| self.frac[support[a].0][r] * self.frac[support[b].0][r]).sum();
            }
            m[a][k] = rows.iter().map(|&r| self.frac[support[a].0][r] * c[r]).sum();
        }
        let Some(x) = solve_dense(m) else { return support };
        let residual: f64 = rows
            .iter()
            .map(|&r| (support.iter().zip(&x).map(|((j, _), xj)| xj * self.frac[*j][r]).sum::<f64>() - c[r]).abs())
            .fold(0.0, f64::max);
        if x.iter().any(|&v| v <= 0.0) || residual > 1e-12 {
            return support;
        }
        support.iter().zip(x).map(|(&(j, _), x)| (j, x)).collect()
    }
}

/// (entry index, atom fraction) pairs.
type Decomposition = Vec<(usize, f64)>;

/// Lower energy per atom first, then the smaller name (pymatgen's order within a composition).
fn lowest_first(a: &HullEntry, b: &HullEntry) -> std::cmp::Ordering {
    a.energy_per_atom().total_cmp(&b.energy_per_atom()).then_with(|| a.name.cmp(&b.name))
}

fn fractions(elements: &[Element], c: &Composition) -> Vec<f64> {
    let n = c.num_atoms();
    elements.iter().map(|&el| c.get(el) / n).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Solves the augmented system `m = [A | b]` (k x (k+1)); `None` if singular.
fn solve_dense(mut m: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let k = m.len();
    for col in 0..k {
        let p = (col..k).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[p][col].abs() < 1e-14 {
            return None;
        }
        m.swap(col, p);
        for r in 0..k {
            if r != col {
                let f = m[r][col] / m[col][col];
                let pivot = m[col].clone();
                for (q, p) in m[r].iter_mut().zip(&pivot).skip(col) {
                    *q -= f * p;
                }
            }
        }
    }
    Some((0..k).map(|r| m[r][k] / m[r][r]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, formula: &str, energy: f64) -> HullEntry {
        HullEntry::new(name, Composition::parse(formula).unwrap(), energy)
    }

    #[test]
    fn binary_with_one_compound() {
        // mu_A = -1, mu_B = -2; AB at E_f = -0.5 eV/atom; A3B at -0.1 lies above the A-AB edge
        // (h(0.25) = 0.5 * -0.5 = -0.25), so it is 0.15 above the hull and splits half A, half AB.
        let pd = PhaseDiagram::new(vec![
            entry("A", "Cu", -1.0),
            entry("B", "Au", -2.0),
            entry("AB", "CuAu", 2.0 * (-0.5 - 1.5)),
            entry("A3B", "Cu3Au", 4.0 * (-0.1 - 1.25)),
        ])
        .unwrap();
        assert_eq!(pd.stable_entries(), vec![0, 1, 2]);
        assert!((pd.e_above_hull(3) - 0.15).abs() < 1e-12);
        let d = pd.decomposition(3);
        assert_eq!(d.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 2]);
        assert!(d.iter().all(|p| (p.1 - 0.5).abs() < 1e-12));
        let c = pd.analyse(&Composition::parse("Cu3Au").unwrap(), 4.0 * (-0.4 - 1.25)).unwrap();
        assert!((c.e_above_hull + 0.15).abs() < 1e-12);
    }

    #[test]
    fn missing_elemental_reference_is_an_error() {
        let err = PhaseDiagram::new(vec![entry("A", "Cu", -1.0), entry("AB", "CuAu", -3.0)]).unwrap_err();
        assert!(err.to_string().contains("no elemental entry for Au"), "{err}");
    }
}
