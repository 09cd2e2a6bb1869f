// One UCX context, worker and listener per node process, and authenticated
// links to other nodes carrying wire envelopes (the control plane between
// nodes; tensors travel on the data plane, never here).
//
// Why it is built this way:
// - One progress thread owns the UCX worker. Callers on any thread hand work
//   to it through a small command queue and an eventfd wake-up; the thread
//   sleeps in poll() on the worker's event fd and that eventfd
//   (ucp_worker_arm), so an idle node costs no core. The alternative,
//   UCS_THREAD_MODE_MULTI, puts a lock on every UCX call and still needs one
//   thread to progress; a single owner keeps UCX state free of races and
//   makes every callback run on one known thread.
// - Latency: each hand-off to a sleeping thread costs tens of microseconds on
//   a busy host, and a request/response between actors on two nodes crosses
//   threads several times. So send() sends from the calling thread itself
//   when the progress thread is not using UCX at that moment (a try_lock,
//   never a wait) and nothing queued before it is still waiting (the worker
//   runs in UCS_THREAD_MODE_SERIALIZED for that), and after traffic the
//   progress thread polls for options.busy_poll before it sleeps, so that the
//   answer is picked up without a wake-up.
// - A link is authenticated before it carries anything: a challenge-response
//   with HMAC-SHA256 over both nonces and both node names under the cluster
//   secret, each side proving itself to the other (ucx_handshake.hpp). It
//   authenticates; it does not encrypt.
// - The handshake runs on a TCP listener of our own, not on UCX's
//   socket-address listener: UCX 1.13 aborts the process on some malformed
//   connection headers, so anyone who could reach the port could kill the
//   node. Only after the proofs do the two nodes exchange UCX worker
//   addresses and open endpoints to each other (ucx_handshake_io.cpp).
// - The endpoint in error mode PEER is the liveness channel: its error
//   handler reports a killed peer within ~10 ms, and heartbeats on it find a
//   peer that hangs. On a shared host, small envelopes travel over a second
//   endpoint in error mode NONE, the only kind UCX 1.13 runs over shared
//   memory. Only envelopes up to 256 KiB take it, forced eager (sysv/posix):
//   a cma rendezvous read from a peer that dies is fatal to the reader on a
//   NONE endpoint in UCX 1.13.
// - Envelopes are active messages; large ones arrive by rendezvous over the
//   PEER endpoint and are fetched with ucp_am_recv_data_nbx after the size
//   check. A sequence number per link keeps the sender's order across both
//   endpoints and behind envelopes still being fetched; a goodbye carries
//   the number of envelopes sent before it, so none is lost to it.
//
// Handlers run on the progress thread: keep them short (hand the envelope to
// an actor), never block in them and never destroy the node from one. The
// destructor fires no callbacks; it lets envelopes already sent arrive (up to
// 1 s), tells up peers goodbye (they see link_down at once) and closes every
// endpoint.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config/errors.hpp"
#include "transport/wire_codec.hpp"

