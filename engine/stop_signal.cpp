#include "engine/stop_signal.h"

#include <csignal>
#include <initializer_list>

namespace mics {

namespace {
volatile std::sig_atomic_t g_signal = 0;  // the only global: a signal handler needs one

extern "C" void on_stop_signal(int sig) {
  g_signal = sig;
  std::signal(sig, SIG_DFL);  // a second one acts at once
}
}  // namespace

void install_stop_handlers() {
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
