"""The ``fastloader`` command: ``fastloader bench [images|loader] [options]``."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastloader", description="fastloader: fast data loading for PyTorch")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run a benchmark against its baseline (default: images)")
    bench.add_argument("suite", nargs="?", default="images", choices=["images", "loader"],
                       help="images: decode + RandomResizedCrop + flip + normalize vs PIL and bare "
                       "decode; loader: fastloader.DataLoader vs torch's DataLoader")
    bench.add_argument("--n", type=int, default=2000, help="images in the built-in dataset (default 2000)")
    bench.add_argument("--cores", default="1,2", help="comma-separated core counts (default 1,2)")
    bench.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is shown")
    bench.add_argument("--workers", default="0,2", help="loader: comma-separated num_workers (default 0,2)")
    args = parser.parse_args(argv)
    if args.command == "bench" and args.suite == "loader":
        from .bench import loader

        loader.run(args.repeats, workers=tuple(int(w) for w in args.workers.split(",")))
    elif args.command == "bench":
        from .bench import images

        images.run(args.n, tuple(int(c) for c in args.cores.split(",")), args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
