#pragma once
// Agreement on what each rank does alone: reading a file (its node may lack it, or hold
// another version of it) and resolving what must be the same everywhere. A rank that fails
// alone must not leave the others waiting for it in the next collective, and ranks that
// read different data must not train together. Collective over the world; built on
// sum_scalar, which every world communicator has.
#include <cstdint>
#include <exception>
#include <string>

#include "engine/comm/communicator.h"

namespace mics {

// Runs `work` on this rank. When it throws on any rank, every rank throws: the ranks it
// threw on their own exception, the others Error(elsewhere) ("another rank cannot ...;
// see its message").
template <class Error, class Work>
void agree_on_failure(Communicator& world, const std::string& elsewhere, Work&& work) {
  std::exception_ptr failure;
  try {
    work();
  } catch (...) {
    failure = std::current_exception();
  }
  if (world.sum_scalar(failure ? 1.0 : 0.0) == 0) return;
  if (failure) std::rethrow_exception(failure);
  throw Error(elsewhere);
}

// Rank 0's `value`, on every rank: two sums of 32-bit halves, exact in a double.
inline uint64_t rank0_value(Communicator& world, uint64_t value) {
  const bool root = world.rank() == 0;
  const double high = world.sum_scalar(root ? static_cast<double>(value >> 32) : 0.0);
  const double low = world.sum_scalar(root ? static_cast<double>(value & 0xFFFFFFFFu) : 0.0);
  return static_cast<uint64_t>(high) << 32 | static_cast<uint64_t>(low);
}

// Whether this rank's `value` differs from rank 0's, and on how many ranks it does.
struct Difference {
  bool here = false;
  int ranks = 0;  // the same on every rank
};
inline Difference difference_from_rank0(Communicator& world, uint64_t value) {
  const bool here = rank0_value(world, value) != value;
  return {here, static_cast<int>(world.sum_scalar(here ? 1.0 : 0.0))};
}

}  // namespace mics
