"""Prepare the models that ship inside the provider layer (run before `sam build`).

Lambda's zip layer has onnxruntime but no torch, so the embedding model's ONNX graph is
exported here, at build time, with the project's venv (torch + onnx). The folder gets
the graph plus the small files the provider reads (tokenizer, config, pooling); the
90 MB safetensors stay out. The layer Makefile copies the folder to
/opt/fnstack-models/<model_id>/, where the provider finds it via FNSTACK_MODELS_DIR.

    .venv/bin/python infra/prebuild_models.py [--out .aws-sam/prebuilt-models]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What inline::onnx-embeddings reads from a model folder besides the graph.
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
               "sentence_bert_config.json", "special_tokens_map.json", "vocab.txt",
               "1_Pooling/config.json")


def main(argv: list[str] | None = None) -> int:
    from providers.inference.onnx_embeddings import (
        DEFAULT_MODEL_ID,
        GRAPH_FILE_NAME,
        bundled_model_dir,
    )
    from providers.inference.onnx_export import export_onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".aws-sam" / "prebuilt-models")
    args = parser.parse_args(argv)
    source = bundled_model_dir()
    dest = args.out / DEFAULT_MODEL_ID
    graph = dest / GRAPH_FILE_NAME
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (source / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    if not graph.is_file():
        export_onnx(graph, source, optimize=True, int8=False, fp16_weights=True)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"{dest}: {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
