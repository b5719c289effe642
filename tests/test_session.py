"""fastgru.InferenceSession on whole networks exported by torch.onnx.export (both exporters),
against onnxruntime running the same file; and GRU.from_onnx refusing graphs that are more than
a GRU stack."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import fastgru
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import onnx_gru_model, random_spec, spec_layers
from fastgru.testing.reference import reference_gru
from fastgru.testing.torch_models import (BidirectionalBatchFirst, EncoderDecoder, MaskNet,
                                          StreamingNet, export)
from fastgru.errors import FormatError


class LastStateOnly(torch.nn.Module):
    """Only Y_h is used: a classifier on the final state."""

    def __init__(self, features=5, hidden=14):
        super().__init__()
        self.gru = torch.nn.GRU(features, hidden)
        self.out = torch.nn.Linear(hidden, 2)

    def forward(self, x):
        return torch.softmax(self.out(self.gru(x)[1][0]), -1)


def compare(path, feeds, threads=1):
    """Every output of fastgru's session against onnxruntime's on the same file."""
    ours = fastgru.InferenceSession(path, threads=threads)
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in ours.get_inputs()] == \
        [(i.name, i.type) for i in theirs.get_inputs()]
    assert [o.name for o in ours.get_outputs()] == [o.name for o in theirs.get_outputs()]
    for a, b, meta in zip(ours.run(None, feeds), theirs.run(None, feeds), theirs.get_outputs(),
                          strict=True):
        assert_close(a, b, "float32", meta.name)
    assert any(stage[0] == "gru" for stage in ours._stages)
    return ours


@pytest.fixture(params=[False, True], ids=["legacy-exporter", "dynamo-exporter"])
def dynamo(request):
    return request.param


def test_mask_network(rng, tmp_path, dynamo):
    torch.manual_seed(1)
    x = rng.standard_normal((2, 30, 16)).astype(np.float32)
    path = export(MaskNet(), (torch.as_tensor(x),), tmp_path / "mask.onnx",
                  (["x"], ["mask"]), dynamo)
    session = compare(path, {"x": x})
    (step,) = [stage[1] for stage in session._stages if stage[0] == "gru"]
    assert step.model.num_layers == 2  # the two layers run as one fastgru stack


def test_encoder_decoder(rng, tmp_path, dynamo):
    torch.manual_seed(2)
    source = rng.standard_normal((12, 3, 8)).astype(np.float32)
    target = rng.standard_normal((7, 3, 8)).astype(np.float32)
    path = export(EncoderDecoder(), (torch.as_tensor(source), torch.as_tensor(target)),
                  tmp_path / "seq2seq.onnx", (["source", "target"], ["logits"]), dynamo)
    compare(path, {"source": source, "target": target})


def test_streaming_states_through_500_frames(rng, tmp_path):
    torch.manual_seed(3)
    frame = np.zeros((1, 2, 10), np.float32)
    state = np.zeros((2, 2, 20), np.float32)
    path = export(StreamingNet(), (torch.as_tensor(frame), torch.as_tensor(state)),
                  tmp_path / "stream.onnx", (["frame", "state_in"], ["out", "state_out"]),
                  False)
    ours = fastgru.InferenceSession(path, threads=1)
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    mine = peer = state
    for _ in range(500):
        frame = rng.standard_normal((1, 2, 10)).astype(np.float32)
        out, mine = ours.run(None, {"frame": frame, "state_in": mine})
        expected, peer = theirs.run(None, {"frame": frame, "state_in": peer})
        assert_close(out, expected, "float32", "out")
    assert_close(mine, peer, "float32", "state after 500 frames")


def test_bidirectional_batch_first(rng, tmp_path, dynamo):
    torch.manual_seed(4)
    x = rng.standard_normal((3, 9, 6)).astype(np.float32)
    path = export(BidirectionalBatchFirst(), (torch.as_tensor(x),), tmp_path / "bi.onnx",
                  (["x"], ["y", "h"]), dynamo)
    compare(path, {"x": x}, threads=2)


def test_only_the_final_state_is_used(rng, tmp_path, dynamo):
    torch.manual_seed(5)
    x = rng.standard_normal((11, 4, 5)).astype(np.float32)
    path = export(LastStateOnly(), (torch.as_tensor(x),), tmp_path / "last.onnx",
                  (["x"], ["p"]), dynamo)
    compare(path, {"x": x})


def _one_gru_graph(rng, extra_nodes, x_name="X", inputs=None, outputs=("Y", "Y_h"),
                   gru_inputs=None, initializers=()):
    """A graph around one GRU node (D=3, H=4) built by hand."""
    spec = random_spec(rng, 3, 4, linear_before_reset=False)
    base = onnx_gru_model(spec)
    layer = spec.layers[0]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n)
             for n, a in (("W", layer.w), ("R", layer.r), ("B", layer.b))]
    gru = helper.make_node("GRU", gru_inputs or [x_name, "W", "R", "B"], ["Y", "Y_h"],
                           name="gru", hidden_size=4)
    graph = helper.make_graph(
        [*extra_nodes, gru], "g",
        inputs or [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", 3])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits + list(initializers))
    return helper.make_model(graph, opset_imports=base.opset_import), spec


def test_identity_cast_plumbing_and_constant_state(rng):
    """X reaches the GRU through Identity and Cast; initial_h and sequence_lens are constants,
    which the session must honour."""
    h0 = numpy_helper.from_array(rng.standard_normal((1, 2, 4)).astype(np.float32), "h0")
    lengths = numpy_helper.from_array(np.array([5, 2], np.int32), "lengths")
    model, spec = _one_gru_graph(
        rng, [helper.make_node("Identity", ["X"], ["x1"]),
              helper.make_node("Cast", ["x1"], ["x2"], to=TensorProto.FLOAT)],
        gru_inputs=["x2", "W", "R", "B", "lengths", "h0"], initializers=[h0, lengths])
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    path = model.SerializeToString()
    ours = fastgru.InferenceSession(path).run(None, {"X": x})
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"X": x})
    for a, b in zip(ours, theirs, strict=True):
        assert_close(a, b, "float32")
    # the constant state matters: the same GRU without it gives other results
    plain = fastgru.GRU(spec)(x)[1]
    assert np.abs(plain - ours[1]).max() > 1e-3


def test_bad_graphs_get_format_errors(rng):
    cycle, _ = _one_gru_graph(rng, [helper.make_node("Identity", ["b"], ["a"]),
                                    helper.make_node("Identity", ["a"], ["b"])], x_name="a")
    with pytest.raises(FormatError, match="cycle"):
        fastgru.InferenceSession(cycle)
    with pytest.raises(FormatError, match="cycle"):
        fastgru.GRU.from_onnx(cycle)
    missing, _ = _one_gru_graph(rng, [], x_name="nowhere")
    with pytest.raises(FormatError, match="nowhere"):
        fastgru.InferenceSession(missing)
    weights_from_input, _ = _one_gru_graph(
        rng, [helper.make_node("Identity", ["X"], ["R_live"])],
        gru_inputs=["X", "W", "R_live", "B"])
    with pytest.raises(FormatError, match=r"input R \('R_live'\) must be a constant"):
        fastgru.GRU.from_onnx(weights_from_input)
    # the session leaves such a node to onnxruntime and says why (it never refuses a graph
    # onnxruntime runs: tests/test_onnx_structure.py runs one)
    assert any("'gru' runs in onnxruntime, not fastgru: GRU node 'gru': input R ('R_live') must "
               "be a constant" in line
               for line in fastgru.InferenceSession(weights_from_input).describe())
    session = fastgru.InferenceSession(_one_gru_graph(rng, [])[0])
    with pytest.raises(ValueError, match=r"the inputs are \['X'\]; missing \['X'\], unknown \['x'\]"):
        session.run(None, {"x": np.zeros((2, 1, 3), np.float32)})
    with pytest.raises(ValueError, match=r"unknown output names \['Z'\]"):
        session.run(["Z"], {"X": np.zeros((2, 1, 3), np.float32)})


def test_from_onnx_refuses_more_than_a_stack(rng):
    """Operators around the GRU are never dropped silently: refused by name, pointing to
    InferenceSession and node=."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    scaled, _ = _one_gru_graph(rng, [], outputs=("Y2", "Y_h"), initializers=[two])
    scaled.graph.node.append(helper.make_node("Mul", ["Y", "two"], ["Y2"], name="scale"))
    with pytest.raises(FormatError, match=r"node 'scale' \(Mul\) computes something .*"
                                          r"fastgru.InferenceSession runs whole graphs, and node="):
        fastgru.GRU.from_onnx(scaled)
    assert fastgru.GRU.from_onnx(scaled, node="gru").hidden_size == 4  # node= still reads it

    # a Reshape in front of the GRU that provably keeps (T, B, 3) for every T and B is read;
    # one whose fixed target holds for one length only is refused
    same = numpy_helper.from_array(np.array([0, 0, 3], np.int64), "shape")
    kept, spec = _one_gru_graph(rng, [helper.make_node("Reshape", ["X", "shape"], ["x1"],
                                                       name="front")],
                                x_name="x1", initializers=[same], outputs=("Y",))
    x = rng.standard_normal((5, 2, 3))
    y, _ = fastgru.GRU.from_onnx(kept)(x)
    y_ref, _ = reference_gru(x, spec_layers(spec), linear_before_reset=False)
    assert_close(y, y_ref, "float32", "y")  # the file stores the weights in float32
    fixed = numpy_helper.from_array(np.array([5, 2, 3], np.int64), "shape")
    reshaped, _ = _one_gru_graph(rng, [helper.make_node("Reshape", ["X", "shape"], ["x1"],
                                                        name="front")],
                                 x_name="x1", initializers=[fixed])
    with pytest.raises(FormatError, match=r"that do not form one stack; fastgru.InferenceSession"):
        fastgru.GRU.from_onnx(reshaped)

    h0 = numpy_helper.from_array(np.ones((1, 2, 4), np.float32), "h0")
    per_row_state, _ = _one_gru_graph(rng, [], gru_inputs=["X", "W", "R", "B", "", "h0"],
                                      initializers=[h0])
    with pytest.raises(FormatError, match=r"its initial_h is a constant of shape \[1, 2, 4\]; a "
                                          r"stored initial state must be \(1, 1, 4\)"):
        fastgru.GRU.from_onnx(per_row_state)
    lengths = numpy_helper.from_array(np.array([3], np.int32), "lengths")
    constant_lengths, _ = _one_gru_graph(rng, [], gru_inputs=["X", "W", "R", "B", "lengths"],
                                         initializers=[lengths])
    with pytest.raises(FormatError, match="its sequence_lens is a constant"):
        fastgru.GRU.from_onnx(constant_lengths)


