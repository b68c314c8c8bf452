"""Rank helpers and the pipeline's rank gating, driven by launcher environment variables (no real processes; the
multi-process runs are in test_multiprocess.py and test_dist_export.py)."""
import threading
import time

import pytest

from crescent.utils import dist

LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE",
                 "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_JOB_ID", "SLURM_STEP_ID",
                 "SLURM_JOB_NAME", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_START_TIME", "LSB_JOBID",
                 dist.LAUNCH_ENV, dist.STAMP_ENV, dist.WAIT_ENV)


@pytest.fixture
def env(monkeypatch):
    """A clean launcher environment (and no cached launch id / run stamp); returns a setter."""
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dist, "_agreed", {})

    def set_env(**values):
        for k, v in values.items():
            monkeypatch.setenv(k, str(v))

    return set_env


TORCHRUN_RANK1 = dict(RANK=1, LOCAL_RANK=1, WORLD_SIZE=2, LOCAL_WORLD_SIZE=2, GROUP_RANK=0, MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=29500, TORCHELASTIC_RUN_ID="none", TORCHELASTIC_RESTART_COUNT=0)


def test_a_single_process_is_rank_0_of_1(env):
    assert (dist.global_rank(), dist.world_size(), dist.is_global_zero()) == (0, 1, True)
    assert not dist.launched_externally()


def test_torchrun_ranks_come_from_torchelastic_variables(env):
    env(**{**TORCHRUN_RANK1, "RANK": 5, "LOCAL_RANK": 1, "WORLD_SIZE": 8, "GROUP_RANK": 2})
    assert (dist.global_rank(), dist.world_size(), dist.local_rank(), dist.node_rank()) == (5, 8, 1, 2)
    assert not dist.is_global_zero() and dist.launched_externally()


def test_srun_ranks_come_from_slurm_variables(env):
    env(SLURM_NTASKS=16, SLURM_PROCID=9, SLURM_LOCALID=1, SLURM_NODEID=1, SLURM_NTASKS_PER_NODE=8,
        SLURM_JOB_NAME="crescent", SLURM_JOB_ID=4242)
    assert (dist.global_rank(), dist.world_size(), dist.local_rank(), dist.node_rank()) == (9, 16, 1, 1)
    env(SLURM_PROCID=0, SLURM_LOCALID=0, SLURM_NODEID=0)
    assert dist.is_global_zero()


def test_lightning_launcher_children_and_other_nodes(env):
    env(LOCAL_RANK=1, WORLD_SIZE=2, NODE_RANK=0)  # what Lightning's launcher gives the process it starts
    assert (dist.global_rank(), dist.world_size(), dist.is_global_zero()) == (1, 2, False)
    env(LOCAL_RANK=0, NODE_RANK=1)  # node 1's main process of a multi-node Lightning launch: not global zero
    assert dist.global_rank(devices_per_node=8) == 8 and not dist.is_global_zero()


def test_rank_zero_first_runs_on_rank_0_and_the_others_read_its_result(env, tmp_path):
    calls = []
    env(**{**TORCHRUN_RANK1, dist.LAUNCH_ENV: "launch-a"})
    got = {}
    waiter = threading.Thread(target=lambda: got.update(r=dist.rank_zero_first(tmp_path, "generate",
                                                                               lambda: calls.append(1))))
    waiter.start()  # rank 1 waits: nothing published yet
    time.sleep(0.3)
    assert waiter.is_alive() and not calls
    dist.publish(tmp_path, "generate", {"manifest": "m.json", "n": 3})  # what rank 0 does after running it
    waiter.join(timeout=30)
    assert got["r"] == {"manifest": "m.json", "n": 3} and calls == []  # rank 1 never ran the step
    env(RANK=0, LOCAL_RANK=0)
    assert dist.rank_zero_first(tmp_path, "train_prepare", lambda: calls.append(0) or {"ckpt": None}) == {"ckpt": None}
    assert calls == [0] and (tmp_path / ".ranks" / "launch-a" / "train_prepare.json").is_file()


