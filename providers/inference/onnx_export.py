"""Build step: turn the sentence-transformers BERT (safetensors) into one ONNX graph.

The serving provider (``providers.inference.onnx_embeddings``) runs only onnxruntime,
so it fits the Lambda zip layer; torch lives here and nowhere else. The graph takes
``input_ids`` and ``attention_mask`` (int64, ``[batch, seq]``, both axes dynamic) and
returns ``sentence_embedding`` (float32, ``[batch, hidden]``): the BERT encoder, mean
pooling over the attention-masked tokens and L2 normalisation, i.e. exactly what
sentence-transformers' Transformer -> Pooling(mean) -> Normalize modules compute.

It needs torch and onnx (the TorchScript exporter and onnxruntime's optimizer both
use it): build-time dependencies only. Run it at layer-build time (there is no torch
in Lambda)::

    python -m providers.inference.onnx_export --out build/minilm.onnx

Layout of the torch model, and names of its parameters, follow the Hugging Face BERT
checkpoint so ``model.safetensors`` loads with no renaming::

    embeddings: word[input_ids] + position[0..seq) + token_type[0] -> LayerNorm
    encoder.layer[i]:  x = LN(x + Wo · MHA(Wq x, Wk x, Wv x))     (post-norm)
                       x = LN(x + W2 · gelu(W1 x))
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fnstack.progress import Step, step
from providers.inference.onnx_embeddings import (
    DEFAULT_MODEL_ID,
    bundled_model_dir,
    default_cache_dir,
    default_graph_path,
    read_model_info,
)

__all__ = [
    "BertArgs",
    "SentenceBert",
    "export_onnx",
    "export_stages",
    "load_sentence_bert",
    "main",
]

# ONNX opset 17 has LayerNormalization as one op; onnxruntime fuses the rest (Gelu from
# its Erf pattern, attention, skip+layernorm) when it optimises the graph.
OPSET = 17


@dataclass(frozen=True)
class BertArgs:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_config(cls, cfg: dict[str, object]) -> BertArgs:
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only BERT with exact gelu is supported, got {cfg['hidden_act']}")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        return cls(**{name: cfg[name] for name in cls.__dataclass_fields__})  # type: ignore[arg-type]


class Embeddings(nn.Module):
    def __init__(self, a: BertArgs) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(a.vocab_size, a.hidden_size)
        self.position_embeddings = nn.Embedding(a.max_position_embeddings, a.hidden_size)
        self.token_type_embeddings = nn.Embedding(a.type_vocab_size, a.hidden_size)
        self.LayerNorm = nn.LayerNorm(a.hidden_size, eps=a.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: (b, s) -> (b, s, hidden). Single-segment input only: token type 0
        # for every token, so the graph needs no token_type_ids input.
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)
        x = x + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)  # type: ignore[no-any-return]


class SelfAttention(nn.Module):
    def __init__(self, a: BertArgs) -> None:
        super().__init__()
        self.n_heads = a.num_attention_heads
        self.head_dim = a.hidden_size // a.num_attention_heads
        self.query = nn.Linear(a.hidden_size, a.hidden_size)
        self.key = nn.Linear(a.hidden_size, a.hidden_size)
        self.value = nn.Linear(a.hidden_size, a.hidden_size)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        b, s, hidden = x.shape
        # (b, s, hidden) -> (b, heads, s, head_dim)
        xq: torch.Tensor = self.query(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        xk: torch.Tensor = self.key(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        xv: torch.Tensor = self.value(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        # Written out (not SDPA) so the exported pattern is the textbook one that
        # onnxruntime's attention fusion recognises. scores: (b, heads, s, s)
        scores = (xq @ xk.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask_bias
        ctx = scores.softmax(dim=-1) @ xv
        return ctx.transpose(1, 2).reshape(b, s, hidden)


class SelfOutput(nn.Module):
    """A dense projection, then a residual add and LayerNorm (BERT is post-norm)."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)  # type: ignore[no-any-return]


