"""WordPieceTokenizer against HF's BertTokenizerFast (same vocab, same options) on real text."""
from __future__ import annotations

import os

import pytest
import torch

from fastloader.text import WordPieceTokenizer

from _corpora import MODEL_DIR, UNICODE_STRESS, bbc_news, tweets, with_warnings_quiet


@with_warnings_quiet
def _hf(**options):
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(MODEL_DIR, **options)


@pytest.fixture(scope="module")
def corpora():
    return {"tweets": tweets(), "bbc": bbc_news(), "stress": UNICODE_STRESS}


def _ragged(out) -> list[list[int]]:
    ids, offsets = out["input_ids"].tolist(), out["offsets"].tolist()
    return [ids[a:b] for a, b in zip(offsets, offsets[1:])]


def test_corpora_are_the_real_ones(corpora):
    assert len(corpora["tweets"]) > 38_000 and len(corpora["bbc"]) == 2225


@pytest.mark.parametrize("corpus", ["tweets", "bbc", "stress"])
def test_same_ids_as_hf_on_real_text(corpora, corpus):
    texts = corpora[corpus]
    ours = WordPieceTokenizer.from_pretrained(MODEL_DIR).encode_batch(texts)
    ref = with_warnings_quiet(_hf())(texts)
    assert _ragged(ours) == ref["input_ids"]
    types = ours["token_type_ids"].tolist()
    assert sum(map(len, ref["token_type_ids"])) == len(types) and not any(types)
    assert ours["attention_mask"].sum() == sum(map(sum, ref["attention_mask"]))


@pytest.mark.parametrize("lower,strip,chinese", [(False, False, True), (False, True, False), (True, False, True),
                                                 (True, None, False)])
def test_same_ids_as_hf_with_other_options(corpora, lower, strip, chinese):
    texts = UNICODE_STRESS + corpora["tweets"][:3000]
    ours = WordPieceTokenizer.from_pretrained(MODEL_DIR, do_lower_case=lower, strip_accents=strip,
                                              tokenize_chinese_chars=chinese)
    ref = _hf(do_lower_case=lower, strip_accents=strip, tokenize_chinese_chars=chinese)
    assert _ragged(ours.encode_batch(texts)) == with_warnings_quiet(ref)(texts)["input_ids"]


@pytest.mark.parametrize("truncation", [True, "longest_first", "only_second"])
@pytest.mark.parametrize("max_length", [8, 17, 64])
def test_pairs_truncation_and_padding_as_hf(corpora, truncation, max_length):
    texts = corpora["tweets"][:400]
    pairs = corpora["tweets"][400:800]
    ours = WordPieceTokenizer.from_pretrained(MODEL_DIR)
    if truncation == "only_second":  # both refuse a pair whose second text is too short to cut: keep the others
        plain = WordPieceTokenizer.from_pretrained(MODEL_DIR, add_special_tokens=False)
        n1 = [len(x) for x in _ragged(plain.encode_batch(texts))]
        n2 = [len(x) for x in _ragged(plain.encode_batch(pairs))]
        keep = [i for i in range(len(texts)) if n1[i] + n2[i] <= max_length - 3 or n2[i] > n1[i] + n2[i] - (max_length - 3)]
        assert keep
        if len(keep) < len(texts):
            with pytest.raises(ValueError, match="too short"):
                ours.encode_batch(texts, pairs, truncation=truncation, max_length=max_length)
        texts, pairs = [texts[i] for i in keep], [pairs[i] for i in keep]
    ref = _hf()
    for padding in ("longest", "max_length"):
        got = ours.encode_batch(texts, pairs, truncation=truncation, max_length=max_length, padding=padding)
        want = with_warnings_quiet(ref)(texts, pairs, truncation=truncation, max_length=max_length, padding=padding,
                                        return_tensors="pt")
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert torch.equal(got[key], want[key]), key


