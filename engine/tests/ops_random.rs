//! Random numbers: keys and splits are deterministic; uniform, normal and categorical follow
//! their distributions.

mod common;

use common::*;
use mlx_engine::api::random::{categorical, key, normal, seed, split, uniform};
use mlx_engine::api::{Array, Dtype};

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
    (m, var.sqrt())
}

/// Key `i` of a `[n, 2]` key array, as a `[2]` key.
fn key_at(keys: &Array, i: i32) -> Array {
    keys.slice_axis(0, i, i + 1).unwrap().reshape(&[2]).unwrap()
}

#[test]
fn keys_and_splits_are_deterministic() {
    init();
    let a = key(42).unwrap();
    assert_eq!(a.dtype(), Dtype::U32);
    assert_eq!(a.shape(), vec![2]);
    assert_eq!(a.to_vec::<u32>().unwrap(), key(42).unwrap().to_vec::<u32>().unwrap());
    assert_ne!(a.to_vec::<u32>().unwrap(), key(43).unwrap().to_vec::<u32>().unwrap());

    let s = split(&a, 3).unwrap();
    assert_eq!(s.shape(), vec![3, 2]);
    assert_eq!(s.dtype(), Dtype::U32);
    let sv = s.to_vec::<u32>().unwrap();
    assert_eq!(sv, split(&key(42).unwrap(), 3).unwrap().to_vec::<u32>().unwrap());
    // The subkeys differ from each other and from the parent.
    let rows: Vec<&[u32]> = sv.chunks(2).collect();
    assert_ne!(rows[0], rows[1]);
    assert_ne!(rows[1], rows[2]);
    assert!(rows.iter().all(|r| *r != a.to_vec::<u32>().unwrap().as_slice()));
    // Splitting a subkey again works (keys are plain [2] uint32 arrays).
    assert_eq!(split(&key_at(&s, 1), 2).unwrap().shape(), vec![2, 2]);
}

#[test]
fn same_key_same_numbers_different_key_different_numbers() {
    init();
    let k1 = key(7).unwrap();
    let a = uniform(&[64], 0.0, 1.0, Dtype::F32, Some(&k1)).unwrap().to_vec::<f32>().unwrap();
    let b = uniform(&[64], 0.0, 1.0, Dtype::F32, Some(&key(7).unwrap())).unwrap().to_vec::<f32>().unwrap();
    let c = uniform(&[64], 0.0, 1.0, Dtype::F32, Some(&key(8).unwrap())).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().zip(&c).filter(|(x, y)| x == y).count() < 4, "different keys give unrelated numbers");
    let n1 = normal(&[32], 0.0, 1.0, Dtype::F32, Some(&k1)).unwrap().to_vec::<f32>().unwrap();
    let n2 = normal(&[32], 0.0, 1.0, Dtype::F32, Some(&k1)).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(n1, n2);
}

#[test]
fn global_seed_is_reproducible() {
    // The only test of this binary that uses MLX's global generator.
    init();
    seed(1234).unwrap();
    let a = uniform(&[16], 0.0, 1.0, Dtype::F32, None).unwrap().to_vec::<f32>().unwrap();
    let b = uniform(&[16], 0.0, 1.0, Dtype::F32, None).unwrap().to_vec::<f32>().unwrap();
    assert_ne!(a, b, "the global generator advances");
    seed(1234).unwrap();
    let c = uniform(&[16], 0.0, 1.0, Dtype::F32, None).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(a, c, "reseeding repeats the sequence");
}

#[test]
fn uniform_within_bounds_with_the_right_mean() {
    init();
    let n: usize = 20_000;
    let u = uniform(&[100, (n / 100) as i32], -2.0, 3.0, Dtype::F32, Some(&key(1).unwrap())).unwrap();
    assert_eq!(u.shape(), vec![100, (n / 100) as i32]);
    let v = u.to_vec::<f32>().unwrap();
    assert!(v.iter().all(|&x| (-2.0..3.0).contains(&x)), "uniform values outside [-2, 3)");
    let (m, s) = mean_std(&v);
    // Mean 0.5 (sd of the mean 0.01), sd 5/sqrt(12) = 1.443.
    assert!((m - 0.5).abs() < 0.06, "mean {m}");
    assert!((s - 5.0 / 12f64.sqrt()).abs() < 0.05, "sd {s}");
    // Roughly flat: each fifth of the range holds about 20%.
    for b in 0..5 {
        let lo = -2.0 + b as f32;
        let frac = v.iter().filter(|&&x| x >= lo && x < lo + 1.0).count() as f64 / n as f64;
        assert!((frac - 0.2).abs() < 0.02, "bin {b}: {frac}");
    }
    // bf16.
    let h = uniform(&[1000], 0.0, 1.0, Dtype::BF16, Some(&key(2).unwrap())).unwrap();
    assert_eq!(h.dtype(), Dtype::BF16);
    let hv = read_f32(&h);
    assert!(hv.iter().all(|&x| (0.0..=1.0).contains(&x)));
    let (m, _) = mean_std(&hv);
    assert!((m - 0.5).abs() < 0.05, "bf16 mean {m}");
}

