"""The Slurm path: sbatch scripts, the submitit launcher configs and the requeue callback.

`test_real_slurm_on_localhost` runs `scripts/slurm_localtest.sh`: a real one-node Slurm
(slurm-wlm + munge from apt-get) on localhost, an sbatch run, a two-job submitit multirun,
two pre-emptions that must end by resuming, and two-process `distributed=fsdp2` runs through
slurm/pretrain_multinode.sbatch and through a two-task submitit job. It needs root and Debian packages; elsewhere it is
skipped with the reason. The other tests are fast and need no Slurm.
"""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gwt_lab.slurm import SlurmRequeue, slurm_distributed_env

REPO = Path(__file__).resolve().parents[2]
SBATCH = sorted((REPO / "slurm").glob("*.sbatch"))


def _bash(script: str, env: dict) -> str:
    out = subprocess.run(["bash", "-c", script], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("path", SBATCH, ids=[p.name for p in SBATCH])
def test_sbatch_scripts_parse_and_request_signal_and_requeue(path):
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert "#SBATCH --signal=B:USR1@" in text and "#SBATCH --requeue" in text
    assert "gwt_run_requeueable" in text


def test_multinode_command_takes_rank_and_master_from_slurm():
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4",
           "SLURM_JOB_NODELIST": "nodeA", "SLURM_SUBMIT_DIR": str(REPO), "VIRTUAL_ENV": sys.prefix,
           "GWT_ACCELERATE_ARGS": "--dynamo_backend no"}
    out = _bash('source slurm/gwt_job.sh >/dev/null; gwt_setup_env >/dev/null; '
                'gwt_launch_cmd train_llama.py model=llama_1b method=haar2; printf "%s\\n" "${GWT_CMD[@]}"', env)
    cmd = out.strip().splitlines()[-1]
    assert "accelerate launch --multi_gpu --dynamo_backend no" in cmd
    assert "--num_machines 2 --machine_rank $SLURM_NODEID --num_processes 8" in cmd
    assert "--main_process_port 24242" in cmd and "--main_process_ip" in cmd
    assert "trap '' USR1" in cmd  # launchers ignore the forwarded signal; the trainers act on it
    assert "output_dir=runs/slurm/gwt-4242" in cmd and cmd.endswith("resume=true")


def test_cpu_fsdp2_command_is_torchrun_with_the_run_arguments():
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "2", "GWT_CPU": "1", "GPUS_PER_NODE": "2",
           "SLURM_JOB_NODELIST": "nodeA", "SLURM_SUBMIT_DIR": str(REPO), "VIRTUAL_ENV": sys.prefix}
    out = _bash('source slurm/gwt_job.sh >/dev/null; gwt_setup_env >/dev/null; '
                'gwt_launch_cmd train_llama.py model=llama_tiny distributed=fsdp2 precision=fp32; '
                'printf "%s\\n" "${GWT_CMD[@]}"', env)
    cmd = out.strip().splitlines()[-1]
    assert "exec torchrun --nnodes 2 --node_rank $SLURM_NODEID --nproc_per_node 2" in cmd
    assert "--master_port 20077" in cmd and "accelerate" not in cmd
    assert cmd.endswith("train_llama.py model=llama_tiny distributed=fsdp2 precision=fp32 "
                        "output_dir=runs/slurm/gwt-77 resume=true cpu=true")


def test_single_process_command_keeps_given_output_dir():
    env = {"SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(REPO), "VIRTUAL_ENV": sys.prefix}
    out = _bash('source slurm/gwt_job.sh >/dev/null; gwt_setup_env >/dev/null; '
                'gwt_launch_cmd finetune_glue.py task=rte output_dir=runs/rte; echo "${GWT_CMD[*]}"', env)
    assert out.strip().splitlines()[-1] == "python -u finetune_glue.py task=rte output_dir=runs/rte resume=true"


def test_distributed_env_from_slurm_tasks(monkeypatch):
    assert slurm_distributed_env({"SLURM_JOB_ID": "3", "SLURM_NTASKS": "1"}) == {}
    env = slurm_distributed_env({"SLURM_JOB_ID": "3", "SLURM_NTASKS": "8", "SLURM_PROCID": "5",
                                 "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x2)",
                                 "SLURM_JOB_NODELIST": "gpu[01-02]", "MASTER_ADDR": "gpu01"})
    assert env == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
                   "MASTER_ADDR": "gpu01", "MASTER_PORT": "20003"}


