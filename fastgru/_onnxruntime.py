"""onnxruntime's CPU sessions as fastgru sets them up, written once.

Idle onnxruntime workers spin on a core between runs by default; inside a process that also runs
fastgru's kernels (a whole-graph session, a check) they would steal the cores those kernels use,
so `spinning=False` is the project's setting. A peer timed alone in its own process (fastgru
bench) keeps onnxruntime's own default, its fastest.
"""

from __future__ import annotations


def cpu_session(model, *, threads: int | None = None, spinning: bool = False, quiet: bool = False):
    """An onnxruntime InferenceSession on the CPU provider.

    model : a path, or a serialized ModelProto (bytes)
    threads : intra-op threads (None: onnxruntime's default); always one inter-op thread
    spinning : whether idle workers spin (onnxruntime's default) or sleep (fastgru's)
    quiet : no error logs from onnxruntime (a failing feed is reported by the caller)
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    if quiet:
        options.log_severity_level = 4
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
