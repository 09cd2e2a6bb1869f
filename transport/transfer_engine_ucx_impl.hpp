// Inside the ucx transfer engine: the state its progress thread owns and the
// helpers its source files share (transfer_engine_ucx.cpp: start-up, the
// progress loop, registration and the public calls; _conn.cpp: connections
// and the hello exchange; _ops.cpp: the protocols of read, write, send and
// recv, timeouts and failures). Only the progress thread touches UCX objects,
// operations, connections and regions; other threads go through post().
// UCX callbacks do not create or close endpoints: those steps go through
// defer() and run right after progress returns (as in ucx_node).
//
// An operation's `done` is called exactly once, from finish(), which also
// removes the operation from every table. An operation whose caller buffer a
// UCX request still uses (inflight > 0) is not finished directly: it is
// marked failing and finishes when the last such request completes; a
// timeout of such an operation force-closes its connection, and an operation
// still waiting abandon_grace later finishes anyway (see abandon_grace).
#pragma once

#include <spdlog/spdlog.h>
#include <ucp/api/ucp.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "transport/process_watch.hpp"
#include "transport/shared_host_memory.hpp"
#include "transport/transfer_engine_ucx.hpp"
#include "transport/transfer_engine_util.hpp"

namespace troupe {

namespace te_ucx {

using clock = std::chrono::steady_clock;

using te_util::log;
using te_util::outcome;
using te_util::outcome_errc;

/// Active message ids of the data plane (a worker of its own: no clash with ucx_node).
enum am_id : unsigned {
  am_hello = 1,       ///< client -> server: the client's engine_address (wire_pack); op = client's connection id
  am_hello_ack = 2,   ///< server -> client: op = the client's connection id
  am_read_req = 3,    ///< op, region, token, offset, bytes
  am_read_resp = 4,   ///< op, status; payload = the bytes (none on error)
  am_write = 5,       ///< op, region, token, offset, bytes; payload = the bytes
  am_ack = 6,         ///< op (the requester's), status, bytes: a write or send finished at the peer
  am_send_eager = 7,  ///< op, tag; payload = the bytes
  am_send_rts = 8,    ///< op, tag, bytes: a large send waits for a matching recv
  am_send_cts = 9,    ///< op = sender's op, op2 = receiver's recv op: send the bytes now
  am_send_data = 10,  ///< op = receiver's recv op, op2 = sender's op; payload = the bytes
  am_abort = 11,      ///< op = receiver's recv op: the sender gave its send up
};

/// Header of every data-plane message; each message uses the fields its id lists.
struct msg_header {
  uint64_t from = 0;  ///< sending engine's id
  uint64_t op = 0;
  uint64_t op2 = 0;
  uint64_t region = 0;
  uint64_t token = 0;
  uint64_t offset = 0;
  uint64_t bytes = 0;
  uint64_t tag = 0;
  uint32_t status = 0;  ///< an outcome
  uint32_t reserved = 0;
};

/// Payloads up to this size are copied when an operation starts and sent
/// forced eager, so the caller's buffer is never pinned by UCX for them.
inline constexpr size_t copy_max_bytes = 64u << 10;

/// How long a failing operation waits for UCX to let go of its buffer once
/// its connection is closed. UCX 1.13 does not complete rendezvous requests
/// of a force-closed endpoint (seen with a stopped peer); with the endpoint
/// gone no byte moves on them any more, so the operation then finishes and
/// the requests are abandoned (their completions, if any, find nothing).
inline constexpr std::chrono::milliseconds abandon_grace{200};

enum class op_kind { read, write, send, recv };

enum class op_state {
  waiting_peer,  ///< its connection is not up yet
  posted,        ///< recv: waiting for a matching send
  requested,     ///< request, eager payload or rts sent; waiting for the answer
  moving,        ///< payload in flight on the caller's buffer
};

/// One operation, from its start until finish().
struct op {
  uint64_t id = 0;
  op_kind kind = op_kind::read;
  op_state state = op_state::waiting_peer;
  engine_address peer;        ///< the other engine (owner, receiver or sender)
  uint64_t conn = 0;          ///< the connection it runs on (0: none yet)
  memory_descriptor remote;   ///< read/write: the region
  uint64_t offset = 0;        ///< read/write: offset in the region
  std::byte* local = nullptr; ///< the caller's buffer
  size_t bytes = 0;           ///< read/write/send: bytes to move; recv: capacity
  uint64_t tag = 0;           ///< send/recv
  uint64_t remote_op = 0;     ///< send: the receiver's recv op (after cts); recv: the sender's op (after rts)
  transfer_done done;
  clock::time_point deadline;
  int inflight = 0;           ///< UCX requests that use the caller's buffer
  bool answered = false;      ///< its answer is in: data landed (read, recv) or the peer confirmed (write, send)
  outcome result = outcome::ok;  ///< the answer (the peer's status for write and send)
  bool failing = false;       ///< finishes with `fail` once inflight is 0
  outcome fail = outcome::ok;
  size_t moved = 0;
  bool shared_memory = false; ///< moved over the shared-memory endpoint (for the counters)
};

enum class conn_state {
  connecting,      ///< client: hello sent, waiting for the ack (or the peer's own hello)
  up,              ///< carries operations
  closed,          ///< failed or replaced; endpoints being closed
};

/// A connection to one peer engine: one endpoint to its worker address
/// (mode NONE over shared memory on one host, else PEER).
struct conn {
  struct impl* owner = nullptr;
  uint64_t id = 0;
  bool client = false;
  conn_state state = conn_state::connecting;
  engine_address peer;              ///< known at once for a client, after hello for a server
  ucp_ep_h ep = nullptr;            ///< to the peer's worker address: everything (PEER mode: also liveness)
  bool shared_memory = false;       ///< one host, shared memory on both sides: ep is in mode NONE
  clock::time_point deadline;       ///< end of the hello exchange
  std::vector<uint64_t> waiting;    ///< operations waiting for up
  std::unordered_map<uint64_t, ucp_rkey_h> rkeys;  ///< region -> unpacked rkey (RMA)
  std::vector<void*> close_requests;
  bool peer_exited = false;  ///< its process is gone: UCX may force-close even a NONE endpoint
  /// The peer's process when it runs on this host: its exit fails the
  /// connection at once (mode NONE has no other liveness; see process_watch.hpp).
  std::unique_ptr<process_watch> watch;

