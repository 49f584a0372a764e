// `chunkwise export RUN|CHECKPOINT OUT_DIR`: a Hugging Face-compatible bundle from a training checkpoint (LoRA
// adapters merged), or with --adapter only the adapters in PEFT's format.
#include <iostream>

#include "checkpoints/checkpoint.h"
#include "checkpoints/hf_bundle.h"
#include "checkpoints/peft_adapter.h"
#include "common/files.h"
#include "models/lora.h"
#include "train/model_setup.h"
#include "train/recipe.h"
#include "tools/cli/commands.h"
#include "tools/cli/options.h"

namespace cw::cli {

int export_main(const Args& args) {
  po::options_description desc("export options");
  std::string source, out;
  ExportOptions o;
  int64_t shard_mb;
  bool adapter = false;
  desc.add_options()("source", po::value(&source)->required(), "run folder or checkpoint folder")(
      "out", po::value(&out)->required(), "bundle folder to write")(
      "dtype", po::value(&o.dtype)->default_value("bf16"), "bf16 | fp32")(
      "shard-size-mb", po::value(&shard_mb)->default_value(4096), "split weights into shards of about this size")(
      "adapter", po::bool_switch(&adapter), "a LoRA run: write only its adapters in PEFT's format "
      "(adapter_model.safetensors + adapter_config.json, for peft.PeftModel.from_pretrained on the base model)");
  po::positional_options_description pos;
  pos.add("source", 1).add("out", 1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise export RUN|CHECKPOINT OUT_DIR [--dtype bf16|fp32]")) return 0;
  check(shard_mb >= 1 && shard_mb <= (int64_t(1) << 30), "--shard-size-mb ", shard_mb, ": use 1 or more (MiB)");
  o.shard_bytes = shard_mb << 20;
  LoadedCheckpoint ck = load_checkpoint(resolve_checkpoint(expand_user(source)));
  Recipe r = Recipe::from_text(ck.recipe_ini, ck.dir.string() + "/recipe.ini");
  fs::path tokenizer = expand_user(r.s("data.tokenizer"));
  ModelConfig c = model_config_of_checkpoint(ck.state_json, r, Tokenizer::load(tokenizer).identity().vocab_size);
  check(c.family == "llama", "export supports the llama family only");
  if (adapter) {
    export_peft_adapter(ck.model, c, r.s("init.from"), expand_user(out), o.dtype);
    std::cout << "exported the LoRA adapters of " << ck.dir.string() << " to " << out << " (PEFT, " << o.dtype
              << ")\n";
    return 0;
  }
  export_bundle(merge_lora(checkpoint_weights(ck), c), c, tokenizer, expand_user(out), o);  // adapters merged into their weights
  std::cout << "exported " << ck.dir.string() << " to " << out << " (" << o.dtype << ")\n";
  return 0;
}

}  // namespace cw::cli
