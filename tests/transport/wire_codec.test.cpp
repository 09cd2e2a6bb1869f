// The wire codec: any inspect()-able struct round-trips through msgpack; the
// envelope round-trips; hostile, truncated, mistyped and oversized bytes are
// refused with a reason and never throw or allocate by a claimed length.
#include "transport/wire_codec.hpp"

#include <doctest/doctest.h>

#include <caf/meta/type_name.hpp>

using namespace troupe;

namespace {

struct inner {
  int32_t token = 0;
  float logprob = 0.0f;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, inner& x) {
  return f(caf::meta::type_name("inner"), x.token, x.logprob);
}

struct outer {
  uint64_t id = 0;
  std::string text;
  std::vector<int32_t> ids;
  std::vector<inner> pairs;
  std::vector<std::vector<inner>> nested;
  bool flag = false;
  double seconds = 0.0;
  int8_t small = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, outer& x) {
  return f(caf::meta::type_name("outer"), x.id, x.text, x.ids, x.pairs, x.nested, x.flag, x.seconds, x.small);
}

outer sample() {
  outer o;
  o.id = 0xfedcba9876543210ull;
  o.text = "héllo \0 wörld";
  o.ids = {1, -2, 300000, 0};
  o.pairs = {{7, -0.5f}, {8, -1.25f}};
  o.nested = {{}, {{1, 0.1f}}, {{2, 0.2f}, {3, 0.3f}}};
  o.flag = true;
  o.seconds = 1.0 / 3.0;
  o.small = -128;
  return o;
}

void check_equal(const outer& a, const outer& b) {
  CHECK(a.id == b.id);
  CHECK(a.text == b.text);
  CHECK(a.ids == b.ids);
  REQUIRE(a.pairs.size() == b.pairs.size());
  for (size_t i = 0; i < a.pairs.size(); ++i) CHECK((a.pairs[i].token == b.pairs[i].token && a.pairs[i].logprob == b.pairs[i].logprob));
  REQUIRE(a.nested.size() == b.nested.size());
  for (size_t i = 0; i < a.nested.size(); ++i) CHECK(a.nested[i].size() == b.nested[i].size());
  CHECK(a.flag == b.flag);
  CHECK(a.seconds == b.seconds);
  CHECK(a.small == b.small);
}

std::vector<char> bytes(std::initializer_list<int> b) {
  std::vector<char> v;
  for (int x : b) v.push_back(static_cast<char>(x));
  return v;
}

}  // namespace

TEST_CASE("wire codec: a struct round-trips through its inspect()") {
  outer o = sample();
  const std::vector<char> packed = wire_pack(o);
  outer back;
  std::string why;
  REQUIRE(wire_unpack(packed, back, &why) == errc::ok);
  check_equal(o, back);
}

TEST_CASE("wire codec: malformed payloads are refused with a reason") {
  outer o = sample();
  const std::vector<char> packed = wire_pack(o);
  std::string why;
  outer back;
  // Every truncation fails cleanly.
  for (size_t n = 0; n < packed.size(); ++n) {
    CAPTURE(n);
    const std::vector<char> cut(packed.begin(), packed.begin() + static_cast<std::ptrdiff_t>(n));
    CHECK(wire_unpack(cut, back, &why) == errc::errc_invalid_argument);
    CHECK(!why.empty());
  }
  // Trailing garbage.
  std::vector<char> longer = packed;
  longer.push_back(0x01);
  CHECK(wire_unpack(longer, back, &why) == errc::errc_invalid_argument);
  CHECK(why.find("trailing") != std::string::npos);
  // A hostile sequence length: claims 2^32 elements with 5 bytes left.
  inner dummy;
  std::vector<std::vector<inner>> seq;
  std::vector<char> hostile = bytes({0xce, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02});
  CHECK(wire_unpack(hostile, seq, &why) == errc::errc_invalid_argument);
  CHECK(why.find("exceeds") != std::string::npos);
  // A hostile string length prefix (dd ff ff ff ff) does not allocate 64 GiB.
  std::string s;
  CHECK(wire_unpack(bytes({0xdb, 0xff, 0xff, 0xff, 0xff, 0x41}), s, &why) == errc::errc_invalid_argument);
  // A string where an integer belongs.
  CHECK(wire_unpack(bytes({0xa1, 0x41, 0x00}), dummy, &why) == errc::errc_invalid_argument);
  CHECK(why.find("expected int32") != std::string::npos);
  // A string over the limit.
  wire_limits small;
  small.max_string_bytes = 4;
  std::string big = "0123456789";
  CHECK(wire_unpack(wire_pack(big), s, &why, small) == errc::errc_invalid_argument);
}

