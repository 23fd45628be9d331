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
//!
//! Calls over many objects take slices and return a `Vec`, one entry per id where the library
//! reports per id:
//!
//! ```no_run
//! use storeclient::{Client, CreateOptions, ListOptions, ObjectId};
//! let client = Client::connect(None)?;
//! let ids: Vec<ObjectId> = (0..3).map(|i| ObjectId::from_key(&format!("k{}", i))).collect();
//! let objects: Vec<(ObjectId, &[u8])> = ids.iter().map(|id| (*id, &b"value"[..])).collect();
//! client.put_many(&objects, &CreateOptions::default())?;
//! for reader in client.open_many(&ids, None)?.into_iter().flatten() {
//!     println!("{} = {:?}", reader.id(), reader.data());
//! }
//! for page in client.list_pages(ListOptions::new().limit(1000)) {
//!     for info in page? {
//!         println!("{} {} bytes", info.id, info.data_size);
//!     }
//! }
//! client.delete_many(&ids)?;
//! # Ok::<(), storeclient::Error>(())
//! ```

#![warn(missing_docs)]

use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::io;
use std::iter::FusedIterator;
use std::marker::PhantomData;
use std::mem::size_of;
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
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
    /// What kind of failure (the `STORE_E*` code).
    pub code: ErrorCode,
    /// The library's details (`store_last_error_message()`), e.g. which object and why.
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

    /// What kind of failure (the `STORE_E*` code).
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The library's details of the failure.
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

/// The result of a call of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The failure of a call over many objects that tries every one (`Client::put_many`,
/// `Client::delete_many`): the first failure, and how many objects the call did in all.
///
/// It converts into an `Error` (the first failure), so `?` works in a function that returns
/// `storeclient::Result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    /// The first failure: its code, and the library's message, which names the object.
    pub error: Error,
    /// How many objects were put (or deleted) in all, before and after the first failure.
    pub done: usize,
}

impl BatchError {
    /// The first failure's code.
    pub fn code(&self) -> ErrorCode {
        self.error.code
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} done)", self.error, self.done)
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<BatchError> for Error {
    fn from(e: BatchError) -> Error {
        e.error
    }
}

impl From<BatchError> for io::Error {
    fn from(e: BatchError) -> io::Error {
        io::Error::from(e.error)
    }
}

fn check(rc: c_int) -> Result<()> {
    if rc == sys::STORE_OK {
        Ok(())
    } else {
        Err(Error::last(rc))
    }
}

/// Converts the `count` elements at `p`, an array the library allocated, and frees the array
/// (`store_free`). `p` may be NULL when `count` is 0.
unsafe fn take_array<T, U: for<'a> From<&'a T>>(p: *mut T, count: usize) -> Vec<U> {
    let v = if p.is_null() || count == 0 {
        Vec::new()
    } else {
        std::slice::from_raw_parts(p, count).iter().map(U::from).collect()
    };
    sys::store_free(p as *mut c_void);
    v
}

/// The bytes of a fixed-size C string field, up to its first NUL.
fn c_field_bytes(field: &[c_char]) -> Vec<u8> {
    let len = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    field[..len].iter().map(|&c| c as u8).collect()
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

/// The library's version string ("0.2.0").
pub fn version() -> String {
    unsafe { cstr_to_string(sys::store_version_string()) }
}

// ---------------------------------------------------------------------------------------------
// Object ids
// ---------------------------------------------------------------------------------------------

/// A 20-byte object id. Laid out as `store_object_id`, so a slice of ids is passed to the
/// library as it is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(transparent)]
pub struct ObjectId(sys::store_object_id);

impl ObjectId {
    /// The size of an id in bytes (20).
    pub const SIZE: usize = sys::STORE_OBJECT_ID_SIZE;

    /// The id with these bytes.
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

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; sys::STORE_OBJECT_ID_SIZE] {
        &self.0.bytes
    }

    /// The id as the C library takes it.
    pub fn as_raw(&self) -> &sys::store_object_id {
        &self.0
    }

    /// The id of a `store_object_id` from the C library.
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
    /// Being written by its creator, not visible to others.
    Created,
    /// Immutable, in memory, readable.
    Sealed,
    /// Being written to disk.
    Spilling,
    /// Only on disk; a reader brings it back.
    Spilled,
    /// Being read back into memory.
    Restoring,
    /// A state this crate does not know.
    Unknown(u32),
}

