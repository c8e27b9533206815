"""The Llama transformer, in plain torch, after Meta's llama-models.

Shape legend: B batch rows (sequences decoded together), T new tokens per row,
S cache length (max_seq_len), L attended length (<= S), D model dim, H query heads,
KV key/value heads, Hd head dim, V vocabulary, F feed-forward dim.

Two departures from llama-models, both for batched serving:

* The KV cache has one *slot* per concurrent sequence, and every row of a batch
  carries its own slot and its own start position, so sequences at different
  lengths decode in one forward pass (continuous batching). A boolean mask hides
  each row's cache entries beyond its own position.
* Weights load under llama-models names, then ``fuse()`` concatenates q/k/v into
  ``wqkv`` and w1/w3 into ``w13`` (one matmul instead of three or two).
* On CPU, ``quantize_int4()`` repacks weights that are exactly 4-bit groups (what a
  Q4_0/Q4_1 GGUF dequantizes to) for torch's int4 CPU kernel: decode reads a quarter
  of the bytes of bf16, and single-stream decode on CPU is memory-bandwidth bound.

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
        # x * rsqrt(mean(x^2) + eps) * weight, as one fused op (it accumulates in
        # float32 for bf16 inputs); seven small ops per norm showed in decode profiles.
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


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


class Int4Linear(nn.Module):
    """y = x W^T with W [N, K] stored as 4-bit groups: W = (q - 8) * scale + zero.

    Uses ``torch._weight_int4pack_mm_for_cpu`` (the kernel gpt-fast/torchao use on
    CPU). Activations and scales are bfloat16.
    """

    def __init__(self, packed: torch.Tensor, scales_zeros: torch.Tensor, group_size: int) -> None:
        super().__init__()
        self.register_buffer("packed", packed)  # [N, K / 2] uint8
        self.register_buffer("scales_zeros", scales_zeros)  # [K / group, N, 2]
        self.packed: torch.Tensor
        self.scales_zeros: torch.Tensor
        self.group_size = group_size
        self.out_features = scales_zeros.shape[1]

    @classmethod
    def from_dense(
        cls, weight: torch.Tensor, group_size: int = 32, tolerance: float = 1e-3
    ) -> Int4Linear | None:
        """Repack weight [N, K] if it is exactly 16 levels per group, else None.

        llama.cpp's Q4_1 quantizer uses each group's min and max as levels 0 and 15,
        so min/max recover the GGUF's own scale and offset and the repacking loses
        nothing beyond rounding them to bf16. Anything else (F16, Q8_0 weights) fails
        the round-trip check and stays dense: we never quantize further.
        """
        n, k = weight.shape
        if k % group_size or n % 16:  # the kernel's packing constraints
            return None
        w = weight.float().reshape(n, k // group_size, group_size)
        lo = w.amin(dim=-1, keepdim=True)
        scale = (w.amax(dim=-1, keepdim=True) - lo) / 15
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.round((w - lo) / safe).clamp_(0, 15)
        error = (q * scale + lo - w).abs().amax(dim=-1, keepdim=True)
        if bool((error > tolerance * safe).any()):
            return None
        zero = lo + 8 * scale  # the kernel computes (q - 8) * scale + zero
        scales_zeros = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1)  # [N, G, 2]
        packed = torch._convert_weight_to_int4pack_for_cpu(q.reshape(n, k).to(torch.int32), 1)
        sz = scales_zeros.transpose(0, 1).contiguous().to(torch.bfloat16)
        return cls(packed, sz, group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # [..., K]
        y = torch._weight_int4pack_mm_for_cpu(
            x.reshape(-1, shape[-1]).to(torch.bfloat16),
            self.packed,
            self.group_size,
            self.scales_zeros,
        )  # [*, N]
        return y.view(*shape[:-1], self.out_features)


@dataclass
class BatchPlan:
    """Per-forward indexing, computed once and shared by every layer.

    ``slots`` selects each row's cache slot: a slice when rows are consecutive slots
    (reading the cache is then a view, not a copy), else an index tensor [B].
    ``write_slots``/``positions`` [B, T] say where each new k/v lands.
    ``mask`` [B, 1, T, L] (True = may attend) or None when plain causal suffices.
    ``rows`` (decode steps, T == 1): (slot, length) per row. Each row then attends
    to exactly its own keys, through the same kernel call as when decoding alone, so
    a sequence's output does not depend on what it is batched with (bit for bit: a
    padded, masked batch would sum in another order, and greedy text could differ).
    """

    slots: slice | torch.Tensor
    rows: list[tuple[int, int]] | None
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

    def write(self, xk: torch.Tensor, xv: torch.Tensor, plan: BatchPlan) -> None:
        """Store xk/xv [B, T, KV, Hd] at each row's slot and positions."""
        # Advanced indices [B, T] around a slice put their dims first: the indexed
        # view is [B, T, KV, Hd], matching xk.
        self.k[plan.write_slots, :, plan.positions] = xk
        self.v[plan.write_slots, :, plan.positions] = xv

    def read(self, plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values [B, KV, L, Hd] of the batch's slots."""
        return self.k[plan.slots, :, : plan.attended], self.v[plan.slots, :, : plan.attended]

    def read_row(self, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One slot's first ``length`` keys/values: [1, KV, length, Hd] views."""
        return (
            self.k[slot : slot + 1, :, :length],
            self.v[slot : slot + 1, :, :length],
        )


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo: nn.Module = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.wqkv: nn.Module | None = None
        self.cache: KVCache | None = None

    def fuse(self) -> None:
        """One [(H + 2 KV) * Hd, D] matmul instead of three."""
        self.wqkv = _fused_linear(self, ("wq", "wk", "wv"))

    def forward(self, x: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
        bsz, seqlen, _ = x.shape  # [B, T, D]
        if self.wqkv is None:
            raise RuntimeError("call Transformer.fuse() after loading weights")
        assert self.cache is not None
        xqkv = self.wqkv(x).type_as(x)  # [B, T, (H + 2 KV) * Hd]
        n_qk = (self.n_heads + self.n_kv_heads) * self.head_dim
        # q and k are adjacent in the fused output: rotate them in one call.
        xqk = xqkv[..., :n_qk].reshape(bsz, seqlen, self.n_heads + self.n_kv_heads, self.head_dim)
        xqk = apply_rotary_emb(xqk, plan.freqs_cis)
        xq, xk = xqk.split([self.n_heads, self.n_kv_heads], dim=2)  # [B, T, H|KV, Hd]
        xv = xqkv[..., n_qk:].view(bsz, seqlen, self.n_kv_heads, self.head_dim)

        self.cache.write(xk, xv, plan)
        xq = xq.to(self.cache.k.dtype).transpose(1, 2)  # [B, H, T, Hd]
        # enable_gqa lets each group of H/KV query heads share one kv head without
        # materialising repeated keys (llama-models' repeat_kv).
        gqa = self.n_heads != self.n_kv_heads
        if plan.rows is not None:  # decode: each row alone over its own keys
            outs = [
                F.scaled_dot_product_attention(
                    xq[b : b + 1], *self.cache.read_row(slot, length), enable_gqa=gqa
                )
                for b, (slot, length) in enumerate(plan.rows)
            ]
            out = outs[0] if bsz == 1 else torch.cat(outs)  # [B, H, 1, Hd]
        else:
            keys, values = self.cache.read(plan)  # [B, KV, L, Hd]
            out = F.scaled_dot_product_attention(
                xq,
                keys,
                values,
                attn_mask=plan.mask,
                is_causal=plan.is_causal,
                enable_gqa=gqa,
            )  # [B, H, T, Hd]
        out = out.transpose(1, 2).reshape(bsz, seqlen, -1)  # [B, T, H * Hd]
        return self.wo(out).type_as(x)  # [B, T, D]


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2: nn.Module = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w13: nn.Module | None = None

    def fuse(self) -> None:
        self.w13 = _fused_linear(self, ("w1", "w3"))  # [2F, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is None:
            raise RuntimeError("call Transformer.fuse() after loading weights")
        gate, up = self.w13(x).chunk(2, dim=-1)  # 2 x [B, T, F]
        return self.w2(F.silu(gate) * up).type_as(x)  # [B, T, D]


def _fused_linear(module: nn.Module, names: tuple[str, ...]) -> nn.Linear:
    """Concatenate the named nn.Linear children into one, and remove them."""
    parts = [getattr(module, n) for n in names]
    weight = torch.cat([p.weight for p in parts]).detach()
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    for n in names:
        delattr(module, n)  # the fused copy replaces them; do not keep both in memory
    return fused


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

    def quantize_int4(self) -> int:
        """Repack exactly-4-bit projection weights for the CPU int4 kernel (after fuse).

        Returns how many matrices were repacked. The kernel takes and returns bfloat16;
        ``Int4Linear`` casts, so the model around it stays float32.
        """
        count = 0
        for layer in self.layers:
            for owner, path in _projections(layer):
                name = path.rsplit(".", 1)[1]
                linear = getattr(owner, name)
                if isinstance(linear, nn.Linear):
                    packed = Int4Linear.from_dense(linear.weight)
                    if packed is not None:
                        setattr(owner, name, packed)
                        count += 1
        return count

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
        rows = None
        if seqlen == 1:
            rows = [(slot, pos + 1) for slot, pos in zip(slots, start_pos, strict=True)]
        elif bsz == 1 and start_pos[0] == 0:
            is_causal = True  # fresh prompt: keys == queries, plain causal attention
        else:
            # Row b, query t may see key j when j <= start_b + t.
            keys = torch.arange(attended, device=device)
            mask = (keys[None, None, :] <= positions[:, :, None]).unsqueeze(1)  # [B,1,T,L]
        return BatchPlan(
            slots=slice(slots[0], slots[0] + bsz) if consecutive else slot_t,
            rows=rows,
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
        # W @ h^T rather than h @ W^T: same numbers, but BLAS picks a ~2x faster kernel
        # for a tall [V, D] x [D, B] product than for [B, D] x [D, V] on CPU.
        return torch.mm(self.output.weight, h.t()).t().float()  # [B, V]

    @classmethod
    def from_weights(
        cls,
        args: ModelArgs,
        weights: dict[str, torch.Tensor],
        dtype: torch.dtype,
        device: torch.device | str,
        quantize: bool = False,
    ) -> Transformer:
        """Build the model from llama-models-named float weights.

        ``quantize``: repack exactly-4-bit weights for the CPU int4 kernel (see
        ``quantize_int4``). Everything else stays float32: the residual stream, norms,
        KV cache, and the vocabulary projection (bf16 logits would round to 1/8 and
        turn close greedy choices into coin flips).
        """
        if quantize and (dtype != torch.float32 or torch.device(device).type != "cpu"):
            raise ValueError("int4 weights are for the CPU, with float32 activations")
        # Built on the CPU, not on "meta": the meta device's first use imports
        # torch._dynamo (2-3 s of a cold start), more than the random init costs.
        model = cls(args)
        # A state_dict saved after fuse()/quantize_int4() (the engine's int4 cache)
        # carries the fused, packed layout: rebuild that layout before loading into it.
        prefused = any(".wqkv." in k for k in weights)
        if prefused:
            model.fuse()
            for i, layer in enumerate(model.layers):
                for owner, path in _projections(layer):
                    key = f"layers.{i}.{path}"
                    if f"{key}.packed" in weights:
                        packed = weights[f"{key}.packed"]
                        scales_zeros = weights[f"{key}.scales_zeros"]
                        group = packed.shape[1] * 2 // scales_zeros.shape[0]
                        setattr(
                            owner, path.rsplit(".", 1)[1], Int4Linear(packed, scales_zeros, group)
                        )
        # assign=True adopts the loaded tensors instead of copying into random ones.
        missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
        if args.tie_embeddings:
            model.output.weight = model.tok_embeddings.weight
            missing = [m for m in missing if m != "output.weight"]
        if missing or unexpected:
            raise ValueError(
                f"weights do not fit the model: missing {missing}, unexpected {unexpected}"
            )
        model.freqs_cis = precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta)
        model.requires_grad_(False)
        model.eval()
        if not prefused:
            model.fuse()
        if quantize or any(isinstance(m, Int4Linear) for m in model.modules()):
            # Already float32 on the CPU; .to() would also cast the int4 scales.
            model.quantize_int4()
            return model
        return model.to(device=device, dtype=dtype)

    def cacheable_state(self) -> dict[str, torch.Tensor]:
        """state_dict for a cache file: a tied output weight is stored once."""
        state = self.state_dict()
        if self.args.tie_embeddings:
            state.pop("output.weight", None)
        return {k: v.contiguous() for k, v in state.items()}


def _projections(layer: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (owner module, dotted path in the layer) of each matrix int4 may replace."""
    assert isinstance(layer, TransformerBlock)
    return [
        (layer.attention, "attention.wqkv"),
        (layer.attention, "attention.wo"),
        (layer.feed_forward, "feed_forward.w13"),
        (layer.feed_forward, "feed_forward.w2"),
    ]
