"""Dask workers that keep their results in the node's store.

    from distributed import LocalCluster, Client
    import storeclient.dask

    cluster = LocalCluster(n_workers=2, **storeclient.dask.worker_options("/tmp/store.sock"))

worker_options() gives every worker a StoreData as its `data=` mapping and a StorePlugin. Then:

- A task's result goes into the store as one leased object (pickle protocol 5, its out-of-band
  buffers, NumPy arrays' data, written straight into the store's memory); the worker keeps only
  its id. Reading it back (a task's argument) rebuilds it without copying: NumPy arrays are
  read-only views of the store's memory. A result that cannot be pickled, or that the store has
  no room for within `timeout`, stays in the worker's memory as Dask would keep it.
- A worker fetching a result from a worker on the same store gets its id instead of its bytes:
  the holder sends a small reference, the receiver takes a lease on the object and reads it from
  the store. Same store means the same store server: each worker announces itself with a marker
  object named after its address, which goes with it, so a holder asked by a worker whose marker
  is in its own store knows they share the store. Workers on other hosts, or on other stores,
  get the bytes as usual.
- Lifetimes: each worker holding a result holds a lease on its object; the object goes when the
  last holder lets go of the key or dies (a killed worker's leases go with its connection). A
  holder sending a reference keeps an extra lease until the receiver has taken its own, so a
  release racing the transfer never pulls the object from under it.
- Memory: the store's spiller, not Dask's, moves results to disk (Dask's own spilling is off: the
  mapping has no `fast`/`evict`), least important first: a task's importance is its Dask
  priority (`dask.annotate(priority=...)`). Dask sees the results' bytes as managed memory: the
  worker's process memory is its private memory plus its results in the store's memory, and its
  spilled figures are its results on disk. Since the store bounds its memory itself, each
  worker's memory limit is raised by the store's capacity: the limit still bounds what the
  worker holds privately (give it as worker_options(memory_limit=...), so that the nanny's
  limit, which counts the store's pages the worker touched, allows for the store too).
"""

import contextvars
import logging
import os
import threading
import time
import weakref
from collections.abc import MutableMapping

from dask.sizeof import sizeof
from distributed.diagnostics.plugin import WorkerPlugin

from . import (DEFAULT_PUT_TIMEOUT, STORE_LEVEL_MEMORY, Client, ExistsError, NotFoundError,
               ObjectId, StoreError, _pickle, object_id)

__all__ = ["StoreData", "StorePlugin", "StoreRef", "worker_options", "marker_id"]

logger = logging.getLogger("storeclient.dask")

_INT32_MAX = (1 << 31) - 1

#: Set (to a list) while a worker serves a fetch from a worker on its own store: reading the
#: mapping then gives StoreRefs, and the leases taken for them are listed there.
_transfer = contextvars.ContextVar("storeclient_dask_transfer", default=None)


def marker_id(worker_address):
    """The id of the marker object a worker at worker_address keeps in its store (leased, so it
    goes with the worker)."""
    return object_id("storeclient.dask/worker/" + worker_address)


# ---- one connection per process and store ---------------------------------------------------
class _Connection:
    """A Client shared by the StoreData mappings and StoreRefs of one process for one store, so
    that the leases a reference takes and the mapping that adopts it are one client's."""

    def __init__(self, socket):
        self.socket = socket
        self.client = Client(socket, name="dask-worker-%d" % os.getpid())
        self.instance_id = self.client.stats()["instance_id"]
        self.users = 0


_lock = threading.Lock()
_by_socket = {}    # (pid, socket) -> _Connection
_by_instance = {}  # (pid, instance id) -> _Connection


def _connect(socket):
    with _lock:
        key = (os.getpid(), socket)
        conn = _by_socket.get(key)
        if conn is None or conn.client.closed:
            conn = _Connection(socket)
            _by_socket[key] = conn
            _by_instance[(os.getpid(), conn.instance_id)] = conn
        conn.users += 1
        return conn


def _disconnect(conn):
    with _lock:
        conn.users -= 1
        if conn.users > 0:
            return
        _by_socket.pop((os.getpid(), conn.socket), None)
        if _by_instance.get((os.getpid(), conn.instance_id)) is conn:
            del _by_instance[(os.getpid(), conn.instance_id)]
    conn.client.close()