impl ObjectState {
    /// Maps a `STORE_STATE_*` value to its state.
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
    /// The object's id.
    pub id: ObjectId,
    /// Bytes of data.
    pub data_size: u64,
    /// Bytes of metadata.
    pub metadata_size: u64,
    /// Created, sealed, on its way to or from disk, or on disk.
    pub state: ObjectState,
    /// `STORE_LEVEL_*` bits.
    pub level: u32,
    /// -1 = host memory.
    pub device: i32,
    /// Higher is kept in memory longer.
    pub importance: i32,
    /// Pins held by all clients.
    pub pin_count: u32,
    /// Readers open in all clients.
    pub reader_count: u32,
    /// When it was created: CLOCK_REALTIME, nanoseconds.
    pub create_time_ns: i64,
    /// CLOCK_REALTIME of the last create, seal, get or reader close.
    pub last_access_ns: i64,
    /// The pid of the creating client, 0 if unknown.
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
// Listing: pages of the object table, clients, spill files
// ---------------------------------------------------------------------------------------------

/// How `Client::list_page` sorts the objects (`STORE_SORT_*`); ties are broken by id.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SortKey {
    /// By id (the default).
    #[default]
    Id,
    /// By data size.
    Size,
    /// By creation time.
    Created,
    /// By the time of the last create, seal, get or reader close.
    LastAccess,
    /// By importance.
    Importance,
    /// By state (`ObjectState`).
    State,
}

impl SortKey {
    fn raw(self) -> u32 {
        match self {
            SortKey::Id => sys::STORE_SORT_ID,
            SortKey::Size => sys::STORE_SORT_SIZE,
            SortKey::Created => sys::STORE_SORT_CREATED,
            SortKey::LastAccess => sys::STORE_SORT_LAST_ACCESS,
            SortKey::Importance => sys::STORE_SORT_IMPORTANCE,
            SortKey::State => sys::STORE_SORT_STATE,
        }
    }
}

/// Which page of the object table `Client::list_page` asks for, and `Client::list_pages`
/// starts from. `Default` matches `STORE_LIST_OPTIONS_INIT`: by id, ascending, 100 objects a
/// page, from the first, every id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOptions {
    /// The order of the objects.
    pub sort: SortKey,
    /// Largest first.
    pub descending: bool,
    /// Objects per page, at most `ListOptions::MAX_LIMIT` (more is `InvalidArgument`). A
    /// page of 0 objects still tells the total.
    pub limit: u32,
    /// Objects to skip in that order.
    pub offset: u64,
    /// Hex digits (at most 40) the ids must start with; empty = every id. Anything else is
    /// `InvalidArgument`.
    pub id_prefix: String,
}

impl Default for ListOptions {
    fn default() -> Self {
        ListOptions {
            sort: SortKey::Id,
            descending: false,
            limit: sys::STORE_LIST_OPTIONS_INIT.limit,
            offset: 0,
            id_prefix: String::new(),
        }
    }
}

impl ListOptions {
    /// The most objects a page may hold (`STORE_MAX_PAGE_OBJECTS`).
    pub const MAX_LIMIT: u32 = sys::STORE_MAX_PAGE_OBJECTS;

    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sorts by `key`.
    pub fn sort(mut self, key: SortKey) -> Self {
        self.sort = key;
        self
    }

    /// Largest first.
    pub fn descending(mut self, descending: bool) -> Self {
        self.descending = descending;
        self
    }

    /// Objects per page.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Objects to skip.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// Only ids that start with these hex digits.
    pub fn id_prefix(mut self, prefix: &str) -> Self {
        self.id_prefix = prefix.to_string();
        self
    }
}

/// One page of the object table, from `Client::list_page`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// The page's objects, in the order asked for (CREATED ones included; deleted ones not).
    pub objects: Vec<ObjectInfo>,
    /// How many objects match in all.
    pub total: u64,
    /// The offset of the next page (ask with `ListOptions::offset`), or `None` when this page
    /// is the last.
    pub next_offset: Option<u64>,
}

/// An iterator over the pages of the object table, from `Client::list_pages`: one request per
/// page, each yielded as a `Vec`. After an error it ends.
pub struct ListPages<'c> {
    client: &'c Client,
    opts: ListOptions,
    total: Option<u64>,
    done: bool,
}

impl<'c> ListPages<'c> {
    /// How many objects matched in all when the last page was asked for; `None` before the
    /// first.
    pub fn total(&self) -> Option<u64> {
        self.total
    }
}

