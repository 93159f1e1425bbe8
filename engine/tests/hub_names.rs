//! `--model org/name` from a Hugging Face cache laid out as huggingface_hub lays it out: refs
//! naming commits, snapshot folders of links into blobs. No network is involved: these runs are
//! offline (`HF_HUB_OFFLINE=1`); hub_download.rs tests what is not cached.

mod common_models;
mod tokenizer_fixtures;

use std::path::Path;
use std::process::Command;

use common_models::*;

/// Writes `model` into `cache` as repository `repo` at commit `commit`, with `refs/main` and a
/// tag pointing at it.
fn cache_model(cache: &Path, repo: &str, commit: &str, model: &TinyModel) {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let files = tempfile::tempdir().unwrap();
    model.write(files.path());
    let (blobs, snapshot) = (root.join("blobs"), root.join("snapshots").join(commit));
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for e in std::fs::read_dir(files.path()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let blob = blobs.join(format!("blob-{name}"));
        std::fs::copy(&p, &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob-{name}"), snapshot.join(&name)).unwrap();
    }
    // huggingface_hub writes every named revision (branch or tag) as refs/<name>.
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), commit).unwrap();
    std::fs::write(root.join("refs/v1"), commit).unwrap();
}

fn run(args: &[&str], cache: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_repository_id_loads_from_the_local_hugging_face_cache() {
    let cache = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    cache_model(cache.path(), "tiny-org/tiny-llama", commit, &TinyModel::printable(2));
    let snapshot = cache.path().join(format!("models--tiny-org--tiny-llama/snapshots/{commit}"));
    for revision in ["main", "v1", commit] {
        let args = ["generate", "-m", "tiny-org/tiny-llama", "--revision", revision, "-p", "ab", "-n", "2"];
        let (code, err) = run(&args, cache.path());
        assert_eq!(code, 0, "{revision}: {err}");
        assert!(err.contains("loaded tiny-org/tiny-llama"), "{err}");
    }
    // `--revision` that is not cached, and a repository that is not: say what is missing.
    let (code, err) = run(&["generate", "-m", "tiny-org/tiny-llama", "--revision", "dev", "-p", "x"], cache.path());
    assert_eq!(code, 1);
    assert!(err.contains("revision `dev` is not in the cache") && err.contains("HF_HUB_OFFLINE is set"), "{err}");
    let (code, err) = run(&["generate", "-m", "tiny-org/other", "-p", "x"], cache.path());
    assert_eq!(code, 1);
    assert!(err.contains("`tiny-org/other` is not a local path") && err.contains("huggingface-cli download"), "{err}");
    // A path still wins: the snapshot folder itself loads as a folder.
    let (code, err) = run(&["forward", "-m", snapshot.to_str().unwrap(), "--tokens", "97"], cache.path());
    assert_eq!(code, 0, "{err}");
}

#[test]
fn what_reads_as_a_repository_id() {
    use mlx_engine::model::hub::is_repo_id;
    assert!(is_repo_id("mlx-community/SmolLM2-135M-Instruct"));
    // Tests run in engine/, which has a src/ folder: `src/nope` is a missing path.
    for path in ["models/x/y", "./x", "/abs/x", "x", "a/../b", "../x", "src/nope"] {
        assert!(!is_repo_id(path), "{path}");
    }
}
