"""Resources and clusters: a request no node can meet is refused before anything is written, a bad or unreachable
`--address` is one line, a sweep joins a running Ray cluster (`ray start`, token), and the cluster guide's files
parse."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import one_line_error
from sweep_files import TINY, study, sweep_cli, write_sweep

REPO = Path(__file__).parents[1]


def test_a_refused_resource_request_leaves_no_folder(tmp_path, tiny_features):
    pytest.importorskip("ray.tune")
    spec = write_sweep(tmp_path / "s.yaml", study(tiny_features, [0.05]))
    for override, fragment in (("resources.cpus=4096", "resources.cpus: 4096 per trial, but this machine has"),
                               ("resources.memory=100000", "resources.memory: 1e+05 GiB per trial")):
        result = sweep_cli(spec, "--out", tmp_path / "out", "--set", override)
        one_line_error(result, fragment)
        assert not (tmp_path / "out").exists()

    # A missing store: one line before Ray starts, not every trial failing; a dry run plans without it, and says so.
    nowhere = f"data.features={tmp_path / 'nowhere'}"
    one_line_error(sweep_cli(spec, "--out", tmp_path / "out", "--set", nowhere),
                   f"--set data.features: none's data.features: no feature store at {tmp_path / 'nowhere'}")
    assert not (tmp_path / "out").exists()
    damaged = tmp_path / "damaged"  # a store that opens, without its scaler: every trial had failed after Ray began
    shutil.copytree(tiny_features, damaged)
    (damaged / "scaler.npz").unlink()
    one_line_error(sweep_cli(spec, "--out", tmp_path / "out", "--set", f"data.features={damaged}"),
                   "--set data.features: none's data.features: ", "scaler.npz")
    assert not (tmp_path / "out").exists()
    with_yaml = write_sweep(tmp_path / "nowhere.yaml", study(tmp_path / "nowhere", [0.05]))
    result = sweep_cli(with_yaml, "--dry-run", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"{with_yaml}: none's data.features: no feature store at {tmp_path / 'nowhere'}" in result.output
    assert "(a sweep would be refused)" in result.output and not (tmp_path / "out").exists()


def test_default_memory_grows_with_the_model_batch_and_passes():
    from sedaug.recipe import load_recipe
    from sedaug.sweep.plan import GIB, default_memory

    none = load_recipe(REPO / "recipes" / "none.yaml")
    vat = load_recipe(REPO / "recipes" / "vat_latent.yaml")
    tiny = load_recipe(REPO / "recipes" / "none.yaml", [f"{k}={json.dumps(v)}" for k, v in TINY.items()])
    assert default_memory(tiny, 0) < default_memory(none, 0) < default_memory(vat, 0)
    assert default_memory(none, 0) % (GIB // 4) == 0
    assert default_memory(none, 1.0) == 3 * GIB  # on a GPU the activations live in device memory


@pytest.mark.parametrize("address, fragment", [
    ("not an address", "not a Ray address"),
    ("ray://127.0.0.1:10001", "Ray Client (ray://) is not supported: give the head's GCS address as HOST:PORT"),
    ("127.0.0.1:1", "cannot reach 127.0.0.1 port 1"),
])
def test_a_bad_address_is_one_line_and_writes_nothing(tmp_path, tiny_features, address, fragment):
    pytest.importorskip("ray.tune")
    spec = write_sweep(tmp_path / "s.yaml", study(tiny_features, [0.05]))
    start = time.monotonic()
    one_line_error(sweep_cli(spec, "--out", tmp_path / "out", "--address", address, "--connect-timeout", 5), fragment)
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - start < 60  # bounded, not minutes of Ray's retries (a bound, not a timing)


def _free_ports(n: int) -> list[int]:
    probes = [socket.socket() for _ in range(n)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in probes]
    for probe in probes:
        probe.close()
    return ports


def _start_head(bin_dir: Path, env: dict, ray_dir: Path, tries: int = 3) -> tuple[subprocess.Popen, int]:
    """`ray start --head` on free ports, again on others when it exits at once: another process (a test beside
    this one) may take a port between the probe and Ray's bind."""
    for _ in range(tries):
        port, client_port, agent_port = _free_ports(3)
        head = subprocess.Popen([bin_dir / "ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                                 "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
                                 f"--ray-client-server-port={client_port}",
                                 f"--dashboard-agent-listen-port={agent_port}", f"--temp-dir={ray_dir}"],
                                env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while head.poll() is None and time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return head, port
            time.sleep(0.5)
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
    pytest.fail(f"ray start --head did not start in {tries} tries")


def test_a_sweep_joins_a_running_ray_cluster_with_its_token(tmp_path, tiny_features):
    """`--address` as docs/cluster.md runs it: a head started by `ray start` with token authentication; the driver
    with the token runs the study there (and resumes it); without the token, one line that says so."""
    pytest.importorskip("ray.tune")
    ray_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0123456789abcdef" * 2,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    head, port = _start_head(bin_dir, env, ray_dir)
    try:
        sweep = {"recipes": [{"recipe": str(REPO / "recipes" / "none.yaml"), "search": {"optim.lr": {"grid": [1e-3]}}}],
                 "set": {**TINY, "optim.epochs": 1, "optim.max_steps_per_epoch": 2},
                 "seeds": [1], "resources": {"cpus": 1, "memory": 1.0}}
        spec = write_sweep(tmp_path / "s.yaml", sweep)
        command = [bin_dir / "sedaug", "sweep", spec, "--out", tmp_path / "out", "--connect-timeout", "60", "--set",
                   f"data.features={tiny_features}"]
        head_address = ["--address", f"127.0.0.1:{port}"]
        without_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
        result = subprocess.run([*command, *head_address], env=without_token, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 1 and result.stdout == "", result.stdout
        [line] = result.stderr.strip().splitlines()
        assert "token" in line and "RAY_AUTH_TOKEN" in line, line
        # --address wins over RAY_ADDRESS (which ray.init would take over its own argument); without --address,
        # RAY_ADDRESS is the cluster (Ray's own default, set by `ray job submit`).
        for args, ray_address in ((head_address, "127.0.0.1:1"), (["--resume"], f"127.0.0.1:{port}")):
            result = subprocess.run([*command, *args], env={**env, "RAY_ADDRESS": ray_address}, capture_output=True,
                                    text=True, timeout=300)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "1 trial (1 done" in result.stderr and "final runs on seed 1, evaluated on eval" in result.stderr
        assert (tmp_path / "out" / "final" / "none" / "seed1" / "eval" / "results.json").is_file()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_ray_address_in_the_environment_is_the_default_address(tmp_path, tiny_features, monkeypatch):
    """RAY_ADDRESS (set by `ray job submit`, or by hand) is where a sweep without --address goes: a bad one is one
    line that names it (it was a traceback from ray.init), `local` is a local Ray, and --address wins over it."""
    from sedaug.sweep.cluster import parse_address, sweep_address

    pytest.importorskip("ray.tune")
    spec = write_sweep(tmp_path / "s.yaml", study(tiny_features, [0.05]))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    one_line_error(sweep_cli(spec, "--out", tmp_path / "out"), "RAY_ADDRESS=127.0.0.1:1: cannot reach 127.0.0.1 port 1")
    one_line_error(sweep_cli(spec, "--out", tmp_path / "out", "--address", "127.0.0.1:2"),
                   "--address 127.0.0.1:2: cannot reach 127.0.0.1 port 2")
    monkeypatch.setenv("RAY_ADDRESS", "no address")
    one_line_error(sweep_cli(spec, "--out", tmp_path / "out", "--dry-run"),
                   "RAY_ADDRESS='no address': not a Ray address")
    assert not (tmp_path / "out").exists()
    assert sweep_address("10.0.0.1:6379") == "10.0.0.1:6379" and sweep_address(None) == "no address"
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert sweep_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "local")  # a local Ray, as for --address local
    assert sweep_address(None) == "local" and parse_address("local") is None


@pytest.mark.parametrize("timeout", ["0", "-1", "nan"])  # (inf: refused the same way; reverted, it would hang)
def test_a_connect_timeout_that_is_no_number_of_seconds_is_one_line(tmp_path, tiny_features, timeout):
    pytest.importorskip("ray.tune")
    spec = write_sweep(tmp_path / "s.yaml", study(tiny_features, [0.05]))
    one_line_error(sweep_cli(spec, "--out", tmp_path / "out", "--address", "127.0.0.1:1", "--connect-timeout", timeout),
                   "give a number of seconds above 0")
    assert not (tmp_path / "out").exists()


def test_the_cluster_guides_files_parse():
    pytest.importorskip("ray.autoscaler")
    sbatch = REPO / "docs" / "cluster" / "sweep.sbatch"
    subprocess.run(["bash", "-n", str(sbatch)], check=True)
    assert "sedaug sweep" in sbatch.read_text() and "--address" in sbatch.read_text()
    config = yaml.safe_load((REPO / "docs" / "cluster" / "ray-up.yaml").read_text())
    import jsonschema
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    try:  # Ray's own schema (ray/autoscaler/ray-schema.json), after `ray up` fills its defaults
        validate_config(prepare_config(config))
    except jsonschema.ValidationError as e:
        raise AssertionError(f"docs/cluster/ray-up.yaml: {e.message}") from None
    assert any("sedaug" in line for line in config["setup_commands"])
    with pytest.raises(jsonschema.ValidationError):  # the check can fail
        validate_config(prepare_config({**config, "head_start_ray_command": ["ray start --head"]}))
