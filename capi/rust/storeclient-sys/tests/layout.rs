//! Compares the layout of every #[repr(C)] struct with what a C compiler reports for
//! include/storeclient.h.

use std::collections::HashMap;
use std::env;
use std::mem::{align_of, size_of, MaybeUninit};
use std::path::PathBuf;
use std::process::Command;

use storeclient_sys::*;

/// (struct name, size, align, [(field, offset, size)])
type Layout = (&'static str, usize, usize, Vec<(&'static str, usize, usize)>);

fn field_size<F>(_: *const F) -> usize {
    size_of::<F>()
}

macro_rules! layout {
    ($ty:ident { $($field:ident),* $(,)? }) => {{
        let u = MaybeUninit::<$ty>::uninit();
        let base = u.as_ptr();
        let mut fields: Vec<(&'static str, usize, usize)> = Vec::new();
        $(
            // Only the address is taken; the uninitialised memory is never read.
            let p = unsafe { std::ptr::addr_of!((*base).$field) };
            let off = (p as *const u8 as usize) - (base as *const u8 as usize);
            fields.push((stringify!($field), off, field_size(p)));
        )*
        let l: Layout = (stringify!($ty), size_of::<$ty>(), align_of::<$ty>(), fields);
        l
    }};
}

// The field lists stay packed, as the C header lists them, rather than one a line.
#[rustfmt::skip]
fn rust_layouts() -> Vec<Layout> {
    vec![
        layout!(store_object_id { bytes }),
        layout!(store_object_info {
            struct_size, id, data_size, metadata_size, state, level, device, importance, pin_count,
            reader_count, create_time_ns, last_access_ns, creator_pid, lease_count,
        }),
        layout!(store_stats {
            struct_size, pad_, capacity_bytes, used_bytes, object_count, client_count,
            created_count, sealed_count, created_bytes, sealed_bytes, pinned_count, pinned_bytes, open_count,
            open_bytes, deleted_pending_count, deleted_pending_bytes, waiting_gets,
            waiting_creates, total_creates, total_seals, total_gets, total_releases,
            total_deletes, total_aborts, total_full, uptime_ns, server_pid, reserved_,
            largest_free_bytes, resident_bytes, total_contains, total_infos, total_lists,
            total_pins, total_unpins, total_requests, total_bad_requests, spilling_count,
            spilling_bytes, spilled_count, spilled_bytes, restoring_count, restoring_bytes,
            evictable_bytes, spill_enabled, spill_files, spill_disk_bytes, spill_dead_bytes,
            total_spilled_objects, total_spilled_bytes, total_spill_ns, total_restored_objects,
            total_restored_bytes, total_restore_ns, total_spill_failures,
            total_restore_failures, waiting_bytes, backlog_bytes, partial_bytes, pending_fds,
            limit_client_waiting, limit_waiting_bytes, limit_client_backlog, limit_backlog,
            limit_partial_bytes, limit_clients, limit_client_gpu_fds, fd_limit,
            refused_client_waiting, refused_waiting_bytes, closed_client_backlog,
            closed_backlog, closed_partial, refused_clients, accept_failures, refused_gpu_fds,
            instance_id, start_time_ns, when_full_drop, total_dropped_objects,
            total_dropped_bytes, total_compactions, total_compact_bytes_copied,
            total_compact_bytes_freed, total_compact_failures, limit_objects, refused_objects,
            spill_undurable_deletes,
        }),
        layout!(store_connect_options { version, client_name, read_only, reserved_ }),
        layout!(store_create_options {
            version, metadata, metadata_size, importance, device, timeout_ms, flags, reserved_,
        }),
        layout!(store_client_info {
            struct_size, pad_, client_id, name, pid, uid, objects_created, creating_count,
            readers_held, pins_held, bytes_held, connect_time_ns, requests, is_self, reserved_,
        }),
        layout!(store_list_options { version, sort, descending, limit, offset, id_prefix }),
        layout!(store_spill_file_info {
            struct_size, pad_, path, size, live_objects, live_bytes, dead_bytes, created_time_ns,
        }),
        layout!(store_gpu_device_stats {
            struct_size, pad_, device, chunks, capacity_bytes, used_bytes, object_count, chunk_size,
            largest_free_bytes,
        }),
    ]
}

fn include_dir() -> PathBuf {
    match env::var("STORECLIENT_INCLUDE_DIR") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            // The header lives in <repo>/include; the crate in <repo>/capi/rust/storeclient-sys.
            let base = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let near = base.join("../../include");
            if near.join("storeclient.h").exists() {
                near
            } else {
                base.join("../../../include")
            }
        }
    }
}