def test_single_texts_truncate_and_encode_as_hf(corpora):
    ours = WordPieceTokenizer.from_pretrained(MODEL_DIR, max_length=32, truncation=True)
    ref = _hf()
    for text in corpora["bbc"][:20] + UNICODE_STRESS:
        got = ours.encode(text)
        want = with_warnings_quiet(ref)(text, truncation=True, max_length=32)
        assert got["input_ids"].tolist() == want["input_ids"]
        assert got["token_type_ids"].tolist() == want["token_type_ids"]


def test_loads_vocab_txt_tokenizer_json_and_directory(corpora):
    texts = UNICODE_STRESS + corpora["tweets"][:500]
    ways = [MODEL_DIR, os.path.join(MODEL_DIR, "tokenizer.json"), os.path.join(MODEL_DIR, "vocab.txt")]
    results = [_ragged(WordPieceTokenizer.from_pretrained(p).encode_batch(texts)) for p in ways]
    assert results[0] == results[1] == results[2]


def test_threads_give_the_same_ids(corpora):
    texts = corpora["bbc"][:300]
    one = WordPieceTokenizer.from_pretrained(MODEL_DIR, num_threads=1).encode_batch(texts)
    two = WordPieceTokenizer.from_pretrained(MODEL_DIR, num_threads=2).encode_batch(texts)
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_bad_input_names_the_item_or_file(tmp_path):
    tok = WordPieceTokenizer.from_pretrained(MODEL_DIR)
    with pytest.raises(TypeError, match="item 1 is a int"):
        tok.encode_batch(["fine", 3])
    with pytest.raises(ValueError, match="item 2: invalid UTF-8 at byte 1"):
        tok.encode_batch(["ok", b"ok", b"a\xff"])
    assert tok.encode_batch([b"caf\xc3\xa9"])["input_ids"].tolist() == tok.encode_batch(["café"])["input_ids"].tolist()
    with pytest.raises(ValueError, match="item 0: not encodable as UTF-8"):
        tok.encode_batch(["\udcff"])
    with pytest.raises(ValueError, match="missing.txt: cannot read the vocab"):
        WordPieceTokenizer.from_pretrained(tmp_path / "missing.txt")
    bad = tmp_path / "vocab.txt"
    bad.write_bytes(b"[PAD]\n[UNK]\n\xff\xfe\n")
    with pytest.raises(ValueError, match="vocab.txt: line 3: not UTF-8"):
        WordPieceTokenizer.from_pretrained(bad)
    bad.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"vocab.txt: the vocab has no \[CLS\], \[SEP\]"):
        WordPieceTokenizer.from_pretrained(bad)
    js = tmp_path / "tokenizer.json"
    js.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not a readable tokenizer.json"):
        WordPieceTokenizer.from_pretrained(js)
    js.write_text('{"model": {"type": "BPE", "vocab": {}}}')
    with pytest.raises(ValueError, match="not a WordPiece tokenizer"):
        WordPieceTokenizer.from_pretrained(js)
    with pytest.raises(ValueError, match="truncation must be"):
        tok.encode_batch(["x"], truncation="sideways")


def test_padding_narrower_than_an_item_names_the_item():
    tok = WordPieceTokenizer.from_pretrained(MODEL_DIR)
    with pytest.raises(ValueError, match="item 1 has 5 tokens, more than the padded length 4"):
        tok.encode_batch(["ok", "a first text"], padding="max_length", max_length=4)
    # max_length=1 leaves no room for [CLS] and [SEP]: HF keeps the items whole, and cannot
    # make them one tensor either
    with pytest.raises(ValueError, match="item 0 has 3 tokens, more than the padded length 1"):
        tok.encode_batch(["ok", "a first text"], padding="max_length", max_length=1, truncation=True)
    with pytest.raises(ValueError, match="Unable to create tensor"):
        with_warnings_quiet(_hf())(["ok", "a first text"], padding="max_length", max_length=1, truncation=True,
                                   return_tensors="pt")


