"""tf.distribute: replica loss scaling on 2 logical CPUs, and 2 local workers."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")


def test_mirrored_step_equals_one_device_step_with_the_same_global_batch(tmp_path):
    out = tmp_path / "mirrored.npz"
    done = subprocess.run([sys.executable, HELPER, "mirrored", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = np.load(out)
    assert int(weights["replicas"]) == 2
    count = len([k for k in weights if k.startswith("single_")])
    largest_update = 0.0
    for i in range(count):
        single, mirrored = weights[f"single_{i}"], weights[f"mirrored_{i}"]
        update = np.abs(single - weights[f"initial_{i}"]).max()
        largest_update = max(largest_update, update)
        # Unscaled replica losses would double every update; this allows 1e-3 of it.
        np.testing.assert_allclose(mirrored, single, atol=1e-3 * max(update, 1e-3), rtol=0)
    assert largest_update > 0.05  # the step really moved the weights


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_local_workers_finish_and_agree_on_the_weights(tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, HELPER, "multi_worker", str(tmp_path / f"w{index}.npz"),
             str(tmp_path / f"stage{index}")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=240) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    first, second = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    history = (tmp_path / "stage0" / "history.csv").read_text().strip().splitlines()
    assert len(history) == 3  # header + 2 epochs, written by the chief
