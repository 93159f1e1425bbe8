//! Smoke tests of the C++ shim through the raw ops table (no safe wrapper).

use std::ffi::{c_char, c_void};
use std::ptr;

use mlx_engine::mlx::ffi::ops_table;
use mlx_engine_plugin_api::ops_table::{BinaryOp, Handle, MaskMode, MetaKind, OpsTable, ReduceOp, Status, UnaryOp};
use mlx_engine_plugin_api::Dtype;

fn t() -> &'static OpsTable {
    ops_table()
}

/// This thread's last error message.
fn last_error() -> String {
    let mut msg: *const c_char = ptr::null();
    let mut len = 0usize;
    // SAFETY: both out pointers are valid locals; the returned bytes stay valid until the next
    // failing call on this thread, and we copy them immediately.
    unsafe { (t().last_error)(&mut msg, &mut len) };
    if msg.is_null() || len == 0 {
        return String::new();
    }
    // SAFETY: the shim guarantees `msg` points at `len` readable bytes (see above).
    let bytes = unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) };
    String::from_utf8_lossy(bytes).into_owned()
}

fn check(status: Status, what: &str) {
    assert_eq!(status, 0, "{what} failed: {}", last_error());
}

/// Owned handle, freed on drop.
struct Arr(Handle);

impl Drop for Arr {
    fn drop(&mut self) {
        // SAFETY: `self.0` is an owned handle from the shim, freed exactly once here.
        unsafe { (t().array_free)(self.0) };
    }
}

/// Runs a shim call that writes one handle to `out`.
fn make(what: &str, f: impl FnOnce(*mut Handle) -> Status) -> Arr {
    let mut out: Handle = ptr::null_mut();
    check(f(&mut out), what);
    assert!(!out.is_null(), "{what} returned a null handle");
    Arr(out)
}

fn from_data<T: Copy>(data: &[T], shape: &[i32], dtype: Dtype) -> Arr {
    make("array_from_data", |out| {
        // SAFETY: data and shape are valid for the given lengths during the call; `out` is a
        // valid pointer.
        unsafe {
            (t().array_from_data)(
                data.as_ptr().cast::<c_void>(),
                std::mem::size_of_val(data),
                shape.as_ptr(),
                shape.len(),
                dtype as u32,
                out,
            )
        }
    })
}

fn f32s(data: &[f32], shape: &[i32]) -> Arr {
    from_data(data, shape, Dtype::F32)
}

fn shape(a: &Arr) -> Vec<i32> {
    let mut dims = [0i32; 8];
    // SAFETY: `a.0` is a live handle and `dims` has room for `dims.len()` values.
    let n = unsafe { (t().array_shape)(a.0, dims.as_mut_ptr(), dims.len()) };
    dims[..n].to_vec()
}

fn dtype(a: &Arr) -> u32 {
    // SAFETY: `a.0` is a live handle.
    unsafe { (t().array_dtype)(a.0) }
}

fn read<T: Copy + Default>(a: &Arr) -> Vec<T> {
    // SAFETY: `a.0` is a live handle.
    let n = unsafe { (t().array_size)(a.0) };
    let mut v = vec![T::default(); n];
    // SAFETY: `v` has exactly `n * size_of::<T>()` writable bytes; callers pick the `T` of the
    // array's dtype.
    let st = unsafe { (t().array_read)(a.0, v.as_mut_ptr().cast::<c_void>(), n * std::mem::size_of::<T>()) };
    check(st, "array_read");
    v
}

fn matmul(a: &Arr, b: &Arr) -> Result<Arr, String> {
    let mut out: Handle = ptr::null_mut();
    // SAFETY: live input handles, valid out pointer.
    let st = unsafe { (t().matmul)(a.0, b.0, &mut out) };
    if st == 0 {
        Ok(Arr(out))
    } else {
        Err(last_error())
    }
}

fn naive_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    c
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "element {i}: got {g}, want {w}");
    }
}

