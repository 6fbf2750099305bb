//! Labelled structure data sets: conversion from matminer's `flla_2015.csv` (Materials Project
//! structures with formation energies), octet's own JSON-lines data set format, and the
//! train/validation split by a stable hash of the reduced formula.
//!
//! Data set file format (`*.jsonl`, UTF-8, one JSON object per line):
//! - line 1, the header: `{"format": "octet-structures", "version": 1, "target": "<name>",
//!   "unit": "<unit>", "source": "<free text>"}`;
//! - every further line, one entry: `{"id": "mp-10", "formula": "As", "lattice": [[ax, ay, az],
//!   [bx, by, bz], [cx, cy, cz]], "species": ["As", "As"], "frac_coords": [[x, y, z], ...],
//!   "target": 0.107}` with the lattice rows in A, fractional coordinates as stored, and `formula`
//!   the reduced formula (checked on reading; it is what the split hashes).
//!
//! Floats are written in shortest round-trip form, so write -> read is exact.
//!
//! Split: an entry is in the validation set when FNV-1a 64 (offset basis 0xcbf29ce484222325, prime
//! 0x100000001b3) of its reduced formula's UTF-8 bytes, modulo 10,000, is below 1,500 — 15% of
//! formulas, and every polymorph of a formula on the same side (GNoME splits by reduced formula so
//! that validation measures generalisation to new compositions). std's hasher is randomised per
//! process and must not be used for this.

use std::path::Path;

use octet_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::composition::Composition;
use crate::element::Element;
use crate::io::{read_text, write_atomic};
use crate::lattice::Lattice;
use crate::pyliteral::{self, PyValue};
use crate::structure::Structure;

/// One labelled structure.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Source identifier (e.g. Materials Project id).
    pub id: String,
    pub structure: Structure,
    /// The regression target (for flla: formation energy per atom, eV/atom).
    pub target: f64,
}

/// A CSV row that could not be converted.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRow {
    /// 1-based line where the row starts.
    pub line: usize,
    /// `material_id` when it could be read, else empty.
    pub id: String,
    pub reason: String,
}

/// The outcome of a conversion: every row is either an entry or a bad row, never dropped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conversion {
    pub entries: Vec<Entry>,
    pub bad: Vec<BadRow>,
}

impl Conversion {
    /// `N rows: K converted, B bad` plus one line per bad row.
    pub fn report(&self) -> String {
        let mut s = format!(
            "{} rows: {} converted, {} bad",
            self.entries.len() + self.bad.len(),
            self.entries.len(),
            self.bad.len()
        );
        for b in &self.bad {
            s.push_str(&format!("\n  line {} ({}): {}", b.line, b.id, b.reason));
        }
        s
    }
}

/// A CSV record: its starting line and fields.
struct Record {
    line: usize,
    fields: Vec<String>,
}

/// RFC 4180 CSV: `,` separators, `"` quoting with `""` for a quote, newlines inside quotes. Lines
/// starting with `#` before the header are comments (matminer puts the reference there).
fn csv_records(text: &str, path: &Path) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    let mut at_line_start = true;
    while chars.peek().is_some() {
        if at_line_start && records.is_empty() && chars.peek() == Some(&'#') {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            line += 1;
            continue;
        }
        at_line_start = false;
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Err(Error::format(path, format!("line {start}"), "quoted field is never closed"));
                }
                fields.push(std::mem::take(&mut field));
                break;
            };
            if quoted {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => quoted = false,
                    '\n' => {
                        line += 1;
                        field.push(c);
                    }
                    _ => field.push(c),
                }
                continue;
            }
            match c {
                '"' if field.is_empty() => quoted = true,
                ',' => fields.push(std::mem::take(&mut field)),
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    at_line_start = true;
                    break;
                }
                _ => field.push(c),
            }
        }
        if !(fields.len() == 1 && fields[0].is_empty()) {
            records.push(Record { line: start, fields });
        }
    }
    Ok(records)
}

