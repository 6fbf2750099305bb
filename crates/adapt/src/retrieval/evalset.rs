//! The retrieval evaluation set: (query, target span) pairs made automatically from documents, the
//! blanking of query text in the indexed documents, the hit rule, and the metrics with bootstrap
//! confidence intervals.
//!
//! Pairs (`pairs_of`, deterministic, per document; version [`VERSION`]):
//! - Markdown (`.md`): a heading (`#`..`######`, outside code fences) of at least 2 words and 8
//!   characters, not a generic one ([`GENERIC_HEADINGS`]), is the query; its section (to the next
//!   heading) is the target, when the section has at least [`MIN_TARGET`] non-space bytes.
//! - HDL (`.sv .svh .v .vh`) and Tcl (`.tcl .sdc .xdc`): a block of consecutive comment lines (`//`,
//!   resp. `#`) with at least 4 words once licence/banner lines are dropped, and no `;`, ` = ` or `<=`
//!   (commented-out code), directly followed by code, is the query; the code is the target: up to
//!   `endmodule` when it starts with `module` (kind `module`, the module's header comment), else to the
//!   next blank or comment line (kind `comment`).
//!
//! Queries are cut to [`MAX_QUERY`] bytes and targets to [`MAX_TARGET`] bytes; at most
//! [`MAX_PER_DOC`] pairs per document, evenly spaced over its pairs.
//!
//! Held-out documents are indexed with every query span replaced by spaces (newlines kept, so offsets
//! do not move): the query text is not in the index, and the task is not a verbatim lookup. The search
//! runs over all passages (training and held-out documents). A query is hit at rank r when the r-th
//! retrieved passage comes from the target's document and overlaps the target span. Metrics: hit@1,
//! hit@5, hit@8 (ChipNeMo's top-8) and MRR@10; 95% intervals from [`BOOTSTRAP`] resamples of the
//! queries (percentile bootstrap, fixed seed).

use serde::{Deserialize, Serialize};

pub const VERSION: &str = "octet-evalset-1";
pub const MIN_TARGET: usize = 120;
pub const MAX_TARGET: usize = 2048;
pub const MAX_QUERY: usize = 400;
pub const MAX_PER_DOC: usize = 12;
pub const BOOTSTRAP: usize = 1000;
/// Headings too generic to name a section.
pub const GENERIC_HEADINGS: &[&str] = &[
    "overview",
    "introduction",
    "description",
    "features",
    "references",
    "table of contents",
    "contents",
    "summary",
    "example",
    "examples",
    "usage",
    "notes",
    "license",
    "registers",
    "register table",
    "design details",
    "theory of operation",
    "programmers guide",
    "programmer's guide",
    "hardware interfaces",
    "block diagram",
    "signals",
    "parameters",
    "compatibility",
];

/// One pair in a document: byte spans into its text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    /// Corpus document id.
    pub doc: String,
    pub path: String,
    /// `heading`, `module`, `comment` or `hand`.
    pub kind: String,
    pub query: String,
    /// Span of the query text in the document (blanked in the index); (0, 0) for hand-written queries.
    pub query_span: (usize, usize),
    pub target: (usize, usize),
}

fn ext(path: &str) -> String {
    path.rsplit('.').next().unwrap_or("").to_ascii_lowercase()
}

/// Lines with their byte offsets `(start, end_without_newline)`.
fn lines(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut s = 0;
    for l in text.split_inclusive('\n') {
        let body = l.trim_end_matches(['\n', '\r']);
        out.push((s, s + body.len()));
        s += l.len();
    }
    out
}

fn words(s: &str) -> usize {
    s.split_whitespace().filter(|w| w.chars().any(char::is_alphanumeric)).count()
}

fn clip(s: &str, n: usize) -> String {
    let mut e = n.min(s.len());
    while !s.is_char_boundary(e) {
        e -= 1;
    }
    s[..e].to_string()
}

fn non_space(s: &str) -> usize {
    s.bytes().filter(|b| !b.is_ascii_whitespace()).count()
}

