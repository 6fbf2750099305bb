//! VASP POSCAR/CONTCAR reader and writer.
//!
//! Layout read: comment; scaling factor (one number: a positive factor, or a negative number giving
//! the cell volume in A^3, so factor = (|s| / V_unscaled)^(1/3); or three positive per-Cartesian-axis
//! factors); three lattice vectors; species line (VASP 5; suffixes after `_` or `/` as in `Fe_pv` or
//! POTCAR hashes are dropped); counts; optional `Selective dynamics` line; `Direct` or `Cartesian`
//! (only the first letter counts: C/c/K/k Cartesian, anything else direct, as VASP does); one line
//! per atom. Cartesian positions are scaled like the lattice. Selective-dynamics flags are checked
//! (T/F) but not kept. Velocities or other blocks after the positions are ignored. A VASP 4 file
//! (no species line) is read only if its comment line starts with as many element symbols as there
//! are counts (the same fallback ASE uses); otherwise it is an error.
//!
//! The writer emits VASP 5 direct coordinates with factor 1.0. Species are written as runs of equal
//! consecutive elements, in site order (`Si O Si` with counts `1 2 1` if the sites are so ordered),
//! so reading back gives the same site order.

use std::path::Path;

use octet_core::Result;

use super::{at_line, fmt_f64, line_error, read_text, runs, write_atomic};
use crate::element::Element;
use crate::lattice::Lattice;
use crate::structure::Structure;

/// Reads a POSCAR/CONTCAR file; see the module doc.
pub fn read_poscar(path: &Path) -> Result<Structure> {
    parse_poscar(&read_text(path)?, path)
}

fn species_token(tok: &str) -> Option<Element> {
    let base = tok.split(['_', '/']).next().unwrap_or(tok);
    Element::from_symbol(base)
}

