"""ctypes declarations mirroring include/storeclient.h."""

import ctypes
import ctypes.util
import os
from ctypes import (POINTER, Structure, c_char, c_char_p, c_int, c_int32, c_int64, c_size_t,
                    c_uint8, c_uint32, c_uint64, c_void_p)

# ---- errors (STORE_ERRNO_MAP) ----------------------------------------------------------------
STORE_OK = 0
STORE_EINVAL = -1
STORE_ENOTFOUND = -2
STORE_EEXISTS = -3
STORE_ENOSPACE = -4
STORE_ENODISK = -5
STORE_ETIMEDOUT = -6
STORE_ESEALED = -7
STORE_ENOTSEALED = -8
STORE_EMISUSE = -9
STORE_ECONN = -10
STORE_EPROTO = -11
STORE_ENOTSUP = -12
STORE_ENOMEM = -13
STORE_ECORRUPT = -14
STORE_EPERM = -15
STORE_ELIMIT = -16

STORE_OBJECT_ID_SIZE = 20

STORE_STATE_CREATED = 1
STORE_STATE_SEALED = 2
STORE_STATE_SPILLING = 3
STORE_STATE_SPILLED = 4
STORE_STATE_RESTORING = 5

STORE_LEVEL_GPU = 1
STORE_LEVEL_MEMORY = 2
STORE_LEVEL_DISK = 4
STORE_LEVEL_REMOTE = 8

STORE_SORT_ID = 0
STORE_SORT_SIZE = 1
STORE_SORT_CREATED = 2
STORE_SORT_LAST_ACCESS = 3
STORE_SORT_IMPORTANCE = 4
STORE_SORT_STATE = 5

STORE_LIST_OPTIONS_VERSION = 1
STORE_MAX_PAGE_OBJECTS = 100000
STORE_CONNECT_OPTIONS_VERSION = 2
STORE_CREATE_OPTIONS_VERSION = 2
STORE_CREATE_LEASED = 1
STORE_MAX_METADATA_SIZE = 1 << 20


# ---- structures ------------------------------------------------------------------------------
class store_object_id(Structure):
    _fields_ = [("bytes", c_uint8 * STORE_OBJECT_ID_SIZE)]


# The output structs open with struct_size, which the caller sets (storeclient.h, "Output
# structs"): to ctypes.sizeof of the struct for store_info and store_stats_get; for the arrays
# the library allocates, that size is passed as elem_size and the library sets it.
class store_object_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("id", store_object_id),
        ("data_size", c_uint64),
        ("metadata_size", c_uint64),
        ("state", c_uint32),
        ("level", c_uint32),
        ("device", c_int32),
        ("importance", c_int32),
        ("pin_count", c_uint32),
        ("reader_count", c_uint32),
        ("create_time_ns", c_int64),
        ("last_access_ns", c_int64),
        ("creator_pid", c_int32),
        ("lease_count", c_uint32),
    ]


