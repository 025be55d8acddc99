#pragma once
// Whole-file writes that never leave a half-written file: the text goes to PATH.tmp, is flushed
// and renamed over PATH (a reader sees the old file or the new one, nothing between).
#include <string>
#include <string_view>

namespace moelab {

// tmp_suffix: the temporary file's name is PATH + tmp_suffix (one of its own per process where
// several may write the same file at once, e.g. ".tmp.PID").
void file_write_atomic(const std::string& path, std::string_view text,
                       const std::string& tmp_suffix = ".tmp");

// Flushes a file (or a folder's entries) to the disk; fails with one line naming it.
void file_fsync(const std::string& path);
// Flushes the folder that holds PATH ("." for a bare name), after PATH was renamed into it: the
// new name itself survives a crash only once its folder's entries are on the disk.
void file_fsync_parent(const std::string& path);
// Writes the text to PATH itself (a file inside a temporary folder that is renamed once whole)
// and flushes it to the disk.
void file_write_synced(const std::string& path, std::string_view text);

// The whole file as a string; fails with one line naming the file.
std::string file_read(const std::string& path);

}  // namespace moelab