#[test]
fn normal_mean_and_std() {
    init();
    let n: usize = 20_000;
    let v = normal(&[n as i32], 1.5, 2.0, Dtype::F32, Some(&key(3).unwrap())).unwrap().to_vec::<f32>().unwrap();
    let (m, s) = mean_std(&v);
    // sd of the mean is 2/sqrt(20000) = 0.014.
    assert!((m - 1.5).abs() < 0.07, "mean {m}");
    assert!((s - 2.0).abs() < 0.06, "sd {s}");
    // About 68% within one sd.
    let within = v.iter().filter(|&&x| (x - 1.5).abs() < 2.0).count() as f64 / n as f64;
    assert!((within - 0.6827).abs() < 0.02, "within one sd: {within}");

    let v = normal(&[n as i32], 0.0, 1.0, Dtype::F32, Some(&key(4).unwrap())).unwrap().to_vec::<f32>().unwrap();
    let (m, s) = mean_std(&v);
    assert!(m.abs() < 0.05 && (s - 1.0).abs() < 0.03, "standard normal: mean {m} sd {s}");

    let h = normal(&[4000], -1.0, 0.5, Dtype::BF16, Some(&key(5).unwrap())).unwrap();
    assert_eq!(h.dtype(), Dtype::BF16);
    let (m, s) = mean_std(&read_f32(&h));
    assert!((m + 1.0).abs() < 0.05 && (s - 0.5).abs() < 0.05, "bf16 normal: mean {m} sd {s}");
}

#[test]
fn categorical_picks_a_dominant_logit() {
    init();
    // One huge logit per row: always chosen.
    let rows = 4;
    let mut logits = vec![0f32; rows * 6];
    for r in 0..rows {
        logits[r * 6 + (r + 1)] = 60.0;
    }
    let la = arr_f32(&logits, &[rows as i32, 6]);
    let keys = split(&key(9).unwrap(), 25).unwrap();
    for i in 0..25 {
        let s = categorical(&la, -1, Some(&key_at(&keys, i))).unwrap();
        assert_eq!(s.dtype(), Dtype::U32);
        assert_eq!(s.shape(), vec![rows as i32]);
        assert_eq!(s.to_vec::<u32>().unwrap(), vec![1, 2, 3, 4], "draw {i}");
    }
    // Along axis 0.
    let s = categorical(&la.t().unwrap(), 0, Some(&key(10).unwrap())).unwrap();
    assert_eq!(s.to_vec::<u32>().unwrap(), vec![1, 2, 3, 4]);
}

#[test]
fn categorical_with_two_equal_logits_draws_both() {
    init();
    let logits = arr_f32(&[0.0, 12.0, -5.0, 12.0, 0.0], &[5]);
    let draws = 120;
    let keys = split(&key(11).unwrap(), draws).unwrap();
    let mut counts = [0usize; 5];
    for i in 0..draws {
        let s = categorical(&logits, 0, Some(&key_at(&keys, i))).unwrap();
        assert_eq!(s.ndim(), 0);
        counts[s.item::<u32>().unwrap() as usize] += 1;
    }
    // The others have probability ~3e-6 each.
    assert_eq!(counts[0] + counts[2] + counts[4], 0, "{counts:?}");
    // Binomial(120, 0.5): sd 5.5, so 35..85 is a > 6-sd band.
    assert!(counts[1] >= 35 && counts[3] >= 35, "{counts:?}");
    // The same key repeats the same draw.
    let k = key_at(&keys, 0);
    let a = categorical(&logits, 0, Some(&k)).unwrap().item::<u32>().unwrap();
    for _ in 0..5 {
        assert_eq!(categorical(&logits, 0, Some(&k)).unwrap().item::<u32>().unwrap(), a);
    }
    // Many rows with one key: independent draws per row, matching the softmax.
    let p = [0.1f32, 0.6, 0.3];
    let lg: Vec<f32> = (0..1000).flat_map(|_| p.map(f32::ln)).collect();
    let s = categorical(&arr_f32(&lg, &[1000, 3]), -1, Some(&key(12).unwrap())).unwrap().to_vec::<u32>().unwrap();
    for (c, &pc) in p.iter().enumerate() {
        let frac = s.iter().filter(|&&x| x == c as u32).count() as f32 / 1000.0;
        assert!((frac - pc).abs() < 0.06, "class {c}: {frac} vs {pc}");
    }
}
