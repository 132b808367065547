#pragma once
// Compact numbers for start-up log lines ("1.2M tokens", "3.4 MB").
#include <cstdint>
#include <cstdio>
#include <string>

namespace mics::data {

// Decimal SI prefixes: human_count(1234) = "1.2k", human_count(1234, "B") = "1.2 kB".
inline std::string human_count(uint64_t n, const char* unit = "") {
  static constexpr const char* kPrefix[] = {"", "k", "M", "G", "T", "P"};
  double v = static_cast<double>(n);
  int p = 0;
  while (v >= 1000.0 && p < 5) {
    v /= 1000.0;
    ++p;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, p == 0 ? "%.0f%s%s%s" : "%.1f%s%s%s", v, *unit ? " " : "", kPrefix[p], unit);
  return buf;
}

}  // namespace mics::data
