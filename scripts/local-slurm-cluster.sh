#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying profiles/slurm and for the tests.
#
#   scripts/local-slurm-cluster.sh start   # install slurm-wlm + munge if missing, start daemons
#   scripts/local-slurm-cluster.sh stop    # stop only the daemons this script started
#   scripts/local-slurm-cluster.sh status
#
# Needs root (Debian/Ubuntu: apt-get). The node advertises this machine's CPUs and memory and a
# generic resource gpu:1 with no device behind it, so jobs that ask for a GPU are scheduled;
# on such a node jobs run on the CPU (device: auto). Like a strictly configured site, the
# controller refuses at submission a job that no node of its partition can run
# (EnforcePartLimits=ALL) instead of leaving it PENDING forever. State lives in $JACREG_SLURM_DIR
# (default /tmp/jacreg-slurm); /etc/slurm/slurm.conf is written (a previous one is backed up).
set -euo pipefail

STATE_DIR=${JACREG_SLURM_DIR:-/tmp/jacreg-slurm}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
PIDS=$STATE_DIR/pids
PARTITION=${JACREG_SLURM_PARTITION:-debug}

log() { echo "[local-slurm] $*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        log "must run as root (it installs packages and starts slurmctld/slurmd)"; exit 1
    fi
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    # the CPUs this process may use; nproc alone would honour OMP_NUM_THREADS/OMP_THREAD_LIMIT
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    mkdir -p "$CONF_DIR" "$STATE_DIR"/{ctld,spool,log}
    if [ -f "$CONF" ] && ! grep -q "written by jacreg" "$CONF"; then
        cp "$CONF" "$CONF.jacreg-backup"
        log "backed up existing $CONF to $CONF.jacreg-backup"
    fi
    cat > "$CONF" <<CONF
# written by jacreg scripts/local-slurm-cluster.sh: a one-node test cluster
ClusterName=jacreg
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
SlurmdTimeout=60
EnforcePartLimits=ALL
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    cat > "$CONF_DIR/gres.conf" <<CONF
# written by jacreg: a generic gpu resource with no device (scheduling only)
NodeName=$host Name=gpu File=/dev/null
CONF
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged is already running
    fi
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
    else
        /usr/sbin/munged --force
    fi
    sleep 0.5
    pgrep -n -x munged >> "$PIDS"
}

start() {
    need_root
    install_packages
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        log "slurmctld/slurmd already running (pids: $(pgrep -x 'slurmctld|slurmd' | tr '\n' ' '));"
        log "stop that cluster first (scripts/local-slurm-cluster.sh stop with its JACREG_SLURM_DIR)"
        exit 1
    fi
    mkdir -p "$STATE_DIR"
    : > "$PIDS"
    write_config
    start_munge
    /usr/sbin/slurmctld -c
    /usr/sbin/slurmd -c
    for _ in $(seq 1 50); do
        [ -s "$STATE_DIR/slurmctld.pid" ] && [ -s "$STATE_DIR/slurmd.pid" ] && break
        sleep 0.2
    done
    cat "$STATE_DIR/slurmctld.pid" "$STATE_DIR/slurmd.pid" >> "$PIDS"
    for _ in $(seq 1 150); do
        state=$(sinfo -h -N -o %t 2>/dev/null | head -n1 || true)
        case "$state" in
            idle*) log "node $(hostname -s) is idle; partition $PARTITION ready"; return 0 ;;
            down*|drain*) scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.2
    done
    log "node did not become idle; see $STATE_DIR/log/"; exit 1
}

stop() {
    if [ ! -f "$PIDS" ]; then
        log "nothing to stop (no $PIDS)"; return 0
    fi
    while read -r pid; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done < "$PIDS"
    for _ in $(seq 1 50); do
        alive=0
        while read -r pid; do
            [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1
        done < "$PIDS"
        [ $alive -eq 0 ] && break
        sleep 0.1
    done
    rm -f "$PIDS"
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo && squeue ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
