//! Whether a model may draft for another. Verification compares token ids, so a draft is only
//! useful (and its ids only mean the same text) when both models share one vocabulary.
//! mlx-engine compares the vocabulary sizes only; two tokenizers of one size can still number
//! their tokens differently, which would make every draft a wasted guess, or stop on another
//! model's EOS. So this also compares the special tokens and the ids of a sample of the
//! vocabulary.

use std::collections::BTreeMap;

use crate::tokenizer::Tokenizer;

/// Ids compared one by one at each end of the vocabulary (where special and byte tokens live)
/// and spread evenly over the rest.
const EDGE_IDS: u32 = 256;
const SPREAD_IDS: u32 = 1024;

/// Why `draft` cannot draft for `main`, or `None` when it can.
pub fn incompatibility(main: &Tokenizer, draft: &Tokenizer) -> Option<String> {
    let (mv, dv) = (main.vocab_size(), draft.vocab_size());
    if mv != dv {
        return Some(format!(
            "the vocabulary sizes differ: the main model's tokenizer has {mv} tokens, the draft's {dv}"
        ));
    }
    if main.bos_token_id() != draft.bos_token_id() {
        return Some(format!(
            "the BOS token differs: {} in the main model, {} in the draft",
            describe(main, main.bos_token_id()),
            describe(draft, draft.bos_token_id())
        ));
    }
    if main.eos_token_ids() != draft.eos_token_ids() {
        return Some(format!(
            "the end-of-sequence tokens differ: {:?} in the main model, {:?} in the draft",
            main.eos_token_ids(),
            draft.eos_token_ids()
        ));
    }
    let specials = |t: &Tokenizer| -> BTreeMap<u32, String> {
        t.hf()
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, a)| a.special)
            .map(|(id, a)| (id, a.content))
            .collect()
    };
    let (ms, ds) = (specials(main), specials(draft));
    if ms != ds {
        let id = ms.keys().chain(ds.keys()).copied().find(|id| ms.get(id) != ds.get(id)).unwrap_or(0);
        let show = |s: &BTreeMap<u32, String>| s.get(&id).map_or("no special token".to_string(), |c| format!("`{c}`"));
        return Some(format!(
            "the special tokens differ: id {id} is {} in the main model and {} in the draft",
            show(&ms),
            show(&ds)
        ));
    }
    let n = mv as u32;
    let step = (n / SPREAD_IDS).max(1);
    let ids = (0..n.min(EDGE_IDS)).chain((0..n).step_by(step as usize)).chain(n.saturating_sub(EDGE_IDS)..n);
    for id in ids {
        let (a, b) = (main.id_to_token(id), draft.id_to_token(id));
        if a != b {
            let show = |t: Option<String>| t.map_or("missing".to_string(), |t| format!("`{t}`"));
            return Some(format!(
                "the vocabularies number their tokens differently: token {id} is {} in the main model and {} in the draft",
                show(a),
                show(b)
            ));
        }
    }
    None
}

fn describe(t: &Tokenizer, id: Option<u32>) -> String {
    match id {
        None => "none".into(),
        Some(id) => match t.id_to_token(id) {
            Some(text) => format!("{id} (`{text}`)"),
            None => id.to_string(),
        },
    }
}
