"""`de3bert serve` end to end: the server starts as a subprocess on a free loopback port, a client
(another subprocess: this test process may not open network connections, see conftest) sends
concurrent requests and malformed ones, every answer is checked against `predict` on the same
folder, and the server is stopped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from de3bert.data import get_task, load_examples  # noqa: E402
from de3bert.model import build_model  # noqa: E402
from de3bert.predict import load_predictor  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
CLIENT = textwrap.dedent('''
    import json, sys, time, urllib.request, urllib.error
    from concurrent.futures import ThreadPoolExecutor
    base, texts, bad = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    def call(path, body=None, raw=None):
        data = raw.encode() if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    deadline = time.time() + 60
    while True:
        try:
            health = call("/health")
            break
        except (urllib.error.URLError, ConnectionError):
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: call("/predict", {"text": t}), texts))
    errors = [call("/predict", raw=b) for b in bad]
    print(json.dumps({"health": health, "answers": answers, "errors": errors,
                      "after": call("/health")}))
''')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def texts():
    return [e.texts[0] for e in load_examples(get_task("synthetic"), "dev")[:40]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, texts):
    """A tiny random max-prob folder whose knob sits in the widest gap between the middle half of
    the texts' layer-1 confidences: about half exit at layer 1, none is a near tie."""
    from de3bert.backbone import load_tokenizer
    from de3bert.data import EncodedDataset, make_loader
    from de3bert.engine import record_signals

    torch.manual_seed(0)
    model = build_model("tiny-random", "weighted", 2, "mean").eval()
    with torch.no_grad():
        for mod in model.heads.classifiers:
            mod.weight.mul_(30.0)
    ds = EncodedDataset(load_examples(get_task("synthetic"), "dev")[:40], load_tokenizer("tiny-random"),
                        128, False)
    record = record_signals(model, make_loader(ds, 40, shuffle=False), progress=False)
    conf = record["logits"][0].softmax(-1).max(-1).values.double().sort().values[10:30]
    gap = int((conf[1:] - conf[:-1]).argmax())
    knob = float((conf[gap] + conf[gap + 1]) / 2)
    d = tmp_path_factory.mktemp("served") / "maxprob"
    model.save_pretrained(d, method="maxprob", operating_points=[{"target": 2.0, "knob": knob}],
                          target=2.0, task="synthetic")
    return d


def test_serve_answers_equal_predict_and_bad_input_gets_400(folder, texts):
    long_text = " ".join(["good"] * 400)
    bad = ['{"txt": "x"}', '{"text": 3}', '{"text": "a", "text_pair": "b"}', "not json", "[1]",
           '{"text": "  "}', json.dumps({"text": long_text})]
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "de3bert", "serve", "--model", str(folder), "--port",
                               str(port), "--scheduler", "rebatch", "--max-batch", "8", "--max-wait-ms", "2"],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = subprocess.run([sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}", json.dumps(texts),
                                 json.dumps(bad)], env=ENV, capture_output=True, text=True, timeout=120)
        assert client.returncode == 0, client.stderr[-2000:]
        out = json.loads(client.stdout)
    finally:
        server.terminate()
        log = server.communicate(timeout=20)[0]
    assert "serving" in log and "127.0.0.1" in log, log
    assert out["health"][0] == 200
    health = out["health"][1]
    assert health["status"] == "ok" and health["scheduler"] == "rebatch" and health["method"] == "maxprob"
    assert health["limits"] == {"max_batch": 8, "max_wait_ms": 2.0, "order": "fullest"}
    assert out["after"][1]["served"] == len(texts) + 1  # the over-long one was served too
    expected = load_predictor(folder).predict(texts)
    answers = [a for status, a in out["answers"] if status == 200]
    assert len(answers) == len(texts)
    for want, got in zip(expected, answers, strict=True):
        assert (got["label"], got["exit_layer"]) == (want["label"], want["exit_layer"]), (want, got)
        assert abs(got["score"] - want["score"]) < 1e-4 and got["latency_ms"] >= 0
        assert set(got["probabilities"]) == {"0", "1"} and got["truncated"] is False
    assert len({a["exit_layer"] for a in answers}) > 1  # the knob really exits at several depths
    codes = [status for status, _ in out["errors"]]
    messages = [body.get("error", "") for _, body in out["errors"]]
    assert codes == [400] * 6 + [200], out["errors"]
    assert messages[:6] == ["txt: unknown field; valid: text", "text: must be a string, got int",
                            "text_pair: this model's task takes one sentence", "body: not valid JSON",
                            "body: must be a JSON object with text", "text: empty"]
    assert out["errors"][6][1]["truncated"] is True and out["errors"][6][1]["tokens"] == 128


def test_serve_unknown_target_fails_like_predict(folder, capsys):
    from benchmarks.cli import main

    assert main(["serve", "--model", str(folder), "--target", "3"]) == 2
    err = capsys.readouterr().err
    assert main(["predict", "--model", str(folder), "--target", "3", "x"]) == 2
    assert err == capsys.readouterr().err and "valid targets: 2" in err
