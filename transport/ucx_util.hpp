// Small UCX steps that ucx_node and the ucx transfer engine both take.
#pragma once

#include <ucp/api/ucp.h>

#include <initializer_list>
#include <utility>
#include <vector>

namespace troupe::ucx_util {

/// Registers whole-message active-message handlers (id, callback) with `arg`;
/// the first failing status, else UCS_OK.
ucs_status_t set_am_handlers(ucp_worker_h worker,
                             std::initializer_list<std::pair<unsigned, ucp_am_recv_callback_t>> table, void* arg);

/// Frees the requests that have completed and drops them from `requests`;
/// whether none is left.
bool reap_requests(std::vector<void*>& requests);

}  // namespace troupe::ucx_util
