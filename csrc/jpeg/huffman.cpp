#include "huffman.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include <jerror.h>

namespace fastloader {
namespace {

constexpr int kLook = kHuffLookBits;
constexpr int kCoefsPerRefill = 4;
static_assert(kCoefsPerRefill * kLook <= 56, "a refill must cover a group of lookups");
// Zero bytes after the scan. Overruns are checked after each MCU, which reads at most
// 10 blocks x 64 coefficients x 31 bits (~2.5 KB), plus the 8-byte loads.
constexpr size_t kPadding = 4096;

// Zigzag position -> natural (row-major) index. The extra entries (libjpeg has 16) take
// a corrupt run length, or the jump of 63 that ends a block, to position 63.
constexpr int kEndOfBlockRun = 63;
constexpr auto kNatural = [] {
  constexpr int zigzag[64] = {
      0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,  12, 19, 26, 33, 40, 48,
      41, 34, 27, 20, 13, 6,  7,  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23,
      30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63};
  std::array<int, 64 + kEndOfBlockRun + 1> natural{};
  for (size_t k = 0; k < natural.size(); ++k) natural[k] = k < 64 ? zigzag[k] : 63;
  return natural;
}();

// The magnitude bits v of an s-bit coefficient -> its value (JPEG's EXTEND).
inline int extend(int v, int s) { return v < (1 << (s - 1)) ? v - (1 << s) + 1 : v; }

inline uint64_t load_be64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}

// Bits of the stream, most significant first. After refill() at least 56 are valid;
// one Huffman code (<= 16 bits) and its magnitude (<= 15) need 31.
struct BitReader {
  const uint8_t* next;
  uint64_t bits;
  int count;

  void refill() {  // branch-free: the bits below `count` are already the stream's
    bits |= load_be64(next) >> count;
    next += (63 - count) >> 3;
    count |= 56;
  }
  uint32_t peek(int n) const { return static_cast<uint32_t>(bits >> (64 - n)); }
  void drop(int n) {
    bits <<= n;
    count -= n;
  }
  // Refilling only when needed keeps the refill off the chain from one code to the next
  // (a DC difference, or a symbol the lookup does not resolve).
  void ensure_coefficient() {
    if (count < 31) refill();
  }
  int take(int n) {  // 1 <= n <= 16
    int v = static_cast<int>(bits >> (64 - n));
    drop(n);
    return v;
  }
};

// A symbol whose code is longer than the lookup (rare). -1: no code matches.
int slow_symbol(BitReader& r, const HuffTable& t) {
  const uint32_t bits16 = r.peek(16);
  for (int len = kLook + 1; len <= 16; ++len) {
    const int32_t code = static_cast<int32_t>(bits16 >> (16 - len));
    if (code <= t.maxcode[len]) {
      r.drop(len);
      return t.huffval[(code + t.valoffset[len]) & 0xFF];
    }
  }
  return -1;
}

inline int symbol(BitReader& r, const HuffTable& t) {
  const uint16_t e = t.lookup[r.peek(kLook)];
  if (e) {
    r.drop(e >> 8);
    return e & 0xFF;
  }
  return slow_symbol(r, t);
}

enum class Step { kMore, kEnd, kBad };

// One AC coefficient (or run of zeros, or end of block) the table lookups do not resolve:
// a longer code, or a magnitude that does not fit them, up to 31 bits. kBad: no code
// matches.
template <bool kStore>
inline Step long_coefficient(BitReader& r, const HuffTable& ac, JCOEF* block, int& k) {
  r.ensure_coefficient();
  const int rs = symbol(r, ac);
  if (rs < 0) return Step::kBad;
  const int run = rs >> 4, size = rs & 15;
  if (size) {
    k += run;
    const int magnitude = r.take(size);
    if constexpr (kStore) block[kNatural[k]] = static_cast<JCOEF>(extend(magnitude, size));
    return ++k >= 64 ? Step::kEnd : Step::kMore;
  }
  if (run != 15) return Step::kEnd;  // end of block
  k += 16;
  return k >= 64 ? Step::kEnd : Step::kMore;
}

// Passes over the AC coefficients of a block whose values are not needed, several per
// lookup where they fit (HuffTable::skip). An entry that would take the block past its
// 64th position holds bits of the next block (or corrupt data): that step goes one
// coefficient at a time. False: an invalid code.
inline bool skip_ac(BitReader& r, const HuffTable& ac) {
  constexpr int kLookups = 56 / kHuffSkipBits;
  int k = 1;
  for (;;) {
    r.refill();
    int i = 0;
    for (; i < kLookups; ++i) {
      const uint32_t e = ac.skip[r.peek(kHuffSkipBits)];
      const int next = k + int((e >> 4) & 0xFF);
      if (!e || next > 64) [[unlikely]] break;
      r.drop(e & 15);
      k = next;
      if ((e & (1u << 12)) || k == 64) return true;
    }
    if (i == kLookups) continue;
    const Step step = long_coefficient<false>(r, ac, nullptr, k);
    if (step != Step::kMore) return step == Step::kEnd;
  }
}

// The AC coefficients of one block, decoded into `block` (kStore) or only passed over,
// the stream's position being all that matters for a block libjpeg will not IDCT. One
// lookup per coefficient. (Two per lookup, where the bits hold both, measured slower:
// the choice lengthens the chain from one lookup to the next.) False: an invalid code.
template <bool kStore>
inline bool ac_coefficients(BitReader& r, const HuffTable& ac, JCOEF* block) {
  int k = 1;
  for (;;) {
    // An unconditional refill every kCoefsPerRefill lookups: a whole-coefficient lookup
    // takes at most kLook bits, so they all fit in the 56 a refill leaves. Testing the
    // bit count before each lookup instead is a branch no predictor learns (cachegrind's
    // model: wrong on 1 test in 5), and decoding took 10-16% longer (1,000 benchmark JPEGs).
    r.refill();
#pragma GCC unroll 4
    for (int i = 0; i < kCoefsPerRefill; ++i) {
      const uint32_t e = ac.coef[r.peek(kLook)];
      if (e) [[likely]] {
        r.drop(e & 0xFF);
        k += (e >> 8) & 0xFF;
        if constexpr (kStore) block[kNatural[k]] = static_cast<JCOEF>(static_cast<int16_t>(e >> 16));
        if (++k >= 64) return true;
        continue;
      }
      const Step step = long_coefficient<kStore>(r, ac, block, k);
      if (step != Step::kMore) return step == Step::kEnd;
      break;  // the bits left may not cover the rest of the group: refill
    }
  }
}

}  // namespace

