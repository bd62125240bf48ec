#include "wordpiece.h"

#include <algorithm>

#include "../common/parallel.h"
#include "unicode_tables.h"

namespace fastloader {
namespace {

namespace u = unicode;

template <size_t N>
bool in_ranges(const u::CodeRange (&table)[N], char32_t cp) {
  auto it = std::upper_bound(std::begin(table), std::end(table), cp,
                             [](char32_t c, const u::CodeRange& r) { return c < r.lo; });
  return it != std::begin(table) && cp <= (it - 1)->hi;
}

template <size_t N>
const u::CodeMapping* find_mapping(const u::CodeMapping (&table)[N], char32_t cp) {
  auto it = std::lower_bound(std::begin(table), std::end(table), cp,
                             [](const u::CodeMapping& m, char32_t c) { return m.cp < c; });
  return it != std::end(table) && it->cp == cp ? it : nullptr;
}

int combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  auto it = std::lower_bound(std::begin(u::kCombiningClass), std::end(u::kCombiningClass), cp,
                             [](const u::CombiningClass& m, char32_t c) { return m.cp < c; });
  return it != std::end(u::kCombiningClass) && it->cp == cp ? it->ccc : 0;
}

// Rust's char::is_whitespace (the White_Space property).
bool is_whitespace(char32_t c) {
  return (c >= 0x9 && c <= 0xD) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool is_removed(char32_t c) {  // what clean_text drops: control, format, private use (in HF's tables)
  return c == 0 || c == 0xFFFD || in_ranges(u::kRemoved, c);
}

bool is_punctuation(char32_t c) {
  if (c < 0x80)
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
  return in_ranges(u::kPunctuation, c);
}

bool is_chinese(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

void decompose(char32_t c, std::u32string& out) {
  constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
  constexpr int kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = 11172;
  if (c >= kSBase && c < kSBase + kSCount) {  // Hangul syllables, algorithmically
    const int s = int(c - kSBase);
    out += char32_t(kLBase + s / kNCount);
    out += char32_t(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out += char32_t(kTBase + s % kTCount);
    return;
  }
  if (const u::CodeMapping* m = c >= 0xC0 ? find_mapping(u::kDecomposition, c) : nullptr) {
    out.append(u::kDecompositionPool + m->offset, m->length);
  } else {
    out += c;
  }
}

// NFD: full decomposition, then combining marks in canonical order (a stable sort of each
// run of non-starters by combining class).
void nfd(std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (char32_t c : s) decompose(c, out);
  for (size_t i = 0; i < out.size();) {
    if (combining_class(out[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < out.size() && combining_class(out[j]) != 0) ++j;
    std::stable_sort(out.begin() + i, out.begin() + j,
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  s.swap(out);
}

void decode_utf8(std::string_view s, std::u32string& out) {
  out.clear();
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char b = p[i];
    if (b < 0x80) {
      out += char32_t(b);
      ++i;
      continue;
    }
    int len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 0;
    if (len == 0 || b > 0xF4 || i + len > n)
      throw TextError("invalid UTF-8 at byte " + std::to_string(i));
    char32_t c = b & (0x7F >> len);
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) throw TextError("invalid UTF-8 at byte " + std::to_string(i));
      c = (c << 6) | (p[i + k] & 0x3F);
    }
    const char32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
      throw TextError("invalid UTF-8 at byte " + std::to_string(i));
    out += c;
    i += len;
  }
}

void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xC0 | (c >> 6));
    out += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += char(0xE0 | (c >> 12));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  } else {
    out += char(0xF0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3F));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  }
}

// HF tokenizers' pair truncation: lengths (n1, n2) that fit `budget` tokens.
// Keeps n tokens of v: its first n, or (from the left) its last n.
void keep(std::vector<int64_t>& v, size_t n, bool from_left) {
  if (n >= v.size()) return;
  if (from_left) v.erase(v.begin(), v.end() - std::ptrdiff_t(n));
  else v.resize(n);
}

void truncate_pair(Truncation how, int64_t budget, std::vector<int64_t>& a, std::vector<int64_t>* b,
                   bool from_left) {
  const int64_t total = int64_t(a.size()) + (b ? int64_t(b->size()) : 0);
  if (how == Truncation::None || total <= budget) return;
  if (budget == 0) {  // HF empties both, whatever the strategy
    a.clear();
    if (b) b->clear();
    return;
  }
  const int64_t excess = total - budget;
  if (how == Truncation::OnlyFirst || how == Truncation::OnlySecond) {
    if (how == Truncation::OnlySecond && !b) throw TextError("truncation 'only_second' needs text pairs");
    std::vector<int64_t>& target = how == Truncation::OnlySecond ? *b : a;
    if (int64_t(target.size()) <= excess)
      throw TextError("truncation: the sequence to truncate is too short for max_length");
    keep(target, target.size() - size_t(excess), from_left);
    return;
  }
  if (!b) {
    keep(a, size_t(std::max<int64_t>(0, int64_t(a.size()) - excess)), from_left);
    return;
  }
  int64_t n1 = int64_t(a.size()), n2 = int64_t(b->size());
  const bool swap = n1 > n2;
  if (swap) std::swap(n1, n2);
  n2 = n1 > budget ? n1 : std::max(n1, budget - n1);
  if (n1 + n2 > budget) {
    n1 = budget / 2;
    n2 = n1 + budget % 2;
  }
  if (swap) std::swap(n1, n2);
  keep(a, size_t(n1), from_left);
  keep(*b, size_t(n2), from_left);
}

}  // namespace

