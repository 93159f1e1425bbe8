//! MLX runtime controls: memory counters and limits, devices, streams, and work on a second
//! thread.

mod common;

use std::sync::Mutex;

use common::*;
use mlx_engine::api::runtime::{
    active_memory, cache_memory, clear_cache, peak_memory, reset_peak_memory, set_cache_limit, set_memory_limit,
    synchronize, Device, Stream,
};
use mlx_engine::api::{Array, Dtype};

/// The memory counters are process-wide: the tests of this file run one at a time so that one
/// test's allocations never show up in another's counters.
static MEMORY: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    MEMORY.lock().unwrap_or_else(|e| e.into_inner())
}

const MB: usize = 1 << 20;

/// A freshly computed 16 MiB f32 array.
fn big_array(seed: f32) -> Array {
    let n = 4 * MB; // elements
    let a = Array::full(&[n as i32], seed as f64, Dtype::F32).unwrap();
    let b = (&a * 2.0).unwrap();
    b.eval().unwrap();
    b
}

#[test]
fn active_and_peak_memory_follow_allocations() {
    init();
    let _g = lock();
    synchronize().unwrap();
    let before = active_memory();
    reset_peak_memory();
    let b = big_array(1.5);
    let during = active_memory();
    assert!(during >= before + 16 * MB, "active memory {before} -> {during} after a 16 MiB array");
    assert!(peak_memory() >= during, "peak {} < active {during}", peak_memory());
    assert_eq!(b.to_vec::<f32>().unwrap()[12345], 3.0);
    drop(b);
    let after = active_memory();
    assert!(after + 16 * MB <= during, "dropping the array frees it: {during} -> {after}");
    // The peak remembers the high-water mark until reset.
    assert!(peak_memory() >= during);
    reset_peak_memory();
    let p = peak_memory();
    assert!(p < during, "reset_peak_memory: peak {p} still >= {during}");
    assert!(p >= active_memory().min(p));
}

#[test]
fn clear_cache_returns_cached_buffers() {
    init();
    let _g = lock();
    let b = big_array(2.0);
    drop(b);
    // Freed buffers go to MLX's cache for reuse (unless the cache limit is 0).
    let cached = cache_memory();
    assert!(cached >= 16 * MB, "a freed 16 MiB buffer should be cached, cache is {cached}");
    clear_cache();
    let now = cache_memory();
    assert!(now < cached, "clear_cache: {cached} -> {now}");
    assert!(now < 16 * MB);
}

#[test]
fn limits_return_previous_values() {
    init();
    let _g = lock();
    let original = set_memory_limit(3 << 30);
    assert!(original > 0, "a memory limit is always set");
    assert_eq!(set_memory_limit(2 << 30), 3 << 30);
    assert_eq!(set_memory_limit(original), 2 << 30);

    let original_cache = set_cache_limit(64 * MB);
    assert_eq!(set_cache_limit(8 * MB), 64 * MB);
    // With a cache limit of zero, freed buffers are not kept.
    assert_eq!(set_cache_limit(0), 8 * MB);
    clear_cache();
    drop(big_array(3.0));
    assert!(cache_memory() < 16 * MB, "cache limit 0 still cached {}", cache_memory());
    assert_eq!(set_cache_limit(original_cache), 0);
}

#[test]
fn cpu_device_is_available_and_default() {
    init();
    let _g = lock();
    assert!(Device::Cpu.is_available());
    assert_eq!(Device::default_device(), Device::Cpu);
    Device::Cpu.set_default().unwrap();
    assert_eq!(Device::default_device(), Device::Cpu);
    // The mlx-cpu wheel has no GPU backend.
    if !Device::Gpu.is_available() {
        assert!(Device::Gpu.set_default().is_err());
        assert_eq!(Device::default_device(), Device::Cpu);
    }
}

#[test]
fn new_stream_set_default_and_synchronize() {
    init();
    let _g = lock();
    let original = Stream::default_for(Device::Cpu).unwrap();
    assert_eq!(original.device, Device::Cpu);
    let s = Stream::new(Device::Cpu).unwrap();
    assert_eq!(s.device, Device::Cpu);
    assert_ne!(s.index, original.index, "a new stream has its own index");
    s.set_default().unwrap();
    assert_eq!(Stream::default_for(Device::Cpu).unwrap(), s);

    // Work queued on the new default stream.
    let x = rand_vec(1, 64 * 64);
    let a = arr_f32(&x, &[64, 64]);
    let p = a.matmul(&a).unwrap();
    mlx_engine::api::async_eval(&[&p]).unwrap();
    s.synchronize().unwrap();
    synchronize().unwrap();
    check_array(
        &p,
        &[64, 64],
        &matmul_ref(&x, &x, 64, 64, 64),
        Tol { atol: 2e-6 * 64.0, rtol: 1e-5 },
        "matmul on a new stream",
    );

    original.set_default().unwrap();
    assert_eq!(Stream::default_for(Device::Cpu).unwrap(), original);
    original.synchronize().unwrap();
    // A stream that does not exist is an error, not a crash.
    let bogus = Stream { device: Device::Cpu, index: 1_000_000 };
    assert!(bogus.set_default().is_err());
    assert!(bogus.synchronize().is_err());
}

#[test]
fn work_on_a_second_thread() {
    init();
    let _g = lock();
    let x = rand_vec(2, 8 * 8);
    let want = matmul_ref(&x, &x, 8, 8, 8);
    // Arrays built on this thread, used on another (Array is Send).
    let a = arr_f32(&x, &[8, 8]);
    let handle = std::thread::spawn(move || {
        let s = Stream::default_for(Device::Cpu).expect("a default stream on the worker");
        let p = a.matmul(&a).unwrap();
        let local = Array::arange(0.0, 4.0, 1.0, Dtype::F32).unwrap().sum(&[], false).unwrap();
        s.synchronize().unwrap();
        (p.to_vec::<f32>().unwrap(), local.item::<f32>().unwrap())
    });
    let (got, local) = handle.join().unwrap();
    assert_close(&got, &want, Tol { atol: 2e-5, rtol: 1e-5 }, "matmul on a worker thread");
    assert_eq!(local, 6.0);

    // Several workers at once, each with its own data.
    let workers: Vec<_> = (0..3u64)
        .map(|i| {
            std::thread::spawn(move || {
                let v = rand_vec(10 + i, 16);
                let a = arr_f32(&v, &[4, 4]);
                let s = a.sum(&[1], false).unwrap().to_vec::<f32>().unwrap();
                let want: Vec<f32> = v.chunks(4).map(|r| r.iter().sum()).collect();
                (s, want)
            })
        })
        .collect();
    for w in workers {
        let (s, want) = w.join().unwrap();
        assert_close(&s, &want, F32_TOL, "sum on a worker");
    }
    // An error on a worker thread stays on that thread.
    let err = std::thread::spawn(|| {
        let a = arr_f32(&[1.0; 6], &[2, 3]);
        a.matmul(&a).unwrap_err().to_string()
    })
    .join()
    .unwrap();
    assert!(err.contains("[matmul]"), "{err}");
}
