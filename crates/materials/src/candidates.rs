//! Candidate crystals for the discovery loop: AIRSS-style random cells for a composition, SAPS-style
//! element substitutions on known structures, and deduplication by reduced formula + space group +
//! a radial fingerprint. Every candidate records its origin (method, parent, substitution, seed).
//!
//! Random cells (Pickard & Needs' AIRSS, as GNoME uses it): the target volume is the sum of
//! per-element atomic volumes (`atomic_volume`) times a random factor in [0.85, 1.15]; cell lengths
//! random in a ratio of at most 1.6 and angles in [65, 115] degrees, scaled to the volume; atoms
//! placed at random positions under the cell's space-group operations and rejected while any two are
//! closer than `min_distance_factor * (r_i + r_j)` (covalent radii, `covalent_radius`). Only space
//! groups 1 (P1) and 2 (P-1, inversion pairs plus atoms on the eight inversion centres) are
//! implemented; `Origin::space_group` is the one generated in, while deduplication keys on the space
//! group moyo detects (`symmetry`), which may be higher.
//!
//! Substitutions (SAPS): every site of one element of a parent replaced by another element of the
//! chemical system (full substitution), or the sites of one of its Wyckoff orbits (partial, when the
//! element occupies more than one orbit; orbits from `symmetry`, i.e. moyo). The replacing element is
//! drawn by the Hautier ionic substitution probabilities of pymatgen's `lambda.json`
//! (`SubstitutionTable`, pairs below `SUBSTITUTION_THRESHOLD` never drawn) or uniformly without a
//! table. No charge-balance filter: the loop's structures carry no oxidation states. The cell is
//! rescaled by the change of summed atomic volumes.
//!
//! Fingerprint: per element pair, a histogram of interatomic distances up to 6 A in a cell scaled
//! to 15 A^3/atom (so that a uniformly compressed copy matches), Gaussian-smeared and L2-normalised;
//! two structures of the same reduced formula and space group are duplicates when the cosine of their
//! fingerprints exceeds `DUPLICATE_COSINE`.

use octet_core::{Error, Result, Rng};
use serde::{Deserialize, Serialize};

use crate::composition::Composition;
use crate::element::Element;
use crate::lattice::Lattice;
use crate::structure::Structure;

/// Covalent radius (A; Cordero et al. 2008) of the elements the loop generates for.
pub fn covalent_radius(e: Element) -> Option<f64> {
    Some(match e.symbol() {
        "H" => 0.31,
        "C" => 0.76,
        "N" => 0.71,
        "O" => 0.66,
        "Al" => 1.21,
        "Ni" => 1.24,
        "Cu" => 1.32,
        "Pd" => 1.39,
        "Ag" => 1.45,
        "Pt" => 1.36,
        "Au" => 1.36,
        _ => return None,
    })
}

/// Volume per atom (A^3) of the element's ground-state solid (fcc metals from their lattice
/// constants), the AIRSS volume estimate.
pub fn atomic_volume(e: Element) -> Option<f64> {
    Some(match e.symbol() {
        "H" => 8.0,
        "C" => 5.7,
        "N" => 11.0,
        "O" => 10.0,
        "Al" => 16.6,
        "Ni" => 10.9,
        "Cu" => 11.8,
        "Pd" => 14.7,
        "Ag" => 17.1,
        "Pt" => 15.1,
        "Au" => 17.0,
        _ => return None,
    })
}

fn checked(e: Element, what: &str, v: Option<f64>) -> Result<f64> {
    v.ok_or_else(|| {
        Error::config(
            "elements",
            format!("no {what} tabulated for {e} (candidates.rs covers Al Cu Ag Au Ni Pd Pt H C N O)"),
        )
    })
}

/// Where a candidate came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// `airss`, `substitution` or `reference`.
    pub method: String,
    /// Space group number it was generated in (or the parent's).
    pub space_group: u16,
    /// The parent structure's id (substitutions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// `[from, to, sites replaced]` (substitutions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substitution: Option<(String, String, usize)>,
    /// The substitution's probability under the ionic model (with a `lambda.json` table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// The seed of the random stream that made it.
    pub seed: u64,
}

/// One candidate structure.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: String,
    pub structure: Structure,
    pub origin: Origin,
}

