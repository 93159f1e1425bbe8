//! The ABI 1.2 distributed ops against what they must compute: in one process (the singleton
//! group), and across 2 processes on MLX's ring backend. The 2-process case runs this test
//! binary twice more, each time as one rank executing the ignored `rank_worker` test with
//! MLX_RANK / MLX_HOSTFILE set, as `mlx.launch` would; each rank checks its own results.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use mlx_engine::api::distributed::{all_gather, all_sum, recv, send, Backend, Group};
use mlx_engine::api::nn::{balanced_range, HeadShard, Linear, ShardedToAllLinear, Weight};
use mlx_engine::api::{quantize, Array, Dtype};

fn arr(data: &[f32], shape: &[i32]) -> Array {
    Array::from_slice(data, shape).unwrap()
}

#[test]
fn the_cpu_wheel_carries_ring_but_not_nccl_or_jaccl() {
    assert!(Backend::Ring.is_available().unwrap());
    assert!(!Backend::Nccl.is_available().unwrap(), "NCCL is only in the CUDA wheels");
    assert!(!Backend::Jaccl.is_available().unwrap(), "JACCL is only in the macOS wheels");
    assert!(Backend::Any.is_available().unwrap());
    assert_eq!(Backend::parse("ring").unwrap(), Backend::Ring);
    assert!(Backend::parse("gloo").unwrap_err().to_string().contains("any, ring, mpi, nccl, jaccl"));
}

#[test]
fn without_an_environment_a_lenient_init_is_the_singleton_group_and_a_strict_one_fails() {
    if std::env::var_os("MLX_RANK").is_some() {
        return; // running as a rank of the test below
    }
    let g = Group::init(Backend::Any, false).unwrap();
    assert_eq!((g.rank(), g.size()), (0, 1));
    let x = arr(&[1.0, -2.0, 3.5], &[3]);
    assert_eq!(all_sum(&x, &g).unwrap().to_vec_f32().unwrap(), vec![1.0, -2.0, 3.5]);
    assert_eq!(all_gather(&x, &g).unwrap().shape(), vec![3]);
    let e = send(&x, 0, &g).unwrap_err().to_string();
    assert!(e.contains("not another rank of a group of 1"), "{e}");
    let e = recv(&[3], Dtype::F32, 1, &g).unwrap_err().to_string();
    assert!(e.contains("not another rank"), "{e}");
    let e = Group::init(Backend::Ring, true).unwrap_err().to_string();
    assert!(e.contains("MLX_RANK") || e.contains("MLX_HOSTFILE"), "{e}");
}

/// One rank of `two_processes_sum_gather_send_and_recv_over_the_ring_backend` (ignored unless
/// that test starts it with MLX_RANK and MLX_HOSTFILE set).
#[test]
#[ignore = "started by two_processes_sum_gather_send_and_recv_over_the_ring_backend"]
fn rank_worker() {
    let g = Group::init(Backend::Ring, true).unwrap();
    assert_eq!(g.size(), 2);
    let r = g.rank() as f32;
    let x = arr(&[1.0 + r, 10.0 * r, -3.0], &[1, 3]);
    assert_eq!(all_sum(&x, &g).unwrap().to_vec_f32().unwrap(), vec![3.0, 10.0, -6.0]);
    let gathered = all_gather(&x, &g).unwrap();
    assert_eq!(gathered.shape(), vec![2, 3]);
    assert_eq!(gathered.to_vec_f32().unwrap(), vec![1.0, 0.0, -3.0, 2.0, 10.0, -3.0]);
    let ints = Array::from_slice(&[7i32 + g.rank()], &[1]).unwrap();
    assert_eq!(all_sum(&ints, &g).unwrap().to_vec::<i32>().unwrap(), vec![15]);
    // Rank 0 sends, rank 1 receives and answers with twice the values.
    if g.rank() == 0 {
        send(&arr(&[0.5, 1.5], &[2]), 1, &g).unwrap().eval().unwrap();
        let back = recv(&[2], Dtype::F32, 1, &g).unwrap();
        assert_eq!(back.to_vec_f32().unwrap(), vec![1.0, 3.0]);
    } else {
        let got = recv(&[2], Dtype::F32, 0, &g).unwrap();
        send(&got.multiply(&Array::scalar(2.0, Dtype::F32).unwrap()).unwrap(), 0, &g).unwrap().eval().unwrap();
    }
    sharded_linears_sum_to_the_whole_layer(&g);
}

/// The two tensor-parallel linears, split over the real group, against the unsplit layer:
/// all-to-sharded then sharded-to-all (an MLP's shape), dense and 4-bit quantized.
fn sharded_linears_sum_to_the_whole_layer(g: &Group) {
    let (d, h) = (64, 128);
    let vals = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin() * 0.3).collect::<Vec<f32>>();
    let x = arr(&vals(2 * d as usize, 0.37), &[2, d]);
    for quantized in [false, true] {
        let weight = |n: i32, m: i32, k: f32| {
            let w = arr(&vals((n * m) as usize, k), &[n, m]);
            if !quantized {
                return Weight::Dense(w.into());
            }
            let (wq, scales, biases) = quantize(&w, 32, 4).unwrap();
            Weight::Quantized { wq, scales, biases: Some(biases), group_size: 32, bits: 4 }
        };
        let bias = arr(&vals(d as usize, 0.11), &[d]);
        let up = Linear { weight: weight(h, d, 0.13), bias: None };
        let down = Linear { weight: weight(d, h, 0.71), bias: Some(bias) };
        let whole = down.forward(&up.forward(&x).unwrap()).unwrap().to_vec_f32().unwrap();
        let (a, b) = balanced_range(g, "hidden", h, 32).unwrap();
        let mut up_s = up.clone();
        up_s.keep_outputs(a, b).unwrap();
        let mut down_s = ShardedToAllLinear::from(down.clone());
        down_s.shard(g, a, b, "down").unwrap();
        assert!(down_s.is_sharded());
        let split = down_s.forward(&up_s.forward(&x).unwrap()).unwrap().to_vec_f32().unwrap();
        let diff = whole.iter().zip(&split).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "quantized {quantized}: sharded layers differ by {diff}");
    }
    let s = HeadShard::new(g, 4, 2, 16).unwrap();
    assert_eq!((s.n_heads, s.n_kv_heads), (2, 1));
}

fn free_ports() -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base < u16::MAX && (0..2).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no two consecutive free ports");
}

#[test]
fn two_processes_sum_gather_send_and_recv_over_the_ring_backend() {
    if std::env::var_os("MLX_RANK").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports();
    let hostfile = dir.path().join("hosts.json");
    std::fs::write(&hostfile, format!(r#"[["127.0.0.1:{base}"],["127.0.0.1:{}"]]"#, base + 1)).unwrap();
    let me = std::env::current_exe().unwrap();
    let mut ranks: Vec<_> = (0..2)
        .map(|r| {
            Command::new(&me)
                .args(["--ignored", "--exact", "rank_worker", "--test-threads", "1"])
                .env("MLX_RANK", r.to_string())
                .env("MLX_HOSTFILE", &hostfile)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let t = Instant::now();
    for (r, child) in ranks.iter_mut().enumerate() {
        while child.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("rank {r} did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for (r, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("1 passed"), "rank {r}: {text}");
    }
}
