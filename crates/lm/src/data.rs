//! Data: text -> tokens with a HuggingFace byte-level BPE tokenizer (trained here or loaded from a
//! `tokenizer.json`), token shards in a small documented binary format read by memory map, and
//! deterministic batches.
//!
//! Shard format (`*.bin`, little endian):
//! ```text
//! offset  size  field
//! 0       8     magic  b"OCTETTOK"
//! 8       4     version u32 = 1
//! 12      4     token width in bytes u32: 2 (u16) or 4 (u32)
//! 16      8     count u64: number of tokens
//! 24      4     vocab_size u32: every token is < vocab_size
//! 28      4     reserved u32 = 0
//! 32      ...   count tokens
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use octet_core::{Error, Result, Rng};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::{AddedToken, Tokenizer};

pub const SHARD_MAGIC: &[u8; 8] = b"OCTETTOK";
pub const SHARD_VERSION: u32 = 1;
const HEADER: usize = 32;
/// Separates documents; always token id 0 of trained tokenizers.
pub const END_OF_TEXT: &str = "<|endoftext|>";

use octet_core::fs::write_atomic;

/// A byte-level BPE tokenizer (GPT-2 style): any UTF-8 text encodes, decode(encode(x)) == x.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    /// Train a byte-level BPE with `vocab_size` entries on `text` (256 byte symbols + merges +
    /// the end-of-text token).
    pub fn train(text: &str, vocab_size: usize) -> Result<Self> {
        if vocab_size < 300 {
            return Err(Error::config("vocab_size", format!("{vocab_size} is too small for byte-level BPE (>= 300)")));
        }
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .build();
        let mut trainer: TrainerWrapper = trainer.into();
        let mut tok = Tokenizer::new(BPE::default());
        let bl = tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true);
        tok.with_pre_tokenizer(Some(bl));
        tok.with_decoder(Some(ByteLevel::new(false, true, true)));
        // Train on paragraphs: BPE counts words, so chunk boundaries barely matter.
        let chunks: Vec<&str> = text.split_inclusive("\n\n").collect();
        tok.train(&mut trainer, chunks.into_iter())
            .map_err(|e| Error::Other(format!("tokenizer training failed: {e}")))?;
        Ok(TextTokenizer { inner: tok })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| Error::format(path, "tokenizer", e.to_string()))?;
        Ok(TextTokenizer { inner })
    }

    /// A tokenizer built elsewhere (e.g. from a GGUF file's metadata).
    pub fn from_tokenizer(inner: Tokenizer) -> Self {
        TextTokenizer { inner }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.inner.to_string(false).map_err(|e| Error::Other(format!("tokenizer serialise: {e}")))?;
        write_atomic(path, json.as_bytes())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Other(format!("tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Other(format!("detokenize: {e}")))
    }
}

/// Write a token shard atomically (u16 when the vocabulary fits, else u32).
pub fn write_shard(path: &Path, tokens: &[u32], vocab_size: usize) -> Result<()> {
    let width: usize = if vocab_size <= 1 << 16 { 2 } else { 4 };
    let mut buf = Vec::with_capacity(HEADER + tokens.len() * width);
    buf.extend_from_slice(SHARD_MAGIC);
    buf.extend_from_slice(&SHARD_VERSION.to_le_bytes());
    buf.extend_from_slice(&(width as u32).to_le_bytes());
    buf.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    buf.extend_from_slice(&(vocab_size as u32).to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    for &t in tokens {
        assert!((t as usize) < vocab_size, "token {t} >= vocab {vocab_size}");
        if width == 2 {
            buf.extend_from_slice(&(t as u16).to_le_bytes());
        } else {
            buf.extend_from_slice(&t.to_le_bytes());
        }
    }
    write_atomic(path, &buf)
}

/// A memory-mapped, validated token shard.
pub struct Shard {
    pub path: PathBuf,
    map: Mmap,
    width: usize,
    len: usize,
    pub vocab_size: usize,
}

impl Shard {
    /// Open and validate header, size and every token id (a corrupt shard fails here, not mid-run).
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; octet writes shards by rename, never in place.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        let bad = |field: &str, msg: String| Err(Error::format(path, field, msg));
        if map.len() < HEADER {
            return bad("header", format!("file has {} bytes, a shard header needs {HEADER}", map.len()));
        }
        if &map[0..8] != SHARD_MAGIC {
            return bad(
                "magic",
                format!(
                    "expected {:?}, found {:?}",
                    String::from_utf8_lossy(SHARD_MAGIC),
                    String::from_utf8_lossy(&map[0..8])
                ),
            );
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != SHARD_VERSION {
            return bad("version", format!("expected {SHARD_VERSION}, found {version}"));
        }
        let width = u32_at(12) as usize;
        if width != 2 && width != 4 {
            return bad("dtype", format!("token width must be 2 or 4 bytes, found {width}"));
        }
        let count = u64::from_le_bytes(map[16..24].try_into().unwrap());
        let vocab_size = u32_at(24) as usize;
        // Checked: a count whose byte size wraps (2^63 + 2 tokens of 2 bytes "is" 4 bytes) would
        // pass an unchecked comparison and index past the map.
        let expect = usize::try_from(count).ok().and_then(|n| n.checked_mul(width)?.checked_add(HEADER));
        let len = match expect {
            Some(e) if e == map.len() => count as usize,
            _ => {
                return bad(
                    "count",
                    format!(
                        "header says {count} tokens of {width} bytes ({} bytes), file has {} bytes",
                        expect.map_or("more than usize::MAX".to_string(), |e| e.to_string()),
                        map.len()
                    ),
                );
            }
        };
        let s = Shard { path: path.to_path_buf(), map, width, len, vocab_size };
        if let Some(i) = (0..len).find(|&i| s.get(i) as usize >= vocab_size) {
            return bad("tokens", format!("token {i} is {} >= vocab_size {vocab_size}", s.get(i)));
        }
        Ok(s)
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    #[inline]
    pub fn get(&self, i: usize) -> u32 {
        let o = HEADER + i * self.width;
        if self.width == 2 {
            u16::from_le_bytes([self.map[o], self.map[o + 1]]) as u32
        } else {
            u32::from_le_bytes(self.map[o..o + 4].try_into().unwrap())
        }
    }
    /// Copy tokens [start, start + n) into `out`.
    pub fn read(&self, start: usize, n: usize, out: &mut Vec<u32>) {
        out.extend((start..start + n).map(|i| self.get(i)));
    }
}

/// Deterministic batches of (inputs, targets), each B rows of T tokens, targets shifted by one.
/// Training batch `step` depends only on (seed, step), so a resumed run sees the same data.
pub struct Batches {
    pub shard: Shard,
    pub b: usize,
    pub t: usize,
    pub seed: u64,
}

impl Batches {
    pub fn new(shard: Shard, b: usize, t: usize, seed: u64) -> Result<Self> {
        if shard.len() < t + 1 {
            return Err(Error::format(
                &shard.path,
                "count",
                format!("{} tokens is too few for sequences of {t} (+1)", shard.len()),
            ));
        }
        Ok(Batches { shard, b, t, seed })
    }
    /// Random windows for training step `step`.
    pub fn train_batch(&self, step: usize) -> (Vec<u32>, Vec<u32>) {
        let mut rng = Rng::new(self.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let span = self.shard.len() - self.t; // window start in [0, len - t - 1]
        let starts: Vec<usize> = (0..self.b).map(|_| rng.below(span)).collect();
        self.windows(&starts)
    }
    /// Validation batch `i`: consecutive non-overlapping windows from the start of the shard.
    pub fn eval_batch(&self, i: usize) -> (Vec<u32>, Vec<u32>) {
        let span = self.shard.len() - self.t;
        let starts: Vec<usize> = (0..self.b).map(|r| ((i * self.b + r) * self.t) % span).collect();
        self.windows(&starts)
    }
    fn windows(&self, starts: &[usize]) -> (Vec<u32>, Vec<u32>) {
        let (mut x, mut y) = (Vec::with_capacity(self.b * self.t), Vec::with_capacity(self.b * self.t));
        for &s in starts {
            self.shard.read(s, self.t, &mut x);
            self.shard.read(s + 1, self.t, &mut y);
        }
        (x, y)
    }
}

/// Prepared data for a run: a tokenizer and train/validation shards in `dir`.
pub struct Prepared {
    pub dir: PathBuf,
    pub tokenizer: TextTokenizer,
    pub train: PathBuf,
    pub val: PathBuf,
}

/// Tokenize `text` into `dir/{tokenizer.json, train.bin, val.bin}`: the last `val_frac` of the
/// tokens is validation. A tokenizer already in `dir` (or given) is reused; else one is trained.
pub fn prepare(text: &str, dir: &Path, vocab_size: usize, val_frac: f64, tokenizer: Option<&Path>) -> Result<Prepared> {
    if text.trim().is_empty() {
        return Err(Error::config("data", "the training text is empty"));
    }
    let tokenizer = match tokenizer {
        Some(p) => TextTokenizer::load(p)?,
        None => TextTokenizer::train(text, vocab_size)?,
    };
    prepare_with(text, dir, val_frac, tokenizer)
}

/// `prepare` with a given tokenizer.
pub fn prepare_with(text: &str, dir: &Path, val_frac: f64, tokenizer: TextTokenizer) -> Result<Prepared> {
    if text.trim().is_empty() {
        return Err(Error::config("data", "the training text is empty"));
    }
    let tok_path = dir.join("tokenizer.json");
    tokenizer.save(&tok_path)?;
    let ids = tokenizer.encode(text)?;
    let n_val = ((ids.len() as f64 * val_frac) as usize).max(1);
    let (train, val) = ids.split_at(ids.len() - n_val);
    let v = tokenizer.vocab_size();
    write_shard(&dir.join("train.bin"), train, v)?;
    write_shard(&dir.join("val.bin"), val, v)?;
    Ok(Prepared { dir: dir.to_path_buf(), tokenizer, train: dir.join("train.bin"), val: dir.join("val.bin") })
}
