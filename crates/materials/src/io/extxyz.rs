//! Extended XYZ reader and writer (the ASE/QUIP convention), for periodic structures with an
//! optional energy label.
//!
//! A frame is: the atom count; a comment line of `key=value` pairs (values may be "double quoted"
//! with backslash escapes); one line per atom. Keys read: `Lattice="ax ay az bx by bz cx cy cz"`
//! (required: non-periodic frames are unsupported), `Properties=name:type:count:...` (default
//! `species:S:1:pos:R:3`; the `species` and `pos` columns are located among any others),
//! `energy=` (optional, eV), `pbc="T T T"` (any F is an error). Keys are case-insensitive. Positions
//! are Cartesian (A). A file may hold several frames.

use std::path::Path;

use octet_core::Result;

use super::{at_line, fmt_f64, line_error, read_text, write_atomic};
use crate::element::Element;
use crate::lattice::Lattice;
use crate::structure::Structure;

/// One frame: a structure and its energy if the comment line gives one.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub structure: Structure,
    pub energy: Option<f64>,
}

/// Reads every frame of an extended XYZ file (at least one).
pub fn read_extxyz(path: &Path) -> Result<Vec<Frame>> {
    parse_extxyz(&read_text(path)?, path)
}

/// Splits the comment line into (key, value) pairs; a bare key gets the value "T".
fn key_values(line: &str) -> Option<Vec<(String, String)>> {
    let c: Vec<char> = line.chars().collect();
    let mut p = 0;
    let mut out = Vec::new();
    let read_value = |p: &mut usize| -> Option<String> {
        let mut v = String::new();
        if *p < c.len() && c[*p] == '"' {
            *p += 1;
            loop {
                match c.get(*p)? {
                    '"' => {
                        *p += 1;
                        return Some(v);
                    }
                    '\\' => {
                        *p += 1;
                        v.push(*c.get(*p)?);
                    }
                    ch => v.push(*ch),
                }
                *p += 1;
            }
        }
        while *p < c.len() && !c[*p].is_whitespace() {
            v.push(c[*p]);
            *p += 1;
        }
        Some(v)
    };
    loop {
        while p < c.len() && c[p].is_whitespace() {
            p += 1;
        }
        if p >= c.len() {
            return Some(out);
        }
        let mut key = String::new();
        if c[p] == '"' {
            key = read_value(&mut p)?;
        } else {
            while p < c.len() && !c[p].is_whitespace() && c[p] != '=' {
                key.push(c[p]);
                p += 1;
            }
        }
        while p < c.len() && c[p] == ' ' {
            p += 1;
        }
        if p < c.len() && c[p] == '=' {
            p += 1;
            while p < c.len() && c[p] == ' ' {
                p += 1;
            }
            let v = read_value(&mut p)?;
            out.push((key, v));
        } else {
            out.push((key, "T".to_string()));
        }
    }
}

