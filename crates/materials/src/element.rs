//! Chemical elements: the 118-entry periodic table (symbol, atomic number, Pauling electronegativity,
//! standard atomic mass) and parsing of species labels such as `Fe`, `Fe2+`, `O2-` or `Si1`.
//!
//! Electronegativities and masses are pymatgen's `periodic_table.json` values; elements without a
//! Pauling value (noble gases He, Ne, Ar and Z >= 104) have `None`.

use std::fmt;
use std::str::FromStr;

use octet_core::{Error, Result};

/// One chemical element, stored as its atomic number Z in 1..=118. `Ord` is by Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element(u8);

/// (symbol, Pauling electronegativity or NaN, atomic mass in u), indexed by Z - 1.
const TABLE: [(&str, f64, f64); 118] = [
    ("H", 2.2, 1.00794),
    ("He", f64::NAN, 4.002602),
    ("Li", 0.98, 6.941),
    ("Be", 1.57, 9.012182),
    ("B", 2.04, 10.811),
    ("C", 2.55, 12.0107),
    ("N", 3.04, 14.0067),
    ("O", 3.44, 15.9994),
    ("F", 3.98, 18.9984032),
    ("Ne", f64::NAN, 20.1797),
    ("Na", 0.93, 22.98976928),
    ("Mg", 1.31, 24.305),
    ("Al", 1.61, 26.9815386),
    ("Si", 1.9, 28.0855),
    ("P", 2.19, 30.973762),
    ("S", 2.58, 32.065),
    ("Cl", 3.16, 35.453),
    ("Ar", f64::NAN, 39.948),
    ("K", 0.82, 39.0983),
    ("Ca", 1.0, 40.078),
    ("Sc", 1.36, 44.955912),
    ("Ti", 1.54, 47.867),
    ("V", 1.63, 50.9415),
    ("Cr", 1.66, 51.9961),
    ("Mn", 1.55, 54.938045),
    ("Fe", 1.83, 55.845),
    ("Co", 1.88, 58.933195),
    ("Ni", 1.91, 58.6934),
    ("Cu", 1.9, 63.546),
    ("Zn", 1.65, 65.409),
    ("Ga", 1.81, 69.723),
    ("Ge", 2.01, 72.64),
    ("As", 2.18, 74.9216),
    ("Se", 2.55, 78.96),
    ("Br", 2.96, 79.904),
    ("Kr", 3.0, 83.798),
    ("Rb", 0.82, 85.4678),
    ("Sr", 0.95, 87.62),
    ("Y", 1.22, 88.90585),
    ("Zr", 1.33, 91.224),
    ("Nb", 1.6, 92.90638),
    ("Mo", 2.16, 95.94),
    ("Tc", 1.9, 98.0),
    ("Ru", 2.2, 101.07),
    ("Rh", 2.28, 102.9055),
    ("Pd", 2.2, 106.42),
    ("Ag", 1.93, 107.8682),
    ("Cd", 1.69, 112.411),
    ("In", 1.78, 114.818),
    ("Sn", 1.96, 118.71),
    ("Sb", 2.05, 121.76),
    ("Te", 2.1, 127.6),
    ("I", 2.66, 126.90447),
    ("Xe", 2.6, 131.293),
    ("Cs", 0.79, 132.9054519),
    ("Ba", 0.89, 137.327),
    ("La", 1.1, 138.90547),
    ("Ce", 1.12, 140.116),
    ("Pr", 1.13, 140.90765),
    ("Nd", 1.14, 144.242),
    ("Pm", 1.13, 145.0),
    ("Sm", 1.17, 150.36),
    ("Eu", 1.2, 151.964),
    ("Gd", 1.2, 157.25),
    ("Tb", 1.1, 158.92535),
    ("Dy", 1.22, 162.5),
    ("Ho", 1.23, 164.93032),
    ("Er", 1.24, 167.259),
    ("Tm", 1.25, 168.93421),
    ("Yb", 1.1, 173.04),
    ("Lu", 1.27, 174.967),
    ("Hf", 1.3, 178.49),
    ("Ta", 1.5, 180.94788),
    ("W", 2.36, 183.84),
    ("Re", 1.9, 186.207),
    ("Os", 2.2, 190.23),
    ("Ir", 2.2, 192.217),
    ("Pt", 2.28, 195.084),
    ("Au", 2.54, 196.966569),
    ("Hg", 2.0, 200.59),
    ("Tl", 1.62, 204.3833),
    ("Pb", 2.33, 207.2),
    ("Bi", 2.02, 208.9804),
    ("Po", 2.0, 210.0),
    ("At", 2.2, 210.0),
    ("Rn", 2.2, 220.0),
    ("Fr", 0.7, 223.0),
    ("Ra", 0.9, 226.0),
    ("Ac", 1.1, 227.0),
    ("Th", 1.3, 232.03806),
    ("Pa", 1.5, 231.03588),
    ("U", 1.38, 238.02891),
    ("Np", 1.36, 237.0),
    ("Pu", 1.28, 244.0),
    ("Am", 1.3, 243.0),
    ("Cm", 1.3, 247.0),
    ("Bk", 1.3, 247.0),
    ("Cf", 1.3, 251.0),
    ("Es", 1.3, 252.0),
    ("Fm", 1.3, 257.0),
    ("Md", 1.3, 258.0),
    ("No", 1.3, 259.0),
    ("Lr", 1.3, 262.0),
    ("Rf", f64::NAN, 267.0),
    ("Db", f64::NAN, 268.0),
    ("Sg", f64::NAN, 269.0),
    ("Bh", f64::NAN, 270.0),
    ("Hs", f64::NAN, 270.0),
    ("Mt", f64::NAN, 278.0),
    ("Ds", f64::NAN, 281.0),
    ("Rg", f64::NAN, 282.0),
    ("Cn", f64::NAN, 285.0),
    ("Nh", f64::NAN, 286.0),
    ("Fl", f64::NAN, 289.0),
    ("Mc", f64::NAN, 290.0),
    ("Lv", f64::NAN, 293.0),
    ("Ts", f64::NAN, 294.0),
    ("Og", f64::NAN, 294.0),
];