WordPieceTokenizer::WordPieceTokenizer(const std::vector<std::string>& vocab, NormalizerOptions options,
                                       int max_input_chars_per_word, const std::vector<AddedToken>& added_tokens)
    : options_(options), max_chars_(max_input_chars_per_word) {
  for (size_t i = 0; i < vocab.size(); ++i) {
    const std::string& t = vocab[i];
    // a token listed twice has its last id, as HF's vocab loaders give it
    if (t.rfind("##", 0) == 0) continuation_.insert_or_assign(t.substr(2), int64_t(i));
    whole_.insert_or_assign(t, int64_t(i));
  }
  unk_ = id_of("[UNK]");
  cls_ = id_of("[CLS]");
  sep_ = id_of("[SEP]");
  if (unk_ < 0 || cls_ < 0 || sep_ < 0) throw TextError("the vocab lacks one of [UNK], [CLS], [SEP]");
  for (const AddedToken& t : added_tokens) {
    if (t.id < 0) throw TextError("added token " + t.content + " has a negative id");
    if (t.content.empty()) continue;
    if (!t.normalized) {
      added_.emplace_back(t.content, t.id);
      continue;
    }
    std::u32string text, norm;
    decode_utf8(t.content, text);
    normalize(text, norm);
    if (!norm.empty()) normalized_.emplace_back(std::move(norm), t.id);
  }
}

namespace {

// Splits text on tokens (pairs of content and id): each leftmost occurrence (the longest
// of those starting there) becomes its id in out, the text between goes to plain(piece).
// Where each token next occurs is kept, so that a text full of them is searched once per
// token, not once per match.
template <typename Text, typename Tokens, typename Plain>
void split_on_tokens(Text text, const Tokens& tokens, std::vector<int64_t>& out, Plain&& plain) {
  std::vector<size_t> next;
  next.reserve(tokens.size());
  for (const auto& t : tokens) next.push_back(text.find(t.first));
  size_t pos = 0;
  while (true) {
    size_t at = Text::npos, best = 0;
    for (size_t k = 0; k < tokens.size(); ++k) {
      if (next[k] != Text::npos && next[k] < pos) next[k] = text.find(tokens[k].first, pos);
      if (next[k] < at || (next[k] == at && at != Text::npos && tokens[k].first.size() > tokens[best].first.size())) {
        at = next[k];
        best = k;
      }
    }
    if (at == Text::npos) break;
    plain(text.substr(pos, at - pos));
    out.push_back(tokens[best].second);
    pos = at + tokens[best].first.size();
  }
  plain(text.substr(pos));
}

}  // namespace

int64_t WordPieceTokenizer::id_of(std::string_view token) const {
  auto it = whole_.find(token);
  return it == whole_.end() ? -1 : it->second;
}

void WordPieceTokenizer::normalize(std::u32string_view text, std::u32string& out) const {
  out.clear();
  for (char32_t c : text) {
    if (options_.clean_text) {
      if (is_removed(c)) continue;
      if (is_whitespace(c)) c = ' ';
    }
    if (options_.handle_chinese_chars && is_chinese(c)) {
      out += U' ';
      out += c;
      out += U' ';
    } else {
      out += c;
    }
  }
  if (options_.strip_accents) {
    bool ascii = std::all_of(out.begin(), out.end(), [](char32_t c) { return c < 0x80; });
    if (!ascii) {
      nfd(out);
      out.erase(std::remove_if(out.begin(), out.end(),
                               [](char32_t c) { return c >= 0x300 && in_ranges(u::kStrippedMark, c); }),
                out.end());
    }
  }
  if (options_.lowercase) {
    std::u32string lowered;
    lowered.reserve(out.size());
    for (char32_t c : out) {
      if (c < 0x80) {
        lowered += (c >= 'A' && c <= 'Z') ? c + 32 : c;
      } else if (const u::CodeMapping* m = find_mapping(u::kLowercase, c)) {
        lowered.append(u::kLowercasePool + m->offset, m->length);
      } else {
        lowered += c;
      }
    }
    out.swap(lowered);
  }
}