impl<'c> Iterator for ListPages<'c> {
    type Item = Result<Vec<ObjectInfo>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.client.list_page(&self.opts) {
            Ok(page) => {
                self.total = Some(page.total);
                match page.next_offset {
                    Some(offset) => self.opts.offset = offset,
                    None => self.done = true,
                }
                if page.objects.is_empty() {
                    None
                } else {
                    Some(Ok(page.objects))
                }
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<'c> FusedIterator for ListPages<'c> {}

impl<'c> fmt::Debug for ListPages<'c> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListPages")
            .field("opts", &self.opts)
            .field("total", &self.total)
            .field("done", &self.done)
            .finish()
    }
}

/// One connected client, from `Client::list_clients` (`store_client_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Unique for the server's lifetime.
    pub client_id: u64,
    /// The name given at connect (the program's name if none was), maybe cut short.
    pub name: String,
    /// The client's pid, from the socket's peer credentials.
    pub pid: i32,
    /// The client's uid, from the socket's peer credentials.
    pub uid: u32,
    /// Creates it made since it connected.
    pub objects_created: u64,
    /// Its objects still being written.
    pub creating_count: u64,
    /// Readers it holds open.
    pub readers_held: u64,
    /// Pins it holds.
    pub pins_held: u64,
    /// Bytes of the objects it writes, reads or pins (each once).
    pub bytes_held: u64,
    /// When it connected: CLOCK_REALTIME, nanoseconds.
    pub connect_time_ns: i64,
    /// Requests it sent.
    pub requests: u64,
    /// True for the client that asked.
    pub is_self: bool,
}

impl From<&sys::store_client_info> for ClientInfo {
    fn from(c: &sys::store_client_info) -> ClientInfo {
        ClientInfo {
            client_id: c.client_id,
            name: String::from_utf8_lossy(&c_field_bytes(&c.name)).into_owned(),
            pid: c.pid,
            uid: c.uid,
            objects_created: c.objects_created,
            creating_count: c.creating_count,
            readers_held: c.readers_held,
            pins_held: c.pins_held,
            bytes_held: c.bytes_held,
            connect_time_ns: c.connect_time_ns,
            requests: c.requests,
            is_self: c.is_self != 0,
        }
    }
}

/// One spill file, from `Client::list_spill_files` (`store_spill_file_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpillFileInfo {
    /// The file's absolute path.
    pub path: PathBuf,
    /// Bytes on disk.
    pub size: u64,
    /// Objects whose copy is in it.
    pub live_objects: u64,
    /// Bytes of those objects' records.
    pub live_bytes: u64,
    /// Bytes of records of deleted objects; freed when the file is deleted or compacted.
    pub dead_bytes: u64,
    /// When it was created: CLOCK_REALTIME, nanoseconds.
    pub created_time_ns: i64,
}

