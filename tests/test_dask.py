"""fastgru.dask and `fastgru score` on a distributed.LocalCluster of 2 worker processes: results
equal to one in-process call on the same data, bit for bit; a worker killed mid-run changes
nothing; bad input is refused before any work is sent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")  # the test extra installs dask (fastgru[dask])
distributed = pytest.importorskip("distributed")

import fastgru  # noqa: E402
import fastgru.dask as fastgru_dask  # noqa: E402
from fastgru.testing.asserts import assert_close  # noqa: E402
from fastgru.testing.models import random_spec  # noqa: E402
from fastgru.cli import main  # noqa: E402

# the cluster's own shutdown messages, not ours
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning",
                                        "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0",
                                       env={"NUMBA_NUM_THREADS": "1"})
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def in_process(model, x, lengths=None):
    """One direct call: y (N, T, dirs*H) and h_n (N, layers*dirs, H), batch-major."""
    y, h_n = model(np.ascontiguousarray(x.transpose(1, 0, 2)), lengths=lengths)
    return y.transpose(1, 0, 2), h_n.transpose(1, 0, 2)


@pytest.mark.parametrize("variable", [False, True], ids=["fixed-lengths", "variable-lengths"])
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_every_output_equals_one_in_process_call(client, rng, variable, dtype):
    h0 = rng.standard_normal((4, 12))
    model = fastgru.GRU(random_spec(rng, 5, 12, 2, "bidirectional"), initial_state=h0,
                        dtype=dtype)
    x = rng.standard_normal((90, 16, 5)).astype(np.float32)
    lengths = rng.integers(0, 17, 90) if variable else None
    y, h_n = in_process(model, x, lengths)
    steps = np.full(90, 16) if lengths is None else lengths
    last = y[np.arange(90), np.maximum(steps - 1, 0)].copy()
    last[steps == 0] = np.concatenate([h0[2], h0[3]])  # the top layer's initial state
    chunked = da.from_array(x, chunks=(13, 7, 5))  # split in time too: merged once
    for output, expected in (("y", y), ("h_n", h_n), ("last", last)):
        result = client.compute(fastgru_dask.predict(model, chunked, lengths=lengths,
                                                     output=output)).result()
        assert result.dtype == np.float32 and np.array_equal(result, expected), output


def test_a_worker_killed_mid_run(client, rng):
    """One worker process dies while tasks run: the job finishes, every sequence exactly
    once, values correct."""
    model = fastgru.GRU(random_spec(rng, 8, 64, 2))
    x = rng.standard_normal((240, 200, 8)).astype(np.float32)
    expected = in_process(model, x)[0]
    future = client.compute(fastgru_dask.predict(model, da.from_array(x, chunks=(10, 200, 8))))
    victim = sorted(client.scheduler_info()["workers"])[0]
    deadline = time.monotonic() + 60
    while not client.processing(workers=[victim]).get(victim) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        client.run(os._exit, 1, workers=[victim])  # a crash, not a clean stop
    except Exception:  # noqa: BLE001 - the call dies with its worker, as it should
        pass
    result = future.result(timeout=240)
    assert result.shape == expected.shape and np.array_equal(result, expected)


def test_parquet_sequences_with_ids(client, rng, tmp_path):
    pd = pytest.importorskip("pandas")
    model = fastgru.GRU(random_spec(rng, 4, 10, 1))
    xs = [rng.standard_normal((int(rng.integers(1, 30)), 4)).astype(np.float32)
          for _ in range(40)]
    frame = pd.DataFrame({"id": [f"seq-{i}" for i in range(40)], "x": [list(x) for x in xs]})
    (tmp_path / "in").mkdir()
    for part in range(3):
        frame.iloc[part::3].to_parquet(tmp_path / "in" / f"part{part}.parquet")
    for output in ("y", "last"):
        count = fastgru_dask.score_parquet(model, str(tmp_path / "in"),
                                           str(tmp_path / f"out-{output}"), output=output)
        scored = pd.read_parquet(tmp_path / f"out-{output}")
        assert count == 40 and sorted(scored["id"]) == sorted(frame["id"])  # each once
        for seq_id, value in zip(scored["id"], scored[output], strict=True):
            y = model(xs[int(seq_id.split("-")[1])])[0]
            got = np.stack(list(value)) if output == "y" else np.asarray(value)
            assert np.array_equal(got, y if output == "y" else y[-1]), seq_id


def test_bad_input_is_refused_before_work_is_sent(rng, tmp_path):
    pd = pytest.importorskip("pandas")
    model = fastgru.GRU(random_spec(rng, 4, 6))
    with pytest.raises(ValueError, match=r"x must have shape \(N, T, 4\)"):
        fastgru_dask.predict(model, da.zeros((10, 5, 3), chunks=5))
    with pytest.raises(ValueError, match=r"lengths must have shape \(10,\)"):
        fastgru_dask.predict(model, da.zeros((10, 5, 4), chunks=5), lengths=np.ones(9, int))
    with pytest.raises(TypeError, match="x must be a dask.array"):
        fastgru_dask.predict(model, np.zeros((10, 5, 4)))
    with pytest.raises(ValueError, match="output must be one of"):
        fastgru_dask.predict(model, da.zeros((10, 5, 4), chunks=5), output="all")
    unknown = da.zeros((10, 5, 4), chunks=5)[da.arange(10) > 3]  # chunk sizes unknown
    with pytest.raises(ValueError, match="chunks of unknown size"):
        fastgru_dask.predict(model, unknown)
    (tmp_path / "in").mkdir()
    pd.DataFrame({"key": [1], "frames": [[np.zeros(4)]]}).to_parquet(tmp_path / "in" / "a.parquet")
    with pytest.raises(ValueError, match=r"has no column 'id'; its columns are \['key', 'frames'\]"):
        fastgru_dask.score_parquet(model, str(tmp_path / "in"), str(tmp_path / "out"))


@pytest.mark.slow
def test_score_command(rng, tmp_path, capsys):
    """`fastgru score` with its own local cluster: .npy and .zarr in and out."""
    model = fastgru.GRU(random_spec(rng, 6, 16, 1))
    model.save(tmp_path / "m.safetensors")
    x = rng.standard_normal((50, 12, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    lengths = rng.integers(1, 13, 50)
    np.save(tmp_path / "lengths.npy", lengths)
    assert main(["score", str(tmp_path / "m.safetensors"), str(tmp_path / "x.npy"),
                 str(tmp_path / "y.npy"), "--workers", "2", "--chunk", "16",
                 "--lengths", str(tmp_path / "lengths.npy")]) == 0
    captured = capsys.readouterr()
    assert "scored 50 sequences" in captured.out and "sequences/s" in captured.out
    assert np.array_equal(np.load(tmp_path / "y.npy"), in_process(model, x, lengths)[0])
    da.from_array(x, chunks=(20, 12, 6)).to_zarr(str(tmp_path / "x.zarr"))
    assert main(["score", str(tmp_path / "m.safetensors"), str(tmp_path / "x.zarr"),
                 str(tmp_path / "h.zarr"), "--workers", "2", "--output", "h_n"]) == 0
    assert np.array_equal(da.from_zarr(str(tmp_path / "h.zarr")).compute(),
                          in_process(model, x)[1])
    assert main(["score", str(tmp_path / "m.safetensors"), str(tmp_path / "missing.npy"),
                 str(tmp_path / "o.npy")]) == 2
    assert "no input file at" in capsys.readouterr().err


def test_workers_use_their_share_of_threads(tmp_path):
    """A script that imports fastgru at the top, as users' scripts do: its spawned workers
    import it again, and Numba with it, before the nanny sets NUMBA_NUM_THREADS, so Numba's own
    setting is the parent's (2 here). Each task still runs on the worker's share (1)."""
    script = tmp_path / "score.py"
    script.write_text("""if True:
        import numba, numpy as np, dask.array as da, distributed
        import fastgru, fastgru.dask
        from fastgru import GRUSpec, LayerWeights

        def threads():
            return numba.config.NUMBA_NUM_THREADS, numba.get_num_threads()

        if __name__ == "__main__":
            rng = np.random.default_rng(0)
            spec = GRUSpec((LayerWeights(*(rng.standard_normal(s) for s in
                                          ((1, 24, 3), (1, 24, 8), (1, 48)))),))
            with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                          dashboard_address=":0",
                                          env={"NUMBA_NUM_THREADS": "1"}) as cluster, \\
                    distributed.Client(cluster) as client:
                x = da.from_array(np.zeros((8, 5, 3), np.float32), chunks=4)
                fastgru.dask.predict(fastgru.GRU(spec), x).compute()
                print(*client.submit(threads, pure=False).result())
        """)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["2", "1"], result.stdout


def _write(path, ids, xs, id_type=None):
    """One Parquet file of rows (id, x): x a list of frames per row, as pyarrow holds them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = pa.array([None if x is None else [None if f is None else
                                               [None if v is None else float(v) for v in f]
                                               for f in x] for x in xs],
                      pa.list_(pa.list_(pa.float32())))
    pq.write_table(pa.table({"id": pa.array(ids, id_type), "x": frames}), path)


