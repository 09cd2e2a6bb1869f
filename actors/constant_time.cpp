// Constant-time key comparison. See constant_time.hpp.
#include "actors/constant_time.hpp"

#include <cstddef>
#include <cstdint>

namespace troupe {

bool constant_time_equal(std::string_view presented, std::string_view expected) {
  // Walk every byte of the presented key; compare against the expected key
  // cyclically (any byte when it is empty), and fold the length difference in.
  const std::size_t n = presented.size(), m = expected.size();
  volatile uint8_t diff = static_cast<uint8_t>(n != m);
  for (std::size_t i = 0; i < n; ++i) {
    const uint8_t e = m ? static_cast<uint8_t>(expected[i % m]) : 0;
    diff = static_cast<uint8_t>(diff | (static_cast<uint8_t>(presented[i]) ^ e));
  }
  return diff == 0 && n == m;
}

std::string_view bearer_token(std::string_view authorization) {
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  };
  std::string_view a = trim(authorization);
  constexpr std::string_view scheme = "bearer";
  if (a.size() <= scheme.size()) return {};
  for (std::size_t i = 0; i < scheme.size(); ++i) {
    char c = a[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != scheme[i]) return {};
  }
  if (a[scheme.size()] != ' ' && a[scheme.size()] != '\t') return {};
  return trim(a.substr(scheme.size()));
}

}  // namespace troupe
