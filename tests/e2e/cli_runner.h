#pragma once
// Runs the mics-train binary as a user would and captures what it prints.
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <sys/wait.h>
#include <vector>

#include <nlohmann/json.hpp>

namespace mics::test {

struct CliResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

inline CliResult run_cli_command(const std::string& cmd) {
  CliResult r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

inline CliResult run_cli(const std::string& args) {
  return run_cli_command(std::string(MICS_TRAIN_BIN) + " " + args + " 2>&1");
}

// The same under mpirun with `ranks` processes oversubscribing the cores: one thread
// each, idle ranks yielding, root allowed (CI runs as root).
inline CliResult run_mpi(int ranks, const std::string& args) {
  return run_cli_command("OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " +
                         std::string(MICS_MPIRUN) + " --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -np " +
                         std::to_string(ranks) + " " + MICS_TRAIN_BIN + " " + args + " 2>&1");
}

inline std::string source_path(const std::string& relative) {
  return std::string(MICS_SOURCE_DIR) + "/" + relative;
}

// A fresh directory under the system temp dir, removed with the object.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    path_ = std::filesystem::temp_directory_path() /
            ("mics-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(file(name), std::ios::binary) << text;
    return file(name);
  }

 private:
  static int& counter() {
    static int c = 0;
    return c;
  }
  std::filesystem::path path_;
};

// The JSON lines of a --metrics file.
inline std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

// The loss of every row of a --metrics file.
inline std::vector<double> read_losses(const std::string& path) {
  std::vector<double> out;
  for (const auto& row : read_metrics(path)) out.push_back(row.at("loss").get<double>());
  return out;
}

}  // namespace mics::test
