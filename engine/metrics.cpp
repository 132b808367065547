#include "engine/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "engine/replace_file.h"

namespace mics {

nlohmann::json StepMetrics::to_json() const {
  // Bytes sent by this rank per group kind, collective and link tier; received is the
  // same total (ring algorithms), and the flat keys count sent + received.
  nlohmann::json sent;
  for (int k = 0; k < 2; ++k)
    for (int o = 0; o < 3; ++o)
      for (int t = 0; t < 2; ++t)
        sent[name(static_cast<GroupKind>(k))][name(static_cast<CollectiveOp>(o))]
            [name(static_cast<LinkTier>(t))] = comm.sent[k][o][t];
  return {{"step", step},
          {"loss", loss},
          {"lr", lr},
          {"grad_norm", grad_norm},
          {"step_time_s", step_time_s},
          {"samples_per_s", samples_per_s},
          {"tokens_per_s", tokens_per_s},
          {"tflops_per_device", tflops_per_device},
          {"elapsed_s", elapsed_s},
          {"skipped", skipped},
          {"skipped_steps", skipped_steps},
          {"loss_scale", loss_scale},
          {"optimizer_wait_s", optimizer_wait_s},
          {"comm_bytes_intra_node", comm.bytes(LinkTier::intra_node)},
          {"comm_bytes_inter_node", comm.bytes(LinkTier::inter_node)},
          {"comm_bytes_partition", comm.bytes(GroupKind::partition)},
          {"comm_bytes_replication", comm.bytes(GroupKind::replication)},
          {"comm_wait_s", comm.wait_s},
          {"comm_sent", sent},
          {"model_state_bytes", model_state_bytes}};
}

std::string StepMetrics::progress_line() const {
  char buf[320], wait[64] = "";
  if (optimizer_wait_measured) std::snprintf(wait, sizeof wait, " | optimizer wait %.2f ms", 1e3 * optimizer_wait_s);
  const int width = static_cast<int>(std::to_string(total_steps).size());
  std::snprintf(buf, sizeof buf,
                "step %*lld/%lld | loss %.4f | lr %.3e | grad-norm %.3f | %.1f samples/s | "
                "%.0f tokens/s | %.3f TFLOP/s/device%s | %s elapsed, ETA %s%s",
                width, static_cast<long long>(step), static_cast<long long>(total_steps), loss, lr,
                grad_norm, samples_per_s, tokens_per_s, tflops_per_device, wait,
                format_duration(elapsed_s).c_str(), format_duration(eta_s).c_str(),
                skipped ? " | SKIPPED (non-finite gradients)" : "");
  return buf;
}

MetricsFile::MetricsFile(const std::string& path)
    : path_(path), fd_(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) {
  if (fd_ < 0)
    throw std::runtime_error("cannot open '" + path + "' for appending (" + std::strerror(errno) +
                             "; does its directory exist?).");
}

MetricsFile::~MetricsFile() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsFile::write(const StepMetrics& m) {
  if (fd_ < 0) return;
  const std::string line = m.to_json().dump() + '\n';
  // One write(2) per line, so a reader never sees half of one unless the write itself fell
  // short; then the file is cut back to where the line began.
  const off_t before = ::lseek(fd_, 0, SEEK_END);
  size_t done = 0;
  int error = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error = n < 0 ? errno : ENOSPC;
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (error == 0) return;
  if (done > 0 && before >= 0) (void)!::ftruncate(fd_, before);
  spdlog::warn("writing the metrics file '{}' failed at step {} ({}); training goes on, without further metrics lines",
               path_, m.step, std::strerror(error));
  ::close(fd_);
  fd_ = -1;
}

int64_t MetricsFile::drop_steps_after(int64_t step) {
  if (fd_ < 0) return 0;
  std::ifstream in(path_, std::ios::binary);
  std::string kept, line;
  int64_t dropped = 0, first = 0, last = 0;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > step) {
      const int64_t s = j["step"].get<int64_t>();
      first = dropped == 0 ? s : std::min(first, s);
      last = dropped == 0 ? s : std::max(last, s);
      ++dropped;
      continue;
    }
    kept += line + '\n';
  }
  if (in.bad()) {
    spdlog::warn("cannot read the metrics file '{}' back to drop the steps after {}; lines of those steps may repeat",
                 path_, step);
    return 0;
  }
  if (dropped == 0) return 0;
  try {
    write_file_replacing(path_, [&](std::ostream& out) { out << kept; });
  } catch (const std::exception& e) {
    spdlog::warn("{}: the metrics lines of steps after {} are kept, and those steps will have two", e.what(), step);
    return 0;
  }
  // The open descriptor still names the replaced file: appends go to the new one.
  ::close(fd_);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd_ < 0)
    spdlog::warn("cannot reopen the metrics file '{}' ({}); training goes on, without further metrics lines", path_,
                 std::strerror(errno));
  spdlog::info("metrics file {}: dropped {} line{} of steps {}..{}, which this run trains again", path_, dropped,
               dropped == 1 ? "" : "s", first, last);
  return dropped;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long long s = std::llround(seconds);
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%llds", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
  return buf;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

}  // namespace mics
