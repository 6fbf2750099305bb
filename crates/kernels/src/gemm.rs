//! A safe wrapper over the `gemm` crate for strided f32 matrices: bounds are checked here once, so
//! the unsafe call below only ever sees in-range pointers.

pub use gemm::Parallelism;

/// A strided read-only matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major (rows, cols).
    pub fn rm(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major (cols, rows) matrix, as a (rows, cols) view.
    pub fn rm_t(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: 1, cs: rows }
    }
    /// A row-major submatrix with leading dimension `ld` (e.g. one head's columns of qkv).
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        Mat { data, rows, cols, rs: ld, cs: 1 }
    }
    pub fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "gemm {what}: view ends at {last}, buffer has {}", self.data.len());
        }
    }
}

/// dst (m, n) row-major with leading dimension `ld` := (accumulate ? dst : 0) + alpha * a @ b.
pub fn sgemm(dst: &mut [f32], ld: usize, accumulate: bool, a: Mat, b: Mat, alpha: f32, par: Parallelism) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm inner dimensions differ");
    a.check("lhs");
    b.check("rhs");
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ld + n <= dst.len() && n <= ld, "gemm dst too small");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * ld..r * ld + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: every index the kernel touches, (i*rs + j*cs) for i < rows, j < cols, was checked
    // against the slice lengths above; dst is exclusively borrowed and does not alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// Whole-machine parallelism for large products, none for small ones (thread start-up dominates).
pub fn par_for(m: usize, n: usize, k: usize) -> Parallelism {
    if m * n * k >= 1 << 18 { Parallelism::Rayon(0) } else { Parallelism::None }
}
