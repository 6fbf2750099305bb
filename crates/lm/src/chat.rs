//! Chat templates: SmolLM2's ChatML rendered without a template engine.

use octet_core::{Error, Result};

/// A chat template rendered without a template engine. GGUF files carry a Jinja template
/// (`tokenizer.chat_template`); octet includes no general Jinja interpreter, but recognises the ChatML
/// family (SmolLM2, Qwen, ...): every message is `<|im_start|>{role}\n{content}<|im_end|>\n`, the
/// generation prompt `<|im_start|>assistant\n`, and — when the template inserts one for conversations
/// without a system message, as SmolLM2's does — a default system message, whose text is read from the
/// template's string literal. Any other template is refused with a clear error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMl {
    /// System message inserted before the first message when the conversation has none.
    pub default_system: Option<String>,
}

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

impl ChatMl {
    pub fn from_template(template: &str) -> Result<ChatMl> {
        let gen_prompt = format!("{IM_START}assistant\n");
        if !(template.contains(IM_START) && template.contains(IM_END) && template.contains(&gen_prompt)) {
            return Err(Error::config(
                "chat_template",
                "not a ChatML template (<|im_start|>role\\n...<|im_end|>); octet renders only ChatML, it has no Jinja engine",
            ));
        }
        let sys = format!("{IM_START}system\n");
        let default_system = match template.find(&sys) {
            Some(at) if template.contains("!= 'system'") || template.contains("!= \"system\"") => {
                let rest = &template[at + sys.len()..];
                let end = rest.find(IM_END).ok_or_else(|| {
                    Error::config("chat_template", "default system message without <|im_end|>".to_string())
                })?;
                Some(rest[..end].to_string())
            }
            _ => None,
        };
        Ok(ChatMl { default_system })
    }

    /// One user turn followed by the assistant generation prompt.
    pub fn render_user(&self, prompt: &str) -> String {
        let mut s = String::new();
        if let Some(sys) = &self.default_system {
            s += &format!("{IM_START}system\n{sys}{IM_END}\n");
        }
        s + &format!("{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n")
    }
}
