// Implementation of models/fused_ops.h: autograd functions that dispatch to the CUDA launchers
// (kernels/train_ops.h) or to a CPU loop over the same item and row functions.
#include "models/fused_ops.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include <type_traits>

#include "common/error.h"
#include "data/batch.h"
#include "kernels/add_rmsnorm/add_rmsnorm_math.h"
#include "kernels/cross_entropy/cross_entropy_math.h"
#include "kernels/rope_qkv/rope_qkv_math.h"
#include "kernels/swiglu_grad/swiglu_grad_math.h"

#ifdef CHUNKWISE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/train_ops.h"
#endif

namespace cw {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

bool is_bf16(const torch::Tensor& x) { return x.scalar_type() == torch::kBFloat16; }

// Runs f(pointer type tag) with T = uint16_t (bf16 bits) or float.
template <typename F>
void with_storage(const torch::Tensor& x, F&& f) {
  if (is_bf16(x)) f(uint16_t{});
  else f(float{});
}
template <typename T>
T* ptr(const torch::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}
template <typename F>
void cpu_rows(int64_t rows, F&& row) {  // rows in parallel on LibTorch's intra-op threads
  at::parallel_for(0, rows, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) row(r);
  });
}

#ifdef CHUNKWISE_CUDA
kern::cuda::Storage storage(const torch::Tensor& x) { return is_bf16(x) ? kern::cuda::Storage::BF16 : kern::cuda::Storage::F32; }
cudaStream_t stream_of(const torch::Tensor& x) { return at::cuda::getCurrentCUDAStream(x.device().index()).stream(); }
#endif

void check_support(const torch::Tensor& x, const char* op) {
  check(fused_ops_support(x), op, ": fused kernels take fp32 or bf16 on the CPU or CUDA, got ", x.scalar_type(), " on ",
        x.device(), " (set train.fused_kernels = false)");
}

// Runs f(std::integral_constant<int, N>{}) with the RoPE unit width the CUDA kernels would use.
template <typename F>
void with_rope_pack(const torch::Tensor& x, const kern::RopeQkvShape& sh, int64_t stride, F&& f) {
  switch (kern::rope_qkv_pack(is_bf16(x), sh, stride)) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 4: return f(std::integral_constant<int, 4>{});
    default: return f(std::integral_constant<int, 1>{});
  }
}

torch::Tensor grad_or_zeros(const torch::Tensor& g, at::IntArrayRef sizes, const torch::TensorOptions& opts) {
  return g.defined() ? g.to(opts.dtype()).contiguous() : torch::zeros(sizes, opts);
}

