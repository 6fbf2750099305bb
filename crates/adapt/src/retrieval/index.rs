//! Passages and the dense index: the corpus (`domain.jsonl`) split into passages of at most
//! [`MAX_CHARS`] bytes on line and paragraph boundaries, embedded with the encoder, stored on disk, and
//! searched exactly (cosine = dot product of unit vectors, one GEMM per query batch).
//!
//! Splitting (`split_passages`): lines are appended to the current passage while it stays within
//! `MAX_CHARS` bytes; a blank line ends a passage of at least `MIN_CHARS`; a line longer than
//! `MAX_CHARS` is cut at UTF-8 boundaries. Whitespace-only passages are dropped. Offsets are byte
//! offsets into the document text (half-open `[start, end)`).
//!
//! On-disk format (`octet-dense-index` version 1), a directory with two files, each written to a
//! temporary name and renamed:
//! ```text
//! vectors.bin     b"OCTETIDX"  8 bytes magic
//!                 u32 LE       format version (1)
//!                 u32 LE       header length H
//!                 H bytes      JSON header: {"format": "octet-dense-index", "version": 1,
//!                              "encoder": "bert-L6-C384:<fnv64 of model.safetensors>", "dim": 384,
//!                              "count": N, "max_chars": 512, "precision": "fp32",
//!                              "evalset": "<evalset::VERSION>" (held-out query spans blanked),
//!                              "passages_fnv64": "<fnv64 of passages.jsonl>"}
//!                 N*dim f32 LE unit vectors, passage order
//! passages.jsonl  one JSON object per passage, same order: {"doc": "<corpus id>", "split":
//!                 "train|heldout", "path": "...", "source": "...", "category": "...", "start": s,
//!                 "end": e, "text": "..."}
//! ```
//! Loading checks magic, version, the encoder id against the query encoder's (an index built with
//! another model is refused with both ids named), the vector count and the passages' checksum.

use std::io::Write;
use std::path::Path;

use octet_core::fs::write_atomic;
use octet_core::{Error, Result};
use octet_kernels::{Backend, CpuBackend};
use serde::{Deserialize, Serialize};

use super::encoder::fnv64;

/// Most bytes per passage (ChipNeMo: 512-character passages).
pub const MAX_CHARS: usize = 512;
/// A blank line ends a passage once it has at least this many bytes.
pub const MIN_CHARS: usize = 256;
pub const FORMAT: &str = "octet-dense-index";
pub const VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"OCTETIDX";

/// One passage: where it comes from and its text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    pub doc: String,
    pub split: String,
    pub path: String,
    pub source: String,
    pub category: String,
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// Largest char boundary <= i.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Split `text` into passage spans `[start, end)` (module doc).
pub fn split_passages(text: &str, max_chars: usize, min_chars: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut start, mut end) = (0usize, 0usize);
    let push = |s: usize, e: usize, out: &mut Vec<(usize, usize)>| {
        if e > s && !text[s..e].trim().is_empty() {
            out.push((s, e));
        }
    };
    for line in text.split_inclusive('\n') {
        let (ls, le) = (end, end + line.len());
        if le - start > max_chars && end > start {
            push(start, end, &mut out);
            start = ls;
        }
        if le - start > max_chars {
            // One line longer than a passage: cut it.
            let mut s = start;
            while le - s > max_chars {
                let mut e = floor_boundary(text, s + max_chars);
                if e == s {
                    e = s + text[s..].chars().next().map_or(1, char::len_utf8);
                }
                push(s, e, &mut out);
                s = e;
            }
            start = s;
        }
        end = le;
        if line.trim().is_empty() && end - start >= min_chars {
            push(start, end, &mut out);
            start = end;
        }
    }
    push(start, end, &mut out);
    out
}

/// Header of `vectors.bin` (module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub encoder: String,
    pub dim: usize,
    pub count: usize,
    pub max_chars: usize,
    pub precision: String,
    pub evalset: String,
    pub passages_fnv64: String,
}

/// A dense index in memory.
pub struct DenseIndex {
    pub header: Header,
    /// (N, dim) unit vectors.
    pub vectors: Vec<f32>,
    pub passages: Vec<Passage>,
}

