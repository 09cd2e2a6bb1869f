// The GPU data-plane backends, built with CUDA (transport/cuda/); in a build
// without CUDA the factories throw troupe::error(errc_unsupported), so code
// that names them needs no #if.
//
// cuda_ipc: GPU memory of engines on one host. A registration exports a CUDA
// IPC handle of the allocation (remote_key); a reader opens it once (cached
// per owner and region) and copies with cudaMemcpyAsync on its own stream,
// so the copy engines move the bytes and no kernel runs on the owner's GPU
// (the R-Fork transfer-engine backend). Engines in one process use the
// owner's pointer directly (an IPC handle cannot be opened in the process
// that made it). Completion: a thread waits on each copy's event in order.
// There is no send/recv (unsupported) and no timeout: a copy cannot stall.
//
// nccl: a 2-member NCCL communicator per pair of engines, built by
// connect() on both sides (the engine with the smaller id makes the unique
// id and sends it over a private ucx control engine, which also carries the
// requests). NCCL matches sends and receives of a pair by order only, so the
// engine with the smaller id orders every transfer of the pair and the other
// issues its halves in that order; requests are checked (range, token, recv
// capacity) before any half is issued, so a refused request leaves no NCCL
// operation waiting. read and write are served by the owner (its GPU runs
// the NCCL kernel); send/recv match by tag. Timeouts abort the communicator
// (ncclCommAbort), failing every operation of the pair; connect again after.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "transport/transfer_engine.hpp"
#include "transport/transfer_engine_ucx.hpp"

namespace troupe {

/// Settings of a cuda_ipc engine.
struct cuda_ipc_engine_options {
  std::string name = "cuda_ipc";  ///< for logs
  int device = 0;                 ///< the GPU whose stream does this engine's copies
};

/// Starts a cuda_ipc engine on `device`; throws troupe::error (errc_cuda when
/// CUDA fails, errc_unsupported in a build without CUDA).
std::unique_ptr<transfer_engine> transfer_engine_cuda_ipc(const cuda_ipc_engine_options& options);

/// Settings of an nccl engine.
struct nccl_engine_options {
  std::string name = "nccl";                 ///< for logs
  int device = 0;                            ///< the GPU its regions and buffers live on
  std::chrono::milliseconds timeout{10000};  ///< per operation, and for connect()
  ucx_engine_options control;                ///< the private control engine (name, shared memory, timeouts)
};

/// An nccl engine: a transfer_engine plus the connect step NCCL needs.
class nccl_transfer_engine : public transfer_engine {
 public:
  /// Builds the communicator with `peer`; the peer must call connect with
  /// this engine's address too. done when it is up (or timeout). Operations
  /// towards a peer wait for its communicator; towards a peer never passed to
  /// connect they fail with bad_request.
  virtual void connect(const engine_address& peer, transfer_done done) = 0;
};

/// Starts an nccl engine on `device`; throws troupe::error (errc_cuda or
/// errc_io when CUDA, NCCL or UCX fail, errc_unsupported in a build without
/// NCCL).
std::unique_ptr<nccl_transfer_engine> transfer_engine_nccl(const nccl_engine_options& options);

}  // namespace troupe