/// A licence, banner or separator line (not a description).
fn boilerplate(l: &str) -> bool {
    let low = l.to_ascii_lowercase();
    ["copyright", "licensed under", "license", "spdx", "solderpad", "apache", "all rights reserved", "see license"]
        .iter()
        .any(|k| low.contains(k))
        || !l.chars().any(char::is_alphanumeric)
}

/// A raw pair: kind, query, query span, target span.
pub type RawPair = (String, String, (usize, usize), (usize, usize));

/// The pairs of one document (module doc), in text order, before the per-document cap.
pub fn pairs_of(text: &str, path: &str) -> Vec<RawPair> {
    let e = ext(path);
    let ls = lines(text);
    let mut out = Vec::new();
    let end_cap = |s: usize, e: usize| (s, e.min(s + MAX_TARGET));
    if e == "md" {
        let mut fence = false;
        let heads: Vec<(usize, String)> = ls
            .iter()
            .enumerate()
            .filter_map(|(i, &(s, e))| {
                let l = &text[s..e];
                if l.trim_start().starts_with("```") {
                    fence = !fence;
                }
                let h = l.trim_start_matches('#');
                (!fence && l.starts_with('#') && l.len() - h.len() <= 6 && h.starts_with(' '))
                    .then(|| (i, h.to_string()))
            })
            .collect();
        for (k, (i, h)) in heads.iter().enumerate() {
            let q: String = h.replace(['`', '*', '_'], "").split_whitespace().collect::<Vec<_>>().join(" ");
            if words(&q) < 2 || q.len() < 8 || GENERIC_HEADINGS.contains(&q.to_ascii_lowercase().as_str()) {
                continue;
            }
            let (qs, qe) = ls[*i];
            let ts = ls.get(i + 1).map_or(text.len(), |l| l.0);
            let te = heads.get(k + 1).map_or(text.len(), |(j, _)| ls[*j].0);
            if te > ts && non_space(&text[ts..te]) >= MIN_TARGET {
                out.push(("heading".into(), clip(&q, MAX_QUERY), (qs, qe), end_cap(ts, te)));
            }
        }
        return out;
    }
    let marker = match e.as_str() {
        "sv" | "svh" | "v" | "vh" => "//",
        "tcl" | "sdc" | "xdc" => "#",
        _ => return out,
    };
    let is_comment = |i: usize| text[ls[i].0..ls[i].1].trim_start().starts_with(marker);
    let blank = |i: usize| text[ls[i].0..ls[i].1].trim().is_empty();
    let mut i = 0;
    while i < ls.len() {
        if !is_comment(i) {
            i += 1;
            continue;
        }
        let b0 = i;
        while i < ls.len() && is_comment(i) {
            i += 1;
        }
        // Comment block b0..i, directly followed by code at line i.
        if i >= ls.len() || blank(i) {
            continue;
        }
        let desc: Vec<String> = (b0..i)
            .map(|j| {
                text[ls[j].0..ls[j].1]
                    .trim_start()
                    .trim_start_matches(marker)
                    .trim_start_matches('!')
                    .trim()
                    .to_string()
            })
            .filter(|l| !boilerplate(l))
            .collect();
        let q = desc.join(" ").split_whitespace().collect::<Vec<_>>().join(" ");
        // Commented-out code is not a description.
        if words(&q) < 4 || q.contains(';') || q.contains(" = ") || q.contains("<=") {
            continue;
        }
        let ts = ls[i].0;
        let code = text[ls[i].0..ls[i].1].trim_start();
        let (kind, te) = if code.starts_with("module ") || code.starts_with("module\t") {
            let te = text[ts..].find("endmodule").map_or(text.len(), |p| ts + p + "endmodule".len());
            ("module", te)
        } else {
            let mut j = i;
            while j < ls.len() && !blank(j) && !is_comment(j) {
                j += 1;
            }
            ("comment", if j < ls.len() { ls[j].0 } else { text.len() })
        };
        if non_space(&text[ts..te]) >= MIN_TARGET {
            out.push((kind.into(), clip(&q, MAX_QUERY), (ls[b0].0, ls[i - 1].1), end_cap(ts, te)));
        }
    }
    out
}

