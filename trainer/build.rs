//! Point the binaries and tests at libtorch's directory (a RUNPATH, so
//! `LD_LIBRARY_PATH` still wins on machines where libtorch lives elsewhere), and keep
//! `libtorch_cuda` linked: nothing references it by symbol, so `--as-needed` would
//! drop it and CUDA would look absent at run time.

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
}
