//! Neighbour-list tests: the cell-list path against an independent brute force over a generous
//! image box on random skewed cells, long cutoffs in one-atom cells, symmetry of the edge set, and
//! an ignored timing run for screening throughput.

use std::collections::BTreeMap;

use octet_core::Rng;
use octet_materials::lattice::Lattice;
use octet_materials::neighbors::{NeighborList, neighbor_list, reference_neighbor_list};

/// Distances from different but equivalent formulas agree to rounding: a few ulps of lengths
/// up to ~100 A.
const DIST_TOL: f64 = 1e-9;

type Key = (u32, u32, [i32; 3]);

fn as_map(nl: &NeighborList) -> BTreeMap<Key, f64> {
    (0..nl.len()).map(|e| ((nl.senders[e], nl.receivers[e], nl.shifts[e]), nl.distances[e])).collect()
}

/// Brute force over a box of images that is larger than needed by two cells per axis.
fn generous_brute_force(l: &Lattice, f: &[[f64; 3]], cutoff: f64) -> BTreeMap<Key, f64> {
    let w = l.perpendicular_widths();
    let spread = |a: usize| {
        let lo = f.iter().map(|x| x[a]).fold(f64::INFINITY, f64::min);
        let hi = f.iter().map(|x| x[a]).fold(f64::NEG_INFINITY, f64::max);
        hi - lo
    };
    let r: [i32; 3] = std::array::from_fn(|a| (cutoff / w[a] + spread(a)).ceil() as i32 + 2);
    let mut out = BTreeMap::new();
    for (i, fi) in f.iter().enumerate() {
        for (j, fj) in f.iter().enumerate() {
            for n0 in -r[0]..=r[0] {
                for n1 in -r[1]..=r[1] {
                    for n2 in -r[2]..=r[2] {
                        if i == j && (n0, n1, n2) == (0, 0, 0) {
                            continue;
                        }
                        let ri = l.to_cartesian(fi);
                        let rj = l.to_cartesian(&[fj[0] + n0 as f64, fj[1] + n1 as f64, fj[2] + n2 as f64]);
                        let d = ((rj[0] - ri[0]).powi(2) + (rj[1] - ri[1]).powi(2) + (rj[2] - ri[2]).powi(2)).sqrt();
                        if d < cutoff {
                            out.insert((i as u32, j as u32, [n0, n1, n2]), d);
                        }
                    }
                }
            }
        }
    }
    out
}

fn assert_same(fast: &BTreeMap<Key, f64>, slow: &BTreeMap<Key, f64>, what: &str) {
    let missing: Vec<_> = slow.keys().filter(|k| !fast.contains_key(k)).take(5).collect();
    let extra: Vec<_> = fast.keys().filter(|k| !slow.contains_key(k)).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{what}: missing {missing:?}, extra {extra:?}");
    for (k, d) in slow {
        assert!((fast[k] - d).abs() < DIST_TOL, "{what}: {k:?} distance {} vs {d}", fast[k]);
    }
}

/// A random cell: lengths 1.5..8 A, angles 35..145 degrees, rejected until it is a valid 3D cell
/// with volume at least 5% of a*b*c (so that it is skewed but the brute force stays small).
fn random_cell(rng: &mut Rng) -> Lattice {
    loop {
        let len = |r: &mut Rng| 1.5 + 6.5 * r.uniform();
        let ang = |r: &mut Rng| 35.0 + 110.0 * r.uniform();
        let (a, b, c) = (len(rng), len(rng), len(rng));
        let (al, be, ga) = (ang(rng), ang(rng), ang(rng));
        if let Ok(l) = Lattice::from_parameters(a, b, c, al, be, ga)
            && l.volume() > 0.05 * a * b * c
        {
            return l;
        }
    }
}

