#include "io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <system_error>

#include "core/error.hpp"

namespace infini::io {

// The format is little-endian; we read and write tensor bytes without swapping.
static_assert(std::endian::native == std::endian::little, "big-endian hosts are not supported");

using nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // real headers are a few MB at most
constexpr int kMaxJsonDepth = 64;                   // a valid header nests 3 deep

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

// Tensor and shard names come from untrusted files: keep messages on one line and short.
std::string esc(const std::string& s) {
  constexpr size_t kMax = 200;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMax) out += "...";
  return out;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

[[noreturn]] void fail(const std::string& file, const std::string& msg) {
  throw Error(file + ": " + msg);
}

// True when j is a JSON integer in [0, max]; floats such as 2.0 are rejected.
bool as_uint(const json& j, uint64_t max, uint64_t* out) {
  if (j.is_number_unsigned()) {
    uint64_t v = j.get<uint64_t>();
    if (v > max) return false;
    *out = v;
    return true;
  }
  if (j.is_number_integer()) {  // signed storage: only "-0" can be non-negative
    int64_t v = j.get<int64_t>();
    if (v < 0 || static_cast<uint64_t>(v) > max) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

bool parse_dtype(const std::string& s, DType* t) {
  if (s == "F32")
    *t = DType::F32;
  else if (s == "F16")
    *t = DType::F16;
  else if (s == "BF16")
    *t = DType::BF16;
  else
    return false;
  return true;
}

bool is_other_safetensors_dtype(const std::string& s) {
  static const std::set<std::string> known = {
      "BOOL", "U8",  "I8",      "U16",     "I16",     "U32",     "I32",     "U64", "I64",
      "F64",  "C64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4"};
  return known.count(s) != 0;
}

// Parses the header JSON, rejecting duplicate keys (nlohmann would keep the last one
// silently) and deep nesting (bounds the work any later recursive walk could do).
json parse_header_json(const char* begin, const char* end, const std::string& file) {
  std::vector<std::set<std::string>> keys;  // keys seen so far in each open object
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start:
        if (depth >= kMaxJsonDepth) fail(file, "header JSON nests too deeply");
        keys.emplace_back();
        break;
      case json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth) fail(file, "header JSON nests too deeply");
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && parsed.is_string() &&
            !keys.back().insert(parsed.get_ref<const std::string&>()).second)
          fail(file, "header has duplicate key '" + esc(parsed.get<std::string>()) + "'");
        break;
      default:
        break;
    }
    return true;
  };
  // nlohmann stops at a NUL as if the input ended there, which would accept trailing junk.
  if (std::memchr(begin, 0, static_cast<size_t>(end - begin)))
    fail(file, "header is not valid JSON (contains a NUL byte)");
  json j = json::parse(begin, end, cb, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(file, "header is not valid JSON");
  return j;
}

// The bytes of a tensor of `shape`, or 0 for a negative or overflowing shape: write_atomic then
// rejects the shape with a message naming the tensor.
size_t checked_nbytes(const std::vector<int64_t>& shape, size_t element_bytes) {
  uint64_t numel = 1, nbytes = 0;
  bool ok = true;
  for (int64_t d : shape)
    ok = ok && d >= 0 && !__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel);
  if (!ok || __builtin_mul_overflow(numel, uint64_t(element_bytes), &nbytes)) return 0;
  return static_cast<size_t>(nbytes);
}

struct Writable {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* bytes;
  size_t nbytes;
};

// JSON-escapes a string; throws naming `path` when it is not valid UTF-8.
std::string json_str(const std::string& s, const std::string& path) {
  try {
    return json(s).dump(-1, ' ', false, json::error_handler_t::strict);
  } catch (const json::exception&) {
    fail(path, "name '" + esc(s) + "' is not valid UTF-8");
  }
}

// Removes the temp file unless commit() was reached, so a failed write leaves nothing behind.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  int fd_ = -1;
  bool committed_ = false;
  std::string path_;
};

// Returns 0 or the errno of the failed write.
int write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, 1u << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (w == 0) return EIO;  // no progress: do not spin
    p += w;
    n -= static_cast<size_t>(w);
  }
  return 0;
}