bool HuffTable::build(const JHUFF_TBL& table, bool is_ac) {
  if (built_ && std::memcmp(built_from_, table.bits, 17) == 0 &&
      std::memcmp(built_from_ + 17, table.huffval, 256) == 0) {
    // A table two images in a row have is likely shared by the images that follow:
    // worth the skip lookups, which cost more to build (~15 us) than one image saves.
    if (is_ac && !skip_ready_) {
      build_skip();
      skip_ready_ = true;
    }
    return true;
  }
  skip_ready_ = false;
  built_ = rebuild(table, is_ac);
  std::memcpy(built_from_, table.bits, 17);
  std::memcpy(built_from_ + 17, table.huffval, 256);
  return built_;
}

bool HuffTable::rebuild(const JHUFF_TBL& table, bool is_ac) {
  int length_of[256];
  int n = 0;
  for (int len = 1; len <= 16; ++len) {
    if (n + table.bits[len] > 256) return false;
    for (int i = 0; i < table.bits[len]; ++i) length_of[n++] = len;
  }
  std::memcpy(huffval, table.huffval, sizeof(huffval));
  if (!is_ac)
    for (int i = 0; i < n; ++i)
      if (huffval[i] > 15) return false;

  // Canonical codes (JPEG Annex C); libjpeg rejects a length whose codes overflow.
  uint32_t code_of[256];
  uint32_t code = 0;
  int p = 0;
  for (int len = 1; len <= 16; ++len) {
    valoffset[len] = p - static_cast<int32_t>(code);
    for (int i = 0; i < table.bits[len]; ++i) code_of[p++] = code++;
    if (code >= (1u << len) && table.bits[len]) return false;
    maxcode[len] = table.bits[len] ? static_cast<int32_t>(code) - 1 : -1;
    code <<= 1;
  }
  maxcode[0] = maxcode[17] = -1;

  std::memset(lookup, 0, sizeof(lookup));
  for (int i = 0; i < n; ++i) {
    const int len = length_of[i];
    if (len > kLook) continue;
    const uint32_t first = code_of[i] << (kLook - len);
    for (uint32_t fill = 0; fill < (1u << (kLook - len)); ++fill)
      lookup[first | fill] = static_cast<uint16_t>(len << 8 | huffval[i]);
  }

  // Whole coefficients: code and magnitude bits together, where both fit the lookup.
  // End of block is a zero written 63 places on (to position 63, which is still zero),
  // a run of 16 zeros a zero written 15 on: the decoding loop needs no special case.
  for (uint32_t bits = 0; bits < (1u << kLook); ++bits) {
    coef[bits] = 0;
    const uint16_t e = lookup[bits];
    int len = e >> 8, run = is_ac ? (e >> 4) & 15 : 0, size = is_ac ? e & 15 : e & 0xFF;
    if (is_ac && size == 0 && run != 15) run = kEndOfBlockRun;
    if (!e || len + size > kLook) continue;
    const int magnitude = size ? (bits >> (kLook - len - size)) & ((1 << size) - 1) : 0;
    const auto value = static_cast<uint16_t>(static_cast<int16_t>(size ? extend(magnitude, size) : 0));
    coef[bits] = uint32_t(value) << 16 | uint32_t(run) << 8 | uint32_t(len + size);
  }
  return true;
}

