//! `Composition`: amounts of each element, with reduced formula, fractional composition and a small
//! formula parser (`Fe2O3`, `Ca(OH)2`, `Li0.5CoO2`).
//!
//! Formula ordering is pymatgen's: elements by increasing Pauling electronegativity, elements
//! without one (He, Ne, Ar, Z >= 104) last, ties broken alphabetically by symbol — so `NaCl`,
//! `Fe2O3`, `SiO2`, `LiFePO4`. Unlike pymatgen's `reduced_formula` there is no polyanion grouping
//! (`Ba3(PO4)2` is written `Ba3P2O8`) and no special cases (`O2`, `Li2O2` are `O`, `LiO`). The
//! reduced formula is also the key that splits data sets (see `dataset::split_of`), so it must stay
//! stable: changing this ordering reshuffles train/validation splits.

use std::collections::BTreeMap;

use octet_core::{Error, Result};

use crate::element::Element;

/// Amounts at most this are treated as absent; amounts within this of an integer count as integers.
const AMOUNT_TOL: f64 = 1e-8;

/// Element -> amount (atoms, possibly fractional). Amounts are positive.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Composition {
    amounts: BTreeMap<Element, f64>,
}

impl Composition {
    /// One atom per entry.
    pub fn from_elements(elements: &[Element]) -> Composition {
        let mut c = Composition::default();
        for &e in elements {
            c.add(e, 1.0);
        }
        c
    }

    /// From (element, amount) pairs; repeated elements add up. Amounts must be finite and >= 0.
    pub fn from_amounts(pairs: impl IntoIterator<Item = (Element, f64)>) -> Result<Composition> {
        let mut c = Composition::default();
        for (e, x) in pairs {
            if !(x.is_finite() && x >= 0.0) {
                return Err(Error::Other(format!("amount of {e} must be finite and >= 0, got {x}")));
            }
            c.add(e, x);
        }
        Ok(c)
    }

    fn add(&mut self, e: Element, x: f64) {
        *self.amounts.entry(e).or_insert(0.0) += x;
        if self.amounts[&e] <= AMOUNT_TOL {
            self.amounts.remove(&e);
        }
    }

    /// Parses a formula: element symbols each followed by an optional amount (integer or decimal),
    /// parentheses with an optional multiplier, nested. Whitespace is ignored.
    pub fn parse(formula: &str) -> Result<Composition> {
        let chars: Vec<char> = formula.chars().filter(|c| !c.is_whitespace()).collect();
        let mut pos = 0;
        let pairs = parse_group(&chars, &mut pos, 0)
            .map_err(|msg| Error::Other(format!("cannot parse formula `{formula}`: {msg} at character {pos}")))?;
        if pos != chars.len() {
            return Err(Error::Other(format!("cannot parse formula `{formula}`: unmatched `)` at character {pos}")));
        }
        Composition::from_amounts(pairs)
    }

    pub fn get(&self, e: Element) -> f64 {
        self.amounts.get(&e).copied().unwrap_or(0.0)
    }

    /// Total number of atoms.
    pub fn num_atoms(&self) -> f64 {
        self.amounts.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.amounts.is_empty()
    }

