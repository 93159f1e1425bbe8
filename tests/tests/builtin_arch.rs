//! Built-in architectures registered with `inventory` (as the engine's generic VLM fallback
//! will be): resolved after plugins, listed, and panic-contained like plugins.

use mlx_engine::plugin_host::{BuiltinArch, HostOptions, PluginHost, Provider, Via};
use mlx_engine_plugin_api::{
    model_factory, Array, Dtype, ForwardContext, Input, LayerCache, ModelArch, Result, Weights,
};
use mlx_engine_tests::{install, lib_name, tiny_config, tiny_weights, tokens, TestContext, Variant};
use tempfile::TempDir;

const PANIC: &str = "built-in test arch panics on purpose";

/// A model whose forward returns zeros for token 0 and panics otherwise.
struct Fragile;

impl ModelArch for Fragile {
    type Config = serde_json::Value;

    fn new(_config: serde_json::Value, _weights: Weights) -> Result<Fragile> {
        Ok(Fragile)
    }

    fn cache_layout(&self) -> Vec<LayerCache> {
        vec![LayerCache::SlidingWindow { window: 4 }]
    }

    fn forward(&self, input: Input<'_>, _ctx: &mut dyn ForwardContext) -> Result<Array> {
        let Input::Tokens(ids) = input else { panic!("{PANIC}") };
        if ids.to_vec::<i32>()?.iter().any(|&t| t != 0) {
            panic!("{PANIC}");
        }
        Array::zeros(&[1, ids.dim(1)?, 8], Dtype::F32)
    }

    fn embed_tokens(&self, _ids: &Array) -> Result<Array> {
        panic!("{PANIC}")
    }
}

inventory::submit! {
    BuiltinArch {
        name: "fragile",
        text_types: &["fragile", "tiny"],
        vision_types: &[],
        model: Some(model_factory::<Fragile>),
        vision: None,
        fallback: false,
    }
}

#[test]
fn builtins_resolve_after_plugins_and_contain_panics() {
    let host = PluginHost::new(&HostOptions::isolated(vec![], None)).unwrap();
    let r = host.resolve_text("fragile").unwrap();
    assert_eq!(r.via, Via::Builtin);
    assert!(matches!(r.provider, Provider::Builtin(b) if b.name == "fragile"));
    let model = host.create_model("fragile", "{}", Weights::new(), mlx_engine_plugin_api::WeightsFormat::Mlx).unwrap();
    assert_eq!(model.cache_layout(), vec![LayerCache::SlidingWindow { window: 4 }]);
    let ok = model.forward(Input::Tokens(&tokens(&[0, 0])), &mut TestContext::new()).unwrap();
    assert_eq!(ok.shape(), vec![1, 2, 8]);
    let err = model.forward(Input::Tokens(&tokens(&[1])), &mut TestContext::new()).unwrap_err();
    assert!(err.to_string().contains(PANIC), "{err}");
    assert!(model.embed_tokens(&tokens(&[1])).unwrap_err().to_string().contains(PANIC));
    // The built-in has no vision add-on, so the vision lookup passes it by and ends at the
    // generic VLM fallback (step 4).
    let v = host.resolve_vision("fragile").unwrap();
    assert_eq!(v.via, Via::Fallback);
    assert!(matches!(v.provider, Provider::Builtin(b) if b.name == "generic-vlm"), "{v}");

    let listing = mlx_engine::cli::plugins::render(&host);
    assert!(listing.contains("fragile  model types: fragile, tiny  vision add-ons: -"), "{listing}");
    let err = host.resolve_text("nope").unwrap_err();
    assert!(err.to_string().contains("`fragile` (built-in fragile)"), "{err}");
}

#[test]
fn a_plugin_declaring_the_type_beats_the_builtin() {
    let dir = TempDir::new().unwrap();
    let path = install(Variant::Good, dir.path(), &lib_name("tiny"));
    let host = PluginHost::new(&HostOptions::isolated(vec![dir.path().to_path_buf()], None)).unwrap();
    let r = host.resolve_text("tiny").unwrap();
    assert_eq!(r.path(), Some(path.as_path()));
    let model =
        r.create_model(&tiny_config().to_string(), tiny_weights(9), mlx_engine_plugin_api::WeightsFormat::Mlx).unwrap();
    assert_eq!(model.cache_layout().len(), 2);
    // Without the plugin the built-in answers.
    let host = PluginHost::new(&HostOptions::isolated(vec![], None)).unwrap();
    assert_eq!(host.resolve_text("tiny").unwrap().via, Via::Builtin);
}
