"""PadCollator, PackCollator and LengthGroupedSampler."""
from __future__ import annotations

import pytest
import torch

from fastloader.text import LengthGroupedSampler, PackCollator, PadCollator, WordPieceTokenizer

from _corpora import MODEL_DIR, tweet_labels, tweets


@pytest.fixture(scope="module")
def samples():
    tok = WordPieceTokenizer.from_pretrained(MODEL_DIR, max_length=128, truncation=True)
    texts, labels = tweets()[:4096], tweet_labels()[:4096]
    enc = tok.encode_batch(texts)
    ids, offsets = enc["input_ids"], enc["offsets"].tolist()
    return [{"input_ids": ids[a:b], "token_type_ids": torch.zeros(b - a, dtype=torch.int64),
             "label": int(lab == "positive")} for a, b, lab in zip(offsets, offsets[1:], labels)]


def _reference_ffd(lengths, capacity):
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: ties in input order
        for r, left in enumerate(room):
            if left >= lengths[i]:
                room[r] -= lengths[i]
                rows.append((i, r))
                break
        else:
            room.append(capacity - lengths[i])
            rows.append((i, len(room) - 1))
    return [r for _, r in sorted(rows)]


def test_pad_to_longest(samples):
    batch = samples[:32]
    out = PadCollator(pad_token_id=0)(batch)
    longest = max(len(s["input_ids"]) for s in batch)
    assert out["input_ids"].shape == (32, longest) and out["token_type_ids"].shape == (32, longest)
    for i, s in enumerate(batch):
        n = len(s["input_ids"])
        assert torch.equal(out["input_ids"][i, :n], s["input_ids"]) and not out["input_ids"][i, n:].any()
        assert out["attention_mask"][i].sum() == n
    assert out["label"].tolist() == [s["label"] for s in batch]


def test_buckets_give_few_shapes(samples):
    collate = PadCollator(buckets=(32, 64, 128))
    shapes = {collate(samples[i:i + 16])["input_ids"].shape[1] for i in range(0, len(samples), 16)}
    assert shapes <= {32, 64, 128} and len(shapes) >= 2
    with pytest.raises(ValueError, match="largest bucket"):
        PadCollator(buckets=(8,))(samples[:4])


def test_token_labels_are_padded_with_ignore_index():
    batch = [{"input_ids": [5, 6, 7], "labels": [1, 2, 3]}, {"input_ids": [8], "labels": [4]}]
    out = PadCollator()(batch)
    assert out["labels"].tolist() == [[1, 2, 3], [4, -100, -100]]


def test_pack_keeps_every_token_once_with_restarting_positions(samples):
    batch = samples[:256]
    collate = PackCollator(max_tokens=128)
    out = collate(batch)
    lengths = [len(s["input_ids"]) for s in batch]
    rows = out["input_ids"].shape[0]
    assert out["input_ids"].shape == (rows, 128) and rows == max(_reference_ffd(lengths, 128)) + 1
    seq = out["sequence_ids"]
    for packed, i in enumerate(out["sequence_index"].tolist()):
        where = seq == packed
        assert int(where.sum()) == lengths[i]
        assert torch.equal(out["input_ids"][where], batch[i]["input_ids"])
        assert torch.equal(out["position_ids"][where], torch.arange(lengths[i]))
    assert out["cu_seqlens"].tolist()[-1] == sum(lengths) and out["cu_seqlens"].dtype == torch.int32
    packed_lengths = [lengths[i] for i in out["sequence_index"].tolist()]
    assert out["cu_seqlens"].diff().tolist() == packed_lengths and out["max_seqlen"] == max(lengths)
    assert out["label"].tolist() == [batch[i]["label"] for i in out["sequence_index"].tolist()]
    assert torch.equal(out["token_type_ids"], torch.zeros_like(out["input_ids"]))
    assert collate.padding_fraction == pytest.approx(1 - sum(lengths) / (rows * 128))


def test_pack_rows_match_first_fit_decreasing():
    from fastloader import _C

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = torch.randint(0, 50, (int(torch.randint(1, 300, (1,), generator=g)),), generator=g)
        assert _C.pack_first_fit_decreasing(lengths, 64).tolist() == _reference_ffd(lengths.tolist(), 64)


def test_pack_token_labels_and_errors():
    out = PackCollator(max_tokens=4)([{"input_ids": [1, 2], "labels": [7, 8]}, {"input_ids": [3], "labels": [9]}])
    assert out["labels"].tolist() == [[7, 8, 9, -100]] and out["input_ids"].tolist() == [[1, 2, 3, 0]]
    with pytest.raises(ValueError, match="more than max_tokens=4"):
        PackCollator(max_tokens=4)([{"input_ids": [1] * 5}])
    with pytest.raises(TypeError, match="'input_ids'"):
        PackCollator(max_tokens=4)([[1, 2]])


