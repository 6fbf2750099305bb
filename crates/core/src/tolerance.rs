//! `Tolerance`: how close a computed tensor must be to its reference, `|x - y| <= atol + rtol * |y|`,
//! with named presets whose bounds are justified once, here.

/// Elementwise closeness: `|x - y| <= atol + rtol * |y|` where `y` is the reference value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    /// Bitwise-equal results (same algorithm, same order of operations).
    pub const EXACT: Tolerance = Tolerance { atol: 0.0, rtol: 0.0 };
    /// An f32 kernel against an f64 (or differently ordered f32) reference over sums of at most a few
    /// thousand terms: unit roundoff 6e-8 times sqrt(n)-ish growth stays below 1e-5 relative; the
    /// absolute part covers values that cancel to near zero.
    pub const F32: Tolerance = Tolerance { atol: 1e-5, rtol: 1e-4 };
    /// A whole f32 model (dozens of kernels chained, softmax and layernorm amplifying) against an f64
    /// reference: errors compound through layers, so one order looser than a single kernel.
    pub const F32_MODEL: Tolerance = Tolerance { atol: 1e-4, rtol: 2e-3 };
    /// bf16 has 8 significant bits: one rounding is at most 2^-9 ~ 2e-3 relative; a product of two
    /// rounded operands summed in f32 stays within ~2^-8.
    pub const BF16: Tolerance = Tolerance { atol: 1e-3, rtol: 8e-3 };
    /// f16: 11 significant bits, one rounding 2^-12 ~ 2.4e-4 relative.
    pub const F16: Tolerance = Tolerance { atol: 1e-4, rtol: 1e-3 };
    /// FP8 E4M3: 4 significant bits, one rounding <= 2^-4 = 6.25% relative.
    pub const E4M3: Tolerance = Tolerance { atol: 1e-3, rtol: 0.0625 };
    /// FP8 E5M2: 3 significant bits, one rounding <= 2^-3 = 12.5% relative.
    pub const E5M2: Tolerance = Tolerance { atol: 1e-3, rtol: 0.125 };

    pub fn close(&self, x: f64, y: f64) -> bool {
        if x.is_nan() || y.is_nan() {
            return x.is_nan() && y.is_nan();
        }
        if x == y {
            return true; // also equal infinities
        }
        (x - y).abs() <= self.atol + self.rtol * y.abs()
    }

    /// Compare `got` against reference `want`; on failure name the tensor, the worst index and values.
    pub fn check<A: Copy + Into<f64>, B: Copy + Into<f64>>(
        &self,
        name: &str,
        got: &[A],
        want: &[B],
    ) -> Result<(), String> {
        if got.len() != want.len() {
            return Err(format!("{name}: length {} vs reference {}", got.len(), want.len()));
        }
        let mut worst: Option<(usize, f64, f64, f64)> = None;
        let mut bad = 0usize;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let (g, w) = (g.into(), w.into());
            if !self.close(g, w) {
                bad += 1;
                let excess = (g - w).abs() - (self.atol + self.rtol * w.abs());
                if worst.is_none_or(|(_, _, _, e)| excess > e || excess.is_nan()) {
                    worst = Some((i, g, w, excess));
                }
            }
        }
        match worst {
            None => Ok(()),
            Some((i, g, w, _)) => Err(format!(
                "{name}: {bad}/{} elements outside {self:?}; worst at [{i}]: got {g:e}, want {w:e}",
                got.len()
            )),
        }
    }

    /// `check` that panics with its message: for tests.
    #[track_caller]
    pub fn assert_close<A: Copy + Into<f64>, B: Copy + Into<f64>>(&self, name: &str, got: &[A], want: &[B]) {
        if let Err(e) = self.check(name, got, want) {
            panic!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn tolerance_formula_is_relative_to_reference() {
        let t = Tolerance { atol: 0.0, rtol: 0.1 };
        assert!(t.close(1.09, 1.0));
        assert!(t.close(1.0, 1.11)); // 0.11 <= 0.1 * 1.11
        assert!(!t.close(1.0, 1.12)); // 0.12 > 0.112
        assert!(t.close(f64::NAN, f64::NAN));
        assert!(!t.close(f64::NAN, 1.0));
        assert!(Tolerance::EXACT.check("x", &[1.0f32, 2.0], &[1.0f32, 2.0]).is_ok());
        let err = Tolerance::EXACT.check("x", &[1.0f32, 2.5], &[1.0f32, 2.0]).unwrap_err();
        assert!(err.contains("worst at [1]"), "{err}");
    }
}
