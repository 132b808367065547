#pragma once
// The element-wise comparison every op test uses: |actual - expected| <= atol + rtol
// |expected| everywhere; on failure it names the worst entry. MICS_TOL_REPORT=1 prints each
// comparison's worst error as a fraction of its tolerance (the margin).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "tests/numerics/tolerance.h"

namespace mics {

inline void expect_close(const std::vector<double>& actual, const std::vector<double>& expected, tol::Tol t,
                         const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  size_t bad = 0, worst = 0;
  double worst_ratio = -1;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(actual[i] - expected[i]);
    const double allowed = t.atol + t.rtol * std::abs(expected[i]);
    const double ratio = std::isnan(err) ? std::numeric_limits<double>::infinity()
                                         : (allowed > 0 ? err / allowed : (err > 0 ? 1e300 : 0));
    if (!(err <= allowed)) ++bad;
    if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << actual.size() << " entries outside |x - ref| <= " << t.atol
                     << " + " << t.rtol << " |ref|; worst at index " << worst << ": got " << actual[worst]
                     << ", expected " << expected[worst] << " (" << worst_ratio << "x the tolerance)";
  if (std::getenv("MICS_TOL_REPORT") != nullptr)
    std::printf("  [tol] %-55s worst %.3g of tolerance\n", what.c_str(), worst_ratio);
}

}  // namespace mics
