"""inline::onnx-embeddings against the real all-MiniLM-L6-v2, no mocks.

The graph is exported once per module from the bundled safetensors (our own torch
BERT -> torch.onnx) into a temporary cache, then every test talks to the provider.
The reference is the same torch BERT run eagerly, with mean pooling and L2
normalisation, i.e. what sentence-transformers computes for this model.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from fnstack.api.inference import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
)
from fnstack.errors import ConfigError, InternalError, InvalidRequestError
from fnstack.spec import ProviderContext, load_spec
from providers.inference.onnx_embeddings import (
    OnnxEmbeddingsConfig,
    OnnxEmbeddingsProvider,
    bundled_model_dir,
    create,
    default_graph_path,
    ensure_graph,
)

pytestmark = pytest.mark.slow

MODEL = "all-MiniLM-L6-v2"
LONG = " ".join(
    f"Paragraph {i}: serverless functions scale to zero, start cold, and keep the "
    "provider layer small so that an embedding request stays fast." * 2
    for i in range(12)
)  # well over 256 tokens: exercises truncation
SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "hello",
    "How do I reset my password?",
    "Straße, naïve café, déjà vu — façade.",
    "東京は日本の首都です。",
    "Το γρήγορο καφέ αλεπού πηδάει.",  # noqa: RUF001 (Greek on purpose)
    "مرحبا بالعالم",
    "Emoji test 🚀🔥 with symbols <>{}[] & 100% #tags",
    "   leading and trailing spaces   ",
    "Line one\nLine two\tTabbed",
    "def f(x): return x ** 2  # python code",
    LONG,
]


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def raw_tokenizer() -> Tokenizer:
    """The model's tokenizer without the 128-token truncation/padding its JSON sets."""
    tok = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def vectors(result: EmbeddingList) -> np.ndarray:
    assert [d.index for d in result.data] == list(range(len(result.data)))
    return np.array([d.embedding for d in result.data], dtype=np.float32)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fnstack-cache")


@pytest.fixture(scope="module")
def graph(cache_dir: Path) -> Path:
    """Export the graph with two racing threads: the file lock lets one build it."""
    path = default_graph_path(bundled_model_dir(), cache_dir, MODEL)
    results: list[Path | BaseException] = []

    def build() -> None:
        try:
            results.append(ensure_graph(path, bundled_model_dir()))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [path, path]
    return path


@pytest.fixture(scope="module")
async def provider(graph: Path, cache_dir: Path) -> OnnxEmbeddingsProvider:
    ctx = ProviderContext(provider_id="minilm", cache_dir=cache_dir)
    p = await create(OnnxEmbeddingsConfig(max_batch_size=4, intra_op_threads=2), ctx)
    assert p.graph_path == graph  # found in the cache, not exported again
    return p


@pytest.fixture(scope="module")
def reference() -> Any:
    """texts -> unit vectors from the torch BERT (eager), tokenized as sentence-transformers."""
    import torch

    from providers.inference.onnx_export import load_sentence_bert

    model = load_sentence_bert()
    tok = raw_tokenizer()
    tok.enable_truncation(max_length=256)  # sentence-transformers' max_seq_length

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for text in texts:  # one at a time: no padding in the reference at all
                ids = torch.tensor([tok.encode(text).ids])
                out.append(model(ids, torch.ones_like(ids))[0].numpy())
        return np.stack(out)

    return embed


async def embed(provider: OnnxEmbeddingsProvider, input: Any, **kw: Any) -> EmbeddingList:
    return await provider.embeddings(EmbeddingRequest(model=MODEL, input=input, **kw))


# --- correctness --------------------------------------------------------------------


async def test_matches_torch_reference(provider: OnnxEmbeddingsProvider, reference: Any) -> None:
    got = vectors(await embed(provider, SENTENCES))  # batches of 4 with padding
    want = reference(SENTENCES)
    assert got.shape == (len(SENTENCES), 384)
    for text, g, w in zip(SENTENCES, got, want, strict=True):
        assert cosine(g, w) >= 0.999, text
        assert abs(np.linalg.norm(g) - 1.0) < 1e-4


async def test_batching_and_padding_do_not_change_vectors(
    provider: OnnxEmbeddingsProvider,
) -> None:
    batched = vectors(await embed(provider, SENTENCES[:6]))
    single = [vectors(await embed(provider, s))[0] for s in SENTENCES[:6]]
    for b, s in zip(batched, single, strict=True):
        assert cosine(b, s) > 0.99999


async def test_semantic_sanity(provider: OnnxEmbeddingsProvider) -> None:
    cat, kitten, stocks = vectors(
        await embed(
            provider,
            [
                "A cat is sleeping on the sofa.",
                "A kitten naps on the couch.",
                "The stock market fell sharply today.",
            ],
        )
    )
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.3
    assert cosine(cat, kitten) > 0.6