// Writes `tensors` (their bytes, or when `produce` is set, what produce(i, sink) passes to
// the sink for tensor i) atomically.
void write_atomic(const std::string& path, const std::vector<Writable>& tensors,
                  const std::map<std::string, std::string>& metadata,
                  const std::function<void(size_t, const ByteSink&)>* produce = nullptr) {
  // Validate and lay out everything before touching the file system.
  std::set<std::string> seen;
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      header += (first ? "" : ",") + json_str(k, path) + ":" + json_str(v, path);
      first = false;
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const std::string where = "tensor '" + esc(t.name) + "'";
    if (t.name == "__metadata__") fail(path, "'__metadata__' is reserved, not a tensor name");
    if (!seen.insert(t.name).second) fail(path, "duplicate " + where);
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail(path, where + " has negative dimension in shape " + shape_str(t.shape));
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel))
        fail(path, where + " shape " + shape_str(t.shape) + " overflows");
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, dtype_size(t.dtype), &nbytes))
      fail(path, where + " shape " + shape_str(t.shape) + " overflows");
    if (nbytes != t.nbytes)
      fail(path, where + " has " + std::to_string(t.nbytes) + " bytes, shape " +
                     shape_str(t.shape) + " " + dtype_name(t.dtype) + " needs " +
                     std::to_string(nbytes));
    if (nbytes > 0 && t.bytes == nullptr && !produce) fail(path, where + " has no data");
    if (header.size() > 1) header += ",";
    header += json_str(t.name, path) + ":{\"dtype\":\"" + dtype_name(t.dtype) + "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i) header += ',';
      header += std::to_string(t.shape[i]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + nbytes) + "]}";
    offset += nbytes;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // keeps tensor data 8-byte aligned
  uint8_t len[8];
  uint64_t n = header.size();
  std::memcpy(len, &n, 8);

  TempFile tmp(path + ".tmp." + std::to_string(::getpid()));
  auto fail_errno = [&](const char* step, int err) {
    fail(path, std::string("cannot write (") + step + "): " + errno_text(err));
  };
  tmp.fd_ = ::open(tmp.path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (tmp.fd_ < 0) {
    int err = errno;
    tmp.committed_ = true;  // nothing was created, and the name may belong to someone else
    fail_errno("create temp file", err);
  }
  if (int err = write_all(tmp.fd_, len, 8)) fail_errno("write", err);
  if (int err = write_all(tmp.fd_, reinterpret_cast<const uint8_t*>(header.data()), n))
    fail_errno("write", err);
  if (produce) {
    for (size_t i = 0; i < tensors.size(); ++i) {
      const Writable& t = tensors[i];
      size_t written = 0;
      const ByteSink sink = [&](const void* data, size_t n) {
        if (n > t.nbytes - written)
          fail(path, "tensor '" + esc(t.name) + "': more than its " + std::to_string(t.nbytes) +
                         " bytes were produced");
        if (int err = write_all(tmp.fd_, static_cast<const uint8_t*>(data), n))
          fail_errno("write", err);
        written += n;
      };
      (*produce)(i, sink);
      if (written != t.nbytes)
        fail(path, "tensor '" + esc(t.name) + "': " + std::to_string(written) + " of its " +
                       std::to_string(t.nbytes) + " bytes were produced");
    }
  } else {
    for (const auto& t : tensors)
      if (int err = write_all(tmp.fd_, t.bytes, t.nbytes)) fail_errno("write", err);
  }
  if (::fsync(tmp.fd_) != 0) fail_errno("fsync", errno);
  int fd = tmp.fd_;
  tmp.fd_ = -1;
  if (::close(fd) != 0) fail_errno("close", errno);  // NFS reports write errors here
  if (::rename(tmp.path_.c_str(), path.c_str()) != 0) fail_errno("rename", errno);
  tmp.committed_ = true;

  // Persist the rename itself. The file is complete at `path` by now, so only a real I/O
  // error is worth reporting; some file systems cannot fsync directories (EINVAL).
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    int rc = ::fsync(dfd);
    int err = errno;
    ::close(dfd);
    if (rc != 0 && err != EINVAL && err != ENOTSUP) fail_errno("fsync directory", err);
  }
}

}  // namespace

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
  }
  return "?";
}

size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // cannot overflow: checked when the header was parsed
  return n;
}

