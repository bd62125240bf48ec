// fastloader's own Huffman (entropy) decoder for sequential single-scan JPEGs, plugged
// into libjpeg in place of its own: libjpeg-turbo still does the IDCT, upsampling and
// colour conversion. It is faster on the blocks a crop or DCT scaling does not use:
// their AC coefficients are passed over, a table lookup each, with nothing stored,
// while libjpeg decodes every coefficient of every block it passes.
// Decoded coefficients are exactly libjpeg's, and so are the errors on corrupt data
// (the same libjpeg warnings, which decode.cpp turns into errors), but for two cases:
// it also reports the invalid codes libjpeg-turbo's fast path decodes as zeros, and it
// accepts a scan that ends without an EOI marker once every bit it needs is there.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <jpeglib.h>

namespace fastloader {

constexpr int kHuffLookBits = 10;
constexpr int kHuffSkipBits = 12;

// One Huffman table, with lookups for the next kHuffLookBits bits of the stream.
struct HuffTable {
  uint16_t lookup[1 << kHuffLookBits];  // (code length << 8) | symbol; 0 = a longer code
  // A whole coefficient (code and magnitude bits; a DC difference for DC tables) in one
  // lookup: (uint16 value << 16) | (zeros before it << 8) | bits; 0: a longer code. An
  // end of block reads as a zero after 63 zeros, which takes any block past its end.
  uint32_t coef[1 << kHuffLookBits];
  // AC tables, once skip_ready(): every whole coefficient (code and magnitude) that fits
  // in the next kHuffSkipBits bits, up to and including an end of block, passed over in
  // one lookup, for blocks whose values are not needed: bits | positions advanced << 4 |
  // (end of block) << 12; 0 when not even one fits.
  uint16_t skip[1 << kHuffSkipBits];
  int32_t maxcode[18];                 // largest code of each length, -1 if none
  int32_t valoffset[17];
  uint8_t huffval[256];

  // False when the table is not a valid prefix code. Cheap when the table is the one
  // built last (images from one encoder share their tables).
  bool build(const JHUFF_TBL& table, bool is_ac);
  bool skip_ready() const { return skip_ready_; }

 private:
  bool rebuild(const JHUFF_TBL& table, bool is_ac);
  void build_skip();
  uint8_t built_from_[17 + 256];  // the JHUFF_TBL's bits and huffval
  bool built_ = false;
  bool skip_ready_ = false;
};

class EntropyDecoder {
 public:
  // Takes over entropy decoding of the scan libjpeg has just set up (call right after
  // jpeg_start_decompress and jpeg_crop_scanline, reading from a memory source). Blocks
  // of MCU columns outside [first_col, last_col], which libjpeg does not IDCT, keep only
  // their DC prediction. MCU rows above first_row are asked for without blocks (passed
  // over). A restart interval none of whose MCUs is kept is not decoded at all: restart
  // markers make the next one independent of it. Returns false, leaving libjpeg's decoder
  // in place, for scans it does not handle (progressive, arithmetic, multi-scan).
  bool install(j_decompress_ptr cinfo, int first_col, int last_col, int first_row = 0);

 private:
  // Laid out like libjpeg's struct jpeg_entropy_decoder (jpegint.h), whose place in
  // cinfo->entropy it takes; `self` leads back here.
  struct Hook {
    void (*start_pass)(j_decompress_ptr);
    boolean (*decode_mcu)(j_decompress_ptr, JBLOCKROW*);
    boolean insufficient_data;
    EntropyDecoder* self;
  };

  static void start_pass(j_decompress_ptr);
  static boolean decode_mcu(j_decompress_ptr cinfo, JBLOCKROW* blocks);

  void split_scan(const uint8_t* data, size_t size);
  bool keeps_any(int row, int col, int count) const;
  void restart(j_decompress_ptr cinfo);
  void fail(j_decompress_ptr cinfo, int warning, int param0 = 0, int param1 = 0);

  Hook hook_{};
  HuffTable dc_[NUM_HUFF_TBLS], ac_[NUM_HUFF_TBLS];
  const HuffTable* block_dc_[D_MAX_BLOCKS_IN_MCU];
  const HuffTable* block_ac_[D_MAX_BLOCKS_IN_MCU];
  int block_comp_[D_MAX_BLOCKS_IN_MCU];
  // False for a component decoded at 1/8 scale: its IDCT reads the DC coefficient only.
  bool block_ac_needed_[D_MAX_BLOCKS_IN_MCU];
  int blocks_in_mcu_ = 0;

  // The scan's entropy-coded bytes with byte stuffing removed, one segment per restart
  // interval, followed by zero padding that bounds reads past the end of corrupt data.
  std::vector<uint8_t> clean_;
  std::vector<size_t> segment_start_;  // segment i is clean_[start[i], start[i + 1])
  int end_marker_ = 0;                 // the marker that ended the scan (0: end of data)

  size_t segment_ = 0;
  const uint8_t* next_ = nullptr;  // next byte to load into bits_
  uint64_t bits_ = 0;              // unread bits, most significant first
  int bit_count_ = 0;
  int last_dc_[MAX_COMPS_IN_SCAN] = {};
  unsigned restarts_to_go_ = 0;
  int mcu_col_ = 0, mcu_row_ = 0;  // of the next MCU asked for
  int mcus_per_row_ = 0, first_col_ = 0, last_col_ = 0, first_row_ = 0;
  bool skip_interval_ = false;  // the current restart interval keeps no MCU: not decoded
};

}  // namespace fastloader
