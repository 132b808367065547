#pragma once
// What the emulated-kernel tests put after (and before) their buffers to catch a write out
// of bounds: 0xa5 in every byte (a finite value in fp32, bf16 and fp16 alike, and none the
// tests produce), compared as bits.
#include <cstring>

namespace mics::emulation {

template <class E>
E guard_value() {
  E e;
  std::memset(&e, 0xa5, sizeof e);
  return e;
}

template <class E>
bool same_bits(const E& a, const E& b) {
  return std::memcmp(&a, &b, sizeof(E)) == 0;
}

}  // namespace mics::emulation
