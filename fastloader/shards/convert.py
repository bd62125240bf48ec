"""`fastloader convert`: an ImageFolder tree, or a CSV / JSONL file of text + label, into
WebDataset shards."""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .writer import ShardWriter

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}


def _image_folder(root: str) -> tuple[list[tuple[str, int]], list[str]]:
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class folders (an ImageFolder tree has one folder per class)")
    items = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames.sort()
            for f in sorted(filenames):
                if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                    items.append((os.path.join(dirpath, f), label))
    if not items:
        raise ValueError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the class folders")
    return items, classes


def _records(path: str, text_field: str, label_field: str | None) -> Iterator[tuple[int, str, Any]]:
    """(line number, text, label) of each record of a CSV or JSONL file."""
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for field in (text_field, label_field):
                if field and field not in (reader.fieldnames or []):
                    raise ValueError(f"{path}: no column {field!r} (columns: {reader.fieldnames})")
            for row in reader:
                yield reader.line_num, row[text_field], row[label_field] if label_field else None
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON object: {e}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{n}: not a JSON object per line (JSON Lines), got a "
                                 f"{type(record).__name__}")
            if text_field not in record or (label_field and label_field not in record):
                raise ValueError(f"{path}:{n}: a record needs the fields {text_field!r}"
                                 + (f" and {label_field!r}" if label_field else ""))
            if not isinstance(record[text_field], str):
                raise ValueError(f"{path}:{n}: {text_field!r} is a {type(record[text_field]).__name__}, not text")
            yield n, record[text_field], record[label_field] if label_field else None


def _label_ids(labels: list) -> tuple[list[int], list[str] | None]:
    """Integer labels as they are; any other labels numbered in sorted order."""
    try:
        ids = [int(x) for x in labels]
        if all(str(i) == str(x).strip() for i, x in zip(ids, labels)):
            return ids, None
    except (TypeError, ValueError):
        pass
    classes = sorted({str(x) for x in labels})
    index = {c: i for i, c in enumerate(classes)}
    return [index[str(x)] for x in labels], classes


def _with_restart_markers(path: str, data: bytes, every: int, kept: list[tuple[str, str]]) -> bytes:
    """The JPEG rewritten losslessly with restart markers; a file that cannot be (damaged,
    not in fact a JPEG) goes in as it is, and into `kept` with the reason."""
    from ..errors import DecodeError
    from ..vision import add_restart_markers

    try:
        return add_restart_markers(data, every_mcus=every)
    except DecodeError as e:
        kept.append((path, e.reason))
        return data


def convert(source: str, pattern: str, *, maxcount: int = 10_000, maxsize: float = 1e9,
            text_field: str = "text", label_field: str | None = "label", shuffle: bool = True,
            seed: int = 0, progress: bool = True, restart_blocks: int = 0) -> dict[str, Any]:
    """Writes `source` into shards named `pattern % n`; returns a summary. With
    `restart_blocks`, an ImageFolder's JPEGs get a restart marker every that many MCUs
    (losslessly: see fastloader.vision.add_restart_markers)."""
    from tqdm import tqdm

    if isinstance(restart_blocks, bool) or not isinstance(restart_blocks, int) or not 0 <= restart_blocks <= 65535:
        raise ValueError(f"restart_blocks must be an int in 0..65535, got {restart_blocks!r}")
    not_rewritten: list[tuple[str, str]] = []

    start = time.perf_counter()
    if os.path.isdir(source):
        kind = "imagefolder"
        items, classes = _image_folder(source)
    elif os.path.isfile(source) and source.lower().endswith((".csv", ".jsonl", ".json", ".ndjson")):
        kind = "text"
        try:
            rows = list(_records(source, text_field, label_field or None))
        except UnicodeDecodeError as e:
            raise ValueError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        ids, classes = _label_ids([r[2] for r in rows]) if label_field else ([None] * len(rows), None)
        items = [(text, label) for (_, text, _), label in zip(rows, ids)]
    elif not os.path.exists(source):
        raise ValueError(f"{source}: no such file or directory")
    else:
        raise ValueError(f"{source}: give an ImageFolder directory or a .csv / .jsonl file")
    if not items:
        raise ValueError(f"{source}: no records to convert")
    order = np.random.default_rng(seed).permutation(len(items)) if shuffle else np.arange(len(items))
    width = max(8, len(str(len(items))))
    nbytes = 0
    with ShardWriter(pattern, maxcount=maxcount, maxsize=maxsize) as sink:
        for n, i in enumerate(tqdm(order.tolist(), desc="convert", unit="sample", disable=not progress,
                                   file=sys.stderr)):
            value, label = items[i]
            sample: dict[str, Any] = {"__key__": f"{n:0{width}d}"}
            if kind == "imagefolder":
                ext = os.path.splitext(value)[1].lower().lstrip(".")
                with open(value, "rb") as f:
                    data = f.read()
                if restart_blocks and ext in ("jpg", "jpeg"):
                    data = _with_restart_markers(value, data, restart_blocks, not_rewritten)
                sample["jpg" if ext == "jpeg" else ext] = data
            else:
                sample["txt"] = value
            if label is not None:
                sample["cls"] = label
            sink.write(sample)
            nbytes += sum(len(v) if isinstance(v, (bytes, str)) else 0 for v in sample.values())
    if classes is not None:
        with open(os.path.join(os.path.dirname(pattern) or ".", "classes.json"), "w") as f:
            json.dump(classes, f)
    seconds = time.perf_counter() - start
    return {"source": source, "kind": kind, "samples": len(items), "shards": sink.shards,
            "classes": classes, "data_bytes": nbytes, "seconds": seconds, "not_rewritten": not_rewritten}