#[test]
fn table_is_filled() {
    assert_eq!(t().size, std::mem::size_of::<OpsTable>());
}

#[test]
fn matmul_matches_naive() {
    let (m, k, n) = (3usize, 4usize, 2usize);
    let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 1.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i as f32).sin()).collect();
    let ha = f32s(&a, &[m as i32, k as i32]);
    let hb = f32s(&b, &[k as i32, n as i32]);
    let c = matmul(&ha, &hb).expect("matmul");
    assert_eq!(shape(&c), vec![m as i32, n as i32]);
    assert_eq!(dtype(&c), Dtype::F32 as u32);
    assert_close(&read::<f32>(&c), &naive_matmul(&a, &b, m, k, n), 1e-5);
}

#[test]
fn matmul_shape_mismatch_reports_mlx_error() {
    let a = f32s(&[1.0, 2.0, 3.0], &[1, 3]);
    let b = f32s(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let err = matmul(&a, &b).err().expect("mismatched matmul must fail");
    assert!(err.contains("[matmul]"), "unexpected message: {err}");
}

#[test]
fn bad_arguments_are_errors() {
    let data = [1.0f32, 2.0];
    let mut out: Handle = ptr::null_mut();
    // SAFETY: valid pointers; nbytes deliberately disagrees with the shape.
    let st = unsafe { (t().array_from_data)(data.as_ptr().cast(), 8, [3i32].as_ptr(), 1, Dtype::F32 as u32, &mut out) };
    assert_ne!(st, 0);
    assert!(last_error().contains("bytes"), "{}", last_error());
    // SAFETY: as above, with an unknown dtype code.
    let st = unsafe { (t().array_from_data)(data.as_ptr().cast(), 8, [2i32].as_ptr(), 1, 99, &mut out) };
    assert_ne!(st, 0);
    assert!(last_error().contains("dtype"), "{}", last_error());
    let a = f32s(&data, &[2]);
    let mut small = [0f32; 1];
    // SAFETY: the buffer is 4 bytes and we say so; the shim must refuse (array needs 8).
    let st = unsafe { (t().array_read)(a.0, small.as_mut_ptr().cast(), 4) };
    assert_ne!(st, 0);
    // SAFETY: null required handle; the shim must report an error, not crash.
    let st = unsafe { (t().unary)(UnaryOp::Exp as u32, ptr::null_mut(), &mut out) };
    assert_ne!(st, 0);
    assert!(last_error().contains("null handle"), "{}", last_error());
}

#[test]
fn strided_views_read_in_row_major_order() {
    let a = f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    // SAFETY: live handle, `n == 0` reverses the axes.
    let tr = make("transpose", |out| unsafe { (t().transpose)(a.0, ptr::null(), 0, out) });
    assert_eq!(shape(&tr), vec![3, 2]);
    assert_eq!(read::<f32>(&tr), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    let (start, stop, strides) = ([0i32, 0], [2i32, 3], [1i32, 2]);
    // SAFETY: live handle and three arrays of `ndim` values.
    let sl = make("slice", |out| unsafe { (t().slice)(a.0, start.as_ptr(), stop.as_ptr(), strides.as_ptr(), 2, out) });
    assert_eq!(read::<f32>(&sl), vec![1.0, 3.0, 4.0, 6.0]);
    let scalar = f32s(&[7.0], &[]);
    let shp = [2i32, 2];
    // SAFETY: live handle and a shape of two values.
    let bc = make("broadcast_to", |out| unsafe { (t().broadcast_to)(scalar.0, shp.as_ptr(), 2, out) });
    assert_eq!(read::<f32>(&bc), vec![7.0; 4]);
}

#[test]
fn elementwise_reductions_and_argmax() {
    let a = f32s(&[1.0, -2.0, 3.0, 0.5], &[2, 2]);
    let b = f32s(&[10.0, 20.0], &[2]);
    // SAFETY: live handles, valid out pointer.
    let sum = make("binary add", |out| unsafe { (t().binary)(BinaryOp::Add as u32, a.0, b.0, out) });
    assert_eq!(read::<f32>(&sum), vec![11.0, 18.0, 13.0, 20.5]);
    let axes = [1i32];
    // SAFETY: live handle, one axis.
    let r = make("reduce", |out| unsafe { (t().reduce)(ReduceOp::Sum as u32, a.0, axes.as_ptr(), 1, false, out) });
    assert_eq!(read::<f32>(&r), vec![-1.0, 3.5]);
    // SAFETY: live handle, `n == 0` reduces every axis.
    let m = make("reduce all", |out| unsafe { (t().reduce)(ReduceOp::Max as u32, a.0, ptr::null(), 0, false, out) });
    assert_eq!(shape(&m), Vec::<i32>::new());
    assert_eq!(read::<f32>(&m), vec![3.0]);
    // SAFETY: live handle.
    let am = make("argmax", |out| unsafe { (t().argmax)(a.0, -1, false, out) });
    assert_eq!(dtype(&am), Dtype::U32 as u32);
    assert_eq!(read::<u32>(&am), vec![0, 0]);
    // SAFETY: live handle; `UnaryOp::IsNan` gives a bool array.
    let nan = make("isnan", |out| unsafe { (t().unary)(UnaryOp::IsNan as u32, a.0, out) });
    assert_eq!(dtype(&nan), Dtype::Bool as u32);
    assert_eq!(read::<bool>(&nan), vec![false; 4]);
}

#[test]
fn bf16_astype_round_trip() {
    // Exactly representable in bfloat16 (8 significant bits).
    let exact = [1.5f32, -2.0, 0.15625, 384.0, 0.0, -0.0078125];
    let a = f32s(&exact, &[2, 3]);
    // SAFETY: live handle, valid out pointer.
    let h = make("astype bf16", |out| unsafe { (t().astype)(a.0, Dtype::BF16 as u32, out) });
    assert_eq!(dtype(&h), Dtype::BF16 as u32);
    assert_eq!(read::<u16>(&h).len(), 6);
    // SAFETY: as above.
    let back = make("astype f32", |out| unsafe { (t().astype)(h.0, Dtype::F32 as u32, out) });
    assert_eq!(read::<f32>(&back), exact.to_vec());
    // A value that is not representable rounds to within bf16 precision.
    let pi = f32s(&[std::f32::consts::PI], &[1]);
    // SAFETY: as above.
    let pb = make("astype bf16", |out| unsafe { (t().astype)(pi.0, Dtype::BF16 as u32, out) });
    // SAFETY: as above.
    let pf = make("astype f32", |out| unsafe { (t().astype)(pb.0, Dtype::F32 as u32, out) });
    let v = read::<f32>(&pf)[0];
    assert!((v - std::f32::consts::PI).abs() < 0.01 && v != std::f32::consts::PI, "{v}");
}

#[test]
fn full_arange_and_empty_arrays() {
    let shp = [2i32, 2];
    // SAFETY: shape of two values, valid out pointer.
    let f = make("full", |out| unsafe { (t().array_full)(shp.as_ptr(), 2, -3.0, Dtype::I32 as u32, out) });
    assert_eq!(read::<i32>(&f), vec![-3; 4]);
    // SAFETY: valid out pointer.
    let r = make("arange", |out| unsafe { (t().array_arange)(0.0, 5.0, 2.0, Dtype::F32 as u32, out) });
    assert_eq!(read::<f32>(&r), vec![0.0, 2.0, 4.0]);
    let e = f32s(&[], &[0, 3]);
    assert_eq!(shape(&e), vec![0, 3]);
    assert!(read::<f32>(&e).is_empty());
}

fn c_strs(v: &[&str]) -> (Vec<*const c_char>, Vec<usize>) {
    (v.iter().map(|s| s.as_ptr().cast()).collect(), v.iter().map(|s| s.len()).collect())
}

#[test]
fn safetensors_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weights.safetensors");
    let path = path.to_str().expect("utf-8 temp path");

    let w = f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let ids = from_data(&[7i32, -8, 9], &[3], Dtype::I32);
    // SAFETY: live handle.
    let wb = make("astype", |out| unsafe { (t().astype)(w.0, Dtype::BF16 as u32, out) });
    let (names, name_lens) = c_strs(&["z.weight", "a.ids", "m.bf16"]);
    let handles = [w.0, ids.0, wb.0];
    let (mk, mkl) = c_strs(&["format", "note"]);
    let (mv, mvl) = c_strs(&["mlx", "héllo"]);
    // SAFETY: every pointer/length pair describes live memory for the duration of the call.
    let st = unsafe {
        (t().save_safetensors)(
            path.as_ptr().cast(),
            path.len(),
            names.as_ptr(),
            name_lens.as_ptr(),
            handles.as_ptr(),
            handles.len(),
            mk.as_ptr(),
            mkl.as_ptr(),
            mv.as_ptr(),
            mvl.as_ptr(),
            mk.len(),
        )
    };
    check(st, "save_safetensors");

    let mut b = ptr::null_mut();
    // SAFETY: path bytes are live; valid out pointer.
    check(unsafe { (t().load_safetensors)(path.as_ptr().cast(), path.len(), &mut b) }, "load");
    // SAFETY: `b` is a live bundle.
    let n = unsafe { (t().bundle_num_arrays)(b) };
    assert_eq!(n, 3);
    let mut got_names = Vec::new();
    let mut arrays = Vec::new();
    for i in 0..n {
        let (mut name, mut len, mut h): (*const c_char, usize, Handle) = (ptr::null(), 0, ptr::null_mut());
        // SAFETY: live bundle, index in range, valid out pointers.
        check(unsafe { (t().bundle_array)(b, i, &mut name, &mut len, &mut h) }, "bundle_array");
        // SAFETY: the name is borrowed from the live bundle, `len` bytes long.
        let bytes = unsafe { std::slice::from_raw_parts(name.cast::<u8>(), len) };
        got_names.push(String::from_utf8(bytes.to_vec()).expect("utf-8 name"));
        arrays.push(Arr(h));
    }
    // Sorted by name.
    assert_eq!(got_names, vec!["a.ids", "m.bf16", "z.weight"]);
    assert_eq!(read::<i32>(&arrays[0]), vec![7, -8, 9]);
    assert_eq!(dtype(&arrays[1]), Dtype::BF16 as u32);
    assert_eq!(shape(&arrays[2]), vec![2, 3]);
    assert_eq!(read::<f32>(&arrays[2]), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    // SAFETY: live bundle.
    let nm = unsafe { (t().bundle_num_meta)(b) };
    let mut meta = Vec::new();
    for i in 0..nm {
        let (mut key, mut key_len, mut kind, mut ns, mut h) = (ptr::null(), 0usize, u32::MAX, 0usize, ptr::null_mut());
        // SAFETY: live bundle, index in range, valid out pointers.
        check(unsafe { (t().bundle_meta)(b, i, &mut key, &mut key_len, &mut kind, &mut ns, &mut h) }, "bundle_meta");
        assert!(h.is_null());
        assert_eq!(kind, MetaKind::String as u32);
        assert_eq!(ns, 1);
        let (mut s, mut sl) = (ptr::null(), 0usize);
        // SAFETY: live bundle, indices in range, valid out pointers.
        check(unsafe { (t().bundle_meta_string)(b, i, 0, &mut s, &mut sl) }, "bundle_meta_string");
        // SAFETY: key and value are borrowed from the live bundle with the given lengths.
        let (k, v) = unsafe {
            (std::slice::from_raw_parts(key.cast::<u8>(), key_len), std::slice::from_raw_parts(s.cast::<u8>(), sl))
        };
        meta.push((String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()));
    }
    assert!(meta.contains(&("note".to_string(), "héllo".to_string())), "{meta:?}");
    assert!(meta.contains(&("format".to_string(), "mlx".to_string())), "{meta:?}");
    let (mut s, mut sl) = (ptr::null(), 0usize);
    // SAFETY: live bundle and valid out pointers; the string index is out of range, which must
    // be an error, not a crash.
    let st = unsafe { (t().bundle_meta_string)(b, 0, 5, &mut s, &mut sl) };
    assert_ne!(st, 0);
    drop(arrays);
    // SAFETY: `b` is live and freed once; arrays taken from it are independent handles.
    unsafe { (t().bundle_free)(b) };

    let missing = "/nonexistent/file.safetensors";
    let mut b2 = ptr::null_mut();
    // SAFETY: valid path bytes and out pointer; the call must fail cleanly.
    let st = unsafe { (t().load_safetensors)(missing.as_ptr().cast(), missing.len(), &mut b2) };
    assert_ne!(st, 0);
    assert!(!last_error().is_empty());
}

#[test]
fn sdpa_causal_matches_explicit_mask() {
    // q: [1, 2, 3, 4], k/v: [1, 1, 5, 4] (grouped-query), causal aligned to the end of the keys.
    let q: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 / 11.0 - 0.5).collect();
    let k: Vec<f32> = (0..20).map(|i| ((i * 5) % 13) as f32 / 13.0 - 0.5).collect();
    let v: Vec<f32> = (0..20).map(|i| i as f32 / 20.0).collect();
    let (hq, hk, hv) = (f32s(&q, &[1, 2, 3, 4]), f32s(&k, &[1, 1, 5, 4]), f32s(&v, &[1, 1, 5, 4]));
    // SAFETY: live handles, null mask for the causal mode, valid out pointer.
    let causal = make("sdpa causal", |out| unsafe {
        (t().sdpa)(hq.0, hk.0, hv.0, 0.5, MaskMode::Causal as u32, ptr::null_mut(), out)
    });
    let mask: Vec<bool> = (0..15).map(|i| (i % 5) <= (i / 5) + 2).collect();
    let hm = from_data(&mask, &[3, 5], Dtype::Bool);
    // SAFETY: live handles, explicit boolean mask.
    let masked =
        make("sdpa mask", |out| unsafe { (t().sdpa)(hq.0, hk.0, hv.0, 0.5, MaskMode::Array as u32, hm.0, out) });
    assert_eq!(shape(&causal), vec![1, 2, 3, 4]);
    assert_close(&read::<f32>(&causal), &read::<f32>(&masked), 1e-5);

    // Naive reference for head 0, query row 0 (attends to keys 0..=2).
    let row: Vec<f32> = (0..3).map(|j| 0.5 * (0..4).map(|d| q[d] * k[j * 4 + d]).sum::<f32>()).collect();
    let mx = row.iter().cloned().fold(f32::MIN, f32::max);
    let w: Vec<f32> = row.iter().map(|s| (s - mx).exp()).collect();
    let z: f32 = w.iter().sum();
    let want: Vec<f32> = (0..4).map(|d| (0..3).map(|j| w[j] / z * v[j * 4 + d]).sum()).collect();
    assert_close(&read::<f32>(&causal)[..4], &want, 1e-5);
}

#[test]
fn quantize_dequantize_and_random() {
    let w: Vec<f32> = (0..64 * 4).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
    let hw = f32s(&w, &[4, 64]);
    let (mut wq, mut sc, mut bi) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    // SAFETY: live handle, three valid out pointers.
    check(unsafe { (t().quantize)(hw.0, 64, 4, &mut wq, &mut sc, &mut bi) }, "quantize");
    let (wq, sc, bi) = (Arr(wq), Arr(sc), Arr(bi));
    assert_eq!(shape(&wq), vec![4, 8]);
    assert_eq!(dtype(&wq), Dtype::U32 as u32);
    // SAFETY: live handles, valid out pointer.
    let dq = make("dequantize", |out| unsafe { (t().dequantize)(wq.0, sc.0, bi.0, 64, 4, out) });
    let back = read::<f32>(&dq);
    let step = 2.0 / 15.0;
    for (a, b) in w.iter().zip(&back) {
        assert!((a - b).abs() <= step, "{a} vs {b}");
    }

    // SAFETY: valid out pointer.
    let key = make("random_key", |out| unsafe { (t().random_key)(42, out) });
    let shp = [1000i32];
    // SAFETY: shape of one value, live key, valid out pointer.
    let u = make("uniform", |out| unsafe {
        (t().random_uniform)(shp.as_ptr(), 1, -2.0, 3.0, Dtype::F32 as u32, key.0, out)
    });
    let vals = read::<f32>(&u);
    assert!(vals.iter().all(|x| (-2.0..3.0).contains(x)));
    let mean = vals.iter().sum::<f32>() / vals.len() as f32;
    assert!((mean - 0.5).abs() < 0.3, "{mean}");
    // SAFETY: null key = global generator.
    let nrm = make("normal", |out| unsafe {
        (t().random_normal)(shp.as_ptr(), 1, 5.0, 0.1, Dtype::F32 as u32, ptr::null_mut(), out)
    });
    let nm = read::<f32>(&nrm).iter().sum::<f32>() / 1000.0;
    assert!((nm - 5.0).abs() < 0.05, "{nm}");
}

#[test]
fn eval_memory_devices_streams() {
    let a = f32s(&[1.0; 16], &[4, 4]);
    let c = matmul(&a, &a).expect("matmul");
    let hs = [c.0];
    // SAFETY: array of one live handle.
    check(unsafe { (t().eval)(hs.as_ptr(), 1) }, "eval");
    // SAFETY: no arguments.
    assert!(unsafe { (t().memory)(0) } > 0);
    // SAFETY: cpu is always a valid device code.
    assert!(unsafe { (t().device_available)(0) });
    // SAFETY: no arguments.
    let dev = unsafe { (t().default_device)() };
    let mut idx = -7;
    // SAFETY: valid out pointer.
    check(unsafe { (t().default_stream)(dev, &mut idx) }, "default_stream");
    assert!(idx >= 0);
    // SAFETY: `-1` is this thread's default stream.
    check(unsafe { (t().synchronize)(dev, -1) }, "synchronize");
    // SAFETY: an unknown stream index must be an error.
    assert_ne!(unsafe { (t().set_default_stream)(dev, 1_000_000) }, 0);
}

/// Writes a minimal GGUF v3 file: metadata (string, string list, u32, f32 list) and one f32
/// tensor of MLX shape [2, 3].
fn write_gguf(path: &std::path::Path) {
    fn s(buf: &mut Vec<u8>, v: &str) {
        buf.extend((v.len() as u64).to_le_bytes());
        buf.extend(v.as_bytes());
    }
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes()); // version
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(4u64.to_le_bytes()); // metadata entries
    s(&mut b, "general.name");
    b.extend(8u32.to_le_bytes()); // STRING
    s(&mut b, "tiny");
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes()); // ARRAY
    b.extend(8u32.to_le_bytes()); // of STRING
    b.extend(3u64.to_le_bytes());
    for tok in ["<s>", "hello", "wörld"] {
        s(&mut b, tok);
    }
    s(&mut b, "llama.block_count");
    b.extend(4u32.to_le_bytes()); // UINT32
    b.extend(7u32.to_le_bytes());
    s(&mut b, "llama.rope.freqs");
    b.extend(9u32.to_le_bytes()); // ARRAY
    b.extend(6u32.to_le_bytes()); // of FLOAT32
    b.extend(2u64.to_le_bytes());
    b.extend(0.5f32.to_le_bytes());
    b.extend(2.0f32.to_le_bytes());
    // Tensor info: name, n_dims, dims (innermost first), type F32 = 0, offset.
    s(&mut b, "w");
    b.extend(2u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
        b.extend(v.to_le_bytes());
    }
    std::fs::write(path, b).expect("write gguf");
}

