// The receive path of ucx_node: envelopes from authenticated links are
// bounded, fetched (rendezvous) and decoded, then delivered in the order the
// peer sent them, by the sequence number in their header: small ones may come
// over shared memory ahead of a large one on tcp, and a large one may still be
// being fetched. The link's inbox holds what waits for an earlier one; an
// eager envelope with nothing ahead is delivered straight from UCX's buffer.
// Every drop is logged and counted, and keeps its place in the order.
#include <new>

#include "transport/ucx_node_impl.hpp"

namespace troupe {

using namespace ucx_detail;
using impl = ucx_node::impl;

namespace {

bool rendezvous(const ucp_am_recv_param_t* param) { return (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0; }

// A rendezvous envelope being fetched into buf.
struct recv_op {
  impl* owner;
  uint32_t link;
  uint64_t seq;
  std::unique_ptr<char[]> buf;
  size_t length;
};

void recv_done(void* request, ucs_status_t status, size_t, void* user_data) {
  std::unique_ptr<recv_op> op(static_cast<recv_op*>(user_data));
  --op->owner->outstanding_;
  op->owner->fetched(op->link, op->seq, std::move(op->buf), op->length, status);
  ucp_request_free(request);
}

}  // namespace

void impl::on_envelope(link* l, uint64_t seq, void* data, size_t length, const ucp_am_recv_param_t* param) {
  l->last_heard = clock::now();
  if (seq < l->inbox_base || seq - l->inbox_base >= max_inbox_span ||
      (seq - l->inbox_base < l->inbox.size() && l->inbox[seq - l->inbox_base].claimed))
    return fail_link(l,
                     "envelope sequence number " + std::to_string(seq) + " repeated or out of range (expecting " +
                         std::to_string(l->inbox_base) + ")",
                     link_end::refused);
  const bool fits = length <= opt_.limits.max_envelope_bytes;
  if (!fits) {  // never fetched, never allocated; its place in the order is kept
    ++c_.dropped_oversized;
    transport_log()->warn("node {}: dropped an envelope of {} bytes from {}: over the limit of {}", opt_.name, length,
                          l->label(), opt_.limits.max_envelope_bytes);
  }
  if (fits && !rendezvous(param) && seq == l->inbox_base && l->inbox.empty() && l->state == link_state::up) {
    ++l->inbox_base;  // the next one, nothing held: straight from UCX's buffer
    wire_envelope e;
    if (decode_counted(l, static_cast<const char*>(data), length, e)) deliver(l, std::move(e));
    return settle_bye(l);
  }
  const size_t at = static_cast<size_t>(seq - l->inbox_base);
  if (l->inbox.size() <= at) l->inbox.resize(at + 1);
  l->inbox[at].claimed = true;
  if (!fits || !rendezvous(param)) {
    l->inbox[at].ready = true;
    if (fits) l->inbox[at].valid = decode_counted(l, static_cast<const char*>(data), length, l->inbox[at].envelope);
    return drain_inbox(l);
  }
  ++c_.received_rendezvous;
  std::unique_ptr<char[]> buf(new (std::nothrow) char[length]);
  if (!buf) {
    transport_log()->error("node {}: no memory for an envelope of {} bytes from {}", opt_.name, length, l->label());
    return fetched(l->id, seq, nullptr, length, UCS_ERR_NO_MEMORY);
  }
  auto* op = new recv_op{this, l->id, seq, std::move(buf), length};
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.recv_am = recv_done;
  p.user_data = op;
  const ucs_status_ptr_t r = ucp_am_recv_data_nbx(worker_, data, op->buf.get(), length, &p);
  if (UCS_PTR_IS_PTR(r)) {
    ++outstanding_;
    return;
  }
  std::unique_ptr<recv_op> done(op);
  fetched(done->link, done->seq, std::move(done->buf), length, r == nullptr ? UCS_OK : UCS_PTR_STATUS(r));
}

void impl::fetched(uint32_t link_id, uint64_t seq, std::unique_ptr<char[]> buf, size_t length, ucs_status_t st) {
  link* l = find(link_id);
  if (l == nullptr || l->state == link_state::closed || seq < l->inbox_base || seq - l->inbox_base >= l->inbox.size())
    return;  // the link went down meanwhile: its envelopes go with it
  inbox_slot& s = l->inbox[seq - l->inbox_base];
  s.ready = true;
  if (st != UCS_OK)
    transport_log()->warn("node {}: fetching an envelope of {} bytes from {} failed: {}", opt_.name, length, l->label(),
                          ucs_status_string(st));
  else
    s.valid = decode_counted(l, buf.get(), length, s.envelope);
  drain_inbox(l);
}

void impl::drain_inbox(link* l) {
  while (l->state == link_state::up && !l->inbox.empty() && l->inbox.front().ready) {
    inbox_slot s = std::move(l->inbox.front());
    l->inbox.pop_front();
    ++l->inbox_base;
    if (s.valid) deliver(l, std::move(s.envelope));
  }
  settle_bye(l);
}

void impl::settle_bye(link* l) {
  if (l->state == link_state::up && l->inbox_base >= l->bye_after) fail_link(l, "peer closed the link", link_end::left);
}

bool impl::decode_counted(link* l, const char* data, size_t size, wire_envelope& out) {
  std::string why;
  if (wire_decode(data, size, opt_.limits, out, &why) == errc::ok) return true;
  if (why.rfind("wire version", 0) == 0)
    ++c_.dropped_version;
  else if (why.find("exceeds the limit") != std::string::npos)
    ++c_.dropped_oversized;
  else
    ++c_.dropped_malformed;
  transport_log()->warn("node {}: dropped an envelope of {} bytes from {}: {}", opt_.name, size, l->label(), why);
  return false;
}

void impl::deliver(link* l, wire_envelope&& e) {
  if (shutting_down_) return;
  ++c_.delivered;
  if (!h_.on_message) return;
  try {
    h_.on_message(l->peer_name, std::move(e));
  } catch (const std::exception& ex) {
    transport_log()->error("node {}: message handler threw on an envelope from {}: {}", opt_.name, l->label(),
                           ex.what());
  }
}

}  // namespace troupe
