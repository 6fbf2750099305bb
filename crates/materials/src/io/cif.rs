//! CIF (Crystallographic Information File, 1.1 syntax) reader and P1 writer.
//!
//! Reads the first data block that has atom sites: `_cell_length_*` / `_cell_angle_*` (standard
//! uncertainties like `5.4307(2)` are dropped), `_atom_site_fract_{x,y,z}`, the element from
//! `_atom_site_type_symbol` (oxidation suffixes such as `Fe2+` stripped) or else from
//! `_atom_site_label` (`Si1` -> Si), and symmetry operations from `_symmetry_equiv_pos_as_xyz` or
//! `_space_group_symop_operation_xyz` (DDL2 dotted names like `_space_group_symop.operation_xyz` are
//! the same tags). Each site is expanded by every operation; an image within 1e-4 (fractional, per
//! axis, periodic) of an earlier atom of the same element is dropped, and coordinates are wrapped
//! into [0, 1); a file whose only operation is the identity (P1) keeps its coordinates and order
//! exactly as written, so coincident sites there are an overlap error. Only full occupancy is
//! supported: `_atom_site_occupancy` other than 1 is an error. This covers the pymatgen and ICSD
//! dialects.
//!
//! A block without listed operations takes them from the space group it names, as hand-written CIFs
//! do (`spacegroup`: moyo's table of the 530 settings): a Hall symbol (`_space_group_name_Hall`), else
//! a Hermann-Mauguin symbol (`_symmetry_space_group_name_H-M`, `_space_group_name_H-M_alt`; `P 21/c`,
//! `F m -3 m`, `F d -3 m:2`, `R -3 m:R`; origin choice 1 and hexagonal axes unless the symbol or a
//! rhombohedral cell says otherwise), else an International Tables number (`_space_group_IT_number`,
//! `_symmetry_Int_Tables_number`). An unknown symbol, a number outside 1-230, or a symbol whose group
//! differs from the number beside it is an error naming the tag and its line; `?` and `.` name none,
//! and a block that names none is P1. The expansion agrees with pymatgen's on 118 cases
//! (tests/cif_symmetry.rs).
//!
//! Syntax handled: comments, `data_` blocks, `loop_`, quoted values ('...' and "..." that end at a
//! quote followed by whitespace), and `;` text fields. Tag names are matched case-insensitively.

use std::path::Path;

use octet_core::Result;

use super::{at_line, fmt_f64, line_error, parse_number, read_text, spacegroup, write_atomic};
use crate::element::Element;
use crate::lattice::Lattice;
use crate::structure::{MAX_ATOM_DENSITY, MIN_SEPARATION, Structure};

/// Images closer than this in every fractional coordinate (periodically) are the same atom.
pub const SYMPREC: f64 = 1e-4;

/// Occupancies within this of 1 count as full.
const OCCUPANCY_TOL: f64 = 1e-3;

#[derive(Debug, PartialEq)]
enum Kind {
    Tag,
    Value,
    Loop,
    Data,
}

#[derive(Debug)]
struct Token {
    kind: Kind,
    text: String,
    line: usize,
}

