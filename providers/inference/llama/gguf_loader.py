"""Read a GGUF file: metadata, and weights dequantized into torch tensors.

Dequantizing Q4_1/Q8_0 blocks with numpy takes seconds, so the float32 result is
cached as a safetensors file (memory-mapped on the next load). The cache key is the
GGUF's absolute path, size and mtime: replacing the file invalidates its entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize
from safetensors import safe_open
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

# Bump when the cached layout (names, dtype) changes so stale files are not reused.
_CACHE_FORMAT = "1"

# GGUF (llama.cpp) tensor names -> llama-models names.
_TOP_LEVEL = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
_PER_LAYER = {
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_gate": "feed_forward.w1",
    "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3",
    "attn_norm": "attention_norm",
    "ffn_norm": "ffn_norm",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")


def gguf_to_llama_name(name: str) -> str | None:
    """Map a GGUF tensor name to its llama-models name (None: not a model weight)."""
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    match = _BLOCK_RE.match(name)
    if match and match.group(2) in _PER_LAYER:
        return f"layers.{match.group(1)}.{_PER_LAYER[match.group(2)]}.weight"
    return None


def default_cache_dir() -> Path:
    env = os.environ.get("FNSTACK_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fnstack"


def _field_value(reader: GGUFReader, name: str) -> Any:
    f = reader.fields[name]
    # Large arrays of strings (vocab, merges) decode faster by hand than via contents().
    if f.types and f.types[0] == GGUFValueType.ARRAY and f.types[-1] == GGUFValueType.STRING:
        return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
    return f.contents()


@dataclass
class LoadStats:
    seconds: float
    from_cache: bool
    cache_file: Path | None


@dataclass
class GGUFModel:
    """What the engine needs from a GGUF file: its metadata and float32 weights."""

    path: Path
    metadata: dict[str, Any]
    weights: dict[str, torch.Tensor]
    stats: LoadStats


def cache_path_for(gguf_path: Path, cache_dir: Path | None = None, variant: str = "f32") -> Path:
    """Cache file of one GGUF (path + size + mtime) in one layout (``variant``)."""
    st = gguf_path.stat()
    key = f"{_CACHE_FORMAT}|{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    directory = (cache_dir or default_cache_dir()) / "weights"
    return directory / f"{gguf_path.stem}-{digest}.{variant}.safetensors"


def read_cache(cache_file: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """(GGUF metadata, tensors) from a cache file; None when absent or unreadable."""
    if not cache_file.is_file():
        return None
    try:
        with safe_open(str(cache_file), framework="pt") as f:
            header = f.metadata() or {}
        return json.loads(header["gguf_metadata"]), load_file(str(cache_file))
    except Exception as exc:  # a truncated/corrupt cache is rebuilt, never fatal
        logger.warning("ignoring unreadable weight cache %s: %s", cache_file, exc)
        return None


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    return {name: _field_value(reader, name) for name in reader.fields}


def dequantize_weights(reader: GGUFReader) -> dict[str, torch.Tensor]:
    """Dequantize every model tensor to float32, keyed by llama-models names."""
    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = gguf_to_llama_name(t.name)
        if name is None:
            logger.debug("skipping GGUF tensor %s", t.name)
            continue
        # dequantize() returns numpy in row-major order with the GGUF's ne0 as the last
        # axis, which is exactly torch's nn.Linear [out_features, in_features] layout.
        # astype() copies: F32 tensors come back as read-only views of the memory map.
        array = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(d) for d in reversed(t.shape))
        out[name] = torch.from_numpy(array.reshape(shape))
    return out


def load_gguf(
    path: str | os.PathLike[str], cache_dir: Path | None = None, use_cache: bool = True
) -> GGUFModel:
    """Read metadata and float32 weights, from the safetensors cache when it is warm.

    Parsing a GGUF's 49k-entry vocabulary with ``GGUFReader`` alone takes seconds, so
    the cache file also carries the metadata (as JSON in the safetensors header) and a
    warm load never opens the GGUF at all.
    """
    start = time.perf_counter()
    gguf_path = Path(path).expanduser().resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF model file not found: {gguf_path}")
    cache_file = cache_path_for(gguf_path, cache_dir) if use_cache else None
    if cache_file is not None and (cached := read_cache(cache_file)) is not None:
        metadata, weights = cached
        stats = LoadStats(time.perf_counter() - start, True, cache_file)
        return GGUFModel(gguf_path, metadata, weights, stats)
    reader = GGUFReader(gguf_path)
    metadata = read_metadata(reader)
    weights = dequantize_weights(reader)
    if cache_file is not None:
        write_cache(cache_file, weights, metadata)
    stats = LoadStats(time.perf_counter() - start, False, cache_file)
    return GGUFModel(gguf_path, metadata, weights, stats)


def write_cache(target: Path, weights: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    # Write to a temp file then rename, so a concurrent or interrupted writer never
    # leaves a half-written cache that a later load would trust.
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(weights, tmp, metadata={"gguf_metadata": json.dumps(metadata)})
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:  # read-only home (e.g. Lambda): run without a cache
        logger.warning("could not write weight cache %s: %s", target, exc)
