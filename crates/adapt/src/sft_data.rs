//! Building SFT sets from the corpus (never from VerilogEval, which is evaluation only) and the n-gram
//! overlap check of any training set against the VerilogEval prompts and references.
//!
//! Domain set (`domain_examples`), from `split = train` documents only:
//! - module tasks: every `module NAME ... endmodule` of a design file that stands alone (at most
//!   `max_module_bytes`, no package import `::`, no backtick directive or macro, and — when iverilog is
//!   installed and `compile_check` is on — `iverilog -g2012` accepts it alone); the user turn is the
//!   comment block right above the module (licence lines dropped) and the module's header renamed
//!   `TopModule`, wrapped in the evaluation's instruction (`eval::verilog::instruction`, the harness's
//!   own words, not a problem); the answer is the module renamed `TopModule` in a ```verilog block.
//! - documentation questions: a Markdown section (`#`.. heading, then its first paragraph of 80..800
//!   bytes) gives "What does the <project> documentation (<path>) say about <heading>?" -> the paragraph.
//!
//! General set (`general_examples`): the Python FAQ (`faq/*.rst` of the replay set's training split):
//! each section title that ends with `?` is the question, its text up to the next title (cut at a
//! paragraph end near `max_answer_bytes`) the answer.
//!
//! Overlap (`Overlap`): lower-cased word n-grams (words = runs of ASCII letters, digits and `_`) of
//! every VerilogEval prompt and reference solution; an item of a training set overlaps when any of its
//! n-grams is among them. The report counts items, overlapping items, the distinct shared n-grams and
//! the problems they come from, with a few examples. `decontaminate` drops overlapping examples.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use octet_core::Result;
use serde::Serialize;

use crate::corpus::{Category, Document, Split, hash64};
use crate::eval::verilog::{self, Problem};
use crate::sft::{Conversation, Message};

/// Limits of the builder.
#[derive(Clone, Debug, Serialize)]
pub struct BuildConfig {
    pub max_module_bytes: usize,
    pub max_modules: usize,
    pub max_doc_questions: usize,
    pub max_faq: usize,
    pub max_answer_bytes: usize,
    /// Keep only modules iverilog compiles alone (skipped when iverilog is missing).
    pub compile_check: bool,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            max_module_bytes: 1500,
            max_modules: 800,
            max_doc_questions: 300,
            max_faq: 400,
            max_answer_bytes: 1200,
            compile_check: true,
        }
    }
}

/// `module NAME` at the start of a line: (byte offset of `module`, name).
fn module_starts(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("module ") {
            let name: String = rest.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push((at + line.len() - trimmed.len(), name));
            }
        }
        at += line.len();
    }
    out
}