  std::string label() const;
};

/// A send that arrived before its recv was posted.
struct unexpected {
  uint64_t from = 0;
  uint64_t tag = 0;
  uint64_t sender_op = 0;
  bool rts = false;         ///< large: only announced (bytes), not yet sent
  uint64_t bytes = 0;
  std::vector<char> data;   ///< small: the payload
  clock::time_point expires;
};

/// A registered region.
struct region {
  std::byte* base = nullptr;
  size_t bytes = 0;
  uint64_t token = 0;
  ucp_mem_h memh = nullptr;  ///< for RMA (null unless shared memory and rma are on and bytes > 0)
};

/// What a UCX request needs when it completes: the bytes it sends must live
/// until then, and `then` continues the protocol.
struct request_ctx {
  struct impl* owner = nullptr;
  uint64_t from = 0;  ///< a rendezvous receive: the engine the bytes come from
  msg_header header;
  std::vector<char> copy;
  std::function<void(ucs_status_t)> then;
};

/// Completion callbacks of UCX requests: run the request_ctx's `then`, free both.
void request_cb(void* request, ucs_status_t status, void* user_data);
void recv_request_cb(void* request, ucs_status_t status, size_t length, void* user_data);

/// Throws troupe::error(errc_io) naming the UCX call, file and line (start-up only).
#define TROUPE_TE_UCS_CHECK(expr, what)                                                                              \
  do {                                                                                                               \
    const ucs_status_t troupe_ucs_status_ = (expr);                                                                  \
    if (troupe_ucs_status_ != UCS_OK)                                                                                \
      throw ::troupe::error(::troupe::errc::errc_io, std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                                                         (what) + ": " + ucs_status_string(troupe_ucs_status_));     \
  } while (0)

/// The engine's state; the public object is a thin shell around it.
struct impl {
  explicit impl(const ucx_engine_options& o);
  ~impl();

  // ---- any thread (transfer_engine_ucx.cpp) ----
  void post(std::function<void()> fn);
  /// Runs fn on the progress thread and waits for it (inline when called there).
  void call(const std::function<void()>& fn);
  void wake();
  /// Creates the operation and starts it on the progress thread.
  void submit(std::unique_ptr<op> o);

  // ---- progress thread: loop (transfer_engine_ucx.cpp) ----
  void run();
  void run_commands();
  void run_deferred();
  void reap_closing();
  int poll_timeout_ms(clock::time_point now) const;
  void shutdown();
  void defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }
  /// Tracks a UCX request (or its immediate result); runs ctx->then with the final status.
  void track(ucs_status_ptr_t r, request_ctx* ctx);
  /// Sends an active message; payload points at `copy` in ctx or at caller
  /// memory. Over the connection's one endpoint: shared memory on one host
  /// (large payloads by rendezvous through UCX's fifos), tcp otherwise.
  void send_am(conn* c, unsigned id, request_ctx* ctx, const void* payload, size_t bytes, bool force_eager);
  /// Sends a header-only message to the peer's live connection, if any.
  void send_control(uint64_t peer, unsigned id, const msg_header& h);
  /// Receives a rendezvous payload into dest; then(status) when it is there.
  void recv_data(uint64_t from, void* desc, void* dest, size_t length, std::function<void(ucs_status_t)> then);

