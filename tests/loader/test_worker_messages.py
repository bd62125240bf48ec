"""The messages between the main process and its workers: a header, a pickled body and
file descriptors over a Unix socket, whatever their size."""
import os
import socket
import threading

import pytest

from fastloader._workers import _recv, _send


@pytest.mark.parametrize("size", [0, 1000, 5 << 20])  # 5 MiB: many times a socket's buffer
@pytest.mark.parametrize("timeout", [None, 30.0])  # with a timeout, one send call can send part
def test_messages_and_fds_cross_intact(size, timeout, tmp_path):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(timeout)
    path = tmp_path / "f"
    path.write_bytes(b"passed along")
    fd = os.open(path, os.O_RDONLY)
    msg = ("data", 7, os.urandom(size), [1, 2.5, "x"])
    got = []
    reader = threading.Thread(target=lambda: got.extend([_recv(b), _recv(b)]))
    reader.start()
    try:
        _send(a, msg, [fd])
        _send(a, msg)
    finally:
        reader.join(timeout=60)
        os.close(fd)
    (first, fds), (second, no_fds) = got
    assert first == msg and second == msg and no_fds == []
    assert len(fds) == 1 and os.pread(fds[0], 64, 0) == b"passed along"
    os.close(fds[0])
    a.close()
    b.close()
