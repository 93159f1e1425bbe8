//! Pipeline splits on the CPU (`--split pipeline`, ADR 0011): each of 2 ring ranks on loopback
//! keeps a contiguous slice of the layers and its cache holds those only; the hidden states go
//! from rank 0 to rank 1 and the last rank's output back to both. Greedy tokens must equal 1
//! rank's; a model with fewer layers than ranks, or a split without ranks, is refused clearly.

mod common_models;
mod measured;
mod ranks;
mod tokenizer_fixtures;

use common_models::Arch;
use ranks::{free_ports, n_ranks, one_rank, run, smollm2, tiny, two_ranks};

const PIPELINE: [&str; 2] = ["--split", "pipeline"];

/// Greedy tokens of `args` on one rank and on two ranks split as a pipeline (and rank 0's stderr).
fn one_and_pipeline(args: &[&str]) -> (Vec<u64>, Vec<u64>, String) {
    let (want, _) = one_rank(args);
    let split: Vec<&str> = PIPELINE.iter().copied().chain(args.iter().copied()).collect();
    let (got, _, err) = two_ranks(&split);
    (want, got, err)
}

#[test]
fn a_pipeline_of_two_ranks_gives_the_greedy_tokens_of_one_on_tiny_llama_gemma3_and_qwen2() {
    // Gemma 3: rank 0 keeps a sliding-window layer, rank 1 a global one (each layer's own
    // cache kind goes with it); qwen2: q/k/v biases.
    for (arch, seed) in [(Arch::Llama, 21), (Arch::Gemma3, 22), (Arch::Qwen2, 23)] {
        let dir = tiny(arch, seed);
        let m = dir.path().to_str().unwrap();
        let (want, got, err) =
            one_and_pipeline(&["-m", m, "-p", "hello world", "-n", "20", "--temp", "0", "--ignore-eos"]);
        assert_eq!(want.len(), 20);
        assert_eq!(got, want, "{arch:?}: {err}");
        // The tiny models have 2 layers: one per rank.
        assert!(err.contains(", 1 layers,"), "{arch:?}: {err}");
    }
}

#[test]
fn a_pipeline_of_two_ranks_gives_the_greedy_tokens_of_one_on_smollm2_f32() {
    let Some(m) = smollm2() else { return };
    // Small prefill chunks: the prompt crosses the ranks chunk by chunk, and slow chunks are
    // evaluated layer by layer.
    let args =
        ["-m", &m, "--chat", "What is the capital of France?", "-n", "16", "--temp", "0", "--prefill-step-size", "8"];
    let (want, got, err) = one_and_pipeline(&args);
    assert!(want.len() >= 8, "{want:?}");
    assert_eq!(got, want, "{err}");
    // 30 layers, 15 on each rank: rank 0's model (and so its cache) has its own only.
    assert!(err.contains(", 15 layers,"), "{err}");
}

#[test]
fn a_pipeline_of_three_ranks_passes_the_hidden_state_through_the_middle_one() {
    let Some(m) = smollm2() else { return };
    // Rank 1 receives from rank 0 and sends to rank 2: 10 layers each.
    let args = ["--split", "pipeline", "-m", &m, "-p", "The capital of France is", "-n", "10", "--temp", "0"];
    let (want, _) = one_rank(&args[2..]);
    let (got, _, err) = n_ranks(3, &args);
    assert_eq!(want.len(), 10);
    assert_eq!(got, want, "{err}");
    assert!(err.contains(", 10 layers,"), "{err}");
}

#[test]
fn a_cancel_on_one_rank_stops_a_pipeline_at_the_same_token() {
    let Some(m) = smollm2() else { return };
    ranks::cancel_on_rank_1_stops_both(&m, &PIPELINE);
}

#[test]
fn fewer_layers_than_ranks_and_a_split_without_ranks_are_refused() {
    let dir = tiny(Arch::Llama, 24);
    let m = dir.path().to_str().unwrap();
    let port = free_ports(3).to_string();
    let (st, _, err) = run(&[
        "launch", "-n", "3", "-p", &port, "--", "generate", "--split", "pipeline", "-m", m, "-p", "x", "-n", "1",
    ]);
    assert!(!st.success());
    assert!(err.contains("num_hidden_layers = 2") && err.contains("3 ranks"), "{err}");
    let (st, _, err) = run(&["generate", "--split", "pipeline", "-m", m, "-p", "x", "-n", "1"]);
    assert!(!st.success() && err.contains("`split`") && err.contains("--distributed"), "{err}");
    let (st, _, err) = run(&["generate", "--split", "layers", "-m", m, "-p", "x"]);
    assert!(!st.success() && err.contains("tensor") && err.contains("pipeline"), "{err}");
}
