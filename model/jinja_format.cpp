// Python's two string formatting languages as chat templates reach them:
// printf-style `fmt % args` (and the |format filter) and str.format(), whose
// field lookups ({0.name}, {0[key]}) go through the sandbox like any other
// attribute access. The format-spec mini-language is covered for what
// templates print: fill, align, sign, zero padding, width, thousands grouping,
// precision and the s, d, x, o, e, f, g and % types.
#include "model/jinja_format.hpp"

#include <algorithm>
#include <cstdio>
#include <string_view>

#include "model/jinja_eval.hpp"
#include "model/jinja_pystr.hpp"

namespace troupe::jinja {

std::string percent_format(const std::string& fmt, const value& args) {
  std::vector<value> positional;
  const bool mapping = args.is_dict();
  if (args.is_list() && args.as_list().kind == seq_kind::tuple) positional = args.as_list().items;
  else positional.push_back(args);
  size_t next = 0;
  bool used_mapping = false;
  std::string out;
  auto take = [&]() -> const value& {
    if (next >= positional.size()) fail(error_kind::type, "not enough arguments for format string");
    return positional[next++];
  };
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) fail(error_kind::value, "incomplete format");
    const value* arg = nullptr;
    if (fmt[i] == '(') {
      const size_t close = fmt.find(')', i);
      if (close == std::string::npos) fail(error_kind::value, "incomplete format key");
      if (!mapping) fail(error_kind::type, "format requires a mapping");
      const value* found = args.as_dict().find(fmt.substr(i + 1, close - i - 1));
      if (!found) fail(error_kind::value, "format key '" + fmt.substr(i + 1, close - i - 1) + "' not found");
      arg = found;
      used_mapping = true;
      i = close + 1;
    }
    std::string flags;
    while (i < fmt.size() && std::string_view("-+ #0").find(fmt[i]) != std::string_view::npos) flags += fmt[i++];
    std::string width, precision;
    while (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i]))) width += fmt[i++];
    if (i < fmt.size() && fmt[i] == '.') {
      ++i;
      precision = ".";
      while (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i]))) precision += fmt[i++];
    }
    while (i < fmt.size() && (fmt[i] == 'h' || fmt[i] == 'l' || fmt[i] == 'L')) ++i;
    if (i >= fmt.size()) fail(error_kind::value, "incomplete format");
    const char conv = fmt[i];
    if (conv == '%') {
      out += '%';
      continue;
    }
    const value& v = arg ? *arg : take();
    std::string piece;
    char buf[512];
    const std::string spec = "%" + flags + width + precision;
    if (conv == 's' || conv == 'r' || conv == 'a') {
      std::u32string text = py::decode(conv == 's' ? to_str(v) : repr(v));
      if (precision.size() > 1) text = text.substr(0, std::stoul(precision.substr(1)));
      piece = py::encode(text);
      const size_t w = width.empty() ? 0 : std::stoul(width);
      if (text.size() < w) {
        const std::string pad(w - text.size(), ' ');
        piece = flags.find('-') != std::string::npos ? piece + pad : pad + piece;
      }
    } else if (std::string_view("diuxXoc").find(conv) != std::string_view::npos) {
      if (!v.is_number()) fail(error_kind::type, std::string("%") + conv + " format: a real number is required, not " + type_name(v));
      const long long x = v.is_float() ? static_cast<long long>(v.as_float()) : v.as_integral();
      if (conv == 'c') {
        py::append_utf8(piece, static_cast<char32_t>(x));
      } else {
        const char c = conv == 'i' || conv == 'u' ? 'd' : conv;
        std::snprintf(buf, sizeof buf, (spec + "ll" + c).c_str(), x);
        piece = buf;
      }
    } else if (std::string_view("eEfFgG").find(conv) != std::string_view::npos) {
      if (!v.is_number()) fail(error_kind::type, "must be real number, not " + type_name(v));
      std::snprintf(buf, sizeof buf, (spec + conv).c_str(), v.as_double());
      piece = buf;
    } else {
      fail(error_kind::value, std::string("unsupported format character '") + conv + "'");
    }
    out += piece;
  }
  if (!used_mapping && !mapping && next < positional.size()) {
    fail(error_kind::type, "not all arguments converted during string formatting");
  }
  return out;
}

namespace {

/// One replacement field's value formatted by a format spec (fill, align,
/// sign, zero padding, width, grouping, precision and type).
std::string format_field(const value& v, const std::string& spec);

}  // namespace

