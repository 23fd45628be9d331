/*
 * storeclient.h - the C interface of libstoreclient, the client of a `store` server.
 *
 * A `store` server owns a region of shared memory. Clients create immutable objects in it,
 * write them in place, seal them, and read them from other processes without copies.
 *
 * Conventions
 * -----------
 * Errors:    every function that can fail returns an int: STORE_OK (0) or a negative STORE_E*
 *            code. store_errstr() names a code; store_last_error_message() gives the details of
 *            the last failure on the calling thread. The library never prints, aborts or throws.
 * Ownership: "Caller owns *out; free with X" means the caller must release the result with X.
 *            "Borrowed" means the pointer stays valid only as long as the object it came from.
 * Threading: a store_client may be used from several threads at once; one thread's blocking
 *            call (a get waiting for a seal) does not stall the others. A store_writer or
 *            store_reader must be used by one thread at a time. Each connection has up to
 *            two threads of its own, with all signals blocked: one sends queued releases (see
 *            store_reader_close()), and with STORE_CLIENT_POPULATE=all in the environment one
 *            maps all of the shared memory after connecting (then ends); both end with the
 *            connection. By default the library maps only what the process creates or opens,
 *            so its resident memory is what it uses.
 * fork():    a client belongs to the process that connected it. In a child forked after it was
 *            connected, the client and its readers and writers are inert: every call on them
 *            that can fail gives STORE_EMISUSE (the message says the client belongs to the
 *            parent process) and sends nothing; the pointer getters (store_reader_data(),
 *            store_reader_metadata(), store_writer_data()) give NULL; sizes, positions and ids
 *            are still given. Closing, sealing or aborting what was inherited and
 *            store_client_free() only free the child's copy (its descriptor, mapping and
 *            memory): the parent's session, readers and objects are untouched, whatever the
 *            parent's threads were doing at the fork. The child connects a client of its own.
 * NULL:      destructors accept NULL. Any other NULL where a pointer is required gives
 *            STORE_EINVAL.
 * Lost connection: once the server is gone, every call that needs it returns STORE_ECONN;
 *            nothing hangs and no SIGPIPE is raised. A connection also ends when a reply is
 *            malformed or cannot be kept (out of memory: its bytes are lost); the calls
 *            waiting then get STORE_EPROTO or STORE_ENOMEM, the calls after STORE_ECONN.
 * Out of memory: a call that cannot allocate returns STORE_ENOMEM; the client stays usable
 *            unless received bytes were lost (above).
 *
 * Object lifecycle
 * ----------------
 *  1. store_create() reserves an object of a fixed data size (plus optional metadata) in shared
 *     memory and returns a store_writer. The object is CREATED: only its creator can write or
 *     seal it, nobody can open it yet (store_info and store_list show it, in state CREATED).
 *     A small host object (up to STORE_STAGED_MAX bytes of data) is staged instead: it is
 *     written in this process and the store first hears of it at the seal, which creates,
 *     writes and seals it in one round trip (so store_info does not show it while it is written,
 *     and a conflicting id is reported by store_writer_seal()).
 *  2. The creator fills it with store_writer_write()/store_writer_seek(), or directly through
 *     store_writer_data().
 *  3. store_writer_seal() makes it SEALED: immutable and visible to every client. Or
 *     store_writer_abort() throws it away and frees the id.
 *     store_put() does steps 1-3 in one call.
 *  4. Any client opens it with store_open_reader() (waiting for the seal if asked to), reads it
 *     with store_reader_read() or store_reader_data(), and store_reader_close()s it.
 *  5. store_delete() removes it from view at once (unlink semantics); its memory returns to the
 *     store when the last reader closes.
 *  A client that disconnects or dies releases everything it held: its unsealed objects are
 *  aborted, its readers and pins released.
 *
 * Memory protection
 * -----------------
 *  Every client maps the store's memory read-only for its readers: a write through a pointer
 *  from store_reader_data() (or anywhere in the store's memory through it) faults (SIGSEGV) in
 *  the writing process and changes no stored byte. Writers of objects larger than a staged one
 *  write through a second, writable mapping: by default their pointer can still reach other
 *  objects. With the write window (STORE_CLIENT_WRITE_WINDOW=1, see store_client_connect())
 *  that mapping is writable only over the pages of the objects the process is writing, from
 *  store_create() to their seal or abort: any other write through it faults the same way.
 *  Either way the process holds a writable descriptor of the memory, so this guards against
 *  mistakes, not against a hostile process of the same user. A read-only client
 *  (store_connect_options.read_only) gets a descriptor that cannot be mapped writable at all.
 */
#ifndef STORECLIENT_H
#define STORECLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define STORE_VERSION_MAJOR 0
#define STORE_VERSION_MINOR 2
#define STORE_VERSION_PATCH 0
#define STORE_VERSION_STRING "0.2.0"

#if defined(__GNUC__)
#define STORE_API __attribute__((visibility("default")))
#else
#define STORE_API
#endif

/* ---------------------------------------------------------------------------------------------
 * Errors. One table: the enum below, store_errstr() and the server's statuses all come from it.
 * ------------------------------------------------------------------------------------------- */
#define STORE_ERRNO_MAP(XX)                                                             \
    XX(EINVAL, -1, "invalid argument")                                                  \
    XX(ENOTFOUND, -2, "object not found")                                               \
    XX(EEXISTS, -3, "object already exists")                                            \
    XX(ENOSPACE, -4, "store is full")                                                   \
    XX(ENODISK, -5, "no spill disk space")                                              \
    XX(ETIMEDOUT, -6, "timed out")                                                      \
    XX(ESEALED, -7, "object is already sealed")                                         \
    XX(ENOTSEALED, -8, "object is not sealed")                                          \
    XX(EMISUSE, -9, "library misuse")                                                   \
    XX(ECONN, -10, "cannot connect or connection lost")                                 \
    XX(EPROTO, -11, "protocol error")                                                   \
    XX(ENOTSUP, -12, "not supported")                                                   \
    XX(ENOMEM, -13, "out of memory")                                                    \
    XX(ECORRUPT, -14, "data corrupt")                                                   \
    XX(EPERM, -15, "permission denied")                                                 \
    XX(ELIMIT, -16, "over a limit of the store")