impl Element {
    /// Number of elements in the table (H..Og).
    pub const COUNT: usize = 118;

    /// The element with atomic number `z` (1..=118), or `None`.
    pub fn from_z(z: u8) -> Option<Element> {
        (1..=Self::COUNT as u8).contains(&z).then_some(Element(z))
    }

    /// Exact, case-sensitive symbol lookup (`"Fe"`, not `"FE"` or `"Fe2+"`).
    pub fn from_symbol(symbol: &str) -> Option<Element> {
        TABLE.iter().position(|(s, _, _)| *s == symbol).map(|i| Element(i as u8 + 1))
    }

    /// All 118 elements in order of Z.
    pub fn all() -> impl Iterator<Item = Element> {
        (1..=Self::COUNT as u8).map(Element)
    }

    pub fn z(self) -> u8 {
        self.0
    }

    pub fn symbol(self) -> &'static str {
        TABLE[self.0 as usize - 1].0
    }

    /// Pauling electronegativity; `None` for elements without a tabulated value.
    pub fn electronegativity(self) -> Option<f64> {
        let x = TABLE[self.0 as usize - 1].1;
        (!x.is_nan()).then_some(x)
    }

    /// Standard atomic mass in atomic mass units.
    pub fn mass(self) -> f64 {
        TABLE[self.0 as usize - 1].2
    }

    /// Parses a species symbol with an optional oxidation-state suffix: `Fe`, `Fe2+`, `Fe+2`, `O2-`,
    /// `Cl-`, `Fe2.5+`. The element part must be an exact symbol; the suffix must be a charge (digits
    /// and at most one sign), nothing else. Returns the element and the charge when one is given.
    pub fn parse_species(text: &str) -> Option<(Element, Option<f64>)> {
        let split = symbol_prefix_len(text);
        let element = Element::from_symbol(&text[..split])?;
        let rest = &text[split..];
        if rest.is_empty() {
            return Some((element, None));
        }
        Some((element, Some(parse_charge(rest)?)))
    }

    /// Best-effort element from a site label (`Si1`, `O2a`, `fe3`, `Co_1`): the leading letters, tried
    /// as a two-letter symbol first and then one letter, after normalising case (`FE` -> `Fe`). Used
    /// only when a file gives no explicit type symbol.
    pub fn from_label(label: &str) -> Option<Element> {
        let letters: Vec<char> = label.chars().take_while(|c| c.is_ascii_alphabetic()).take(2).collect();
        let normalise = |cs: &[char]| -> String {
            cs.iter()
                .enumerate()
                .map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect()
        };
        if letters.len() == 2
            && let Some(e) = Element::from_symbol(&normalise(&letters))
        {
            return Some(e);
        }
        letters.first().and_then(|_| Element::from_symbol(&normalise(&letters[..1])))
    }
}

