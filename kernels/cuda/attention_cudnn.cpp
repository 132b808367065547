// cuDNN's SDPA forward and backward as frontend graphs, built once per shape and cached.
// Layouts (no copies): q, k and v are strided views of qkv[B,T,3C] (head h at columns h*D
// of each third), out and d_out are [B,T,C] seen as [B,H,T,D], and d_qkv takes dQ, dK and
// dV at the same strides as qkv.
#include "kernels/cuda/attention_cudnn.h"

#include <cudnn.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// The frontend's headers also carry an engine for another op (an RMSNorm for sm_100) that
// compiles its kernel with NVRTC at run time. These graphs never reach it, so its NVRTC
// calls are weak references: mics-train does not link libnvrtc, and a call would be a bug of
// ours (a null function). A newer frontend that calls more of NVRTC fails to link, loudly,
// until it is listed here. cuDNN itself does load libnvrtc.so.<CUDA major> at run time
// (dlopen, in libcudnn_graph) for its runtime-compiled SDPA engines: without it on the
// loader's path every attention graph is declined (scripts/gpu_check.py looks for it).
#include <nvrtc.h>
#pragma weak nvrtcCreateProgram
#pragma weak nvrtcCompileProgram
#pragma weak nvrtcDestroyProgram
#pragma weak nvrtcGetCUBIN
#pragma weak nvrtcGetCUBINSize
#pragma weak nvrtcGetProgramLog
#pragma weak nvrtcGetProgramLogSize

#include "cudnn_frontend.h"

namespace mics::cuda {
namespace {

namespace fe = cudnn_frontend;

// Tensor uids of the variant packs.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

std::string cudnn_status(cudnnStatus_t s) { return cudnnGetErrorString(s); }

std::string describe(DType t, const AttentionDims& d) {
  return std::string(dtype_name(t)) + ", batch " + std::to_string(d.batch) + ", " + std::to_string(d.seq) +
         " positions, " + std::to_string(d.heads) + " heads of " + std::to_string(d.head_dim) +
         (d.causal ? ", causal" : ", bidirectional");
}

// A frontend call that must succeed: anything else is cuDNN refusing or failing.
void require(fe::error_t status, const char* step, DType t, const AttentionDims& d) {
  if (status.is_good()) return;
  throw std::runtime_error(std::string("runtime.attention \"cudnn\": cuDNN failed to ") + step + " for " +
                           describe(t, d) + ": " + status.get_message());
}

// cuDNN has no kernel for a graph: the refusal the header promises, naming the way out.
std::string declined(const std::string& why, DType t, const AttentionDims& d) {
  return "runtime.attention \"cudnn\": this cuDNN has no fused attention kernel for " + describe(t, d) + " (" + why +
         "; cuDNN compiles these kernels at run time and needs libnvrtc on the loader's path); use \"fused\" or "
         "\"materialized\"";
}

struct Layout {
  std::vector<int64_t> dims, qkv_strides, out_strides, stats_dims, stats_strides;
};

Layout layout(const AttentionDims& d) {
  const int64_t B = d.batch, T = d.seq, H = d.heads, D = d.head_dim, C = H * D;
  return Layout{{B, H, T, D}, {T * 3 * C, D, 3 * C, 1}, {T * C, D, C, 1}, {B, H, T, 1}, {H * T, T, 1, 1}};
}

// sm_version 0: the current device's (the frontend asks it); else a compute capability to
// describe the graph for without a device. Set before any node: nodes copy the context.
std::shared_ptr<fe::graph::Graph> new_graph(DType t, int sm_version) {
  auto g = std::make_shared<fe::graph::Graph>();
  if (sm_version > 0) g->set_sm_version(sm_version);
  g->set_io_data_type(t == DType::bf16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

std::shared_ptr<fe::graph::Tensor_attributes> input(fe::graph::Graph& g, const char* name, int64_t uid,
                                                    const std::vector<int64_t>& dims,
                                                    const std::vector<int64_t>& strides) {
  return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dims).set_stride(strides));
}

// The forward graph: q, k, v in, out and the softmax statistics out.
// composite: cuDNN's composite SDPA graph instead of the frontend's default choice.
std::shared_ptr<fe::graph::Graph> describe_forward(DType t, const AttentionDims& d, int sm_version = 0,
                                                   bool composite = false) {
  const Layout l = layout(d);
  auto g = new_graph(t, sm_version);
  auto q = input(*g, "q", kQ, l.dims, l.qkv_strides);
  auto k = input(*g, "k", kK, l.dims, l.qkv_strides);
  auto v = input(*g, "v", kV, l.dims, l.qkv_strides);
  auto options = fe::graph::SDPA_attributes()
                     .set_name("attention_forward")
                     .set_generate_stats(true)
                     .set_attn_scale(1.0f / std::sqrt(static_cast<float>(d.head_dim)))
                     .set_causal_mask(d.causal);
  if (composite) options.set_implementation(fe::AttentionImplementation_t::COMPOSITE);
  auto [o, stats] = g->sdpa(q, k, v, options);
  o->set_output(true).set_uid(kO).set_dim(l.dims).set_stride(l.out_strides);
  stats->set_output(true).set_uid(kStats).set_data_type(fe::DataType_t::FLOAT).set_dim(l.stats_dims).set_stride(
      l.stats_strides);
  return g;
}

// The backward graph: q, k, v, out, d_out and the statistics in; dQ, dK, dV out.
std::shared_ptr<fe::graph::Graph> describe_backward(DType t, const AttentionDims& d, bool deterministic,
                                                    int sm_version = 0) {
  const Layout l = layout(d);
  auto g = new_graph(t, sm_version);
  auto q = input(*g, "q", kQ, l.dims, l.qkv_strides);
  auto k = input(*g, "k", kK, l.dims, l.qkv_strides);
  auto v = input(*g, "v", kV, l.dims, l.qkv_strides);
  auto o = input(*g, "o", kO, l.dims, l.out_strides);
  auto d_o = input(*g, "d_o", kDO, l.dims, l.out_strides);
  auto stats = input(*g, "stats", kStats, l.stats_dims, l.stats_strides);
  stats->set_data_type(fe::DataType_t::FLOAT);
  auto options = fe::graph::SDPA_backward_attributes()
                     .set_name("attention_backward")
                     .set_attn_scale(1.0f / std::sqrt(static_cast<float>(d.head_dim)))
                     .set_causal_mask(d.causal)
                     .set_deterministic_algorithm(deterministic);
  auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, d_o, stats, options);
  dq->set_output(true).set_uid(kDQ).set_dim(l.dims).set_stride(l.qkv_strides);
  dk->set_output(true).set_uid(kDK).set_dim(l.dims).set_stride(l.qkv_strides);
  dv->set_output(true).set_uid(kDV).set_dim(l.dims).set_stride(l.qkv_strides);
  return g;
}

// Every tensor either graph names, by uid (those a graph does not use stay null).
struct TensorPointers {
  void *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *stats = nullptr;
  void *d_o = nullptr, *d_q = nullptr, *d_k = nullptr, *d_v = nullptr;

