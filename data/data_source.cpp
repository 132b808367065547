// make_token_source: validates the options common to every source and dispatches on kind.
#include <memory>
#include <string>

#include "data/byte_text.h"
#include "data/data_source.h"
#include "data/synthetic.h"
#include "data/token_shards.h"

namespace mics::data {

std::unique_ptr<TokenSource> make_token_source(const SourceOptions& opts) {
  if (opts.window_len <= 0) {
    throw DataError("data window length must be positive, got " + std::to_string(opts.window_len) + ".");
  }
  if (opts.kind == "synthetic") {
    return std::make_unique<SyntheticSource>(opts.window_len, opts.synthetic_vocab, opts.seed);
  }
  if (opts.kind == "text") {
    return std::make_unique<ByteTextSource>(opts.path, opts.window_len, opts.seed, opts.shuffle);
  }
  if (opts.kind == "shards") {
    return std::make_unique<TokenShardSource>(opts.path, opts.window_len, opts.seed, opts.shuffle);
  }
  throw DataError("unknown data kind '" + opts.kind + "' (expected synthetic, text or shards).");
}

}  // namespace mics::data
