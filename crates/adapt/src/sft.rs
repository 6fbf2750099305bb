//! SFT (supervised fine-tuning on chat data): conversations rendered with the model's chat template,
//! the loss on assistant tokens only (masked cross-entropy: targets of other tokens are
//! `octet_kernels::IGNORE_TARGET`), trained through the lm trainer with a batch source of packed,
//! masked rows (`octet_lm::train::run_with`). `--no-mask` trains on every token (the ablation).
//!
//! Data: JSON lines, one conversation each: `{"messages": [{"role": "system" | "user" |
//! "assistant", "content": "..."}, ...]}`; a malformed line, an unknown role or a conversation without
//! an assistant turn is an error naming the file and line.
//!
//! Rendering (ChatML, the template of SmolLM2; `octet_lm::chat`): [BOS if the model adds one], the
//! template's default system message when the conversation has none, then per message
//! `<|im_start|>{role}\n` + content + `<|im_end|>` + `\n`. Learned tokens (mask 1): an assistant
//! message's content and its `<|im_end|>` (so the model learns to stop); everything else is context
//! (mask 0). Each run of equal mask is encoded as one piece; the special tokens split the text, so the
//! pieces' tokens equal the whole rendering's (a test checks this).
//!
//! Rows: an example of L tokens s gives L-1 positions (input s[i], target s[i+1], learned when
//! token i+1 is); examples are packed whole, in order, into rows of T positions, a row padded (input
//! the separator, target ignored) when the next example does not fit; examples longer than T+1 tokens
//! are dropped (counted). Training batch s takes rows in a seeded order reshuffled every epoch.
//! Files in `<out>/data/`: `train.bin` / `val.bin` (inputs, T per row), `train_targets.bin` /
//! `val_targets.bin` (targets; the separator where ignored), `train_mask.bin` / `val_mask.bin` (0/1,
//! a shard of vocabulary 2), `tokenizer.json`; `<out>/sft.json` holds the options and statistics.

use std::path::{Path, PathBuf};

use octet_core::fs::write_atomic;
use octet_core::{Error, Result, Rng};
use octet_kernels::IGNORE_TARGET;
use octet_lm::chat::{ChatMl, IM_END, IM_START};
use octet_lm::data::{Shard, write_shard};
use octet_lm::precision::Precision;
use octet_lm::spec::ArchKind;
use octet_lm::train::{self, BatchSource, Event, Hooks, Start, Summary, TrainConfig};
use octet_optim::Decay;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::dapt::ModelTokens;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// One training conversation (a line of the data file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

impl Conversation {
    /// A user question and its answer.
    pub fn qa(user: impl Into<String>, assistant: impl Into<String>) -> Self {
        Conversation {
            messages: vec![
                Message { role: "user".into(), content: user.into() },
                Message { role: "assistant".into(), content: assistant.into() },
            ],
        }
    }
}

/// Read and check a conversations file (module doc).
pub fn read_conversations(path: &Path) -> Result<Vec<Conversation>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("line {}", i + 1);
        let c: Conversation = serde_json::from_str(line).map_err(|e| Error::format(path, &at, e.to_string()))?;
        if let Some(m) = c.messages.iter().find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant")) {
            return Err(Error::format(path, &at, format!("unknown role `{}` (system, user or assistant)", m.role)));
        }
        if !c.messages.iter().any(|m| m.role == "assistant") {
            return Err(Error::format(path, &at, "the conversation has no assistant turn: nothing to learn"));
        }
        out.push(c);
    }
    if out.is_empty() {
        return Err(Error::format(path, "messages", "no conversations"));
    }
    Ok(out)
}

/// Write conversations as JSON lines.
pub fn write_conversations(path: &Path, convs: &[Conversation]) -> Result<()> {
    let text: String = convs.iter().map(|c| serde_json::to_string(c).expect("serialises") + "\n").collect();
    write_atomic(path, text.as_bytes())
}

/// How conversations become tokens.
#[derive(Clone, Debug)]
pub struct ChatFormat {
    pub chat: ChatMl,
    pub bos: Option<u32>,
    pub add_bos: bool,
}