    /// (element, amount) in formula order (see the module doc).
    pub fn sorted(&self) -> Vec<(Element, f64)> {
        let mut v: Vec<(Element, f64)> = self.amounts.iter().map(|(&e, &x)| (e, x)).collect();
        v.sort_by(|(a, _), (b, _)| {
            let key = |e: &Element| e.electronegativity().unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b)).then_with(|| a.symbol().cmp(b.symbol()))
        });
        v
    }

    /// Amounts divided by the total, so they sum to 1; same formula order as `sorted`.
    pub fn fractional(&self) -> Vec<(Element, f64)> {
        let total = self.num_atoms();
        self.sorted().into_iter().map(|(e, x)| (e, x / total)).collect()
    }

    /// The composition divided by the greatest common divisor of its amounts when all are
    /// (within 1e-8) integers, and that divisor; otherwise itself and 1.
    pub fn reduced(&self) -> (Composition, u64) {
        let ints: Option<Vec<u64>> =
            self.amounts.values().map(|&x| ((x - x.round()).abs() < AMOUNT_TOL).then_some(x.round() as u64)).collect();
        let factor = match ints {
            Some(v) if !v.is_empty() => v.into_iter().fold(0, gcd),
            _ => 1,
        };
        let amounts = self.amounts.iter().map(|(&e, &x)| (e, x / factor as f64)).collect();
        (Composition { amounts }, factor)
    }

    /// Formula with the amounts as stored (`Fe4O6`).
    pub fn formula(&self) -> String {
        self.sorted().into_iter().map(|(e, x)| format!("{e}{}", format_amount(x))).collect()
    }

    /// Reduced formula (`Fe2O3` for `Fe4O6`); the ordering is described in the module doc.
    pub fn reduced_formula(&self) -> String {
        self.reduced().0.formula()
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// "" for 1, "2" for integers, otherwise up to 8 decimals without trailing zeros (like pymatgen's
/// `formula_double_format`).
fn format_amount(x: f64) -> String {
    if (x - 1.0).abs() < AMOUNT_TOL {
        String::new()
    } else if (x - x.round()).abs() < AMOUNT_TOL {
        format!("{}", x.round() as u64)
    } else {
        let s = format!("{x:.8}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Recursive-descent formula parser: group := (element amount? | '(' group ')' amount?)*
fn parse_group(c: &[char], pos: &mut usize, depth: usize) -> Result<Vec<(Element, f64)>, String> {
    let mut out = Vec::new();
    while *pos < c.len() {
        match c[*pos] {
            '(' | '[' => {
                *pos += 1;
                let inner = parse_group(c, pos, depth + 1)?;
                if *pos >= c.len() || !matches!(c[*pos], ')' | ']') {
                    return Err("missing `)`".into());
                }
                *pos += 1;
                let k = parse_amount(c, pos)?.unwrap_or(1.0);
                out.extend(inner.into_iter().map(|(e, x)| (e, x * k)));
            }
            ')' | ']' if depth > 0 => return Ok(out),
            ch if ch.is_ascii_uppercase() => {
                let mut sym = ch.to_string();
                *pos += 1;
                while *pos < c.len() && c[*pos].is_ascii_lowercase() {
                    sym.push(c[*pos]);
                    *pos += 1;
                }
                let e = Element::from_symbol(&sym).ok_or(format!("unknown element symbol `{sym}`"))?;
                let k = parse_amount(c, pos)?.unwrap_or(1.0);
                out.push((e, k));
            }
            ch => return Err(format!("unexpected `{ch}`")),
        }
    }
    if depth > 0 {
        return Err("missing `)`".into());
    }
    Ok(out)
}

fn parse_amount(c: &[char], pos: &mut usize) -> Result<Option<f64>, String> {
    let start = *pos;
    while *pos < c.len() && (c[*pos].is_ascii_digit() || c[*pos] == '.') {
        *pos += 1;
    }
    if start == *pos {
        return Ok(None);
    }
    let s: String = c[start..*pos].iter().collect();
    s.parse::<f64>().map(Some).map_err(|_| format!("bad amount `{s}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reduced(f: &str) -> String {
        Composition::parse(f).unwrap().reduced_formula()
    }

    #[test]
    fn reduced_formula_orders_by_electronegativity() {
        assert_eq!(reduced("Cl4Na4"), "NaCl");
        assert_eq!(reduced("O6Fe4"), "Fe2O3");
        assert_eq!(reduced("Si8"), "Si");
        assert_eq!(reduced("O4PFeLi"), "LiFePO4");
        assert_eq!(reduced("Ca(OH)2"), "CaH2O2");
        assert_eq!(reduced("Ba3(PO4)2"), "Ba3P2O8");
        // He has no electronegativity: last.
        assert_eq!(reduced("HeNa2"), "Na2He");
        // Equal electronegativity (Ir, Os, Pd, Ru all 2.2): alphabetical.
        assert_eq!(reduced("RuOs"), "OsRu");
    }

    #[test]
    fn fractional_amounts_are_not_reduced() {
        assert_eq!(reduced("Li0.5CoO2"), "Li0.5CoO2");
        let c = Composition::parse("Li0.5CoO2").unwrap();
        assert_eq!(c.reduced().1, 1);
    }

    #[test]
    fn fractional_composition_sums_to_one() {
        let c = Composition::parse("Fe2O3").unwrap();
        let f = c.fractional();
        assert_eq!(f.len(), 2);
        assert!((f[0].1 - 0.4).abs() < 1e-15 && (f[1].1 - 0.6).abs() < 1e-15);
        assert_eq!(c.num_atoms(), 5.0);
    }

    #[test]
    fn bad_formulas_are_errors() {
        for bad in ["Xx2", "Fe2O3)", "(Fe", "fe", "Fe-2"] {
            assert!(Composition::parse(bad).is_err(), "{bad}");
        }
    }
}
