// 2-D float32 convolution (NHWC input and output, HWIO kernel) through oneDNN,
// as three XLA FFI custom calls for the CPU: the forward pass, the gradient with
// respect to the input and the gradient with respect to the kernel.
// Built and loaded by ssl_jax/kernels/onednn.py; see its docstring.
//
// Each shape's primitives are created once and cached. Calls are serialised:
// oneDNN runs each one on all cores (OpenMP), so XLA running two at once
// would only make them compete.
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Shape {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, ph, pw, phr, pwr;
  std::string key(int kind) const {
    std::string k = std::to_string(kind);
    for (int64_t v : {n, h, w, c, kh, kw, o, oh, ow, sh, sw, ph, pw, phr, pwr})
      k += "," + std::to_string(v);
    return k;
  }
};

struct Plan {
  dnnl::primitive prim;
  dnnl::memory::desc weights;  // the kernel layout the primitive wants
  dnnl::memory::desc weights_user;
  bool reorder;
};

dnnl::engine& Engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

std::mutex mu;
std::unordered_map<std::string, std::unique_ptr<Plan>> plans;

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

dnnl::convolution_forward::primitive_desc FwdPd(const Shape& s) {
  dnnl::memory::desc src({s.n, s.c, s.h, s.w}, dt::f32, tag::nhwc);
  dnnl::memory::desc wts({s.o, s.c, s.kh, s.kw}, dt::f32, tag::any);
  dnnl::memory::desc dst({s.n, s.o, s.oh, s.ow}, dt::f32, tag::nhwc);
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, wts,
      dst, {s.sh, s.sw}, {s.ph, s.pw}, {s.phr, s.pwr});
}

Plan* GetPlan(const Shape& s, int kind) {
  std::string k = s.key(kind);
  auto it = plans.find(k);
  if (it != plans.end()) return it->second.get();
  auto p = std::make_unique<Plan>();
  p->weights_user = dnnl::memory::desc({s.o, s.c, s.kh, s.kw}, dt::f32, tag::hwio);
  auto fwd = FwdPd(s);
  dnnl::memory::desc src({s.n, s.c, s.h, s.w}, dt::f32, tag::nhwc);
  dnnl::memory::desc dst({s.n, s.o, s.oh, s.ow}, dt::f32, tag::nhwc);
  dnnl::memory::desc wany({s.o, s.c, s.kh, s.kw}, dt::f32, tag::any);
  if (kind == 0) {
    p->prim = dnnl::convolution_forward(fwd);
    p->weights = fwd.weights_desc();
  } else if (kind == 1) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src, wany, dst, {s.sh, s.sw},
        {s.ph, s.pw}, {s.phr, s.pwr}, fwd);
    p->prim = dnnl::convolution_backward_data(pd);
    p->weights = pd.weights_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src, wany, dst, {s.sh, s.sw},
        {s.ph, s.pw}, {s.phr, s.pwr}, fwd);
    p->prim = dnnl::convolution_backward_weights(pd);
    p->weights = pd.diff_weights_desc();
  }
  p->reorder = p->weights != p->weights_user;
  Plan* raw = p.get();
  plans.emplace(k, std::move(p));
  return raw;
}

Shape MakeShape(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Shape s{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, ph, pw, 0, 0};
  s.phr = (s.oh - 1) * sh + s.kh - s.h - ph;
  s.pwr = (s.ow - 1) * sw + s.kw - s.w - pw;
  return s;
}

// kind 0: y = conv(x, w); 1: dx from (dy, w); 2: dw from (x, dy).
ffi::Error Run(int kind, const Shape& s, float* x, float* w, float* y) {
  std::lock_guard<std::mutex> lock(mu);
  try {
    Plan* p = GetPlan(s, kind);
    dnnl::stream st(Engine());
    dnnl::memory src({{s.n, s.c, s.h, s.w}, dt::f32, tag::nhwc}, Engine(), x);
    dnnl::memory dst({{s.n, s.o, s.oh, s.ow}, dt::f32, tag::nhwc}, Engine(), y);
    dnnl::memory user(p->weights_user, Engine(), w);
    dnnl::memory wts = p->reorder ? dnnl::memory(p->weights, Engine()) : user;
    if (p->reorder && kind != 2) dnnl::reorder(user, wts).execute(st, user, wts);
    if (kind == 0) {
      p->prim.execute(st, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wts}, {DNNL_ARG_DST, dst}});
    } else if (kind == 1) {
      p->prim.execute(st, {{DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_WEIGHTS, wts},
                           {DNNL_ARG_DIFF_DST, dst}});
    } else {
      p->prim.execute(st, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_WEIGHTS, wts},
                           {DNNL_ARG_DIFF_DST, dst}});
      if (p->reorder) dnnl::reorder(wts, user).execute(st, wts, user);
    }
    st.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Fwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
               int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Shape s = MakeShape(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, ph, pw);
  return Run(0, s, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error BwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t ph,
                   int64_t pw) {
  Shape s = MakeShape(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, ph, pw);
  return Run(1, s, dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error BwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t ph,
                      int64_t pw) {
  Shape s = MakeShape(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, ph, pw);
  return Run(2, s, x.typed_data(), dw->typed_data(), dy.typed_data());
}

}  // namespace

#define BIND()                                                                         \
  ffi::Ffi::Bind()                                                                     \
      .Arg<ffi::Buffer<ffi::F32>>()                                                    \
      .Arg<ffi::Buffer<ffi::F32>>()                                                    \
      .Ret<ffi::Buffer<ffi::F32>>()                                                    \
      .Attr<int64_t>("sh")                                                             \
      .Attr<int64_t>("sw")                                                             \
      .Attr<int64_t>("ph")                                                             \
      .Attr<int64_t>("pw")

XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlConvFwd, Fwd, BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlConvBwdData, BwdData, BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlConvBwdWeights, BwdWeights, BIND());
