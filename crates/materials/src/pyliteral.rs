//! A parser for Python literals as `repr` writes them (`{'a': [1, 2.5, True, None], 'b': (1,)}`):
//! the format of pymatgen structure dicts stored in CSV files such as matminer's, which is not JSON
//! (single quotes, True/False/None, tuples, trailing commas).
//!
//! Grammar: dicts, lists, tuples, strings ('...' or "..." with Python escapes, optional u/r prefix),
//! integers (beyond i64 become floats), floats (`1.5`, `1e-3`, `.5`, `1.`), True, False, None, and
//! the non-literal reprs `nan` and `inf` (as floats, so that the caller can reject them with a
//! clear message instead of a syntax error).

use std::fmt;

/// A parsed Python value. Dict keys keep their order.
#[derive(Clone, Debug, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    Tuple(Vec<PyValue>),
    Dict(Vec<(PyValue, PyValue)>),
}

/// Where and why parsing failed; `offset` is a 0-based character index.
#[derive(Clone, Debug, PartialEq)]
pub struct PyParseError {
    pub offset: usize,
    pub msg: String,
}

impl fmt::Display for PyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at character {}", self.msg, self.offset + 1)
    }
}

impl std::error::Error for PyParseError {}

/// Nesting deeper than this is rejected rather than risking the stack.
const MAX_DEPTH: usize = 200;

impl PyValue {
    /// The value under string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(items) => {
                items.iter().find(|(k, _)| matches!(k, PyValue::Str(s) if s == key)).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// Ints and floats as f64 (bools are not numbers here).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyValue::Int(i) => Some(*i as f64),
            PyValue::Float(x) => Some(*x),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Items of a list or tuple.
    pub fn as_seq(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::List(v) | PyValue::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// Python type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "None",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::List(_) => "list",
            PyValue::Tuple(_) => "tuple",
            PyValue::Dict(_) => "dict",
        }
    }
}

/// Parses one Python literal; only whitespace may follow it.
pub fn parse(text: &str) -> Result<PyValue, PyParseError> {
    let mut p = Parser { c: text.chars().collect(), pos: 0 };
    let v = p.value(0)?;
    p.skip_ws();
    if p.pos != p.c.len() {
        return Err(p.err(format!("unexpected `{}` after the value", p.c[p.pos])));
    }
    Ok(v)
}

struct Parser {
    c: Vec<char>,
    pos: usize,
}

impl Parser {
    fn err(&self, msg: impl Into<String>) -> PyParseError {
        PyParseError { offset: self.pos, msg: msg.into() }
    }

    fn skip_ws(&mut self) {
        while self.pos < self.c.len() && self.c[self.pos].is_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.c.get(self.pos).copied()
    }