void WordPieceTokenizer::word_pieces(const std::string& word, const std::vector<uint32_t>& ends,
                                     std::vector<int64_t>& out) const {
  const size_t n = ends.size();  // characters; ends[k] = byte end of character k
  if (int(n) > max_chars_) {
    out.push_back(unk_);
    return;
  }
  const size_t mark = out.size();
  size_t start = 0;
  while (start < n) {
    const size_t from = start ? ends[start - 1] : 0;
    size_t end = n;
    int64_t id = -1;
    for (; end > start; --end) {
      std::string_view piece(word.data() + from, ends[end - 1] - from);
      const Vocab& table = start ? continuation_ : whole_;
      auto it = table.find(piece);
      if (it != table.end()) {
        id = it->second;
        break;
      }
    }
    if (id < 0) {  // no piece fits: the whole word is unknown
      out.resize(mark);
      out.push_back(unk_);
      return;
    }
    out.push_back(id);
    start = end;
  }
}

void WordPieceTokenizer::tokenize(std::string_view utf8, std::vector<int64_t>& out) const {
  // added tokens first, in the raw text; then each piece between them on its own
  split_on_tokens(utf8, added_, out, [&](std::string_view piece) { tokenize_plain(piece, out); });
}

void WordPieceTokenizer::tokenize_plain(std::string_view utf8, std::vector<int64_t>& out) const {
  std::u32string text, norm;
  decode_utf8(utf8, text);
  normalize(text, norm);
  // normalized added tokens, in the normalized text
  split_on_tokens(std::u32string_view(norm), normalized_, out,
                  [&](std::u32string_view piece) { pre_tokenize(piece, out); });
}

// BERT's pre-tokenizer (whitespace and punctuation splits), then WordPiece on each word.
void WordPieceTokenizer::pre_tokenize(std::u32string_view norm, std::vector<int64_t>& out) const {
  std::string word;
  std::vector<uint32_t> ends;
  auto flush = [&] {
    if (!ends.empty()) word_pieces(word, ends, out);
    word.clear();
    ends.clear();
  };
  for (char32_t c : norm) {
    if (is_whitespace(c)) {
      flush();
    } else if (is_punctuation(c)) {
      flush();
      append_utf8(c, word);
      ends.push_back(uint32_t(word.size()));
      flush();
    } else {
      append_utf8(c, word);
      ends.push_back(uint32_t(word.size()));
    }
  }
  flush();
}

EncodedBatch WordPieceTokenizer::encode_batch(const std::vector<std::string_view>& first,
                                              const std::vector<std::string_view>* second,
                                              const EncodeOptions& options, int num_threads) const {
  const int64_t n = int64_t(first.size());
  std::vector<std::vector<int64_t>> ids(static_cast<size_t>(n)), types(static_cast<size_t>(n));
  std::vector<std::string> errors(static_cast<size_t>(n));
  const int64_t specials = options.add_special_tokens ? (second ? 3 : 2) : 0;
  parallel_for(int(n), num_threads, [&](int item) {
    const int64_t i = item;
    try {
      std::vector<int64_t> a, b;
      tokenize(first[size_t(i)], a);
      if (second) tokenize((*second)[size_t(i)], b);
      // as HF tokenizers: a max_length below the special tokens truncates nothing
      if (options.truncation != Truncation::None && options.max_length >= specials)
        truncate_pair(options.truncation, options.max_length - specials, a, second ? &b : nullptr,
                      options.truncate_left);
      std::vector<int64_t>& out = ids[size_t(i)];
      std::vector<int64_t>& type = types[size_t(i)];
      out.reserve(a.size() + b.size() + size_t(specials));
      if (options.add_special_tokens) out.push_back(cls_);
      out.insert(out.end(), a.begin(), a.end());
      if (options.add_special_tokens) out.push_back(sep_);
      type.assign(out.size(), 0);
      if (second) {
        out.insert(out.end(), b.begin(), b.end());
        if (options.add_special_tokens) out.push_back(sep_);
        type.resize(out.size(), 1);
      }
    } catch (const std::exception& e) {
      errors[size_t(i)] = e.what();
    }
  });
  for (int64_t i = 0; i < n; ++i)
    if (!errors[size_t(i)].empty()) throw TextError("item " + std::to_string(i) + ": " + errors[size_t(i)]);
  EncodedBatch out;
  out.offsets.reserve(size_t(n) + 1);
  out.offsets.push_back(0);
  size_t total = 0;
  for (const auto& v : ids) total += v.size();
  out.ids.reserve(total);
  out.type_ids.reserve(total);
  for (int64_t i = 0; i < n; ++i) {
    out.ids.insert(out.ids.end(), ids[size_t(i)].begin(), ids[size_t(i)].end());
    out.type_ids.insert(out.type_ids.end(), types[size_t(i)].begin(), types[size_t(i)].end());
    out.offsets.push_back(int64_t(out.ids.size()));
  }
  return out;
}

}  // namespace fastloader
