// The safetensors reader: any file is either read or refused with a SafetensorsError.
#include "engine/safetensors.h"
#include "tests/fuzz/fuzz_input_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz_input_file(data, size, "weights.safetensors");
  try {
    (void)mics::read_safetensors(path, {"lm_head.weight"});
  } catch (const mics::SafetensorsError&) {
  }
  return 0;
}
