// The llm.c token-shard reader: any file is either read or refused with a DataError.
#include "data/data_source.h"
#include "tests/fuzz/fuzz_input_file.h"

#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz_input_file(data, size, "shard.bin");
  try {
    mics::data::SourceOptions o;
    o.kind = "shards";
    o.path = path;
    o.window_len = 5;
    o.vocab_size = 70000;
    auto source = mics::data::make_token_source(o);
    std::vector<int32_t> window(5);
    for (int64_t i = 0; i < 3; ++i) source->window(i, window);
    (void)source->vocab_bound();
  } catch (const mics::data::DataError&) {
  }
  return 0;
}
