// Marks a batch's large `bytes` for pickle's out-of-band path (fastloader/_shm.py). Works
// on Python objects only (no torch).
#pragma once
#include <Python.h>

namespace fastloader {

// obj with each bytes of min_size or more, obj itself or in dicts, lists and tuples (exact
// types) nested at most depth - 1 deep (obj being the first), replaced by a PickleBuffer,
// one per bytes object; wrapped gets {id(buffer): bytes} for each. The containers are
// copies (the caller's stay as they are); one met twice is copied once, that copy put in
// both places. Other types (OrderedDict, namedtuple...) and deeper levels are left as
// they are. A new reference, or null with a Python error set.
PyObject* wrap_large_bytes(PyObject* obj, int depth, Py_ssize_t min_size, PyObject* wrapped);

}  // namespace fastloader