/// Splits CIF text into tokens with 1-based line numbers.
fn tokenize(text: &str, path: &Path) -> Result<Vec<Token>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut tokens = Vec::new();
    let mut li = 0;
    while li < lines.len() {
        let line = lines[li];
        let lineno = li + 1;
        li += 1;
        if let Some(first) = line.strip_prefix(';') {
            // Text field: runs until a line that starts with ';'.
            let mut content = first.to_string();
            loop {
                if li >= lines.len() {
                    return Err(line_error(path, lineno, "text field starting with `;` is never closed"));
                }
                let l = lines[li];
                li += 1;
                if l.starts_with(';') {
                    break;
                }
                content.push('\n');
                content.push_str(l);
            }
            tokens.push(Token { kind: Kind::Value, text: content.trim().to_string(), line: lineno });
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut p = 0;
        while p < chars.len() {
            if chars[p].is_whitespace() {
                p += 1;
                continue;
            }
            if chars[p] == '#' {
                break;
            }
            if chars[p] == '\'' || chars[p] == '"' {
                let q = chars[p];
                let start = p + 1;
                let mut end = None;
                let mut k = start;
                while k < chars.len() {
                    if chars[k] == q && (k + 1 == chars.len() || chars[k + 1].is_whitespace()) {
                        end = Some(k);
                        break;
                    }
                    k += 1;
                }
                let Some(end) = end else {
                    return Err(line_error(path, lineno, format!("quoted value starting with {q} is never closed")));
                };
                tokens.push(Token { kind: Kind::Value, text: chars[start..end].iter().collect(), line: lineno });
                p = end + 1;
                continue;
            }
            let start = p;
            while p < chars.len() && !chars[p].is_whitespace() {
                p += 1;
            }
            let word: String = chars[start..p].iter().collect();
            let lower = word.to_ascii_lowercase();
            let kind = if word.starts_with('_') {
                Kind::Tag
            } else if lower == "loop_" {
                Kind::Loop
            } else if lower.starts_with("data_") {
                Kind::Data
            } else if lower.starts_with("save_") || lower == "global_" || lower == "stop_" {
                return Err(line_error(path, lineno, format!("unsupported CIF construct `{word}`")));
            } else {
                Kind::Value
            };
            let text = if kind == Kind::Tag { normalise_tag(&word) } else { word };
            tokens.push(Token { kind, text, line: lineno });
        }
    }
    Ok(tokens)
}

/// `_Space_Group_Symop.Operation_XYZ` -> `_space_group_symop_operation_xyz`.
fn normalise_tag(tag: &str) -> String {
    tag.to_ascii_lowercase().replace('.', "_")
}

/// A value with the line it came from.
#[derive(Clone, Debug)]
struct Val {
    text: String,
    line: usize,
}

#[derive(Debug)]
struct Loop {
    tags: Vec<String>,
    /// Row-major: row r, column c is values[r * tags.len() + c].
    values: Vec<Val>,
}

#[derive(Debug, Default)]
struct Block {
    pairs: Vec<(String, Val)>,
    loops: Vec<Loop>,
}

/// A set of columns that belong together: one loop, or the block's single-valued pairs as one row.
enum Table<'a> {
    Loop(&'a Loop),
    Pairs(&'a Block),
}

impl Block {
    fn pair(&self, tag: &str) -> Option<&Val> {
        self.pairs.iter().find(|(t, _)| t == tag).map(|(_, v)| v)
    }

    fn has(&self, tag: &str) -> bool {
        self.table_of(tag).is_some()
    }

    /// The loop holding `tag`, or the pairs if `tag` is a pair.
    fn table_of(&self, tag: &str) -> Option<Table<'_>> {
        if let Some(l) = self.loops.iter().find(|l| l.tags.iter().any(|t| t == tag)) {
            return Some(Table::Loop(l));
        }
        self.pair(tag).map(|_| Table::Pairs(self))
    }
}

impl Table<'_> {
    fn column(&self, tag: &str) -> Option<Vec<Val>> {
        match self {
            Table::Loop(l) => {
                let c = l.tags.iter().position(|t| t == tag)?;
                Some(l.values.iter().skip(c).step_by(l.tags.len()).cloned().collect())
            }
            Table::Pairs(b) => b.pair(tag).map(|v| vec![v.clone()]),
        }
    }
}

