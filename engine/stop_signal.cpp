#include "engine/stop_signal.h"

#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <initializer_list>

namespace mics {

namespace {
volatile std::sig_atomic_t g_signal = 0;  // the handler's only channel: a signal handler needs a global
volatile std::sig_atomic_t g_announce = 0;

// What the handler writes: one whole line per signal, precomposed (write(2) is
// async-signal-safe; formatting is not). Without it a user sees nothing until the step ends
// (a BERT 10B step takes half a minute) and may send the second signal that kills the run
// without a checkpoint.
#define MICS_STOP_LINE(name)                                                                      \
  "mics-train: " name " received: stopping after this step (with its checkpoint where "           \
  "checkpoint.dir is set); send it again to stop at once, without one\n"
constexpr char kTermLine[] = MICS_STOP_LINE("SIGTERM");
constexpr char kUsr1Line[] = MICS_STOP_LINE("SIGUSR1");
constexpr char kIntLine[] = "\n" MICS_STOP_LINE("SIGINT");  // after the terminal's ^C
#undef MICS_STOP_LINE

template <size_t N>
void say(const char (&line)[N]) {
  (void)!::write(STDERR_FILENO, line, N - 1);
}

extern "C" void on_stop_signal(int sig) {
  const int saved_errno = errno;  // the interrupted code may be about to read it
  g_signal = sig;
  std::signal(sig, SIG_DFL);  // a second one acts at once
  if (g_announce) {
    if (sig == SIGTERM) say(kTermLine);
    if (sig == SIGUSR1) say(kUsr1Line);
    if (sig == SIGINT) say(kIntLine);
  }
  errno = saved_errno;
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
