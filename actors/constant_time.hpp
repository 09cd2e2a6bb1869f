// API key checks that do not leak the key through timing.
//
// Why it is built this way: comparing a client's key with memcmp or == stops
// at the first differing byte, so response times reveal how much of a guess
// was right. Here every comparison touches every byte of the presented key and
// its time depends only on that key's length, never on where it differs from
// the expected one (nor on the expected key's content).
#pragma once

#include <string_view>

namespace troupe {

/// Whether `presented` equals `expected`, in time that depends only on presented.size().
bool constant_time_equal(std::string_view presented, std::string_view expected);

/// The token of an "Authorization: Bearer <token>" header value (scheme
/// case-insensitive, surrounding spaces trimmed); "" when it is not a bearer token.
std::string_view bearer_token(std::string_view authorization);

}  // namespace troupe
