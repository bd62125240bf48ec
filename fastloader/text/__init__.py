"""Text: the compiled WordPiece tokenizer and compile-friendly batching."""
from .tokenizer import WordPieceTokenizer

__all__ = ["WordPieceTokenizer"]
