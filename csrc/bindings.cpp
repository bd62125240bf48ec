// The only file that includes torch: turns Python objects into raw pointers, releases the
// GIL around the torch-free kernels, and maps their errors to Python exceptions.
#include <torch/extension.h>
#include <ATen/CPUGeneratorImpl.h>

#include <sys/uio.h>
#include <unistd.h>

#include <climits>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "common/block_pool.h"
#include "common/lazy_shuffle.h"
#include "common/stream_copy.h"
#include "image/augment.h"
#include "image/random_crop.h"
#include "io/tar.h"
#include "jpeg/transcode.h"
#include "text/packing.h"
#include "text/wordpiece.h"
#include "jpeg/decode.h"
#include "python/large_bytes.h"
#include "python/member_groups.h"

namespace fl = fastloader;
namespace py = pybind11;

namespace {

// Holds the buffer views of a batch while the GIL is released.
struct BorrowedImages {
  std::vector<py::buffer_info> views;
  std::vector<fl::ImageSource> sources;

  // channels: what decoded pixels must have (0: any, for a probe of their size only)
  BorrowedImages(const py::list& images, int channels) {
    views.reserve(images.size());
    sources.reserve(images.size());
    for (size_t i = 0; i < images.size(); ++i) {
      views.push_back(py::reinterpret_borrow<py::buffer>(images[i]).request());
      const py::buffer_info& v = views.back();
      fl::ImageSource src;
      src.data = static_cast<const uint8_t*>(v.ptr);
      src.size = size_t(v.size) * v.itemsize;
      if (v.ndim == 3) {  // decoded pixels, validated by the Python side
        if (v.itemsize != 1 || (channels > 0 && v.shape[2] != channels))
          throw py::value_error("sample " + std::to_string(i) + ": decoded image must be HxWx" +
                                std::to_string(channels) + " uint8");
        src.raw_h = int(v.shape[0]);
        src.raw_w = int(v.shape[1]);
      }
      sources.push_back(src);
    }
  }
};

fl::DecodeLimits limits_of(int64_t max_pixels, int max_scans) {
  fl::DecodeLimits limits;
  limits.max_pixels = max_pixels;
  limits.max_scans = max_scans;
  return limits;
}

py::bytes add_restart_markers(py::buffer data, int mcus, int64_t max_pixels, int max_scans) {
  py::buffer_info input = data.request();
  std::vector<uint8_t> out;
  {
    py::gil_scoped_release no_gil;
    out = fl::add_restart_markers(static_cast<const uint8_t*>(input.ptr), size_t(input.size) * input.itemsize,
                                  mcus, limits_of(max_pixels, max_scans));
  }
  return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
}

torch::Tensor decode_jpeg(py::buffer data, int mode, int scale, bool apply_orientation,
                          int64_t max_pixels, int max_scans) {
  py::buffer_info input = data.request();
  const auto* bytes = static_cast<const uint8_t*>(input.ptr);
  const size_t size = size_t(input.size) * input.itemsize;
  const fl::ColorMode color = static_cast<fl::ColorMode>(mode);
  const int channels = fl::channels_of(color);
  py::gil_scoped_release no_gil;
  fl::JpegDecoder& dec = fl::thread_decoder();
  const fl::JpegInfo info = dec.open(bytes, size, apply_orientation, limits_of(max_pixels, max_scans));
  const int w = fl::scaled_dim(info.width, scale), h = fl::scaled_dim(info.height, scale);
  const int orientation = apply_orientation ? info.orientation : 1;
  const bool swap = fl::orientation_swaps_axes(orientation);
  torch::Tensor out = torch::empty({swap ? w : h, swap ? h : w, channels}, torch::kUInt8);
  // Rows go straight into the tensor when they need neither reshaping nor orienting.
  std::vector<uint8_t> staging;
  const fl::PixelView view = dec.decode(color, scale, {0, 0, w, h}, [&](size_t bytes) {
    if (orientation == 1 && bytes == size_t(out.numel())) return out.data_ptr<uint8_t>();
    staging.resize(bytes);
    return staging.data();
  });
  if (orientation != 1) {
    fl::orient_image(view.data, view.stride, w, h, channels, orientation, out.data_ptr<uint8_t>());
  } else if (view.data != out.data_ptr<uint8_t>()) {
    for (int y = 0; y < h; ++y)
      std::memcpy(out.data_ptr<uint8_t>() + size_t(y) * w * channels, view.data + y * view.stride,
                  size_t(w) * channels);
  }
  return out;
}

py::tuple probe_images(const py::list& images, bool apply_orientation, int64_t max_pixels,
                       int max_scans, int num_threads) {
  BorrowedImages batch(images, 0);
  std::vector<fl::ImageSize> sizes;
  {
    py::gil_scoped_release no_gil;
    sizes = fl::probe_images(batch.sources, apply_orientation, limits_of(max_pixels, max_scans),
                             num_threads);
  }
  torch::Tensor hw = torch::empty({int64_t(sizes.size()), 2}, torch::kInt64);
  auto acc = hw.accessor<int64_t, 2>();
  py::list errors;
  for (size_t i = 0; i < sizes.size(); ++i) {
    acc[i][0] = sizes[i].height;
    acc[i][1] = sizes[i].width;
    errors.append(sizes[i].error);
  }
  return py::make_tuple(hw, errors);
}

fl::OutDType out_dtype_of(const torch::Tensor& out) {
  switch (out.scalar_type()) {
    case torch::kUInt8: return fl::OutDType::U8;
    case torch::kFloat32: return fl::OutDType::F32;
    case torch::kFloat16: return fl::OutDType::F16;
    case torch::kBFloat16: return fl::OutDType::BF16;
    default: throw py::value_error("output dtype must be uint8, float32, float16 or bfloat16");
  }
}

std::vector<std::string> augment_batch(const py::list& images, torch::Tensor geometry,
                                       torch::Tensor flips, torch::Tensor out, int mode,
                                       int layout, std::optional<torch::Tensor> lut,
                                       bool apply_orientation, bool dct_scaling, bool fast_idct,
                                       int64_t max_pixels, int max_scans, int num_threads,
                                       std::optional<torch::Tensor> recipe, bool fast_color) {
  const int64_t n = int64_t(images.size());
  fl::BatchSpec spec;
  spec.mode = static_cast<fl::ColorMode>(mode);
  spec.layout = static_cast<fl::Layout>(layout);
  spec.dtype = out_dtype_of(out);
  spec.apply_orientation = apply_orientation;
  spec.dct_scaling = dct_scaling;
  spec.fast_idct = fast_idct;
  spec.fast_color = fast_color;
  spec.limits = limits_of(max_pixels, max_scans);
  spec.num_threads = std::max(1, num_threads);
  const int64_t channels = fl::channels_of(spec.mode);
  if (out.device().type() != torch::kCPU || !out.is_contiguous() || out.dim() != 4 || out.size(0) != n)
    throw py::value_error("out must be a contiguous CPU batch of " + std::to_string(n) + " images");
  const bool nhwc = spec.layout == fl::Layout::NHWC;
  if ((nhwc ? out.size(3) : out.size(1)) != channels)
    throw py::value_error("out has the wrong number of channels");
  spec.out_h = int(nhwc ? out.size(1) : out.size(2));
  spec.out_w = int(nhwc ? out.size(2) : out.size(3));
  if (geometry.scalar_type() != torch::kFloat64 || geometry.dim() != 2 || geometry.size(0) != n ||
      geometry.size(1) != 8 || flips.scalar_type() != torch::kBool || flips.numel() != n)
    throw py::value_error("geometry must be float64 (N, 8) and flips bool (N,)");
  geometry = geometry.contiguous();
  flips = flips.contiguous();
  torch::Tensor table;
  if (lut) {
    table = lut->to(torch::kFloat32).contiguous();
    if (table.numel() != channels * 256) throw py::value_error("lut must hold channels x 256 values");
    spec.lut = table.data_ptr<float>();
  }
  torch::Tensor steps;
  if (recipe) {
    steps = recipe->to(torch::kFloat32).contiguous();
    if (steps.numel() != channels * 3) throw py::value_error("recipe must hold channels x 3 values");
    spec.recipe = steps.data_ptr<float>();
  }
  std::vector<fl::SampleGeometry> geo(n);
  const double* g = geometry.data_ptr<double>();
  const bool* f = flips.data_ptr<bool>();
  for (int64_t i = 0; i < n; ++i, g += 8)
    geo[i] = {g[0], g[1], g[2], g[3], int(g[4]), int(g[5]), int(g[6]), int(g[7]), f[i]};
  BorrowedImages batch(images, int(channels));
  void* dst = out.data_ptr();
  py::gil_scoped_release no_gil;
  return fl::augment_batch(batch.sources, geo, spec, dst);
}

// Whether the kernel computes float values from `recipe` (it reproduces `lut` bit for bit)
// rather than looking them up: for tests.
bool recipe_reproduces_table(torch::Tensor lut, torch::Tensor recipe, int mode) {
  fl::BatchSpec spec;
  spec.mode = static_cast<fl::ColorMode>(mode);
  const int64_t channels = fl::channels_of(spec.mode);
  torch::Tensor table = lut.to(torch::kFloat32).contiguous(), steps = recipe.to(torch::kFloat32).contiguous();
  if (table.numel() != channels * 256 || steps.numel() != channels * 3)
    throw py::value_error("lut must hold channels x 256 values, recipe channels x 3");
  spec.lut = table.data_ptr<float>();
  spec.recipe = steps.data_ptr<float>();
  return fl::checked_recipe(spec) != nullptr;
}

torch::Tensor sample_resized_crops(torch::Tensor sizes, double scale_lo, double scale_hi,
                                  double ratio_lo, double ratio_hi, uint64_t seed) {
  if (sizes.scalar_type() != torch::kInt64 || sizes.dim() != 2 || sizes.size(1) != 2)
    throw py::value_error("sizes must be int64 (N, 2) heights and widths");
  sizes = sizes.contiguous();
  const int64_t n = sizes.size(0);
  torch::Tensor boxes = torch::empty({n, 4}, torch::kInt64);
  const int64_t* hw = sizes.data_ptr<int64_t>();
  int64_t* out = boxes.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const fl::CropBox b = fl::sample_resized_crop(int(hw[2 * i]), int(hw[2 * i + 1]), scale_lo,
                                                  scale_hi, ratio_lo, ratio_hi, seed, uint64_t(i));
    out[4 * i] = b.top;
    out[4 * i + 1] = b.left;
    out[4 * i + 2] = b.height;
    out[4 * i + 3] = b.width;
  }
  return boxes;
}

