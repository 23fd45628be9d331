//! Finds libstoreclient for the linker and for run time.
//!
//! `STORECLIENT_LIB_DIR` names the directory that holds `libstoreclient.so`: a build tree's
//! `build/capi`, or an install's libdir. A relative one is taken from the directory cargo was
//! started in (cargo runs this script in the package's own directory). Without it, pkg-config's
//! `storeclient.pc` says where the library is. Either way the crate's own binaries (tests) get
//! an rpath to that directory, so they run without `LD_LIBRARY_PATH`, and the directory is
//! handed to the build scripts of dependent crates as `DEP_STORECLIENT_LIB_DIR`: a cargo
//! `rustc-link-arg` only reaches the package that prints it, so each crate whose binaries
//! should find the library prints the rpath itself (the `storeclient` crate's build.rs does).

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=STORECLIENT_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");

    let dirs = match env::var_os("STORECLIENT_LIB_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => vec![lib_dir_from_env(dir)],
        None => pkg_config_dirs(),
    };
    for dir in &dirs {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
    if let Some(dir) = dirs.first() {
        // Metadata for dependents' build scripts: DEP_STORECLIENT_LIB_DIR.
        println!("cargo:lib_dir={}", dir.display());
    }
    println!("cargo:rustc-link-lib=dylib=storeclient");
}

/// STORECLIENT_LIB_DIR made absolute (relative to where cargo was started) and checked.
fn lib_dir_from_env(value: OsString) -> PathBuf {
    let given = PathBuf::from(&value);
    let dir = if given.is_absolute() {
        given.clone()
    } else {
        // A relative path means another directory when cargo is started elsewhere.
        println!("cargo:rerun-if-env-changed=PWD");
        match invocation_dir() {
            Some(base) => base.join(&given),
            None => given.clone(),
        }
    };
    if !dir.join("libstoreclient.so").exists() {
        eprintln!(
            "error: STORECLIENT_LIB_DIR={} ({}) holds no libstoreclient.so: build the library \
             first (ninja -C build) or set STORECLIENT_LIB_DIR to the directory that has it",
            given.display(),
            dir.display()
        );
        std::process::exit(1);
    }
    dir.canonicalize().unwrap_or(dir)
}

/// The directory cargo was started in: cargo's own working directory (this script's parent
/// process), else $PWD as the shell set it.
fn invocation_dir() -> Option<PathBuf> {
    let parent_cwd = format!("/proc/{}/cwd", std::os::unix::process::parent_id());
    if let Ok(dir) = std::fs::read_link(Path::new(&parent_cwd)) {
        if dir.is_absolute() {
            return Some(dir);
        }
    }
    env::var_os("PWD").map(PathBuf::from).filter(|p| p.is_absolute())
}

/// The -L directories of `pkg-config --libs-only-L storeclient` (none for a library in a system
/// directory, which the linker and the loader search anyway).
fn pkg_config_dirs() -> Vec<PathBuf> {
    let out = match Command::new("pkg-config").args(["--libs-only-L", "storeclient"]).output() {
        Ok(out) if out.status.success() => out,
        _ => {
            println!(
                "cargo:warning=libstoreclient: STORECLIENT_LIB_DIR is not set and pkg-config does \
                 not know storeclient; set STORECLIENT_LIB_DIR to a build tree's build/capi, or \
                 PKG_CONFIG_PATH to the pkgconfig directory of an install"
            );
            return Vec::new();
        }
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|tok| tok.strip_prefix("-L"))
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .collect()
}
