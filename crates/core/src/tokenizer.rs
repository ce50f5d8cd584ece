//! A character-level tokenizer stored as a Hugging Face `tokenizer.json`.
//!
//! The built-in tasks use small alphabets (digits, operators, a few letters), so
//! every character is one token. The vocabulary is `<pad>`, `<bos>`, `<eos>` (ids
//! 0, 1, 2) followed by the alphabet in the order given. It is written and read
//! with the `tokenizers` crate as a BPE model with no merges (so a word splits
//! into its characters), a `Fuse` decoder (tokens concatenate without spaces)
//! and a post-processor that prepends `<bos>` as Llama tokenizers do; the file
//! therefore loads unchanged in `transformers` (`PreTrainedTokenizerFast`).
//!
//! `encode` rejects characters outside the alphabet with an error that names
//! the character and its position, instead of silently dropping them.

use crate::fs::write_atomic;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::BPE;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

pub const PAD: &str = "<pad>";
pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";
/// The character every character outside the vocabulary is read as, when the vocabulary has
/// it (tasks from files include it; the built-in tasks, whose text is fixed, do not).
pub const UNKNOWN_CHAR: char = '\u{FFFD}';

/// A character-level tokenizer with `<pad>`, `<bos>` and `<eos>` special tokens.
#[derive(Clone)]
pub struct CharTokenizer {
    inner: Tokenizer,
    char_to_id: HashMap<char, u32>,
    alphabet: String,
    pad_id: u32,
    bos_id: u32,
    eos_id: u32,
}

impl std::fmt::Debug for CharTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CharTokenizer")
            .field("alphabet", &self.alphabet)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn tok_err(context: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        context: context.into(),
        message: e.to_string(),
    }
}

/// Parses the text of a `tokenizer.json` (from `path`, for messages). The `tokenizers` crate
/// panics on some malformed files instead of returning an error (0.22 `expect`s a well-formed
/// `decoder`, found by fuzzing): such a panic is caught and reported as the file's error.
pub(crate) fn parse_tokenizer(text: &str, path: &Path) -> Result<Tokenizer> {
    let context = || format!("file {}", path.display());
    match std::panic::catch_unwind(|| text.parse::<Tokenizer>()) {
        Ok(parsed) => parsed.map_err(|e| tok_err(context(), e)),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(tok_err(
                context(),
                format!("is malformed (the tokenizers library could not read it: {why})"),
            ))
        }
    }
}

impl CharTokenizer {
    /// Builds a tokenizer whose alphabet is the characters of `alphabet`, in order.
    pub fn new(alphabet: &str) -> Result<Self> {
        let mut seen = HashMap::new();
        for (i, c) in alphabet.chars().enumerate() {
            if let Some(j) = seen.insert(c, i) {
                return Err(tok_err(
                    "alphabet",
                    format!("character {c:?} appears twice (positions {j} and {i}); each character must appear once"),
                ));
            }
        }
        if alphabet.is_empty() {
            return Err(tok_err("alphabet", "is empty; give at least one character"));
        }
        let specials = [PAD, BOS, EOS];
        let vocab: tokenizers::models::bpe::Vocab = specials
            .iter()
            .map(|s| s.to_string())
            .chain(alphabet.chars().map(String::from))
            .zip(0u32..)
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .map_err(|e| tok_err("building the BPE model", e))?;
        let mut inner = Tokenizer::new(bpe);
        inner.add_special_tokens(&specials.map(|s| AddedToken::from(s, true)));
        inner.with_decoder(Some(Fuse::new()));
        let post = TemplateProcessing::builder()
            .try_single(format!("{BOS} $A"))
            .and_then(|b| b.try_pair(format!("{BOS} $A {BOS} $B")))
            .map_err(|e| tok_err("building the post-processor", e))?
            .special_tokens(vec![(BOS, 1)])
            .build()
            .map_err(|e| tok_err("building the post-processor", e))?;
        inner.with_post_processor(Some(post));
        Self::from_tokenizer(inner, "built from an alphabet")
    }