  // q, k and v (and their gradients) are the thirds of qkv[B,T,3C] (d_qkv), `third` bytes apart.
  static TensorPointers of_qkv(const void* qkv, void* d_qkv, size_t third) {
    TensorPointers p;
    char* base = static_cast<char*>(const_cast<void*>(qkv));
    p.q = base, p.k = base + third, p.v = base + 2 * third;
    if (d_qkv != nullptr) {
      char* grad = static_cast<char*>(d_qkv);
      p.d_q = grad, p.d_k = grad + third, p.d_v = grad + 2 * third;
    }
    return p;
  }
  void* at(int64_t uid) const {
    switch (uid) {
      case kQ: return q;
      case kK: return k;
      case kV: return v;
      case kO: return o;
      case kStats: return stats;
      case kDO: return d_o;
      case kDQ: return d_q;
      case kDK: return d_k;
      case kDV: return d_v;
      default: throw std::logic_error("cuDNN attention: unknown tensor uid " + std::to_string(uid));
    }
  }
};

}  // namespace

struct CudnnAttention::Impl {
  Backward choice = Backward::deterministic_else_fast;  // see the constructor
  // A graph and its variant pack: the user tensors' uids in the order execute() wants their
  // pointers, and the array those are written into per call (no container built in a step).
  struct Pack {
    std::shared_ptr<fe::graph::Graph> graph;
    std::vector<int64_t> uids;
    std::vector<void*> pointers;
    bool ran = false;