/// Groups tokens into data blocks.
fn parse_blocks(tokens: Vec<Token>, path: &Path) -> Result<Vec<Block>> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut it = tokens.into_iter().peekable();
    while let Some(tok) = it.next() {
        if tok.kind == Kind::Data {
            blocks.push(Block::default());
            continue;
        }
        let Some(block) = blocks.last_mut() else {
            return Err(line_error(path, tok.line, format!("`{}` before the first data_ block", tok.text)));
        };
        match tok.kind {
            Kind::Tag => match it.next_if(|t| t.kind == Kind::Value) {
                Some(v) => block.pairs.push((tok.text, Val { text: v.text, line: v.line })),
                None => {
                    return Err(line_error(path, tok.line, format!("tag `{}` has no value", tok.text)));
                }
            },
            Kind::Loop => {
                let mut tags = Vec::new();
                while let Some(t) = it.next_if(|t| t.kind == Kind::Tag) {
                    tags.push(t.text);
                }
                if tags.is_empty() {
                    return Err(line_error(path, tok.line, "loop_ without tags"));
                }
                let mut values = Vec::new();
                while let Some(v) = it.next_if(|t| t.kind == Kind::Value) {
                    values.push(Val { text: v.text, line: v.line });
                }
                if values.is_empty() {
                    // CIF 1.1 requires at least one row; readers below index a column's first value.
                    return Err(line_error(
                        path,
                        tok.line,
                        format!("loop_ with tags `{}` has no values", tags.join("`, `")),
                    ));
                }
                if !values.len().is_multiple_of(tags.len()) {
                    let last_row = values[values.len() / tags.len() * tags.len()].line;
                    return Err(line_error(
                        path,
                        last_row,
                        format!(
                            "loop_ (line {}) has {} values, not a multiple of its {} tags: incomplete row",
                            tok.line,
                            values.len(),
                            tags.len()
                        ),
                    ));
                }
                block.loops.push(Loop { tags, values });
            }
            Kind::Value => {
                return Err(line_error(path, tok.line, format!("value `{}` without a tag", tok.text)));
            }
            Kind::Data => unreachable!(),
        }
    }
    Ok(blocks)
}

/// An affine operation on fractional coordinates: f' = rot f + trans.
#[derive(Clone, Debug, PartialEq)]
pub struct SymOp {
    pub rot: [[f64; 3]; 3],
    pub trans: [f64; 3],
}

impl SymOp {
    pub fn identity() -> SymOp {
        SymOp { rot: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], trans: [0.0; 3] }
    }

    pub fn apply(&self, f: &[f64; 3]) -> [f64; 3] {
        std::array::from_fn(|i| self.rot[i][0] * f[0] + self.rot[i][1] * f[1] + self.rot[i][2] * f[2] + self.trans[i])
    }

    /// Parses `x,y,z`, `-x+1/2, y, -z`, `1/2+x-y, 0.5-y, z+1/6`, `2*x` (case-insensitive, spaces
    /// ignored). Each of the three comma-separated parts is a sum of signed terms; a term is a
    /// number (integer, decimal or fraction a/b), a variable, or a number times a variable.
    pub fn parse(text: &str) -> Option<SymOp> {
        let parts: Vec<&str> = text.split(',').collect();
        if parts.len() != 3 {
            return None;
        }
        let mut op = SymOp { rot: [[0.0; 3]; 3], trans: [0.0; 3] };
        for (i, part) in parts.iter().enumerate() {
            let s: Vec<char> = part.chars().filter(|c| !c.is_whitespace()).collect();
            if s.is_empty() {
                return None;
            }
            let mut p = 0;
            while p < s.len() {
                let mut sign = 1.0;
                if s[p] == '+' || s[p] == '-' {
                    sign = if s[p] == '-' { -1.0 } else { 1.0 };
                    p += 1;
                } else if p > 0 {
                    return None;
                }
                let start = p;
                while p < s.len() && (s[p].is_ascii_digit() || s[p] == '.' || s[p] == '/') {
                    p += 1;
                }
                let number: String = s[start..p].iter().collect();
                let coeff = if number.is_empty() {
                    None
                } else if let Some((a, b)) = number.split_once('/') {
                    let (a, b) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
                    (b != 0.0).then_some(a / b)
                } else {
                    Some(number.parse::<f64>().ok()?)
                };
                if coeff.is_some() && p < s.len() && s[p] == '*' {
                    p += 1;
                }
                let var = match s.get(p).map(|c| c.to_ascii_lowercase()) {
                    Some('x') => Some(0),
                    Some('y') => Some(1),
                    Some('z') => Some(2),
                    _ => None,
                };
                match (coeff, var) {
                    (c, Some(v)) => {
                        op.rot[i][v] += sign * c.unwrap_or(1.0);
                        p += 1;
                    }
                    (Some(c), None) => op.trans[i] += sign * c,
                    (None, None) => return None,
                }
            }
        }
        Some(op)
    }
}

