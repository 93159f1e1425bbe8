//! Loading plugins built out of tree: the good one works end to end; every bad one is reported
//! with its file name while the process (and the good plugin) keep working.

use std::path::{Path, PathBuf};

use mlx_engine::cli::plugins::render;
use mlx_engine::plugin_host::{HostOptions, LoadedPlugin, PluginHost, Via};
use mlx_engine::Error;
use mlx_engine_plugin_api::abi::ABI_MINOR;
use mlx_engine_plugin_api::{Input, LayerCache, WeightsFormat};
use mlx_engine_tests::{
    fixture, install, lib_name, tiny_config, tiny_weights, tokens, TestContext, Variant, PANIC_MESSAGE,
};
use tempfile::TempDir;

fn host_for(dirs: &[&Path]) -> PluginHost {
    PluginHost::new(&HostOptions::isolated(dirs.iter().map(|d| d.to_path_buf()).collect(), None)).unwrap()
}

fn folder_with(variants: &[(Variant, &str)]) -> (TempDir, Vec<PathBuf>) {
    let dir = TempDir::new().unwrap();
    let paths = variants.iter().map(|(v, name)| install(*v, dir.path(), &lib_name(name))).collect();
    (dir, paths)
}

fn config() -> String {
    tiny_config().to_string()
}

/// The one load error of `host`, asserting it is about `path`.
fn only_load_error(host: &PluginHost, path: &Path) -> String {
    let errors: Vec<_> = host.load_errors().collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, path);
    errors[0].1.to_string()
}

#[test]
fn good_plugin_loads_and_is_listed() {
    let (dir, paths) = folder_with(&[(Variant::Good, "tiny")]);
    let host = host_for(&[dir.path()]);
    let plugins: Vec<_> = host.plugins().collect();
    assert_eq!(plugins.len(), 1);
    let p = plugins[0];
    assert_eq!((p.name.as_str(), p.version.as_str(), p.abi), ("tiny", "0.3.1", (1, ABI_MINOR)));
    assert_eq!(p.text_types, vec!["tiny".to_string()]);
    assert!(p.vision_types.is_empty());
    assert_eq!(p.path, paths[0]);

    let listing = render(&host);
    let row = listing.lines().find(|l| l.contains(&paths[0].display().to_string())).expect(&listing);
    let abi = format!("1.{ABI_MINOR}");
    for cell in ["tiny", "0.3.1", abi.as_str()] {
        assert!(row.split_whitespace().any(|c| c == cell), "missing {cell} in row {row:?}");
    }
    assert!(listing.contains("NAME") && listing.contains("VISION ADD-ONS"), "{listing}");
    assert!(listing.contains("Load errors:\n  (none)"), "{listing}");
    assert!(listing.contains(&format!("1. {}  [--plugins]", dir.path().display())), "{listing}");
}