async def test_usage_counts_tokens_with_specials(provider: OnnxEmbeddingsProvider) -> None:
    result = await embed(provider, ["hello world", "hello"])
    assert result.usage.prompt_tokens == 4 + 3  # [CLS] hello world [SEP] + [CLS] hello [SEP]
    assert result.usage.total_tokens == result.usage.prompt_tokens
    assert result.model == MODEL and result.object == "list"


async def test_long_input_is_truncated_to_context(provider: OnnxEmbeddingsProvider) -> None:
    tok = raw_tokenizer()
    ids = tok.encode(LONG, add_special_tokens=False).ids
    assert len(ids) > 600
    full = await embed(provider, LONG)
    head = await embed(provider, ids[:254])  # what fits beside [CLS] and [SEP]
    assert full.usage.prompt_tokens == 256
    assert cosine(vectors(full)[0], vectors(head)[0]) > 0.99999


async def test_base64_is_little_endian_float32_of_floats(provider: OnnxEmbeddingsProvider) -> None:
    floats = vectors(await embed(provider, SENTENCES[:3]))
    encoded = await embed(provider, SENTENCES[:3], encoding_format="base64")
    for f, e in zip(floats, encoded.data, strict=True):
        assert isinstance(e.embedding, str)
        decoded = np.frombuffer(base64.b64decode(e.embedding), dtype="<f4")
        np.testing.assert_array_equal(decoded, f)


async def test_dimensions_truncate_then_renormalise(provider: OnnxEmbeddingsProvider) -> None:
    full = vectors(await embed(provider, SENTENCES[:2]))
    short = vectors(await embed(provider, SENTENCES[:2], dimensions=64))
    assert short.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-6)
    native = vectors(await embed(provider, SENTENCES[:2], dimensions=384))
    np.testing.assert_array_equal(native, full)


async def test_token_arrays_equal_text(provider: OnnxEmbeddingsProvider) -> None:
    tok = raw_tokenizer()
    texts = ["The cat sits on the mat.", "東京は日本の首都です。"]
    bare = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    with_specials = [tok.encode(t).ids for t in texts]
    from_text = await embed(provider, texts)
    from_bare = await embed(provider, bare)
    from_specials = await embed(provider, with_specials)
    from_one = await embed(provider, bare[0])  # a single list[int]
    np.testing.assert_allclose(vectors(from_bare), vectors(from_text), atol=1e-6)
    np.testing.assert_allclose(vectors(from_specials), vectors(from_text), atol=1e-6)
    np.testing.assert_allclose(vectors(from_one)[0], vectors(from_text)[0], atol=1e-6)
    assert from_bare.usage == from_text.usage


async def test_concurrent_requests(provider: OnnxEmbeddingsProvider) -> None:
    alone = [vectors(await embed(provider, s))[0] for s in SENTENCES[:4]]
    together = await asyncio.gather(*(embed(provider, s) for s in SENTENCES[:4]))
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_allclose(vectors(t)[0], a, atol=1e-6)


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["fine", ""]}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [[101, 102], []]}, "input"),
        ({"input": [-1, 5]}, "input"),
        ({"input": [[7592, 30522]]}, "input"),  # vocab is 30522 ids: 0..30521
        ({"input": ["x"] * 2049}, "input"),
        ({"input": "hi", "dimensions": 385}, "dimensions"),
        ({"input": "hi", "model": "text-embedding-3-small"}, "model"),
    ],
)
async def test_bad_input_is_a_400(
    provider: OnnxEmbeddingsProvider, kwargs: dict[str, Any], param: str
) -> None:
    request = EmbeddingRequest(**{"model": MODEL, **kwargs})
    with pytest.raises(InvalidRequestError) as info:
        await provider.embeddings(request)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.message


async def test_generation_routes_refuse_politely(provider: OnnxEmbeddingsProvider) -> None:
    chat = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    )
    with pytest.raises(InvalidRequestError, match="embedding model"):
        await provider.chat_completion(chat)
    with pytest.raises(InvalidRequestError, match="embedding model"):
        await provider.completion(CompletionRequest(model=MODEL, prompt="hi"))


# --- registration, models, deployment layout -------------------------------------------


async def test_list_models(provider: OnnxEmbeddingsProvider) -> None:
    (model,) = await provider.list_models()
    assert model.provider_resource_id == MODEL
    assert model.model_type == "embedding"
    assert model.metadata == {"embedding_dimension": 384, "context_length": 256}


def test_registered_spec() -> None:
    spec = load_spec("inline::onnx-embeddings")
    assert spec.config_class is OnnxEmbeddingsConfig
    assert spec.api == "inference"


