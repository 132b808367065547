#include "engine/stop_signal.h"

#include <unistd.h>

#include <csignal>
#include <initializer_list>

namespace mics {

namespace {
volatile std::sig_atomic_t g_signal = 0;  // the handler's only channel: a signal handler needs a global
volatile std::sig_atomic_t g_announce = 0;

// What the handler writes (write(2) is async-signal-safe; formatting is not, so the lines
// are whole). Without it a user sees nothing until the step ends (a BERT 10B step takes
// half a minute) and may send the second signal that kills the run without a checkpoint.
template <size_t N>
void say(const char (&line)[N]) {
  (void)!::write(STDERR_FILENO, line, N - 1);
}

extern "C" void on_stop_signal(int sig) {
  g_signal = sig;
  std::signal(sig, SIG_DFL);  // a second one acts at once
  if (!g_announce) return;
  switch (sig) {
    case SIGTERM: say("mics-train: SIGTERM received"); break;
    case SIGUSR1: say("mics-train: SIGUSR1 received"); break;
    case SIGINT: say("\nmics-train: SIGINT received"); break;
    default: break;
  }
  say(": stopping after this step (checkpoint, then exit 3); send it again to stop at once, without a "
      "checkpoint\n");
}
}  // namespace

void install_stop_handlers(bool announce) {
  g_announce = announce;
  for (int sig : {SIGTERM, SIGUSR1, SIGINT}) std::signal(sig, on_stop_signal);
}

bool stop_signal_received() { return g_signal != 0; }

const char* stop_signal_name() {
  switch (g_signal) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGINT: return "SIGINT";
    default: return "";
  }
}

}  // namespace mics
