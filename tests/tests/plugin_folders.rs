//! The standard search: `--plugins`, `$MLX_ENGINE_PLUGIN_PATH`, beside the registry, the build.
//! Its own test binary with a single test, because it sets environment variables.

use mlx_engine::plugin_host::{HostOptions, Origin, PluginHost, RegistrySource};
use mlx_engine_tests::{install, lib_name, Variant};
use tempfile::TempDir;

#[test]
fn folders_are_searched_in_the_documented_order() {
    let root = TempDir::new().unwrap();
    let mk = |name: &str| {
        let p = root.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (cli, env_a, env_b, reg_dir) = (mk("cli"), mk("env-a"), mk("env-b"), mk("reg"));
    let beside = mk("reg/plugins");
    let registry = reg_dir.join("registry.toml");
    std::fs::write(&registry, "[text]\n").unwrap();
    // Only the folder beside the registry has the plugin: found through $MLX_ENGINE_REGISTRY.
    let plugin = install(Variant::Good, &beside, &lib_name("tiny"));

    let list = std::env::join_paths([&env_a, &env_b]).unwrap();
    // SAFETY-free in edition 2021; this binary has no other test running concurrently.
    std::env::set_var("MLX_ENGINE_PLUGIN_PATH", &list);
    std::env::set_var("MLX_ENGINE_REGISTRY", &registry);
    let host = PluginHost::new(&HostOptions::standard(vec![cli.clone()], None)).unwrap();
    std::env::remove_var("MLX_ENGINE_PLUGIN_PATH");
    std::env::remove_var("MLX_ENGINE_REGISTRY");

    assert_eq!(
        host.registry().source,
        RegistrySource::File { path: registry.clone(), found_by: "$MLX_ENGINE_REGISTRY" }
    );
    let folders: Vec<_> = host.folders().iter().map(|f| (f.path.clone(), f.origin)).collect();
    assert_eq!(
        folders[..4],
        [(cli, Origin::Cli), (env_a, Origin::Env), (env_b, Origin::Env), (beside, Origin::BesideRegistry)]
    );
    // The build folder comes last and only admits the workspace's plugin crates.
    if let Some(build) = host.folders().iter().find(|f| f.origin == Origin::Build) {
        assert_eq!(host.folders().last().map(|f| f.origin), Some(Origin::Build));
        let only = build.only.as_ref().expect("the build folder is filtered");
        assert!(only.iter().all(|n| n.starts_with(std::env::consts::DLL_PREFIX)), "{only:?}");
    }
    assert_eq!(host.resolve_text("tiny").unwrap().path(), Some(plugin.as_path()));
}