def test_packing_pads_the_tweets_under_five_percent(samples):
    collate = PackCollator(max_tokens=128)
    for i in range(0, len(samples), 512):
        collate(samples[i:i + 512])
    assert collate.total_padding_fraction < 0.05


def test_length_grouped_sampler(samples):
    lengths = [len(s["input_ids"]) for s in samples]
    sampler = LengthGroupedSampler(lengths, batch_size=32, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(samples)))
    assert order == list(LengthGroupedSampler(lengths, batch_size=32, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != order
    assert lengths[order[0]] == max(lengths)  # the longest batch first
    grouped = PadCollator()
    for i in range(0, len(order), 32):
        grouped([samples[j] for j in order[i:i + 32]])
    shuffled = PadCollator()
    perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0)).tolist()
    for i in range(0, len(perm), 32):
        shuffled([samples[j] for j in perm[i:i + 32]])
    assert grouped.total_padding_fraction < shuffled.total_padding_fraction / 3


def test_text_benchmark_checks_identity_and_reports_padding(capsys):
    from fastloader.bench import text as bench

    rows = bench.run(repeats=1, threads=(1,), corpora=("bbc",))
    out = capsys.readouterr().out
    assert rows[0]["identical"] and rows[0]["ratio"] > 0
    assert "packed into 128" in out and "buckets 32/64/128" in out


def test_sampler_keeps_batches_aligned_with_a_short_last_one():
    lengths = list(range(70))
    order = list(LengthGroupedSampler(lengths, batch_size=32, window=64, seed=4))
    batches = [order[i:i + 32] for i in range(0, 70, 32)]
    assert [len(b) for b in batches] == [32, 32, 6]  # the short batch last: the others stay aligned
    for b in batches:  # each a slice of a window sorted longest first
        assert [lengths[j] for j in b] == sorted((lengths[j] for j in b), reverse=True)
    a, b = batches[0], batches[1]  # the two halves of one sorted window
    assert min(lengths[j] for j in a) > max(lengths[j] for j in b) or min(lengths[j] for j in b) > max(lengths[j] for j in a)


def test_pack_keeps_value_types():
    out = PackCollator(max_tokens=4)([{"input_ids": [1, 2], "id": "a", "labels": [0.5, 2.5]},
                                      {"input_ids": [3], "id": "b", "labels": [1.5]}])
    assert out["id"] == ["a", "b"] and out["labels"].dtype == torch.float32
    assert out["labels"][0, :3].tolist() == [0.5, 2.5, 1.5]


def test_samples_carrying_the_collators_own_outputs():
    """A tokenizer's sample carries its own attention_mask (all ones): the collators
    compute theirs and keep it; float per-token labels keep their dtype when padded."""
    samples = [{"input_ids": torch.tensor([1, 2, 3]), "attention_mask": torch.tensor([1, 1, 1]),
                "position_ids": torch.tensor([0, 1, 2]), "labels": [0.25, 0.5, 0.75]},
               {"input_ids": torch.tensor([4, 5]), "attention_mask": torch.tensor([1, 1]),
                "position_ids": torch.tensor([0, 1]), "labels": [1.0, 2.0]}]
    packed = PackCollator(max_tokens=8)(samples)
    assert packed["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 0, 0]]
    padded = PadCollator()([{k: v for k, v in s.items() if k != "position_ids"} for s in samples])
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert padded["labels"].dtype == torch.float32
    assert padded["labels"].tolist() == [[0.25, 0.5, 0.75], [1.0, 2.0, -100.0]]


def test_small_integer_labels_are_padded_as_int64():
    """-100 does not fit uint8 (it wrapped to 156) and losses take int64."""
    samples = [{"input_ids": [1, 2, 3], "labels": torch.tensor([1, 2, 3], dtype=torch.uint8),
                "token_type_ids": torch.tensor([0, 0, 1], dtype=torch.int32)},
               {"input_ids": [4], "labels": torch.tensor([5], dtype=torch.uint8),
                "token_type_ids": torch.tensor([0], dtype=torch.int32)}]
    padded = PadCollator()(samples)
    assert padded["labels"].dtype == torch.int64 and padded["labels"].tolist() == [[1, 2, 3], [5, -100, -100]]
    assert padded["token_type_ids"].dtype == torch.int64
    packed = PackCollator(max_tokens=6)(samples)
    assert packed["labels"].dtype == torch.int64 and packed["labels"].tolist() == [[1, 2, 3, 5, -100, -100]]
