"""The exported SavedModels: signatures, a fresh process without ssl_dgm, TF Serving's
REST (row and columnar) and gRPC Predict formats, and a real server where one exists."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from ssl_dgm import serving
from ssl_dgm.m1 import M1
from ssl_dgm.m2 import M2
from ssl_dgm.stacked import M1M2

IMAGE_SHAPE = (4, 3, 1)   # tiny, all-different sizes
D, K, LATENT = 12, 5, 2


def tiny_m2():
    model = M2(D, num_classes=K, latent_size=LATENT, hidden_sizes=(7,),
               classifier_hidden_sizes=(6,), seed=0)
    model.build()
    return model


def tiny_m1m2():
    m1 = M1(D, latent_size=4, hidden_sizes=(9,), seed=1)
    m1.build()
    model = M1M2(m1, [0, 2, 3], num_classes=K, latent_size=LATENT, hidden_sizes=(7,),
                 classifier_hidden_sizes=(6,), seed=0)
    model.build()
    return model


def images(n, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, *IMAGE_SHAPE)).astype(np.float32)


@pytest.fixture(scope="module", params=["m2", "m1m2"])
def exported(request, tmp_path_factory):
    model = tiny_m2() if request.param == "m2" else tiny_m1m2()
    base = tmp_path_factory.mktemp(request.param)
    serving.save_all({"classifier": serving.Classifier(model, IMAGE_SHAPE),
                      "generator": serving.Generator(model, IMAGE_SHAPE)}, str(base), 1)
    return model, base


def test_versions_are_written_atomically_and_never_overwritten(exported, tmp_path):
    model, base = exported
    assert sorted(os.listdir(base / "classifier")) == ["1"]  # no temporary left behind
    assert serving.next_version(str(base), "classifier") == 2
    with pytest.raises(FileExistsError, match="immutable"):
        serving.save_all({"classifier": serving.Classifier(model, IMAGE_SHAPE)}, str(base), 1)


def test_failed_export_leaves_no_version_folder(tmp_path):
    class Broken(serving.Classifier):
        def signatures(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        serving.save_all({"classifier": Broken(tiny_m2(), IMAGE_SHAPE)}, str(tmp_path), 3)
    assert os.listdir(tmp_path / "classifier") == []


FRESH_PROCESS = r"""
import sys
sys.modules["ssl_dgm"] = None          # any import of ssl_dgm now fails
import json, numpy as np, tensorflow as tf
base, inputs, out = sys.argv[1:4]
feeds = dict(np.load(inputs))
classifier = tf.saved_model.load(base + "/classifier/1")
generator = tf.saved_model.load(base + "/generator/1")
result = {}
for name in (1, 7):
    x = feeds[f"images{name}"]
    for key, value in classifier.signatures["serving_default"](images=tf.constant(x)).items():
        result[f"classifier{name}_{key}"] = value.numpy()