def test_callback_adds_sweep_overrides_unless_given():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"hydra": {"overrides": {"task": ["optimizer=adamw,gwt", "resume=false"]}}})
    OmegaConf.set_readonly(cfg, True)
    SlurmRequeue(sweep_overrides={"resume": "true"}, per_job_output_dir=True).on_multirun_start(config=cfg)
    task = OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)
    assert task == ["optimizer=adamw,gwt", "resume=false", "output_dir=${hydra:runtime.output_dir}"]


def test_callback_requeues_only_after_the_preemption_signal(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setenv("SLURM_JOB_ID", "11")
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    cb = SlurmRequeue()
    previous = signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGUSR1)
    stops = []
    try:
        cb.on_job_start(config={"output_dir": str(tmp_path)})
        cb.on_job_end(config=None, job_return=None)  # finished without the signal: nothing
        assert calls == []
        signal.signal(signal.SIGUSR1, lambda s, f: stops.append(s))  # the trainer's stop handler
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stops == [signal.SIGUSR1] and cb.preempted
        with pytest.raises(SystemExit):
            cb.on_job_end(config=None, job_return=None)
        assert calls == [["scontrol", "requeue", "11"]]
        cb._requeue_if_stopped()  # the exit hook does not requeue twice
        assert len(calls) == 1
    finally:
        signal.signal(signal.SIGUSR2, previous[0])
        signal.signal(signal.SIGUSR1, previous[1])


def test_callback_does_not_requeue_a_finished_run(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    (tmp_path / "result.json").write_text("{}")
    cb = SlurmRequeue()
    cb.preempted, cb.output_dir = True, tmp_path
    assert not cb._should_requeue()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "20")
    cb.output_dir = tmp_path / "other"
    assert not cb._should_requeue()  # requeue budget spent


def test_launcher_configs_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        for launcher, target in (("slurm", "SlurmLauncher"), ("local", "LocalLauncher")):
            cfg = compose("train_llama", overrides=[f"hydra/launcher={launcher}", "model=llama_tiny"],
                          return_hydra_config=True)
            assert cfg.hydra.launcher._target_.endswith(target)
            assert any(cb._target_ == "gwt_lab.slurm.SlurmRequeue" for cb in cfg.hydra.callbacks.values())
            assert cfg.model.name == "llama_tiny"  # the launcher config leaves the run config alone
    assert cfg.resume is False


def _real_slurm_skip_reason() -> str | None:
    if os.environ.get("GWT_SKIP_SLURM_TEST") == "1":
        return "GWT_SKIP_SLURM_TEST=1"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to install slurm-wlm/munge and run slurmctld/slurmd: sudo scripts/slurm_localtest.sh"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "no slurmctld and no apt-get to install slurm-wlm (Debian/Ubuntu only)"
    data = Path(os.environ.get("GWT_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (data / "c4" / "en").is_dir():
        return f"no local C4 sample under {data}/c4/en (set GWT_DATA_DIR)"
    return None


@pytest.mark.slow
def test_real_slurm_on_localhost():
    reason = _real_slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(REPO / "scripts" / "slurm_localtest.sh")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1440)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-6000:]
    for check in ("ok sbatch_tiny", "ok 0:", "ok 1:", "ok preempt_sbatch", "Restarts=1", "ok world_size 2",
                  "ok fsdp2 fsdp2_sbatch: world_size 2", "ok fsdp2 0: world_size 2", "all Slurm checks passed"):
        assert check in out.stdout, out.stdout[-6000:]
    assert "daemons stopped; exit status 0" in out.stdout
