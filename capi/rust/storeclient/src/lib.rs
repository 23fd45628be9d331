//! Safe interface to libstoreclient, the client of a `store` shared-memory object store server.
//!
//! ```no_run
//! use storeclient::{Client, ObjectId};
//! let client = Client::connect(None)?;
//! let id = ObjectId::from_key("greeting");
//! client.put(&id, b"hello")?;
//! let reader = client.open(&id, None)?;
//! assert_eq!(reader.data(), b"hello");
//! # Ok::<(), storeclient::Error>(())
//! ```
//!
//! Writers and readers borrow their client, so they cannot outlive it:
//!
//! ```compile_fail
//! use storeclient::{Client, CreateOptions, ObjectId};
//! let w = {
//!     let client = Client::connect(None).unwrap();
//!     client.create(&ObjectId::from_key("k"), 1, &CreateOptions::default()).unwrap()
//! };
//! ```
//!
//! A reader is `Send` but not `Sync`:
//!
//! ```compile_fail
//! fn assert_sync<T: Sync>() {}
//! assert_sync::<storeclient::Reader<'static>>();
//! ```
//!
//! ```compile_fail
//! fn assert_sync<T: Sync>() {}
//! assert_sync::<storeclient::Writer<'static>>();
//! ```

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::{self, NonNull};
use std::time::Duration;

pub use storeclient_sys as sys;

/// A snapshot of the server's figures (`store_stats`).
pub type Stats = sys::store_stats;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The `STORE_E*` codes of the C library.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `STORE_EINVAL`
    InvalidArgument,
    /// `STORE_ENOTFOUND`
    NotFound,
    /// `STORE_EEXISTS`
    Exists,
    /// `STORE_ENOSPACE`
    NoSpace,
    /// `STORE_ENODISK`
    NoDisk,
    /// `STORE_ETIMEDOUT`
    TimedOut,
    /// `STORE_ESEALED`
    Sealed,
    /// `STORE_ENOTSEALED`
    NotSealed,
    /// `STORE_EMISUSE`
    Misuse,
    /// `STORE_ECONN`
    Connection,
    /// `STORE_EPROTO`
    Protocol,
    /// `STORE_ENOTSUP`
    NotSupported,
    /// `STORE_ENOMEM`
    OutOfMemory,
    /// `STORE_ECORRUPT`
    Corrupt,
    /// `STORE_EPERM`
    PermissionDenied,
    /// `STORE_ELIMIT`: over a limit of the store (the message names the flag to raise)
    OverLimit,
    /// A code this crate does not know.
    Unknown(i32),
}

impl ErrorCode {
    /// Maps a negative C status to its code.
    pub fn from_raw(code: i32) -> ErrorCode {
        match code {
            sys::STORE_EINVAL => ErrorCode::InvalidArgument,
            sys::STORE_ENOTFOUND => ErrorCode::NotFound,
            sys::STORE_EEXISTS => ErrorCode::Exists,
            sys::STORE_ENOSPACE => ErrorCode::NoSpace,
            sys::STORE_ENODISK => ErrorCode::NoDisk,
            sys::STORE_ETIMEDOUT => ErrorCode::TimedOut,
            sys::STORE_ESEALED => ErrorCode::Sealed,
            sys::STORE_ENOTSEALED => ErrorCode::NotSealed,
            sys::STORE_EMISUSE => ErrorCode::Misuse,
            sys::STORE_ECONN => ErrorCode::Connection,
            sys::STORE_EPROTO => ErrorCode::Protocol,
            sys::STORE_ENOTSUP => ErrorCode::NotSupported,
            sys::STORE_ENOMEM => ErrorCode::OutOfMemory,
            sys::STORE_ECORRUPT => ErrorCode::Corrupt,
            sys::STORE_EPERM => ErrorCode::PermissionDenied,
            sys::STORE_ELIMIT => ErrorCode::OverLimit,
            other => ErrorCode::Unknown(other),
        }
    }

