"""A failed run holds no GPU: the planner stops every live server and GPU task of other stages."""

from __future__ import annotations

from test_op_planner import FUSE, RD, F, R, S, acts, load_spec

from kubefusion_operator.planner import next_actions


def test_failure_stops_live_gpu_work_of_other_stages() -> None:
    spec = load_spec("wrpo-llama3-8b", **{"serving.allowGpuOverlap": True})
    done = {"prepare": S, **{f"sample/{s.name}": S for s in spec.sources}, "score": S, "build": S}
    observed = {**done, "sft": S, "serve-target": RD, "sample-target": F, "score-target": R}
    actions = acts(next_actions(spec, observed))
    assert actions[0] == ("fail", "sample-target")
    assert set(actions[1:]) == {("stop", "serve-target"), ("stop", "score-target")}  # both hold GPUs


def test_failure_leaves_cpu_work_and_finished_work_alone() -> None:
    observed = {"prepare": S, "serve-sources/adder": RD, "sample/adder": R, "sample/reverser": F}
    actions = acts(next_actions(FUSE, observed))
    # the quickstart's servers use no GPU but are servers: stopped; the CPU sampler keeps running
    assert actions == [("fail", "sample/reverser"), ("stop", "serve-sources/adder")]
