//! Point the binaries and tests at libtorch's directory (a RUNPATH, so
//! `LD_LIBRARY_PATH` still wins on machines where libtorch lives elsewhere).

fn main() {
    // torch-sys exports its library directory to direct dependents (`links = "tch"`).
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
