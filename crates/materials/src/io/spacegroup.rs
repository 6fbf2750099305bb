//! Space-group operations from a Hermann-Mauguin symbol, a Hall symbol or an International Tables
//! number, for CIFs that name their space group without listing its operations (as people write them
//! by hand: `_symmetry_space_group_name_H-M 'F m -3 m'` and the asymmetric unit).
//!
//! The table is `moyo`'s Hall symbol database (530 settings of the 230 groups, spglib's numbering);
//! operations come from `moyo`'s Hall symbol parser (coset representatives) times the centring
//! translations, so a conventional cell's full set.
//!
//! Symbols match ignoring spaces and underscores (`P 21/c`, `P2_1/c`, `P 1 21/c 1`), by the standard
//! short symbol of a group, the full symbol of any setting (`P 1 21/n 1`, `P 21/b 21/n 21/m`), the
//! short symbol of an orthorhombic setting (`P b n m`) or of a monoclinic one (`P 21/n`: the full
//! symbol without its `1`s), the pre-2002 names of the five groups with an `e` glide (`C m c a` for
//! `C m c e`) and the pre-1983 cubic names without the bar (`F m 3 m`).
//!
//! Setting (`:1`, `:2` origin choice, also `:S` = 1 and `:Z` = 2; `:H`, `:R` axes): without one, the
//! default is origin choice 1 and unique axis b, cell choice 1 (ITA's first listing, spglib's and
//! pymatgen's default; pymatgen and ASE read a bare `F d -3 m` so too). An R group without `:H`/`:R`
//! takes rhombohedral axes when the cell is rhombohedral (a = b = c, alpha = beta = gamma != 90, as ASE
//! decides) and hexagonal axes otherwise (pymatgen's default).

use std::collections::HashMap;
use std::sync::OnceLock;

use moyo::data::{HallSymbol, HallSymbolEntry, Setting, hall_symbol_entry};

use super::cif::SymOp;

/// Hall numbers are 1..=530 in moyo's (spglib's) table.
const HALL_NUMBERS: i32 = 530;

/// A setting asked for after the symbol's colon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    Default,
    Origin(char),
    Axes(char),
}

/// Space and underscore dropped; the lattice letter upper case.
fn normalise(symbol: &str) -> String {
    let mut s: String = symbol.chars().filter(|c| !c.is_whitespace() && *c != '_').collect();
    if let Some(first) = s.get(..1) {
        let up = first.to_ascii_uppercase();
        s.replace_range(..1, &up);
    }
    s
}

/// Symbol -> Hall numbers that have it, the group's default setting first.
fn table() -> &'static HashMap<String, Vec<i32>> {
    static TABLE: OnceLock<HashMap<String, Vec<i32>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut map: HashMap<String, Vec<i32>> = HashMap::new();
        fn add(map: &mut HashMap<String, Vec<i32>>, key: String, h: i32) {
            let v = map.entry(key).or_default();
            if !v.contains(&h) {
                v.push(h);
            }
        }
        let defaults = Setting::Spglib.hall_numbers();
        let order = defaults.iter().copied().chain(1..=HALL_NUMBERS);
        for h in order {
            let Some(e) = hall_symbol_entry(h) else { continue };
            for key in keys(&e) {
                add(&mut map, key, h);
            }
        }
        for (old, new) in [("Abm2", "Aem2"), ("Aba2", "Aea2"), ("Cmca", "Cmce"), ("Cmma", "Cmme"), ("Ccca", "Ccce")] {
            if let Some(v) = map.get(new).cloned() {
                for h in v {
                    add(&mut map, old.to_string(), h);
                }
            }
        }
        map
    })
}

/// The spellings one table entry answers to (see the module doc).
fn keys(e: &HallSymbolEntry) -> Vec<String> {
    let mut keys = vec![normalise(e.hm_short), normalise(e.hm_full)];
    let tokens: Vec<&str> = e.hm_full.split_whitespace().collect();
    if (3..=15).contains(&e.number) {
        let short: Vec<&str> = tokens.iter().copied().filter(|t| *t != "1").collect();
        keys.push(normalise(&short.join(" ")));
    }
    if (16..=74).contains(&e.number) {
        let short: Vec<&str> = tokens.iter().map(|t| t.rsplit('/').next().unwrap_or(t)).collect();
        keys.push(normalise(&short.join(" ")));
    }
    if e.number >= 195 {
        let k = normalise(e.hm_short);
        if k.contains("-3") {
            keys.push(k.replace("-3", "3"));
        }
    }
    keys
}

