//! `Lattice`: a periodic cell given by three lattice vectors (the rows of a 3x3 matrix, in Angstrom),
//! with volume, lengths and angles, fractional <-> Cartesian conversion and the reciprocal lattice.
//!
//! Conventions (the same as ASE and pymatgen): row i of `matrix` is lattice vector a_i, so a point with
//! fractional coordinates f has Cartesian position r = f M = f_0 a_0 + f_1 a_1 + f_2 a_2, and
//! f = r M^-1. The reciprocal lattice is the crystallographer's one, without 2*pi: rows b_i of
//! (M^-1)^T, so a_i . b_j = delta_ij. The perpendicular width of the cell across the planes spanned by
//! the other two vectors is w_i = 1 / |b_i| = V / |a_j x a_k|; it bounds how many periodic images a
//! cutoff sphere can reach (see `neighbors`).

use octet_core::{Error, Result};

/// Cells with |det M| below this (A^3) are rejected as degenerate.
pub const MIN_VOLUME: f64 = 1e-6;

/// Longest lattice vector a structure may have (A): 1 um, a hundred times the largest real unit
/// cells (protein crystals, MOFs, slab supercells with vacuum). Anything longer is a unit mistake or a
/// crafted file, and would make the neighbour search's bin and image counts absurd.
pub const MAX_CELL_LENGTH: f64 = 1e4;

/// Largest orthogonality defect V / (w_0 w_1 w_2) a structure's cell may have (1 for an orthogonal
/// cell, 1.15 for hexagonal, 2 for a monoclinic beta of 150 degrees): fifty times the most oblique
/// settings real files use. The periodic image search visits about this many times more images
/// than lie within the cutoff, so a sheared description of a normal lattice (`1e8 4.594 0` beside
/// `4.594 0 0`: a defect of 2e7) would take minutes; such cells are refused rather than searched.
pub const MAX_CELL_DEFECT: f64 = 100.0;

/// A non-degenerate periodic cell. Handedness is kept: a left-handed cell has a negative
/// determinant, and `volume` is its absolute value.
#[derive(Clone, Debug, PartialEq)]
pub struct Lattice {
    matrix: [[f64; 3]; 3],
    inverse: [[f64; 3]; 3],
}

fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

