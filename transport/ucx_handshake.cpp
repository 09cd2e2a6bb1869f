// HMAC and randomness from OpenSSL's libcrypto (the vetted implementation on
// every Debian host); message bodies through msgpack-c with bounded unpack so
// an unauthenticated peer cannot make us allocate by a claimed length.
#include "transport/ucx_handshake.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <msgpack.hpp>
#include <stdexcept>

#include "config/errors.hpp"

namespace troupe::ucx_handshake {

namespace {

struct vector_stream {
  std::vector<char>* out;
  void write(const char* p, size_t n) { out->insert(out->end(), p, p + n); }
};

template <size_t N>
void pack_bytes(msgpack::packer<vector_stream>& pk, const std::array<uint8_t, N>& a) {
  pk.pack_bin(N);
  pk.pack_bin_body(reinterpret_cast<const char*>(a.data()), N);
}

void pack_bytes(msgpack::packer<vector_stream>& pk, const std::vector<char>& v) {
  pk.pack_bin(static_cast<uint32_t>(v.size()));
  pk.pack_bin_body(v.data(), static_cast<uint32_t>(v.size()));
}

// The array of a message body, or a reason in *why.
bool unpack_array(const void* data, size_t size, uint32_t fields, msgpack::object_handle& h, std::string* why) {
  if (size > max_message_bytes) {
    *why = "handshake message of " + std::to_string(size) + " bytes exceeds " + std::to_string(max_message_bytes);
    return false;
  }
  try {
    size_t off = 0;
    const msgpack::unpack_limit limit(16, 16, max_message_bytes, max_message_bytes, 16, 4);
    h = msgpack::unpack(static_cast<const char*>(data), size, off, nullptr, nullptr, limit);
    if (off != size) {
      *why = "trailing bytes after the handshake message";
      return false;
    }
  } catch (const std::exception& e) {
    *why = std::string("malformed handshake message: ") + e.what();
    return false;
  }
  const msgpack::object& o = h.get();
  if (o.type != msgpack::type::ARRAY || o.via.array.size != fields) {
    *why = "handshake message is not an array of " + std::to_string(fields) + " fields";
    return false;
  }
  return true;
}

// Field readers: false (and *why) on a wrong type or size.
bool read(const msgpack::object& o, uint64_t& v, const char* what, std::string* why) {
  if (o.type != msgpack::type::POSITIVE_INTEGER) return *why = std::string(what) + " is not an unsigned integer", false;
  v = o.via.u64;
  return true;
}

bool read(const msgpack::object& o, uint32_t& v, const char* what, std::string* why) {
  uint64_t x = 0;
  if (!read(o, x, what, why)) return false;
  if (x > UINT32_MAX) return *why = std::string(what) + " is out of range", false;
  v = static_cast<uint32_t>(x);
  return true;
}

bool read(const msgpack::object& o, std::string& v, const char* what, size_t max, std::string* why,
          size_t min = 1) {
  if (o.type != msgpack::type::STR) return *why = std::string(what) + " is not a string", false;
  if (o.via.str.size < min || o.via.str.size > max)
    return *why = std::string(what) + " must have " + std::to_string(min) + ".." + std::to_string(max) + " bytes", false;
  v.assign(o.via.str.ptr, o.via.str.size);
  return true;
}

template <size_t N>
bool read(const msgpack::object& o, std::array<uint8_t, N>& v, const char* what, std::string* why) {
  if (o.type != msgpack::type::BIN || o.via.bin.size != N)
    return *why = std::string(what) + " is not " + std::to_string(N) + " bytes of bin", false;
  std::copy(o.via.bin.ptr, o.via.bin.ptr + N, reinterpret_cast<char*>(v.data()));
  return true;
}

bool read(const msgpack::object& o, std::vector<char>& v, const char* what, std::string* why) {
  if (o.type != msgpack::type::BIN) return *why = std::string(what) + " is not bin", false;
  v.assign(o.via.bin.ptr, o.via.bin.ptr + o.via.bin.size);
  return true;
}

}  // namespace

nonce random_nonce() {
  nonce n;
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1)
    throw error(errc::errc_io, "ucx handshake: RAND_bytes failed (no system randomness)");
  return n;
}

uint64_t random_token() {
  uint64_t t = 0;
  while (t == 0)
    if (RAND_bytes(reinterpret_cast<unsigned char*>(&t), sizeof t) != 1)
      throw error(errc::errc_io, "ucx handshake: RAND_bytes failed (no system randomness)");
  return t;
}

proof make_proof(const std::string& secret, role who, const nonce& verifier_nonce, const nonce& prover_nonce,
                 const std::string& client_name, const std::string& server_name, const std::vector<char>& bound) {
  std::vector<unsigned char> msg;
  const std::string label = who == role::server   ? "troupe-link-v2 server"
                            : who == role::client ? "troupe-link-v2 client"
                                                  : "troupe-link-v2 server-accept";
  msg.insert(msg.end(), label.begin(), label.end());
  msg.insert(msg.end(), verifier_nonce.begin(), verifier_nonce.end());
  msg.insert(msg.end(), prover_nonce.begin(), prover_nonce.end());
  // Length-prefixed names: no pair of names can be shifted into another.
  auto field = [&msg](const char* data, size_t size) {
    const uint32_t len = static_cast<uint32_t>(size);
    const auto* lp = reinterpret_cast<const unsigned char*>(&len);
    msg.insert(msg.end(), lp, lp + sizeof len);
    msg.insert(msg.end(), data, data + size);
  };
  field(client_name.data(), client_name.size());
  field(server_name.data(), server_name.size());
  field(bound.data(), bound.size());
  proof p{};
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), msg.data(), msg.size(), p.data(), &len) ==
          nullptr ||
      len != p.size())
    throw error(errc::errc_io, "ucx handshake: HMAC-SHA256 failed");
  return p;
}

