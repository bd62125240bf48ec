"""`WordPieceTokenizer`: BERT tokenization in compiled C++, the same ids as HF's
`BertTokenizerFast` for the same vocab and options, a whole batch per call."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch

from .. import _C
from ._legacy_added_tokens import legacy_added_tokens
from .collate import padding_mask, scatter_padded

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # added tokens unless a file says otherwise
TRUNCATION = {False: 0, None: 0, "do_not_truncate": 0, True: 1, "longest_first": 1, "only_first": 2, "only_second": 3}


# What Rust's str::trim_end strips (Unicode White_Space), as HF's vocab.txt reader does.
_TRAILING_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


def _read_vocab_txt(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the vocab: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not UTF-8 ({e.reason})") from None
    # as HF's (Rust) reader: one token per line, trailing whitespace (and a \r) trimmed
    tokens = [line.rstrip(_TRAILING_SPACE) for line in text.split("\n")]
    if tokens and tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise ValueError(f"{path}: the vocab is empty")
    return tokens


def _read_tokenizer_json(path: str, whole_pipeline: bool) -> tuple[list[str], dict[str, Any]]:
    """The vocab and options of a tokenizer.json. With `whole_pipeline` (the file loaded on
    its own, as tokenizers.Tokenizer.from_file would) its pre-tokenizer and post-processor
    must be BERT's; in a model directory they are not read, as transformers rebuilds them."""
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable tokenizer.json: {e}") from None
    model = spec.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path}: not a WordPiece tokenizer (model type {model.get('type')!r})")
    vocab = model["vocab"]
    tokens = [""] * len(vocab)
    for token, i in vocab.items():
        if not isinstance(i, int) or not 0 <= i < len(tokens) or tokens[i]:
            raise ValueError(f"{path}: the vocab's ids are not 0..{len(vocab) - 1}, each once")
        tokens[i] = token
    if model.get("continuing_subword_prefix", "##") != "##":
        raise ValueError(f"{path}: only the '##' continuation prefix is supported")
    if whole_pipeline:
        _check_bert_pipeline(path, spec)
    norm = spec.get("normalizer")
    options: dict[str, Any] = {"max_input_chars_per_word": model.get("max_input_chars_per_word", 100),
                               "added_tokens": _added_tokens(path, spec.get("added_tokens") or [], tokens)}
    if norm is None:  # no normalizer: the text as it is
        options.update(clean_text=False, tokenize_chinese_chars=False, strip_accents=False, do_lower_case=False)
    elif norm.get("type") == "BertNormalizer":
        options.update(clean_text=norm.get("clean_text", True), tokenize_chinese_chars=norm.get("handle_chinese_chars", True),
                       strip_accents=norm.get("strip_accents"), do_lower_case=norm.get("lowercase", True))
    else:
        raise ValueError(f"{path}: normalizer {norm.get('type')!r} is not the BERT one")
    return tokens, options


def _added_tokens(path: str, entries: list[dict], vocab: list[str]) -> list[tuple[str, int, bool]]:
    """(content, id, normalized) of each added token. lstrip / rstrip change no BERT ids
    (whitespace makes no token); single_word would, and is refused."""
    out = []
    for t in entries:
        content, i = t.get("content"), t.get("id")
        if not isinstance(content, str) or not isinstance(i, int) or i < 0:
            raise ValueError(f"{path}: malformed added token {t!r}")
        if i < len(vocab) and vocab[i] != content:
            raise ValueError(f"{path}: added token {content!r} has id {i}, which is {vocab[i]!r} in the vocab")
        if t.get("single_word"):
            raise ValueError(f"{path}: added token {content!r} is single_word, which is not supported")
        out.append((content, i, bool(t.get("normalized", not t.get("special", False)))))
    return out


_BERT_TEMPLATE = {"single": ["[CLS]", "$A", "[SEP]"], "pair": ["[CLS]", "$A", "[SEP]", "$B:1", "[SEP]:1"]}


def _template(pieces: list[dict]) -> list[str]:
    """A TemplateProcessing template in its string form ("[CLS]", "$A", "$B:1"...)."""
    out = []
    for piece in pieces:
        (kind, body), = piece.items()
        name = body["id"] if kind == "SpecialToken" else "$" + body["id"]
        out.append(name + (f":{body['type_id']}" if body.get("type_id") else ""))
    return out


