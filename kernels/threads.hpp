// One knob for CPU parallelism: the kernels' OpenMP team. OpenBLAS is kept
// single-threaded and called from inside that team, so there is one pool.
#pragma once

namespace troupe {

/// Sets the number of CPU threads the kernels use; 0 = all cores.
void cpu_threads_set(int n);

/// The number of CPU threads the kernels use.
int cpu_threads();

}  // namespace troupe
