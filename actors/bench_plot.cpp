// gnuplot histograms for the serving benchmark (see bench_plot.hpp).
#include "actors/bench_plot.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include <fmt/format.h>

namespace troupe {

histogram histogram_make(const std::vector<double>& values, size_t bins) {
  histogram h;
  if (values.empty() || bins == 0) return h;
  std::vector<double> v(values);
  std::sort(v.begin(), v.end());
  double lo = v.front(), hi = v.back();
  const double p99 = percentile_sorted(v, 99);
  if (hi > 3 * p99 && 1.5 * p99 > lo) hi = 1.5 * p99;
  if (!(hi > lo)) {
    h.lo = lo;
    h.width = lo != 0 ? std::abs(lo) * 1e-3 : 1e-3;
    h.counts.assign(1, 0);
  } else {
    h.lo = lo;
    h.width = (hi - lo) / static_cast<double>(bins);
    h.counts.assign(bins, 0);
  }
  const size_t n = h.counts.size();
  for (double x : v) {
    const double pos = (x - h.lo) / h.width;
    if (pos >= static_cast<double>(n)) {
      // The maximum itself belongs to the last bin; only values past the range are outliers.
      if (x <= hi || n == 1) ++h.counts[n - 1];
      else ++h.above;
      continue;
    }
    ++h.counts[static_cast<size_t>(std::max(0.0, pos))];
  }
  return h;
}

bool gnuplot_available() {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':'))
    if (!dir.empty() && access((std::filesystem::path(dir) / "gnuplot").c_str(), X_OK) == 0) return true;
  return false;
}

namespace {

// gnuplot single-quoted string: a quote is doubled.
std::string gp_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

// Axis-title numbers: whole milliseconds from 100 up, else three significant digits.
std::string num(double v) { return std::abs(v) >= 100 ? fmt::format("{:.0f}", v) : fmt::format("{:.3g}", v); }

void panel(std::string& g, const std::string& name, const std::vector<double>& ms) {
  g += "unset arrow\nunset label\n";
  if (ms.empty()) {
    g += fmt::format("set title {}\nset xrange [0:1]\nset label 'no data' at graph 0.5,0.5 center\n"
                     "plot 1/0 notitle\nset autoscale x\n",
                     gp_quote(name + " (no data)"));
    return;
  }
  const latency_summary s = summarize(ms);
  const histogram h = histogram_make(ms, 40);
  const double hi = h.lo + h.width * static_cast<double>(h.counts.size());
  std::string title = fmt::format("{} (ms): n={}  median {}  p90 {}  p99 {}", name, s.count, num(s.median),
                                  num(s.p90), num(s.p99));
  if (h.above) title += fmt::format("  ({} beyond {} not shown)", h.above, num(hi));
  g += fmt::format("set title {}\n", gp_quote(title));
  g += fmt::format("set boxwidth {:.9g} absolute\n", h.width * 0.95);
  g += fmt::format("set xrange [{:.9g}:{:.9g}]\n", h.lo - h.width, hi + h.width);
  g += fmt::format("set arrow from {0:.9g}, graph 0 to {0:.9g}, graph 1 nohead dt 2 lw 2 lc rgb '#1b9e77'\n", s.median);
  if (s.p99 <= hi)
    g += fmt::format("set arrow from {0:.9g}, graph 0 to {0:.9g}, graph 1 nohead dt 3 lw 2 lc rgb '#d95f02'\n", s.p99);
  g += "plot '-' using 1:2 with boxes lc rgb '#4477aa' notitle\n";
  for (size_t i = 0; i < h.counts.size(); ++i)
    g += fmt::format("{:.9g} {}\n", h.lo + h.width * (static_cast<double>(i) + 0.5), h.counts[i]);
  g += "e\n";
}

}  // namespace

plot_outcome plot_latencies(const std::string& png_path, const std::vector<request_record>& records,
                            const std::string& title) {
  plot_outcome out;
  if (!gnuplot_available()) {
    out.message = "PNG skipped: gnuplot not found (Debian: apt-get install gnuplot-nox)";
    return out;
  }
  std::vector<double> ttft, tpot, itl, e2e;
  for (const request_record& r : records) {
    if (!r.success) continue;
    ttft.push_back(r.ttft_s * 1e3);
    e2e.push_back(r.e2e_s * 1e3);
    if (auto t = request_tpot_s(r)) tpot.push_back(*t * 1e3);
    for (double v : r.itl_s) itl.push_back(v * 1e3);
  }
  std::string g;
  g += "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
       "  set terminal pngcairo size 1400,1000 font 'sans,10'\n"
       "} else {\n"
       "  set terminal png size 1400,1000\n"
       "}\n";
  g += fmt::format("set output {}\n", gp_quote(png_path));
  g += fmt::format("set multiplot layout 2,2 title {}\n", gp_quote(title + "  (green: median, orange: p99)"));
  g += "set style fill solid 0.7 border -1\nset xlabel 'ms'\nset ylabel 'count'\nset grid ytics\n"
       "set yrange [0:*]\n";
  panel(g, "Time to first token", ttft);
  panel(g, "Time per output token", tpot);
  panel(g, "Inter-token latency", itl);
  panel(g, "End-to-end latency", e2e);
  g += "unset multiplot\nset output\n";

  std::error_code ec;
  std::filesystem::remove(png_path, ec);
  // A gnuplot that dies early must not kill the benchmark with SIGPIPE.
  struct sigaction ignore {}, old {};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ignore, &old);
  FILE* p = popen("gnuplot", "w");
  int status = -1;
  if (p) {
    fwrite(g.data(), 1, g.size(), p);
    status = pclose(p);
  }
  sigaction(SIGPIPE, &old, nullptr);
  if (!p || status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    out.message = fmt::format("PNG failed: gnuplot exited with status {} (see its messages above)",
                              status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return out;
  }
  if (!std::filesystem::exists(png_path, ec) || std::filesystem::file_size(png_path, ec) == 0) {
    out.message = "PNG failed: gnuplot wrote nothing to " + png_path;
    return out;
  }
  out.written = true;
  out.message = "PNG written: " + png_path;
  return out;
}

}  // namespace troupe