#[test]
fn struct_layouts_match_c() {
    let layouts = rust_layouts();

    // A C program that prints the same figures, one line each.
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"storeclient.h\"\n\
         #define F(T, f) printf(\"%s.%s %zu %zu\\n\", #T, #f, offsetof(T, f), sizeof(((T *)0)->f))\n\
         #define S(T) printf(\"%s %zu %zu\\n\", #T, sizeof(T), _Alignof(T))\n\
         int main(void) {\n",
    );
    for (name, _, _, fields) in &layouts {
        c.push_str(&format!("    S({});\n", name));
        for (f, _, _) in fields {
            c.push_str(&format!("    F({}, {});\n", name, f));
        }
    }
    c.push_str("    return 0;\n}\n");

    let dir = env::temp_dir().join(format!("storeclient-sys-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Removed however the test ends (a failed assertion included).
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveOnDrop(dir.clone());
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, c).unwrap();
    let inc = include_dir();
    assert!(inc.join("storeclient.h").exists(), "storeclient.h not found in {}", inc.display());
    let status = Command::new(env::var("CC").unwrap_or_else(|_| "cc".to_string()))
        .arg("-std=c11")
        .arg("-I")
        .arg(&inc)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("cannot run the C compiler (cc)");
    assert!(status.success(), "compiling the layout program failed");
    let out = Command::new(&exe).output().expect("cannot run the layout program");
    assert!(out.status.success());

    let text = String::from_utf8(out.stdout).unwrap();
    let mut c_vals: HashMap<String, (usize, usize)> = HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts.len(), 3, "bad line {:?}", line);
        c_vals.insert(parts[0].to_string(), (parts[1].parse().unwrap(), parts[2].parse().unwrap()));
    }

    let mut checked = 0;
    for (name, size, align, fields) in &layouts {
        let (csize, calign) = c_vals[*name];
        assert_eq!((*size, *align), (csize, calign), "size/align of {}", name);
        checked += 1;
        let mut covered = 0;
        for (f, off, fsize) in fields {
            let key = format!("{}.{}", name, f);
            let (coff, cfsize) = c_vals[&key];
            assert_eq!((*off, *fsize), (coff, cfsize), "offset/size of {}", key);
            covered += fsize;
            checked += 1;
        }
        // Every byte not covered by a listed field must be padding the C side has too,
        // so a field missing from the list would show as a size mismatch above.
        assert!(covered <= *size);
    }
    assert_eq!(checked, c_vals.len());
}

#[test]
fn error_codes_match_library() {
    use std::ffi::CStr;
    let codes = [
        (STORE_EINVAL, "invalid argument"),
        (STORE_ENOTFOUND, "object not found"),
        (STORE_EEXISTS, "object already exists"),
        (STORE_ENOSPACE, "store is full"),
        (STORE_ENODISK, "no spill disk space"),
        (STORE_ETIMEDOUT, "timed out"),
        (STORE_ESEALED, "object is already sealed"),
        (STORE_ENOTSEALED, "object is not sealed"),
        (STORE_EMISUSE, "library misuse"),
        (STORE_ECONN, "cannot connect or connection lost"),
        (STORE_EPROTO, "protocol error"),
        (STORE_ENOTSUP, "not supported"),
        (STORE_ENOMEM, "out of memory"),
        (STORE_ECORRUPT, "data corrupt"),
        (STORE_EPERM, "permission denied"),
        (STORE_ELIMIT, "over a limit of the store"),
    ];
    for (code, text) in codes.iter() {
        let s = unsafe { CStr::from_ptr(store_errstr(*code)) };
        assert_eq!(s.to_str().unwrap(), *text, "code {}", code);
    }
    let v = unsafe { CStr::from_ptr(store_version_string()) };
    assert_eq!(v.to_str().unwrap(), STORE_VERSION_STRING);
}

#[test]
fn output_structs_default_to_their_init_macros() {
    // As STORE_STATS_INIT and STORE_OBJECT_INFO_INIT: zeros with struct_size set, so a Default
    // value can be passed to store_stats_get and store_info as it is.
    let stats = store_stats::default();
    assert_eq!(stats.struct_size as usize, size_of::<store_stats>());
    assert_eq!(stats.capacity_bytes, 0);
    assert_eq!(stats.total_compact_failures, 0);
    let info = store_object_info::default();
    assert_eq!(info.struct_size as usize, size_of::<store_object_info>());
    assert_eq!(info.id, store_object_id::default());
    assert_eq!(info.lease_count, 0);
}
