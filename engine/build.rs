//! Build script of mlx-engine: locates MLX's C++ library (the `mlx` PyPI wheel layout, a folder
//! with `include/` and `lib/libmlx.so`), compiles the C++ shim in `shim/` that fills the ops
//! table, and links libmlx (plus, on Linux, the system OpenBLAS so MLX's GEMMs do not run on the
//! wheel's reference BLAS).
//!
//! Environment:
//! - `MLX_DIR`: the MLX folder (containing `include/` and `lib/`). Default: the workspace's
//!   `.venv/lib/python3*/site-packages/mlx`, then whatever `.venv/bin/python` imports as `mlx`.
//! - `MLX_ENGINE_NO_OPENBLAS=1`: do not link OpenBLAS (to compare against the wheel's BLAS).
//!
//! Because `rustc-link-arg` only reaches this package's own binaries, tests and examples, the
//! rpath and extra link arguments are also published as `links = "mlx"` metadata
//! (`DEP_MLX_RPATH`, `DEP_MLX_LINK_ARGS`) for dependents' build scripts.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SHIM_DIR: &str = "shim";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace_root = manifest_dir.parent().expect("engine/ has a parent folder (the workspace root)").to_path_buf();
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();

    println!("cargo:rerun-if-env-changed=MLX_DIR");
    println!("cargo:rerun-if-env-changed=MLX_ENGINE_NO_OPENBLAS");
    println!("cargo:rerun-if-changed=build.rs");

    let mlx = locate_mlx(&workspace_root, &target_os);
    let include = mlx.join("include");
    let lib = mlx.join("lib");
    println!("cargo:rerun-if-changed={}", include.join("mlx").join("version.h").display());
    println!("cargo:rerun-if-changed={}", lib.join(dylib_name(&target_os)).display());

    let ops_list = workspace_root.join("plugin-api").join("src").join("ops_list.rs");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    write_shim_header(&ops_list, &out_dir.join("mlxe.h"));
    compile_shim(&manifest_dir.join(SHIM_DIR), &include, &out_dir);

    // libmlx itself. `rustc-link-lib` and `rustc-link-search` travel with the rlib to every
    // final artifact that links this crate.
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=mlx");

    // Everything below only reaches this package's own link steps, hence the metadata.
    let rpath = lib.display().to_string();
    println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");

    let mut extra: Vec<String> = Vec::new();
    if target_os == "linux" {
        if env::var("MLX_ENGINE_NO_OPENBLAS").is_ok_and(|v| !v.is_empty() && v != "0") {
            println!(
                "cargo:warning=MLX_ENGINE_NO_OPENBLAS is set: MLX uses the wheel's reference BLAS \
                 (slow GEMMs)"
            );
        } else if openblas_present() {
            // `--no-as-needed` keeps libopenblas a direct dependency even though nothing in
            // the executable calls it: it is then searched before the wheel's libblas (a
            // dependency of libmlx), so MLX's cblas_sgemm calls resolve to OpenBLAS.
            extra.extend(["-Wl,--no-as-needed", "-lopenblas", "-Wl,--as-needed"].map(String::from));
        } else {
            println!(
                "cargo:warning=libopenblas not found (install libopenblas-dev): MLX will use the \
                 wheel's reference BLAS, about 20x slower for f32 GEMMs"
            );
        }
    }
    for arg in &extra {
        println!("cargo:rustc-link-arg={arg}");
    }
    // Which BLAS this package's binaries get, for reports (`env!("MLX_ENGINE_BLAS")`).
    let blas = if extra.iter().any(|a| a == "-lopenblas") {
        "openblas"
    } else if target_os == "macos" {
        "accelerate"
    } else {
        "mlx-wheel"
    };
    println!("cargo:rustc-env=MLX_ENGINE_BLAS={blas}");

    // Metadata for dependents (`links = "mlx"`): DEP_MLX_RPATH, DEP_MLX_LINK_ARGS, DEP_MLX_ROOT.
    println!("cargo:rpath={rpath}");
    println!("cargo:link_args={}", extra.join(" "));
    println!("cargo:root={}", mlx.display());
}

fn dylib_name(target_os: &str) -> &'static str {
    if target_os == "macos" {
        "libmlx.dylib"
    } else {
        "libmlx.so"
    }
}

