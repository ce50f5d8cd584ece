//! A pretrained model's tokenizer, as a Hugging Face checkpoint directory describes it.
//!
//! - `tokenizer.json` is read with the `tokenizers` crate (byte-level BPE, added and special
//!   tokens, the post-processor that may prepend a BOS token);
//! - `tokenizer_config.json` gives the special token strings and the chat template, rendered
//!   with `minijinja` (with Python string methods, as Hugging Face templates use them);
//! - `generation_config.json` gives the stop tokens (`eos_token_id`, one id or a list); without
//!   it, the `eos_token` of `tokenizer_config.json` stops generation.
//!
//! A prompt is encoded with the tokenizer's special tokens (the form the model was trained
//! on: a BOS token when its post-processor adds one); a completion without them, followed in
//! training by the first stop token.

use crate::fs::write_atomic;
use crate::types::ChatMessage;
use crate::{Error, Result};
use serde::Serialize;
use std::path::Path;

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

fn tok_err(context: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        context: context.into(),
        message: e.to_string(),
    }
}

/// A Hugging Face tokenizer with its stop tokens and chat template.
#[derive(Clone)]
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner.get_vocab_size(true)`, which builds the whole vocabulary map on every call: too
    /// slow for the decoding of every sampled token that stop strings need.
    vocab_size: usize,
    /// The three files as read, written back unchanged by [`HfTokenizer::save`].
    files: Vec<(&'static str, String)>,
    stop: Vec<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    chat_template: Option<String>,
    /// The template compiled, as transformers compiles it (trim_blocks, lstrip_blocks).
    env: Option<minijinja::Environment<'static>>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("stop", &self.stop)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// A special token in `tokenizer_config.json`: a string, or an `AddedToken` object.
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

impl HfTokenizer {
    /// Whether `dir` holds a Hugging Face tokenizer (a `tokenizer_config.json` beside its
    /// `tokenizer.json`) rather than autodidact's character vocabulary.
    pub fn is_in(dir: &Path) -> bool {
        dir.join(TOKENIZER_FILE).exists() && dir.join(TOKENIZER_CONFIG_FILE).exists()
    }

    /// Reads the tokenizer files of the checkpoint directory `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &'static str, required: bool| -> Result<Option<String>> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
                Err(e) => Err(Error::io("reading", &path, e)),
            }
        };
        let json = |name: &str, text: &str| -> Result<serde_json::Value> {
            serde_json::from_str(text).map_err(|e| {
                tok_err(
                    format!("file {}", dir.join(name).display()),
                    format!("invalid JSON: {e}"),
                )
            })
        };
        let tok_text = read(TOKENIZER_FILE, true)?.expect("required");
        let inner = crate::tokenizer::parse_tokenizer(&tok_text, &dir.join(TOKENIZER_FILE))?;
        let cfg_text = read(TOKENIZER_CONFIG_FILE, true)?.expect("required");
        let cfg = json(TOKENIZER_CONFIG_FILE, &cfg_text)?;
        let gen_text = read(GENERATION_CONFIG_FILE, false)?;
        let mut files = vec![
            (TOKENIZER_FILE, tok_text),
            (TOKENIZER_CONFIG_FILE, cfg_text),
        ];

        let bos_token = token_string(cfg.get("bos_token"));
        let eos_token = token_string(cfg.get("eos_token"));
        let pad_token = token_string(cfg.get("pad_token"));
        let vocab = inner.get_vocab_size(true);
        let id_of = |tok: &str, what: &str| -> Result<u32> {
            inner.token_to_id(tok).ok_or_else(|| {
                tok_err(
                    format!("file {}", dir.join(TOKENIZER_CONFIG_FILE).display()),
                    format!("{what} {tok:?} is not in the vocabulary of tokenizer.json"),
                )
            })
        };
        let mut stop = Vec::new();
        if let Some(text) = &gen_text {
            let gen = json(GENERATION_CONFIG_FILE, text)?;
            let bad = |v: &serde_json::Value| {
                tok_err(
                    format!("file {}", dir.join(GENERATION_CONFIG_FILE).display()),
                    format!("eos_token_id {v} must be a token id below {vocab} or a list of them"),
                )
            };
            match gen.get("eos_token_id") {
                None | Some(serde_json::Value::Null) => {}
                Some(v @ serde_json::Value::Array(ids)) => {
                    for id in ids {
                        let id = id
                            .as_u64()
                            .filter(|&i| (i as usize) < vocab)
                            .ok_or_else(|| bad(v))?;
                        stop.push(id as u32);
                    }
                }
                Some(v) => stop.push(
                    v.as_u64()
                        .filter(|&i| (i as usize) < vocab)
                        .ok_or_else(|| bad(v))? as u32,
                ),
            }
            files.push((GENERATION_CONFIG_FILE, text.clone()));
        }
        if stop.is_empty() {
            let eos = eos_token.as_deref().ok_or_else(|| {
                tok_err(
                    format!("checkpoint {}", dir.display()),
                    "names no stop token: set eos_token_id in generation_config.json or eos_token in tokenizer_config.json",
                )
            })?;
            stop.push(id_of(eos, "eos_token")?);
        }
        let chat_template = match cfg.get("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            // A list of named templates: the one named "default".
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            Some(other) => {
                return Err(tok_err(
                    format!("file {}", dir.join(TOKENIZER_CONFIG_FILE).display()),
                    format!("chat_template must be a string, not {other}"),
                ))
            }
        };
        let env = chat_template
            .as_ref()
            .map(|t| compile(t.clone()))
            .transpose()?;
        let tok = Self {
            inner,
            vocab_size: vocab,
            files,
            stop,
            bos_token,
            eos_token,
            pad_token,
            chat_template,
            env,
        };
        // A template that does not parse is an error now, not at the first prompt.
        if tok.chat_template.is_some() {
            tok.chat_prompt(&[ChatMessage {
                role: "user".into(),
                content: "1+1?".into(),
            }])?;
        }
        Ok(tok)
    }

    /// Writes the tokenizer files into `dir`, as they were read.
    pub fn save(&self, dir: &Path) -> Result<()> {
        for (name, text) in &self.files {
            write_atomic(&dir.join(name), text.as_bytes())?;
        }
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// (bos, eos, pad) ids for a model's `config.json`: the first stop token stands in for a
    /// BOS or padding token the tokenizer does not name (as transformers pads with EOS).
    pub fn special_ids(&self) -> (u32, u32, u32) {
        let eos = self.stop[0];
        let id = |t: &Option<String>| t.as_deref().and_then(|t| self.inner.token_to_id(t));
        (
            id(&self.bos_token).unwrap_or(eos),
            eos,
            id(&self.pad_token).unwrap_or(eos),
        )
    }

    /// The tokens that end a completion; the first is appended to training completions.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop
    }

    /// The ids of `text` as a prompt: with the special tokens the tokenizer adds (a BOS token,
    /// when its post-processor has one).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// The ids of `text` without added special tokens (special tokens written in the text
    /// are still recognized).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| tok_err(format!("encoding {:?}", crate::error::clip(text, 80)), e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let n = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(Error::UnknownId { id, vocab_size: n });
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| tok_err(format!("decoding {} ids", ids.len()), e))
    }

    /// `messages` rendered by the model's chat template, ending with the prompt for the
    /// assistant's turn (`add_generation_prompt`); the built-in format when the checkpoint
    /// has no template.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String> {
        let Some(env) = &self.env else {
            return Ok(crate::types::plain_chat_prompt(messages));
        };
        #[derive(Serialize)]
        struct Ctx<'a> {
            messages: &'a [ChatMessage],
            add_generation_prompt: bool,
            bos_token: &'a str,
            eos_token: &'a str,
        }
        let ctx = Ctx {
            messages,
            add_generation_prompt: true,
            bos_token: self.bos_token.as_deref().unwrap_or(""),
            eos_token: self.eos_token.as_deref().unwrap_or(""),
        };
        env.get_template(TEMPLATE)
            .and_then(|t| t.render(minijinja::value::Serde(&ctx)))
            .map_err(template_err)
    }
}

const TEMPLATE: &str = "chat";

fn template_err(e: minijinja::Error) -> Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    tok_err("chat template", msg)
}

/// The chat template in a Jinja environment set up as transformers sets up its own.
fn compile(template: String) -> Result<minijinja::Environment<'static>> {
    let mut env = minijinja::Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(template_err)?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template_owned(TEMPLATE, template)
        .map_err(template_err)?;
    Ok(env)
}

impl crate::traits::Tokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        HfTokenizer::encode(self, text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        HfTokenizer::decode(self, ids)
    }
    fn vocab_size(&self) -> usize {
        HfTokenizer::vocab_size(self)
    }
    fn stop_tokens(&self) -> Vec<u32> {
        self.stop.clone()
    }
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        HfTokenizer::encode_prompt(self, text)
    }
    fn has_chat_template(&self) -> bool {
        self.env.is_some()
    }
    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String> {
        HfTokenizer::chat_prompt(self, messages)
    }
}
