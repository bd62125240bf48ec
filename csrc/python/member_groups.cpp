#include "member_groups.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace fastloader {
namespace {

struct Ref {  // owns one reference
  PyObject* p = nullptr;
  Ref() = default;
  explicit Ref(PyObject* o) : p(o) {}
  Ref(const Ref&) = delete;
  Ref& operator=(Ref&& o) noexcept {
    std::swap(p, o.p);
    return *this;
  }
  ~Ref() { Py_XDECREF(p); }
};

// `__name__` as the first path component: webdataset's metadata entries, skipped.
bool is_meta(std::string_view s) {
  const std::string_view first = s.substr(0, s.find('/'));
  return first.size() >= 4 && first.substr(0, 2) == "__" && first.substr(first.size() - 2) == "__";
}

template <typename T>
PyObject* as_bytes(const std::vector<T>& v) {
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(v.data()), Py_ssize_t(v.size() * sizeof(T)));
}

class Grouper {
 public:
  Grouper() : exts_(PyList_New(0)), ext_ids_(PyDict_New()), keys_(PyList_New(0)), dups_(PyList_New(0)) {}

  bool ok() const { return exts_.p && ext_ids_.p && keys_.p && dups_.p; }

  // One member: key (a borrowed view of an ASCII key, or key_obj), ext id; false on error.
  bool add(Py_ssize_t i, std::string_view ascii_key, PyObject* key_obj, int ext) {
    const int same = same_key(ascii_key, key_obj);
    if (same < 0) return false;
    if (!same) {
      if (!close()) return false;
      Ref key(key_obj ? Py_NewRef(key_obj)
                      : PyUnicode_FromStringAndSize(ascii_key.data(), Py_ssize_t(ascii_key.size())));
      if (!key.p || PyList_Append(keys_.p, key.p)) return false;
      current_ = std::move(key);
      for (int e : seen_) seen_flag_[size_t(e)] = 0;
      seen_.clear();
      bad_ = false;
      start_member_.push_back(i);
      first_.push_back(int64_t(kept_.size()));
    }
    if (seen_flag_.size() <= size_t(ext)) seen_flag_.resize(size_t(ext) + 1, 0);
    // A repeated extension, or one named like a field every sample has (`__key__`,
    // `__url__`), which it would overwrite: the sample is left out.
    if (seen_flag_[size_t(ext)] || reserved_[size_t(ext)]) {
      if (!bad_) {
        Ref dup(Py_BuildValue("(nO)", i, current_.p));
        if (!dup.p || PyList_Append(dups_.p, dup.p)) return false;
      }
      bad_ = true;
      return true;
    }
    seen_flag_[size_t(ext)] = 1;
    seen_.push_back(ext);
    kept_.push_back(i);
    member_ext_.push_back(ext);
    return true;
  }

  // The id of an extension given as ASCII (already lowercased) or as a str.
  int ext_id(std::string_view ascii, PyObject* obj) {
    if (!obj) {
      auto it = ascii_ids_.find(std::string(ascii));
      if (it != ascii_ids_.end()) return it->second;
    }
    Ref made(obj ? Py_NewRef(obj) : PyUnicode_FromStringAndSize(ascii.data(), Py_ssize_t(ascii.size())));
    if (!made.p) return -1;
    PyObject* id = PyDict_GetItemWithError(ext_ids_.p, made.p);
    int out;
    if (id) {
      out = int(PyLong_AsLong(id));
    } else {
      if (PyErr_Occurred()) return -1;
      out = int(PyList_GET_SIZE(exts_.p));
      Ref n(PyLong_FromLong(out));
      if (!n.p || PyDict_SetItem(ext_ids_.p, made.p, n.p) || PyList_Append(exts_.p, made.p)) return -1;
      reserved_.push_back(PyUnicode_CompareWithASCIIString(made.p, "__key__") == 0 ||
                          PyUnicode_CompareWithASCIIString(made.p, "__url__") == 0);
    }
    if (!obj) ascii_ids_.emplace(std::string(ascii), out);
    return out;
  }