    explicit Pack(std::shared_ptr<fe::graph::Graph> g = nullptr) : graph(std::move(g)) {
      if (graph == nullptr) return;
      uids = graph->get_variant_pack_uids_sorted();
      pointers.assign(uids.size(), nullptr);
    }
    void run(cudnnHandle_t handle, const TensorPointers& tensors, void* workspace, const char* step, DType t,
             const AttentionDims& d) {
      for (size_t i = 0; i < uids.size(); ++i) pointers[i] = tensors.at(uids[i]);
      require(graph->execute(handle, pointers.data(), static_cast<int>(pointers.size()), workspace), step, t, d);
      if (ran) return;
      // The first run of a plan waits for its kernels: a fault in them is then reported here,
      // naming cuDNN and the shape, instead of by whichever op synchronises next.
      ran = true;
      cudaStream_t stream = nullptr;
      cudaError_t err = cudnnGetStream(handle, &stream) == CUDNN_STATUS_SUCCESS ? cudaStreamSynchronize(stream)
                                                                                 : cudaDeviceSynchronize();
      if (err == cudaSuccess) err = cudaGetLastError();
      if (err != cudaSuccess)
        throw std::runtime_error(std::string("runtime.attention \"cudnn\": cuDNN's kernels failed to ") + step +
                                 " for " + describe(t, d) + ": " + cudaGetErrorString(err) +
                                 "; use \"fused\" or \"materialized\"");
    }
  };
  struct Plans {
    Pack forward, backward;
    size_t workspace = 0;
  };
  cudnnHandle_t handle = nullptr;
  std::map<std::tuple<DType, int64_t, int64_t, int64_t, int64_t, bool>, Plans> plans;
  bool told_nondeterministic = false;

  // Plans for one shape: the frontend's validate, operation graph, heuristics (mode A, then
  // the fallback list), support check and plan build. cuDNN declines a graph at any of these
  // steps (a recent cuDNN answers most at the heuristics or the build, not the support
  // check), so every failure is a ShapeError naming its step, which lets the callers try
  // another graph.
  void build(const std::shared_ptr<fe::graph::Graph>& g, DType t, const AttentionDims& d) {
    auto step = [&](fe::error_t status, const char* what) {
      if (status.is_bad()) throw ShapeError(declined(std::string(what) + ": " + status.get_message(), t, d));
    };
    step(g->validate(), "validate");
    step(g->build_operation_graph(handle), "operation graph");
    step(g->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}), "heuristics");
    step(g->check_support(), "support check");
    step(g->build_plans(), "plan build");
  }

  static std::string plan_name(const std::shared_ptr<fe::graph::Graph>& g) {
    std::string name;
    return g->get_plan_name(name).is_good() ? name : std::string("(unnamed)");
  }

  // The frontend picks cuDNN's unified kernel whenever the library is recent enough,
  // whatever the GPU; the composite graph covers more of them. The first refusal is the one
  // reported.
  std::shared_ptr<fe::graph::Graph> built_forward(DType t, const AttentionDims& d) {
    std::string first;
    for (bool composite : {false, true}) {
      try {
        auto g = describe_forward(t, d, 0, composite);  // may throw: no implementation for these attributes
        build(g, t, d);
        return g;
      } catch (const ShapeError& e) {
        if (first.empty()) first = e.what();
      } catch (const std::runtime_error& e) {
        if (first.empty()) first = declined(std::string("graph: ") + e.what(), t, d);
      }
    }
    throw ShapeError(first);
  }

  void warn_nondeterministic(DType t, const AttentionDims& d, const std::string& why) {
    if (!told_nondeterministic)
      spdlog::warn("runtime.attention \"cudnn\": using cuDNN's nondeterministic attention backward for {} ({}); "
                   "repeated runs may differ in the last bits", describe(t, d), why);
    told_nondeterministic = true;
  }

  // The deterministic backward keeps dP (B x H x T x T) in its workspace: beyond
  // kCudnnDeterministicWorkspaceBudget (kernels/ops.h), the fast one, whose workspace is
  // linear in T, unless the choice is deterministic_only; with the choice fast, that one
  // from the start.
  std::shared_ptr<fe::graph::Graph> built_backward(DType t, const AttentionDims& d) {
    std::string why = "runtime.cudnn_deterministic false";
    if (choice != Backward::fast) try {
      auto g = describe_backward(t, d, true);
      build(g, t, d);
      int64_t bytes = 0;
      require(g->get_workspace_size(bytes), "size the deterministic backward's workspace", t, d);
      if (bytes <= kCudnnDeterministicWorkspaceBudget) return g;
      why = "its deterministic one needs " + std::to_string(bytes >> 20) + " MiB of workspace";
    } catch (const std::exception& e) {
      why = std::string("no deterministic one: ") + e.what();
    }
    if (choice == Backward::deterministic_only)
      throw ShapeError("runtime.attention \"cudnn\": no deterministic cuDNN attention backward for " + describe(t, d) +
                       " (" + why + "; runtime.cudnn_deterministic false would run cuDNN's nondeterministic one)");
    std::shared_ptr<fe::graph::Graph> g;
    try {
      g = describe_backward(t, d, false);
    } catch (const std::runtime_error& e) {
      throw ShapeError(declined(std::string("backward graph: ") + e.what(), t, d));
    }
    build(g, t, d);
    if (choice == Backward::fast)
      spdlog::info("cuDNN's nondeterministic attention backward for {}, as runtime.cudnn_deterministic asks",
                   describe(t, d));
    else
      warn_nondeterministic(t, d, why);
    return g;
  }

  Plans& plans_for(DType t, const AttentionDims& d) {
    const auto key = std::make_tuple(t, d.batch, d.seq, d.heads, d.head_dim, d.causal);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    Plans p;
    p.forward = Pack(built_forward(t, d));
    p.backward = Pack(built_backward(t, d));
    int64_t forward_bytes = 0, backward_bytes = 0;
    require(p.forward.graph->get_workspace_size(forward_bytes), "size the forward workspace", t, d);
    require(p.backward.graph->get_workspace_size(backward_bytes), "size the backward workspace", t, d);
    // 256 bytes over what the frontend asks: the frontend lays its own buffers (b·h·s·4 bytes
    // of softmax sums) before cuDNN's part of the workspace, which is then only 4- or 8-byte
    // aligned when b·h·s is not a multiple of 4; an engine that aligns its part up stays
    // inside the allocation.
    p.workspace = static_cast<size_t>(std::max(forward_bytes, backward_bytes)) + 256;
    // Once per shape, at start-up: which kernels cuDNN chose, for reading a profile.
    spdlog::info("cuDNN {} attention for {}: forward {}, backward {}; workspace {:.1f} MiB", cudnnGetVersion(),
                 describe(t, d), plan_name(p.forward.graph), plan_name(p.backward.graph),
                 static_cast<double>(p.workspace) / (1024.0 * 1024.0));
    return plans.emplace(key, std::move(p)).first->second;
  }
};