fn floats(line: &str, n: usize) -> Option<Vec<f64>> {
    let v: Vec<f64> = line
        .split_whitespace()
        .take(n)
        .map(|t| t.parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect::<Option<_>>()?;
    (v.len() == n).then_some(v)
}

/// Parses POSCAR text; `path` is used in error messages only.
pub fn parse_poscar(text: &str, path: &Path) -> Result<Structure> {
    let lines: Vec<&str> = text.lines().collect();
    let get = |i: usize, what: &str| -> Result<&str> {
        lines.get(i).copied().ok_or_else(|| line_error(path, i + 1, format!("file ends before the {what}")))
    };
    let comment = get(0, "comment line")?;

    // Scaling.
    let scale_line = get(1, "scaling factor")?;
    let scale_tokens: Vec<&str> = scale_line.split_whitespace().take_while(|t| !t.starts_with(['#', '!'])).collect();
    let scales: Vec<f64> = scale_tokens
        .iter()
        .map(|t| t.parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect::<Option<_>>()
        .ok_or_else(|| line_error(path, 2, format!("scaling factor `{scale_line}` is not a number")))?;

    let mut raw = [[0.0; 3]; 3];
    for (k, row) in raw.iter_mut().enumerate() {
        let l = get(2 + k, "lattice vectors")?;
        let v = floats(l, 3).ok_or_else(|| {
            line_error(path, 3 + k, format!("lattice vector needs three numbers, found `{}`", l.trim()))
        })?;
        row.copy_from_slice(&v);
    }
    // Per-axis factors multiply Cartesian components x, y, z of every lattice vector.
    let axis_scale: [f64; 3] = match scales.as_slice() {
        [s] if *s > 0.0 => [*s; 3],
        [s] if *s < 0.0 => {
            let unscaled = Lattice::new(raw).map_err(|e| at_line(path, 3, e))?;
            [(-s / unscaled.volume()).cbrt(); 3]
        }
        [a, b, c] if *a > 0.0 && *b > 0.0 && *c > 0.0 => [*a, *b, *c],
        _ => {
            return Err(line_error(
                path,
                2,
                format!(
                    "scaling must be one non-zero number (negative = volume) or three positive numbers, found `{}`",
                    scale_line.trim()
                ),
            ));
        }
    };
    let matrix = raw.map(|row| std::array::from_fn(|k| row[k] * axis_scale[k]));
    let lattice = Lattice::new(matrix).map_err(|e| at_line(path, 3, e))?;
    lattice.check_plausible().map_err(|e| at_line(path, 3, e))?;

    // Species and counts.
    let l6 = get(5, "species or counts line")?;
    let first_is_count = l6.split_whitespace().next().is_some_and(|t| t.parse::<i64>().is_ok());
    let counts_line_no;
    let symbols: Vec<Element>;
    if first_is_count {
        counts_line_no = 6;
        let n = l6.split_whitespace().count();
        let from_comment: Option<Vec<Element>> = comment.split_whitespace().take(n).map(species_token).collect();
        symbols = match from_comment {
            Some(v) if v.len() == n => v,
            _ => {
                return Err(line_error(
                    path,
                    6,
                    "no species line (VASP 4 format) and the comment line does not start with one element symbol per count",
                ));
            }
        };
    } else {
        symbols = l6
            .split_whitespace()
            .map(|t| species_token(t).ok_or_else(|| line_error(path, 6, format!("unknown element symbol `{t}`"))))
            .collect::<Result<_>>()?;
        counts_line_no = 7;
    }
    let counts_line = get(counts_line_no - 1, "counts line")?;
    let counts: Vec<usize> =
        counts_line.split_whitespace().map(|t| t.parse::<usize>().ok()).collect::<Option<_>>().ok_or_else(|| {
            line_error(
                path,
                counts_line_no,
                format!("counts must be non-negative integers, found `{}`", counts_line.trim()),
            )
        })?;
    if counts.len() != symbols.len() {
        return Err(line_error(path, counts_line_no, format!("{} counts for {} species", counts.len(), symbols.len())));
    }
    let n_atoms = counts.iter().try_fold(0usize, |acc, &n| acc.checked_add(n)).ok_or_else(|| {
        line_error(path, counts_line_no, format!("counts `{}` overflow the atom total", counts_line.trim()))
    })?;
    if n_atoms == 0 {
        return Err(line_error(path, counts_line_no, "no atoms"));
    }

    // Selective dynamics and coordinate mode: `next` is the 0-based index of the line after counts.
    let mut next = counts_line_no;
    let mut mode_line = get(next, "coordinate mode line")?;
    let mut mode_no = next + 1;
    let selective = mode_line.trim_start().starts_with(['s', 'S']);
    if selective {
        next += 1;
        mode_line = get(next, "coordinate mode line")?;
        mode_no = next + 1;
    }
    let cartesian = match mode_line.trim_start().chars().next() {
        Some('c' | 'C' | 'k' | 'K') => true,
        Some(_) => false,
        None => {
            return Err(line_error(path, mode_no, "empty line where `Direct` or `Cartesian` was expected"));
        }
    };
    next += 1;

    // One line per atom: buffers are sized by the lines present, never by the counts alone, and the
    // species fill in as positions are read, so a huge count ends at "file ends" without allocating.
    let capacity = n_atoms.min(lines.len().saturating_sub(next));
    let mut species = Vec::with_capacity(capacity);
    let mut frac = Vec::with_capacity(capacity);
    let mut elements = symbols.iter().zip(&counts).flat_map(|(e, n)| std::iter::repeat_n(*e, *n));
    for a in 0..n_atoms {
        let i = next + a;
        let l = get(i, &format!("position of atom {} of {n_atoms}", a + 1))?;
        let v = floats(l, 3)
            .ok_or_else(|| line_error(path, i + 1, format!("position needs three numbers, found `{}`", l.trim())))?;
        if selective {
            let flags: Vec<&str> = l.split_whitespace().skip(3).take(3).collect();
            if flags.len() != 3 || !flags.iter().all(|f| matches!(*f, "T" | "F" | "t" | "f")) {
                return Err(line_error(
                    path,
                    i + 1,
                    format!("selective dynamics needs three T/F flags, found `{}`", l.trim()),
                ));
            }
        }
        let v = [v[0], v[1], v[2]];
        species.push(elements.next().expect("the counts sum to n_atoms"));
        frac.push(if cartesian { lattice.to_fractional(&std::array::from_fn(|k| v[k] * axis_scale[k])) } else { v });
    }
    let s = Structure::new_unchecked_overlaps(lattice, species, frac).map_err(|e| at_line(path, next + 1, e))?;
    if let Some(o) = s.check_overlaps() {
        return Err(line_error(
            path,
            next + o.j + 1,
            format!("{o} (positions on lines {} and {})", next + o.i + 1, next + o.j + 1),
        ));
    }
    Ok(s)
}

/// VASP 5 POSCAR text in direct coordinates; see the module doc.
pub fn poscar_string(s: &Structure) -> String {
    let mut out = format!("{}\n1.0\n", s.reduced_formula());
    for row in s.lattice.matrix() {
        out.push_str(&format!("  {}  {}  {}\n", fmt_f64(row[0]), fmt_f64(row[1]), fmt_f64(row[2])));
    }
    let r = runs(&s.species);
    out.push_str(&r.iter().map(|(e, _)| e.symbol().to_string()).collect::<Vec<_>>().join(" "));
    out.push('\n');
    out.push_str(&r.iter().map(|(_, n)| n.to_string()).collect::<Vec<_>>().join(" "));
    out.push_str("\nDirect\n");
    for (e, f) in s.species.iter().zip(&s.frac_coords) {
        out.push_str(&format!("  {}  {}  {}  {e}\n", fmt_f64(f[0]), fmt_f64(f[1]), fmt_f64(f[2])));
    }
    out
}

/// Writes `poscar_string(s)` atomically.
pub fn write_poscar(path: &Path, s: &Structure) -> Result<()> {
    write_atomic(path, poscar_string(s).as_bytes())
}
