//! What ABI 1.1 gives batched decoding and vision-language prompts, through the real plugins:
//! per-row positions and padding-aware masks (a left-padded batch gives every row what it gets
//! alone), explicit positions, bidirectional spans, and the declared embeddings scale.

mod common_models;
mod measured;
mod tokenizer_fixtures;

use common_models::*;
use mlx_engine::api::nn::Rope;
use mlx_engine::api::{random, round_to_bf16, Array, AttentionOptions, Dtype, ForwardContext, Input, Positions};
use mlx_engine::cache::{AttentionExtras, CacheConfig, KvCache};
use mlx_engine::model::{load_tokenizer, DtypeChoice, LoadedModel};

/// Greedy decoding of one prompt alone: the tokens and each step's logits (`[vocab]` each).
fn alone(m: &LoadedModel, prompt: &[u32], steps: usize, config: &CacheConfig) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut cache = KvCache::with_config(m.model.cache_layout(), config).unwrap();
    let mut logits = last_position(&forward(m, prompt, &mut cache));
    let (mut tokens, mut all) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let v = logits.to_vec_f32().unwrap();
        let t = argmax(&v);
        all.push(v);
        tokens.push(t);
        logits = last_position(&forward(m, &[t], &mut cache));
    }
    (tokens, all)
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
}

/// The gap between the two largest values.
fn top2_gap(v: &[f32]) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s[0] - s[1]
}

/// The prompts left-padded with `pad` into one batch, then fed `forced[b]` one column at a
/// time: each row's logits (`[vocab]`) before each forced token.
fn batched(
    m: &LoadedModel,
    prompts: &[Vec<u32>],
    forced: &[Vec<u32>],
    pad: u32,
    config: &CacheConfig,
) -> Vec<Vec<Vec<f32>>> {
    let width = prompts.iter().map(Vec::len).max().unwrap();
    let padding: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    let rows = prompts.len() as i32;
    let mut cache = KvCache::batched(m.model.cache_layout(), config, &padding).unwrap();
    let ids: Vec<i32> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(pad, width - p.len()).chain(p.iter().copied()))
        .map(|t| t as i32)
        .collect();
    let mut logits =
        m.model.forward(Input::Tokens(&Array::from_slice(&ids, &[rows, width as i32]).unwrap()), &mut cache).unwrap();
    let mut out = vec![Vec::new(); prompts.len()];
    for step in 0..forced[0].len() {
        let l = logits.dim(1).unwrap();
        let last = logits.slice_axis(1, l - 1, l).unwrap().astype(Dtype::F32).unwrap();
        for (b, row) in out.iter_mut().enumerate() {
            row.push(last.slice_axis(0, b as i32, b as i32 + 1).unwrap().to_vec_f32().unwrap());
        }
        let next: Vec<i32> = forced.iter().map(|f| f[step] as i32).collect();
        logits = m.model.forward(Input::Tokens(&Array::from_slice(&next, &[rows, 1]).unwrap()), &mut cache).unwrap();
    }
    out
}

/// How [`batch_matches_alone`] runs and what it allows.
struct Run {
    steps: usize,
    /// The padding token.
    pad: u32,
    config: CacheConfig,
    bound: f32,
    tie: f32,
}

/// Runs every prompt alone and all of them as one batch fed the tokens each chose alone; the
/// logits must agree (`bound` on `max |diff| / max(|logit|, 1)` per step) and every row's
/// batched greedy choice must be its alone choice, except at a near-tie (top-2 gap under
/// `tie`). Returns how many tokens matched exactly.
fn batch_matches_alone(what: &str, m: &LoadedModel, prompts: &[Vec<u32>], run: &Run) {
    let Run { steps, pad, config, bound, tie } = run;
    let (steps, pad, bound, tie) = (*steps, *pad, *bound, *tie);
    let runs: Vec<_> = prompts.iter().map(|p| alone(m, p, steps, config)).collect();
    let forced: Vec<Vec<u32>> = runs.iter().map(|r| r.0.clone()).collect();
    let got = batched(m, prompts, &forced, pad, config);
    let mut worst = 0.0f32;
    for (b, (run, rows)) in runs.iter().zip(&got).enumerate() {
        for (step, (want, have)) in run.1.iter().zip(rows).enumerate() {
            let scale = want.iter().fold(1.0f32, |s, x| s.max(x.abs()));
            let d = want.iter().zip(have).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale;
            worst = worst.max(d);
            let (t, tb) = (run.0[step], argmax(have));
            assert!(
                t == tb || top2_gap(want) < tie,
                "{what}: row {b} (prompt of {}) step {step}: batched picks {tb}, alone {t} (gap {})",
                prompts[b].len(),
                top2_gap(want)
            );
        }
    }
    if config.kv_bits.is_some() {
        // Keys and values of a batch differ from the lone row's by BLAS rounding (other matmul
        // shapes); quantization turns that into a whole quantization step wherever a value
        // sits at a rounding boundary, so this bounds an approximation, not noise.
        measured::ceiling("batched vs alone logits with a quantized KV cache, relative", worst, bound, what);
    } else {
        measured::check("batched vs alone logits, relative", worst, bound, what);
    }
}