fn seq_of_3(v: &PyValue, what: &str) -> Result<[f64; 3], String> {
    let s = v.as_seq().ok_or_else(|| format!("{what} is a {}, not a list", v.type_name()))?;
    if s.len() != 3 {
        return Err(format!("{what} has {} entries, not 3", s.len()));
    }
    let mut out = [0.0; 3];
    for (k, x) in s.iter().enumerate() {
        out[k] = x.as_f64().filter(|x| x.is_finite()).ok_or_else(|| format!("{what}[{k}] is not a finite number"))?;
    }
    Ok(out)
}

/// A pymatgen `Structure.as_dict()` value -> `Structure`. Sites need exactly one species with
/// occupancy 1 (`{'element': 'Fe', 'occu': 1}`, oxidation states allowed) and `abc` coordinates.
pub fn structure_from_pymatgen_dict(d: &PyValue) -> Result<Structure, String> {
    let matrix = d.get("lattice").and_then(|l| l.get("matrix")).ok_or("no lattice.matrix")?;
    let rows = matrix.as_seq().filter(|r| r.len() == 3).ok_or("lattice.matrix is not 3 rows")?;
    let m = [
        seq_of_3(&rows[0], "lattice.matrix[0]")?,
        seq_of_3(&rows[1], "lattice.matrix[1]")?,
        seq_of_3(&rows[2], "lattice.matrix[2]")?,
    ];
    let lattice = Lattice::new(m).map_err(|e| e.to_string())?;
    let sites = d.get("sites").and_then(|s| s.as_seq()).ok_or("no sites list")?;
    if sites.is_empty() {
        return Err("no sites".into());
    }
    let mut species = Vec::with_capacity(sites.len());
    let mut frac = Vec::with_capacity(sites.len());
    for (i, site) in sites.iter().enumerate() {
        let sp = site.get("species").and_then(|s| s.as_seq()).ok_or(format!("site {i}: no species list"))?;
        let [one] = sp else {
            return Err(format!("site {i}: {} species on one site (disorder is unsupported)", sp.len()));
        };
        let name = one.get("element").and_then(|e| e.as_str()).ok_or(format!("site {i}: species has no element"))?;
        let element = Element::from_symbol(name)
            .or_else(|| Element::parse_species(name).map(|(e, _)| e))
            .ok_or(format!("site {i}: unknown element `{name}`"))?;
        let occu = one.get("occu").and_then(|o| o.as_f64()).unwrap_or(1.0);
        if (occu - 1.0).abs() > 1e-3 {
            return Err(format!("site {i}: partial occupancy {occu} is unsupported"));
        }
        let abc = site.get("abc").ok_or(format!("site {i}: no abc"))?;
        frac.push(seq_of_3(abc, &format!("site {i} abc"))?);
        species.push(element);
    }
    Structure::new(lattice, species, frac).map_err(|e| e.to_string())
}