def test_import_is_cheap() -> None:
    code = (
        "import sys, providers.inference.onnx_embeddings as m; "
        "heavy = {'torch', 'onnxruntime', 'numpy', 'tokenizers', 'onnx'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_lambda_layout_needs_no_safetensors(graph: Path, tmp_path: Path) -> None:
    """The layer ships the graph and the small JSON files only: no torch, no weights."""
    src = bundled_model_dir()
    layer = tmp_path / "model"
    for name in ("config.json", "tokenizer.json", "sentence_bert_config.json"):
        (layer / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / name, layer / name)
    (layer / "1_Pooling").mkdir()
    shutil.copy(src / "1_Pooling/config.json", layer / "1_Pooling/config.json")
    ctx = ProviderContext(provider_id="minilm", cache_dir=tmp_path / "cache")
    config = OnnxEmbeddingsConfig(model_path=layer, onnx_path=graph, preload=True)
    p = await create(config, ctx)
    assert len(vectors(await embed(p, "hello"))[0]) == 384
    await p.shutdown()
    # Without a graph, a folder without weights is a start-up error that says what to do.
    with pytest.raises(ConfigError, match="onnx_export"):
        await create(OnnxEmbeddingsConfig(model_path=layer), ctx)


async def test_corrupt_graph_fails_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx graph")
    ctx = ProviderContext(provider_id="minilm", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"broken\.onnx"):  # at start, with preload
        await create(OnnxEmbeddingsConfig(onnx_path=bad, preload=True), ctx)
    lazy = await create(OnnxEmbeddingsConfig(onnx_path=bad), ctx)
    with pytest.raises(InternalError, match=r"broken\.onnx") as info:  # on first use
        await embed(lazy, "hello")
    assert info.value.status == 500


def test_export_leaves_only_the_graph(graph: Path) -> None:
    names = sorted(p.name for p in graph.parent.iterdir() if "int8" not in p.name)
    assert names == [graph.name, graph.name + ".lock"]
    assert graph.stat().st_mode & 0o777 == 0o644  # readable by the serving user
    assert graph.stat().st_size < 50_000_000  # float16 storage: half of the 90 MB


async def test_int8_graph_is_close_and_opt_in(
    provider: OnnxEmbeddingsProvider, cache_dir: Path
) -> None:
    ctx = ProviderContext(provider_id="minilm-int8", cache_dir=cache_dir)
    quantized = await create(OnnxEmbeddingsConfig(int8=True), ctx)
    assert quantized.graph_path != provider.graph_path
    exact = vectors(await embed(provider, SENTENCES))
    approx = vectors(await embed(quantized, SENTENCES))
    for text, e, a in zip(SENTENCES, exact, approx, strict=True):
        assert cosine(e, a) > 0.97, text
    cat, kitten, stocks = (
        approx[0],
        vectors(await embed(quantized, "A kitten on a rug."))[0],
        approx[3],
    )
    assert cosine(cat, kitten) > cosine(cat, stocks)
    await quantized.shutdown()


async def test_prebuilt_layer_folder_is_used_without_weights(
    provider: OnnxEmbeddingsProvider, graph: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lambda's layer ships /opt/fnstack-models/<id>/ with the graph and no safetensors."""
    from providers.inference.onnx_embeddings import GRAPH_FILE_NAME, bundled_model_dir
    from providers.inference.onnx_embeddings import create as create_provider

    folder = tmp_path / "models" / MODEL
    (folder / "1_Pooling").mkdir(parents=True)
    source = bundled_model_dir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json",
                 "sentence_bert_config.json", "1_Pooling/config.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)
    shutil.copy2(graph, folder / GRAPH_FILE_NAME)
    assert not (folder / "model.safetensors").exists()
    monkeypatch.setenv("FNSTACK_MODELS_DIR", str(tmp_path / "models"))
    ctx = ProviderContext(provider_id="layer", cache_dir=tmp_path / "empty-cache")
    layered = await create_provider(OnnxEmbeddingsConfig(), ctx)
    try:
        assert layered.graph_path == folder / GRAPH_FILE_NAME
        got = vectors(await embed(layered, SENTENCES[:3]))
        want = vectors(await embed(provider, SENTENCES[:3]))
        assert all(cosine(a, b) > 0.9999 for a, b in zip(got, want, strict=True))
        assert not (tmp_path / "empty-cache").exists()  # nothing exported at run time
    finally:
        await layered.shutdown()


async def test_warmup_loads_the_graph_before_any_request(graph: Path, cache_dir: Path) -> None:
    from providers.inference.onnx_embeddings import create as create_provider

    fresh = await create_provider(
        OnnxEmbeddingsConfig(), ProviderContext(provider_id="warm", cache_dir=cache_dir)
    )
    try:
        assert fresh._runtime is None
        await fresh.warmup()
        assert fresh._runtime is not None
    finally:
        await fresh.shutdown()
