"""Worker pools: processes (any Python dataset) and threads (GIL-releasing pipelines).

Both pools take messages for a worker (`send`) and give back `(worker_id, reply)`
(`recv`). Process workers talk over one Unix socket each: small pickled messages, batch
tensors in shared memory (`_shm`), a segment's fd passed once. The main process waits
on the sockets and on the process sentinels together, so a worker that dies is reported
at once with its exit signal, never waited on.
"""
from __future__ import annotations

import os
import pickle
import queue
import selectors
import signal
import socket
import struct
import threading
import time
import weakref

import torch
from torch._utils import ExceptionWrapper

from . import _collate_hook, _origins, _worker_info
from ._heap import huge_page_heap
from ._shm import MainSegments, WorkerArena, deal_spares
from ._worker_loop import Worker, WorkerSetup

_HEADER = struct.Struct("<QI")  # payload bytes, number of fds
_MAX_FDS = 64  # per message; a batch with more new segments sends them ahead in chunks


class UnreadBatch:
    """In place of a batch the main process could not read (a shard cut short under it,
    say): raised when the batch's turn comes, as a worker's error would be."""

    def __init__(self, error: ExceptionWrapper):
        self.error = error


class WorkerDied(RuntimeError):
    """A worker process ended while the loader still needed it."""
# Every pool of this process. A forked worker closes their sockets (a copy held by a
# worker would keep a socket open after the main process closed it) through the socket
# objects, so that nothing closes a reused fd number later.
_LIVE_POOLS: weakref.WeakSet = weakref.WeakSet()


def _send(sock: socket.socket, msg, fds=()) -> None:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    head = _HEADER.pack(len(body), len(fds))
    # header and body gathered by the one call, not copied together first
    sent = socket.send_fds(sock, [head, body], list(fds)) if fds else sock.sendmsg([head, body])
    if sent < len(head):
        sock.sendall(head[sent:])
        sent = len(head)
    if sent < len(head) + len(body):
        sock.sendall(memoryview(body)[sent - len(head):])


def _recv_exact(sock: socket.socket, n: int, into: bytearray) -> bool:
    view = memoryview(into)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return False
        got += k
    return True


def _recv(sock: socket.socket):
    """One message and its fds, or None at EOF."""
    head, fds, _, _ = socket.recv_fds(sock, _HEADER.size, _MAX_FDS)
    if not head:
        return None
    if len(head) < _HEADER.size:
        rest = bytearray(_HEADER.size - len(head))
        if not _recv_exact(sock, len(rest), rest):
            return None
        head += bytes(rest)
    size, nfds = _HEADER.unpack(head)
    if size == 0:
        return None, fds
    body = bytearray(size)
    if not _recv_exact(sock, size, body):
        return None
    return pickle.loads(body), fds


# -- process workers ---------------------------------------------------------------------
def _process_main(setup: WorkerSetup, sock: socket.socket, spares: list[tuple[int, int]]) -> None:
    for pool in list(_LIVE_POOLS):  # inherited through fork (empty when spawned)
        pool._forget_in_child(keep=sock, keep_spares=spares)
    try:
        torch._C._set_worker_signal_handlers()
        torch.multiprocessing._set_thread_name("pt_data_worker")
        huge_page_heap()  # a dataset's per-sample arrays, made and freed batch after batch
        arena = WorkerArena(setup.worker_id)
        arena.adopt(spares)
        _collate_hook.set_process_arena(arena)
        _origins.enable()
        worker = Worker(setup, pack=arena.pack, release=arena.release, abandon=arena.abandon_batch)
        while True:
            got = _recv(sock)
            if got is None or got[0] is None:  # main closed the socket, or said stop
                break
            reply = worker.handle(got[0])
            if reply is None:
                continue
            if reply[0] == "data":
                payload, used, new = reply[2]
                while len(new) > _MAX_FDS:
                    chunk, new = new[:_MAX_FDS], new[_MAX_FDS:]
                    _send(sock, ("fds", [sid for sid, _ in chunk]), [fd for _, fd in chunk])
                ids = [sid for sid, _ in new]
                _send(sock, ("data", reply[1], (payload, used, ids), *reply[3:]), [fd for _, fd in new])
            else:
                _send(sock, reply)
    except (KeyboardInterrupt, BrokenPipeError, ConnectionResetError):
        pass


