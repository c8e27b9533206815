"""Model hyper-parameters, read from a GGUF file's ``llama.*`` metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    # Rotary dimension; equals head_dim for every Llama we load, kept for checking.
    rope_dim: int | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}"
            )
        if self.rope_dim is not None and self.rope_dim != self.head_dim:
            raise ValueError(
                f"partial rotary embeddings (rope_dim {self.rope_dim} != head_dim "
                f"{self.head_dim}) are not supported"
            )

    @classmethod
    def from_gguf_metadata(
        cls,
        meta: Mapping[str, Any],
        *,
        tie_embeddings: bool,
        vocab_size: int | None = None,
        max_seq_len: int | None = None,
    ) -> ModelArgs:
        """Build from GGUF key/values (``llama.block_count`` ...).

        ``vocab_size`` falls back to the tokenizer's token count because many GGUF
        files omit ``llama.vocab_size``; ``max_seq_len`` caps ``llama.context_length``
        (a KV cache for 128k positions would not fit a small host).
        """
        arch = str(meta.get("general.architecture", "llama"))
        if arch != "llama":
            raise ValueError(f"unsupported GGUF architecture {arch!r}; only 'llama' is")

        def key(name: str, default: Any = None) -> Any:
            value = meta.get(f"llama.{name}", default)
            if value is None:
                raise ValueError(f"GGUF metadata lacks llama.{name}")
            return value

        n_heads = int(key("attention.head_count"))
        vocab = meta.get("llama.vocab_size", vocab_size)
        if vocab is None:
            raise ValueError("GGUF metadata lacks llama.vocab_size and tokenizer tokens")
        context = int(key("context_length", 2048))
        rope_dim = meta.get("llama.rope.dimension_count")
        return cls(
            dim=int(key("embedding_length")),
            n_layers=int(key("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(key("attention.head_count_kv", n_heads)),
            vocab_size=int(vocab),
            ffn_dim=int(key("feed_forward_length")),
            norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(key("rope.freq_base", 10000.0)),
            max_seq_len=min(context, max_seq_len) if max_seq_len else context,
            tie_embeddings=tie_embeddings,
            rope_dim=int(rope_dim) if rope_dim is not None else None,
        )
