// `chunkwise generate BUNDLE --prompt TEXT`: streams a continuation with the inference engine's CPU
// reference backend (serve/, no LibTorch), from an exported or Hugging Face bundle.
#include <iostream>

#include "common/files.h"
#include "data/tokenizer.h"
#include "serve/cpu_model.h"
#include "tools/cli/commands.h"
#include "tools/cli/options.h"

namespace cw::cli {

int generate_main(const Args& args) {
  po::options_description desc("generate options");
  std::string bundle, prompt, device;
  int64_t max_new;
  uint64_t seed;
  serve::SamplingOptions s;
  desc.add_options()("bundle", po::value(&bundle)->required(), "bundle folder (config.json, safetensors, tokenizer.model)")(
      "prompt", po::value(&prompt)->default_value("The"), "text to continue")(
      "max-new-tokens", po::value(&max_new)->default_value(64), "tokens to generate")(
      "temperature", po::value(&s.temperature)->default_value(0.0, "0"), "0 = greedy")(
      "top-k", po::value(&s.top_k)->default_value(0), "0 = off")(
      "top-p", po::value(&s.top_p)->default_value(1.0, "1"), "1 = off")(
      "seed", po::value(&seed)->default_value(1), "sampling seed")(
      "device", po::value(&device)->default_value("cpu"), "cpu (the CUDA backend is not built yet)");
  po::positional_options_description pos;
  pos.add("bundle", 1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise generate BUNDLE [--prompt TEXT] [--device cpu]")) return 0;
  check(device == "cpu", "--device ", device, ": the engine's CUDA backend is not built yet; use --device cpu");
  fs::path dir = expand_user(bundle);
  Tokenizer tok = Tokenizer::load(dir / "tokenizer.model");
  serve::Bundle b = serve::load_bundle(dir);
  check(tok.identity().vocab_size <= b.config.vocab_size, dir.string(), ": tokenizer.model has more pieces than the model");
  serve::CpuModel model(b);
  serve::KVCache cache = model.new_cache();
  std::vector<int> ids = tok.encode(prompt);
  check(!ids.empty(), "the prompt is empty");
  std::vector<float> logits;
  for (int t : ids) logits = model.step(t, cache);
  std::mt19937_64 rng(seed);
  std::string shown = tok.decode(ids);
  std::cout << shown << std::flush;
  for (int64_t i = 0; i < max_new && cache.length < b.config.max_seq_len; ++i) {
    int32_t next = serve::sample_token(logits, s, rng);
    if (next == tok.identity().eos_id) break;
    ids.push_back(next);
    std::string text = tok.decode(ids);  // whole text, so multi-byte pieces print whole
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) std::cout << text.substr(shown.size()) << std::flush;
    shown = text;
    logits = model.step(next, cache);
  }
  std::cout << "\n";
  return 0;
}

}  // namespace cw::cli
