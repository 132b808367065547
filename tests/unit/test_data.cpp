// Tests of the data module: token sources, window order, batching and bad-input errors.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "data/batcher.h"
#include "data/byte_text.h"
#include "data/content_hash.h"
#include "data/data_source.h"
#include "data/synthetic.h"
#include "data/token_shards.h"
#include "data/window_order.h"

namespace mics::data {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("mics_test_data_" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Serialises an llm.c shard; the overrides produce the malformed variants.
struct ShardSpec {
  std::vector<uint16_t> tokens;
  int32_t magic = kShardMagic;
  int32_t version = kShardVersion;
  int64_t count = -1;  // header token count; -1: tokens.size()
};

std::string shard_bytes(const ShardSpec& spec) {
  std::vector<int32_t> header(kShardHeaderInts, 0);
  header[0] = spec.magic;
  header[1] = spec.version;
  header[2] = static_cast<int32_t>(spec.count >= 0 ? spec.count : static_cast<int64_t>(spec.tokens.size()));
  std::string out(reinterpret_cast<const char*>(header.data()), kShardHeaderBytes);
  out.append(reinterpret_cast<const char*>(spec.tokens.data()), spec.tokens.size() * sizeof(uint16_t));
  return out;
}

void write_shard(const std::string& path, const ShardSpec& spec) { write_bytes(path, shard_bytes(spec)); }

std::vector<int32_t> window_of(const TokenSource& src, int64_t index, int window_len) {
  std::vector<int32_t> w(static_cast<size_t>(window_len));
  src.window(index, w);
  return w;
}

std::vector<int32_t> iota_tokens(int32_t first, int32_t count) {
  std::vector<int32_t> v(static_cast<size_t>(count));
  for (int32_t i = 0; i < count; ++i) v[static_cast<size_t>(i)] = first + i;
  return v;
}

// Runs `f`, which must throw DataError, and returns its message.
template <class F>
std::string data_error(F&& f) {
  try {
    f();
  } catch (const DataError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected DataError";
  return {};
}

#define EXPECT_MENTIONS(message, name) \
  EXPECT_NE((message).find(name), std::string::npos) << "message: " << (message) << "\nexpected to name: " << (name)

// --- synthetic -------------------------------------------------------------------------

TEST(SyntheticSource, DeterministicPerSeedAndIndex) {
  SyntheticSource a(64, 1000, 7), b(64, 1000, 7);
  for (int64_t i : {0, 1, 99, 123456789}) EXPECT_EQ(window_of(a, i, 64), window_of(b, i, 64));
  EXPECT_NE(window_of(a, 0, 64), window_of(a, 1, 64));
}

TEST(SyntheticSource, SeedChangesTokens) {
  SyntheticSource a(64, 1000, 7), b(64, 1000, 8);
  EXPECT_NE(window_of(a, 3, 64), window_of(b, 3, 64));
}

TEST(SyntheticSource, TokensCoverTheVocabRange) {
  constexpr int32_t kVocab = 50;
  SyntheticSource src(128, kVocab, 1);
  EXPECT_EQ(src.vocab_bound(), kVocab);
  std::vector<int> hits(kVocab, 0);
  for (int64_t i = 0; i < 100; ++i) {
    for (int32_t t : window_of(src, i, 128)) {
      ASSERT_GE(t, 0);
      ASSERT_LT(t, kVocab);
      ++hits[static_cast<size_t>(t)];
    }
  }
  // 12800 draws over 50 values: each value expected 256 times.
  for (int h : hits) EXPECT_GT(h, 150);
}

// --- window order ----------------------------------------------------------------------

TEST(WindowOrder, ShuffleIsAPermutationPerEpoch) {
  for (int64_t n : {1, 2, 3, 4, 5, 16, 17, 1000, 4097}) {
    WindowOrder order(n, 42, true);
    std::vector<int64_t> epoch0, epoch1;
    for (int64_t i = 0; i < n; ++i) epoch0.push_back(order.window_of(i));
    for (int64_t i = n; i < 2 * n; ++i) epoch1.push_back(order.window_of(i));
    for (auto* epoch : {&epoch0, &epoch1}) {
      std::vector<int64_t> sorted = *epoch;
      std::sort(sorted.begin(), sorted.end());
      for (int64_t k = 0; k < n; ++k) ASSERT_EQ(sorted[static_cast<size_t>(k)], k) << "n=" << n;
    }
    if (n >= 16) {
      EXPECT_NE(epoch0, epoch1) << "n=" << n;
      std::vector<int64_t> identity(static_cast<size_t>(n));
      for (int64_t k = 0; k < n; ++k) identity[static_cast<size_t>(k)] = k;
      EXPECT_NE(epoch0, identity) << "n=" << n;
    }
  }
}

TEST(WindowOrder, NoShuffleIsSequential) {
  WindowOrder order(7, 42, false);
  for (int64_t i = 0; i < 30; ++i) EXPECT_EQ(order.window_of(i), i % 7);
}

TEST(WindowOrder, SeedChangesOrder) {
  WindowOrder a(1000, 1, true), b(1000, 2, true);
  int same = 0;
  for (int64_t i = 0; i < 1000; ++i) same += a.window_of(i) == b.window_of(i);
  EXPECT_LT(same, 20);
}

// --- byte-level text -------------------------------------------------------------------

TEST(ByteTextSource, ReadsAFileAsBytes) {
  TempDir dir;
  const std::string file = dir / "t.txt";
  write_bytes(file, std::string("hello, world\xff", 13));
  ByteTextSource src(file, 4, 0, false);
  EXPECT_EQ(src.vocab_bound(), 256);
  EXPECT_EQ(src.num_windows(), 3);  // the final odd byte does not make a window
  EXPECT_EQ(window_of(src, 0, 4), (std::vector<int32_t>{'h', 'e', 'l', 'l'}));
  EXPECT_EQ(window_of(src, 2, 4), (std::vector<int32_t>{'o', 'r', 'l', 'd'}));
  EXPECT_EQ(window_of(src, 3, 4), window_of(src, 0, 4));  // epoch 2 starts over
  EXPECT_NE(src.describe().find("1 files"), std::string::npos) << src.describe();
}

TEST(ByteTextSource, HighBytesAreNonNegativeTokens) {
  TempDir dir;
  write_bytes(dir / "t.bin", std::string("\x80\xff", 2));
  ByteTextSource src(dir / "t.bin", 2, 0, false);
  EXPECT_EQ(window_of(src, 0, 2), (std::vector<int32_t>{128, 255}));
}

TEST(ByteTextSource, DirectoryIsReadRecursivelyInSortedOrderSkippingEmptyFiles) {
  TempDir dir;
  write_bytes(dir / "d/sub/c.txt", "efgh");
  write_bytes(dir / "d/b.txt", "");
  write_bytes(dir / "d/a.txt", "abcd");
  ByteTextSource src(dir / "d", 2, 0, false);
  EXPECT_EQ(src.num_windows(), 4);
  std::string stream;
  for (int64_t i = 0; i < 4; ++i) {
    for (int32_t t : window_of(src, i, 2)) stream += static_cast<char>(t);
  }
  EXPECT_EQ(stream, "abcdefgh");
}

TEST(ByteTextSource, GlobSelectsMatchingFiles) {
  TempDir dir;
  write_bytes(dir / "a.txt", "ab");
  write_bytes(dir / "b.md", "XX");
  write_bytes(dir / "c.txt", "cd");
  ByteTextSource src(dir / "*.txt", 4, 0, false);
  EXPECT_EQ(src.num_windows(), 1);
  EXPECT_EQ(window_of(src, 0, 4), (std::vector<int32_t>{'a', 'b', 'c', 'd'}));
}

TEST(ByteTextSource, ShuffleVisitsEveryWindowOncePerEpoch) {
  TempDir dir;
  constexpr int kWindows = 50, kLen = 3;
  std::string bytes;
  for (int k = 0; k < kWindows; ++k) bytes.append(kLen, static_cast<char>(k));  // window k is (k, k, k)
  write_bytes(dir / "t", bytes);
  ByteTextSource shuffled(dir / "t", kLen, 9, true), ordered(dir / "t", kLen, 9, false);
  std::vector<int32_t> epoch0, epoch1;
  for (int64_t i = 0; i < 2 * kWindows; ++i) {
    const std::vector<int32_t> w = window_of(shuffled, i, kLen);
    EXPECT_EQ(w, std::vector<int32_t>(kLen, w[0]));  // windows stay aligned
    (i < kWindows ? epoch0 : epoch1).push_back(w[0]);
    EXPECT_EQ(window_of(ordered, i, kLen)[0], i % kWindows);
  }
  EXPECT_EQ(std::set<int32_t>(epoch0.begin(), epoch0.end()).size(), size_t{kWindows});
  EXPECT_EQ(std::set<int32_t>(epoch1.begin(), epoch1.end()).size(), size_t{kWindows});
  EXPECT_NE(epoch0, epoch1);
}

TEST(ByteTextSource, ReadsSystemLicenseTexts) {
  const std::string licenses = "/usr/share/common-licenses";
  if (!fs::is_directory(licenses)) GTEST_SKIP() << licenses << " is not present";
  ByteTextSource src(licenses, 1025, 3, true);
  EXPECT_GT(src.num_windows(), 10);
  const std::vector<int32_t> w = window_of(src, 5, 1025);
  for (int32_t t : w) {
    ASSERT_GE(t, 0);
    ASSERT_LT(t, 256);
  }
  ByteTextSource again(licenses, 1025, 3, true);
  EXPECT_EQ(window_of(again, 5, 1025), w);
}

// --- content fingerprint ---------------------------------------------------------------

std::string content_hex(const std::string& bytes, size_t piece) {
  mics::data::ContentHash h;
  for (size_t at = 0; at < bytes.size(); at += piece) h.add(bytes.data() + at, std::min(piece, bytes.size() - at));
  return h.hex();
}

TEST(ContentHash, TheValueDoesNotDependOnHowTheStreamIsCut) {
  std::string bytes;
  for (int i = 0; i < 1000; ++i) bytes += static_cast<char>(i * 7 + 3);
  for (size_t piece : {1, 3, 8, 13, 64, 1000}) EXPECT_EQ(content_hex(bytes, piece), content_hex(bytes, 1000)) << piece;
}

TEST(ContentHash, EveryOneByteEditAndEveryLengthDiffers) {
  std::string bytes(67, 'a');
  std::set<std::string> seen = {content_hex(bytes, 67)};
  for (size_t at = 0; at < bytes.size(); ++at) {
    std::string edited = bytes;
    edited[at] = 'b';
    EXPECT_TRUE(seen.insert(content_hex(edited, 5)).second) << "edit at byte " << at;
  }
  // A zero-padded last word against real zeros: the length tells them apart.
  for (size_t n = 1; n <= 16; ++n) EXPECT_TRUE(seen.insert(content_hex(std::string(n, '\0'), 16)).second) << n;
}

// --- token shards ----------------------------------------------------------------------

TEST(TokenShardSource, RoundTripsTokensExactly) {
  TempDir dir;
  const std::vector<uint16_t> tokens = {0, 1, 65535, 50256, 7, 8, 9, 10};
  write_shard(dir / "s.bin", {tokens});
  TokenShardSource src(dir / "s.bin", 4, 0, false);
  EXPECT_EQ(src.num_tokens(), 8);
  EXPECT_EQ(src.num_windows(), 2);
  EXPECT_EQ(window_of(src, 0, 4), (std::vector<int32_t>{0, 1, 65535, 50256}));
  EXPECT_EQ(window_of(src, 1, 4), (std::vector<int32_t>{7, 8, 9, 10}));
  EXPECT_EQ(src.vocab_bound(), 65536);
}

TEST(TokenShardSource, WindowsSpanShardBoundaries) {
  TempDir dir;
  std::vector<uint16_t> first, second;
  for (uint16_t t = 0; t < 10; ++t) first.push_back(t);
  for (uint16_t t = 10; t < 25; ++t) second.push_back(t);
  write_shard(dir / "shards/b.bin", {second});  // written first: order must come from names
  write_shard(dir / "shards/a.bin", {first});
  write_bytes(dir / "shards/README.txt", "not a shard");
  TokenShardSource src(dir / "shards", 4, 0, false);
  EXPECT_EQ(src.num_tokens(), 25);
  ASSERT_EQ(src.num_windows(), 6);
  for (int32_t k = 0; k < 6; ++k) EXPECT_EQ(window_of(src, k, 4), iota_tokens(4 * k, 4)) << "window " << k;
  EXPECT_NE(src.describe().find("2 files"), std::string::npos) << src.describe();
}

TEST(TokenShardSource, VocabBoundIsMaxTokenPlusOneOverAllShards) {
  TempDir dir;
  write_shard(dir / "a.bin", {{3, 1, 4, 1, 5}});
  write_shard(dir / "b.bin", {{9, 2, 6, 5, 3}});
  EXPECT_EQ(TokenShardSource(dir / "*.bin", 2, 0, true).vocab_bound(), 10);
  EXPECT_EQ(TokenShardSource(dir / "a.bin", 2, 0, true).vocab_bound(), 6);
}

TEST(TokenShardSource, ShuffledWindowsArePermutedWholeWindows) {
  TempDir dir;
  std::vector<uint16_t> tokens;
  for (uint16_t t = 0; t < 400; ++t) tokens.push_back(t);
  write_shard(dir / "s.bin", {tokens});
  TokenShardSource src(dir / "s.bin", 8, 5, true);
  std::set<int32_t> starts;
  for (int64_t i = 0; i < 50; ++i) {
    const std::vector<int32_t> w = window_of(src, i, 8);
    ASSERT_EQ(w[0] % 8, 0);
    EXPECT_EQ(w, iota_tokens(w[0], 8));
    starts.insert(w[0]);
  }
  EXPECT_EQ(starts.size(), 50u);
}

// Windows longer than one read (2048 tokens) that straddle shards: every token in place.
TEST(TokenShardSource, LongWindowsAreReadInPiecesAcrossShards) {
  TempDir dir;
  std::vector<uint16_t> first, second;
  for (int t = 0; t < 3000; ++t) first.push_back(static_cast<uint16_t>(t));
  for (int t = 3000; t < 12000; ++t) second.push_back(static_cast<uint16_t>(t));
  write_shard(dir / "a.bin", {first});
  write_shard(dir / "b.bin", {second});
  TokenShardSource src(dir / "*.bin", 5000, 0, false);
  ASSERT_EQ(src.num_windows(), 2);
  EXPECT_EQ(window_of(src, 0, 5000), iota_tokens(0, 5000));
  EXPECT_EQ(window_of(src, 1, 5000), iota_tokens(5000, 5000));
  EXPECT_EQ(src.vocab_bound(), 12000);
}

// --- make_token_source -----------------------------------------------------------------

TEST(MakeTokenSource, DispatchesOnKind) {
  TempDir dir;
  write_bytes(dir / "t.txt", "abcdefgh");
  write_shard(dir / "s.bin", {{1, 2, 3, 4}});
  SourceOptions opts;
  opts.window_len = 4;
  opts.kind = "synthetic";
  opts.synthetic_vocab = 17;
  EXPECT_EQ(make_token_source(opts)->vocab_bound(), 17);
  opts.kind = "text";
  opts.path = dir / "t.txt";
  EXPECT_EQ(make_token_source(opts)->vocab_bound(), 256);
  opts.kind = "shards";
  opts.path = dir / "s.bin";
  EXPECT_EQ(make_token_source(opts)->vocab_bound(), 5);
}

TEST(MakeTokenSource, RejectsBadOptions) {
  SourceOptions opts;
  opts.kind = "parquet";
  opts.window_len = 4;
  EXPECT_MENTIONS(data_error([&] { make_token_source(opts); }), "parquet");
  opts.kind = "synthetic";
  EXPECT_MENTIONS(data_error([&] { make_token_source(opts); }), "synthetic_vocab");
  opts.synthetic_vocab = 10;
  opts.window_len = 0;
  EXPECT_MENTIONS(data_error([&] { make_token_source(opts); }), "window length");
}

// --- bad data files --------------------------------------------------------------------

TEST(BadData, MissingPath) {
  TempDir dir;
  const std::string path = dir / "nope.txt";
  EXPECT_MENTIONS(data_error([&] { ByteTextSource(path, 4, 0, true); }), path);
  EXPECT_MENTIONS(data_error([&] { TokenShardSource(path, 4, 0, true); }), path);
}

// A fifo would block the read forever, a device (/dev/zero) never end it.
TEST(BadData, PathThatIsNotARegularFile) {
  TempDir dir;
  const std::string fifo = dir / "fifo.bin";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const std::string& path : {fifo, std::string("/dev/zero")}) {
    EXPECT_MENTIONS(data_error([&] { ByteTextSource(path, 4, 0, true); }), path + "' is not a regular file");
    EXPECT_MENTIONS(data_error([&] { TokenShardSource(path, 4, 0, true); }), path + "' is not a regular file");
  }
  EXPECT_MENTIONS(data_error([&] { TokenShardSource(dir / "*.bin", 4, 0, true); }), "matches '" + fifo + "', which is not a regular file");
}

TEST(BadData, GlobWithNoMatch) {
  TempDir dir;
  const std::string pattern = dir / "*.nothing";
  EXPECT_MENTIONS(data_error([&] { ByteTextSource(pattern, 4, 0, true); }), pattern);
  EXPECT_MENTIONS(data_error([&] { TokenShardSource(pattern, 4, 0, true); }), pattern);
}

TEST(BadData, DirectoryWithoutShards) {
  TempDir dir;
  write_bytes(dir / "d/notes.txt", "x");
  EXPECT_MENTIONS(data_error([&] { TokenShardSource(dir / "d", 4, 0, true); }), dir / "d");
}

TEST(BadData, EmptyTextFile) {
  TempDir dir;
  const std::string file = dir / "empty.txt";
  write_bytes(file, "");
  EXPECT_MENTIONS(data_error([&] { ByteTextSource(file, 4, 0, true); }), file);
}

TEST(BadData, DirectoryOfEmptyTextFiles) {
  TempDir dir;
  write_bytes(dir / "d/a.txt", "");
  write_bytes(dir / "d/b.txt", "");
  const std::string message = data_error([&] { ByteTextSource(dir / "d", 4, 0, true); });
  EXPECT_MENTIONS(message, dir / "d");
  EXPECT_MENTIONS(message, "empty");
}

TEST(BadData, TextShorterThanOneWindow) {
  TempDir dir;
  const std::string file = dir / "short.txt";
  write_bytes(file, "abc");
  const std::string message = data_error([&] { ByteTextSource(file, 4, 0, true); });
  EXPECT_MENTIONS(message, file);
  EXPECT_MENTIONS(message, "3 tokens");
  EXPECT_MENTIONS(message, "4 needed");
}

TEST(BadData, ShardWithTruncatedHeader) {
  TempDir dir;
  const std::string file = dir / "short.bin";
  write_bytes(file, shard_bytes({{1, 2, 3}}).substr(0, 100));
  const std::string message = data_error([&] { TokenShardSource(file, 2, 0, true); });
  EXPECT_MENTIONS(message, file);
  EXPECT_MENTIONS(message, "truncated header");
}

TEST(BadData, ShardWithWrongMagic) {
  TempDir dir;
  const std::string file = dir / "magic.bin";
  write_shard(file, {.tokens = {1, 2, 3}, .magic = 20240801});
  const std::string message = data_error([&] { TokenShardSource(file, 2, 0, true); });
  EXPECT_MENTIONS(message, file);
  EXPECT_MENTIONS(message, "expected 20240520, found 20240801");
}

TEST(BadData, ShardWithWrongVersion) {
  TempDir dir;
  const std::string file = dir / "version.bin";
  write_shard(file, {.tokens = {1, 2, 3}, .version = 2});
  const std::string message = data_error([&] { TokenShardSource(file, 2, 0, true); });
  EXPECT_MENTIONS(message, file);
  EXPECT_MENTIONS(message, "version 2");
}

TEST(BadData, ShardWithTruncatedTokens) {
  TempDir dir;
  const std::string file = dir / "cut.bin";
  write_shard(file, {.tokens = {1, 2, 3}, .count = 5});
  const std::string message = data_error([&] { TokenShardSource(file, 2, 0, true); });
  EXPECT_MENTIONS(message, file);
  EXPECT_MENTIONS(message, "truncated tokens");
  EXPECT_MENTIONS(message, "1034 bytes");
  EXPECT_MENTIONS(message, "1030 bytes");
}

TEST(BadData, ShardWithTrailingBytes) {
  TempDir dir;
  const std::string file = dir / "long.bin";
  write_bytes(file, shard_bytes({{1, 2, 3}}) + "x");
  const std::string message = data_error([&] { TokenShardSource(file, 2, 0, true); });
  EXPECT_MENTIONS(message, file);
  EXPECT_MENTIONS(message, "trailing bytes");
}

// A shard truncated during the run (rewritten in place): the window that reads past its new
// end is a DataError naming it, not a SIGBUS from a mapping.
TEST(BadData, ShardTruncatedAfterOpening) {
  TempDir dir;
  const std::string file = dir / "s.bin";
  std::vector<uint16_t> tokens;
  for (uint16_t t = 0; t < 64; ++t) tokens.push_back(t);
  write_shard(file, {tokens});
  TokenShardSource src(file, 8, 0, false);
  std::filesystem::resize_file(file, kShardHeaderBytes + 2 * 32);  // 4 of 8 windows left
  EXPECT_EQ(window_of(src, 3, 8), iota_tokens(24, 8));
  const std::string message = data_error([&] { window_of(src, 4, 8); });
  EXPECT_MENTIONS(message, file);
  EXPECT_MENTIONS(message, "is now 1088 bytes, but it had 1152 bytes");
  EXPECT_MENTIONS(message, "truncated or rewritten during the run");
}

TEST(BadData, ShardWithZeroTokens) {
  TempDir dir;
  const std::string file = dir / "zero.bin";
  write_shard(file, {});
  const std::string message = data_error([&] { TokenShardSource(file, 2, 0, true); });
  EXPECT_MENTIONS(message, file);
  EXPECT_MENTIONS(message, "zero tokens");
}

TEST(BadData, BadShardAmongGoodOnesIsNamed) {
  TempDir dir;
  write_shard(dir / "d/a.bin", {{1, 2, 3}});
  write_shard(dir / "d/b.bin", {.tokens = {1, 2, 3}, .version = 7});
  EXPECT_MENTIONS(data_error([&] { TokenShardSource(dir / "d", 2, 0, true); }), dir / "d/b.bin");
}

TEST(BadData, ShardsShorterThanOneWindow) {
  TempDir dir;
  write_shard(dir / "s.bin", {{1, 2, 3}});
  const std::string message = data_error([&] { TokenShardSource(dir / "s.bin", 4, 0, true); });
  EXPECT_MENTIONS(message, dir / "s.bin");
  EXPECT_MENTIONS(message, "3 tokens");
}

// --- batcher ---------------------------------------------------------------------------

BatcherOptions causal(int b, int t) {
  BatcherOptions o;
  o.objective = Objective::causal_lm;
  o.micro_batch = b;
  o.seq_len = t;
  return o;
}

constexpr int32_t kVocab = 1000;

BatcherOptions masked(int b, int t, uint64_t seed = 11) {
  BatcherOptions o;
  o.objective = Objective::masked_lm;
  o.micro_batch = b;
  o.seq_len = t;
  o.mask_token = kVocab;  // outside the synthetic range, so masked positions are recognisable
  o.random_token_bound = kVocab;
  o.seed = seed;
  return o;
}

TEST(Batcher, WindowLength) {
  EXPECT_EQ(Batcher::window_len(Objective::causal_lm, 128), 129);
  EXPECT_EQ(Batcher::window_len(Objective::masked_lm, 128), 128);
}

TEST(Batcher, CausalLabelsAreInputsShiftedByOne) {
  constexpr int B = 3, T = 16;
  SyntheticSource src(Batcher::window_len(Objective::causal_lm, T), kVocab, 5);
  Batcher batcher(src, causal(B, T));
  Batch batch;
  batcher.fill(40, batch);
  EXPECT_EQ(batch.batch_size, B);
  EXPECT_EQ(batch.seq_len, T);
  EXPECT_EQ(batch.first_sample, 40);
  ASSERT_EQ(batch.tokens.size(), size_t{B * T});
  ASSERT_EQ(batch.labels.size(), size_t{B * T});
  for (int s = 0; s < B; ++s) {
    const std::vector<int32_t> w = window_of(src, 40 + s, T + 1);
    for (int p = 0; p < T; ++p) {
      EXPECT_EQ(batch.tokens[static_cast<size_t>(s * T + p)], w[static_cast<size_t>(p)]);
      EXPECT_EQ(batch.labels[static_cast<size_t>(s * T + p)], w[static_cast<size_t>(p + 1)]);
    }
  }
}

TEST(Batcher, RefillReusesStorage) {
  for (Objective objective : {Objective::causal_lm, Objective::masked_lm}) {
    SyntheticSource src(Batcher::window_len(objective, 32), kVocab, 5);
    Batcher batcher(src, objective == Objective::causal_lm ? causal(4, 32) : masked(4, 32));
    Batch batch;
    batcher.fill(0, batch);
    const int32_t* tokens = batch.tokens.data();
    const int32_t* labels = batch.labels.data();
    for (int64_t step = 1; step < 5; ++step) {
      batcher.fill(step * 4, batch);
      EXPECT_EQ(batch.tokens.data(), tokens);
      EXPECT_EQ(batch.labels.data(), labels);
    }
  }
}

TEST(Batcher, SplittingAMicroBatchGivesTheSameSamples) {
  for (Objective objective : {Objective::causal_lm, Objective::masked_lm}) {
    constexpr int T = 24;
    SyntheticSource src(Batcher::window_len(objective, T), kVocab, 5);
    auto opts = [&](int b) { return objective == Objective::causal_lm ? causal(b, T) : masked(b, T); };
    Batch whole, half0, half1;
    Batcher(src, opts(4)).fill(8, whole);
    Batcher(src, opts(2)).fill(8, half0);
    Batcher(src, opts(2)).fill(10, half1);
    std::vector<int32_t> tokens = half0.tokens, labels = half0.labels;
    tokens.insert(tokens.end(), half1.tokens.begin(), half1.tokens.end());
    labels.insert(labels.end(), half1.labels.begin(), half1.labels.end());
    EXPECT_EQ(whole.tokens, tokens);
    EXPECT_EQ(whole.labels, labels);
  }
}

TEST(Batcher, MaskedLmSelectsFifteenPercentSplit80_10_10) {
  constexpr int B = 8, T = 128, kBatches = 100;  // 102400 positions
  SyntheticSource src(T, kVocab, 5);
  Batcher batcher(src, masked(B, T));
  Batch batch;
  int64_t positions = 0, selected = 0, masked_count = 0, random_count = 0, kept = 0;
  for (int64_t b = 0; b < kBatches; ++b) {
    batcher.fill(b * B, batch);
    for (int s = 0; s < B; ++s) {
      const std::vector<int32_t> original = window_of(src, b * B + s, T);
      for (int p = 0; p < T; ++p) {
        const size_t i = static_cast<size_t>(s * T + p);
        const int32_t token = batch.tokens[i], label = batch.labels[i], orig = original[static_cast<size_t>(p)];
        ++positions;
        if (label == kIgnoreLabel) {
          ASSERT_EQ(token, orig) << "unselected positions are left alone";
          continue;
        }
        ++selected;
        ASSERT_EQ(label, orig) << "selected positions predict the original token";
        ASSERT_GE(token, 0);
        ASSERT_LE(token, kVocab);
        if (token == kVocab) {
          ++masked_count;
        } else if (token != orig) {
          ++random_count;
        } else {
          ++kept;  // includes the rare random draw equal to the original
        }
      }
    }
  }
  const double rate = static_cast<double>(selected) / static_cast<double>(positions);
  EXPECT_GT(rate, 0.13);
  EXPECT_LT(rate, 0.17);
  const auto share = [&](int64_t n) { return static_cast<double>(n) / static_cast<double>(selected); };
  EXPECT_NEAR(share(masked_count), 0.8, 0.03);
  EXPECT_NEAR(share(random_count), 0.1, 0.02);
  EXPECT_NEAR(share(kept), 0.1, 0.02);
}

TEST(Batcher, MaskedLmIsDeterministicAndSeeded) {
  constexpr int B = 4, T = 64;
  SyntheticSource src(T, kVocab, 5);
  Batch a, b, c;
  Batcher(src, masked(B, T, 1)).fill(100, a);
  Batcher(src, masked(B, T, 1)).fill(100, b);
  Batcher(src, masked(B, T, 2)).fill(100, c);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_NE(a.labels, c.labels);
}

TEST(Batcher, MaskedLmLabelsAtLeastOnePositionPerSample) {
  constexpr int B = 64, T = 16;
  SyntheticSource src(T, kVocab, 5);
  BatcherOptions opts = masked(B, T);
  opts.mask_prob = 1e-9;  // essentially never selects: the fallback must
  Batch batch;
  Batcher(src, opts).fill(0, batch);
  std::set<int> positions;
  for (int s = 0; s < B; ++s) {
    int labelled = 0;
    for (int p = 0; p < T; ++p) {
      if (batch.labels[static_cast<size_t>(s * T + p)] != kIgnoreLabel) {
        ++labelled;
        positions.insert(p);
      }
    }
    EXPECT_EQ(labelled, 1) << "sample " << s;
  }
  EXPECT_GT(positions.size(), 4u) << "fallback positions should vary between samples";
}

TEST(Batcher, RejectsBadOptions) {
  SyntheticSource src(8, kVocab, 5);
  EXPECT_THROW(Batcher(src, causal(0, 8)), std::invalid_argument);
  BatcherOptions opts = masked(2, 8);
  opts.mask_prob = 0;
  EXPECT_THROW(Batcher(src, opts), std::invalid_argument);
  opts = masked(2, 8);
  opts.random_token_bound = 0;
  EXPECT_THROW(Batcher(src, opts), std::invalid_argument);
}

}  // namespace
}  // namespace mics::data