/// Whether cell parameters describe rhombohedral axes: a = b = c and alpha = beta = gamma != 90.
pub fn is_rhombohedral_cell(cell: &[f64; 6]) -> bool {
    let [a, b, c, al, be, ga] = *cell;
    let same = |x: f64, y: f64, tol: f64| (x - y).abs() <= tol;
    same(a, b, 1e-3 * a) && same(a, c, 1e-3 * a) && same(al, be, 0.01) && same(al, ga, 0.01) && !same(al, 90.0, 0.01)
}

/// The Hall number of a Hermann-Mauguin symbol (with an optional `:setting`), or `None` for an
/// unknown symbol or a setting the group does not have. `rhombohedral_cell` picks the axes of an R
/// group given without `:H`/`:R`.
pub fn hall_number_of_symbol(symbol: &str, rhombohedral_cell: bool) -> Option<i32> {
    let (body, choice) = split_setting(symbol)?;
    let candidates = table().get(&normalise(body))?;
    let entries: Vec<HallSymbolEntry> = candidates.iter().filter_map(|&h| hall_symbol_entry(h)).collect();
    let number = entries.first()?.number;
    // Only settings of one group: a symbol naming two groups would be a table error.
    let entries: Vec<&HallSymbolEntry> = entries.iter().filter(|e| e.number == number).collect();
    let pick = |f: &dyn Fn(&str) -> bool| entries.iter().find(|e| f(e.setting)).map(|e| e.hall_number);
    match choice {
        Choice::Default if is_rhombohedral_group(number) => {
            let axes = if rhombohedral_cell { "R" } else { "H" };
            pick(&|s| s == axes)
        }
        Choice::Default => Some(entries[0].hall_number),
        Choice::Origin(o) => {
            // The first candidate's axes with the other origin: e.g. `1cab` -> `2cab`.
            let rest = entries[0].setting.get(1..).unwrap_or("");
            pick(&|s| s.starts_with(o) && &s[1..] == rest)
        }
        Choice::Axes(a) if is_rhombohedral_group(number) => pick(&|s| s.len() == 1 && s.starts_with(a)),
        Choice::Axes(_) => None,
    }
}

/// The seven groups with an R lattice (hexagonal or rhombohedral axes).
fn is_rhombohedral_group(number: i32) -> bool {
    matches!(number, 146 | 148 | 155 | 160 | 161 | 166 | 167)
}

/// `F d -3 m:2` -> (`F d -3 m`, origin 2); `R -3 m H` (a trailing axes word after an R symbol) ->
/// (`R -3 m`, hexagonal axes). `None` for an unknown setting after a colon.
fn split_setting(symbol: &str) -> Option<(&str, Choice)> {
    let symbol = symbol.trim();
    if let Some((body, setting)) = symbol.split_once(':') {
        let choice = match setting.trim().to_ascii_uppercase().as_str() {
            "1" | "S" => Choice::Origin('1'),
            "2" | "Z" => Choice::Origin('2'),
            "H" => Choice::Axes('H'),
            "R" => Choice::Axes('R'),
            _ => return None,
        };
        return Some((body.trim(), choice));
    }
    if symbol.starts_with('R')
        && let Some((body, last)) = symbol.rsplit_once(char::is_whitespace)
        && (last == "H" || last == "R")
    {
        return Some((body.trim(), Choice::Axes(last.chars().next().expect("one char"))));
    }
    Some((symbol, Choice::Default))
}

/// The default Hall number of an International Tables number (1..=230): origin choice 1, unique axis
/// b; hexagonal axes for an R group unless `rhombohedral_cell`.
pub fn hall_number_of_number(number: i32, rhombohedral_cell: bool) -> Option<i32> {
    if !(1..=230).contains(&number) {
        return None;
    }
    let h = Setting::Spglib.hall_number(number)?;
    if rhombohedral_cell && is_rhombohedral_group(number) {
        let next = hall_symbol_entry(h + 1)?;
        return (next.number == number && next.setting == "R").then_some(h + 1);
    }
    Some(h)
}

/// The International Tables number of a Hall number.
pub fn number_of_hall_number(hall_number: i32) -> Option<i32> {
    hall_symbol_entry(hall_number).map(|e| e.number)
}

/// Every operation of a setting in its conventional cell: coset representatives times centring.
pub fn operations_of_hall_number(hall_number: i32) -> Option<Vec<SymOp>> {
    operations(&HallSymbol::from_hall_number(hall_number)?)
}