/// The pieces of a rendered conversation: (text, learned).
pub fn render_pieces(c: &Conversation, chat: &ChatMl) -> Vec<(String, bool)> {
    let mut pieces: Vec<(String, bool)> = Vec::new();
    let mut push = |text: String, learn: bool| match pieces.last_mut() {
        Some((t, l)) if *l == learn => t.push_str(&text),
        _ => pieces.push((text, learn)),
    };
    if let Some(sys) = &chat.default_system
        && c.messages.first().is_none_or(|m| m.role != "system")
    {
        push(format!("{IM_START}system\n{sys}{IM_END}\n"), false);
    }
    for m in &c.messages {
        push(format!("{IM_START}{}\n", m.role), false);
        let learn = m.role == "assistant";
        push(format!("{}{IM_END}", m.content), learn);
        push("\n".into(), false);
    }
    pieces
}

/// Tokens of a conversation and, per token, whether it is learned; with `mask` false every token is.
pub fn render(c: &Conversation, tok: &Tokenizer, f: &ChatFormat, mask: bool) -> Result<(Vec<u32>, Vec<bool>)> {
    let (mut ids, mut learn) = (Vec::new(), Vec::new());
    if f.add_bos
        && let Some(b) = f.bos
    {
        ids.push(b);
        learn.push(!mask);
    }
    for (text, l) in render_pieces(c, &f.chat) {
        let enc = tok.encode(text.as_str(), false).map_err(|e| Error::Other(format!("tokenize: {e}")))?;
        learn.extend(std::iter::repeat_n(l || !mask, enc.get_ids().len()));
        ids.extend(enc.get_ids());
    }
    Ok((ids, learn))
}

/// Packed rows: inputs, targets and learned flags, T per row.
#[derive(Clone, Debug, Default)]
pub struct Rows {
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    pub learn: Vec<bool>,
    pub t: usize,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.x.len() / self.t.max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }
    /// Row r's inputs and targets (IGNORE_TARGET where not learned).
    pub fn row(&self, r: usize, x: &mut Vec<u32>, y: &mut Vec<u32>) {
        let s = r * self.t..(r + 1) * self.t;
        x.extend_from_slice(&self.x[s.clone()]);
        y.extend(self.y[s.clone()].iter().zip(&self.learn[s]).map(|(&t, &l)| if l { t } else { IGNORE_TARGET }));
    }
}

/// Statistics of a packing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PackStats {
    pub examples: usize,
    /// Longer than T+1 tokens: not trained on.
    pub dropped: usize,
    pub rows: usize,
    /// Positions with a learned target.
    pub learned: usize,
    /// Positions holding example tokens (learned or context).
    pub filled: usize,
}

/// Pack rendered examples (tokens, learned) into rows of `t` positions (module doc).
pub fn pack_rows(examples: &[(Vec<u32>, Vec<bool>)], t: usize, pad: u32) -> (Rows, PackStats) {
    let mut r = Rows { t, ..Rows::default() };
    let mut st = PackStats::default();
    let mut used = 0usize;
    let pad_row = |r: &mut Rows, used: &mut usize| {
        while !used.is_multiple_of(t) {
            r.x.push(pad);
            r.y.push(pad);
            r.learn.push(false);
            *used += 1;
        }
    };
    for (ids, learn) in examples {
        if ids.len() < 2 || !learn[1..].iter().any(|&l| l) {
            continue;
        }
        if ids.len() > t + 1 {
            st.dropped += 1;
            continue;
        }
        let n = ids.len() - 1;
        if used % t + n > t {
            pad_row(&mut r, &mut used);
        }
        r.x.extend_from_slice(&ids[..n]);
        r.y.extend_from_slice(&ids[1..]);
        r.learn.extend_from_slice(&learn[1..]);
        used += n;
        st.examples += 1;
        st.filled += n;
        st.learned += learn[1..].iter().filter(|&&l| l).count();
    }
    pad_row(&mut r, &mut used);
    st.rows = r.len();
    (r, st)
}

/// Rows as a batch source: training batches in a seeded order, reshuffled every epoch; validation
/// batches in order.
pub struct RowSource {
    pub rows: Rows,
    pub b: usize,
    pub seed: u64,
}

impl RowSource {
    fn order(&self, epoch: usize) -> Vec<usize> {
        let n = self.rows.len();
        let mut v: Vec<usize> = (0..n).collect();
        let mut rng = Rng::new(self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in (1..n).rev() {
            v.swap(i, rng.below(i + 1));
        }
        v
    }
}

impl BatchSource for RowSource {
    fn shape(&self) -> (usize, usize) {
        (self.b, self.rows.t)
    }
    fn train_batch(&self, step: usize) -> (Vec<u32>, Vec<u32>) {
        let n = self.rows.len();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..self.b {
            let k = step * self.b + i;
            let r = self.order(k / n)[k % n];
            self.rows.row(r, &mut x, &mut y);
        }
        (x, y)
    }
    fn eval_batch(&self, i: usize) -> (Vec<u32>, Vec<u32>) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for k in 0..self.b {
            self.rows.row((i * self.b + k) % self.rows.len(), &mut x, &mut y);
        }
        (x, y)
    }
}

