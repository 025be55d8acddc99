#include "core/fileio.hpp"
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace moelab {

void file_write_atomic(const std::string& path, std::string_view text,
                       const std::string& tmp_suffix) {
  const std::string tmp = path + tmp_suffix;
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) fail(path + ": cannot write (" + std::strerror(errno) + ")");
    f.write(text.data(), std::streamsize(text.size()));
    f.flush();
    if (!f) {
      std::remove(tmp.c_str());
      fail(path + ": write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail(path + ": rename failed (" + std::strerror(errno) + ")");
  }
}

std::string file_read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

void file_fsync(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(fmt::format("{}: cannot open for fsync ({})", path, std::strerror(errno)));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) fail(fmt::format("{}: fsync failed ({})", path, std::strerror(errno)));
}

void file_fsync_parent(const std::string& path) {
  std::filesystem::path p = std::filesystem::path(path).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // "DIR/"
  file_fsync(p.has_parent_path() ? p.parent_path().string() : ".");
}

void file_write_synced(const std::string& path, std::string_view text) {
  {
    std::ofstream f(path);
    f << text;
    f.flush();
    if (!f) fail(fmt::format("{}: write failed (disk full?)", path));
  }
  file_fsync(path);
}

}  // namespace moelab
