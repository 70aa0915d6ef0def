#!/usr/bin/env bash
# Install edgemm on an NVIDIA Jetson running JetPack 6.1+ (L4T R36.4) or JetPack 7 (L4T R38/R39).
#
# What it does, and why:
#   * TensorRT comes from JetPack (apt: python3-libnvinfer): `pip install tensorrt` does not work on JetPack 6.
#   * edgemm goes into a venv made with --system-site-packages, so it sees JetPack's TensorRT and OpenCV.
#   * JetPack's OpenCV is built with GStreamer (CSI cameras, hardware decode); PyPI's opencv wheels are not and
#     would shadow it. So edgemm is installed with --no-deps, its other dependencies from
#     deploy/jetson/requirements-jetson.txt, under a pip constraints file that forbids every opencv wheel: if
#     anything pulls one in, pip stops with ResolutionImpossible instead of silently shadowing cv2.
#   * NumPy stays < 2: JetPack's OpenCV is compiled against NumPy 1.x.
#   * cuda-python is pinned to the CUDA minor version JetPack installed (12.6 on JetPack 6, 13.0 on 7.0/7.1,
#     13.2 on 7.2): its bindings carry their own CUDA runtime, and a newer one than the driver's fails.
#   * The systemd unit (deploy/jetson/edgemm.service) and /etc/edgemm/run.json are installed, not enabled.
#   * The service user gets video and audio, and render where that group exists: on JetPack 6 (Ubuntu 22.04)
#     CUDA as a non-root user needs /dev/dri/renderD* too. The GPU check at the end runs as that user, since
#     root sees every device and would hide a missing group.
#
# Usage: sudo deploy/jetson/install.sh [options]      (--dry-run prints the plan; no root needed)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="$(cd "$HERE/../.." && pwd)"
PREFIX=/opt/edgemm
JETPACK=auto
TEGRA_RELEASE=/etc/nv_tegra_release
SYSTEM_OPENCV=auto
SERVICE=1
APT=1
DRY_RUN=0
EXTRAS=""
ORT_INDEX=""
CUDA=auto
SERVICE_USER=edgemm
RENDER_GROUP=auto

usage() {
    cat <<'EOF'
Install edgemm on a Jetson (JetPack 6.1+ or 7).

  sudo deploy/jetson/install.sh [options]

Options:
  --prefix DIR           install root (default /opt/edgemm; the venv is DIR/venv)
  --source DIR|WHEEL     edgemm to install (default: this checkout)
  --jetpack 6|7          JetPack major version (default: from /etc/nv_tegra_release; needed in containers)
  --cuda X.Y             CUDA version for cuda-python (default: /usr/local/cuda/version.json, else by JetPack)
  --tegra-release FILE   read the L4T release from FILE instead of /etc/nv_tegra_release
  --system-opencv yes|no keep JetPack's GStreamer-enabled OpenCV (default: yes when python3 can import cv2)
  --extras LIST          optional extras, comma separated: mqtt, live (metrics, RTSP out)
  --ort-index URL        extra pip index with a Jetson onnxruntime-gpu build (default: CPU onnxruntime from PyPI)
  --no-apt               do not install apt packages (they are already there)
  --no-service           do not install the systemd unit, user and /etc/edgemm
  --render-group yes|no  add the service user to 'render' (default: when the group exists; JetPack 6+
                         needs it for CUDA as a non-root user)
  --dry-run              print what would be done and change nothing
  -h, --help             this help
EOF
}

log() { printf 'edgemm-install: %s\n' "$*" >&2; }
die() { printf 'edgemm-install: error: %s\n' "$*" >&2; exit 1; }

# Run a command, or print it (shell-quoted) in --dry-run mode.
run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Write stdin to a file, or print it in --dry-run mode.
write_file() {
    local path=$1
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+ write %s:\n' "$path"
        sed 's/^/    /'
    else
        cat >"$path"
    fi
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --source) SOURCE=${2:?--source needs a path}; shift 2 ;;
        --jetpack) JETPACK=${2:?--jetpack needs 6 or 7}; shift 2 ;;
        --cuda) CUDA=${2:?--cuda needs a version like 12.6}; shift 2 ;;
        --tegra-release) TEGRA_RELEASE=${2:?--tegra-release needs a file}; shift 2 ;;
        --system-opencv) SYSTEM_OPENCV=${2:?--system-opencv needs yes or no}; shift 2 ;;
        --extras) EXTRAS=${2:?--extras needs a list}; shift 2 ;;
        --ort-index) ORT_INDEX=${2:?--ort-index needs a URL}; shift 2 ;;
        --no-apt) APT=0; shift ;;
        --no-service) SERVICE=0; shift ;;
        --render-group) RENDER_GROUP=${2:?--render-group needs yes or no}; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

