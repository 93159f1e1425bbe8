//! `--model org/name` that is not cached downloads from the hub at `HF_ENDPOINT` into the
//! Hugging Face cache, only the files a model needs, and later runs load it from there. The hub
//! is a loopback server of the test's own (hub_server), so no test touches the network.

mod common_models;
mod hub_server;
mod measured;
mod tokenizer_fixtures;

use std::path::Path;
use std::process::Command;

use common_models::*;
use hub_server::{HubServer, ServedRepo};

struct Run {
    code: i32,
    out: String,
    err: String,
}

/// `mlx-engine ARGS` against `endpoint` and `cache`, with nothing of this machine's own hub
/// settings, token or proxies.
fn run(args: &[&str], endpoint: &str, cache: &Path, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-engine"));
    cmd.args(args).env("HF_ENDPOINT", endpoint).env("HF_HUB_CACHE", cache).env("HOME", cache);
    for k in [
        "HF_HOME",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let r = Run { code: out.status.code().unwrap_or(-1), out: text(&out.stdout), err: text(&out.stderr) };
    assert!(!r.err.contains("panicked"), "{}", r.err);
    r
}

/// The tensor names of a safetensors file (its JSON header).
fn tensor_names(file: &Path) -> Vec<String> {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect()
}

/// A tiny model as a sharded repository: its weights renamed to a shard that an index names,
/// plus files a download must leave alone (a stray consolidated checkpoint, PyTorch weights,
/// a README, a file in a subfolder).
fn sharded_repo(id: &str, model: &TinyModel) -> ServedRepo {
    let dir = tempfile::tempdir().unwrap();
    model.write(dir.path());
    let shard = "model-00001-of-00001.safetensors";
    let names = tensor_names(&dir.path().join("model.safetensors"));
    std::fs::rename(dir.path().join("model.safetensors"), dir.path().join(shard)).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = names.into_iter().map(|n| (n, shard.into())).collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let mut repo = ServedRepo::from_dir(id, dir.path());
    for junk in ["consolidated.safetensors", "pytorch_model.bin", "README.md", "onnx/model.onnx"] {
        repo.files.push((junk.into(), b"not needed".to_vec()));
    }
    repo
}

const UNWANTED: [&str; 4] = ["consolidated.safetensors", "pytorch_model.bin", "README.md", "onnx"];

#[test]
fn a_model_not_in_the_cache_downloads_once_and_then_loads_offline() {
    let cache = tempfile::tempdir().unwrap();
    let repo = sharded_repo("tiny-org/sharded", &TinyModel::printable(3));
    let commit = repo.commit.clone();
    let plain = ServedRepo::from_dir("tiny-org/plain", TinyModel::printable(4).write_temp().path());
    let hub = HubServer::start(vec![repo, plain]);
    let args = ["generate", "-m", "tiny-org/sharded", "-p", "ab", "-n", "3", "--temp", "0"];

    let first = run(&args, &hub.url, cache.path(), &[]);
    assert_eq!(first.code, 0, "{}", first.err);
    assert!(first.err.contains("downloading tiny-org/sharded (revision main) from http://127.0.0.1"), "{}", first.err);
    assert!(first.err.contains("loaded tiny-org/sharded"), "{}", first.err);
    let paths = hub.paths();
    assert!(paths.contains(&"/api/models/tiny-org/sharded/revision/main".to_string()), "{paths:?}");
    for needed in ["config.json", "tokenizer.json", "model.safetensors.index.json", "model-00001-of-00001.safetensors"]
    {
        assert!(paths.iter().any(|p| p.ends_with(&format!("/resolve/main/{needed}"))), "{needed}: {paths:?}");
    }
    for junk in UNWANTED {
        assert!(!paths.iter().any(|p| p.contains(junk)), "{junk} was fetched: {paths:?}");
    }
    // The layout huggingface_hub writes: a ref naming the commit, snapshot links into blobs.
    let root = cache.path().join("models--tiny-org--sharded");
    assert_eq!(std::fs::read_to_string(root.join("refs/main")).unwrap().trim(), commit);
    let config = root.join("snapshots").join(&commit).join("config.json");
    assert!(std::fs::symlink_metadata(&config).unwrap().file_type().is_symlink());
    assert!(std::fs::canonicalize(&config).unwrap().starts_with(std::fs::canonicalize(root.join("blobs")).unwrap()));

    // Again: from the cache, without a request; offline, and with the hub gone, the same.
    let before = hub.paths().len();
    let second = run(&args, &hub.url, cache.path(), &[]);
    assert_eq!(second.code, 0, "{}", second.err);
    assert_eq!(hub.paths().len(), before, "a cached model needs no network");
    assert!(!second.err.contains("downloading"), "{}", second.err);
    assert_eq!(second.out, first.out);
    let url = hub.url.clone();
    drop(hub);
    let offline = run(&args, &url, cache.path(), &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(offline.code, 0, "{}", offline.err);
    assert_eq!(offline.out, first.out);

    // A repository without an index: every top-level safetensors file.
    let hub =
        HubServer::start(vec![ServedRepo::from_dir("tiny-org/plain", TinyModel::printable(4).write_temp().path())]);
    let r = run(&["generate", "-m", "tiny-org/plain", "-p", "ab", "-n", "2"], &hub.url, cache.path(), &[]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(hub.paths().iter().any(|p| p.ends_with("/resolve/main/model.safetensors")), "{:?}", hub.paths());
}

#[test]
fn an_interrupted_download_is_not_taken_for_a_model_and_the_next_run_completes_it() {
    let cache = tempfile::tempdir().unwrap();
    let hub = HubServer::start(vec![ServedRepo::from_dir("tiny-org/m", TinyModel::printable(6).write_temp().path())]);
    hub.failing.lock().unwrap().push("tokenizer.json".into());
    let args = ["generate", "-m", "tiny-org/m", "-p", "ab", "-n", "2"];
    let r = run(&args, &hub.url, cache.path(), &[]);
    assert_eq!(r.code, 1);
    assert!(r.err.contains("/resolve/main/tokenizer.json answered HTTP 500"), "{}", r.err);
    // The weights are in, config.json is not: offline, the model is still missing.
    let r = run(&args, &hub.url, cache.path(), &[("HF_HUB_OFFLINE", "1")]);
    assert!(r.code == 1 && r.err.contains("has no config.json"), "{}", r.err);
    hub.failing.lock().unwrap().clear();
    let r = run(&args, &hub.url, cache.path(), &[]);
    assert_eq!(r.code, 0, "{}", r.err);
    let weights = hub.paths().iter().filter(|p| p.ends_with("/model.safetensors")).count();
    // hf-hub asks twice per file (a one-byte probe for its size and commit, then the data).
    assert_eq!(weights, 2, "the weights came once: {:?}", hub.paths());
}

#[test]
fn download_failures_name_the_model_the_url_and_what_to_do() {
    let cache = tempfile::tempdir().unwrap();
    let mut gated = ServedRepo::from_dir("tiny-org/gated", TinyModel::printable(5).write_temp().path());
    gated.token = Some("hf_secret".into());
    let hub = HubServer::start(vec![gated]);

    // Not on the hub.
    let r = run(&["generate", "-m", "tiny-org/nope", "-p", "ab", "-n", "1"], &hub.url, cache.path(), &[]);
    assert_eq!(r.code, 1, "{}", r.err);
    let url = format!("{}/api/models/tiny-org/nope/revision/main", hub.url);
    for want in [
        "`tiny-org/nope` is not a local path, and cannot be downloaded from the Hugging Face hub",
        &url,
        "HTTP 401",
        "set HF_TOKEN",
    ] {
        assert!(r.err.contains(want), "{want}: {}", r.err);
    }

    // A revision that does not exist.
    let r = run(
        &["generate", "-m", "tiny-org/gated", "--revision", "v9", "-p", "x"],
        &hub.url,
        cache.path(),
        &[("HF_TOKEN", "hf_secret")],
    );
    assert_eq!(r.code, 1, "{}", r.err);
    assert!(r.err.contains("HTTP 404") && r.err.contains("check the name and the revision `v9`"), "{}", r.err);

    // Gated: refused without the token, refused with a wrong one (said differently), loaded
    // with the right one, which goes out as a bearer token.
    let a = ["generate", "-m", "tiny-org/gated", "-p", "ab", "-n", "1"];
    let r = run(&a, &hub.url, cache.path(), &[]);
    assert!(r.code == 1 && r.err.contains("HTTP 401") && r.err.contains("gated or private"), "{}", r.err);
    let r = run(&a, &hub.url, cache.path(), &[("HF_TOKEN", "hf_wrong")]);
    assert!(r.code == 1 && r.err.contains("has no access to it"), "{}", r.err);
    let r = run(&a, &hub.url, cache.path(), &[("HF_TOKEN", "hf_secret")]);
    assert_eq!(r.code, 0, "{}", r.err);
    let seen = hub.seen.lock().unwrap().clone();
    assert!(seen
        .iter()
        .filter(|s| s.path.contains("resolve"))
        .all(|s| s.authorization.as_deref() == Some("Bearer hf_secret")));

    // HF_HUB_OFFLINE: no request at all, and a message that says why.
    let before = hub.paths().len();
    let a = ["generate", "-m", "tiny-org/other", "-p", "ab", "-n", "1"];
    let r = run(&a, &hub.url, cache.path(), &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(r.code, 1);
    assert!(
        r.err.contains("`tiny-org/other` is not a local path") && r.err.contains("HF_HUB_OFFLINE is set"),
        "{}",
        r.err
    );
    assert_eq!(hub.paths().len(), before);

    // No hub to reach (a closed port).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let r = run(&a, &closed, cache.path(), &[]);
    assert_eq!(r.code, 1);
    assert!(r.err.contains(&format!("cannot reach {closed}")) && r.err.contains("HF_HUB_OFFLINE=1"), "{}", r.err);
}

#[test]
fn a_gguf_repository_gives_the_one_file_asked_for() {
    // One .gguf and no config.json: that file is the model (junk here, so the GGUF check
    // refuses it after the download, by name).
    let cache = tempfile::tempdir().unwrap();
    let junk = ServedRepo::new("tiny-org/one-gguf", vec![("m.gguf".into(), b"GGUF junk".to_vec())]);
    let mut several = ServedRepo::new(
        "tiny-org/ggufs",
        vec![("a.Q8_0.gguf".into(), b"GGUF a".to_vec()), ("b.Q4_1.gguf".into(), b"GGUF b".to_vec())],
    );
    let real = measured::models_dir().join("smollm2-135m-instruct/gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    let have_real = measured::have_models("a_gguf_repository_gives_the_one_file_asked_for", &[&real]);
    if have_real {
        several.files[1].1 = std::fs::read(&real).unwrap();
    }
    let hub = HubServer::start(vec![junk, several]);
    let r = run(&["generate", "-m", "tiny-org/one-gguf", "-p", "x"], &hub.url, cache.path(), &[]);
    assert_eq!(r.code, 1);
    assert!(hub.paths().iter().any(|p| p.ends_with("/resolve/main/m.gguf")), "{:?}", hub.paths());
    assert!(r.err.contains("m.gguf") && !r.err.contains("cannot be downloaded"), "{}", r.err);

    // Several: the error lists them; --hf-file picks one and fetches nothing else.
    let r = run(&["generate", "-m", "tiny-org/ggufs", "-p", "x"], &hub.url, cache.path(), &[]);
    assert_eq!(r.code, 1);
    assert!(r.err.contains("choose one with --hf-file: a.Q8_0.gguf, b.Q4_1.gguf"), "{}", r.err);
    assert!(!r.err.contains("downloading"), "nothing was fetched: {}", r.err);
    let r = run(&["generate", "-m", "tiny-org/ggufs", "--hf-file", "c.gguf", "-p", "x"], &hub.url, cache.path(), &[]);
    assert!(r.code == 1 && r.err.contains("the repository has no file `c.gguf`"), "{}", r.err);
    let r =
        run(&["generate", "-m", "tiny-org/ggufs", "--hf-file", "../x.gguf", "-p", "x"], &hub.url, cache.path(), &[]);
    assert!(r.code == 1 && r.err.contains("invalid parameter `--hf-file`"), "{}", r.err);
    if !have_real {
        return;
    }
    let args =
        ["generate", "-m", "tiny-org/ggufs", "--hf-file", "b.Q4_1.gguf", "--chat", "Hi", "-n", "2", "--temp", "0"];
    let r = run(&args, &hub.url, cache.path(), &[]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.err.contains("Q4_1"), "{}", r.err);
    assert!(!hub.paths().iter().any(|p| p.contains("a.Q8_0")), "{:?}", hub.paths());
}