/// The element of an `_atom_site_type_symbol`: `Fe`, `Fe2+`, `O2-`, also charges without a sign
/// (`Fe0`, `Si4`) as some writers emit them.
fn element_of_type_symbol(s: &str) -> Option<Element> {
    if let Some((e, _)) = Element::parse_species(s) {
        return Some(e);
    }
    let split = s.char_indices().skip(1).find(|(_, c)| !c.is_ascii_lowercase()).map_or(s.len(), |(i, _)| i);
    let rest = &s[split..];
    if rest.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'+' || b == b'-') {
        Element::from_symbol(&s[..split])
    } else {
        None
    }
}

fn is_unknown(v: &str) -> bool {
    v == "?" || v == "."
}

/// Hall symbol tags, as written in messages (matched after `normalise_tag`).
const HALL_TAGS: [&str; 2] = ["_space_group_name_Hall", "_symmetry_space_group_name_Hall"];
/// Hermann-Mauguin symbol tags.
const HM_TAGS: [&str; 2] = ["_symmetry_space_group_name_H-M", "_space_group_name_H-M_alt"];
/// International Tables number tags.
const NUMBER_TAGS: [&str; 2] = ["_space_group_IT_number", "_symmetry_Int_Tables_number"];

/// The operations of the space group a block names without listing them: a Hall symbol, else a
/// Hermann-Mauguin symbol, else an International Tables number (`spacegroup` has the table and the
/// defaults); `None` when it names none. An unknown symbol or number is an error naming the tag and
/// its line, as is a symbol whose group differs from a number given beside it.
fn space_group_operations(block: &Block, cell: &[f64; 6], path: &Path) -> Result<Option<Vec<SymOp>>> {
    let given = |tags: &[&'static str]| {
        tags.iter().find_map(|t| block.pair(&normalise_tag(t)).filter(|v| !is_unknown(v.text.trim())).map(|v| (*t, v)))
    };
    let rhombohedral = spacegroup::is_rhombohedral_cell(cell);
    let number = match given(&NUMBER_TAGS) {
        Some((tag, v)) => {
            let n =
                parse_number(&v.text).filter(|x| x.fract() == 0.0 && (1.0..=230.0).contains(x)).ok_or_else(|| {
                    line_error(path, v.line, format!("`{tag}`: `{}` is not a space-group number 1-230", v.text))
                })?;
            Some((tag, v, n as i32))
        }
        None => None,
    };
    let check_number = |tag: &str, v: &Val, n: i32| match number {
        Some((ntag, nv, m)) if m != n => Err(line_error(
            path,
            v.line,
            format!("`{tag}` `{}` is space group {n}, but `{ntag}` (line {}) says {m}", v.text, nv.line),
        )),
        _ => Ok(()),
    };
    if let Some((tag, v)) = given(&HALL_TAGS) {
        let h = spacegroup::hall_number_of_hall_symbol(&v.text).ok_or_else(|| {
            line_error(path, v.line, format!("`{tag}`: unknown Hall symbol `{}` (not among the 530 settings)", v.text))
        })?;
        check_number(tag, v, spacegroup::number_of_hall_number(h).expect("table entry"))?;
        let ops = spacegroup::operations_of_hall_number(h).expect("table entry");
        return Ok(Some(ops));
    }
    if let Some((tag, v)) = given(&HM_TAGS) {
        let h = spacegroup::hall_number_of_symbol(&v.text, rhombohedral).ok_or_else(|| {
            line_error(
                path,
                v.line,
                format!(
                    "`{tag}`: unknown space-group symbol `{}` (expected a Hermann-Mauguin symbol such as \
                     `P 21/c` or `F d -3 m:2`; or list the operations as `_symmetry_equiv_pos_as_xyz`)",
                    v.text
                ),
            )
        })?;
        check_number(tag, v, spacegroup::number_of_hall_number(h).expect("table entry"))?;
        return Ok(Some(spacegroup::operations_of_hall_number(h).expect("table entry")));
    }
    match number {
        Some((_, _, n)) => {
            let h = spacegroup::hall_number_of_number(n, rhombohedral).expect("1..=230 checked");
            Ok(Some(spacegroup::operations_of_hall_number(h).expect("table entry")))
        }
        None => Ok(None),
    }
}

