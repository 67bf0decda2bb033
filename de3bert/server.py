"""`de3bert serve`: an HTTP endpoint over an exported folder, one scheduler deciding what runs together.

Built on FastAPI + uvicorn (the `serve` extra), not Ray Serve: Ray is already a dependency of the
`ray` extra, but Ray Serve adds a much larger dependency tree (its HTTP proxy, controller and
replicas) and starts a Ray cluster for what is a single-process CPU server whose batching must stay
in our scheduler (per-layer rebatching is not request-level batching, which is all Ray Serve's
`@serve.batch` offers). One loop thread (`de3bert.serving.ServerLoop`) owns the model; request
handlers only tokenise, submit and await their answer.

    POST /predict {"text": "...", "text_pair": "..."}  → label, probabilities, exit layer, latency
    GET  /health                                       → model, method, knob, scheduler and limits

A malformed request gets HTTP 400 with a one-line message naming the field; an input longer than
the model's length is truncated exactly as in training (`truncated: true` in the answer).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from .predict import Predictor, load_predictor
from .serving import Done, Limits, ServerLoop, ServingEngine, make_scheduler

try:  # module level: FastAPI resolves the handlers' (string) annotations in this module's globals
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
except ImportError:  # the `serve` extra is not installed; `create_app` says so
    FastAPI = Request = JSONResponse = None

FIELDS = ("text", "text_pair")


class BadRequest(ValueError):
    """A request the server answers with HTTP 400 (the message names the field)."""


def parse_body(body, pair: bool) -> tuple[str, ...]:
    """The input texts of a request body, or `BadRequest` naming the offending field."""
    if not isinstance(body, dict):
        raise BadRequest(f"body: must be a JSON object with {' and '.join(FIELDS[:1 + pair])}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown field; valid: {', '.join(FIELDS[:1 + pair])}")
    if "text" not in body:
        raise BadRequest("text: missing")
    names = ("text", "text_pair") if pair else ("text",)
    if not pair and "text_pair" in body:
        raise BadRequest("text_pair: this model's task takes one sentence")
    if pair and "text_pair" not in body:
        raise BadRequest("text_pair: missing (this model's task takes sentence pairs)")
    for name in names:
        if not isinstance(body[name], str):
            raise BadRequest(f"{name}: must be a string, got {type(body[name]).__name__}")
        if not body[name].strip():
            raise BadRequest(f"{name}: empty")
    return tuple(body[n] for n in names)


def tokenize(predictor: Predictor, texts: tuple[str, ...]) -> tuple[dict[str, list[int]], bool]:
    """Features truncated as in training (`predict`'s call), and whether anything was cut."""
    tok = predictor.tokenizer
    full = tok(*texts, truncation=False)
    if len(full["input_ids"]) <= predictor.max_length:
        return dict(full), False
    return dict(tok(*texts, truncation=True, max_length=predictor.max_length)), True


def answer(predictor: Predictor, done: Done, truncated: bool, tokens: int) -> dict:
    """The JSON answer: label, probabilities (classification), exit layer, latency in ms."""
    logits = done.logits
    base = {"exit_layer": done.exit_layer, "latency_ms": round(done.latency * 1000, 3),
            "truncated": truncated, "tokens": tokens}
    if logits.shape[-1] == 1:
        value = float(logits[0])
        return {"label": value, "score": value, "probabilities": None, **base}
    probs = logits.softmax(-1)
    k = int(probs.argmax())
    return {"label": predictor.labels[k], "score": round(float(probs[k]), 6),
            "probabilities": {lab: round(float(p), 6) for lab, p in zip(predictor.labels, probs.tolist(),
                                                                         strict=True)}, **base}


def create_app(predictor: Predictor, scheduler: str = "rebatch", limits: Limits | None = None,
               info: dict | None = None):
    """The FastAPI app: its lifespan runs the scheduler's loop thread (started before the first
    request, stopped at shutdown)."""
    if FastAPI is None:
        raise FileNotFoundError("`de3bert serve` needs FastAPI and uvicorn: pip install -e '.[serve]'")
    limits = limits or Limits()
    knob = float(predictor.knobs[0])
    engine = ServingEngine(predictor.model, predictor.policy, knob, predictor.tokenizer.pad_token_id or 0)
    loop = ServerLoop(make_scheduler(scheduler, engine, limits))

    @asynccontextmanager
    async def lifespan(_app):
        loop.start()
        yield
        loop.stop()

    app = FastAPI(title="de3bert serve", lifespan=lifespan)
    health = {"model": "", **(info or {}), "policy": predictor.policy.name, "knob": knob,
              "scheduler": scheduler, "limits": asdict(limits), "num_layers": predictor.model.num_layers,
              "max_length": predictor.max_length, "pair": predictor.pair}

    @app.get("/health")
    async def get_health():
        status = "error" if loop.error is not None else "ok"
        return {"status": status, **health, "served": loop.served,
                **({"error": repr(loop.error)} if loop.error is not None else {})}

    @app.post("/predict")
    async def post_predict(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "body: not valid JSON"}, status_code=400)
        try:
            texts = parse_body(body, predictor.pair)
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        features, truncated = tokenize(predictor, texts)
        event_loop = asyncio.get_running_loop()
        future = event_loop.create_future()
        try:
            loop.submit(features, lambda d: event_loop.call_soon_threadsafe(future.set_result, d))
        except RuntimeError as err:
            return JSONResponse({"error": f"server: {err}"}, status_code=500)
        done = await future
        if isinstance(done, BaseException):
            return JSONResponse({"error": f"server: the serving loop failed: {done!r}"}, status_code=500)
        return answer(predictor, done, truncated, len(features["input_ids"]))

    return app


