// Implementation of models/chunk_kv.h.
#include "models/chunk_kv.h"

#include "common/error.h"

namespace cw {

ChunkLayerKV ChunkForward::layer(size_t i) {
  if (fresh.size() <= i) fresh.resize(i + 1);
  ChunkLayerKV c;
  c.fresh = &fresh[i];
  c.start = start, c.total = total;
  if (buffers) {
    if (buffers->size() <= i) buffers->resize(i + 1);
    c.buffer = &(*buffers)[i];
    if (past_grads) {
      if (past_grads->size() <= i) past_grads->resize(i + 1);
      c.past_grad = &(*past_grads)[i];
    }
  } else if (i < past.size()) {
    c.past = &past[i];
  }
  return c;
}

namespace {

// The buffer's [0, start + len) after the chunk's own keys (or values) were written at [start, start + len):
// the gradient of the chunk's part goes back to FRESH, that of the earlier part is added into PAST_GRAD.
struct BufferedKeys : torch::autograd::Function<BufferedKeys> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor fresh, torch::Tensor buffer,
                               torch::Tensor past_grad, int64_t start) {
    const int64_t len = fresh.size(2);
    buffer.narrow(2, start, len).copy_(fresh);
    ctx->saved_data["past_grad"] = past_grad;
    ctx->saved_data["start"] = start;
    // Detached: an alias of the buffer, not a view autograd would trace back to it.
    return buffer.narrow(2, 0, start + len).detach();
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const int64_t start = ctx->saved_data["start"].toInt();
    auto g = grads[0];
    if (start > 0) {
      auto past_grad = ctx->saved_data["past_grad"].toTensor();
      past_grad.narrow(2, 0, start).add_(g.narrow(2, 0, start));
    }
    return {g.narrow(2, start, g.size(2) - start), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor buffered(torch::Tensor& buffer, torch::Tensor* past_grad, const ChunkLayerKV& c, const torch::Tensor& x) {
  const int64_t len = x.size(2);
  check(c.total >= c.start + len, "chunk forward: a chunk at ", c.start, " of ", len, " tokens past a sequence of ",
        c.total);
  if (!buffer.defined())  // [B, H, total, hd] over storage [B, total, H, hd]: flash attention's token-major layout,
                          // so for one sequence the keys read are a slice it takes without a copy
    buffer = torch::empty({x.size(0), c.total, x.size(1), x.size(3)}, x.options()).transpose(1, 2);
  check(buffer.size(2) == c.total && buffer.scalar_type() == x.scalar_type() && buffer.size(1) == x.size(1),
        "chunk forward: the key/value buffer ", buffer.sizes(), " ", buffer.scalar_type(), " does not fit a chunk ",
        x.sizes(), " ", x.scalar_type(), " of a ", c.total, "-token sequence");
  if (!(torch::GradMode::is_enabled() && x.requires_grad())) {
    buffer.narrow(2, c.start, len).copy_(x);
    return buffer.narrow(2, 0, c.start + len);
  }
  check(past_grad != nullptr || c.start == 0, "chunk forward: gradients on past keys need a gradient buffer");
  torch::Tensor grad;
  if (past_grad) {
    if (!past_grad->defined()) *past_grad = torch::zeros_like(buffer);
    grad = *past_grad;
  }
  return BufferedKeys::apply(x, buffer, grad, c.start);
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> chunk_keys_values(const ChunkLayerKV& c, const torch::Tensor& k,
                                                          const torch::Tensor& v) {
  if (c.fresh) c.fresh->k = k, c.fresh->v = v;
  if (c.buffer)
    return {buffered(c.buffer->k, c.past_grad ? &c.past_grad->k : nullptr, c, k),
            buffered(c.buffer->v, c.past_grad ? &c.past_grad->v : nullptr, c, v)};
  if (c.past && c.past->k.defined() && c.past->k.size(2) > 0)
    return {torch::cat({c.past->k, k}, 2), torch::cat({c.past->v, v}, 2)};
  return {k, v};
}

}  // namespace cw