/// Everything an SFT run is configured by (`sft.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftOptions {
    /// The model: a GGUF file, an octet run / checkpoint (e.g. DAPT's) or a HuggingFace directory.
    pub init: PathBuf,
    /// GGUF whose chat template and BOS apply [default: see `ModelTokens::of`].
    pub template_from: Option<PathBuf>,
    /// Conversations (JSON lines).
    pub data: Vec<PathBuf>,
    pub out: PathBuf,
    /// Loss on assistant tokens only (false: every token, the ablation).
    pub mask: bool,
    pub steps: usize,
    pub lr: f64,
    pub warmup: usize,
    pub batch: usize,
    pub seq: usize,
    pub precision: Precision,
    /// Every k-th conversation (by position) is validation (0: none; then the first row is).
    pub val_every: usize,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
    /// LoRA adapters of this rank (0: full fine-tuning); `octet_lm::lora`.
    #[serde(default)]
    pub lora_rank: usize,
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
}

fn default_alpha() -> f64 {
    16.0
}

impl SftOptions {
    /// Defaults: masked, 64 steps of 4 x 512, LR 5e-5 with cosine decay to 10% after 4 warm-up steps,
    /// bf16, every 20th conversation held out for the validation loss.
    pub fn new(init: PathBuf, data: Vec<PathBuf>, out: PathBuf) -> Self {
        SftOptions {
            init,
            template_from: None,
            data,
            out,
            mask: true,
            steps: 64,
            lr: 5e-5,
            warmup: 4,
            batch: 4,
            seq: 512,
            precision: Precision::Bf16,
            val_every: 20,
            eval_every: 16,
            checkpoint_every: 32,
            seed: 0,
            lora_rank: 0,
            lora_alpha: 16.0,
        }
    }

    fn train_config(&self, eval_batches: usize) -> TrainConfig {
        TrainConfig {
            arch: ArchKind::Llama,
            init: Some(self.init.clone()),
            data: Some(self.out.join("data")),
            precision: self.precision,
            steps: self.steps,
            batch: self.batch,
            seq: self.seq,
            lr: self.lr,
            warmup: self.warmup,
            min_lr_frac: 0.1,
            decay: Decay::Cosine,
            weight_decay: 0.0,
            eval_every: self.eval_every,
            eval_batches,
            checkpoint_every: self.checkpoint_every,
            out: self.out.clone(),
            sample_tokens: 0,
            seed: self.seed,
            lora_rank: self.lora_rank,
            lora_alpha: self.lora_alpha,
            ..TrainConfig::default()
        }
    }
}

/// `sft.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SftState {
    pub options: SftOptions,
    pub train: PackStats,
    pub val: PackStats,
    pub pad: u32,
}

fn write_rows(dir: &Path, name: &str, r: &Rows, vocab: usize) -> Result<()> {
    write_shard(&dir.join(format!("{name}.bin")), &r.x, vocab)?;
    write_shard(&dir.join(format!("{name}_targets.bin")), &r.y, vocab)?;
    let m: Vec<u32> = r.learn.iter().map(|&l| l as u32).collect();
    write_shard(&dir.join(format!("{name}_mask.bin")), &m, 2)
}

fn read_rows(dir: &Path, name: &str, t: usize) -> Result<Rows> {
    let all = |p: PathBuf| -> Result<Vec<u32>> {
        let s = Shard::open(&p)?;
        let mut v = Vec::with_capacity(s.len());
        s.read(0, s.len(), &mut v);
        Ok(v)
    };
    let x = all(dir.join(format!("{name}.bin")))?;
    let y = all(dir.join(format!("{name}_targets.bin")))?;
    let m = all(dir.join(format!("{name}_mask.bin")))?;
    if x.len() != y.len() || x.len() != m.len() || !x.len().is_multiple_of(t) {
        return Err(Error::format(dir, name, "inputs, targets and mask differ in length or are not whole rows"));
    }
    Ok(Rows { x, y, learn: m.into_iter().map(|v| v == 1).collect(), t })
}

