"""The check of fastgru.InferenceSession: onnxruntime's outputs on every feed onnxruntime
runs, a refusal of every feed it refuses."""

from __future__ import annotations

import traceback

import numpy as np

from .case import BAD_FEED, SESSION
from .compare import compare, shape_text
from .reference import Reference, is_ort_error


def takes_plan() -> bool:
    import inspect

    import fastgru

    return "plan" in inspect.signature(fastgru.InferenceSession).parameters


class SessionCheck(Reference):
    # InferenceSession
    def check_session(self) -> None:
        import fastgru

        self.entry = SESSION
        model = self.copy()
        # fastgru's own computation: the staged plan where the session has a choice of plans
        # (with plan="auto" it may keep onnxruntime alone, which would compare it with itself)
        staged = {"plan": "staged"} if takes_plan() else {}
        try:
            session = fastgru.InferenceSession(model, threads=1, **staged)
        except fastgru.FormatError as error:
            self.fail("refuses a graph onnxruntime runs", f"FormatError: {error}")
            return
        except Exception:
            self.fail("constructor raised", traceback.format_exc(limit=-4))
            return
        if model.SerializeToString() != self.data:
            self.fail("changed the caller's ModelProto")
        ours = ([(i.name, i.type) for i in session.get_inputs()],
                [(o.name, o.type) for o in session.get_outputs()])
        if ours != (self.ort_inputs, self.ort_outputs):
            self.fail("get_inputs/get_outputs differ from onnxruntime's",
                      f"fastgru: {ours}\nonnxruntime: {(self.ort_inputs, self.ort_outputs)}")
        refused = 0
        names = [n for n, _ in self.ort_outputs]
        for label, _, feeds, expected in self.runs + self.extra:
            try:
                got = session.run(None, feeds)
            except Exception as error:
                if not isinstance(expected, Exception):
                    self.fail("raised on a feed onnxruntime runs",
                              f"feed {label}: {traceback.format_exc(limit=-4)}")
                elif isinstance(error, (ValueError, TypeError)) or is_ort_error(error):
                    refused += 1
                else:
                    self.fail(f"raised {type(error).__name__} on a feed onnxruntime refuses "
                              f"(expected ValueError or TypeError)",
                              f"feed {label}: {error!r}\nonnxruntime: {expected}")
                continue
            if isinstance(expected, Exception):
                self.fail("ran a feed onnxruntime refuses",
                          f"feed {label}: onnxruntime says {str(expected).strip()}\n"
                          f"fastgru returned shapes {[shape_text(a) for a in got]}")
                continue
            for name, a, e in zip(names, got, expected, strict=False):
                a = np.asarray(a)
                if a.shape != e.shape or a.dtype != e.dtype:
                    self.fail("output shape or dtype differs from onnxruntime's",
                              f"feed {label}: output {name!r}: fastgru {a.shape} {a.dtype}, "
                              f"onnxruntime {e.shape} {e.dtype}")
                    continue
                ok, err = compare(a, e)
                if not ok:
                    self.fail("output values differ from onnxruntime's",
                              f"feed {label}: output {name!r} {e.shape}: max |diff| {err:.3g}")
        if staged:  # what users get by default, on the feeds onnxruntime runs
            try:
                default = fastgru.InferenceSession(self.copy(), threads=1)
                for label, _, feeds, expected in self.valid:
                    for _ in range(2):  # auto tries each plan in turn
                        for name, a, e in zip(names, default.run(None, feeds), expected,
                                               strict=False):
                            if np.shape(a) != e.shape or not compare(a, e)[0]:
                                self.fail("the default plan's output differs from "
                                          "onnxruntime's", f"feed {label}: output {name!r}")
            except Exception:
                self.fail("the default plan raised", traceback.format_exc(limit=-4))
        if not self.failed(SESSION):
            self.outcomes[SESSION] = "matched"
            if refused:
                self.outcomes[BAD_FEED] = "refused"