def test_every_code_point_between_letters_as_hf():
    texts = [f"a{chr(cp)}b" for cp in range(1, 0x30000) if not 0xD800 <= cp <= 0xDFFF]
    texts += [f"A{chr(cp)}\u0301X" for cp in range(0x80, 0x3000)]  # next to a combining mark
    for options in ({}, {"do_lower_case": False}):
        ours = _ragged(WordPieceTokenizer.from_pretrained(MODEL_DIR, **options).encode_batch(texts))
        ref = with_warnings_quiet(_hf(**options))(texts)["input_ids"]
        bad = [(hex(ord(t[1])), a, b) for t, a, b in zip(texts, ours, ref) if a != b]
        assert not bad, bad[:10]


def test_special_tokens_in_the_text_as_hf():
    texts = ["hello [MASK] world", "[CLS] x [SEP]", "a[SEP]b[PAD]", "[mask] is not special", "[UNK][UNK]",
             "[MASK", "x [SEP][SEP] y"]
    ours = WordPieceTokenizer.from_pretrained(MODEL_DIR)
    assert _ragged(ours.encode_batch(texts)) == with_warnings_quiet(_hf())(texts)["input_ids"]


def test_vocab_quirks_as_hf(tmp_path):
    from tokenizers import BertWordPieceTokenizer  # HF's own vocab.txt reader

    base = open(os.path.join(MODEL_DIR, "vocab.txt"), encoding="utf-8").read().split("\n")[:-1]
    dup = tmp_path / "dup.txt"
    dup.write_text("\n".join(base[:2000] + ["quick", "the"] + base[2000:]) + "\n", encoding="utf-8")
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(("\r\n".join(base) + "\r\n").encode("utf-8"))
    texts = ["the quick brown fox", "quick the"]
    for path in (dup, crlf):
        ours = _ragged(WordPieceTokenizer.from_pretrained(path).encode_batch(texts))
        ref = BertWordPieceTokenizer(str(path), lowercase=True)
        assert ours == [e.ids for e in ref.encode_batch(texts)], path


@pytest.mark.parametrize("truncation", [True, "only_first", "only_second"])
@pytest.mark.parametrize("max_length", [0, 1, 2, 3, 4])
def test_tiny_max_lengths_as_hf(truncation, max_length):
    ours, ref = WordPieceTokenizer.from_pretrained(MODEL_DIR), _hf()
    for pair in (None, "second text here"):
        if pair is None and truncation == "only_second":
            continue

        def outcome(fn):
            try:
                return fn()
            except Exception:  # both must refuse the same requests
                return "refused"

        got = outcome(lambda: ours.encode("a first text", pair, truncation=truncation, max_length=max_length)
                      ["input_ids"].tolist())
        want = outcome(lambda: with_warnings_quiet(ref)("a first text", pair, truncation=truncation,
                                                        max_length=max_length)["input_ids"])
        assert got == want, (pair, got, want)


def test_truncation_without_max_length_uses_the_model_length(corpora):
    text = " ".join(corpora["bbc"][:3])
    got = WordPieceTokenizer.from_pretrained(MODEL_DIR).encode(text, truncation=True)["input_ids"].tolist()
    assert got == with_warnings_quiet(_hf())(text, truncation=True)["input_ids"] and len(got) == 512


def test_trailing_whitespace_on_vocab_lines_is_trimmed_as_hf(tmp_path):
    from tokenizers import BertWordPieceTokenizer

    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello \nworld\t\n\u3000\nend\u00a0\n", encoding="utf-8")
    texts = ["hello world", "end"]
    ours = _ragged(WordPieceTokenizer.from_pretrained(path).encode_batch(texts))
    assert ours == [e.ids for e in BertWordPieceTokenizer(str(path), lowercase=True).encode_batch(texts)]
    bom = tmp_path / "bom" / "vocab.txt"
    bom.parent.mkdir()
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with pytest.raises(ValueError, match=r"vocab\.txt: the vocab has no \[PAD\] token .*byte-order mark"):
        WordPieceTokenizer.from_pretrained(bom)