// ---- RoPE on the q/k/v product ----
struct RopeQkv : torch::autograd::Function<RopeQkv> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& qkv, const torch::Tensor& cos,
                               const torch::Tensor& sin, int64_t heads, int64_t kv_heads) {
    check_support(qkv, "fused RoPE");
    const int64_t width = qkv.size(-1), hd = width / (heads + 2 * kv_heads);
    check(hd * (heads + 2 * kv_heads) == width && hd % 2 == 0, "fused RoPE: width ", width, " is not (", heads, " + 2 x ",
          kv_heads, ") even-sized heads");
    auto x = qkv.reshape({-1, width});
    if (x.stride(1) != 1) x = x.contiguous();
    const int64_t rows = x.size(0);
    auto c = cos.to(torch::kFloat32).reshape({-1, hd}).contiguous(), s = sin.to(torch::kFloat32).reshape({-1, hd}).contiguous();
    check(c.size(0) == rows && s.size(0) == rows, "fused RoPE: ", rows, " rows of q/k/v but ", c.size(0), " of cos/sin");
    std::vector<int64_t> lead(qkv.sizes().begin(), qkv.sizes().end() - 1);
    auto shape_of = [&](int64_t h) {
      auto v = lead;
      v.push_back(h);
      v.push_back(hd);
      return v;
    };
    // In place: q and k are rotated where they are, and q, k and v come back as views of the q/k/v rows (row
    // stride `width`), which attention reads directly; no copy of v, no second buffer for q and k.
    auto view_of = [&](int64_t head0, int64_t h) { return x.narrow(1, head0 * hd, h * hd).view(shape_of(h)); };
    auto q = view_of(0, heads), k = view_of(heads, kv_heads), v = view_of(heads + kv_heads, kv_heads);
    kern::RopeQkvShape sh{rows, int(heads), int(kv_heads), int(hd), x.stride(0)};
    with_storage(x, [&](auto tag) {
      using T = decltype(tag);
#ifdef CHUNKWISE_CUDA
      if (x.is_cuda()) {
        c10::cuda::CUDAGuard guard(x.device());
        kern::cuda::rope_qkv_forward(storage(x), x.data_ptr(), ptr<float>(c), ptr<float>(s), sh, x.data_ptr(),
                                     stream_of(x));
        return;
      }
#endif
      T* xp = ptr<T>(x);
      const float *cp = ptr<float>(c), *sp = ptr<float>(s);
      // The GPU's unit width (without its alignment condition), so these loops test its indexing.
      with_rope_pack(x, sh, sh.qkv_stride, [&](auto n) {
        constexpr int N = decltype(n)::value;
        const int per_row = kern::rope_qkv_forward_units_per_row<N>(sh);
        cpu_rows(rows, [&](int64_t r) {
          for (int j = 0; j < per_row; ++j)
            kern::rope_qkv_forward_unit<T, N, kern::ElementIo>(r, j, sh, xp, cp, sp, xp);
        });
      });
    });
    ctx->save_for_backward({c, s});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["kv_heads"] = kv_heads;
    ctx->saved_data["sizes"] = qkv.sizes().vec();
    return {q, k, v};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &c = saved[0], &s = saved[1];
    const int64_t heads = ctx->saved_data["heads"].toInt(), kv_heads = ctx->saved_data["kv_heads"].toInt();
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const int64_t hd = c.size(1), rows = c.size(0);
    torch::Tensor like = grads[0].defined() ? grads[0] : grads[1].defined() ? grads[1] : grads[2];
    auto opts = like.options();
    auto dq = grad_or_zeros(grads[0], {rows, heads, hd}, opts), dk = grad_or_zeros(grads[1], {rows, kv_heads, hd}, opts),
         dv = grad_or_zeros(grads[2], {rows, kv_heads, hd}, opts);
    auto dqkv = torch::empty({rows, (heads + 2 * kv_heads) * hd}, opts);
    kern::RopeQkvShape sh{rows, int(heads), int(kv_heads), int(hd), dqkv.stride(0)};
    with_storage(dqkv, [&](auto tag) {
      using T = decltype(tag);
#ifdef CHUNKWISE_CUDA
      if (dqkv.is_cuda()) {
        c10::cuda::CUDAGuard guard(dqkv.device());
        kern::cuda::rope_qkv_backward(storage(dqkv), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), ptr<float>(c),
                                      ptr<float>(s), sh, dqkv.data_ptr(), stream_of(dqkv));
        return;
      }
#endif
      const T *dqp = ptr<T>(dq), *dkp = ptr<T>(dk), *dvp = ptr<T>(dv);
      const float *cp = ptr<float>(c), *sp = ptr<float>(s);
      T* out = ptr<T>(dqkv);
      with_rope_pack(dqkv, sh, dqkv.stride(0), [&](auto n) {
        constexpr int N = decltype(n)::value;
        const int per_row = kern::rope_qkv_backward_units_per_row<N>(sh);
        cpu_rows(rows, [&](int64_t r) {
          for (int j = 0; j < per_row; ++j)
            kern::rope_qkv_backward_unit<T, N, kern::ElementIo>(r, j, sh, dqp, dkp, dvp, cp, sp, out);
        });
      });
    });
    return {dqkv.view(sizes), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// ---- SwiGLU ----
// h = silu(g) * u of a contiguous [..., 2F] tensor, and d gate_up from dh (no autograd).
torch::Tensor swiglu_rows(const torch::Tensor& gu) {
  const int64_t ff = gu.size(-1) / 2, rows = gu.numel() / std::max<int64_t>(1, 2 * ff);
  auto sizes = gu.sizes().vec();
  sizes.back() = ff;
  auto h = torch::empty(sizes, gu.options());
  with_storage(gu, [&](auto tag) {
    using T = decltype(tag);
#ifdef CHUNKWISE_CUDA
    if (gu.is_cuda()) {
      c10::cuda::CUDAGuard guard(gu.device());
      kern::cuda::swiglu_forward(storage(gu), gu.data_ptr(), rows, ff, h.data_ptr(), stream_of(gu));
      return;
    }
#endif
    const T* in = ptr<T>(gu);
    T* out = ptr<T>(h);
    cpu_rows(rows, [&](int64_t r) {
      for (int64_t i = 0; i < ff; ++i) kern::swiglu_forward_item(r, i, ff, in, out);
    });
  });
  return h;
}

torch::Tensor swiglu_rows_grad(const torch::Tensor& gu, const torch::Tensor& dh_in) {
  auto dh = dh_in.to(gu.scalar_type()).contiguous();
  const int64_t ff = gu.size(-1) / 2, rows = gu.numel() / std::max<int64_t>(1, 2 * ff);
  auto dgu = torch::empty_like(gu);
  with_storage(gu, [&](auto tag) {
    using T = decltype(tag);
#ifdef CHUNKWISE_CUDA
    if (gu.is_cuda()) {
      c10::cuda::CUDAGuard guard(gu.device());
      kern::cuda::swiglu_backward(storage(gu), gu.data_ptr(), dh.data_ptr(), rows, ff, dgu.data_ptr(), stream_of(gu));
      return;
    }
#endif
    const T *in = ptr<T>(gu), *d = ptr<T>(dh);
    T* out = ptr<T>(dgu);
    cpu_rows(rows, [&](int64_t r) {
      for (int64_t i = 0; i < ff; ++i) kern::swiglu_backward_item(r, i, ff, in, d, out);
    });
  });
  return dgu;
}

void check_gate_up(const torch::Tensor& gate_up) {
  check_support(gate_up, "fused SwiGLU");
  check(gate_up.size(-1) % 2 == 0, "fused SwiGLU: the last dimension (", gate_up.size(-1), ") is not [gate | up]");
}

struct SwiGlu : torch::autograd::Function<SwiGlu> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate_up) {
    check_gate_up(gate_up);
    auto gu = gate_up.contiguous();
    ctx->save_for_backward({gu});
    return swiglu_rows(gu);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {swiglu_rows_grad(ctx->get_saved_variables()[0], grads[0])};
  }
};