  PyObject* finish() {
    if (!close()) return nullptr;
    first_.push_back(int64_t(kept_.size()));
    Ref a(as_bytes(member_ext_)), b(as_bytes(kept_)), c(as_bytes(first_)), d(as_bytes(start_member_));
    if (!a.p || !b.p || !c.p || !d.p) return nullptr;
    return PyTuple_Pack(7, keys_.p, exts_.p, a.p, b.p, c.p, d.p, dups_.p);
  }

 private:
  // 1 if the member's key is the current sample's, 0 if not, -1 on error.
  int same_key(std::string_view ascii_key, PyObject* key_obj) const {
    if (!current_.p) return 0;
    if (key_obj) return PyObject_RichCompareBool(key_obj, current_.p, Py_EQ);
    // an ASCII key equals the current one only if that is ASCII too, with the same bytes
    return PyUnicode_IS_ASCII(current_.p) && size_t(PyUnicode_GET_LENGTH(current_.p)) == ascii_key.size() &&
           std::memcmp(PyUnicode_DATA(current_.p), ascii_key.data(), ascii_key.size()) == 0;
  }

  // A sample that repeated an extension is left out whole.
  bool close() {
    if (!current_.p || !bad_) return true;
    const Py_ssize_t n = PyList_GET_SIZE(keys_.p);
    if (PyList_SetSlice(keys_.p, n - 1, n, nullptr)) return false;
    start_member_.pop_back();
    kept_.resize(size_t(first_.back()));
    member_ext_.resize(size_t(first_.back()));
    first_.pop_back();
    bad_ = false;
    return true;
  }

  Ref exts_, ext_ids_, keys_, dups_, current_;
  std::unordered_map<std::string, int> ascii_ids_;
  std::vector<int> seen_;  // extension ids of the current sample
  std::vector<uint8_t> seen_flag_;  // by extension id: in the current sample
  std::vector<uint8_t> reserved_;   // by extension id: `__key__` or `__url__`
  bool bad_ = false;
  std::vector<int32_t> member_ext_;
  std::vector<int64_t> kept_, first_, start_member_;
};

}  // namespace

PyObject* group_members(PyObject* names, PyObject* split_name) {
  if (!PyList_Check(names)) {
    PyErr_SetString(PyExc_TypeError, "names must be a list");
    return nullptr;
  }
  Grouper g;
  if (!g.ok()) return nullptr;
  std::string ext;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); ++i) {  // split_name could change the list
    Ref held(Py_NewRef(PyList_GET_ITEM(names, i)));
    PyObject* name = held.p;
    if (!PyUnicode_Check(name)) {
      PyErr_SetString(PyExc_TypeError, "member names must be str");
      return nullptr;
    }
    if (PyUnicode_IS_ASCII(name)) {
      const std::string_view s(static_cast<const char*>(PyUnicode_DATA(name)), size_t(PyUnicode_GET_LENGTH(name)));
      const size_t slash = s.rfind('/') + 1;  // npos + 1 == 0
      const size_t dot = s.find('.', slash);
      if (s.find('\n') == std::string_view::npos && dot != std::string_view::npos && dot > slash) {
        if (is_meta(s)) continue;
        ext.assign(s.substr(dot + 1));
        for (char& c : ext)
          if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
        const int id = g.ext_id(ext, nullptr);
        if (id < 0 || !g.add(i, s.substr(0, dot), nullptr, id)) return nullptr;
        continue;
      }
    }
    Ref split(PyObject_CallOneArg(split_name, name));
    if (!split.p) return nullptr;
    if (!PyTuple_Check(split.p) || PyTuple_GET_SIZE(split.p) != 2) {
      PyErr_SetString(PyExc_TypeError, "split_name must return a (key, ext) tuple");
      return nullptr;
    }
    PyObject* key = PyTuple_GET_ITEM(split.p, 0);
    if (key == Py_None) continue;
    const int id = g.ext_id({}, PyTuple_GET_ITEM(split.p, 1));
    if (id < 0 || !g.add(i, {}, key, id)) return nullptr;
  }
  return g.finish();
}

}  // namespace fastloader
