//! The versioning promise, tested with real binaries: plugins built against the frozen ABI 1.0
//! to 1.3 plugin-apis load and compute the same logits (and tokens); plugins of a newer minor, with undersized
//! tables, a wrong fingerprint or built with `panic = "abort"` are refused naming the file;
//! errors of every vtable call come back with the plugin's message and name.

use std::path::Path;

use mlx_engine::generate::prefill::LastPositionOnly;
use mlx_engine::plugin_host::{HostOptions, LoadedPlugin, PluginHost};
use mlx_engine::Error;
use mlx_engine_plugin_api::abi::{ModelVTable, PluginDescriptor, ABI_MINOR};
use mlx_engine_plugin_api::distributed::Backend;
use mlx_engine_plugin_api::{Dtype, DtypePolicy, DynModel, Input, LayerCache, WeightsFormat};
use mlx_engine_tests::{
    install, lib_name, tiny_config, tiny_weights, tokens, TestContext, Variant, LAYOUT_PANIC_MESSAGE,
};
use tempfile::TempDir;

fn host_with(v: Variant) -> (TempDir, std::path::PathBuf, PluginHost) {
    let dir = TempDir::new().unwrap();
    let path = install(v, dir.path(), &lib_name("tiny"));
    let host = PluginHost::new(&HostOptions::isolated(vec![dir.path().to_path_buf()], None)).unwrap();
    (dir, path, host)
}

/// A plugin built against a frozen plugin-api, loaded: it must report its minor and file.
struct Frozen {
    _dir: TempDir,
    path: std::path::PathBuf,
    host: PluginHost,
}

impl Frozen {
    fn load(v: Variant, minor: u32) -> Frozen {
        let (_dir, path, host) = host_with(v);
        let plugin = host.plugins().next().unwrap_or_else(|| panic!("{:?}", host.load_errors().collect::<Vec<_>>()));
        assert_eq!((plugin.abi, &plugin.path), ((1, minor), &path));
        Frozen { _dir, path, host }
    }
}

/// The reason of the load error of `path`, checking that the error names the file.
fn refusal(path: &Path) -> String {
    let err = LoadedPlugin::load(path).unwrap_err();
    let Error::Plugin { path: p, reason } = &err else { panic!("{err:?}") };
    assert_eq!(p, path);
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    reason.clone()
}

fn logits(model: &dyn DynModel, ids: &[i32]) -> Vec<f32> {
    model.forward(Input::Tokens(&tokens(ids)), &mut TestContext::new()).unwrap().to_vec_f32().unwrap()
}

#[test]
fn a_plugin_built_against_abi_1_0_loads_and_gives_the_same_logits() {
    let (old, new) = (Frozen::load(Variant::Abi10, 0), host_with(Variant::Good));
    let (_new_dir, _, new_host) = new;
    let old_host = &old.host;
    assert_eq!(new_host.plugins().next().unwrap().abi, (1, ABI_MINOR));

    let config = tiny_config().to_string();
    let old = old_host.create_model("tiny", &config, tiny_weights(11), WeightsFormat::Mlx).unwrap();
    let new = new_host.create_model("tiny", &config, tiny_weights(11), WeightsFormat::Mlx).unwrap();
    // 1.0's layout entries (no error channel) still describe the cache.
    assert_eq!(old.cache_layout(), vec![LayerCache::Full; 2]);

    let ids = [3, 1, 4, 1, 5, 9, 2, 6];
    let want = logits(new.as_ref(), &ids);
    assert_eq!(logits(old.as_ref(), &ids), want, "the 1.0 plugin computes different logits");

    // Incremental decoding goes through the 1.0 plugin's calls into the 1.1 context.
    let mut ctx = TestContext::new();
    old.forward(Input::Tokens(&tokens(&ids[..7])), &mut ctx).unwrap();
    let step = old.forward(Input::Tokens(&tokens(&ids[7..])), &mut ctx).unwrap().to_vec_f32().unwrap();
    let last = &want[7 * 64..];
    let diff = step.iter().zip(last).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "cached decode of the 1.0 plugin differs by {diff}");
}

