#!/usr/bin/env bash
# A single-node SLURM cluster on this host, for the tests of `hydra/launcher=slurm` (tests/test_slurm.py):
# munged, slurmctld and slurmd from Debian's packages (slurm-wlm, munge), no accounting database, one partition
# `debug` holding this host with its CPUs and memory. Idempotent: a cluster that answers is left as it is.
#
#   sudo bash scripts/start_slurm.sh          # installs the packages first when they are missing (apt-get)
#   bash scripts/start_slurm.sh --stop        # stop the daemons it started
#
# Needs root (the daemons run as root here, as on a test machine; a real cluster is set up by its admins).
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/spool/slurm-test
LOG_DIR=/var/log/slurm-test

stop() {
    for daemon in slurmd slurmctld; do
        [ -f "/run/$daemon-test.pid" ] && kill "$(cat "/run/$daemon-test.pid")" 2>/dev/null || true
        rm -f "/run/$daemon-test.pid"
    done
}

if [ "${1:-}" = "--stop" ]; then
    stop
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "start_slurm: run as root (it installs packages and starts munged, slurmctld and slurmd)" >&2
    exit 1
fi
if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "start_slurm: a SLURM cluster already answers: $(sinfo -h -o '%P %D %T' | tr '\n' ' ')"
    exit 0
fi
started=$(date +%s.%N)

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "start_slurm: installing slurm-wlm and munge (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: the key the package made (or a new one), then the daemon as its own user
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0755 /run/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
fi

# slurm.conf: this host as the one node, its CPUs and memory as slurmd measures them
host=$(hostname -s)
node=$(slurmd -C | head -1 | sed 's/ UpTime=.*//')
mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$STATE_DIR/d" "$LOG_DIR"
cat > "$CONF_DIR/slurm.conf" <<EOF
# Written by scripts/start_slurm.sh: a one-node test cluster without accounting.
ClusterName=unlearn-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=/run/slurmctld-test.pid
SlurmdPidFile=/run/slurmd-test.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
MinJobAge=300
MessageTimeout=30
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF

stop
slurmctld -i
slurmd
for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        printf 'start_slurm: partition debug up on %s in %.1f s\n' "$host" "$(echo "$(date +%s.%N) - $started" | bc)"
        exit 0
    fi
    sleep 0.5
done
echo "start_slurm: the node did not come up; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log" >&2
sinfo >&2 || true
exit 1
