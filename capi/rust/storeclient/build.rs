//! Gives this crate's binaries (examples, tests) an rpath to the libstoreclient directory that
//! storeclient-sys found, so they run without LD_LIBRARY_PATH. A cargo `rustc-link-arg` only
//! reaches the package that prints it, so storeclient-sys cannot do this for its dependents; a
//! program of your own that depends on storeclient-sys can copy these lines into its build.rs.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(dir) = std::env::var_os("DEP_STORECLIENT_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", std::path::Path::new(&dir).display());
    }
}
