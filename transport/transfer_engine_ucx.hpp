// The ucx data-plane backend (host memory). Each engine has its own UCX
// context and worker and one progress thread that sleeps in poll() on the
// worker's event fd, so an idle engine costs no core. Peers are found from
// descriptors and addresses alone, which travel in control messages between
// authenticated nodes: the first operation towards an engine opens an
// endpoint to the worker address in its engine_address and says hello; UCX
// joins it with the one the peer opens back. It is in error mode NONE (the
// only kind UCX 1.13 runs over shared memory) when both engines are on one
// host with shared memory on, else PEER. There is no socket-address
// listener: UCX 1.13's aborts the process on some malformed connection
// headers (see ucx_handshake_io.cpp).
// While operations are pending the thread polls for a short while
// (busy_poll) before it sleeps, which saves wake-ups on small transfers.
//
// Paths: the owner serves every read and write. A write carries its bytes in
// an active message (rendezvous when large) that the owner receives straight
// into the region after checking the range and the region's token; a read is
// a request answered by an active message from the region. On one host the
// messages take the shared-memory endpoint, where a rendezvous runs through
// UCX's shared-memory fifos; elsewhere tcp. The context leaves out cma (unless
// UCX_TLS is set): UCX 1.13 aborts the process when a cma copy finds its peer
// process gone, so a peer dying in the middle of a transfer would take this
// process with it (found by the kill test in
// tests/transport/transfer_engine_ucx.test.cpp). UCX 1.13's ucp_put/ucp_get
// do not reach shared memory for user memory: its default protocols run them
// as software RMA through the owner's worker (measured 0.3-8 GB/s here,
// erratic; ucp_put over tcp ~1 GB/s per PLATFORM.md). The one-sided path is
// kept behind ucx_engine_options::rma for UCX builds whose protocols do.
// send/recv: small messages are copied and sent eager; large ones announce
// themselves and move (zero copy) only once the receiver has matched a recv,
// so an unmatched send never pins the sender's buffer. Either way done fires
// when the receiver holds the bytes.
//
// A region inside a shared_host_buffer (memfd, shared_host_memory.hpp) is
// reached by a same-host peer without the owner: the peer maps the memfd
// once and each read or write is a memcpy (over two threads when large) on
// the caller's thread, done called before read()/write() return. That is the
// fastest path on one host (one plain copy, no page pinning, no round trip)
// and has no crash hazard: the mapping outlives an owner that dies. Once the
// owner has exited, its regions fail like the rest of its engine (peer_lost)
// although their bytes are still mapped.
//
// Liveness: on tcp the PEER endpoint's error handler fails a connection
// within milliseconds of its peer's death. The shared-memory endpoint (mode
// NONE) has none, so a connection to a peer on this host also watches the
// peer's process (process_watch.hpp, a pidfd in the progress thread's poll);
// its exit fails the connection at once. The operation timeout remains for
// a peer that lives but stalls.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "transport/transfer_engine.hpp"

namespace troupe {

/// Settings of one ucx engine.
struct ucx_engine_options {
  std::string name = "te";                       ///< for logs
  /// The address peers reach this engine at: UCX's network endpoints are
  /// pinned to the interface holding it unless UCX_NET_DEVICES is set
  /// (net_device.hpp says why). Empty: every interface.
  std::string advertised_host;
  bool shared_memory = true;                     ///< use shared memory (mapped buffers, UCX's fifos) with peers on this host
  bool rma = false;                              ///< registrations carry a packed rkey; same-host peers then use ucp_get/put
  std::chrono::milliseconds timeout{10000};      ///< per operation, from its start to done
  std::chrono::milliseconds connect_timeout{2000};  ///< a new connection must be up within this
  std::chrono::microseconds busy_poll{20};       ///< with operations pending, poll this long before sleeping
  size_t max_unexpected_bytes = 64u << 20;       ///< small sends held for recvs not yet posted, in bytes
};

/// Starts a ucx engine: context, worker and progress thread. Throws
/// troupe::error (errc_invalid_argument for bad options, errc_io when UCX
/// fails).
std::unique_ptr<transfer_engine> transfer_engine_ucx(const ucx_engine_options& options);

}  // namespace troupe
