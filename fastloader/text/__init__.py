"""Text: the compiled WordPiece tokenizer and compile-friendly batching."""
from .collate import PackCollator, PadCollator
from .sampler import LengthGroupedSampler
from .tokenizer import WordPieceTokenizer

__all__ = ["LengthGroupedSampler", "PackCollator", "PadCollator", "WordPieceTokenizer"]
