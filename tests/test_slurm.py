"""SLURM through dask-jobqueue: the job script each worker job is submitted with (no sbatch needed)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dinolab.pipelines.cli import app
from dinolab.pipelines.cluster import ClusterError, connect
from dinolab.pipelines.slurm import cluster_arguments, job_script, lifetime, walltime_seconds
from dinolab.schemas.config import ConfigError, load_config


def slurm(*overrides: str):
    return load_config(None, list(overrides)).slurm


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ").strip() for line in script.splitlines() if line.startswith("#SBATCH")]


def worker_command(script: str) -> str:
    [line] = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    return line


def test_a_gpu_job_books_one_gpu_for_one_single_threaded_worker_that_leaves_before_walltime():
    script = job_script(slurm("slurm.gpu=true", "slurm.walltime=02:00:00", "slurm.cores=10", "slurm.memory=64GB",
                              "slurm.queue=gpu", "slurm.account=vision", "slurm.job_extra=[--constraint=a100]",
                              "slurm.prologue=[module load cuda]"))
    found = directives(script)
    assert "--gres=gpu:1" in found and "--cpus-per-task=10" in found and "-t 02:00:00" in found
    assert "-p gpu" in found and "-A vision" in found and "--constraint=a100" in found and "-J dinolab-curate" in found
    command = worker_command(script)
    assert "--resources GPU=1" in command and "--nthreads 1" in command and "--nworkers" not in command
    assert "--lifetime 115m --lifetime-stagger 4m" in command
    assert script.index("module load cuda") < script.index("dask_worker")


def test_a_cpu_job_runs_one_single_threaded_worker_per_core():
    script = job_script(slurm("slurm.cores=4", "slurm.memory=16GB", "slurm.lifetime=50m"))
    command = worker_command(script)
    assert "--nworkers 4" in command and "--nthreads 1" in command and "--lifetime 50m" in command
    assert "GPU" not in script and "--cpus-per-task=4" in directives(script)


@pytest.mark.parametrize("walltime, seconds", [("30", 1800), ("10:30", 630), ("01:00:00", 3600), ("2-00", 172800),
                                               ("1-02:03", 93780), ("1-00:00:05", 86405)])
def test_walltimes_parse_like_slurm(walltime, seconds):
    assert walltime_seconds(walltime) == seconds


def test_lifetime_defaults_to_the_walltime_less_five_minutes_and_bad_settings_are_refused():
    assert lifetime(slurm("slurm.walltime=00:30:00")) == "25m" and lifetime(slurm("slurm.walltime=00:03:00")) == "1m"
    with pytest.raises(ConfigError, match="raise slurm.jobs"):
        cluster_arguments(slurm("slurm.gpu=true", "slurm.processes=2"))
    with pytest.raises(ConfigError, match="more than slurm.cores"):
        cluster_arguments(slurm("slurm.cores=2", "slurm.processes=4"))
    with pytest.raises(ConfigError, match="walltime"):
        cluster_arguments(slurm("slurm.walltime=soon"))


def test_curate_slurm_script_prints_the_job_script():
    result = CliRunner().invoke(app, ["slurm-script", "slurm.gpu=true", "slurm.walltime=01:00:00"])
    assert result.exit_code == 0, result.stderr
    assert "#SBATCH --gres=gpu:1" in result.stdout and "--lifetime 55m" in result.stdout
    bad = CliRunner().invoke(app, ["slurm-script", "slurm.walltime=soon"])
    assert bad.exit_code == 2 and "slurm.walltime" in bad.stderr


def test_cluster_choices_are_checked_before_anything_starts():
    with pytest.raises(ClusterError, match="choose one of local, slurm"):
        with connect(cluster="pbs"):
            pass
    with pytest.raises(ClusterError, match="exclude each other"):
        with connect(scheduler="tcp://127.0.0.1:9", cluster="slurm"):
            pass


def test_the_multi_node_pretraining_script_calls_the_current_training_command():
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = (Path(__file__).resolve().parent.parent / "scripts" / "slurm_pretrain.sh").read_text()
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0
    [command] = re.findall(r"-m dinolab.pretrain (\w+) (.*)", script)
    assert command[0] == "train"
    usage = subprocess.run([sys.executable, "-m", "dinolab.pretrain", "train", "--help"], capture_output=True, text=True,
                           timeout=120).stdout
    for option in re.findall(r"(--[a-z-]+)", command[1]):
        assert option in usage, option
