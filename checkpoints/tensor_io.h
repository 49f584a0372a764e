// LibTorch tensors <-> safetensors files (the format of checkpoints and exported bundles).
// Must not: change names, dtypes or values (a file read back gives bitwise the same tensors).
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "checkpoints/safetensors.h"

namespace cw {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

void save_tensors(const std::filesystem::path& path, const NamedTensors& tensors,
                  const std::map<std::string, std::string>& metadata = {});
std::map<std::string, torch::Tensor> load_tensors(const std::filesystem::path& path,
                                                  std::map<std::string, std::string>* metadata = nullptr);
torch::Tensor to_torch(const st::File& f, const st::TensorInfo& t);  // a copy on the CPU

// Copies TENSORS into MODULE's parameters by name; every parameter must be present with its shape (except
// those OPTIONAL accepts, which keep their values when absent), and no extra tensor may be left over. WHAT
// names the source in errors.
void load_parameters(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& tensors,
                     const std::string& what, bool (*optional)(const std::string&) = nullptr);
NamedTensors named_parameters_of(torch::nn::Module& module);
NamedTensors trainable_parameters_of(torch::nn::Module& module);  // those that require gradients

}  // namespace cw
