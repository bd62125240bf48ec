"""The compiled tar scanner against Python's tarfile, on every header flavour."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from fastloader.shards import _scanning, _tar

MAX = _tar.DEFAULT_MAX_MEMBER_SIZE


def _tar_bytes(members, fmt) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            if data is None:  # a directory
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
                continue
            if isinstance(data, str):  # a symlink to data
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, data
                tf.addfile(info)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _reference(blob: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isreg()]


def _ours(scan: _tar.TarScan, blob) -> list[tuple[str, bytes]]:
    return [(n, bytes(blob[o:o + s])) for n, o, s in zip(scan.names, scan.offset.tolist(), scan.size.tolist())]


MEMBERS = [
    ("a.txt", b"hello"),
    ("dir", None),
    ("dir/b.bin", bytes(range(256)) * 3),
    ("empty.dat", b""),
    ("link.txt", "a.txt"),
    ("exact.bin", b"x" * 512),
    ("d" * 90 + "/" + "n" * 95 + ".jpg", b"long name in ustar prefix"),
    ("x" * 300 + ".cls", b"very long name"),
    ("\u00e9t\u00e9/\u4e2d\u6587.txt", "unicode name".encode()),
]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_header_flavour_matches_tarfile(fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else [m for m in MEMBERS if len(m[0]) < 250 and m[0].isascii()]
    blob = _tar_bytes(members, fmt)
    scan = _tar.scan(blob)
    assert scan.error == ""
    assert scan.at_end
    assert _ours(scan, blob) == _reference(blob)


def test_base256_size_field():
    blob = bytearray(_tar_bytes([("a.bin", b"q" * 700)], tarfile.USTAR_FORMAT))
    h = blob[:512]
    h[124:136] = b"\x80" + (700).to_bytes(11, "big")
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}".encode() + b"\0 "
    blob[:512] = h
    scan = _tar.scan(bytes(blob))
    assert scan.error == "" and scan.size.tolist() == [700]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_streamed_scan_in_any_chunking_finds_the_same_samples(fmt):
    rng = np.random.default_rng(0)
    members = [(f"k{i // 2:04d}{'x' * int(rng.integers(0, 120))}.{'ab'[i % 2]}", rng.bytes(int(rng.integers(0, 2000))))
               for i in range(60)]
    blob = _tar_bytes(members, fmt)
    whole = _scanning.scan_buffer(blob, 0, True, MAX).group()
    for chunk in (512, 700, 4096, len(blob)):
        chunks = (memoryview(blob)[i:i + chunk] for i in range(0, len(blob), chunk))
        got = []
        for event in _scanning.stream_samples("u", chunks, MAX):
            assert not isinstance(event, _scanning.Damage), event
            item, data = event
            for i in range(len(item)):
                a, b = item.first[i], item.first[i + 1]
                got.append((item.keys[i], [bytes(data[o:o + s]) for o, s in zip(item.offset[a:b], item.size[a:b])]))
        want = [(whole.keys[i], [blob[o:o + s] for o, s in zip(whole.offset[whole.first[i]:whole.first[i + 1]],
                                                              whole.size[whole.first[i]:whole.first[i + 1]])])
                for i in range(len(whole))]
        assert got == want, chunk


def test_huge_declared_size_is_rejected_before_reading():
    blob = bytearray(_tar_bytes([("a.bin", b"q")], tarfile.USTAR_FORMAT))
    h = blob[:512]
    h[124:136] = b"\x80" + (100 * 10**9).to_bytes(11, "big")
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}".encode() + b"\0 "
    blob[:512] = h
    for final in (True, False):
        scan = _tar.scan(bytes(blob), 0, final)
        assert "100000000000 data bytes" in scan.error and scan.error_offset == 0


def test_non_tar_and_truncation_and_checksum_errors_carry_offsets():
    assert _tar.scan(b"not a tar file at all" * 100).error.startswith("not a tar file")
    blob = _tar_bytes([("a.bin", b"1" * 1000), ("b.bin", b"2" * 1000)], tarfile.USTAR_FORMAT)
    cut = _tar.scan(blob[:2000])
    assert cut.error.startswith("truncated") and cut.error_offset == 1536 and cut.names == ["a.bin"]
    bad = bytearray(blob)
    bad[1536 + 10] ^= 0xFF  # second header
    scan = _tar.scan(bytes(bad))
    assert scan.error == "bad tar header checksum" and scan.error_offset == 1536 and scan.names == ["a.bin"]
    assert _tar.scan(b"").error == "not a tar file: it is empty (0 bytes)" and _tar.scan(b"").names == []
    assert _tar.scan(b"", 0, False).error == "" and _tar.scan(b"", 1024, True).error == ""  # more may come; the end


def _stream_events(parts: list[bytes]) -> list:
    """Samples (key, [(ext, bytes)]) and damage ("damage", offset, key) of a streamed tar."""
    out = []
    for event in _scanning.stream_samples("u", iter([memoryview(p) for p in parts]), MAX):
        if isinstance(event, _scanning.Damage):
            out.append(("damage", event.offset, event.key))
            continue
        s, data = event
        for i in range(len(s)):
            a, b = s.first[i], s.first[i + 1]
            out.append((s.keys[i], [(s.exts[e], bytes(data[o:o + z])) for e, o, z in
                                    zip(s.member_ext[a:b], s.offset[a:b], s.size[a:b])]))
    return out


def _whole_events(blob: bytes) -> list:
    scanned = _scanning.scan_buffer(blob, 0, True, MAX)
    s = scanned.group()
    events = [(int(s.header[i]), (s.keys[i], [(s.exts[e], blob[o:o + z]) for e, o, z in
                                              zip(s.member_ext[s.first[i]:s.first[i + 1]],
                                                  s.offset[s.first[i]:s.first[i + 1]], s.size[s.first[i]:s.first[i + 1]])]))
              for i in range(len(s))]
    events += [(off, ("damage", off, None)) for off, _ in scanned.damage]
    events += [(p.offset, ("damage", p.offset, p.key)) for p in s.problems]
    return [e for _, e in sorted(events, key=lambda x: x[0])]


def _damaged(members, corrupt: list[str]) -> bytes:
    blob = bytearray(_tar_bytes(members, tarfile.USTAR_FORMAT))
    with tarfile.open(fileobj=io.BytesIO(bytes(blob))) as tf:
        where = {m.name: m.offset for m in tf.getmembers()}
    for name in corrupt:
        blob[where[name] + 148] ^= 0x55  # its checksum field
    return bytes(blob)


DAMAGED_CASES = {
    # a zero block inside a damaged member's data is data, not the end of the archive
    "zero block in damaged data": ([("a.jpg", b"A" * 100), ("b.npy", b"\x01" * 512 + b"\0" * 1024 + b"\x02" * 10),
                                    ("c.jpg", b"C"), ("d.jpg", b"D")], ["b.npy"]),
    "damage then samples across chunks": ([("a.jpg", b"A" * 100), ("a.cls", b"1"), ("b.jpg", b"B" * 100),
                                           ("b.cls", b"2"), ("c.jpg", b"C" * 100), ("c.cls", b"3" * 600),
                                           ("d.jpg", b"D")], ["b.jpg"]),
    "duplicate member": ([("a.jpg", b"A"), ("b.jpg", b"B" * 700), ("b.jpg", b"b" * 700), ("b.cls", b"2" * 900),
                          ("c.jpg", b"C")], []),
    "large member": ([("a.bin", bytes(range(256)) * 4000), ("a.cls", b"1"), ("b.bin", b"x" * 5000)], []),
}


@pytest.mark.parametrize("case", list(DAMAGED_CASES))
def test_streamed_scan_equals_whole_scan_on_damaged_tars(case):
    members, corrupt = DAMAGED_CASES[case]
    blob = _damaged(members, corrupt)
    want = _whole_events(blob)
    keys = [e[0] for e in want if e[0] != "damage"]
    assert len(keys) == len(set(keys))  # no sample split in two
    if case == "zero block in damaged data":
        assert keys == ["a", "c", "d"]
    for chunk in (512, 600, 700, 1024, 1536, 2500, 3100, 4096, len(blob)):
        assert _stream_events([blob[i:i + chunk] for i in range(0, len(blob), chunk)]) == want, chunk
    for cut in range(100, min(len(blob), 20_000), 100):  # two chunks, cut anywhere
        assert _stream_events([blob[:cut], blob[cut:]]) == want, cut


def test_names_split_into_key_and_extension_as_webdataset_does():
    import warnings

    from fastloader.shards._members import split_name

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from webdataset.tariterators import base_plus_ext
    names = ["a.jpg", "dir/abc.seg.PNG", "dir/.x.jpg", ".hidden", "noext", "a.b/c", "a.b/c.d", "x/y/z.tar.gz",
             "k.", "__meta__", "__dir__/a.jpg", "d/__x__.jpg", "a..b", "/abs/p.q"]
    for name in names:
        key, ext = base_plus_ext(name)
        meta = name.startswith("__") and ("/" in name or name.endswith("__"))
        want = (None, None) if meta or key is None else (key, ext.lower())
        assert split_name(name) == want, name


def test_the_binding_refuses_strided_buffers():
    from fastloader import _C

    with pytest.raises(ValueError, match="contiguous"):
        _C.scan_tar(memoryview(bytes(2048))[::-1], 0, True, MAX)
