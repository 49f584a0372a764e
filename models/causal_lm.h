// The interface every model family implements, and the registry that builds one from a ModelConfig.
// Parameter names are the export names (Hugging Face's for Llama), so checkpoints and bundles agree.
// Must not: own training state (optimizer, schedule) or data loading.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "models/model_config.h"

namespace cw {

// One layer's keys and values after RoPE, [B, Hkv, T, head_dim].
struct LayerKV {
  torch::Tensor k, v;
};

// One layer's part of a chunk forward: where its attention finds the earlier tokens' keys/values and where it
// leaves the chunk's own (models/chunk_kv.h joins them).
struct ChunkLayerKV {
  const LayerKV* past = nullptr;  // joined: the earlier tokens' keys/values, copied in front of the chunk's
  LayerKV* buffer = nullptr;      // buffered: [B, Hkv, total, hd] holding the earlier tokens' at [0, start)
  LayerKV* past_grad = nullptr;   // buffered, gradients on: receives the gradient of the keys/values [0, start)
  int64_t start = 0, total = 0;
  LayerKV* fresh = nullptr;  // out: the chunk's own keys/values
};

// A chunk's forward in chunk-wise training (SeCO/SpaCO, train/chunkwise_step.h): the chunk attends to the
// earlier chunks' keys and values (bottom-right causal). Either PAST holds them (joined by a copy each
// chunk: the reference path), or BUFFERS hold the whole sequence's, the earlier ones at [0, start): the chunk
// writes its own at [start, start + len) and attends to [0, start + len) in place, and with gradients on the
// earlier ones' gradient is added into PAST_GRADS (same shapes; both allocated at the first use).
struct ChunkForward {
  std::vector<LayerKV> past;    // per layer: the keys/values of the tokens before the chunk (empty: none)
  torch::Tensor past_segments;  // [B, Tpast] their document ids, when the batch has segments
  std::vector<LayerKV>* buffers = nullptr;     // per layer, instead of PAST
  std::vector<LayerKV>* past_grads = nullptr;  // per layer, with BUFFERS when back-propagating
  int64_t start = 0, total = 0;                // with BUFFERS: the chunk's first position, the sequence's length
  std::vector<LayerKV> fresh;                  // out, per layer: the chunk's own keys/values
  ChunkLayerKV layer(size_t i);                // layer I's part (BUFFERS/PAST_GRADS grown to I + 1)
};

// A family's state for decoding one token at a time (RAT's per-layer caches); see CausalLM::new_decode_state.
struct DecodeState {
  virtual ~DecodeState() = default;
};

class CausalLM : public torch::nn::Module {
 public:
  // Logits [B, T, V] for TOKENS at POSITIONS; SEGMENTS (may be undefined) limit attention to a document.
  virtual torch::Tensor logits(const torch::Tensor& tokens, const torch::Tensor& positions,
                               const torch::Tensor& segments) = 0;
  virtual const ModelConfig& config() const = 0;
  // Sum of token cross-entropies over the batch's targets (fp32). Divide by the step's target count.
  virtual torch::Tensor loss_sum(const Batch& b);
  // Chunk-wise training: the sum of CHUNK's token cross-entropies (undefined when !WITH_LOSS: only f.fresh
  // is wanted). CHUNK holds the chunk's tokens, targets, positions and segments. Families without it throw.
  virtual bool supports_chunkwise() const { return false; }
  virtual torch::Tensor chunk_loss_sum(const Batch& chunk, ChunkForward& f, bool with_loss);
  // Decoding one token at a time: a fresh state (null for families without one: callers re-run the context),
  // and the logits [B, V] after one more token per row [B], which the state then includes.
  virtual std::unique_ptr<DecodeState> new_decode_state() { return nullptr; }
  virtual torch::Tensor decode_step(const torch::Tensor& tokens, DecodeState& state);
  // > 0: families that support it compute the loss in chunks of this many tokens, never holding all logits.
  int64_t loss_chunk_rows = 0;
  // Fused RoPE, SwiGLU, add+RMSNorm and cross-entropy (models/fused_ops.h) where family and dtype allow.
  bool fused_kernels = false;
  // With fused_kernels: the backward pass recomputes the SwiGLU product instead of keeping it.
  bool recompute_swiglu = false;
  // Activation checkpointing: keep only each decoder layer's input and run the layer again in the backward pass
  // (models/activation_checkpoint.h). Not applied to chunk forwards (SeCO keeps one chunk's graph already).
  bool checkpoint_layers = false;
  // Whether the family reads checkpoint_layers and loss_chunk_rows (the trainer refuses them otherwise).
  virtual bool supports_memory_options() const { return false; }
};

// train.fused_kernels: "true", "false", or "auto" (on for CUDA devices).
bool fused_kernels_wanted(const std::string& setting, const torch::Device& device);

using ModelBuilder = std::function<std::shared_ptr<CausalLM>(const ModelConfig&)>;
void register_model_family(const std::string& family, ModelBuilder builder);
std::shared_ptr<CausalLM> build_model(const ModelConfig& config);

}  // namespace cw
