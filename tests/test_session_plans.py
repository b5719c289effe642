"""fastgru.InferenceSession's plans: the staged plan, onnxruntime alone on the whole graph, the
tuner that picks one per input signature, and the calls that go straight to onnxruntime."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import fastgru
from fastgru.errors import FormatError
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import random_spec
from fastgru.testing.torch_models import StreamingNet


@pytest.fixture(scope="module")
def streaming_path(tmp_path_factory):
    """A small streaming network (states in and out), legacy exporter, dynamic batch."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("plans") / "stream.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(StreamingNet().eval(), (torch.zeros(1, 2, 10), torch.zeros(2, 2, 20)),
                          str(path), input_names=["frame", "state_in"],
                          output_names=["out", "state_out"], dynamo=False, opset_version=14,
                          dynamic_axes={"frame": {1: "B"}, "state_in": {1: "B"}})
    return str(path)


def _stream_feeds(rng, batch):
    return {"frame": rng.standard_normal((1, batch, 10)).astype(np.float32),
            "state_in": rng.standard_normal((2, batch, 20)).astype(np.float32)}


def _costed(session, costs, counts):
    """Replace the session's clock and plans: each plan advances a fake clock by costs[plan]
    (read at call time) and counts its calls, then runs for real."""
    from fastgru.session_tuner import PlanTuner

    now = [0.0]
    session._tuner = PlanTuner(calls=3, seconds=0.0, block=2, clock=lambda: now[0])
    real = dict(session._runners)

    def runner(plan):
        def run(names, feeds):
            now[0] += costs[plan]
            counts[plan] = counts.get(plan, 0) + 1
            return real[plan](names, feeds)
        return run
    session._runners = {plan: runner(plan) for plan in real}


def test_plan_option_is_checked(streaming_path):
    for bad in ("fast", "ORT", None, 1):
        with pytest.raises(ValueError, match=r"plan must be one of \['auto', 'staged', "
                                             r"'onnxruntime'\], got"):
            fastgru.InferenceSession(streaming_path, plan=bad)


@pytest.mark.parametrize("plan", ["staged", "onnxruntime"])
def test_pinned_plans_match_onnxruntime(rng, streaming_path, plan):
    session = fastgru.InferenceSession(streaming_path, threads=1, plan=plan)
    peer = ort.InferenceSession(streaming_path, providers=["CPUExecutionProvider"])
    counts = {}
    _costed(session, {"staged": 1.0, "onnxruntime": 1.0}, counts)
    for batch in (1, 3, 1):
        feeds = _stream_feeds(rng, batch)
        for _ in range(3):
            for ours, theirs, meta in zip(session.run(None, feeds), peer.run(None, feeds),
                                          peer.get_outputs(), strict=True):
                assert_close(ours, theirs, "float32", meta.name)
    assert counts == {plan: 9}  # the pinned plan, every call
    assert session.plan == plan and session.plans == {}
    assert session.describe()[-1] == f"plan: {plan} (pinned)"
    assert (session._whole is None) == (plan == "staged")  # never built when not needed


@pytest.mark.parametrize("plan", ["auto", "onnxruntime"])
def test_calls_like_checked_ones_skip_the_checks(rng, streaming_path, monkeypatch, plan):
    """Once onnxruntime alone has run a call, a call with feeds of the same names, types,
    shapes and dtypes (and the same outputs asked for) goes straight to it; any other call is
    checked as before, and bad feeds are still refused."""
    from fastgru import session as module

    checked = []
    check = module._Feed.__call__
    monkeypatch.setattr(module._Feed, "__call__",
                        lambda feed, value: checked.append(feed.arg.name) or check(feed, value))
    session = fastgru.InferenceSession(streaming_path, threads=1, plan=plan)
    peer = ort.InferenceSession(streaming_path, providers=["CPUExecutionProvider"])
    if plan == "auto":
        _costed(session, {"staged": 2.0, "onnxruntime": 1.0}, {})
        for _ in range(10):  # timing, until onnxruntime is kept
            session.run(None, _stream_feeds(rng, 1))
        assert list(session.plans.values()) == ["onnxruntime"]

    def calls(n, output_names=None, batch=1):
        before = len(checked)
        for _ in range(n):
            feeds = _stream_feeds(rng, batch)
            wanted = [o.name for o in peer.get_outputs()] if output_names is None \
                else output_names
            for ours, theirs in zip(session.run(output_names, feeds),
                                    peer.run(wanted, feeds), strict=True):
                assert_close(ours, theirs, "float32", f"{output_names} batch {batch}")
        return len(checked) - before

    # the first call's two feeds, then none (with auto, the first call after the choice was
    # that first call)
    assert calls(5) == (2 if plan == "onnxruntime" else 0)
    assert calls(3, ["state_out"]) == 2  # other outputs asked for: checked once
    # another shape: checked once; with auto, a signature timed on its own, its first block
    # the staged plan's (a warm-up call and 2), every call checked
    assert calls(3, batch=3) == (2 if plan == "onnxruntime" else 6)
    feeds = _stream_feeds(rng, 1)
    with pytest.raises(TypeError, match="must be tensor\\(float\\)"):
        session.run(None, {**feeds, "frame": feeds["frame"].astype(np.float64)})
    with pytest.raises(ValueError, match="must have shape"):
        session.run(None, {**feeds, "frame": feeds["frame"][0]})
    with pytest.raises(ValueError, match="unknown"):
        session.run(None, {**feeds, "other": feeds["frame"]})
    class Tagged(np.ndarray):
        pass

    before = len(checked)  # an array of another type: checked (and converted)
    tagged = session.run(None, {**feeds, "frame": feeds["frame"].view(Tagged)})
    assert len(checked) == before + 2
    for ours, theirs in zip(tagged, peer.run(None, feeds), strict=True):
        assert_close(ours, theirs, "float32", "another array type")
    for _ in range(2):  # output names from an iterator, read once, checked then straight
        (state,) = session.run(iter(["state_out"]), feeds)
        assert_close(state, peer.run(["state_out"], feeds)[0], "float32", "iterator")