fn borrowed_str(p: *const c_char, len: usize) -> String {
    // SAFETY: callers pass a (pointer, length) pair borrowed from a live bundle.
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[test]
fn gguf_load_arrays_and_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path);
    let path = path.to_str().expect("utf-8 path");
    let mut b = ptr::null_mut();
    // SAFETY: path bytes are live; valid out pointer.
    let st = unsafe { (t().load_gguf)(path.as_ptr().cast(), path.len(), &mut b) };
    check(st, "load_gguf");

    // SAFETY: live bundle.
    assert_eq!(unsafe { (t().bundle_num_arrays)(b) }, 1);
    let (mut name, mut len, mut h) = (ptr::null(), 0usize, ptr::null_mut());
    // SAFETY: live bundle, index in range, valid out pointers.
    check(unsafe { (t().bundle_array)(b, 0, &mut name, &mut len, &mut h) }, "bundle_array");
    let w = Arr(h);
    assert_eq!(borrowed_str(name, len), "w");
    assert_eq!(shape(&w), vec![2, 3]);
    assert_eq!(read::<f32>(&w), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    // SAFETY: live bundle.
    let n = unsafe { (t().bundle_num_meta)(b) };
    let mut keys = Vec::new();
    for i in 0..n {
        let (mut key, mut key_len, mut kind, mut ns, mut h) = (ptr::null(), 0usize, u32::MAX, 0usize, ptr::null_mut());
        // SAFETY: live bundle, index in range, valid out pointers.
        let st = unsafe { (t().bundle_meta)(b, i, &mut key, &mut key_len, &mut kind, &mut ns, &mut h) };
        check(st, "bundle_meta");
        let key = borrowed_str(key, key_len);
        let strings: Vec<String> = (0..ns)
            .map(|j| {
                let (mut p, mut l) = (ptr::null(), 0usize);
                // SAFETY: live bundle, indices in range, valid out pointers.
                let st = unsafe { (t().bundle_meta_string)(b, i, j, &mut p, &mut l) };
                check(st, "bundle_meta_string");
                borrowed_str(p, l)
            })
            .collect();
        match key.as_str() {
            "general.name" => {
                assert_eq!(kind, MetaKind::String as u32);
                assert_eq!(strings, vec!["tiny"]);
            }
            "tokenizer.ggml.tokens" => {
                assert_eq!(kind, MetaKind::Strings as u32);
                assert_eq!(strings, vec!["<s>", "hello", "wörld"]);
            }
            "llama.block_count" => {
                assert_eq!(kind, MetaKind::Array as u32);
                let a = Arr(h);
                assert_eq!(read::<u32>(&a), vec![7]);
                h = ptr::null_mut();
            }
            "llama.rope.freqs" => {
                assert_eq!(kind, MetaKind::Array as u32);
                let a = Arr(h);
                assert_eq!(read::<f32>(&a), vec![0.5, 2.0]);
                h = ptr::null_mut();
            }
            other => panic!("unexpected key {other}"),
        }
        assert!(h.is_null(), "{key}: handle for a non-array entry");
        keys.push(key);
    }
    // Sorted by key.
    assert_eq!(keys, vec!["general.name", "llama.block_count", "llama.rope.freqs", "tokenizer.ggml.tokens"]);
    // SAFETY: `b` is live and freed once.
    unsafe { (t().bundle_free)(b) };
}

