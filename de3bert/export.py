"""A batch-1 exported program of the early-exit layer loop, with the exit decision inside the graph.

`ExitProgram` runs layer i, its exit heads and the policy's `step`, then `torch.cond(leave, stop,
go)`: `stop` returns layer i's logits, `go` runs layers i+1.. (another cond per layer). The
conditions nest L − 1 deep, so a runtime that cannot stop a graph half-way (an `ExportedProgram`,
ONNX Runtime's `If` nodes) still computes only the layers a sample needs. The program returns the
exit layer's logits `[1, C]` and the 1-based exit layer (a 0-d int64 tensor).

At batch 1 nothing is padded, so the attention mask is all ones and the layers get no mask, as the
live engine's layers do at batch 1 (`create_bidirectional_mask` returns None there).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .policy import ExitPolicy

if TYPE_CHECKING:
    from .model import MultiExitModel


class ExitProgram(nn.Module):
    """Embeddings, then layer → heads → decision → `torch.cond`, nested once per layer."""

    def __init__(self, model: MultiExitModel, policy: ExitPolicy, knob: float):
        """Wrap a model and a deployable policy at one knob value (a constant of the program)."""
        super().__init__()
        if "labels" in policy.needs:
            raise ValueError(f"policy {policy.name!r} reads the gold labels (an oracle); it cannot be "
                             "deployed or exported")
        self.model, self.policy = model.eval(), policy
        self.register_buffer("knobs", policy.knob.validate([knob]), persistent=False)
        self.train(False)  # inference only: dropout off in every branch

    def forward(self, input_ids: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits `[1, C]` of the exit layer, exit layer `[]` int64) for one unpadded sequence."""
        attention_mask = torch.ones_like(input_ids)
        hidden, _ = self.model.encoder.embed(input_ids, attention_mask, token_type_ids)
        head_state = self.model.heads.init_state(1, input_ids.device)
        pol_state = self.policy.init_state(1, self.knobs)
        return self._from_layer(0, hidden, attention_mask, head_state, pol_state)

    def _from_layer(self, i: int, hidden: torch.Tensor, attention_mask: torch.Tensor, head_state: dict,
                    pol_state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers i+1..L (1-based) for one sample; traced once per layer, branches as subgraphs."""
        head_state, pol_state = dict(head_state), dict(pol_state)  # a branch never mutates its inputs
        hidden = self.model.encoder.layer(i, hidden, None)
        signals = self.model.heads.forward_layer(i + 1, hidden, attention_mask, head_state)
        logits = signals["logits"]
        if i + 1 == self.model.num_layers:
            return logits, torch.full((), i + 1, dtype=torch.long)
        needed = {k: signals[k] for k in self.policy.needs}
        leave = self.policy.step(i + 1, needed, pol_state, self.knobs).reshape(())

        def stop(hidden, attention_mask, logits, head_state, pol_state):
            """Leave at this layer: its logits (a copy: outputs must not alias inputs)."""
            return logits.clone(), torch.full((), i + 1, dtype=torch.long)

        def go(hidden, attention_mask, logits, head_state, pol_state):
            """Stay: the remaining layers, as the next nested condition."""
            return self._from_layer(i + 1, hidden, attention_mask, head_state, pol_state)

        return torch.cond(leave, stop, go, (hidden, attention_mask, logits, head_state, pol_state))


def example_inputs(tokenizer, text: str = "an example sentence to trace the program") -> dict:
    """Tokenised batch-1 inputs for tracing (the sequence length stays dynamic)."""
    enc = tokenizer(text, return_tensors="pt")
    out = {"input_ids": enc["input_ids"]}
    if "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"]
    return out


def _dynamic_shapes(inputs: dict, max_length: int) -> dict:
    """The sequence axis of every input is one dynamic dimension (2 .. max_length tokens)."""
    seq = torch.export.Dim("seq", min=2, max=max_length)
    return {k: {1: seq} for k in inputs}


def export_program(model: MultiExitModel, policy: ExitPolicy, knob: float, tokenizer,
                   max_length: int | None = None) -> torch.export.ExportedProgram:
    """`torch.export` of `ExitProgram` with a dynamic sequence length; raises on an unexportable head."""
    program = ExitProgram(model, policy, knob)
    inputs = example_inputs(tokenizer)
    limit = max_length or int(getattr(model.encoder.config, "max_position_embeddings", 512))
    with torch.no_grad():
        return torch.export.export(program, (), inputs, dynamic_shapes=_dynamic_shapes(inputs, limit))


def save_program(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """Write a `.pt2` archive (`torch.export.save`) that `torch.export.load` reads without this code."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def load_program(path: str | Path) -> torch.nn.Module:
    """The callable module of a saved program: `module(input_ids=..., token_type_ids=...)`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported program at {path}")
    return torch.export.load(str(path)).module()


@torch.inference_mode()
def run_program(program, inputs: dict) -> tuple[torch.Tensor, int]:
    """(logits `[C]`, 1-based exit layer) of one sample through an exported (or eager) program."""
    logits, layer = program(**inputs)
    return logits[0], int(layer)


def onnx_available() -> bool:
    """Whether the ONNX exporter's packages (`pip install -e ".[export]"`) are importable."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _onnx_cdist(x1, x2, p: float = 2.0, compute_mode: int | None = None):
    """ONNX for `aten._cdist_forward` (DE³'s distances; torchlib has none): sqrt(Σ (x1 − x2)²)."""
    from onnxscript import opset18 as op

    if p != 2.0:
        raise ValueError(f"ONNX export of cdist supports p = 2 only, got p = {p}")
    rows = op.Unsqueeze(x1, op.Constant(value_ints=[-2]))  # [N, 1, d]
    cols = op.Unsqueeze(x2, op.Constant(value_ints=[-3]))  # [1, C, d]
    diff = op.Sub(rows, cols)
    return op.Sqrt(op.ReduceSum(op.Mul(diff, diff), op.Constant(value_ints=[-1]), keepdims=0))


def export_onnx(model: MultiExitModel, policy: ExitPolicy, knob: float, tokenizer, path: str | Path,
                max_length: int | None = None) -> Path:
    """ONNX through `torch.onnx.export(..., dynamo=True)`: each `torch.cond` becomes an `If` node."""
    if not onnx_available():
        raise FileNotFoundError('ONNX export needs onnx and onnxscript: pip install -e ".[export]"')
    program = ExitProgram(model, policy, knob)
    inputs = example_inputs(tokenizer)
    limit = max_length or int(getattr(model.encoder.config, "max_position_embeddings", 512))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        onnx_program = torch.onnx.export(program, (), kwargs=inputs, dynamo=True, verbose=False,
                                         dynamic_shapes=_dynamic_shapes(inputs, limit),
                                         output_names=["logits", "exit_layer"],
                                         custom_translation_table={torch.ops.aten._cdist_forward.default:
                                                                   _onnx_cdist})
    onnx_program.save(str(path))
    return path
