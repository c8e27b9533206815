"""The Llama transformer, in plain torch, after Meta's llama-models.

Shape legend: B batch rows (sequences decoded together), T new tokens per row,
S cache length (max_seq_len), L attended length (<= S), D model dim, H query heads,
KV key/value heads, Hd head dim, V vocabulary, F feed-forward dim.

Two departures from llama-models, both for batched serving:

* The KV cache has one *slot* per concurrent sequence, and every row of a batch
  carries its own slot and its own start position, so sequences at different
  lengths decode in one forward pass (continuous batching). A boolean mask hides
  each row's cache entries beyond its own position.
* q/k/v and w1/w3 are fused into single matmuls after loading (``fuse()``); the
  original ``wq``/``wk``/``wv``/``w1``/``w3`` weights become views of the fused ones.

Rotary embeddings use llama-models' complex, adjacent-pair layout. That matches
GGUF files: llama.cpp's converter undoes the Hugging Face q/k permutation (HF rotates
the two halves of a head; Meta and GGUF rotate adjacent pairs), so GGUF q/k weights
need no permutation here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32: bf16 sums of squares lose too much precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def precompute_freqs_cis(head_dim: int, end: int, theta: float) -> torch.Tensor:
    """Rotations e^(i * pos * theta^(-2j/Hd)) for every position: [S, Hd/2] complex64."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    t = torch.arange(end, dtype=torch.float32)
    freqs = torch.outer(t, freqs)
    return torch.polar(torch.ones_like(freqs), freqs)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x [B, T, heads, Hd] by freqs_cis [B, T, Hd/2]."""
    x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    out = torch.view_as_real(x_ * freqs_cis.unsqueeze(2)).flatten(3)
    return out.type_as(x)


@dataclass
class BatchPlan:
    """Per-forward indexing, computed once and shared by every layer.

    ``slots`` selects each row's cache slot: a slice when rows are consecutive slots
    (reading the cache is then a view, not a copy), else an index tensor [B].
    ``write_slots``/``positions`` [B, T] say where each new k/v lands.
    ``mask`` [B, 1, T, L] (True = may attend) or None when plain causal suffices.
    """

    slots: slice | torch.Tensor
    write_slots: torch.Tensor
    positions: torch.Tensor
    freqs_cis: torch.Tensor
    attended: int
    mask: torch.Tensor | None
    is_causal: bool


class KVCache(nn.Module):
    """Preallocated keys and values for ``n_slots`` sequences: [slots, KV, S, Hd]."""

    def __init__(
        self,
        n_slots: int,
        n_kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        super().__init__()
        shape = (n_slots, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.k: torch.Tensor
        self.v: torch.Tensor

    def update(
        self, xk: torch.Tensor, xv: torch.Tensor, plan: BatchPlan
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store xk/xv [B, T, KV, Hd]; return keys/values [B, KV, L, Hd] to attend to."""
        # Advanced indices [B, T] around a slice put their dims first: the indexed
        # view is [B, T, KV, Hd], matching xk.
        self.k[plan.write_slots, :, plan.positions] = xk
        self.v[plan.write_slots, :, plan.positions] = xv
        keys = self.k[plan.slots, :, : plan.attended]
        values = self.v[plan.slots, :, : plan.attended]
        return keys, values


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.wqkv: torch.Tensor | None = None
        self.cache: KVCache | None = None

    def fuse(self) -> None:
        """One [(H + 2 KV) * Hd, D] matmul instead of three; wq/wk/wv become views."""
        fused = torch.cat([self.wq.weight, self.wk.weight, self.wv.weight]).detach()
        sizes = [self.wq.out_features, self.wk.out_features, self.wv.out_features]
        for linear, part in zip((self.wq, self.wk, self.wv), fused.split(sizes), strict=True):
            linear.weight = nn.Parameter(part, requires_grad=False)
        self.wqkv = fused

    def forward(self, x: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
        bsz, seqlen, _ = x.shape  # [B, T, D]
        if self.wqkv is None:
            self.fuse()
        assert self.wqkv is not None and self.cache is not None
        xqkv = F.linear(x, self.wqkv)  # [B, T, (H + 2 KV) * Hd]
        n_qk = (self.n_heads + self.n_kv_heads) * self.head_dim
        # q and k are adjacent in the fused output: rotate them in one call.
        xqk = xqkv[..., :n_qk].reshape(bsz, seqlen, self.n_heads + self.n_kv_heads, self.head_dim)
        xqk = apply_rotary_emb(xqk, plan.freqs_cis)
        xq, xk = xqk.split([self.n_heads, self.n_kv_heads], dim=2)  # [B, T, H|KV, Hd]
        xv = xqkv[..., n_qk:].view(bsz, seqlen, self.n_kv_heads, self.head_dim)

        keys, values = self.cache.update(xk, xv, plan)  # [B, KV, L, Hd]
        # enable_gqa lets each group of H/KV query heads share one kv head without
        # materialising repeated keys (llama-models' repeat_kv).
        out = F.scaled_dot_product_attention(
            xq.transpose(1, 2),  # [B, H, T, Hd]
            keys,
            values,
            attn_mask=plan.mask,
            is_causal=plan.is_causal,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )  # [B, H, T, Hd]
        out = out.transpose(1, 2).reshape(bsz, seqlen, -1)  # [B, T, H * Hd]
        return self.wo(out)  # [B, T, D]


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w13: torch.Tensor | None = None

    def fuse(self) -> None:
        fused = torch.cat([self.w1.weight, self.w3.weight]).detach()  # [2F, D]
        w1, w3 = fused.split([self.w1.out_features, self.w3.out_features])
        self.w1.weight = nn.Parameter(w1, requires_grad=False)
        self.w3.weight = nn.Parameter(w3, requires_grad=False)
        self.w13 = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is None:
            self.fuse()
        assert self.w13 is not None
        gate, up = F.linear(x, self.w13).chunk(2, dim=-1)  # 2 x [B, T, F]
        return self.w2(F.silu(gate) * up)  # [B, T, D]


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), plan)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # Complex buffers do not survive .to(bfloat16); kept on the side, moved by hand.
        self.freqs_cis = precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta)
        self.n_slots = 0

    def fuse(self) -> None:
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock)
            layer.attention.fuse()
            layer.feed_forward.fuse()

    def setup_cache(self, n_slots: int) -> None:
        """Allocate the KV cache for ``n_slots`` concurrent sequences."""
        weight = self.tok_embeddings.weight
        self.freqs_cis = self.freqs_cis.to(weight.device)
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock)
            layer.attention.cache = KVCache(
                n_slots,
                self.args.n_kv_heads,
                self.args.max_seq_len,
                self.args.head_dim,
                weight.dtype,
                weight.device,
            )
        self.n_slots = n_slots

    def plan(self, slots: list[int], start_pos: list[int], seqlen: int) -> BatchPlan:
        device = self.freqs_cis.device
        bsz = len(slots)
        if bsz == 0 or len(start_pos) != bsz:
            raise ValueError("need one start position per slot")
        if max(start_pos) + seqlen > self.args.max_seq_len:
            raise ValueError("sequence exceeds the KV cache length")
        start = torch.tensor(start_pos, device=device)
        positions = start[:, None] + torch.arange(seqlen, device=device)  # [B, T]
        slot_t = torch.tensor(slots, device=device)
        consecutive = slots == list(range(slots[0], slots[0] + bsz))
        attended = max(start_pos) + seqlen
        mask: torch.Tensor | None = None
        is_causal = False
        if bsz == 1 and start_pos[0] == 0 and seqlen > 1:
            is_causal = True  # fresh prompt: keys == queries, plain causal attention
        elif bsz > 1 or seqlen > 1:
            # Row b, query t may see key j when j <= start_b + t.
            keys = torch.arange(attended, device=device)
            mask = (keys[None, None, :] <= positions[:, :, None]).unsqueeze(1)  # [B,1,T,L]
        return BatchPlan(
            slots=slice(slots[0], slots[0] + bsz) if consecutive else slot_t,
            write_slots=slot_t[:, None].expand(bsz, seqlen),
            positions=positions,
            freqs_cis=self.freqs_cis[positions],  # [B, T, Hd/2]
            attended=attended,
            mask=mask,
            is_causal=is_causal,
        )

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, slots: list[int], start_pos: list[int]) -> torch.Tensor:
        """Run tokens [B, T] (row b continues slot ``slots[b]`` at ``start_pos[b]``).

        Returns float32 logits of each row's last position: [B, V]. Only the last
        position is projected onto the vocabulary: that is all generation samples from,
        and the [T, V] projection of a long prompt would cost more than a layer.
        """
        if self.n_slots == 0:
            raise RuntimeError("call setup_cache() before forward()")
        plan = self.plan(slots, start_pos, tokens.shape[1])
        h = self.tok_embeddings(tokens)  # [B, T, D]
        for layer in self.layers:
            h = layer(h, plan)
        h = self.norm(h[:, -1])  # [B, D]
        return self.output(h).float()  # [B, V]

    @classmethod
    def from_weights(
        cls,
        args: ModelArgs,
        weights: dict[str, torch.Tensor],
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> Transformer:
        with torch.device("meta"):
            model = cls(args)
        # assign=True adopts the (possibly memory-mapped) tensors instead of copying.
        missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
        if args.tie_embeddings:
            model.output.weight = model.tok_embeddings.weight
            missing = [m for m in missing if m != "output.weight"]
        if missing or unexpected:
            raise ValueError(
                f"weights do not fit the model: missing {missing}, unexpected {unexpected}"
            )
        model.freqs_cis = precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta)
        model = model.to(device=device, dtype=dtype)
        model.requires_grad_(False)
        model.eval()
        model.fuse()
        return model