  // ---- progress thread: connections (transfer_engine_ucx_conn.cpp) ----
  void register_am_handlers();
  conn* find_conn(uint64_t id);
  /// The connection messages from and to an engine use: up, or a client's
  /// still waiting for its hello ack (a message from the server proves it up).
  conn* live_conn(uint64_t engine);
  /// The connection an operation runs on: up, connecting (it waits), or a new one.
  conn* conn_for(const engine_address& peer);
  /// Opens the PEER endpoint to c->peer's worker address; false (c failed) when UCX refuses.
  bool open_peer_endpoint(conn* c);
  /// Server side of a hello: a connection back to the caller (deferred from the callback).
  void accept_hello(const engine_address& peer, uint64_t client_conn);
  void on_hello(const msg_header& h, const void* data, size_t length);
  void on_hello_ack(const msg_header& h);
  void bring_up(conn* c);
  /// Marks a connection closed once, fails its operations with `why`, closes its endpoints.
  void fail_conn(conn* c, outcome why, const std::string& reason, bool force);
  void close_endpoints(uint64_t id, bool force);
  /// The unpacked rkey of a region behind a descriptor (RMA), or nullptr.
  ucp_rkey_h rkey(conn* c, const memory_descriptor& d);

  // ---- progress thread: operations (transfer_engine_ucx_ops.cpp) ----
  void start(std::unique_ptr<op> o);
  void run_op(op* o, conn* c);
  void finish(op* o, outcome how, size_t moved);
  void fail_op(op* o, outcome how);
  /// Finishes an operation once nothing uses its buffer and its answer is in.
  void settle(op* o);
  /// A UCX request on an operation's buffer completed; `answers` when its
  /// success is the operation's answer (data landed).
  void buffer_done(uint64_t id, ucs_status_t status, bool answers, size_t moved);
  /// Confirms a write or send to its origin.
  void ack(uint64_t peer, uint64_t op, outcome status, uint64_t bytes);
  op* find_op(uint64_t id, op_kind kind);
  void tick(clock::time_point now);
  void match_recv(op* r);
  void unpost(op* r);
  void deliver_eager(op* r, const char* data, size_t length, uint64_t sender, uint64_t sender_op);
  void accept_rts(op* r, uint64_t sender, uint64_t sender_op, uint64_t bytes);
  /// The region a peer's request addresses, if it exists, the token matches and the range fits.
  const region* serve_check(const msg_header& h) const;
  // message handlers
  ucs_status_t on_read_req(conn* c, const msg_header& h);
  ucs_status_t on_read_resp(conn* c, const msg_header& h, void* data, size_t length, const ucp_am_recv_param_t* p);
  ucs_status_t on_write(conn* c, const msg_header& h, void* data, size_t length, const ucp_am_recv_param_t* p);
  ucs_status_t on_ack(conn* c, const msg_header& h);
  ucs_status_t on_send_eager(conn* c, const msg_header& h, void* data, size_t length, const ucp_am_recv_param_t* p);
  ucs_status_t on_send_rts(conn* c, const msg_header& h);
  ucs_status_t on_send_cts(conn* c, const msg_header& h);
  ucs_status_t on_send_data(conn* c, const msg_header& h, void* data, size_t length, const ucp_am_recv_param_t* p);
  ucs_status_t on_abort(conn* c, const msg_header& h);

  // Configuration (immutable after start).
  ucx_engine_options opt_;
  engine_address address_;

  // UCX objects: the progress thread's once it runs.
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int worker_fd_ = -1;
  int wake_fd_ = -1;

  std::thread thread_;
  std::thread::id thread_id_;
  std::atomic<bool> stop_{false};
  bool shutting_down_ = false;

  std::mutex mu_;
  std::vector<std::function<void()>> commands_;

  // Progress thread only.
  std::vector<std::function<void()>> deferred_;
  uint64_t next_conn_ = 1;
  uint64_t next_region_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<conn>> conns_;
  std::unordered_map<uint64_t, uint64_t> by_engine_;  ///< peer engine -> its (one) open connection
  std::vector<std::unique_ptr<conn>> closing_;
  std::unordered_map<uint64_t, std::unique_ptr<op>> ops_;
  std::set<std::pair<clock::time_point, uint64_t>> deadlines_;
  /// Posted recvs by (peer engine, tag), oldest first.
  std::map<std::pair<uint64_t, uint64_t>, std::deque<uint64_t>> posted_;
  std::deque<unexpected> unexpected_;
  size_t unexpected_bytes_ = 0;
  std::unordered_map<uint64_t, region> regions_;
  /// Same-host peers' shared buffers mapped here (any thread; thread-safe).
  shared_host_mapper mapped_;
  /// Whether the owner of a mapped region is alive (any thread): a region
  /// whose owner died fails like any other of its regions, though its bytes
  /// are still mapped here (see mapped() in transfer_engine_ucx.cpp). True
  /// when it cannot be told.
  bool owner_alive(const engine_address& owner);
  std::mutex owners_mu_;
  std::map<std::pair<uint32_t, uint64_t>, std::unique_ptr<process_watch>> owners_;  ///< (pid, start time); null: no watch
  std::unordered_set<request_ctx*> in_ucx_;  ///< contexts of UCX requests not yet completed
  std::unordered_set<uint64_t> exited_;       ///< engines whose process was seen to exit (their receives never end)

  std::atomic<uint64_t> next_op_{1};
  te_util::counters s_;
};

}  // namespace te_ucx

}  // namespace troupe