def _unlease(conn, oid):
    try:
        conn.client.unlease(oid)
    except StoreError:
        pass  # the store is gone, or the lease went with a reconnect: nothing is held


class StoreTransferError(RuntimeError):
    """A reference to a stored result reached a process that cannot take it (no connection to
    that store here, or the object is gone)."""


# ---- references --------------------------------------------------------------------------------
class StoreRef:
    """A result in the store, as one worker hands it to another on the same store: it pickles to
    (store instance id, object id, size). Unpickled, it holds a lease on the object through this
    process's connection to that store, dropped when the reference is collected unless a
    StoreData adopts it. get() reads the value."""

    __slots__ = ("instance_id", "oid", "nbytes", "_conn", "_finalizer", "__weakref__")

    def __init__(self, instance_id, oid, nbytes, conn=None):
        self.instance_id = instance_id
        self.oid = oid
        self.nbytes = nbytes
        self._conn = conn
        self._finalizer = weakref.finalize(self, _unlease, conn, oid) if conn else None

    def __reduce__(self):
        return (_attach, (self.instance_id, self.oid.binary(), self.nbytes))

    def __repr__(self):
        return "StoreRef(%s, %d bytes)" % (self.oid.hex(), self.nbytes)

    def get(self):
        """The value, rebuilt from the store (NumPy arrays as read-only views of its memory)."""
        if self._conn is None:
            raise StoreTransferError("this reference holds no connection to its store")
        return self._conn.client.get_object(self.oid)

    def _detach(self):
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None


def _attach(instance_id, raw_id, nbytes):
    with _lock:
        conn = _by_instance.get((os.getpid(), instance_id))
    if conn is None:
        raise StoreTransferError("a reference to store %#x reached a process with no connection "
                                 "to that store" % instance_id)
    oid = ObjectId(raw_id)
    try:
        conn.client.lease(oid)
    except StoreError as e:
        raise StoreTransferError("cannot lease %s: %s" % (oid.hex(), e)) from e
    return StoreRef(instance_id, oid, nbytes, conn)


@sizeof.register(StoreRef)
def _sizeof_ref(ref):
    return ref.nbytes