typedef enum store_status {
    STORE_OK = 0,
#define STORE_XX_ENUM_(name, code, text) STORE_##name = code,
    STORE_ERRNO_MAP(STORE_XX_ENUM_)
#undef STORE_XX_ENUM_
    STORE_ERRNO_MIN_ = -16
} store_status;

/* A short constant description of a code ("store is full"). Never NULL. */
STORE_API const char *store_errstr(int code);

/* Details of the last failure on this thread (e.g. "object 3fa2... is 100 bytes but 200 were
 * written"). Borrowed; valid until the next failing call on this thread. Never NULL. */
STORE_API const char *store_last_error_message(void);

/* "0.2.0". Static; never NULL. */
STORE_API const char *store_version_string(void);

/* ---------------------------------------------------------------------------------------------
 * Types
 * ------------------------------------------------------------------------------------------- */
typedef struct store_client store_client; /* a connection to a store server */
typedef struct store_writer store_writer; /* one object being created */
typedef struct store_reader store_reader; /* one sealed object held open for reading */

#define STORE_OBJECT_ID_SIZE 20
typedef struct store_object_id {
    uint8_t bytes[STORE_OBJECT_ID_SIZE];
} store_object_id;

/* Object states, as reported by store_info() and store_list(). */
#define STORE_STATE_CREATED 1   /* being written by its creator, not visible to others */
#define STORE_STATE_SEALED 2    /* immutable, in memory, readable */
#define STORE_STATE_SPILLING 3  /* being written to disk */
#define STORE_STATE_SPILLED 4   /* only on disk; a reader restores it */
#define STORE_STATE_RESTORING 5 /* being read back into memory */

/* Storage levels (bit set): where an object's bytes are now. */
#define STORE_LEVEL_GPU 1
#define STORE_LEVEL_MEMORY 2
#define STORE_LEVEL_DISK 4
#define STORE_LEVEL_REMOTE 8

/* Output structs. Every struct the library fills in for the caller (store_object_info,
 * store_stats, store_client_info, store_gpu_device_stats, store_spill_file_info) opens with
 * `uint32_t struct_size`: the size of the struct the caller was compiled with. New fields are only
 * ever added at the end, so a program built against an older header keeps working with a newer
 * library, and the other way round:
 *  - For a struct the caller passes in (store_info(), store_stats_get()), the caller sets
 *    struct_size to sizeof the struct, most simply with its *_INIT macro:
 *        store_stats st = STORE_STATS_INIT;
 *    The library writes at most struct_size bytes: the fields it knows, up to struct_size, and
 *    zeros in the rest of them (fields of a newer header than the library's).
 *  - For an array the library allocates (store_list(), store_list_page(), store_list_clients(),
 *    store_gpu_stats(), store_list_spill_files()), the caller passes elem_size, sizeof the
 *    element it was compiled with: the library lays the elements out elem_size bytes apart, sets
 *    each element's struct_size to elem_size, and fills each as above. elem_size must be a
 *    multiple of 8.
 * A struct_size or elem_size of 0, or below the struct's size in the first header that had the
 * field (storeclient.h of libstoreclient.so.2), is refused with STORE_EINVAL; nothing is
 * written then. */

typedef struct store_object_info {
    uint32_t struct_size;    /* sizeof(store_object_info) of the caller; see "Output structs" */
    store_object_id id;
    uint64_t data_size;
    uint64_t metadata_size;
    uint32_t state;          /* STORE_STATE_* */
    uint32_t level;          /* STORE_LEVEL_* bits */
    int32_t device;          /* -1 = host memory */
    int32_t importance;      /* higher is kept in memory longer */
    uint32_t pin_count;      /* pins held by all clients */
    uint32_t reader_count;   /* readers open in all clients */
    int64_t create_time_ns;  /* CLOCK_REALTIME, nanoseconds */
    int64_t last_access_ns;  /* CLOCK_REALTIME of the last create, seal, get or reader close */
    int32_t creator_pid;     /* pid of the creating client, 0 if unknown */
    uint32_t lease_count;    /* leases held on it by all clients (store_lease()) */
} store_object_info;
#if defined(__cplusplus)
/* C++ warns (-Wmissing-field-initializers) for an initializer that names one field only. */
#define STORE_OBJECT_INFO_INIT                                        \
    ([] {                                                             \
        store_object_info init_{};                                    \
        init_.struct_size = static_cast<uint32_t>(sizeof init_);      \
        return init_;                                                 \
    }())
#else
#define STORE_OBJECT_INFO_INIT {.struct_size = sizeof(store_object_info)}
#endif