// (names, int64 (N, 3) header/data offset/size, consumed, at_end, error, error_offset)
py::tuple scan_tar(py::buffer data, uint64_t base, bool final, uint64_t max_member_size) {
  py::buffer_info input = data.request();
  if (input.ndim != 1 || input.itemsize != 1 || (input.size > 1 && input.strides[0] != 1))
    throw py::value_error("tar data must be a contiguous 1-D byte buffer");
  fl::TarScan scan;
  {
    py::gil_scoped_release no_gil;
    scan = fl::scan_tar(static_cast<const uint8_t*>(input.ptr), size_t(input.size), base, final,
                        max_member_size);
  }
  const int64_t n = int64_t(scan.members.size());
  torch::Tensor where = torch::empty({n, 3}, torch::kInt64);
  int64_t* w = where.data_ptr<int64_t>();
  py::list names(n);
  for (int64_t i = 0; i < n; ++i) {
    const fl::TarMember& m = scan.members[size_t(i)];
    PyObject* name = PyUnicode_DecodeUTF8(m.name.data(), Py_ssize_t(m.name.size()), "surrogateescape");
    if (!name) throw py::error_already_set();
    PyList_SET_ITEM(names.ptr(), i, name);
    w[3 * i] = int64_t(m.header);
    w[3 * i + 1] = int64_t(m.offset);
    w[3 * i + 2] = int64_t(m.size);
  }
  return py::make_tuple(names, where, scan.consumed, scan.at_end, scan.error, scan.error_offset);
}

