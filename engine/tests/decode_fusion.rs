//! Fewer primitives per decode step, the same bits. Decode-sized RMS norms and rotary
//! embeddings run through `compile` on the CPU (`nn::decode_fusion`): every variant the
//! plugins use (f32 and bf16, one offset and one per row, MLX's own frequencies, linear and
//! llama3 scaling, halves and adjacent pairs, partial rotation) must match MLX's unfused `fast`
//! ops, which is what mlx-lm runs, bit for bit; inputs too large keep the fast ops. A dense
//! linear layer multiplies one sequence by its weight's `[1, in, out]` view (`nn::Dense`): one
//! primitive instead of four, again bit for bit; queries and keys rotate in one call; and one
//! position's heads split and merge with a reshape alone.

mod common;

use common::*;
use mlx_engine::api::fast::{rms_norm, rope, rope_offsets};
use mlx_engine::api::nn::{decode_fusion, merge_heads, split_heads, Linear, RmsNorm, Rope, RopeScaling, Weight};
use mlx_engine::api::{graph_primitives, Array, Dtype, Positions};

fn bits(a: &Array) -> Vec<u32> {
    read_f32(a).iter().map(|x| x.to_bits()).collect()
}

fn assert_same_bits(fused: &Array, plain: &Array, what: &str) {
    assert_eq!(fused.shape(), plain.shape(), "{what}: shape");
    assert_eq!(fused.dtype(), plain.dtype(), "{what}: dtype");
    let (f, p) = (bits(fused), bits(plain));
    let differ = f.iter().zip(&p).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{what}: {differ} of {} elements differ from the unfused op", f.len());
}

/// Values over several octaves, so the norm's sum and the rotation's products round.
fn data(seed: u64, shape: &[i32], dtype: Dtype) -> Array {
    let v: Vec<f32> = rand_vec(seed, numel(shape)).iter().enumerate().map(|(i, x)| x * (1 + i % 7) as f32).collect();
    arr_of(&v, shape, dtype).0
}

#[test]
fn rms_norm_is_bit_identical_and_fewer_primitives() {
    init();
    for dtype in [Dtype::F32, Dtype::BF16] {
        // Hidden states of one row, of a batch of 4, and qwen3's per-head norm of queries.
        for (seed, shape) in [(1u64, vec![1, 1, 576]), (2, vec![4, 1, 64]), (3, vec![1, 9, 1, 64])] {
            let dim = *shape.last().unwrap();
            let norm = RmsNorm { weight: data(seed + 100, &[dim], dtype), eps: 1e-5 };
            let x = data(seed, &shape, dtype);
            assert!(decode_fusion::applies(&x));
            // The first call traces; later ones replay what a decode step runs.
            norm.forward(&x).unwrap().eval().unwrap();
            let fused = norm.forward(&x).unwrap();
            let plain = rms_norm(&x, Some(&norm.weight), norm.eps).unwrap();
            let (nf, np) = (graph_primitives(&[&fused]).unwrap(), graph_primitives(&[&plain]).unwrap());
            assert!(nf <= 4 && 3 * nf <= np, "{dtype} {shape:?}: fused {nf} primitives, unfused {np}");
            assert_same_bits(&fused, &plain, &format!("rms_norm {dtype} {shape:?}"));
        }
    }
}

#[test]
fn rope_is_bit_identical_for_every_variant_and_fewer_primitives() {
    init();
    let linear = RopeScaling { rope_type: Some("linear".into()), factor: Some(4.0), ..Default::default() };
    let llama3 = RopeScaling {
        rope_type: Some("llama3".into()),
        factor: Some(8.0),
        low_freq_factor: Some(1.0),
        high_freq_factor: Some(4.0),
        original_max_position_embeddings: Some(8192.0),
    };
    let variants = [
        ("default", 64, false, None),
        ("traditional", 64, true, None),
        ("partial", 32, false, None),
        ("linear", 64, false, Some(&linear)),
        ("llama3", 64, false, Some(&llama3)),
    ];
    for dtype in [Dtype::F32, Dtype::BF16] {
        for (name, dims, traditional, scaling) in variants {
            let r = Rope::new(dims, traditional, 10000.0, scaling).unwrap();
            let x = data(7, &[1, 9, 1, 64], dtype);
            for offset in [0, 7, 4095] {
                r.apply(&x, offset).unwrap().eval().unwrap();
                let fused = r.apply(&x, offset).unwrap();
                let plain = plain_rope(&r, &x, Positions::Offset(offset), dims, traditional);
                let (nf, np) = (graph_primitives(&[&fused]).unwrap(), graph_primitives(&[&plain]).unwrap());
                assert!(nf < np, "{name} {dtype}: fused {nf} primitives, unfused {np}");
                assert_same_bits(&fused, &plain, &format!("rope {name} {dtype} offset {offset}"));
            }
            // A left-padded batch of 3 rows, each at its own position.
            let xb = data(8, &[3, 4, 1, 64], dtype);
            let offsets = arr_i32(&[5, 0, 300], &[3]);
            let at = Positions::PerRow(offsets.clone());
            let fused = r.apply_at(&xb, &at).unwrap();
            let plain = plain_rope(&r, &xb, at, dims, traditional);
            assert_same_bits(&fused, &plain, &format!("rope {name} {dtype} per-row offsets"));
        }
    }
}

