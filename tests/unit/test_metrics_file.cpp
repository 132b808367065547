// The --metrics file when its writes fail: whole lines only, and training is not stopped.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/metrics.h"

namespace {

// A file-size limit makes the writes past it fall short and then fail (EFBIG), as a full
// disk would, on any file system.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);  // the write returns an error instead
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &limit);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit saved_{};
  void (*old_handler_)(int) = nullptr;
};

TEST(MetricsFile, AWriteThatFailsLeavesOnlyWholeLinesAndStopsWriting) {
  const std::string path = (std::filesystem::temp_directory_path() / ("mics-metrics-" + std::to_string(getpid()) + ".jsonl")).string();
  std::filesystem::remove(path);
  mics::StepMetrics m;
  const size_t line_bytes = m.to_json().dump().size() + 1;
  {
    mics::MetricsFile file(path);
    // Room for two lines and a half: the third falls short, the fourth is not tried.
    FileSizeLimit limit(static_cast<rlim_t>(2 * line_bytes + line_bytes / 2));
    for (int step = 1; step <= 4; ++step) {
      m.step = step;
      EXPECT_NO_THROW(file.write(m)) << "step " << step;
    }
  }
  std::ifstream in(path);
  std::vector<int64_t> steps;
  for (std::string line; std::getline(in, line);) steps.push_back(nlohmann::json::parse(line).at("step"));
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(std::filesystem::file_size(path), 2 * line_bytes);  // ends with the second line's newline
  std::filesystem::remove(path);
}

}  // namespace