    /// The C status value.
    pub fn raw(self) -> i32 {
        match self {
            ErrorCode::InvalidArgument => sys::STORE_EINVAL,
            ErrorCode::NotFound => sys::STORE_ENOTFOUND,
            ErrorCode::Exists => sys::STORE_EEXISTS,
            ErrorCode::NoSpace => sys::STORE_ENOSPACE,
            ErrorCode::NoDisk => sys::STORE_ENODISK,
            ErrorCode::TimedOut => sys::STORE_ETIMEDOUT,
            ErrorCode::Sealed => sys::STORE_ESEALED,
            ErrorCode::NotSealed => sys::STORE_ENOTSEALED,
            ErrorCode::Misuse => sys::STORE_EMISUSE,
            ErrorCode::Connection => sys::STORE_ECONN,
            ErrorCode::Protocol => sys::STORE_EPROTO,
            ErrorCode::NotSupported => sys::STORE_ENOTSUP,
            ErrorCode::OutOfMemory => sys::STORE_ENOMEM,
            ErrorCode::Corrupt => sys::STORE_ECORRUPT,
            ErrorCode::PermissionDenied => sys::STORE_EPERM,
            ErrorCode::OverLimit => sys::STORE_ELIMIT,
            ErrorCode::Unknown(c) => c,
        }
    }

    /// The library's short description ("store is full").
    pub fn description(self) -> String {
        unsafe { cstr_to_string(sys::store_errstr(self.raw())) }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description())
    }
}