#[test]
fn a_left_padded_batch_gives_every_row_what_it_gets_alone_in_every_architecture() {
    for arch in ALL_ARCHS {
        let tiny = TinyModel::new(arch, 5);
        let dir = tiny.write_temp();
        let m = load(dir.path(), DtypeChoice::F32);
        let tok = arch.default_tok();
        // Gemma3's sliding layers (window 8) overflow their ring in the prefill of the longest
        // row and rotate while decoding, with padding still inside the window of shorter rows.
        let prompts = vec![prompt(3, tok, 1), prompt(12, tok, 2), prompt(7, tok, 3)];
        let run = Run {
            steps: 10,
            pad: tok.first_plain_id(),
            config: CacheConfig::default(),
            bound: measured::CACHED_VS_FULL,
            tie: 1e-4,
        };
        batch_matches_alone(&format!("{arch:?}"), &m, &prompts, &run);
    }
}

#[test]
fn a_left_padded_batch_with_a_quantized_kv_cache_matches_each_row_alone() {
    let tiny = TinyModel::new(Arch::Gemma3, 9);
    let dir = tiny.write_temp();
    let m = load(dir.path(), DtypeChoice::F32);
    let tok = Arch::Gemma3.default_tok();
    // Quantized from the first decode step on, alone and batched alike: a later start would
    // switch at a column count, which padding shifts, so rows would attend densely for other
    // steps than alone.
    let config = CacheConfig { kv_bits: Some(8), kv_group_size: 32, quantized_kv_start: 0, ..Default::default() };
    let prompts = vec![prompt(9, tok, 4), prompt(2, tok, 5), prompt(5, tok, 6)];
    // Measured worst 4.5e-4 (one 8-bit step moved by rounding); a wrong mask or position is
    // off by whole logits.
    batch_matches_alone(
        "gemma3 kv8",
        &m,
        &prompts,
        &Run { steps: 8, pad: tok.first_plain_id(), config, bound: 1e-2, tie: 1e-2 },
    );
}

/// The check on real weights: three prompts of different lengths, f32 on the CPU, the
/// same greedy tokens in a batch as alone.
#[test]
fn real_models_decode_a_batch_of_three_as_each_prompt_alone() {
    let models = measured::models_dir();
    let dirs = [models.join("smollm2-135m-instruct/f32"), models.join("gemma3-270m/f32")];
    if !measured::have_models("real_models_decode_a_batch_of_three_as_each_prompt_alone", &[&dirs[0], &dirs[1]]) {
        return;
    }
    let texts = [
        "The capital of France is",
        "Here is a short list of fruits that are red when ripe: strawberries,",
        "def fibonacci(n):",
    ];
    for dir in &dirs {
        let m = load(dir, DtypeChoice::F32);
        let tokenizer = load_tokenizer(&m).unwrap();
        let prompts: Vec<Vec<u32>> = texts.iter().map(|t| tokenizer.encode(t, true).unwrap()).collect();
        assert!(prompts[0].len() < prompts[2].len() && prompts[2].len() < prompts[1].len(), "{prompts:?}");
        let steps = 8;
        let runs: Vec<_> = prompts.iter().map(|p| alone(&m, p, steps, &CacheConfig::default()).0).collect();
        let got = batched(&m, &prompts, &runs, 0, &CacheConfig::default());
        for (b, (want, rows)) in runs.iter().zip(&got).enumerate() {
            let have: Vec<u32> = rows.iter().map(|v| argmax(v)).collect();
            assert_eq!(&have, want, "{}: row {b} ({:?})", dir.display(), texts[b]);
        }
        let run = Run { steps, pad: 0, config: CacheConfig::default(), bound: 2.5e-4, tie: 1e-3 };
        batch_matches_alone(&dir.display().to_string(), &m, &prompts, &run);
    }
}