typedef struct store_stats {
    uint32_t struct_size;         /* sizeof(store_stats) of the caller; see "Output structs" */
    uint32_t pad_;                /* keeps the 64-bit fields 8-byte aligned; the library writes 0 */
    uint64_t capacity_bytes;      /* size of the shared memory region */
    uint64_t used_bytes;          /* bytes allocated to objects: from 16 KiB their size rounded up
                                     to a page, below that a small size class */
    uint64_t object_count;        /* objects in the table, all states */
    uint64_t client_count;        /* connected clients, this one included */
    uint64_t created_count;       /* objects being written (CREATED) */
    uint64_t sealed_count;        /* sealed objects in memory */
    uint64_t created_bytes;       /* bytes held by CREATED objects */
    uint64_t sealed_bytes;        /* bytes held by sealed objects */
    uint64_t pinned_count;        /* objects with at least one pin */
    uint64_t pinned_bytes;
    uint64_t open_count;          /* objects with at least one open reader */
    uint64_t open_bytes;
    uint64_t deleted_pending_count; /* deleted objects whose memory waits for readers to close */
    uint64_t deleted_pending_bytes;
    uint64_t waiting_gets;        /* get requests waiting for a seal */
    uint64_t waiting_creates;     /* create requests waiting for space */
    uint64_t total_creates;       /* counters since start */
    uint64_t total_seals;
    uint64_t total_gets;          /* objects handed out by get */
    uint64_t total_releases;
    uint64_t total_deletes;
    uint64_t total_aborts;
    uint64_t total_full;          /* creates refused for lack of space */
    uint64_t uptime_ns;
    int32_t server_pid;
    uint32_t reserved_;
    /* Added in 0.1: observability. */
    uint64_t largest_free_bytes;  /* the largest object that would fit now (fragmentation) */
    uint64_t resident_bytes;      /* memory the region really holds */
    uint64_t total_contains;
    uint64_t total_infos;
    uint64_t total_lists;
    uint64_t total_pins;
    uint64_t total_unpins;
    uint64_t total_requests;      /* every request from every client */
    uint64_t total_bad_requests;  /* requests refused as protocol errors */
    uint64_t spilling_count;      /* objects by spill state (0 until spilling is enabled) */
    uint64_t spilling_bytes;
    uint64_t spilled_count;
    uint64_t spilled_bytes;
    uint64_t restoring_count;
    uint64_t restoring_bytes;
    uint64_t evictable_bytes;     /* sealed bytes in memory that nobody reads or pins (nor,
                                     with --when-full drop, leases): what may go now */
    uint64_t spill_enabled;       /* 1 when the server has spill directories */
    uint64_t spill_files;         /* spill files on disk */
    uint64_t spill_disk_bytes;    /* their bytes */
    uint64_t spill_dead_bytes;    /* of which records of deleted objects */
    uint64_t total_spilled_objects;
    uint64_t total_spilled_bytes;
    uint64_t total_spill_ns;      /* time spent writing spill files, summed over the files
                                     (they may be written two at a time) */
    uint64_t total_restored_objects;
    uint64_t total_restored_bytes;
    uint64_t total_restore_ns;    /* likewise, summed over restores */
    uint64_t total_spill_failures;   /* spill files that could not be written (no object lost) */
    uint64_t total_restore_failures; /* restores that failed (I/O error or corrupt data) */
    /* Added in 0.2: limits. Each is a flag of the store (see `store --help`); a request over a
     * limit gets STORE_ELIMIT, a client over a limit on what it makes the store hold is
     * disconnected. The totals each limit watches, now: */
    uint64_t waiting_bytes;        /* held by waiting gets and creates (copied metadata and
                                      inline data, id lists) */
    uint64_t backlog_bytes;        /* replies queued to clients that have not read them */
    uint64_t partial_bytes;        /* input buffers holding requests not yet complete */
    uint64_t pending_fds;          /* descriptors in replies not yet written to their client */
    /* The limits in force: */
    uint64_t limit_client_waiting; /* --max-client-waiting: waiting requests per client */
    uint64_t limit_waiting_bytes;  /* --max-waiting-bytes: in all (a client may hold a quarter) */
    uint64_t limit_client_backlog; /* --max-client-backlog */
    uint64_t limit_backlog;        /* --max-backlog: in all */
    uint64_t limit_partial_bytes;  /* --max-partial-bytes: in all */
    uint64_t limit_clients;        /* --max-clients (by default from the descriptor limit) */
    uint64_t limit_client_gpu_fds; /* --max-client-gpu-fds */
    uint64_t fd_limit;             /* the descriptors the server may open (RLIMIT_NOFILE) */
    /* How often each limit was hit since start: */
    uint64_t refused_client_waiting; /* requests refused: the client had its most waiting */
    uint64_t refused_waiting_bytes;  /* requests refused: over --max-waiting-bytes */
    uint64_t closed_client_backlog;  /* clients disconnected over --max-client-backlog */
    uint64_t closed_backlog;         /* clients disconnected over --max-backlog (the largest) */
    uint64_t closed_partial;         /* clients disconnected over --max-partial-bytes */
    uint64_t refused_clients;        /* connections refused over --max-clients */
    uint64_t accept_failures;        /* connections lost because accept failed (descriptors) */
    uint64_t refused_gpu_fds;        /* GPU chunk requests refused over --max-client-gpu-fds */
    /* Added in 0.2: which store this is. Two clients reach the same store (the same memory)
     * exactly when they read the same instance_id: it is drawn at random when the server starts,
     * never 0, and a restarted server draws a new one. */
    uint64_t instance_id;
    int64_t start_time_ns;           /* CLOCK_REALTIME when the server started */
    /* Added in 0.2: a store started with `--when-full drop` is a cache. Without a spill
     * directory (the two do not go together), a create that does not fit first deletes the
     * least valuable objects that nobody uses until it fits: sealed objects with no open reader,
     * no pin and no lease, lowest importance first, then least recently used (the order the
     * spiller takes them in). Each is deleted as by store_delete(): it is gone from view at once
     * (nobody reads it, so its memory is free at once) and its id may be created again. Objects
     * being written, open, pinned or leased are never dropped, nor GPU objects (drops make room
     * in host memory only). When dropping all the others would not free enough bytes, nothing
     * is dropped and the create waits or fails as in the default mode (`--when-full refuse`;
     * its message then says what holds the memory, leases included). Drops are not counted in
     * total_deletes or total_full. */
    uint64_t when_full_drop;         /* 1 when the store drops objects to make room, else 0 */
    uint64_t total_dropped_objects;  /* objects dropped since start */
    uint64_t total_dropped_bytes;    /* their bytes (data and metadata) */
    /* Added in 0.2: compaction of spill files (--spill-compact): a spill file whose records of
     * deleted objects pass that fraction of its size is rewritten with its live records only,
     * and the old file removed, giving its dead bytes back to the disk. Since start: */
    uint64_t total_compactions;          /* spill files rewritten without their dead records */
    uint64_t total_compact_bytes_copied; /* bytes written into the new files */
    uint64_t total_compact_bytes_freed;  /* disk bytes given back: old size minus new size,
                                            summed */
    uint64_t total_compact_failures;     /* compactions that failed; nothing is lost: the old
                                            file stays as it was (not tried for a minute) */
    /* Added in 0.2: --max-objects. Whatever its size, an object costs the server about 200
     * bytes of its own memory, in memory or spilled; the store holds at most this many (every
     * state, deleted ones still read included). A create over it gets STORE_ELIMIT, or with
     * `--when-full drop` drops the least valuable unused objects first. */
    uint64_t limit_objects;              /* --max-objects (by default one object per 2 KiB of
                                            the machine's memory, at least 2^20) */
    uint64_t refused_objects;            /* creates refused over it since start */
    /* Added in 0.2: deletes of objects with a copy on disk whose record (in a spill directory's
     * DELETED log) is not durable yet, because its write failed (the delete answered
     * STORE_ENODISK). A store restarted with --recover after a crash now could serve them
     * again. The store tries again each second; 0 once a write succeeds. */
    uint64_t spill_undurable_deletes;
} store_stats;
#if defined(__cplusplus)
#define STORE_STATS_INIT                                              \
    ([] {                                                             \
        store_stats init_{};                                          \
        init_.struct_size = static_cast<uint32_t>(sizeof init_);      \
        return init_;                                                 \
    }())
