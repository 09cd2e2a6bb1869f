#include "kernels/threads.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <thread>

namespace troupe {

void cpu_threads_set(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  omp_set_num_threads(n);
  // OpenBLAS runs single-threaded inside the kernels' own OpenMP team (see
  // cpu/matmul.cpp): two spinning thread pools on the same cores starve each other.
  openblas_set_num_threads(1);
}

int cpu_threads() { return omp_get_max_threads(); }

}  // namespace troupe
