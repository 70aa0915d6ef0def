#!/usr/bin/env bash
# Jetson power mode (nvpmodel) and clocks (jetson_clocks) for running and benchmarking edgemm.
#
# A power mode caps CPU cores, CPU/GPU/memory clocks and so the board's power (e.g. 15W, 25W, MAXN).
# jetson_clocks pins the clocks at the mode's maximum: latency then stops depending on how long the GPU
# was idle, which is what a benchmark needs (trtexec figures assume it too). Both need root.
#
#   power.sh status              current mode and clocks
#   power.sh list                the modes this board has (ID and name, from nvpmodel.conf)
#   power.sh mode ID|NAME        switch mode (some switches ask to reboot: nvpmodel prompts)
#   power.sh max                 highest mode (MAXN*), then pin the clocks
#   power.sh lock                pin the clocks (saves the current settings first)
#   power.sh unlock              restore the clocks saved by lock
#   power.sh bench ARGS...       lock, run `edgemm bench ARGS...`, then unlock (also on failure); after
#                                max or lock the clocks stay as those left them
#
# Run `power.sh bench` as yourself, not with sudo: only the clock commands need root (they use sudo), and
# under sudo neither your PATH (the edgemm venv) nor EDGEMM would reach edgemm.
#
# Environment: NVPMODEL_CONF (default /etc/nvpmodel.conf), EDGEMM_CLOCKS_STATE (where lock saves the clocks,
# default /var/lib/edgemm/jetson_clocks.conf), EDGEMM (the edgemm command, default: edgemm on PATH, else
# /opt/edgemm/venv/bin/edgemm where install.sh put it).
set -euo pipefail

NVPMODEL_CONF=${NVPMODEL_CONF:-/etc/nvpmodel.conf}
STATE=${EDGEMM_CLOCKS_STATE:-/var/lib/edgemm/jetson_clocks.conf}
EDGEMM=${EDGEMM:-$(command -v edgemm || echo /opt/edgemm/venv/bin/edgemm)}

die() { printf 'power.sh: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found: this is not a Jetson (JetPack provides it)"
}

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# "ID NAME" per line, from the "< POWER_MODEL ID=<int> NAME=<string> >" blocks of nvpmodel.conf.
list_modes() {
    [[ -r $NVPMODEL_CONF ]] || die "$NVPMODEL_CONF not found (set NVPMODEL_CONF)"
    sed -n 's/^[[:space:]]*<[[:space:]]*POWER_MODEL[[:space:]]\{1,\}ID=\([0-9]\{1,\}\)[[:space:]]\{1,\}NAME=\([^[:space:]>]\{1,\}\).*/\1 \2/p' \
        "$NVPMODEL_CONF"
}

default_mode() {
    sed -n 's/^[[:space:]]*<[[:space:]]*PM_CONFIG[[:space:]]\{1,\}DEFAULT=\([0-9]\{1,\}\).*/\1/p' "$NVPMODEL_CONF"
}

# A mode ID from an ID or a name (case-insensitive).
mode_id() {
    local want=$1 id name
    while read -r id name; do
        if [[ $want == "$id" || ${want,,} == "${name,,}" ]]; then
            echo "$id"
            return 0
        fi
    done < <(list_modes)
    die "no power mode '$want' in $NVPMODEL_CONF; see: power.sh list"
}

# The highest mode: the last MAXN* name (MAXN_SUPER after MAXN on Orin Nano/NX super), else ID 0.
max_mode() {
    local id name best=""
    while read -r id name; do
        if [[ ${name^^} == MAXN* ]]; then best=$id; fi
    done < <(list_modes)
    echo "${best:-0}"
}

# Save the current clocks to $STATE: what unlock (or bench) goes back to.
save_clocks() {
    as_root mkdir -p "$(dirname "$STATE")"
    as_root jetson_clocks --store "$STATE"
}

lock_clocks() {
    need jetson_clocks
    # Saved already (an earlier lock or max): that is the state to go back to, not the pinned one.
    if [[ ! -e $STATE ]]; then
        save_clocks
    fi
    as_root jetson_clocks
}

unlock_clocks() {
    need jetson_clocks
    [[ -e $STATE ]] || die "no saved clocks at $STATE (run power.sh lock first)"
    as_root jetson_clocks --restore "$STATE"
    as_root rm -f "$STATE"
}

cmd=${1:-status}
[[ $# -gt 0 ]] && shift
case $cmd in
    status)
        need nvpmodel
        as_root nvpmodel -q
        if command -v jetson_clocks >/dev/null 2>&1; then as_root jetson_clocks --show; fi
        ;;
    list)
        default=$(default_mode)
        while read -r id name; do
            printf '%s\t%s%s\n' "$id" "$name" "$([[ $id == "$default" ]] && echo ' (default)')"
        done < <(list_modes)
        ;;
    mode)
        [[ $# -eq 1 ]] || die "usage: power.sh mode ID|NAME"
        id=$(mode_id "$1")
        need nvpmodel
        as_root nvpmodel -m "$id"
        ;;
    max)
        id=$(max_mode)
        need nvpmodel
        as_root nvpmodel -m "$id"
        lock_clocks
        ;;
    lock) lock_clocks ;;
    unlock) unlock_clocks ;;
    bench)
        [[ $# -ge 1 ]] || die "usage: power.sh bench MODEL [edgemm bench options]"
        # Before the clocks change: an edgemm that is not there must not leave them pinned.
        command -v "$EDGEMM" >/dev/null 2>&1 || die "edgemm not found at '$EDGEMM' (set EDGEMM=/path/to/edgemm)"
        need jetson_clocks
        # Restore afterwards only what this bench saved: after `power.sh max` or `lock` the clocks stay
        # pinned, and their saved state stays for `power.sh unlock`.
        if [[ -e $STATE ]]; then
            echo "power.sh: clocks already pinned by power.sh max/lock; they stay pinned (power.sh unlock)" >&2
        else
            save_clocks
            trap unlock_clocks EXIT
        fi
        as_root jetson_clocks
        "$EDGEMM" bench "$@"
        ;;
    -h|--help|help) usage ;;
    *) usage >&2; die "unknown command: $cmd" ;;
esac