/// Reads a CIF file; see the module doc.
pub fn read_cif(path: &Path) -> Result<Structure> {
    parse_cif(&read_text(path)?, path)
}

/// Parses CIF text; `path` is used in error messages only.
pub fn parse_cif(text: &str, path: &Path) -> Result<Structure> {
    let blocks = parse_blocks(tokenize(text, path)?, path)?;
    let Some(block) = blocks.iter().find(|b| b.has("_atom_site_fract_x")) else {
        return Err(line_error(
            path,
            text.lines().count().max(1),
            format!(
                "no data block with `_atom_site_fract_x` ({} block(s) read; Cartesian-only CIFs are unsupported)",
                blocks.len()
            ),
        ));
    };

    // Cell.
    let mut cell = [0.0; 6];
    let names = [
        "_cell_length_a",
        "_cell_length_b",
        "_cell_length_c",
        "_cell_angle_alpha",
        "_cell_angle_beta",
        "_cell_angle_gamma",
    ];
    let mut cell_line = 0;
    for (k, name) in names.iter().enumerate() {
        let Some(v) = block.pair(name) else {
            return Err(line_error(path, text.lines().count().max(1), format!("missing `{name}`")));
        };
        cell_line = cell_line.max(v.line);
        cell[k] = parse_number(&v.text)
            .ok_or_else(|| line_error(path, v.line, format!("`{name}`: `{}` is not a number", v.text)))?;
    }
    let lattice = Lattice::from_parameters(cell[0], cell[1], cell[2], cell[3], cell[4], cell[5])
        .map_err(|e| at_line(path, cell_line, e))?;
    lattice.check_plausible().map_err(|e| at_line(path, cell_line, e))?;

    // Symmetry operations.
    let op_tags = ["_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz"];
    let op_vals = op_tags.iter().find_map(|t| block.table_of(t).and_then(|tab| tab.column(t)));
    let ops: Vec<SymOp> = match op_vals {
        Some(vals) => vals
            .iter()
            .map(|v| {
                SymOp::parse(&v.text)
                    .ok_or_else(|| line_error(path, v.line, format!("cannot parse symmetry operation `{}`", v.text)))
            })
            .collect::<Result<_>>()?,
        None => space_group_operations(block, &cell, path)?.unwrap_or_else(|| vec![SymOp::identity()]),
    };
    if ops.is_empty() {
        return Err(line_error(path, cell_line, "symmetry operation loop is empty"));
    }

    // Atom sites.
    let sites = block.table_of("_atom_site_fract_x").expect("block was chosen for this tag");
    let col = |tag: &str| sites.column(tag);
    let fx = col("_atom_site_fract_x").expect("present");
    let (Some(fy), Some(fz)) = (col("_atom_site_fract_y"), col("_atom_site_fract_z")) else {
        return Err(line_error(path, fx[0].line, "`_atom_site_fract_x` without `_atom_site_fract_y`/`_z` beside it"));
    };
    let types = col("_atom_site_type_symbol");
    let labels = col("_atom_site_label");
    let occupancies = col("_atom_site_occupancy");
    if types.is_none() && labels.is_none() {
        return Err(line_error(
            path,
            fx[0].line,
            "atom sites have neither `_atom_site_type_symbol` nor `_atom_site_label`",
        ));
    }

    let expand = ops.len() > 1 || ops[0] != SymOp::identity();
    // More atoms than close packing allows must overlap: stop the expansion there (its duplicate
    // search is quadratic; one short line naming a space group multiplies every site by up to 192).
    let max_atoms = (MAX_ATOM_DENSITY * lattice.volume()).floor() as usize;
    let mut species = Vec::new();
    let mut frac = Vec::new();
    // For each expanded atom: (line of its row, label) to name in overlap errors.
    let mut origin: Vec<(usize, String)> = Vec::new();
    for r in 0..fx.len() {
        let line = fx[r].line;
        let mut f = [0.0; 3];
        for (k, v) in [&fx[r], &fy[r], &fz[r]].into_iter().enumerate() {
            f[k] = parse_number(&v.text).ok_or_else(|| {
                line_error(path, v.line, format!("fractional coordinate `{}` is not a number", v.text))
            })?;
        }
        let label = labels.as_ref().map(|l| l[r].text.clone());
        let element = match types.as_ref().map(|t| &t[r]).filter(|t| !is_unknown(&t.text)) {
            Some(t) => element_of_type_symbol(&t.text)
                .ok_or_else(|| line_error(path, t.line, format!("unknown element in type symbol `{}`", t.text)))?,
            None => {
                let l = labels
                    .as_ref()
                    .map(|l| &l[r])
                    .filter(|l| !is_unknown(&l.text))
                    .ok_or_else(|| line_error(path, line, "atom site has no type symbol and no label"))?;
                Element::from_label(&l.text).ok_or_else(|| {
                    line_error(path, l.line, format!("cannot read an element from label `{}`", l.text))
                })?
            }
        };
        if let Some(occ) = occupancies.as_ref().map(|o| &o[r]).filter(|o| !is_unknown(&o.text)) {
            let x = parse_number(&occ.text)
                .ok_or_else(|| line_error(path, occ.line, format!("occupancy `{}` is not a number", occ.text)))?;
            if (x - 1.0).abs() > OCCUPANCY_TOL {
                return Err(line_error(
                    path,
                    occ.line,
                    format!(
                        "partial occupancy {} of site `{}` is unsupported (only fully occupied sites)",
                        occ.text,
                        label.as_deref().unwrap_or(element.symbol())
                    ),
                ));
            }
        }
        let label = label.unwrap_or_else(|| element.symbol().to_string());
        if !expand {
            species.push(element);
            frac.push(f);
            origin.push((line, label));
            continue;
        }
        for op in &ops {
            let g = op.apply(&f).map(|x| {
                let w = x - x.floor();
                if w >= 1.0 { 0.0 } else { w }
            });
            let duplicate = frac.iter().zip(&species).any(|(h, e): (&[f64; 3], &Element)| {
                *e == element
                    && (0..3).all(|k| {
                        let d = g[k] - h[k];
                        (d - d.round()).abs() < SYMPREC
                    })
            });
            if !duplicate {
                if species.len() >= max_atoms {
                    return Err(line_error(
                        path,
                        line,
                        format!(
                            "symmetry expansion gives more than {max_atoms} atoms in a {:.1} A^3 cell, denser than \
                             the closest packing at {MIN_SEPARATION} A: atoms would overlap",
                            lattice.volume()
                        ),
                    ));
                }
                species.push(element);
                frac.push(g);
                origin.push((line, label.clone()));
            }
        }
    }
    if species.is_empty() {
        return Err(line_error(path, cell_line, "no atom sites"));
    }

    let s = Structure::new_unchecked_overlaps(lattice, species, frac).map_err(|e| at_line(path, cell_line, e))?;
    if let Some(o) = s.check_overlaps() {
        let (li, ref la) = origin[o.i];
        let (lj, ref lb) = origin[o.j];
        return Err(line_error(
            path,
            lj,
            format!(
                "atoms {} (`{la}`, line {li}) and {} (`{lb}`, line {lj}) are {:.4} A apart, closer than {MIN_SEPARATION} A",
                o.i, o.j, o.distance
            ),
        ));
    }
    Ok(s)
}