@pytest.mark.filterwarnings("ignore")
def test_max_length_without_truncation_and_max_length_padding_as_hf(corpora):
    texts = corpora["tweets"][:50]
    ours, ref = WordPieceTokenizer.from_pretrained(MODEL_DIR), _hf()
    # a max_length without padding truncates (longest_first); with padding it does not
    assert _ragged(ours.encode_batch(texts, max_length=9)) == ref(texts, max_length=9)["input_ids"]
    short = ["a b", "c"]
    got = ours.encode_batch(short, padding="max_length", max_length=6)["input_ids"].tolist()
    assert got == ref(short, padding="max_length", max_length=6)["input_ids"]
    assert ours.encode_batch(["hi"], padding="max_length")["input_ids"].tolist() == \
        ref(["hi"], padding="max_length")["input_ids"]  # to the model's 512
    assert ours.encode_batch(short, padding="do_not_pad")["input_ids"].tolist() == sum(ref(short)["input_ids"], [])


@pytest.mark.filterwarnings("ignore")
def test_left_padding_and_truncation_as_hf(corpora, tmp_path):
    import json
    import shutil

    model = tmp_path / "left"
    shutil.copytree(MODEL_DIR, model)
    conf_path = model / "tokenizer_config.json"
    conf = json.loads(conf_path.read_text())
    conf.update(padding_side="left", truncation_side="left")
    conf_path.write_text(json.dumps(conf))
    from transformers import BertTokenizerFast

    ref = BertTokenizerFast.from_pretrained(str(model))
    ours = WordPieceTokenizer.from_pretrained(model)
    assert (ours.padding_side, ours.truncation_side) == ("left", "left")
    texts, pairs = corpora["tweets"][:200], corpora["tweets"][200:400]
    for kw in (dict(padding=True, truncation=True, max_length=12), dict(padding="max_length", max_length=40,
                                                                        truncation="longest_first")):
        got = ours.encode_batch(texts, pairs, **kw)
        want = ref(texts, pairs, return_tensors="pt", **kw)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert torch.equal(got[key], want[key]), (kw, key)


@pytest.mark.filterwarnings("ignore")
def test_added_tokens_past_the_vocab_as_hf(corpora, tmp_path):
    """A model saved after tokenizer.add_tokens / add_special_tokens: new ids past the
    vocab, matched in the normalized text (added words) or the raw text (special ones)."""
    from transformers import BertTokenizerFast

    hf = BertTokenizerFast.from_pretrained(MODEL_DIR)
    hf.add_tokens(["newword", "Ünïcode", "multi word"])
    hf.add_special_tokens({"additional_special_tokens": ["<ent>", "[E1]"]})
    hf.save_pretrained(tmp_path)
    ref = BertTokenizerFast.from_pretrained(str(tmp_path))
    texts = ["a NewWord here", "newwordnewword", "xnewwordy <ent>[E1]<ENT> multi  word", "UNICODE ünïcode!",
             "[E1]" * 50 + "[MASK] newword " * 30] + corpora["tweets"][:300]
    for source in (tmp_path, tmp_path / "tokenizer.json"):
        ours = WordPieceTokenizer.from_pretrained(source)
        assert _ragged(ours.encode_batch(texts)) == ref(texts)["input_ids"], source


def _slow_tokenizer_dir(path, files: dict) -> str:
    """A model directory as a slow tokenizer's save_pretrained leaves it: vocab.txt and
    JSON files, no tokenizer.json."""
    import json
    import shutil

    path.mkdir()
    shutil.copy(os.path.join(MODEL_DIR, "vocab.txt"), path / "vocab.txt")
    for name, content in files.items():
        (path / name).write_text(json.dumps(content), encoding="utf-8")
    return str(path)