/// `n` greedy tokens after `prompt`, decoded through the engine's own KV cache.
fn greedy(model: &dyn DynModel, prompt: &[i32], n: usize) -> Vec<i32> {
    let mut cache = mlx_engine::cache::KvCache::new(model.cache_layout());
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = model.forward(Input::Tokens(&tokens(&input)), &mut cache).unwrap();
        let last = logits.slice_axis(1, logits.dim(1).unwrap() - 1, logits.dim(1).unwrap()).unwrap();
        let next = last.argmax(-1, false).unwrap().to_vec::<u32>().unwrap()[0] as i32;
        out.push(next);
        input = vec![next];
    }
    out
}

/// A model of the frozen plugin `v` (ABI 1.`minor`, 1.1 or later) and one of the current
/// fixture, from the same weights: checks that the frozen one answers 1.1's hooks and computes
/// the current one's logits and greedy tokens.
fn frozen_and_current(v: Variant, minor: u32) -> Compared {
    let old = Frozen::load(v, minor);
    let (_new_dir, _, new_host) = host_with(Variant::Good);
    // 1.1's descriptor hooks answer (the fixture keeps its final norm in f32).
    let names = ["model.norm.weight", "model.embed_tokens.weight"];
    let plugin = old.host.plugins().next().unwrap();
    assert_eq!(plugin.dtype_policy("tiny", &names).unwrap(), vec![DtypePolicy::F32, DtypePolicy::Compute]);
    let config = tiny_config().to_string();
    let old_model = old.host.create_model("tiny", &config, tiny_weights(21), WeightsFormat::Mlx).unwrap();
    let new_model = new_host.create_model("tiny", &config, tiny_weights(21), WeightsFormat::Mlx).unwrap();
    assert_eq!(old_model.cache_layout(), vec![LayerCache::Full; 2]);
    assert_eq!(old_model.embeddings_scale().unwrap(), 1.0);
    let ids = [3, 1, 4, 1, 5, 9, 2, 6];
    assert_eq!(logits(old_model.as_ref(), &ids), logits(new_model.as_ref(), &ids), "ABI 1.{minor}: other logits");
    // Prefill then one token at a time through the engine's cache, as generation runs.
    let want = greedy(new_model.as_ref(), &ids, 12);
    assert_eq!(greedy(old_model.as_ref(), &ids, 12), want, "ABI 1.{minor}: other tokens");
    Compared { old, model: old_model, current: new_model, ids, want }
}

/// What [`frozen_and_current`] compared: both models, the prompt and the greedy tokens.
struct Compared {
    old: Frozen,
    model: Box<dyn DynModel>,
    current: Box<dyn DynModel>,
    ids: [i32; 8],
    want: Vec<i32>,
}

#[test]
fn a_plugin_built_against_abi_1_1_loads_and_generates_what_the_current_one_does() {
    let Compared { old, mut model, mut current, ids, want } = frozen_and_current(Variant::Abi11, 1);
    // 1.2's entry is not there: sharding is refused naming both versions, and the model still runs.
    let group = mlx_engine_plugin_api::distributed::Group::init(Backend::Any, false).unwrap();
    let err = model.shard(&group).unwrap_err().to_string();
    assert!(err.contains("built for ABI 1.1, tensor parallelism needs ABI 1.2"), "{err}");
    assert!(err.contains(&old.path.display().to_string()), "{err}");
    // Nor 1.3's: a pipeline split is refused the same way. A current plugin has the entry, and
    // the fixture's architecture answers with the trait's default refusal.
    let err = model.pipeline(&group).unwrap_err().to_string();
    assert!(err.contains("built for ABI 1.1, pipeline parallelism needs ABI 1.3"), "{err}");
    let err = current.pipeline(&group).unwrap_err().to_string();
    assert!(err.contains("this architecture does not support pipeline parallelism"), "{err}");
    assert_eq!(greedy(model.as_ref(), &ids, 12), want);
}

#[test]
fn a_plugin_built_against_abi_1_2_loads_and_generates_and_refuses_only_a_pipeline() {
    let Compared { old, mut model, ids, want, .. } = frozen_and_current(Variant::Abi12, 2);
    let group = mlx_engine_plugin_api::distributed::Group::init(Backend::Any, false).unwrap();
    // 1.2 has `shard`: the call reaches the plugin, whose architecture does not implement it.
    let err = model.shard(&group).unwrap_err().to_string();
    assert!(err.contains("this architecture does not support tensor parallelism"), "{err}");
    let err = model.pipeline(&group).unwrap_err().to_string();
    assert!(err.contains("built for ABI 1.2, pipeline parallelism needs ABI 1.3"), "{err}");
    assert!(err.contains(&old.path.display().to_string()), "{err}");
    assert_eq!(greedy(model.as_ref(), &ids, 12), want);
}

