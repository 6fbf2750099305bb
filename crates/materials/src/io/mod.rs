//! Structure file formats: CIF, POSCAR/CONTCAR and extended XYZ readers and writers, a dispatcher by
//! file name, and the helpers they share (line-numbered errors, numbers with uncertainties, atomic
//! writes, exact float formatting).
//!
//! Every reader takes the text and the path it came from (used only in messages) and fails with
//! `Error::Format { path, field: "line N", .. }` on malformed input. Writers print floats in Rust's
//! shortest round-trip form, so reading back gives the same `f64` wherever the format stores the
//! number itself (fractional coordinates in CIF and POSCAR, lattice vectors in POSCAR and XYZ).

pub mod cif;
pub mod extxyz;
pub mod poscar;
pub mod spacegroup;

use std::path::Path;

use octet_core::{Error, Result};

use crate::structure::Structure;

pub use cif::{cif_string, parse_cif, read_cif, write_cif};
pub use extxyz::{Frame, extxyz_string, parse_extxyz, read_extxyz, write_extxyz};
pub use poscar::{parse_poscar, poscar_string, read_poscar, write_poscar};

/// Structure file formats octet reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Cif,
    Poscar,
    ExtXyz,
}

impl FileFormat {
    /// By file name: `*.cif`; `POSCAR*`, `CONTCAR*`, `*.vasp`, `*.poscar`; `*.xyz`, `*.extxyz`.
    pub fn from_path(path: &Path) -> Option<FileFormat> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".cif") {
            Some(FileFormat::Cif)
        } else if name.starts_with("poscar")
            || name.starts_with("contcar")
            || name.ends_with(".vasp")
            || name.ends_with(".poscar")
        {
            Some(FileFormat::Poscar)
        } else if name.ends_with(".xyz") || name.ends_with(".extxyz") {
            Some(FileFormat::ExtXyz)
        } else {
            None
        }
    }
}

fn format_of(path: &Path) -> Result<FileFormat> {
    FileFormat::from_path(path).ok_or_else(|| {
        Error::format(
            path,
            "file name",
            "unknown structure format: expected *.cif, POSCAR*/CONTCAR*/*.vasp, or *.xyz/*.extxyz",
        )
    })
}

/// Reads one structure, choosing the format by file name (first frame of an XYZ file).
pub fn read_structure(path: &Path) -> Result<Structure> {
    match format_of(path)? {
        FileFormat::Cif => read_cif(path),
        FileFormat::Poscar => read_poscar(path),
        FileFormat::ExtXyz => {
            let mut frames = read_extxyz(path)?;
            Ok(frames.swap_remove(0).structure)
        }
    }
}

/// Writes one structure, choosing the format by file name.
pub fn write_structure(path: &Path, structure: &Structure) -> Result<()> {
    match format_of(path)? {
        FileFormat::Cif => write_cif(path, structure),
        FileFormat::Poscar => write_poscar(path, structure),
        FileFormat::ExtXyz => write_extxyz(path, &[Frame { structure: structure.clone(), energy: None }]),
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

pub use octet_core::fs::write_atomic;

/// `Error::Format` for 1-based line `line` of `path`.
pub(crate) fn line_error(path: &Path, line: usize, msg: impl Into<String>) -> Error {
    Error::format(path, format!("line {line}"), msg)
}

/// A number with an optional standard uncertainty in parentheses: `5.43`, `5.4307(2)`, `-0.25`,
/// `1.`, `.5`, `1e-3`. The uncertainty is dropped.
pub(crate) fn parse_number(text: &str) -> Option<f64> {
    let core = match text.find('(') {
        Some(open) => {
            let close = text[open..].find(')')? + open;
            let inside = &text[open + 1..close];
            if close + 1 != text.len() || inside.is_empty() || !inside.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            &text[..open]
        }
        None => text,
    };
    if core.is_empty() || !core.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    // Rust parses "1." and ".5" but also "inf"/"nan", which a digit check above already excludes.
    core.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Shortest round-trip decimal form, always with a decimal point (`3.0`, not `3`), never an exponent.
pub(crate) fn fmt_f64(x: f64) -> String {
    let s = format!("{x}");
    if s.contains('.') || !x.is_finite() { s } else { s + ".0" }
}

/// Runs of equal consecutive elements: `[Si, Si, O, Si]` -> `[(Si, 2), (O, 1), (Si, 1)]`.
pub(crate) fn runs<T: PartialEq + Copy>(items: &[T]) -> Vec<(T, usize)> {
    let mut out: Vec<(T, usize)> = Vec::new();
    for &x in items {
        match out.last_mut() {
            Some((y, n)) if *y == x => *n += 1,
            _ => out.push((x, 1)),
        }
    }
    out
}

/// Turns a structure-level validation error into a format error at `line`.
pub(crate) fn at_line(path: &Path, line: usize, err: Error) -> Error {
    match err {
        Error::Format { .. } | Error::Io { .. } => err,
        other => line_error(path, line, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_with_uncertainties_parse() {
        assert_eq!(parse_number("5.43(2)"), Some(5.43));
        assert_eq!(parse_number("5.4307"), Some(5.4307));
        assert_eq!(parse_number("1."), Some(1.0));
        assert_eq!(parse_number("-.5"), Some(-0.5));
        assert_eq!(parse_number("1e-3"), Some(1e-3));
        for bad in ["?", ".", "5.43(", "5.43(2", "5.43(x)", "nan", "inf", "", "1,5"] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn floats_format_with_a_point_and_round_trip() {
        assert_eq!(fmt_f64(3.0), "3.0");
        assert_eq!(fmt_f64(0.1), "0.1");
        for x in [1.0 / 3.0, -2.5e-7, 123456.789, 5e-17] {
            assert_eq!(fmt_f64(x).parse::<f64>().unwrap(), x);
            assert!(!fmt_f64(x).contains('e'));
        }
    }

    #[test]
    fn format_is_chosen_by_file_name() {
        let f = |s: &str| FileFormat::from_path(Path::new(s));
        assert_eq!(f("a/Si.cif"), Some(FileFormat::Cif));
        assert_eq!(f("CONTCAR"), Some(FileFormat::Poscar));
        assert_eq!(f("POSCAR_relaxed"), Some(FileFormat::Poscar));
        assert_eq!(f("x.extxyz"), Some(FileFormat::ExtXyz));
        assert_eq!(f("notes.txt"), None);
    }
}
