"""InferenceSession: a whole ONNX model, its GRU nodes run by fastgru and the rest by onnxruntime.

Two plans compute the graph. The staged plan (session_plan) cuts it at its GRU nodes into
stages run in turn: onnxruntime sessions between fastgru.GRU calls; a graph whose GRUs all sit
in one place (front-end -> GRU stack -> head) runs as at most two onnxruntime sessions around
the GRUs. The other plan is onnxruntime alone on the whole graph. With plan="auto" the session
times both on the first calls of each input signature and keeps the faster (session_tuner), so
it is never slower than onnxruntime by more than its own checks. GRUs inside subgraphs (If,
Loop, Scan) stay with onnxruntime.

The interface is onnxruntime's: swap `onnxruntime.InferenceSession(path)` for
`fastgru.InferenceSession(path)`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numba
import numpy as np

from fastgru._boundary import resolve_dtype
from fastgru.errors import FormatError
from fastgru.loaders import onnx_graph, onnx_node
from fastgru.session_plan import Stages, direct_run, onnxruntime_session
from fastgru.session_tuner import CHOICES, PlanTuner


# onnxruntime's names for ONNX element types, as NodeArg.type gives them
_ORT_TYPES = {1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
              7: "int64", 8: "string", 9: "bool", 10: "float16", 11: "double", 12: "uint32",
              13: "uint64", 16: "bfloat16"}


@dataclass(frozen=True)
class NodeArg:
    """A graph input or output as onnxruntime describes it: .name, .shape (ints, names of
    symbolic dimensions, or None), .type ("tensor(float)")."""

    name: str
    shape: list
    type: str


def _node_arg(value_info) -> NodeArg:
    tensor = value_info.type.tensor_type
    shape = None
    if tensor.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in tensor.shape.dim]
    return NodeArg(value_info.name, shape, f"tensor({_ORT_TYPES.get(tensor.elem_type, '?')})")


# signatures a session remembers that onnxruntime alone runs (beyond, calls take the checks)
_STRAIGHT_SIGNATURES = 64


def _call_key(output_names: list | None, input_feed: dict) -> tuple:
    """The output names asked for and each feed's name, type, shape and dtype, in feed order:
    a call with the key of one checked before needs no checks again."""
    return (None if output_names is None else tuple(output_names),
            *[(name, type(value), value.shape, value.dtype) for name, value in input_feed.items()])


class _Feed:
    """Checks the feed for one graph input as onnxruntime would: refused for another element
    type, another rank, or another size where the graph fixes one. Made once per session, so a
    one-frame call spends 0.6 µs per input here rather than 1.4."""

    def __init__(self, arg: NodeArg) -> None:
        self.arg = arg
        expected = arg.type[len("tensor("):-1]
        name = {"float": "float32", "double": "float64", "string": "str"}.get(expected, expected)
        self.dtype = None if expected == "string" else np.dtype(name)
        self.dtype_name = name
        self.rank = None if arg.shape is None else len(arg.shape)
        self.fixed = () if arg.shape is None else \
            tuple((axis, d) for axis, d in enumerate(arg.shape) if isinstance(d, int))

    def __call__(self, value) -> np.ndarray:
        array = value if type(value) is np.ndarray else np.asarray(value)
        if self.dtype is not None and array.dtype != self.dtype:
            raise TypeError(f"input {self.arg.name!r} must be {self.arg.type} "
                            f"({self.dtype_name}), got {array.dtype}")
        if self.rank is not None:
            shape = array.shape
            if len(shape) != self.rank:
                self._refuse(shape)
            for axis, d in self.fixed:  # a loop: any() over a generator costs 0.3 µs more
                if shape[axis] != d:
                    self._refuse(shape)
        return array

    def _refuse(self, shape) -> None:
        raise ValueError(f"input {self.arg.name!r} must have shape {self.arg.shape}, got {shape}")


class InferenceSession:
    """Run an ONNX model that contains GRU nodes: the GRUs by fastgru, the rest by onnxruntime.

    Parameters
    ----------
    src : str, os.PathLike, bytes or onnx.ModelProto
    threads : int, optional
        Threads for both fastgru's kernels and onnxruntime's sessions (default: Numba's and
        onnxruntime's own defaults).
    plan : {"auto", "staged", "onnxruntime"}
        "staged": the GRUs by fastgru, the rest by onnxruntime, in stages; "onnxruntime":
        onnxruntime alone on the whole graph; "auto" (default): for each input signature (the
        feeds' shapes and dtypes), both are timed on its first calls and the faster is kept.
        `plans` and `describe()` say which runs. Both compute the same graph: the results differ
        only by the GRU's float rounding (fastgru's against onnxruntime's, ~1e-6).
    dtype : optional
        The precision of the GRUs fastgru runs, as GRU's dtype= ("float32", "float64",
        "bfloat16", "int8"; a double GRU node only "float64"); default: the graph's own float
        type (GRU weights made by DequantizeLinear run as the floats they stand for, as
        onnxruntime runs them; "int8" runs their int8 values, as fastgru.load reads them).
        Given, it pins the staged plan: onnxruntime's whole graph would compute the GRUs in the
        graph's own precision.

    The GRU nodes' weights (W, R, B) must be constants, possibly computed from initializers by
    data-movement ops (folded once here); X, sequence_lens and initial_h may be anything.
    """


    def __init__(self, src, *, threads: int | None = None, plan: str = "auto",
                 dtype=None) -> None:
        import onnx

        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        if not isinstance(plan, str) or plan not in CHOICES:
            raise ValueError(f"plan must be one of {list(CHOICES)}, got {plan!r}")
        precision = None if dtype is None else resolve_dtype(dtype)
        if precision is not None and plan == "onnxruntime":
            raise ValueError("dtype= sets the precision of the GRUs fastgru runs; "
                             "plan='onnxruntime' runs none")
        if precision is not None:  # onnxruntime's whole graph would run another precision
            plan = "staged"
        self._threads = threads
        self._plan = plan
        model, folder = onnx_graph.load_model(src)
        if model is src:  # the caller's ModelProto: this session edits its own copy
            model = onnx.ModelProto()
            model.CopyFrom(src)
        graph = model.graph
        for k, tensor in enumerate(graph.initializer):  # onnxruntime gets every stage as bytes
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                array = onnx_graph.decode(tensor, folder, f"initializer {tensor.name!r}")
                graph.initializer[k].CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
        self._model = model
        self._folder = folder
        self._opset = opset = onnx_graph.opset(model)
        # an initializer named like a graph input is a default the caller may override (as
        # onnxruntime lets them): an input here, fed its default when the caller does not
        declared = {i.name for i in graph.input}
        self._defaults, kept = {}, []
        for tensor in graph.initializer:
            if tensor.name in declared:
                self._defaults[tensor.name] = onnx_graph.decode(tensor, folder,
                                                                f"initializer {tensor.name!r}")
            else:
                kept.append(tensor)
        if self._defaults:
            del graph.initializer[:]
            graph.initializer.extend(kept)
        initializers = {t.name for t in graph.initializer}
        self._inputs = [_node_arg(i) for i in graph.input if i.name not in self._defaults]
        self._outputs = [_node_arg(o) for o in graph.output]
        self._feeds = [_Feed(arg) for arg in self._inputs]
        self._overrides = {i.name: _Feed(_node_arg(i)) for i in graph.input
                           if i.name in self._defaults}
        self._output_names = [o.name for o in self._outputs]
        # a stage's other inputs get no shape: a value_info's fixed sizes on an intermediate
        # value are a claim onnxruntime would enforce, and the graph's inputs decide them
        self._feed_names = {arg.name for arg in self._inputs} | set(self._defaults)
        grus, values, self._apart = [], {}, {}
        for gru in onnx_node.gru_nodes(graph):  # those fastgru cannot run stay onnxruntime's
            try:
                got = onnx_node.constant_inputs(graph, folder, [gru], opset)
                onnx_node.read_gru_node(gru, got)
                if got[gru.input[1]].dtype not in (np.float32, np.float64):
                    raise FormatError(f"its weights are {got[gru.input[1]].dtype}")
            except FormatError as why:
                self._apart[gru.name or "<unnamed>"] = str(why)
                continue
            grus.append(gru)
            values.update(got)
        for gru in grus:  # zeros computed at run time are the state a GRU starts from anyway
            h0 = onnx_node.gru_inputs(gru)[5]  # (a constant one is kept: its shape is checked)
            if h0 and h0 not in values and \
                    isinstance(onnx_node.stored_state(graph, h0, folder, opset), float):
                gru.input[5] = ""
        self._types = onnx_graph.value_infos(model)
        self._elem = {v.name: v.type.tensor_type.elem_type for v in self._types.values()}
        for t in graph.initializer:
            self._elem[t.name] = t.data_type
        # what the GRU steps read and the graph outputs that are constants (initializers, for
        # which no stage runs): read from the constants at every run
        constants = onnx_graph.constant_names(graph)
        wanted = {onnx_node.gru_inputs(g)[0]: f"GRU node {g.name!r}: X" for g in grus}
        wanted.update((o.name, f"graph output {o.name!r}") for o in graph.output)
        values.update(onnx_graph.fold_constants(
            graph, folder, {n: w for n, w in wanted.items() if n in constants}, opset))
        read = [n for g in grus for i, n in enumerate(onnx_node.gru_inputs(g)) if i in (0, 4, 5)]
        stored = [o.name for o in graph.output if o.name in initializers]
        self._constants = {n: values[n] for n in read + stored if n in values}
        self._stages = Stages(model, folder, opset, values, self._types, self._elem,
                              self._feed_names, threads, precision).build(grus, initializers)
        self._tuner = PlanTuner()
        self._runners = {"staged": self._run_staged, "onnxruntime": self._run_whole}
        self._whole = None  # onnxruntime's run on the whole graph, made when first needed
        self._whole_lock = threading.Lock()
        self._whole_refused = None  # why onnxruntime refused the whole graph, if it did
        self._straight: dict = {}  # _call_key -> output names, for calls onnxruntime runs
        if plan == "onnxruntime":
            self._whole_session()

    # ---- onnxruntime's interface -------------------------------------------------------------

    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def run(self, output_names, input_feed: dict, run_options=None) -> list[np.ndarray]:
        """The requested outputs (all, in the graph's order, when output_names is None)."""
        wanted = None if output_names is None else list(output_names)  # an iterator: read once
        if self._straight and run_options is None and self._plan != "staged":
            # feeds like ones checked before, that onnxruntime alone runs: straight to it
            # (the checks cost a one-frame network 2% here: bench/RESULTS.md, "straight calls")
            try:
                known = self._straight.get(_call_key(wanted, input_feed))
            except (AttributeError, TypeError):  # not arrays, or names that are no list
                known = None
            if known is not None:
                return self._runners["onnxruntime"](known, input_feed)
        if run_options is not None:
            raise TypeError("fastgru.InferenceSession.run takes no run_options")
        if wanted is None:
            names = self._output_names
        else:
            names = wanted
            unknown = [n for n in names if n not in self._output_names]
            if unknown:
                raise ValueError(f"unknown output names {unknown}; the outputs are "
                                 f"{sorted(self._output_names)}")
        try:
            feeds = {feed.arg.name: feed(input_feed[feed.arg.name]) for feed in self._feeds}
        except KeyError:
            feeds = None
        if feeds is None or len(input_feed) != len(feeds) and \
                set(input_feed) - set(feeds) - set(self._defaults):
            expected = {i.name for i in self._inputs}
            raise ValueError(f"the inputs are {sorted(expected)}; missing "
                             f"{sorted(expected - set(input_feed))}, unknown "
                             f"{sorted(set(input_feed) - expected - set(self._defaults))}")
        plan = self._plan
        if plan == "auto":
            signature = tuple([(a.shape, a.dtype.char) for a in feeds.values()])
        for name, default in self._defaults.items():  # initializers the caller may override
            feeds[name] = self._overrides[name](input_feed[name]) if name in input_feed \
                else default
        if plan == "auto":
            plan, timed = self._tuner.next(signature)
            if timed:
                clock = self._tuner.clock
                start = clock()
                results = self._runners[plan](names, feeds)
                self._tuner.record(signature, plan, clock() - start)
                return results
        results = self._runners[plan](names, feeds)
        if plan == "onnxruntime" and self._whole is not None and not self._defaults and \
                len(self._straight) < _STRAIGHT_SIGNATURES and \
                (self._plan == "onnxruntime" or self._plan == "auto" and
                 self._tuner.choice(signature) == "onnxruntime") and \
                all(type(value) is np.ndarray for value in input_feed.values()):
            self._straight[_call_key(wanted, input_feed)] = names
        return results

    # ---- the plans -----------------------------------------------------------------------------

    def _run_staged(self, names: list, feeds: dict) -> list[np.ndarray]:
        values = dict(self._constants)
        values.update(feeds)
        before = numba.get_num_threads()
        wanted = min(self._threads, numba.config.NUMBA_NUM_THREADS) if self._threads else before
        if wanted != before:
            numba.set_num_threads(wanted)
        try:
            for stage in self._stages:
                if stage[0] == "gru":
                    stage[1].run(values)
                else:
                    _, _, inputs, outputs, _, run = stage
                    results = run(outputs, {n: values[n] for n in inputs})
                    values.update(zip(outputs, results, strict=True))
        finally:
            if wanted != before:
                numba.set_num_threads(before)
        return [values[n] for n in names]

    def _run_whole(self, names: list, feeds: dict) -> list[np.ndarray]:
        run = self._whole or self._whole_session()
        if run is None:  # onnxruntime refused the whole graph (it runs its stages)
            return self._run_staged(names, feeds)
        if self._plan != "auto":
            return run(names, feeds)
        try:
            return run(names, feeds)
        except Exception as error:  # onnxruntime raises its own types
            failure = str(error)
        # onnxruntime alone cannot run what the staged plan may (a GRU with layout=1): if the
        # staged plan runs these feeds, it runs from then on; if not, its error is the caller's
        results = self._run_staged(names, feeds)
        self._whole_refused = f"onnxruntime failed on the whole graph: {failure}"
        self._plan = "staged"
        self._straight.clear()
        return results

    def _whole_session(self):
        """The run of onnxruntime's session on the whole graph, made once (with its own
        defaults, idle workers spinning, as onnxruntime alone runs). If onnxruntime refuses the
        graph: a FormatError when the plan is pinned to it; with "auto", None, and the staged
        plan runs from then on."""
        with self._whole_lock:
            if self._whole is None and self._whole_refused is None:
                try:
                    self._whole = direct_run(onnxruntime_session(
                        self._model.SerializeToString(), self._threads, spinning=True,
                        what="the whole graph", quiet=self._plan == "auto"))
                except FormatError as error:
                    if self._plan == "onnxruntime":
                        raise
                    self._whole_refused = str(error)
                    self._plan = "staged"
            return self._whole

    # ---- what runs ---------------------------------------------------------------------------

    @property
    def plan(self) -> str:
        """The plan option: "auto", "staged" or "onnxruntime"."""
        return self._plan

    @property
    def plans(self) -> dict:
        """Which plan runs for each input signature seen: {((input name, shape, dtype), ...):
        "staged" | "onnxruntime" | None while its first calls time both}. With a pinned plan,
        {} (the pinned plan runs for every signature)."""
        names = [feed.arg.name for feed in self._feeds]
        return {tuple((name, shape, np.dtype(char).name)
                      for name, (shape, char) in zip(names, signature, strict=True)): choice
                for signature, choice in self._tuner.chosen().items()}

    def describe(self) -> list[str]:
        """One line per stage of the staged plan (what runs where), a note for each GRU node left
        to onnxruntime and why, then a line that says which plan runs (fastgru info prints
        them)."""
        lines = []
        for stage in self._stages:
            if stage[0] == "gru":
                step = stage[1]
                lines.append(f"fastgru: GRU node(s) {step.name}: {step.model!r}")
            else:
                lines.append(f"onnxruntime: {stage[4]}")
        lines += [f"note: GRU node {name!r} runs in onnxruntime, not fastgru: {why}"
                  for name, why in self._apart.items()]
        if self._whole_refused is not None:
            lines.append(f"plan: staged (onnxruntime alone: {self._whole_refused})")
            return lines
        if self._plan != "auto":
            lines.append(f"plan: {self._plan} (pinned)")
            return lines
        chosen = [f"{', '.join(f'{n} {list(s)} {d}' for n, s, d in signature)} -> "
                  f"{choice or 'timing'}" for signature, choice in self.plans.items()]
        lines.append("plan: auto (the first calls of each input signature time the staged plan "
                     "and onnxruntime alone, then keep the faster)" +
                     (f": {'; '.join(chosen)}" if chosen else ""))
        return lines