def test_straight_calls_end_where_onnxruntime_fails(rng, streaming_path):
    """A signature whose calls go straight to onnxruntime: once onnxruntime fails on a call and
    auto falls back to the staged plan, that call and every later one run the staged plan."""
    session = fastgru.InferenceSession(streaming_path, threads=1)
    peer = ort.InferenceSession(streaming_path, providers=["CPUExecutionProvider"])
    _costed(session, {"staged": 2.0, "onnxruntime": 1.0}, {})
    for _ in range(11):  # timing, then onnxruntime kept and its calls straight
        session.run(None, _stream_feeds(rng, 1))
    assert list(session.plans.values()) == ["onnxruntime"]

    def failing(names, feeds):
        raise RuntimeError("onnxruntime failed")
    session._whole = failing
    for _ in range(3):
        feeds = _stream_feeds(rng, 1)
        for ours, theirs in zip(session.run(None, feeds), peer.run(None, feeds), strict=True):
            assert_close(ours, theirs, "float32", "after the fall back")
    assert session.plan == "staged" and "onnxruntime failed" in session.describe()[-1]


def test_auto_times_both_plans_and_keeps_the_faster_per_signature(rng, streaming_path):
    session = fastgru.InferenceSession(streaming_path, threads=1)
    peer = ort.InferenceSession(streaming_path, providers=["CPUExecutionProvider"])
    costs, counts = {"staged": 1.0, "onnxruntime": 3.0}, {}
    _costed(session, costs, counts)
    assert session.plan == "auto" and session.plans == {}

    def calls(batch, n):
        for _ in range(n):
            feeds = _stream_feeds(rng, batch)
            for ours, theirs in zip(session.run(None, feeds), peer.run(None, feeds),
                                    strict=True):
                assert_close(ours, theirs, "float32", f"batch {batch}")

    # blocks of 2, staged first, each plan's first led by a warm-up call, until each plan
    # has 3 timings: staged 1 + 2, onnxruntime 1 + 2, staged 2, onnxruntime 1 (chosen), and
    # the tenth call runs the staged plan kept
    calls(1, 10)
    assert counts == {"staged": 6, "onnxruntime": 4}
    one = (("frame", (1, 1, 10), "float32"), ("state_in", (2, 1, 20), "float32"))
    assert session.plans == {one: "staged"}
    calls(1, 5)
    assert counts == {"staged": 11, "onnxruntime": 4}  # kept: no more timing
    # another signature is timed on its own, and here onnxruntime wins
    costs.update(staged=5.0, onnxruntime=2.0)
    calls(2, 3)
    two = (("frame", (1, 2, 10), "float32"), ("state_in", (2, 2, 20), "float32"))
    assert session.plans == {one: "staged", two: None}  # still timing
    assert session.describe()[-1].endswith("-> staged; frame [1, 2, 10] float32, state_in "
                                           "[2, 2, 20] float32 -> timing")
    calls(2, 7)
    assert session.plans == {one: "staged", two: "onnxruntime"}
    before = dict(counts)
    calls(2, 4)
    calls(1, 4)
    assert counts == {"staged": before["staged"] + 4, "onnxruntime": before["onnxruntime"] + 4}
    assert "-> onnxruntime" in session.describe()[-1]