/// A failed call: its code and the library's detailed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    /// Builds the error for `rc` from this thread's last error message. Must be called on the
    /// thread that made the failing call, before any other library call.
    fn last(rc: c_int) -> Error {
        let message = unsafe { cstr_to_string(sys::store_last_error_message()) };
        Error { code: ErrorCode::from_raw(rc), message }
    }

    fn new(code: ErrorCode, message: &str) -> Error {
        Error { code, message: message.to_string() }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.code {
            ErrorCode::InvalidArgument => io::ErrorKind::InvalidInput,
            ErrorCode::NotFound => io::ErrorKind::NotFound,
            ErrorCode::Exists => io::ErrorKind::AlreadyExists,
            ErrorCode::TimedOut => io::ErrorKind::TimedOut,
            ErrorCode::PermissionDenied => io::ErrorKind::PermissionDenied,
            ErrorCode::Connection => io::ErrorKind::ConnectionAborted,
            ErrorCode::Corrupt => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn check(rc: c_int) -> Result<()> {
    if rc == sys::STORE_OK {
        Ok(())
    } else {
        Err(Error::last(rc))
    }
}

unsafe fn cstr_to_string(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// `None` = wait forever (-1); otherwise milliseconds, rounded up, saturating.
fn timeout_ms(timeout: Option<Duration>) -> i64 {
    match timeout {
        None => -1,
        Some(d) => {
            let mut ms = d.as_millis();
            if d.subsec_nanos() % 1_000_000 != 0 {
                ms += 1;
            }
            if ms > i64::MAX as u128 {
                i64::MAX
            } else {
                ms as i64
            }
        }
    }
}

/// The library's version string ("0.1.0").
pub fn version() -> String {
    unsafe { cstr_to_string(sys::store_version_string()) }
}

// ---------------------------------------------------------------------------------------------
// Object ids
// ---------------------------------------------------------------------------------------------

/// A 20-byte object id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(sys::store_object_id);

impl ObjectId {
    pub const SIZE: usize = sys::STORE_OBJECT_ID_SIZE;

    pub fn from_bytes(bytes: [u8; sys::STORE_OBJECT_ID_SIZE]) -> ObjectId {
        ObjectId(sys::store_object_id { bytes })
    }

    /// A stable id derived from a key (the library's hash; the same on every machine).
    pub fn from_key<K: AsRef<[u8]> + ?Sized>(key: &K) -> ObjectId {
        let key = key.as_ref();
        let mut out = sys::store_object_id::default();
        let rc = unsafe {
            sys::store_object_id_from_string(key.as_ptr() as *const c_char, key.len(), &mut out)
        };
        // Only fails for NULL pointers, which cannot happen here.
        debug_assert_eq!(rc, sys::STORE_OK);
        ObjectId(out)
    }

    /// Parses 40 hex digits.
    pub fn from_hex(hex: &str) -> Result<ObjectId> {
        let c = CString::new(hex)
            .map_err(|_| Error::new(ErrorCode::InvalidArgument, "hex id contains a NUL byte"))?;
        let mut out = sys::store_object_id::default();
        check(unsafe { sys::store_object_id_from_hex(c.as_ptr(), &mut out) })?;
        Ok(ObjectId(out))
    }

    pub fn as_bytes(&self) -> &[u8; sys::STORE_OBJECT_ID_SIZE] {
        &self.0.bytes
    }

    pub fn as_raw(&self) -> &sys::store_object_id {
        &self.0
    }

    pub fn from_raw(raw: sys::store_object_id) -> ObjectId {
        ObjectId(raw)
    }

    /// 40 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut buf = [0 as c_char; 2 * sys::STORE_OBJECT_ID_SIZE + 1];
        let rc = unsafe { sys::store_object_id_to_hex(&self.0, buf.as_mut_ptr(), buf.len()) };
        debug_assert_eq!(rc, sys::STORE_OK);
        unsafe { cstr_to_string(buf.as_ptr()) }
    }
}

impl From<[u8; sys::STORE_OBJECT_ID_SIZE]> for ObjectId {
    fn from(bytes: [u8; sys::STORE_OBJECT_ID_SIZE]) -> ObjectId {
        ObjectId::from_bytes(bytes)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

// ---------------------------------------------------------------------------------------------
// Object info
// ---------------------------------------------------------------------------------------------

/// An object's state (`STORE_STATE_*`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectState {
    Created,
    Sealed,
    Spilling,
    Spilled,
    Restoring,
    Unknown(u32),
}

impl ObjectState {
    pub fn from_raw(s: u32) -> ObjectState {
        match s {
            sys::STORE_STATE_CREATED => ObjectState::Created,
            sys::STORE_STATE_SEALED => ObjectState::Sealed,
            sys::STORE_STATE_SPILLING => ObjectState::Spilling,
            sys::STORE_STATE_SPILLED => ObjectState::Spilled,
            sys::STORE_STATE_RESTORING => ObjectState::Restoring,
            other => ObjectState::Unknown(other),
        }
    }
}

/// What `store_info()` / `store_list()` report about one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    pub id: ObjectId,
    pub data_size: u64,
    pub metadata_size: u64,
    pub state: ObjectState,
    /// `STORE_LEVEL_*` bits.
    pub level: u32,
    /// -1 = host memory.
    pub device: i32,
    pub importance: i32,
    pub pin_count: u32,
    pub reader_count: u32,
    pub create_time_ns: i64,
    pub last_access_ns: i64,
    pub creator_pid: i32,
    /// Leases on it over all clients.
    pub lease_count: u32,
}

impl From<&sys::store_object_info> for ObjectInfo {
    fn from(i: &sys::store_object_info) -> ObjectInfo {
        ObjectInfo {
            id: ObjectId(i.id),
            data_size: i.data_size,
            metadata_size: i.metadata_size,
            state: ObjectState::from_raw(i.state),
            level: i.level,
            device: i.device,
            importance: i.importance,
            pin_count: i.pin_count,
            reader_count: i.reader_count,
            create_time_ns: i.create_time_ns,
            last_access_ns: i.last_access_ns,
            creator_pid: i.creator_pid,
            lease_count: i.lease_count,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Create options
// ---------------------------------------------------------------------------------------------

/// Options of `create` / `put_with`. `Default` matches `STORE_CREATE_OPTIONS_INIT`.
#[derive(Debug, Clone, Copy)]
pub struct CreateOptions<'a> {
    /// Copied into the object after the data; empty = none. At most 1 MiB.
    pub metadata: &'a [u8],
    /// Higher values are evicted later.
    pub importance: i32,
    /// -1 = host memory; >= 0 = that GPU.
    pub device: i32,
    /// Wait for space when full: 0 = fail at once, -1 = forever, else milliseconds.
    pub timeout_ms: i64,
    /// The creator holds a lease from the create on and the object goes with its last lease
    /// (see `Client::lease`).
    pub leased: bool,
}

impl<'a> Default for CreateOptions<'a> {
    fn default() -> Self {
        CreateOptions { metadata: &[], importance: 0, device: -1, timeout_ms: 0, leased: false }
    }
}

impl<'a> CreateOptions<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn metadata(mut self, metadata: &'a [u8]) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn importance(mut self, importance: i32) -> Self {
        self.importance = importance;
        self
    }

    pub fn device(mut self, device: i32) -> Self {
        self.device = device;
        self
    }

    /// Deleted when its last lease goes: the creator's, or the last one taken with
    /// `Client::lease` (a client that disconnects or dies drops its leases).
    pub fn leased(mut self, leased: bool) -> Self {
        self.leased = leased;
        self
    }

    /// How long to wait for space when the store is full: `None` = forever,
    /// `Some(Duration::ZERO)` = fail at once.
    pub fn wait_for_space(mut self, timeout: Option<Duration>) -> Self {
        self.timeout_ms = timeout_ms(timeout);
        self
    }

    fn to_raw(self) -> sys::store_create_options {
        sys::store_create_options {
            version: sys::STORE_CREATE_OPTIONS_VERSION,
            metadata: if self.metadata.is_empty() {
                ptr::null()
            } else {
                self.metadata.as_ptr() as *const c_void
            },
            metadata_size: self.metadata.len() as u64,
            importance: self.importance,
            device: self.device,
            timeout_ms: self.timeout_ms,
            flags: if self.leased { sys::STORE_CREATE_LEASED } else { 0 },
            reserved_: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A connection to a store server. Disconnects on drop.
pub struct Client {
    raw: NonNull<sys::store_client>,
}

// SAFETY: storeclient.h promises that "a store_client may be used from several threads at
// once", and the handle is not tied to the thread that created it.
unsafe impl Send for Client {}
unsafe impl Sync for Client {}

fn path_cstring(path: Option<&Path>) -> Result<Option<CString>> {
    match path {
        None => Ok(None),
        Some(p) => CString::new(p.as_os_str().as_bytes())
            .map(Some)
            .map_err(|_| Error::new(ErrorCode::InvalidArgument, "socket path contains a NUL byte")),
    }
}

impl Client {
    /// Connects to the server on `path` (`None` = the library's default socket).
    pub fn connect(path: Option<&Path>) -> Result<Client> {
        Self::connect_raw(path, None, false)
    }

    /// As `connect`, with the name shown in the server's client list.
    pub fn connect_with_name(path: Option<&Path>, name: &str) -> Result<Client> {
        Self::connect_raw(path, Some(name), false)
    }

    /// A read-only client: it reads, lists and watches; the store refuses its changes
    /// (`ErrorCode::Permission`), and the memory it maps cannot be made writable.
    pub fn connect_read_only(path: Option<&Path>, name: Option<&str>) -> Result<Client> {
        Self::connect_raw(path, name, true)
    }

    fn connect_raw(path: Option<&Path>, name: Option<&str>, read_only: bool) -> Result<Client> {
        let cpath = path_cstring(path)?;
        let cname = match name {
            None => None,
            Some(n) => Some(CString::new(n).map_err(|_| {
                Error::new(ErrorCode::InvalidArgument, "client name contains a NUL byte")
            })?),
        };
        let mut opts = sys::STORE_CONNECT_OPTIONS_INIT;
        if let Some(n) = &cname {
            opts.client_name = n.as_ptr();
        }
        opts.read_only = i32::from(read_only);
        let mut out: *mut sys::store_client = ptr::null_mut();
        check(unsafe {
            sys::store_client_connect(
                &mut out,
                cpath.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
                &opts,
            )
        })?;
        match NonNull::new(out) {
            Some(raw) => Ok(Client { raw }),
            None => Err(Error::new(ErrorCode::Unknown(0), "connect returned no client")),
        }
    }

    /// The raw handle, for calls this crate does not wrap. Owned by the `Client`.
    pub fn as_raw(&self) -> *mut sys::store_client {
        self.raw.as_ptr()
    }

    /// Creates, fills and seals an object in one call.
    pub fn put(&self, id: &ObjectId, data: &[u8]) -> Result<()> {
        self.put_with(id, data, &CreateOptions::default())
    }

    /// As `put`, with options (metadata, importance, ...).
    pub fn put_with(&self, id: &ObjectId, data: &[u8], opts: &CreateOptions<'_>) -> Result<()> {
        let raw_opts = opts.to_raw();
        check(unsafe {
            sys::store_put(
                self.as_raw(),
                &id.0,
                data.as_ptr() as *const c_void,
                data.len() as u64,
                &raw_opts,
            )
        })
    }

    /// Reserves an object of `size` bytes; fill it through the returned `Writer`, then seal it.
    pub fn create(&self, id: &ObjectId, size: u64, opts: &CreateOptions<'_>) -> Result<Writer<'_>> {
        let raw_opts = opts.to_raw();
        let mut out: *mut sys::store_writer = ptr::null_mut();
        check(unsafe { sys::store_create(self.as_raw(), &mut out, &id.0, size, &raw_opts) })?;
        match NonNull::new(out) {
            Some(raw) => Ok(Writer { raw: Some(raw), _client: PhantomData }),
            None => Err(Error::new(ErrorCode::Unknown(0), "create returned no writer")),
        }
    }

    /// Opens a sealed object. `timeout`: `None` = wait forever for it to be sealed,
    /// `Some(Duration::ZERO)` = do not wait (`NotFound` if not sealed now).
    pub fn open(&self, id: &ObjectId, timeout: Option<Duration>) -> Result<Reader<'_>> {
        let mut out: *mut sys::store_reader = ptr::null_mut();
        check(unsafe {
            sys::store_open_reader(self.as_raw(), &mut out, &id.0, timeout_ms(timeout))
        })?;
        match NonNull::new(out) {
            Some(raw) => Ok(Reader { raw, _client: PhantomData }),
            None => Err(Error::new(ErrorCode::Unknown(0), "open returned no reader")),
        }
    }

    /// True if the object is sealed and visible.
    pub fn contains(&self, id: &ObjectId) -> Result<bool> {
        let mut present: c_int = 0;
        check(unsafe { sys::store_contains(self.as_raw(), &id.0, &mut present) })?;
        Ok(present != 0)
    }

    /// Deletes a sealed object (its memory returns when the last reader closes).
    pub fn delete(&self, id: &ObjectId) -> Result<()> {
        check(unsafe { sys::store_delete(self.as_raw(), &id.0) })
    }

    /// Information about one object, in any state.
    pub fn info(&self, id: &ObjectId) -> Result<ObjectInfo> {
        let mut info = sys::store_object_info::default();
        check(unsafe { sys::store_info(self.as_raw(), &id.0, &mut info) })?;
        Ok(ObjectInfo::from(&info))
    }

    /// Every object in the table (CREATED ones included).
    pub fn list(&self) -> Result<Vec<ObjectInfo>> {
        let mut out: *mut sys::store_object_info = ptr::null_mut();
        let mut count: usize = 0;
        check(unsafe { sys::store_list(self.as_raw(), &mut out, &mut count) })?;
        let v = if out.is_null() || count == 0 {
            Vec::new()
        } else {
            unsafe { std::slice::from_raw_parts(out, count) }.iter().map(ObjectInfo::from).collect()
        };
        unsafe { sys::store_free(out as *mut c_void) };
        Ok(v)
    }

    /// Pins a sealed object so that it is never evicted while pinned.
    pub fn pin(&self, id: &ObjectId) -> Result<()> {
        check(unsafe { sys::store_pin(self.as_raw(), &id.0) })
    }

    /// Drops one pin of this client (`Misuse` if it holds none).
    pub fn unpin(&self, id: &ObjectId) -> Result<()> {
        check(unsafe { sys::store_unpin(self.as_raw(), &id.0) })
    }

    /// Takes a lease on a sealed object: it stays until this client drops it (`unlease`, or
    /// by disconnecting). An object created `leased` goes with its last lease. Returns the
    /// leases on the object now, over all clients.
    pub fn lease(&self, id: &ObjectId) -> Result<u32> {
        let mut n = 0u32;
        check(unsafe { sys::store_lease(self.as_raw(), &id.0, &mut n) })?;
        Ok(n)
    }

    /// Drops one lease of this client (`Misuse` if it holds none). Returns the leases left.
    pub fn unlease(&self, id: &ObjectId) -> Result<u32> {
        let mut n = 0u32;
        check(unsafe { sys::store_unlease(self.as_raw(), &id.0, &mut n) })?;
        Ok(n)
    }

    /// Starts bringing spilled objects back into memory, without waiting.
    pub fn prefetch(&self, ids: &[ObjectId]) -> Result<()> {
        // ObjectId is a newtype over store_object_id; copy to be independent of its layout.
        let raw: Vec<sys::store_object_id> = ids.iter().map(|i| i.0).collect();
        check(unsafe { sys::store_prefetch(self.as_raw(), raw.as_ptr(), raw.len()) })
    }

    /// Spills at least `bytes` of evictable objects to disk; returns the memory freed.
    pub fn evict(&self, bytes: u64) -> Result<u64> {
        let mut spilled: u64 = 0;
        check(unsafe { sys::store_evict(self.as_raw(), bytes, &mut spilled) })?;
        Ok(spilled)
    }

    /// Sets an object's importance (lower is spilled first).
    pub fn set_importance(&self, id: &ObjectId, importance: i32) -> Result<()> {
        check(unsafe { sys::store_set_importance(self.as_raw(), &id.0, importance) })
    }

    /// A snapshot of the server's figures.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = sys::store_stats::default();
        check(unsafe { sys::store_stats_get(self.as_raw(), &mut s) })?;
        Ok(s)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        unsafe { sys::store_client_free(self.raw.as_ptr()) };
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("raw", &self.raw).finish()
    }
}

fn seek_args(pos: io::SeekFrom) -> io::Result<(i64, c_int)> {
    match pos {
        io::SeekFrom::Start(o) => {
            if o > i64::MAX as u64 {
                Err(io::Error::new(io::ErrorKind::InvalidInput, "seek offset too large"))
            } else {
                Ok((o as i64, 0))
            }
        }
        io::SeekFrom::Current(o) => Ok((o, 1)),
        io::SeekFrom::End(o) => Ok((o, 2)),
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// An object being created. Seal it with `seal()`; dropped unsealed, it is aborted (and its id
/// freed).
pub struct Writer<'c> {
    raw: Option<NonNull<sys::store_writer>>,
    _client: PhantomData<&'c Client>,
}

// SAFETY: a writer is not bound to the thread that created it, so it may move between threads.
// It is not Sync: storeclient.h says "a store_writer or store_reader must be used by one thread
// at a time", and its position and calls are not synchronised.
unsafe impl<'c> Send for Writer<'c> {}

impl<'c> Writer<'c> {
    fn ptr(&self) -> *mut sys::store_writer {
        // `raw` is only None after seal/abort, which consume `self`.
        self.raw.map_or(ptr::null_mut(), |p| p.as_ptr())
    }

    /// The object's data size.
    pub fn size(&self) -> u64 {
        unsafe { sys::store_writer_size(self.ptr()) }
    }

    /// The current write position.
    pub fn position(&self) -> u64 {
        unsafe { sys::store_writer_tell(self.ptr()) }
    }

    /// The object's bytes in shared memory, writable. Empty for a device (GPU) object or once
    /// the client's connection is gone.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let p = unsafe { sys::store_writer_data(self.ptr()) } as *mut u8;
        if p.is_null() {
            &mut []
        } else {
            unsafe { std::slice::from_raw_parts_mut(p, self.size() as usize) }
        }
    }

    /// Seals the object: immutable and visible to every client.
    pub fn seal(mut self) -> Result<()> {
        match self.raw.take() {
            Some(p) => check(unsafe { sys::store_writer_seal(p.as_ptr()) }),
            None => Ok(()),
        }
    }

    /// Throws the object away and frees its id.
    pub fn abort(mut self) -> Result<()> {
        match self.raw.take() {
            Some(p) => check(unsafe { sys::store_writer_abort(p.as_ptr()) }),
            None => Ok(()),
        }
    }
}

impl<'c> Drop for Writer<'c> {
    fn drop(&mut self) {
        if let Some(p) = self.raw.take() {
            unsafe { sys::store_writer_abort(p.as_ptr()) };
        }
    }
}

impl<'c> io::Write for Writer<'c> {
    /// Writes as much of `buf` as fits before the end of the object.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let remaining = self.size().saturating_sub(self.position());
        let n = std::cmp::min(buf.len() as u64, remaining) as usize;
        if n == 0 {
            return Ok(0);
        }
        check(unsafe { sys::store_writer_write(self.ptr(), buf.as_ptr() as *const c_void, n) })?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'c> io::Seek for Writer<'c> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let (off, whence) = seek_args(pos)?;
        let mut out: u64 = 0;
        check(unsafe { sys::store_writer_seek(self.ptr(), off, whence, &mut out) })?;
        Ok(out)
    }
}

impl<'c> fmt::Debug for Writer<'c> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("size", &self.size())
            .field("position", &self.position())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// A sealed object held open for reading; released on drop.
pub struct Reader<'c> {
    raw: NonNull<sys::store_reader>,
    _client: PhantomData<&'c Client>,
}

// SAFETY: as for Writer: it may move to another thread, but must be used by one thread at a
// time ("a store_writer or store_reader must be used by one thread at a time"), so not Sync.
unsafe impl<'c> Send for Reader<'c> {}

impl<'c> Reader<'c> {
    /// The object's data size.
    pub fn size(&self) -> u64 {
        unsafe { sys::store_reader_size(self.raw.as_ptr()) }
    }

    /// The current read position.
    pub fn position(&self) -> u64 {
        unsafe { sys::store_reader_tell(self.raw.as_ptr()) }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        let p = unsafe { sys::store_reader_id(self.raw.as_ptr()) };
        if p.is_null() {
            ObjectId::default()
        } else {
            ObjectId(unsafe { *p })
        }
    }

    /// The object's data, read-only, without a copy. Empty for a device (GPU) object or once
    /// the client's connection is gone.
    pub fn data(&self) -> &[u8] {
        let p = unsafe { sys::store_reader_data(self.raw.as_ptr()) } as *const u8;
        if p.is_null() {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(p, self.size() as usize) }
        }
    }

    /// The object's metadata; empty if there is none.
    pub fn metadata(&self) -> &[u8] {
        let mut size: u64 = 0;
        let p = unsafe { sys::store_reader_metadata(self.raw.as_ptr(), &mut size) } as *const u8;
        if p.is_null() || size == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(p, size as usize) }
        }
    }
}

