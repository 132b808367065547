#!/usr/bin/env bash
# A real Slurm on this one machine, for tests: slurmctld plus one slurmd per emulated node,
# each slurmd in its own UTS namespace (so every "node" has its own hostname and OpenMPI's
# shared-memory segments do not collide), trusted local auth (auth/none), PMIx launch.
#
#   scripts/slurm/local-cluster.sh up [NODES]   start (default 2 nodes, 2 CPUs each); writes $DIR/env.sh
#   scripts/slurm/local-cluster.sh down         stop what `up` started (by recorded PIDs) and remove $DIR
#
# MICS_SLURM_DIR (default /tmp/mics-slurm) and MICS_SLURM_PORT (default 6917) keep it apart
# from any other cluster. Root only; needs slurmctld, slurmd, slurm-client, libpmix-dev.
set -euo pipefail
exec </dev/null   # slurmd loses its log otherwise when started with stdin closed (as in CI)

dir=${MICS_SLURM_DIR:-/tmp/mics-slurm}
port=${MICS_SLURM_PORT:-6917}

die() { echo "local-cluster: $*" >&2; tail -n 20 "$dir"/log/*.log >&2 2>/dev/null || true; exit 1; }

down() {
  [[ -d $dir ]] || return 0
  export SLURM_CONF=$dir/etc/slurm.conf
  squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
  local pids=()
  for f in "$dir"/run/*.pid; do [[ -e $f ]] && pids+=("$(cat "$f")"); done
  ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}

up() {
  local nodes=${1:-2} cpus=2 host
  [[ $EUID -eq 0 ]] || die "must run as root"
  for b in slurmctld slurmd sinfo srun unshare; do command -v "$b" >/dev/null || die "$b is missing (scripts/setup.sh installs it)"; done
  down
  mkdir -p "$dir"/{etc,log,run,spool/ctld}
  for ((i = 1; i <= nodes; i++)); do mkdir -p "$dir/spool/n$i" "$dir/tmp/n$i"; done
  host=$(hostname -s)
  export SLURM_CONF=$dir/etc/slurm.conf
  {
    echo "ClusterName=micstest"
    echo "SlurmctldHost=$host(127.0.0.1)"
    echo "SlurmctldPort=$port"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/none"
    echo "CredType=cred/none"
    echo "MpiDefault=pmix"                      # Debian's OpenMPI direct-launches only through PMIx
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    echo "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0"
    echo "MailProg=/bin/true"
    echo "SlurmdParameters=config_overrides"
    echo "ReturnToService=2"
    echo "KillWait=5"
    echo "MinJobAge=30"
    echo "StateSaveLocation=$dir/spool/ctld"
    echo "SlurmdSpoolDir=$dir/spool/%n"
    echo "TmpFS=$dir/tmp/%n"                    # per node: PMIx names its directory without the node
    echo "SlurmctldPidFile=$dir/run/slurmctld.pid"
    echo "SlurmdPidFile=$dir/run/slurmd-%n.pid"
    echo "SlurmctldLogFile=$dir/log/slurmctld.log"
    echo "SlurmdLogFile=$dir/log/slurmd-%n.log"
    for ((i = 1; i <= nodes; i++)); do
      echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + i)) CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } > "$SLURM_CONF"
  slurmctld -i
  for ((i = 1; i <= nodes; i++)); do
    unshare --uts /bin/sh -c 'hostname "$1" && exec slurmd -N "$1"' sh "n$i"
  done
  local deadline=$((SECONDS + 30))
  until [[ $(sinfo -h -N -o %T 2>/dev/null | grep -c '^idle$') -eq $nodes ]]; do
    ((SECONDS < deadline)) || die "nodes did not become idle"
    sleep 0.2
  done
  cat > "$dir/env.sh" <<ENV
export SLURM_CONF=$SLURM_CONF
export SLURM_MPI_TYPE=pmix
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# the emulated nodes share the cores: waiting ranks must yield them
export OMPI_MCA_mpi_yield_when_idle=1
# traffic between the emulated nodes stays on loopback
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
ENV
  echo "local-cluster: $nodes nodes idle; source $dir/env.sh"
}

case "${1:-}" in
  up) up "${2:-2}" ;;
  down) down ;;
  *) echo "usage: $0 up [NODES] | down" >&2; exit 2 ;;
esac
