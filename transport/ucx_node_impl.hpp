// Inside ucx_node: the state the progress thread owns and the helpers its
// source files share (ucx_node.cpp: start-up, the progress loop, the public
// calls; ucx_link.cpp: the handshake and closing links; ucx_receive.cpp:
// envelopes in, in order). UCX objects and the link tables are touched only
// by whoever holds ucx_mu_: the progress thread, which holds it except while
// it sleeps or yields, or a thread sending an envelope inline (send_inline);
// everything else goes through post() (see ucx_node.hpp). Callbacks into the
// user run on the progress thread only. UCX callbacks do not create or close
// endpoints: those steps go through defer() and run right after progress
// returns.
#pragma once

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "transport/log.hpp"
#include "transport/ucx_handshake.hpp"
#include "transport/ucx_node.hpp"

namespace troupe {

namespace ucx_detail {

using clock = std::chrono::steady_clock;

/// Active message ids of link traffic (the handshake runs on TCP before any
/// UCX endpoint exists; see ucx_handshake.hpp).
enum am_id : unsigned {
  am_envelope = 5,
  am_heartbeat = 6,
  am_bye = 7,
};

/// At most this many accepted connections may be in the handshake at once;
/// a new one past it closes the oldest that has not said hello yet, else it
/// is closed itself (a flood of idle connections can neither exhaust
/// descriptors nor keep real nodes out for long).
inline constexpr size_t max_pending_handshakes = 64;

/// Refusals logged per second at most (anyone who reaches the port can cause them).
inline constexpr int max_refusal_logs_per_second = 10;

/// Header of every active message: which link of the receiver it is for,
/// the token that link gave its peer, and the sender's sequence number on
/// that link (envelopes), or the number of envelopes it sent before (bye).
struct am_header {
  uint32_t link = 0;
  uint32_t reserved = 0;
  uint64_t token = 0;
  uint64_t seq = 0;
};

/// Envelopes up to this size travel over the shared-memory endpoint, forced
/// eager (sysv/posix fifos only); larger ones go by rendezvous over the
/// PEER endpoint. UCX 1.13 would move large ones on the
/// shared-memory endpoint by cma, and a cma read from a peer that died is a
/// fatal error (abort) on an endpoint in error mode NONE. Sequence numbers
/// restore the order across the two endpoints.
inline constexpr size_t shm_eager_max_bytes = 256u << 10;

/// How far ahead of the next expected envelope a sequence number may be.
inline constexpr uint64_t max_inbox_span = 1u << 16;

enum class link_state {
  connecting,       ///< client: TCP connecting or hello sent, waiting for the challenge
  awaiting_hello,   ///< server: connection accepted, waiting for hello
  awaiting_auth,    ///< server: challenge sent, waiting for the client's proof
  awaiting_accept,  ///< client: proof sent, waiting for accept
  up,               ///< authenticated both ways; carries envelopes
  closed,           ///< refused or down; endpoints being closed
};

/// How a link ends, which decides how its endpoints close.
enum class link_end {
  dead,     ///< the peer died or stopped answering: force-close, tell it nothing
  left,     ///< the peer said goodbye: flush-close
  refused,  ///< this node refuses or drops it: goodbye (when the peer's token is known), then flush-close
};

/// An envelope waiting for delivery behind an earlier one not yet here.
struct inbox_slot {
  bool claimed = false;  ///< its envelope arrived (perhaps still being fetched)
  bool ready = false;    ///< fetched and decoded (or dropped)
  bool valid = false;    ///< decoded: deliver it
  wire_envelope envelope;
};

struct link {
  ucx_node::impl* owner = nullptr;
  uint32_t id = 0;
  bool client = false;
  link_state state = link_state::connecting;
  ucp_ep_h ep = nullptr;       ///< to the peer's worker address, error mode PEER: heartbeats, liveness, envelopes
  ucp_ep_h data_ep = nullptr;  ///< to the peer's worker address, error mode NONE: small envelopes on a shared host
  int fd = -1;                 ///< the handshake's TCP connection (closed once the link is up)
  bool tcp_connected = false;  ///< client: the TCP connect finished
  bool close_after_flush = false;  ///< server: the accept is queued; close the socket once it is written
  std::vector<char> in, out;   ///< handshake bytes received (not yet a whole frame) and still to write
  std::string where;           ///< the peer's socket address, for logs
  std::string peer_name;       ///< known after hello / challenge
  std::string expected_name;   ///< client: refuse a peer of another name (empty: any)
  ucx_handshake::nonce my_nonce{}, peer_nonce{};
  uint64_t my_token = 0, peer_token = 0;
  uint32_t peer_link = 0;
  bool same_host = false;
  std::vector<char> peer_address;  ///< the peer's worker address
  clock::time_point deadline;      ///< end of the handshake
  clock::time_point last_heard;
  uint64_t next_seq = 0;  ///< sequence number of the next envelope this node sends
  /// The peer said goodbye after sending this many envelopes: the link goes
  /// down once they are delivered (a large one may still be being fetched).
  uint64_t bye_after = UINT64_MAX;
  // In-order delivery: inbox[i] holds the peer's envelope inbox_base + i.
  uint64_t inbox_base = 0;
  std::deque<inbox_slot> inbox;
  std::vector<void*> close_requests;  ///< ucp_ep_close_nbx requests still running

