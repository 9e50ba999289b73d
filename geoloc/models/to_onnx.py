"""Models as ONNX files that are the same bytes from any checkout."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch


def write_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, opset: int,
               outputs: list[str]) -> None:
    """`module` (uint8 images in, the named `outputs` out) as an ONNX file with a dynamic
    batch, the same bytes from any checkout."""
    torch.onnx.export(
        module, (example,), str(path), dynamo=True, opset_version=opset, verbose=False,
        input_names=["images"], output_names=outputs, external_data=False,
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
    )
    _strip_stack_traces(path)


def _strip_stack_traces(path: Path) -> None:
    """Drop the exporter's per-node stack traces: they hold this checkout's absolute paths,
    so the same model exported from two clones would differ byte for byte."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))