#else
#define STORE_STATS_INIT {.struct_size = sizeof(store_stats)}
#endif

/* One connected client, as store_list_clients() reports it. */
typedef struct store_client_info {
    uint32_t struct_size;      /* the elem_size the caller passed; see "Output structs" */
    uint32_t pad_;             /* keeps the 64-bit fields 8-byte aligned; the library writes 0 */
    uint64_t client_id;        /* unique for the server's lifetime */
    char name[64];             /* the name given at connect, NUL-terminated, maybe cut short */
    int32_t pid;               /* from the socket's peer credentials */
    uint32_t uid;
    uint64_t objects_created;  /* creates made since it connected */
    uint64_t creating_count;   /* its objects still being written */
    uint64_t readers_held;
    uint64_t pins_held;        /* pins of objects still there (a deleted one's pins go) */
    uint64_t bytes_held;       /* bytes of the objects it writes, reads or pins (each once), in
                                  the store's memory (a pinned one still on disk: what it
                                  will take there) */
    int64_t connect_time_ns;   /* CLOCK_REALTIME */
    uint64_t requests;         /* requests it sent */
    int32_t is_self;           /* 1 for the client that asked */
    uint32_t reserved_;
} store_client_info;

/* Sort keys for store_list_page(). */
#define STORE_SORT_ID 0
#define STORE_SORT_SIZE 1
#define STORE_SORT_CREATED 2
#define STORE_SORT_LAST_ACCESS 3
#define STORE_SORT_IMPORTANCE 4
#define STORE_SORT_STATE 5

#define STORE_LIST_OPTIONS_VERSION 1
typedef struct store_list_options {
    uint32_t version;      /* STORE_LIST_OPTIONS_VERSION */
    uint32_t sort;         /* STORE_SORT_*; ties are broken by id */
    int32_t descending;    /* non-zero: largest first */
    uint32_t limit;        /* objects per page, at most STORE_MAX_PAGE_OBJECTS */
    uint64_t offset;       /* objects to skip in that order */
    const char *id_prefix; /* hex digits the ids must start with; NULL or "" = all */
} store_list_options;
#define STORE_LIST_OPTIONS_INIT {STORE_LIST_OPTIONS_VERSION, STORE_SORT_ID, 0, 100, 0, NULL}
#define STORE_MAX_PAGE_OBJECTS 100000

#define STORE_CONNECT_OPTIONS_VERSION 2
typedef struct store_connect_options {
    uint32_t version;        /* STORE_CONNECT_OPTIONS_VERSION (1: the fields up to client_name) */
    const char *client_name; /* shown in the server's client list; NULL = the program name */
    /* Added in version 2. Non-zero: a read-only client. The store sends it a descriptor of its
     * memory that cannot be mapped writable at all, and refuses its changes (create, put,
     * delete, pin, unpin, lease, unlease, evict, set_importance) with STORE_EPERM; it reads, lists and watches
     * as any client. */
    int32_t read_only;
    uint32_t reserved_;
} store_connect_options;
#define STORE_CONNECT_OPTIONS_INIT {STORE_CONNECT_OPTIONS_VERSION, NULL, 0, 0}

#define STORE_CREATE_OPTIONS_VERSION 2
typedef struct store_create_options {
    uint32_t version;       /* STORE_CREATE_OPTIONS_VERSION (1: the fields up to timeout_ms) */
    const void *metadata;   /* copied into the object, after the data; may be NULL */
    uint64_t metadata_size; /* at most STORE_MAX_METADATA_SIZE */
    int32_t importance;     /* higher values are evicted later; default 0 */
    int32_t device;         /* -1 = host memory; >= 0 = that GPU, by the store's device number
                               (STORE_ENOTSUP unless the store serves GPU objects) */
    int64_t timeout_ms;     /* wait for space when full: 0 = fail at once, -1 = forever */
    /* Added in version 2. STORE_CREATE_* bits. */
    uint32_t flags;
    uint32_t reserved_;
} store_create_options;
#define STORE_CREATE_OPTIONS_INIT {STORE_CREATE_OPTIONS_VERSION, NULL, 0, 0, -1, 0, 0, 0}
/* The object is leased: its creator holds a lease on it from the create on, and it is deleted
 * when its last lease goes (see store_lease()), with no store_delete() needed. So an object a
 * client makes for itself and for the clients it hands it to goes when they are all done with
 * it or gone (a client that disconnects or dies drops its leases). Its holders are clients of
 * one store process, so it does not outlive that process: a store started with --recover after
 * a crash does not bring it back from the spill directory. */