/// Length of the leading symbol-shaped part: one ASCII uppercase letter then lowercase letters.
fn symbol_prefix_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes[0].is_ascii_uppercase() {
        return 0;
    }
    1 + bytes[1..].iter().take_while(|b| b.is_ascii_lowercase()).count()
}

/// `2+`, `+2`, `3-`, `-`, `+`, `2.5+` -> signed charge; anything else -> None.
fn parse_charge(text: &str) -> Option<f64> {
    let (sign, magnitude) = if let Some(m) = text.strip_suffix('+') {
        (1.0, m)
    } else if let Some(m) = text.strip_suffix('-') {
        (-1.0, m)
    } else if let Some(m) = text.strip_prefix('+') {
        (1.0, m)
    } else if let Some(m) = text.strip_prefix('-') {
        (-1.0, m)
    } else {
        return None;
    };
    if magnitude.is_empty() {
        return Some(sign);
    }
    if !magnitude.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    magnitude.parse::<f64>().ok().map(|m| sign * m)
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

impl FromStr for Element {
    type Err = Error;
    /// Exact symbol; an unknown one is an error naming it.
    fn from_str(s: &str) -> Result<Element> {
        Element::from_symbol(s).ok_or_else(|| Error::Other(format!("unknown element symbol `{s}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_118_unique_symbols_in_z_order() {
        let all: Vec<Element> = Element::all().collect();
        assert_eq!(all.len(), 118);
        assert_eq!(Element::from_symbol("H").unwrap().z(), 1);
        assert_eq!(Element::from_symbol("Fe").unwrap().z(), 26);
        assert_eq!(Element::from_symbol("Og").unwrap().z(), 118);
        for e in &all {
            assert_eq!(Element::from_symbol(e.symbol()), Some(*e));
        }
    }

    #[test]
    fn unknown_symbol_is_an_error_naming_it() {
        let err = "Xx".parse::<Element>().unwrap_err().to_string();
        assert!(err.contains("`Xx`"), "{err}");
        assert!(Element::from_symbol("FE").is_none());
    }

    #[test]
    fn species_suffixes_give_element_and_charge() {
        let fe = Element::from_symbol("Fe").unwrap();
        assert_eq!(Element::parse_species("Fe"), Some((fe, None)));
        assert_eq!(Element::parse_species("Fe2+"), Some((fe, Some(2.0))));
        assert_eq!(Element::parse_species("Fe+2"), Some((fe, Some(2.0))));
        assert_eq!(Element::parse_species("Fe2.5+"), Some((fe, Some(2.5))));
        let o = Element::from_symbol("O").unwrap();
        assert_eq!(Element::parse_species("O2-"), Some((o, Some(-2.0))));
        assert_eq!(Element::parse_species("Fe_pv"), None);
        assert_eq!(Element::parse_species("Fe2"), None);
    }

    #[test]
    fn labels_prefer_two_letter_symbols() {
        let sym = |l: &str| Element::from_label(l).map(|e| e.symbol());
        assert_eq!(sym("Si1"), Some("Si"));
        assert_eq!(sym("O2a"), Some("O"));
        assert_eq!(sym("Co_1"), Some("Co"));
        assert_eq!(sym("fe3"), Some("Fe"));
        assert_eq!(sym("Oa"), Some("O"));
        assert_eq!(sym("1X"), None);
    }

    #[test]
    fn noble_gases_lack_electronegativity() {
        assert_eq!(Element::from_symbol("He").unwrap().electronegativity(), None);
        assert_eq!(Element::from_symbol("O").unwrap().electronegativity(), Some(3.44));
    }
}