/// The chat format of `o`'s model.
pub fn chat_format(m: &ModelTokens, init: &Path) -> Result<ChatFormat> {
    let chat = match &m.chat {
        Some(c) => c.clone(),
        None if m.gguf.is_none() => ChatMl { default_system: None },
        None => {
            return Err(Error::format(
                m.gguf.as_deref().unwrap_or(init),
                "tokenizer.chat_template",
                "the model has no chat template",
            ));
        }
    };
    Ok(ChatFormat { chat, bos: m.bos, add_bos: m.add_bos })
}

/// Render, split and pack the conversations; write `<out>/data/` and `<out>/sft.json`.
pub fn prepare(o: &SftOptions) -> Result<SftState> {
    if o.batch == 0 || o.seq == 0 || o.steps == 0 {
        return Err(Error::config("sft", "batch, seq and steps must be positive"));
    }
    // The data first: a bad line is reported before the model is loaded.
    let mut convs = Vec::new();
    for path in &o.data {
        convs.extend(read_conversations(path)?);
    }
    let m = ModelTokens::of(&o.init, o.template_from.as_deref())?;
    let f = chat_format(&m, &o.init)?;
    let pad = m.separator(&o.init)?;
    let (mut train_ex, mut val_ex) = (Vec::new(), Vec::new());
    let mut k = 0usize;
    {
        for c in convs {
            let r = render(&c, &m.tokenizer, &f, o.mask)?;
            if o.val_every > 0 && k % o.val_every == o.val_every - 1 {
                // Validation always scores assistant tokens only, whatever the training mask.
                val_ex.push(render(&c, &m.tokenizer, &f, true)?);
            } else {
                train_ex.push(r);
            }
            k += 1;
        }
    }
    let (train_rows, train_st) = pack_rows(&train_ex, o.seq, pad);
    let (mut val_rows, val_st) = pack_rows(&val_ex, o.seq, pad);
    if train_rows.is_empty() {
        return Err(Error::config(
            "data",
            format!("no conversation fits {} tokens ({} dropped as longer)", o.seq + 1, train_st.dropped),
        ));
    }
    if val_rows.is_empty() {
        val_rows = Rows {
            x: train_rows.x[..o.seq].to_vec(),
            y: train_rows.y[..o.seq].to_vec(),
            learn: train_rows.learn[..o.seq].to_vec(),
            t: o.seq,
        };
    }
    let dir = o.out.join("data");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let vocab = m.tokenizer.get_vocab_size(true);
    write_rows(&dir, "train", &train_rows, vocab)?;
    write_rows(&dir, "val", &val_rows, vocab)?;
    let json = m.tokenizer.to_string(false).map_err(|e| Error::Other(format!("tokenizer serialise: {e}")))?;
    write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
    let st = SftState { options: o.clone(), train: train_st, val: val_st, pad };
    write_atomic(&o.out.join("sft.json"), &serde_json::to_vec_pretty(&st).expect("serialises"))?;
    Ok(st)
}

/// What an SFT run reports.
pub enum Report<'a> {
    Prepared(&'a SftState),
    Train(&'a Event),
}

/// Run SFT: prepare (fresh) or reload (resume: `Start::Resume` of `<out>`) the rows, then train.
pub fn run(fresh: Option<SftOptions>, out: &Path, steps: Option<usize>, on: &mut dyn FnMut(Report)) -> Result<Summary> {
    let st = match &fresh {
        Some(o) => prepare(o)?,
        None => {
            let p = out.join("sft.json");
            let b = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            serde_json::from_slice(&b).map_err(|e| Error::format(&p, "sft.json", e.to_string()))?
        }
    };
    on(Report::Prepared(&st));
    let o = &st.options;
    let dir = out.join("data");
    let train_src = RowSource { rows: read_rows(&dir, "train", o.seq)?, b: o.batch, seed: o.seed };
    let val_rows = read_rows(&dir, "val", o.seq)?;
    let eval_batches = val_rows.len().div_ceil(o.batch).max(1);
    let val_src = RowSource { rows: val_rows, b: o.batch, seed: o.seed };
    let start = match fresh {
        Some(o) => Start::Fresh(o.train_config(eval_batches), train::Source::Path(dir)),
        None => Start::Resume { dir: out.to_path_buf(), steps },
    };
    let hooks = Hooks { train: Some(&train_src), val: Some(&val_src), eval: None };
    train::run_with(start, None, &mut |e| on(Report::Train(e)), hooks)
}
