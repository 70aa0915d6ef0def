#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian/Ubuntu machine, then runs them.
#   system packages: the real stand-ins for hardware (ffmpeg camera, JACK microphone, mosquitto broker),
#                    espeak-ng/sox for speech data, shellcheck for deploy/ scripts, headless chromium for the
#                    web view, GStreamer's RTSP server (system Python) for RTSP out
#   Python:          a virtual environment in .venv with edgemm and its [dev] extra
# Extra arguments go to pytest, e.g. tests/run.sh -k bench -x
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-venv ffmpeg jackd2 libportaudio2 espeak-ng sox mosquitto shellcheck systemd
              chromium python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
              gstreamer1.0-plugins-ugly)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo -n); fi
    echo "tests/run.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

exec .venv/bin/python -m pytest "$@"
