//! Periodic neighbour lists: every (i, j, n) with |r_j + n M - r_i| < cutoff, n in Z^3, including
//! i == j for n != 0, as flat edge arrays for graph networks.
//!
//! Edge e goes from `senders[e]` = i to `receivers[e]` = j with `shifts[e]` = n and displacement
//! `vectors[e]` = r_j + n M - r_i (so r_i and r_j are the positions of the *given* fractional
//! coordinates, which need not lie in [0, 1)). The list is symmetric: (i, j, n) is present exactly
//! when (j, i, -n) is. Edges are grouped by sender in increasing order.
//!
//! How far to look: the k-th fractional coordinate of a displacement d is d . b_k (b_k the reciprocal
//! vector, no 2*pi), so |d| < cutoff implies |Delta f_k| <= cutoff |b_k| = cutoff / w_k with w_k the
//! perpendicular width. A fixed +-1 image range is therefore wrong for thin or skewed cells; the
//! range comes from the widths.
//!
//! Algorithm (`neighbor_list`): wrap coordinates into [0, 1) (remembering the integer part), cut the
//! cell into n_k = max(1, floor(w_k / s)) slabs per axis (thinned to at most N bins in all, see
//! `bin_counts`), s = max(cutoff, (V/N)^(1/3)), so that a
//! bin spans at least the cutoff across and there are at most about N bins (w_0 w_1 w_2 <= V by
//! Hadamard's inequality on the reciprocal matrix). Two atoms within the cutoff then differ by at
//! most t_k = cutoff n_k / w_k in scaled coordinate f_k n_k, hence by at most D_k = ceil(t_k) bins
//! (floor(x + t) - floor(x) <= ceil(t)). Each atom visits the (2 D_k + 1) bins per axis around its
//! own, in the unbounded bin lattice: bin B maps to stored bin B mod n_k in image B div n_k, so no
//! image is visited twice. A bin image whose centre is farther than cutoff + (bin circumradius)
//! from the atom is skipped without looking at its atoms. When the whole cell is one bin (cells
//! up to about twice the cutoff wide: most crystals at GNoME's 4 A), each pair instead visits only
//! the images its own fractional offset allows (`small_cell_pairs`). `reference_neighbor_list` is the
//! brute-force specification the fast path is tested against.

use octet_core::{Error, Result};

use crate::lattice::{Lattice, norm};

/// Flat edge arrays of a periodic graph (see the module doc for the conventions).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NeighborList {
    pub senders: Vec<u32>,
    pub receivers: Vec<u32>,
    /// Integer lattice translation n of the receiver's image.
    pub shifts: Vec<[i32; 3]>,
    /// |vectors[e]| in A.
    pub distances: Vec<f64>,
    /// r_j + n M - r_i in A.
    pub vectors: Vec<[f64; 3]>,
}

