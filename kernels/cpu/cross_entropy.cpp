// Softmax cross-entropy over the vocabulary, loss and gradient in one pass per row.
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/cpu/cpu_kernels.h"

namespace mics::cpu {

template <class T>
void cross_entropy(T* losses, T* d_logits, const T* logits, const int32_t* labels, int64_t rows,
                   int64_t vocab, double grad_scale) {
  for (int64_t r = 0; r < rows; ++r)
    if (labels[r] >= vocab)
      throw std::out_of_range("label " + std::to_string(labels[r]) + " outside the vocabulary");
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = logits + r * vocab;
    const int32_t label = labels[r];
    if (label < 0) {  // ignored position
      losses[r] = 0;
      if (d_logits != nullptr)
        for (int64_t v = 0; v < vocab; ++v) d_logits[r * vocab + v] = 0;
      continue;
    }
    double max = x[0];
    for (int64_t v = 1; v < vocab; ++v) max = std::max(max, static_cast<double>(x[v]));
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(x[v] - max);
    const double log_sum = max + std::log(sum);
    losses[r] = static_cast<T>(log_sum - x[label]);  // read before d_logits may overwrite x
    if (d_logits != nullptr) {
      T* d = d_logits + r * vocab;
      for (int64_t v = 0; v < vocab; ++v) {
        const double p = std::exp(x[v] - log_sum);
        d[v] = static_cast<T>(grad_scale * (p - (v == label ? 1.0 : 0.0)));
      }
    }
  }
}

template void cross_entropy<float>(float*, float*, const float*, const int32_t*, int64_t, int64_t,
                                   double);
template void cross_entropy<double>(double*, double*, const double*, const int32_t*, int64_t,
                                    int64_t, double);

}  // namespace mics::cpu