std::vector<TensorInfo> parse_safetensors(const uint8_t* data, size_t size, const std::string& name,
                                          std::map<std::string, std::string>* metadata) {
  if (size < 8) fail(name, "file is " + std::to_string(size) + " bytes, shorter than 8");
  uint64_t hlen;
  std::memcpy(&hlen, data, 8);
  if (hlen > kMaxHeaderBytes)
    fail(name, "header length " + std::to_string(hlen) + " is larger than the 100 MB limit");
  if (hlen > size - 8)
    fail(name, "header length " + std::to_string(hlen) + " is larger than the file (" +
                   std::to_string(size) + " bytes)");
  const char* hbegin = reinterpret_cast<const char*>(data + 8);
  json header = parse_header_json(hbegin, hbegin + hlen, name);
  if (!header.is_object()) fail(name, "header is not a JSON object");

  const uint8_t* base = data + 8 + hlen;
  const uint64_t data_size = size - 8 - hlen;
  std::vector<TensorInfo> out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [begin, end) per entry of `out`
  if (metadata) metadata->clear();

  for (const auto& [key, entry] : header.items()) {
    if (key == "__metadata__") {
      if (!entry.is_object()) fail(name, "__metadata__ is not a JSON object");
      for (const auto& [mk, mv] : entry.items()) {
        if (!mv.is_string()) fail(name, "__metadata__ value '" + esc(mk) + "' is not a string");
        if (metadata) (*metadata)[mk] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + esc(key) + "'";
    if (!entry.is_object()) fail(name, where + " entry is not a JSON object");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!entry.contains(field)) fail(name, where + " has no " + field);

    TensorInfo t;
    t.name = key;
    const json& dt = entry["dtype"];
    if (!dt.is_string()) fail(name, where + " dtype is not a string");
    const std::string& dts = dt.get_ref<const std::string&>();
    if (!parse_dtype(dts, &t.dtype))
      fail(name, where +
                     (is_other_safetensors_dtype(dts) ? " has unsupported dtype '"
                                                      : " has unknown dtype '") +
                     esc(dts) + "' (supported: F32, F16, BF16)");

    const json& sh = entry["shape"];
    if (!sh.is_array()) fail(name, where + " shape is not an array");
    uint64_t numel = 1;
    for (const json& d : sh) {
      uint64_t v;
      if (!as_uint(d, static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), &v))
        fail(name, where + " shape has a dimension that is not a non-negative integer");
      if (__builtin_mul_overflow(numel, v, &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(name, where + " shape overflows");
      t.shape.push_back(static_cast<int64_t>(v));
    }

    const json& off = entry["data_offsets"];
    uint64_t b, e;
    if (!off.is_array() || off.size() != 2 ||
        !as_uint(off[0], std::numeric_limits<uint64_t>::max(), &b) ||
        !as_uint(off[1], std::numeric_limits<uint64_t>::max(), &e))
      fail(name, where + " data_offsets is not two non-negative integers");
    if (b > e) fail(name, where + " data_offsets begin is after end");
    if (e > data_size)
      fail(name, where + " data_offsets end " + std::to_string(e) + " is beyond the data (" +
                     std::to_string(data_size) + " bytes)");
    uint64_t want;
    const bool ovf = __builtin_mul_overflow(numel, dtype_size(t.dtype), &want);
    if (ovf || want != e - b)
      fail(name, where + " has " + std::to_string(e - b) + " bytes, but shape " +
                     shape_str(t.shape) + " " + dtype_name(t.dtype) + " needs " +
                     (ovf ? std::string("more than 2^64") : std::to_string(want)));
    t.data = base + b;
    t.nbytes = static_cast<size_t>(e - b);
    out.push_back(std::move(t));
    ranges.emplace_back(b, e);
  }

  // File order; then any two non-empty neighbours must not share bytes.
  std::vector<size_t> order(out.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return ranges[x] < ranges[y]; });
  const TensorInfo* prev = nullptr;
  uint64_t prev_end = 0;
  for (size_t i : order) {
    if (ranges[i].first == ranges[i].second) continue;  // empty ranges hold no bytes
    if (prev && ranges[i].first < prev_end)
      fail(name, "tensors '" + esc(prev->name) + "' and '" + esc(out[i].name) +
                     "' overlap in the data section");
    prev = &out[i];
    prev_end = ranges[i].second;
  }
  std::vector<TensorInfo> sorted;
  sorted.reserve(out.size());
  for (size_t i : order) sorted.push_back(std::move(out[i]));
  return sorted;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "cannot open: " + errno_text(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail(path, "cannot stat: " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {  // also avoids mmap of length 0, which is an error
    ::close(fd);
    fail(path, "file is " + std::to_string(size) + " bytes, shorter than 8");
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (m == MAP_FAILED) fail(path, "cannot mmap: " + errno_text(err));
  f->map_ = m;  // from here the destructor unmaps, also if parsing throws
  f->map_size_ = size;
  f->tensors_ = parse_safetensors(static_cast<const uint8_t*>(m), size, path, &f->metadata_);
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

void SafetensorsFile::release(const TensorInfo& t) const {
  if (!map_ || t.nbytes == 0) return;
  const auto* base = static_cast<const uint8_t*>(map_);
  if (t.data < base || t.data + t.nbytes > base + map_size_) return;  // not of this file
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t b = static_cast<size_t>(t.data - base) / page * page;
  const size_t e =
      std::min(map_size_, (static_cast<size_t>(t.data - base) + t.nbytes + page - 1) / page * page);
  // A read-only private mapping of a file: dropped pages are read from the file again when
  // touched. Pages shared with a neighbouring tensor are simply read again. Advice only: an
  // error changes nothing that is read.
  ::madvise(const_cast<uint8_t*>(base) + b, e - b, MADV_DONTNEED);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

WeightStore WeightStore::open_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  WeightStore ws;
  ws.dir_ = dir;
  const fs::path root(dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) fail(dir, "not a directory");
  const fs::path index_path = root / "model.safetensors.index.json";
  const fs::path single_path = root / "model.safetensors";

  // symlink_status: a dangling link or a link loop at either name is reported as unreadable,
  // not as "no weights".
  if (fs::exists(fs::symlink_status(index_path, ec))) {
    const std::string ip = index_path.string();
    if (fs::is_directory(index_path, ec)) fail(ip, "is a directory, not a file");
    std::ifstream in(index_path, std::ios::binary);
    if (!in) fail(ip, "cannot open: " + errno_text(errno));
    std::stringstream ss;
    ss << in.rdbuf();
    if (in.bad()) fail(ip, "cannot read");
    const std::string text = ss.str();
    json idx = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (idx.is_discarded()) fail(ip, "not valid JSON");
    if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
      fail(ip, "has no weight_map object");
    std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;  // each opened once
    for (const auto& [tensor, shard] : idx["weight_map"].items()) {
      if (!shard.is_string()) fail(ip, "weight_map entry '" + esc(tensor) + "' is not a string");
      const std::string& s = shard.get_ref<const std::string&>();
      // Shards must live in the model directory itself.
      if (s.empty() || s.find('/') != std::string::npos || s.find('\\') != std::string::npos ||
          s.find("..") != std::string::npos || s.find('\0') != std::string::npos)
        fail(ip, "shard name '" + esc(s) + "' for tensor '" + esc(tensor) +
                     "' is not a plain file name");
      auto it = shards.find(s);
      if (it == shards.end()) {
        std::shared_ptr<SafetensorsFile> f;
        try {
          f = SafetensorsFile::open((root / s).string());
        } catch (const Error& e) {
          throw Error(ip + ": shard '" + esc(s) + "': " + e.what());
        }
        ws.files_.push_back(f);
        it = shards.emplace(s, f).first;
      }
      const TensorInfo* t = it->second->find(tensor);
      if (!t)
        fail(ip, "tensor '" + esc(tensor) + "' is listed in weight_map but missing from " +
                     it->second->path());
      ws.by_name_[tensor] = t;
      ws.file_of_[tensor] = it->second->path();
      ws.owner_[tensor] = it->second.get();
    }
    return ws;
  }
  if (fs::exists(fs::symlink_status(single_path, ec))) {
    auto f = SafetensorsFile::open(single_path.string());
    ws.files_.push_back(f);
    for (const TensorInfo& t : f->tensors()) {
      ws.by_name_[t.name] = &t;
      ws.file_of_[t.name] = f->path();
      ws.owner_[t.name] = f.get();
    }
    return ws;
  }
  fail(dir, "no model.safetensors or model.safetensors.index.json");
}

bool WeightStore::has(const std::string& name) const { return by_name_.count(name) != 0; }

const TensorInfo& WeightStore::get(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) throw Error("tensor '" + esc(name) + "' not found in " + dir_);
  return *it->second;
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(by_name_.size());
  for (const auto& kv : by_name_) out.push_back(kv.first);
  return out;
}

void WeightStore::check_shape(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorInfo& t = get(name);
  if (t.shape != shape)
    fail(file_of_.at(name), "tensor '" + esc(name) + "' has shape " + shape_str(t.shape) +
                                ", expected " + shape_str(shape));
}

void WeightStore::read_f32(const std::string& name, const std::vector<int64_t>& shape,
                           float* dst) const {
  check_shape(name, shape);
  const TensorInfo& t = get(name);
  const size_t n = static_cast<size_t>(t.numel());
  // The mapping gives no alignment guarantee (the header length is arbitrary): memcpy.
  if (t.dtype == DType::F32) {
    if (n) std::memcpy(dst, t.data, n * 4);
    return;
  }
  const bool bf = t.dtype == DType::BF16;
  for (size_t i = 0; i < n; ++i) {
    uint16_t v;
    std::memcpy(&v, t.data + 2 * i, 2);
    dst[i] = bf ? bf16_to_f32(v) : f16_to_f32(v);
  }
}

void WeightStore::read_f32_range(const std::string& name, int64_t begin, int64_t count,
                                 float* dst) const {
  const TensorInfo& t = get(name);
  if (begin < 0 || count < 0 || begin > t.numel() || count > t.numel() - begin)
    fail(file_of_.at(name), "tensor '" + esc(name) + "': elements [" + std::to_string(begin) +
                                ", +" + std::to_string(count) + ") are outside its " +
                                std::to_string(t.numel()));
  const size_t n = static_cast<size_t>(count), at = static_cast<size_t>(begin);
  if (t.dtype == DType::F32) {
    if (n) std::memcpy(dst, t.data + 4 * at, n * 4);
    return;
  }
  const bool bf = t.dtype == DType::BF16;
  const uint8_t* src = t.data + 2 * at;
  for (size_t i = 0; i < n; ++i) {
    uint16_t v;
    std::memcpy(&v, src + 2 * i, 2);
    dst[i] = bf ? bf16_to_f32(v) : f16_to_f32(v);
  }
}

void WeightStore::release(const std::string& name) const {
  auto it = owner_.find(name);
  if (it != owner_.end()) it->second->release(get(name));
}

void write_safetensors_streaming(const std::string& path, const std::vector<TensorSpec>& tensors,
                                 const std::function<void(size_t, const ByteSink&)>& produce,
                                 const std::map<std::string, std::string>& metadata) {
  std::vector<Writable> w;
  w.reserve(tensors.size());
  for (const auto& t : tensors) {
    w.push_back({t.name, t.dtype, t.shape, nullptr, checked_nbytes(t.shape, dtype_size(t.dtype))});
  }
  write_atomic(path, w, metadata, &produce);
}

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<Writable> w;
  w.reserve(tensors.size());
  for (const auto& t : tensors) {
    w.push_back({t.name, DType::F32, t.shape, reinterpret_cast<const uint8_t*>(t.data),
                 checked_nbytes(t.shape, 4)});
  }
  write_atomic(path, w, metadata);
}

void write_safetensors_raw(const std::string& path, const std::vector<RawTensor>& tensors,
                           const std::map<std::string, std::string>& metadata) {
  std::vector<Writable> w;
  w.reserve(tensors.size());
  for (const auto& t : tensors)
    w.push_back({t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
  write_atomic(path, w, metadata);
}

float f16_to_f32(uint16_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x8000) << 16;
  const uint32_t exp = (v >> 10) & 0x1f;
  const uint32_t mant = v & 0x3ff;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
    float f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  return std::bit_cast<float>(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

uint16_t f32_to_f16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return sign | 0x7e00 | ((x >> 13) & 0x3ff);  // NaN stays NaN
  if (x >= 0x477ff000u) return sign | 0x7c00;  // >= 65520 rounds to inf (or is inf)
  if (x >= 0x38800000u) {                      // normal f16 (>= 2^-14)
    // Rebias the exponent (127 -> 15) and round the 13 dropped bits to even; a carry
    // out of the mantissa correctly bumps the exponent.
    x += 0xc8000fffu + ((x >> 13) & 1);
    return sign | static_cast<uint16_t>(x >> 13);
  }
  if (x <= 0x33000000u) return sign;  // <= 2^-25 (half the smallest subnormal): ties to 0
  // Subnormal f16: the value in units of 2^-24 is m >> shift, rounded to even.
  const uint32_t e = x >> 23;
  const uint32_t m = (x & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;  // 14..24
  uint32_t r = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (r & 1))) ++r;  // may carry into the smallest normal
  return sign | static_cast<uint16_t>(r);
}

}  // namespace infini::io
