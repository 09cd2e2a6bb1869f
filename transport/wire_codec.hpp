// The wire format of control messages between nodes. A message travels as a
// msgpack envelope {version, type, source, target, request_id, payload};
// the payload is the message struct written by its one inspect() through
// wire_writer (a caf::serializer emitting msgpack values), so there is no
// second, hand-kept schema. The payload is a stream of msgpack values in
// inspect() order: scalars as msgpack scalars, sequences as a length
// followed by their elements, raw bytes as bin.
//
// Decoding is bounded: the envelope and every value are unpacked with
// msgpack::unpack_limit, a sequence may not claim more elements than bytes
// remain, objects (a caf::message inside a message …) nest at most
// max_depth deep, and every failure is an error naming what was wrong (never
// an exception, an allocation driven by a hostile length, or a recursion
// driven by hostile nesting).
//
// CAF 0.17.6 loses errors of a caf::message (and of any type_erased_tuple)
// read or written through a generic (de)serializer: its serialize() overload
// for type_erased_tuple, which data_processor prefers to inspect(), drops the
// result. So both classes remember their first failure (failure()): a
// message nested in an error or a struct that fails to read still fails the
// whole payload, and a top-level message should be written and read with
// message::save / message::load, which do return the error.
//
// Actor handles: CAF writes an actor handle as (actor id, node id) and reads
// it back through the execution unit the serializer was made with (its
// actor system and proxy registry). The remote-actor layer (node_system.hpp)
// passes its own unit; without one, handles cannot be written or read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/deserializer.hpp>
#include <caf/serializer.hpp>

#include "config/errors.hpp"

namespace troupe {

/// The envelope's current version; a peer with another version is refused.
inline constexpr uint32_t wire_version = 1;

/// Limits of one decoded envelope.
struct wire_limits {
  size_t max_envelope_bytes = 64u << 20;  ///< whole envelope
  size_t max_string_bytes = 16u << 20;    ///< one string
  size_t max_elements = 1u << 24;         ///< one array or map (a byte sequence, a blob, is bounded by the envelope only)
  size_t max_depth = 16;                  ///< objects nested in objects (caf::message inside caf::message …)
};

/// One control message on the wire.
struct wire_envelope {
  uint32_t version = wire_version;
  std::string type;        ///< the registered message type name ("troupe.generate_request")
  uint64_t source = 0;     ///< sending actor id on the sender's node
  uint64_t target = 0;     ///< receiving actor id on the receiver's node (0: by name, see type)
  uint64_t request_id = 0; ///< 0 for one-way messages; a response carries its request's id
  std::vector<char> payload;
};

/// The envelope as msgpack bytes.
std::vector<char> wire_encode(const wire_envelope& e);

/// Decodes an envelope; on failure returns errc_invalid_argument and says why in *why.
errc wire_decode(const char* data, size_t size, const wire_limits& limits, wire_envelope& out, std::string* why);

/// A caf::serializer that writes msgpack values (see the file comment).
class wire_writer final : public caf::serializer {
 public:
  wire_writer();
  /// A writer that can write actor handles and caf::message: `context` names
  /// the actor system (registered type names) and its proxy registry.
  explicit wire_writer(caf::execution_unit* context);
  /// The bytes written so far.
  const std::vector<char>& bytes() const { return buf_; }
  /// The first error while writing, even one CAF did not pass on (empty: none).
  const std::string& failure() const { return failure_; }

  caf::error begin_object(uint16_t& typenr, std::string& name) override;
  caf::error end_object() override;
  caf::error begin_sequence(size_t& num) override;
  caf::error end_sequence() override;
  caf::error apply_raw(size_t num_bytes, void* data) override;

