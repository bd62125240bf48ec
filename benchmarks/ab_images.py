"""Two (or more) builds of fastloader timed in turn on row (b) of bench_images.py.

A change worth a few percent is lost in this machine's drift between whole benchmark
runs (the PIL recipe alone has measured 800-900 images/s per core on different runs).
Timing each build in a fresh process, one after the other, round after round, shows it.

    python benchmarks/ab_images.py --save /tmp/before     # copy the current build aside
    ... change the code, rebuild (python setup.py build_ext --inplace) ...
    python benchmarks/ab_images.py /tmp/before .          # before vs the working tree

A build is a directory holding a `fastloader` package with its compiled `_C` ("." is the
checkout). Prints each round's rates, the medians, and each build's median ratio to the
first one's over the rounds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys

def time_pipeline(n: int, passes: int, threads: int, restart_blocks: int = 0) -> float:
    """Images/s of the (b) pipeline over the benchmark set in this process: the median of
    `passes` timed passes."""
    from fastloader.bench.datasets import imagenet_like
    from fastloader.bench.images import run_fastloader

    images = [p.read_bytes() for p in imagenet_like(n, restart_blocks=restart_blocks)]
    return statistics.median(run_fastloader(images, threads) for _ in range(passes))


def run_build(build: str, args: argparse.Namespace) -> float:
    path = os.path.abspath(build)
    child = [sys.executable, os.path.abspath(__file__), "--child", path, "--n", str(args.n),
             "--passes", str(args.passes), "--threads", str(args.threads), "--restart-blocks", str(args.restart_blocks)]
    env = dict(os.environ, PYTHONPATH=path + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(child, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"build {build}: the timing run failed:\n{out.stderr.strip()}")
    return float(out.stdout.split()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="*", help="directories holding a built fastloader package")
    parser.add_argument("--save", metavar="DIR", help="copy the current build (package and _C) to DIR")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000, help="images in the benchmark set")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the set per process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--restart-blocks", type=int, default=0, metavar="K",
                        help="the benchmark images with a restart marker every K MCUs")
    parser.add_argument("--child", metavar="BUILD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one timing, in the build given
        import fastloader

        if not os.path.abspath(fastloader.__file__).startswith(args.child + os.sep):
            sys.exit(f"imported {fastloader.__file__}, not the build in {args.child}")
        print(f"{time_pipeline(args.n, args.passes, args.threads, args.restart_blocks):.1f}")
        return
    if args.save:
        import fastloader

        target = os.path.join(args.save, "fastloader")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.dirname(fastloader.__file__), target,
                        ignore=shutil.ignore_patterns("__pycache__"))
        print(f"saved {os.path.dirname(fastloader.__file__)} to {target}")
        return
    if len(args.builds) < 2:
        parser.error("give two or more builds to compare (or --save DIR)")
    for b in args.builds:
        if not os.path.isdir(os.path.join(b, "fastloader")):
            parser.error(f"{b} holds no fastloader package")

    rates: dict[str, list[float]] = {b: [] for b in args.builds}
    print(f"(b) pipeline, {args.threads} thread(s), median of {args.passes} passes over {args.n} images; images/s")
    for r in range(args.rounds):
        row = [run_build(b, args) for b in args.builds]
        for b, v in zip(args.builds, row):
            rates[b].append(v)
        print(f"round {r + 1}: " + "  ".join(f"{v:8.0f}" for v in row))
    first = args.builds[0]
    for b in args.builds:
        ratio = statistics.median(v / f for v, f in zip(rates[b], rates[first]))
        print(f"{b:30s} median {statistics.median(rates[b]):8.0f}  vs {first}: {ratio:.3f}x")


if __name__ == "__main__":
    main()
