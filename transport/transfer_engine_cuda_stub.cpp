// The GPU backends' factories in a build without CUDA (or without NCCL):
// they exist so callers need no #if, and refuse with errc_unsupported.
#include "transport/transfer_engine_cuda.hpp"

namespace troupe {

#ifndef TROUPE_HAVE_CUDA
std::unique_ptr<transfer_engine> transfer_engine_cuda_ipc(const cuda_ipc_engine_options&) {
  throw error(errc::errc_unsupported, "transfer_engine cuda_ipc: this build has no CUDA");
}
#endif

#ifndef TROUPE_HAVE_NCCL
std::unique_ptr<nccl_transfer_engine> transfer_engine_nccl(const nccl_engine_options&) {
  throw error(errc::errc_unsupported, "transfer_engine nccl: this build has no NCCL");
}
#endif

}  // namespace troupe
