//! The vocabulary as `llguidance` sees it: every token's bytes in a trie, and the parser
//! factory built over it, made once per tokenizer and model width and shared by every
//! constrained request.
//!
//! The bytes come from the `tokenizers` pipeline the engine already loaded (a folder's
//! tokenizer.json or a GGUF's vocabulary, serialized back to tokenizer.json form), so GGUF
//! models get structured output too. Rows of the model's embedding beyond the tokenizer's
//! vocabulary (padding to a multiple of 64 or 128) become special placeholder tokens, which
//! no grammar can name, so the mask always disallows them.

use std::sync::{Arc, Mutex};

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::ParserFactory;

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// A tokenizer's cached environment (kept in the tokenizer, so clones share it): the width it
/// was built for, and what building gave.
pub(crate) type EnvSlot = Mutex<Option<(usize, std::result::Result<Arc<ConstraintEnv>, String>)>>;

/// The compiled vocabulary of one model: what every constrained sequence of it compiles against.
pub struct ConstraintEnv {
    factory: ParserFactory,
    /// The logits' width: the tokenizer's vocabulary, or the model's embedding rows if more.
    width: usize,
}

/// `llguidance`'s view of the tokenizer: the trie, and the encoder for the text the grammar
/// forces (which it turns into tokens when it can).
struct Vocab {
    trie: TokTrie,
    hf: tokenizers::Tokenizer,
}

impl TokenizerEnv for Vocab {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // An encoding error falls back to the trie's greedy split, which is always valid.
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.hf.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
        })
    }
}

impl ConstraintEnv {
    /// The environment of `tokenizer` for logits `model_vocab` wide (`None`: the tokenizer's
    /// vocabulary), built on first use. `param` names the request parameter in the error.
    pub fn for_tokenizer(tokenizer: &Tokenizer, model_vocab: Option<usize>, param: &str) -> Result<Arc<ConstraintEnv>> {
        let width = model_vocab.unwrap_or(0).max(tokenizer.vocab_size());
        let slot = tokenizer.constraint_slot();
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        let built = match slot.as_ref() {
            Some((w, built)) if *w == width => built.clone(),
            _ => {
                let built = build(tokenizer, width).map(Arc::new);
                *slot = Some((width, built.clone()));
                built
            }
        };
        built.map_err(|reason| Error::Param {
            name: param.into(),
            reason: format!("constrained decoding is not available for this tokenizer: {reason}"),
        })
    }

    pub(crate) fn factory(&self) -> &ParserFactory {
        &self.factory
    }

    /// How many logits a mask covers.
    pub fn width(&self) -> usize {
        self.width
    }
}

fn build(tokenizer: &Tokenizer, width: usize) -> std::result::Result<ConstraintEnv, String> {
    // llguidance asserts on vocabularies it does not expect; a refusal beats a panic.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build_unchecked(tokenizer, width)))
        .unwrap_or_else(|_| Err("llguidance could not read its vocabulary".into()))
}

fn build_unchecked(tokenizer: &Tokenizer, width: usize) -> std::result::Result<ConstraintEnv, String> {
    let hf = tokenizer.hf().clone();
    let json: serde_json::Value = hf
        .to_string(false)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot serialize the tokenizer: {e}"))?;
    let mut bytes =
        llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| format!("cannot read the token bytes: {e}"))?;
    if bytes.len() > width {
        return Err(format!("the tokenizer has {} tokens, more than the model's {width} logits", bytes.len()));
    }
    while bytes.len() < width {
        let mut name = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        name.extend(format!("<|mlx_engine_padding_{}|>", bytes.len()).bytes());
        bytes.push(name);
    }
    let eos: Vec<u32> = tokenizer.eos_token_ids().iter().copied().filter(|&id| (id as usize) < width).collect();
    let Some(&first) = eos.first() else {
        return Err("it has no EOS token, which a finished grammar needs".into());
    };
    let info = TokRxInfo::new(width as u32, first);
    let trie = TokTrie::from(&info, &bytes).with_eos_tokens(&eos);
    let vocab: TokEnv = Arc::new(Vocab { trie, hf });
    let mut factory = ParserFactory::new_simple(&vocab).map_err(|e| format!("llguidance: {e}"))?;
    factory.quiet();
    Ok(ConstraintEnv { factory, width })
}