@pytest.fixture
def local():
    """The dask tests below on this process's threads: no cluster."""
    import dask

    with dask.config.set(scheduler="threads"):
        yield


def test_an_earlier_output_is_refused_then_replaced_whole(local, rng, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    model = fastgru.GRU(random_spec(rng, 3, 4))
    for part in range(3):
        _write(tmp_path / "big" / f"part{part}.parquet", [10 * part, 10 * part + 1],
               [rng.standard_normal((4, 3))] * 2)
    _write(tmp_path / "small" / "part0.parquet", [7], [rng.standard_normal((2, 3))])
    out = tmp_path / "out"
    assert fastgru_dask.score_parquet(model, str(tmp_path / "big"), str(out)) == 6
    with pytest.raises(ValueError, match=r"'.*out' is not empty: pass overwrite=True"):
        fastgru_dask.score_parquet(model, str(tmp_path / "small"), str(out))
    assert fastgru_dask.score_parquet(model, str(tmp_path / "small"), str(out),
                                      overwrite=True) == 1
    assert pq.read_table(out).column("id").to_pylist() == [7]  # nothing of the earlier run
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    (tmp_path / "file").write_text("a file")
    with pytest.raises(ValueError, match="'.*file' exists: pass overwrite=True"):
        fastgru_dask.score_parquet(model, str(tmp_path / "small"), str(tmp_path / "file"))


@pytest.mark.parametrize("dst", ["in", "in/out", "."], ids=["same", "inside", "around"])
def test_an_output_over_the_input_is_refused(local, rng, tmp_path, monkeypatch, dst):
    pq = pytest.importorskip("pyarrow.parquet")
    model = fastgru.GRU(random_spec(rng, 3, 4))
    _write(tmp_path / "in" / "part0.parquet", [1, 2], [rng.standard_normal((2, 3))] * 2)
    before = sorted(p.name for p in (tmp_path / "in").iterdir())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="output .* the input"):
        fastgru_dask.score_parquet(model, "in", dst, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == before
    assert pq.read_table(tmp_path / "in").column("id").to_pylist() == [1, 2]


@pytest.mark.parametrize("ids, id_type", [
    ([2**53 + 1, None, -(2**63)], "int64"),
    ([2**53 + 1, 2**63 - 1, 3], "int64"),
    ([2**64 - 1, None, 2**53 + 1], "uint64"),
    (["b", None, "é"], "string"),
    ([1_700_000_000_123_456_789, None, 0], "timestamp_ns"),
], ids=["int64-null", "int64", "uint64-null", "string-null", "timestamp-null"])
def test_ids_come_back_exactly(local, rng, tmp_path, ids, id_type):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    model = fastgru.GRU(random_spec(rng, 3, 4))
    arrow_type = pa.timestamp("ns") if id_type == "timestamp_ns" else pa.type_for_alias(id_type)
    _write(tmp_path / "in" / "part0.parquet", ids, [rng.standard_normal((2, 3))] * 3, arrow_type)
    assert fastgru_dask.score_parquet(model, str(tmp_path / "in"), str(tmp_path / "out"),
                                      output="last") == 3
    written = pq.read_table(tmp_path / "out").column("id")
    assert written.type == arrow_type
    assert written.to_pylist() == pa.array(ids, arrow_type).to_pylist()


@pytest.mark.parametrize("x, message", [
    (None, r"the row with id 8: its sequence in 'x' is null"),
    ([[0.0, 0.0, 0.0], None], r"the row with id 8: frame 1 of its sequence in 'x' is null"),
    ([[0.0, 0.0, 0.0], [0.0, None, 0.0]], r"the row with id 8: .*'x' holds a null number"),
    ([[0.0, 0.0, 0.0], [0.0, 0.0]], r"the row with id 8: frame 1 of its sequence in 'x' has "
                                    r"2 numbers; expected 3"),
], ids=["null-sequence", "null-frame", "null-number", "short-frame"])
def test_a_null_or_ragged_sequence_names_its_row(local, rng, tmp_path, x, message):
    model = fastgru.GRU(random_spec(rng, 3, 4))
    _write(tmp_path / "in" / "part0.parquet", [7, 8, 9], [[[1.0, 2.0, 3.0]], x, []])
    with pytest.raises(ValueError, match=message):
        fastgru_dask.score_parquet(model, str(tmp_path / "in"), str(tmp_path / "out"))


def test_last_of_an_empty_sequence_is_the_initial_state(local, rng, tmp_path):
    """"last" is the top layer's state once the sequence is read: for a row of length 0 the
    initial state, both directions side by side, as h_n keeps it; the reference for the rest.
    A partition of only empty sequences among them, and one of no rows."""
    from fastgru.testing.models import spec_layers
    from fastgru.testing.reference import reference_gru

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    spec = random_spec(rng, 3, 5, 2, "bidirectional")
    h0 = rng.standard_normal((4, 5))
    model = fastgru.GRU(spec, initial_state=h0)
    xs = {1: [], 2: [], 3: rng.standard_normal((4, 3)), 4: [], 5: rng.standard_normal((1, 3))}
    _write(tmp_path / "in" / "part0.parquet", [1, 2], [[], []])
    _write(tmp_path / "in" / "part1.parquet", [3, 4, 5], [xs[3], [], xs[5]])
    _write(tmp_path / "in" / "part2.parquet", [], [], pa.int64())  # no rows at all
    assert fastgru_dask.score_parquet(model, str(tmp_path / "in"), str(tmp_path / "out"),
                                      output="last") == 5
    table = pq.read_table(tmp_path / "out").to_pydict()
    for seq_id, value in zip(table["id"], table["last"], strict=True):
        x = np.asarray(xs[seq_id], np.float64).reshape(-1, 1, 3)
        y, _ = reference_gru(x, spec_layers(spec), direction="bidirectional", h0=h0[:, None])
        expected = np.concatenate([h0[2], h0[3]]) if len(x) == 0 else y[-1, 0]
        assert_close(value, expected, "float32", f"id {seq_id}")
    # the same through predict, on lengths of 0 only and on time steps of 0
    for x, lengths in ((np.zeros((3, 4, 3), np.float32), np.zeros(3, int)),
                       (np.zeros((3, 0, 3), np.float32), None)):
        last = fastgru_dask.predict(model, da.from_array(x), lengths=lengths,
                                    output="last").compute()
        assert np.array_equal(last, np.tile(np.concatenate([h0[2], h0[3]]), (3, 1))
                              .astype(np.float32))


def test_the_docstring_recipe(local, rng, tmp_path):
    """score_parquet's example, run as written."""
    import doctest

    model = fastgru.GRU(random_spec(rng, 4, 8))
    globs = {"model": model, "folder": str(tmp_path)}
    parser = doctest.DocTestParser()
    test = parser.get_doctest(fastgru_dask.score_parquet.__doc__, globs, "score_parquet",
                              None, 0)
    assert test.examples, "score_parquet's docstring has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test, out=lambda text: pytest.fail(text))
    assert result.failed == 0 and result.attempted >= 3


def test_score_with_relative_paths_on_a_scheduler(client, rng, tmp_path, monkeypatch, capsys):
    """Workers started elsewhere (their own working folder) find the files named relative to
    the caller's; an output that exists is refused, then replaced with --overwrite; an output
    over the input is refused always."""
    pq = pytest.importorskip("pyarrow.parquet")
    model = fastgru.GRU(random_spec(rng, 3, 4))
    model.save(tmp_path / "m.safetensors")
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    _write(tmp_path / "in" / "part0.parquet", [1, 2], list(x[:2]))
    monkeypatch.chdir(tmp_path)
    cluster = ["--scheduler", client.scheduler.address]
    for src, dst in (("x.npy", "y.npy"), ("in", "out")):
        assert main(["score", "m.safetensors", src, dst, *cluster, "--chunk", "4"]) == 0, \
            capsys.readouterr().err[-500:]
        capsys.readouterr()  # the progress bar
        assert main(["score", "m.safetensors", src, dst, *cluster]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert re.search(r"(exists|is not empty): pass --overwrite", err), err
        assert main(["score", "m.safetensors", src, dst, *cluster, "--overwrite"]) == 0
        assert main(["score", "m.safetensors", src, src, *cluster, "--overwrite"]) == 2
        assert "the output would be written over the input" in capsys.readouterr().err
    assert np.array_equal(np.load(tmp_path / "y.npy"), in_process(model, x)[0])
    assert pq.read_table(tmp_path / "out").column("id").to_pylist() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "m.safetensors", "out",
                                                          "x.npy", "y.npy"]
