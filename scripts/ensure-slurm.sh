#!/usr/bin/env bash
# Make sure a single-node Slurm cluster runs on this machine (what the Slurm tests use).
#
# Installs Debian's slurm-wlm and munge when missing (root only), writes a slurm.conf for
# this host (partition "debug", scheduling intervals tuned low so tests stay quick, memory
# enforced through cgroup v1, or by the job accounting poller where cgroups are not
# writable), then starts munged, slurmctld and slurmd. Idempotent: a cluster that already answers and runs
# with this script's configuration is left alone (about 0.1 s).
#
# Environment: SLURM_CONF_DIR (default /etc/slurm), SLURM_PARTITION (default debug).
set -euo pipefail
trap 'echo "error: scripts/ensure-slurm.sh line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

conf_dir=${SLURM_CONF_DIR:-/etc/slurm}
partition=${SLURM_PARTITION:-debug}
conf="$conf_dir/slurm.conf"
host=$(hostname -s)

is_root() { [ "$(id -u)" = 0 ]; }
up() { sinfo -h -p "$partition" -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  if ! is_root; then
    echo "error: Slurm is not installed; run as root or: sudo apt-get install slurm-wlm munge" >&2
    exit 1
  fi
  echo "installing slurm-wlm and munge (Debian packages)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# The configuration this script owns; rewritten only when it differs.
cpus=$(nproc)
# Leave 10% of the memory to the system, as slurmd -C would report.
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
cgroup_ok=no
if [ -d /sys/fs/cgroup/memory ] && [ -w /sys/fs/cgroup/memory ]; then cgroup_ok=v1; fi
if [ "$cgroup_ok" = v1 ]; then
  proctrack=proctrack/cgroup
  task=task/cgroup,task/affinity
  gather=jobacct_gather/cgroup
  gather_params=NoOverMemoryKill
else
  proctrack=proctrack/linuxproc
  task=task/affinity
  gather=jobacct_gather/linux
  gather_params=OverMemoryKill
fi
want=$(
  cat <<EOF
# Written by scripts/ensure-slurm.sh: a single-node cluster for tests and small runs.
ClusterName=starrynight
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
ProctrackType=$proctrack
TaskPlugin=$task
# Memory is a consumable resource and a hard limit: the cgroup's when cgroup v1 is
# writable (a job over its --mem ends OUT_OF_MEMORY, checked by the tests), else the
# accounting poller kills it (not exercised here). Slurm refuses to run both at once.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=$gather
JobAcctGatherFrequency=task=1
JobAcctGatherParams=$gather_params
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Quick scheduling for tests: react within a second, keep finished jobs visible 10 min.
SchedulerType=sched/backfill
SchedulerParameters=defer_batch=0,sched_min_interval=100000,bf_interval=1
MessageTimeout=10
MinJobAge=600
KillWait=5
InactiveLimit=0
Waittime=0
# Retries requeue the same job (pipecraft keeps its id and its dependants).
JobRequeue=1
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)
want_cgroup=$(
  cat <<EOF
# Written by scripts/ensure-slurm.sh
CgroupPlugin=cgroup/v1
CgroupAutomount=yes
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
EOF
)

changed=no
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  if ! is_root; then
    echo "error: $conf is not this script's single-node configuration; run as root" >&2
    exit 1
  fi
  mkdir -p "$conf_dir"
  printf '%s\n' "$want" >"$conf.tmp" && mv "$conf.tmp" "$conf"
  changed=yes
fi
if [ "$cgroup_ok" = v1 ] && [ "$(cat "$conf_dir/cgroup.conf" 2>/dev/null)" != "$want_cgroup" ]; then
  printf '%s\n' "$want_cgroup" >"$conf_dir/cgroup.conf"
  changed=yes
fi

if [ "$changed" = no ] && up; then exit 0; fi
if ! is_root; then
  echo "error: the Slurm cluster is down and only root can start it" >&2
  exit 1
fi

mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
if ! pgrep -x munged >/dev/null; then
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  echo "error: munged does not answer (see /var/log/munge/munged.log)" >&2
  exit 1
fi

# A changed configuration needs both daemons restarted; stop them by their pid files.
stop() {
  local pidfile=$1
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")" 2>/dev/null || true  # it may have just exited
    for _ in $(seq 1 50); do kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
  fi
}
if [ "$changed" = yes ]; then
  stop /run/slurmd.pid
  stop /run/slurmctld.pid
fi
if ! { [ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; }; then
  /usr/sbin/slurmctld
fi
if ! { [ -s /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null; }; then
  /usr/sbin/slurmd
fi
for _ in $(seq 1 60); do
  if up; then exit 0; fi
  # A node that was down when the controller last saw it comes back on its own
  # (ReturnToService=2); one that is drained from an earlier crash is resumed here.
  if sinfo -h -n "$host" -o '%T' 2>/dev/null | grep -Eq '^(drain|drained|draining|down)'; then
    scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
  fi
  sleep 0.5
done
echo "error: Slurm did not come up within 30 s; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