std::string str_format(evaluator& ev, const std::string& f, const call_args& args) {
  std::string out;
  size_t auto_index = 0;
  bool manual = false, automatic = false;
  for (size_t i = 0; i < f.size(); ++i) {
    const char c = f[i];
    if (c == '}') {
      if (i + 1 < f.size() && f[i + 1] == '}') ++i;
      else fail(error_kind::value, "Single '}' encountered in format string");
      out += '}';
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < f.size() && f[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    const size_t close = f.find('}', i);
    if (close == std::string::npos) fail(error_kind::value, "Single '{' encountered in format string");
    std::string field = f.substr(i + 1, close - i - 1);
    i = close;
    std::string spec, conv;
    if (const size_t colon = field.find(':'); colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field.resize(colon);
    }
    if (const size_t bang = field.find('!'); bang != std::string::npos) {
      conv = field.substr(bang + 1);
      field.resize(bang);
    }
    size_t name_end = std::min(field.find('.'), field.find('['));
    const std::string head = field.substr(0, name_end);
    value v;
    if (head.empty() || std::all_of(head.begin(), head.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
      size_t index = 0;
      if (head.empty()) {
        if (manual) fail(error_kind::value, "cannot switch from manual field specification to automatic field numbering");
        automatic = true;
        index = auto_index++;
      } else {
        if (automatic) fail(error_kind::value, "cannot switch from automatic field numbering to manual field specification");
        manual = true;
        index = std::stoul(head);
      }
      if (index >= args.positional.size()) fail(error_kind::value, "Replacement index " + std::to_string(index) + " out of range for positional args tuple");
      v = args.positional[index];
    } else {
      const auto it = std::find_if(args.keyword.begin(), args.keyword.end(), [&](const auto& kv) { return kv.first == head; });
      if (it == args.keyword.end()) fail(error_kind::value, "'" + head + "'");
      v = it->second;
    }
    for (size_t p = name_end; p < field.size();) {
      if (field[p] == '.') {
        const size_t e = std::min(field.find('.', p + 1), field.find('[', p + 1));
        v = ev.getattr(v, field.substr(p + 1, e - p - 1));
        p = e;
      } else {
        const size_t e = field.find(']', p);
        if (e == std::string::npos) fail(error_kind::value, "Missing ']' in format string");
        const std::string key = field.substr(p + 1, e - p - 1);
        const bool digits = !key.empty() && std::all_of(key.begin(), key.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
        v = ev.getitem(v, digits ? value(static_cast<int64_t>(std::stoll(key))) : value(key));
        p = e + 1;
      }
    }
    if (conv == "r" || conv == "a") v = repr(v);
    else if (conv == "s") v = to_str(v);
    else if (!conv.empty()) fail(error_kind::value, "Unknown conversion specifier " + conv);
    out += format_field(v, spec);
  }
  return out;
}

namespace {

std::string format_field(const value& v, const std::string& spec) {
  if (spec.empty()) return to_str(v);
  size_t i = 0;
  char fill = ' ', align = 0;
  if (spec.size() >= 2 && std::string_view("<>^=").find(spec[1]) != std::string_view::npos) {
    fill = spec[0];
    align = spec[1];
    i = 2;
  } else if (std::string_view("<>^=").find(spec[0]) != std::string_view::npos) {
    align = spec[0];
    i = 1;
  }
  std::string sign;
  if (i < spec.size() && (spec[i] == '+' || spec[i] == '-' || spec[i] == ' ')) sign = spec[i++];
  if (i < spec.size() && spec[i] == '0') {
    if (!align) { fill = '0'; align = '='; }
    ++i;
  }
  size_t width = 0;
  while (i < spec.size() && std::isdigit(static_cast<unsigned char>(spec[i]))) width = width * 10 + static_cast<size_t>(spec[i++] - '0');
  const bool group = i < spec.size() && spec[i] == ',' && ++i;
  std::string precision;
  if (i < spec.size() && spec[i] == '.') {
    precision = ".";
    while (++i < spec.size() && std::isdigit(static_cast<unsigned char>(spec[i]))) precision += spec[i];
  }
  const char type = i < spec.size() ? spec[i++] : 0;
  if (i != spec.size()) fail(error_kind::value, "Invalid format specifier '" + spec + "'");
  std::string body;
  char buf[512];
  if (v.is_string() || (!v.is_number() && (type == 0 || type == 's'))) {
    body = to_str(v);
    if (precision.size() > 1) body = py::encode(py::decode(body).substr(0, std::stoul(precision.substr(1))));
    if (!align) align = '<';
  } else if (v.is_number()) {
    const bool is_int = !v.is_float() && (type == 0 || std::string_view("dxXobn").find(type) != std::string_view::npos);
    if (is_int) {
      const char t = type == 0 || type == 'n' ? 'd' : type == 'b' ? 'd' : type;
      std::snprintf(buf, sizeof buf, (std::string("%") + sign + "ll" + t).c_str(), static_cast<long long>(v.as_integral()));
    } else if (type == 0 && precision.empty()) {
      const std::string r = py::repr_float(v.as_double());
      std::snprintf(buf, sizeof buf, "%s%s", sign == "+" && v.as_double() >= 0 ? "+" : "", r.c_str());
    } else {
      const char t = type == 0 ? 'g' : type == '%' ? 'f' : type;
      std::snprintf(buf, sizeof buf, (std::string("%") + sign + (precision.empty() ? ".6" : precision) + t).c_str(), v.as_double() * (type == '%' ? 100.0 : 1.0));
    }
    body = buf;
    if (type == '%') body += '%';
    const size_t digits_start = body.find_first_of("0123456789");
    if (group && digits_start != std::string::npos) {
      const size_t digits_end = std::min(body.find_first_not_of("0123456789", digits_start), body.size());
      std::string grouped = body.substr(0, digits_start);
      for (size_t p = digits_start; p < digits_end; ++p) {
        grouped += body[p];
        const size_t left = digits_end - p - 1;
        if (left > 0 && left % 3 == 0) grouped += ',';
      }
      body = grouped.append(body, digits_end, std::string::npos);
    }
    if (!align) align = '>';
  } else {
    fail(error_kind::type, "unsupported format string passed to " + type_name(v) + ".__format__");
  }
  const size_t n = py::length(body);
  if (n >= width) return body;
  const size_t pad = width - n;
  if (align == '<') return body + std::string(pad, fill);
  if (align == '>') return std::string(pad, fill) + body;
  if (align == '^') return std::string(pad / 2, fill) + body + std::string(pad - pad / 2, fill);
  const size_t sign_len = !body.empty() && (body[0] == '-' || body[0] == '+' || body[0] == ' ') ? 1 : 0;
  return body.substr(0, sign_len) + std::string(pad, fill) + body.substr(sign_len);
}

}  // namespace

}  // namespace troupe::jinja