class Attention(nn.Module):
    def __init__(self, a: BertArgs) -> None:
        super().__init__()
        self.self = SelfAttention(a)
        self.output = SelfOutput(a.hidden_size, a.hidden_size, a.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)  # type: ignore[no-any-return]


class Intermediate(nn.Module):
    def __init__(self, a: BertArgs) -> None:
        super().__init__()
        self.dense = nn.Linear(a.hidden_size, a.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) gelu, as BERT's "gelu"


class Layer(nn.Module):
    def __init__(self, a: BertArgs) -> None:
        super().__init__()
        self.attention = Attention(a)
        self.intermediate = Intermediate(a)
        self.output = SelfOutput(a.intermediate_size, a.hidden_size, a.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)  # type: ignore[no-any-return]


class Encoder(nn.Module):
    def __init__(self, a: BertArgs) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(a) for _ in range(a.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class SentenceBert(nn.Module):
    """BERT encoder + masked mean pooling + L2 normalisation: (b, s) ids -> (b, hidden)."""

    def __init__(self, a: BertArgs) -> None:
        super().__init__()
        self.args = a
        self.embeddings = Embeddings(a)
        self.encoder = Encoder(a)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        mask = attention_mask.to(x.dtype)  # (b, s), 1 = token, 0 = padding
        # Additive bias (b, 1, 1, s): padded keys get the most negative float, so their
        # softmax weight is exactly 0 and padding never changes a sentence's vector.
        mask_bias = (1.0 - mask[:, None, None, :]) * torch.finfo(x.dtype).min
        h = self.encoder(x, mask_bias)  # (b, s, hidden)
        # Mean over real tokens only (sentence-transformers' Pooling, mean mode).
        summed = (h * mask[:, :, None]).sum(dim=1)
        counts = mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return F.normalize(summed / counts, p=2.0, dim=1)


def load_sentence_bert(model_dir: Path | None = None) -> SentenceBert:
    """The torch model with the checkpoint's weights, in eval mode (the reference)."""
    from safetensors.torch import load_file

    model_dir = model_dir or bundled_model_dir()
    info = read_model_info(model_dir)
    model = SentenceBert(BertArgs.from_config(info.config))
    state = load_file(str(model_dir / "model.safetensors"))
    # The pooler (CLS head) is unused by mean pooling; position_ids is a constant buffer.
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith("pooler.") and k != "embeddings.position_ids"
    }
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_onnx(
    out: Path,
    model_dir: Path | None = None,
    *,
    optimize: bool = True,
    int8: bool = False,
    fp16_weights: bool = True,
    progress: Step | None = None,
) -> Path:
    """Export the graph to ``out`` atomically (temp file in the same folder, then rename).

    With ``optimize`` the saved graph is already fused (see `_optimize`), which makes
    it faster and saves every cold start the fusion work. ``int8`` quantizes it too
    (see `_quantize_int8`): about twice as fast, but no longer exact. ``fp16_weights``
    halves the file (see `_store_weights_fp16`); compute stays float32. ``progress``
    hears of each stage done (`export_stages` says how many there are).
    """
    advance = progress.advance if progress is not None else (lambda note="", n=1: None)
    model = load_sentence_bert(model_dir)
    advance("weights loaded")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    fd, raw_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".raw.onnx", dir=out.parent)
    os.close(fd)
    raw = Path(raw_name)
    final = raw.with_suffix(".opt")
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which needs
            # onnxscript too; this one needs torch and onnx only, and BERT is plain.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (ids, mask),
                str(raw),
                input_names=["input_ids", "attention_mask"],
                output_names=["sentence_embedding"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "sentence_embedding": {0: "batch"},
                },
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        advance("traced to ONNX")
        if optimize:
            _optimize(raw, final, model.args)
            advance("fused")
        else:
            raw.replace(final)
        if int8:
            _quantize_int8(final, raw)
            raw.replace(final)
            advance("quantized")
        if fp16_weights:
            _store_weights_fp16(final, raw)
            raw.replace(final)
            advance("weights stored as float16")
        # mkstemp creates 0600 files: the graph must be readable by whoever serves it
        # (another user of a shared cache, the Lambda runtime user of a layer).
        final.chmod(0o644)
        final.replace(out)
    finally:
        raw.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
    return out