#[test]
fn cell_list_matches_brute_force_on_random_skewed_cells() {
    let mut rng = Rng::new(2023);
    for trial in 0..90 {
        // Every third cell is three times larger with more atoms, so that the cell is cut into
        // several bins per axis; the others mostly take the one-bin path.
        let big = trial % 3 == 0;
        let l = random_cell(&mut rng);
        let l = if big { l.scaled_to_volume(27.0 * l.volume()).unwrap() } else { l };
        let n = if big { 20 + rng.below(30) } else { 1 + rng.below(10) };
        // Coordinates deliberately outside [0, 1) to exercise the shift bookkeeping (a narrower
        // spread for the big cells keeps the brute force's image box small).
        let (lo, width) = if big { (-0.5, 2.0) } else { (-1.5, 4.0) };
        let f: Vec<[f64; 3]> = (0..n).map(|_| std::array::from_fn(|_| lo + width * rng.uniform())).collect();
        let cutoff = if big { 0.5 + 3.5 * rng.uniform() } else { 0.5 + 6.0 * rng.uniform() };
        let fast = neighbor_list(&l, &f, cutoff).unwrap();
        let slow = generous_brute_force(&l, &f, cutoff);
        let what = format!("trial {trial}: {n} atoms, cutoff {cutoff:.3}, cell {:?}", l.matrix());
        assert_same(&as_map(&fast), &slow, &what);
        assert_eq!(fast.len(), slow.len(), "{what}: duplicate edges");
        assert_same(&as_map(&reference_neighbor_list(&l, &f, cutoff).unwrap()), &slow, &what);
        // Vectors agree with shifts: v = (f_j + n - f_i) M.
        for e in 0..fast.len() {
            let (i, j, s) = (fast.senders[e] as usize, fast.receivers[e] as usize, fast.shifts[e]);
            let df: [f64; 3] = std::array::from_fn(|a| f[j][a] + s[a] as f64 - f[i][a]);
            let v = l.to_cartesian(&df);
            for (x, y) in v.iter().zip(&fast.vectors[e]) {
                assert!((x - y).abs() < DIST_TOL, "{what}: vector of edge {e}");
            }
        }
    }
}

#[test]
fn one_atom_cell_with_cutoff_several_lattice_constants_finds_every_image() {
    // fcc primitive cell (a = 3.6 A cubic, nearest neighbour 2.546 A) and a cutoff of 3.9 a. fcc
    // shells lie at a sqrt(k / 2), k integer; 3.9 a is between shells (2 * 3.9^2 = 30.42), so no
    // distance sits on the cutoff where rounding would decide.
    let a = 3.6;
    let l = Lattice::new([[0.0, a / 2.0, a / 2.0], [a / 2.0, 0.0, a / 2.0], [a / 2.0, a / 2.0, 0.0]]).unwrap();
    let cutoff = 3.9 * a;
    let f = [[0.3, 0.1, 0.7]];
    let fast = as_map(&neighbor_list(&l, &f, cutoff).unwrap());
    let slow = generous_brute_force(&l, &f, cutoff);
    assert_same(&fast, &slow, "fcc, cutoff 3.9 a");
    // fcc shells: 12 nearest neighbours at a/sqrt(2).
    let nearest = fast.values().filter(|&&d| (d - a / 2f64.sqrt()).abs() < 1e-9).count();
    assert_eq!(nearest, 12);
    // Points of the fcc lattice within 3.9 a: about the sphere volume over the primitive volume.
    let expect = 4.0 / 3.0 * std::f64::consts::PI * cutoff.powi(3) / l.volume();
    assert!((fast.len() as f64 / expect - 1.0).abs() < 0.05, "{} vs ~{expect:.0}", fast.len());

    // A thin, strongly sheared one-atom cell: a fixed +-1 image range would miss most neighbours.
    let thin = Lattice::new([[1.0, 0.0, 0.0], [0.9, 0.5, 0.0], [0.3, 0.2, 0.4]]).unwrap();
    let fast = as_map(&neighbor_list(&thin, &[[0.0; 3]], 3.0).unwrap());
    assert_same(&fast, &generous_brute_force(&thin, &[[0.0; 3]], 3.0), "thin sheared cell");
    assert!(fast.keys().any(|(_, _, n)| n.iter().any(|x| x.abs() > 3)));
}