/// The structure as a P1 CIF: cell parameters, the identity operation, and every site with its
/// element, a label (element + running number) and occupancy 1.
pub fn cif_string(s: &Structure) -> String {
    let [a, b, c] = s.lattice.lengths();
    let [al, be, ga] = s.lattice.angles();
    let comp = s.composition();
    let (_, z) = comp.reduced();
    let mut out = String::new();
    out.push_str("# generated by octet\n");
    out.push_str(&format!("data_{}\n", comp.reduced_formula()));
    out.push_str("_symmetry_space_group_name_H-M   'P 1'\n");
    out.push_str("_symmetry_Int_Tables_number   1\n");
    for (tag, x) in [
        ("_cell_length_a", a),
        ("_cell_length_b", b),
        ("_cell_length_c", c),
        ("_cell_angle_alpha", al),
        ("_cell_angle_beta", be),
        ("_cell_angle_gamma", ga),
        ("_cell_volume", s.lattice.volume()),
    ] {
        out.push_str(&format!("{tag}   {}\n", fmt_f64(x)));
    }
    out.push_str(&format!("_chemical_formula_structural   {}\n", comp.reduced_formula()));
    out.push_str(&format!("_chemical_formula_sum   '{}'\n", comp.formula()));
    out.push_str(&format!("_cell_formula_units_Z   {z}\n"));
    out.push_str("loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n  1  'x, y, z'\n");
    out.push_str(
        "loop_\n _atom_site_type_symbol\n _atom_site_label\n _atom_site_symmetry_multiplicity\n \
         _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n",
    );
    let mut counts = std::collections::HashMap::new();
    for (e, f) in s.species.iter().zip(&s.frac_coords) {
        let n = counts.entry(*e).or_insert(0usize);
        *n += 1;
        out.push_str(&format!("  {e}  {e}{n}  1  {}  {}  {}  1\n", fmt_f64(f[0]), fmt_f64(f[1]), fmt_f64(f[2])));
    }
    out
}