#[test]
fn model_runs_deterministically_and_cached_decode_matches_full_forward() {
    let (dir, paths) = folder_with(&[(Variant::Good, "tiny")]);
    let host = host_for(&[dir.path()]);
    let resolved = host.resolve_text("tiny").unwrap();
    assert_eq!(resolved.via, Via::Declared);
    assert_eq!(resolved.path(), Some(paths[0].as_path()));

    let model = host.create_model("tiny", &config(), tiny_weights(7), WeightsFormat::Mlx).unwrap();
    assert_eq!(model.cache_layout(), vec![LayerCache::Full; 2]);

    let ids = [3, 14, 15, 9, 26, 5];
    let full = |m: &dyn mlx_engine_plugin_api::DynModel| {
        m.forward(Input::Tokens(&tokens(&ids)), &mut TestContext::new()).unwrap()
    };
    let logits = full(model.as_ref());
    assert_eq!(logits.shape(), vec![1, ids.len() as i32, 64]);
    let values = logits.to_vec_f32().unwrap();
    assert!(values.iter().all(|x| x.is_finite()));
    assert!(values.iter().any(|x| *x != 0.0));
    assert_eq!(values, full(model.as_ref()).to_vec_f32().unwrap(), "forward is not deterministic");

    // Prefix, then one token through the cache, must equal the full pass's last position.
    let mut ctx = TestContext::new();
    let n = ids.len();
    let prefix = model.forward(Input::Tokens(&tokens(&ids[..n - 1])), &mut ctx).unwrap();
    assert_eq!(prefix.shape(), vec![1, n as i32 - 1, 64]);
    let step = model.forward(Input::Tokens(&tokens(&ids[n - 1..])), &mut ctx).unwrap();
    assert_eq!(step.shape(), vec![1, 1, 64]);
    let last = &values[(n - 1) * 64..];
    let max_diff = step.to_vec_f32().unwrap().iter().zip(last).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff < 1e-4, "cached decode differs from the full forward by {max_diff}");

    // Embeddings in give the same logits as tokens in.
    let emb = model.embed_tokens(&tokens(&ids)).unwrap();
    assert_eq!(emb.shape(), vec![1, ids.len() as i32, 32]);
    let via_emb = model.forward(Input::Embeddings(&emb), &mut TestContext::new()).unwrap();
    assert_eq!(via_emb.to_vec_f32().unwrap(), values);
}

#[test]
fn plugin_errors_while_building_name_the_file_and_tensor() {
    let (dir, paths) = folder_with(&[(Variant::Good, "tiny")]);
    let host = host_for(&[dir.path()]);
    let mut weights = tiny_weights(1);
    weights.remove("model.norm.weight");
    let err = host.create_model("tiny", &config(), weights, WeightsFormat::Mlx).err().unwrap();
    let Error::Plugin { path, reason } = &err else { panic!("{err:?}") };
    assert_eq!(path, &paths[0]);
    assert!(reason.contains("building text model `tiny` failed"), "{reason}");
    assert!(reason.contains("tensor `model.norm.weight` is missing"), "{reason}");

    let err = host.create_model("tiny", "{\"vocab_size\": 1}", tiny_weights(1), WeightsFormat::Mlx).err().unwrap();
    assert!(err.to_string().contains("missing field"), "{err}");
}

#[test]
fn wrong_abi_major_is_refused_with_the_file_name() {
    let (dir, paths) = folder_with(&[(Variant::AbiMajor2, "tiny")]);
    let err = LoadedPlugin::load(&paths[0]).unwrap_err();
    let Error::Plugin { path, reason } = &err else { panic!("{err:?}") };
    assert_eq!(path, &paths[0]);
    assert!(reason.contains("built for plugin ABI 2.0, this engine supports ABI 1.x"), "{reason}");
    assert!(err.to_string().contains(&paths[0].display().to_string()));

    let host = host_for(&[dir.path()]);
    assert!(only_load_error(&host, &paths[0]).contains("ABI 2.0"));
    assert_eq!(host.plugins().count(), 0);
    let err = host.resolve_text("tiny").unwrap_err();
    assert!(err.to_string().contains("1 plugin file(s) could not be loaded"), "{err}");
    let listing = render(&host);
    assert!(listing.contains(&format!("{}: built for plugin ABI 2.0", paths[0].display())), "{listing}");
}

#[test]
fn missing_descriptor_is_reported() {
    let (dir, paths) = folder_with(&[(Variant::NoDescriptor, "nodesc")]);
    let host = host_for(&[dir.path()]);
    let reason = only_load_error(&host, &paths[0]);
    assert!(reason.contains("no descriptor symbol `mlx_engine_plugin_descriptor`"), "{reason}");
    let err = LoadedPlugin::load(&paths[0]).unwrap_err();
    assert!(err.to_string().starts_with(&format!("plugin {}: no descriptor", paths[0].display())), "{err}");
}

