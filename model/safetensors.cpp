// The safetensors reader. The file is mapped once (MAP_PRIVATE, PROT_READ) and
// the descriptor closed; the header is parsed by nlohmann::json and every field
// is checked before a tensor_info is built: sizes are computed with overflow
// checks and compared with the mapping, never used to allocate, so a corrupt or
// hostile file can only produce a troupe::error. Duplicate names are caught by a
// parser callback because a json object silently keeps only the last one.
#include "model/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <limits>
#include <utility>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"

namespace troupe {
namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& file, const std::string& what) {
  throw error(errc::errc_invalid_model_file, "safetensors file '" + file + "': " + what);
}

[[noreturn]] void fail_tensor(const std::string& file, const std::string& name,
                              const std::string& what) {
  fail(file, "tensor '" + name + "': " + what);
}

/// A non-negative JSON integer as uint64; false for anything else.
bool as_u64(const json& j, uint64_t& out) {
  if (j.is_number_unsigned()) {
    out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

/// Parses the header text; throws naming the file on bad JSON or a repeated top-level key.
json parse_header_json(const char* begin, const char* end, const std::string& file) {
  std::vector<std::string> keys;
  json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && parsed.is_string()) {
      keys.push_back(parsed.get<std::string>());
    }
    return true;
  };
  json header;
  try {
    header = json::parse(begin, end, on_event);
  } catch (const json::exception& e) {
    fail(file, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(file, "header is not a JSON object");
  std::sort(keys.begin(), keys.end());
  auto dup = std::adjacent_find(keys.begin(), keys.end());
  if (dup != keys.end()) fail_tensor(file, *dup, "name appears twice in the header");
  return header;
}

/// Validates one header entry against the data section [data, data + data_size).
tensor_info parse_entry(const std::string& name, const json& entry, const std::byte* data,
                        uint64_t data_size, const std::string& file) {
  if (!entry.is_object()) fail_tensor(file, name, "entry is not a JSON object");
  auto dt = entry.find("dtype");
  auto sh = entry.find("shape");
  auto off = entry.find("data_offsets");
  if (dt == entry.end() || !dt->is_string()) fail_tensor(file, name, "missing or non-string \"dtype\"");
  if (sh == entry.end() || !sh->is_array()) fail_tensor(file, name, "missing or non-array \"shape\"");
  if (off == entry.end() || !off->is_array()) {
    fail_tensor(file, name, "missing or non-array \"data_offsets\"");
  }
  tensor_info t;
  t.name = name;
  t.file = file;
  const auto& dtype_text = dt->get_ref<const std::string&>();
  auto type = dtype_from_name(dtype_text);
  if (!type) fail_tensor(file, name, "unsupported dtype '" + dtype_text + "' (want BF16, F16 or F32)");
  t.type = *type;

  uint64_t numel = 1;
  t.shape.reserve(sh->size());
  for (const auto& d : *sh) {
    uint64_t dim = 0;
    if (!as_u64(d, dim) || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail_tensor(file, name, "shape entry " + d.dump() + " is not a non-negative integer");
    }
    if (__builtin_mul_overflow(numel, dim, &numel)) fail_tensor(file, name, "shape product overflows");
    t.shape.push_back(static_cast<int64_t>(dim));
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.type)), &bytes)) {
    fail_tensor(file, name, "byte size overflows");
  }

  uint64_t begin = 0, end = 0;
  if (off->size() != 2 || !as_u64((*off)[0], begin) || !as_u64((*off)[1], end)) {
    fail_tensor(file, name, "data_offsets " + off->dump() + " is not two non-negative integers");
  }
  if (begin > end) fail_tensor(file, name, "data_offsets " + off->dump() + " has begin > end");
  if (end > data_size) {
    fail_tensor(file, name, "data_offsets end " + std::to_string(end) + " lies beyond the data section (" +
                                std::to_string(data_size) + " bytes; file truncated?)");
  }
  if (end - begin != bytes) {
    fail_tensor(file, name, "holds " + std::to_string(end - begin) + " bytes but shape and dtype need " +
                                std::to_string(bytes));
  }
  t.bytes = static_cast<size_t>(bytes);
  t.data = data + begin;
  return t;
}

/// Throws when two non-empty byte ranges overlap (all lie inside one mapping).
void check_overlaps(const std::vector<tensor_info>& tensors, const std::string& file) {
  std::vector<const tensor_info*> by_begin;
  for (const auto& t : tensors) {
    if (t.bytes > 0) by_begin.push_back(&t);
  }
  std::sort(by_begin.begin(), by_begin.end(), [](const tensor_info* a, const tensor_info* b) {
    return std::less<const std::byte*>{}(a->data, b->data);
  });
  for (size_t i = 1; i < by_begin.size(); ++i) {
    const tensor_info* prev = by_begin[i - 1];
    if (by_begin[i]->data < prev->data + prev->bytes) {
      fail_tensor(file, by_begin[i]->name, "byte range overlaps tensor '" + prev->name + "'");
    }
  }
}

}  // namespace

int64_t tensor_info::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

safetensors_file safetensors_file::open(const std::filesystem::path& path) {
  safetensors_file f;
  f.path_ = path;
  const std::string file = path.string();

  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw error(errc::errc_io, "cannot open safetensors file '" + file + "': " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw error(errc::errc_io, "safetensors file '" + file + "' is not a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail(file, "file has " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    throw error(errc::errc_io, "cannot map safetensors file '" + file + "': " + std::strerror(map_errno));
  }
  f.map_ = map;
  f.map_size_ = size;  // from here on f's destructor unmaps, also when validation throws

  const auto* base = static_cast<const std::byte*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(base[i]);
  if (header_len > safetensors_max_header) {
    fail(file, "header length " + std::to_string(header_len) + " exceeds the limit of " +
                   std::to_string(safetensors_max_header) + " bytes");
  }
  if (header_len > size - 8) {
    fail(file, "header length " + std::to_string(header_len) + " runs past the end of the " +
                   std::to_string(size) + "-byte file (truncated?)");
  }
  const char* text = reinterpret_cast<const char*>(base + 8);
  json header = parse_header_json(text, text + header_len, file);

  const std::byte* data = base + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail(file, "\"__metadata__\" is not a JSON object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) fail(file, "\"__metadata__\" value of '" + mk + "' is not a string");
        f.metadata_.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    f.tensors_.push_back(parse_entry(key, value, data, data_size, file));
  }
  check_overlaps(f.tensors_, file);
  // json objects iterate in key order already; sort anyway so find() never depends on it.
  std::sort(f.tensors_.begin(), f.tensors_.end(),
            [](const tensor_info& a, const tensor_info& b) { return a.name < b.name; });
  return f;
}

safetensors_file::safetensors_file(safetensors_file&& other) noexcept
    : path_(std::move(other.path_)),
      map_(std::exchange(other.map_, nullptr)),
      map_size_(std::exchange(other.map_size_, 0)),
      tensors_(std::move(other.tensors_)),
      metadata_(std::move(other.metadata_)) {}

safetensors_file& safetensors_file::operator=(safetensors_file&& other) noexcept {
  if (this != &other) {
    unmap_();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_size_ = std::exchange(other.map_size_, 0);
    tensors_ = std::move(other.tensors_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

safetensors_file::~safetensors_file() { unmap_(); }

void safetensors_file::unmap_() noexcept {
  if (map_ != nullptr) ::munmap(map_, map_size_);
  map_ = nullptr;
  map_size_ = 0;
}

const tensor_info* safetensors_file::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const tensor_info& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

}  // namespace troupe
