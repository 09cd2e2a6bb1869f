// Device resolution and the backend factory. The CUDA model is linked only in
// CUDA builds (model/cuda/); elsewhere a CUDA device is refused here, with the
// reason, before anything is loaded.
#include "model/engine.hpp"

#include <string>

#include "kernels/device.hpp"
#include "model/model.hpp"
#ifdef TROUPE_HAVE_CUDA
#include "model/cuda_model.hpp"
#endif

namespace troupe {

std::unique_ptr<engine_kv> model::kv_make(int64_t page_size, int64_t n_pages) {
  return std::make_unique<engine_kv>(kv_config(page_size, n_pages));
}

std::string engine_resolve_device(const std::string& spec) {
  if (spec == "cpu") return "cpu";
  int index = -1;
  if (spec == "cuda") {
    index = 0;
  } else if (spec.rfind("cuda:", 0) == 0) {
    const std::string n = spec.substr(5);
    if (n.empty() || n.size() > 4 || n.find_first_not_of("0123456789") != std::string::npos)
      throw error(errc::errc_invalid_argument, "device '" + spec + "': expected cpu, cuda, cuda:N or auto");
    index = std::stoi(n);
  } else if (spec != "auto") {
    throw error(errc::errc_invalid_argument, "device '" + spec + "': expected cpu, cuda, cuda:N or auto");
  }
  if (!cuda_built()) {
    if (spec == "auto") return "cpu";
    throw error(errc::errc_unsupported, "device '" + spec + "': this build of troupe has no CUDA backend; use cpu");
  }
  std::string note;
  int gpus = 0;
  for (const device_info& d : devices_list(&note))
    if (d.kind == "cuda") ++gpus;
  if (spec == "auto") return gpus > 0 ? "cuda:0" : "cpu";
  if (index >= gpus)
    throw error(errc::errc_unsupported, "device '" + spec + "': " +
                                            (gpus == 0 ? "no CUDA GPU is visible" + (note.empty() ? "" : " (" + note + ")")
                                                       : "only " + std::to_string(gpus) + " CUDA GPU(s) are visible"));
  return "cuda:" + std::to_string(index);
}

dtype engine_kv_dtype(const std::string& device) {
  return device.rfind("cuda", 0) == 0 ? dtype::dtype_bf16 : dtype::dtype_f32;
}

std::shared_ptr<engine> engine_load(const std::filesystem::path& dir, layer_range range, const std::string& device) {
  const std::string d = engine_resolve_device(device);
  if (d == "cpu") return std::make_shared<model>(model::load(dir, range));
#ifdef TROUPE_HAVE_CUDA
  return cuda_model::load(dir, range, std::stoi(d.substr(5)));
#else
  throw error(errc::errc_unsupported, "device '" + device + "': this build of troupe has no CUDA backend");
#endif
}

}  // namespace troupe