// A contiguous 1-D buffer of `T` (what numpy's int64 / int32 arrays give).
template <typename T>
const T* typed_items(const py::buffer_info& b, size_t n, const char* what) {
  if (b.itemsize != sizeof(T) || b.ndim != 1 || size_t(b.size) != n || (n > 1 && b.strides[0] != sizeof(T)))
    throw py::value_error(std::string(what) + " must be a contiguous 1-D array of " + std::to_string(n) +
                          " " + std::to_string(8 * sizeof(T)) + "-bit items");
  return static_cast<const T*>(b.ptr);
}

// The sample dicts of one chunk: sample i is {"__key__": key i, "__url__": url, ext: bytes,
// ...} with its counts[i] members in order, member j's bytes being value_of(off[j], end[j])
// (a new reference, or null with a Python error set) under exts[ext[j]]. keys is a list of
// the n keys, or bytes holding them as UTF-8 (surrogateescape) at [key_starts[i], key_ends[i]).
template <typename ValueOf>
py::list sample_dicts(py::object keys, py::buffer key_starts, py::buffer key_ends, py::buffer counts,
                      py::buffer ext, py::buffer off, py::buffer end, py::list exts, py::str url,
                      ValueOf&& value_of) {
  const py::buffer_info cn = counts.request();
  const size_t n = size_t(cn.size);
  const int64_t* count = typed_items<int64_t>(cn, n, "counts");
  const bool listed = PyList_Check(keys.ptr());
  if (listed ? size_t(PyList_GET_SIZE(keys.ptr())) != n : !PyBytes_Check(keys.ptr()))
    throw py::value_error("keys must be a list of one key per sample, or bytes");
  const py::buffer_info ks = key_starts.request(), ke = key_ends.request();
  const int64_t* k0 = listed ? nullptr : typed_items<int64_t>(ks, n, "key_starts");
  const int64_t* k1 = listed ? nullptr : typed_items<int64_t>(ke, n, "key_ends");
  const char* blob = listed ? nullptr : PyBytes_AS_STRING(keys.ptr());
  const int64_t blob_len = listed ? 0 : PyBytes_GET_SIZE(keys.ptr());
  const py::buffer_info ex = ext.request(), of = off.request(), en = end.request();
  const size_t members = size_t(ex.size);
  const int32_t* e = typed_items<int32_t>(ex, members, "ext");
  const int64_t* o = typed_items<int64_t>(of, members, "off");
  const int64_t* x = typed_items<int64_t>(en, members, "end");
  const Py_ssize_t n_exts = Py_ssize_t(exts.size());
  static PyObject* key_name = PyUnicode_InternFromString("__key__");
  static PyObject* url_name = PyUnicode_InternFromString("__url__");
  py::list out(n);
  size_t m = 0;
  for (size_t i = 0; i < n; ++i) {
    py::object key;
    if (listed) {
      key = py::reinterpret_borrow<py::object>(PyList_GET_ITEM(keys.ptr(), Py_ssize_t(i)));
    } else {
      if (k0[i] < 0 || k0[i] > k1[i] || k1[i] > blob_len) throw py::value_error("key range outside the key blob");
      key = py::reinterpret_steal<py::object>(
          PyUnicode_DecodeUTF8(blob + k0[i], Py_ssize_t(k1[i] - k0[i]), "surrogateescape"));
    }
    py::object sample = py::reinterpret_steal<py::object>(PyDict_New());
    if (!sample || !key || PyDict_SetItem(sample.ptr(), key_name, key.ptr()) ||
        PyDict_SetItem(sample.ptr(), url_name, url.ptr()))
      throw py::error_already_set();
    if (count[i] < 0 || m + size_t(count[i]) > members) throw py::value_error("member counts exceed the members");
    for (const size_t stop = m + size_t(count[i]); m < stop; ++m) {
      if (e[m] < 0 || e[m] >= n_exts) throw py::value_error("extension id out of range");
      py::object value = py::reinterpret_steal<py::object>(value_of(o[m], x[m]));
      if (!value || PyDict_SetItem(sample.ptr(), PyList_GET_ITEM(exts.ptr(), e[m]), value.ptr()))
        throw py::error_already_set();
    }
    PyList_SET_ITEM(out.ptr(), Py_ssize_t(i), sample.release().ptr());
  }
  return out;
}