#[test]
fn a_padded_batch_gives_per_row_positions_and_refuses_a_single_offset() {
    init();
    let layout = vec![mlx_engine::api::LayerCache::Full; 2];
    let mut cache = KvCache::batched(layout.clone(), &CacheConfig::default(), &[2, 0, 5]).unwrap();
    assert_eq!(cache.left_padding(), &[2, 0, 5]);
    let Positions::PerRow(p) = cache.positions(1).unwrap() else { panic!("per-row positions expected") };
    assert_eq!(p.to_vec::<i32>().unwrap(), vec![-2, 0, -5]);
    let err = cache.offset(0).unwrap_err().to_string();
    assert!(err.contains("positions") && err.contains("apply_at"), "{err}");
    // After a prefill of 6 columns the rows' next tokens sit at 4, 6 and 1.
    let kv = random::normal(&[3, 2, 6, 8], 0.0, 1.0, Dtype::F32, None).unwrap();
    for layer in 0..2 {
        cache.attention(layer, &kv, &kv, &kv, 1.0, &AttentionOptions::default()).unwrap();
    }
    let Positions::PerRow(p) = cache.positions(0).unwrap() else { panic!() };
    assert_eq!(p.to_vec::<i32>().unwrap(), vec![4, 6, 1]);
    // Queries of another batch size are refused.
    let one = random::normal(&[1, 2, 1, 8], 0.0, 1.0, Dtype::F32, None).unwrap();
    let err = cache.attention(0, &one, &one, &one, 1.0, &AttentionOptions::default()).unwrap_err().to_string();
    assert!(err.contains("batch of 3 rows"), "{err}");

    // An unpadded batch is a plain cache; max_kv_size with padding is refused.
    let plain = KvCache::batched(layout.clone(), &CacheConfig::default(), &[0, 0]).unwrap();
    assert!(matches!(plain.positions(0).unwrap(), Positions::Offset(0)));
    let bounded = CacheConfig { max_kv_size: Some(64), ..Default::default() };
    let err = KvCache::batched(layout.clone(), &bounded, &[1, 0]).err().unwrap().to_string();
    assert!(err.contains("left_padding") && err.contains("max_kv_size"), "{err}");
    assert!(KvCache::batched(layout, &CacheConfig::default(), &[])
        .err()
        .unwrap()
        .to_string()
        .contains("at least one row"));
}