impl NeighborList {
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    fn with_capacity(n: usize) -> NeighborList {
        NeighborList {
            senders: Vec::with_capacity(n),
            receivers: Vec::with_capacity(n),
            shifts: Vec::with_capacity(n),
            distances: Vec::with_capacity(n),
            vectors: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, i: usize, j: usize, n: [i32; 3], v: [f64; 3], d: f64) {
        self.senders.push(i as u32);
        self.receivers.push(j as u32);
        self.shifts.push(n);
        self.distances.push(d);
        self.vectors.push(v);
    }
}

fn check_cutoff(cutoff: f64, n_sites: usize) -> Result<()> {
    if !(cutoff.is_finite() && cutoff > 0.0) {
        return Err(Error::config("cutoff", format!("must be finite and positive, got {cutoff}")));
    }
    if n_sites > u32::MAX as usize {
        return Err(Error::config("sites", format!("{n_sites} sites exceed u32 indices")));
    }
    Ok(())
}

/// All edges within `cutoff` (A) under periodic boundary conditions; see the module doc.
pub fn neighbor_list(lattice: &Lattice, frac_coords: &[[f64; 3]], cutoff: f64) -> Result<NeighborList> {
    let n_atoms = frac_coords.len();
    check_cutoff(cutoff, n_atoms)?;
    if n_atoms == 0 {
        return Ok(NeighborList::default());
    }
    // Expected edge count N * (N / V) * (4/3) pi cutoff^3 for uniformly spread atoms, reserved up
    // front (a third of the time at screening sizes went into regrowing the five arrays); capped
    // at 2^18 edges (~14 MB) so that a huge cutoff does not reserve memory before finding edges.
    let expect = n_atoms as f64 * n_atoms as f64 / lattice.volume() * 4.19 * cutoff.powi(3);
    let mut out = NeighborList::with_capacity((expect * 1.2).min((1 << 18) as f64) as usize);
    let m = lattice.matrix();
    let widths = lattice.perpendicular_widths();

    // Wrapped coordinates w in [0, 1) and integer parts k, so f = w + k.
    let mut wrapped = Vec::with_capacity(n_atoms);
    let mut whole = Vec::with_capacity(n_atoms);
    for f in frac_coords {
        let mut w = [0.0; 3];
        let mut k = [0i32; 3];
        for a in 0..3 {
            let fl = f[a].floor();
            w[a] = f[a] - fl;
            k[a] = fl as i32;
            if w[a] >= 1.0 {
                // f slightly below an integer rounds to w == 1.0.
                w[a] = 0.0;
                k[a] += 1;
            }
        }
        wrapped.push(w);
        whole.push(k);
    }
    let cart: Vec<[f64; 3]> = wrapped.iter().map(|w| lattice.to_cartesian(w)).collect();

    // Bins per axis and search range in bins.
    let s = cutoff.max((lattice.volume() / n_atoms as f64).cbrt());
    let nbins = bin_counts(widths, s, n_atoms);
    if nbins == [1, 1, 1] {
        small_cell_pairs(lattice, &wrapped, &whole, &cart, cutoff, &mut out);
        return Ok(out);
    }
    // The 1e-12 relative slack only matters for pairs within rounding of the cutoff itself.
    let reach: [i64; 3] = std::array::from_fn(|a| (cutoff * nbins[a] as f64 / widths[a] * (1.0 + 1e-12)).ceil() as i64);

    // Bin contents in CSR form: bin b holds atoms order[start[b]..start[b + 1]].
    let bin_of =
        |w: &[f64; 3]| -> [i64; 3] { std::array::from_fn(|a| ((w[a] * nbins[a] as f64) as i64).min(nbins[a] - 1)) };
    let flat = |b: [i64; 3]| ((b[0] * nbins[1] + b[1]) * nbins[2] + b[2]) as usize;
    let n_bins = (nbins[0] * nbins[1] * nbins[2]) as usize;
    let atom_bins: Vec<[i64; 3]> = wrapped.iter().map(bin_of).collect();
    let mut start = vec![0usize; n_bins + 1];
    for b in &atom_bins {
        start[flat(*b) + 1] += 1;
    }
    for b in 0..n_bins {
        start[b + 1] += start[b];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; n_atoms];
    for (i, b) in atom_bins.iter().enumerate() {
        let slot = &mut fill[flat(*b)];
        order[*slot] = i;
        *slot += 1;
    }

    // Bin geometry: edge vectors e_a = a_a / n_a; centre offset and circumradius (half the longest
    // of the four body diagonals of the bin parallelepiped).
    let edge: [[f64; 3]; 3] = std::array::from_fn(|a| m[a].map(|x| x / nbins[a] as f64));
    let mut radius: f64 = 0.0;
    for (s1, s2) in [(1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)] {
        let d: [f64; 3] = std::array::from_fn(|k| edge[0][k] + s1 * edge[1][k] + s2 * edge[2][k]);
        radius = radius.max(0.5 * norm(&d));
    }
    let prune = cutoff + radius;
    let cutoff2 = cutoff * cutoff;

    for i in 0..n_atoms {
        let bi = atom_bins[i];
        let ri = cart[i];
        for d0 in -reach[0]..=reach[0] {
            for d1 in -reach[1]..=reach[1] {
                for d2 in -reach[2]..=reach[2] {
                    let big = [bi[0] + d0, bi[1] + d1, bi[2] + d2];
                    // Centre of the (unbounded) bin: (B + 1/2) . e.
                    let centre: [f64; 3] = std::array::from_fn(|k| {
                        (big[0] as f64 + 0.5) * edge[0][k]
                            + (big[1] as f64 + 0.5) * edge[1][k]
                            + (big[2] as f64 + 0.5) * edge[2][k]
                    });
                    let dc = [centre[0] - ri[0], centre[1] - ri[1], centre[2] - ri[2]];
                    if dc[0] * dc[0] + dc[1] * dc[1] + dc[2] * dc[2] > prune * prune {
                        continue;
                    }
                    let image: [i64; 3] = std::array::from_fn(|a| big[a].div_euclid(nbins[a]));
                    let stored: [i64; 3] = std::array::from_fn(|a| big[a].rem_euclid(nbins[a]));
                    let b = flat(stored);
                    if start[b] == start[b + 1] {
                        continue;
                    }
                    let offset: [f64; 3] = std::array::from_fn(|k| {
                        image[0] as f64 * m[0][k] + image[1] as f64 * m[1][k] + image[2] as f64 * m[2][k]
                    });
                    let base = [offset[0] - ri[0], offset[1] - ri[1], offset[2] - ri[2]];
                    let is_home = image == [0, 0, 0];
                    for &j in &order[start[b]..start[b + 1]] {
                        if is_home && i == j {
                            continue;
                        }
                        let rj = cart[j];
                        let v = [rj[0] + base[0], rj[1] + base[1], rj[2] + base[2]];
                        let d2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                        if d2 < cutoff2 {
                            // f_j + n - f_i = w_j + image - w_i  =>  n = image + k_i - k_j.
                            let n = std::array::from_fn(|a| image[a] as i32 + whole[i][a] - whole[j][a]);
                            out.push(i, j, n, v, d2.sqrt());
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Bins per axis: floor(w_k / s), at least 1, with at most max(N, 1) bins in all. The product of
/// the floors is at most N (w_0 w_1 w_2 <= V <= N s^3), but the clamp to 1 of a thin axis lifts that
/// bound (a cell 1e19 A long and 5 A wide would ask for 1e12 bins), so the axes with several bins
/// are thinned in proportion. Fewer bins only make each bin wider, which the search range allows
/// for. Computed in f64, so huge widths cannot overflow an integer.
fn bin_counts(widths: [f64; 3], s: f64, n_atoms: usize) -> [i64; 3] {
    let mut n: [f64; 3] = widths.map(|w| (w / s).floor().max(1.0));
    let budget = n_atoms.max(1) as f64;
    let product = n[0] * n[1] * n[2];
    if product > budget {
        let split = n.iter().filter(|&&x| x > 1.0).count() as f64;
        let factor = (budget / product).powf(1.0 / split);
        n = n.map(|x| if x > 1.0 { (x * factor).floor().max(1.0) } else { x });
    }
    n.map(|x| x as i64)
}

/// The one-bin case (cells not much wider than the cutoff, the usual crystal): per ordered pair
/// (i, j), only the images n the pair can reach. With df = w_j - w_i, |(df + n) M| < cutoff
/// requires |df_k + n_k| <= cutoff / w_k, so n_k runs over
/// [ceil(-cutoff / w_k - df_k), floor(cutoff / w_k - df_k)] — about 2 cutoff / w_k + 1 values per
/// axis instead of the whole (2 ceil(cutoff / w_k) + 1)-wide box.
fn small_cell_pairs(
    lattice: &Lattice,
    wrapped: &[[f64; 3]],
    whole: &[[i32; 3]],
    cart: &[[f64; 3]],
    cutoff: f64,
    out: &mut NeighborList,
) {
    let m = lattice.matrix();
    // Same 1e-12 slack as the binned path.
    let half: [f64; 3] = lattice.perpendicular_widths().map(|w| cutoff / w * (1.0 + 1e-12));
    let cutoff2 = cutoff * cutoff;
    for (i, wi) in wrapped.iter().enumerate() {
        for (j, wj) in wrapped.iter().enumerate() {
            let df: [f64; 3] = std::array::from_fn(|a| wj[a] - wi[a]);
            let lo: [i32; 3] = std::array::from_fn(|a| (-half[a] - df[a]).ceil() as i32);
            let hi: [i32; 3] = std::array::from_fn(|a| (half[a] - df[a]).floor() as i32);
            let base: [f64; 3] = std::array::from_fn(|k| cart[j][k] - cart[i][k]);
            for n0 in lo[0]..=hi[0] {
                let b0: [f64; 3] = std::array::from_fn(|k| base[k] + n0 as f64 * m[0][k]);
                for n1 in lo[1]..=hi[1] {
                    let b1: [f64; 3] = std::array::from_fn(|k| b0[k] + n1 as f64 * m[1][k]);
                    for n2 in lo[2]..=hi[2] {
                        if i == j && n0 == 0 && n1 == 0 && n2 == 0 {
                            continue;
                        }
                        let v: [f64; 3] = std::array::from_fn(|k| b1[k] + n2 as f64 * m[2][k]);
                        let d2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                        if d2 < cutoff2 {
                            let image = [n0, n1, n2];
                            let n = std::array::from_fn(|a| image[a] + whole[i][a] - whole[j][a]);
                            out.push(i, j, n, v, d2.sqrt());
                        }
                    }
                }
            }
        }
    }
}

/// Brute-force specification: every pair (i, j) and every image n in a box that certainly contains
/// all neighbours, computed directly from the given (unwrapped) fractional coordinates. O(N^2 *
/// images); for tests and for checking the fast path.
pub fn reference_neighbor_list(lattice: &Lattice, frac_coords: &[[f64; 3]], cutoff: f64) -> Result<NeighborList> {
    check_cutoff(cutoff, frac_coords.len())?;
    let widths = lattice.perpendicular_widths();
    // |f_j + n - f_i|_k <= cutoff / w_k is needed, so |n_k| <= cutoff / w_k + max |f_j - f_i|_k.
    let range: [i32; 3] = std::array::from_fn(|a| {
        let (lo, hi) =
            frac_coords.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), f| (lo.min(f[a]), hi.max(f[a])));
        (cutoff / widths[a] + (hi - lo).max(0.0)).ceil() as i32 + 1
    });
    let mut out = NeighborList::default();
    for (i, fi) in frac_coords.iter().enumerate() {
        for (j, fj) in frac_coords.iter().enumerate() {
            for n0 in -range[0]..=range[0] {
                for n1 in -range[1]..=range[1] {
                    for n2 in -range[2]..=range[2] {
                        if i == j && [n0, n1, n2] == [0, 0, 0] {
                            continue;
                        }
                        let n = [n0 as f64, n1 as f64, n2 as f64];
                        let df: [f64; 3] = std::array::from_fn(|a| fj[a] + n[a] - fi[a]);
                        let v = lattice.to_cartesian(&df);
                        let d = norm(&v);
                        if d < cutoff {
                            out.push(i, j, [n0, n1, n2], v, d);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_cubic_has_six_nearest_neighbours_of_itself() {
        let l = Lattice::cubic(2.0).unwrap();
        let nl = neighbor_list(&l, &[[0.0, 0.0, 0.0]], 2.1).unwrap();
        assert_eq!(nl.len(), 6);
        assert!(nl.senders.iter().chain(&nl.receivers).all(|&x| x == 0));
        assert!(nl.distances.iter().all(|&d| (d - 2.0).abs() < 1e-12));
    }

    #[test]
    fn shifts_refer_to_the_given_unwrapped_coordinates() {
        let l = Lattice::cubic(3.0).unwrap();
        // Atom 1 sits at x = 2.1 (fractional), i.e. wrapped 0.1 plus two cells.
        let f = [[0.0, 0.0, 0.0], [2.1, 0.0, 0.0]];
        let nl = neighbor_list(&l, &f, 0.5).unwrap();
        let e = (0..nl.len()).find(|&e| nl.senders[e] == 0 && nl.receivers[e] == 1).unwrap();
        assert_eq!(nl.shifts[e], [-2, 0, 0]);
        assert!((nl.vectors[e][0] - 0.3).abs() < 1e-12);
    }

    #[test]
    fn bad_cutoff_is_a_config_error() {
        let l = Lattice::cubic(3.0).unwrap();
        assert!(neighbor_list(&l, &[[0.0; 3]], 0.0).is_err());
        assert!(neighbor_list(&l, &[[0.0; 3]], f64::NAN).is_err());
    }
}
