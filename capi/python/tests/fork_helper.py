"""A process that forks with a Client, for test_storeclient.TestFork.

Usage: fork_helper.py SOCKET VARIANT

The parent connects, puts an object, holds it through a memoryview (get) and a Reader, and
starts writing another; then it forks. The child checks that the inherited client refuses
calls (STORE_EMISUSE), then lets everything it inherited go as VARIANT says:

  gc       closes the inherited writer and reader, drops every reference and collects
           (finalizers run), connects a client of its own and reads the object, then leaves
           with os._exit(0)
  exit     leaves with sys.exit(0), everything still referenced: the interpreter's exit runs
           the finalizers
  os_exit  leaves with os._exit(0): no finalizer runs

The parent waits for the child, then checks that its session went on: its client works, its
reader, view and writer are still its own (the store counts them), and no client is left but
the ones there before. Prints "ok" and exits 0 if so; otherwise says what failed, exits 1.
"""

import gc
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import storeclient  # noqa: E402

OBJ = "fork-helper-object"
WRITTEN = "fork-helper-written"
DATA = b"parent's bytes " * 100


def expect_inert(call):
    """The call on an inherited object must raise STORE_EMISUSE naming the parent."""
    try:
        call()
    except storeclient.StoreError as e:
        if e.code == storeclient.STORE_EMISUSE and "parent process" in e.message:
            return True
        print("child: unexpected error %s" % e, file=sys.stderr)
        return False
    print("child: a call on the inherited client succeeded", file=sys.stderr)
    return False


def child(held, sock, variant):
    client = held["client"]
    ok = all([
        expect_inert(lambda: client.put("fork-helper-child", b"x")),
        expect_inert(lambda: client.get(OBJ)),
        expect_inert(lambda: client.stats()),
        expect_inert(lambda: client.contains(OBJ)),
        expect_inert(lambda: held["reader"].read()),
    ])
    if not ok:
        os._exit(3)
    del client
    if variant == "gc":
        # Closing what was inherited frees the child's handles only, and raises nothing.
        held["writer"].close()
        held["reader"].close()
        held.clear()
        gc.collect()
        with storeclient.Client(sock, name="fork-child") as own:
            view = own.get(OBJ)
            same = bytes(view) == DATA
            del view
        os._exit(0 if same else 4)
    if variant == "exit":
        sys.exit(0)
    if variant == "os_exit":
        os._exit(0)
    os._exit(2)


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return cond()
        time.sleep(0.001)
    return True


def main():
    sock, variant = sys.argv[1], sys.argv[2]
    # Everything the child inherits is held here only, so that it can let it all go.
    held = {"client": storeclient.Client(sock, name="fork-parent")}
    c = held["client"]
    c.put(OBJ, DATA)
    held["view"] = c.get(OBJ)
    held["reader"] = c.open_reader(OBJ)
    held["writer"] = c.open_writer(WRITTEN, 4)
    clients_before = c.stats()["client_count"]
    del c
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            child(held, sock, variant)
        except SystemExit:
            raise  # the "exit" variant: the interpreter's own exit
        except BaseException:
            traceback.print_exc()
        os._exit(5)

    failures = []
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        failures.append("the child exited with %d" % code)
    c = held["client"]
    try:
        if not wait_for(lambda: c.stats()["client_count"] == clients_before):
            failures.append("clients: %d, before the fork: %d"
                            % (c.stats()["client_count"], clients_before))
        if c.info(OBJ).reader_count != 2:
            failures.append("the parent's view and reader are not both counted: %d"
                            % c.info(OBJ).reader_count)
        if bytes(held["view"]) != DATA or held["reader"].read() != DATA:
            failures.append("the parent's view or reader reads other bytes")
        w = held.pop("writer")
        w.buffer[:] = b"done"
        w.seal()
        w.close()
        if bytes(c.get(WRITTEN)) != b"done":
            failures.append("the parent's writer did not seal its bytes")
        c.put("fork-helper-after", b"after")
        if bytes(c.get("fork-helper-after")) != b"after":
            failures.append("the parent's client cannot put and get")
        del held["view"]
        held.pop("reader").close()
        gc.collect()
        for key in (OBJ, WRITTEN, "fork-helper-after"):
            c.delete(key)
    except storeclient.StoreError as e:
        failures.append("the parent's client failed: %s" % e)
    c.close()
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
