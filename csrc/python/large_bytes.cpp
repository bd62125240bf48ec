#include "large_bytes.h"

#include <unordered_map>

namespace fastloader {
namespace {

class Wrapper {
 public:
  Wrapper(Py_ssize_t min_size, PyObject* wrapped) : min_size_(min_size), wrapped_(wrapped) {}
  ~Wrapper() {
    for (auto& entry : memo_) Py_DECREF(entry.second);
  }

  // v as it goes into its new container: a new reference, or null with an error set.
  PyObject* value(PyObject* v, int depth) {
    PyTypeObject* t = Py_TYPE(v);
    if (t == &PyBytes_Type) return PyBytes_GET_SIZE(v) >= min_size_ ? buffer(v) : Py_NewRef(v);
    if ((t == &PyDict_Type || t == &PyList_Type || t == &PyTuple_Type) && depth > 1)
      return container(v, depth - 1);
    return Py_NewRef(v);
  }

 private:
  PyObject* remembered(PyObject* original) {
    auto it = memo_.find(original);
    return it == memo_.end() ? nullptr : Py_NewRef(it->second);
  }

  // Keeps a reference to made. A container holding itself is copied once per level it
  // is met at, innermost first: the last (outermost) copy is the one remembered, as in
  // the Python walk this replaced. (The originals are keyed by address: the batch holds
  // them for the call, short of a key's __hash__ dropping part of it.)
  PyObject* remember(PyObject* original, PyObject* made) {
    auto [it, fresh] = memo_.try_emplace(original, nullptr);
    if (!fresh) Py_DECREF(it->second);
    it->second = Py_NewRef(made);
    return made;
  }

  PyObject* buffer(PyObject* data) {
    if (PyObject* done = remembered(data)) return done;
    PyObject* buf = PyPickleBuffer_FromObject(data);
    if (!buf) return nullptr;
    PyObject* key = PyLong_FromVoidPtr(buf);
    const int failed = !key || PyDict_SetItem(wrapped_, key, data) < 0;
    Py_XDECREF(key);
    if (failed) {
      Py_DECREF(buf);
      return nullptr;
    }
    return remember(data, buf);
  }

  PyObject* container(PyObject* obj, int depth) {
    if (PyObject* done = remembered(obj)) return done;
    if (Py_EnterRecursiveCall(" while marking large bytes")) return nullptr;  // a huge depth
    PyObject* made = copy(obj, depth);
    Py_LeaveRecursiveCall();
    return made ? remember(obj, made) : nullptr;
  }

  PyObject* copy(PyObject* obj, int depth) {
    if (PyDict_CheckExact(obj)) return dict(obj, depth);
    // A list can change size if a key's __hash__ runs code: read it as a tuple first.
    const bool list = PyList_CheckExact(obj);
    PyObject* items = list ? PyList_AsTuple(obj) : Py_NewRef(obj);
    if (!items) return nullptr;
    PyObject* made = sequence(items, depth, list);
    Py_DECREF(items);
    return made;
  }

  PyObject* dict(PyObject* obj, int depth) {
    PyObject* items = PyDict_Items(obj);  // a snapshot: hashing keys can run Python code
    if (!items) return nullptr;
    PyObject* made = PyDict_New();
    for (Py_ssize_t i = 0, n = made ? PyList_GET_SIZE(items) : 0; i < n; ++i) {
      PyObject* pair = PyList_GET_ITEM(items, i);
      PyObject* v = value(PyTuple_GET_ITEM(pair, 1), depth);
      const int failed = !v || PyDict_SetItem(made, PyTuple_GET_ITEM(pair, 0), v) < 0;
      Py_XDECREF(v);
      if (failed) {
        Py_CLEAR(made);
        break;
      }
    }
    Py_DECREF(items);
    return made;
  }

  PyObject* sequence(PyObject* items, int depth, bool as_list) {
    const Py_ssize_t n = PyTuple_GET_SIZE(items);
    PyObject* made = as_list ? PyList_New(n) : PyTuple_New(n);
    for (Py_ssize_t i = 0; made && i < n; ++i) {
      PyObject* v = value(PyTuple_GET_ITEM(items, i), depth);
      if (!v) {
        Py_CLEAR(made);
      } else if (as_list) {
        PyList_SET_ITEM(made, i, v);
      } else {
        PyTuple_SET_ITEM(made, i, v);
      }
    }
    return made;
  }

  const Py_ssize_t min_size_;
  PyObject* const wrapped_;
  std::unordered_map<PyObject*, PyObject*> memo_;  // original -> what replaced it (owned)
};

}  // namespace

PyObject* wrap_large_bytes(PyObject* obj, int depth, Py_ssize_t min_size, PyObject* wrapped) {
  if (!PyDict_CheckExact(wrapped)) {
    PyErr_SetString(PyExc_TypeError, "wrapped must be a dict");
    return nullptr;
  }
  Wrapper w(min_size, wrapped);
  return w.value(obj, depth);
}

}  // namespace fastloader
