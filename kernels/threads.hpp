// One knob for CPU parallelism: the OpenMP team of the kernels and OpenBLAS's
// own threads are set together so they never oversubscribe the cores.
#pragma once

namespace troupe {

/// Sets the number of CPU threads the kernels and OpenBLAS use; 0 = all cores.
void cpu_threads_set(int n);

/// The number of CPU threads the kernels use.
int cpu_threads();

}  // namespace troupe