#[test]
fn a_plugin_built_against_abi_1_3_answers_every_position_where_a_current_one_gives_the_last() {
    let Compared { model, current, ids, want, .. } = frozen_and_current(Variant::Abi13, 3);
    // A 1.3 plugin never sees 1.4's question, so the engine plans with its every-position head.
    assert!(!model.honours_last_position_only());
    assert!(current.honours_last_position_only());
    let last_only = |m: &dyn DynModel| {
        let mut ctx = TestContext::new();
        m.forward(Input::Tokens(&tokens(&ids)), &mut LastPositionOnly(&mut ctx)).unwrap()
    };
    let (old, new) = (last_only(model.as_ref()), last_only(current.as_ref()));
    assert_eq!((old.shape(), new.shape()), (vec![1, 8, 64], vec![1, 1, 64]));
    let old_last = old.slice_axis(1, 7, 8).unwrap().to_vec_f32().unwrap();
    let new_last = new.to_vec_f32().unwrap();
    let diff = old_last.iter().zip(&new_last).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    // One row through the final norm and head instead of eight: a matmul of other shape.
    assert!(diff < 1e-5, "the last position differs by {diff}");
    assert_eq!(greedy(model.as_ref(), &ids, 12), want);
}

#[test]
fn a_plugin_of_a_newer_minor_is_refused_naming_both_versions() {
    let (_dir, path, host) = host_with(Variant::AbiMinor2);
    let reason = refusal(&path);
    let theirs = format!("ABI 1.{}", ABI_MINOR + 1);
    let ours = format!("ABI 1.{ABI_MINOR}");
    assert!(reason.contains(&theirs) && reason.contains(&ours) && reason.contains("upgrade the engine"), "{reason}");
    assert_eq!(host.plugins().count(), 0);
}

#[test]
fn an_undersized_descriptor_is_refused() {
    let (_dir, path, _host) = host_with(Variant::SmallDescriptor);
    let reason = refusal(&path);
    let want = format!(
        "the descriptor has {} bytes, ABI 1.{ABI_MINOR} needs at least {}",
        PluginDescriptor::size_at_minor(0),
        PluginDescriptor::size_at_minor(ABI_MINOR)
    );
    assert!(reason.contains(&want), "{reason}");
}

#[test]
fn an_undersized_model_vtable_is_refused_when_the_model_is_built() {
    let (_dir, path, host) = host_with(Variant::SmallVtable);
    let err = host.create_model("tiny", &tiny_config().to_string(), tiny_weights(1), WeightsFormat::Mlx).err().unwrap();
    let Error::Plugin { path: p, reason } = &err else { panic!("{err:?}") };
    assert_eq!(p, &path);
    let want = format!(
        "the model vtable has {} bytes, ABI 1.{ABI_MINOR} needs at least {}",
        std::mem::offset_of!(ModelVTable, try_layer_cache),
        ModelVTable::size_at_minor(ABI_MINOR)
    );
    assert!(reason.contains(&want), "{reason}");
}

#[test]
fn a_wrong_layout_fingerprint_is_refused() {
    let (_dir, path, _host) = host_with(Variant::BadFingerprint);
    let reason = refusal(&path);
    assert!(reason.starts_with("layout check failed: fingerprint"), "{reason}");
    assert!(reason.contains(&format!("ABI 1.{ABI_MINOR} has")), "{reason}");
}

#[test]
fn a_plugin_built_with_panic_abort_is_refused_with_the_fix() {
    let (_dir, path, host) = host_with(Variant::PanicAbort);
    let reason = refusal(&path);
    assert!(reason.contains("built with panic = \"abort\""), "{reason}");
    assert!(reason.contains("rebuild it with panic = \"unwind\""), "{reason}");
    assert_eq!(host.load_errors().count(), 1);
}

#[test]
fn a_panic_while_describing_the_cache_fails_the_build_with_its_message() {
    let (_dir, path, host) = host_with(Variant::PanicLayout);
    let err = host.create_model("tiny", &tiny_config().to_string(), tiny_weights(1), WeightsFormat::Mlx).err().unwrap();
    let Error::Plugin { path: p, reason } = &err else { panic!("{err:?}") };
    assert_eq!(p, &path);
    assert!(reason.contains(LAYOUT_PANIC_MESSAGE), "{reason}");
}