# --- Which JetPack -------------------------------------------------------------------------------
# /etc/nv_tegra_release starts with e.g. "# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, ...".
if [[ $JETPACK == auto ]]; then
    [[ -r $TEGRA_RELEASE ]] || die "$TEGRA_RELEASE not found: not a Jetson (inside a container pass --jetpack 6 or 7)"
    line=$(head -n 1 "$TEGRA_RELEASE")
    re='R([0-9]+) \(release\), REVISION: ([0-9]+)\.([0-9]+)'
    [[ $line =~ $re ]] || die "cannot read the L4T release from $TEGRA_RELEASE: '$line'"
    l4t_major=${BASH_REMATCH[1]}
    l4t_rev=${BASH_REMATCH[2]}
    case $l4t_major in
        35) die "L4T R35 is JetPack 5 with TensorRT 8.5; edgemm needs TensorRT 10: flash JetPack 6.1+ or 7" ;;
        36)
            if [[ $l4t_rev -lt 4 ]]; then
                die "L4T R36.$l4t_rev is JetPack 6.0 with TensorRT 8.6; edgemm needs TensorRT 10: upgrade to JetPack 6.1+ (R36.4)"
            fi
            JETPACK=6 ;;
        38|39) JETPACK=7 ;;
        *) die "L4T R$l4t_major is not a JetPack this script knows (6.1+: R36.4, 7: R38/R39)" ;;
    esac
    log "L4T R$l4t_major.$l4t_rev: JetPack $JETPACK"
fi
case $JETPACK in
    6) default_cuda=12.6 ;;
    7) if [[ ${l4t_major:-38} -ge 39 ]]; then default_cuda=13.2; else default_cuda=13.0; fi ;;
    *) die "--jetpack must be 6 or 7, not '$JETPACK'" ;;
esac

# --- Which CUDA (cuda-python must not be newer than the driver's CUDA) ----------------------------
if [[ $CUDA == auto ]]; then
    CUDA=$default_cuda
    if [[ -r /usr/local/cuda/version.json ]]; then
        CUDA=$(python3 -c 'import json, sys; v = json.load(open(sys.argv[1]))["cuda"]["version"]; print(".".join(v.split(".")[:2]))' \
            /usr/local/cuda/version.json) || die "cannot read /usr/local/cuda/version.json (pass --cuda X.Y)"
    fi
fi
[[ $CUDA =~ ^([0-9]+)\.([0-9]+)$ ]] || die "--cuda must look like 12.6, not '$CUDA'"
CUDA_PYTHON="cuda-python>=$CUDA,<${BASH_REMATCH[1]}.$((BASH_REMATCH[2] + 1))"
log "CUDA $CUDA: $CUDA_PYTHON"

if [[ $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
    die "run as root (sudo), or with --dry-run to see the plan"
fi

# --- System packages -----------------------------------------------------------------------------
# python3-libnvinfer: TensorRT's Python bindings for the system Python; libportaudio2: microphones.
if [[ $APT -eq 1 ]]; then
    run apt-get update
    apt_packages=(python3-venv python3-pip python3-libnvinfer libportaudio2)
    # live: GStreamer's RTSP server for the system Python (--sink rtsp://; JetPack has nvv4l2h264enc).
    if [[ ,$EXTRAS, == *,live,* ]]; then apt_packages+=(python3-gi gir1.2-gst-rtsp-server-1.0); fi
    run apt-get install -y --no-install-recommends "${apt_packages[@]}"
fi

# --- Keep JetPack's OpenCV? -----------------------------------------------------------------------
if [[ $SYSTEM_OPENCV == auto ]]; then
    if python3 -c 'import cv2' >/dev/null 2>&1; then SYSTEM_OPENCV=yes; else SYSTEM_OPENCV=no; fi
fi
case $SYSTEM_OPENCV in
    yes) log "keeping the system OpenCV (JetPack's, GStreamer-enabled); PyPI opencv wheels are forbidden" ;;
    no) log "no system OpenCV: installing opencv-python-headless from PyPI (no GStreamer: CSI cameras will not open)" ;;
    *) die "--system-opencv must be yes, no or auto, not '$SYSTEM_OPENCV'" ;;
esac

# --- The venv ------------------------------------------------------------------------------------
VENV="$PREFIX/venv"
PIP="$VENV/bin/pip"
run mkdir -p "$PREFIX"
run python3 -m venv --system-site-packages "$VENV"
run "$PIP" install --upgrade pip

CONSTRAINTS="$PREFIX/constraints.txt"
{
    echo "# Written by deploy/jetson/install.sh. NumPy 1.x: JetPack's OpenCV and TensorRT bindings are built for it."
    echo "numpy<2"
    if [[ $SYSTEM_OPENCV == yes ]]; then
        echo "# No PyPI OpenCV: it would shadow JetPack's GStreamer-enabled cv2 (pip fails instead)."
        for wheel in opencv-python opencv-python-headless opencv-contrib-python opencv-contrib-python-headless; do
            echo "$wheel<0"
        done
    fi
} | write_file "$CONSTRAINTS"

