"""Text benchmark: HF tokenizers vs fastloader's WordPieceTokenizer in one run.

    python benchmarks/bench_text.py [--repeats 3] [--threads 1,2] [--corpora tweets,bbc]

Same as ``fastloader bench text``; see fastloader/bench/text.py for what is measured.
"""
from fastloader.bench.text import main

if __name__ == "__main__":
    main()