  /// The name for logs: the peer's name once known, else its address.
  std::string label() const { return peer_name.empty() ? where : peer_name + " (" + where + ")"; }
  am_header header_to_peer(uint64_t seq = 0) const { return am_header{peer_link, 0, peer_token, seq}; }
};

}  // namespace ucx_detail

/// Throws troupe::error(errc_io) naming the UCX call, file and line (start-up only).
#define TROUPE_UCS_CHECK(expr, what)                                                                                 \
  do {                                                                                                               \
    const ucs_status_t troupe_ucs_status_ = (expr);                                                                  \
    if (troupe_ucs_status_ != UCS_OK)                                                                                \
      throw ::troupe::error(::troupe::errc::errc_io, std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                                                         (what) + ": " + ucs_status_string(troupe_ucs_status_));     \
  } while (0)

struct ucx_node::impl {
  using link = ucx_detail::link;
  using link_state = ucx_detail::link_state;
  using clock = ucx_detail::clock;

  impl(ucx_node_options o, handlers h);
  ~impl();

  // ---- any thread ----
  /// Runs fn on the progress thread.
  void post(std::function<void()> fn);
  void wake();
  /// Sends an envelope from the calling thread when that keeps the order and
  /// UCX is free (see ucx_node.hpp); false when it must be posted instead.
  bool send_inline(const std::string& node, std::vector<char>& bytes);

  // ---- progress thread, or a caller holding ucx_mu_ (ucx_node.cpp) ----
  /// Sends an envelope on the link to `node` now. A link that cannot take it
  /// fails on the progress thread (a caller's failure is posted there).
  void send_envelope_now(const std::string& node, std::vector<char> bytes, bool on_progress_thread);

  // ---- progress thread (ucx_node.cpp) ----
  void run();
  /// Runs the queued commands; whether there were any.
  bool run_commands();
  void run_deferred();
  void reap_closing();
  void tick(clock::time_point now);
  int poll_timeout_ms(clock::time_point now) const;
  void shutdown();
  /// Queues an active message; the bytes live until UCX is done with them.
  bool send_am(ucp_ep_h ep, unsigned id, const ucx_detail::am_header& h, std::vector<char> bytes, uint32_t flags = 0);
  /// Sends on the endpoint this size takes (see shm_eager_max_bytes); returns
  /// whether it went over shared memory, and in *ok whether UCX took it.
  bool send_routed(link* l, unsigned id, const ucx_detail::am_header& h, std::vector<char> bytes, bool* ok);

  // ---- progress thread (ucx_link.cpp, ucx_receive.cpp) ----
  void defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }
  void start_client(const sockaddr_storage& addr, socklen_t len, std::string where, std::string expected_name);
  link* new_link(bool client, std::string where);

