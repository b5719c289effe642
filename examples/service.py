"""An ASGI service around a GRU model: whole sequences and per-client streams, batched.

    uvicorn --factory examples.service:create_app --host 127.0.0.1 --port 8000

Environment: FASTGRU_MODEL, a model file for fastgru.load (default: a built-in random model,
D=64, H=256); FASTGRU_BACKEND, "fastgru" (default) or "onnxruntime" (the same service on
onnxruntime, running the graph GRU.to_onnx writes, for comparison).

Endpoints, JSON in and out:
    POST   /sequence            {"x": T x D}  ->  {"y": T x dirs*H, "h": layers*dirs x H}
    POST   /streams                           ->  {"id": n}   (503 past FASTGRU_MAX_STREAMS)
    POST   /streams/{id}/step   {"x": D}      ->  {"y": H}
    DELETE /streams/{id}                      (frees the stream's slot and its state)
    GET    /health                            ->  {"backend": ..., "input_size": D, ...}

Requests that arrive while a batch is computing form the next batch: one model call serves
every waiting sequence (padded, with lengths), one StreamBatch step every waiting frame.
Waiting sequences are sorted by length and cut into batches whose padded size stays within
FASTGRU_BATCH_FRAMES, shortest first, so one long request neither pads nor delays short ones.

Limits (environment, defaults): FASTGRU_MAX_BODY request bytes (4,000,000: 413 beyond),
FASTGRU_MAX_STEPS steps in one sequence (10,000: 413 beyond), FASTGRU_BATCH_FRAMES padded
frames in one model call (65,536), FASTGRU_MAX_STREAMS streams open at once (10,000: 503
beyond, until one closes). A stream's memory goes when it closes (the fastgru backend shrinks
its StreamBatch once the streams open fall to a quarter of their peak). A stream id is a number
of at most 18 digits (400 otherwise; 404 for one that is not open). Client mistakes get a 4xx
with a short message (at most 300 characters, never the whole bad input): malformed or deeply
nested JSON, NaN, Infinity or numbers beyond float32, wrong shapes. Nothing a client sends
can leave NaN in a stream's state.
"""

from __future__ import annotations

import asyncio
import json
import os

import numpy as np
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import fastgru
from fastgru.batching import by_length, pad
from fastgru.benchmark import SHAPES, builtin_model

MAX_BATCH = 64
MAX_ID_DIGITS = 18  # stream ids stay within int64 and never reach int()'s 4300-digit limit


