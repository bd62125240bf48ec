"""Shard reading benchmark: the webdataset library vs fastloader.WebDataset in one run.

    python benchmarks/bench_shards.py [--repeats 3] [--sets small,large] [--workers 1,2]

Same as ``fastloader bench shards``; see fastloader/bench/shards.py for what is measured.
"""
from fastloader.bench.shards import main

if __name__ == "__main__":
    main()