/// Parses extended XYZ text; `path` is used in error messages only.
pub fn parse_extxyz(text: &str, path: &Path) -> Result<Vec<Frame>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut frames = Vec::new();
    let mut i = 0;
    loop {
        while i < lines.len() && lines[i].trim().is_empty() {
            i += 1;
        }
        if i >= lines.len() {
            break;
        }
        let count_no = i + 1;
        let n: usize = lines[i]
            .trim()
            .parse()
            .map_err(|_| line_error(path, count_no, format!("atom count expected, found `{}`", lines[i].trim())))?;
        let comment_no = i + 2;
        let comment =
            lines.get(i + 1).ok_or_else(|| line_error(path, comment_no, "file ends before the comment line"))?;
        let kv = key_values(comment).ok_or_else(|| line_error(path, comment_no, "unterminated quoted value"))?;
        let find = |k: &str| kv.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str());

        let lattice_text = find("Lattice")
            .ok_or_else(|| line_error(path, comment_no, "no `Lattice=\"...\"`: non-periodic frames are unsupported"))?;
        let v: Vec<f64> = lattice_text
            .split_whitespace()
            .map(|t| t.parse::<f64>().ok())
            .collect::<Option<_>>()
            .filter(|v: &Vec<f64>| v.len() == 9)
            .ok_or_else(|| line_error(path, comment_no, format!("Lattice needs 9 numbers, found `{lattice_text}`")))?;
        let lattice = Lattice::new([[v[0], v[1], v[2]], [v[3], v[4], v[5]], [v[6], v[7], v[8]]])
            .map_err(|e| at_line(path, comment_no, e))?;
        lattice.check_plausible().map_err(|e| at_line(path, comment_no, e))?;
        if let Some(pbc) = find("pbc") {
            let flags: Vec<&str> = pbc.split_whitespace().collect();
            let periodic = |f: &str| matches!(f, "T" | "t" | "True" | "true" | "1");
            if flags.len() != 3 || !flags.iter().all(|f| periodic(f)) {
                return Err(line_error(
                    path,
                    comment_no,
                    format!("pbc=\"{pbc}\": only fully periodic frames are supported"),
                ));
            }
        }
        let energy = match find("energy") {
            Some(e) => Some(
                e.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| line_error(path, comment_no, format!("energy `{e}` is not a finite number")))?,
            ),
            None => None,
        };

        // Columns: walk name:type:count triples.
        let props = find("Properties").unwrap_or("species:S:1:pos:R:3");
        let fields: Vec<&str> = props.split(':').collect();
        if !fields.len().is_multiple_of(3) {
            return Err(line_error(path, comment_no, format!("Properties `{props}` is not name:type:count triples")));
        }
        let (mut species_col, mut pos_col, mut width) = (None, None, 0usize);
        for t in fields.chunks(3) {
            let count: usize = t[2]
                .parse()
                .map_err(|_| line_error(path, comment_no, format!("Properties count `{}` is not an integer", t[2])))?;
            match (t[0].to_ascii_lowercase().as_str(), t[1], count) {
                ("species", "S", 1) => species_col = Some(width),
                ("pos", "R", 3) => pos_col = Some(width),
                _ => {}
            }
            width += count;
        }
        let (Some(species_col), Some(pos_col)) = (species_col, pos_col) else {
            return Err(line_error(path, comment_no, format!("Properties `{props}` lacks species:S:1 or pos:R:3")));
        };

        // One line per atom: buffers are sized by the lines present, never by the count alone (a
        // count of 1e11 in a small file ends at "file ends" without allocating for it).
        let capacity = n.min(lines.len().saturating_sub(i + 2));
        let mut species = Vec::with_capacity(capacity);
        let mut frac = Vec::with_capacity(capacity);
        for a in 0..n {
            let no = i + 3 + a;
            let l =
                lines.get(no - 1).ok_or_else(|| line_error(path, no, format!("file ends at atom {} of {n}", a + 1)))?;
            let t: Vec<&str> = l.split_whitespace().collect();
            if t.len() < width {
                return Err(line_error(path, no, format!("{} columns, Properties needs {width}", t.len())));
            }
            let sym = t[species_col];
            let e = Element::from_symbol(sym)
                .ok_or_else(|| line_error(path, no, format!("unknown element symbol `{sym}`")))?;
            let mut r = [0.0; 3];
            for k in 0..3 {
                let tok = t[pos_col + k];
                r[k] = tok
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| line_error(path, no, format!("position `{tok}` is not a number")))?;
            }
            species.push(e);
            frac.push(lattice.to_fractional(&r));
        }
        let first_atom = i + 3;
        let s = Structure::new_unchecked_overlaps(lattice, species, frac).map_err(|e| at_line(path, first_atom, e))?;
        if let Some(o) = s.check_overlaps() {
            return Err(line_error(
                path,
                first_atom + o.j,
                format!("{o} (atoms on lines {} and {})", first_atom + o.i, first_atom + o.j),
            ));
        }
        frames.push(Frame { structure: s, energy });
        i += 2 + n; // cannot overflow: the n lines were read above
    }
    if frames.is_empty() {
        return Err(line_error(path, 1, "no frames"));
    }
    Ok(frames)
}

/// One frame as extended XYZ text, Cartesian positions in A.
pub fn extxyz_string(s: &Structure, energy: Option<f64>) -> String {
    let m = s.lattice.matrix();
    let lat: Vec<String> = m.iter().flatten().map(|&x| fmt_f64(x)).collect();
    let mut out = format!("{}\nLattice=\"{}\" Properties=species:S:1:pos:R:3", s.num_sites(), lat.join(" "));
    if let Some(e) = energy {
        out.push_str(&format!(" energy={}", fmt_f64(e)));
    }
    out.push_str(" pbc=\"T T T\"\n");
    for (e, r) in s.species.iter().zip(s.cart_coords()) {
        out.push_str(&format!("{e}  {}  {}  {}\n", fmt_f64(r[0]), fmt_f64(r[1]), fmt_f64(r[2])));
    }
    out
}

/// Writes all frames to one file, atomically.
pub fn write_extxyz(path: &Path, frames: &[Frame]) -> Result<()> {
    let text: String = frames.iter().map(|f| extxyz_string(&f.structure, f.energy)).collect();
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_line_key_values_with_quotes_and_flags() {
        let kv = key_values(r#"Lattice="1 0 0 0 1 0 0 0 1" energy=-3.5 name="a \"b\"" flag pbc = "T T T""#).unwrap();
        let get = |k: &str| kv.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        assert_eq!(get("Lattice").as_deref(), Some("1 0 0 0 1 0 0 0 1"));
        assert_eq!(get("energy").as_deref(), Some("-3.5"));
        assert_eq!(get("name").as_deref(), Some("a \"b\""));
        assert_eq!(get("flag").as_deref(), Some("T"));
        assert_eq!(get("pbc").as_deref(), Some("T T T"));
        assert!(key_values("Lattice=\"1 2").is_none());
    }
}
