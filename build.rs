//! Build script: finds out, once per build, what the integration tests that call Python can use, so that a test
//! without its Python shows as "ignored" instead of passing without running.
//!
//! Probes `$QUANTSTUDIO_PYTHON` (default `python3`), one interpreter start per probe:
//! - `quantstudio_python_numpy`: it imports numpy and safetensors (the numpy reference checks);
//! - `quantstudio_python_ml_dtypes`: and ml_dtypes too (the FP8 E4M3 check, tools/check/check_fp8.py);
//! - `quantstudio_python_gguf`: numpy, safetensors and llama.cpp's gguf package (the block formats against gguf-py,
//!   tools/check/check_ggml_blocks.py, and the GGUF reader check, tools/check/check_gguf.py);
//! - `quantstudio_python_torch`: it imports torch, transformers, compressed_tensors and sentence_transformers
//!   (the export checks, tools/check/check_exports.py);
//! - `quantstudio_reference_model`: `$QUANTSTUDIO_REFERENCE_MODEL` names a folder with a config.json
//!   (all-MiniLM-L6-v2 in CI); `quantstudio_llama_model`: the same for `$QUANTSTUDIO_LLAMA_MODEL` (SmolLM2-135M).
//!
//! - `quantstudio_llama_cpp`: `$QUANTSTUDIO_LLAMA_CPP_BIN` names a folder with `llama-perplexity` (the llama.cpp
//!   judge, tools/llama/check_llama_cpp.py; optional, but when CI sets it the folder must hold the tools).
//!
//! The tests read the interpreter and the folders from `QUANTSTUDIO_BUILD_PYTHON`,
//! `QUANTSTUDIO_BUILD_REFERENCE_MODEL` and `QUANTSTUDIO_BUILD_LLAMA_MODEL` (set here; empty when absent), so they
//! use exactly what was probed. With `QUANTSTUDIO_REQUIRE_PYTHON=1` (CI) a failed probe or a missing folder fails
//! the build. The probes rerun when one of these variables
//! changes; after installing packages into the same interpreter, `touch build.rs`.

use std::process::Command;

/// What each probe imports, the cfg it sets and what to install when it fails.
const PROBES: [(&str, &str, &str); 4] = [
    ("quantstudio_python_numpy", "import numpy, safetensors", "pip install numpy safetensors"),
    ("quantstudio_python_ml_dtypes", "import numpy, safetensors, ml_dtypes", "pip install ml_dtypes"),
    ("quantstudio_python_gguf", "import numpy, safetensors, gguf", "pip install gguf"),
    (
        "quantstudio_python_torch",
        "import torch, transformers, compressed_tensors, sentence_transformers",
        "pip install torch transformers compressed-tensors sentence-transformers",
    ),
];

/// The model folders the tests take from the environment, and the cfg set when the folder is there.
const MODELS: [(&str, &str); 2] = [
    ("QUANTSTUDIO_REFERENCE_MODEL", "quantstudio_reference_model"),
    ("QUANTSTUDIO_LLAMA_MODEL", "quantstudio_llama_model"),
];

fn main() {
    for var in ["QUANTSTUDIO_PYTHON", "QUANTSTUDIO_REQUIRE_PYTHON"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rerun-if-changed=build.rs");
    for (cfg, _, _) in PROBES {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    for (var, cfg) in MODELS {
        println!("cargo::rerun-if-env-changed={var}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }

    let python = std::env::var("QUANTSTUDIO_PYTHON").unwrap_or_else(|_| "python3".into());
    let required = std::env::var("QUANTSTUDIO_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    println!("cargo::rustc-env=QUANTSTUDIO_BUILD_PYTHON={python}");
    let mut missing = Vec::new();
    for (cfg, imports, install) in PROBES {
        let found = Command::new(&python).args(["-c", imports]).output().is_ok_and(|o| o.status.success());
        if found {
            println!("cargo::rustc-cfg={cfg}");
        } else {
            missing.push(format!("{python} cannot `{imports}` ({install})"));
        }
    }

    for (var, cfg) in MODELS {
        let folder = std::env::var(var).unwrap_or_default();
        let found = !folder.is_empty() && std::path::Path::new(&folder).join("config.json").is_file();
        println!(
            "cargo::rustc-env={}={}",
            var.replace("QUANTSTUDIO_", "QUANTSTUDIO_BUILD_"),
            if found { &folder } else { "" }
        );
        if found {
            println!("cargo::rustc-cfg={cfg}");
        } else {
            missing.push(format!("{var}={folder:?} is not a model folder with config.json"));
        }
    }

    // llama.cpp's tools (tools/llama/build_llama_cpp.sh prints their folder): optional; the llama.cpp judge test is
    // ignored without them. CI builds them and sets the variable, and then a folder without them is an error.
    println!("cargo::rerun-if-env-changed=QUANTSTUDIO_LLAMA_CPP_BIN");
    println!("cargo::rustc-check-cfg=cfg(quantstudio_llama_cpp)");
    let llama_cpp = std::env::var("QUANTSTUDIO_LLAMA_CPP_BIN").unwrap_or_default();
    let has_llama_cpp = !llama_cpp.is_empty() && std::path::Path::new(&llama_cpp).join("llama-perplexity").is_file();
    println!("cargo::rustc-env=QUANTSTUDIO_BUILD_LLAMA_CPP_BIN={}", if has_llama_cpp { &llama_cpp } else { "" });
    if has_llama_cpp {
        println!("cargo::rustc-cfg=quantstudio_llama_cpp");
    } else if !llama_cpp.is_empty() {
        missing.push(format!("QUANTSTUDIO_LLAMA_CPP_BIN={llama_cpp} holds no llama-perplexity"));
    }

    if required && !missing.is_empty() {
        for reason in &missing {
            println!("cargo::error=QUANTSTUDIO_REQUIRE_PYTHON=1 but {reason}");
        }
    }
}
