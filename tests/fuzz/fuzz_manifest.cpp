// The checkpoint manifest reader (and the shard reading it drives): any manifest is either
// read or refused with a CheckpointError or ConfigError.
#include "engine/checkpoint_format.h"
#include "tests/fuzz/fuzz_input_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz_input_file(data, size, "manifest.json");
  try {
    (void)mics::read_checkpoint_weights(path.substr(0, path.rfind('/')));
  } catch (const mics::CheckpointError&) {
  } catch (const mics::ConfigError&) {
  }
  return 0;
}