impl<'c> Drop for Reader<'c> {
    fn drop(&mut self) {
        unsafe { sys::store_reader_close(self.raw.as_ptr()) };
    }
}

impl<'c> io::Read for Reader<'c> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n: usize = 0;
        check(unsafe {
            sys::store_reader_read(
                self.raw.as_ptr(),
                buf.as_mut_ptr() as *mut c_void,
                buf.len(),
                &mut n,
            )
        })?;
        Ok(n)
    }
}

impl<'c> io::Seek for Reader<'c> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let (off, whence) = seek_args(pos)?;
        let mut out: u64 = 0;
        check(unsafe { sys::store_reader_seek(self.raw.as_ptr(), off, whence, &mut out) })?;
        Ok(out)
    }
}

impl<'c> fmt::Debug for Reader<'c> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("id", &self.id())
            .field("size", &self.size())
            .field("position", &self.position())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_conversion() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_millis(1500))), 1500);
        assert_eq!(timeout_ms(Some(Duration::from_secs(u64::MAX))), i64::MAX);
    }

    #[test]
    fn error_codes_round_trip() {
        for c in -16..=-1 {
            assert_eq!(ErrorCode::from_raw(c).raw(), c);
        }
        assert_eq!(ErrorCode::from_raw(-2), ErrorCode::NotFound);
        assert_eq!(ErrorCode::from_raw(-99), ErrorCode::Unknown(-99));
        assert_eq!(ErrorCode::NoSpace.to_string(), "store is full");
    }

    #[test]
    fn object_ids() {
        let a = ObjectId::from_key("key");
        let b = ObjectId::from_key(b"key".as_ref());
        assert_eq!(a, b);
        assert_ne!(a, ObjectId::from_key("other"));
        let hex = a.to_hex();
        assert_eq!(hex.len(), 40);
        assert_eq!(format!("{}", a), hex);
        assert_eq!(ObjectId::from_hex(&hex).unwrap(), a);
        assert_eq!(ObjectId::from_hex("zz").unwrap_err().code, ErrorCode::InvalidArgument);
        let raw = ObjectId::from_bytes([0xab; 20]);
        assert_eq!(raw.to_hex(), "ab".repeat(20));
    }

    #[test]
    fn connect_to_nothing_fails() {
        let err = Client::connect(Some(Path::new("/nonexistent/dir/store.sock"))).unwrap_err();
        assert_eq!(err.code, ErrorCode::Connection);
    }

    fn assert_send<T: Send>() {}
    fn assert_sync<T: Sync>() {}

    #[test]
    fn thread_safety_markers() {
        assert_send::<Client>();
        assert_sync::<Client>();
        assert_send::<Writer<'static>>();
        assert_send::<Reader<'static>>();
    }
}
