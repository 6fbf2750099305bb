//! `octet generate --gguf FILE`: text from a pretrained GGUF Llama (SmolLM2) on the CPU — the prompt
//! optionally wrapped in the model's ChatML chat template (`--chat`), generation until EOS /
//! `<|im_end|>` or `--max-tokens`, the text streamed to stdout and the speed reported on stderr.
//! The prompt is fed once and each new token once (`infer::generate` keeps a key/value cache).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use octet_core::{Error, Result};
use octet_kernels::CpuBackend;
use octet_lm::chat::{ChatMl, IM_END};
use octet_lm::generate::SampleConfig;
use octet_lm::gguf::GgufFile;
use octet_lm::infer::generate;
use octet_lm::llama::Llama;

/// Validated arguments of a GGUF generation.
pub struct GgufGenerate<'a> {
    pub path: &'a Path,
    pub prompt: &'a str,
    /// Wrap the prompt as one user turn of the model's chat template.
    pub chat: bool,
    pub sample: SampleConfig,
    /// One JSON object on stdout instead of streamed text and a stderr summary.
    pub json: bool,
}

pub fn run(a: &GgufGenerate) -> Result<()> {
    let t0 = Instant::now();
    let g = GgufFile::open(a.path)?;
    let tok = g.tokenizer()?;
    let mut model = Llama::from_gguf(&g, CpuBackend)?;
    let load_s = t0.elapsed().as_secs_f64();

    let text = if a.chat {
        let template = tok.chat_template.as_deref().ok_or_else(|| {
            Error::format(a.path, "tokenizer.chat_template", "missing: --chat needs the model's chat template")
        })?;
        ChatMl::from_template(template)?.render_user(a.prompt)
    } else {
        a.prompt.to_string()
    };
    let mut prompt = tok.encode(&text)?;
    if tok.add_bos
        && let Some(bos) = tok.bos_id
    {
        prompt.insert(0, bos);
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= model.cfg.vocab_size) {
        return Err(Error::config("prompt", format!("token {bad} is outside the model's vocabulary")));
    }
    // EOS, and <|im_end|> (the end of a ChatML turn; the same id as EOS in SmolLM2).
    let stop: Vec<u32> = tok.eos_id.into_iter().chain(tok.token_to_id(IM_END)).collect();

    if !a.json && !a.chat {
        print!("{}", a.prompt);
    }
    // Stream: decode everything generated so far and print what is new, holding back a trailing
    // partial UTF-8 character (decoded as U+FFFD until its last byte arrives).
    let (mut ids, mut shown) = (Vec::new(), String::new());
    let t1 = Instant::now();
    let out = generate(&mut model, &prompt, &a.sample, &stop, |id| {
        if a.json {
            return;
        }
        ids.push(id);
        let s = tok.decode(&ids, true).unwrap_or_default();
        if !s.ends_with('\u{FFFD}')
            && let Some(new) = s.strip_prefix(shown.as_str())
        {
            print!("{new}");
            let _ = std::io::stdout().flush();
            shown = s;
        }
    })?;
    let secs = t1.elapsed().as_secs_f64();
    let n = out.len();
    let stopped = out.last().is_some_and(|t| stop.contains(t));
    let answer = tok.decode(&out, true)?;
    if a.json {
        let v = serde_json::json!({
            "prompt": a.prompt, "chat": a.chat, "text": answer, "prompt_tokens": prompt.len(), "tokens": n,
            "stopped_at_eos": stopped, "seconds": secs, "tokens_per_s": n as f64 / secs, "load_seconds": load_s,
        });
        println!("{v}");
    } else {
        if let Some(rest) = answer.strip_prefix(shown.as_str()) {
            print!("{rest}");
        }
        println!();
        eprintln!(
            "[{n} tokens in {secs:.1} s, {:.2} tokens/s ({}); prompt {} tokens; model loaded in {load_s:.1} s]",
            n as f64 / secs,
            if stopped { "stopped at end of turn" } else { "hit --max-tokens" },
            prompt.len()
        );
    }
    Ok(())
}