    fn value(&mut self, depth: usize) -> Result<PyValue, PyParseError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH}")));
        }
        self.skip_ws();
        let Some(ch) = self.peek() else {
            return Err(self.err("unexpected end of input, expected a value"));
        };
        match ch {
            '{' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    if self.peek() == Some('}') {
                        self.pos += 1;
                        return Ok(PyValue::Dict(items));
                    }
                    let k = self.value(depth + 1)?;
                    self.skip_ws();
                    if self.peek() != Some(':') {
                        return Err(self.err("expected `:` after a dict key"));
                    }
                    self.pos += 1;
                    let v = self.value(depth + 1)?;
                    items.push((k, v));
                    if !self.separator('}')? {
                        self.pos += 1;
                        return Ok(PyValue::Dict(items));
                    }
                }
            }
            '[' | '(' => {
                let close = if ch == '[' { ']' } else { ')' };
                self.pos += 1;
                let mut items = Vec::new();
                let mut trailing_comma = false;
                loop {
                    self.skip_ws();
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                    trailing_comma = self.separator(close)?;
                    if !trailing_comma {
                        self.pos += 1;
                        break;
                    }
                }
                Ok(match (ch, items.len(), trailing_comma) {
                    ('[', _, _) => PyValue::List(items),
                    // `(x)` is x in parentheses; `(x,)` and `()` are tuples.
                    ('(', 1, false) => items.pop().expect("one item"),
                    _ => PyValue::Tuple(items),
                })
            }
            '\'' | '"' => self.string(false),
            'u' | 'U' | 'r' | 'R' if matches!(self.c.get(self.pos + 1), Some('\'' | '"')) => {
                self.pos += 1;
                self.string(ch == 'r' || ch == 'R')
            }
            c if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.pos += 1;
                }
                let word: String = self.c[start..self.pos].iter().collect();
                match word.as_str() {
                    "True" => Ok(PyValue::Bool(true)),
                    "False" => Ok(PyValue::Bool(false)),
                    "None" => Ok(PyValue::None),
                    "nan" => Ok(PyValue::Float(f64::NAN)),
                    "inf" => Ok(PyValue::Float(f64::INFINITY)),
                    _ => {
                        self.pos = start;
                        Err(self.err(format!("unknown name `{word}`")))
                    }
                }
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => self.number(),
            c => Err(self.err(format!("unexpected `{c}`"))),
        }
    }

    /// After an item: `,` (returns true, consumed) or the closing bracket (returns false, not
    /// consumed).
    fn separator(&mut self, close: char) -> Result<bool, PyParseError> {
        self.skip_ws();
        match self.peek() {
            Some(',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(c) if c == close => Ok(false),
            Some(c) => Err(self.err(format!("expected `,` or `{close}`, found `{c}`"))),
            None => Err(self.err(format!("unexpected end of input, expected `{close}`"))),
        }
    }

    fn string(&mut self, raw: bool) -> Result<PyValue, PyParseError> {
        let start = self.pos;
        let q = self.c[self.pos];
        self.pos += 1;
        let mut s = String::new();
        loop {
            let Some(ch) = self.peek() else {
                self.pos = start;
                return Err(self.err("string is never closed"));
            };
            self.pos += 1;
            if ch == q {
                return Ok(PyValue::Str(s));
            }
            if ch != '\\' {
                s.push(ch);
                continue;
            }
            let Some(e) = self.peek() else {
                continue;
            };
            self.pos += 1;
            if raw {
                s.push('\\');
                s.push(e);
                continue;
            }
            match e {
                'n' => s.push('\n'),
                't' => s.push('\t'),
                'r' => s.push('\r'),
                '0' => s.push('\0'),
                '\\' | '\'' | '"' => s.push(e),
                '\n' => {}
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = self.c.get(self.pos..self.pos + n).unwrap_or(&[]).iter().collect();
                    let code = u32::from_str_radix(&hex, 16)
                        .ok()
                        .filter(|_| hex.len() == n)
                        .and_then(char::from_u32)
                        .ok_or_else(|| self.err(format!("bad escape `\\{e}{hex}`")))?;
                    s.push(code);
                    self.pos += n;
                }
                // Python keeps unknown escapes verbatim.
                other => {
                    s.push('\\');
                    s.push(other);
                }
            }
        }
    }

    fn number(&mut self) -> Result<PyValue, PyParseError> {
        let start = self.pos;
        if matches!(self.peek(), Some('-' | '+')) {
            self.pos += 1;
            // `-inf`, `-nan`
            if self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                let sign = if self.c[start] == '-' { -1.0 } else { 1.0 };
                return match self.value(0)? {
                    PyValue::Float(x) => Ok(PyValue::Float(sign * x)),
                    _ => {
                        self.pos = start;
                        Err(self.err("sign before a non-number"))
                    }
                };
            }
        }
        let mut is_float = false;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() || c == '_' {
                self.pos += 1;
            } else if c == '.' {
                is_float = true;
                self.pos += 1;
            } else if c == 'e' || c == 'E' {
                is_float = true;
                self.pos += 1;
                if matches!(self.peek(), Some('-' | '+')) {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
        let text: String = self.c[start..self.pos].iter().filter(|&&c| c != '_').collect();
        if !is_float && let Ok(i) = text.parse::<i64>() {
            return Ok(PyValue::Int(i));
        }
        text.parse::<f64>().map(PyValue::Float).map_err(|_| {
            let e = self.err(format!("bad number `{text}`"));
            PyParseError { offset: start, ..e }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pymatgen_style_dict_parses() {
        let v = parse("{'a': [1, -2.5e-3, True, None], \"b\": (1,), 'c': {'d': 'it\\'s'}, 'e': (), 'f': (3)}").unwrap();
        assert_eq!(
            v.get("a").unwrap(),
            &PyValue::List(vec![PyValue::Int(1), PyValue::Float(-2.5e-3), PyValue::Bool(true), PyValue::None])
        );
        assert_eq!(v.get("b").unwrap(), &PyValue::Tuple(vec![PyValue::Int(1)]));
        assert_eq!(v.get("c").unwrap().get("d").unwrap().as_str(), Some("it's"));
        assert_eq!(v.get("e").unwrap(), &PyValue::Tuple(vec![]));
        assert_eq!(v.get("f").unwrap(), &PyValue::Int(3));
    }

    #[test]
    fn trailing_commas_big_ints_and_special_floats() {
        let v = parse("[1, 2,]").unwrap();
        assert_eq!(v.as_seq().unwrap().len(), 2);
        assert_eq!(parse("123456789012345678901234").unwrap().as_f64(), Some(1.2345678901234568e23));
        assert!(parse("nan").unwrap().as_f64().unwrap().is_nan());
        assert_eq!(parse("-inf").unwrap().as_f64(), Some(f64::NEG_INFINITY));
        assert_eq!(parse("'\\x41\\u00e9'").unwrap().as_str(), Some("Aé"));
    }

    #[test]
    fn errors_give_the_character_position() {
        let e = parse("{'a': [1, 2}").unwrap_err();
        assert_eq!(e.offset, 11, "{e}");
        assert!(e.to_string().contains("character 12"));
        assert!(parse("{'a' 1}").unwrap_err().msg.contains("`:`"));
        assert!(parse("{'a': 1} x").is_err());
        assert!(parse("'open").unwrap_err().msg.contains("never closed"));
        assert!(parse("[true]").unwrap_err().msg.contains("unknown name `true`"));
        let deep = "[".repeat(500) + &"]".repeat(500);
        assert!(parse(&deep).is_err());
    }
}
