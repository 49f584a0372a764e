// The keys/values a chunk attends to in chunk-wise training (SeCO/SpaCO): the earlier tokens' followed by the
// chunk's own, along the sequence dimension. Two paths that give the same values and gradients: joined (a copy
// of the past in front of the chunk's, the reference) and buffered (the chunk's written into a buffer of the
// whole sequence that already holds the past, and a view of its first start + len positions read; the past's
// gradient added into a buffer in place), which copies no past per chunk. The buffers are laid out token-major
// ([B, T, Hkv, hd] storage seen as [B, Hkv, T, hd]), as flash attention's variable-length kernel reads them.
// Must not: allocate per-chunk tensors the size of the past on the buffered path.
#pragma once

#include <torch/torch.h>

#include "models/causal_lm.h"

namespace cw {

// K, V [B, Hkv, len, hd]: the chunk's own keys/values. Returns the keys and values to attend to,
// [B, Hkv, start + len, hd] (just K, V when C has no past), and sets *C.fresh to K, V.
std::pair<torch::Tensor, torch::Tensor> chunk_keys_values(const ChunkLayerKV& c, const torch::Tensor& k,
                                                          const torch::Tensor& v);

}  // namespace cw