// Members copied out of data (an mmap'd shard, bytes, a memoryview), slices clamped to it
// as Python's are.
py::list build_samples(py::buffer data, py::object keys, py::buffer key_starts, py::buffer key_ends,
                       py::buffer counts, py::buffer ext, py::buffer off, py::buffer end,
                       py::list exts, py::str url) {
  const py::buffer_info buf = data.request();
  if (buf.ndim != 1 || buf.itemsize != 1 || (buf.size > 1 && buf.strides[0] != 1))
    throw py::value_error("shard data must be a contiguous 1-D byte buffer");
  const auto* base = static_cast<const char*>(buf.ptr);
  const int64_t len = buf.size;
  return sample_dicts(keys, key_starts, key_ends, counts, ext, off, end, exts, url, [&](int64_t o, int64_t x) {
    const int64_t a = std::clamp<int64_t>(o, 0, len), b = std::clamp<int64_t>(x, a, len);
    return PyBytes_FromStringAndSize(base + a, Py_ssize_t(b - a));
  });
}

constexpr Py_ssize_t kPreadMaxChunk = 0x7FFFF000;  // Linux reads at most this much at once

// Bytes [a, b) of the file fd, read with pread (the GIL let go); null with EOFError(a) set
// where the file ends first, or OSError where the read fails.
PyObject* pread_bytes(int fd, int64_t a, int64_t b) {
  if (a < 0 || b < a) {
    PyErr_SetString(PyExc_ValueError, "member range out of order");
    return nullptr;
  }
  const Py_ssize_t n = Py_ssize_t(b - a);
  PyObject* value = PyBytes_FromStringAndSize(nullptr, n);
  if (!value) return nullptr;
  char* dst = PyBytes_AS_STRING(value);  // nobody else sees it yet: written without the GIL
  Py_ssize_t done = 0;
  int error = 0;
  {
    py::gil_scoped_release unlocked;  // as os.pread: a read may wait on a slow disk
    while (done < n) {
      const ssize_t got = ::pread(fd, dst + done, size_t(std::min(n - done, kPreadMaxChunk)), off_t(a + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        error = got < 0 ? errno : 0;
        break;
      }
      done += got;
    }
  }
  if (done == n) return value;
  Py_DECREF(value);
  if (error) {
    errno = error;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  PyObject* where = PyLong_FromLongLong(a);
  if (where) {
    PyErr_SetObject(PyExc_EOFError, where);
    Py_DECREF(where);
  }
  return nullptr;
}

// Members read from the file fd with pread (one copy from the page cache). With
// note_min >= 0, each member of note_min bytes or more is also appended to noted, then
// its offset (for `_origins.note`).
py::list build_samples_pread(int fd, py::object keys, py::buffer key_starts, py::buffer key_ends,
                             py::buffer counts, py::buffer ext, py::buffer off, py::buffer end,
                             py::list exts, py::str url, int64_t note_min, py::list noted) {
  return sample_dicts(keys, key_starts, key_ends, counts, ext, off, end, exts, url, [&](int64_t o, int64_t x) {
    py::object value = py::reinterpret_steal<py::object>(pread_bytes(fd, o, x));
    if (value && note_min >= 0 && x - o >= note_min) {
      py::object at = py::reinterpret_steal<py::object>(PyLong_FromLongLong(o));
      if (!at || PyList_Append(noted.ptr(), value.ptr()) || PyList_Append(noted.ptr(), at.ptr())) return (PyObject*)nullptr;
    }
    return value.release().ptr();
  });
}

torch::Tensor to_tensor(const std::vector<int64_t>& v) {
  torch::Tensor t = torch::empty({int64_t(v.size())}, torch::kInt64);
  if (!v.empty()) std::memcpy(t.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
  return t;
}

// The UTF-8 of each item (str, or bytes to be checked as UTF-8); the list keeps them alive.
std::vector<std::string_view> utf8_items(const py::list& items, const char* what) {
  std::vector<std::string_view> out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    PyObject* o = items[i].ptr();
    if (PyUnicode_Check(o)) {
      Py_ssize_t n = 0;
      const char* p = PyUnicode_AsUTF8AndSize(o, &n);
      if (!p) {
        PyErr_Clear();
        throw py::value_error(std::string(what) + " item " + std::to_string(i) +
                              ": not encodable as UTF-8 (lone surrogates)");
      }
      out.emplace_back(p, size_t(n));
    } else if (PyBytes_Check(o)) {
      out.emplace_back(PyBytes_AS_STRING(o), size_t(PyBytes_GET_SIZE(o)));
    } else {
      throw py::type_error(std::string(what) + " item " + std::to_string(i) + " is a " +
                           Py_TYPE(o)->tp_name + ", not str");
    }
  }
  return out;
}

// (ids, token_type_ids, offsets): item i is ids[offsets[i]:offsets[i + 1]].
py::tuple wordpiece_encode_batch(const fl::WordPieceTokenizer& tok, const py::list& first,
                                 const py::object& second, bool add_special_tokens, int64_t max_length,
                                 int truncation, bool truncate_left, int num_threads) {
  std::vector<std::string_view> a = utf8_items(first, "text");
  std::vector<std::string_view> b;
  const bool pairs = !second.is_none();
  if (pairs) {
    py::list second_list = second.cast<py::list>();
    if (second_list.size() != first.size()) throw py::value_error("text_pairs must be as many as texts");
    b = utf8_items(second_list, "text_pair");
  }
  fl::EncodeOptions options{add_special_tokens, max_length, static_cast<fl::Truncation>(truncation),
                            truncate_left};
  fl::EncodedBatch enc;
  {
    py::gil_scoped_release no_gil;
    enc = tok.encode_batch(a, pairs ? &b : nullptr, options, num_threads);
  }
  return py::make_tuple(to_tensor(enc.ids), to_tensor(enc.type_ids), to_tensor(enc.offsets));
}

torch::Tensor pack_first_fit_decreasing(torch::Tensor lengths, int64_t capacity) {
  if (lengths.scalar_type() != torch::kInt64 || lengths.dim() != 1 || !lengths.device().is_cpu())
    throw py::value_error("lengths must be a 1-D int64 CPU tensor");
  lengths = lengths.contiguous();
  const int64_t* p = lengths.data_ptr<int64_t>();
  for (int64_t i = 0; i < lengths.size(0); ++i)
    if (p[i] < 0 || p[i] > capacity) throw py::value_error("a length is outside [0, capacity]");
  std::vector<int64_t> rows;
  {
    py::gil_scoped_release no_gil;
    rows = fl::first_fit_decreasing(p, lengths.size(0), capacity);
  }
  return to_tensor(rows);
}

// default_collate's common cases without torch's per-item overhead (torch.stack unsqueezes
// every item; torch.tensor infers a type per element). Each returns None where its case
// does not hold, and the caller then does what torch does (same result or same error).

constexpr size_t kStackPlainMaxBytes = size_t(1) << 20;

// CPU tensors on fastloader::BlockPool blocks (large batches made in this process).
class PooledAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    size_t size = 0;
    void* block = fl::batch_block_pool().take(n, &size);
    TORCH_CHECK_WITH(OutOfMemoryError, block != nullptr, "fastloader: could not map ", n, " bytes for a batch");
    return {block, new Block{block, size}, &PooledAllocator::release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

 private:
  struct Block {
    void* ptr;
    size_t size;
  };
  static void release(void* ctx) {
    auto* b = static_cast<Block*>(ctx);
    fl::batch_block_pool().give_back(b->ptr, b->size);
    delete b;
  }
};

PooledAllocator& pooled_allocator() {
  static auto* a = new PooledAllocator();
  return *a;
}

size_t batch_pool_kept_bytes() { return fl::batch_block_pool().kept_bytes(); }

// A contiguous CPU tensor for a batch of this process: from 1 MB on, on a block of the batch
// pool (reused pages, out of the heap, see block_pool.h).
torch::Tensor batch_empty(std::vector<int64_t> shape, at::ScalarType dtype) {
  size_t bytes = c10::elementSize(dtype);
  for (const int64_t s : shape) bytes *= size_t(std::max<int64_t>(s, 0));
  if (bytes < kStackPlainMaxBytes) return torch::empty(shape, torch::TensorOptions().dtype(dtype));
  return at::Tensor(at::detail::empty_generic(shape, &pooled_allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                              dtype, std::nullopt));
}

// A tensor whose bytes torch.stack would copy as they are: a dense, contiguous CPU tensor
// with no lazy conjugation/negation and nothing autograd must see.
bool is_plain_item(const torch::Tensor& t, bool grad) {
  return t.device().is_cpu() && t.layout() == torch::kStrided && !t.is_nested() && !t.is_quantized() &&
         t.is_contiguous() && !t.is_conj() && !t.is_neg() && !t._is_zerotensor() && !(grad && t.requires_grad()) &&
         !t._fw_grad(/*level=*/0).defined() && !(t.nbytes() > 0 && t.const_data_ptr() == nullptr);
}

// Writes n items of `bytes` bytes each, one after another, at offset of the file fd
// (pwritev, the GIL let go); errno of a failed write, else 0.
int pwrite_items(int fd, const std::vector<const void*>& sources, size_t bytes, int64_t offset, bool gil_held = true) {
  std::optional<py::gil_scoped_release> unlocked;
  if (gil_held) unlocked.emplace();
  const size_t n = sources.size();
  std::vector<iovec> iov;
  size_t i = 0, done_in_item = 0;  // the next item, and how much of it is written
  off_t at = off_t(offset);
  while (bytes > 0 && i < n) {
    iov.clear();
    for (size_t j = i; j < n && iov.size() < size_t(IOV_MAX); ++j) {
      const size_t skip = j == i ? done_in_item : 0;
      iov.push_back({const_cast<char*>(static_cast<const char*>(sources[j])) + skip, bytes - skip});
    }
    const ssize_t got = ::pwritev(fd, iov.data(), int(iov.size()), at);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return got < 0 ? errno : EIO;
    at += got;
    for (size_t left = size_t(got); left > 0;) {
      const size_t step = std::min(left, bytes - done_in_item);
      left -= step;
      done_in_item += step;
      if (done_in_item == bytes) ++i, done_in_item = 0;
    }
  }
  return 0;
}

// torch.stack(batch) for a list or tuple of same-shape contiguous plain CPU tensors, into
// out when given. With fd >= 0, out lives in that file (a worker's shared segment) at
// offset: the items are written there with pwritev, so this process maps none of its pages
// (no faults, no memory counted twice). Else a batch of 1 MB or more goes into a block of
// the batch pool (reused pages, see block_pool.h), copied over torch's threads.
py::object stack_plain(py::handle batch, std::optional<torch::Tensor> out, int fd, int64_t offset) {
  PyObject* seq = batch.ptr();
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) return py::none();
  const size_t n = size_t(PySequence_Fast_GET_SIZE(seq));
  if (n == 0) return py::none();
  // The items are held: the writes below let the GIL go, and no other thread may free one.
  std::vector<torch::Tensor> items;
  std::vector<const void*> sources(n);
  items.reserve(n);
  const bool grad = at::GradMode::is_enabled();
  const torch::Tensor* first = nullptr;
  for (size_t i = 0; i < n; ++i) {
    PyObject* obj = PySequence_Fast_GET_ITEM(seq, i);
    if (Py_TYPE(obj) != reinterpret_cast<PyTypeObject*>(THPVariableClass)) return py::none();
    const torch::Tensor& t = items.emplace_back(THPVariable_Unpack(obj));
    if (!is_plain_item(t, grad)) return py::none();
    if (first && (t.scalar_type() != first->scalar_type() || t.sizes() != first->sizes()))
      return py::none();
    if (!first) first = &t;
    sources[i] = t.const_data_ptr();
  }
  const size_t bytes = first->nbytes();
  const bool large = bytes * n >= kStackPlainMaxBytes;
  if (fd >= 0 && !out) throw py::value_error("stack_plain: a file needs the tensor it holds");
  std::vector<int64_t> shape{int64_t(n)};
  shape.insert(shape.end(), first->sizes().begin(), first->sizes().end());
  torch::Tensor result;
  if (out) {
    if (!out->device().is_cpu() || !out->is_contiguous() || out->scalar_type() != first->scalar_type() ||
        out->sizes() != torch::IntArrayRef(shape) || (grad && out->requires_grad()))
      return py::none();
    result = *out;
  } else {
    result = batch_empty(shape, first->scalar_type());
  }
  if (fd >= 0) {
    if (const int error = pwrite_items(fd, sources, bytes, offset)) {
      errno = error;
      PyErr_SetFromErrno(PyExc_OSError);
      throw py::error_already_set();
    }
    return py::cast(result);
  }
  auto* dst = static_cast<uint8_t*>(result.data_ptr());
  if (!large) {
    if (bytes)  // empty items may have no storage: memcpy takes no null pointer, even for 0 bytes
      for (size_t i = 0; i < n; ++i) std::memcpy(dst + i * bytes, sources[i], bytes);
    return py::cast(result);
  }
  // Large: over torch's intra-op threads (as torch.stack copies), the GIL let go.
  {
    py::gil_scoped_release unlocked;
    const int64_t grain = std::max<int64_t>(1, int64_t(kStackPlainMaxBytes / std::max<size_t>(bytes, 1)));
    const bool stream = bytes * n >= fl::kStreamCopyMinBytes;
    at::parallel_for(0, int64_t(n), grain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        if (stream) {
          fl::stream_copy(dst + size_t(i) * bytes, sources[size_t(i)], bytes);
        } else {
          std::memcpy(dst + size_t(i) * bytes, sources[size_t(i)], bytes);
        }
      }
    });
  }
  return py::cast(result);
}