namespace troupe {

/// Settings of one node's transport.
struct ucx_node_options {
  std::string name;                                   ///< this node's name, unique in the cluster (1..255 bytes)
  std::string secret;                                 ///< the cluster secret both ends of a link must share (not empty)
  std::string host = "127.0.0.1";                     ///< address the listener binds
  uint16_t port = 0;                                  ///< listener port; 0 = an ephemeral port (see ucx_node::port())
  /// The address peers reach this node at when `host` is a wildcard. UCX's
  /// network endpoints are pinned to the interface holding it (or `host`),
  /// unless UCX_NET_DEVICES is set (net_device.hpp says why).
  std::string advertised_host;
  bool shared_memory = true;                          ///< same-host links move envelopes over shared memory
  std::chrono::milliseconds heartbeat_interval{500};  ///< how often an up link says it is alive
  std::chrono::milliseconds heartbeat_timeout{2000};  ///< a link silent this long is declared down
  std::chrono::milliseconds handshake_timeout{2000};  ///< a peer must finish authenticating within this
  wire_limits limits;                                 ///< bounds on every received envelope
  /// After traffic (an envelope in, a send) the progress thread keeps polling
  /// this long before it sleeps in poll(), yielding the core between rounds:
  /// an answer that comes back within it is picked up without a wake-up,
  /// which on a busy host costs tens of microseconds. It costs up to this
  /// much CPU per message while messages are sparse, nothing when idle.
  /// 0: sleep at once.
  std::chrono::microseconds busy_poll{100};
};

/// What the node has done so far; a snapshot of monotonic counters.
struct ucx_node_counters {
  uint64_t sent = 0;                     ///< envelopes handed to UCX
  uint64_t sent_shared_memory = 0;       ///< of those, sent over a shared-memory endpoint
  uint64_t delivered = 0;                ///< envelopes given to the message handler
  uint64_t received_rendezvous = 0;      ///< envelopes that arrived by rendezvous
  uint64_t dropped_malformed = 0;        ///< bytes that are no valid envelope
  uint64_t dropped_oversized = 0;        ///< envelopes over limits.max_envelope_bytes (never fetched)
  uint64_t dropped_version = 0;          ///< envelopes of another wire version
  uint64_t dropped_unauthenticated = 0;  ///< messages not from an authenticated link
  uint64_t dropped_no_link = 0;          ///< sends whose link went down before they left
  uint64_t auth_failures = 0;            ///< peers whose proof did not match the secret
  uint64_t handshakes_failed = 0;        ///< links refused before they came up (any reason)
  uint64_t links_up = 0;                 ///< link_up callbacks
  uint64_t links_down = 0;               ///< link_down callbacks
  uint64_t shared_memory_endpoints = 0;  ///< endpoints opened from a peer's worker address (same host)
};

/// A node's UCX endpoint to the cluster: listener, links, envelopes.
class ucx_node {
 public:
  /// A received envelope and the name of the node that sent it.
  using message_handler = std::function<void(const std::string& node, wire_envelope&& envelope)>;
  /// A link to `node` finished authenticating.
  using link_up_handler = std::function<void(const std::string& node)>;
  /// The link to `node` is gone (peer died, closed, or fell silent); fired once per link_up.
  using link_down_handler = std::function<void(const std::string& node, const std::string& reason)>;

  /// The callbacks; each may be empty. They run on the progress thread.
  struct handlers {
    message_handler on_message;
    link_up_handler on_link_up;
    link_down_handler on_link_down;
  };

  /// Creates the UCX context and worker and the TCP listener and starts the
  /// progress thread; throws troupe::error (errc_invalid_argument for bad
  /// options, errc_io when UCX fails or the port cannot be bound).
  ucx_node(ucx_node_options options, handlers h);
  /// Says goodbye to up peers, closes every endpoint, stops the thread.
  ~ucx_node();
  ucx_node(const ucx_node&) = delete;
  ucx_node& operator=(const ucx_node&) = delete;

  /// This node's name.
  const std::string& name() const;
  /// The port the listener is bound to (the ephemeral one when options.port was 0).
  uint16_t port() const;

  /// Starts a link to the listener at host:port; link_up follows on success,
  /// a logged refusal otherwise. A non-empty expected_name refuses a peer of
  /// another name. There is one link per pair of nodes: a second one (either
  /// direction) is refused, so the cluster layer connects in one direction.
  /// Resolves host on the calling thread; errc_invalid_argument when it does
  /// not resolve.
  errc connect(const std::string& host, uint16_t port, const std::string& expected_name = {});

  /// Sends an envelope to `node`, from the calling thread when the progress
  /// thread is not using UCX (see the file comment), else through its queue;
  /// errc_invalid_argument when no link to it is up or the payload exceeds
  /// 4 GiB. Envelopes to one node arrive in send order (one caller's order;
  /// concurrent callers interleave). Never blocks on the progress thread.
  errc send(const std::string& node, const wire_envelope& envelope);

  /// Queues bytes as they are on the envelope channel (fault injection: the
  /// receiver decodes them like any envelope and may drop them).
  errc send_raw(const std::string& node, std::vector<char> bytes);

  /// Names of the nodes with an up link.
  std::vector<std::string> peers() const;

  /// A snapshot of the counters.
  ucx_node_counters counters() const;

  /// The private state (ucx_node_impl.hpp).
  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace troupe
