"""The one dispatcher runs any declared stage (plan → map → finish, repeated steps, shared state, resume per
unit) the same way as Dask tasks and in a loop."""

from __future__ import annotations

import io
import json

import pytest
from distributed import Client, LocalCluster
from rich.console import Console

from dinolab.curate import output
from dinolab.curate.stages import Stage
from dinolab.curate.steps import Repeat, Step
from dinolab.pipelines.dispatch import DaskExecutor, LoopExecutor, run_stage
from dinolab.schemas.config import PipelineConfig

PARTS = 5


def plan(out, config, unit, previous):
    output.write_bytes(out / "work" / "plan.json", json.dumps({"parts": PARTS}).encode())
    return {"parts": PARTS}


def planned(out, config, previous):
    return range(previous[0]["parts"])


def write_part(out, config, unit, previous):
    output.write_bytes(out / "work" / f"part-{unit}.txt", str(unit * unit).encode())
    return {"square": unit * unit}


def parts_written(out, config, units):
    return {unit: {"square": int(output.read_bytes(out / "work" / f"part-{unit}.txt"))}
            for unit in units if output.is_file(out / "work" / f"part-{unit}.txt")}


def finish(out, config, unit, previous):
    return {"total": sum(result["square"] for result in previous), "order": [r["square"] for r in previous]}


def start(out, config, unit, previous):
    return {"iteration": 0, "value": 1}


def double(out, config, unit, previous):
    iteration, part = unit
    return {"iteration": iteration, "value": previous[0]["value"]}


def iteration_parts(out, config, previous):
    return [(previous[0]["iteration"], part) for part in range(3)]


def reduce(out, config, unit, previous):
    return {"iteration": previous[0]["iteration"] + 1, "value": sum(r["value"] for r in previous)}


def scaled(out, config, unit, previous, *, shared):
    return {"value": shared * unit}


BUILT = []


def build(config):
    BUILT.append(config)
    return 10


STAGE = Stage("toy", (), "toy", False, "plan → parts → finish",
              steps=(Step("plan", plan), Step("part", write_part, planned, parts_written), Step("finish", finish)))
REPEATED = Stage("lloyd", (), "toy", False, "a start, then map → reduce repeated",
                 steps=(Step("start", start),
                        Repeat((Step("map", double, iteration_parts), Step("reduce", reduce)),
                               times=lambda config: 4, until=lambda results: results[0]["value"] >= 27)))


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, resources={"GPU": 1}) as cluster, \
            Client(cluster) as client:
        yield client


def executors(client):
    console = Console(quiet=True)
    return {"loop": LoopExecutor(console), "dask": DaskExecutor(client, console)}


@pytest.mark.parametrize("kind", ["loop", "dask"])
def test_plan_map_finish_passes_results_in_unit_order_and_resumes_per_unit(tmp_path, client, kind):
    executor = executors(client)[kind]
    config = PipelineConfig()
    assert run_stage(executor, tmp_path, config, STAGE) == 1 + PARTS + 1
    (tmp_path / "work" / "part-3.txt").unlink()
    stage = Stage("toy", (), "toy", False, "", steps=STAGE.steps + (Step("check", check_total),))
    assert run_stage(executor, tmp_path, config, stage) == 1 + 1 + 1 + 1  # plan, the lost part, finish, check


def check_total(out, config, unit, previous):
    assert previous == [{"total": sum(i * i for i in range(PARTS)), "order": [i * i for i in range(PARTS)]}]
    return {}


JOINED = Stage("toy", (), "toy", False, "plan → parts → finish, the finish sent with the parts",
               steps=(Step("plan", plan), Step("part", write_part, planned, parts_written),
                      Step("finish", finish, joins=lambda units: [None]), Step("check", check_total)))


