// The PNG of `troupe bench serve --plot`: histograms of TTFT, TPOT, ITL and
// E2E latency in a 2x2 grid, drawn by gnuplot driven through a pipe. Bins are
// computed here so gnuplot only receives a few hundred numbers whatever the
// run's size; far outliers are folded into a note instead of squeezing the
// axis. Without gnuplot the plot is skipped with a message, never an error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "actors/bench_stats.hpp"

namespace troupe {

/// Equal-width bins over [lo, lo + width * counts.size()).
struct histogram {
  double lo = 0;                ///< left edge of the first bin
  double width = 0;             ///< bin width
  std::vector<int64_t> counts;  ///< values per bin
  int64_t above = 0;            ///< values beyond the last bin (outliers left out)
};

/// Bins `values` into `bins` bins from the minimum to the maximum, or to
/// 1.5 x p99 when the maximum lies beyond 3 x p99 (the rest counts as `above`).
/// A sample of equal values gets one bin of width 1e-3 x value (or 1e-3).
histogram histogram_make(const std::vector<double>& values, size_t bins);

/// Whether a `gnuplot` executable is on PATH.
bool gnuplot_available();

/// What became of the plot.
struct plot_outcome {
  bool written = false;  ///< the PNG exists
  std::string message;   ///< what happened (path written, or why skipped/failed)
};

/// Draws the 2x2 latency histograms of the successful records into `png_path`.
plot_outcome plot_latencies(const std::string& png_path, const std::vector<request_record>& records,
                            const std::string& title);

}  // namespace troupe