 protected:
  caf::error apply_impl(int8_t&) override;
  caf::error apply_impl(uint8_t&) override;
  caf::error apply_impl(int16_t&) override;
  caf::error apply_impl(uint16_t&) override;
  caf::error apply_impl(int32_t&) override;
  caf::error apply_impl(uint32_t&) override;
  caf::error apply_impl(int64_t&) override;
  caf::error apply_impl(uint64_t&) override;
  caf::error apply_impl(float&) override;
  caf::error apply_impl(double&) override;
  caf::error apply_impl(long double&) override;
  caf::error apply_impl(std::string&) override;
  caf::error apply_impl(std::u16string&) override;
  caf::error apply_impl(std::u32string&) override;

 private:
  template <class T>
  caf::error put(const T& v);
  caf::error fail(const std::string& what);
  std::vector<char> buf_;
  std::string failure_;
};

/// A caf::deserializer reading what wire_writer wrote, within wire_limits.
class wire_reader final : public caf::deserializer {
 public:
  wire_reader(const char* data, size_t size, wire_limits limits = {});
  /// A reader that can read actor handles (as proxies for remote ones) and
  /// caf::message: `context` names the actor system and its proxy registry.
  wire_reader(const char* data, size_t size, wire_limits limits, caf::execution_unit* context);
  /// True when every byte was consumed (a payload with trailing bytes is malformed).
  bool at_end() const { return offset_ == size_; }
  /// The first error while reading, even one CAF did not pass on (empty:
  /// none); once set, every further read fails with it.
  const std::string& failure() const { return failure_; }

  caf::error begin_object(uint16_t& typenr, std::string& name) override;
  caf::error end_object() override;
  caf::error begin_sequence(size_t& num) override;
  caf::error end_sequence() override;
  caf::error apply_raw(size_t num_bytes, void* data) override;

 protected:
  caf::error apply_impl(int8_t&) override;
  caf::error apply_impl(uint8_t&) override;
  caf::error apply_impl(int16_t&) override;
  caf::error apply_impl(uint16_t&) override;
  caf::error apply_impl(int32_t&) override;
  caf::error apply_impl(uint32_t&) override;
  caf::error apply_impl(int64_t&) override;
  caf::error apply_impl(uint64_t&) override;
  caf::error apply_impl(float&) override;
  caf::error apply_impl(double&) override;
  caf::error apply_impl(long double&) override;
  caf::error apply_impl(std::string&) override;
  caf::error apply_impl(std::u16string&) override;
  caf::error apply_impl(std::u32string&) override;

 private:
  template <class T>
  caf::error get(T& v, const char* what);
  caf::error fail(const std::string& what);
  /// The length of the msgpack bin at `at`, or UINT64_MAX when none is there.
  uint64_t bin_length_at(size_t at) const;
  const char* data_;
  size_t size_;
  size_t offset_ = 0;
  size_t depth_ = 0;
  wire_limits limits_;
  std::string failure_;
};

/// Writes `x` through its inspect().
template <class T>
std::vector<char> wire_pack(T& x) {
  wire_writer w;
  if (auto err = w(x)) throw error(errc::errc_invalid_argument, "wire_pack: " + caf::to_string(err));
  if (!w.failure().empty()) throw error(errc::errc_invalid_argument, "wire_pack: " + w.failure());
  return w.bytes();
}

/// Reads `x` through its inspect(); errc_invalid_argument (why in *why) for
/// malformed, truncated, oversized or trailing bytes.
template <class T>
errc wire_unpack(const std::vector<char>& bytes, T& x, std::string* why, wire_limits limits = {}) {
  wire_reader r(bytes.data(), bytes.size(), limits);
  if (auto err = r(x)) {
    if (why != nullptr) *why = caf::to_string(err);
    return errc::errc_invalid_argument;
  }
  if (!r.failure().empty()) {
    if (why != nullptr) *why = r.failure();
    return errc::errc_invalid_argument;
  }
  if (!r.at_end()) {
    if (why != nullptr) *why = "trailing bytes after the payload";
    return errc::errc_invalid_argument;
  }
  return errc::ok;
}

}  // namespace troupe