class store_stats(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("pad_", c_uint32),
        ("capacity_bytes", c_uint64),
        ("used_bytes", c_uint64),
        ("object_count", c_uint64),
        ("client_count", c_uint64),
        ("created_count", c_uint64),
        ("sealed_count", c_uint64),
        ("created_bytes", c_uint64),
        ("sealed_bytes", c_uint64),
        ("pinned_count", c_uint64),
        ("pinned_bytes", c_uint64),
        ("open_count", c_uint64),
        ("open_bytes", c_uint64),
        ("deleted_pending_count", c_uint64),
        ("deleted_pending_bytes", c_uint64),
        ("waiting_gets", c_uint64),
        ("waiting_creates", c_uint64),
        ("total_creates", c_uint64),
        ("total_seals", c_uint64),
        ("total_gets", c_uint64),
        ("total_releases", c_uint64),
        ("total_deletes", c_uint64),
        ("total_aborts", c_uint64),
        ("total_full", c_uint64),
        ("uptime_ns", c_uint64),
        ("server_pid", c_int32),
        ("reserved_", c_uint32),
        ("largest_free_bytes", c_uint64),
        ("resident_bytes", c_uint64),
        ("total_contains", c_uint64),
        ("total_infos", c_uint64),
        ("total_lists", c_uint64),
        ("total_pins", c_uint64),
        ("total_unpins", c_uint64),
        ("total_requests", c_uint64),
        ("total_bad_requests", c_uint64),
        ("spilling_count", c_uint64),
        ("spilling_bytes", c_uint64),
        ("spilled_count", c_uint64),
        ("spilled_bytes", c_uint64),
        ("restoring_count", c_uint64),
        ("restoring_bytes", c_uint64),
        ("evictable_bytes", c_uint64),
        ("spill_enabled", c_uint64),
        ("spill_files", c_uint64),
        ("spill_disk_bytes", c_uint64),
        ("spill_dead_bytes", c_uint64),
        ("total_spilled_objects", c_uint64),
        ("total_spilled_bytes", c_uint64),
        ("total_spill_ns", c_uint64),
        ("total_restored_objects", c_uint64),
        ("total_restored_bytes", c_uint64),
        ("total_restore_ns", c_uint64),
        ("total_spill_failures", c_uint64),
        ("total_restore_failures", c_uint64),
        # Added in 0.2: limits.
        ("waiting_bytes", c_uint64),
        ("backlog_bytes", c_uint64),
        ("partial_bytes", c_uint64),
        ("pending_fds", c_uint64),
        ("limit_client_waiting", c_uint64),
        ("limit_waiting_bytes", c_uint64),
        ("limit_client_backlog", c_uint64),
        ("limit_backlog", c_uint64),
        ("limit_partial_bytes", c_uint64),
        ("limit_clients", c_uint64),
        ("limit_client_gpu_fds", c_uint64),
        ("fd_limit", c_uint64),
        ("refused_client_waiting", c_uint64),
        ("refused_waiting_bytes", c_uint64),
        ("closed_client_backlog", c_uint64),
        ("closed_backlog", c_uint64),
        ("closed_partial", c_uint64),
        ("refused_clients", c_uint64),
        ("accept_failures", c_uint64),
        ("refused_gpu_fds", c_uint64),
        ("instance_id", c_uint64),
        ("start_time_ns", c_int64),
        ("when_full_drop", c_uint64),
        ("total_dropped_objects", c_uint64),
        ("total_dropped_bytes", c_uint64),
        # Added in 0.2: compaction of spill files (--spill-compact).
        ("total_compactions", c_uint64),
        ("total_compact_bytes_copied", c_uint64),
        ("total_compact_bytes_freed", c_uint64),
        ("total_compact_failures", c_uint64),
        ("limit_objects", c_uint64),
        ("refused_objects", c_uint64),
        ("spill_undurable_deletes", c_uint64),
    ]


class store_client_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("pad_", c_uint32),
        ("client_id", c_uint64),
        ("name", c_char * 64),
        ("pid", c_int32),
        ("uid", c_uint32),
        ("objects_created", c_uint64),
        ("creating_count", c_uint64),
        ("readers_held", c_uint64),
        ("pins_held", c_uint64),
        ("bytes_held", c_uint64),
        ("connect_time_ns", c_int64),
        ("requests", c_uint64),
        ("is_self", c_int32),
        ("reserved_", c_uint32),
    ]


class store_list_options(Structure):
    _fields_ = [
        ("version", c_uint32),
        ("sort", c_uint32),
        ("descending", c_int32),
        ("limit", c_uint32),
        ("offset", c_uint64),
        ("id_prefix", c_char_p),
    ]


class store_connect_options(Structure):
    _fields_ = [
        ("version", c_uint32),
        ("client_name", c_char_p),
        ("read_only", c_int32),
        ("reserved_", c_uint32),
    ]


class store_create_options(Structure):
    _fields_ = [
        ("version", c_uint32),
        ("metadata", c_void_p),
        ("metadata_size", c_uint64),
        ("importance", c_int32),
        ("device", c_int32),
        ("timeout_ms", c_int64),
        ("flags", c_uint32),
        ("reserved_", c_uint32),
    ]


class store_spill_file_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("pad_", c_uint32),
        ("path", c_char * 4096),
        ("size", c_uint64),
        ("live_objects", c_uint64),
        ("live_bytes", c_uint64),
        ("dead_bytes", c_uint64),
        ("created_time_ns", c_int64),
    ]