/// True if `dir` looks like an MLX folder: the C++ headers and the shared library.
fn is_mlx_dir(dir: &Path, target_os: &str) -> bool {
    dir.join("include").join("mlx").join("array.h").is_file() && dir.join("lib").join(dylib_name(target_os)).is_file()
}

fn absolute(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

fn locate_mlx(workspace_root: &Path, target_os: &str) -> PathBuf {
    // 1. MLX_DIR, which must be right if given.
    if let Some(dir) = env::var_os("MLX_DIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if is_mlx_dir(&dir, target_os) {
            return absolute(&dir);
        }
        panic!(
            "MLX_DIR={} does not contain include/mlx/array.h and lib/{}: point MLX_DIR at the \
             `mlx` folder of an installed mlx-cpu / mlx-cuda / mlx-metal wheel (the one holding \
             include/ and lib/), or unset it and run `make setup`",
            dir.display(),
            dylib_name(target_os)
        );
    }

    // 2. <workspace>/.venv/lib/python3*/site-packages/mlx
    let venv = workspace_root.join(".venv");
    if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
        let mut candidates: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path().join("site-packages").join("mlx"))
            .filter(|p| is_mlx_dir(p, target_os))
            .collect();
        candidates.sort();
        if let Some(dir) = candidates.pop() {
            return absolute(&dir);
        }
    }

    // 3. Ask the venv's Python (a namespace package: use __path__, not __file__).
    for python in [venv.join("bin").join("python"), venv.join("bin").join("python3")] {
        if !python.is_file() {
            continue;
        }
        let output = Command::new(&python).args(["-c", "import mlx\nfor p in mlx.__path__: print(p)"]).output();
        if let Ok(output) = output {
            if output.status.success() {
                let stdout = String::from_utf8_lossy(&output.stdout);
                for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    let dir = PathBuf::from(line);
                    if is_mlx_dir(&dir, target_os) {
                        return absolute(&dir);
                    }
                }
            }
        }
    }

    panic!(
        "could not find MLX's C++ library (include/mlx/*.h and lib/{}). Run `make setup` to \
         install the mlx-cpu wheel into {}, or set MLX_DIR to a folder containing include/ and \
         lib/{}",
        dylib_name(target_os),
        venv.display(),
        dylib_name(target_os)
    );
}

/// True if the system linker will find libopenblas in one of the usual library folders.
fn openblas_present() -> bool {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let dirs = [
        format!("/usr/lib/{arch}-linux-gnu"),
        format!("/lib/{arch}-linux-gnu"),
        "/usr/lib64".to_string(),
        "/usr/lib".to_string(),
        "/usr/local/lib".to_string(),
        "/lib64".to_string(),
        "/lib".to_string(),
    ];
    dirs.iter().any(|d| Path::new(d).join("libopenblas.so").exists())
}

/// The C type of a Rust type of the ops list (raw pointers written east-const, which C++ reads
/// as the same type as the shim's `const T*` definitions).
fn c_type(rust: &str) -> String {
    let t = rust.trim();
    if let Some(rest) = t.strip_prefix("*const ") {
        return format!("{} const*", c_type(rest));
    }
    if let Some(rest) = t.strip_prefix("*mut ") {
        return format!("{}*", c_type(rest));
    }
    match t {
        "Handle" | "BundleHandle" | "CompiledHandle" | "GroupHandle" | "CompileFn" | "FreePayloadFn" | "Status"
        | "bool" => t,
        "c_char" => "char",
        "c_void" => "void",
        "u32" => "uint32_t",
        "i32" => "int32_t",
        "u64" => "uint64_t",
        "usize" => "size_t",
        "f32" => "float",
        "f64" => "double",
        other => panic!("plugin-api/src/ops_list.rs: type `{other}` has no C mapping in engine/build.rs (c_type)"),
    }
    .to_string()
}

