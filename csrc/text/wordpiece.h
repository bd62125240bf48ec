// BERT tokenization: the BERT normalizer (clean text, CJK spacing, NFD accent stripping,
// lowercasing), the BERT pre-tokenizer (whitespace and punctuation splits) and greedy
// longest-match-first WordPiece, with the same results as HF tokenizers' BertTokenizerFast
// for the same vocab and options. Batch encoding in parallel. Torch-free.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace fastloader {

// Bad text (invalid UTF-8) or a request that cannot be met (truncation too short).
struct TextError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct NormalizerOptions {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool strip_accents = true;
  bool lowercase = true;
};

enum class Truncation { None = 0, LongestFirst = 1, OnlyFirst = 2, OnlySecond = 3 };

struct EncodeOptions {
  bool add_special_tokens = true;
  int64_t max_length = -1;  // with truncation: the length of each encoded item, specials included
  Truncation truncation = Truncation::None;
  bool truncate_left = false;  // drop tokens from the start (HF's truncation_side="left")
};

// A token matched in the text before anything else, as HF's added tokens: in the raw
// text, or (normalized) in the normalized text, its own content normalized likewise.
struct AddedToken {
  std::string content;
  int64_t id;
  bool normalized = false;
};

// Token ids of a batch, ragged: item i is ids[offsets[i], offsets[i + 1]).
struct EncodedBatch {
  std::vector<int64_t> ids;
  std::vector<int64_t> type_ids;
  std::vector<int64_t> offsets;
};

class WordPieceTokenizer {
 public:
  // vocab[i] is the token of id i; continuation tokens start with "##". added_tokens
  // (e.g. "[MASK]", or words added to a model, ids past the vocab) are split out of the
  // text before WordPiece sees it, as HF does.
  WordPieceTokenizer(const std::vector<std::string>& vocab, NormalizerOptions options,
                     int max_input_chars_per_word = 100, const std::vector<AddedToken>& added_tokens = {});

  int64_t id_of(std::string_view token) const;  // -1 when absent
  // The word-piece ids of one text (no special tokens).
  void tokenize(std::string_view utf8, std::vector<int64_t>& out) const;
  // Texts (and optional pairs) with special tokens and truncation; in parallel.
  EncodedBatch encode_batch(const std::vector<std::string_view>& first,
                            const std::vector<std::string_view>* second, const EncodeOptions& options,
                            int num_threads) const;

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using Vocab = std::unordered_map<std::string, int64_t, Hash, std::equal_to<>>;

  void normalize(std::u32string_view text, std::u32string& out) const;
  void tokenize_plain(std::string_view utf8, std::vector<int64_t>& out) const;
  void pre_tokenize(std::u32string_view norm, std::vector<int64_t>& out) const;
  void word_pieces(const std::string& word, const std::vector<uint32_t>& char_ends,
                   std::vector<int64_t>& out) const;

  Vocab whole_;         // tokens that start a word
  Vocab continuation_;  // "##x" tokens, keyed by x
  NormalizerOptions options_;
  int max_chars_;
  int64_t unk_ = -1, cls_ = -1, sep_ = -1;
  std::vector<std::pair<std::string, int64_t>> added_;           // matched in the raw text
  std::vector<std::pair<std::u32string, int64_t>> normalized_;   // in the normalized text
};

}  // namespace fastloader