// Row `row` of a batch filled as its samples are fetched (fastloader/_stream_collate.py):
// item is a plain tensor of out's dtype and row shape (see is_plain_item), or, with
// as_buffer, a C-contiguous buffer (a numpy array the caller checked) of the row's size.
// Copies it into out, or with fd >= 0 pwrites it at offset + row * row_bytes of that file
// (a worker's segment holding out: no page of it is mapped here). The GIL is let go while
// a large row is written. Returns False, writing nothing, where the item is not such.
bool write_row(const torch::Tensor& out, int64_t row, py::handle item, bool as_buffer, int fd, int64_t offset) {
  if (!out.is_contiguous() || out.dim() == 0 || row < 0 || row >= out.size(0)) throw py::value_error("write_row: bad row");
  const size_t row_bytes = out.nbytes() / size_t(out.size(0));
  PyObject* obj = item.ptr();
  torch::Tensor held;  // keeps the source alive while the GIL is let go
  Py_buffer view{};
  const void* source = nullptr;
  if (!as_buffer) {
    if (Py_TYPE(obj) != reinterpret_cast<PyTypeObject*>(THPVariableClass)) return false;
    held = THPVariable_Unpack(obj);
    if (!is_plain_item(held, at::GradMode::is_enabled()) || held.scalar_type() != out.scalar_type() ||
        held.sizes() != out.sizes().slice(1))
      return false;
    source = held.const_data_ptr();
  } else {
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) != 0) {
      PyErr_Clear();
      return false;
    }
    if (size_t(view.len) != row_bytes) {
      PyBuffer_Release(&view);
      return false;
    }
    source = view.buf;
  }
  int error = 0;
  {
    std::optional<py::gil_scoped_release> unlocked;
    if (row_bytes >= (size_t(64) << 10)) unlocked.emplace();
    if (fd >= 0) {
      std::vector<const void*> one{source};
      error = pwrite_items(fd, one, row_bytes, offset + row * int64_t(row_bytes), /*gil_held=*/!unlocked);
    } else if (row_bytes > 0) {
      auto* dst = static_cast<uint8_t*>(out.data_ptr()) + size_t(row) * row_bytes;
      if (out.nbytes() >= fl::kStreamCopyMinBytes) {
        fl::stream_copy(dst, source, row_bytes);
      } else {
        std::memcpy(dst, source, row_bytes);
      }
    }
  }
  if (as_buffer) PyBuffer_Release(&view);
  if (error) {
    errno = error;
    PyErr_SetFromErrno(PyExc_OSError);
    throw py::error_already_set();
  }
  return true;
}