/// The `//` comment lines right above byte `at` (licence and separator lines dropped).
fn comment_above(text: &str, at: usize) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in text[..at].lines().rev() {
        let t = line.trim();
        if t.is_empty() && lines.is_empty() {
            continue;
        }
        match t.strip_prefix("//") {
            Some(c) => lines.push(c.trim()),
            None => break,
        }
        if lines.len() >= 20 {
            break;
        }
    }
    lines.reverse();
    let noise = ["copyright", "licen", "spdx", "all rights"];
    lines
        .into_iter()
        .filter(|l| {
            let low = l.to_lowercase();
            !noise.iter().any(|n| low.contains(n)) && l.chars().any(|c| c.is_alphanumeric())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `module NAME` renamed `module TopModule` (the first occurrence only).
fn rename_top(module: &str, name: &str) -> String {
    module.replacen(&format!("module {name}"), "module TopModule", 1)
}

/// Module tasks and documentation questions from the domain training documents (module doc).
pub fn domain_examples(domain: &[Document], cfg: &BuildConfig, say: &mut dyn FnMut(String)) -> Vec<Conversation> {
    let check = cfg.compile_check && verilog::check_tools().is_ok();
    if cfg.compile_check && !check {
        say("iverilog not installed: modules are not compile-checked".into());
    }
    let mut modules = Vec::new();
    let (mut seen, mut failed) = (BTreeSet::new(), 0usize);
    let train = domain.iter().filter(|d| d.split == Split::Train);
    for d in train.clone().filter(|d| d.category == Category::Design) {
        for (at, name) in module_starts(&d.text) {
            if modules.len() >= cfg.max_modules {
                break;
            }
            let Some(end) = d.text[at..].find("endmodule").map(|e| at + e + "endmodule".len()) else { continue };
            let m = &d.text[at..end];
            if m.len() > cfg.max_module_bytes || m.contains("::") || m.contains('`') || m[6..].contains("\nmodule ") {
                continue;
            }
            let top = rename_top(m, &name);
            // Identical modules (copies across packages) once.
            if !seen.insert(hash64(top.as_bytes())) {
                continue;
            }
            if check && !verilog::compiles_alone(&top, Duration::from_secs(10)).unwrap_or(false) {
                failed += 1;
                continue;
            }
            let header_end = top.find(");").map_or(top.len().min(400), |e| e + 2);
            let comment = comment_above(&d.text, at);
            let mut spec = String::new();
            if comment.len() >= 20 {
                spec += &format!("{comment}\n\n");
            }
            spec += &format!("Implement this module interface:\n\n{}", &top[..header_end]);
            modules.push(Conversation::qa(verilog::instruction(&spec), format!("```verilog\n{top}\n```")));
        }
    }
    say(format!("{} module tasks ({} rejected by iverilog)", modules.len(), failed));
    let mut docs = Vec::new();
    for d in train.filter(|d| d.category == Category::Documentation && d.path.ends_with(".md")) {
        let project = d.source.trim_start_matches("pythondata-").to_string();
        let lines: Vec<&str> = d.text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if docs.len() >= cfg.max_doc_questions {
                break;
            }
            let Some(h) = l.strip_prefix('#') else { continue };
            let heading = h.trim_start_matches('#').trim();
            if heading.len() < 4 {
                continue;
            }
            // The first paragraph after the heading.
            let para: Vec<&str> = lines[i + 1..]
                .iter()
                .skip_while(|x| x.trim().is_empty())
                .take_while(|x| !x.trim().is_empty() && !x.starts_with('#'))
                .copied()
                .collect();
            let p = para.join("\n");
            if (80..=800).contains(&p.len()) && !p.starts_with('|') && !p.starts_with("```") {
                let q = format!("What does the {project} documentation ({}) say about \"{heading}\"?", d.path);
                docs.push(Conversation::qa(q, p));
            }
        }
    }
    say(format!("{} documentation questions", docs.len()));
    modules.extend(docs);
    modules
}

/// `s` cut at the last paragraph end at or before `max` bytes (else at a character boundary).
fn cut_paragraphs(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    match s[..at].rfind("\n\n") {
        Some(p) if p > max / 3 => &s[..p],
        _ => &s[..at],
    }
}

/// Python FAQ questions and answers from the replay set's training documents (module doc).
pub fn general_examples(general: &[Document], cfg: &BuildConfig) -> Vec<Conversation> {
    let mut out = Vec::new();
    let underline = |l: &str| l.len() >= 3 && l.chars().all(|c| "=-~^*".contains(c));
    for d in general.iter().filter(|d| d.split == Split::Train && d.path.starts_with("faq/")) {
        let lines: Vec<&str> = d.text.lines().collect();
        let titles: Vec<usize> = (0..lines.len().saturating_sub(1))
            .filter(|&i| !lines[i].trim().is_empty() && underline(lines[i + 1].trim()))
            .collect();
        for (k, &i) in titles.iter().enumerate() {
            let q = lines[i].trim();
            if !q.ends_with('?') || out.len() >= cfg.max_faq {
                continue;
            }
            let end = titles.get(k + 1).copied().unwrap_or(lines.len());
            let body = lines[i + 2..end].join("\n");
            let a = cut_paragraphs(body.trim(), cfg.max_answer_bytes).trim();
            if a.len() >= 40 && !a.starts_with("See the next question") {
                out.push(Conversation::qa(q, a));
            }
        }
    }
    out
}

/// Lower-cased words (runs of ASCII alphanumerics and `_`).
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn ngram_hashes(s: &str, n: usize) -> Vec<(u64, usize)> {
    let w = words(s);
    if w.len() < n {
        return vec![];
    }
    (0..=w.len() - n).map(|i| (hash64(w[i..i + n].join(" ").as_bytes()), i)).collect()
}

/// The n-grams of VerilogEval's prompts and references.
pub struct Overlap {
    pub n: usize,
    /// n-gram hash -> the problems it occurs in.
    grams: HashMap<u64, BTreeSet<String>>,
}

/// One overlap report (one training set).
#[derive(Clone, Debug, Serialize)]
pub struct OverlapReport {
    pub set: String,
    pub n: usize,
    pub items: usize,
    pub overlapping_items: usize,
    pub shared_ngrams: usize,
    /// Problems (name) with at least one n-gram in the set, and how many of its n-grams.
    pub problems: BTreeMap<String, usize>,
    /// A few shared n-grams with the item they were found in.
    pub examples: Vec<(String, String)>,
}

impl Overlap {
    pub fn of_problems(problems: &[Problem], n: usize) -> Overlap {
        let mut grams: HashMap<u64, BTreeSet<String>> = HashMap::new();
        for p in problems {
            for text in [&p.prompt, &p.reference] {
                for (h, _) in ngram_hashes(text, n) {
                    grams.entry(h).or_default().insert(p.name.clone());
                }
            }
        }
        Overlap { n, grams }
    }

    /// Whether `text` shares an n-gram with a problem.
    pub fn hits(&self, text: &str) -> bool {
        ngram_hashes(text, self.n).iter().any(|(h, _)| self.grams.contains_key(h))
    }

    /// The report of `items` (name, text).
    pub fn report<'a>(&self, set: &str, items: impl Iterator<Item = (String, &'a str)>) -> OverlapReport {
        let mut r = OverlapReport {
            set: set.into(),
            n: self.n,
            items: 0,
            overlapping_items: 0,
            shared_ngrams: 0,
            problems: BTreeMap::new(),
            examples: vec![],
        };
        let mut shared: BTreeSet<u64> = BTreeSet::new();
        for (name, text) in items {
            r.items += 1;
            let mut hit = false;
            let w = words(text);
            for (h, i) in ngram_hashes(text, self.n) {
                if let Some(ps) = self.grams.get(&h) {
                    hit = true;
                    if shared.insert(h) {
                        for p in ps {
                            *r.problems.entry(p.clone()).or_default() += 1;
                        }
                        if r.examples.len() < 5 {
                            r.examples.push((name.clone(), w[i..i + self.n].join(" ")));
                        }
                    }
                }
            }
            r.overlapping_items += usize::from(hit);
        }
        r.shared_ngrams = shared.len();
        r
    }
}

/// The whole text of a conversation (every message).
pub fn conversation_text(c: &Conversation) -> String {
    c.messages.iter().map(|m: &Message| m.content.as_str()).collect::<Vec<_>>().join("\n")
}

/// Drop the conversations that share an n-gram with a VerilogEval problem; returns how many went.
pub fn decontaminate(convs: &mut Vec<Conversation>, o: &Overlap) -> usize {
    let before = convs.len();
    convs.retain(|c| !o.hits(&conversation_text(c)));
    before - convs.len()
}

/// Training documents of a corpus file as overlap items.
pub fn training_items(docs: &[Document]) -> impl Iterator<Item = (String, &str)> {
    docs.iter().filter(|d| d.split == Split::Train).map(|d| (format!("{}/{}", d.source, d.path), d.text.as_str()))
}

/// Read a conversations file as overlap items.
pub fn conversation_items(path: &Path) -> Result<Vec<(String, String)>> {
    Ok(crate::sft::read_conversations(path)?
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("{}:{}", path.display(), i + 1), conversation_text(c)))
        .collect())
}