pip_args=(install -c "$CONSTRAINTS" -r "$HERE/requirements-jetson.txt" "$CUDA_PYTHON")
[[ -n $ORT_INDEX ]] && pip_args+=(--extra-index-url "$ORT_INDEX")
[[ $SYSTEM_OPENCV == no ]] && pip_args+=("opencv-python-headless>=4.8")
IFS=',' read -r -a extras <<<"$EXTRAS"
for extra in "${extras[@]}"; do
    case $extra in
        mqtt) pip_args+=("paho-mqtt>=2.0") ;;
        live) pip_args+=("prometheus-client>=0.20") ;;
        "") ;;
        *) die "unknown extra '$extra' (known: mqtt, live)" ;;
    esac
done
run "$PIP" "${pip_args[@]}"
# edgemm itself without its declared dependencies (they include opencv-python-headless).
run "$PIP" install --no-deps "$SOURCE"

# --- The service ---------------------------------------------------------------------------------
if [[ $SERVICE -eq 1 ]]; then
    # video: /dev/nvhost-* (GPU) and cameras; audio: ALSA microphones; render: CUDA on JetPack 6+.
    groups=(video audio)
    if [[ $RENDER_GROUP == auto ]]; then
        if getent group render >/dev/null; then RENDER_GROUP=yes; else RENDER_GROUP=no; fi
    fi
    case $RENDER_GROUP in
        yes) groups+=(render) ;;
        no) ;;
        *) die "--render-group must be yes or no, not '$RENDER_GROUP'" ;;
    esac
    group_list=$(IFS=,; echo "${groups[*]}")
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        run useradd --system --home-dir /var/lib/edgemm --no-create-home --shell /usr/sbin/nologin \
            --groups "$group_list" "$SERVICE_USER"
    else
        run usermod --append --groups "$group_list" "$SERVICE_USER"  # an older install may lack render
    fi
    run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" /var/lib/edgemm /var/log/edgemm
    run install -d /etc/edgemm
    if [[ ! -e /etc/edgemm/run.json ]]; then
        run install -m 0644 "$HERE/run.json" /etc/edgemm/run.json
    fi
    run install -d "$PREFIX/share"
    run install -m 0644 "$HERE/README.md" "$PREFIX/share/README.md"
    # The unit names /opt/edgemm and the groups video audio; follow --prefix and the groups found here (a
    # SupplementaryGroups= entry that does not exist would stop the unit from starting).
    sed -e "s#/opt/edgemm#$PREFIX#g" -e "s#^SupplementaryGroups=.*#SupplementaryGroups=${groups[*]}#" \
        "$HERE/edgemm.service" | write_file /etc/systemd/system/edgemm.service
    run systemctl daemon-reload
    log "installed edgemm.service: edit /etc/edgemm/run.json, then: sudo systemctl enable --now edgemm"
fi
# --- Check what actually runs --------------------------------------------------------------------
if [[ $DRY_RUN -eq 0 ]]; then
    if "$PIP" list --local --format=freeze 2>/dev/null | grep -iq '^opencv' && [[ $SYSTEM_OPENCV == yes ]]; then
        die "a PyPI OpenCV wheel ended up in $VENV: it shadows JetPack's cv2; remove it with $PIP uninstall"
    fi
    # As the service user when there is one: root reaches every device node and would hide a missing group.
    as_user=()
    if [[ $SERVICE -eq 1 ]] && id -u "$SERVICE_USER" >/dev/null 2>&1; then
        as_user=(runuser -u "$SERVICE_USER" --)
    fi
    "${as_user[@]}" "$VENV/bin/python" - <<'PY'
import sys

import cv2

gst = next((l.split(":", 1)[1].strip() for l in cv2.getBuildInformation().splitlines()
            if l.strip().startswith("GStreamer:")), "unknown")
print(f"edgemm-install: OpenCV {cv2.__version__} from {cv2.__file__} (GStreamer: {gst})", file=sys.stderr)
import getpass
import grp
import os

from edgemm.runners.cuda import probe

user = getpass.getuser()
mine = {grp.getgrgid(g).gr_name for g in os.getgroups()}
missing = [g for g in ("video", "render") if g not in mine and g in {e.gr_name for e in grp.getgrall()}]
if missing:
    print(f"edgemm-install: warning: {user} is not in group(s) {', '.join(missing)}: CUDA will fail for it "
          f"(sudo usermod -aG {','.join(missing)} {user})", file=sys.stderr)
p = probe()
if p.found and p.binding:
    print(f"edgemm-install: CUDA as {user}: " + ", ".join(d.describe() for d in p.devices) + f" via {p.binding}",
          file=sys.stderr)
    try:  # only with a device: never touch TensorRT without one
        import tensorrt
        print(f"edgemm-install: TensorRT {tensorrt.__version__}", file=sys.stderr)
    except ImportError as exc:
        print(f"edgemm-install: warning: TensorRT is not importable ({exc})", file=sys.stderr)
else:
    print(f"edgemm-install: CUDA not usable as {user} ({p.reason}); TensorRT not checked", file=sys.stderr)
PY
fi

log "done: $VENV/bin/edgemm (add $VENV/bin to PATH)"
