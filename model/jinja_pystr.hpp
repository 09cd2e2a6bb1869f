// Python `str` semantics on UTF-8 text, for the Jinja interpreter. Chat
// templates are Python code in disguise: `content[0]`, `|length`, `.strip()`,
// `.split()`, `.title()` and `str(0.1)` must give what CPython gives, so
// lengths and indices count code points, whitespace is Python's Unicode
// whitespace, and floats print as Python's shortest repr. Categories and case
// mapping come from utf8proc's Unicode tables, plus Python's full mappings
// that change length ('ß'.upper() == 'SS', ligatures, 'İ'.lower()) and the
// final-sigma rule of str.lower().
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace troupe::jinja::py {

/// Decodes UTF-8; an invalid byte becomes U+FFFD.
std::u32string decode(std::string_view utf8);
/// Decodes the code point at byte `pos` (which must be < size); `len` receives its byte length.
char32_t decode_at(std::string_view utf8, size_t pos, size_t& len);
/// Encodes code points as UTF-8.
std::string encode(std::u32string_view text);
/// Appends one code point as UTF-8.
void append_utf8(std::string& out, char32_t c);
/// Number of code points (Python len()).
size_t length(std::string_view utf8);

/// Python str.isspace() for one code point (also what `\s` matches).
bool is_space(char32_t c);
/// Whether `c` has case (upper or lower), as str.title() needs.
bool is_cased(char32_t c);
bool is_upper(char32_t c);
bool is_lower(char32_t c);
bool is_alpha(char32_t c);
bool is_digit(char32_t c);
/// Python's `\w` for one code point: letters, digits and '_'.
bool is_word(char32_t c);
char32_t to_upper(char32_t c);
char32_t to_lower(char32_t c);

std::string upper(std::string_view s);
std::string lower(std::string_view s);
/// str.title(): upper after an uncased character, lower after a cased one.
std::string title(std::string_view s);
/// str.capitalize(): first code point title case, the rest lower.
std::string capitalize(std::string_view s);
/// s[0].upper() + s[1:].lower(), the word rule of Jinja's |title filter.
std::string upper_first_lower_rest(std::string_view s);
/// str.islower() / str.isupper(): some cased character and none of the other case.
bool str_islower(std::string_view s);
bool str_isupper(std::string_view s);

/// str.strip/lstrip/rstrip; `chars` null strips whitespace.
std::string strip(std::string_view s, const std::string* chars, bool left, bool right);
/// str.split (from the left) or str.rsplit; `sep` null splits on whitespace runs;
/// `maxsplit` < 0 means no limit. Throws std::invalid_argument on an empty `sep`.
std::vector<std::string> split(std::string_view s, const std::string* sep, int64_t maxsplit, bool from_right);
/// str.splitlines() on Python's line boundaries.
std::vector<std::string> splitlines(std::string_view s, bool keepends);
/// str.replace; `count` < 0 replaces all.
std::string replace(std::string_view s, std::string_view old, std::string_view repl, int64_t count);
/// str.find / str.rfind in code points, -1 when absent.
int64_t find(std::string_view s, std::string_view sub, bool from_right);
/// str.count (non-overlapping).
int64_t count(std::string_view s, std::string_view sub);

/// repr() of a str: quotes and escapes as CPython does.
std::string repr_string(std::string_view s);
/// repr() of a float: shortest round-trip digits, Python's layout (1.0, 1e+20, inf).
std::string repr_float(double x);

}  // namespace troupe::jinja::py