// torch.randperm(n, generator=gen) on the CPU, made as it is read (fl::LazyShuffle: the
// same steps and draws). For a generator nothing else sees (RandomSampler's private one),
// the first batch needs only its own steps, not all n.
class LazyPermutation {
 public:
  LazyPermutation(int64_t n, at::Generator gen) : gen_(std::move(gen)), shuffle_(n) {
    at::check_generator<at::CPUGeneratorImpl>(gen_);
    TORCH_CHECK(n >= 0, "LazyPermutation: n must be non-negative, got ", n);
    // torch.randperm switches to another algorithm (64-bit draws, inside out) from here.
    TORCH_CHECK(n < int64_t(std::numeric_limits<uint32_t>::max() / 20), "LazyPermutation: n=", n,
                " is past torch.randperm's 32-bit algorithm");
  }

  // The next up to k entries (fewer at the end; none once all are read), as a list of
  // ints: what the sampler hands out (a tensor would be sliced and converted again).
  py::list next(int64_t k) {
    const int64_t count = std::min(shuffle_.remaining(), std::max<int64_t>(k, 0));
    std::vector<int64_t> out(static_cast<size_t>(count));
    py::list result(count);  // made before the steps (so is all the steps need)
    {
      auto* impl = at::check_generator<at::CPUGeneratorImpl>(gen_);
      std::lock_guard<std::mutex> lock(gen_.mutex());
      // count was taken before the list (whose allocation may run a finalizer, and other
      // threads): LazyShuffle refuses more steps than remain.
      shuffle_.next(count, [impl] { return impl->random(); }, out.data());
    }
    for (int64_t i = 0; i < count; ++i) {
      PyObject* value = PyLong_FromLongLong(out[size_t(i)]);
      if (!value) throw py::error_already_set();
      PyList_SET_ITEM(result.ptr(), i, value);
    }
    return result;
  }