class store_gpu_device_stats(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("pad_", c_uint32),
        ("device", c_int32),
        ("chunks", c_uint32),
        ("capacity_bytes", c_uint64),
        ("used_bytes", c_uint64),
        ("object_count", c_uint64),
        ("chunk_size", c_uint64),
        ("largest_free_bytes", c_uint64),
    ]


STORE_GPU_BACKEND_NONE = 0
STORE_GPU_BACKEND_CUDA = 1
STORE_GPU_BACKEND_MEMFD_STANDIN = 2

# Opaque handles are passed around as c_void_p.
store_client_p = c_void_p
store_writer_p = c_void_p
store_reader_p = c_void_p
_id_p = POINTER(store_object_id)


_SONAME = "libstoreclient.so.2"


def _candidates():
    """Where libstoreclient may be, in order: $STORECLIENT_LIB; where `meson install` put it
    (recorded in _install.py next to this file, relative to the package, then absolute); the
    dynamic linker's search (LD_LIBRARY_PATH, the ldconfig cache); ctypes.util.find_library;
    the usual install prefixes."""
    env = os.environ.get("STORECLIENT_LIB")
    if env:
        return [env], True
    out = []
    try:
        from . import _install
        here = os.path.dirname(os.path.abspath(__file__))
        out.append(os.path.normpath(os.path.join(here, _install.LIBDIR_RELATIVE, _SONAME)))
        out.append(os.path.join(_install.LIBDIR, _SONAME))
    except ImportError:  # installed by pip, or run from the source tree
        pass
    out.append(_SONAME)
    found = ctypes.util.find_library("storeclient")
    if found:
        out.append(found)
    multiarch = getattr(__import__("sys").implementation, "_multiarch", "") or ""
    for prefix in ("/usr/local", "/usr"):
        if multiarch:
            out.append(os.path.join(prefix, "lib", multiarch, _SONAME))
        out.append(os.path.join(prefix, "lib", _SONAME))
        out.append(os.path.join(prefix, "lib64", _SONAME))
    seen = []
    for c in out:
        if c not in seen:
            seen.append(c)
    return seen, False


def _find_library():
    """The loaded libstoreclient (ctypes.CDLL). ImportError naming what to set if none."""
    tried = []
    candidates, from_env = _candidates()
    for path in candidates:
        if os.sep in path and not os.path.exists(path):
            tried.append(path + " (no such file)")
            continue
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            tried.append("%s (%s)" % (path, e))
    if from_env:
        raise ImportError("storeclient: cannot load the library STORECLIENT_LIB names: %s"
                          % "; ".join(tried))
    raise ImportError(
        "storeclient: libstoreclient (%s) was not found. Set STORECLIENT_LIB to its path (a "
        "build tree's build/capi/%s, or PREFIX/lib/<multiarch>/%s after `meson install`), "
        "or add its directory to LD_LIBRARY_PATH, or install it where the dynamic linker looks "
        "(meson install, then ldconfig). Tried: %s" % (_SONAME, _SONAME, _SONAME,
                                                       "; ".join(tried)))


lib = _find_library()