/// `{'S': 1.0, 'Hf': 2.0}` -> composition.
fn composition_from_dict(v: &PyValue) -> Result<Composition, String> {
    let PyValue::Dict(items) = v else {
        return Err(format!("formula is a {}, not a dict", v.type_name()));
    };
    let pairs = items
        .iter()
        .map(|(k, x)| {
            let sym = k.as_str().ok_or("formula key is not a string")?;
            let e = Element::from_symbol(sym).ok_or(format!("formula: unknown element `{sym}`"))?;
            let amount = x.as_f64().ok_or(format!("formula: amount of {sym} is not a number"))?;
            Ok((e, amount))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Composition::from_amounts(pairs).map_err(|e| e.to_string())
}

/// Converts matminer's `flla_2015.csv`: columns `structure` (pymatgen dict as a Python literal) and
/// `formation_energy_per_atom` are required; `material_id`, `formula` (a composition dict) and
/// `nsites` are used when present, the last two as consistency checks. A missing column is an
/// error; a bad row is reported in `Conversion::bad` with its line and reason.
pub fn convert_flla_csv(text: &str, path: &Path) -> Result<Conversion> {
    let records = csv_records(text, path)?;
    let Some((header, rows)) = records.split_first() else {
        return Err(Error::format(path, "line 1", "no CSV header"));
    };
    let col = |name: &str| header.fields.iter().position(|f| f.trim() == name);
    let need = |name: &str| {
        col(name).ok_or_else(|| {
            Error::format(
                path,
                format!("line {}", header.line),
                format!("CSV header lacks column `{name}` (found {:?})", header.fields),
            )
        })
    };
    let (structure_col, target_col) = (need("structure")?, need("formation_energy_per_atom")?);
    let (id_col, formula_col, nsites_col) = (col("material_id"), col("formula"), col("nsites"));

    let mut out = Conversion::default();
    for r in rows {
        let id = id_col.and_then(|c| r.fields.get(c)).cloned().unwrap_or_default();
        match convert_row(r, &header.fields, structure_col, target_col, formula_col, nsites_col) {
            Ok((structure, target)) => out.entries.push(Entry { id, structure, target }),
            Err(reason) => out.bad.push(BadRow { line: r.line, id, reason }),
        }
    }
    Ok(out)
}

fn convert_row(
    r: &Record,
    header: &[String],
    structure_col: usize,
    target_col: usize,
    formula_col: Option<usize>,
    nsites_col: Option<usize>,
) -> Result<(Structure, f64), String> {
    if r.fields.len() != header.len() {
        return Err(format!("{} fields, header has {}", r.fields.len(), header.len()));
    }
    let target_text = r.fields[target_col].trim();
    let target = target_text
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or(format!("formation_energy_per_atom `{target_text}` is not a finite number"))?;
    let d = pyliteral::parse(&r.fields[structure_col]).map_err(|e| format!("structure column: {e}"))?;
    let s = structure_from_pymatgen_dict(&d).map_err(|e| format!("structure column: {e}"))?;
    if let Some(c) = nsites_col {
        let n = r.fields[c].trim();
        if n.parse::<usize>().ok() != Some(s.num_sites()) {
            return Err(format!("nsites `{n}` but the structure has {} sites", s.num_sites()));
        }
    }
    if let Some(c) = formula_col {
        let f = pyliteral::parse(&r.fields[c]).map_err(|e| format!("formula column: {e}"))?;
        let expect = composition_from_dict(&f)?.reduced_formula();
        let found = s.reduced_formula();
        if expect != found {
            return Err(format!("formula column says {expect} but the structure is {found}"));
        }
    }
    Ok((s, target))
}

/// Reads and converts a flla CSV file.
pub fn read_flla_csv(path: &Path) -> Result<Conversion> {
    convert_flla_csv(&read_text(path)?, path)
}

/// Data set file header (first line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetHeader {
    pub format: String,
    pub version: u32,
    pub target: String,
    pub unit: String,
    pub source: String,
}

impl DatasetHeader {
    pub const FORMAT: &'static str = "octet-structures";
    pub const VERSION: u32 = 1;

    pub fn new(target: &str, unit: &str, source: &str) -> DatasetHeader {
        DatasetHeader {
            format: Self::FORMAT.into(),
            version: Self::VERSION,
            target: target.into(),
            unit: unit.into(),
            source: source.into(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    formula: String,
    lattice: [[f64; 3]; 3],
    species: Vec<String>,
    frac_coords: Vec<[f64; 3]>,
    target: f64,
}

/// The data set as JSON lines (see the module doc).
pub fn dataset_string(header: &DatasetHeader, entries: &[Entry]) -> Result<String> {
    let mut out = serde_json::to_string(header).map_err(|e| Error::Other(e.to_string()))?;
    out.push('\n');
    for e in entries {
        if !e.target.is_finite() {
            return Err(Error::Other(format!("entry `{}` has non-finite target {}", e.id, e.target)));
        }
        let line = Line {
            id: e.id.clone(),
            formula: e.structure.reduced_formula(),
            lattice: *e.structure.lattice.matrix(),
            species: e.structure.species.iter().map(|s| s.symbol().to_string()).collect(),
            frac_coords: e.structure.frac_coords.clone(),
            target: e.target,
        };
        out.push_str(&serde_json::to_string(&line).map_err(|e| Error::Other(e.to_string()))?);
        out.push('\n');
    }
    Ok(out)
}

/// Writes the data set atomically (temporary file beside `path`, then rename).
pub fn write_dataset(path: &Path, header: &DatasetHeader, entries: &[Entry]) -> Result<()> {
    write_atomic(path, dataset_string(header, entries)?.as_bytes())
}

/// Parses data set text; `path` is used in messages only.
pub fn parse_dataset(text: &str, path: &Path) -> Result<(DatasetHeader, Vec<Entry>)> {
    let mut lines = text.lines().enumerate();
    let (_, first) = lines.next().ok_or_else(|| Error::format(path, "line 1", "empty file, expected a header"))?;
    let header: DatasetHeader =
        serde_json::from_str(first).map_err(|e| Error::format(path, "line 1", format!("bad header: {e}")))?;
    if header.format != DatasetHeader::FORMAT || header.version != DatasetHeader::VERSION {
        return Err(Error::format(
            path,
            "line 1",
            format!(
                "format {} version {}, expected {} version {}",
                header.format,
                header.version,
                DatasetHeader::FORMAT,
                DatasetHeader::VERSION
            ),
        ));
    }
    let mut entries = Vec::new();
    for (i, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        let at = |msg: String| Error::format(path, format!("line {}", i + 1), msg);
        let l: Line = serde_json::from_str(text).map_err(|e| at(e.to_string()))?;
        let species = l
            .species
            .iter()
            .map(|s| Element::from_symbol(s).ok_or_else(|| at(format!("unknown element symbol `{s}`"))))
            .collect::<Result<Vec<_>>>()?;
        let lattice = Lattice::new(l.lattice).map_err(|e| at(e.to_string()))?;
        let structure = Structure::new(lattice, species, l.frac_coords).map_err(|e| at(e.to_string()))?;
        let formula = structure.reduced_formula();
        if formula != l.formula {
            return Err(at(format!("formula `{}` but the structure is {formula}", l.formula)));
        }
        entries.push(Entry { id: l.id, structure, target: l.target });
    }
    Ok((header, entries))
}

/// Reads a data set file.
pub fn read_dataset(path: &Path) -> Result<(DatasetHeader, Vec<Entry>)> {
    parse_dataset(&read_text(path)?, path)
}

/// FNV-1a, 64 bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Which side of the split an entry is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Valid,
}

/// Validation share in units of 1/10,000.
pub const VALID_PER_10000: u64 = 1_500;

/// The split of a reduced formula (see the module doc).
pub fn split_of(reduced_formula: &str) -> Split {
    if fnv1a64(reduced_formula.as_bytes()) % 10_000 < VALID_PER_10000 { Split::Valid } else { Split::Train }
}

/// Indices of training and validation entries, each in input order.
pub fn split_indices(entries: &[Entry]) -> (Vec<usize>, Vec<usize>) {
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (i, e) in entries.iter().enumerate() {
        match split_of(&e.structure.reduced_formula()) {
            Split::Train => train.push(i),
            Split::Valid => valid.push(i),
        }
    }
    (train, valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn csv_quotes_comments_and_embedded_newlines() {
        let text = "# comment\na,b\n1,\"x, \"\"y\"\"\nz\"\n\n2,3\r\n";
        let r = csv_records(text, Path::new("t.csv")).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].fields, ["a", "b"]);
        assert_eq!(r[0].line, 2);
        assert_eq!(r[1].fields, ["1", "x, \"y\"\nz"]);
        assert_eq!(r[2].line, 6);
        assert_eq!(r[2].fields, ["2", "3"]);
        assert!(csv_records("a\n\"open", Path::new("t.csv")).is_err());
    }
}
