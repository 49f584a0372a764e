// `chunkwise generate BUNDLE --prompt TEXT`: streams a continuation through the inference engine (serve/,
// no LibTorch) on the CPU reference backend or the CUDA engine.
#include <iostream>

#include "common/files.h"
#include "data/tokenizer.h"
#include "tools/cli/commands.h"
#include "tools/cli/serve_setup.h"

namespace cw::cli {

int generate_main(const Args& args) {
  po::options_description desc("generate options");
  std::string bundle, prompt;
  SamplingFlags sampling;
  EngineFlags flags;
  desc.add_options()("bundle", po::value(&bundle)->required(), "bundle folder (config.json, safetensors, tokenizer.model)")(
      "prompt", po::value(&prompt)->default_value("The"), "text to continue");
  sampling.add_to(desc);
  flags.add_to(desc);
  po::positional_options_description pos;
  pos.add("bundle", 1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise generate BUNDLE [--prompt TEXT] [--device auto|cpu|cuda]")) return 0;
  flags.finish();
  sampling.finish();
  fs::path dir = expand_user(bundle);
  Tokenizer tok = Tokenizer::load(dir / "tokenizer.model");
  serve::Bundle b = serve::load_bundle(dir);
  check(tok.identity().vocab_size <= b.config.vocab_size, dir.string(), ": tokenizer.model has more pieces than the model");
  auto backend = make_backend(b, flags);
  serve::Engine engine(*backend, flags.engine);
  serve::GenRequest r;
  std::vector<int> ids = tok.encode(prompt);
  r.prompt.assign(ids.begin(), ids.end());
  r.max_new_tokens = sampling.max_new, r.sampling = sampling.params, r.eos_id = tok.identity().eos_id;
  engine.submit(r);
  std::string shown = tok.decode(ids);
  std::cout << shown << std::flush;
  engine.run([&](int64_t, int32_t next) {
    ids.push_back(next);
    std::string text = tok.decode(ids);  // whole text, so multi-byte pieces print whole
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) std::cout << text.substr(shown.size()) << std::flush;
    shown = text;
  });
  std::cout << "\n";
  return 0;
}

}  // namespace cw::cli
