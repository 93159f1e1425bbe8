//! Shared helpers of the cross-crate tests: building the out-of-tree fixture plugin
//! (`tests/plugin-fixture`) in its variants, random weights for it, and a minimal forward
//! context (the engine's own KV cache is tested elsewhere; this one is deliberately naive so a
//! plugin bug cannot hide behind a cache bug).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use mlx_engine_plugin_api::fast::{self, AttnMask};
use mlx_engine_plugin_api::{concatenate, random, Array, AttentionOptions, Dtype, ForwardContext, Weights};

/// The fixture's Cargo features, one per plugin the loading tests need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    Good,
    PanicForward,
    /// `forward` panics when its input holds [`PANIC_TOKEN`].
    PanicOnToken,
    AbiMajor2,
    NoDescriptor,
    /// Plugin `tiny2`, declaring the same model type `tiny`.
    AltName,
    /// Claims ABI 1.(ABI_MINOR + 1), newer than the engine.
    AbiMinor2,
    /// Claims ABI 1.1 with a descriptor only as large as 1.0's.
    SmallDescriptor,
    /// Its models' vtable is smaller than 1.1's.
    SmallVtable,
    /// A layout fingerprint of no minor.
    BadFingerprint,
    /// The good plugin built with `panic = "abort"`.
    PanicAbort,
    /// The good plugin's source built against the frozen ABI 1.0 plugin-api (tests/abi-1.0).
    Abi10,
    /// The same against the frozen ABI 1.1 plugin-api (tests/abi-1.1).
    Abi11,
    /// The same against the frozen ABI 1.2 plugin-api (tests/abi-1.2).
    Abi12,
    /// The same against the frozen ABI 1.3 plugin-api (tests/abi-1.3).
    Abi13,
    /// `cache_layout` panics.
    PanicLayout,
    /// `forward` returns logits of the wrong shape.
    BadLogitsShape,
}

impl Variant {
    fn feature(self) -> Option<&'static str> {
        match self {
            Variant::Good | Variant::PanicAbort | Variant::Abi10 | Variant::Abi11 | Variant::Abi12 | Variant::Abi13 => {
                None
            }
            Variant::PanicForward => Some("panic_forward"),
            Variant::PanicOnToken => Some("panic_on_token"),
            Variant::PanicLayout => Some("panic_layout"),
            Variant::BadLogitsShape => Some("bad_logits_shape"),
            Variant::AbiMajor2 => Some("abi_major_2"),
            Variant::NoDescriptor => Some("no_descriptor"),
            Variant::AltName => Some("alt_name"),
            Variant::AbiMinor2 => Some("abi_minor_2"),
            Variant::SmallDescriptor => Some("small_descriptor"),
            Variant::SmallVtable => Some("small_vtable"),
            Variant::BadFingerprint => Some("bad_fingerprint"),
        }
    }

    fn dir_name(self) -> &'static str {
        match self {
            Variant::PanicAbort => "panic_abort",
            Variant::Abi10 => "abi_1_0",
            Variant::Abi11 => "abi_1_1",
            Variant::Abi12 => "abi_1_2",
            Variant::Abi13 => "abi_1_3",
            v => v.feature().unwrap_or("good"),
        }
    }

    fn manifest(self) -> PathBuf {
        let dir = match self {
            Variant::Abi10 => "tests/abi-1.0/fixture",
            Variant::Abi11 => "tests/abi-1.1/fixture",
            Variant::Abi12 => "tests/abi-1.2/fixture",
            Variant::Abi13 => "tests/abi-1.3/fixture",
            _ => "tests/plugin-fixture",
        };
        workspace_root().join(dir).join("Cargo.toml")
    }
}

/// The message the `panic_forward` variant panics with (tests/plugin-fixture/src/lib.rs).
pub const PANIC_MESSAGE: &str = "tiny fixture: forward panicked on purpose";
/// The token whose presence in `forward`'s input makes the `panic_on_token` variant panic.
pub const PANIC_TOKEN: u32 = 13;
/// The message the `panic_layout` variant panics with.
pub const LAYOUT_PANIC_MESSAGE: &str = "tiny fixture: cache_layout panicked on purpose";