    /// Reads a `tokenizer.json` written by [`CharTokenizer::save`] (or any
    /// single-character vocabulary with `<pad>`, `<bos>` and `<eos>`).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let inner = parse_tokenizer(&text, path)?;
        Self::from_tokenizer(inner, &format!("file {}", path.display()))
    }

    fn from_tokenizer(inner: Tokenizer, context: &str) -> Result<Self> {
        let vocab = inner.get_vocab(true);
        let special = |name: &str| {
            vocab.get(name).copied().ok_or_else(|| {
                tok_err(
                    context,
                    format!(
                        "has no {name} token; a character tokenizer needs {PAD}, {BOS} and {EOS}"
                    ),
                )
            })
        };
        let (pad_id, bos_id, eos_id) = (special(PAD)?, special(BOS)?, special(EOS)?);
        let mut entries: Vec<(&String, &u32)> = vocab.iter().collect();
        entries.sort_by_key(|(_, id)| **id);
        for (want, (_, id)) in entries.iter().enumerate() {
            if **id as usize != want {
                return Err(tok_err(
                    context,
                    format!("token ids are not contiguous: id {want} is missing"),
                ));
            }
        }
        let mut char_to_id = HashMap::new();
        let mut alphabet = String::new();
        for (tok, id) in entries {
            if [PAD, BOS, EOS].contains(&tok.as_str()) {
                continue;
            }
            let mut chars = tok.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => {
                    char_to_id.insert(c, *id);
                    alphabet.push(c);
                }
                _ => {
                    return Err(tok_err(
                        context,
                        format!("token {tok:?} (id {id}) is not a single character; this is not a character-level vocabulary"),
                    ))
                }
            }
        }
        Ok(Self {
            inner,
            char_to_id,
            alphabet,
            pad_id,
            bos_id,
            eos_id,
        })
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| tok_err(format!("serializing to {}", path.display()), e))?;
        write_atomic(path, json.as_bytes())
    }

    /// Token ids of `text`, one per character, without `<bos>`. A character outside the
    /// vocabulary is read as [`UNKNOWN_CHAR`] when the vocabulary has it, and is an error
    /// naming it otherwise.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let unknown = |c: &char| !self.char_to_id.contains_key(c);
        if text.chars().any(|c| unknown(&c)) && self.char_to_id.contains_key(&UNKNOWN_CHAR) {
            let mapped: String = text
                .chars()
                .map(|c| if unknown(&c) { UNKNOWN_CHAR } else { c })
                .collect();
            return self.encode(&mapped);
        }
        for (position, ch) in text.chars().enumerate() {
            if !self.char_to_id.contains_key(&ch) {
                return Err(Error::UnknownChar {
                    ch,
                    position,
                    text: text.to_string(),
                    vocab: self.char_to_id.len(),
                    alphabet: self.alphabet.clone(),
                });
            }
        }
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(format!("encoding {text:?}"), e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `<bos>` followed by the ids of `text`: the form a prompt is fed to the model in.
    pub fn encode_with_bos(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() + 1);
        ids.push(self.bos_id);
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// Text of `ids`, dropping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let n = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(Error::UnknownId { id, vocab_size: n });
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| tok_err(format!("decoding {ids:?}"), e))
    }

    pub fn vocab_size(&self) -> usize {
        self.char_to_id.len() + 3
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    /// The characters of the vocabulary in id order.
    pub fn alphabet(&self) -> &str {
        &self.alphabet
    }
}

impl crate::traits::Tokenizer for CharTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        CharTokenizer::encode(self, text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        CharTokenizer::decode(self, ids)
    }
    fn vocab_size(&self) -> usize {
        CharTokenizer::vocab_size(self)
    }
    fn stop_tokens(&self) -> Vec<u32> {
        vec![self.eos_id]
    }
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with_bos(text)
    }
}

/// The tokenizer of a model: autodidact's character vocabulary (models trained from
/// scratch) or a pretrained model's Hugging Face tokenizer.
#[derive(Clone, Debug)]
pub enum ModelTokenizer {
    Char(Box<CharTokenizer>),
    Hf(Box<crate::hf_tokenizer::HfTokenizer>),
}

impl From<CharTokenizer> for ModelTokenizer {
    fn from(t: CharTokenizer) -> Self {
        Self::Char(Box::new(t))
    }
}

impl From<crate::hf_tokenizer::HfTokenizer> for ModelTokenizer {
    fn from(t: crate::hf_tokenizer::HfTokenizer) -> Self {
        Self::Hf(Box::new(t))
    }
}

impl ModelTokenizer {
    /// The character vocabulary, when the model has one.
    pub fn as_char(&self) -> Option<&CharTokenizer> {
        match self {
            Self::Char(t) => Some(t),
            Self::Hf(_) => None,
        }
    }