/// Naive attention of one head: `softmax(q k^T * scale)` over the keys `visible[i][j]` allows.
fn reference_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    d: usize,
    visible: impl Fn(usize, usize) -> bool,
) -> Vec<f32> {
    let mut out = vec![0.0f32; n * d];
    for i in 0..n {
        let scores: Vec<f64> = (0..n)
            .map(|j| {
                if !visible(i, j) {
                    return f64::NEG_INFINITY;
                }
                (0..d).map(|x| (q[i * d + x] * k[j * d + x]) as f64).sum::<f64>() / (d as f64).sqrt()
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = w.iter().sum();
        for x in 0..d {
            out[i * d + x] = ((0..n).map(|j| w[j] * v[j * d + x] as f64).sum::<f64>() / z) as f32;
        }
    }
    out
}

#[test]
fn a_bidirectional_span_lets_its_tokens_see_each_other_and_nothing_else_changes() {
    init();
    let (n, d) = (9usize, 16usize);
    let q = random::normal(&[1, 1, n as i32, d as i32], 0.0, 1.0, Dtype::F32, Some(&random::key(1).unwrap())).unwrap();
    let k = random::normal(&[1, 1, n as i32, d as i32], 0.0, 1.0, Dtype::F32, Some(&random::key(2).unwrap())).unwrap();
    let v = random::normal(&[1, 1, n as i32, d as i32], 0.0, 1.0, Dtype::F32, Some(&random::key(3).unwrap())).unwrap();
    let (qh, kh, vh) = (q.to_vec_f32().unwrap(), k.to_vec_f32().unwrap(), v.to_vec_f32().unwrap());
    let span = 2..6;
    let extras = AttentionExtras { bidirectional: vec![span.clone()] };
    let inside = |i: usize| span.contains(&(i as i32));
    let want = reference_attention(&qh, &kh, &vh, n, d, |i, j| j <= i || (inside(i) && inside(j)));
    let causal = reference_attention(&qh, &kh, &vh, n, d, |i, j| j <= i);
    let scale = 1.0 / (d as f32).sqrt();
    // A full layer, a sliding layer whose window the span fits in, and a quantized cache
    // (which attends densely on its first update).
    use mlx_engine::api::LayerCache::{Full, SlidingWindow};
    for (what, layout, config) in [
        ("full", vec![Full], CacheConfig::default()),
        ("sliding", vec![SlidingWindow { window: 16 }], CacheConfig::default()),
    ] {
        let mut cache = KvCache::with_config(layout.clone(), &config).unwrap();
        let got = cache.with_extras(&extras).attention(0, &q, &k, &v, scale, &AttentionOptions::default()).unwrap();
        let diff = got.to_vec_f32().unwrap().iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        measured::check("bidirectional span vs naive attention", diff, 1e-5, what);
        // Without extras the same cache gives plain causal attention.
        let mut cache = KvCache::with_config(layout, &config).unwrap();
        let got = cache.attention(0, &q, &k, &v, scale, &AttentionOptions::default()).unwrap();
        let diff = got.to_vec_f32().unwrap().iter().zip(&causal).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        measured::check("causal vs naive attention", diff, 1e-5, what);
    }
    // A span outside the pass's queries changes nothing; one query never uses a span.
    let mut a = KvCache::new(vec![Full]);
    let mut b = KvCache::new(vec![Full]);
    let far = AttentionExtras { bidirectional: vec![20..30, 40..42] };
    let x = a.with_extras(&far).attention(0, &q, &k, &v, scale, &AttentionOptions::default()).unwrap();
    let y = b.attention(0, &q, &k, &v, scale, &AttentionOptions::default()).unwrap();
    assert_eq!(x.to_vec_f32().unwrap(), y.to_vec_f32().unwrap());
}

#[test]
fn rope_at_explicit_and_per_row_positions_matches_the_fused_kernel() {
    init();
    let x = random::normal(&[2, 3, 5, 16], 0.0, 1.0, Dtype::F32, Some(&random::key(7).unwrap())).unwrap();
    let scaling = mlx_engine::api::nn::RopeScaling {
        rope_type: Some("llama3".into()),
        factor: Some(8.0),
        low_freq_factor: Some(1.0),
        high_freq_factor: Some(4.0),
        original_max_position_embeddings: Some(16.0),
    };
    let ropes = [
        ("halves", Rope::new(16, false, 10000.0, None).unwrap()),
        ("pairs", Rope::new(16, true, 10000.0, None).unwrap()),
        ("partial", Rope::new(8, false, 500.0, None).unwrap()),
        ("llama3", Rope::new(16, false, 10000.0, Some(&scaling)).unwrap()),
    ];
    let starts = [3, 40];
    let row = |b: i32| x.slice_axis(0, b, b + 1).unwrap();
    for (what, rope) in &ropes {
        let want: Vec<f32> =
            (0..2).flat_map(|b| rope.apply(&row(b), starts[b as usize]).unwrap().to_vec_f32().unwrap()).collect();
        let per_row = rope.apply_at(&x, &Positions::PerRow(Array::from_slice(&starts, &[2]).unwrap())).unwrap();
        let pos: Vec<i32> = starts.iter().flat_map(|&s| s..s + 5).collect();
        let explicit = rope.apply_at(&x, &Positions::Explicit(Array::from_slice(&pos, &[2, 5]).unwrap())).unwrap();
        let diff =
            |a: &Array| a.to_vec_f32().unwrap().iter().zip(&want).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
        measured::check("rope per-row offsets vs one offset", diff(&per_row), measured::SAME_COMPUTATION, what);
        // Worst 3.8e-6: the f32 rounding of `position * frequency` at positions up to 44.
        measured::ceiling("rope explicit positions vs fused kernel", diff(&explicit), 5e-5, what);
    }
    let bad = Rope::new(16, false, 10000.0, None)
        .unwrap()
        .apply_at(&x, &Positions::Explicit(Array::from_slice(&[0i32; 5], &[1, 5]).unwrap()));
    assert!(bad.unwrap_err().to_string().contains("expected [batch, length] = [2, 5]"));
}

#[test]
fn the_model_declares_its_embeddings_scale_and_embeddings_in_equal_tokens_in() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let tiny = TinyModel::new(arch, 3);
        let dir = tiny.write_temp();
        let m = load(dir.path(), DtypeChoice::F32);
        let scale = m.model.embeddings_scale().unwrap();
        assert_eq!(scale, if arch.is_gemma() { round_to_bf16((HIDDEN as f32).sqrt()) } else { 1.0 }, "{arch:?}");
        let tokens = prompt(6, arch.default_tok(), 1);
        let from_tokens = full_forward(&m, &tokens);
        let embedded = m.model.embed_tokens(&ids(&tokens)).unwrap();
        let mut cache = KvCache::new(m.model.cache_layout());
        let from_embeddings = m.model.forward(Input::Embeddings(&embedded), &mut cache).unwrap();
        measured::check(
            "embeddings in vs tokens in",
            max_abs_diff(&from_embeddings, &from_tokens),
            measured::SAME_COMPUTATION,
            format!("{arch:?}"),
        );
    }
    // Gemma 3 270M's hidden size 640: sqrt is 25.298..., the reference's bf16 constant 25.25.
    assert_eq!(round_to_bf16(640f32.sqrt()), 25.25);
    let models = measured::models_dir();
    let gemma = models.join("gemma3-270m/f32");
    if measured::have_models("the_model_declares_its_embeddings_scale (gemma3-270m)", &[&gemma]) {
        assert_eq!(load(&gemma, DtypeChoice::F32).model.embeddings_scale().unwrap(), 25.25);
    }
}
