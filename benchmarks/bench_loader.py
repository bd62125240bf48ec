"""Loader benchmark: torch.utils.data.DataLoader vs fastloader.DataLoader in one run.

    python benchmarks/bench_loader.py [--repeats 3] [--datasets tensors,images] [--workers 0,2]

Same as ``fastloader bench loader``; see fastloader/bench/loader.py for what is measured.
"""
from fastloader.bench.loader import main

if __name__ == "__main__":
    main()