impl From<&sys::store_spill_file_info> for SpillFileInfo {
    fn from(f: &sys::store_spill_file_info) -> SpillFileInfo {
        SpillFileInfo {
            path: PathBuf::from(OsStr::from_bytes(&c_field_bytes(&f.path))),
            size: f.size,
            live_objects: f.live_objects,
            live_bytes: f.live_bytes,
            dead_bytes: f.dead_bytes,
            created_time_ns: f.created_time_ns,
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
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Metadata copied into the object after the data (at most 1 MiB).
    pub fn metadata(mut self, metadata: &'a [u8]) -> Self {
        self.metadata = metadata;
        self
    }

    /// Higher values are evicted later.
    pub fn importance(mut self, importance: i32) -> Self {
        self.importance = importance;
        self
    }

    /// -1 = host memory; >= 0 = that GPU, by the store's device number.
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

/// A slice of ids as the library takes it (`ObjectId` is `repr(transparent)`).
fn raw_ids(ids: &[ObjectId]) -> *const sys::store_object_id {
    ids.as_ptr() as *const sys::store_object_id
}

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
    /// (`ErrorCode::PermissionDenied`), and the memory it maps cannot be made writable.
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

    /// Puts many objects, all with the same options: `(id, data)` pairs, small objects many to
    /// a round trip (`store_put_many`). Every object is tried; `Err` says which failed first
    /// (its message names the object) and how many were put in all. An empty `data` fails the
    /// call with `InvalidArgument` before anything is put.
    pub fn put_many<D: AsRef<[u8]>>(
        &self,
        objects: &[(ObjectId, D)],
        opts: &CreateOptions<'_>,
    ) -> std::result::Result<(), BatchError> {
        let ids: Vec<sys::store_object_id> = objects.iter().map(|(id, _)| id.0).collect();
        // Each as_ref() once, so that every pointer goes with its own length.
        let slices: Vec<&[u8]> = objects.iter().map(|(_, d)| d.as_ref()).collect();
        let datas: Vec<*const c_void> =
            slices.iter().map(|d| d.as_ptr() as *const c_void).collect();
        let sizes: Vec<u64> = slices.iter().map(|d| d.len() as u64).collect();
        let raw_opts = opts.to_raw();
        let mut done: usize = 0;
        let rc = unsafe {
            sys::store_put_many(
                self.as_raw(),
                ids.as_ptr(),
                datas.as_ptr(),
                sizes.as_ptr(),
                objects.len(),
                &raw_opts,
                &mut done,
            )
        };
        check(rc).map_err(|error| BatchError { error, done })
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

    /// Opens many sealed objects in one request (`store_open_readers`), waiting at most
    /// `timeout` in all (`None` = until every one is there, `Some(Duration::ZERO)` = not at
    /// all). One entry per id, in order: a reader, or `None` where that object was not sealed
    /// in time (or, as for `open`, could not be read back from disk). Each object is taken
    /// when it is first there and the reader holds it from then on. `Err` (bad arguments,
    /// `OverLimit`, a lost connection, out of memory) means no reader was opened.
    pub fn open_many(
        &self,
        ids: &[ObjectId],
        timeout: Option<Duration>,
    ) -> Result<Vec<Option<Reader<'_>>>> {
        let mut out: Vec<*mut sys::store_reader> = vec![ptr::null_mut(); ids.len()];
        check(unsafe {
            sys::store_open_readers(
                self.as_raw(),
                out.as_mut_ptr(),
                raw_ids(ids),
                ids.len(),
                timeout_ms(timeout),
            )
        })?;
        Ok(out
            .into_iter()
            .map(|p| NonNull::new(p).map(|raw| Reader { raw, _client: PhantomData }))
            .collect())
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

    /// Deletes many sealed objects, one request per 65536 (`store_delete_many`). Every id is
    /// tried; `Err` carries the first failure (`NotFound` for an id that is absent,
    /// `NotSealed` for one still being written; the message names it) and how many were
    /// deleted in all.
    pub fn delete_many(&self, ids: &[ObjectId]) -> std::result::Result<(), BatchError> {
        let mut done: usize = 0;
        let rc =
            unsafe { sys::store_delete_many(self.as_raw(), raw_ids(ids), ids.len(), &mut done) };
        check(rc).map_err(|error| BatchError { error, done })
    }

    /// Information about one object, in any state.
    pub fn info(&self, id: &ObjectId) -> Result<ObjectInfo> {
        let mut info = sys::store_object_info {
            struct_size: size_of::<sys::store_object_info>() as u32,
            ..Default::default()
        };
        check(unsafe { sys::store_info(self.as_raw(), &id.0, &mut info) })?;
        Ok(ObjectInfo::from(&info))
    }

    /// Every object in the table (CREATED ones included), as they are when the call starts:
    /// an object that exists throughout the call is listed exactly once.
    pub fn list(&self) -> Result<Vec<ObjectInfo>> {
        let mut out: *mut sys::store_object_info = ptr::null_mut();
        let mut count: usize = 0;
        check(unsafe {
            sys::store_list(
                self.as_raw(),
                &mut out,
                size_of::<sys::store_object_info>(),
                &mut count,
            )
        })?;
        Ok(unsafe { take_array::<_, ObjectInfo>(out, count) })
    }

    /// One page of the object table, sorted and filtered by the server (`store_list_page`).
    /// The page's `next_offset` says where the next one starts; `list_pages` follows them.
    pub fn list_page(&self, opts: &ListOptions) -> Result<ListPage> {
        let prefix = CString::new(opts.id_prefix.as_str())
            .map_err(|_| Error::new(ErrorCode::InvalidArgument, "id_prefix contains a NUL byte"))?;
        let raw_opts = sys::store_list_options {
            version: sys::STORE_LIST_OPTIONS_VERSION,
            sort: opts.sort.raw(),
            descending: i32::from(opts.descending),
            limit: opts.limit,
            offset: opts.offset,
            id_prefix: if opts.id_prefix.is_empty() { ptr::null() } else { prefix.as_ptr() },
        };
        let mut out: *mut sys::store_object_info = ptr::null_mut();
        let mut count: usize = 0;
        let mut total: u64 = 0;
        check(unsafe {
            sys::store_list_page(
                self.as_raw(),
                &raw_opts,
                &mut out,
                size_of::<sys::store_object_info>(),
                &mut count,
                &mut total,
            )
        })?;
        let objects = unsafe { take_array::<_, ObjectInfo>(out, count) };
        let end = opts.offset.saturating_add(objects.len() as u64);
        let next_offset =
            if objects.is_empty() || objects.len() < opts.limit as usize || end >= total {
                None
            } else {
                Some(end)
            };
        Ok(ListPage { objects, total, next_offset })
    }

    /// The pages of the object table from `opts` on (its `offset`, `limit` objects a page), one
    /// request each, until the last. Each page is taken as the table is when it is asked for:
    /// an object created or deleted between two pages moves the rest by one, so one may be
    /// missed or seen twice. `list` gives a consistent snapshot of the whole table.
    pub fn list_pages(&self, opts: ListOptions) -> ListPages<'_> {
        ListPages { client: self, opts, total: None, done: false }
    }

    /// The connected clients, this one included (`ClientInfo::is_self`).
    pub fn list_clients(&self) -> Result<Vec<ClientInfo>> {
        let mut out: *mut sys::store_client_info = ptr::null_mut();
        let mut count: usize = 0;
        check(unsafe {
            sys::store_list_clients(
                self.as_raw(),
                &mut out,
                size_of::<sys::store_client_info>(),
                &mut count,
            )
        })?;
        Ok(unsafe { take_array::<_, ClientInfo>(out, count) })
    }

    /// The store's spill files; none on a store without a spill directory.
    pub fn list_spill_files(&self) -> Result<Vec<SpillFileInfo>> {
        let mut out: *mut sys::store_spill_file_info = ptr::null_mut();
        let mut count: usize = 0;
        check(unsafe {
            sys::store_list_spill_files(
                self.as_raw(),
                &mut out,
                size_of::<sys::store_spill_file_info>(),
                &mut count,
            )
        })?;
        Ok(unsafe { take_array::<_, SpillFileInfo>(out, count) })
    }

    /// The URL of the object's copy on disk, `file://PATH?offset=O&size=S` (the size includes
    /// the 16-byte record header). `NotFound` if the object is absent or has no copy on disk.
    pub fn spill_url(&self, id: &ObjectId) -> Result<String> {
        // 8 KiB holds a URL of any path up to PATH_MAX; the library says InvalidArgument when
        // the buffer is too small (the only bad argument this call can pass), then once more.
        let mut len: usize = 8 << 10;
        loop {
            let mut buf = vec![0 as c_char; len];
            let rc = unsafe { sys::store_spill_url(self.as_raw(), &id.0, buf.as_mut_ptr(), len) };
            if rc == sys::STORE_EINVAL && len < (64 << 10) {
                len = 64 << 10;
                continue;
            }
            check(rc)?;
            return Ok(unsafe { cstr_to_string(buf.as_ptr()) });
        }
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
        check(unsafe { sys::store_prefetch(self.as_raw(), raw_ids(ids), ids.len()) })
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
        let mut s = sys::store_stats {
            struct_size: size_of::<sys::store_stats>() as u32,
            ..Default::default()
        };
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

    #[test]
    fn list_options_defaults_are_the_c_ones() {
        let c = sys::STORE_LIST_OPTIONS_INIT;
        let o = ListOptions::default();
        assert_eq!(o.sort.raw(), c.sort);
        assert_eq!(i32::from(o.descending), c.descending);
        assert_eq!((o.limit, o.offset, o.id_prefix.as_str()), (c.limit, c.offset, ""));
        let keys = [
            (SortKey::Id, sys::STORE_SORT_ID),
            (SortKey::Size, sys::STORE_SORT_SIZE),
            (SortKey::Created, sys::STORE_SORT_CREATED),
            (SortKey::LastAccess, sys::STORE_SORT_LAST_ACCESS),
            (SortKey::Importance, sys::STORE_SORT_IMPORTANCE),
            (SortKey::State, sys::STORE_SORT_STATE),
        ];
        for (key, raw) in keys {
            assert_eq!(key.raw(), raw);
        }
    }

    #[test]
    fn ids_pass_as_they_are() {
        assert_eq!(std::mem::size_of::<ObjectId>(), sys::STORE_OBJECT_ID_SIZE);
        let ids = [ObjectId::from_bytes([1; 20]), ObjectId::from_bytes([2; 20])];
        let raw = unsafe { std::slice::from_raw_parts(raw_ids(&ids), 2) };
        assert_eq!(raw[1].bytes, [2; 20]);
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