/// The pairs of a document after the per-document cap (evenly spaced picks).
pub fn document_pairs(doc: &str, path: &str, text: &str) -> Vec<Pair> {
    let all = pairs_of(text, path);
    let n = all.len();
    let keep: Vec<usize> =
        if n <= MAX_PER_DOC { (0..n).collect() } else { (0..MAX_PER_DOC).map(|k| k * n / MAX_PER_DOC).collect() };
    keep.into_iter()
        .map(|k| {
            let (kind, query, qs, t) = all[k].clone();
            Pair { doc: doc.into(), path: path.into(), kind, query, query_span: qs, target: t }
        })
        .collect()
}

/// `text` with every span's bytes except newlines replaced by spaces (offsets unchanged).
pub fn blank(text: &str, spans: &[(usize, usize)]) -> String {
    let mut b = text.as_bytes().to_vec();
    for &(s, e) in spans {
        for x in &mut b[s..e] {
            if *x != b'\n' {
                *x = b' ';
            }
        }
    }
    // Spans start and end on char boundaries and every byte in them became ASCII.
    String::from_utf8(b).expect("blanking keeps UTF-8")
}

/// Retrieval metrics over queries.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Metrics {
    pub queries: usize,
    pub hit1: f64,
    pub hit5: f64,
    pub hit8: f64,
    pub mrr10: f64,
    /// 95% bootstrap intervals [low, high] for each metric.
    pub hit1_ci: (f64, f64),
    pub hit5_ci: (f64, f64),
    pub hit8_ci: (f64, f64),
    pub mrr10_ci: (f64, f64),
}

/// Rank (1-based) of the first hit in `ranked` (passage indices, best first), if any.
pub fn first_hit(pair: &Pair, ranked: &[usize], passage: impl Fn(usize) -> (String, usize, usize)) -> Option<usize> {
    ranked
        .iter()
        .position(|&p| {
            let (doc, s, e) = passage(p);
            doc == pair.doc && s < pair.target.1 && e > pair.target.0
        })
        .map(|r| r + 1)
}

/// Metrics from the first-hit ranks of each query, with bootstrap intervals (module doc).
pub fn metrics(ranks: &[Option<usize>]) -> Metrics {
    let per = |r: &Option<usize>| -> [f64; 4] {
        let h = |k: usize| r.is_some_and(|r| r <= k) as u8 as f64;
        [h(1), h(5), h(8), r.filter(|&r| r <= 10).map_or(0.0, |r| 1.0 / r as f64)]
    };
    let vals: Vec<[f64; 4]> = ranks.iter().map(per).collect();
    let n = vals.len();
    let mean = |idx: &mut dyn Iterator<Item = usize>, k: usize| -> f64 {
        let (s, c) = idx.fold((0.0, 0usize), |(s, c), i| (s + vals[i][k], c + 1));
        if c == 0 { 0.0 } else { s / c as f64 }
    };
    let point: Vec<f64> = (0..4).map(|k| mean(&mut (0..n), k)).collect();
    let mut rng = octet_core::Rng::new(20231101);
    let mut boots: Vec<[f64; 4]> = Vec::with_capacity(BOOTSTRAP);
    for _ in 0..BOOTSTRAP {
        let idx: Vec<usize> = (0..n).map(|_| (rng.next_u64() % n.max(1) as u64) as usize).collect();
        let mut m = [0.0; 4];
        for (k, mk) in m.iter_mut().enumerate() {
            *mk = mean(&mut idx.iter().copied(), k);
        }
        boots.push(m);
    }
    let ci = |k: usize| -> (f64, f64) {
        if n == 0 {
            return (0.0, 0.0);
        }
        let mut v: Vec<f64> = boots.iter().map(|b| b[k]).collect();
        v.sort_by(f64::total_cmp);
        (v[BOOTSTRAP * 25 / 1000], v[BOOTSTRAP * 975 / 1000 - 1])
    };
    Metrics {
        queries: n,
        hit1: point[0],
        hit5: point[1],
        hit8: point[2],
        mrr10: point[3],
        hit1_ci: ci(0),
        hit5_ci: ci(1),
        hit8_ci: ci(2),
        mrr10_ci: ci(3),
    }
}
