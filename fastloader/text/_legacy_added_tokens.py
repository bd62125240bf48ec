"""The added tokens of a model directory saved without a tokenizer.json (a slow
tokenizer's save_pretrained: vocab.txt, tokenizer_config.json, special_tokens_map.json,
added_tokens.json), read as transformers' from_pretrained reads them."""
from __future__ import annotations

import json
import os
from typing import Any

# transformers' SPECIAL_TOKENS_ATTRIBUTES: an added_tokens.json token named by one of
# these (or listed as an extra special token) is special, the others are added words.
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _json_file(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file: {e}") from None


def _content(token: Any) -> str | None:
    """A special token as the files write it: a string, or an AddedToken's dict."""
    if isinstance(token, str):
        return token
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        return token["content"]
    return None


def _special_tokens(config: dict, tokens_map: dict) -> set[str]:
    """The contents transformers counts as special when it reads added_tokens.json: the
    named special tokens (special_tokens_map.json over tokenizer_config.json) and the
    extra special tokens (tokenizer_config's `additional_special_tokens` is their old name;
    special_tokens_map's is not read)."""
    named = {**{k: config[k] for k in _NAMED_SPECIAL if k in config},
             **{k: tokens_map[k] for k in _NAMED_SPECIAL if k in tokens_map}}
    extra = list(config.get("extra_special_tokens") or config.get("additional_special_tokens") or [])
    if isinstance(tokens_map.get("extra_special_tokens"), list):
        extra += tokens_map["extra_special_tokens"]
    contents = (_content(t) for t in [*named.values(), *(extra if isinstance(extra, list) else [])])
    return {c for c in contents if c is not None}


def legacy_added_tokens(directory: str, config: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    """(the file they come from, their entries as tokenizer.json lists them), or None when
    the directory adds none; `config` is its tokenizer_config.json. That file's
    `added_tokens_decoder` (transformers >= 4.34) wins; else added_tokens.json, each token
    normalized unless it is special."""
    config_path = os.path.join(directory, "tokenizer_config.json")
    decoder = config.get("added_tokens_decoder")
    if decoder is not None:
        if not isinstance(decoder, dict):
            raise ValueError(f"{config_path}: added_tokens_decoder is not an object of id -> token")
        entries = []
        for key, token in decoder.items():
            if not isinstance(token, dict) or not str(key).isdigit():
                raise ValueError(f"{config_path}: malformed added token {key!r}: {token!r}")
            entries.append({**token, "id": int(key)})
        return config_path, entries
    added_path = os.path.join(directory, "added_tokens.json")
    if not os.path.exists(added_path):
        return None
    table = _json_file(added_path)
    if not isinstance(table, dict):
        raise ValueError(f"{added_path}: not an object of token -> id")
    map_path = os.path.join(directory, "special_tokens_map.json")
    tokens_map = _json_file(map_path) if os.path.exists(map_path) else {}
    special = _special_tokens(config, tokens_map if isinstance(tokens_map, dict) else {})
    return added_path, [{"content": c, "id": i, "normalized": c not in special, "special": c in special}
                        for c, i in table.items()]