/// Settings of the random cell generator.
#[derive(Clone, Debug)]
pub struct AirssConfig {
    /// Reject a placement with two atoms closer than this times the sum of their covalent radii.
    pub min_distance_factor: f64,
    /// Placements tried per cell before giving up on it.
    pub attempts: usize,
}

impl Default for AirssConfig {
    fn default() -> Self {
        AirssConfig { min_distance_factor: 0.75, attempts: 200 }
    }
}

/// A space-group operation on fractional coordinates: rotation, translation.
type SymOp = ([[f64; 3]; 3], [f64; 3]);

fn sym_ops(space_group: u16) -> Result<Vec<SymOp>> {
    let id = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    let inv = [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]];
    match space_group {
        1 => Ok(vec![(id, [0.0; 3])]),
        2 => Ok(vec![(id, [0.0; 3]), (inv, [0.0; 3])]),
        g => Err(Error::config("space_group", format!("{g} is not implemented (only 1 P1 and 2 P-1)"))),
    }
}

fn random_lattice(rng: &mut Rng, volume: f64) -> Result<Lattice> {
    loop {
        let l: Vec<f64> = (0..3).map(|_| 1.0 + 0.6 * rng.uniform()).collect();
        let ang: Vec<f64> = (0..3).map(|_| 65.0 + 50.0 * rng.uniform()).collect();
        if let Ok(lat) = Lattice::from_parameters(l[0], l[1], l[2], ang[0], ang[1], ang[2])
            && lat.volume() > 0.5 * l[0] * l[1] * l[2]
        {
            return lat.scaled_to_volume(volume);
        }
    }
}

