//! Architectures compiled into the engine (or into a program embedding it), registered with
//! `inventory` so that adding one is a `submit!` next to its code rather than an edit to a
//! central list. They are consulted after every plugin (see `resolve`), so a plugin can always
//! replace a built-in.
//!
//! ```ignore
//! inventory::submit! {
//!     mlx_engine::plugin_host::BuiltinArch {
//!         name: "my-arch",
//!         text_types: &["my_arch"],
//!         vision_types: &[],
//!         model: Some(mlx_engine::api::model_factory::<MyArch>),
//!         vision: None,
//!         fallback: false,
//!     }
//! }
//! ```

use std::path::PathBuf;

use mlx_engine_plugin_api::host::catch_panics;
use mlx_engine_plugin_api::{
    Array, DynModel, DynVision, ForwardContext, ImagePrompt, Input, LayerCache, ModelFactory, VisionFactory, Weights,
    WeightsFormat,
};

use crate::error::{Error, Result};
use crate::plugin_host::registry::Kind;

/// One built-in architecture and the model types it provides.
pub struct BuiltinArch {
    pub name: &'static str,
    pub text_types: &'static [&'static str],
    pub vision_types: &'static [&'static str],
    pub model: Option<ModelFactory>,
    pub vision: Option<VisionFactory>,
    /// The vision fallback (step 4 of the resolution): its `vision` factory serves every
    /// vision model type that nothing else claims. The engine's generic VLM
    /// (`crate::vision::generic`) is the one; with two, the first by name is used.
    pub fallback: bool,
}

inventory::collect!(BuiltinArch);

/// The vision fallback, if one is registered.
pub fn vision_fallback() -> Option<&'static BuiltinArch> {
    builtins().into_iter().find(|b| b.fallback && b.vision.is_some())
}

/// Every registered built-in, sorted by name so resolution does not depend on link order.
pub fn builtins() -> Vec<&'static BuiltinArch> {
    std::hint::black_box(crate::vision::generic::anchor());
    let mut v: Vec<&'static BuiltinArch> = inventory::iter::<BuiltinArch>.into_iter().collect();
    v.sort_by_key(|b| b.name);
    v
}

impl BuiltinArch {
    /// Whether this built-in can build `model_type` for the lookup `kind`.
    pub fn provides(&self, kind: Kind, model_type: &str) -> bool {
        match kind {
            Kind::Text => self.model.is_some() && self.text_types.contains(&model_type),
            Kind::Vision => self.vision.is_some() && self.vision_types.contains(&model_type),
        }
    }

    /// The model types offered for `kind` (only those with a factory).
    pub fn types(&self, kind: Kind) -> &'static [&'static str] {
        match kind {
            Kind::Text if self.model.is_some() => self.text_types,
            Kind::Vision if self.vision.is_some() => self.vision_types,
            _ => &[],
        }
    }

    fn err(&self, reason: String) -> Error {
        Error::Plugin { path: PathBuf::from(format!("<built-in {}>", self.name)), reason }
    }

    /// Builds a text model; a panic in the built-in's code becomes an error, as for plugins.
    pub fn create_model(
        &self,
        model_type: &str,
        config_json: &str,
        weights: Weights,
        format: WeightsFormat,
    ) -> Result<Box<dyn DynModel>> {
        let factory =
            self.model.ok_or_else(|| self.err(format!("provides no text model (asked for `{model_type}`)")))?;
        let built = catch_panics(|| {
            let inner = factory(config_json, weights, format)?;
            let layout = inner.cache_layout();
            Ok(BuiltinModel { inner, layout })
        });
        let model = built.map_err(|e| self.err(format!("building text model `{model_type}` failed: {e}")))?;
        Ok(Box::new(model))
    }

    /// Builds a vision add-on, with panics contained.
    pub fn create_vision(
        &self,
        model_type: &str,
        config_json: &str,
        weights: Weights,
        format: WeightsFormat,
    ) -> Result<Box<dyn DynVision>> {
        let factory =
            self.vision.ok_or_else(|| self.err(format!("provides no vision add-on (asked for `{model_type}`)")))?;
        let built = catch_panics(|| factory(config_json, weights, format).map(|inner| BuiltinVision { inner }));
        let vision = built.map_err(|e| self.err(format!("building vision add-on `{model_type}` failed: {e}")))?;
        Ok(Box::new(vision))
    }
}

/// A built-in model whose calls are panic-contained, so a bug in engine-side architecture code
/// fails the request exactly like a panicking plugin does. The layout is read once at
/// construction (under the same guard) because `cache_layout` cannot report an error.
struct BuiltinModel {
    inner: Box<dyn DynModel>,
    layout: Vec<LayerCache>,
}

impl DynModel for BuiltinModel {
    fn cache_layout(&self) -> Vec<LayerCache> {
        self.layout.clone()
    }

    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> mlx_engine_plugin_api::Result<Array> {
        catch_panics(|| self.inner.forward(input, ctx))
    }

    fn embed_tokens(&self, ids: &Array) -> mlx_engine_plugin_api::Result<Array> {
        catch_panics(|| self.inner.embed_tokens(ids))
    }

    fn honours_last_position_only(&self) -> bool {
        self.inner.honours_last_position_only()
    }

    fn embeddings_scale(&self) -> mlx_engine_plugin_api::Result<f32> {
        catch_panics(|| self.inner.embeddings_scale())
    }

    fn shard(&mut self, group: &mlx_engine_plugin_api::distributed::Group) -> mlx_engine_plugin_api::Result<()> {
        catch_panics(|| self.inner.shard(group))?;
        self.layout = catch_panics(|| Ok(self.inner.cache_layout()))?;
        Ok(())
    }

    fn pipeline(&mut self, group: &mlx_engine_plugin_api::distributed::Group) -> mlx_engine_plugin_api::Result<()> {
        catch_panics(|| self.inner.pipeline(group))?;
        self.layout = catch_panics(|| Ok(self.inner.cache_layout()))?;
        Ok(())
    }
}

struct BuiltinVision {
    inner: Box<dyn DynVision>,
}

impl DynVision for BuiltinVision {
    fn image_prompt(&self, height: i32, width: i32) -> mlx_engine_plugin_api::Result<ImagePrompt> {
        catch_panics(|| self.inner.image_prompt(height, width))
    }

    fn encode(&self, pixels: &Array) -> mlx_engine_plugin_api::Result<Array> {
        catch_panics(|| self.inner.encode(pixels))
    }

    fn merge(
        &self,
        input_ids: &Array,
        text_embeddings: &Array,
        features: &[Array],
        embeddings_scale: f32,
    ) -> mlx_engine_plugin_api::Result<Array> {
        catch_panics(|| self.inner.merge(input_ids, text_embeddings, features, embeddings_scale))
    }
}
