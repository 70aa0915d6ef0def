#!/usr/bin/env bash
# One prepared GPU check of edgemm's CUDA/TensorRT code, for a session that is lent a CUDA GPU. ~2 minutes
# after the machine is up (well under 8). Exits 0 only when every check passed. From the repository root, with the device tool:
#
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=480)
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=480, carry=[".whl"])   # with carried wheels
#
# Wheels (optional; only for packages missing on the device, see the device README): put them in .whl/ (git
# ignores it via .git/info/exclude), they are installed into /tmp/site first. TensorRT itself cannot be
# carried: PyPI has only an sdist of tensorrt-cu12/13-libs that downloads the (GB-sized) libraries from
# NVIDIA's index at install time, and the device reaches no network; the TensorRT part runs only where
# `import tensorrt` already works, and is reported as skipped otherwise.
#
# Results under $OUT (the device tool brings them back): log.txt, pytest.txt, cuda.json, tensorrt.json.
set -uo pipefail

OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}  # edgemm from this checkout, not installed

echo "== machine"
nvidia-smi -L || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" - <<'PY'
import importlib.metadata as md
for name in ("numpy", "onnx", "onnxruntime", "cuda-bindings", "cuda-python", "pycuda", "tensorrt", "pytest"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} not installed")
PY

echo "== tests (CUDA memory/streams/graphs; TensorRT build+runner where tensorrt imports)"
# GPU_CHECK_TESTS narrows the test selection (tests/test_deploy.py runs this script on a machine without a GPU).
read -r -a tests <<<"${GPU_CHECK_TESTS:-tests/test_cuda.py tests/test_tensorrt.py}"
timeout 300 "$PY" -m pytest -q -rs -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$OUT/pytest.txt"
tests_rc=${PIPESTATUS[0]}
echo "pytest exit: $tests_rc"

echo "== measurements (pinned and mapped copies, CUDA graphs, the runner's CUDA paths; TensorRT where it imports)"
timeout 240 "$PY" benchmarks/gpu_check.py "$OUT"
measure_rc=$?
echo "gpu_check.py exit: $measure_rc"

# The exit status says whether the checks passed: non-zero when the tests or the measurements failed.
# (gpu_check.py exits 0 on a GPU without TensorRT and lists, in its output, the checks that need TensorRT.)
if [[ $tests_rc -ne 0 || $measure_rc -ne 0 ]]; then
    echo "GPU CHECK FAILED (pytest $tests_rc, measurements $measure_rc)"
    exit 1
fi
echo "GPU CHECK PASSED"