// SwiGLU followed by the down projection, keeping only [g | u]: the backward pass recomputes h for the
// weight's gradient instead of holding it from the forward pass (what torch.compile's partitioner does).
struct SwiGluDown : torch::autograd::Function<SwiGluDown> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate_up, const torch::Tensor& w) {
    check_gate_up(gate_up);
    check(w.dim() == 2 && w.size(1) == gate_up.size(-1) / 2 && w.scalar_type() == gate_up.scalar_type(),
          "fused SwiGLU + down projection: weight ", w.sizes(), " ", w.scalar_type(), " does not take ", gate_up.sizes(),
          " ", gate_up.scalar_type());
    auto gu = gate_up.contiguous();
    ctx->save_for_backward({gu, w});
    return torch::matmul(swiglu_rows(gu), w.t());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &gu = saved[0], &w = saved[1];
    auto dout = grads[0].to(gu.scalar_type());
    auto h = swiglu_rows(gu);
    auto dw = torch::matmul(dout.reshape({-1, dout.size(-1)}).t(), h.reshape({-1, h.size(-1)}));
    auto dgu = swiglu_rows_grad(gu, torch::matmul(dout, w));
    return {dgu, dw};
  }
};

// ---- Residual add + RMSNorm ----
template <typename F>
void with_two_storages(const torch::Tensor& a, const torch::Tensor& b, F&& f) {
  with_storage(a, [&](auto ta) { with_storage(b, [&](auto tb) { f(ta, tb); }); });
}