@pytest.mark.parametrize("kind", ["loop", "dask"])
def test_a_joined_reduce_is_sent_with_its_map_and_sees_every_result_in_unit_order(tmp_path, client, kind, monkeypatch):
    executor = executors(client)[kind]
    sent, real = [], executor.map_joined
    monkeypatch.setattr(executor, "map_joined",
                        lambda first, then, quiet=False: sent.append(len(first.calls)) or real(first, then, quiet))
    config = PipelineConfig()
    assert run_stage(executor, tmp_path, config, JOINED) == 1 + PARTS + 1 + 1
    (tmp_path / "work" / "part-3.txt").unlink()
    assert run_stage(executor, tmp_path, config, JOINED) == 1 + 1 + 1 + 1  # the finish sees 4 found parts + 1 run
    assert sent == [PARTS, 1]  # each time the parts left and the finish went in one map_joined
    assert run_stage(executor, tmp_path, config, JOINED) == 1 + 1 + 1  # every part found: the finish alone
    assert sent == [PARTS, 1]


@pytest.mark.parametrize("kind", ["loop", "dask"])
def test_repeated_steps_see_the_previous_iteration_and_stop_when_told(tmp_path, client, kind):
    executor = executors(client)[kind]
    ran = run_stage(executor, tmp_path, PipelineConfig(), REPEATED)
    assert ran == 1 + 3 * (3 + 1)  # 1 → 3 → 9 → 27: three iterations of the four allowed


def test_long_rounds_print_which_round_is_done(tmp_path, monkeypatch):
    from dinolab.pipelines import dispatch

    monkeypatch.setattr(dispatch, "ROUND_LINES_EVERY", 0.0)  # every round is "long"
    console = Console(record=True, width=200, file=io.StringIO())
    run_stage(LoopExecutor(console), tmp_path, PipelineConfig(), REPEATED)
    lines = console.export_text().splitlines()
    assert lines == ["lloyd: round 1 of at most 4 done (map, reduce)", "lloyd: round 2 of at most 4 done (map, reduce)",
                     "lloyd: 3 rounds of map, reduce"]  # the third round ends the loop: its line is the summary


def test_shared_state_is_built_once_per_process_and_passed_to_every_unit(tmp_path):
    BUILT.clear()
    stage = Stage("scaled", (), "toy", False, "", steps=(
        Step("scaled", scaled, lambda out, config, previous: [1, 2, 3], shared=build), Step("finish", finish_scaled)))
    run_stage(LoopExecutor(), tmp_path, PipelineConfig(), stage)
    assert len(BUILT) == 1


def finish_scaled(out, config, unit, previous):
    assert previous == [{"value": 10}, {"value": 20}, {"value": 30}]
    return {}


def test_resources_are_asked_only_of_workers_that_advertise_them(client):
    executor = DaskExecutor(client, Console(quiet=True))
    assert executor._available({"GPU": 1}) == {"GPU": 1}
    assert executor._available({"TPU": 1}) is None
    future = executor.submit("toy", pow, 2, 5, resources={"TPU": 1})  # would wait forever if asked
    assert future.result(timeout=30) == 32


def test_a_step_whose_workers_all_stay_paused_fails_with_one_line(monkeypatch):
    import time

    import dask

    from dinolab.pipelines import paused

    monkeypatch.setattr(paused, "PAUSED_LIMIT_S", 2.0)
    monkeypatch.setattr(paused, "CHECK_EVERY_S", 0.2)
    with dask.config.set({"distributed.worker.memory.pause": 0.01}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="2GB") as cluster, \
            Client(cluster) as client:  # pauses at 20 MB: below a worker process's memory from the start
        deadline = time.monotonic() + 30
        while paused.all_paused(client) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        executor = DaskExecutor(client, Console(quiet=True))
        with pytest.raises(paused.WorkersPaused, match=r"^toy part: every Dask worker has been paused .* 1\.86 GiB\)") as error:
            executor.map("toy part", abs, [(-1,), (-2,)])
        assert "\n" not in str(error.value) and "--memory-limit" in str(error.value)


def test_every_call_is_its_own_task_even_when_random_ids_repeat(client, monkeypatch):
    import uuid

    from dinolab.pipelines import dispatch

    fixed = uuid.UUID(int=7)
    monkeypatch.setattr(dispatch.uuid, "uuid4", lambda: fixed)  # a key made of random digits could repeat
    executor = DaskExecutor(client, Console(quiet=True))
    assert executor.map("toy part", abs, [(-n,) for n in range(300)]) == list(range(300))
    assert executor.map("toy part", abs, [(-n,) for n in range(300, 310)]) == list(range(300, 310))
