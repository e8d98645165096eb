//! Point the binaries and tests at libtorch's directory (a RUNPATH, so
//! `LD_LIBRARY_PATH` still wins on machines where libtorch lives elsewhere), keep
//! `libtorch_cuda` linked (nothing references it by symbol, so `--as-needed` would
//! drop it and CUDA would look absent at run time), and compile the C++ shim for ATen
//! ops tch has no bindings for (csrc/).

use std::path::Path;

fn main() {
    // torch-sys exports its library directory to direct dependents (`links = "tch"`).
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    let include = Path::new(&dir).join("../include");
    println!("cargo:rerun-if-changed=csrc/varlen.cpp");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", cxx11_abi()))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/varlen.cpp")
        .compile("janus_csrc");
}

/// The C++ ABI libtorch was built with, found the way torch-sys finds it.
fn cxx11_abi() -> String {
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    if let Ok(v) = std::env::var("LIBTORCH_CXX11_ABI") {
        return v;
    }
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python".into());
        if let Ok(out) = std::process::Command::new(python)
            .args([
                "-c",
                "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))",
            ])
            .output()
        {
            let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if v == "0" || v == "1" {
                return v;
            }
        }
    }
    "1".into()
}