def test_tuner_times_the_staged_plan_before_onnxruntime_first_runs():
    """The order of the calls handed out: the staged plan's first block (a warm-up call, then
    `block` timed) before onnxruntime's first call, whose spinning workers would slow it; then
    onnxruntime's, then blocks in turn until both have enough timings."""
    from fastgru.session_tuner import PlanTuner

    tuner = PlanTuner(calls=5, seconds=0.0, block=3)
    order = []
    while tuner.choice("s") is None:
        plan, timed = tuner.next("s")
        order.append((plan[0], timed))
        if timed:
            tuner.record("s", plan, 1.0 if plan == "staged" else 2.0)
    st, ort_ = ("s", True), ("o", True)  # a timed call of each plan
    assert order == [("s", False), st, st, st, ("o", False), ort_, ort_, ort_, st, st, st, ort_,
                     ort_]
    assert tuner.next("s") == ("staged", False)


def test_tuner_forgets_the_least_recently_used_signature():
    from fastgru.session_tuner import PlanTuner

    tuner = PlanTuner(calls=1, seconds=0.0, block=1, signatures=2)

    def settle(signature, staged, alone):
        while tuner.choice(signature) is None:
            plan, timed = tuner.next(signature)
            if timed:
                tuner.record(signature, plan, staged if plan == "staged" else alone)

    settle("a", 1.0, 2.0)
    settle("b", 2.0, 1.0)
    assert tuner.chosen() == {"a": "staged", "b": "onnxruntime"}
    assert tuner.next("a") == ("staged", False)  # "a" is now the most recent
    settle("c", 1.0, 2.0)
    assert tuner.chosen() == {"a": "staged", "c": "staged"}  # "b" forgotten
    assert tuner.next("b") == ("staged", False)  # and timed again: its warm-up call first
    with pytest.raises(ValueError, match="PlanTuner needs"):
        PlanTuner(calls=0)


def test_tuner_under_many_threads(rng, streaming_path):
    """A fresh auto session called from 8 threads at once, on two signatures: every result is
    right, and each signature ends with one plan."""
    from concurrent.futures import ThreadPoolExecutor

    session = fastgru.InferenceSession(streaming_path, threads=1)
    peer = ort.InferenceSession(streaming_path, providers=["CPUExecutionProvider"])
    cases = []
    for k in range(8):
        feeds = _stream_feeds(np.random.default_rng(k), 1 + k % 2)
        cases.append((feeds, peer.run(None, feeds)))

    def work(case):
        feeds, expected = case
        for _ in range(40):
            for ours, theirs in zip(session.run(None, feeds), expected, strict=True):
                assert_close(ours, theirs, "float32", "threaded")
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, cases))
    plans = session.plans
    assert len(plans) == 2 and set(plans.values()) <= {"staged", "onnxruntime"}


@pytest.mark.parametrize("plan", ["auto", "staged", "onnxruntime"])
def test_a_result_is_never_overwritten_by_a_later_call(rng, streaming_path, plan):
    """Whatever buffers the plans reuse, a result kept from one call stays as it was after the
    calls that follow (through the auto plan's timing calls too)."""
    session = fastgru.InferenceSession(streaming_path, threads=1, plan=plan)
    kept = session.run(None, _stream_feeds(rng, 2))
    copies = [k.copy() for k in kept]
    for _ in range(30):
        later = session.run(None, _stream_feeds(rng, 2))
        assert all(not np.shares_memory(k, x) for k in kept for x in later)
    for k, c in zip(kept, copies, strict=True):
        np.testing.assert_array_equal(k, c)


def test_auto_falls_back_to_staged_where_onnxruntime_alone_cannot_run(rng):
    """onnxruntime's CPU GRU refuses layout=1, which fastgru runs: auto keeps the staged plan
    and says why; a plan pinned to onnxruntime is refused at construction."""
    spec = random_spec(rng, 3, 4, linear_before_reset=False)
    layer = spec.layers[0]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n)
             for n, a in (("W", layer.w), ("R", layer.r), ("B", layer.b))]
    graph = helper.make_graph(
        [helper.make_node("GRU", ["X", "W", "R", "B"], ["Y"], hidden_size=4, layout=1),
         helper.make_node("Relu", ["Y"], ["Z"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", "T", 3])],
        [helper.make_tensor_value_info("Z", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    session = fastgru.InferenceSession(model, threads=1)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    y, _ = fastgru.GRU(spec, batch_first=True)(x)
    for _ in range(20):  # past the staged plan's first block, to onnxruntime's first call
        (z,) = session.run(None, {"X": x})
        assert_close(z, np.maximum(y, 0).reshape(2, 5, 1, 4), "float32", "Z")
    assert session.plan == "staged"
    assert session.describe()[-1].startswith("plan: staged (onnxruntime alone: onnxruntime "
                                             "cannot load the whole graph")
    with pytest.raises(FormatError, match="onnxruntime cannot load the whole graph"):
        fastgru.InferenceSession(model, plan="onnxruntime")