def _close_spares(spares: list[tuple[int, int]]) -> None:
    for fd, _ in spares:
        os.close(fd)
    spares.clear()


def describe_exit(worker_id: int, proc) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        how = f"was killed by signal {name}"
    else:
        how = f"exited unexpectedly with exit code {code}"
    return f"DataLoader worker {worker_id} (pid {proc.pid}) {how}"


class ProcessPool:
    kind = "process"

    def __init__(self, setups: list[WorkerSetup], mp_context):
        self._setups = setups
        self._ctx = mp_context
        self._pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in setups]
        self.socks = [a for a, _ in self._pairs]
        _LIVE_POOLS.add(self)
        self._owner = os.getpid()
        self.procs = []
        self._freed: list[list[int]] = [[] for _ in setups]
        self._lock = threading.Lock()
        self.segments = [MainSegments(self._releaser(i)) for i in range(len(setups))]
        # Segments earlier workers left, for these to write into: fds reach a worker only
        # through fork.
        self._forks = getattr(mp_context, "get_start_method", lambda: "fork")() == "fork"
        self._spares = deal_spares(len(setups)) if self._forks else [[] for _ in setups]
        self._last_rng: list = [None] * len(setups)  # RNG states of each worker's last batch
        # Messages not yet written to a worker's socket: until it is forked, or while it
        # is held (forked but given no work, so it does not compete for the CPU).
        self._pending: list[list[tuple] | None] = [[] for _ in setups]
        self._started = [False] * len(setups)
        self._selector = selectors.DefaultSelector()
        self.alive = [True] * len(setups)
        self.closed = False

    def start(self, worker_id: int, hold: bool = False) -> None:
        """Forks one worker; what was sent to it so far is already in its socket (or,
        with hold, stays back until release_held())."""
        setup, (_, child) = self._setups[worker_id], self._pairs[worker_id]
        self._started[worker_id] = True
        pending = [] if hold else self._pending[worker_id]
        if not hold:
            self._pending[worker_id] = None
        # Written before the fork only when it fits the socket buffer (it cannot block
        # before the reader exists).
        early = sum(len(pickle.dumps(m)) for m in pending) < (64 << 10)
        if early:
            for msg in pending:
                self.send(worker_id, msg)
        spares, self._spares[worker_id] = self._spares[worker_id], []
        try:
            p = self._ctx.Process(target=_process_main, args=(setup, child, spares), daemon=True)
            p.start()
        finally:
            child.close()
            _close_spares(spares)  # the worker has its own copies
        self.procs.append(p)
        if not early:
            for msg in pending:
                self.send(worker_id, msg)
        self._selector.register(self.socks[worker_id], selectors.EVENT_READ, ("sock", worker_id))
        self._selector.register(p.sentinel, selectors.EVENT_READ, ("proc", worker_id))

    def _forget_in_child(self, keep: socket.socket | None, keep_spares=()) -> None:
        """In a forked worker: close this pool's sockets and fds, never join its processes."""
        self.closed = True
        for a, b in self._pairs:
            for s in (a, b):
                if s is not keep:
                    s.close()
        for spares in self._spares:
            if spares is not keep_spares:
                _close_spares(spares)

    def start_all(self, hold: bool = False) -> None:
        for i in range(len(self._setups)):
            if not self._started[i]:
                self.start(i, hold)

    def held(self, worker_id: int) -> bool:
        return self._started[worker_id] and self._pending[worker_id] is not None

    def release_held(self) -> None:
        for i in range(len(self._setups)):
            if self.held(i):
                pending, self._pending[i] = self._pending[i], None
                for msg in pending:
                    self.send(i, msg)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _releaser(self, worker_id: int):
        freed, lock = self._freed, self._lock

        def release(segment_id: int) -> None:
            with lock:
                freed[worker_id].append(segment_id)

        return release

    def _take_freed(self, worker_id: int) -> list[int]:
        with self._lock:
            ids, self._freed[worker_id] = self._freed[worker_id], []
        return ids

    def flush_frees(self) -> None:
        """Hands released segments back now, so workers reuse them instead of growing."""
        for i, freed in enumerate(self._freed):
            if freed and self._pending[i] is None and self.alive[i]:
                try:
                    _send(self.socks[i], ("free", self._take_freed(i)))
                except OSError:
                    raise self._dead(i) from None

    def send(self, worker_id: int, msg: tuple) -> None:
        if self._pending[worker_id] is not None:
            self._pending[worker_id].append(msg)
            return
        try:
            _send(self.socks[worker_id], (*msg, self._take_freed(worker_id)))
        except OSError:  # the worker is gone: say which and how
            raise self._dead(worker_id) from None

    def _dead(self, worker_id: int) -> WorkerDied:
        p = self.procs[worker_id]
        p.join(timeout=1.0)
        self.alive[worker_id] = False
        return WorkerDied(describe_exit(worker_id, p))

    def recv(self, timeout: float | None):
        """Next (worker_id, reply); None on timeout; RuntimeError if a worker died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = self._selector.select(left)
            if not events:
                return None
            # Data first: a worker may have sent its last reply and then exited.
            for key, _ in sorted(events, key=lambda e: e[0].data[0] != "sock"):
                what, i = key.data
                if what == "proc":
                    if self._readable(i):
                        continue
                    raise self._dead(i)
                try:
                    got = _recv(self.socks[i])
                except OSError:  # reset by a worker that died mid-message
                    got = None
                if got is None:
                    raise self._dead(i)
                msg, fds = got
                if msg[0] == "fds":
                    for sid, fd in zip(msg[1], fds):
                        self.segments[i].add(sid, fd)
                    continue
                if msg[0] == "data":
                    payload, used, new_ids = msg[2]
                    for sid, fd in zip(new_ids, fds):
                        self.segments[i].add(sid, fd)
                    try:
                        batch = self.segments[i].unpack(payload, used)
                    except Exception:
                        batch = UnreadBatch(ExceptionWrapper(where=f"reading the batch of DataLoader worker {i}"))
                    msg = (msg[0], msg[1], batch, *msg[3:])
                    state = msg[3]
                    if isinstance(state.get("rng"), str):  # SAME_RNG: unchanged since its last batch
                        state["rng"] = self._last_rng[i]
                    elif "rng" in state:
                        self._last_rng[i] = state["rng"]
                return i, msg

    def _readable(self, worker_id: int) -> bool:
        sock = self.socks[worker_id]
        ready = selectors.DefaultSelector()
        try:
            ready.register(sock, selectors.EVENT_READ)
            return bool(ready.select(0)) and bool(sock.recv(1, socket.MSG_PEEK))
        except OSError:
            return False
        finally:
            ready.close()

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        if os.getpid() != self._owner:  # a copy inherited by some forked process
            self._forget_in_child(keep=None)
            return
        for s in self.socks:
            try:
                s.setblocking(False)
                s.send(_HEADER.pack(0, 0))  # an empty message: stop (EOF says the same)
            except OSError:
                pass
            s.close()
        for i, (_, child) in enumerate(self._pairs):
            if not self._started[i]:
                child.close()
        self._selector.close()
        for spares in self._spares:  # of workers never started
            _close_spares(spares)
        for p in self.procs:
            p.join(timeout=2.0)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
        ended = all(p.exitcode is not None for p in self.procs)
        for segments in self.segments:
            if ended:
                segments.retire(keep=self._forks)
            else:  # a worker may still write them
                segments.close_fds()


# -- thread workers ----------------------------------------------------------------------
def _thread_main(setup: WorkerSetup, tasks: queue.SimpleQueue, results: queue.SimpleQueue):
    _collate_hook.mark_fetching(True)
    worker = Worker(setup)
    try:
        while True:
            msg = tasks.get()
            if msg is None:
                return
            reply = worker.handle(msg)
            if reply is not None:
                results.put((setup.worker_id, reply))
    finally:
        _worker_info.clear_thread()
        _collate_hook.mark_fetching(False)


class ThreadPool:
    kind = "thread"

    def __init__(self, setups: list[WorkerSetup]):
        self.tasks = [queue.SimpleQueue() for _ in setups]
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [
            threading.Thread(
                target=_thread_main,
                args=(s, q, self.results),
                name=f"fastloader-worker-{s.worker_id}",
                daemon=True,
            )
            for s, q in zip(setups, self.tasks)
        ]
        for t in self.threads:
            t.start()
        self.alive = [True] * len(setups)
        self.closed = False

    def flush_frees(self) -> None:
        pass

    def send(self, worker_id: int, msg: tuple) -> None:
        self.tasks[worker_id].put((*msg, []))

    def recv(self, timeout: float | None):
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            return None

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        for q in self.tasks:
            q.put(None)
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(timeout=5.0)
