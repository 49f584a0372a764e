// The table of every recipe key: type, default, help, allowed values. Adding a feature's keys = adding rows.
// Must not: hold logic beyond the table and its renderings.
#include <sstream>

#include "train/recipe.h"

namespace cw {

const std::vector<KeySpec>& recipe_keys() {
  using K = KeyType;
  static const std::vector<KeySpec> keys = {
      {"run.name", K::String, "run", "run name; outputs go to <out_dir>/<name>"},
      {"run.out_dir", K::String, "runs", "folder that holds runs"},
      {"run.seed", K::Int, "1", "seed of model init, data order and sampling"},
      {"run.device", K::String, "auto", "where to train", {"auto", "cpu", "cuda"}},
      {"run.threads", K::Int, "0", "CPU threads for LibTorch (0 = LibTorch's default)"},
      {"run.precision", K::String, "auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32, or bf16 autocast",
       {"auto", "fp32", "bf16"}},
      {"run.peak_tflops", K::Float, "989", "accelerator peak for MFU (dense bf16 TFLOP/s; H100/H200 SXM = 989)"},
      {"data.train", K::String, "", "training token store (.h5) from `chunkwise data prepare`"},
      {"data.val", K::String, "", "validation token store (.h5); empty = no evaluation"},
      {"data.tokenizer", K::String, "", "SentencePiece model the stores were made with (checked against them)"},
      {"data.eval_sets", K::String, "", "more validation stores, evaluated beside data.val: NAME=PATH[@ORDER],... "
       "(ORDER: natural, shuffled or icp document order)"},
      {"data.replay", K::String, "", "old data mixed into every batch (continual pre-training); empty = none"},
      {"data.replay_fraction", K::Float, "0.05", "probability that a row of a batch comes from data.replay"},
      {"data.strategy", K::String, "concat", "how sequences are made: concatenate-and-chunk windows, dataset "
       "decomposition buckets (`data decompose` first), or best-fit packing with document masks",
       {"concat", "dd", "bestfit"}},
      {"data.dd_curriculum", K::String, "grow_p2", "dd: odds of the buckets, short to long",
       {"uniform", "grow_linear", "grow_p2", "shrink_linear", "shrink_p2"}},
      {"data.dd_cycles", K::Int, "8", "dd: curriculum cycles per epoch"},
      {"data.order", K::String, "natural", "document order before concatenation: as stored, a seeded shuffle, or "
       "the in-context pretraining order written by `data order`", {"natural", "shuffled", "icp"}},
      {"data.seq_len", K::Int, "256", "tokens per training sequence (dd: tokens per step = batch_size x seq_len)"},
      {"data.batch_size", K::Int, "16", "sequences per micro-batch"},
      {"model.family", K::String, "llama", "model family", {"llama"}},
      {"model.vocab_size", K::Int, "0", "vocabulary size (0 = the tokenizer's)"},
      {"model.d_model", K::Int, "256", "hidden size"},
      {"model.n_layers", K::Int, "4", "decoder layers"},
      {"model.n_heads", K::Int, "4", "query heads"},
      {"model.n_kv_heads", K::Int, "0", "key/value heads for grouped-query attention (0 = n_heads)"},
      {"model.d_ff", K::Int, "0", "SwiGLU hidden size (0 = 8/3 d_model rounded up to a multiple of 64)"},
      {"model.max_seq_len", K::Int, "0", "longest position the model is built for (0 = data.seq_len)"},
      {"model.rope_theta", K::Float, "10000", "RoPE base"},
      {"model.norm_eps", K::Float, "1e-5", "RMSNorm epsilon"},
      {"model.tie_embeddings", K::Bool, "false", "share the input embedding with the LM head"},
      {"model.init_std", K::Float, "0.02", "std of the normal init (output projections get std/sqrt(2 n_layers))"},
      {"optim.lr", K::Float, "1e-3", "peak learning rate"},
      {"optim.min_lr", K::Float, "1e-4", "learning rate at the end of the decay"},
      {"optim.beta1", K::Float, "0.9", "AdamW beta1"},
      {"optim.beta2", K::Float, "0.95", "AdamW beta2"},
      {"optim.eps", K::Float, "1e-8", "AdamW epsilon"},
      {"optim.weight_decay", K::Float, "0.1", "decoupled weight decay"},
      {"optim.decay_embeddings", K::Bool, "false", "apply weight decay to embeddings too"},
      {"optim.decay_norms", K::Bool, "false", "apply weight decay to norm weights and biases too"},
      {"optim.grad_clip", K::Float, "1.0", "clip the global gradient norm to this (0 = off)"},
      {"schedule.name", K::String, "warmup_cosine", "learning-rate schedule (docs/training.md#schedules)",
       {"warmup_cosine", "constant", "wsd", "infinite", "inverse_sqrt"}},
      {"schedule.warmup_steps", K::Int, "100", "linear warmup steps (every schedule)"},
      {"schedule.decay_steps", K::Int, "200", "wsd: steps of the final decay"},
      {"schedule.decay_shape", K::String, "linear", "wsd: shape of the final decay", {"linear", "cosine", "sqrt"}},
      {"schedule.cooldown_steps", K::Int, "200", "infinite: cosine cooldown from lr to constant_lr"},
      {"schedule.constant_lr", K::Float, "3e-4", "infinite: the rate held between cooldown and anneal"},
      {"schedule.anneal_steps", K::Int, "100", "infinite: exponential anneal from constant_lr to min_lr at the end"},
      {"train.steps", K::Int, "1000", "optimizer steps"},
      {"train.grad_accum", K::Int, "1", "micro-batches per optimizer step"},
      {"train.eval_every", K::Int, "100", "evaluate every N steps (0 = only at the end)"},
      {"train.eval_batches", K::Int, "20", "validation batches per evaluation (at most the whole set)"},
      {"train.eval_batch_size", K::Int, "0", "sequences per validation batch (0 = data.batch_size)"},
      {"train.log_every", K::Int, "10", "print a progress line every N steps"},
      {"train.ckpt_every", K::Int, "100", "write a checkpoint every N steps (0 = only at the end)"},
      {"train.keep", K::Int, "3", "checkpoints to keep (older ones are deleted)"},
      {"train.loss_chunk", K::Int, "0", "compute the loss in chunks of this many tokens without holding all logits "
       "(0 = all at once)"},
      {"train.fused_kernels", K::String, "auto", "fused RoPE, SwiGLU, add+RMSNorm and cross-entropy kernels "
       "(fp32/bf16; the cross-entropy keeps no fp32 logits); auto = on for CUDA, off on the CPU",
       {"auto", "true", "false"}},
      {"train.recompute_swiglu", K::Bool, "false", "fused kernels: recompute silu(gate) * up in the backward pass "
       "instead of keeping it (saves 2 x d_ff bytes per token and layer, costs one more SwiGLU pass)"},
      {"train.cuda_graph", K::String, "auto", "capture the step (forward, backward, clipping, AdamW) in a CUDA graph "
       "after 3 eager steps and replay it (auto: on CUDA in single-process runs without sparsity; steps with "
       "document masks run eagerly)", {"auto", "true", "false"}},
      {"train.attention", K::String, "auto", "fused attention LibTorch tries first on CUDA (auto: LibTorch's own "
       "order; flash or cudnn first, the others where it does not apply)", {"auto", "flash", "cudnn"}},
      {"train.max_bad_steps", K::Int, "5", "stop after this many non-finite steps in a row"},
      {"dist.zero", K::Int, "0", "data-parallel runs (torchrun): 1 = shard AdamW moments over ranks (ZeRO-1)",
       {"0", "1"}},
      {"dist.bucket_mb", K::Int, "25", "data-parallel runs: gradient all-reduce bucket size (MiB)"},
      {"dist.reduce_dtype", K::String, "fp32", "data-parallel runs: dtype of the gradient all-reduce (bf16: half "
       "the traffic, sums rounded to bf16)", {"fp32", "bf16"}},
      {"init.from", K::String, "", "start from these weights: a run, a checkpoint, or a folder with model.safetensors"},
      {"init.optimizer", K::String, "fresh", "with init.from: new AdamW state, or the checkpoint's moments",
       {"fresh", "checkpoint"}},
      {"sparsity.level", K::Float, "0", "fraction of each sparsifiable weight held at zero (SPDF; 0 = dense)"},
      {"sparsity.seed", K::Int, "0", "seed of the masks (0 = run.seed)"},
      {"debug.inject_nan_steps", K::String, "", "comma-separated steps whose loss is made NaN (tests the guard)"},
  };
  return keys;
}

const KeySpec* find_key(const std::string& name) {
  for (auto& k : recipe_keys()) if (k.name == name) return &k;
  return nullptr;
}

std::string key_type_name(KeyType t) {
  switch (t) {
    case KeyType::Int: return "integer";
    case KeyType::Float: return "number";
    case KeyType::String: return "text";
    case KeyType::Bool: return "true/false";
  }
  return "?";
}

static std::string choices_text(const KeySpec& k) {
  std::string out;
  for (auto& c : k.choices) out += (out.empty() ? "" : " | ") + c;
  return out;
}

std::string recipe_keys_markdown() {
  std::ostringstream os;
  os << "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (auto& k : recipe_keys()) {
    os << "| `" << k.name << "` | " << (k.choices.empty() ? key_type_name(k.type) : choices_text(k)) << " | "
       << (k.default_value.empty() ? std::string("(none)") : "`" + k.default_value + "`") << " | " << k.help << " |\n";
  }
  return os.str();
}

std::string recipe_keys_help() {
  std::ostringstream os;
  std::string section;
  for (auto& k : recipe_keys()) {
    std::string sec = k.name.substr(0, k.name.find('.'));
    if (sec != section) os << "\n[" << (section = sec) << "]\n";
    std::string lhs = "  --" + k.name + "=" + (k.choices.empty() ? key_type_name(k.type) : choices_text(k));
    os << lhs << std::string(lhs.size() < 44 ? 44 - lhs.size() : 1, ' ') << k.help << " (default: "
       << (k.default_value.empty() ? "none" : k.default_value) << ")\n";
  }
  return os.str();
}

}  // namespace cw