def _check_bert_pipeline(path: str, spec: dict[str, Any]) -> None:
    pre = spec.get("pre_tokenizer")
    if pre is None or pre.get("type") != "BertPreTokenizer":
        raise ValueError(f"{path}: pre_tokenizer {pre and pre.get('type')!r} is not BertPreTokenizer")
    post = spec.get("post_processor")
    kind = post and post.get("type")
    if kind == "BertProcessing":
        ok = post.get("sep", [None])[0] == "[SEP]" and post.get("cls", [None])[0] == "[CLS]"
    elif kind == "TemplateProcessing":
        try:
            ok = {k: _template(post[k]) for k in _BERT_TEMPLATE} == _BERT_TEMPLATE
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
    else:
        ok = False
    if not ok:
        raise ValueError(f"{path}: post_processor ({kind!r}) is not BERT's [CLS] A [SEP] (B [SEP])")


def _read_tokenizer_config(directory: str) -> dict[str, Any]:
    """A model directory's tokenizer_config.json ({} when it has none)."""
    path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            conf = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable tokenizer config: {e}") from None
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: not a JSON object")
    return conf


def _config_options(conf: dict[str, Any]) -> dict[str, Any]:
    """The options HF's BertTokenizerFast takes from tokenizer_config.json."""
    found = {k: conf[k] for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "padding_side",
                                  "truncation_side") if k in conf}
    if isinstance(conf.get("model_max_length"), int) and conf["model_max_length"] < 1 << 40:
        found["model_max_length"] = conf["model_max_length"]
    return found


def _truncation_code(truncation) -> int:
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be one of {sorted(map(str, TRUNCATION))}, got {truncation!r}")
    return TRUNCATION[truncation]


def _side(value: str, name: str) -> str:
    if value not in ("right", "left"):
        raise ValueError(f"{name} must be 'right' or 'left', got {value!r}")
    return value