#define STORE_CREATE_LEASED 1u

#define STORE_MAX_METADATA_SIZE (1u << 20)  /* 1 MiB */
/* Host objects of up to this many bytes of data are staged (see the object lifecycle). */
#define STORE_STAGED_MAX (64u << 10)

/* ---------------------------------------------------------------------------------------------
 * Connecting
 * ------------------------------------------------------------------------------------------- */

/* Connects to the server listening on socket_path and maps its shared memory. socket_path NULL
 * is the default: $STORE_SOCKET if set and not empty (the store server, store-top, store-bench
 * and `store info` take the same default), else $XDG_RUNTIME_DIR/store.sock if XDG_RUNTIME_DIR
 * is set, else /tmp/store-$UID.sock.
 * opts may be NULL for defaults. Caller owns *out; free with store_client_free(). On failure
 * *out is NULL and the message says what went wrong:
 *  STORE_EINVAL  out is NULL, opts->version is unknown, or the path is empty or too long;
 *  STORE_ECONN   nothing listens there (the directory does not exist, there is no socket, or a
 *                socket left by a store that is gone), the path is not a socket, or the
 *                connection was lost during the handshake;
 *  STORE_EPERM   this user may not enter the socket's directory or write to the socket; the
 *                server runs as another user than this one and not as root (another user may
 *                have taken the path: nothing is sent to it); or the server refuses this user;
 *  STORE_EPROTO  the server speaks another protocol version, or sent a malformed reply;
 *  STORE_ENOMEM  the server's shared memory cannot be mapped, or out of memory;
 *  STORE_ELIMIT  the store serves as many clients as it may (its --max-clients, shown by
 *                `store info`); the message says so. A later connect may succeed;
 *  STORE_ENOTSUP the write window was asked for (below) where it cannot be kept to one
 *                object's pages: the store's memory is on huge pages (hugetlbfs), or this
 *                system's pages are larger than 4 KiB.
 * STORE_CLIENT_WRITE_WINDOW=1 in the environment at connect gives a client that is not
 * read-only the strict write window: its writable mapping of the store's memory is read-only
 * but for the pages of the objects it is writing. store_create() of an object larger than
 * STORE_STAGED_MAX makes that object's pages (its data, rounded out to whole 4 KiB pages, which
 * hold no other object) writable; store_writer_seal() and store_writer_abort() make them
 * read-only again before the store hears of it, and store_client_free() or a lost connection
 * closes every window at once. A write anywhere else, or through a writer's pointer after its
 * seal or abort, raises SIGSEGV in the writing process and changes no stored byte. Staged
 * writers write private memory and need no window; GPU objects are not covered. It costs two
 * mprotect() calls per object, whose time grows with its pages: see the README's trust model
 * for measured figures. Any other value, or none, leaves it off. */
STORE_API int store_client_connect(store_client **out, const char *socket_path,
                                   const store_connect_options *opts);

/* Disconnects and frees the client. NULL-safe. Writers not yet sealed are aborted by the server.
 * Readers and writers of this client stay valid to close, but every other call on them returns
 * STORE_ECONN. In a child forked after the client was connected it frees the child's copy only
 * (see fork() above): nothing is sent, no lock of the parent's threads is waited for. */
STORE_API void store_client_free(store_client *client);

/* ---------------------------------------------------------------------------------------------
 * Writing
 * ------------------------------------------------------------------------------------------- */

/* Creates an object of data_size bytes (> 0) under id. opts may be NULL (no metadata,
 * importance 0, host memory, fail at once when full). Caller owns *out; it must end with
 * store_writer_seal() or store_writer_abort().
 * When it does not fit, it waits (opts->timeout_ms; waiting creates are served in arrival
 * order) while the store spills other objects or room is freed by deletes, unpins and closed
 * readers, with or without a spill directory. A store started with `--when-full drop` first
 * deletes objects that nobody uses to make room (see store_stats.when_full_drop).
 * Returns STORE_OK; STORE_EEXISTS if id exists (in any state); STORE_ENOSPACE if it does not
 * fit and timeout_ms is 0 (the store starts spilling, so a retry may fit); STORE_ETIMEDOUT if it
 * still does not fit after timeout_ms (the message says what holds the memory: readers, pins,
 * objects being written); STORE_ENODISK if it needs a spill and the spill directories cannot
 * take one (full, over --disk-threshold, or failing): it fails then rather than wait on the
 * disk; STORE_EINVAL for a zero size, a size that can never fit, or bad options;
 * STORE_ENOTSUP for a GPU object on a store without GPU objects; STORE_ELIMIT if it would wait
 * and this client, or all of them, already have as many creates and gets waiting as the store
 * allows (its --max-client-waiting and --max-waiting-bytes; the message says which), or at once
 * whatever the timeout if the store holds as many objects as its --max-objects allows
 * (store_stats.limit_objects);
 * STORE_ECONN if the connection is lost; STORE_ENOMEM if this process is out of memory.
 * GPU objects (opts->device >= 0) live in device memory the store owns: write them through
 * store_writer_device_ptr() (or store_writer_write(), which copies from the host); readers in
 * other processes get the same device memory through store_reader_device_ptr(), with no copy
 * through the host. Their metadata stays in host memory. They are never spilled. */
STORE_API int store_create(store_client *client, store_writer **out, const store_object_id *id,
                           uint64_t data_size, const store_create_options *opts);

