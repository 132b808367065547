// Token, position and token-type embeddings, and the row gather/scatter used by BERT's
// masked-LM head.
#include <stdexcept>
#include <string>

#include "kernels/cpu/cpu_kernels.h"

namespace mics::cpu {

namespace {
void check_id(int32_t id, int64_t bound, const char* what) {
  if (id < 0 || id >= bound)
    throw std::out_of_range(std::string(what) + " " + std::to_string(id) + " outside [0, " +
                            std::to_string(bound) + ")");
}
}  // namespace

template <class T>
void embedding_forward(T* out, const int32_t* ids, const int32_t* type_ids, const T* tok,
                       const T* pos, const T* type, int64_t rows, int64_t cols, int64_t seq,
                       int64_t vocab, int64_t positions, int64_t types) {
  if (seq > positions) throw std::out_of_range("sequence longer than the position table");
  for (int64_t r = 0; r < rows; ++r) {
    check_id(ids[r], vocab, "token id");
    if (type != nullptr) check_id(type_ids[r], types, "token type id");
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* t = tok + static_cast<int64_t>(ids[r]) * cols;
    const T* p = pos + (r % seq) * cols;
    T* o = out + r * cols;
    for (int64_t c = 0; c < cols; ++c) o[c] = t[c] + p[c];
    if (type != nullptr) {
      const T* ty = type + static_cast<int64_t>(type_ids[r]) * cols;
      for (int64_t c = 0; c < cols; ++c) o[c] += ty[c];
    }
  }
}

template <class T>
void embedding_backward(T* d_tok, T* d_pos, T* d_type, const T* d_out, const int32_t* ids,
                        const int32_t* type_ids, int64_t rows, int64_t cols, int64_t seq) {
  // Serial: several rows may hit the same table row, and the order must be reproducible.
  for (int64_t r = 0; r < rows; ++r) {
    const T* g = d_out + r * cols;
    T* t = d_tok + static_cast<int64_t>(ids[r]) * cols;
    T* p = d_pos + (r % seq) * cols;
    for (int64_t c = 0; c < cols; ++c) {
      t[c] += g[c];
      p[c] += g[c];
    }
    if (d_type != nullptr) {
      T* ty = d_type + static_cast<int64_t>(type_ids[r]) * cols;
      for (int64_t c = 0; c < cols; ++c) ty[c] += g[c];
    }
  }
}

template void embedding_forward<float>(float*, const int32_t*, const int32_t*, const float*,
                                       const float*, const float*, int64_t, int64_t, int64_t,
                                       int64_t, int64_t, int64_t);
template void embedding_forward<double>(double*, const int32_t*, const int32_t*, const double*,
                                        const double*, const double*, int64_t, int64_t, int64_t,
                                        int64_t, int64_t, int64_t);
template void embedding_backward<float>(float*, float*, float*, const float*, const int32_t*,
                                        const int32_t*, int64_t, int64_t, int64_t);
template void embedding_backward<double>(double*, double*, double*, const double*,
                                         const int32_t*, const int32_t*, int64_t, int64_t,
                                         int64_t);

}  // namespace mics::cpu
