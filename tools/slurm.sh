#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for running sweeps with hydra/launcher=slurm where no cluster exists.
#   tools/slurm.sh up     as root on Debian/Ubuntu: install munge + slurmctld + slurmd + slurmdbd + MariaDB (apt,
#                           only what is missing), write the configs, start the daemons, wait for the node to be idle
#   tools/slurm.sh down   stop what `up` started (by the pids in their pid files); the packages stay
# `up` is idempotent: on a cluster that answers it only says so. Logs: /var/log/slurm/, /var/log/munge/.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
NODE=$(hostname -s)
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

up_already() { sinfo -h -r -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

up() {
  if command -v sinfo >/dev/null && up_already; then
    echo "slurm is up: $(sinfo -h -o '%P %D node(s) %T')"
    return
  fi
  [ "$(id -u)" = 0 ] || { echo "error: run as root (it installs packages and starts daemons)" >&2; exit 1; }
  install
  configure
  start
  echo "slurm is up: $(sinfo -h -o '%P %D node(s) %T')"
}

install() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

configure() {
  # the node as slurmd sees it (CPUs, memory in MB), so that jobs are scheduled on what the machine has
  local cpus mem
  cpus=$(slurmd -C | grep -o 'CPUs=[0-9]*' | cut -d= -f2)
  mem=$(slurmd -C | grep -o 'RealMemory=[0-9]*' | cut -d= -f2)
  mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
  chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm
  cat >"$CONF" <<CONFIG
# written by tools/slurm.sh: one node on localhost (see slurm.conf(5))
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# processes tracked by their parent pid, tasks not bound: no cgroups, which a container may not delegate
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
# jobs are given CPUs and memory (not whole cores or nodes): 1-CPU jobs run side by side
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# sacct: jobs recorded by slurmdbd in MariaDB (Slurm 22.05 has no accounting_storage/filetxt any more), their
# steps' usage gathered from /proc
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONFIG
  cat >"$DBD_CONF" <<CONFIG
# written by tools/slurm.sh (see slurmdbd.conf(5))
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=slurm_acct_db
CONFIG
  chown slurm:slurm "$DBD_CONF"
  chmod 600 "$DBD_CONF"
}

running() {  # running PIDFILE NAME: the pid file names a live (not zombie) process called NAME, not a reused pid
  [ -f "$1" ] && [ "$(ps -o stat=,comm= -p "$(cat "$1" 2>/dev/null)" 2>/dev/null | awk '$1 !~ /^Z/ {print $2}')" = "$2" ]
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: retry COMMAND until it succeeds
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq "$seconds"); do "$@" >/dev/null 2>&1 && return; sleep 1; done
  echo "error: $what did not come up in ${seconds} s; see /var/log/slurm/ and /var/log/munge/" >&2
  exit 1
}

start() {
  mkdir -p /run/munge /run/mysqld
  chown munge:munge /run/munge
  chown mysql:mysql /run/mysqld
  running /run/munge/munged.pid munged || runuser -u munge -- /usr/sbin/munged
  wait_for 20 munged munge -n
  if ! running /run/mysqld/mysqld.pid mariadbd; then
    # mysqld_safe runs MariaDB (and restarts it should it die); from a subshell, so that it outlives this script
    (mysqld_safe --pid-file=/run/mysqld/mysqld.pid >/dev/null 2>&1 &)
  fi
  wait_for 60 MariaDB mysqladmin ping
  # the database slurmdbd keeps jobs in; the slurm user logs in over the local socket without a password
  mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  running /run/slurmdbd.pid slurmdbd || slurmdbd
  wait_for 30 slurmdbd sacctmgr -i list cluster
  # the cluster in the accounting database, once (jobs of an unknown cluster are not recorded)
  sacctmgr -n -P list cluster format=cluster | grep -qx local || sacctmgr -i add cluster local >/dev/null
  running /run/slurmctld.pid slurmctld || slurmctld
  running /run/slurmd.pid slurmd || slurmd
  wait_for 60 "the node (sinfo idle)" up_already
}

down() {
  if command -v scontrol >/dev/null && scontrol ping >/dev/null 2>&1; then
    scontrol shutdown >/dev/null  # slurmctld and the slurmd it knows
  fi
  # in this order: the Slurm daemons talk to munged (and slurmdbd to MariaDB) while they shut down
  local pidfile name
  while read -r pidfile name; do
    if running "$pidfile" "$name"; then kill "$(cat "$pidfile")"; fi
    for _ in $(seq 30); do running "$pidfile" "$name" || break; sleep 1; done
  done <<DAEMONS
/run/slurmd.pid slurmd
/run/slurmctld.pid slurmctld
/run/slurmdbd.pid slurmdbd
/run/mysqld/mysqld.pid mariadbd
/run/munge/munged.pid munged
DAEMONS
  echo "slurm is down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
