//! The lexical baseline: BM25 (tantivy's, k1 = 1.2, b = 0.75) over the same passages as the dense
//! index, in an in-RAM tantivy index built with one writer thread (one segment, deterministic ranks).
//! A query is tokenised with the text field's analyzer (tantivy `default`: split on non-alphanumerics,
//! lower-case, drop tokens over 40 bytes) and run as an OR of its distinct terms, so any text is a valid
//! query (no query-syntax parsing).

use octet_core::{Error, Result};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, STORED, Schema, TEXT, Value};
use tantivy::{Index, IndexReader, IndexWriter, TantivyDocument, Term};

fn err(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("tantivy: {e}"))
}

/// A BM25 index over passages 0..N.
pub struct Bm25 {
    index: Index,
    reader: IndexReader,
    text: Field,
    id: Field,
}

impl Bm25 {
    /// Index `texts` (passage i = the i-th text).
    pub fn build<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut sb = Schema::builder();
        let text = sb.add_text_field("text", TEXT);
        let id = sb.add_u64_field("id", STORED);
        let index = Index::create_in_ram(sb.build());
        let mut w: IndexWriter = index.writer_with_num_threads(1, 200_000_000).map_err(err)?;
        for (i, t) in texts.into_iter().enumerate() {
            let mut d = TantivyDocument::default();
            d.add_text(text, t);
            d.add_u64(id, i as u64);
            w.add_document(d).map_err(err)?;
        }
        w.commit().map_err(err)?;
        let reader = index.reader().map_err(err)?;
        Ok(Bm25 { index, reader, text, id })
    }

    /// Top-k passages for a free-text query, best first: (passage index, BM25 score).
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<(usize, f32)>> {
        let mut an = self.index.tokenizer_for_field(self.text).map_err(err)?;
        let mut terms = Vec::new();
        let mut ts = an.token_stream(query);
        while ts.advance() {
            let t = ts.token().text.clone();
            if !terms.contains(&t) {
                terms.push(t);
            }
        }
        let clauses: Vec<(Occur, Box<dyn Query>)> = terms
            .iter()
            .map(|t| {
                let q = TermQuery::new(Term::from_field_text(self.text, t), IndexRecordOption::WithFreqs);
                (Occur::Should, Box::new(q) as Box<dyn Query>)
            })
            .collect();
        if clauses.is_empty() {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let top = searcher.search(&BooleanQuery::new(clauses), &TopDocs::with_limit(k)).map_err(err)?;
        top.into_iter()
            .map(|(score, addr)| {
                let d: TantivyDocument = searcher.doc(addr).map_err(err)?;
                let i = d.get_first(self.id).and_then(|v| v.as_u64()).ok_or_else(|| err("document without id"))?;
                Ok((i as usize, score))
            })
            .collect()
    }
}
