"""fastgru.dask and `fastgru score` on a distributed.LocalCluster of 2 worker processes: results
equal to one in-process call on the same data, bit for bit; a worker killed mid-run changes
nothing; bad input is refused before any work is sent."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")  # the test extra installs dask (fastgru[dask])
distributed = pytest.importorskip("distributed")

import fastgru  # noqa: E402
import fastgru.dask as fastgru_dask  # noqa: E402
from conftest import random_spec  # noqa: E402
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
def test_every_output_equals_one_in_process_call(client, rng, variable):
    model = fastgru.GRU(random_spec(rng, 5, 12, 2, "bidirectional"),
                        initial_state=rng.standard_normal((4, 12)))
    x = rng.standard_normal((90, 16, 5)).astype(np.float32)
    lengths = rng.integers(0, 17, 90) if variable else None
    y, h_n = in_process(model, x, lengths)
    steps = np.full(90, 16) if lengths is None else lengths
    last = y[np.arange(90), np.maximum(steps - 1, 0)].copy()
    last[steps == 0] = 0
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
