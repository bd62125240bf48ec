// Tar members to webdataset samples (fastloader/shards/_members.py `group`), in one pass
// over the member names: consecutive members sharing a key make a sample. Works on Python
// objects only (no torch).
#pragma once
#include <Python.h>

namespace fastloader {

// names: a list of str. Plain names (ASCII, no newline, a dot in the file name after its
// first character) are split here; any other goes to split_name(name) -> (key, ext) or
// (None, None) to skip, the Python rules. Returns a tuple (keys, exts, member_ext, kept,
// first, start_member, duplicates):
//   keys: list of str, one per sample; exts: list of the distinct extensions;
//   member_ext (int32), kept, first, start_member (int64): bytes of native-endian arrays,
//     the extension id and name index of each kept member, sample i's kept members
//     first[i]..first[i + 1], and the name index of each sample's first member;
//   duplicates: list of (name index, key) where a sample repeats an extension (the sample
//     is left out, reported once).
// A new reference, or null with a Python error set.
PyObject* group_members(PyObject* names, PyObject* split_name);

}  // namespace fastloader