#[test]
fn a_text_file_is_not_a_shared_library_and_others_still_load() {
    let (dir, _) = folder_with(&[(Variant::Good, "tiny")]);
    let junk = dir.path().join(lib_name("junk"));
    std::fs::write(&junk, "this is not a library\n").unwrap();
    let host = host_for(&[dir.path()]);
    let reason = only_load_error(&host, &junk);
    assert!(reason.starts_with("not a shared library: "), "{reason}");
    let err = LoadedPlugin::load(&junk).unwrap_err();
    assert!(err.to_string().contains(&junk.display().to_string()), "{err}");
    // The good plugin beside it is unaffected.
    let model = host.create_model("tiny", &config(), tiny_weights(2), WeightsFormat::Mlx).unwrap();
    assert!(model.forward(Input::Tokens(&tokens(&[1, 2])), &mut TestContext::new()).is_ok());
}

#[test]
fn a_panicking_forward_fails_the_request_not_the_process() {
    let (bad_dir, bad_paths) = folder_with(&[(Variant::PanicForward, "tiny")]);
    let (good_dir, _) = folder_with(&[(Variant::Good, "tiny")]);
    let bad_host = host_for(&[bad_dir.path()]);
    let bad = bad_host.create_model("tiny", &config(), tiny_weights(3), WeightsFormat::Mlx).unwrap();
    for _ in 0..2 {
        let err = bad.forward(Input::Tokens(&tokens(&[1, 2, 3])), &mut TestContext::new()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("panicked: ") && msg.contains(PANIC_MESSAGE), "{msg}");
        assert!(msg.contains(&format!("plugin `tiny` ({}): forward: ", bad_paths[0].display())), "{msg}");
    }
    drop(bad);
    drop(bad_host);

    let good_host = host_for(&[good_dir.path()]);
    let good = good_host.create_model("tiny", &config(), tiny_weights(3), WeightsFormat::Mlx).unwrap();
    let logits = good.forward(Input::Tokens(&tokens(&[1, 2, 3])), &mut TestContext::new()).unwrap();
    assert_eq!(logits.shape(), vec![1, 3, 64]);
}

#[test]
fn models_keep_their_plugin_loaded_after_the_host_is_gone() {
    let (dir, _) = folder_with(&[(Variant::Good, "tiny")]);
    let model = {
        let host = host_for(&[dir.path()]);
        host.create_model("tiny", &config(), tiny_weights(4), WeightsFormat::Mlx).unwrap()
    };
    drop(dir);
    let logits = model.forward(Input::Tokens(&tokens(&[5, 6])), &mut TestContext::new()).unwrap();
    assert_eq!(logits.shape(), vec![1, 2, 64]);
}

#[test]
fn two_plugins_claiming_one_type_in_one_folder_conflict() {
    let (dir, paths) = folder_with(&[(Variant::Good, "tiny"), (Variant::AltName, "tiny2")]);
    let host = host_for(&[dir.path()]);
    assert_eq!(host.plugins().count(), 2);
    let err = host.resolve_text("tiny").unwrap_err();
    let Error::Conflict { model_type, files } = &err else { panic!("{err:?}") };
    assert_eq!(model_type, "tiny");
    for p in &paths {
        assert!(files.contains(&p.display().to_string()), "{files}");
    }
    assert!(err.to_string().contains("add an entry to registry.toml"), "{err}");
    let listing = render(&host);
    assert!(listing.contains("text `tiny` unusable: model type `tiny` is claimed by several plugins"), "{listing}");
}

#[test]
fn the_registry_decides_between_two_plugins() {
    let (dir, paths) = folder_with(&[(Variant::Good, "tiny"), (Variant::AltName, "tiny2")]);
    let registry = dir.path().join("registry.toml");
    std::fs::write(&registry, "# pick the alternative\n[text]\ntiny = \"tiny2\"\n").unwrap();
    let host = PluginHost::new(&HostOptions::isolated(vec![dir.path().to_path_buf()], Some(registry.clone()))).unwrap();
    let r = host.resolve_text("tiny").unwrap();
    assert_eq!(r.path(), Some(paths[1].as_path()));
    assert_eq!(r.via, Via::Registry { location: format!("{}:3", registry.display()) });
    let model = r.create_model(&config(), tiny_weights(5), WeightsFormat::Mlx).unwrap();
    assert!(model.forward(Input::Tokens(&tokens(&[1])), &mut TestContext::new()).is_ok());

    let listing = render(&host);
    assert!(listing.contains(&format!("installed: {}", paths[1].display())), "{listing}");
    assert!(listing.contains(&format!("overridden by plugin `tiny2` 0.3.1 ({})", paths[1].display())), "{listing}");
}

