// The cuda_ipc transfer engine (design in transfer_engine_cuda.hpp). Copies
// are issued on the caller's thread (the engine's device made current for
// the call, then restored) on one stream of the engine, each followed by an
// event; one completion thread waits on the events in issue order (blocking-
// sync events: it sleeps, and an idle engine sleeps on a condition variable)
// and calls done. Issuing and queueing happen under one mutex so the queue's
// order is the stream's. Opened IPC mappings are cached per owner engine and
// allocation handle (opening one allocation twice in a process fails) and
// closed on disconnect() and at destruction, after the stream has drained.
#include <cuda.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "transport/cuda/transfer_engine_cuda_impl.hpp"
#include "transport/process_watch.hpp"
#include "transport/transfer_engine_cuda.hpp"

namespace troupe {

namespace {

using te_util::log;
using te_util::outcome;

constexpr size_t handle_bytes = sizeof(cudaIpcMemHandle_t);

// cuMemGetAddressRange (the allocation around a pointer: IPC handles name
// allocations), looked up through the runtime so nothing links libcuda.
using address_range_fn = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
address_range_fn address_range() {
  static const address_range_fn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult status{};
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &p, 12000, cudaEnableDefault, &status) !=
            cudaSuccess ||
        status != cudaDriverEntryPointSuccess)
      return static_cast<address_range_fn>(nullptr);
    return reinterpret_cast<address_range_fn>(p);
  }();
  return fn;
}

class cuda_ipc_engine final : public transfer_engine {
 public:
  explicit cuda_ipc_engine(const cuda_ipc_engine_options& o) : opt_(o) {
    int count = 0;
    TROUPE_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (o.device < 0 || o.device >= count)
      throw error(errc::errc_invalid_argument, "transfer_engine cuda_ipc: no device " + std::to_string(o.device));
    te_cuda::device_scope on(o.device);
    TROUPE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    address_.engine = te_util::random_id();
    address_.host_id = te_util::host_id();
    address_.pid = static_cast<uint32_t>(getpid());
    address_.start_time = own_start_time();
    address_.pid_namespace = own_pid_namespace();
    address_.device = o.device;
    waiter_ = std::thread([this] { wait_loop(); });
  }

