// Implementation of checkpoints/tensor_io.h.
#include "checkpoints/tensor_io.h"

#include <cstring>

#include "common/error.h"

namespace cw {

static st::DType st_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat64: return st::DType::F64;
    case torch::kFloat32: return st::DType::F32;
    case torch::kFloat16: return st::DType::F16;
    case torch::kBFloat16: return st::DType::BF16;
    case torch::kInt64: return st::DType::I64;
    case torch::kInt32: return st::DType::I32;
    case torch::kInt16: return st::DType::I16;
    case torch::kInt8: return st::DType::I8;
    case torch::kUInt8: return st::DType::U8;
    case torch::kBool: return st::DType::BOOL;
    default: throw std::logic_error("no safetensors dtype for this tensor type");
  }
}

static torch::ScalarType torch_dtype(st::DType t, const std::string& what) {
  switch (t) {
    case st::DType::F64: return torch::kFloat64;
    case st::DType::F32: return torch::kFloat32;
    case st::DType::F16: return torch::kFloat16;
    case st::DType::BF16: return torch::kBFloat16;
    case st::DType::I64: return torch::kInt64;
    case st::DType::I32: return torch::kInt32;
    case st::DType::I16: return torch::kInt16;
    case st::DType::I8: return torch::kInt8;
    case st::DType::U8: return torch::kUInt8;
    case st::DType::BOOL: return torch::kBool;
    case st::DType::U32: fail(what, ": U32 tensors are not supported here");
  }
  fail(what, ": unsupported dtype");
}

void save_tensors(const std::filesystem::path& path, const NamedTensors& tensors,
                  const std::map<std::string, std::string>& metadata) {
  std::vector<torch::Tensor> keep;  // contiguous CPU copies outlive the refs
  std::vector<std::pair<std::string, st::TensorRef>> refs;
  for (auto& [name, t] : tensors) {
    keep.push_back(t.detach().to(torch::kCPU).contiguous());
    auto& c = keep.back();
    refs.emplace_back(name, st::TensorRef{st_dtype(c.scalar_type()), c.sizes().vec(), c.data_ptr(), c.nbytes()});
  }
  st::write(path, refs, metadata);
}

torch::Tensor to_torch(const st::File& f, const st::TensorInfo& t) {
  auto out = torch::empty(t.shape, torch::TensorOptions().dtype(torch_dtype(t.dtype, f.path)));
  if (t.end > t.begin) std::memcpy(out.data_ptr(), f.data(t), t.end - t.begin);
  return out;
}

std::map<std::string, torch::Tensor> load_tensors(const std::filesystem::path& path,
                                                  std::map<std::string, std::string>* metadata) {
  st::File f = st::read(path);
  std::map<std::string, torch::Tensor> out;
  for (auto& [name, info] : f.tensors) out[name] = to_torch(f, info);
  if (metadata) *metadata = f.metadata;
  return out;
}

NamedTensors named_parameters_of(torch::nn::Module& module) {
  NamedTensors out;
  for (auto& p : module.named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}

NamedTensors trainable_parameters_of(torch::nn::Module& module) {
  NamedTensors out;
  for (auto& p : module.named_parameters())
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  return out;
}

void load_parameters(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& tensors,
                     const std::string& what, bool (*optional)(const std::string&)) {
  torch::NoGradGuard ng;
  size_t used = 0;
  for (auto& p : module.named_parameters()) {
    auto it = tensors.find(p.key());
    if (it == tensors.end() && optional && optional(p.key())) continue;
    check(it != tensors.end(), what, ": weight '", p.key(), "' is missing (was it saved from another model?)");
    check(it->second.sizes() == p.value().sizes(), what, ": weight '", p.key(), "' has shape ", it->second.sizes(),
          " but the model built from the recipe expects ", p.value().sizes(), " (check the [model] section)");
    p.value().copy_(it->second);
    ++used;
  }
  if (used != tensors.size()) {
    std::string extra;
    auto params = module.named_parameters();
    for (auto& [name, t] : tensors)
      if (!params.contains(name)) extra += (extra.empty() ? "" : ", ") + name;
    fail(what, ": holds weights the model does not have: ", extra, " (check the [model] section)");
  }
}

}  // namespace cw