#[test]
fn an_earlier_folder_overrides_a_later_one() {
    let (first, first_paths) = folder_with(&[(Variant::AltName, "tiny2")]);
    let (second, second_paths) = folder_with(&[(Variant::Good, "tiny")]);
    let host = host_for(&[first.path(), second.path()]);
    let r = host.resolve_text("tiny").unwrap();
    assert_eq!(r.path(), Some(first_paths[0].as_path()));
    let listing = render(&host);
    let note = format!(
        "note: {}: text `tiny` overridden by plugin `tiny2` 0.3.1 ({}) (earlier folder)",
        second_paths[0].display(),
        first_paths[0].display()
    );
    assert!(listing.contains(&note), "{listing}");
    // Same plugin name in both folders: the first folder's file is the one used.
    let (third, third_paths) = folder_with(&[(Variant::Good, "tiny")]);
    let host = host_for(&[third.path(), second.path()]);
    assert_eq!(host.resolve_text("tiny").unwrap().path(), Some(third_paths[0].as_path()));
}

#[test]
fn an_unknown_model_type_lists_what_is_available() {
    let (dir, _) = folder_with(&[(Variant::Good, "tiny")]);
    let host = host_for(&[dir.path()]);
    let err = host.resolve_text("nope").unwrap_err();
    let Error::UnknownModelType { model_type, available } = &err else { panic!("{err:?}") };
    assert_eq!(model_type, "nope");
    assert!(available.contains("`tiny` (plugin tiny)"), "{available}");
    assert!(err.to_string().starts_with("no architecture for model type `nope`; available: "), "{err}");
    // A vision type nothing claims ends at the generic VLM fallback (step 4), not at an error;
    // one the registry maps to a missing plugin is `a_registry_entry_without_its_plugin_...`.
    assert_eq!(host.resolve_vision("tiny").unwrap().via, Via::Fallback);
}

#[test]
fn a_registry_entry_without_its_plugin_fails_only_when_requested() {
    let (dir, _) = folder_with(&[(Variant::Good, "tiny")]);
    let registry = dir.path().join("registry.toml");
    std::fs::write(&registry, "[text]\nllama = \"llama\"\ntiny = \"tiny\"\n").unwrap();
    let host = PluginHost::new(&HostOptions::isolated(vec![dir.path().to_path_buf()], Some(registry.clone()))).unwrap();
    assert!(host.resolve_text("tiny").is_ok());
    let err = host.resolve_text("llama").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::PluginNotInstalled { .. }), "{err:?}");
    assert!(msg.contains(&format!("needs plugin `llama` ({}:2)", registry.display())), "{msg}");
    assert!(msg.contains(&lib_name("llama")) && msg.contains(&dir.path().display().to_string()), "{msg}");
    let listing = render(&host);
    let row = listing.lines().find(|l| l.contains("[text]") && l.contains("llama")).expect(&listing);
    assert!(row.trim_end().ends_with("not installed"), "{row}");
    let err = host.resolve_text("nope").unwrap_err();
    assert!(err.to_string().contains("in registry.toml but not installed: `llama` -> llama"), "{err}");
}

#[test]
fn the_fixture_is_built_out_of_tree() {
    // The fixture depends on the plugin API by path only, in its own workspace.
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugin-fixture/Cargo.toml")).unwrap();
    assert!(manifest.contains("[workspace]") && !manifest.contains("mlx-engine ="), "{manifest}");
    assert!(fixture(Variant::Good).is_file());
}
