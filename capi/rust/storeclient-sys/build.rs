use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=STORECLIENT_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    match env::var("STORECLIENT_LIB_DIR") {
        Ok(dir) if !dir.is_empty() => {
            println!("cargo:rustc-link-search=native={}", dir);
        }
        _ => {
            // Optional: ask pkg-config for the library directory; ignore any failure.
            if let Ok(out) =
                Command::new("pkg-config").args(["--libs-only-L", "storeclient"]).output()
            {
                if out.status.success() {
                    let text = String::from_utf8_lossy(&out.stdout);
                    for tok in text.split_whitespace() {
                        if let Some(dir) = tok.strip_prefix("-L") {
                            if !dir.is_empty() {
                                println!("cargo:rustc-link-search=native={}", dir);
                            }
                        }
                    }
                }
            }
        }
    }
    println!("cargo:rustc-link-lib=dylib=storeclient");
}