CudnnAttention::CudnnAttention(cudaStream_t stream, Backward backward) : impl_(std::make_unique<Impl>()) {
  impl_->choice = backward;
  const cudnnStatus_t created = cudnnCreate(&impl_->handle);
  if (created != CUDNN_STATUS_SUCCESS)
    throw std::runtime_error("runtime.attention \"cudnn\": cuDNN could not start (cudnnCreate: " +
                             cudnn_status(created) + "); use \"fused\" or \"materialized\"");
  const cudnnStatus_t bound = cudnnSetStream(impl_->handle, stream);
  if (bound != CUDNN_STATUS_SUCCESS) {
    cudnnDestroy(impl_->handle);
    throw std::runtime_error("runtime.attention \"cudnn\": cudnnSetStream failed: " + cudnn_status(bound));
  }
  spdlog::debug("cuDNN {} (built against {}.{}.{}), frontend {}", cudnnGetVersion(), CUDNN_MAJOR, CUDNN_MINOR,
                CUDNN_PATCHLEVEL, CUDNN_FRONTEND_VERSION);
}

CudnnAttention::~CudnnAttention() {
  impl_->plans.clear();  // plans hold cuDNN descriptors: released before the handle
  if (impl_->handle != nullptr) cudnnDestroy(impl_->handle);
}

size_t CudnnAttention::prepare(DType t, const AttentionDims& d) { return impl_->plans_for(t, d).workspace; }

void CudnnAttention::forward(DType t, const AttentionDims& d, void* out, float* lse, const void* qkv,
                             void* workspace) {
  TensorPointers p = TensorPointers::of_qkv(qkv, nullptr, static_cast<size_t>(d.heads * d.head_dim) * dtype_size(t));
  p.o = out, p.stats = lse;
  impl_->plans_for(t, d).forward.run(impl_->handle, p, workspace, "run the attention forward", t, d);
}

void CudnnAttention::backward(DType t, const AttentionDims& d, void* d_qkv, const void* d_out, const void* qkv,
                              const void* out, const float* lse, void* workspace) {
  TensorPointers p = TensorPointers::of_qkv(qkv, d_qkv, static_cast<size_t>(d.heads * d.head_dim) * dtype_size(t));
  p.o = const_cast<void*>(out), p.d_o = const_cast<void*>(d_out), p.stats = const_cast<float*>(lse);
  impl_->plans_for(t, d).backward.run(impl_->handle, p, workspace, "run the attention backward", t, d);
}

std::string validate_cudnn_attention(DType t, const AttentionDims& d, int sm_version) {
  std::string problems;
  for (const auto& [what, g] : {std::pair{"forward", describe_forward(t, d, sm_version)},
                                std::pair{"backward", describe_backward(t, d, true, sm_version)},
                                std::pair{"nondeterministic backward", describe_backward(t, d, false, sm_version)}}) {
    fe::error_t status = g->validate();
    if (status.is_bad()) problems += std::string(problems.empty() ? "" : "; ") + what + ": " + status.get_message();
  }
  return problems;
}

}  // namespace mics::cuda
