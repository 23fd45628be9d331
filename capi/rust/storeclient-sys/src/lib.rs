//! Raw declarations for libstoreclient, mirroring `include/storeclient.h`.
//!
//! Everything here is `unsafe` to call; see the `storeclient` crate for a safe interface.
//! The comments of the C header apply unchanged.

#![allow(non_camel_case_types)]
#![allow(non_upper_case_globals)]

use std::os::raw::{c_char, c_int, c_void};

// ---------------------------------------------------------------------------------------------
// Version
// ---------------------------------------------------------------------------------------------

pub const STORE_VERSION_MAJOR: u32 = 0;
pub const STORE_VERSION_MINOR: u32 = 2;
pub const STORE_VERSION_PATCH: u32 = 0;
pub const STORE_VERSION_STRING: &str = "0.2.0";

// ---------------------------------------------------------------------------------------------
// Errors (enum store_status)
// ---------------------------------------------------------------------------------------------

/// `enum store_status`. Functions return a plain `int`; these are its values.
pub type store_status = c_int;

pub const STORE_OK: c_int = 0;
pub const STORE_EINVAL: c_int = -1;
pub const STORE_ENOTFOUND: c_int = -2;
pub const STORE_EEXISTS: c_int = -3;
pub const STORE_ENOSPACE: c_int = -4;
pub const STORE_ENODISK: c_int = -5;
pub const STORE_ETIMEDOUT: c_int = -6;
pub const STORE_ESEALED: c_int = -7;
pub const STORE_ENOTSEALED: c_int = -8;
pub const STORE_EMISUSE: c_int = -9;
pub const STORE_ECONN: c_int = -10;
pub const STORE_EPROTO: c_int = -11;
pub const STORE_ENOTSUP: c_int = -12;
pub const STORE_ENOMEM: c_int = -13;
pub const STORE_ECORRUPT: c_int = -14;
pub const STORE_EPERM: c_int = -15;
pub const STORE_ELIMIT: c_int = -16;
pub const STORE_ERRNO_MIN_: c_int = -16;

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// A connection to a store server (opaque).
#[repr(C)]
pub struct store_client {
    _private: [u8; 0],
    _not_send_sync: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

/// One object being created (opaque).
#[repr(C)]
pub struct store_writer {
    _private: [u8; 0],
    _not_send_sync: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

/// One sealed object held open for reading (opaque).
#[repr(C)]
pub struct store_reader {
    _private: [u8; 0],
    _not_send_sync: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

pub const STORE_OBJECT_ID_SIZE: usize = 20;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct store_object_id {
    pub bytes: [u8; STORE_OBJECT_ID_SIZE],
}

pub const STORE_STATE_CREATED: u32 = 1;
pub const STORE_STATE_SEALED: u32 = 2;
pub const STORE_STATE_SPILLING: u32 = 3;
pub const STORE_STATE_SPILLED: u32 = 4;
pub const STORE_STATE_RESTORING: u32 = 5;

pub const STORE_LEVEL_GPU: u32 = 1;
pub const STORE_LEVEL_MEMORY: u32 = 2;
pub const STORE_LEVEL_DISK: u32 = 4;
pub const STORE_LEVEL_REMOTE: u32 = 8;

/// `Default` is `STORE_OBJECT_INFO_INIT`: zeros, with `struct_size` set.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct store_object_info {
    /// The size of the struct the caller has (`size_of::<store_object_info>()`), set by the
    /// caller for `store_info`; see "Output structs" in storeclient.h.
    pub struct_size: u32,
    pub id: store_object_id,
    pub data_size: u64,
    pub metadata_size: u64,
    pub state: u32,
    pub level: u32,
    pub device: i32,
    pub importance: i32,
    pub pin_count: u32,
    pub reader_count: u32,
    pub create_time_ns: i64,
    pub last_access_ns: i64,
    pub creator_pid: i32,
    pub lease_count: u32,
}

/// `Default` is `STORE_STATS_INIT`: zeros, with `struct_size` set.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct store_stats {
    /// `size_of::<store_stats>()`, set by the caller; see "Output structs" in storeclient.h.
    pub struct_size: u32,
    pub pad_: u32,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub object_count: u64,
    pub client_count: u64,
    pub created_count: u64,
    pub sealed_count: u64,
    pub created_bytes: u64,
    pub sealed_bytes: u64,
    pub pinned_count: u64,
    pub pinned_bytes: u64,
    pub open_count: u64,
    pub open_bytes: u64,
    pub deleted_pending_count: u64,
    pub deleted_pending_bytes: u64,
    pub waiting_gets: u64,
    pub waiting_creates: u64,
    pub total_creates: u64,
    pub total_seals: u64,
    pub total_gets: u64,
    pub total_releases: u64,
    pub total_deletes: u64,
    pub total_aborts: u64,
    pub total_full: u64,
    pub uptime_ns: u64,
    pub server_pid: i32,
    pub reserved_: u32,
    pub largest_free_bytes: u64,
    pub resident_bytes: u64,
    pub total_contains: u64,
    pub total_infos: u64,
    pub total_lists: u64,
    pub total_pins: u64,
    pub total_unpins: u64,
    pub total_requests: u64,
    pub total_bad_requests: u64,
    pub spilling_count: u64,
    pub spilling_bytes: u64,
    pub spilled_count: u64,
    pub spilled_bytes: u64,
    pub restoring_count: u64,
    pub restoring_bytes: u64,
    pub evictable_bytes: u64,
    pub spill_enabled: u64,
    pub spill_files: u64,
    pub spill_disk_bytes: u64,
    pub spill_dead_bytes: u64,
    pub total_spilled_objects: u64,
    pub total_spilled_bytes: u64,
    pub total_spill_ns: u64,
    pub total_restored_objects: u64,
    pub total_restored_bytes: u64,
    pub total_restore_ns: u64,
    pub total_spill_failures: u64,
    pub total_restore_failures: u64,
    // Added in 0.2: limits.
    pub waiting_bytes: u64,
    pub backlog_bytes: u64,
    pub partial_bytes: u64,
    pub pending_fds: u64,
    pub limit_client_waiting: u64,
    pub limit_waiting_bytes: u64,
    pub limit_client_backlog: u64,
    pub limit_backlog: u64,
    pub limit_partial_bytes: u64,
    pub limit_clients: u64,
    pub limit_client_gpu_fds: u64,
    pub fd_limit: u64,
    pub refused_client_waiting: u64,
    pub refused_waiting_bytes: u64,
    pub closed_client_backlog: u64,
    pub closed_backlog: u64,
    pub closed_partial: u64,
    pub refused_clients: u64,
    pub accept_failures: u64,
    pub refused_gpu_fds: u64,
    /// Which store this is: random at start, never 0.
    pub instance_id: u64,
    pub start_time_ns: i64,
    /// 1 when the store drops unused objects to make room (`--when-full drop`), else 0.
    pub when_full_drop: u64,
    /// Objects dropped to make room since start, and their data and metadata bytes.
    pub total_dropped_objects: u64,
    pub total_dropped_bytes: u64,
    // Added in 0.2: compaction of spill files (`--spill-compact`).
    /// Spill files rewritten without their dead records since start.
    pub total_compactions: u64,
    /// Bytes written into the new files.
    pub total_compact_bytes_copied: u64,
    /// Disk bytes given back: old file size minus new, summed.
    pub total_compact_bytes_freed: u64,
    /// Compactions that failed (nothing is lost: the old file stays).
    pub total_compact_failures: u64,
    pub limit_objects: u64,
    pub refused_objects: u64,
    /// Deletes of spilled objects whose record is not durable yet (its write failed; the delete
    /// answered `STORE_ENODISK`): a store recovered after a crash now could serve them again.
    pub spill_undurable_deletes: u64,
}

impl Default for store_object_info {
    fn default() -> Self {
        // SAFETY: every field is an integer or an array of bytes, for which zeros are valid.
        let mut info: store_object_info = unsafe { std::mem::zeroed() };
        info.struct_size = std::mem::size_of::<store_object_info>() as u32;
        info
    }
}

impl Default for store_stats {
    fn default() -> Self {
        // SAFETY: every field is an integer, for which zeros are valid.
        let mut stats: store_stats = unsafe { std::mem::zeroed() };
        stats.struct_size = std::mem::size_of::<store_stats>() as u32;
        stats
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct store_client_info {
    /// The elem_size the caller passed; see "Output structs" in storeclient.h.
    pub struct_size: u32,
    pub pad_: u32,
    pub client_id: u64,
    pub name: [c_char; 64],
    pub pid: i32,
    pub uid: u32,
    pub objects_created: u64,
    pub creating_count: u64,
    pub readers_held: u64,
    pub pins_held: u64,
    pub bytes_held: u64,
    pub connect_time_ns: i64,
    pub requests: u64,
    pub is_self: i32,
    pub reserved_: u32,
}

impl Default for store_client_info {
    fn default() -> Self {
        store_client_info {
            struct_size: 0,
            pad_: 0,
            client_id: 0,
            name: [0; 64],
            pid: 0,
            uid: 0,
            objects_created: 0,
            creating_count: 0,
            readers_held: 0,
            pins_held: 0,
            bytes_held: 0,
            connect_time_ns: 0,
            requests: 0,
            is_self: 0,
            reserved_: 0,
        }
    }
}

pub const STORE_SORT_ID: u32 = 0;
pub const STORE_SORT_SIZE: u32 = 1;
pub const STORE_SORT_CREATED: u32 = 2;
pub const STORE_SORT_LAST_ACCESS: u32 = 3;
pub const STORE_SORT_IMPORTANCE: u32 = 4;
pub const STORE_SORT_STATE: u32 = 5;

pub const STORE_LIST_OPTIONS_VERSION: u32 = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct store_list_options {
    pub version: u32,
    pub sort: u32,
    pub descending: i32,
    pub limit: u32,
    pub offset: u64,
    pub id_prefix: *const c_char,
}

/// `STORE_LIST_OPTIONS_INIT`.
pub const STORE_LIST_OPTIONS_INIT: store_list_options = store_list_options {
    version: STORE_LIST_OPTIONS_VERSION,
    sort: STORE_SORT_ID,
    descending: 0,
    limit: 100,
    offset: 0,
    id_prefix: core::ptr::null(),
};

impl Default for store_list_options {
    fn default() -> Self {
        STORE_LIST_OPTIONS_INIT
    }
}

pub const STORE_MAX_PAGE_OBJECTS: u32 = 100000;

pub const STORE_CONNECT_OPTIONS_VERSION: u32 = 2;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct store_connect_options {
    pub version: u32,
    pub client_name: *const c_char,
    /// Version 2: non-zero for a read-only client.
    pub read_only: i32,
    pub reserved_: u32,
}

/// `STORE_CONNECT_OPTIONS_INIT`.
pub const STORE_CONNECT_OPTIONS_INIT: store_connect_options = store_connect_options {
    version: STORE_CONNECT_OPTIONS_VERSION,
    client_name: core::ptr::null(),
    read_only: 0,
    reserved_: 0,
};

impl Default for store_connect_options {
    fn default() -> Self {
        STORE_CONNECT_OPTIONS_INIT
    }
}

pub const STORE_CREATE_OPTIONS_VERSION: u32 = 2;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct store_create_options {
    pub version: u32,
    pub metadata: *const c_void,
    pub metadata_size: u64,
    pub importance: i32,
    pub device: i32,
    pub timeout_ms: i64,
    /// Added in version 2: `STORE_CREATE_*` bits.
    pub flags: u32,
    pub reserved_: u32,
}

/// The object goes with its last lease (see `store_lease`).
pub const STORE_CREATE_LEASED: u32 = 1;

/// `STORE_CREATE_OPTIONS_INIT`.
pub const STORE_CREATE_OPTIONS_INIT: store_create_options = store_create_options {
    version: STORE_CREATE_OPTIONS_VERSION,
    metadata: core::ptr::null(),
    metadata_size: 0,
    importance: 0,
    device: -1,
    timeout_ms: 0,
    flags: 0,
    reserved_: 0,
};

impl Default for store_create_options {
    fn default() -> Self {
        STORE_CREATE_OPTIONS_INIT
    }
}

pub const STORE_MAX_METADATA_SIZE: u32 = 1 << 20;
/// Host objects of up to this many bytes of data are staged (see the object lifecycle).
pub const STORE_STAGED_MAX: u32 = 64 << 10;

pub const STORE_GPU_BACKEND_NONE: c_int = 0;
pub const STORE_GPU_BACKEND_CUDA: c_int = 1;
pub const STORE_GPU_BACKEND_MEMFD_STANDIN: c_int = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct store_gpu_device_stats {
    /// The elem_size the caller passed; see "Output structs" in storeclient.h.
    pub struct_size: u32,
    pub pad_: u32,
    pub device: i32,
    pub chunks: u32,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub object_count: u64,
    pub chunk_size: u64,
    pub largest_free_bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct store_spill_file_info {
    /// The elem_size the caller passed; see "Output structs" in storeclient.h.
    pub struct_size: u32,
    pub pad_: u32,
    pub path: [c_char; 4096],
    pub size: u64,
    pub live_objects: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    pub created_time_ns: i64,
}

impl Default for store_spill_file_info {
    fn default() -> Self {
        store_spill_file_info {
            struct_size: 0,
            pad_: 0,
            path: [0; 4096],
            size: 0,
            live_objects: 0,
            live_bytes: 0,
            dead_bytes: 0,
            created_time_ns: 0,
        }
    }
}

impl core::fmt::Debug for store_spill_file_info {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let len = self.path.iter().position(|&c| c == 0).unwrap_or(self.path.len());
        let bytes: Vec<u8> = self.path[..len].iter().map(|&c| c as u8).collect();
        f.debug_struct("store_spill_file_info")
            .field("struct_size", &self.struct_size)
            .field("path", &String::from_utf8_lossy(&bytes))
            .field("size", &self.size)
            .field("live_objects", &self.live_objects)
            .field("live_bytes", &self.live_bytes)
            .field("dead_bytes", &self.dead_bytes)
            .field("created_time_ns", &self.created_time_ns)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------------

extern "C" {
    pub fn store_errstr(code: c_int) -> *const c_char;
    pub fn store_last_error_message() -> *const c_char;
    pub fn store_version_string() -> *const c_char;

    // Connecting
    pub fn store_client_connect(
        out: *mut *mut store_client,
        socket_path: *const c_char,
        opts: *const store_connect_options,
    ) -> c_int;
    pub fn store_client_free(client: *mut store_client);

    // Writing
    pub fn store_create(
        client: *mut store_client,
        out: *mut *mut store_writer,
        id: *const store_object_id,
        data_size: u64,
        opts: *const store_create_options,
    ) -> c_int;
    pub fn store_writer_write(w: *mut store_writer, data: *const c_void, size: usize) -> c_int;
    pub fn store_writer_seek(
        w: *mut store_writer,
        offset: i64,
        whence: c_int,
        pos: *mut u64,
    ) -> c_int;
    pub fn store_writer_tell(w: *const store_writer) -> u64;
    pub fn store_writer_size(w: *const store_writer) -> u64;
    pub fn store_writer_data(w: *mut store_writer) -> *mut c_void;
    pub fn store_writer_device_ptr(
        w: *mut store_writer,
        dptr: *mut *mut c_void,
        device: *mut c_int,
    ) -> c_int;
    pub fn store_writer_seal(w: *mut store_writer) -> c_int;
    pub fn store_writer_abort(w: *mut store_writer) -> c_int;
    pub fn store_put(
        client: *mut store_client,
        id: *const store_object_id,
        data: *const c_void,
        data_size: u64,
        opts: *const store_create_options,
    ) -> c_int;
    pub fn store_put_many(
        client: *mut store_client,
        ids: *const store_object_id,
        datas: *const *const c_void,
        sizes: *const u64,
        n: usize,
        opts: *const store_create_options,
        done: *mut usize,
    ) -> c_int;

    // Reading
    pub fn store_open_reader(
        client: *mut store_client,
        out: *mut *mut store_reader,
        id: *const store_object_id,
        timeout_ms: i64,
    ) -> c_int;
    pub fn store_open_readers(
        client: *mut store_client,
        out: *mut *mut store_reader,
        ids: *const store_object_id,
        n: usize,
        timeout_ms: i64,
    ) -> c_int;
    pub fn store_reader_read(
        r: *mut store_reader,
        buf: *mut c_void,
        size: usize,
        nread: *mut usize,
    ) -> c_int;
    pub fn store_reader_seek(
        r: *mut store_reader,
        offset: i64,
        whence: c_int,
        pos: *mut u64,
    ) -> c_int;
    pub fn store_reader_tell(r: *const store_reader) -> u64;
    pub fn store_reader_size(r: *const store_reader) -> u64;
    pub fn store_reader_data(r: *const store_reader) -> *const c_void;
    pub fn store_reader_device_ptr(
        r: *const store_reader,
        dptr: *mut *const c_void,
        device: *mut c_int,
    ) -> c_int;
    pub fn store_reader_device(r: *const store_reader) -> c_int;
    pub fn store_reader_metadata(r: *const store_reader, size: *mut u64) -> *const c_void;
    pub fn store_reader_id(r: *const store_reader) -> *const store_object_id;
    pub fn store_reader_close(r: *mut store_reader);
    pub fn store_readers_close(readers: *mut *mut store_reader, n: usize);

    // Management
    pub fn store_contains(
        client: *mut store_client,
        id: *const store_object_id,
        present: *mut c_int,
    ) -> c_int;
    pub fn store_delete(client: *mut store_client, id: *const store_object_id) -> c_int;
    pub fn store_delete_many(
        client: *mut store_client,
        ids: *const store_object_id,
        n: usize,
        deleted: *mut usize,
    ) -> c_int;
    pub fn store_info(
        client: *mut store_client,
        id: *const store_object_id,
        info: *mut store_object_info,
    ) -> c_int;
    pub fn store_list(
        client: *mut store_client,
        out: *mut *mut store_object_info,
        elem_size: usize,
        count: *mut usize,
    ) -> c_int;
    pub fn store_free(p: *mut c_void);
    pub fn store_pin(client: *mut store_client, id: *const store_object_id) -> c_int;
    pub fn store_unpin(client: *mut store_client, id: *const store_object_id) -> c_int;
    pub fn store_lease(
        client: *mut store_client,
        id: *const store_object_id,
        lease_count: *mut u32,
    ) -> c_int;
    pub fn store_unlease(
        client: *mut store_client,
        id: *const store_object_id,
        lease_count: *mut u32,
    ) -> c_int;
    pub fn store_stats_get(client: *mut store_client, stats: *mut store_stats) -> c_int;
    pub fn store_set_importance(
        client: *mut store_client,
        id: *const store_object_id,
        importance: i32,
    ) -> c_int;
    pub fn store_prefetch(
        client: *mut store_client,
        ids: *const store_object_id,
        n: usize,
    ) -> c_int;
    pub fn store_evict(client: *mut store_client, bytes: u64, spilled: *mut u64) -> c_int;
    pub fn store_spill_url(
        client: *mut store_client,
        id: *const store_object_id,
        buf: *mut c_char,
        len: usize,
    ) -> c_int;
    pub fn store_gpu_stats(
        client: *mut store_client,
        out: *mut *mut store_gpu_device_stats,
        elem_size: usize,
        count: *mut usize,
        backend: *mut c_int,
    ) -> c_int;
    pub fn store_list_spill_files(
        client: *mut store_client,
        out: *mut *mut store_spill_file_info,
        elem_size: usize,
        count: *mut usize,
    ) -> c_int;
    pub fn store_list_clients(
        client: *mut store_client,
        out: *mut *mut store_client_info,
        elem_size: usize,
        count: *mut usize,
    ) -> c_int;
    pub fn store_list_page(
        client: *mut store_client,
        opts: *const store_list_options,
        out: *mut *mut store_object_info,
        elem_size: usize,
        count: *mut usize,
        total: *mut u64,
    ) -> c_int;

    // Helpers
    pub fn store_object_id_from_string(
        str_: *const c_char,
        len: usize,
        out: *mut store_object_id,
    ) -> c_int;
    pub fn store_object_id_to_hex(
        id: *const store_object_id,
        hex: *mut c_char,
        hex_size: usize,
    ) -> c_int;
    pub fn store_object_id_from_hex(hex: *const c_char, out: *mut store_object_id) -> c_int;
}