/// The Hall number of a Hall symbol in the table (`-P 2ybc`, `-F 4vw 2vw 3`, `-R 3 2"`: spaces
/// collapsed; the `"` and `'` axis marks also as moyo's `=` and `^`). Only the table's symbols are
/// accepted: moyo's parser asserts on some malformed input, so arbitrary text never reaches it.
pub fn hall_number_of_hall_symbol(hall: &str) -> Option<i32> {
    let key = hall.split_whitespace().collect::<Vec<_>>().join(" ").replace('"', "=").replace('\'', "^");
    (1..=HALL_NUMBERS).filter_map(hall_symbol_entry).find(|e| e.hall_symbol == key).map(|e| e.hall_number)
}

fn operations(hs: &HallSymbol) -> Option<Vec<SymOp>> {
    let cosets = hs.traverse();
    let mut shifts = vec![nalgebra::Vector3::zeros()];
    shifts.extend(hs.centering_translations.iter().copied());
    let mut ops = Vec::with_capacity(cosets.len() * shifts.len());
    for t in &shifts {
        for op in &cosets {
            let r = op.rotation;
            let tr = op.translation + t;
            ops.push(SymOp {
                rot: std::array::from_fn(|i| std::array::from_fn(|j| r[(i, j)] as f64)),
                trans: std::array::from_fn(|i| tr[i] - tr[i].floor()),
            });
        }
    }
    (!ops.is_empty()).then_some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(symbol: &str) -> Option<i32> {
        hall_number_of_symbol(symbol, false).and_then(number_of_hall_number)
    }

    #[test]
    fn symbols_as_people_write_them() {
        for (s, n) in [
            ("F m -3 m", 225),
            ("Fm-3m", 225),
            ("Fm3m", 225),
            ("P 21/c", 14),
            ("P2_1/c", 14),
            ("P 1 21/n 1", 14),
            ("P 21/n", 14),
            ("P n m a", 62),
            ("P b n m", 62),
            ("C m c a", 64),
            ("C m c e", 64),
            ("P 63/m m c", 194),
            ("R -3 m", 166),
            ("I 41/a m d:2", 141),
            ("p 1", 1),
        ] {
            assert_eq!(number(s), Some(n), "{s}");
        }
        for s in ["F m -3 x", "Q 1", "", "P 21/c:3", "P 21/c:H", "F m -3 m:2"] {
            assert_eq!(number(s), None, "{s}");
        }
    }

    #[test]
    fn origin_choices_and_axes() {
        let setting = |s: &str, rh: bool| hall_symbol_entry(hall_number_of_symbol(s, rh).unwrap()).unwrap().setting;
        assert_eq!(setting("F d -3 m", false), "1");
        assert_eq!(setting("F d -3 m:1", false), "1");
        assert_eq!(setting("F d -3 m:2", false), "2");
        assert_eq!(setting("F d -3 m :Z", false), "2");
        assert_eq!(setting("R -3 m", false), "H");
        assert_eq!(setting("R -3 m", true), "R");
        assert_eq!(setting("R -3 m:H", true), "H");
        assert_eq!(setting("R -3 m R", false), "R");
        assert_eq!(hall_symbol_entry(hall_number_of_number(166, true).unwrap()).unwrap().setting, "R");
        assert_eq!(hall_symbol_entry(hall_number_of_number(227, false).unwrap()).unwrap().setting, "1");
        assert_eq!(hall_number_of_number(0, false), None);
        assert_eq!(hall_number_of_number(231, false), None);
    }

    #[test]
    fn operation_counts_include_centring() {
        let count = |s: &str| operations_of_hall_number(hall_number_of_symbol(s, false).unwrap()).unwrap().len();
        assert_eq!(count("P 1"), 1);
        assert_eq!(count("P 21/c"), 4);
        assert_eq!(count("F m -3 m"), 192);
        assert_eq!(count("R -3 m"), 36);
        assert_eq!(operations_of_hall_number(hall_number_of_symbol("R -3 m", true).unwrap()).unwrap().len(), 12);
        let hall = |s: &str| hall_number_of_hall_symbol(s).and_then(operations_of_hall_number).map(|o| o.len());
        assert_eq!(hall("-F 4vw 2vw 3"), Some(192));
        assert_eq!(hall("-R 3 2\""), Some(36));
        assert_eq!(hall(" -P  2ybc "), Some(4));
        for bad in ["not a hall symbol", "-F 4vw 2vw x", "P 2 2 2 2 2", ""] {
            assert_eq!(hall(bad), None, "{bad}");
        }
    }
}