void HuffTable::build_skip() {
  // Built up from narrower windows: what w bits hold is their first coefficient, then
  // what the w - len bits after it hold (a table of 2 * 2^kHuffSkipBits entries in all,
  // each one lookup: images with their own tables rebuild it for each image).
  constexpr int kWindow = kHuffSkipBits;
  static_assert(kWindow >= kLook, "the skip window covers a whole-coefficient lookup");
  thread_local std::vector<uint16_t> narrower(size_t(2) << kWindow);  // width w at [2^w, 2^(w+1))
  uint16_t* by_width = narrower.data();
  by_width[1] = 0;  // w = 0: nothing
  for (int w = 1; w <= kWindow; ++w) {
    uint16_t* out = w == kWindow ? skip : by_width + (size_t(1) << w);
    for (uint32_t bits = 0; bits < (1u << w); ++bits) {
      const uint32_t top = w >= kLook ? bits >> (w - kLook) : bits << (kLook - w);
      const uint32_t e = coef[top];
      const int len = e & 0xFF, run = (e >> 8) & 0xFF;
      uint16_t entry = 0;
      if (e && len <= w) {
        if (run == kEndOfBlockRun) {  // counted as a position, so that an entry whose
          entry = static_cast<uint16_t>(len | 1 << 4 | 1 << 12);  // block ended first is refused
        } else {
          const int rest_w = w - len;
          const uint16_t rest = by_width[(size_t(1) << rest_w) + (bits & ((1u << rest_w) - 1))];
          entry = static_cast<uint16_t>((len + (rest & 15)) | (run + 1 + ((rest >> 4) & 0xFF)) << 4 | (rest & (1 << 12)));
        }
      }
      out[bits] = entry;
    }
  }
}