#[test]
fn very_long_cells_get_few_bins_and_the_right_edges() {
    // One axis 1e19 or 1e300 A, two axes 5 A: the slab count floor(w / s) per axis was 1e12 or
    // overflowed i64 (an allocation abort and a capacity-overflow panic). The bins are now capped
    // at the atom count; the edges are those of the brute force.
    for (long, f) in [(1.8e19, vec![[0.0, 0.0, 0.0], [0.5, 0.5, 0.3]]), (1e300, vec![[0.0; 3], [0.1, 0.5, 0.5]])] {
        let l = Lattice::new([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, long]]).unwrap();
        for cutoff in [0.5, 6.0] {
            let fast = as_map(&neighbor_list(&l, &f, cutoff).unwrap());
            let slow = as_map(&reference_neighbor_list(&l, &f, cutoff).unwrap());
            assert_same(&fast, &slow, &format!("c = {long:e}, cutoff {cutoff}"));
        }
    }
}

#[test]
fn edge_set_is_symmetric_under_reversal() {
    let mut rng = Rng::new(7);
    let l = random_cell(&mut rng);
    let f: Vec<[f64; 3]> = (0..8).map(|_| std::array::from_fn(|_| rng.uniform())).collect();
    let m = as_map(&neighbor_list(&l, &f, 4.0).unwrap());
    for ((i, j, n), d) in &m {
        let back = m.get(&(*j, *i, n.map(|x| -x))).expect("reverse edge present");
        assert!((back - d).abs() < DIST_TOL);
    }
}

#[test]
fn senders_are_sorted() {
    let mut rng = Rng::new(11);
    let l = random_cell(&mut rng);
    let f: Vec<[f64; 3]> = (0..6).map(|_| std::array::from_fn(|_| rng.uniform())).collect();
    let nl = neighbor_list(&l, &f, 5.0).unwrap();
    assert!(nl.senders.windows(2).all(|w| w[0] <= w[1]));
}

/// Screening-sized structures: 25 atoms at ~15 A^3/atom in random triclinic cells, GNoME's 4 A
/// cutoff. Run with `cargo test -p octet-materials --release -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_screening_sized_structures() {
    let mut rng = Rng::new(1);
    let mut cells = Vec::new();
    for _ in 0..1000 {
        let l = random_cell(&mut rng);
        let l = l.scaled_to_volume(25.0 * 15.0).unwrap();
        let f: Vec<[f64; 3]> = (0..25).map(|_| std::array::from_fn(|_| rng.uniform())).collect();
        cells.push((l, f));
    }
    let t = std::time::Instant::now();
    let mut edges = 0;
    for (l, f) in &cells {
        edges += neighbor_list(l, f, 4.0).unwrap().len();
    }
    let fast = t.elapsed();
    let t = std::time::Instant::now();
    for (l, f) in cells.iter().take(100) {
        reference_neighbor_list(l, f, 4.0).unwrap();
    }
    let slow = t.elapsed() * 10;
    println!(
        "neighbor_list: 1000 structures x 25 atoms, cutoff 4 A: {:.1} us/structure ({:.0} structures/s, {:.0} edges/structure); \
         brute force {:.1} us/structure",
        fast.as_secs_f64() * 1e6 / 1000.0,
        1000.0 / fast.as_secs_f64(),
        edges as f64 / 1000.0,
        slow.as_secs_f64() * 1e6 / 1000.0
    );

    // A large cell: 2000 atoms (~30 A cube) where the cell list pays off most.
    let l = Lattice::cubic((2000.0f64 * 15.0).cbrt()).unwrap();
    let f: Vec<[f64; 3]> = (0..2000).map(|_| std::array::from_fn(|_| rng.uniform())).collect();
    let t = std::time::Instant::now();
    let nl = neighbor_list(&l, &f, 4.0).unwrap();
    println!("neighbor_list: 2000 atoms, cutoff 4 A: {:.2} ms, {} edges", t.elapsed().as_secs_f64() * 1e3, nl.len());
}
