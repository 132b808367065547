// The config parser: any bytes either parse into a Config or raise one ConfigError.
#include "engine/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto doc = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false, true);
  if (doc.is_discarded()) return 0;
  try {
    (void)mics::parse_config(doc, "fuzz.json", {"train.steps=3"}).to_json();
  } catch (const mics::ConfigError&) {
  }
  return 0;
}
