// Implementation of checkpoints/hf_bundle.h.
#include "checkpoints/hf_bundle.h"

#include <cstdio>

#include "checkpoints/tensor_io.h"
#include "common/error.h"
#include "common/files.h"
#include "common/json.h"

namespace cw {

std::map<std::string, torch::Tensor> read_hf_weights(const std::filesystem::path& dir) {
  std::map<std::string, torch::Tensor> out;
  auto add = [&](const fs::path& file) {
    for (auto& [name, t] : load_tensors(file)) {
      check(!out.count(name), file.string(), ": tensor '", name, "' appears in two shards");
      out[name] = t.to(torch::kFloat32);
    }
  };
  std::vector<std::string> indexed;
  for (auto& f : bundle_weight_files(dir, &indexed)) add(f);
  for (auto& name : indexed)
    check(out.count(name), dir.string(), ": '", name, "' is listed in the index but not in its shard");
  return out;
}

void export_bundle(const std::map<std::string, torch::Tensor>& weights, const ModelConfig& c,
                   const std::filesystem::path& tokenizer_model, const std::filesystem::path& out,
                   const ExportOptions& opt) {
  check(opt.dtype == "bf16" || opt.dtype == "fp32", "--dtype must be bf16 or fp32");
  check(!fs::exists(out) || is_hf_bundle(out) || (fs::is_directory(out) && list_dir(out).empty()), out.string(),
        " exists and is not a bundle: choose a new folder (an existing bundle is replaced, anything else is kept)");
  Tokenizer tok = Tokenizer::load(tokenizer_model);
  check(tok.identity().vocab_size <= c.vocab_size, "the tokenizer has more pieces than the model's vocabulary");
  fs::path tmp = out;
  tmp += ".tmp";
  remove_tree(tmp);
  fs::create_directories(tmp);
  const auto dtype = opt.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  std::vector<NamedTensors> shards(1);
  int64_t bytes = 0, total = 0;
  for (auto& [name, t] : weights) {
    torch::Tensor v = t.to(dtype).contiguous();
    if (bytes > 0 && bytes + int64_t(v.nbytes()) > opt.shard_bytes) shards.emplace_back(), bytes = 0;
    shards.back().emplace_back(name, v);
    bytes += int64_t(v.nbytes());
    total += int64_t(v.nbytes());
  }
  if (shards.size() == 1) {
    save_tensors(tmp / "model.safetensors", shards[0], {{"format", "pt"}});
  } else {
    json map = json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      save_tensors(tmp / name, shards[i], {{"format", "pt"}});
      for (auto& [n, t] : shards[i]) map[n] = name;
    }
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", map}};
    write_file_atomic(tmp / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  write_file_atomic(tmp / "config.json", hf_config_json(c, tok.identity(), opt.dtype));
  json gen = {{"bos_token_id", tok.identity().bos_id}, {"eos_token_id", tok.identity().eos_id}};
  write_file_atomic(tmp / "generation_config.json", gen.dump(2) + "\n");
  fs::copy_file(tokenizer_model, tmp / "tokenizer.model", fs::copy_options::overwrite_existing);
  fsync_path(tmp);
  remove_tree(out);
  fs::rename(tmp, out);
}

}  // namespace cw
