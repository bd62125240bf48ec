"""The ``fastloader`` command: ``fastloader bench | convert | inspect``."""
from __future__ import annotations

import argparse
import json
import sys

SUITES = ["images", "loader", "shards", "text"]


def _bench(args) -> int:
    if args.suite == "loader":
        from .bench import loader

        loader.run(args.repeats, workers=tuple(int(w) for w in args.workers.split(",")))
    elif args.suite == "shards":
        from .bench import shards

        shards.run(args.repeats, workers=tuple(int(w) for w in args.workers.split(",")))
    elif args.suite == "text":
        from .bench import text

        text.run(args.repeats, threads=tuple(int(c) for c in args.cores.split(",")))
    else:
        from .bench import images

        images.run(args.n, tuple(int(c) for c in args.cores.split(",")), args.repeats,
                   restart_blocks=args.restart_blocks)
    return 0


def _convert(args) -> int:
    from .shards.convert import convert

    try:
        summary = convert(args.source, args.output, maxcount=args.maxcount, maxsize=args.maxsize,
                          text_field=args.text_field, label_field=args.label_field or None,
                          shuffle=not args.no_shuffle, seed=args.seed, progress=not args.quiet,
                          restart_blocks=args.restart_blocks)
    except (ValueError, OSError) as e:
        print(f"fastloader convert: {e}", file=sys.stderr)
        return 2
    n, shards, s = summary["samples"], summary["shards"], summary["seconds"]
    print(f"wrote {n} samples ({summary['data_bytes'] / 1e6:.1f} MB) into {len(shards)} shards in {s:.1f} s "
          f"({n / max(s, 1e-9):.0f} samples/s): {shards[0]} .. {shards[-1]}")
    if summary["not_rewritten"]:
        path, reason = summary["not_rewritten"][0]
        print(f"{len(summary['not_rewritten'])} JPEGs went in as they were, without restart markers, "
              f"since they could not be rewritten: {path}: {reason}" +
              (" (and more)" if len(summary["not_rewritten"]) > 1 else ""))
    if summary["classes"] is not None:
        print(f"{len(summary['classes'])} classes (ids in sorted order, saved as classes.json beside the shards)")
    return 0


def _inspect(args) -> int:
    from .shards.inspect import inspect, report

    if not all(args.shards):
        print("fastloader inspect: an empty shard URL", file=sys.stderr)
        return 2
    if not args.allow_pipe and any(u.startswith("pipe:") for u in args.shards):
        print("fastloader inspect: pipe: URLs run a shell command; pass --allow-pipe to allow them",
              file=sys.stderr)
        return 2
    try:
        results = inspect(args.shards, allow_pipe=args.allow_pipe)
    except ValueError as e:
        print(f"fastloader inspect: {e}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=1) if args.json else report(results))
    return 1 if any(r["damage"] for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastloader", description="fastloader: fast data loading for PyTorch")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run a benchmark against its baseline (default: images)")
    bench.add_argument("suite", nargs="?", default="images", choices=SUITES,
                       help="images: decode + RandomResizedCrop + flip + normalize vs PIL and bare "
                       "decode; loader: fastloader.DataLoader vs torch's DataLoader; shards: "
                       "fastloader.WebDataset vs the webdataset library; text: WordPieceTokenizer vs HF "
                       "BertTokenizerFast and the padding of the batching options")
    bench.add_argument("--n", type=int, default=2000, help="images in the built-in dataset (default 2000)")
    bench.add_argument("--cores", default="1,2", help="images / text: comma-separated core (thread) counts "
                       "(default 1,2)")
    bench.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is shown "
                       "(default 3)")
    bench.add_argument("--restart-blocks", type=int, default=0, metavar="K",
                       help="images: the same images with a restart marker every K MCUs, which a crop "
                       "skips to (default 0: none, as most JPEGs)")
    bench.add_argument("--workers", default=None,
                       help="loader / shards: comma-separated num_workers (default 0,2 / 1,2; shards "
                       "always adds its in-process row)")
    convert = commands.add_parser("convert", help="write an ImageFolder tree or a CSV/JSONL file as shards")
    convert.add_argument("source", help="an ImageFolder directory (one folder per class) or a .csv / .jsonl file")
    convert.add_argument("output", help="shard name pattern, e.g. out/train-%%06d.tar")
    convert.add_argument("--maxcount", type=int, default=10_000, help="samples per shard (default 10000)")
    convert.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard (default 1e9)")
    convert.add_argument("--text-field", default="text", help="CSV/JSONL: the text column (default text)")
    convert.add_argument("--label-field", default="label",
                         help="CSV/JSONL: the label column ('' for none; default label)")
    convert.add_argument("--no-shuffle", action="store_true", help="keep the source order (default: shuffled)")
    convert.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.add_argument("--restart-blocks", type=int, default=0, metavar="K",
                         help="rewrite JPEGs losslessly with a restart marker every K MCUs, which "
                         "random crops decode faster (default 0: as they are)")
    insp = commands.add_parser("inspect", help="counts, keys, extensions, sizes and damage of shards")
    insp.add_argument("shards", nargs="+", help="shard URLs, brace patterns or globs")
    insp.add_argument("--json", action="store_true", help="print the full report as JSON")
    insp.add_argument("--allow-pipe", action="store_true", help="run pipe: URLs' shell commands")
    args = parser.parse_args(argv)
    if args.command == "bench":
        if args.workers is None:
            args.workers = "1,2" if args.suite == "shards" else "0,2"
        return _bench(args)
    if args.command == "convert":
        return _convert(args)
    return _inspect(args)


if __name__ == "__main__":
    sys.exit(main())
