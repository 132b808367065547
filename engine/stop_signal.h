#pragma once
// Preemption: SIGTERM, SIGUSR1 and SIGINT (Slurm's --signal=USR1@T, its SIGTERM before a
// kill, Ctrl-C) only raise a flag. The training loop asks after every step whether any
// rank saw one; if so, every rank writes the checkpoint of that step and exits with
// kExitPreempted. A second signal of the same kind while stopping is left to its default
// (the process ends at once, without a checkpoint: exit 130 for SIGINT, 143 for SIGTERM, as
// a shell reports it; so does a signal before the handlers are installed, in MPI's start).
namespace mics {

inline constexpr int kExitPreempted = 3;

// `announce`: the handler says at once on stderr that the run stops after this step, and
// how to stop it sooner (rank 0's, so mpirun's forwarding does not print it N times).
void install_stop_handlers(bool announce);
// True once this process received one of the signals.
bool stop_signal_received();
// The signal's name for the log ("SIGTERM"), or "" when none arrived.
const char* stop_signal_name();

}  // namespace mics