# ---- the worker's data mapping -----------------------------------------------------------------
class StoreData(MutableMapping):
    """A Dask worker's `data=` mapping over the store at socket (None: $STORE_SOCKET, else the
    default socket). Keys map to leased objects named namespace + "/" + key (namespace: None
    takes the scheduler's address once the StorePlugin starts, so clusters sharing a store do not
    mix their keys; "dask" before that). Values that cannot be stored stay in this process.
    timeout: seconds a result waits for room in the store before it stays in this process."""

    def __init__(self, socket=None, namespace=None, timeout=DEFAULT_PUT_TIMEOUT):
        self._conn = _connect(socket)
        self.client = self._conn.client
        self.instance_id = self._conn.instance_id
        self.namespace = namespace
        self.timeout = timeout
        self.worker = None
        self._entries = {}  # key -> (ObjectId, stored bytes)
        self._local = {}    # key -> a value kept in this process
        self._usage = (0.0, 0, 0)  # (when, bytes in memory, bytes on disk) of this worker's
        self._closed = False

    # -- the mapping
    def _id(self, key):
        ns = self.namespace if self.namespace is not None else "dask"
        return object_id("%s/%s" % (ns, key if isinstance(key, str) else repr(key)))

    def _importance(self, key):
        worker = self.worker
        if worker is None:
            return 0
        ts = worker.state.tasks.get(key)
        priority = getattr(ts, "priority", None)
        if not priority:
            return 0
        return max(-_INT32_MAX, min(_INT32_MAX, -int(priority[0])))

    def __setitem__(self, key, value):
        if key in self._entries or key in self._local:
            del self[key]
        if isinstance(value, StoreRef):
            if value._conn is self._conn:
                value._detach()  # its lease is now this key's
                self._entries[key] = (value.oid, value.nbytes)
                return
            value = value.get()
        oid = self._id(key)
        try:
            layout = _pickle.serialize(value)
        except Exception as e:  # not picklable: Dask keeps such values in memory too
            logger.debug("%s stays in the worker: %s", key, e)
            self._local[key] = value
            return
        try:
            w = self.client.open_writer(oid, layout.size, importance=self._importance(key),
                                        timeout=self.timeout, leased=True)
        except ExistsError:
            # Another worker of this cluster made the same key (a replica, a recomputation):
            # the same value, shared.
            self._share(key, oid, value)
            return
        except StoreError as e:
            logger.warning("%s stays in the worker: %s", key, e)
            self._local[key] = value
            return
        try:
            layout.write_into(w.buffer)
            w.seal()
        except ExistsError:
            # Made meanwhile by another worker (a small object is created by its seal).
            w.close()
            self._share(key, oid, value)
            return
        finally:
            w.close()
        self._entries[key] = (oid, layout.size)

    def _share(self, key, oid, value):
        """Holds key as the existing object oid (a lease), or keeps value here if it cannot."""
        try:
            self.client.lease(oid)
            self._entries[key] = (oid, self.client.info(oid).data_size)
        except StoreError as e:
            logger.warning("%s stays in the worker: its object exists and cannot be leased "
                           "(%s)", key, e)
            self._local[key] = value

    def __getitem__(self, key):
        if key in self._local:
            return self._local[key]
        oid, nbytes = self._entries[key]
        held = _transfer.get()
        if held is not None:
            # Served to a worker on this store: a reference, kept leased until it has its own.
            self.client.lease(oid)
            held.append(oid)
            return StoreRef(self.instance_id, oid, nbytes)
        return self.client.get_object(oid)

    def __delitem__(self, key):
        if key in self._local:
            del self._local[key]
            return
        oid, _ = self._entries.pop(key)
        _unlease(self._conn, oid)

    def __contains__(self, key):
        return key in self._entries or key in self._local

    def __iter__(self):
        yield from list(self._entries)
        yield from list(self._local)

    def __len__(self):
        return len(self._entries) + len(self._local)

    def ids(self):
        """{key: ObjectId} of the results this worker holds in the store."""
        return {k: oid for k, (oid, _) in self._entries.items()}

    # -- memory figures
    def _measure(self, max_age=1.0):
        """(bytes of this worker's results in the store's memory, on disk), at most max_age s
        old."""
        when, memory, disk = self._usage
        now = time.monotonic()
        if now - when < max_age:
            return memory, disk
        mine = {oid: n for oid, n in self._entries.values()}
        memory = disk = 0
        if mine:
            try:
                infos = self.client.list()
            except StoreError:
                infos = []
            for info in infos:
                n = mine.get(info.id)
                if n is None:
                    continue
                if info.level & STORE_LEVEL_MEMORY:
                    memory += n
                else:
                    disk += n
        self._usage = (now, memory, disk)
        return memory, disk

    @property
    def spilled_total(self):
        """(bytes, bytes on disk) of this worker's results the store has spilled, as Dask's
        SpillBuffer reports them."""
        _, disk = self._measure()
        return disk, disk

    def memory_bytes(self):
        """Bytes of this worker's results in the store's memory."""
        return self._measure()[0] + sum(sizeof(v) for v in self._local.values())

    # -- lifetime
    def close(self):
        """Lets go of every result (objects no other worker holds go) and of the connection."""
        if self._closed:
            return
        self._closed = True
        for oid, _ in self._entries.values():
            _unlease(self._conn, oid)
        self._entries.clear()
        self._local.clear()
        _disconnect(self._conn)

    def __repr__(self):
        return "<StoreData: %d results in the store, %d in the worker>" % (len(self._entries),
                                                                          len(self._local))


