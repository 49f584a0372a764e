// `chunkwise sample RUN|CHECKPOINT --prompt TEXT` and `chunkwise plot RUN`.
#include <algorithm>
#include <cstdlib>
#include <iostream>

#include "checkpoints/checkpoint.h"
#include "common/files.h"
#include "common/json.h"
#include "data/tokenizer.h"
#include "models/generate.h"
#include "train/model_setup.h"
#include "train/recipe.h"
#include "tools/cli/commands.h"
#include "tools/cli/options.h"
#include "tools/cli/serve_setup.h"

namespace cw::cli {

int sample_main(const Args& args) {
  po::options_description desc("sample options");
  std::string target, prompt, device;
  GenerateOptions g;
  desc.add_options()("run", po::value(&target)->required(), "run folder or checkpoint folder")(
      "prompt", po::value(&prompt)->default_value("The"), "text to continue")(
      "max-new-tokens", po::value(&g.max_new_tokens)->default_value(120), "tokens to generate")(
      "temperature", po::value(&g.temperature)->default_value(0.8, "0.8"), "0 = greedy")(
      "top-k", po::value(&g.top_k)->default_value(40), "0 = off")(
      "top-p", po::value(&g.top_p)->default_value(0.95, "0.95"), "1 = off")(
      "seed", po::value(&g.seed)->default_value(1), "sampling seed")(
      "device", po::value(&device)->default_value("cpu"), "cpu | cuda | auto");
  po::positional_options_description pos;
  pos.add("run", 1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise sample RUN|CHECKPOINT [--prompt TEXT]")) return 0;
  check(g.max_new_tokens >= 1 && g.max_new_tokens <= kMaxNewTokens, "--max-new-tokens ", g.max_new_tokens,
        ": use 1 to ", kMaxNewTokens);
  kern::SampleParams ranges;
  ranges.temperature = float(g.temperature), ranges.top_p = float(g.top_p);
  ranges.top_k = int32_t(std::clamp<int64_t>(g.top_k, -1, INT32_MAX));
  const std::string bad = sampling_flags_problem(ranges);
  check(bad.empty(), bad);
  LoadedCheckpoint ck = load_checkpoint(resolve_checkpoint(expand_user(target)));
  Recipe r = Recipe::from_text(ck.recipe_ini, ck.dir.string() + "/recipe.ini");
  Tokenizer tok = Tokenizer::load(expand_user(r.s("data.tokenizer")));
  json st = parse_json_checked(ck.state_json, ck.dir.string() + "/state.json");
  check(st.value("tokenizer_hash", "") == tok.identity().hash, "tokenizer mismatch: ", ck.dir.string(),
        " was trained with ", st.value("tokenizer_hash", "?"), " but ", r.s("data.tokenizer"), " is ",
        tok.identity().hash);
  auto model = build_model(model_config_of_checkpoint(ck.state_json, r, tok.identity().vocab_size));
  load_parameters(*model, checkpoint_weights(ck), ck.dir.string() + "/model.safetensors");
  model->to(resolve_device(device));
  std::vector<int> so_far = tok.encode(prompt);
  std::vector<int64_t> ids(so_far.begin(), so_far.end());
  g.stop_id = tok.identity().eos_id;
  std::cout << prompt << std::flush;
  std::string shown = tok.decode(so_far);
  generate(*model, ids, g, [&](int64_t id) {
    if (id == g.stop_id) return;
    so_far.push_back(int(id));
    std::string text = tok.decode(so_far);  // decode the whole text so multi-byte pieces print whole
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) std::cout << text.substr(shown.size()) << std::flush;
    shown = text;
  });
  std::cout << "\n";
  return 0;
}

int plot_main(const Args& args) {
  po::options_description desc("plot options");
  std::string run, out;
  desc.add_options()("run", po::value(&run)->required(), "run folder (holds metrics.jsonl)")(
      "out", po::value(&out)->default_value(""), "PNG to write (default RUN/loss.png)");
  po::positional_options_description pos;
  pos.add("run", 1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise plot RUN [--out PNG]")) return 0;
  const char* py = std::getenv("CHUNKWISE_PYTHON");
  std::string python = py ? py : expand_user("~/.cache/chunkwise/venv/bin/python").string();
  std::string script = std::string(CHUNKWISE_SOURCE_DIR) + "/tools/plot_metrics.py";
  std::string cmd = "'" + python + "' '" + script + "' '" + run + "'" + (out.empty() ? "" : " --out '" + out + "'");
  int rc = std::system(cmd.c_str());
  check(rc == 0, "plotting failed (", cmd, "); tools/setup installs matplotlib into the project's Python");
  return 0;
}

}  // namespace cw::cli