  int64_t size() const { return shuffle_.size(); }

 private:
  at::Generator gen_;
  fl::LazyShuffle shuffle_;
};

// torch.tensor(batch) for a list or tuple of plain ints that fit int64 (an int64 tensor),
// or with as_double, torch.tensor(batch, dtype=torch.float64) for one of plain floats.
py::object tensor_of_numbers(py::handle batch, bool as_double) {
  PyObject* seq = batch.ptr();
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) return py::none();
  const size_t n = size_t(PySequence_Fast_GET_SIZE(seq));
  if (n == 0) return py::none();  // torch.tensor([]) is float32
  torch::Tensor result = torch::empty({int64_t(n)}, as_double ? torch::kFloat64 : torch::kInt64);
  double* doubles = as_double ? result.data_ptr<double>() : nullptr;
  int64_t* ints = as_double ? nullptr : result.data_ptr<int64_t>();
  for (size_t i = 0; i < n; ++i) {
    PyObject* obj = PySequence_Fast_GET_ITEM(seq, i);
    if (as_double) {
      if (!PyFloat_CheckExact(obj)) return py::none();
      doubles[i] = PyFloat_AS_DOUBLE(obj);
    } else {
      int overflow = 0;
      if (!PyLong_CheckExact(obj)) return py::none();
      ints[i] = PyLong_AsLongLongAndOverflow(obj, &overflow);
      if (overflow) return py::none();
    }
  }
  return py::cast(result);
}

