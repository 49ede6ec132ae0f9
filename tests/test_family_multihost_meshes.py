"""2 processes x 4 CPU devices (jax.distributed on localhost, gloo) train, evaluate and measure KL
like one process with 8 devices on the same global batch, for meshes where the data, fsdp and tensor
axis in turn spans the processes (each process's rows come from the batch sharding)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_family_multihost import free_port, losses

from conftest import REPO, run_cli


pytestmark = pytest.mark.slow

ARGS = ("--config", "configs/family_micro.py")


def run_two_processes(workdir, *args, devices_each=4):
    port = free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}",
                   JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxgrow.main", *args, "--workdir", str(workdir)],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, 8 devices, mesh 2,2,2: the reference for every multi-process mesh (meshes differ
    only in reduction order, ~1e-6 here)."""
    workdir = tmp_path_factory.mktemp("single")
    run_cli(*ARGS, "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", "--workdir",
            str(workdir), devices=8, check=True)
    return workdir


@pytest.mark.parametrize("mesh,spanning", [((2, 2, 2), "data"), ((1, 2, 4), "fsdp"), ((1, 1, 8), "tensor")])
def test_spanning_mesh_matches_one_process(tmp_path, single, mesh, spanning):
    mesh_args = tuple(f"--config.mesh.{a}={n}" for a, n in zip(("data", "fsdp", "tensor"), mesh))
    multi = tmp_path / "multi"
    outs = run_two_processes(multi, *ARGS, *mesh_args)
    assert f"axes spanning processes: ['{spanning}'" in outs[0][1]
    a, b = losses(single), losses(multi)
    assert len(a) == len(b) >= 20
    for (sa, la), (sb, lb) in zip(a, b):
        assert sa == sb and abs(la - lb) <= 1e-5, (sa, la, lb)
    # evaluation and the KL between members ran on both hosts and agree with one process
    ra, rb = (json.loads((w / "report.json").read_text())["members"] for w in (single, multi))
    for ma, mb in zip(ra, rb):
        for key in ("eval_loss", "kl_to_next", "kl_from_next"):
            if ma[key] is not None:
                assert np.isclose(ma[key], mb[key], rtol=0, atol=1e-5), (ma["name"], key, ma[key], mb[key])