/// Writes `cif_string(s)` atomically.
pub fn write_cif(path: &Path, s: &Structure) -> Result<()> {
    write_atomic(path, cif_string(s).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symops_parse_in_common_spellings() {
        let op = SymOp::parse("-x+1/2, y, -z").unwrap();
        assert_eq!(op.apply(&[0.1, 0.2, 0.3]), [0.4, 0.2, -0.3]);
        let op = SymOp::parse("1/2+X-Y,0.5-y,z+1/6").unwrap();
        let g = op.apply(&[0.3, 0.1, 0.0]);
        assert!((g[0] - 0.7).abs() < 1e-15 && (g[1] - 0.4).abs() < 1e-15 && (g[2] - 1.0 / 6.0).abs() < 1e-15);
        assert_eq!(SymOp::parse("x,y,z").unwrap(), SymOp::identity());
        assert_eq!(SymOp::parse("+x, +y, +z").unwrap(), SymOp::identity());
        for bad in ["x,y", "x,y,w", "x y,y,z", "x,,z", "x,y,z/0"] {
            assert!(SymOp::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn type_symbols_with_charges_give_elements() {
        let sym = |s: &str| element_of_type_symbol(s).map(|e| e.symbol());
        assert_eq!(sym("Fe2+"), Some("Fe"));
        assert_eq!(sym("O2-"), Some("O"));
        assert_eq!(sym("Fe0"), Some("Fe"));
        assert_eq!(sym("Si"), Some("Si"));
        assert_eq!(sym("Xx"), None);
        assert_eq!(sym("Fe_a"), None);
    }

    #[test]
    fn tokenizer_handles_quotes_comments_and_text_fields() {
        let text = "data_x # c\n_a 'it''s ok' \n_b \"q\"\n;\nline one\nline two\n;\n_c bare#not_comment\n";
        let toks = tokenize(text, Path::new("t.cif")).unwrap();
        let texts: Vec<&str> = toks.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["data_x", "_a", "it''s ok", "_b", "q", "line one\nline two", "_c", "bare#not_comment"]);
        assert_eq!(toks[5].line, 4);
    }
}