impl DenseIndex {
    /// Write `dir/vectors.bin` and `dir/passages.jsonl` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut pj = Vec::new();
        for p in &self.passages {
            serde_json::to_writer(&mut pj, p).map_err(|e| Error::Other(e.to_string()))?;
            pj.push(b'\n');
        }
        let mut h = self.header.clone();
        h.passages_fnv64 = format!("{:016x}", fnv64(&pj));
        let hj = serde_json::to_vec(&h).map_err(|e| Error::Other(e.to_string()))?;
        let mut vb = Vec::with_capacity(16 + hj.len() + self.vectors.len() * 4);
        vb.extend_from_slice(MAGIC);
        vb.extend_from_slice(&VERSION.to_le_bytes());
        vb.extend_from_slice(&(hj.len() as u32).to_le_bytes());
        vb.write_all(&hj).expect("vec write");
        for v in &self.vectors {
            vb.extend_from_slice(&v.to_le_bytes());
        }
        write_atomic(&dir.join("passages.jsonl"), &pj)?;
        write_atomic(&dir.join("vectors.bin"), &vb)
    }

    /// Read an index; `encoder` (when given) must equal the header's encoder id.
    pub fn load(dir: &Path, encoder: Option<&str>) -> Result<Self> {
        let vp = dir.join("vectors.bin");
        let b = std::fs::read(&vp).map_err(|e| Error::io(&vp, e))?;
        if b.len() < 16 || &b[..8] != MAGIC {
            return Err(Error::format(&vp, "magic", "not an octet dense index (expected OCTETIDX)"));
        }
        let ver = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if ver != VERSION {
            return Err(Error::format(
                &vp,
                "version",
                format!("format version {ver}, this build reads {VERSION}: rebuild with `octet adapt index`"),
            ));
        }
        let hl = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")) as usize;
        let hb = b.get(16..16 + hl).ok_or_else(|| Error::format(&vp, "header", "truncated"))?;
        let header: Header = serde_json::from_slice(hb).map_err(|e| Error::format(&vp, "header", e.to_string()))?;
        if header.format != FORMAT {
            return Err(Error::format(&vp, "format", format!("`{}`, expected `{FORMAT}`", header.format)));
        }
        if let Some(e) = encoder
            && e != header.encoder
        {
            return Err(Error::format(
                &vp,
                "encoder",
                format!(
                    "index built with encoder `{}`, but the query encoder is `{e}`: rebuild the index with this \
                     model (`octet adapt index --model ...`) or query with the model it was built with",
                    header.encoder
                ),
            ));
        }
        let body = &b[16 + hl..];
        if body.len() != header.count * header.dim * 4 {
            return Err(Error::format(
                &vp,
                "vectors",
                format!("{} bytes, expected count {} x dim {} x 4", body.len(), header.count, header.dim),
            ));
        }
        let vectors = body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let pp = dir.join("passages.jsonl");
        let pb = std::fs::read(&pp).map_err(|e| Error::io(&pp, e))?;
        if format!("{:016x}", fnv64(&pb)) != header.passages_fnv64 {
            return Err(Error::format(&pp, "checksum", "does not match vectors.bin (written by another build?)"));
        }
        let passages = pb
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_slice(l).map_err(|e| Error::format(&pp, format!("line {}", i + 1), e.to_string()))
            })
            .collect::<Result<Vec<Passage>>>()?;
        if passages.len() != header.count {
            return Err(Error::format(
                &pp,
                "count",
                format!("{} passages, header says {}", passages.len(), header.count),
            ));
        }
        Ok(DenseIndex { header, vectors, passages })
    }

    /// Exact top-k by cosine for each query (Q, dim) unit vectors: per query, (passage, score) best
    /// first. Scores = Q V^T, one GEMM per block of queries.
    pub fn search(&self, queries: &[f32], k: usize) -> Vec<Vec<(usize, f32)>> {
        let d = self.header.dim;
        let n = self.header.count;
        let nq = queries.len() / d;
        let mut out = Vec::with_capacity(nq);
        const BLOCK: usize = 64;
        let mut scores = vec![0f32; BLOCK.min(nq.max(1)) * n];
        for q0 in (0..nq).step_by(BLOCK) {
            let m = BLOCK.min(nq - q0);
            CpuBackend.matmul_forward(&mut scores[..m * n], &queries[q0 * d..][..m * d], &self.vectors, None, m, d, n);
            for row in scores[..m * n].chunks(n) {
                out.push(top_k(row, k));
            }
        }
        out
    }
}

/// Indices and values of the k largest scores, best first (ties: lower index first).
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(idx.len());
    let cmp = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, scores[i])).collect()
}