#[test]
fn logits_of_the_wrong_shape_fail_the_request_naming_the_plugin_and_the_next_one_runs() {
    let (_bad_dir, bad_path, bad_host) = host_with(Variant::BadLogitsShape);
    let (_good_dir, _, good_host) = host_with(Variant::Good);
    let config = tiny_config().to_string();
    let bad = bad_host.create_model("tiny", &config, tiny_weights(2), WeightsFormat::Mlx).unwrap();
    let err = bad.forward(Input::Tokens(&tokens(&[1, 2, 3])), &mut TestContext::new()).unwrap_err().to_string();
    assert!(err.contains(&format!("plugin `tiny` ({})", bad_path.display())), "{err}");
    assert!(err.contains("returned logits of shape [1, 2, 64], expected [1, 3, vocab]"), "{err}");
    let good = good_host.create_model("tiny", &config, tiny_weights(2), WeightsFormat::Mlx).unwrap();
    assert_eq!(logits(good.as_ref(), &[1, 2, 3]).len(), 3 * 64);
}

#[test]
fn the_dtype_policy_and_gguf_hooks_answer_and_default_for_1_0_plugins() {
    let (_dir, _, host) = host_with(Variant::Good);
    let (_old_dir, _, old_host) = host_with(Variant::Abi10);
    let names = ["model.norm.weight", "model.embed_tokens.weight"];
    let good = host.plugins().next().unwrap();
    assert_eq!(good.dtype_policy("tiny", &names).unwrap(), vec![DtypePolicy::F32, DtypePolicy::Compute]);
    let old = old_host.plugins().next().unwrap();
    assert_eq!(old.dtype_policy("tiny", &names).unwrap(), vec![DtypePolicy::Compute; 2]);
    let err = good.dtype_policy("nope", &names).unwrap_err().to_string();
    assert!(err.contains("does not provide model type `nope`"), "{err}");

    // The engine applies the policy: bf16 compute, the final norm kept in f32.
    let weights = tiny_weights(3);
    let policy = host.resolve_text("tiny").unwrap().dtype_policy(&weights.names().collect::<Vec<_>>()).unwrap();
    let cast = mlx_engine::model::cast_weights(weights, Dtype::BF16, &policy).unwrap();
    assert_eq!(cast.get("model.norm.weight").unwrap().dtype(), Dtype::F32);
    assert_eq!(cast.get("model.embed_tokens.weight").unwrap().dtype(), Dtype::BF16);

    // Neither fixture maps GGUF (the default hook), and 1.0 plugins cannot.
    let gguf = r#"{"metadata": {"general.architecture": "tiny"}, "tensors": {}}"#;
    assert_eq!(good.gguf_config("tiny", gguf).unwrap(), None);
    assert_eq!(old.gguf_config("tiny", gguf).unwrap(), None);
}

#[test]
fn a_1_0_plugin_declares_no_embeddings_scale_and_a_padded_batch_fails_it_with_the_fix() {
    let (_old_dir, old_path, old_host) = host_with(Variant::Abi10);
    let config = tiny_config().to_string();
    let old = old_host.create_model("tiny", &config, tiny_weights(4), WeightsFormat::Mlx).unwrap();
    assert_eq!(old.embeddings_scale().unwrap(), 1.0);
    // The fixture reads a single offset, which a left-padded batch does not have: the request
    // fails naming the plugin and what to use instead; an unpadded batch runs.
    let padded = mlx_engine::cache::KvCache::batched(old.cache_layout(), &Default::default(), &[0, 2]).unwrap();
    let batch = mlx_engine_plugin_api::Array::from_slice(&[1i32, 2, 3, 0, 0, 4], &[2, 3]).unwrap();
    let err = old.forward(Input::Tokens(&batch), &mut padded.clone()).unwrap_err().to_string();
    assert!(err.contains(&old_path.display().to_string()) && err.contains("apply_at"), "{err}");
    let mut plain = mlx_engine::cache::KvCache::batched(old.cache_layout(), &Default::default(), &[0, 0]).unwrap();
    assert_eq!(old.forward(Input::Tokens(&batch), &mut plain).unwrap().shape(), vec![2, 3, 64]);
}
