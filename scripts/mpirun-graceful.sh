#!/usr/bin/env bash
# mpirun with a graceful Ctrl-C. The first SIGINT, SIGTERM or SIGHUP becomes SIGUSR1 to
# mpirun, which forwards it to every rank: each checkpoints the same step and the job exits
# 3, as when preempted. A second one passes SIGINT to mpirun, which kills the ranks at once.
#
# Why a wrapper: mpirun (Open MPI 4) answers SIGINT and SIGTERM by killing the ranks, with
# SIGCONT, then SIGTERM and SIGKILL odls_base_sigkill_timeout (1 s) apart, and exits 1;
# raising that timeout delays the SIGTERM by as much. SIGUSR1 it forwards untouched.
#
# Usage: scripts/mpirun-graceful.sh [mpirun arguments...]    (MPIRUN=... names the binary)
set -u
mpirun_bin=${MPIRUN:-mpirun}

# A session of its own, so the terminal's Ctrl-C reaches this script and not mpirun; stdin
# from /dev/null, since a process outside the terminal's foreground group must not read it.
setsid "$mpirun_bin" "$@" < /dev/null &
pid=$!

stops=0
on_stop() {
  stops=$((stops + 1))
  if ((stops == 1)); then
    echo "mpirun-graceful: $1: every rank checkpoints its current step and stops (repeat to kill at once)" >&2
    kill -USR1 "$pid" 2>/dev/null
  else
    kill -INT "$pid" 2>/dev/null
  fi
}
trap 'on_stop SIGINT' INT
trap 'on_stop SIGTERM' TERM
trap 'on_stop SIGHUP' HUP

# wait returns early when a trapped signal arrives; wait again until mpirun has exited.
while :; do
  wait "$pid"
  rc=$?
  kill -0 "$pid" 2>/dev/null || break
done
exit "$rc"
