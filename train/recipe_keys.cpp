// The table of every recipe key: type, default, help, allowed values (choices, numeric ranges). Adding a
// feature's keys = adding rows.
// Must not: hold logic beyond the table and its renderings.
#include <map>
#include <sstream>
#include <stdexcept>

#include "train/recipe.h"

namespace cw {

namespace {
KeyRange at_least(double lo) { return {lo, 1e300, false, false}; }
KeyRange above(double lo) { return {lo, 1e300, true, false}; }
KeyRange closed(double lo, double hi) { return {lo, hi, false, false}; }
KeyRange half_open(double lo, double hi) { return {lo, hi, false, true}; }  // [lo, hi)

// The numeric keys' allowed values: checked where a recipe or override is read, shown in --help and docs.
const std::map<std::string, KeyRange>& key_ranges() {
  static const std::map<std::string, KeyRange> ranges = {
      {"run.threads", at_least(0)}, {"run.peak_tflops", above(0)},
      {"data.replay_fraction", closed(0, 1)}, {"data.dd_cycles", at_least(1)},
      {"data.seq_len", at_least(1)}, {"data.batch_size", at_least(1)},
      {"model.vocab_size", at_least(0)}, {"model.d_model", at_least(1)}, {"model.n_layers", at_least(1)},
      {"model.n_heads", at_least(1)}, {"model.n_kv_heads", at_least(0)}, {"model.d_ff", at_least(0)},
      {"model.rat_chunk", at_least(1)}, {"model.rat_groups", at_least(1)}, {"model.rat_attention_every", at_least(0)},
      {"model.rat_window", at_least(1)}, {"model.lact_chunk", at_least(1)}, {"model.lact_window", at_least(1)},
      {"model.lact_heads", at_least(1)}, {"model.lact_hidden_mult", at_least(1)}, {"model.lact_low_rank", at_least(0)},
      {"model.max_seq_len", at_least(0)}, {"model.rope_theta", above(0)}, {"model.norm_eps", above(0)},
      {"model.init_std", above(0)},
      {"optim.lr", above(0)}, {"optim.min_lr", at_least(0)}, {"optim.beta1", half_open(0, 1)},
      {"optim.beta2", half_open(0, 1)}, {"optim.eps", above(0)}, {"optim.weight_decay", at_least(0)},
      {"optim.grad_clip", at_least(0)},
      {"schedule.warmup_steps", at_least(0)}, {"schedule.decay_steps", at_least(0)},
      {"schedule.cooldown_steps", at_least(0)}, {"schedule.constant_lr", at_least(0)},
      {"schedule.anneal_steps", at_least(0)},
      {"train.steps", at_least(1)}, {"train.grad_accum", at_least(1)}, {"train.eval_every", at_least(0)},
      {"train.eval_batches", at_least(1)}, {"train.eval_batch_size", at_least(0)}, {"train.log_every", at_least(1)},
      {"train.ckpt_every", at_least(0)}, {"train.keep", at_least(0)}, {"train.loss_chunk", at_least(0)},
      {"train.max_bad_steps", at_least(1)},
      {"dist.bucket_mb", at_least(0)},
      {"sparsity.level", half_open(0, 1)}, {"sparsity.seed", at_least(0)},
      {"lora.rank", at_least(0)}, {"lora.alpha", above(0)}, {"lora.dropout", half_open(0, 1)},
      {"chunkwise.chunk", at_least(1)}, {"chunkwise.budget", at_least(1)}, {"chunkwise.max_compensation", at_least(0)},
  };
  return ranges;
}
}  // namespace

std::string KeyRange::text() const {
  auto num = [](double v) {
    std::ostringstream os;
    os << v;
    return os.str();
  };
  const bool no_lo = lo <= -1e299, no_hi = hi >= 1e299;
  if (no_lo && no_hi) return "";
  if (no_hi) return (lo_open ? "> " : ">= ") + num(lo);
  if (no_lo) return (hi_open ? "< " : "<= ") + num(hi);
  return "in " + std::string(lo_open ? "(" : "[") + num(lo) + ", " + num(hi) + (hi_open ? ")" : "]");
}

const std::vector<KeySpec>& recipe_keys() {
  using K = KeyType;
  static const std::vector<KeySpec> table = [] {
    std::vector<KeySpec> keys = {
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
      {"model.family", K::String, "llama", "model family: llama, rat (recurrence within chunks, attention across "
       "them: docs/rat.md) or lact (sliding-window attention and fast weights learnt per chunk: docs/lact.md)",
       {"llama", "rat", "lact"}},
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
      {"model.rat_chunk", K::Int, "16", "family rat: tokens per chunk of the gated recurrence (L)"},
      {"model.rat_groups", K::Int, "2", "family rat: key/query groups tiled over the heads (G)"},
      {"model.rat_attention_every", K::Int, "0", "family rat, the hybrid: every N-th layer is a llama layer with "
       "sliding-window attention (0 = RAT layers only)"},
      {"model.rat_window", K::Int, "256", "family rat, the hybrid: tokens each sliding-window attention layer sees"},
      {"model.lact_chunk", K::Int, "2048", "family lact: tokens per fast-weight update (C)"},
      {"model.lact_window", K::Int, "2048", "family lact: tokens the sliding-window attention sees (W >= C)"},
      {"model.lact_heads", K::Int, "4", "family lact: fast-weight heads (d_model / lact_heads wide each)"},
      {"model.lact_hidden_mult", K::Int, "1", "family lact: the fast SwiGLU's hidden width over its head width"},
      {"model.lact_low_rank", K::Int, "0", "family lact: W0 and W2 start as a rank-r product + I/2 (0 = full)"},
      {"model.lact_momentum", K::Bool, "false", "family lact: momentum in the fast-weight update"},
      {"model.lact_muon", K::Bool, "false", "family lact: Muon (Newton-Schulz) on the fast-weight update"},
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
      {"train.keep", K::Int, "3", "checkpoints to keep (older ones are deleted; 0 = keep all)"},
      {"train.loss_chunk", K::Int, "0", "compute the loss in chunks of this many tokens without holding all logits "
       "(0 = all at once)"},
      {"train.fused_kernels", K::String, "auto", "fused RoPE, SwiGLU, add+RMSNorm and cross-entropy kernels "
       "(fp32/bf16; the cross-entropy keeps no fp32 logits); auto = on for CUDA, off on the CPU",
       {"auto", "true", "false"}},
      {"train.recompute_swiglu", K::Bool, "false", "fused kernels: recompute silu(gate) * up in the backward pass "
       "instead of keeping it (saves 2 x d_ff bytes per token and layer, costs one more SwiGLU pass)"},
      {"train.checkpoint_layers", K::Bool, "false", "activation checkpointing: keep only each decoder layer's input "
       "and run the layer again in the backward pass (less memory, about one more forward pass; no CUDA graph)"},
      {"train.cuda_graph", K::String, "auto", "capture the step (forward, backward, clipping, AdamW) in a CUDA graph "
       "after 3 eager steps and replay it (auto: on CUDA in single-process runs without sparsity; steps with "
       "document masks run eagerly)", {"auto", "true", "false"}},
      {"train.attention", K::String, "auto", "fused attention LibTorch tries first on CUDA (auto: LibTorch's own "
       "order; flash or cudnn first, the others where it does not apply)", {"auto", "flash", "cudnn"}},
      {"train.max_bad_steps", K::Int, "5", "stop after this many non-finite steps in a row"},
      {"dist.zero", K::Int, "0", "data-parallel runs (torchrun): 1 = shard AdamW moments over ranks (ZeRO-1)",
       {"0", "1"}},
      {"dist.bucket_mb", K::Int, "25", "data-parallel runs: gradient all-reduce bucket size (MiB; 0 = one bucket "
       "per parameter)"},
      {"dist.reduce_dtype", K::String, "fp32", "data-parallel runs: dtype of the gradient all-reduce (bf16: half "
       "the traffic, sums rounded to bf16)", {"fp32", "bf16"}},
      {"init.from", K::String, "", "start from these weights: a run, a checkpoint, or a folder with model.safetensors"},
      {"init.optimizer", K::String, "fresh", "with init.from: new AdamW state, or the checkpoint's moments",
       {"fresh", "checkpoint"}},
      {"sparsity.level", K::Float, "0", "fraction of each sparsifiable weight held at zero (SPDF; 0 = dense)"},
      {"sparsity.seed", K::Int, "0", "seed of the masks (0 = run.seed)"},
      {"lora.rank", K::Int, "0", "LoRA adapters of this rank on the target projections, the rest of the model frozen "
       "(docs/lora.md; 0 = off, every weight trains)"},
      {"lora.alpha", K::Float, "16", "LoRA: the update is scaled by alpha / rank"},
      {"lora.dropout", K::Float, "0", "LoRA: dropout on the adapters' input while training"},
      {"lora.targets", K::String, "q_proj,v_proj", "LoRA: comma-separated projections to adapt (q_proj, k_proj, "
       "v_proj, o_proj, gate_proj, up_proj, down_proj)"},
      {"lora.base_dtype", K::String, "auto", "LoRA: dtype the frozen projections are kept in (auto: bf16 when "
       "run.precision is bf16, where products read them in bf16 anyway, so the step computes the same)",
       {"auto", "fp32", "bf16"}},
      {"chunkwise.mode", K::String, "off", "chunk-wise back-propagation of long sequences (docs/chunkwise.md): "
       "seco = exact gradients with one chunk's graph alive; spaco = back-propagate about budget chunks per sequence",
       {"off", "seco", "spaco"}},
      {"chunkwise.chunk", K::Int, "128", "seco/spaco: tokens per chunk"},
      {"chunkwise.budget", K::Int, "8", "spaco: expected chunks back-propagated per sequence (each with probability "
       "budget / chunks, its pass scaled by the inverse; at least the chunk count = seco)"},
      {"chunkwise.max_compensation", K::Float, "0", "spaco: cap on that scale (0 = none, unbiased gradients; the "
       "paper capped it at 2)"},
      {"debug.inject_nan_steps", K::String, "", "comma-separated steps whose loss is made NaN (tests the guard)"},
    };
    size_t ranged = 0;
    for (auto& k : keys)
      if (auto r = key_ranges().find(k.name); r != key_ranges().end()) k.range = r->second, ++ranged;
    if (ranged != key_ranges().size()) throw std::logic_error("recipe_keys.cpp: a range names a key the table lacks");
    return keys;
  }();
  return table;
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

static std::string choices_text(const KeySpec& k, const std::string& bar = " | ") {
  std::string out;
  for (auto& c : k.choices) out += (out.empty() ? "" : bar) + c;
  return out;
}

// "integer >= 1", "auto | cpu | cuda" (BAR separates choices: Markdown tables need it escaped).
static std::string type_text(const KeySpec& k, const std::string& bar = " | ") {
  if (!k.choices.empty()) return choices_text(k, bar);
  const std::string range = k.range.text();
  return key_type_name(k.type) + (range.empty() ? "" : " " + range);
}

std::string recipe_keys_markdown() {
  std::ostringstream os;
  os << "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (auto& k : recipe_keys()) {
    os << "| `" << k.name << "` | " << type_text(k, " \\| ") << " | "
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
    std::string lhs = "  --" + k.name + "=" + type_text(k);
    os << lhs << std::string(lhs.size() < 44 ? 44 - lhs.size() : 1, ' ') << k.help << " (default: "
       << (k.default_value.empty() ? "none" : k.default_value) << ")\n";
  }
  return os.str();
}

}  // namespace cw
