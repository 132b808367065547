// The --metrics file: when its writes fail, whole lines only and training is not stopped;
// when a run resumes, one line per step.
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

std::vector<int64_t> steps_in(const std::string& path) {
  std::ifstream in(path);
  std::vector<int64_t> steps;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    steps.push_back(j.is_object() && j.contains("step") ? j["step"].get<int64_t>() : -1);
  }
  return steps;
}

// A run went to step 5 and wrote no checkpoint after step 3; its resume from step 3 trains
// steps 4 and 5 again. Lines that are not metrics (a user's note) are kept.
TEST(MetricsFile, AResumeDropsTheLinesOfTheStepsItTrainsAgain) {
  const std::string path = (std::filesystem::temp_directory_path() / ("mics-metrics-resume-" + std::to_string(getpid()) + ".jsonl")).string();
  std::filesystem::remove(path);
  mics::StepMetrics m;
  {
    mics::MetricsFile first_run(path);
    for (int step = 1; step <= 5; ++step) {
      m.step = step;
      first_run.write(m);
    }
  }
  { std::ofstream(path, std::ios::app) << "not json\n"; }
  mics::MetricsFile resumed(path);
  EXPECT_EQ(resumed.drop_steps_after(3), 2);
  for (int step = 4; step <= 6; ++step) {
    m.step = step;
    resumed.write(m);  // to the rewritten file, not the replaced one
  }
  EXPECT_EQ(steps_in(path), (std::vector<int64_t>{1, 2, 3, -1, 4, 5, 6}));
  EXPECT_EQ(resumed.drop_steps_after(6), 0);
  EXPECT_EQ(steps_in(path), (std::vector<int64_t>{1, 2, 3, -1, 4, 5, 6}));
  EXPECT_EQ(resumed.drop_steps_after(0), 6);  // a requeued job that starts over
  EXPECT_EQ(steps_in(path), (std::vector<int64_t>{-1}));
  std::filesystem::remove(path);
}

}  // namespace
