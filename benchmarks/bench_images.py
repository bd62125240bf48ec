"""Image pipeline benchmark: PIL/torchvision recipe vs fastloader vs bare libjpeg-turbo.

    python benchmarks/bench_images.py [--n 2000] [--cores 1,2] [--repeats 3]

Same as ``fastloader bench images``; see fastloader/bench/images.py for what is measured.
"""
from fastloader.bench.images import main

if __name__ == "__main__":
    main()