def _limit(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class ClientError(Exception):
    """A request the client must fix: answered with `status` and a short message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message if len(message) <= 300 else message[:297] + "...")
        self.status = status


def load_model() -> fastgru.GRU:
    """FASTGRU_MODEL's file, else the benchmark's built-in S2 model (random, D=64, H=256)."""
    path = os.environ.get("FASTGRU_MODEL")
    return fastgru.load(path) if path else builtin_model(SHAPES["S2"])


class FastgruBackend:
    """Batches through fastgru: one call for sequences, one StreamBatch step for frames.

    Streams have the service's own ids, mapped to StreamBatch clients: when the streams open
    fall to a quarter of their peak, their states move to a new, smaller StreamBatch and the
    old one's memory goes (a StreamBatch grows, but never shrinks)."""

    name = "fastgru"

    def __init__(self, model: fastgru.GRU) -> None:
        self.model = model.prepare()
        self.streams = model.stream_batch() if model.direction == "forward" else None
        self.clients: dict[int, int] = {}  # service id -> StreamBatch client
        self.next_id = 0
        self.peak = 0

    def sequences(self, xs):
        y, h = self.model(pad(xs, self.model.input_size), lengths=[len(x) for x in xs])
        return [(y[:len(x), b], h[:, b]) for b, x in enumerate(xs)]

    def open_streams(self) -> int:
        return len(self.clients)

    def open_stream(self) -> int:
        self.next_id += 1
        self.clients[self.next_id] = self.streams.add()
        self.peak = max(self.peak, len(self.clients))
        return self.next_id

    def close_stream(self, client) -> None:
        self.streams.remove(self.clients.pop(client))
        if self.peak > 16 and len(self.clients) <= self.peak // 4:
            self._shrink()

    def _shrink(self) -> None:
        smaller = self.model.stream_batch(max(16, 2 * len(self.clients)))
        self.clients = {c: smaller.add(self.streams.state(inner))
                        for c, inner in self.clients.items()}
        self.streams, self.peak = smaller, len(self.clients)

    def has_stream(self, client) -> bool:
        return client in self.clients

    def steps(self, clients, frames):
        return self.streams.step([self.clients[c] for c in clients],
                                 np.asarray(frames, np.float32))


class OnnxruntimeBackend:
    """The same service on onnxruntime: padded batches with sequence_lens; stream states kept
    here and fed through initial_h."""

    name = "onnxruntime"

    def __init__(self, model: fastgru.GRU) -> None:
        import onnxruntime as ort

        self.model = model
        self.session = ort.InferenceSession(model.to_onnx(state_inputs=True).SerializeToString(),
                                            providers=["CPUExecutionProvider"])
        self.states: dict[int, np.ndarray] = {}
        self.next_id = 0

    def _run(self, batch, lengths, h0):
        return self.session.run(None, {"X": batch, "initial_h": h0,
                                       "sequence_lens": np.asarray(lengths, np.int32)})

    def sequences(self, xs):
        m = self.model
        dirs = 2 if m.bidirectional else 1
        h0 = np.zeros((m.num_layers * dirs, len(xs), m.hidden_size), np.float32)
        y, h = self._run(pad(xs, m.input_size), [len(x) for x in xs], h0)
        return [(y[:len(x), b], h[:, b]) for b, x in enumerate(xs)]

    def open_streams(self) -> int:
        return len(self.states)

    def open_stream(self) -> int:
        self.next_id += 1
        self.states[self.next_id] = np.zeros((self.model.num_layers, self.model.hidden_size),
                                             np.float32)
        return self.next_id

    def close_stream(self, client) -> None:
        del self.states[client]

    def has_stream(self, client) -> bool:
        return client in self.states

    def steps(self, clients, frames):
        h0 = np.stack([self.states[c] for c in clients], axis=1)
        _, h = self._run(np.asarray(frames, np.float32)[None], [1] * len(clients), h0)
        for b, c in enumerate(clients):
            self.states[c] = h[:, b]
        return h[-1]


def grouped_by_length(run, budget: int):
    """run(xs) for sequences sorted by length, in batches of at most `budget` padded frames,
    shortest first; results in the callers' order."""
    def run_grouped(xs):
        results = [None] * len(xs)
        for members in by_length([len(x) for x in xs], budget):
            for i, result in zip(members, run([xs[i] for i in members]), strict=True):
                results[i] = result
        return results
    return run_grouped


class Batcher:
    """Collects requests; a single worker runs each batch in a thread (the kernels release the
    GIL) while the next batch gathers. Only the worker touches the backend's stream state."""

    def __init__(self, run_batch) -> None:
        self.run_batch = run_batch
        self.queue: asyncio.Queue | None = None

    async def submit(self, item):
        if self.queue is None:
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _work(self):
        while True:
            pending = [await self.queue.get()]
            while len(pending) < MAX_BATCH and not self.queue.empty():
                pending.append(self.queue.get_nowait())
            try:
                results = await asyncio.to_thread(self.run_batch, [item for item, _ in pending])
            except Exception as error:  # every waiting request learns why
                for _, future in pending:
                    future.set_exception(error)
                continue
            for (_, future), result in zip(pending, results, strict=True):
                future.set_result(result)


def create_app(model: fastgru.GRU | None = None, backend: str | None = None) -> Starlette:
    model = model or load_model()
    backend = backend or os.environ.get("FASTGRU_BACKEND", "fastgru")
    engine = {"fastgru": FastgruBackend, "onnxruntime": OnnxruntimeBackend}[backend](model)
    D = model.input_size

    def run_streams(items):
        """Opens, then frames, then closes, all on the worker. A client's frames that arrived
        together go in successive rounds; frames of clients already gone get None."""
        results = [None] * len(items)
        rounds: list[list[int]] = []
        seen: dict[int, int] = {}
        for i, item in enumerate(items):
            if item[0] == "open":  # None past the cap
                results[i] = engine.open_stream() if engine.open_streams() < max_streams \
                    else None
            elif item[0] == "step" and engine.has_stream(item[1]):
                k = seen[item[1]] = seen.get(item[1], -1) + 1
                rounds.extend([] for _ in range(k + 1 - len(rounds)))
                rounds[k].append(i)
        for members in rounds:
            ys = engine.steps([items[i][1] for i in members], [items[i][2] for i in members])
            for i, y in zip(members, ys, strict=True):
                results[i] = y.tolist()
        for i, item in enumerate(items):
            if item[0] == "close" and engine.has_stream(item[1]):
                engine.close_stream(item[1])
                results[i] = item[1]
        return results

    max_body = _limit("FASTGRU_MAX_BODY", 4_000_000)
    max_steps = _limit("FASTGRU_MAX_STEPS", 10_000)
    batch_frames = _limit("FASTGRU_BATCH_FRAMES", 65_536)
    max_streams = _limit("FASTGRU_MAX_STREAMS", 10_000)
    sequences = Batcher(grouped_by_length(engine.sequences, batch_frames))
    streams = Batcher(run_streams)

    def error(message, status=400):
        return JSONResponse({"error": str(ClientError(message))}, status_code=status)

    def refuse_constant(token):
        raise ClientError(f"{token} is not a number this service takes")

    async def body_x(request):
        """The request's JSON "x", read within the size limit and parsed strictly."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body:
            raise ClientError(f"request body over {max_body} bytes", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise ClientError(f"request body over {max_body} bytes", 413)
        try:
            data = json.loads(body, parse_constant=refuse_constant)
        except RecursionError:
            raise ClientError("JSON nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ClientError(f"not JSON: {e}") from None
        if not isinstance(data, dict) or "x" not in data:
            raise ClientError('the body must be a JSON object with "x"')
        return data["x"]

    def frames(value, rank):
        try:
            with np.errstate(over="ignore"):
                x = np.asarray(value, np.float32)
        except (ValueError, TypeError, OverflowError, RecursionError) as e:
            raise ClientError(f"x must hold numbers: {e}") from None
        if x.ndim != rank or x.shape[-1] != D or x.size == 0:
            raise ClientError(f"x must be {'T x ' if rank == 2 else ''}{D} numbers, "
                              f"got shape {x.shape}")
        if rank == 2 and len(x) > max_steps:
            raise ClientError(f"x has {len(x)} steps; this service takes at most {max_steps}",
                              413)
        if not np.isfinite(x).all():
            raise ClientError("x must hold finite numbers within float32's range")
        return x

    async def sequence(request):
        try:
            x = frames(await body_x(request), 2)
        except ClientError as e:
            return error(str(e), e.status)
        y, h = await sequences.submit(x)
        return JSONResponse({"y": y.tolist(), "h": h.tolist()})

    async def open_stream(request):
        if model.direction != "forward":
            return error("streams need a forward model")
        client = await streams.submit(("open",))
        if client is None:
            return error(f"at most {max_streams} open streams; close one or retry later", 503)
        return JSONResponse({"id": client})

    def stream_id(request) -> int:
        """The path's stream id: digits only, at most MAX_ID_DIGITS of them."""
        text = request.path_params["client"]
        if not (text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS):
            raise ClientError(f"a stream id is a number of at most {MAX_ID_DIGITS} digits, got "
                              f"{text[:20]!r}{'...' if len(text) > 20 else ''}")
        return int(text)

    async def step(request):
        try:
            client = stream_id(request)
        except ClientError as e:
            return error(str(e), e.status)
        if not engine.has_stream(client):
            return error(f"no stream {client}", 404)
        try:
            x = frames(await body_x(request), 1)
        except ClientError as e:
            return error(str(e), e.status)
        y = await streams.submit(("step", client, x))
        return JSONResponse({"y": y}) if y is not None else error(f"no stream {client}", 404)

    async def close_stream(request):
        try:
            client = stream_id(request)
        except ClientError as e:
            return error(str(e), e.status)
        if not engine.has_stream(client):
            return error(f"no stream {client}", 404)
        if await streams.submit(("close", client)) is None:
            return error(f"no stream {client}", 404)
        return JSONResponse({"closed": client})

    async def health(request):
        return JSONResponse({"backend": engine.name, "input_size": D,
                             "hidden_size": model.hidden_size, "num_layers": model.num_layers,
                             "direction": model.direction})

    return Starlette(routes=[
        Route("/sequence", sequence, methods=["POST"]),
        Route("/streams", open_stream, methods=["POST"]),
        Route("/streams/{client}/step", step, methods=["POST"]),
        Route("/streams/{client}", close_stream, methods=["DELETE"]),
        Route("/health", health, methods=["GET"]),
    ])