  // ---- progress thread: the handshake's sockets (ucx_handshake_io.cpp) ----
  /// Binds and listens on opt_.host:opt_.port (start-up; throws troupe::error).
  void open_listener();
  /// Accepts every pending connection as a server link awaiting hello.
  void accept_connections();
  /// Appends the listener and every handshake socket to `fds`.
  void socket_pollfds(std::vector<pollfd>& fds) const;
  /// Serves the events poll() reported on the entries socket_pollfds added.
  void on_socket_events(const pollfd* fds, size_t n);
  /// Serves whatever the sockets have now (a zero-timeout poll).
  void poll_sockets();
  /// Queues a frame on the link's socket and writes what the socket takes.
  void send_frame(link* l, ucx_handshake::frame_type type, const std::vector<char>& body);
  void on_socket(link* l, short revents);
  void close_socket(link* l);
  /// Opens the endpoints to the peer's worker address; false (link failed) when UCX refuses.
  bool open_endpoints(link* l);
  /// Whether another refusal may be logged now; says how many were not.
  bool refusal_logged();
  link* find(uint32_t id);
  /// The link a header names, if its token matches and its state is one of `states`.
  link* authentic(const void* header, size_t length, std::initializer_list<link_state> states,
                  ucx_detail::am_header* out = nullptr);
  /// Marks a link closed once: logs, counts, fires link_down if it was up, closes its endpoints.
  void fail_link(link* l, const std::string& reason, ucx_detail::link_end how);
  /// Forced close only for a dead peer: a forced close of the NONE-mode
  /// endpoint is undefined for a live one, and a flushed close tells the peer.
  void close_endpoints(uint32_t id, bool force);
  void bring_up(link* l);
  /// Handshake steps, one per frame received (ucx_link.cpp).
  void server_hello(link* l, const char* data, size_t length);
  void client_challenge(link* l, const char* data, size_t length);
  void server_auth(link* l, const char* data, size_t length);
  void client_accept(link* l, const char* data, size_t length);
  bool claim_name(link* l, const std::string& name);
  void on_envelope(link* l, uint64_t seq, void* data, size_t length, const ucp_am_recv_param_t* param);
  void fetched(uint32_t link_id, uint64_t seq, std::unique_ptr<char[]> buf, size_t length, ucs_status_t st);
  bool decode_counted(link* l, const char* data, size_t size, wire_envelope& out);
  void drain_inbox(link* l);
  /// Takes the link down once everything sent before the peer's goodbye is delivered.
  void settle_bye(link* l);
  void deliver(link* l, wire_envelope&& e);
  void register_am_handlers();

  // Configuration and handlers (immutable after start).
  ucx_node_options opt_;
  handlers h_;
  std::string boot_id_;
  /// The boot id a handshake tells the peer: empty when shared memory is off,
  /// so that both ends agree whether a link gets its shared-memory endpoint.
  /// They must: UCX pairs the endpoints two workers open to each other by
  /// creation order and fails a pair whose error modes differ.
  const std::string& offered_boot_id() const {
    static const std::string none;
    return opt_.shared_memory ? boot_id_ : none;
  }
  std::vector<char> worker_address_;  ///< what peers open their endpoints to

  // UCX objects: touched by the progress thread only once it runs.
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int listen_fd_ = -1;  ///< the TCP listener of the handshake
  clock::time_point listen_paused_until_{};  ///< accept failed for lack of descriptors or memory: wait before retrying
  clock::time_point refusal_window_{};       ///< start of the second the refusal log limit counts in
  int refusals_logged_ = 0, refusals_suppressed_ = 0;
  int worker_fd_ = -1;
  int wake_fd_ = -1;
  uint16_t port_ = 0;

  std::thread thread_;
  std::atomic<std::thread::id> progress_id_{};  ///< the progress thread's id, set before it runs anything
  std::atomic<bool> stop_{false};
  bool shutting_down_ = false;  ///< progress thread: no more callbacks to the user

  /// Held by whoever touches UCX objects and the link tables: the progress
  /// thread, except while it sleeps in poll() or yields while busy-polling,
  /// or a caller sending inline (which only ever try_locks it).
  std::mutex ucx_mu_;
  bool finished_ = false;                  ///< (ucx_mu_) the worker is gone: nothing may send inline
  std::atomic<bool> sleeping_{false};      ///< the progress thread is in (or about to enter) poll()
  std::atomic<int64_t> inline_sent_ns_{0};  ///< steady clock of the last inline send (busy-poll window)

  // Shared with callers: commands to run, and the up links they may send to.
  mutable std::mutex mu_;
  std::vector<std::function<void()>> commands_;
  std::set<std::string> up_names_;

  // Progress thread only.
  std::vector<std::function<void()>> deferred_;
  uint32_t next_link_id_ = 1;
  std::unordered_map<uint32_t, std::unique_ptr<link>> links_;
  std::unordered_map<std::string, uint32_t> by_name_;  ///< peer name → link, any state but closed
  std::vector<std::unique_ptr<link>> closing_;
  size_t outstanding_ = 0;  ///< sends and rendezvous receives UCX still holds
  clock::time_point next_heartbeat_;

  struct atomic_counters {
    std::atomic<uint64_t> sent{0}, delivered{0}, received_rendezvous{0}, dropped_malformed{0}, dropped_oversized{0},
        dropped_version{0}, dropped_unauthenticated{0}, dropped_no_link{0}, auth_failures{0}, handshakes_failed{0},
        links_up{0}, links_down{0}, shared_memory_endpoints{0}, sent_shared_memory{0};
  } c_;
};

}  // namespace troupe
