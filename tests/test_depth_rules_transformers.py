"""Depth rules on tiny Hugging Face transformers: judged across the trunk's blocks, not embedding vs head.

Random-init models from configs (no downloads), analysed through the same export path as
gradhealth.package(). The pathology is confirmed by behaviour (a short AdamW run) and the
numbers the rule reports by plain eager autograd with hooks on the blocks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import analyze_module
from gradhealth.report import Report
from torch import Tensor, nn

from . import tiny_transformers as tiny

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEPTH_RULES = ("vanishing_gradient", "exploding_gradient")
BATCH, SEQ = 4, 32


class CausalLM(nn.Module):
    """Token ids -> logits, so the export sees plain tensors."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: Tensor) -> Tensor:
        logits: Tensor = self.lm(input_ids=ids).logits
        return logits


def next_token_loss(logits: Tensor, ids: Tensor) -> Tensor:
    """Per-sample mean cross-entropy of predicting token t+1 from tokens <= t."""
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return per_token.view(ids.shape[0], -1).mean(dim=1)


def _llama(vocab: int) -> CausalLM:
    model = tiny.llama(
        vocab=vocab, hidden=32, layers=3, heads=4, kv_heads=4, positions=2048, bos_token_id=0, eos_token_id=0,
        pad_token_id=0,
    )  # fmt: skip
    return CausalLM(model)


def _gpt2(scaled_block: int | None, scale: float = 100.0) -> CausalLM:
    """GPT-2, dropout off; optionally one block's weights multiplied by `scale` (a bad checkpoint merge)."""
    model = tiny.gpt2(vocab=512, hidden=32, layers=4, heads=4, positions=64, bos_token_id=0, eos_token_id=0)
    if scaled_block is not None:
        with torch.no_grad():
            for p in model.transformer.h[scaled_block].parameters():
                p.mul_(scale)
    return CausalLM(model)


def _ids(vocab: int, seed: int = 1) -> Tensor:
    return torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def _analyse(model: CausalLM, ids: Tensor) -> Report:
    return analyze_module(model, next_token_loss, (ids,), ids)


@pytest.mark.parametrize("vocab", [1000, 32000])
def test_healthy_llama_gets_no_depth_finding(vocab: int) -> None:
    ids = _ids(vocab)
    report = _analyse(_llama(vocab), ids)
    assert not [f for f in report.findings if f.rule in DEPTH_RULES], [f.message for f in report.findings]
    if vocab == 32000:
        # the trap the trunk avoids: embedding vs vocabulary head differs by > 100x on this healthy model
        grads = {layer.name: layer.output_grad_rms for layer in report.layers}
        assert grads["lm.model.embed_tokens"] / grads["lm.lm_head"] > 100


def _block_output_grad_rms(model: CausalLM, ids: Tensor) -> list[float]:
    """Independent reference: eager forward with hooks on every block, RMS of dL/d(block output)."""
    outputs: list[Tensor] = []

    def keep(_module: nn.Module, _args: object, out: object) -> None:
        hidden = out[0] if isinstance(out, tuple) else out
        assert isinstance(hidden, Tensor)
        hidden.retain_grad()
        outputs.append(hidden)

    handles = [block.register_forward_hook(keep) for block in model.lm.transformer.h]
    try:
        next_token_loss(model(ids), ids).mean().backward()
    finally:
        for handle in handles:
            handle.remove()
    model.zero_grad(set_to_none=True)
    return [float(h.grad.pow(2).mean().sqrt()) for h in outputs if h.grad is not None]


def test_gpt2_with_one_scaled_block_names_that_block() -> None:
    ids = _ids(512)
    report = _analyse(_gpt2(scaled_block=1), ids)
    findings = report.findings_for("exploding_gradient")
    assert len(findings) == 1, [f.message for f in report.findings]
    finding = findings[0]
    assert finding.severity == "error"
    assert finding.evidence["block"] == "lm.transformer.h.1"
    assert finding.layers[0] == "lm.transformer.h.1"
    assert finding.evidence["trunk"] == "lm.transformer.h"
    assert "lm.transformer.h.1" in finding.message
    assert "lm.lm_head" not in finding.layers and "lm.transformer.wte" not in finding.layers
    reference = _block_output_grad_rms(_gpt2(scaled_block=1), ids)
    profile = finding.evidence["profile"]
    assert isinstance(profile, list)
    torch.testing.assert_close(torch.tensor(profile), torch.tensor(reference), rtol=1e-3, atol=0.0)
    assert finding.evidence["block_gain"] == pytest.approx(reference[0] / reference[1], rel=1e-3)


def test_healthy_gpt2_gets_no_depth_finding() -> None:
    ids = _ids(512)
    report = _analyse(_gpt2(scaled_block=None), ids)
    assert not [f for f in report.findings if f.rule in DEPTH_RULES], [f.message for f in report.findings]


def _bigram_batches(vocab: int, steps: int) -> list[Tensor]:
    """Fresh batches from a deterministic bigram chain (next token = perm[token]): learnable, not memorised."""
    gen = torch.Generator().manual_seed(3)
    perm = torch.randperm(vocab, generator=gen)
    batches = []
    for _ in range(steps):
        tokens = [torch.randint(0, vocab, (8,), generator=gen)]
        for _ in range(SEQ - 1):
            tokens.append(perm[tokens[-1]])
        batches.append(torch.stack(tokens, dim=1))
    return batches


def _loss_drop(model: CausalLM, batches: list[Tensor]) -> float:
    """How far the loss falls in a short AdamW run."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for ids in batches:
        opt.zero_grad()
        loss = next_token_loss(model(ids), ids).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0] - losses[-1]


def test_scaled_block_really_slows_training() -> None:
    """The label is behaviour: the damaged model learns clearly less than its healthy twin in 30 steps.

    The scaled block swamps the residual stream, so the identity path the embeddings and the other
    blocks use is drowned (10^5 less gradient behind it).
    """
    batches = _bigram_batches(512, 30)
    healthy = _loss_drop(_gpt2(scaled_block=None), batches)
    damaged = _loss_drop(_gpt2(scaled_block=1), batches)
    assert healthy > 0.5
    assert damaged < 0.5 * healthy, (healthy, damaged)