bool proof_equal(const proof& a, const proof& b) { return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0; }

std::vector<char> frame(frame_type type, const std::vector<char>& body) {
  const uint32_t n = static_cast<uint32_t>(body.size() + 1);
  std::vector<char> out(frame_head_bytes + body.size());
  out[0] = static_cast<char>(n >> 24);
  out[1] = static_cast<char>(n >> 16);
  out[2] = static_cast<char>(n >> 8);
  out[3] = static_cast<char>(n);
  out[4] = static_cast<char>(type);
  if (!body.empty()) std::memcpy(out.data() + frame_head_bytes, body.data(), body.size());
  return out;
}

std::vector<char> encode(const hello& m) {
  std::vector<char> out;
  out.reserve(256);  // also spares GCC 12 a false -Wstringop-overflow on the first insert
  vector_stream s{&out};
  msgpack::packer<vector_stream> pk(s);
  pk.pack_array(6);
  pk.pack(m.protocol);
  pk.pack(m.link);
  pk.pack(m.token);
  pk.pack(m.name);
  pk.pack(m.boot_id);
  pack_bytes(pk, m.n);
  return out;
}

std::vector<char> encode(const challenge& m) {
  std::vector<char> out;
  out.reserve(256);  // also spares GCC 12 a false -Wstringop-overflow on the first insert
  vector_stream s{&out};
  msgpack::packer<vector_stream> pk(s);
  pk.pack_array(6);
  pk.pack(m.link);
  pk.pack(m.token);
  pk.pack(m.name);
  pk.pack(m.boot_id);
  pack_bytes(pk, m.n);
  pack_bytes(pk, m.p);
  return out;
}

std::vector<char> encode(const auth& m) {
  std::vector<char> out;
  out.reserve(256);  // also spares GCC 12 a false -Wstringop-overflow on the first insert
  vector_stream s{&out};
  msgpack::packer<vector_stream> pk(s);
  pk.pack_array(2);
  pack_bytes(pk, m.p);
  pack_bytes(pk, m.worker_address);
  return out;
}

std::vector<char> encode(const accept& m) {
  std::vector<char> out;
  out.reserve(256);  // also spares GCC 12 a false -Wstringop-overflow on the first insert
  vector_stream s{&out};
  msgpack::packer<vector_stream> pk(s);
  pk.pack_array(2);
  pack_bytes(pk, m.p);
  pack_bytes(pk, m.worker_address);
  return out;
}

std::string decode(const void* data, size_t size, hello& m) {
  std::string why;
  msgpack::object_handle h;
  if (!unpack_array(data, size, 6, h, &why)) return why;
  const msgpack::object* f = h.get().via.array.ptr;
  if (!read(f[0], m.protocol, "protocol", &why)) return why;
  if (m.protocol != protocol)
    return "handshake protocol " + std::to_string(m.protocol) + " (this node speaks " + std::to_string(protocol) + ")";
  if (!read(f[1], m.link, "link id", &why) || !read(f[2], m.token, "token", &why) ||
      !read(f[3], m.name, "node name", max_name_bytes, &why) || !read(f[4], m.boot_id, "boot id", 256, &why, 0) ||
      !read(f[5], m.n, "nonce", &why))
    return why;
  return {};
}

std::string decode(const void* data, size_t size, challenge& m) {
  std::string why;
  msgpack::object_handle h;
  if (!unpack_array(data, size, 6, h, &why)) return why;
  const msgpack::object* f = h.get().via.array.ptr;
  if (!read(f[0], m.link, "link id", &why) || !read(f[1], m.token, "token", &why) ||
      !read(f[2], m.name, "node name", max_name_bytes, &why) || !read(f[3], m.boot_id, "boot id", 256, &why, 0) ||
      !read(f[4], m.n, "nonce", &why) || !read(f[5], m.p, "proof", &why))
    return why;
  return {};
}

std::string decode(const void* data, size_t size, auth& m) {
  std::string why;
  msgpack::object_handle h;
  if (!unpack_array(data, size, 2, h, &why)) return why;
  const msgpack::object* f = h.get().via.array.ptr;
  if (!read(f[0], m.p, "proof", &why) || !read(f[1], m.worker_address, "worker address", &why)) return why;
  return {};
}

std::string decode(const void* data, size_t size, accept& m) {
  std::string why;
  msgpack::object_handle h;
  if (!unpack_array(data, size, 2, h, &why)) return why;
  const msgpack::object* f = h.get().via.array.ptr;
  if (!read(f[0], m.p, "proof", &why) || !read(f[1], m.worker_address, "worker address", &why)) return why;
  return {};
}

std::string local_boot_id() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (f && std::getline(f, id) && !id.empty()) return id;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return std::string("host:") + host;
}

}  // namespace troupe::ucx_handshake