def test_a_failure_on_rank_0_reaches_the_waiting_ranks(env, tmp_path):
    env(RANK=0, LOCAL_RANK=0, WORLD_SIZE=2, TORCHELASTIC_RUN_ID="none", **{dist.LAUNCH_ENV: "launch-b"})

    def boom():
        raise OSError("disk full")

    with pytest.raises(OSError):
        dist.rank_zero_first(tmp_path, "generate", boom)
    env(RANK=1, LOCAL_RANK=1)
    with pytest.raises(dist.RankZeroFailed, match="rank 0 failed in generate: OSError: disk full"):
        dist.rank_zero_first(tmp_path, "generate", boom)


def test_waiting_ends_with_a_clear_error_and_results_of_another_launch_are_not_read(env, tmp_path):
    env(**{**TORCHRUN_RANK1, dist.LAUNCH_ENV: "old-launch"})
    dist.publish(tmp_path, "generate", {"stale": True})
    env(**{dist.LAUNCH_ENV: "new-launch"})  # a relaunch into the same run dir
    with pytest.raises(dist.RankZeroFailed, match=f"within 1 s .*{dist.WAIT_ENV}"):
        dist.wait_for(tmp_path, "generate", timeout_s=1, poll_s=0.05)
    env(**{dist.WAIT_ENV: "soon"})
    with pytest.raises(ValueError, match=dist.WAIT_ENV):
        dist.wait_for(tmp_path, "generate")


def test_run_stamp_unique_per_launch_and_shared_through_torchruns_store(env, monkeypatch):
    import datetime

    import torch.distributed as td

    a = dist.run_stamp()
    monkeypatch.setattr(dist, "_agreed", {})
    b = dist.run_stamp()
    assert a != b and a[:10] == b[:10]  # same second possible, different suffix: two launches, two folders
    env(**{dist.STAMP_ENV: "2026-01-01/00-00-00_abcd"})
    assert dist.run_stamp() == "2026-01-01/00-00-00_abcd"
    monkeypatch.delenv(dist.STAMP_ENV)
    # torchrun: the agent hosts a TCPStore at MASTER_ADDR:MASTER_PORT; every rank proposes, the first one wins
    store = td.TCPStore("127.0.0.1", 0, is_master=True, timeout=datetime.timedelta(seconds=10))
    env(**{**TORCHRUN_RANK1, "MASTER_PORT": store.port, "TORCHELASTIC_USE_AGENT_STORE": "True"})
    stamps, launches = set(), set()
    for _ in range(3):  # three "ranks", each with its own state
        monkeypatch.setattr(dist, "_agreed", {})
        stamps.add(dist.run_stamp())
        launches.add(dist.launch_id())
    assert len(stamps) == 1 and len(launches) == 1


def test_srun_tasks_share_a_run_stamp_from_the_job(env, monkeypatch):
    stamps = set()
    for rank in range(2):
        monkeypatch.setattr(dist, "_agreed", {})
        env(SLURM_NTASKS=2, SLURM_PROCID=rank, SLURM_LOCALID=rank, SLURM_NODEID=0, SLURM_NTASKS_PER_NODE=2,
            SLURM_JOB_NAME="crescent", SLURM_JOB_ID=77, SLURM_STEP_ID=0, SLURM_JOB_START_TIME=1_700_000_000)
        stamps.add((dist.run_stamp(), dist.launch_id()))
        time.sleep(1.05 if rank == 0 else 0)  # tasks start at different seconds
    assert len(stamps) == 1 and next(iter(stamps))[0].endswith("_77.0")


def test_the_run_dir_resolver_is_registered_for_hydra(env):
    from omegaconf import OmegaConf

    import crescent  # noqa: F401  (registers it)

    env(**{dist.STAMP_ENV: "2026-02-03/04-05-06_beef"})
    cfg = OmegaConf.create({"dir": "outputs/${crescent.run_stamp:}"})
    assert cfg.dir == "outputs/2026-02-03/04-05-06_beef"