struct AddRmsNorm : torch::autograd::Function<AddRmsNorm> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& delta,
                               const torch::Tensor& w, double eps, int64_t out_dtype) {
    check(fused_add_rmsnorm_support(x, delta, w), "fused add + RMSNorm: x ", x.scalar_type(), " ", x.sizes(), ", delta ",
          delta.scalar_type(), " ", delta.sizes(), ", w ", w.scalar_type(), " ", w.sizes(),
          " (x and w fp32, delta fp32 or bf16, same shape, d <= 4096; set train.fused_kernels = false)");
    const int64_t d = x.size(-1), rows = x.numel() / std::max<int64_t>(1, d);
    auto xc = x.contiguous(), dc = delta.contiguous(), wc = w.contiguous();
    auto h = torch::empty_like(xc), y = torch::empty(xc.sizes(), xc.options().dtype(c10::ScalarType(out_dtype)));
    auto rstd = torch::empty({rows}, xc.options());
    with_two_storages(dc, y, [&](auto td, auto ty) {
      using TD = decltype(td);
      using TY = decltype(ty);
#ifdef CHUNKWISE_CUDA
      if (xc.is_cuda()) {
        c10::cuda::CUDAGuard guard(xc.device());
        kern::cuda::add_rmsnorm_forward(storage(dc), storage(y), ptr<float>(xc), dc.data_ptr(), ptr<float>(wc), rows,
                                        int(d), float(eps), ptr<float>(h), y.data_ptr(), ptr<float>(rstd), stream_of(xc));
        return;
      }
#endif
      const float *xp = ptr<float>(xc), *wp = ptr<float>(wc);
      const TD* dp = ptr<TD>(dc);
      float *hp = ptr<float>(h), *rp = ptr<float>(rstd);
      TY* yp = ptr<TY>(y);
      cpu_rows(rows, [&](int64_t r) {
        rp[r] = kern::add_rmsnorm_forward_row(xp + r * d, dp + r * d, wp, d, float(eps), hp + r * d, yp + r * d);
      });
    });
    ctx->save_for_backward({h, wc, rstd});
    ctx->saved_data["delta_dtype"] = int64_t(delta.scalar_type());
    return {h, y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &h = saved[0], &w = saved[1], &rstd = saved[2];
    const auto delta_dtype = c10::ScalarType(ctx->saved_data["delta_dtype"].toInt());
    const int64_t d = h.size(-1), rows = h.numel() / std::max<int64_t>(1, d);
    torch::Tensor dh_next = grads[0].defined() ? grads[0].to(torch::kFloat32).contiguous() : torch::Tensor();
    torch::Tensor dy = grads[1].defined() ? grads[1].contiguous() : torch::zeros(h.sizes(), h.options());
    auto dx = torch::empty_like(h), ddelta = torch::empty(h.sizes(), h.options().dtype(delta_dtype));
    torch::Tensor dw;
    with_two_storages(ddelta, dy, [&](auto td, auto ty) {
      using TD = decltype(td);
      using TY = decltype(ty);
#ifdef CHUNKWISE_CUDA
      if (h.is_cuda()) {
        c10::cuda::CUDAGuard guard(h.device());
        auto partial = torch::empty({kern::cuda::add_rmsnorm_backward_blocks(rows), d}, h.options());
        kern::cuda::add_rmsnorm_backward(storage(ddelta), storage(dy), ptr<float>(h), ptr<float>(w), ptr<float>(rstd),
                                         dy.data_ptr(), dh_next.defined() ? ptr<float>(dh_next) : nullptr, rows, int(d),
                                         ptr<float>(dx), ddelta.data_ptr(), ptr<float>(partial), stream_of(h));
        dw = partial.sum(0);
        return;
      }
#endif
      const float *hp = ptr<float>(h), *wp = ptr<float>(w), *rp = ptr<float>(rstd);
      const float* np = dh_next.defined() ? ptr<float>(dh_next) : nullptr;
      const TY* yp = ptr<TY>(dy);
      float* xp = ptr<float>(dx);
      TD* dp = ptr<TD>(ddelta);
      cpu_rows(rows, [&](int64_t r) {
        kern::add_rmsnorm_backward_row(hp + r * d, wp, rp[r], yp + r * d, np ? np + r * d : nullptr, d, xp + r * d,
                                       dp + r * d);
      });
      dw = (dy.to(torch::kFloat32).reshape({rows, d}) * h.reshape({rows, d}) * rstd.unsqueeze(1)).sum(0);
    });
    return {dx, ddelta, dw, torch::Tensor(), torch::Tensor()};
  }
};

// ---- Cross-entropy ----
struct CrossEntropySum : torch::autograd::Function<CrossEntropySum> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& targets,
                               bool overwrite) {
    auto x = logits.stride(1) == 1 ? logits : logits.contiguous();
    auto t = targets.to(torch::kInt64).contiguous();
    auto [loss, lse] = cross_entropy_rows(x, t);
    ctx->save_for_backward({x, t, lse});
    ctx->saved_data["overwrite"] = overwrite;
    return loss.sum();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &t = saved[1], &lse = saved[2];
    auto grad = ctx->saved_data["overwrite"].toBool() ? x.detach() : x.clone(torch::MemoryFormat::Contiguous);
    cross_entropy_grad_(grad, t, lse, grads[0]);
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

std::pair<torch::Tensor, torch::Tensor> cross_entropy_rows(const torch::Tensor& logits, const torch::Tensor& targets) {
  check_support(logits, "fused cross-entropy");
  check(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0) && logits.stride(1) == 1 &&
            targets.scalar_type() == torch::kInt64 && targets.is_contiguous(),
        "fused cross-entropy: logits ", logits.sizes(), " and targets ", targets.sizes(),
        " do not match ([N, V] with contiguous rows and int64 [N])");
  const int64_t rows = logits.size(0), V = logits.size(1), stride = logits.stride(0);
  auto f32 = logits.options().dtype(torch::kFloat32);
  auto loss = torch::empty({rows}, f32), lse = torch::empty({rows}, f32);
  with_storage(logits, [&](auto tag) {
    using T = decltype(tag);
#ifdef CHUNKWISE_CUDA
    if (logits.is_cuda()) {
      c10::cuda::CUDAGuard guard(logits.device());
      kern::cuda::cross_entropy_forward(storage(logits), logits.data_ptr(), rows, V, stride, ptr<int64_t>(targets),
                                        kIgnoreIndex, ptr<float>(loss), ptr<float>(lse), stream_of(logits));
      return;
    }
#endif
    const T* xp = ptr<T>(logits);
    const int64_t* tp = ptr<int64_t>(targets);
    float *lp = ptr<float>(loss), *sp = ptr<float>(lse);
    cpu_rows(rows, [&](int64_t r) { kern::cross_entropy_forward_row(xp + r * stride, V, tp[r], kIgnoreIndex, lp + r, sp + r); });
  });
  return {loss, lse};
}

