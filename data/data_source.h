#pragma once
// Token sources. Every source answers "the window of tokens for global sample i"
// deterministically, so the same global batch is produced whatever the number of
// ranks or micro-steps it is split into.
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>

namespace mics::data {

// Bad or unreadable data: the message is one sentence naming the file.
struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class TokenSource {
 public:
  virtual ~TokenSource() = default;
  // Fills `out` with window_len consecutive tokens belonging to global sample `index`.
  // window_len = out.size() must be the value given at construction.
  virtual void window(int64_t index, std::span<int32_t> out) const = 0;
  // Tokens are in [0, vocab_bound()); checked against the model's vocabulary.
  virtual int32_t vocab_bound() const = 0;
  // Human-readable description for the start-up log ("text: 12 files, 1.2 MB").
  virtual std::string describe() const = 0;
  // The data as a checkpoint records it, in exact counts (files, bytes or tokens, windows)
  // and a fingerprint of the content (data/content_hash.h):
  // a resume on data of another identity reads other samples at the same positions.
  virtual std::string identity() const = 0;
  // Distinct windows before the order repeats (an epoch); 0: unbounded (synthetic).
  virtual int64_t num_windows() const = 0;
};

struct SourceOptions {
  std::string kind;      // "synthetic" | "text" | "shards"
  std::string path;      // file, directory or glob (text, shards)
  int window_len = 0;    // tokens per sample window
  int32_t vocab_size = 0;  // model vocabulary; synthetic draws from [0, synthetic_vocab)
  int32_t synthetic_vocab = 0;  // tokens drawn by the synthetic source (<= vocab_size)
  uint64_t seed = 0;
  bool shuffle = true;   // text/shards: order of windows is a seeded permutation per epoch
};

// Builds the source named by opts.kind; throws DataError naming the file on bad input.
std::unique_ptr<TokenSource> make_token_source(const SourceOptions& opts);

}  // namespace mics::data