# ------------------------------------------------------------------------------------------ pipeline gating
def _fake_stages(monkeypatch, calls):
    from crescent import pipeline

    for name in ("generate", "train", "eval", "gap"):
        monkeypatch.setitem(pipeline.STAGE_FUNCS, name,
                            lambda cfg, tracker, name=name: calls.append(name) or {"counts": {name: 1}})


def test_ranks_above_0_wait_for_generation_train_and_skip_eval(env, monkeypatch, make_cfg, tmp_path):
    from crescent import pipeline

    calls = []
    _fake_stages(monkeypatch, calls)
    cfg = make_cfg("logger=wandb")
    env(**{**TORCHRUN_RANK1, dist.LAUNCH_ENV: "L1"})
    dist.publish(cfg.paths.output_dir, "generate", {"counts": {"generate": 1}})  # rank 0's result
    tracker = pipeline.Tracker(cfg, tmp_path)
    assert tracker.kind == "none" and tracker.run is None  # no W&B run on rank 1
    did = {s: pipeline._run_stage(s, cfg, tracker) for s in ("generate", "train", "eval", "gap")}
    assert {s: d[1] for s, d in did.items()} == {"generate": "waited", "train": "ran", "eval": "skipped",
                                                  "gap": "skipped"}
    assert calls == ["train"] and did["generate"][0] == {"counts": {"generate": 1}}
    status = pipeline._Status(tmp_path)
    status.write({"status": "ok"})
    assert status.writes == 0 and not (tmp_path / "status.json").exists()
    assert pipeline.objective(make_cfg("optimized_metric=eval/x"), {}) is None  # the metric is rank 0's


def test_rank_0_runs_every_stage_and_publishes_shared_results(env, monkeypatch, make_cfg):
    from crescent import pipeline

    calls = []
    _fake_stages(monkeypatch, calls)
    monkeypatch.setattr(pipeline, "print_summary", lambda *a: None)  # it needs real stage results
    cfg = make_cfg("logger=none", "stages=[generate,train,eval]")
    env(**{**TORCHRUN_RANK1, "RANK": 0, "LOCAL_RANK": 0, dist.LAUNCH_ENV: "L0"})
    results = pipeline.run(cfg)
    assert calls == ["generate", "train", "eval"] and set(results) == {"generate", "train", "eval"}
    sync = dist.sync_dir(cfg.paths.output_dir)
    record = __import__("json").loads((sync / "rank0.json").read_text())
    assert record["stages"] == {"generate": "ran", "train": "ran", "eval": "ran"} and record["status"] == "ok"
    assert record["status_writes"] == 5 and (sync / "generate.json").is_file()


def test_rank_overrides_keep_ranks_above_0_out_of_hydras_config_and_log(env):
    from crescent.cli import rank_overrides

    assert rank_overrides(["debug=default"]) == []
    env(**TORCHRUN_RANK1)
    assert rank_overrides(["debug=default"]) == ["hydra.output_subdir=null", "hydra.job.name=crescent_rank1"]
    # Lightning's launcher already passes these to the processes it starts: not twice
    assert rank_overrides(["hydra.output_subdir=null", "hydra.job.name=train_ddp_process_1"]) == []


@pytest.mark.parametrize("launcher,nodes", [("slurm_8gpu", 1), ("slurm_4x8gpu", 4)])
def test_slurm_launchers_start_one_task_per_gpu_in_one_job(launcher, nodes):
    """The committed submitit configs launch as the README says: one Hydra job per allocation, tasks_per_node =
    trainer.devices of the paper presets, nodes = trainer.num_nodes."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from helpers import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=crescent_llama3_8b", f"trainer.num_nodes={nodes}",
                                           f"hydra/launcher={launcher}"], return_hydra_config=True)
    launch = cfg.hydra.launcher
    assert launch._target_.endswith("SlurmLauncher")
    assert (launch.nodes, launch.tasks_per_node, launch.gpus_per_node) == (nodes, cfg.trainer.devices, 8)
    assert cfg.trainer.num_nodes == launch.nodes
