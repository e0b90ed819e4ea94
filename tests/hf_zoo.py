"""A zoo of real architectures at toy size: Hugging Face models from configs, an LSTM LM and a ResNet.

Nothing is downloaded: every model is built from a config with random weights under a fixed seed,
and every batch is synthetic. Sizes are tiny (hidden 32, 2-4 blocks, batch 8, sequence 16) so the
whole zoo trains and analyses in seconds on one CPU thread.

Conventions (as in ``tests/zoo.py``):

* ``build()`` returns ``(model, loss, inputs, targets)`` with the model in train mode; ``model(*inputs)``
  gives the outputs and ``loss`` is a loss name or a callable ``(outputs, targets) -> per-sample loss [B]``,
  which is exactly what ``gradhealth.package()`` and ``analyze_module`` consume.
* Hugging Face models are subclassed so that ``forward`` takes tensors and returns logits only, and
  their module paths stay the ones users see in Hugging Face code (``transformer.h.1``, ``model.layers.1``).
* ``expect`` maps a rule id to the module-path prefixes its findings must name (empty: healthy).
* ``twin`` names the healthy case a broken case is built from; the behaviour check compares against it.
* Every dropout probability is 0: the analysis and its curvature check repeat forward passes that must agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import tiny_transformers

__all__ = ["HEALTHY", "BROKEN", "ALL", "HFCase", "by_name"]

Loss = str | Callable[[Tensor, Tensor], Tensor]
BuildResult = tuple[nn.Module, Loss, tuple[Tensor, ...], Tensor]

BATCH, SEQ, VOCAB, HIDDEN = 8, 16, 256, 32
ADAMW: dict[str, Any] = {"name": "adamw", "lr": 3e-4, "weight_decay": 0.01}
# nan: the loss is NaN/Inf; diverges: it climbs; slower: it falls much less than the healthy twin's;
# unused: the block's weights never move while everything else trains.
Damage = Literal["nan", "diverges", "slower", "unused"]


@dataclass(frozen=True)
class HFCase:
    """One model of the zoo: how to build it, what the engine must say, and how training shows it."""

    name: str
    arch: str
    build: Callable[[], BuildResult]
    note: str
    expect: str | None = None  # the rule that must fire (warning or above); None: a healthy model
    block: str | None = None  # the module path the finding must name before any of its siblings
    damage: Damage | None = None  # how a short training run shows the breakage
    twin: str | None = None  # the healthy case this broken one was made from
    optimizer: dict[str, Any] = field(default_factory=lambda: dict(ADAMW), hash=False)
    needs_transformers: bool = True
    checks: tuple[str, ...] = ("standard", "curvature")

    @property
    def healthy(self) -> bool:
        """A case that expects no finding is a healthy one."""
        return self.expect is None


# --------------------------------------------------------------------------------------
# Data and losses
# --------------------------------------------------------------------------------------


def bigram_tokens(n: int, length: int, vocab: int, seed: int = 1) -> Tensor:
    """Sequences that follow a fixed random permutation (next = perm[prev]): learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(vocab, generator=g)
    rows = [torch.randint(0, vocab, (n,), generator=g)]
    for _ in range(length - 1):
        rows.append(perm[rows[-1]])
    return torch.stack(rows, dim=1)


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean token cross-entropy over positions whose target is not -100."""
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=-100)
    counted = (targets != -100).sum(dim=1).clamp(min=1)
    return per_token.sum(dim=1) / counted


def _lm_batch(vocab: int = VOCAB, batch: int = BATCH) -> tuple[tuple[Tensor, ...], Tensor]:
    """Next-token prediction on bigram sequences: inputs [B, T], targets [B, T]."""
    tokens = bigram_tokens(batch, SEQ + 1, vocab)
    return (tokens[:, :-1],), tokens[:, 1:]


def _mlm_batch(mask_id: int) -> tuple[tuple[Tensor, ...], Tensor]:
    """Every fourth token masked (offset per row); targets hold the originals there and -100 elsewhere."""
    tokens = bigram_tokens(BATCH, SEQ, VOCAB - 1)  # the last id is reserved for [MASK]
    masked = (torch.arange(SEQ)[None, :] + torch.arange(BATCH)[:, None]) % 4 == 0
    inputs = tokens.masked_fill(masked, mask_id)
    targets = tokens.masked_fill(~masked, -100)
    return (inputs,), targets


def _regression_batch(scale: float, shift: float) -> tuple[tuple[Tensor, ...], Tensor]:
    """Tokens whose target is their standardised mean id, then scaled and shifted: [B, 1]."""
    tokens = bigram_tokens(BATCH, SEQ, VOCAB, seed=2)
    mean_id = tokens.float().mean(dim=1, keepdim=True)
    standard = (mean_id - mean_id.mean()) / mean_id.std()
    return (tokens,), standard * scale + shift


def _image_batch(classes: int = 10, size: int = 16) -> tuple[tuple[Tensor, ...], Tensor]:
    """Standardised random images [B, 3, size, size] with random labels (memorised by training)."""
    g = torch.Generator().manual_seed(3)
    images = torch.randn(BATCH, 3, size, size, generator=g)
    return (images,), torch.randint(0, classes, (BATCH,), generator=g)


# --------------------------------------------------------------------------------------
# Hugging Face models with a logits-only forward
# --------------------------------------------------------------------------------------


def _gpt2(n_layer: int = 4) -> nn.Module:
    from transformers import GPT2LMHeadModel

    class GPT2Logits(GPT2LMHeadModel):
        """GPT-2 LM (tied wte/lm_head) whose forward maps token ids to logits."""

        def forward(self, input_ids: Tensor) -> Tensor:
            return super().forward(input_ids=input_ids, use_cache=False).logits

    return tiny_transformers.gpt2(
        vocab=VOCAB, hidden=HIDDEN, layers=n_layer, heads=2, positions=SEQ, model_class=GPT2Logits,
        n_inner=4 * HIDDEN, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip


def _llama(vocab: int = VOCAB, layers: int = 4) -> nn.Module:
    from transformers import LlamaForCausalLM

    class LlamaLogits(LlamaForCausalLM):
        """Llama causal LM (RMSNorm, RoPE, SwiGLU, grouped KV heads) whose forward returns logits."""

        def forward(self, input_ids: Tensor) -> Tensor:
            return super().forward(input_ids=input_ids, use_cache=False).logits

    return tiny_transformers.llama(
        vocab=vocab, hidden=HIDDEN, layers=layers, heads=4, kv_heads=2, positions=SEQ, model_class=LlamaLogits,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip


def _bert_config(**extra: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=3, num_attention_heads=2, intermediate_size=2 * HIDDEN,
        max_position_embeddings=SEQ, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
        **extra,
    )  # fmt: skip


def _bert_mlm() -> nn.Module:
    from transformers import BertForMaskedLM

    class BertMLMLogits(BertForMaskedLM):
        """BERT masked LM (post-LN encoder, tied decoder) whose forward returns token logits."""

        def forward(self, input_ids: Tensor) -> Tensor:
            return super().forward(input_ids=input_ids).logits

    return BertMLMLogits(_bert_config())


def _bert_regressor() -> nn.Module:
    from transformers import BertForSequenceClassification

    class BertRegressor(BertForSequenceClassification):
        """BERT with a one-output head on the pooled [CLS] state: a regressor."""

        def forward(self, input_ids: Tensor) -> Tensor:
            return super().forward(input_ids=input_ids).logits

    return BertRegressor(_bert_config(num_labels=1, problem_type="regression"))


def _vit() -> nn.Module:
    from transformers import ViTForImageClassification

    class ViTLogits(ViTForImageClassification):
        """ViT image classifier (patch embedding, pre-LN encoder, [CLS] head) returning class logits."""

        def forward(self, pixel_values: Tensor) -> Tensor:
            return super().forward(pixel_values=pixel_values).logits

    return tiny_transformers.vit(image=16, hidden=HIDDEN, layers=3, heads=2, labels=10, model_class=ViTLogits)


def _t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    class T5Logits(T5ForConditionalGeneration):
        """T5 encoder-decoder (relative position buckets, RMS-style LayerNorm) returning decoder logits."""

        def forward(self, input_ids: Tensor, decoder_input_ids: Tensor) -> Tensor:
            out = super().forward(input_ids=input_ids, decoder_input_ids=decoder_input_ids, use_cache=False)
            return out.logits

    config = T5Config(
        vocab_size=VOCAB, d_model=HIDDEN, d_kv=16, d_ff=2 * HIDDEN, num_layers=2, num_decoder_layers=2, num_heads=2,
        relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=None,
    )  # fmt: skip
    return T5Logits(config)


# --------------------------------------------------------------------------------------
# Plain torch: an LSTM language model and a ResNet
# --------------------------------------------------------------------------------------


class LSTMLanguageModel(nn.Module):
    """Embedding -> 2-layer LSTM -> Linear over the vocabulary (Zaremba et al. 2014 at toy size)."""

    def __init__(self, vocab: int = VOCAB, dim: int = HIDDEN, hidden: int = 2 * HIDDEN, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        states, _ = self.rnn(self.embed(tokens))
        return self.head(states)


class ResidualBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 projection shortcut (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: stem, three stages of two basic blocks (widths w, 2w, 4w), pool, linear."""

    def __init__(self, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(ResidualBlock(cin, cout, stride), ResidualBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(h.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------
# Damage
# --------------------------------------------------------------------------------------


def scale_block_weights(block: nn.Module, factor: float) -> None:
    """Multiply every weight matrix in one block (not norms or biases): a mis-scaled init or bad merge."""
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("weight") and p.dim() >= 2:
                p.mul_(factor)


def poison_weight(weight: Tensor) -> None:
    """Put one NaN in a weight tensor, as a corrupted checkpoint shard would."""
    with torch.no_grad():
        weight.view(-1)[0] = math.nan


# --------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------


def _seeded(make: Callable[[], nn.Module]) -> nn.Module:
    """Build a model under seed 0, in train mode."""
    torch.manual_seed(0)
    return make().train()


def build_gpt2() -> BuildResult:
    inputs, targets = _lm_batch()
    return _seeded(_gpt2), token_cross_entropy, inputs, targets


def build_llama() -> BuildResult:
    inputs, targets = _lm_batch()
    return _seeded(_llama), token_cross_entropy, inputs, targets


def build_llama_vocab_32k() -> BuildResult:
    inputs, targets = _lm_batch(vocab=32_000, batch=BATCH // 2)  # logits [4, 16, 32000] keep it quick
    return _seeded(lambda: _llama(vocab=32_000)), token_cross_entropy, inputs, targets


def build_bert_mlm() -> BuildResult:
    inputs, targets = _mlm_batch(mask_id=VOCAB - 1)
    return _seeded(_bert_mlm), token_cross_entropy, inputs, targets


def build_bert_regression() -> BuildResult:
    inputs, targets = _regression_batch(scale=1.0, shift=0.0)
    return _seeded(_bert_regressor), "mse", inputs, targets


def build_vit() -> BuildResult:
    inputs, targets = _image_batch()
    return _seeded(_vit), "cross_entropy", inputs, targets


def build_t5() -> BuildResult:
    tokens = bigram_tokens(BATCH, SEQ, VOCAB - 1, seed=4) + 1  # id 0 is the decoder start token
    labels = torch.flip(tokens, dims=[1])  # reverse the sequence
    decoder_inputs = torch.cat([torch.zeros(BATCH, 1, dtype=torch.long), labels[:, :-1]], dim=1)
    return _seeded(_t5), token_cross_entropy, (tokens, decoder_inputs), labels


def build_lstm_lm() -> BuildResult:
    inputs, targets = _lm_batch()
    return _seeded(LSTMLanguageModel), token_cross_entropy, inputs, targets


def build_resnet() -> BuildResult:
    inputs, targets = _image_batch()
    return _seeded(ResNet), "cross_entropy", inputs, targets


def build_gpt2_block1_x100() -> BuildResult:
    model, loss, inputs, targets = build_gpt2()
    scale_block_weights(model.transformer.h[1], 100.0)
    return model, loss, inputs, targets


def build_llama_block1_x100() -> BuildResult:
    model, loss, inputs, targets = build_llama()
    scale_block_weights(model.model.layers[1], 100.0)
    return model, loss, inputs, targets


def build_gpt2_nan_block2() -> BuildResult:
    model, loss, inputs, targets = build_gpt2()
    poison_weight(model.transformer.h[2].mlp.c_fc.weight)
    return model, loss, inputs, targets


def build_bert_mlm_unused_pooler() -> BuildResult:
    from transformers.models.bert.modeling_bert import BertPooler

    model, loss, inputs, targets = build_bert_mlm()
    model.bert.pooler = BertPooler(model.config)  # computed in forward, read by nothing downstream
    return model, loss, inputs, targets


def build_bert_regression_unscaled_targets() -> BuildResult:
    model, loss, _, _ = build_bert_regression()
    inputs, targets = _regression_batch(scale=2000.0, shift=5000.0)
    return model, loss, inputs, targets


# --------------------------------------------------------------------------------------
# The zoo
# --------------------------------------------------------------------------------------

HEALTHY: list[HFCase] = [
    HFCase("gpt2", "gpt2", build_gpt2, "GPT-2 LM, 4 pre-LN blocks, lm_head tied to wte (Radford et al. 2019)."),
    HFCase("llama", "llama", build_llama, "Llama causal LM, 4 layers: RMSNorm, SwiGLU, RoPE, grouped KV heads."),
    HFCase(
        "llama_vocab_32k",
        "llama",
        build_llama_vocab_32k,
        "Llama with the real 32k vocabulary: a batch touches a few hundred embedding rows, so the "
        "embedding's gradient is sparse. The engine once called this exploding_gradient (ratio 192).",
    ),
    HFCase("bert_mlm", "bert", build_bert_mlm, "BERT masked LM, 3 post-LN layers, tied decoder (Devlin et al. 2019)."),
    HFCase("bert_regression", "bert", build_bert_regression, "BERT with a 1-output head on standardised targets."),
    HFCase("vit", "vit", build_vit, "ViT classifier on 16x16 images, 4x4 patches (Dosovitskiy et al. 2021)."),
    HFCase("t5", "t5", build_t5, "T5 encoder-decoder, gated-GELU FFN, learning to reverse (Raffel et al. 2020)."),
    HFCase(
        "lstm_lm",
        "lstm",
        build_lstm_lm,
        "2-layer LSTM language model; Adam's default lr 1e-3, the usual one for LSTMs "
        "(at 3e-4 the loss falls only 1.6% in 30 steps).",
        optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
        needs_transformers=False,
    ),
    HFCase("resnet", "cnn", build_resnet, "ResNet-14 with BatchNorm (He et al. 2016).", needs_transformers=False),
]

BROKEN: list[HFCase] = [
    HFCase(
        "gpt2_block1_x100",
        "gpt2",
        build_gpt2_block1_x100,
        "Every weight matrix of transformer.h.1 x100 (a mis-scaled init or a bad merge): the gradient "
        "grows ~10^4.6 crossing that block backward; the blocks after it get ~10^-4 of the healthy gradient.",
        expect="exploding_gradient",
        block="transformer.h.1",
        damage="slower",
        twin="gpt2",
    ),
    HFCase(
        "llama_block1_x100",
        "llama",
        build_llama_block1_x100,
        "Every weight matrix of model.layers.1 x100: the gradient grows ~10^6 crossing that block backward.",
        expect="exploding_gradient",
        block="model.layers.1",
        damage="slower",
        twin="llama",
    ),
    HFCase(
        "gpt2_nan_block2",
        "gpt2",
        build_gpt2_nan_block2,
        "One NaN in transformer.h.2.mlp.c_fc.weight (a corrupted checkpoint shard).",
        expect="non_finite",
        block="transformer.h.2",
        damage="nan",
        twin="gpt2",
    ),
    HFCase(
        "bert_mlm_unused_pooler",
        "bert",
        build_bert_mlm_unused_pooler,
        "BertModel's pooler runs on every forward but nothing reads its output: its weights never get a gradient.",
        expect="unused_parameters",
        block="bert.pooler",
        damage="unused",
        twin="bert_mlm",
    ),
    HFCase(
        "llama_adamw_lr_1",
        "llama",
        build_llama,
        "The healthy Llama under AdamW lr 1.0 (1e-4 mistyped): every step moves each weight by ~lr.",
        expect="lr_too_high",
        damage="diverges",
        twin="llama",
        optimizer={"name": "adamw", "lr": 1.0, "weight_decay": 0.01},
    ),
    HFCase(
        "bert_regression_unscaled_targets",
        "bert",
        build_bert_regression_unscaled_targets,
        "The BERT regressor on raw targets ~N(5000, 2000): the loss starts near 3e7 and lr-sized Adam "
        "steps barely move the output.",
        expect="unscaled_targets",
        damage="slower",
        twin="bert_regression",
    ),
]

ALL: list[HFCase] = HEALTHY + BROKEN
_BY_NAME = {case.name: case for case in ALL}


def by_name(name: str) -> HFCase:
    """The case with this name."""
    return _BY_NAME[name]