def export_stages(*, optimize: bool = True, int8: bool = False, fp16_weights: bool = True) -> int:
    """How many times `export_onnx` advances its progress."""
    return 2 + optimize + int8 + fp16_weights


def _optimize(src: Path, dst: Path, args: BertArgs) -> None:
    """Fuse the graph for onnxruntime's CPU kernels and save it to ``dst``.

    onnxruntime's BERT optimizer (a Python tool shipped in the onnxruntime wheel)
    fuses each layer's attention into one ``Attention`` op (Q/K/V packed in one
    MatMul), bias+gelu and residual+LayerNorm. Its output uses only standard and
    ``com.microsoft`` ops, so it is portable across CPUs (unlike a graph saved by
    onnxruntime's own *all* level, whose layout changes are machine-specific).
    """
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    # The default for BERT turns the mask into per-row lengths, which is right only
    # for right padding; the raw 0/1 mask is right for any mask, at no cost here.
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    fused = optimize_model(
        str(src),
        model_type="bert",
        num_heads=args.num_attention_heads,
        hidden_size=args.hidden_size,
        optimization_options=options,
        opt_level=0,  # python fusions only; the session applies its own at load
    )
    fused.save_model_to_file(str(dst))


def _quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of every weight matrix (per output channel).

    Activations are quantized per batch at run time, so no calibration set is needed.
    On AVX2 CPUs it runs about twice as fast as float32 and the file is 40% smaller,
    but vectors drift from the float model (cosine ~0.99 rather than ~1.0), which is
    why it is opt-in: rankings mostly hold, exact scores do not.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs (on the root logger) a recommendation to run its shape-inference
    # pre-processing, which the fused graph does not need: silence it for this call.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Attention"],
            # Fused com.microsoft ops defeat the quantizer's type inference: all float32.
            extra_options={"DefaultTensorType": 1},
        )
    finally:
        root.setLevel(level)


def _store_weights_fp16(src: Path, dst: Path) -> None:
    """Store the large float32 weights as float16, each behind a Cast back to float32.

    onnxruntime folds those Casts when it loads the graph, so it computes in float32
    as before, at the same speed; only the rounding of the weights to float16 remains
    (cosine to the float32 graph > 0.99999). It halves the file (90 -> 45 MB for
    MiniLM), which matters in a Lambda layer capped at 250 MB unzipped, and in the
    bytes a cold start reads.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        # Small tensors (biases, LayerNorm scales) are not worth a node each.
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < 4096:
            continue
        half = numpy_helper.from_array(
            numpy_helper.to_array(init).astype(np.float16), f"{init.name}__fp16"
        )
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
    for node in reversed(casts):  # before every consumer: keeps the graph sorted
        graph.node.insert(0, node)
    onnx.save(model, str(dst))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m providers.inference.onnx_export",
        description="Export the sentence-transformers BERT to the ONNX graph the "
        "inline::onnx-embeddings provider serves.",
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="default: bundled MiniLM")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the .onnx (default: the provider's cache path under "
        "$FNSTACK_CACHE_DIR or ~/.cache/fnstack)",
    )
    parser.add_argument("--no-optimize", action="store_true", help="save the raw export")
    parser.add_argument(
        "--int8", action="store_true", help="quantize to int8 (faster, approximate; opt-in)"
    )
    parser.add_argument(
        "--fp32-weights",
        action="store_true",
        help="store weights as float32 (twice the file size; default float16 storage)",
    )
    args = parser.parse_args(argv)
    model_dir = args.model_dir or bundled_model_dir()
    out = args.out or default_graph_path(
        model_dir, default_cache_dir(), DEFAULT_MODEL_ID, int8=args.int8
    )
    options = {"optimize": not args.no_optimize, "int8": args.int8,
               "fp16_weights": not args.fp32_weights}
    with step(f"exporting {model_dir.name} to ONNX", total=export_stages(**options),
              expect="up to a minute") as progress:
        path = export_onnx(out, model_dir, progress=progress, **options)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
