// msgpack through msgpack-c's packer and bounded unpack; CAF's data_processor
// drives the traversal from each type's inspect().
#include "transport/wire_codec.hpp"

#include <cstring>
#include <limits>

#include <caf/error.hpp>
#include <caf/sec.hpp>
#include <msgpack.hpp>

namespace troupe {

namespace {

// msgpack::packer's stream: appends to a byte vector.
struct vector_stream {
  std::vector<char>* out;
  void write(const char* p, size_t n) { out->insert(out->end(), p, p + n); }
};

caf::error make_fail(const std::string& what) { return caf::make_error(caf::sec::invalid_argument, what); }

// Strings by max_string_bytes; bins (blobs, the envelope's payload) cost no
// more memory than their bytes, which the envelope's size bounds.
msgpack::unpack_limit limit_of(const wire_limits& l) {
  const auto n = static_cast<std::size_t>(l.max_elements), s = static_cast<std::size_t>(l.max_string_bytes);
  const auto b = static_cast<std::size_t>(l.max_envelope_bytes);
  return msgpack::unpack_limit(n, n, s, b, s, 64);
}

}  // namespace

// ---- writer ----

wire_writer::wire_writer() : caf::serializer(static_cast<caf::execution_unit*>(nullptr)) {}

wire_writer::wire_writer(caf::execution_unit* context) : caf::serializer(context) {}

caf::error wire_writer::fail(const std::string& what) {
  if (failure_.empty()) failure_ = what;
  return make_fail(what);
}

template <class T>
caf::error wire_writer::put(const T& v) {
  vector_stream s{&buf_};
  msgpack::packer<vector_stream> pk(s);
  pk.pack(v);
  return caf::none;
}

caf::error wire_writer::begin_object(uint16_t& typenr, std::string& name) {
  if (auto e = put(typenr)) return e;
  return typenr == 0 ? put(name) : caf::none;
}
caf::error wire_writer::end_object() { return caf::none; }
caf::error wire_writer::begin_sequence(size_t& num) { return put(static_cast<uint64_t>(num)); }
caf::error wire_writer::end_sequence() { return caf::none; }
caf::error wire_writer::apply_raw(size_t num_bytes, void* data) {
  vector_stream s{&buf_};
  msgpack::packer<vector_stream> pk(s);
  pk.pack_bin(static_cast<uint32_t>(num_bytes));
  pk.pack_bin_body(static_cast<const char*>(data), static_cast<uint32_t>(num_bytes));
  return caf::none;
}
caf::error wire_writer::apply_impl(int8_t& x) { return put(x); }
caf::error wire_writer::apply_impl(uint8_t& x) { return put(x); }
caf::error wire_writer::apply_impl(int16_t& x) { return put(x); }
caf::error wire_writer::apply_impl(uint16_t& x) { return put(x); }
caf::error wire_writer::apply_impl(int32_t& x) { return put(x); }
caf::error wire_writer::apply_impl(uint32_t& x) { return put(x); }
caf::error wire_writer::apply_impl(int64_t& x) { return put(x); }
caf::error wire_writer::apply_impl(uint64_t& x) { return put(x); }
caf::error wire_writer::apply_impl(float& x) { return put(x); }
caf::error wire_writer::apply_impl(double& x) { return put(x); }
caf::error wire_writer::apply_impl(long double& x) { return put(static_cast<double>(x)); }
caf::error wire_writer::apply_impl(std::string& x) { return put(x); }
caf::error wire_writer::apply_impl(std::u16string&) { return fail("u16string is not a wire type"); }
caf::error wire_writer::apply_impl(std::u32string&) { return fail("u32string is not a wire type"); }

// ---- reader ----

wire_reader::wire_reader(const char* data, size_t size, wire_limits limits)
    : caf::deserializer(static_cast<caf::execution_unit*>(nullptr)), data_(data), size_(size), limits_(limits) {}

wire_reader::wire_reader(const char* data, size_t size, wire_limits limits, caf::execution_unit* context)
    : caf::deserializer(context), data_(data), size_(size), limits_(limits) {}

caf::error wire_reader::fail(const std::string& what) {
  if (failure_.empty()) failure_ = what;
  return make_fail(failure_);
}

template <class T>
caf::error wire_reader::get(T& v, const char* what) {
  if (!failure_.empty()) return make_fail(failure_);
  if (offset_ >= size_) return fail(std::string("truncated payload: expected ") + what);
  try {
    msgpack::object_handle h = msgpack::unpack(data_, size_, offset_, nullptr, nullptr, limit_of(limits_));
    v = h.get().as<T>();
  } catch (const msgpack::type_error&) {
    return fail(std::string("expected ") + what + " at byte " + std::to_string(offset_));
  } catch (const std::exception& e) {
    return fail(std::string("malformed payload reading ") + what + ": " + e.what());
  }
  return caf::none;
}

caf::error wire_reader::begin_object(uint16_t& typenr, std::string& name) {
  if (!failure_.empty()) return make_fail(failure_);
  if (++depth_ > limits_.max_depth)
    return fail("objects nested deeper than " + std::to_string(limits_.max_depth) + " levels");
  if (auto e = get(typenr, "a type number")) return e;
  return typenr == 0 ? get(name, "a type name") : caf::none;
}
caf::error wire_reader::end_object() {
  if (depth_ > 0) --depth_;
  return caf::none;
}
caf::error wire_reader::begin_sequence(size_t& num) {
  num = 0;
  uint64_t n = 0;
  if (auto e = get(n, "a sequence length")) return e;
  // Every element takes at least one byte: a longer claim is hostile or truncated.
  if (n > size_ - offset_)
    return fail("sequence of " + std::to_string(n) + " elements exceeds the " + std::to_string(size_ - offset_) +
                " bytes left");
  // A byte sequence (std::vector<char>, a blob) follows as one bin of the
  // same length, which costs no more memory than its bytes: only the
  // envelope's size bounds it. Other elements may each allocate, so their
  // count is bounded.
  if (n > limits_.max_elements && bin_length_at(offset_) != n)
    return fail("sequence of " + std::to_string(n) + " elements exceeds the limit of " +
                std::to_string(limits_.max_elements));
  num = static_cast<size_t>(n);
  return caf::none;
}

uint64_t wire_reader::bin_length_at(size_t at) const {
  // msgpack bin 8/16/32: a marker byte, then the length big-endian.
  if (at >= size_) return UINT64_MAX;
  const auto* p = reinterpret_cast<const unsigned char*>(data_) + at;
  const size_t left = size_ - at;
  const int width = p[0] == 0xc4 ? 1 : p[0] == 0xc5 ? 2 : p[0] == 0xc6 ? 4 : 0;
  if (width == 0 || left < static_cast<size_t>(1 + width)) return UINT64_MAX;
  uint64_t n = 0;
  for (int i = 1; i <= width; ++i) n = (n << 8) | p[i];
  return n;
}
caf::error wire_reader::end_sequence() { return caf::none; }
caf::error wire_reader::apply_raw(size_t num_bytes, void* data) {
  // Not through get(): a raw_ref points into the unpacked object's zone,
  // which must still be alive while the bytes are copied out.
  if (!failure_.empty()) return make_fail(failure_);
  if (offset_ >= size_) return fail("truncated payload: expected raw bytes");
  try {
    msgpack::object_handle h = msgpack::unpack(data_, size_, offset_, nullptr, nullptr, limit_of(limits_));
    const auto r = h.get().as<msgpack::type::raw_ref>();
    if (r.size != num_bytes)
      return fail("raw bytes: expected " + std::to_string(num_bytes) + ", got " + std::to_string(r.size));
    std::memcpy(data, r.ptr, num_bytes);
  } catch (const msgpack::type_error&) {
    return fail("expected raw bytes at byte " + std::to_string(offset_));
  } catch (const std::exception& e) {
    return fail(std::string("malformed payload reading raw bytes: ") + e.what());
  }
  return caf::none;
}
caf::error wire_reader::apply_impl(int8_t& x) { return get(x, "int8"); }
caf::error wire_reader::apply_impl(uint8_t& x) { return get(x, "uint8"); }
caf::error wire_reader::apply_impl(int16_t& x) { return get(x, "int16"); }
caf::error wire_reader::apply_impl(uint16_t& x) { return get(x, "uint16"); }
caf::error wire_reader::apply_impl(int32_t& x) { return get(x, "int32"); }
caf::error wire_reader::apply_impl(uint32_t& x) { return get(x, "uint32"); }
caf::error wire_reader::apply_impl(int64_t& x) { return get(x, "int64"); }
caf::error wire_reader::apply_impl(uint64_t& x) { return get(x, "uint64"); }
caf::error wire_reader::apply_impl(float& x) { return get(x, "float"); }
caf::error wire_reader::apply_impl(double& x) { return get(x, "double"); }
caf::error wire_reader::apply_impl(long double& x) {
  double d = 0;
  if (auto e = get(d, "double")) return e;
  x = d;
  return caf::none;
}
caf::error wire_reader::apply_impl(std::string& x) { return get(x, "string"); }
caf::error wire_reader::apply_impl(std::u16string&) { return fail("u16string is not a wire type"); }
caf::error wire_reader::apply_impl(std::u32string&) { return fail("u32string is not a wire type"); }

// ---- envelope ----

std::vector<char> wire_encode(const wire_envelope& e) {
  std::vector<char> out;
  vector_stream s{&out};
  msgpack::packer<vector_stream> pk(s);
  pk.pack_map(6);
  pk.pack(std::string("v"));
  pk.pack(e.version);
  pk.pack(std::string("type"));
  pk.pack(e.type);
  pk.pack(std::string("src"));
  pk.pack(e.source);
  pk.pack(std::string("dst"));
  pk.pack(e.target);
  pk.pack(std::string("rid"));
  pk.pack(e.request_id);
  pk.pack(std::string("payload"));
  pk.pack_bin(static_cast<uint32_t>(e.payload.size()));
  pk.pack_bin_body(e.payload.data(), static_cast<uint32_t>(e.payload.size()));
  return out;
}

errc wire_decode(const char* data, size_t size, const wire_limits& limits, wire_envelope& out, std::string* why) {
  auto bad = [&](const std::string& w) {
    if (why != nullptr) *why = w;
    return errc::errc_invalid_argument;
  };
  if (size > limits.max_envelope_bytes)
    return bad("envelope of " + std::to_string(size) + " bytes exceeds the limit of " +
               std::to_string(limits.max_envelope_bytes));
  wire_envelope e;
  e.version = 0;
  bool have[6] = {};
  try {
    size_t off = 0;
    msgpack::object_handle h = msgpack::unpack(data, size, off, nullptr, nullptr, limit_of(limits));
    if (off != size) return bad("trailing bytes after the envelope");
    const msgpack::object& o = h.get();
    if (o.type != msgpack::type::MAP) return bad("the envelope is not a msgpack map");
    for (uint32_t i = 0; i < o.via.map.size; ++i) {
      const msgpack::object_kv& kv = o.via.map.ptr[i];
      if (kv.key.type != msgpack::type::STR) return bad("an envelope key is not a string");
      const std::string key = kv.key.as<std::string>();
      const char* keys[] = {"v", "type", "src", "dst", "rid", "payload"};
      int k = -1;
      for (int j = 0; j < 6; ++j)
        if (key == keys[j]) k = j;
      if (k < 0) continue;  // unknown keys are ignored: newer peers may add fields
      have[k] = true;
      try {
        switch (k) {
          case 0: e.version = kv.val.as<uint32_t>(); break;
          case 1: e.type = kv.val.as<std::string>(); break;
          case 2: e.source = kv.val.as<uint64_t>(); break;
          case 3: e.target = kv.val.as<uint64_t>(); break;
          case 4: e.request_id = kv.val.as<uint64_t>(); break;
          default: {
            if (kv.val.type != msgpack::type::BIN) return bad("envelope key 'payload' must be bin");
            e.payload.assign(kv.val.via.bin.ptr, kv.val.via.bin.ptr + kv.val.via.bin.size);
          }
        }
      } catch (const msgpack::type_error&) {
        return bad("envelope key '" + key + "' has the wrong type");
      }
    }
  } catch (const std::exception& ex) {
    return bad(std::string("malformed envelope: ") + ex.what());
  }
  const char* names[] = {"v", "type", "src", "dst", "rid", "payload"};
  for (int j = 0; j < 6; ++j)
    if (!have[j]) return bad(std::string("envelope key '") + names[j] + "' is missing");
  if (e.version != wire_version)
    return bad("wire version " + std::to_string(e.version) + " (this node speaks " + std::to_string(wire_version) + ")");
  if (e.type.empty()) return bad("envelope without a message type");
  out = std::move(e);
  return errc::ok;
}

}  // namespace troupe
