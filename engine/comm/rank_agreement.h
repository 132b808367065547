#pragma once
// Agreement on what each rank does alone: reading a file (its node may lack it, or hold
// another version of it) and resolving what must be the same everywhere. A rank that fails
// alone must not leave the others waiting for it in the next collective, and ranks that
// read different data must not train together. Collective over the world, whose first
// member is rank 0.
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

// Whether this rank's `value` differs from rank 0's, and on how many ranks it does.
struct Difference {
  bool here = false;
  int ranks = 0;  // the same on every rank
};
inline Difference difference_from_rank0(Communicator& world, uint64_t value) {
  const bool here = world.first_member_value(value) != value;
  return {here, static_cast<int>(world.sum_scalar(here ? 1.0 : 0.0))};
}

}  // namespace mics