// list(zip(*batch)) for a list of plain tuples all of one length, as torch's collate
// transposes them (after calling len() on each); None for anything else.
py::object transpose_tuples(py::handle batch) {
  PyObject* samples = batch.ptr();
  if (!PyList_CheckExact(samples) || PyList_GET_SIZE(samples) == 0) return py::none();
  const Py_ssize_t n = PyList_GET_SIZE(samples);
  PyObject* first = PyList_GET_ITEM(samples, 0);
  if (!PyTuple_CheckExact(first)) return py::none();
  const Py_ssize_t width = PyTuple_GET_SIZE(first);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* sample = PyList_GET_ITEM(samples, i);
    if (!PyTuple_CheckExact(sample) || PyTuple_GET_SIZE(sample) != width) return py::none();
  }
  py::list columns(width);
  for (Py_ssize_t j = 0; j < width; ++j) {
    py::tuple column(n);
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* value = PyTuple_GET_ITEM(PyList_GET_ITEM(samples, i), j);
      Py_INCREF(value);
      PyTuple_SET_ITEM(column.ptr(), i, value);
    }
    PyList_SET_ITEM(columns.ptr(), j, column.release().ptr());
  }
  return std::move(columns);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastloader's compiled kernels (JPEG decode, fused image augmentation, tar scanning, WordPiece)";
  py::register_exception<fl::JpegError>(m, "JpegError", PyExc_ValueError);
  m.def("decode_jpeg", &decode_jpeg, py::arg("data"), py::arg("mode"), py::arg("scale"),
        py::arg("apply_orientation"), py::arg("max_pixels"), py::arg("max_scans"));
  m.def("add_restart_markers", &add_restart_markers, py::arg("data"), py::arg("mcus"), py::arg("max_pixels"),
        py::arg("max_scans"));
  m.def("_use_own_entropy_decoder", &fl::use_own_entropy_decoder, py::arg("on"),
        "Tests only: decode with fastloader's entropy decoder (default) or libjpeg-turbo's.");
  m.def("probe_images", &probe_images, py::arg("images"), py::arg("apply_orientation"),
        py::arg("max_pixels"), py::arg("max_scans"), py::arg("num_threads"));
  m.def("augment_batch", &augment_batch, py::arg("images"), py::arg("geometry"), py::arg("flips"),
        py::arg("out"), py::arg("mode"), py::arg("layout"), py::arg("lut"),
        py::arg("apply_orientation"), py::arg("dct_scaling"), py::arg("fast_idct"), py::arg("max_pixels"),
        py::arg("max_scans"), py::arg("num_threads"), py::arg("recipe") = py::none(),
        py::arg("fast_color") = false);
  m.def("recipe_reproduces_table", &recipe_reproduces_table, py::arg("lut"), py::arg("recipe"), py::arg("mode"));
  m.def("sample_resized_crops", &sample_resized_crops, py::arg("sizes"), py::arg("scale_lo"),
        py::arg("scale_hi"), py::arg("ratio_lo"), py::arg("ratio_hi"), py::arg("seed"));
  py::register_exception<fl::TextError>(m, "TextError", PyExc_ValueError);
  py::class_<fl::WordPieceTokenizer>(m, "WordPieceTokenizer")
      .def(py::init([](const std::vector<std::string>& vocab, bool clean_text, bool handle_chinese_chars,
                       bool strip_accents, bool lowercase, int max_input_chars_per_word,
                       const std::vector<std::tuple<std::string, int64_t, bool>>& added_tokens) {
             std::vector<fl::AddedToken> added;
             for (const auto& [content, id, normalized] : added_tokens) added.push_back({content, id, normalized});
             return std::make_unique<fl::WordPieceTokenizer>(
                 vocab, fl::NormalizerOptions{clean_text, handle_chinese_chars, strip_accents, lowercase},
                 max_input_chars_per_word, added);
           }),
           py::arg("vocab"), py::arg("clean_text"), py::arg("handle_chinese_chars"), py::arg("strip_accents"),
           py::arg("lowercase"), py::arg("max_input_chars_per_word"), py::arg("added_tokens"))
      .def("id_of", &fl::WordPieceTokenizer::id_of)
      .def("encode_batch", &wordpiece_encode_batch, py::arg("texts"), py::arg("pairs"),
           py::arg("add_special_tokens"), py::arg("max_length"), py::arg("truncation"), py::arg("truncate_left"),
           py::arg("num_threads"));
  py::class_<LazyPermutation>(m, "LazyPermutation")
      .def(py::init<int64_t, at::Generator>(), py::arg("n"), py::arg("generator"))
      .def("next", &LazyPermutation::next, py::arg("k"))
      .def("__len__", &LazyPermutation::size);
  m.def("pack_first_fit_decreasing", &pack_first_fit_decreasing, py::arg("lengths"), py::arg("capacity"));
  m.def("stack_plain", &stack_plain, py::arg("batch"), py::arg("out") = py::none(), py::arg("fd") = -1,
        py::arg("offset") = 0);
  m.def("batch_pool_kept_bytes", &batch_pool_kept_bytes);
  m.def("batch_empty", &batch_empty, py::arg("shape"), py::arg("dtype"));
  m.def("write_row", &write_row, py::arg("out"), py::arg("row"), py::arg("item"), py::arg("as_buffer"),
        py::arg("fd") = -1, py::arg("offset") = 0);
  m.def("tensor_of_numbers", &tensor_of_numbers, py::arg("batch"), py::arg("as_double"));
  m.def("transpose_tuples", &transpose_tuples, py::arg("batch"));
  m.def(
      "wrap_large_bytes",
      [](py::handle obj, int depth, Py_ssize_t min_size, py::handle wrapped) {
        PyObject* made = fl::wrap_large_bytes(obj.ptr(), depth, min_size, wrapped.ptr());
        if (!made) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(made);
      },
      py::arg("obj"), py::arg("depth"), py::arg("min_size"), py::arg("wrapped"));
  m.def(
      "group_members",
      [](py::handle names, py::handle split_name) {
        PyObject* made = fl::group_members(names.ptr(), split_name.ptr());
        if (!made) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(made);
      },
      py::arg("names"), py::arg("split_name"));
  m.def("build_samples", &build_samples, py::arg("data"), py::arg("keys"), py::arg("key_starts"),
        py::arg("key_ends"), py::arg("counts"), py::arg("ext"), py::arg("off"), py::arg("end"),
        py::arg("exts"), py::arg("url"));
  m.def("build_samples_pread", &build_samples_pread, py::arg("fd"), py::arg("keys"), py::arg("key_starts"),
        py::arg("key_ends"), py::arg("counts"), py::arg("ext"), py::arg("off"), py::arg("end"),
        py::arg("exts"), py::arg("url"), py::arg("note_min"), py::arg("noted"));
  m.def("scan_tar", &scan_tar, py::arg("data"), py::arg("base"), py::arg("final"),
        py::arg("max_member_size"));
}