@pytest.mark.slow
@pytest.mark.parametrize("hidden_size", [256, 512])
def test_default_exporter_at_realistic_sizes(rng, tmp_path, hidden_size):
    """torch.onnx.export's default (dynamo) exporter writes the weights of H >= 64 as
    Slice/Concat of the stored ones: folded at load, by from_onnx and by the session."""
    torch.manual_seed(6)
    module = torch.nn.GRU(32, hidden_size, 2, batch_first=True).eval()
    x = rng.standard_normal((2, 20, 32)).astype(np.float32)
    path = export(module, (torch.as_tensor(x),), tmp_path / "gru.onnx", (["x"], ["y", "h"]),
                  True)
    assert "Slice" in {n.op_type for n in onnx.load(path, load_external_data=False).graph.node}
    model = fastgru.load(path)
    with torch.no_grad():
        y_t, h_t = module(torch.as_tensor(x))
    y, h_n = model(x)
    assert_close(y, y_t.numpy(), "float32", "y")
    assert_close(h_n, h_t.numpy(), "float32", "h_n")
    compare(path, {"x": x})


def test_plumbing_that_is_not_a_stack_is_never_fused(rng):
    """Between two GRUs, a Reshape that reinterprets (T, 1, B, H) as (B, T, H) looks like the
    exporters' plumbing; running it as one stack would be silently wrong. from_onnx refuses
    it, and the session runs the layers apart, matching onnxruntime."""
    first, second = random_spec(rng, 3, 4), random_spec(rng, 4, 4)
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), f"{n}{k}")
             for k, spec in enumerate((first, second)) for n, a in
             (("W", spec.layers[0].w), ("R", spec.layers[0].r), ("B", spec.layers[0].b))]
    inits.append(numpy_helper.from_array(np.array([2, 4, 4], np.int64), "shape"))
    graph = helper.make_graph(
        [helper.make_node("GRU", ["X", "W0", "R0", "B0"], ["Y0"], hidden_size=4,
                          linear_before_reset=1),
         helper.make_node("Reshape", ["Y0", "shape"], ["swapped"]),
         helper.make_node("GRU", ["swapped", "W1", "R1", "B1"], ["Y1"], hidden_size=4,
                          linear_before_reset=1)],
        "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 2, 3])],
        [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(FormatError, match="do not pass the sequence on as a stacked GRU reads it"):
        fastgru.GRU.from_onnx(model)
    session = fastgru.InferenceSession(model)
    assert sum(stage[0] == "gru" for stage in session._stages) == 2  # not fused
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    assert_close(session.run(None, {"X": x})[0], expected, "float32", "Y1")


# ---- plans: staged, onnxruntime alone, and the tuner that picks one per input signature --------

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
    for ours, theirs in zip(tagged, session.run(None, feeds), strict=True):
        np.testing.assert_array_equal(ours, theirs)


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