    /// The tokenizer saved in the checkpoint directory `dir`, if any: a Hugging Face one when
    /// `tokenizer_config.json` is there, else a character vocabulary.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        use crate::hf_tokenizer::{HfTokenizer, TOKENIZER_FILE};
        if HfTokenizer::is_in(dir) {
            return Ok(Some(Self::Hf(Box::new(HfTokenizer::load(dir)?))));
        }
        let path = dir.join(TOKENIZER_FILE);
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(Self::Char(Box::new(CharTokenizer::load(&path)?))))
    }

    /// Writes the tokenizer's files into the checkpoint directory `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        match self {
            Self::Char(t) => t.save(&dir.join(crate::hf_tokenizer::TOKENIZER_FILE)),
            Self::Hf(t) => t.save(dir),
        }
    }

    /// (bos, eos, pad) ids for a model's `config.json`.
    pub fn special_ids(&self) -> Option<(u32, u32, u32)> {
        match self {
            Self::Char(t) => Some((t.bos_id(), t.eos_id(), t.pad_id())),
            Self::Hf(t) => Some(t.special_ids()),
        }
    }

    fn inner(&self) -> &dyn crate::traits::Tokenizer {
        match self {
            Self::Char(t) => t.as_ref(),
            Self::Hf(t) => t.as_ref(),
        }
    }
}

impl crate::traits::Tokenizer for ModelTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner().encode(text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner().decode(ids)
    }
    fn vocab_size(&self) -> usize {
        self.inner().vocab_size()
    }
    fn stop_tokens(&self) -> Vec<u32> {
        self.inner().stop_tokens()
    }
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.inner().encode_prompt(text)
    }
    fn has_chat_template(&self) -> bool {
        self.inner().has_chat_template()
    }
    fn chat_prompt(&self, messages: &[crate::types::ChatMessage]) -> Result<String> {
        self.inner().chat_prompt(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue17_a_malformed_decoder_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        CharTokenizer::new("0123456789+=")
            .unwrap()
            .save(&path)
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // What the fuzzer found: a stray character in the decoder's type.
        let bad = text.replacen("\"type\": \"Fuse\"", "\"type\": \\u0000\"Fuse\"", 1);
        assert_ne!(bad, text);
        std::fs::write(&path, bad).unwrap();
        let e = CharTokenizer::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.json") && e.contains("malformed"),
            "{e}"
        );
    }

    #[test]
    fn round_trips_through_tokenizer_json() {
        let tok = CharTokenizer::new("0123456789+=\n ").unwrap();
        assert_eq!(tok.vocab_size(), 17);
        assert_eq!((tok.pad_id(), tok.bos_id(), tok.eos_id()), (0, 1, 2));
        let ids = tok.encode("12+7=19\n").unwrap();
        assert_eq!(ids, vec![4, 5, 13, 10, 14, 4, 12, 15]);
        assert_eq!(tok.decode(&ids).unwrap(), "12+7=19\n");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let back = CharTokenizer::load(&path).unwrap();
        assert_eq!(back.alphabet(), tok.alphabet());
        assert_eq!(back.encode("12+7=19\n").unwrap(), ids);
        let mut with_eos = back.encode_with_bos("9 9").unwrap();
        with_eos.push(back.eos_id());
        assert_eq!(with_eos, vec![1, 12, 16, 12, 2]);
        assert_eq!(back.decode(&with_eos).unwrap(), "9 9");
    }

    #[test]
    fn unknown_character_names_it_and_its_position() {
        let tok = CharTokenizer::new("01").unwrap();
        let err = tok.encode("01x").unwrap_err().to_string();
        assert!(err.contains("'x'") && err.contains("position 2"), "{err}");
    }

    #[test]
    fn duplicate_alphabet_character_is_rejected() {
        let err = CharTokenizer::new("0120").unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
    }

    #[test]
    fn out_of_range_id_is_rejected() {
        let tok = CharTokenizer::new("ab").unwrap();
        assert!(matches!(
            tok.decode(&[7]),
            Err(Error::UnknownId {
                id: 7,
                vocab_size: 5
            })
        ));
    }

    #[test]
    fn file_without_special_tokens_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let tok = CharTokenizer::new("ab").unwrap();
        tok.save(&path).unwrap();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("<eos>", "<end>");
        std::fs::write(&path, text).unwrap();
        let err = CharTokenizer::load(&path).unwrap_err().to_string();
        assert!(err.contains("<eos>"), "{err}");
    }
}

#[cfg(test)]
mod unknown_char_tests {
    use super::*;

    #[test]
    fn issue13_unseen_characters_read_as_the_replacement_when_the_vocabulary_has_it() {
        let with = CharTokenizer::new("ab\u{FFFD}").unwrap();
        assert_eq!(
            with.encode("axb").unwrap(),
            with.encode("a\u{FFFD}b").unwrap()
        );
        let without = CharTokenizer::new("ab").unwrap();
        let e = without.encode("axb").unwrap_err().to_string();
        assert!(e.contains("character 'x' at position 1"), "{e}");
    }
}