/// One `fn name(args) -> ret;` of the ops list as a C++ declaration of `mlxe_name`.
fn c_declaration(stmt: &str) -> String {
    fn unparsable<T>(stmt: &str) -> T {
        panic!("plugin-api/src/ops_list.rs: cannot parse `{stmt}` (expected `fn name(arg: Type, ..) -> Ret;`)")
    }
    let rest = stmt.trim().strip_prefix("fn ").unwrap_or_else(|| unparsable(stmt));
    let (name, rest) = rest.split_once('(').unwrap_or_else(|| unparsable(stmt));
    let (args, ret) = rest.rsplit_once(')').unwrap_or_else(|| unparsable(stmt));
    let ret = ret.trim().trim_end_matches(';').trim();
    let ret = match ret.strip_prefix("->") {
        Some(r) => c_type(r),
        None if ret.is_empty() => "void".to_string(),
        None => unparsable(stmt),
    };
    let args: Vec<String> = args
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let (n, t) = a.split_once(':').unwrap_or_else(|| unparsable(stmt));
            format!("{} {}", c_type(t), n.trim())
        })
        .collect();
    format!("MLXE_EXPORT {ret} mlxe_{}({}) noexcept;", name.trim(), args.join(", "))
}

/// Writes the shim's header of exported entry points from the ops list, the one definition the
/// Rust table and bindings are generated from too.
fn write_shim_header(ops_list: &Path, out: &Path) {
    println!("cargo:rerun-if-changed={}", ops_list.display());
    let text = std::fs::read_to_string(ops_list).unwrap_or_else(|e| panic!("reading {}: {e}", ops_list.display()));
    let mut h = String::from(
        "// Generated by engine/build.rs from plugin-api/src/ops_list.rs: do not edit.\n\
         // One exported entry point per field of `OpsTable`, in table order.\n\
         #pragma once\n\n#include <cstddef>\n#include <cstdint>\n\n#include \"shim.h\"\n\n\
         using mlxe::BundleHandle;\nusing mlxe::CompiledHandle;\nusing mlxe::CompileFn;\n\
         using mlxe::FreePayloadFn;\nusing mlxe::GroupHandle;\nusing mlxe::Handle;\nusing mlxe::Status;\n",
    );
    let mut stmt = String::new();
    for line in text.lines().map(str::trim) {
        if !stmt.is_empty() {
            stmt.push(' ');
            stmt.push_str(line);
        } else if line.starts_with("fn ") {
            stmt.push_str(line);
        } else if let Some(minor) = line.strip_suffix("=> {").map(str::trim).filter(|m| m.parse::<u32>().is_ok()) {
            h.push_str(&format!("\n// ===== entries added in ABI 1.{minor} =====\n"));
            continue;
        } else if line.starts_with("// ---") {
            h.push_str(&format!("\n{line}\n"));
            continue;
        } else {
            continue;
        }
        if stmt.ends_with(';') {
            h.push_str(&c_declaration(&stmt));
            h.push('\n');
            stmt.clear();
        }
    }
    if !stmt.is_empty() {
        panic!("plugin-api/src/ops_list.rs: unterminated entry `{stmt}`");
    }
    // Rewrite only on change, so the shim is not recompiled on every build.
    if std::fs::read_to_string(out).ok().as_deref() != Some(h.as_str()) {
        std::fs::write(out, h).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    }
}

fn compile_shim(shim_dir: &Path, include: &Path, generated: &Path) {
    let mut sources: Vec<PathBuf> = Vec::new();
    println!("cargo:rerun-if-changed={}", shim_dir.display());
    for entry in std::fs::read_dir(shim_dir).expect("engine/shim exists") {
        let path = entry.expect("readable shim folder").path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("cpp") => {
                println!("cargo:rerun-if-changed={}", path.display());
                sources.push(path);
            }
            Some("h") => println!("cargo:rerun-if-changed={}", path.display()),
            _ => {}
        }
    }
    sources.sort();

    cc::Build::new()
        .cpp(true)
        .files(&sources)
        .include(shim_dir)
        .include(generated)
        .flag("-std=c++20")
        // -isystem: no warnings from MLX's headers. Keep libstdc++'s default (new) ABI.
        .flag("-isystem")
        .flag(include.to_str().expect("MLX include path is UTF-8"))
        .flag("-fvisibility=hidden")
        .flag("-fvisibility-inlines-hidden")
        .opt_level(2)
        .warnings(true)
        .extra_warnings(true)
        .compile("mlxe_shim");
}