class WordPieceTokenizer:
    """BERT's tokenizer (basic tokenization + greedy longest-match WordPiece with `##`
    continuations), options as HF's: `do_lower_case`, `strip_accents` (None: follows
    do_lower_case), `tokenize_chinese_chars`, `max_length`, `truncation` (True /
    "longest_first" / "only_first" / "only_second"; None: as HF, "longest_first" where a
    max_length is given without padding), `add_special_tokens`, `padding` (False: ragged,
    True / "longest", "max_length"), `padding_side` / `truncation_side` ("right", "left").

    `added_tokens`: strings (vocab tokens matched in the raw text), or (content, id,
    normalized) as a tokenizer.json lists them, ids past the vocab included."""

    def __init__(self, vocab: Sequence[str], *, do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, clean_text: bool = True, max_input_chars_per_word: int = 100,
                 max_length: int | None = None, truncation: bool | str | None = None, add_special_tokens: bool = True,
                 padding: bool | str = False, padding_side: str = "right", truncation_side: str = "right",
                 num_threads: int | None = None, model_max_length: int | None = None,
                 added_tokens: Sequence[str | tuple[str, int, bool]] | None = None, source: str = "vocab") -> None:
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            bom = " (its first line starts with a UTF-8 byte-order mark)" if vocab and vocab[0].startswith("\ufeff") else ""
            raise ValueError(f"{source}: the vocab has no {', '.join(missing)} token{bom}")
        _truncation_code(truncation)
        self.padding_side = _side(padding_side, "padding_side")
        self.truncation_side = _side(truncation_side, "truncation_side")
        if added_tokens is None:  # BERT's special tokens, matched in the raw text as HF does
            added_tokens = [t for t in _BERT_SPECIALS if t in vocab]
        ids = {t: i for i, t in enumerate(vocab)}  # a token listed twice has its last id, as in HF
        added = []
        for t in added_tokens:
            if isinstance(t, str):
                if t not in ids:
                    raise ValueError(f"{source}: added token {t!r} is not in the vocab (give its id)")
                added.append((t, ids[t], False))
            else:
                added.append((str(t[0]), int(t[1]), bool(t[2])))
        self.vocab = list(vocab)
        self.model_max_length = model_max_length
        self.do_lower_case = do_lower_case
        self.strip_accents = do_lower_case if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.max_length = max_length
        self.truncation = truncation
        self.add_special_tokens = add_special_tokens
        self.padding = padding
        self.num_threads = num_threads
        self._impl = _C.WordPieceTokenizer(self.vocab, clean_text, tokenize_chinese_chars, self.strip_accents,
                                           do_lower_case, max_input_chars_per_word, added)
        self.pad_token_id = self._impl.id_of("[PAD]")
        self.cls_token_id = self._impl.id_of("[CLS]")
        self.sep_token_id = self._impl.id_of("[SEP]")
        self.unk_token_id = self._impl.id_of("[UNK]")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **options: Any) -> WordPieceTokenizer:
        """From a model directory (its tokenizer.json, else vocab.txt, tokenizer_config.json
        and the added tokens a slow tokenizer saves), a `vocab.txt` or a `tokenizer.json`;
        `options` override."""
        path = original = os.fspath(path)
        config: dict[str, Any] = {}
        if os.path.isdir(path):
            config = _read_tokenizer_config(path)
            has_json = os.path.exists(os.path.join(path, "tokenizer.json"))
            path = os.path.join(path, "tokenizer.json" if has_json else "vocab.txt")
        if path.endswith(".json"):
            vocab, found = _read_tokenizer_json(path, whole_pipeline=not os.path.isdir(original))
        else:
            vocab, found = _read_vocab_txt(path), {}
            legacy = legacy_added_tokens(original, config) if os.path.isdir(original) else None
            if legacy:  # a slow tokenizer's save: its added tokens are in the other files
                added = _added_tokens(*legacy, vocab)
                named = {content for content, _, _ in added}
                found["added_tokens"] = [t for t in _BERT_SPECIALS if t in vocab and t not in named] + added
        return cls(vocab, **{**found, **_config_options(config), **options, "source": path})

    def _threads(self) -> int:
        return self.num_threads or torch.get_num_threads()

    def encode_batch(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, *,
                     padding: bool | str | None = None, max_length: int | None = None,
                     truncation: bool | str | None = None) -> dict[str, torch.Tensor]:
        """input_ids, token_type_ids and attention_mask of every text (and pair).

        Ragged by default: flat tensors and `offsets` (item i is [offsets[i], offsets[i+1]));
        with padding, (N, L) tensors padded with [PAD] on the right."""
        padding = self.padding if padding is None else padding
        if padding == "do_not_pad":
            padding = False
        if padding not in (False, True, "longest", "max_length"):
            raise ValueError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        max_length = self.max_length if max_length is None else max_length
        truncation = self.truncation if truncation is None else truncation
        if truncation is None:  # as HF: a max_length without padding truncates
            truncation = "longest_first" if max_length is not None and not padding else False
        code = _truncation_code(truncation)
        if max_length is None and (code or padding == "max_length"):  # as HF: to the model's length
            max_length = self.model_max_length
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode_batch takes a list of texts; use encode() for one")
        ids, types, offsets = self._impl.encode_batch(
            list(texts), None if text_pairs is None else list(text_pairs), self.add_special_tokens,
            -1 if max_length is None else int(max_length), code, self.truncation_side == "left", self._threads())
        if not padding:
            return {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids),
                    "offsets": offsets}
        lengths = offsets.diff()
        if padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length (or a model_max_length)")
            width = int(max_length)
        else:
            width = int(lengths.max()) if len(lengths) else 0
        return pad_ragged(ids, types, offsets, width, self.pad_token_id, left=self.padding_side == "left")

    def encode(self, text: str, text_pair: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """One text (and pair): 1-D input_ids, token_type_ids, attention_mask. An empty
        pair is no pair, as in HF's call on one text (in a batch it is a pair)."""
        out = self.encode_batch([text], [text_pair] if text_pair else None, **kwargs)
        if "offsets" in out:
            out.pop("offsets")
            return out
        return {k: v[0] for k, v in out.items()}

    __call__ = encode_batch


def pad_ragged(ids: torch.Tensor, types: torch.Tensor, offsets: torch.Tensor, width: int,
               pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """(N, width) input_ids / token_type_ids / attention_mask from ragged tensors, padded
    on the right (or left); items longer than width are an error: truncate when encoding."""
    lengths = offsets.diff()
    n = len(lengths)
    if n and int(lengths.max()) > width:
        i = int((lengths > width).nonzero()[0])
        raise ValueError(f"item {i} has {int(lengths[i])} tokens, more than the padded length {width} (truncate "
                         "to max_length, which must leave room for the special tokens)")
    mask = padding_mask(lengths, width)
    if left:
        mask = mask.flip(1)
    return {"input_ids": scatter_padded(ids, mask, pad_id), "token_type_ids": scatter_padded(types, mask, 0),
            "attention_mask": mask.long()}
