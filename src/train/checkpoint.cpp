#include "train/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "core/error.hpp"
#include "io/text.hpp"
#include "model/model.hpp"

namespace infini::train {

namespace fs = std::filesystem;

namespace {

// Step number of a "step-NNNNNNNN" directory name, or -1.
int64_t parse_step(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() <= 5) return -1;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || v > (int64_t(1) << 50)) return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const fs::path& root) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const int64_t s = parse_step(e.path().filename().string());
    if (s >= 0 && e.is_directory()) out.push_back({s, e.path()});
  }
  std::sort(out.begin(), out.end());
  return out;
}

void fsync_tree(const fs::path& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() || e.is_directory()) fsync_path(e.path().string());
  fsync_path(dir.string());
}

// Makes `tmp` afresh (whatever an earlier run left there is removed), lets `fill` write into
// it and syncs it all to disk; on any failure `tmp` is removed and the error passes on.
void fill_fresh_directory(const fs::path& tmp,
                          const std::function<void(const std::string& dir)>& fill) {
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw Error("cannot create " + tmp.string() + ": " + ec.message());
  try {
    fill(tmp.string());
    fsync_tree(tmp);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open " + path + " to sync it: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  // Some file systems refuse fsync on directories (EINVAL); the data files were synced.
  if (rc != 0 && e != EINVAL) throw Error("cannot sync " + path + ": " + std::strerror(e));
}

std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

namespace {

// The pid in a temp name of this code base, or -1: "<name>.tmp.<pid>" (model::write_file_atomic,
// io::save_safetensors) when `dot` is set, "<prefix><name>-<pid>" (commit_checkpoint,
// publish_directory) otherwise.
long temp_pid(const std::string& name, bool dot) {
  size_t p = dot ? name.rfind(".tmp.") : name.rfind('-');
  if (p == std::string::npos) return -1;
  p += dot ? 5 : 1;
  if (p >= name.size() || name.size() - p > 18) return -1;
  long v = 0;
  for (size_t i = p; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

}  // namespace

void remove_stale_checkpoint_temps(const std::string& out) {
  std::error_code ec;
  const fs::path root = fs::path(out) / "checkpoints";
  if (fs::is_directory(root, ec))
    for (const auto& e : fs::directory_iterator(root, ec))
      if (e.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(e.path(), ec);
  // Temps of other (killed) processes directly in OUT: "latest.tmp.PID", "metrics.jsonl.tmp.PID",
  // "loss.svg.tmp.PID", "tokens.bin.tmp.PID"; ".tmp-final-PID/" of publish_directory; and
  // ".old-final-PID/", the previous final/ renamed away: put back when final/ is missing (the
  // kill came between the two renames), else dropped.
  const long me = long(::getpid());
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(fs::path(out), ec)) {
    const std::string name = e.path().filename().string();
    const bool old_dir = name.rfind(".old-", 0) == 0;
    long pid = -1;
    if (name.rfind(".tmp-", 0) == 0 || old_dir)
      pid = temp_pid(name, false);
    else if (name.find(".tmp.") != std::string::npos)
      pid = temp_pid(name, true);
    if (pid >= 0 && pid != me) stale.push_back(e.path());
  }
  for (const auto& p : stale) {
    const std::string name = p.filename().string();
    if (name.rfind(".old-", 0) == 0) {
      const fs::path dest = p.parent_path() / name.substr(5, name.rfind('-') - 5);
      if (dest.filename() != "" && !fs::exists(dest, ec)) {
        fs::rename(p, dest, ec);
        if (!ec) continue;
      }
    }
    fs::remove_all(p, ec);
  }
}

std::string commit_checkpoint(const std::string& out, int64_t step,
                              const std::function<void(const std::string& dir)>& fill,
                              int64_t keep) {
  const fs::path root = fs::path(out) / "checkpoints";
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw Error("cannot create " + root.string() + ": " + ec.message());
  const std::string name = checkpoint_name(step);
  const fs::path tmp = root / (".tmp-" + name + "-" + std::to_string(::getpid()));
  fill_fresh_directory(tmp, fill);
  const fs::path final_dir = root / name;
  if (fs::exists(final_dir)) {
    // The same step saved again (e.g. a resumed run re-reaching it): swap the old one out.
    const fs::path old = root / (".tmp-old-" + name + "-" + std::to_string(::getpid()));
    fs::rename(final_dir, old, ec);
    if (ec) throw Error("cannot replace " + final_dir.string() + ": " + ec.message());
    fs::rename(tmp, final_dir, ec);
    if (ec) throw Error("cannot rename " + tmp.string() + ": " + ec.message());
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, final_dir, ec);
    if (ec)
      throw Error("cannot rename " + tmp.string() + " to " + final_dir.string() + ": " +
                  ec.message());
  }
  fsync_path(root.string());
  model::write_file_atomic((fs::path(out) / "latest").string(), "checkpoints/" + name + "\n");
  fsync_path(out);

  // Only now that the new checkpoint is complete and named, drop the oldest ones.
  if (keep > 0) {
    auto all = list_checkpoints(root);
    const int64_t excess = int64_t(all.size()) - keep;
    for (int64_t i = 0; i < excess; ++i)
      if (all[size_t(i)].second != final_dir) fs::remove_all(all[size_t(i)].second, ec);
  }
  return final_dir.string();
}

std::optional<std::string> find_latest_checkpoint(const std::string& out,
                                                  const std::string& marker) {
  std::error_code ec;
  const fs::path pointer = fs::path(out) / "latest";
  if (fs::is_regular_file(pointer, ec)) {
    std::string rel = io::read_file(pointer.string());
    while (!rel.empty() && (rel.back() == '\n' || rel.back() == '\r' || rel.back() == ' '))
      rel.pop_back();
    const fs::path dir = fs::path(out) / rel;
    if (!rel.empty() && parse_step(dir.filename().string()) >= 0 &&
        fs::is_regular_file(dir / marker, ec))
      return dir.string();
  }
  auto all = list_checkpoints(fs::path(out) / "checkpoints");
  for (auto it = all.rbegin(); it != all.rend(); ++it)
    if (fs::is_regular_file(it->second / marker, ec)) return it->second.string();
  return std::nullopt;
}

void publish_directory(const std::string& dest,
                       const std::function<void(const std::string& dir)>& fill) {
  const fs::path d(dest);
  const fs::path parent = d.has_parent_path() ? d.parent_path() : fs::path(".");
  const std::string base = d.filename().string();
  const fs::path tmp = parent / (".tmp-" + base + "-" + std::to_string(::getpid()));
  const fs::path old = parent / (".old-" + base + "-" + std::to_string(::getpid()));
  fill_fresh_directory(tmp, fill);
  std::error_code ec;
  const bool had = fs::exists(d);
  if (had) {
    fs::remove_all(old, ec);
    fs::rename(d, old, ec);
    if (ec) throw Error("cannot replace " + dest + ": " + ec.message());
  }
  fs::rename(tmp, d, ec);
  if (ec) throw Error("cannot rename " + tmp.string() + " to " + dest + ": " + ec.message());
  if (had) fs::remove_all(old, ec);
  fsync_path(parent.string());
}

}  // namespace infini::train