g = generator.signatures
result["generate"] = g["generate"](labels=tf.constant(feeds["labels"]), z=tf.constant(feeds["z"]))["images"].numpy()
result["sample"] = g["sample"](labels=tf.constant(feeds["labels"]), seed=tf.constant(feeds["seeds"]))["images"].numpy()
result["analogies"] = g["analogies"](images=tf.constant(feeds["images7"]))["images"].numpy()
np.savez(out, **result)
"""


def test_fresh_process_without_ssl_dgm_matches_the_eager_model(exported, tmp_path):
    model, base = exported
    labels = np.array([0, 4, 2], np.int32)
    z = np.random.default_rng(3).normal(size=(3, LATENT)).astype(np.float32)
    feeds = {"images1": images(1), "images7": images(7, 1), "labels": labels, "z": z,
             "seeds": np.array([5, 5, 6], np.int32)}
    np.savez(tmp_path / "in.npz", **feeds)
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    done = subprocess.run([sys.executable, str(script), str(base), str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    for n in (1, 7):
        eager = model(feeds[f"images{n}"]).numpy()
        np.testing.assert_allclose(out[f"classifier{n}_probabilities"], eager, rtol=1e-5,
                                   atol=1e-6)
        assert out[f"classifier{n}_classes"].dtype == np.int64
        np.testing.assert_array_equal(out[f"classifier{n}_classes"], eager.argmax(-1))
    eager_images = model.decode(tf.constant(z), tf.one_hot(labels, K)).numpy()
    np.testing.assert_allclose(out["generate"], eager_images.reshape(3, *IMAGE_SHAPE),
                               rtol=1e-5, atol=1e-6)
    assert out["sample"].shape == (3, *IMAGE_SHAPE)
    assert 0.0 <= out["sample"].min() and out["sample"].max() <= 1.0
    assert out["analogies"].shape == (7, K, *IMAGE_SHAPE)


def test_sample_is_deterministic_per_seed_and_analogies_keep_the_style(exported):
    model, base = exported
    generator = tf.saved_model.load(str(base / "generator" / "1")).signatures
    labels = tf.constant([1, 1, 1], tf.int32)
    first = generator["sample"](labels=labels, seed=tf.constant([8, 8, 9]))["images"].numpy()
    again = generator["sample"](labels=labels, seed=tf.constant([8, 3, 9]))["images"].numpy()
    np.testing.assert_array_equal(first[0], first[1])          # same seed, same digit
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.allclose(first[0], first[2])                 # another seed, another
    # analogies[i, k] is generate(label k, z = style of image i)
    x = images(2, 5)
    analogies = generator["analogies"](images=tf.constant(x))["images"].numpy()
    predicted = model(x).numpy().argmax(-1)
    style = model.style(x, tf.one_hot(predicted, K)).numpy()
    for k in range(K):
        drawn = generator["generate"](labels=tf.constant([k, k]), z=tf.constant(style))["images"]
        np.testing.assert_allclose(analogies[:, k], drawn.numpy(), rtol=1e-5, atol=1e-6)


def test_bad_inputs_fail_clearly(exported):
    _, base = exported
    classify = tf.saved_model.load(str(base / "classifier" / "1")).signatures["serving_default"]
    generator = tf.saved_model.load(str(base / "generator" / "1")).signatures
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"images \[2,4,3\] is not compatible with expected shape "
                             r"\[\?,4,3,1\]"):
        classify(images=tf.zeros([2, 4, 3]))                   # missing channel axis
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError),
                       match="int32"):
        classify(images=tf.zeros([2, *IMAGE_SHAPE], tf.int32))  # wrong dtype
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must be in \[0, 1\]"):
        classify(images=tf.fill([1, *IMAGE_SHAPE], 255.0))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be in \[0, 5\)"):
        generator["sample"](labels=tf.constant([5]), seed=tf.constant([1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same batch size"):
        generator["generate"](labels=tf.constant([1, 2]), z=tf.zeros([3, LATENT]))


# --- TF Serving's REST JSON, mapped to the signature as the server maps it ---------

def rest_predict(signature, body):
    """What TF Serving does with a :predict body (row or columnar format)."""
    request = json.loads(json.dumps(body))  # JSON round trip: plain lists and numbers
    specs = signature.structured_input_signature[1]
    if "instances" in request:
        rows = request["instances"]
        if len(specs) == 1:
            (name,) = specs
            inputs = {name: [row[name] if isinstance(row, dict) else row for row in rows]}
        else:
            inputs = {name: [row[name] for row in rows] for name in specs}
    else:
        columns = request["inputs"]
        inputs = columns if isinstance(columns, dict) else {next(iter(specs)): columns}
    tensors = {name: tf.constant(value, dtype=specs[name].dtype) for name, value in inputs.items()}
    outputs = {k: v.numpy().tolist() for k, v in signature(**tensors).items()}
    if "instances" in request:
        n = len(request["instances"])
        return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(n)]}
    return {"outputs": outputs}


@pytest.mark.parametrize("batch", [1, 7])
def test_rest_row_and_columnar_formats_agree(exported, batch):
    model, base = exported
    classify = tf.saved_model.load(str(base / "classifier" / "1")).signatures["serving_default"]
    x = images(batch, batch)
    rows = rest_predict(classify, {"instances": x.tolist()})
    named_rows = rest_predict(classify, {"signature_name": "serving_default",
                                         "instances": [{"images": i} for i in x.tolist()]})
    columns = rest_predict(classify, {"inputs": {"images": x.tolist()}})
    assert rows == named_rows
    assert len(rows["predictions"]) == batch
    eager = model(x).numpy()
    np.testing.assert_allclose([p["probabilities"] for p in rows["predictions"]], eager,
                               rtol=1e-5, atol=1e-6)
    assert [p["classes"] for p in rows["predictions"]] == columns["outputs"]["classes"]
    assert columns["outputs"]["classes"] == eager.argmax(-1).tolist()


def test_rest_row_format_reaches_every_generator_input(exported):
    _, base = exported
    generator = tf.saved_model.load(str(base / "generator" / "1")).signatures
    body = {"signature_name": "sample",
            "instances": [{"labels": 3, "seed": 11}, {"labels": 0, "seed": 11}]}
    rows = rest_predict(generator["sample"], body)
    columns = rest_predict(generator["sample"], {"inputs": {"labels": [3, 0], "seed": [11, 11]}})
    np.testing.assert_allclose([p["images"] for p in rows["predictions"]],
                               columns["outputs"]["images"])
    assert np.array(columns["outputs"]["images"]).shape == (2, *IMAGE_SHAPE)


def test_grpc_predict_request_round_trips_through_the_signature(exported):
    predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    model, base = exported
    classify = tf.saved_model.load(str(base / "classifier" / "1")).signatures["serving_default"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "classifier"
    request.model_spec.signature_name = "serving_default"
    x = images(7, 2)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(x))
    wire = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    feeds = {k: tf.make_ndarray(v) for k, v in wire.inputs.items()}
    response = predict_pb2.PredictResponse()
    for k, v in classify(**{k: tf.constant(v) for k, v in feeds.items()}).items():
        response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                               model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert tf.make_ndarray(response.outputs["classes"]).dtype == np.int64


def test_models_config_parses_as_tf_serving_config():
    config_pb2 = pytest.importorskip("tensorflow_serving.config.model_server_config_pb2")
    parsed = text_format.Parse(serving.models_config("/models"), config_pb2.ModelServerConfig())
    assert [(c.name, c.base_path, c.model_platform)
            for c in parsed.model_config_list.config] == [
        ("classifier", "/models/classifier", "tensorflow"),
        ("generator", "/models/generator", "tensorflow")]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None,
                    reason="tensorflow_model_server is not on PATH (it is not installable "
                           "from PyPI or Debian); the contract tests above cover the formats")
def test_real_tf_serving_answers_rest_predict(exported, tmp_path):
    model, base = exported
    config = tmp_path / "models.config"
    config.write_text(serving.models_config(str(base)))
    port = _free_port()
    server = subprocess.Popen(["tensorflow_model_server", f"--rest_api_port={port}",
                               f"--port={_free_port()}", f"--model_config_file={config}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1/models/classifier"
        for _ in range(120):
            try:
                if "AVAILABLE" in urllib.request.urlopen(url, timeout=1).read().decode():
                    break
            except OSError:
                time.sleep(0.5)
        x = images(7, 3)
        body = json.dumps({"instances": x.tolist()}).encode()
        reply = json.loads(urllib.request.urlopen(
            urllib.request.Request(url + ":predict", data=body), timeout=30).read())
        np.testing.assert_allclose([p["probabilities"] for p in reply["predictions"]],
                                   model(x).numpy(), rtol=1e-4, atol=1e-5)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_figures_draw_from_the_exported_generator(exported, tmp_path):
    from ssl_dgm import figures

    model, base = exported
    generator = tf.saved_model.load(str(base / "generator" / "1"))
    assert figures.generator_sizes(generator) == (K, LATENT)
    paths = figures.make_figures(generator, images(12, 4), str(tmp_path))
    for path in paths.values():
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # The styles sweep is the model's decoder at a grid of z, one column per label.
    grid = figures.styles(generator, K, LATENT, steps=3)
    assert grid.shape == (9, K, *IMAGE_SHAPE)
    quantiles = tf.math.ndtri(tf.linspace(0.05, 0.95, 3)).numpy()
    z = np.array([[quantiles[0], quantiles[2]]], np.float32)  # first row, first column
    expected = model.decode(tf.constant(z), tf.one_hot([3], K)).numpy().reshape(IMAGE_SHAPE)
    np.testing.assert_allclose(grid[0, 3], expected, rtol=1e-5, atol=1e-6)


def test_generator_refuses_z_of_the_wrong_width_and_non_finite_z(exported):
    model, base = exported
    generator = tf.saved_model.load(str(base / "generator" / "1")).signatures
    with pytest.raises(tf.errors.InvalidArgumentError, match="z must be finite"):
        generator["generate"](labels=tf.constant([1]), z=tf.fill([1, LATENT], np.nan))
    # A server feeds z past the signature's shape: the traced function checks it itself.
    module = serving.Generator(model, IMAGE_SHAPE)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=f"{LATENT}"):
        module._generate(tf.constant([1]), tf.zeros([1, LATENT + 3]))


def test_an_export_writes_both_models_or_neither_with_readable_permissions(tmp_path,
                                                                         monkeypatch):
    model = tiny_m2()
    modules = {"classifier": serving.Classifier(model, IMAGE_SHAPE),
               "generator": serving.Generator(model, IMAGE_SHAPE)}
    old = os.umask(0o022)
    try:
        written = serving.save_all(modules, str(tmp_path), 1)
    finally:
        os.umask(old)
    for path in written.values():
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o755)
    # A clash on one name refuses before anything is written under the other.
    (tmp_path / "generator" / "2").mkdir()
    with pytest.raises(FileExistsError, match="generator/2 exists"):
        serving.save_all(modules, str(tmp_path), 2)
    assert not (tmp_path / "classifier" / "2").exists()
    # A failure while saving the second removes the first; a dead export's temporary goes.
    stale = tmp_path / "classifier" / f".tmp-3-999999999-{serving._HOST}-abc"
    stale.mkdir()

    class Broken(serving.Generator):
        def signatures(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        serving.save_all({"classifier": modules["classifier"],
                          "generator": Broken(model, IMAGE_SHAPE)}, str(tmp_path), 3)
    assert sorted(os.listdir(tmp_path / "classifier")) == ["1"]
    assert sorted(os.listdir(tmp_path / "generator")) == ["1", "2"]
    # A failure after the first rename removes the version already in place.
    renames = []

    def second_rename_fails(source, target):
        renames.append(target)
        if len(renames) == 2:
            raise OSError("no space left on device")
        os.rename(source, target)

    monkeypatch.setattr(serving.os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="no space left"):
        serving.save_all(modules, str(tmp_path), 4)
    monkeypatch.undo()
    assert renames[0] == str(tmp_path / "classifier" / "4")
    assert sorted(os.listdir(tmp_path / "classifier")) == ["1"]
    assert sorted(os.listdir(tmp_path / "generator")) == ["1", "2"]
    for version, message in ((0, "positive integer"), (-1, "positive integer")):
        with pytest.raises(ValueError, match=message):
            serving.save_all(modules, str(tmp_path), version)
    with pytest.raises(ValueError, match="is a file"):
        serving.save_all(modules, str(tmp_path / "classifier" / "1" / "saved_model.pb"), 1)