_SIGNATURES = {
    "store_errstr": (c_char_p, [c_int]),
    "store_last_error_message": (c_char_p, []),
    "store_version_string": (c_char_p, []),
    "store_client_connect": (c_int, [POINTER(store_client_p), c_char_p,
                                     POINTER(store_connect_options)]),
    "store_client_free": (None, [store_client_p]),
    "store_create": (c_int, [store_client_p, POINTER(store_writer_p), _id_p, c_uint64,
                             POINTER(store_create_options)]),
    "store_writer_write": (c_int, [store_writer_p, c_void_p, c_size_t]),
    "store_writer_seek": (c_int, [store_writer_p, c_int64, c_int, POINTER(c_uint64)]),
    "store_writer_tell": (c_uint64, [store_writer_p]),
    "store_writer_size": (c_uint64, [store_writer_p]),
    "store_writer_data": (c_void_p, [store_writer_p]),
    "store_writer_device_ptr": (c_int, [store_writer_p, POINTER(c_void_p), POINTER(c_int)]),
    "store_writer_seal": (c_int, [store_writer_p]),
    "store_writer_abort": (c_int, [store_writer_p]),
    "store_put": (c_int, [store_client_p, _id_p, c_void_p, c_uint64,
                          POINTER(store_create_options)]),
    "store_put_many": (c_int, [store_client_p, _id_p, POINTER(c_void_p), POINTER(c_uint64),
                               c_size_t, POINTER(store_create_options), POINTER(c_size_t)]),
    "store_open_reader": (c_int, [store_client_p, POINTER(store_reader_p), _id_p, c_int64]),
    "store_open_readers": (c_int, [store_client_p, POINTER(store_reader_p), _id_p, c_size_t,
                                   c_int64]),
    "store_reader_read": (c_int, [store_reader_p, c_void_p, c_size_t, POINTER(c_size_t)]),
    "store_reader_seek": (c_int, [store_reader_p, c_int64, c_int, POINTER(c_uint64)]),
    "store_reader_tell": (c_uint64, [store_reader_p]),
    "store_reader_size": (c_uint64, [store_reader_p]),
    "store_reader_data": (c_void_p, [store_reader_p]),
    "store_reader_metadata": (c_void_p, [store_reader_p, POINTER(c_uint64)]),
    "store_reader_device_ptr": (c_int, [store_reader_p, POINTER(c_void_p), POINTER(c_int)]),
    "store_reader_device": (c_int, [store_reader_p]),
    "store_reader_id": (_id_p, [store_reader_p]),
    "store_reader_close": (None, [store_reader_p]),
    "store_readers_close": (None, [POINTER(store_reader_p), c_size_t]),
    "store_contains": (c_int, [store_client_p, _id_p, POINTER(c_int)]),
    "store_delete": (c_int, [store_client_p, _id_p]),
    "store_delete_many": (c_int, [store_client_p, _id_p, c_size_t, POINTER(c_size_t)]),
    "store_info": (c_int, [store_client_p, _id_p, POINTER(store_object_info)]),
    "store_list": (c_int, [store_client_p, POINTER(POINTER(store_object_info)), c_size_t,
                           POINTER(c_size_t)]),
    "store_free": (None, [c_void_p]),
    "store_pin": (c_int, [store_client_p, _id_p]),
    "store_unpin": (c_int, [store_client_p, _id_p]),
    "store_lease": (c_int, [store_client_p, _id_p, POINTER(c_uint32)]),
    "store_unlease": (c_int, [store_client_p, _id_p, POINTER(c_uint32)]),
    "store_stats_get": (c_int, [store_client_p, POINTER(store_stats)]),
    "store_set_importance": (c_int, [store_client_p, _id_p, c_int32]),
    "store_prefetch": (c_int, [store_client_p, _id_p, c_size_t]),
    "store_evict": (c_int, [store_client_p, c_uint64, POINTER(c_uint64)]),
    "store_spill_url": (c_int, [store_client_p, _id_p, c_char_p, c_size_t]),
    "store_list_spill_files": (c_int, [store_client_p, POINTER(POINTER(store_spill_file_info)),
                                       c_size_t, POINTER(c_size_t)]),
    "store_gpu_stats": (c_int, [store_client_p, POINTER(POINTER(store_gpu_device_stats)),
                                c_size_t, POINTER(c_size_t), POINTER(c_int)]),
    "store_list_clients": (c_int, [store_client_p, POINTER(POINTER(store_client_info)),
                                   c_size_t, POINTER(c_size_t)]),
    "store_list_page": (c_int, [store_client_p, POINTER(store_list_options),
                                POINTER(POINTER(store_object_info)), c_size_t,
                                POINTER(c_size_t), POINTER(c_uint64)]),
    "store_object_id_from_string": (c_int, [c_char_p, c_size_t, _id_p]),
    "store_object_id_to_hex": (c_int, [_id_p, c_char_p, c_size_t]),
    "store_object_id_from_hex": (c_int, [c_char_p, _id_p]),
}

for _name, (_res, _args) in _SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.restype = _res
    _fn.argtypes = _args