def cmd_serve(args) -> int:
    """`de3bert serve`: load the folder (errors as `predict`'s), then serve until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise FileNotFoundError("`de3bert serve` needs FastAPI and uvicorn: "
                                "pip install -e '.[serve]'") from None
    from .hub import SECTION, read_config, resolve_folder

    limits = Limits(args.max_batch, args.max_wait_ms, args.order)
    predictor = load_predictor(args.model, target=args.target, knob=args.knob, method=args.method,
                               max_length=args.max_length)
    section = read_config(resolve_folder(args.model))[SECTION]
    torch.set_num_threads(args.threads)
    info = {"model": str(Path(args.model)), "method": args.method or section.get("method"),
            "target": args.target if args.knob is None else None}
    app = create_app(predictor, args.scheduler, limits, info)
    print(f"serving {args.model} ({info['method']} at {predictor.policy.knob.name}="
          f"{float(predictor.knobs[0]):g}) with {args.scheduler} {asdict(limits)} on "
          f"http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_serve_parser(sub) -> None:
    """The `serve` subcommand."""
    from .serving import ORDERS, SCHEDULERS

    p = sub.add_parser("serve", help="an HTTP endpoint over a saved folder (FastAPI + uvicorn)")
    p.add_argument("--model", required=True, help="folder written by save_pretrained / export, or a Hub id")
    p.add_argument("--target", type=float, default=None, help="target speed-up (default: the saved one)")
    p.add_argument("--knob", type=float, default=None, help="knob value instead of a target's")
    p.add_argument("--method", default=None, help="another method on the same recipe (needs --knob)")
    p.add_argument("--max-length", type=int, default=None, help="tokens kept (default: the training length)")
    p.add_argument("--scheduler", choices=list(SCHEDULERS), default="rebatch",
                   help="batch1, dynamic (batches shrink) or rebatch (per-layer queues; default)")
    p.add_argument("--max-batch", type=int, default=16, help="largest batch a step runs")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a request waits for batch-mates")
    p.add_argument("--order", choices=list(ORDERS), default="fullest", help="rebatching's queue order")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model loop")
    p.set_defaults(fn=cmd_serve)
