"""`plan` on the paper family: sizes, AOT compilation on a pod-sized mesh, no full-size weights."""

import re
import subprocess
import sys

import pytest

from conftest import REPO


pytestmark = pytest.mark.slow

# Runs plan in a child and reports that child's peak RSS (the wrapper has no other children).
WRAPPER = """
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(p.stdout); sys.stderr.write(p.stderr)
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(p.returncode)
"""


def test_plan_paper_family_on_a_64_device_mesh():
    cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "jaxgrow.main", "plan",
           "--config", "configs/paper_family.py", "--devices", "64", "--config.mesh.fsdp=16", "--config.mesh.tensor=4"]
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "HOME": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "mesh {'data': 1, 'fsdp': 16, 'tensor': 4} on 64 cpu device(s)" in out
    sizes = [float(x) for x in re.findall(r"params (\d+\.\d+)B", out)]
    assert len(sizes) == 4
    for got, want in zip(sizes, (1, 2, 4, 8)):
        assert abs(got - want) / want <= 0.10, (got, want)
    assert out.count("compiled train step") == 4 and out.count("compiled expansion") == 3
    temps = [float(x) for x in re.findall(r"temporaries (\d+\.\d+) GiB per device", out)]
    assert all(t > 0 for t in temps)
    per_device = [float(x) for x in re.findall(r"per device: params (\d+\.\d+) GiB", out)]
    assert per_device[-1] == pytest.approx(8.114e9 * 4 / 64 / 2**30, rel=0.05)  # fsdp x tensor sharded
    rss_gb = int(re.search(r"MAXRSS_KB (\d+)", out).group(1)) / 2**20
    assert rss_gb < 8.0, rss_gb  # the 8B model in fp32 alone would be 30 GiB (121 GiB with Adam)