/// The file name a plugin called `name` has on this platform.
pub fn lib_name(name: &str) -> String {
    format!("{}{name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The workspace's target folder (honours `CARGO_TARGET_DIR` of the build).
fn target_dir() -> PathBuf {
    match option_env!("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// A lock file held across processes (test binaries, or test runners that use one process per
/// test), because all variants build into one target folder: sharing it compiles the
/// dependencies once instead of once per variant, but the output `libtiny.so` has the same name
/// for every variant, so build + copy-out must not interleave.
struct FileLock(PathBuf);

impl FileLock {
    fn acquire(path: PathBuf) -> FileLock {
        let start = SystemTime::now();
        loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => return FileLock(path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A holder that died leaves the file behind; a build never takes this long.
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(900));
                    if stale {
                        let _ = std::fs::remove_file(&path);
                    }
                    assert!(
                        start.elapsed().unwrap_or_default() < Duration::from_secs(1800),
                        "waited too long for {path:?}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot create lock file {path:?}: {e}"),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn build_variant(v: Variant) -> PathBuf {
    let root = target_dir().join("plugin-fixture");
    std::fs::create_dir_all(&root).unwrap();
    let _lock = FileLock::acquire(root.join(".build-lock"));
    // A different panic strategy rebuilds every dependency, and each frozen fixture is another
    // package with the same library name (cargo does not re-copy a fresh one over the other's
    // output): each gets its own folder, so the other variants' builds stay incremental.
    let build_dir = match v {
        Variant::PanicAbort => root.join("panic-abort"),
        Variant::Abi10 => root.join("abi-1.0"),
        Variant::Abi11 => root.join("abi-1.1"),
        Variant::Abi12 => root.join("abi-1.2"),
        Variant::Abi13 => root.join("abi-1.3"),
        _ => root.clone(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--manifest-path").arg(v.manifest()).arg("--target-dir").arg(&build_dir);
    if let Some(f) = v.feature() {
        cmd.arg("--features").arg(f);
    }
    if v == Variant::PanicAbort {
        cmd.env("CARGO_PROFILE_DEV_PANIC", "abort");
    }
    // The outer `cargo test` exports variables meant for this package's build; the fixture is
    // a separate build that must not see them.
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            let inherited = ["CARGO_TARGET_DIR", "CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"];
            if k.starts_with("CARGO_PKG_") || k.starts_with("CARGO_MANIFEST") || inherited.contains(&k) {
                cmd.env_remove(k);
            }
        }
    }
    let out = cmd.output().expect("failed to run cargo to build the fixture plugin");
    assert!(
        out.status.success(),
        "building the fixture plugin ({v:?}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = build_dir.join("debug").join(lib_name("tiny"));
    let dest_dir = root.join("out").join(v.dir_name());
    std::fs::create_dir_all(&dest_dir).unwrap();
    let dest = dest_dir.join(lib_name("tiny"));
    // Write then rename, so a reader never sees a half-copied library.
    let tmp = dest_dir.join(".tmp-copy");
    std::fs::copy(&built, &tmp).unwrap_or_else(|e| panic!("copying {built:?}: {e}"));
    std::fs::rename(&tmp, &dest).unwrap();
    dest
}

/// The built fixture library of variant `v` (built once per test process).
pub fn fixture(v: Variant) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<Variant, Arc<OnceLock<PathBuf>>>>> = OnceLock::new();
    let cell = {
        let mut map = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(v).or_default())
    };
    cell.get_or_init(|| build_variant(v)).clone()
}

/// Copies variant `v` into `dir` as `file_name` and returns the new path.
pub fn install(v: Variant, dir: &Path, file_name: &str) -> PathBuf {
    let dest = dir.join(file_name);
    std::fs::copy(fixture(v), &dest).unwrap_or_else(|e| panic!("copying the fixture to {dest:?}: {e}"));
    dest
}

/// The fixture's config.
pub fn tiny_config() -> serde_json::Value {
    serde_json::json!({
        "model_type": "tiny",
        "vocab_size": 64,
        "hidden_size": 32,
        "num_heads": 4,
        "num_layers": 2,
        "intermediate_size": 48,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
    })
}

/// Random weights for `tiny_config()`, reproducible from `seed`.
pub fn tiny_weights(seed: u64) -> Weights {
    let cfg = tiny_config();
    let n = |k: &str| cfg[k].as_i64().unwrap() as i32;
    let (v, d, f) = (n("vocab_size"), n("hidden_size"), n("intermediate_size"));
    let mut counter = 0u64;
    let mut rand = |shape: &[i32]| {
        counter += 1;
        let key = random::key(seed.wrapping_mul(1000).wrapping_add(counter)).unwrap();
        random::normal(shape, 0.0, 0.1, Dtype::F32, Some(&key)).unwrap()
    };
    let mut w = Weights::new();
    w.insert("model.embed_tokens.weight", rand(&[v, d]));
    w.insert("model.norm.weight", Array::ones(&[d], Dtype::F32).unwrap());
    for i in 0..n("num_layers") {
        let p = format!("model.layers.{i}");
        w.insert(format!("{p}.input_layernorm.weight"), Array::ones(&[d], Dtype::F32).unwrap());
        w.insert(format!("{p}.post_attention_layernorm.weight"), Array::ones(&[d], Dtype::F32).unwrap());
        for m in ["q", "k", "v", "o"] {
            w.insert(format!("{p}.self_attn.{m}_proj.weight"), rand(&[d, d]));
        }
        w.insert(format!("{p}.mlp.gate_proj.weight"), rand(&[f, d]));
        w.insert(format!("{p}.mlp.up_proj.weight"), rand(&[f, d]));
        w.insert(format!("{p}.mlp.down_proj.weight"), rand(&[d, f]));
    }
    w
}

/// Token ids `[1, L]`.
pub fn tokens(ids: &[i32]) -> Array {
    Array::from_slice(ids, &[1, ids.len() as i32]).unwrap()
}

/// A forward context that keeps each layer's keys and values by concatenation and attends
/// with a causal mask when more than one token is new.
#[derive(Default)]
pub struct TestContext {
    kv: HashMap<usize, (Array, Array)>,
}

impl TestContext {
    pub fn new() -> TestContext {
        TestContext::default()
    }
}

impl ForwardContext for TestContext {
    fn offset(&self, layer: usize) -> mlx_engine_plugin_api::Result<i32> {
        Ok(match self.kv.get(&layer) {
            Some((k, _)) => k.dim(2)?,
            None => 0,
        })
    }

    fn attention(
        &mut self,
        layer: usize,
        q: &Array,
        k: &Array,
        v: &Array,
        scale: f32,
        _options: &AttentionOptions,
    ) -> mlx_engine_plugin_api::Result<Array> {
        let (k, v) = match self.kv.remove(&layer) {
            Some((pk, pv)) => (concatenate(&[&pk, k], 2)?, concatenate(&[&pv, v], 2)?),
            None => (k.clone(), v.clone()),
        };
        let mask = if q.dim(2)? > 1 { AttnMask::Causal } else { AttnMask::None };
        let out = fast::scaled_dot_product_attention(q, &k, &v, scale, mask)?;
        self.kv.insert(layer, (k, v));
        Ok(out)
    }
}