TEST_CASE("wire codec: blobs larger than the element limit travel as one bin; other sequences stay bounded") {
  wire_limits limits;
  limits.max_elements = 1000;
  limits.max_envelope_bytes = 1u << 20;
  std::vector<char> blob(300000);
  for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<char>(i * 7);
  std::vector<char> back;
  std::string why;
  REQUIRE(wire_unpack(wire_pack(blob), back, &why, limits) == errc::ok);
  CHECK(back == blob);
  // The same count of other elements is refused by the element limit.
  std::vector<int32_t> ints(3000, 1), ints_back;
  CHECK(wire_unpack(wire_pack(ints), ints_back, &why, limits) == errc::errc_invalid_argument);
  CHECK(why.find("limit of 1000") != std::string::npos);
  // A blob length that its bin does not match is refused, as is a blob over the envelope limit.
  std::vector<char> lying = wire_pack(blob);
  lying[3] = static_cast<char>(lying[3] + 1);  // the sequence length (uint32 after 0xce), now 256 more
  CHECK(wire_unpack(lying, back, &why, limits) == errc::errc_invalid_argument);
  std::vector<char> huge(2u << 20, 'x');
  CHECK(wire_unpack(wire_pack(huge), back, &why, limits) == errc::errc_invalid_argument);
  // With the default limits a 48 MiB blob round-trips (over the 16 M element limit, which does not apply to it).
  std::vector<char> big(48u << 20, 'y'), big_back;
  REQUIRE(wire_unpack(wire_pack(big), big_back, &why) == errc::ok);
  CHECK(big_back.size() == big.size());
}

TEST_CASE("wire codec: the envelope round-trips and bad envelopes are named") {
  wire_envelope e;
  e.type = "troupe.step_plan";
  e.source = 11;
  e.target = 22;
  e.request_id = 33;
  e.payload = {'a', '\0', 'b'};
  const std::vector<char> enc = wire_encode(e);
  wire_envelope d;
  std::string why;
  REQUIRE(wire_decode(enc.data(), enc.size(), {}, d, &why) == errc::ok);
  CHECK(d.type == e.type);
  CHECK(d.source == 11);
  CHECK(d.target == 22);
  CHECK(d.request_id == 33);
  CHECK(d.payload == e.payload);

  for (size_t n = 0; n < enc.size(); ++n)
    CHECK(wire_decode(enc.data(), n, {}, d, &why) == errc::errc_invalid_argument);
  wire_limits tight;
  tight.max_envelope_bytes = enc.size() - 1;
  CHECK(wire_decode(enc.data(), enc.size(), tight, d, &why) == errc::errc_invalid_argument);
  CHECK(why.find("exceeds the limit") != std::string::npos);
  wire_envelope old = e;
  old.version = 7;
  const std::vector<char> enc7 = wire_encode(old);
  CHECK(wire_decode(enc7.data(), enc7.size(), {}, d, &why) == errc::errc_invalid_argument);
  CHECK(why == "wire version 7 (this node speaks 1)");
  const std::vector<char> not_map = bytes({0x93, 0x01, 0x02, 0x03});
  CHECK(wire_decode(not_map.data(), not_map.size(), {}, d, &why) == errc::errc_invalid_argument);
  CHECK(why == "the envelope is not a msgpack map");
  // {"v": 1} only: the first missing key is named.
  const std::vector<char> partial = bytes({0x81, 0xa1, 'v', 0x01});
  CHECK(wire_decode(partial.data(), partial.size(), {}, d, &why) == errc::errc_invalid_argument);
  CHECK(why == "envelope key 'type' is missing");
  // {"v": "x", ...}: a mistyped key is named.
  const std::vector<char> mistyped = bytes({0x81, 0xa1, 'v', 0xa1, 'x'});
  CHECK(wire_decode(mistyped.data(), mistyped.size(), {}, d, &why) == errc::errc_invalid_argument);
  CHECK(why == "envelope key 'v' has the wrong type");
  const std::vector<char> hostile = bytes({0xdf, 0xff, 0xff, 0xff, 0xff});
  CHECK(wire_decode(hostile.data(), hostile.size(), {}, d, &why) == errc::errc_invalid_argument);
}