  ~cuda_ipc_engine() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    waiter_.join();  // every copy issued has completed and been reported
    te_cuda::device_scope on(opt_.device);
    for (auto& [key, m] : opened_) TROUPE_TE_CUDA_OK(cudaIpcCloseMemHandle(m.base));
    for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
    cudaStreamDestroy(stream_);
  }

  const char* backend() const override { return "cuda_ipc"; }
  engine_address address() const override { return address_; }
  std::chrono::milliseconds timeout() const override { return std::chrono::milliseconds(0); }

  memory_descriptor register_memory(void* base, size_t bytes) override {
    te_cuda::device_scope on(opt_.device);
    cudaPointerAttributes a{};
    TROUPE_CUDA_CHECK(cudaPointerGetAttributes(&a, base));
    if (a.type != cudaMemoryTypeDevice)
      throw error(errc::errc_invalid_argument, "transfer_engine cuda_ipc: registers device memory only");
    CUdeviceptr alloc = 0;
    size_t alloc_bytes = 0;
    if (address_range() == nullptr ||
        address_range()(&alloc, &alloc_bytes, reinterpret_cast<CUdeviceptr>(base)) != CUDA_SUCCESS)
      throw error(errc::errc_cuda, "transfer_engine cuda_ipc: cuMemGetAddressRange failed");
    const uint64_t offset = reinterpret_cast<CUdeviceptr>(base) - alloc;
    if (offset + bytes > alloc_bytes)
      throw error(errc::errc_invalid_argument, "transfer_engine cuda_ipc: the region leaves its allocation");
    cudaIpcMemHandle_t h{};
    TROUPE_CUDA_CHECK(cudaIpcGetMemHandle(&h, reinterpret_cast<void*>(alloc)));
    memory_descriptor d;
    d.backend = "cuda_ipc";
    d.bytes = bytes;
    d.address = reinterpret_cast<uintptr_t>(base);
    d.token = te_util::random_id();
    d.remote_key.assign(reinterpret_cast<const char*>(&h), handle_bytes);
    d.remote_key.append(reinterpret_cast<const char*>(&offset), sizeof offset);
    d.owner = address_;
    std::lock_guard<std::mutex> lock(mu_);
    d.region = next_region_++;
    regions_[d.region] = bytes;
    ++c_.registrations;
    return d;
  }

  errc unregister_memory(uint64_t region) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (regions_.erase(region) == 0) return errc::errc_invalid_argument;
    --c_.registrations;
    return errc::ok;
  }

  void read(const memory_descriptor& remote, size_t offset, void* local, size_t bytes, transfer_done done) override {
    copy(remote, offset, local, bytes, std::move(done), true);
  }

  void write(const memory_descriptor& remote, size_t offset, const void* local, size_t bytes,
             transfer_done done) override {
    copy(remote, offset, const_cast<void*>(local), bytes, std::move(done), false);
  }

  void send(const engine_address&, uint64_t, const void*, size_t, transfer_done done) override {
    ++c_.started;
    ++c_.pending;
    c_.ended(outcome::bad_request, 0, true);
    done(transfer_error::unsupported, 0);
  }

  void recv(const engine_address&, uint64_t, void*, size_t, transfer_done done) override {
    send({}, 0, nullptr, 0, std::move(done));
  }

  void disconnect(const engine_address& peer) override {
    std::lock_guard<std::mutex> lock(mu_);
    te_cuda::device_scope on(opt_.device);
    TROUPE_TE_CUDA_OK(cudaStreamSynchronize(stream_));  // nothing may still copy through the mappings
    for (auto it = opened_.begin(); it != opened_.end();) {
      if (it->first.first == peer.engine) {
        TROUPE_TE_CUDA_OK(cudaIpcCloseMemHandle(it->second.base));
        it = opened_.erase(it);
        --c_.peers;
      } else {
        ++it;
      }
    }
  }

  transfer_engine_stats stats() const override { return c_.snapshot(); }

 private:
  struct mapping {
    void* base = nullptr;  // the owner's allocation, mapped here
  };
  struct in_flight {
    cudaEvent_t event;
    transfer_done done;
    size_t bytes;
  };

  // The owner's region as a pointer usable here, or nullptr (logged).
  // Called with mu_ held and the device current.
  std::byte* resolve(const memory_descriptor& d) {
    if (d.owner.pid == address_.pid && d.owner.host_id == address_.host_id) {
      if (d.owner.device != opt_.device && d.owner.device >= 0 && peer_enabled_.insert(d.owner.device).second) {
        int can = 0;
        if (cudaDeviceCanAccessPeer(&can, opt_.device, d.owner.device) == cudaSuccess && can) {
          const cudaError_t e = cudaDeviceEnablePeerAccess(d.owner.device, 0);
          if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
          else TROUPE_TE_CUDA_OK(e);
        }
      }
      return reinterpret_cast<std::byte*>(static_cast<uintptr_t>(d.address));
    }
    const std::string handle = d.remote_key.substr(0, handle_bytes);
    uint64_t offset = 0;
    std::memcpy(&offset, d.remote_key.data() + handle_bytes, sizeof offset);
    auto key = std::make_pair(d.owner.engine, handle);
    auto it = opened_.find(key);
    if (it == opened_.end()) {
      cudaIpcMemHandle_t h{};
      std::memcpy(&h, handle.data(), handle_bytes);
      mapping m;
      if (!TROUPE_TE_CUDA_OK(cudaIpcOpenMemHandle(&m.base, h, cudaIpcMemLazyEnablePeerAccess))) return nullptr;
      it = opened_.emplace(key, m).first;
      ++c_.peers;
      ++c_.connections;
    }
    return static_cast<std::byte*>(it->second.base) + offset;
  }

  void copy(const memory_descriptor& d, size_t offset, void* local, size_t bytes, transfer_done done, bool is_read) {
    ++c_.started;
    ++c_.pending;
    auto fail = [&](outcome o, errc e) {
      c_.ended(o, 0, true);
      done(e, 0);
    };
    if (d.backend != "cuda_ipc" || d.owner.engine == 0 || d.remote_key.size() != handle_bytes + sizeof(uint64_t) ||
        d.owner.host_id != address_.host_id || offset > d.bytes || bytes > d.bytes - offset)
      return fail(outcome::bad_request, transfer_error::bad_request);
    if (bytes == 0) {
      c_.ended(outcome::ok, 0, true);
      return done(errc::ok, 0);
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (stop_) {
      lock.unlock();
      return fail(outcome::cancelled, transfer_error::cancelled);
    }
    te_cuda::device_scope on(opt_.device);
    std::byte* remote = resolve(d);
    if (remote == nullptr) {
      lock.unlock();
      return fail(outcome::bad_request, transfer_error::bad_request);
    }
    remote += offset;
    cudaEvent_t ev = take_event();
    void* dst = is_read ? local : static_cast<void*>(remote);
    const void* src = is_read ? static_cast<const void*>(remote) : local;
    const bool issued = ev != nullptr &&
                        TROUPE_TE_CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_)) &&
                        TROUPE_TE_CUDA_OK(cudaEventRecord(ev, stream_));
    if (!issued) {
      if (ev != nullptr) free_events_.push_back(ev);
      lock.unlock();
      c_.ended(outcome::bad_request, 0, true);
      return done(errc::errc_cuda, 0);
    }
    queue_.push_back({ev, std::move(done), bytes});
    lock.unlock();
    cv_.notify_all();
  }

  cudaEvent_t take_event() {  // mu_ held
    if (!free_events_.empty()) {
      cudaEvent_t e = free_events_.back();
      free_events_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    if (!TROUPE_TE_CUDA_OK(cudaEventCreateWithFlags(&e, cudaEventBlockingSync | cudaEventDisableTiming))) return nullptr;
    return e;
  }

  void wait_loop() {
    cudaSetDevice(opt_.device);
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      in_flight f = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      const cudaError_t e = cudaEventSynchronize(f.event);
      if (e == cudaSuccess) {
        c_.ended(outcome::ok, f.bytes, true);
        f.done(errc::ok, f.bytes);
      } else {
        TROUPE_TE_CUDA_OK(e);
        c_.ended(outcome::bad_request, 0, true);
        f.done(errc::errc_cuda, 0);
      }
      lock.lock();
      free_events_.push_back(f.event);
    }
  }

  cuda_ipc_engine_options opt_;
  engine_address address_;
  cudaStream_t stream_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::deque<in_flight> queue_;
  std::vector<cudaEvent_t> free_events_;
  std::map<std::pair<uint64_t, std::string>, mapping> opened_;
  std::set<int> peer_enabled_;
  std::unordered_map<uint64_t, size_t> regions_;
  uint64_t next_region_ = 1;
  te_util::counters c_;
  std::thread waiter_;
};

}  // namespace

std::unique_ptr<transfer_engine> transfer_engine_cuda_ipc(const cuda_ipc_engine_options& options) {
  return std::make_unique<cuda_ipc_engine>(options);
}

}  // namespace troupe
