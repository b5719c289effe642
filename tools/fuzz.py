"""Differential fuzzing for minutes on end: fastgru's readers against their sources' runtimes.

    python tools/fuzz.py --minutes 15 [--seed 0] [--kind onnx,keras] [--save fuzz-failures]

Runs cases of each kind in turn, with increasing seeds, until the time is up, and prints per kind
how many cases ran, how each entry point answered (refused / matched) and the failures, grouped
by what failed. Never stops at the first failure. A failing case's model and description go to
--save DIR as KIND-SEED.onnx (or what the kind's module writes) and KIND-SEED.txt. Exit code 1
when anything failed.

Each kind is a module with run_case(seed) -> {entry point: "refused" | "matched"} that raises
AssertionError (with .failures and .model where it can) on a failure. The cases run in a child
process with one thread, so a hang inside a compiled kernel or a crash of the process is a
failure of that seed too (the child is then replaced).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import importlib.util
import multiprocessing
import os
import re
import sys
import time
import traceback

KINDS = {"onnx": "fastgru.testing.fuzz_onnx", "keras": "fastgru.testing.fuzz_keras"}
CASE_SECONDS = 120  # a case takes well under a second; the child is killed past this


def _keys(kind: str, message: str) -> list[str]:
    """What tells failures apart when the kind's exception has no .keys(): the lines of its
    message past the first (which names the seed), names, quotes and numbers left out."""
    lines = message.splitlines()[1:] or message.splitlines()[:1] or [""]
    keys = set()
    for line in lines[:6]:
        line = re.sub(r"'[^']*'|\"[^\"]*\"", "''", line.strip())
        line = re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "N", line)
        keys.add(f"{kind}: {line[:110]}")
    return sorted(keys)


def _worker(connection) -> None:
    """The child: runs (kind, seed) requests, answers with a tuple per case."""
    os.environ["NUMBA_NUM_THREADS"] = "1"
    modules = {}
    while True:
        request = connection.recv()
        if request is None:
            return
        kind, seed = request
        try:
            module = modules.get(kind) or importlib.import_module(KINDS[kind])
            modules[kind] = module
            outcomes = module.run_case(seed)
            connection.send(("ok", outcomes))
        except AssertionError as failure:
            model = getattr(failure, "model", None)
            data = None
            if model is not None and hasattr(model, "SerializeToString"):
                data = model.SerializeToString()
            keys = failure.keys() if hasattr(failure, "keys") else _keys(kind, str(failure))
            connection.send(("failed", keys, str(failure), data))
        except Exception as error:
            name = type(error).__name__
            what = "invalid case (the generator's own bug)" \
                if name == "GeneratorError" else f"the fuzzer raised {name}"
            connection.send(("invalid", what, traceback.format_exc()))


class _Child:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_worker, args=(theirs,), daemon=True)
        self.process.start()

    def run(self, kind: str, seed: int, seconds: float):
        """The child's answer, or ("lost", why) when it hung or died (it is then ended)."""
        self.connection.send((kind, seed))
        if self.connection.poll(seconds):
            try:
                return self.connection.recv()
            except EOFError:
                pass
        why = "hang: no answer in %g s" % seconds if self.process.is_alive() else \
            f"crash: the process died (exit code {self.process.exitcode})"
        self.close()
        return ("lost", why)

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()


def _available(kinds: list[str]) -> list[str]:
    found = []
    for kind in kinds:
        if kind not in KINDS:
            sys.exit(f"unknown kind {kind!r}; the kinds are {sorted(KINDS)}")
        try:
            present = importlib.util.find_spec(KINDS[kind]) is not None
        except ModuleNotFoundError:
            present = False
        if present:
            found.append(kind)
        else:
            print(f"skipping kind {kind!r}: its module {KINDS[kind]} is not there yet",
                  file=sys.stderr)
    return found


def _save(folder: str, kind: str, seed: int, text: str, data: bytes | None) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{kind}-{seed}.txt"), "w") as f:
        f.write(text + "\n")
    if data is not None:
        suffix = {"onnx": ".onnx"}.get(kind, ".bin")
        with open(os.path.join(folder, f"{kind}-{seed}{suffix}"), "wb") as f:
            f.write(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--kind", default=",".join(KINDS),
                        help=f"comma-separated, of {sorted(KINDS)} (default: all)")
    parser.add_argument("--save", metavar="DIR", help="where failing cases are written")
    parser.add_argument("--case-seconds", type=float, default=CASE_SECONDS)
    args = parser.parse_args(argv)
    kinds = _available([k.strip() for k in args.kind.split(",") if k.strip()])
    if not kinds:
        print("no kind to run", file=sys.stderr)
        return 2
    os.environ["NUMBA_NUM_THREADS"] = "1"  # the child inherits it before importing Numba

    cases = collections.Counter()
    outcomes = collections.defaultdict(collections.Counter)  # kind -> (entry, outcome) -> n
    failures = collections.defaultdict(list)  # (kind, key) -> seeds
    invalid = collections.defaultdict(list)
    failed_cases = collections.Counter()
    deadline = time.monotonic() + 60 * args.minutes
    child, seed, turn = _Child(), args.seed, 0
    try:
        while time.monotonic() < deadline:
            kind = kinds[turn % len(kinds)]
            turn += 1
            answer = child.run(kind, seed, args.case_seconds)
            cases[kind] += 1
            if answer[0] == "ok":
                for entry, outcome in answer[1].items():
                    entry = entry.split("(node=")[0] + "(node=)" if "(node=" in entry else entry
                    outcomes[kind][(entry, outcome)] += 1
            elif answer[0] == "invalid":
                invalid[(kind, answer[1])].append(seed)
                if len(invalid[(kind, answer[1])]) == 1:
                    print(f"{kind} seed {seed}: {answer[1]}\n{answer[2]}", file=sys.stderr)
            else:
                if answer[0] == "lost":
                    keys, text, data = [f"{kind}: {answer[1].split(':')[0]}"], \
                        f"{kind} seed {seed}: {answer[1]}", None
                    child = _Child()
                else:
                    keys, text, data = answer[1], answer[2], answer[3]
                failed_cases[kind] += 1
                for key in keys:
                    failures[(kind, key)].append(seed)
                print(f"FAILED {kind} seed {seed}: {'; '.join(keys)}", file=sys.stderr)
                if args.save:
                    _save(args.save, kind, seed, text, data)
            if kinds.index(kind) == len(kinds) - 1:
                seed += 1
    finally:
        if child.process.is_alive():
            child.connection.send(None)
        child.close()

    for kind in kinds:
        print(f"\n{kind}: {cases[kind]} cases from seed {args.seed}, "
              f"{failed_cases[kind]} failed, "
              f"{sum(len(s) for (k, _), s in invalid.items() if k == kind)} invalid")
        entries = sorted({e for e, _ in outcomes[kind]})
        for entry in entries:
            print(f"  {entry:32s} matched {outcomes[kind][(entry, 'matched')]:6d}   "
                  f"refused {outcomes[kind][(entry, 'refused')]:6d}")
        for (k, key), seeds in sorted(failures.items()):
            if k == kind:
                print(f"  FAILURE x{len(seeds)} {key} (seeds {seeds[:8]}"
                      f"{' ...' if len(seeds) > 8 else ''})")
        for (k, what), seeds in sorted(invalid.items()):
            if k == kind:
                print(f"  INVALID x{len(seeds)} {what} (seeds {seeds[:8]})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