/* Copies size bytes at the current position and advances it. STORE_EINVAL if that would pass
 * the end of the object (nothing is written then). */
STORE_API int store_writer_write(store_writer *w, const void *data, size_t size);

/* Moves the position: whence is SEEK_SET, SEEK_CUR or SEEK_END (0, 1, 2). The new position must
 * lie within [0, size]. *pos (may be NULL) receives it. */
STORE_API int store_writer_seek(store_writer *w, int64_t offset, int whence, uint64_t *pos);

/* The current position, or 0 for NULL. */
STORE_API uint64_t store_writer_tell(const store_writer *w);

/* The object's data size, or 0 for NULL. */
STORE_API uint64_t store_writer_size(const store_writer *w);

/* The object's data, writable: in shared memory, or for a staged (small) object a buffer of
 * this process that the seal sends. Borrowed; valid until seal or abort.
 * NULL for NULL, for a device object, once the client is gone, or in a forked child. */
STORE_API void *store_writer_data(store_writer *w);

/* A device object's data: *dptr (a CUDA device pointer, valid in this process on the CUDA
 * device *device, which may be NULL) for kernels and cudaMemcpy. Borrowed; valid until seal or
 * abort. STORE_EINVAL for a host object. */
STORE_API int store_writer_device_ptr(store_writer *w, void **dptr, int *device);
/* Seals the object (immutable, visible to all) and frees the writer, whatever the result.
 * STORE_ECONN if the connection is lost (the server then aborts the object); STORE_EMISUSE in a
 * forked child (the writer is the parent's: only the child's handle is freed). For a staged
 * (small) object the seal is also its create, so it may return what store_create() returns
 * (STORE_EEXISTS, STORE_ENOSPACE, STORE_ETIMEDOUT, STORE_ENODISK, STORE_EPERM, STORE_ELIMIT),
 * after waiting for space as opts->timeout_ms of the create said. */
STORE_API int store_writer_seal(store_writer *w);

/* Throws the object away, frees its memory and the writer (a staged object: nothing is sent).
 * NULL-safe (returns STORE_OK).
 * STORE_EMISUSE in a forked child: only the child's handle is freed, the object stays the
 * parent's. */
STORE_API int store_writer_abort(store_writer *w);

/* Creates, copies data_size bytes and seals in one call (one round trip for small objects). */
STORE_API int store_put(store_client *client, const store_object_id *id, const void *data,
                        uint64_t data_size, const store_create_options *opts);

/* Puts n objects: ids[i] gets sizes[i] bytes from datas[i], all with the same opts. Small objects
 * travel many to a round trip. An entry with NULL data or a zero size fails the call with
 * STORE_EINVAL before anything is put. Otherwise every object is tried: returns STORE_OK if all
 * were put, else the code of the first that failed (store_last_error_message() tells which);
 * *done (may be NULL) receives how many were put in all. */
STORE_API int store_put_many(store_client *client, const store_object_id *ids,
                             const void *const *datas, const uint64_t *sizes, size_t n,
                             const store_create_options *opts, size_t *done);

/* ---------------------------------------------------------------------------------------------
 * Reading
 * ------------------------------------------------------------------------------------------- */

/* Opens a sealed object for reading. timeout_ms: 0 = do not wait (STORE_ENOTFOUND if it is not
 * sealed now), > 0 = wait that long for it to be created and sealed (then STORE_ETIMEDOUT),
 * -1 = wait forever. An object on disk (spilled) is read back into memory first, whatever the
 * timeout; when no memory can be freed for it, the open waits for room until the timeout.
 * Caller owns *out; free with store_reader_close().
 * Returns STORE_OK; STORE_ENOTFOUND; STORE_ETIMEDOUT; STORE_ENOSPACE if the object is on disk
 * and no memory could be freed to read it back into (at once with timeout 0, else once the
 * timeout passed); STORE_ENODISK if making that room needs a spill the spill directories cannot
 * take; STORE_ECORRUPT if its copy on disk fails its checksum or cannot be read (never wrong
 * bytes); STORE_EMISUSE if the object already has as many readers as a count holds (2^32-1);
 * STORE_ELIMIT if it would wait and the store holds as many waiting requests as it allows (as
 * for store_create()), or if it is on disk and the store is out of file descriptors to read it
 * back now; STORE_EINVAL for bad arguments; STORE_ECONN if the connection is lost; STORE_ENOMEM
 * (also when the store ran out of memory reading it back). After STORE_ELIMIT or STORE_ENOMEM
 * for an object on disk, it stays there: a later open tries again. */
STORE_API int store_open_reader(store_client *client, store_reader **out,
                                const store_object_id *id, int64_t timeout_ms);

/* Opens n objects in one request, waiting at most timeout_ms in all. out has n slots: each gets a
 * reader, or NULL where that object was not sealed in time (or, as for store_open_reader, could
 * not be read back from disk). Each id is taken once, when it is first there (sealed, or read
 * back from disk): from then on the reader holds that object, even if it is deleted and put
 * again while the call waits for the other ids. With timeout_ms -1 the call returns when every
 * id was taken. Returns STORE_OK even when some are missing; an error (STORE_EINVAL,
 * STORE_ELIMIT as for store_open_reader(), STORE_ECONN, STORE_ENOMEM) means no reader was
 * opened. The caller owns each non-NULL
 * reader. */
STORE_API int store_open_readers(store_client *client, store_reader **out,
                                 const store_object_id *ids, size_t n, int64_t timeout_ms);

/* Copies up to size bytes from the current position and advances it. *nread (may be NULL)
 * receives the count, 0 at the end. */
STORE_API int store_reader_read(store_reader *r, void *buf, size_t size, size_t *nread);