fn min_image_distance(lat: &Lattice, a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let mut best = f64::INFINITY;
    for i in -1..=1 {
        for j in -1..=1 {
            for k in -1..=1 {
                let d = [
                    b[0] - a[0] - (b[0] - a[0]).round() + i as f64,
                    b[1] - a[1] - (b[1] - a[1]).round() + j as f64,
                    b[2] - a[2] - (b[2] - a[2]).round() + k as f64,
                ];
                let c = lat.to_cartesian(&d);
                best = best.min((c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt());
            }
        }
    }
    best
}

/// One random cell of `counts` (element, atoms in the cell) in `space_group`; `None` when no
/// placement met the distance limits within `cfg.attempts`.
pub fn random_structure(
    counts: &[(Element, usize)],
    space_group: u16,
    cfg: &AirssConfig,
    seed: u64,
) -> Result<Option<Structure>> {
    let ops = sym_ops(space_group)?;
    let mut volume = 0.0;
    for &(e, n) in counts {
        checked(e, "covalent radius", covalent_radius(e))?;
        volume += n as f64 * checked(e, "atomic volume", atomic_volume(e))?;
    }
    let mut rng = Rng::new(seed);
    volume *= 0.85 + 0.3 * rng.uniform();
    let centres: Vec<[f64; 3]> =
        (0..8).map(|k| [(k & 1) as f64 * 0.5, ((k >> 1) & 1) as f64 * 0.5, ((k >> 2) & 1) as f64 * 0.5]).collect();
    for _ in 0..cfg.attempts {
        let lat = random_lattice(&mut rng, volume)?;
        let mut species = Vec::new();
        let mut frac: Vec<[f64; 3]> = Vec::new();
        let mut ok = true;
        'place: for &(e, n) in counts {
            let mut left = n;
            while left > 0 {
                // An orbit: the images of one random point; in P-1 an odd remainder goes on a centre.
                let orbit: Vec<[f64; 3]> = if ops.len() == 2 && left % 2 == 1 {
                    vec![centres[rng.below(8)]]
                } else {
                    let p = [rng.uniform(), rng.uniform(), rng.uniform()];
                    ops.iter()
                        .map(|(r, t)| {
                            let mut q = [0.0; 3];
                            for a in 0..3 {
                                q[a] = (r[a][0] * p[0] + r[a][1] * p[1] + r[a][2] * p[2] + t[a]).rem_euclid(1.0);
                            }
                            q
                        })
                        .collect()
                };
                let all: Vec<(Element, [f64; 3])> =
                    species.iter().copied().zip(frac.iter().copied()).chain(orbit.iter().map(|&p| (e, p))).collect();
                let start = species.len();
                for i in start..all.len() {
                    for j in 0..i {
                        let lim = cfg.min_distance_factor
                            * (covalent_radius(all[i].0).unwrap_or(1.0) + covalent_radius(all[j].0).unwrap_or(1.0));
                        if min_image_distance(&lat, &all[i].1, &all[j].1) < lim {
                            ok = false;
                            break 'place;
                        }
                    }
                    // An atom and its own periodic image.
                    let w = lat.perpendicular_widths();
                    if w.iter().any(|&x| x < 2.0 * cfg.min_distance_factor * covalent_radius(e).unwrap_or(1.0)) {
                        ok = false;
                        break 'place;
                    }
                }
                left -= orbit.len();
                for p in orbit {
                    species.push(e);
                    frac.push(p);
                }
            }
        }
        if ok && let Ok(s) = Structure::new(lat, species, frac) {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Element -> atoms per cell for `composition` times `units` formula units.
pub fn cell_counts(composition: &Composition, units: usize) -> Vec<(Element, usize)> {
    composition.sorted().into_iter().map(|(e, n)| (e, (n.round() as usize) * units)).collect()
}

/// Reduced compositions of the chemical system `elements` with at most `max_atoms` atoms per
/// formula unit, unaries included, in a fixed order.
pub fn enumerate_compositions(elements: &[Element], max_atoms: usize) -> Vec<Composition> {
    let mut out: Vec<Composition> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let k = elements.len();
    let mut amounts = vec![0usize; k];
    fn rec(
        i: usize,
        left: usize,
        amounts: &mut Vec<usize>,
        elements: &[Element],
        out: &mut Vec<Composition>,
        seen: &mut std::collections::BTreeSet<String>,
    ) {
        if i == elements.len() {
            let pairs: Vec<(Element, f64)> =
                elements.iter().zip(amounts.iter()).filter(|(_, n)| **n > 0).map(|(&e, &n)| (e, n as f64)).collect();
            if pairs.is_empty() {
                return;
            }
            let c = Composition::from_amounts(pairs).expect("positive amounts");
            let (r, _) = c.reduced();
            if seen.insert(r.reduced_formula()) {
                out.push(r);
            }
            return;
        }
        for n in 0..=left {
            amounts[i] = n;
            rec(i + 1, left - n, amounts, elements, out, seen);
        }
        amounts[i] = 0;
    }
    rec(0, max_atoms, &mut amounts, elements, &mut out, &mut seen);
    let _ = k;
    out
}

/// `parent` with every site of `from` (or, with `partial`, one random Wyckoff orbit of them)
/// turned into `to`, the cell rescaled by the change in summed atomic volumes.
pub fn substitute(
    parent: &Structure,
    from: Element,
    to: Element,
    partial: bool,
    seed: u64,
) -> Result<Option<(Structure, usize)>> {
    let sites: Vec<usize> = (0..parent.num_sites()).filter(|&i| parent.species[i] == from).collect();
    if sites.is_empty() || from == to {
        return Ok(None);
    }
    let chosen: Vec<usize> = if partial {
        // One Wyckoff orbit of `from`, when `from` occupies more than one.
        let Ok(sym) = crate::symmetry::analyse(parent, crate::symmetry::SYMPREC) else { return Ok(None) };
        let orbits: Vec<Vec<usize>> = sym.orbit_sets().into_iter().filter(|o| parent.species[o[0]] == from).collect();
        if orbits.len() < 2 {
            return Ok(None);
        }
        orbits[Rng::new(seed).below(orbits.len())].clone()
    } else {
        sites
    };
    let mut species = parent.species.clone();
    for &i in &chosen {
        species[i] = to;
    }
    let vol =
        |sp: &[Element]| -> Result<f64> { sp.iter().map(|&e| checked(e, "atomic volume", atomic_volume(e))).sum() };
    let factor = vol(&species)? / vol(&parent.species)?;
    let lat = parent.lattice.scaled_to_volume(parent.lattice.volume() * factor)?;
    Ok(Structure::new(lat, species, parent.frac_coords.clone()).ok().map(|s| (s, chosen.len())))
}

/// pymatgen's default log-probability for an ion pair missing from `lambda.json`.
pub const LAMBDA_ALPHA: f64 = -5.0;
/// GNoME's SAPS threshold on the substitution probability.
pub const SUBSTITUTION_THRESHOLD: f64 = 0.001;

/// The Hautier ionic substitution model (pymatgen's `SubstitutionProbability` over its
/// `lambda.json`: `[species_a, species_b, lambda]` rows, species like `Cu1+`, `O2-`). With
/// `px(a) = sum_t exp(lambda(a, t))` over all species, the probability that species `b` replaces
/// `a` is `exp(lambda(b, a)) / px(a)` (pymatgen's `cond_prob(b, a)`); a missing pair has lambda
/// `LAMBDA_ALPHA`. Elements are mapped to their ions: `element_weight(from, to)` is the largest
/// such probability over the oxidation states the table knows for each (metals in an alloy have
/// none of their own, so the ionic model is only a prior on chemical similarity there).
#[derive(Clone, Debug)]
pub struct SubstitutionTable {
    species: Vec<(Element, i32)>,
    lambda: std::collections::HashMap<(usize, usize), f64>,
    px: Vec<f64>,
}

impl SubstitutionTable {
    /// Parses `lambda.json` text; errors name the file and row.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<SubstitutionTable> {
        let rows: Vec<(String, String, f64)> = serde_json::from_str(text)
            .map_err(|e| Error::format(path, "rows", format!("expected [[a, b, lambda]]: {e}")))?;
        let mut species: Vec<(Element, i32)> = Vec::new();
        // A species whose element octet does not know (pymatgen's `D1+`, deuterium) skips its row.
        let mut index = |s: &str, row: usize| -> Result<Option<usize>> {
            let digits = s.trim_start_matches(|c: char| c.is_ascii_alphabetic());
            let el = &s[..s.len() - digits.len()];
            let Some(e) = Element::from_symbol(el) else { return Ok(None) };
            let (num, sign) = match digits.strip_suffix('+') {
                Some(n) => (n, 1),
                None => (digits.strip_suffix('-').unwrap_or(digits), -1),
            };
            let q = if num.is_empty() {
                1
            } else {
                num.parse::<i32>()
                    .map_err(|_| Error::format(path, format!("row {row}"), format!("species `{s}`: bad charge")))?
            };
            let sp = (e, sign * q);
            Ok(Some(species.iter().position(|&x| x == sp).unwrap_or_else(|| {
                species.push(sp);
                species.len() - 1
            })))
        };
        let mut lambda = std::collections::HashMap::new();
        for (row, (a, b, l)) in rows.iter().enumerate() {
            let (Some(i), Some(j)) = (index(a, row + 1)?, index(b, row + 1)?) else { continue };
            if !l.is_finite() {
                return Err(Error::format(path, format!("row {}", row + 1), "lambda is not finite"));
            }
            lambda.insert((i.min(j), i.max(j)), *l);
        }
        let n = species.len();
        let mut t = SubstitutionTable { species, lambda, px: vec![0.0; n] };
        for a in 0..n {
            t.px[a] = (0..n).map(|b| t.get(a, b).exp()).sum();
        }
        Ok(t)
    }

    /// Reads `lambda.json` (from the pymatgen-core wheel: `pymatgen/core/structure_prediction/data/`).
    pub fn read(path: &std::path::Path) -> Result<SubstitutionTable> {
        SubstitutionTable::parse(&crate::io::read_text(path)?, path)
    }

    fn get(&self, a: usize, b: usize) -> f64 {
        *self.lambda.get(&(a.min(b), a.max(b))).unwrap_or(&LAMBDA_ALPHA)
    }

    /// Species (element, oxidation state) in the table.
    pub fn len(&self) -> usize {
        self.species.len()
    }

    pub fn is_empty(&self) -> bool {
        self.species.is_empty()
    }

    /// P(ion `to` replaces ion `from`), or `None` when either ion is not in the table.
    pub fn ion_probability(&self, from: (Element, i32), to: (Element, i32)) -> Option<f64> {
        let a = self.species.iter().position(|&s| s == from)?;
        let b = self.species.iter().position(|&s| s == to)?;
        Some(self.get(b, a).exp() / self.px[a])
    }

    /// The largest ion probability over the two elements' oxidation states (0 when none is known).
    pub fn element_weight(&self, from: Element, to: Element) -> f64 {
        let ions = |e: Element| self.species.iter().copied().filter(move |s| s.0 == e);
        ions(from).flat_map(|a| ions(to).filter_map(move |b| self.ion_probability(a, b))).fold(0.0, f64::max)
    }
}

/// Distance range and bins of the fingerprint.
const FP_RMAX: f64 = 6.0;
const FP_BINS: usize = 60;
/// Cosine above which two fingerprints are the same structure.
pub const DUPLICATE_COSINE: f64 = 0.995;

/// The radial fingerprint of a structure (see the module doc).
pub fn fingerprint(s: &Structure) -> Vec<f64> {
    let mut elems: Vec<Element> = s.species.clone();
    elems.sort();
    elems.dedup();
    let pairs = elems.len() * (elems.len() + 1) / 2;
    let mut fp = vec![0.0; pairs * FP_BINS];
    let n = s.num_sites() as f64;
    let scaled = s.with_volume_scaled(15.0 * n / s.lattice.volume()).unwrap_or_else(|_| s.clone());
    let Ok(nl) = scaled.neighbor_list(FP_RMAX) else { return fp };
    let idx = |e: Element| elems.iter().position(|&x| x == e).expect("present");
    let dr = FP_RMAX / FP_BINS as f64;
    for k in 0..nl.len() {
        let (a, b) = (idx(s.species[nl.senders[k] as usize]), idx(s.species[nl.receivers[k] as usize]));
        let (a, b) = (a.min(b), a.max(b));
        let p = a * elems.len() - a * (a + 1) / 2 + b;
        let r = nl.distances[k];
        for bin in 0..FP_BINS {
            let x = (bin as f64 + 0.5) * dr;
            fp[p * FP_BINS + bin] += (-0.5 * ((x - r) / (1.5 * dr)).powi(2)).exp();
        }
    }
    let norm = fp.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        fp.iter_mut().for_each(|x| *x /= norm);
    }
    fp
}

/// Structures seen so far, by reduced formula and space group, for deduplication.
#[derive(Default)]
pub struct Dedup {
    seen: std::collections::HashMap<(String, u16), Vec<Vec<f64>>>,
}

impl Dedup {
    /// Records `s`; false when an equal structure was recorded before.
    pub fn insert(&mut self, s: &Structure, space_group: u16) -> bool {
        let fp = fingerprint(s);
        let list = self.seen.entry((s.reduced_formula(), space_group)).or_default();
        if list.iter().any(|g| g.iter().zip(&fp).map(|(a, b)| a * b).sum::<f64>() > DUPLICATE_COSINE) {
            return false;
        }
        list.push(fp);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(s: &str) -> Element {
        Element::from_symbol(s).unwrap()
    }

    /// Random cells keep every pair at least the covalent-radius limit apart, and P-1 cells are
    /// centrosymmetric (every atom has an inverted partner of the same element).
    #[test]
    fn random_cells_respect_distances_and_inversion() {
        let counts = [(el("Cu"), 3), (el("Au"), 2)];
        let cfg = AirssConfig::default();
        let mut made = 0;
        for seed in 0..20 {
            let Some(s) = random_structure(&counts, 2, &cfg, seed).unwrap() else { continue };
            made += 1;
            assert_eq!(s.num_sites(), 5);
            let nl = s.neighbor_list(2.0).unwrap();
            assert!(nl.distances.iter().all(|&d| d >= 0.75 * 2.0 * 1.32 - 1e-9 || d > 2.0));
            for i in 0..5 {
                let inv = s.frac_coords[i].map(|x| (-x).rem_euclid(1.0));
                assert!((0..5).any(|j| s.species[j] == s.species[i]
                    && (0..3).all(|a| {
                        let d = (s.frac_coords[j][a] - inv[a]).rem_euclid(1.0);
                        !(1e-9..=1.0 - 1e-9).contains(&d)
                    })));
            }
        }
        assert!(made >= 10, "only {made} of 20 cells placed");
    }

    /// A copy of a structure scaled in volume is a duplicate; a different structure is not.
    #[test]
    fn dedup_sees_scaled_copies() {
        let counts = [(el("Cu"), 2), (el("Ag"), 2)];
        let mut made = (0..50).filter_map(|seed| random_structure(&counts, 1, &AirssConfig::default(), seed).unwrap());
        let (a, b) = (made.next().unwrap(), made.next().unwrap());
        let mut d = Dedup::default();
        assert!(d.insert(&a, 1));
        assert!(!d.insert(&a.with_volume_scaled(1.1).unwrap(), 1));
        assert!(d.insert(&b, 1));
        assert!(d.insert(&a, 2), "another space group is another key");
    }

    /// pymatgen's conditional probability on a three-ion table, by hand: px(a) sums exp(lambda)
    /// over every species, a missing pair counts as alpha = -5.
    #[test]
    fn lambda_probabilities_match_pymatgen_formula() {
        let text = r#"[["Cu1+", "Cu1+", 2.0], ["Cu1+", "Ag1+", 1.0], ["Ag1+", "Ag1+", 3.0], ["O2-", "O2-", 4.0]]"#;
        let t = SubstitutionTable::parse(text, std::path::Path::new("lambda.json")).unwrap();
        assert_eq!(t.len(), 3);
        let px_cu = 2f64.exp() + 1f64.exp() + (-5f64).exp();
        let p = t.ion_probability((el("Cu"), 1), (el("Ag"), 1)).unwrap();
        assert!((p - 1f64.exp() / px_cu).abs() < 1e-12);
        assert!((t.element_weight(el("Cu"), el("Ag")) - p).abs() < 1e-12);
        assert_eq!(t.element_weight(el("Cu"), el("Au")), 0.0);
        let skipped = SubstitutionTable::parse(r#"[["D1+", "Cu1+", 1.0]]"#, std::path::Path::new("l.json"));
        assert_eq!(skipped.unwrap().len(), 1, "the deuterium row is skipped, Cu1+ alone remains");
        let bad = SubstitutionTable::parse(r#"[["Cu1+", "Cu1.5+", 1.0]]"#, std::path::Path::new("l.json"));
        let e = bad.err().unwrap().to_string();
        assert!(e.contains("l.json") && e.contains("row 1"), "{e}");
    }

    /// Partial substitution replaces exactly one Wyckoff orbit: none in L1_2 Cu3Au (Cu on one
    /// orbit), one whole orbit of Cu in Cu7Au (an L1_2 double cell with one Au turned to Cu).
    #[test]
    fn partial_substitution_takes_one_wyckoff_orbit() {
        let (cu, au, ag) = (el("Cu"), el("Au"), el("Ag"));
        let l12 = Structure::new(
            Lattice::cubic(3.75).unwrap(),
            vec![au, cu, cu, cu],
            vec![[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]],
        )
        .unwrap();
        assert!(substitute(&l12, cu, ag, true, 0).unwrap().is_none());
        let (full, k) = substitute(&l12, cu, ag, false, 0).unwrap().unwrap();
        assert_eq!(
            (k, full.reduced_formula()),
            (
                3,
                Structure::new(l12.lattice.clone(), vec![au, ag, ag, ag], l12.frac_coords.clone())
                    .unwrap()
                    .reduced_formula()
            )
        );
        let mut frac = Vec::new();
        let mut species = Vec::new();
        for shift in [0.0, 0.5] {
            for (i, f) in l12.frac_coords.iter().enumerate() {
                frac.push([f[0] / 2.0 + shift, f[1], f[2]]);
                species.push(if i == 0 && shift > 0.0 { cu } else { l12.species[i] });
            }
        }
        let cu7au =
            Structure::new(Lattice::new([[7.5, 0.0, 0.0], [0.0, 3.75, 0.0], [0.0, 0.0, 3.75]]).unwrap(), species, frac)
                .unwrap();
        let sym = crate::symmetry::analyse(&cu7au, crate::symmetry::SYMPREC).unwrap();
        let cu_orbits: Vec<Vec<usize>> = sym.orbit_sets().into_iter().filter(|o| cu7au.species[o[0]] == cu).collect();
        assert!(cu_orbits.len() >= 2, "{cu_orbits:?}");
        for seed in 0..4 {
            let (s, k) = substitute(&cu7au, cu, ag, true, seed).unwrap().unwrap();
            let changed: Vec<usize> = (0..8).filter(|&i| s.species[i] == ag).collect();
            assert_eq!(changed.len(), k);
            assert!(cu_orbits.contains(&changed), "{changed:?} is not one of {cu_orbits:?}");
        }
    }

    #[test]
    fn compositions_of_a_binary() {
        let c = enumerate_compositions(&[el("Cu"), el("Au")], 4);
        let f: Vec<String> = c.iter().map(|c| c.reduced_formula()).collect();
        for want in ["Cu", "Au", "CuAu", "Cu3Au", "CuAu3"] {
            assert!(f.contains(&want.to_string()), "{want} missing from {f:?}");
        }
        assert_eq!(f.len(), 7, "{f:?}");
    }
}