#[test]
fn shape_ops_rope_and_norms() {
    let a = f32s(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[6]);
    let idx = [2i32, 5];
    let mut parts = [ptr::null_mut(); 3];
    // SAFETY: live handle, two indices, room for three outputs.
    let st = unsafe { (t().split)(a.0, idx.as_ptr(), 2, 0, parts.as_mut_ptr(), 3) };
    check(st, "split");
    let parts: Vec<Arr> = parts.into_iter().map(Arr).collect();
    assert_eq!(read::<f32>(&parts[1]), vec![2.0, 3.0, 4.0]);
    let hs = [parts[2].0, parts[0].0];
    // SAFETY: two live handles.
    let cat = make("concatenate", |out| unsafe { (t().concatenate)(hs.as_ptr(), 2, 0, out) });
    assert_eq!(read::<f32>(&cat), vec![5.0, 0.0, 1.0]);
    // SAFETY: live handle; too small an output capacity must be an error.
    let st = unsafe { (t().split)(a.0, idx.as_ptr(), 2, 0, [ptr::null_mut(); 3].as_mut_ptr(), 2) };
    assert_ne!(st, 0);
    // SAFETY: live handle.
    let cs = make("cumsum", |out| unsafe { (t().cumsum)(a.0, 0, false, true, out) });
    assert_eq!(read::<f32>(&cs), vec![0.0, 1.0, 3.0, 6.0, 10.0, 15.0]);
    // SAFETY: live handle.
    let tk = make("topk", |out| unsafe { (t().topk)(a.0, 2, 0, out) });
    let mut top = read::<f32>(&tk);
    top.sort_by(f32::total_cmp);
    assert_eq!(top, vec![4.0, 5.0]);

    // rope with `base` equals rope with the matching explicit frequencies.
    let x: Vec<f32> = (0..2 * 3 * 8).map(|i| (i as f32 * 0.37).cos()).collect();
    let hx = f32s(&x, &[1, 2, 3, 8]);
    // SAFETY: live handle, null freqs selects `base`.
    let r1 = make("rope base", |out| unsafe { (t().rope)(hx.0, 8, false, 10000.0, 1.0, 5, ptr::null_mut(), out) });
    let freqs: Vec<f32> = (0..4).map(|i| 10000f32.powf(i as f32 / 4.0)).collect();
    let hf = f32s(&freqs, &[4]);
    // SAFETY: live handles; with freqs, base is ignored.
    let r2 = make("rope freqs", |out| unsafe { (t().rope)(hx.0, 8, false, 123.0, 1.0, 5, hf.0, out) });
    assert_close(&read::<f32>(&r1), &read::<f32>(&r2), 1e-4);

    // rms_norm without weight: unit root-mean-square rows.
    // SAFETY: live handle, null weight.
    let rn = make("rms_norm", |out| unsafe { (t().rms_norm)(hx.0, ptr::null_mut(), 1e-6, out) });
    let v = read::<f32>(&rn);
    let ms: f32 = v[..8].iter().map(|e| e * e).sum::<f32>() / 8.0;
    assert!((ms - 1.0).abs() < 1e-3, "{ms}");
    // SAFETY: live handle, null weight and bias.
    let ln = make("layer_norm", |out| unsafe { (t().layer_norm)(hx.0, ptr::null_mut(), ptr::null_mut(), 1e-6, out) });
    let mean: f32 = read::<f32>(&ln)[..8].iter().sum::<f32>() / 8.0;
    assert!(mean.abs() < 1e-4, "{mean}");

    // conv2d: 1x1 kernel of weight 2 doubles the input.
    let img = f32s(&[1.0, 2.0, 3.0, 4.0], &[1, 2, 2, 1]);
    let k = f32s(&[2.0], &[1, 1, 1, 1]);
    let (one, zero) = ([1i32, 1], [0i32, 0]);
    // SAFETY: live handles, three pairs of values.
    let cv =
        make("conv2d", |out| unsafe { (t().conv2d)(img.0, k.0, one.as_ptr(), zero.as_ptr(), one.as_ptr(), 1, out) });
    assert_eq!(read::<f32>(&cv), vec![2.0, 4.0, 6.0, 8.0]);
}
