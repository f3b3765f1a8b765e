#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (CPU-only node), for tests of the SLURM profile.
#
#   scripts/local_slurm.sh start    install slurm-wlm + munge if missing (apt-get, needs root),
#                                   write the config, start munged/slurmctld/slurmd, wait until idle
#   scripts/local_slurm.sh status   exit 0 and print `sinfo` when the node is up, else exit 1
#   scripts/local_slurm.sh stop     stop the daemons by their PID files, remove state and the config link
#
# Everything lives under $LOCAL_SLURM_DIR (default /tmp/inference-eval-slurm). The config must also be
# reachable at /etc/slurm/slurm.conf: the Snakemake plugin's job-step helper drops SLURM_CONF from the
# job environment, so srun inside a job only finds the compiled-in default path. `start` links it there
# and refuses to replace a slurm.conf it did not create.
#
# No accounting daemon runs: `sacct` does not work, so Snakemake needs `--slurm-status-command squeue`
# (profiles/local-slurm sets it). Jobs stay visible to squeue for MinJobAge seconds after they end.
# Memory limits are enforced by polling (jobacct_gather/linux + OverMemoryKill, no cgroups needed),
# time limits with a short KillWait, so that tests see TIMEOUT and OUT_OF_MEMORY quickly.
set -euo pipefail

D="${LOCAL_SLURM_DIR:-/tmp/inference-eval-slurm}"
CONF="$D/etc/slurm.conf"
SYSTEM_CONF=/etc/slurm/slurm.conf
CLUSTER="${LOCAL_SLURM_CLUSTER:-inference-eval}"
PARTITION="${LOCAL_SLURM_PARTITION:-debug}"
CTLD_PORT="${LOCAL_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${LOCAL_SLURM_SLURMD_PORT:-6818}"
WAIT_S="${LOCAL_SLURM_WAIT_S:-60}"

log() { echo "local_slurm: $*" >&2; }
die() { log "error: $*"; exit "${2:-1}"; }

have_binaries() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
        && command -v munged >/dev/null && command -v mungekey >/dev/null
}

install_packages() {
    have_binaries && return 0
    [ "$(id -u)" = 0 ] || die "slurm-wlm/munge are not installed and installing them needs root (apt-get)" 3
    command -v apt-get >/dev/null || die "slurm-wlm/munge are not installed and apt-get is not available" 3
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends slurm-wlm munge >"$D/apt.log" 2>&1 \
        || { apt-get update -q >>"$D/apt.log" 2>&1 \
             && apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$D/apt.log" 2>&1; } \
        || die "apt-get install slurm-wlm munge failed (see $D/apt.log)" 3
    have_binaries || die "slurm-wlm/munge installed but slurmctld/slurmd/munged not on PATH" 3
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { SLURM_CONF="$CONF" sinfo -h -N -o '%t' 2>/dev/null | head -n1; }

write_config() {
    local host cpus mem_mb
    host="$(hostname -s)"
    cpus="$(nproc)"
    # ~90% of the memory available now, leaving room for the daemons and the login-side Snakemake
    mem_mb="$(awk '/MemAvailable/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
    mkdir -p "$D/etc" "$D/state" "$D/spool" "$D/run" "$D/log"
    cat >"$CONF" <<EOF
# Written by scripts/local_slurm.sh: a one-node test cluster, not for production.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket.2
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
KillWait=2
OverTimeLimit=0
MinJobAge=600
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=60
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

link_system_conf() {
    if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$CONF" ]; then
        return 0
    fi
    if [ -e "$SYSTEM_CONF" ] || [ -L "$SYSTEM_CONF" ]; then
        die "$SYSTEM_CONF exists and was not made by this script; refusing to replace it (a real SLURM config?)" 4
    fi
    [ -w /etc ] || die "cannot create $SYSTEM_CONF (needs root): jobs submitted by Snakemake would not find the config" 3
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -s "$CONF" "$SYSTEM_CONF"
}

start_munge() {
    pid_alive "$D/munge/munged.pid" && return 0
    mkdir -p "$D/munge"
    chmod 0755 "$D/munge"   # munged requires the socket directory to be searchable by all
    [ -s "$D/munge/munge.key" ] || mungekey -c -f -k "$D/munge/munge.key"
    chmod 0600 "$D/munge/munge.key"
    munged --key-file="$D/munge/munge.key" --socket="$D/munge/munge.socket.2" \
        --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" \
        --seed-file="$D/munge/munged.seed" \
        || die "munged did not start (see $D/munge/munged.log)"
}

start() {
    mkdir -p "$D"
    chmod 0755 "$D"
    install_packages
    if pid_alive "$D/run/slurmctld.pid" && pid_alive "$D/run/slurmd.pid" && [ "$(node_state)" = idle ]; then
        log "already running"; return 0
    fi
    write_config
    link_system_conf
    start_munge
    export SLURM_CONF="$CONF"
    pid_alive "$D/run/slurmctld.pid" || slurmctld || die "slurmctld did not start (see $D/log/slurmctld.log)"
    pid_alive "$D/run/slurmd.pid" || slurmd || die "slurmd did not start (see $D/log/slurmd.log)"
    local waited=0 state=""
    while [ "$waited" -lt "$WAIT_S" ]; do
        state="$(node_state)"
        case "$state" in
            idle) log "up: node $(hostname -s) idle in partition $PARTITION (config $CONF)"; return 0 ;;
            drain*|down*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
        waited=$((waited + 1))
    done
    die "node not idle after ${WAIT_S}s (state '${state:-none}'); see $D/log/slurmctld.log and $D/log/slurmd.log"
}

stop_pidfile() {
    local pidfile="$1" name="$2" pid i
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

stop() {
    # Jobs still running on the node are children of slurmstepd, which slurmd does not stop by itself.
    if pid_alive "$D/run/slurmctld.pid"; then
        SLURM_CONF="$CONF" scancel --full --quiet -u "$(id -un)" 2>/dev/null || true
    fi
    stop_pidfile "$D/run/slurmd.pid" slurmd
    stop_pidfile "$D/run/slurmctld.pid" slurmctld
    stop_pidfile "$D/munge/munged.pid" munged
    if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$CONF" ]; then
        rm -f "$SYSTEM_CONF"
        rmdir "$(dirname "$SYSTEM_CONF")" 2>/dev/null || true
    fi
    if [ -n "${LOCAL_SLURM_KEEP_LOGS:-}" ]; then
        rm -rf "$D/state" "$D/spool" "$D/run" "$D/munge"
    else
        rm -rf "$D"
    fi
    log "stopped"
}

status() {
    if pid_alive "$D/run/slurmctld.pid" && pid_alive "$D/run/slurmd.pid"; then
        SLURM_CONF="$CONF" sinfo
        [ "$(node_state)" = idle ] || [ "$(node_state)" = mix ] || [ "$(node_state)" = alloc ]
    else
        log "not running (no live daemons under $D)"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status   (state under \$LOCAL_SLURM_DIR, default $D)" >&2; exit 2 ;;
esac