pub(crate) fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn cross(a: &[f64; 3], b: &[f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

pub(crate) fn norm(a: &[f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

impl Lattice {
    /// Builds a lattice from row vectors; rejects non-finite entries and |volume| < `MIN_VOLUME`.
    pub fn new(matrix: [[f64; 3]; 3]) -> Result<Lattice> {
        if matrix.iter().flatten().any(|x| !x.is_finite()) {
            return Err(Error::Other(format!("lattice has a non-finite entry: {matrix:?}")));
        }
        let det = det3(&matrix);
        if det.abs() < MIN_VOLUME {
            return Err(Error::Other(format!(
                "degenerate lattice: volume {det:e} A^3 is below {MIN_VOLUME:e} A^3 (vectors {matrix:?})"
            )));
        }
        // Inverse by the adjugate: (M^-1)_{ij} = cofactor_{ji} / det; column j of M^-1 is
        // (a_k x a_l) / det for (j, k, l) cyclic, i.e. M^-1 = [a1 x a2, a2 x a0, a0 x a1]^T / det.
        let c = [cross(&matrix[1], &matrix[2]), cross(&matrix[2], &matrix[0]), cross(&matrix[0], &matrix[1])];
        let mut inverse = [[0.0; 3]; 3];
        for (i, row) in inverse.iter_mut().enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                *x = c[j][i] / det;
            }
        }
        Ok(Lattice { matrix, inverse })
    }

    /// A cubic cell of edge `a`.
    pub fn cubic(a: f64) -> Result<Lattice> {
        Lattice::new([[a, 0.0, 0.0], [0.0, a, 0.0], [0.0, 0.0, a]])
    }

    /// From lengths (A) and angles (degrees; alpha = angle(b, c), beta = angle(a, c),
    /// gamma = angle(a, b)) in the standard orientation: a along x, b in the xy plane, c completing a
    /// right-handed cell. With c = (c_x, c_y, c_z): a.c = a c_x = a c cos(beta) gives c_x;
    /// b.c = b (cos(gamma) c_x + sin(gamma) c_y) = b c cos(alpha) gives c_y; |c| gives c_z.
    /// Cosines of angles within 1e-10 degrees of 90 are snapped to 0 so that orthogonal cells stay
    /// exactly orthogonal.
    pub fn from_parameters(a: f64, b: f64, c: f64, alpha: f64, beta: f64, gamma: f64) -> Result<Lattice> {
        let params = [a, b, c, alpha, beta, gamma];
        if params.iter().any(|x| !x.is_finite()) || a <= 0.0 || b <= 0.0 || c <= 0.0 {
            return Err(Error::Other(format!("invalid cell parameters (a, b, c, alpha, beta, gamma) = {params:?}")));
        }
        let cos = |deg: f64| {
            if (deg - 90.0).abs() < 1e-10 { 0.0 } else { deg.to_radians().cos() }
        };
        let (ca, cb, cg) = (cos(alpha), cos(beta), cos(gamma));
        let sg = gamma.to_radians().sin();
        let cx = cb;
        let cy = (ca - cb * cg) / sg;
        let cz2 = 1.0 - cx * cx - cy * cy;
        if cz2.is_nan() || cz2 <= 0.0 {
            return Err(Error::Other(format!(
                "cell angles alpha={alpha}, beta={beta}, gamma={gamma} do not form a 3D cell"
            )));
        }
        Lattice::new([[a, 0.0, 0.0], [b * cg, b * sg, 0.0], [c * cx, c * cy, c * cz2.sqrt()]])
    }

    /// Rows are the lattice vectors a, b, c (A).
    pub fn matrix(&self) -> &[[f64; 3]; 3] {
        &self.matrix
    }

    /// M^-1; its columns are the reciprocal vectors b_i.
    pub fn inverse(&self) -> &[[f64; 3]; 3] {
        &self.inverse
    }

    /// det M: positive for a right-handed cell.
    pub fn determinant(&self) -> f64 {
        det3(&self.matrix)
    }

    /// Cell volume |det M| in A^3.
    pub fn volume(&self) -> f64 {
        self.determinant().abs()
    }

    /// |a|, |b|, |c| in A.
    pub fn lengths(&self) -> [f64; 3] {
        [norm(&self.matrix[0]), norm(&self.matrix[1]), norm(&self.matrix[2])]
    }

    /// alpha = angle(b, c), beta = angle(a, c), gamma = angle(a, b), in degrees.
    pub fn angles(&self) -> [f64; 3] {
        let m = &self.matrix;
        let l = self.lengths();
        let angle = |i: usize, j: usize| (dot(&m[i], &m[j]) / (l[i] * l[j])).clamp(-1.0, 1.0).acos().to_degrees();
        [angle(1, 2), angle(0, 2), angle(0, 1)]
    }

    /// Cartesian position r = f M.
    pub fn to_cartesian(&self, frac: &[f64; 3]) -> [f64; 3] {
        let m = &self.matrix;
        std::array::from_fn(|k| frac[0] * m[0][k] + frac[1] * m[1][k] + frac[2] * m[2][k])
    }

    /// Fractional coordinates f = r M^-1.
    pub fn to_fractional(&self, cart: &[f64; 3]) -> [f64; 3] {
        let n = &self.inverse;
        std::array::from_fn(|k| cart[0] * n[0][k] + cart[1] * n[1][k] + cart[2] * n[2][k])
    }

    /// Reciprocal lattice without the 2*pi factor: rows b_i with a_i . b_j = delta_ij.
    pub fn reciprocal(&self) -> Lattice {
        let n = &self.inverse;
        let matrix = std::array::from_fn(|i| std::array::from_fn(|k| n[k][i]));
        Lattice::new(matrix).expect("the reciprocal of a non-degenerate cell is non-degenerate")
    }

    /// Perpendicular widths w_i = 1 / |b_i|: the distance between the two faces of the cell that
    /// are spanned by the other two lattice vectors.
    pub fn perpendicular_widths(&self) -> [f64; 3] {
        let n = &self.inverse;
        std::array::from_fn(|i| 1.0 / (n[0][i] * n[0][i] + n[1][i] * n[1][i] + n[2][i] * n[2][i]).sqrt())
    }

    /// Orthogonality defect V / (w_0 w_1 w_2) >= 1 (Hadamard): how much larger the box of images
    /// spanned by the perpendicular widths is than the cell itself; 1 for an orthogonal cell.
    pub fn orthogonality_defect(&self) -> f64 {
        let w = self.perpendicular_widths();
        self.volume() / (w[0] * w[1] * w[2])
    }

    /// Whether this is a cell a structure can have: every vector at most [`MAX_CELL_LENGTH`] long and
    /// an orthogonality defect at most [`MAX_CELL_DEFECT`]. `new` accepts any non-degenerate cell (the
    /// reciprocal of a small cell is long); structures and the file readers apply this check.
    pub fn check_plausible(&self) -> Result<()> {
        // |a| scaled by its largest component, so that 1e300 A reads as 1e300 and not inf.
        let lengths = self.matrix.map(|row| {
            let m = row.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            if m == 0.0 { 0.0 } else { m * norm(&row.map(|x| x / m)) }
        });
        if let Some(k) = (0..3).find(|&k| lengths[k] > MAX_CELL_LENGTH) {
            return Err(Error::Other(format!(
                "lattice vector {} is {:.3e} A long, longer than {MAX_CELL_LENGTH:e} A (vectors {:?})",
                ["a", "b", "c"][k],
                lengths[k],
                self.matrix
            )));
        }
        let defect = self.orthogonality_defect();
        if defect > MAX_CELL_DEFECT || defect.is_nan() {
            return Err(Error::Other(format!(
                "cell is too sheared: orthogonality defect V / (w_a w_b w_c) = {defect:e} exceeds \
                 {MAX_CELL_DEFECT:e} (perpendicular widths {:?} A, vectors {:?}); give a reduced cell",
                self.perpendicular_widths(),
                self.matrix
            )));
        }
        Ok(())
    }

    /// The same cell shape scaled isotropically to `volume` (A^3): every vector times
    /// (volume / V)^(1/3). Fractional coordinates are unchanged by such a scaling.
    pub fn scaled_to_volume(&self, volume: f64) -> Result<Lattice> {
        let s = (volume / self.volume()).cbrt();
        Lattice::new(self.matrix.map(|row| row.map(|x| x * s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() <= 1e-9 * (1.0 + y.abs())
    }

    #[test]
    fn degenerate_and_non_finite_cells_are_rejected() {
        let flat = Lattice::new([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]);
        assert!(flat.unwrap_err().to_string().contains("degenerate"));
        let nan = Lattice::new([[f64::NAN, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        assert!(nan.unwrap_err().to_string().contains("non-finite"));
        assert!(Lattice::cubic(1e-3).is_err()); // 1e-9 A^3
    }

    #[test]
    fn parameters_round_trip_through_matrix() {
        let l = Lattice::from_parameters(3.0, 4.0, 5.0, 70.0, 80.0, 100.0).unwrap();
        let [a, b, c] = l.lengths();
        let [al, be, ga] = l.angles();
        for (x, y) in [(a, 3.0), (b, 4.0), (c, 5.0), (al, 70.0), (be, 80.0), (ga, 100.0)] {
            assert!(close(x, y), "{x} vs {y}");
        }
        assert!(l.determinant() > 0.0);
        assert!(Lattice::from_parameters(1.0, 1.0, 1.0, 10.0, 10.0, 120.0).is_err());
    }

    #[test]
    fn orthogonal_parameters_give_an_exactly_diagonal_matrix() {
        let l = Lattice::from_parameters(2.0, 3.0, 4.0, 90.0, 90.0, 90.0).unwrap();
        assert_eq!(l.matrix(), &[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 4.0]]);
        assert_eq!(l.volume(), 24.0);
    }

    #[test]
    fn fractional_cartesian_round_trip_and_reciprocal_is_dual() {
        let l = Lattice::new([[3.0, 0.2, -0.1], [1.1, 2.9, 0.3], [0.4, -0.7, 4.2]]).unwrap();
        let f = [0.3, -1.25, 0.8];
        let back = l.to_fractional(&l.to_cartesian(&f));
        for k in 0..3 {
            assert!(close(back[k], f[k]));
        }
        let r = l.reciprocal();
        for i in 0..3 {
            for j in 0..3 {
                let d = dot(&l.matrix()[i], &r.matrix()[j]);
                assert!(close(d, if i == j { 1.0 } else { 0.0 }), "a{i}.b{j} = {d}");
            }
        }
        // w_i = V / |a_j x a_k|.
        let w = l.perpendicular_widths();
        let m = l.matrix();
        let expect = [
            l.volume() / norm(&cross(&m[1], &m[2])),
            l.volume() / norm(&cross(&m[2], &m[0])),
            l.volume() / norm(&cross(&m[0], &m[1])),
        ];
        for k in 0..3 {
            assert!(close(w[k], expect[k]));
        }
    }

    #[test]
    fn scaling_to_volume_keeps_shape() {
        let l = Lattice::from_parameters(3.0, 4.0, 5.0, 70.0, 80.0, 100.0).unwrap();
        let s = l.scaled_to_volume(1.2 * l.volume()).unwrap();
        assert!(close(s.volume(), 1.2 * l.volume()));
        let (a0, a1) = (l.angles(), s.angles());
        for k in 0..3 {
            assert!(close(a0[k], a1[k]));
        }
    }
}
