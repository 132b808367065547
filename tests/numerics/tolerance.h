#pragma once
// Tolerances for comparing a backend op with its float64 reference: an entry passes when
// |x - ref| <= atol + rtol * |ref|. One table per dtype; each test scales atol by the
// error growth of its op and the magnitude of the values it combines, so that entries
// near zero after cancellation are judged against the size of what cancelled.
#include <algorithm>

namespace mics::tol {

struct Tol {
  double rtol;
  double atol;
};

template <class T> struct Precision;
template <> struct Precision<float> {
  static constexpr double u = 0x1p-24;  // unit roundoff, 6.0e-8
  // ~170 u: covers the handful of roundings of one output plus the op's growth factor
  // for the sizes used here, yet 10x below any error a wrong formula would produce.
  static constexpr double rtol = 1e-5;
};
template <> struct Precision<double> {
  static constexpr double u = 0x1p-53;  // 1.1e-16
  static constexpr double rtol = 1e-12;  // ~9000 u: same reasoning, the reference is fp64 too
};

// Forward vs. reference: growth is the op's rounding-error growth (e.g. sqrt(K) for a
// K-term dot product: independent roundings add like a random walk) times a safety
// factor, scale the magnitude of the summed terms.
template <class T> Tol forward(double growth, double scale) {
  return {Precision<T>::rtol, growth * Precision<T>::u * scale};
}

// Central finite differences of the fp64 reference, step h = 1e-6 (relative): truncation
// h^2 f'''/6 ~ 1e-13 and cancellation u64 |L| / h ~ 1e-10 |L| leave the FD gradient good
// to ~1e-9 of its scale; 1e-6 keeps a margin and still flags any wrong formula (O(1)).
inline constexpr double kFdRel = 1e-6;
inline constexpr double kFdStep = 1e-6;

// Backward vs. FD: the FD error, plus the backend's own rounding (which dominates in fp32).
template <class T> Tol gradient(double growth, double scale) {
  return {std::max(Precision<T>::rtol, kFdRel), (growth * Precision<T>::u + kFdRel) * scale};
}

}  // namespace mics::tol
