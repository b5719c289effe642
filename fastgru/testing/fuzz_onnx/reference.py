"""onnxruntime, the oracle: its sessions, and its results for every feed of a case (the
base of the checker, which records failures and outcomes)."""

from __future__ import annotations

import numpy as np

from .case import Case, GeneratorError
from .compare import compare
from .feeds import make_feeds, session_feeds


def declares_sizes(model) -> bool:
    """Whether the graph fixes a size on a value other than its inputs (value_info, outputs)."""
    return any(d.HasField("dim_value") for v in (*model.graph.value_info, *model.graph.output)
               for d in v.type.tensor_type.shape.dim)


def ort_session(data: bytes, optimize: bool = True):
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # fastgru.InferenceSession's sessions too
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # refused feeds are expected here: no error logs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def is_ort_error(error: BaseException) -> bool:
    return type(error).__module__.startswith("onnxruntime")


class Reference:
    """A case's serialized model, onnxruntime's results for it, and the failures and outcomes
    of the entry points checked against them."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.data = case.model.SerializeToString()
        self.failures: list = []
        self.outcomes: dict = {}
        self.entry = "onnxruntime"

    def fail(self, category: str, detail: str = "") -> None:
        self.failures.append((self.entry, category, detail))

    def failed(self, entry: str) -> bool:
        return any(e == entry for e, _, _ in self.failures)

    def copy(self):
        import onnx

        model = onnx.ModelProto()
        model.ParseFromString(self.data)
        return model

    # onnxruntime, the oracle
    def reference(self) -> None:
        """onnxruntime's results at each size. Where the graph declares fixed sizes on values
        other than its inputs, onnxruntime's optimizer trusts them (it folds Shape, reshapes
        for Gemm) and at other sizes computes what the graph does not say: a size where the
        optimized and the unoptimized runs disagree is ambiguous and left out."""
        case = self.case
        try:
            sessions = [ort_session(self.data)]
            if declares_sizes(case.model):
                sessions.append(ort_session(self.data, optimize=False))
        except Exception as error:
            raise GeneratorError(f"onnxruntime cannot load the graph: {error}") from None
        self.ort_inputs = [(i.name, i.type) for i in sessions[0].get_inputs()]
        self.ort_outputs = [(o.name, o.type) for o in sessions[0].get_outputs()]
        rng = np.random.default_rng([case.seed, 7])
        self.runs, self.ambiguous = [], []
        for size in case.sizes:
            label = ", ".join(f"{k}={v}" for k, v in size.items())
            feeds = make_feeds(case, size, rng)
            result = self._oracle(sessions, feeds)
            (self.ambiguous if result is None else self.runs).append((label, size, feeds, result))
        self.valid = [r for r in self.runs if not isinstance(r[3], Exception)]
        if not self.valid:
            raise GeneratorError("onnxruntime runs the graph at none of the sizes tried: " +
                                 "; ".join(f"{r[0]}: {r[3]}" for r in self.runs) +
                                 f" ({len(self.ambiguous)} ambiguous)")
        self.extra = []
        for label, feeds in session_feeds(case, self.valid, rng):
            result = self._oracle(sessions, feeds)
            if result is not None:
                self.extra.append((label, None, feeds, result))

    def _oracle(self, sessions, feeds):
        """onnxruntime's outputs or its exception; None where its sessions disagree, or where
        it refuses only because the graph's own declarations (a dim_param or dim_value on an
        intermediate value) contradict its dataflow at these sizes: a planner's claim, not the
        graph's meaning (seed 1007558 ran as onnxruntime does once that value_info was gone)."""
        results = [self._ort_run(s, feeds) for s in sessions]
        first = results[0]
        if any(isinstance(r, Exception) and "Validate usage of dim_value" in str(r)
               for r in results):
            return None
        for other in results[1:]:
            if isinstance(first, Exception) != isinstance(other, Exception):
                return None
            if not isinstance(first, Exception) and \
                    not all(compare(a, b)[0] for a, b in zip(first, other, strict=False)):
                return None
        return first

    @staticmethod
    def _ort_run(session, feeds):
        try:
            return session.run(None, feeds)
        except Exception as error:  # onnxruntime's own exception types
            return error
