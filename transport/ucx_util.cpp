#include "transport/ucx_util.hpp"

#include <algorithm>

namespace troupe::ucx_util {

ucs_status_t set_am_handlers(ucp_worker_h worker,
                             std::initializer_list<std::pair<unsigned, ucp_am_recv_callback_t>> table, void* arg) {
  for (const auto& [id, cb] : table) {
    ucp_am_handler_param_t p{};
    p.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS | UCP_AM_HANDLER_PARAM_FIELD_CB |
                   UCP_AM_HANDLER_PARAM_FIELD_ARG;
    p.id = id;
    p.flags = UCP_AM_FLAG_WHOLE_MSG;
    p.cb = cb;
    p.arg = arg;
    const ucs_status_t st = ucp_worker_set_am_recv_handler(worker, &p);
    if (st != UCS_OK) return st;
  }
  return UCS_OK;
}

bool reap_requests(std::vector<void*>& requests) {
  requests.erase(std::remove_if(requests.begin(), requests.end(),
                                [](void* r) {
                                  if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
                                  ucp_request_free(r);
                                  return true;
                                }),
                 requests.end());
  return requests.empty();
}

}  // namespace troupe::ucx_util