bool EntropyDecoder::install(j_decompress_ptr cinfo, int first_col, int last_col, int first_row) {
#ifndef LIBJPEG_TURBO_VERSION_NUMBER
  return false;  // the Hook layout and call pattern are libjpeg-turbo's (IJG's libjpeg 9 differs)
#endif
  if (cinfo->progressive_mode || cinfo->arith_code || cinfo->buffered_image ||
      cinfo->comps_in_scan != cinfo->num_components || cinfo->Ss != 0 || cinfo->Se != 63 ||
      cinfo->Ah != 0 || cinfo->Al != 0 || cinfo->src == nullptr ||
      cinfo->blocks_in_MCU > D_MAX_BLOCKS_IN_MCU || cinfo->comps_in_scan > MAX_COMPS_IN_SCAN)
    return false;
  bool dc_built[NUM_HUFF_TBLS] = {}, ac_built[NUM_HUFF_TBLS] = {};  // once per image each
  for (int ci = 0; ci < cinfo->comps_in_scan; ++ci) {
    const jpeg_component_info* comp = cinfo->cur_comp_info[ci];
    const int dc = comp->dc_tbl_no, ac = comp->ac_tbl_no;
    if (dc < 0 || dc >= NUM_HUFF_TBLS || ac < 0 || ac >= NUM_HUFF_TBLS) return false;
    const JHUFF_TBL* dc_table = cinfo->dc_huff_tbl_ptrs[dc];
    const JHUFF_TBL* ac_table = cinfo->ac_huff_tbl_ptrs[ac];
    if (!dc_table || !ac_table) return false;
    if (!dc_built[dc] && !dc_[dc].build(*dc_table, false)) return false;
    if (!ac_built[ac] && !ac_[ac].build(*ac_table, true)) return false;
    dc_built[dc] = ac_built[ac] = true;
  }
  blocks_in_mcu_ = cinfo->blocks_in_MCU;
  for (int b = 0; b < blocks_in_mcu_; ++b) {
    const int ci = cinfo->MCU_membership[b];
    if (ci < 0 || ci >= cinfo->comps_in_scan) return false;
    block_comp_[b] = ci;
    block_dc_[b] = &dc_[cinfo->cur_comp_info[ci]->dc_tbl_no];
    block_ac_[b] = &ac_[cinfo->cur_comp_info[ci]->ac_tbl_no];
    // (libjpeg may scale chroma's IDCT up in place of upsampling: judged per component)
#if JPEG_LIB_VERSION >= 70
    block_ac_needed_[b] = cinfo->cur_comp_info[ci]->DCT_h_scaled_size > 1;
#else
    block_ac_needed_[b] = cinfo->cur_comp_info[ci]->DCT_scaled_size > 1;
#endif
  }

  split_scan(cinfo->src->next_input_byte, cinfo->src->bytes_in_buffer);
  segment_ = 0;
  next_ = clean_.data();
  bits_ = 0;
  bit_count_ = 0;
  std::memset(last_dc_, 0, sizeof(last_dc_));
  restarts_to_go_ = cinfo->restart_interval;
  mcu_col_ = mcu_row_ = 0;
  skip_interval_ = false;
  mcus_per_row_ = static_cast<int>(cinfo->MCUs_per_row);
  first_col_ = first_col;
  last_col_ = last_col;
  first_row_ = first_row;

  hook_.start_pass = start_pass;
  hook_.decode_mcu = decode_mcu;
  hook_.insufficient_data = FALSE;
  hook_.self = this;
  cinfo->entropy = reinterpret_cast<jpeg_entropy_decoder*>(&hook_);
  return true;
}

// Removes byte stuffing (FF 00 -> FF) and splits the scan at its restart markers, which
// must come in order (RST0, RST1, ...); any other marker, or the end of data, ends it.
void EntropyDecoder::split_scan(const uint8_t* data, size_t size) {
  clean_.resize(size + kPadding);
  uint8_t* out = clean_.data();
  segment_start_.assign(1, 0);
  end_marker_ = 0;
  size_t i = 0;
  while (i < size) {
    const auto* ff = static_cast<const uint8_t*>(std::memchr(data + i, 0xFF, size - i));
    const size_t run = ff ? size_t(ff - (data + i)) : size - i;
    std::memcpy(out, data + i, run);
    out += run;
    i += run;
    if (!ff) break;
    size_t j = i + 1;
    while (j < size && data[j] == 0xFF) ++j;  // fill bytes
    if (j >= size) break;
    const int marker = data[j];
    i = j + 1;
    if (marker == 0) {
      *out++ = 0xFF;
    } else if (marker == JPEG_RST0 + int((segment_start_.size() - 1) & 7)) {
      segment_start_.push_back(size_t(out - clean_.data()));
    } else {
      end_marker_ = marker;
      break;
    }
  }
  const size_t end = size_t(out - clean_.data());
  segment_start_.push_back(end);
  std::memset(out, 0, kPadding);
}

void EntropyDecoder::start_pass(j_decompress_ptr cinfo) {
  // Only a new scan would call this, and install() takes single-scan images only.
  ERREXIT1(cinfo, JERR_BAD_STATE, cinfo->global_state);
}

void EntropyDecoder::fail(j_decompress_ptr cinfo, int warning, int param0, int param1) {
  // decode.cpp's handler turns these warnings into errors (a longjmp). Should a handler
  // return, the rest of the scan decodes as zeros (libjpeg would go on decoding garbage,
  // and pick up again at the next restart marker).
  cinfo->err->msg_parm.i[0] = param0;
  cinfo->err->msg_parm.i[1] = param1;
  WARNMS(cinfo, warning);
  hook_.insufficient_data = TRUE;
}