/// MLX's `fast` rope, unfused, with the rotation's own frequencies and scale.
fn plain_rope(r: &Rope, x: &Array, at: Positions, dims: i32, traditional: bool) -> Array {
    match at {
        Positions::Offset(o) => rope(x, dims, traditional, r.freqs(), r.scale(), o).unwrap(),
        Positions::PerRow(offsets) => rope_offsets(x, dims, traditional, r.freqs(), r.scale(), &offsets).unwrap(),
        Positions::Explicit(_) => unreachable!(),
    }
}

#[test]
fn prefill_sized_inputs_keep_the_fast_ops() {
    init();
    let x = data(9, &[1, 512, 576], Dtype::F32);
    assert!(!decode_fusion::applies(&x), "a 512-token chunk must not be traced per shape");
    let norm = RmsNorm { weight: data(10, &[576], Dtype::F32), eps: 1e-6 };
    let out = norm.forward(&x).unwrap();
    let plain = rms_norm(&x, Some(&norm.weight), norm.eps).unwrap();
    assert_eq!(graph_primitives(&[&out]).unwrap(), graph_primitives(&[&plain]).unwrap());
    assert_same_bits(&out, &plain, "prefill-sized rms_norm");
}

#[test]
fn a_dense_layer_multiplies_one_sequence_by_its_view_bit_for_bit() {
    init();
    for dtype in [Dtype::F32, Dtype::BF16] {
        let w = data(11, &[48, 64], dtype);
        w.eval().unwrap();
        let lin = Linear { weight: Weight::Dense(w.clone().into()), bias: Some(data(12, &[48], dtype)) };
        let plain = |x: &Array| x.matmul(&w.t().unwrap()).unwrap().add(lin.bias.as_ref().unwrap()).unwrap();
        // One token, a 9-token chunk, and (not through the view) a batch of 3 and a 2-D input.
        for shape in [vec![1, 1, 64], vec![1, 9, 64], vec![3, 1, 64], vec![5, 64]] {
            let x = data(13, &shape, dtype);
            x.eval().unwrap();
            lin.bias.as_ref().unwrap().eval().unwrap();
            let (out, want) = (lin.forward(&x).unwrap(), plain(&x));
            if shape.len() == 3 && shape[0] == 1 {
                let (n, np) = (graph_primitives(&[&out]).unwrap(), graph_primitives(&[&want]).unwrap());
                // The view is made once, with the first product (a transpose and an added axis);
                // later products drop the transpose and MLX's flatten and unflatten of `x`.
                assert!(n < np, "{dtype} {shape:?}: {n} primitives, x @ W^T {np}");
                out.eval().unwrap();
                let again = graph_primitives(&[&lin.forward(&x).unwrap()]).unwrap();
                assert_eq!(again + 3, np, "{dtype} {shape:?}: {again} primitives, x @ W^T {np}");
            }
            assert_same_bits(&out, &want, &format!("dense {dtype} {shape:?}"));
        }
    }
}

#[test]
fn one_position_splits_and_merges_heads_with_a_reshape() {
    init();
    for (b, l) in [(1, 1), (3, 1), (1, 5), (2, 4)] {
        let x = data(14, &[b, l, 6 * 8], Dtype::F32);
        x.eval().unwrap();
        let heads = split_heads(&x, 6).unwrap();
        let n = graph_primitives(&[&heads]).unwrap();
        assert_eq!(n, if l == 1 { 1 } else { 2 }, "split_heads B={b} L={l}: {n} primitives");
        let want = x.reshape(&[b, l, 6, 8]).unwrap().transpose(&[0, 2, 1, 3]).unwrap();
        assert_same_bits(&heads, &want, &format!("split_heads B={b} L={l}"));
        let merged = merge_heads(&heads).unwrap();
        let n = graph_primitives(&[&merged]).unwrap();
        assert_eq!(n, if l == 1 { 1 } else { 2 }, "merge_heads B={b} L={l}: {n} primitives");
        assert_same_bits(&merged, &x, &format!("merge_heads B={b} L={l}"));
    }
}

#[test]
fn queries_and_keys_rotate_in_one_call_bit_for_bit() {
    init();
    let r = Rope::new(64, false, 10000.0, None).unwrap();
    for dtype in [Dtype::F32, Dtype::BF16] {
        for (b, at) in [(1, Positions::Offset(37)), (3, Positions::PerRow(arr_i32(&[5, 0, 300], &[3])))] {
            let (q, k) = (data(15, &[b, 9, 1, 64], dtype), data(16, &[b, 3, 1, 64], dtype));
            q.eval().unwrap();
            k.eval().unwrap();
            r.apply_pair(&q, &k, &at).unwrap().0.eval().unwrap();
            let (pq, pk) = r.apply_pair(&q, &k, &at).unwrap();
            let (sq, sk) = (r.apply_at(&q, &at).unwrap(), r.apply_at(&k, &at).unwrap());
            let (n, ns) = (graph_primitives(&[&pq, &pk]).unwrap(), graph_primitives(&[&sq, &sk]).unwrap());
            assert!(n + 8 <= ns, "{dtype} B={b}: the pair takes {n} primitives, two calls {ns}");
            assert_same_bits(&pq, &sq, &format!("queries {dtype} B={b}"));
            assert_same_bits(&pk, &sk, &format!("keys {dtype} B={b}"));
        }
    }
}