/* As store_writer_seek(). */
STORE_API int store_reader_seek(store_reader *r, int64_t offset, int whence, uint64_t *pos);
STORE_API uint64_t store_reader_tell(const store_reader *r);
STORE_API uint64_t store_reader_size(const store_reader *r);

/* The object's data, read-only: mapped so, a write through it faults (SIGSEGV) and changes
 * nothing. Borrowed; valid until store_reader_close(). NULL for NULL, for
 * a device object, once the client is gone, or in a forked child (the parent may close its
 * reader, and the object's memory be reused, at any time). */
STORE_API const void *store_reader_data(const store_reader *r);

/* As store_writer_device_ptr(), for reading. Borrowed; valid until store_reader_close(). */
STORE_API int store_reader_device_ptr(const store_reader *r, const void **dptr, int *device);
/* The store's device number of the object's data, or -1 for host memory (and for NULL). */
STORE_API int store_reader_device(const store_reader *r);
/* The object's metadata; *size (may be NULL) receives its length. Borrowed; valid until
 * store_reader_close(). NULL if there is none, once the client is gone, or in a forked child. */
STORE_API const void *store_reader_metadata(const store_reader *r, uint64_t *size);

/* The object's id. Borrowed; valid until store_reader_close(). */
STORE_API const store_object_id *store_reader_id(const store_reader *r);

/* Releases the object and frees the reader. NULL-safe. The release is one-way and queued: it
 * reaches the store in front of this client's next request (in the same send), once 256 are
 * queued, or within 2 ms of the first one queued, whichever comes first (up to 9 ms for the
 * last release before the client goes quiet after a burst of requests); so other clients may
 * see the reader open (its object's memory held, not evictable) for that long.
 * STORE_CLIENT_RELEASE_DELAY_US in the environment at connect sets half of the 2 ms, 1000 us
 * by default (0 sends each release at once). In a forked child it sends nothing: the reader the
 * store counts is the parent's. */
STORE_API void store_reader_close(store_reader *r);

/* Closes n readers (NULL entries are skipped) with one message per client instead of one per
 * reader: the cheap way to end a store_open_readers() batch. */
STORE_API void store_readers_close(store_reader **readers, size_t n);

/* ---------------------------------------------------------------------------------------------
 * Management
 * ------------------------------------------------------------------------------------------- */

/* *present = 1 if id is sealed and visible, else 0. */
STORE_API int store_contains(store_client *client, const store_object_id *id, int *present);

/* Deletes a sealed object: it disappears at once; its memory returns when its last reader closes.
 * A delete is durable when it returns STORE_OK: a store restarted with --recover after any crash
 * never serves the object again (for an object with a copy on disk, the store makes a record of
 * the delete durable on disk first; deletes arriving together share that write).
 * STORE_ENOTFOUND if absent, STORE_ENOTSEALED if it is still being written; STORE_ENODISK if it
 * is deleted but the record of the delete could not be written (the message says why): a store
 * restarted with --recover after a crash could then serve it again, until the store writes that
 * record (it tries again each second; store_stats' spill_undurable_deletes counts those
 * waiting). */
STORE_API int store_delete(store_client *client, const store_object_id *id);

/* Deletes n objects with one request per 65536. Every id is tried: returns STORE_OK if all were
 * deleted, else the code of the first that failed; *deleted (may be NULL) receives how many were
 * deleted. */
STORE_API int store_delete_many(store_client *client, const store_object_id *ids, size_t n,
                                size_t *deleted);

/* Fills *info for id (any state, the caller's unsealed objects included). The caller sets
 * info->struct_size first (STORE_OBJECT_INFO_INIT); STORE_EINVAL if it is too small (see
 * "Output structs"). */
STORE_API int store_info(store_client *client, const store_object_id *id,
                         store_object_info *info);

/* Lists every object in the table (CREATED ones included; deleted ones not), as they are when
 * the call starts: it pages through them (a request per 65536 objects), so an object that exists
 * throughout the call is listed exactly once and one created meanwhile is not listed; one
 * deleted meanwhile may be missing. They come in the order they entered the store (created, or
 * found by --recover). elem_size is sizeof(store_object_info) (see "Output structs"). Caller
 * owns *out (NULL when *count is 0); free with store_free(). STORE_ENOMEM if the array cannot
 * be allocated. */
STORE_API int store_list(store_client *client, store_object_info **out, size_t elem_size,
                         size_t *count);

/* Frees memory returned by the library (store_list). NULL-safe. */
STORE_API void store_free(void *p);

/* Pins a sealed object: it is never evicted while pinned (one already on disk is brought back
 * into memory, without waiting). Pins are counted per client and
 * dropped when the client disconnects. */
STORE_API int store_pin(store_client *client, const store_object_id *id);

/* Drops one pin of this client. STORE_EMISUSE if this client holds none on id. */
STORE_API int store_unpin(store_client *client, const store_object_id *id);

/* Lifetimes. A lease keeps an object from going away by itself: a client takes one on a sealed
 * object (leases are counted per client), and drops it with store_unlease() or by disconnecting
 * (dying included). An object created with STORE_CREATE_LEASED is deleted when its last lease
 * goes; other objects live until store_delete(), which also removes a leased object at once
 * (unlink semantics: readers keep theirs). A client that is handed an object another client
 * may let go of takes a lease on it first, then opens it. *lease_count (may be NULL) receives
 * the leases on the object now, over all clients.
 * store_lease: STORE_ENOTFOUND if absent, STORE_ENOTSEALED if still being written, STORE_EMISUSE
 * if it holds the most leases a count can hold. store_unlease: STORE_EMISUSE if this client
 * holds none on id, STORE_ENOTSEALED if id is still being written (a creator's lease lasts at
 * least until the seal; an abort deletes the object anyway). Both return STORE_EPERM for a
 * read-only client, and can also return
 * STORE_ECONN, STORE_EPROTO, STORE_ENOMEM and STORE_EMISUSE (client unusable, as for every call). */