void EntropyDecoder::restart(j_decompress_ptr cinfo) {
  if (segment_ + 2 >= segment_start_.size()) {  // the scan ended before this restart marker
    if (end_marker_ == 0)
      fail(cinfo, JWRN_JPEG_EOF);
    else
      fail(cinfo, JWRN_MUST_RESYNC, end_marker_, int(segment_ & 7));
    return;
  }
  ++segment_;
  next_ = clean_.data() + segment_start_[segment_];
  bits_ = 0;
  bit_count_ = 0;
  std::memset(last_dc_, 0, sizeof(last_dc_));
  restarts_to_go_ = cinfo->restart_interval;
}

// Whether any of `count` MCUs from (row, col) on is one libjpeg keeps: from first_row_ on,
// in the columns [first_col_, last_col_].
bool EntropyDecoder::keeps_any(int row, int col, int count) const {
  for (; count > 0; ++row, col = 0) {
    const int n = std::min(count, mcus_per_row_ - col);  // this row's part: [col, col + n)
    if (row >= first_row_ && col <= last_col_ && col + n - 1 >= first_col_) return true;
    count -= n;
  }
  return false;
}

boolean EntropyDecoder::decode_mcu(j_decompress_ptr cinfo, JBLOCKROW* blocks) {
  EntropyDecoder& d = *reinterpret_cast<Hook*>(cinfo->entropy)->self;
  if (cinfo->restart_interval) {
    const unsigned interval = cinfo->restart_interval;
    if (d.restarts_to_go_ == 0) d.restart(cinfo);
    if (d.restarts_to_go_ == interval) d.skip_interval_ = !d.keeps_any(d.mcu_row_, d.mcu_col_, int(interval));
    --d.restarts_to_go_;
  }
  // libjpeg IDCTs only the MCU columns of the crop; NULL blocks: rows being skipped.
  const bool keep = blocks != nullptr && d.mcu_col_ >= d.first_col_ && d.mcu_col_ <= d.last_col_;
  if (++d.mcu_col_ == d.mcus_per_row_) {
    d.mcu_col_ = 0;
    ++d.mcu_row_;
  }
  if (d.hook_.insufficient_data || d.skip_interval_) return TRUE;

  BitReader r{d.next_, d.bits_, d.bit_count_};
  for (int b = 0; b < d.blocks_in_mcu_; ++b) {
    r.ensure_coefficient();
    const HuffTable& dc_table = *d.block_dc_[b];
    int diff;
    if (const uint32_t e = dc_table.coef[r.peek(kLook)]) {
      r.drop(e & 0xFF);
      diff = static_cast<int16_t>(e >> 16);
    } else {
      const int size = symbol(r, dc_table);
      if (size < 0) {
        d.fail(cinfo, JWRN_HUFF_BAD_CODE);
        return TRUE;
      }
      diff = size ? extend(r.take(size), size) : 0;
    }
    int& dc = d.last_dc_[d.block_comp_[b]];
    // Unsigned, as libjpeg: corrupt data can push the sum past INT_MAX.
    dc = static_cast<int>(static_cast<unsigned>(dc) + static_cast<unsigned>(diff));

    if (keep) blocks[b][0][0] = static_cast<JCOEF>(dc);
    const HuffTable& ac = *d.block_ac_[b];
    const bool decoded = keep && d.block_ac_needed_[b] ? ac_coefficients<true>(r, ac, blocks[b][0])
                         : ac.skip_ready()             ? skip_ac(r, ac)
                                                       : ac_coefficients<false>(r, ac, nullptr);
    if (!decoded) {
      d.fail(cinfo, JWRN_HUFF_BAD_CODE);
      return TRUE;
    }
  }
  d.next_ = r.next;
  d.bits_ = r.bits;
  d.bit_count_ = r.count;

  // Past the end of this restart interval's data: libjpeg's "premature end".
  const uint8_t* start = d.clean_.data() + d.segment_start_[d.segment_];
  const size_t available = (d.segment_start_[d.segment_ + 1] - d.segment_start_[d.segment_]) * 8;
  if (size_t(r.next - start) * 8 - size_t(r.count) > available) {
    const bool last = d.segment_ + 2 == d.segment_start_.size();
    d.fail(cinfo, last && d.end_marker_ == 0 ? JWRN_JPEG_EOF : JWRN_HIT_MARKER);
  }
  return TRUE;
}

}  // namespace fastloader