void cross_entropy_grad_(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& lse,
                         const torch::Tensor& scale) {
  check_support(logits, "fused cross-entropy");
  auto g = scale.to(torch::kFloat32).contiguous();
  const int64_t rows = logits.size(0), V = logits.size(1), stride = logits.stride(0);
  with_storage(logits, [&](auto tag) {
    using T = decltype(tag);
#ifdef CHUNKWISE_CUDA
    if (logits.is_cuda()) {
      c10::cuda::CUDAGuard guard(logits.device());
      kern::cuda::cross_entropy_backward(storage(logits), logits.data_ptr(), rows, V, stride, ptr<int64_t>(targets),
                                         kIgnoreIndex, ptr<float>(lse), ptr<float>(g), logits.data_ptr(), stride,
                                         stream_of(logits));
      return;
    }
#endif
    T* xp = ptr<T>(logits);
    const int64_t* tp = ptr<int64_t>(targets);
    const float* sp = ptr<float>(lse);
    const float sc = g.item<float>();
    cpu_rows(rows, [&](int64_t r) {
      kern::cross_entropy_backward_row(xp + r * stride, V, tp[r], kIgnoreIndex, sp[r], sc, xp + r * stride);
    });
  });
}

torch::ScalarType compute_dtype(const torch::Tensor& x) {
  const auto type = x.device().type();
  return at::autocast::is_autocast_enabled(type) ? at::autocast::get_autocast_dtype(type) : x.scalar_type();
}

AutocastOff::AutocastOff(c10::DeviceType type) : type_(type), was_on_(at::autocast::is_autocast_enabled(type)) {
  at::autocast::set_autocast_enabled(type_, false);
}
AutocastOff::~AutocastOff() { at::autocast::set_autocast_enabled(type_, was_on_); }

bool fused_ops_support(const torch::Tensor& x) {
  const bool dtype_ok = x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16;
#ifdef CHUNKWISE_CUDA
  const bool device_ok = x.is_cpu() || x.is_cuda();
#else
  const bool device_ok = x.is_cpu();
#endif
  return dtype_ok && device_ok;
}

std::array<torch::Tensor, 3> fused_rope_qkv(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                                            int64_t heads, int64_t kv_heads) {
  auto out = RopeQkv::apply(qkv, cos, sin, heads, kv_heads);
  return {out[0], out[1], out[2]};
}

torch::Tensor fused_swiglu(const torch::Tensor& gate_up) { return SwiGlu::apply(gate_up); }

torch::Tensor fused_swiglu_down(const torch::Tensor& gate_up, const torch::Tensor& down_weight) {
  const auto dtype = compute_dtype(gate_up);
  AutocastOff off(gate_up.device().type());
  return SwiGluDown::apply(gate_up.to(dtype), down_weight.to(dtype));
}

bool fused_add_rmsnorm_support(const torch::Tensor& x, const torch::Tensor& delta, const torch::Tensor& w) {
  return fused_ops_support(x) && fused_ops_support(delta) && x.scalar_type() == torch::kFloat32 &&
         w.scalar_type() == torch::kFloat32 && x.sizes() == delta.sizes() && w.dim() == 1 && w.size(0) == x.size(-1) &&
         x.size(-1) <= 4096 && x.device() == delta.device() && x.device() == w.device();
}

std::array<torch::Tensor, 2> fused_add_rmsnorm(const torch::Tensor& x, const torch::Tensor& delta, const torch::Tensor& w,
                                               double eps, torch::ScalarType out_dtype) {
  check(out_dtype == torch::kFloat32 || out_dtype == torch::kBFloat16, "fused add + RMSNorm: output dtype ", out_dtype,
        " (fp32 or bf16)");
  auto out = AddRmsNorm::apply(x, delta, w, eps, int64_t(out_dtype));
  return {out[0], out[1]};
}

torch::Tensor fused_cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets, bool overwrite_logits) {
  return CrossEntropySum::apply(logits, targets, overwrite_logits);
}

}  // namespace cw