def _private_memory():
    """This process's resident memory that is its own (anonymous and file pages; the store's
    shared pages it has mapped are counted by the store), or None."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return (int(fields["RssAnon"].split()[0]) + int(fields["RssFile"].split()[0])) * 1024
    except (OSError, KeyError, ValueError):
        return None


# ---- the worker plugin ---------------------------------------------------------------------------
class StorePlugin(WorkerPlugin):
    """Connects a worker whose data= is a StoreData to the rest of the cluster (see the module's
    docstring): names its keys after the scheduler, announces the worker in the store, serves
    fetches from workers on the same store by reference, and makes Dask's memory figures count
    the store."""

    name = "storeclient"

    def __init__(self, raise_memory_limit=True):
        self.raise_memory_limit = raise_memory_limit

    def setup(self, worker):
        """Called by the worker as it starts (before it registers with the scheduler)."""
        data = worker.data
        if not isinstance(data, StoreData):
            raise TypeError("StorePlugin needs a worker whose data= is a StoreData (see "
                            "storeclient.dask.worker_options), not %s" % type(data).__name__)
        self.data = data
        data.worker = worker
        if data.namespace is None:
            data.namespace = "dask/" + worker.scheduler.address
        self.marker = marker_id(worker.address)
        try:
            data.client.put(self.marker, b"w", leased=True)
        except ExistsError:
            data.client.lease(self.marker)
        self._wrap_get_data(worker, data)
        self._count_memory(worker, data)

    def teardown(self, worker):
        """Called by the worker as it closes: lets go of its results and its marker."""
        data = getattr(self, "data", None)
        if data is None or data._closed:
            return
        if getattr(self, "_get_data", None) is not None:
            worker.handlers["get_data"] = self._get_data
        _unlease(data._conn, self.marker)
        data.close()

    def _wrap_get_data(self, worker, data):
        original = worker.handlers["get_data"]
        self._get_data = original

        def same_store(who):
            try:
                return bool(who) and data.client.contains(marker_id(who))
            except StoreError:
                return False

        async def get_data(comm, keys=None, who=None, serializers=None, max_connections=None):
            if not same_store(who):
                return await original(comm, keys=keys, who=who, serializers=serializers,
                                      max_connections=max_connections)
            held = []
            token = _transfer.set(held)
            try:
                # Returns once the receiver has answered "OK", having leased what it got.
                return await original(comm, keys=keys, who=who, serializers=serializers,
                                      max_connections=max_connections)
            finally:
                _transfer.reset(token)
                for oid in held:
                    _unlease(data._conn, oid)

        worker.handlers["get_data"] = get_data

    def _count_memory(self, worker, data):
        monitor = getattr(worker, "monitor", None)
        if monitor is not None:
            original = monitor.get_process_memory

            def get_process_memory():
                private = _private_memory()
                if private is None:
                    return original()
                return private + data.memory_bytes()

            monitor.get_process_memory = get_process_memory
        mm = getattr(worker, "memory_manager", None)
        if self.raise_memory_limit and mm is not None and mm.memory_limit:
            mm.memory_limit += data.client.stats()["capacity_bytes"]


def worker_options(socket=None, namespace=None, timeout=DEFAULT_PUT_TIMEOUT, memory_limit=None):
    """Keyword arguments for LocalCluster, Nanny or Worker that keep the workers' results in the
    store at socket: {"data": (StoreData, {...}), "plugins": (StorePlugin(),)}, and with
    memory_limit (bytes, or a string such as "4GB": what each worker may hold of its own) a
    "memory_limit" of that plus the store's capacity. Pass the limit here rather than to the
    cluster: a worker's nanny counts the store's pages the worker has touched in its resident
    memory, and restarts it at 95 % of its limit. Without it, each worker's own limit (Dask's
    default, a share of the machine's memory) is raised by the store's capacity, its nanny's is
    not. Merge these options with your own (a plugins tuple of your own goes with StorePlugin in
    it)."""
    options = {"data": (StoreData, {"socket": socket, "namespace": namespace,
                                    "timeout": timeout}),
               "plugins": (StorePlugin(raise_memory_limit=memory_limit is None),)}
    if memory_limit is not None:
        if isinstance(memory_limit, str):
            from dask.utils import parse_bytes
            memory_limit = parse_bytes(memory_limit)
        with Client(socket, name="dask-options") as c:
            capacity = c.stats()["capacity_bytes"]
        options["memory_limit"] = int(memory_limit) + capacity
    return options
