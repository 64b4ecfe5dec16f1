"""meshtrain launch: each recipe rendered from the PaLM 540B experiment (2 x v4:12x16x16 = 6144 chips,
1536 hosts) and from a GPU run (64 H100 = 8 nodes); shell recipes pass `bash -n` and run against
stand-ins for gcloud, scontrol and srun; JobSets parse; the environment a recipe gives each process
is what trainer.distributed reads."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from meshtrain.tools.cli import main as meshtrain
from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.config.schema import DistributedConfig
from meshtrain.trainer.errors import ConfigError, UserError
from meshtrain.trainer.launch.render import launch_shape, render, train_argv
from meshtrain.trainer.run.distributed import plan

PALM = "palm-540b-v4-6144"
PALM_OVERRIDES = ["train.steps=10", "data.data_dir=gs://bucket/data", "run_dir=/mnt/runs/palm 540b"]
GPU = ["hardware.kind=h100", "hardware.chips=64", "train.steps=10"]


def _render(recipe: str, experiment: str | None, overrides: list[str], **kwargs) -> str:
    cfg = load_experiment(experiment, overrides)
    return render(cfg, recipe, train_argv(experiment, overrides), **kwargs)


def _bash_n(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.sh"
    path.write_text(text)
    subprocess.run(["bash", "-n", str(path)], check=True)
    return path


def _fake_bin(tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / "bin").mkdir(exist_ok=True)
    path = tmp_path / "bin" / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_shapes():
    palm = launch_shape(load_experiment(PALM))
    assert (
        palm.num_chips,
        palm.num_slices,
        palm.hosts_per_slice,
        palm.num_processes,
        palm.chips_per_host,
        palm.topology_dims,
    ) == (6144, 2, 768, 1536, 4, "12x16x16")
    gpu = launch_shape(load_experiment(None, GPU))
    assert (gpu.num_chips, gpu.num_processes, gpu.chips_per_host) == (64, 8, 8)
    small = launch_shape(load_experiment(None, ["hardware.kind=a100-40gb", "hardware.chips=4"]))
    assert (small.num_processes, small.chips_per_host) == (1, 4)  # fewer GPUs than a server: one host
    v5e = launch_shape(
        load_experiment(None, ["hardware.kind=tpu-v5e", "hardware.topology=v5e:16x16", "hardware.num_slices=4"])
    )
    assert (v5e.num_chips, v5e.num_processes) == (1024, 256)


def test_tpu_vm_script_runs_every_worker_of_every_slice(tmp_path):
    text = _render("tpu-vm", PALM, PALM_OVERRIDES)
    script = _bash_n(tmp_path, text)
    assert "NUM_PROCESSES=1536" in text and "# Processes:   1536 (2 slice(s) x 768 hosts, 4 chips per host)" in text
    assert "--node-count 2" in text and "--accelerator-type v4-6144" in text and "tpu-ubuntu2204-base" in text
    assert "Coordinator:" in text and "port 8482" in text and "MEGASCALE_COORDINATOR_ADDRESS" in text
    # Run it with a gcloud that records its arguments: one ssh per slice, every worker, the same command.
    _fake_bin(tmp_path, "gcloud", 'printf "%s\\n" "$@" > "$LOG_DIR/gcloud.$$"\n')
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", ZONE="us-central2-b", LOG_DIR=str(tmp_path))
    subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True)
    calls = [p.read_text().splitlines() for p in tmp_path.glob("gcloud.*")]
    assert sorted(call[4] for call in calls) == [f"{PALM}-0", f"{PALM}-1"]
    for call in calls:
        assert call[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in call
        command = call[call.index("--command") + 1]
        assert command.startswith("cd ~/meshtrain && ")
        # The remote shell sees exactly the arguments meshtrain train was given, spaces included.
        assert shlex.split(command.split(" && ", 1)[1]) == [
            "meshtrain",
            "train",
            PALM,
            *PALM_OVERRIDES,
            "--no-progress",
        ]


def test_tpu_vm_single_slice_creates_one_tpu_vm(tmp_path):
    text = _render("tpu-vm", None, ["hardware.kind=tpu-v5e", "hardware.topology=v5e:4x4"])
    _bash_n(tmp_path, text)
    assert "NUM_SLICES=1" in text and "NUM_PROCESSES=4" in text
    assert "tpu-vm create" in text and "--accelerator-type v5litepod-16" in text and "v2-alpha-tpuv5-lite" in text


def test_tpu_jobset(tmp_path):
    text = _render("jobset", PALM, PALM_OVERRIDES, image="us-docker.pkg.dev/p/meshtrain:1")
    job = yaml.safe_load(text)
    assert (job["apiVersion"], job["kind"], job["metadata"]["name"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet", PALM)
    assert (
        job["metadata"]["annotations"]["alpha.jobset.sigs.k8s.io/exclusive-topology"] == "cloud.google.com/gke-nodepool"
    )
    [replicated] = job["spec"]["replicatedJobs"]
    assert replicated["replicas"] == 2
    spec = replicated["template"]["spec"]
    assert spec["parallelism"] == spec["completions"] == 768 and spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v4-podslice",
        "cloud.google.com/gke-tpu-topology": "12x16x16",
    }
    [container] = pod["containers"]
    assert container["image"] == "us-docker.pkg.dev/p/meshtrain:1"
    assert container["command"] == ["meshtrain", "train", PALM, *PALM_OVERRIDES, "--no-progress"]
    assert container["resources"]["limits"] == {"google.com/tpu": 4}
    assert 8482 in [p["containerPort"] for p in container["ports"]]
    assert "# Processes:   1536" in text and "TPU_WORKER_HOSTNAMES" in text and "--tpu-type v4-6144" in text


def test_gpu_jobset_gives_each_pod_what_distributed_reads():
    text = _render("jobset", None, GPU, port=9999)
    job = yaml.safe_load(text)
    spec = job["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["spec"]["replicatedJobs"][0]["replicas"] == 1 and spec["parallelism"] == 8
    [container] = spec["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["JAX_NUM_PROCESSES"] == "8"
    assert env["JAX_COORDINATOR_ADDRESS"] == "default-workers-0-0.default:9999"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert spec["template"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    # Kubernetes adds JOB_COMPLETION_INDEX to each pod of an Indexed Job: pod 5 is process 5 of 8.
    p = plan(DistributedConfig(None, None, None, 300, 20), {**env, "JOB_COMPLETION_INDEX": "5"}, on_tpu_vm=False)
    assert (p.source, p.kwargs["coordinator_address"], p.kwargs["num_processes"], p.kwargs["process_id"]) == (
        "kubernetes",
        "default-workers-0-0.default:9999",
        8,
        5,
    )


def test_slurm_script_runs_one_process_per_node(tmp_path):
    text = _render("slurm", None, GPU)
    script = _bash_n(tmp_path, text)
    for line in (
        "#SBATCH --nodes=8",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "export JAX_NUM_PROCESSES=8",
        "JAX_COORDINATOR_ADDRESS",
        "# Processes:   8",
    ):
        assert line in text, line
    # Run it with stand-ins: scontrol expands the node list, srun starts 8 tasks, meshtrain reports.
    _fake_bin(tmp_path, "scontrol", 'for i in 1 2 3 4 5 6 7 8; do echo "gpu00$i"; done\n')
    _fake_bin(
        tmp_path,
        "srun",
        'while [[ "$1" == --* ]]; do shift; done\nfor i in 0 1 2 3 4 5 6 7; do SLURM_PROCID=$i "$@" || exit 1; done\n',
    )
    _fake_bin(tmp_path, "meshtrain", 'echo "$JAX_COORDINATOR_ADDRESS $JAX_NUM_PROCESSES $JAX_PROCESS_ID $*"\n')
    env = dict(
        os.environ,
        PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NUM_NODES="8",
        SLURM_JOB_NODELIST="gpu00[1-8]",
    )
    env.pop("JAX_COORDINATOR_PORT", None)
    out = subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True, text=True).stdout
    lines = out.splitlines()
    port = 4242 % 4096 + 61440  # jax's own SLURM rule, so either way the processes agree
    assert lines == [f"gpu001:{port} 8 {i} train {' '.join(GPU)} --no-progress" for i in range(8)]
    # That environment is meshtrain's "env" source, with every GPU of the node left visible.
    address, count, pid = lines[3].split()[:3]
    p = plan(
        DistributedConfig(None, None, None, 300, 20),
        {
            "JAX_COORDINATOR_ADDRESS": address,
            "JAX_NUM_PROCESSES": count,
            "JAX_PROCESS_ID": pid,
            "SLURM_JOB_ID": "4242",
            "SLURM_NTASKS": "8",
            "SLURM_STEP_NODELIST": "gpu00[1-8]",
            "SLURM_PROCID": pid,
            "SLURM_LOCALID": "0",
        },
        on_tpu_vm=False,
    )
    assert (p.source, p.kwargs["process_id"], p.kwargs["cluster_detection_method"]) == ("env", 3, "deactivate")
    # A wrong allocation size is refused before anything starts.
    bad = subprocess.run(["bash", str(script)], env={**env, "SLURM_JOB_NUM_NODES": "4"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "for 8 nodes" in bad.stderr


def test_slurm_fixed_port():
    assert 'COORDINATOR_PORT="7777"' in _render("slurm", None, GPU, port=7777)


@pytest.mark.parametrize(
    "recipe,experiment,overrides,error,fragments",
    [
        ("slurm", PALM, [], UserError, ["--recipe slurm", "GPU", "tpu-v4", "--recipe tpu-vm or jobset"]),
        ("tpu-vm", None, GPU, UserError, ["--recipe tpu-vm", "TPU", "h100", "--recipe jobset or slurm"]),
        ("jobset", None, [], UserError, ["hardware.kind=cpu", "CPU", "meshtrain train"]),
        ("slurm", None, ["hardware.kind=h100"], ConfigError, ["hardware.chips is null", "h100"]),
        (
            "slurm",
            None,
            ["hardware.kind=h100", "hardware.chips=12"],
            ConfigError,
            ["hardware.chips=12", "multiple of 8"],
        ),
        ("jobset", None, ["hardware.kind=tpu-v4"], ConfigError, ["hardware.topology is null", "v4:"]),
    ],
)
def test_recipe_errors(recipe, experiment, overrides, error, fragments):
    with pytest.raises(error) as info:
        _render(recipe, experiment, overrides)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_cli_writes_the_recipe(tmp_path, capsys):
    out = tmp_path / "palm.sh"
    assert meshtrain(["launch", PALM, "train.steps=10", "--recipe", "tpu-vm", "--out", str(out)]) == 0
    assert "1536 processes" in capsys.readouterr().err
    text = out.read_text()
    assert "TRAIN_CMD='meshtrain train palm-540b-v4-6144 train.steps=10 --no-progress'" in text
    assert "# Rendered by: meshtrain launch palm-540b-v4-6144 train.steps=10 --recipe tpu-vm" in text
    assert out.stat().st_mode & stat.S_IXUSR
    assert (
        meshtrain(["launch", "hardware.kind=h100", "hardware.chips=16", "train.batch_size=16", "--recipe", "jobset"])
        == 0
    )
    assert yaml.safe_load(capsys.readouterr().out)["kind"] == "JobSet"
    assert meshtrain(["launch", PALM, "--recipe", "slurm"]) == 2
    assert "meshtrain: error: --recipe slurm is for GPU hosts" in capsys.readouterr().err


def test_a_job_that_would_not_start_or_not_fit_is_refused_naming_the_fix(capsys):
    """The recipe is the start of the job: what would fail in its first minute fails here, in one line."""
    assert meshtrain(["launch", "hardware.kind=h100", "hardware.chips=64", "--recipe", "slurm"]) == 2
    error = capsys.readouterr().err
    assert "the 64-chip job would not start" in error and "train.batch_size=8" in error and "a multiple of 64" in error
    assert meshtrain(["launch", PALM, "train.microbatch_size=0", "--recipe", "tpu-vm"]) == 2
    error = capsys.readouterr().err.strip()
    assert "the 6144-chip job would not fit" in error and error.endswith(
        "train.microbatch_size=1024 fits (22.54 GiB per chip)"
    )
    # 1536 hosts feed a batch split 512 ways: each group of 6 hosts along one 12-chip tensor ring loads the same 2 row blocks.
    assert meshtrain(["launch", PALM, "--recipe", "tpu-vm"]) == 0
    capsys.readouterr()


def test_the_readme_slurm_example_renders_a_job_that_starts(capsys, tmp_path, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    line = next(
        line for line in readme.splitlines() if line.startswith("meshtrain launch") and "--recipe slurm" in line
    )
    monkeypatch.chdir(tmp_path)  # it writes --out train.sbatch
    assert meshtrain(shlex.split(line.split("#")[0])[1:]) == 0, capsys.readouterr().err
    assert "#SBATCH" in (tmp_path / "train.sbatch").read_text()
