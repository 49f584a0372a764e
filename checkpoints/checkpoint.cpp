// Implementation of checkpoints/checkpoint.h.
#include "checkpoints/checkpoint.h"

#include <algorithm>
#include <regex>

#include "checkpoints/hf_bundle.h"
#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "models/lora.h"

namespace cw {

namespace {
const char* kFiles[] = {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "masks.safetensors",
                        "state.json", "recipe.ini"};

std::vector<std::pair<int64_t, fs::path>> list_steps(const fs::path& dir, bool complete_only) {
  std::vector<std::pair<int64_t, fs::path>> out;
  if (!fs::exists(dir)) return out;
  static const std::regex re("step-([0-9]{1,18})");  // 18 digits always fit an int64 (a longer name is not ours)
  for (auto& e : list_dir(dir)) {
    std::smatch m;
    std::string name = e.path.filename().string();
    if (!e.is_dir || !std::regex_match(name, m, re)) continue;
    if (complete_only && !fs::exists(e.path / "manifest.json")) continue;
    out.emplace_back(std::stoll(m[1]), e.path);
  }
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

fs::path checkpoints_dir(const fs::path& run_dir) { return run_dir / "checkpoints"; }

fs::path save_checkpoint(const fs::path& run_dir, int64_t step, const CheckpointContents& c, int64_t keep) {
  fs::path root = checkpoints_dir(run_dir);
  fs::create_directories(root);
  fs::path final_dir = root / ("step-" + std::to_string(step));
  fs::path tmp = root / ("step-" + std::to_string(step) + ".tmp");
  remove_tree(tmp);
  fs::create_directories(tmp);
  save_tensors(tmp / "model.safetensors", c.model, {{"format", "pt"}});
  save_tensors(tmp / "optimizer.safetensors", c.optimizer);
  save_tensors(tmp / "rng.safetensors", c.rng);
  save_tensors(tmp / "masks.safetensors", c.masks);
  write_file_atomic(tmp / "state.json", c.state_json);
  write_file_atomic(tmp / "recipe.ini", c.recipe_ini);
  json files = json::object();
  for (const char* f : kFiles) files[f] = {{"bytes", fs::file_size(tmp / f)}, {"crc32", crc32_file(tmp / f)}};
  json manifest = {{"format", "chunkwise-checkpoint"}, {"version", kCheckpointVersion}, {"step", step}, {"files", files}};
  write_file_atomic(tmp / "manifest.json", manifest.dump(2) + "\n");
  fsync_path(tmp);
  remove_tree(final_dir);
  fs::rename(tmp, final_dir);
  fsync_path(root);
  // Retention: newest KEEP complete checkpoints survive; leftovers of interrupted writes go.
  auto complete = list_steps(root, true);
  for (size_t i = 0; keep > 0 && i + size_t(keep) < complete.size(); ++i) remove_tree(complete[i].second);
  for (auto& e : list_dir(root))
    if (e.is_dir && e.path.extension() == ".tmp") remove_tree(e.path);
  return final_dir;
}

std::optional<fs::path> latest_checkpoint(const fs::path& run_dir) {
  auto steps = list_steps(checkpoints_dir(run_dir), true);
  if (steps.empty()) return std::nullopt;
  return steps.back().second;
}

fs::path resolve_checkpoint(const fs::path& p) {
  if (fs::exists(p / "manifest.json")) return p;
  auto latest = latest_checkpoint(p);
  check(latest.has_value(), p.string(), " is neither a checkpoint folder nor a run with a complete checkpoint");
  return *latest;
}

namespace {
// What to do about the unreadable checkpoint DIR: move it aside (kept for inspection, and no longer a step-N
// folder that --resume, sample or export would pick) so the newest earlier complete one is used.
std::string way_past(const fs::path& dir) {
  const std::string aside = "mv " + dir.string() + " " + dir.string() + ".bad";
  std::optional<std::pair<int64_t, fs::path>> earlier;
  for (auto& step : list_steps(dir.parent_path(), true))
    if (step.second.filename() != dir.filename()) earlier = step;  // sorted: the last one kept is the newest
  if (!earlier)
    return "; no other complete checkpoint is in " + dir.parent_path().string() +
           ", so the run must start again (another --run.name, or " + aside + " and no --resume)";
  return "; to continue from " + earlier->second.filename().string() + " instead, move this one aside (" + aside +
         ") and run the same command again (--resume, sample and export take the newest complete checkpoint)";
}
}  // namespace

LoadedCheckpoint load_checkpoint(const fs::path& dir) {
  const std::string what = dir.string();
  if (!fs::exists(dir / "manifest.json"))
    fail(what, ": no manifest.json, so the checkpoint is incomplete (the run stopped while writing it)",
         way_past(dir));
  json m = parse_json_checked(read_file(dir / "manifest.json"), what + "/manifest.json");
  check(m.is_object() && m.value("format", "") == "chunkwise-checkpoint", what, ": not a chunkwise checkpoint");
  check(m.value("version", -1) == kCheckpointVersion, what, ": checkpoint format version ", m.value("version", -1),
        " but this build reads version ", kCheckpointVersion);
  check(m.contains("files") && m["files"].is_object(), what, ": manifest lists no files");
  for (const char* f : kFiles) {
    if (std::string(f) == "masks.safetensors" && !m["files"].contains(f)) continue;  // written since masks exist
    check(m["files"].contains(f), what, ": manifest does not list ", f);
    fs::path p = dir / f;
    check(fs::exists(p), what, ": ", f, " is missing");
    uint64_t bytes = m["files"][f].value("bytes", uint64_t(0));
    if (fs::file_size(p) != bytes)
      fail(what, ": ", f, " has ", fs::file_size(p), " bytes but the manifest says ", bytes,
           " (truncated or corrupt checkpoint)", way_past(dir));
    if (crc32_file(p) != m["files"][f].value("crc32", uint32_t(0)))
      fail(what, ": ", f, " fails its CRC-32 check (corrupt checkpoint)", way_past(dir));
  }
  LoadedCheckpoint c;
  c.dir = dir;
  c.step = m.value("step", int64_t(0));
  c.model = load_tensors(dir / "model.safetensors");
  c.optimizer = load_tensors(dir / "optimizer.safetensors");
  c.rng = load_tensors(dir / "rng.safetensors");
  if (m["files"].contains("masks.safetensors")) c.masks = load_tensors(dir / "masks.safetensors");
  c.state_json = read_file(dir / "state.json");
  c.recipe_ini = read_file(dir / "recipe.ini");
  return c;
}

}  // namespace cw

namespace cw {

uint32_t weights_fingerprint(const std::map<std::string, torch::Tensor>& weights) {
  uint32_t crc = 0;
  for (auto& [name, t] : weights) {  // std::map: in name order
    crc = crc32_of(name.data(), name.size(), crc);
    auto v = t.to(torch::kFloat32).contiguous();
    crc = crc32_of(v.data_ptr(), size_t(v.nbytes()), crc);
  }
  return crc;
}

std::map<std::string, torch::Tensor> checkpoint_weights(const LoadedCheckpoint& ck) {
  json st = parse_json_checked(ck.state_json, ck.dir.string() + "/state.json");
  if (!st.contains("lora_base")) return ck.model;
  const fs::path from = st["lora_base"].value("from", std::string());
  const uint32_t want = st["lora_base"].value("fingerprint", uint32_t(0));
  check(fs::exists(from), ck.dir.string(), " holds LoRA adapters only; its base weights were read from ",
        from.string(), ", which no longer exists. Put that checkpoint or bundle back there");
  std::map<std::string, torch::Tensor> base;
  for (auto& [name, t] : load_init_source(from).model)
    if (!is_lora_parameter(name)) base[name] = t;  // a LoRA source's own adapters are continued by this run's
  check(weights_fingerprint(base) == want, ck.dir.string(), " holds LoRA adapters only, and its base ", from.string(),
        " has changed since they were trained (its weights' fingerprint differs). Put the original base back there");
  for (auto& [name, t] : ck.model) base[name] = t;
  return base;
}

InitSource load_init_source(const fs::path& path) {
  check(fs::exists(path), "[init] from: ", path.string(), " does not exist");
  InitSource src;
  if (fs::exists(path / "manifest.json") || fs::exists(checkpoints_dir(path))) {
    LoadedCheckpoint ck = load_checkpoint(resolve_checkpoint(path));
    json st = parse_json_checked(ck.state_json, ck.dir.string() + "/state.json");
    src.description = ck.dir.string();
    src.path = ck.dir;
    src.model = checkpoint_weights(ck);
    src.masks = std::move(ck.masks);
    src.optimizer = std::move(ck.optimizer);
    src.optimizer_steps = st.value("optimizer_steps", int64_t(-1));
    if (st.contains("model_config") && st["model_config"].contains("d_model"))
      src.checkpoint_config = ModelConfig::from_json(st["model_config"].dump());
    return src;
  }
  check(is_hf_bundle(path) || fs::exists(path / "model.safetensors"), "[init] from: ", path.string(),
        " is neither a run, a checkpoint, nor a bundle (config.json + model.safetensors)");
  src.description = path.string();
  src.path = path;
  if (is_hf_bundle(path)) {
    src.bundle_config = read_hf_config(path);
    src.model = read_hf_weights(path);
    if (fs::exists(path / "tokenizer.model")) src.bundle_tokenizer = path / "tokenizer.model";
  } else {
    src.model = load_tensors(path / "model.safetensors");
  }
  return src;
}

}  // namespace cw