@pytest.mark.filterwarnings("ignore")
def test_added_tokens_of_a_slow_tokenizer_directory_as_hf(corpora, tmp_path):
    """Without a tokenizer.json, added tokens come from tokenizer_config.json's
    added_tokens_decoder, else from added_tokens.json (special where a special token's
    name is theirs, else added words, matched in the normalized text)."""
    from transformers import BertTokenizerFast

    n = 30522  # the vocab's size
    added = {"newword": n, "multi word": n + 1, "<ent>": n + 2, "[E1]": n + 3, "<s>": n + 4}
    entry = {"lstrip": False, "rstrip": False, "single_word": False}
    decoder = {str(i): dict(entry, content=c, normalized=c == "newword", special=c != "newword")
               for c, i in added.items()}
    for i, c in ((0, "[PAD]"), (100, "[UNK]"), (101, "[CLS]"), (102, "[SEP]"), (103, "[MASK]")):
        decoder[str(i)] = dict(entry, content=c, normalized=False, special=True)
    config = {"do_lower_case": True, "tokenizer_class": "BertTokenizer"}
    layouts = {
        "added_tokens.json": {"added_tokens.json": added, "tokenizer_config.json": config},
        "special map": {"added_tokens.json": added, "tokenizer_config.json": config,
                        "special_tokens_map.json": {"bos_token": "<s>", "additional_special_tokens": ["<ent>"],
                                                    "extra_special_tokens": [{"content": "[E1]"}]}},
        "config extras": {"added_tokens.json": added,
                          "tokenizer_config.json": dict(config, additional_special_tokens=["<ent>"], bos_token="<s>")},
        "decoder": {"tokenizer_config.json": dict(config, added_tokens_decoder=decoder)},
        "decoder wins": {"tokenizer_config.json": dict(config, added_tokens_decoder=decoder),
                         "added_tokens.json": dict(added, extra=n + 5)},
    }
    texts = ["a NewWord here <ent> x[E1]y multi  word <ENT> [e1] extra <S><s>newwordnewword",
             "[MASK]<ent>[E1]" * 20] + corpora["tweets"][:300]
    for name, files in layouts.items():
        directory = _slow_tokenizer_dir(tmp_path / name.replace(" ", "_").replace(".", "_"), files)
        ref = BertTokenizerFast.from_pretrained(directory)
        ours = WordPieceTokenizer.from_pretrained(directory)
        assert _ragged(ours.encode_batch(texts)) == ref(texts)["input_ids"], name
    broken = _slow_tokenizer_dir(tmp_path / "broken", {"added_tokens.json": ["newword"]})
    with pytest.raises(ValueError, match="added_tokens.json: not an object of token -> id"):
        WordPieceTokenizer.from_pretrained(broken)


def test_many_special_tokens_in_one_text_take_linear_time():
    import time

    tok = WordPieceTokenizer.from_pretrained(MODEL_DIR)
    started = time.perf_counter()
    ids = tok.encode("[MASK] " * 50_000)["input_ids"]
    assert len(ids) == 50_002 and time.perf_counter() - started < 5  # quadratic: minutes


def test_a_tokenizer_json_that_is_not_bert_is_refused(tmp_path):
    import json

    spec = json.loads(open(os.path.join(MODEL_DIR, "tokenizer.json"), encoding="utf-8").read())
    assert WordPieceTokenizer.from_pretrained(os.path.join(MODEL_DIR, "tokenizer.json"))  # BERT's own: fine
    for key, value, message in [("pre_tokenizer", {"type": "WhitespaceSplit"}, "not BertPreTokenizer"),
                                ("post_processor", None, "post_processor"),
                                ("post_processor", {"type": "TemplateProcessing", "single": [], "pair": []},
                                 "not BERT's")]:
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(dict(spec, **{key: value})), encoding="utf-8")
        with pytest.raises(ValueError, match=f"{key}.json: .*{message}"):
            WordPieceTokenizer.from_pretrained(path)
    single = dict(spec, added_tokens=spec["added_tokens"] + [{"id": len(spec["model"]["vocab"]), "content": "zz",
                                                              "single_word": True, "normalized": True}])
    path = tmp_path / "single.json"
    path.write_text(json.dumps(single), encoding="utf-8")
    with pytest.raises(ValueError, match="single.json: added token 'zz' is single_word"):
        WordPieceTokenizer.from_pretrained(path)


@pytest.mark.filterwarnings("ignore")
def test_an_empty_pair_as_hf_treats_it_alone_and_in_a_batch():
    ours, ref = WordPieceTokenizer.from_pretrained(MODEL_DIR), _hf()
    assert ours.encode("abc", "")["input_ids"].tolist() == ref("abc", "")["input_ids"]
    assert _ragged(ours.encode_batch(["abc"], [""])) == ref(["abc"], [""])["input_ids"]