STORE_API int store_lease(store_client *client, const store_object_id *id, uint32_t *lease_count);
STORE_API int store_unlease(store_client *client, const store_object_id *id,
                            uint32_t *lease_count);

/* Fills *stats with a snapshot of the server. Cheap: the server keeps its figures as it goes.
 * The caller sets stats->struct_size first (STORE_STATS_INIT); STORE_EINVAL if it is too small
 * (see "Output structs"). */
STORE_API int store_stats_get(store_client *client, store_stats *stats);

/* What backs a store's GPU objects, as store_gpu_stats() reports it. */
#define STORE_GPU_BACKEND_NONE 0          /* GPU objects are not enabled */
#define STORE_GPU_BACKEND_CUDA 1
#define STORE_GPU_BACKEND_MEMFD_STANDIN 2 /* host memory standing in for a GPU (tests only) */
/* One device serving GPU objects. */
typedef struct store_gpu_device_stats {
    uint32_t struct_size;        /* the elem_size the caller passed; see "Output structs" */
    uint32_t pad_;               /* keeps the 64-bit fields 8-byte aligned; the library writes 0 */
    int32_t device;              /* the store's device number */
    uint32_t chunks;             /* chunks of device memory made so far */
    uint64_t capacity_bytes;     /* device memory it may take (--gpu-memory, whole chunks) */
    uint64_t used_bytes;         /* bytes allocated to objects (256-byte multiples) */
    uint64_t object_count;
    uint64_t chunk_size;         /* also the largest GPU object */
    uint64_t largest_free_bytes; /* the largest free range in the chunks made so far */
} store_gpu_device_stats;
/* Per-device figures of the GPU objects. elem_size is sizeof(store_gpu_device_stats) (see
 * "Output structs"). Caller owns *out (NULL when *count is 0); free with store_free(). *backend
 * (may be NULL) receives STORE_GPU_BACKEND_*. */
STORE_API int store_gpu_stats(store_client *client, store_gpu_device_stats **out,
                              size_t elem_size, size_t *count, int *backend);
/* Sets an object's importance: objects of lower importance are spilled first. */
STORE_API int store_set_importance(store_client *client, const store_object_id *id,
                                   int32_t importance);

/* Starts bringing spilled objects back into memory, without waiting for them (objects already
 * in memory, or missing, are skipped). */
STORE_API int store_prefetch(store_client *client, const store_object_id *ids, size_t n);

/* Spills at least `bytes` of evictable objects to disk now, or all there are, and waits until
 * they are written. *spilled (may be NULL) receives the memory freed, in bytes. STORE_ENOTSUP if
 * the server has no spill directory; STORE_ENODISK if spilling fails; STORE_ELIMIT if this
 * client already has as many requests waiting as the store allows (its --max-client-waiting
 * and --max-waiting-bytes count evicts too). */
STORE_API int store_evict(store_client *client, uint64_t bytes, uint64_t *spilled);

/* Writes the URL of the object's copy on disk ("file://PATH?offset=O&size=S", size including
 * the 16-byte record header) into buf, NUL-terminated. STORE_ENOTFOUND if the object has no copy
 * on disk; STORE_EINVAL if len is too small. */
STORE_API int store_spill_url(store_client *client, const store_object_id *id, char *buf,
                              size_t len);

/* One spill file, as store_list_spill_files() reports it. */
typedef struct store_spill_file_info {
    uint32_t struct_size;    /* the elem_size the caller passed; see "Output structs" */
    uint32_t pad_;           /* keeps the 64-bit fields 8-byte aligned; the library writes 0 */
    char path[4096];         /* absolute, NUL-terminated */
    uint64_t size;           /* bytes on disk */
    uint64_t live_objects;   /* objects whose copy is in it */
    uint64_t live_bytes;
    uint64_t dead_bytes;     /* records of deleted objects; freed when the file is deleted */
    int64_t created_time_ns; /* CLOCK_REALTIME */
} store_spill_file_info;

/* Lists the spill files. elem_size is sizeof(store_spill_file_info) (see "Output structs").
 * Caller owns *out (NULL when *count is 0); free with store_free(). */
STORE_API int store_list_spill_files(store_client *client, store_spill_file_info **out,
                                     size_t elem_size, size_t *count);

/* Lists the connected clients. elem_size is sizeof(store_client_info) (see "Output structs").
 * Caller owns *out (NULL when *count is 0); free with store_free(). */
STORE_API int store_list_clients(store_client *client, store_client_info **out, size_t elem_size,
                                 size_t *count);

/* One page of the object table, filtered by id prefix and sorted by the server. opts may be NULL
 * (STORE_LIST_OPTIONS_INIT). elem_size is sizeof(store_object_info) (see "Output structs").
 * *total (may be NULL) receives how many objects match in all. Caller owns *out (NULL when
 * *count is 0); free with store_free(). Each page is a pass over the whole table; the store
 * makes one per turn of its loop, serving other clients in between. To go through every object
 * once, store_list() is cheaper. */
STORE_API int store_list_page(store_client *client, const store_list_options *opts,
                              store_object_info **out, size_t elem_size, size_t *count,
                              uint64_t *total);

/* ---------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------- */

/* A stable 20-byte id derived from the bytes of str (a hash; the same on every machine). */
STORE_API int store_object_id_from_string(const char *str, size_t len, store_object_id *out);

/* Writes 40 lowercase hex digits and a NUL into hex (at least 41 bytes). */
STORE_API int store_object_id_to_hex(const store_object_id *id, char *hex, size_t hex_size);

/* Parses 40 hex digits into *out. */
STORE_API int store_object_id_from_hex(const char *hex, store_object_id *out);

#ifdef __cplusplus
}
#endif

#endif /* STORECLIENT_H */
