"""A zoo of small pathological and healthy PyTorch models, built entirely in code.

Every case is deterministic (``build`` seeds torch itself), runs one forward+backward in
well under 0.5 s on a CPU, and exports with ``torch.export.export`` with a dynamic batch
dimension. ``tests/test_zoo_pathologies.py`` proves each declared pathology with plain
autograd, independently of the gradhealth engine.

Conventions
-----------
* ``build()`` returns ``(model, loss, inputs, targets)`` with the model in train mode;
  ``model(*inputs)`` gives the outputs and ``loss`` is a loss name or a callable
  ``(outputs, targets) -> per-sample loss [B]``.
* ``expect`` maps a rule id to module-path prefixes that the finding's ``layers`` must
  include (empty tuple: the rule must fire, layers are not checked).
* Module paths are ``named_modules()`` paths.  Functional activations (``F.relu`` inside a
  block's ``forward``) belong to the module whose ``forward`` calls them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ZooCase", "PATHOLOGICAL", "HEALTHY", "ALL", "by_name"]

BuildResult = tuple[nn.Module, "str | Callable[[Tensor, Tensor], Tensor]", tuple[Tensor, ...], Tensor]


@dataclass(frozen=True)
class ZooCase:
    name: str
    arch: str
    build: Callable[[], BuildResult]
    expect: dict[str, tuple[str, ...]] = field(hash=False)
    healthy: bool
    optimizer: dict | None = field(default=None, hash=False)
    precision: str = "fp32"
    checks: tuple[str, ...] = ("standard",)
    note: str = ""


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def _mlp(sizes: list[int], act: Callable[[], nn.Module]) -> nn.Sequential:
    """Linear/act/Linear/.../Linear; the activation follows every Linear but the last."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class MLP(nn.Module):
    def __init__(self, sizes: list[int], act: Callable[[], nn.Module]):
        super().__init__()
        self.net = _mlp(sizes, act)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _init_linears(module: nn.Module, weight_init: Callable[[Tensor], object]) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            weight_init(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _kaiming(w: Tensor) -> None:
    nn.init.kaiming_normal_(w, nonlinearity="relu")


def _classification(n: int, dim: int, classes: int) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, dim)
    y = torch.randint(0, classes, (n,))
    return x, y


def _images(n: int, classes: int, channels: int = 3, size: int = 16) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, channels, size, size)
    y = torch.randint(0, classes, (n,))
    return x, y


# -- CNNs -----------------------------------------------------------------------------


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class ConvNet(nn.Module):
    """features (Sequential) -> global average pool -> classifier (Linear)."""

    def __init__(self, features: list[nn.Module], width: int, classes: int):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.classifier = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        return self.classifier(h.mean(dim=(2, 3)))


class ConvNetWithAux(ConvNet):
    """Inception-style auxiliary classifier that the training forward never calls."""

    def __init__(self, features: list[nn.Module], width: int, classes: int):
        super().__init__(features, width, classes)
        self.aux_classifier = nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, classes))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016); ReLUs are functional, owned by the block."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, width))
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.fc = nn.Linear(2 * width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer2(self.layer1(self.stem(x)))
        return self.fc(h.mean(dim=(2, 3)))


# -- Recurrent --------------------------------------------------------------------------


class LastStepRNN(nn.Module):
    """RNN whose head reads only the last time step (the loss sees nothing earlier)."""

    def __init__(self, rnn: nn.Module, hidden: int, out: int):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        seq, _ = self.rnn(x)
        return self.head(seq[:, -1])


class MeanPoolRNN(nn.Module):
    """RNN followed by mean pooling over time: every step feeds the loss directly."""

    def __init__(self, rnn: nn.Module, hidden: int, out: int):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        seq, _ = self.rnn(x)
        return self.head(seq.mean(dim=1))


def _lstm_forget_bias_one(lstm: nn.LSTM) -> None:
    """Forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015)."""
    h = lstm.hidden_size
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("bias_ih"):
                p.zero_()
                p[h : 2 * h].fill_(1.0)
            elif name.startswith("bias_hh"):
                p.zero_()


# -- Transformers -----------------------------------------------------------------------


class FFN(nn.Module):
    def __init__(self, d: int, hidden: int, act: nn.Module):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.act = act
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Residual attention + FFN block; each LayerNorm can be switched off."""

    def __init__(
        self,
        d: int,
        heads: int,
        ff: int,
        act: nn.Module,
        norm_attn: bool = True,
        norm_ffn: bool = True,
    ):
        super().__init__()
        self.ln1 = nn.LayerNorm(d) if norm_attn else nn.Identity()
        self.attn = nn.MultiheadAttention(d, heads, dropout=0.0, batch_first=True)
        self.ln2 = nn.LayerNorm(d) if norm_ffn else nn.Identity()
        self.ffn = FFN(d, ff, act)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        h = self.ln1(x)
        # need_weights defaults to True in nn.MultiheadAttention: the slow path whose
        # softmax turns fully masked rows into NaN.
        a, _ = self.attn(h, h, h, key_padding_mask=key_padding_mask)
        x = x + a
        return x + self.ffn(self.ln2(x))


class TokenTransformer(nn.Module):
    """tokens [B, T] -> embedding (+ learned positions) -> blocks -> mean pool -> head."""

    def __init__(
        self,
        vocab: int,
        seq_len: int,
        d: int,
        blocks: list[nn.Module],
        classes: int,
        emb_scale: float = 1.0,
        final_norm: bool = True,
    ):
        super().__init__()
        self.seq_len = seq_len
        self.emb_scale = emb_scale
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(d) if final_norm else nn.Identity()
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(self.seq_len, device=tokens.device)
        x = self.embed(tokens) * self.emb_scale + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


class FeatureTransformer(nn.Module):
    """float features [B, T, F] -> Linear -> nn.TransformerEncoder (Pre-LN) -> pool -> head."""

    def __init__(self, features: int, d: int, layers: int, classes: int, ff: int = 128):
        super().__init__()
        self.proj = nn.Linear(features, d)
        layer = nn.TransformerEncoderLayer(d, 4, ff, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.proj(x)).mean(dim=1))


class FeatureTransformerWithPooler(FeatureTransformer):
    """BERT-style pooler that is defined but never called in forward."""

    def __init__(self, features: int, d: int, layers: int, classes: int):
        super().__init__(features, d, layers, classes)
        self.pooler = nn.Sequential(nn.Linear(d, d), nn.Tanh())


def _tokens(n: int, seq_len: int, vocab: int, classes: int) -> tuple[Tensor, Tensor]:
    tokens = torch.randint(1, vocab, (n, seq_len))
    y = torch.randint(0, classes, (n,))
    return tokens, y


# --------------------------------------------------------------------------------------
# Pathological builders
# --------------------------------------------------------------------------------------


def build_deep_sigmoid_mlp() -> BuildResult:
    torch.manual_seed(0)
    model = MLP([32] + [128] * 10 + [10], nn.Sigmoid)  # PyTorch default init
    x, y = _classification(64, 32, 10)
    return model.train(), "cross_entropy", (x,), y


def build_sigmoid_mlp_std1_saturated() -> BuildResult:
    torch.manual_seed(0)
    model = MLP([256, 128, 128, 128, 10], nn.Sigmoid)
    _init_linears(model, lambda w: nn.init.normal_(w, 0.0, 1.0))
    x, y = _classification(64, 256, 10)
    return model.train(), "cross_entropy", (x,), y


def build_deep_relu_mlp_xavier() -> BuildResult:
    torch.manual_seed(1)  # same seed as deep_relu_mlp_kaiming: identical up to weight scale
    model = MLP([32] + [128] * 24 + [10], nn.ReLU)
    _init_linears(model, nn.init.xavier_normal_)
    x, y = _classification(64, 32, 10)
    return model.train(), "cross_entropy", (x,), y


def build_deep_relu_mlp_normal_init() -> BuildResult:
    torch.manual_seed(0)
    model = MLP([32] + [64] * 8 + [10], nn.ReLU)
    _init_linears(model, lambda w: nn.init.normal_(w, 0.0, 1.0))
    x, y = _classification(64, 32, 10)
    return model.train(), "cross_entropy", (x,), y


def build_mlp_dead_relu_negative_bias() -> BuildResult:
    torch.manual_seed(0)
    model = MLP([32, 128, 128, 128, 10], nn.ReLU)
    _init_linears(model, _kaiming)
    with torch.no_grad():  # 3/4 of the units of the first two ReLUs pushed far negative
        model.net[0].bias[:96] = -6.0
        model.net[2].bias[:96] = -6.0
    x, y = _classification(64, 32, 10)
    return model.train(), "cross_entropy", (x,), y


def _sharpened_tiny_mlp() -> tuple[nn.Module, Tensor, Tensor]:
    """A 4-16-1 tanh regressor trained by full-batch momentum SGD until it has sharpened."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.randn(64, 4)
    y = torch.sin(x @ torch.tensor([1.0, -2.0, 0.5, 1.5])).unsqueeze(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(400):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.train(), x, y


def build_mlp_sgd_lr_above_edge_of_stability() -> BuildResult:
    model, x, y = _sharpened_tiny_mlp()
    return model, "mse", (x,), y


def build_mlp_sgd_update_ratio_too_big() -> BuildResult:
    torch.manual_seed(0)
    model = MLP([32, 128, 128, 10], nn.ReLU)
    _init_linears(model, _kaiming)
    x, y = _classification(64, 32, 10)
    return model.train(), "cross_entropy", (x,), y


def build_mlp_fp16_underflow_converged() -> BuildResult:
    """A fitted regressor: residuals ~1e-7, so every gradient is ~1e-9 (below fp16's 2^-24)."""
    torch.manual_seed(0)
    model = MLP([32, 64, 64, 64, 8], nn.ReLU)
    _init_linears(model, _kaiming)
    x = torch.randn(64, 32)
    with torch.no_grad():
        y = model(x) + 1e-7 * torch.randn(64, 8)
    return model.train(), "mse", (x,), y


class MLPWithAuxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = _mlp([32, 128, 128], nn.ReLU)
        self.trunk.append(nn.ReLU())
        self.head = nn.Linear(128, 10)
        self.aux_head = nn.Linear(128, 4)  # defined, never called
        self.log_softmax = nn.LogSoftmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.log_softmax(self.head(self.trunk(x)))


def build_mlp_unused_aux_head() -> BuildResult:
    torch.manual_seed(0)
    model = MLPWithAuxHead()
    _init_linears(model, _kaiming)
    x, y = _classification(64, 32, 10)
    return model.train(), "nll", (x,), y


class Log(nn.Module):
    """log of a pre-activation that is assumed positive but is not: NaN where it is < 0."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.log(x)


def build_mlp_nan_log_negative() -> BuildResult:
    torch.manual_seed(0)
    model = MLP([32, 64, 64, 10], nn.ReLU)
    model.net[1] = Log()  # net.0 Linear -> net.1 log -> net.2 Linear -> net.3 ReLU -> net.4
    x, y = _classification(64, 32, 10)
    return model.train(), "cross_entropy", (x,), y


class TabularNet(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.inp = nn.Linear(features, 64)
        self.norm = nn.LayerNorm(64)
        self.body = nn.Sequential(nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.norm(self.inp(x)))


def build_mlp_raw_tabular_features() -> BuildResult:
    torch.manual_seed(0)
    model = TabularNet(6)
    # age (years), income (currency), house area (sq ft), rooms, year built, distance (m)
    means = torch.tensor([42.0, 52_000.0, 1_800.0, 5.0, 1985.0, 3_000.0])
    stds = torch.tensor([12.0, 20_000.0, 600.0, 1.5, 20.0, 2_000.0])
    z = torch.randn(64, 6)
    x = (means + stds * z).abs()
    y = (z[:, :1] - 0.5 * z[:, 1:2]) / 1.2  # standardised target
    return model.train(), "smooth_l1", (x,), y


def build_mlp_regression_raw_targets() -> BuildResult:
    """House prices in raw units: targets ~N(5000, 2000) that depend on standardised features."""
    torch.manual_seed(0)
    model = MLP([8, 64, 64, 1], nn.ReLU)
    _init_linears(model, _kaiming)
    x = torch.randn(64, 8)
    w = torch.linspace(-1.0, 1.0, 8)
    z = (x @ w) / w.norm()
    y = (5000.0 + 2000.0 * (0.9 * z + 0.1 * torch.randn(64))).unsqueeze(1)
    return model.train(), "mse", (x,), y


class ResidualMLP(nn.Module):
    """x + fc2(relu(fc1(x))) blocks, Kaiming init, no normalisation, no branch down-scaling."""

    def __init__(self, features: int, width: int, blocks: int, out: int):
        super().__init__()
        self.inp = nn.Linear(features, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)) for _ in range(blocks)
        )
        self.head = nn.Linear(width, out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def build_deep_residual_mlp_no_norm() -> BuildResult:
    torch.manual_seed(0)
    model = ResidualMLP(32, 64, 20, 4)
    _init_linears(model, _kaiming)
    x = torch.randn(64, 32)
    y = torch.randn(64, 4)
    return model.train(), "mse", (x,), y


def _small_cnn_bn(width: int = 16, classes: int = 10) -> ConvNet:
    feats = [*_conv_bn_relu(3, width), *_conv_bn_relu(width, 2 * width, stride=2)]
    model = ConvNet(feats, 2 * width, classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def _sum_smooth_l1(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample Huber loss summed over outputs (a custom callable loss)."""
    return F.smooth_l1_loss(outputs, targets, reduction="none").sum(dim=1)


def build_cnn_raw_pixels_0_255() -> BuildResult:
    torch.manual_seed(0)
    model = _small_cnn_bn(classes=4)
    x = torch.randint(0, 256, (32, 3, 16, 16)).float()  # raw uint8 pixel values, not /255
    y = torch.randn(32, 4)
    return model.train(), _sum_smooth_l1, (x,), y


def build_cnn_dead_relu_channels() -> BuildResult:
    torch.manual_seed(0)
    feats = [
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
    ]
    model = ConvNet(feats, 32, 10)
    _init_linears(model, _kaiming)
    with torch.no_grad():
        model.features[0].bias[:24] = -8.0  # 24 of 32 channels can never fire
    x, y = _images(32, 10)
    return model.train(), "cross_entropy", (x,), y


def build_deep_sigmoid_cnn() -> BuildResult:
    torch.manual_seed(0)
    feats: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1), nn.Sigmoid()]
    for _ in range(7):
        feats += [nn.Conv2d(16, 16, 3, padding=1), nn.Sigmoid()]
    model = ConvNet(feats, 16, 10)  # PyTorch default init, no normalisation
    x, y = _images(32, 10)
    return model.train(), "cross_entropy", (x,), y


def build_cnn_inf_weight() -> BuildResult:
    torch.manual_seed(0)
    feats = [
        *_conv_bn_relu(3, 16),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
    ]
    model = ConvNet(feats, 32, 10)
    with torch.no_grad():
        model.features[3].weight[0, 0, 1, 1] = float("inf")  # e.g. a corrupted checkpoint
    x, y = _images(32, 10)
    return model.train(), "cross_entropy", (x,), y


def build_cnn_normal_init_exploding() -> BuildResult:
    torch.manual_seed(0)
    feats: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()]
    for _ in range(6):
        feats += [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()]
    model = ConvNet(feats, 16, 10)
    _init_linears(model, lambda w: nn.init.normal_(w, 0.0, 1.0))
    x, y = _images(32, 10)
    return model.train(), "cross_entropy", (x,), y


def build_cnn_unused_aux_classifier() -> BuildResult:
    torch.manual_seed(0)
    feats = [*_conv_bn_relu(3, 16), *_conv_bn_relu(16, 32, stride=2)]
    model = ConvNetWithAux(feats, 32, 5)
    x = torch.randn(32, 3, 16, 16)
    y = (torch.rand(32, 5) < 0.3).float()  # multi-label targets
    return model.train(), "bce_with_logits", (x,), y


def build_rnn_long_sequence_tanh() -> BuildResult:
    torch.manual_seed(0)
    model = LastStepRNN(nn.RNN(8, 32, batch_first=True), 32, 5)
    x = torch.randn(32, 150, 8)
    y = torch.randint(0, 5, (32,))
    return model.train(), "cross_entropy", (x,), y


def build_rnn_relu_identity_exploding() -> BuildResult:
    torch.manual_seed(0)
    rnn = nn.RNN(8, 32, nonlinearity="relu", batch_first=True)
    with torch.no_grad():  # IRNN (Le et al. 2015) with the identity scaled above 1
        rnn.weight_hh_l0.copy_(1.3 * torch.eye(32))
        rnn.bias_hh_l0.zero_()
        rnn.bias_ih_l0.fill_(0.1)
    model = LastStepRNN(rnn, 32, 3)
    x = torch.randn(32, 40, 8)
    y = torch.randn(32, 3)
    return model.train(), "l1", (x,), y


def build_lstm_huge_input_scale() -> BuildResult:
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 32, batch_first=True)
    _lstm_forget_bias_one(lstm)
    model = MeanPoolRNN(lstm, 32, 2)
    # raw sensor readings (e.g. pressure in hPa, temperature in K) fed without scaling
    base = torch.tensor([1013.0, 290.0, 50.0, 120.0, 800.0, 15.0, 300.0, 60.0])
    x = base + 0.1 * base * torch.randn(32, 20, 8)
    y = torch.randn(32, 2)
    return model.train(), "mse", (x,), y


def _healthy_lstm() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 32, batch_first=True)
    _lstm_forget_bias_one(lstm)
    model = MeanPoolRNN(lstm, 32, 4)
    x = torch.randn(32, 12, 8)
    y = torch.randint(0, 4, (32,))
    return model.train(), x, y


def build_lstm_sgd_lr_1e9() -> BuildResult:
    model, x, y = _healthy_lstm()
    return model, "cross_entropy", (x,), y


def build_transformer_tanh_ffn_saturated() -> BuildResult:
    torch.manual_seed(0)
    d = 128
    # The FFN has no LayerNorm in front of it, and the N(0,1) embeddings are also
    # multiplied by sqrt(d) (a scaling meant for embeddings initialised with std d^-0.5).
    blocks = [Block(d, 4, 128, nn.Tanh(), norm_attn=True, norm_ffn=False) for _ in range(2)]
    model = TokenTransformer(100, 16, d, blocks, 5, emb_scale=math.sqrt(d))
    tokens, y = _tokens(32, 16, 100, 5)
    return model.train(), "cross_entropy", (tokens,), y


def build_transformer_no_norm_exploding() -> BuildResult:
    torch.manual_seed(0)
    d = 64
    blocks = [Block(d, 4, 128, nn.ReLU(), norm_attn=False, norm_ffn=False) for _ in range(16)]
    model = TokenTransformer(100, 16, d, blocks, 5, final_norm=False)
    for block in model.blocks:
        _init_linears(block.ffn, _kaiming)
    tokens, y = _tokens(32, 16, 100, 5)
    return model.train(), "cross_entropy", (tokens,), y


def build_transformer_dead_relu_ffn() -> BuildResult:
    torch.manual_seed(0)
    model = FeatureTransformer(16, 64, 2, 5)
    with torch.no_grad():  # 80% of the first layer's FFN units pushed far negative
        model.encoder.layers[0].linear1.bias[:102] = -8.0
    x = torch.randn(32, 12, 16)
    y = torch.randint(0, 5, (32,))
    return model.train(), "cross_entropy", (x,), y


def build_transformer_unused_pooler() -> BuildResult:
    torch.manual_seed(0)
    model = FeatureTransformerWithPooler(16, 64, 2, 5)
    x = torch.randn(32, 12, 16)
    y = torch.randint(0, 5, (32,))
    return model.train(), "cross_entropy", (x,), y


def _healthy_feature_transformer() -> BuildResult:
    torch.manual_seed(0)
    model = FeatureTransformer(16, 64, 2, 5)
    x = torch.randn(32, 12, 16)
    y = torch.randint(0, 5, (32,))
    return model.train(), "cross_entropy", (x,), y


def build_transformer_adam_lr_1e9() -> BuildResult:
    return _healthy_feature_transformer()


class PaddedTokenTransformer(nn.Module):
    """Token classifier that masks padding (token 0) in attention."""

    def __init__(self, vocab: int, seq_len: int, d: int, classes: int):
        super().__init__()
        self.seq_len = seq_len
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(Block(d, 4, 128, nn.GELU()) for _ in range(2))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)
        nn.init.normal_(self.embed.weight, std=0.2)
        nn.init.normal_(self.pos.weight, std=0.2)

    def forward(self, tokens: Tensor) -> Tensor:
        pad = tokens == 0
        positions = torch.arange(self.seq_len, device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x, key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (self.norm(x) * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
        return self.head(pooled)


def build_transformer_all_padding_nan() -> BuildResult:
    torch.manual_seed(0)
    model = PaddedTokenTransformer(50, 12, 64, 3)
    tokens, y = _tokens(32, 12, 50, 3)
    tokens[:, 8:] = 0  # ordinary right padding
    tokens[5] = 0  # an empty sequence: every key is masked
    return model.train(), "cross_entropy", (tokens,), y


def build_linear_regression_batch_wasteful() -> BuildResult:
    """Noiseless linear regression on a batch of 512: every sample points the same way (B_simple ~ 6)."""
    torch.manual_seed(0)
    x = torch.randn(512, 4)
    y = x @ torch.randn(4, 1)
    return nn.Sequential(nn.Linear(4, 1)), "mse", (x,), y


class _NoiseBranchMLP(nn.Module):
    """A tanh MLP on features 0-7 plus a bias-free branch on features 8-15, which are pure noise."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 16)
        self.noise = nn.Linear(8, 16, bias=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x[:, :8]))) + self.noise(x[:, 8:])))


def build_mlp_noise_branch() -> BuildResult:
    """Classes from features 0-7; the noise branch's weight gradient averages to ~0 over samples (GSNR ~ 1/n)."""
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    y = (x[:, :8] @ torch.randn(8, 4)).argmax(1)
    return _NoiseBranchMLP(), "cross_entropy", (x,), y


# --------------------------------------------------------------------------------------
# Healthy builders
# --------------------------------------------------------------------------------------


def build_deep_relu_mlp_kaiming() -> BuildResult:
    torch.manual_seed(1)
    model = MLP([32] + [128] * 24 + [10], nn.ReLU)
    _init_linears(model, _kaiming)
    x, y = _classification(64, 32, 10)
    return model.train(), "cross_entropy", (x,), y


def build_resnet_bn_small() -> BuildResult:
    torch.manual_seed(0)
    model = SmallResNet(10, 16)
    x, y = _images(32, 10)
    return model.train(), "cross_entropy", (x,), y


def build_preln_transformer_encoder() -> BuildResult:
    return _healthy_feature_transformer()


def _label_smoothed_ce(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs, targets, reduction="none", label_smoothing=0.1)


def build_lstm_short_sequence() -> BuildResult:
    model, x, y = _healthy_lstm()
    return model, _label_smoothed_ce, (x,), y


class LogSoftmaxConvNet(ConvNet):
    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(super().forward(x), dim=-1)


def build_cnn_batchnorm() -> BuildResult:
    torch.manual_seed(0)
    feats = [
        *_conv_bn_relu(3, 16),
        *_conv_bn_relu(16, 32, stride=2),
        *_conv_bn_relu(32, 32),
    ]
    model = LogSoftmaxConvNet(feats, 32, 10)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    x, y = _images(32, 10)
    return model.train(), "nll", (x,), y


class GeluLNMLP(nn.Module):
    def __init__(self, features: int, width: int, depth: int, out: int):
        super().__init__()
        layers: list[nn.Module] = []
        dim = features
        for _ in range(depth):
            layers += [nn.Linear(dim, width), nn.LayerNorm(width), nn.GELU()]
            dim = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def build_gelu_layernorm_mlp() -> BuildResult:
    torch.manual_seed(0)
    model = GeluLNMLP(32, 96, 4, 6)
    x = torch.randn(64, 32)
    y = (torch.rand(64, 6) < 0.4).float()
    return model.train(), "bce_with_logits", (x,), y


def build_gru_classifier() -> BuildResult:
    torch.manual_seed(0)
    model = MeanPoolRNN(nn.GRU(8, 32, batch_first=True), 32, 4)
    x = torch.randn(32, 16, 8)
    y = torch.randint(0, 4, (32,))
    return model.train(), "cross_entropy", (x,), y


def build_embedding_transformer_classifier() -> BuildResult:
    torch.manual_seed(0)
    d = 64
    blocks = [Block(d, 4, 128, nn.GELU()) for _ in range(2)]
    model = TokenTransformer(100, 16, d, blocks, 5)
    with torch.no_grad():
        nn.init.normal_(model.embed.weight, std=0.2)
        nn.init.normal_(model.pos.weight, std=0.2)
    tokens, y = _tokens(32, 16, 100, 5)
    return model.train(), "cross_entropy", (tokens,), y


def build_padded_transformer_classifier() -> BuildResult:
    torch.manual_seed(0)
    model = PaddedTokenTransformer(50, 12, 64, 3)
    tokens, y = _tokens(32, 12, 50, 3)
    lengths = torch.randint(3, 13, (32,))
    tokens = tokens.masked_fill(torch.arange(12) >= lengths[:, None], 0)  # right padding
    return model.train(), "cross_entropy", (tokens,), y


def build_small_mlp_sgd_stable_lr() -> BuildResult:
    model, x, y = _sharpened_tiny_mlp()
    return model, "mse", (x,), y


def build_cnn_bn_regression() -> BuildResult:
    torch.manual_seed(0)
    model = _small_cnn_bn(classes=2)
    x = torch.randn(32, 3, 16, 16)
    y = torch.randn(32, 2)
    return model.train(), "l1", (x,), y


# --------------------------------------------------------------------------------------
# The zoo
# --------------------------------------------------------------------------------------

PATHOLOGICAL: list[ZooCase] = [
    ZooCase(
        "deep_sigmoid_mlp",
        "mlp",
        build_deep_sigmoid_mlp,
        {"vanishing_gradient": ("net.0",)},
        healthy=False,
        note="10x128 sigmoid MLP, default init: sigmoid'<=1/4 per layer, gradient dies toward "
        "the input (Hochreiter 1991; Glorot & Bengio 2010).",
    ),
    ZooCase(
        "sigmoid_mlp_std1_saturated",
        "mlp",
        build_sigmoid_mlp_std1_saturated,
        {"saturated_activation": ("net.1",)},
        healthy=False,
        note="Sigmoid MLP with N(0,1) weights on 256 inputs: pre-activations ~N(0,16^2), most "
        "units in the flat region (LeCun et al. 1998; Glorot & Bengio 2010).",
    ),
    ZooCase(
        "deep_relu_mlp_xavier",
        "mlp",
        build_deep_relu_mlp_xavier,
        {"vanishing_gradient": ("net.0",), "poor_initialization": ()},
        healthy=False,
        note="24-layer ReLU MLP with Xavier init: signal halves in variance per layer in both "
        "directions (He et al. 2015).",
    ),
    ZooCase(
        "deep_relu_mlp_normal_init",
        "mlp",
        build_deep_relu_mlp_normal_init,
        {"exploding_gradient": (), "poor_initialization": ()},
        healthy=False,
        note="8x64 ReLU MLP with N(0,1) weights: variance grows x32 per layer (He et al. 2015).",
    ),
    ZooCase(
        "mlp_dead_relu_negative_bias",
        "mlp",
        build_mlp_dead_relu_negative_bias,
        {"dead_relu": ("net.1", "net.3")},
        healthy=False,
        note="Large negative biases leave 3/4 of the ReLU units never active (dying ReLU, Lu et al. 2019).",
    ),
    ZooCase(
        "mlp_sgd_lr_above_edge_of_stability",
        "mlp",
        build_mlp_sgd_lr_above_edge_of_stability,
        {"lr_too_high": ()},
        healthy=False,
        optimizer={"name": "sgd", "lr": 1.5, "momentum": 0.9},
        checks=("standard", "curvature"),
        note="Sharpened 4-16-1 tanh regressor, lambda_max~14.5, SGD lr 1.5 m 0.9: "
        "lr*lambda_max >> 2(1+beta) (Cohen et al. 2021).",
    ),
    ZooCase(
        "mlp_sgd_update_ratio_too_big",
        "mlp",
        build_mlp_sgd_update_ratio_too_big,
        {"update_ratio": ()},
        healthy=False,
        optimizer={"name": "sgd", "lr": 10.0, "momentum": 0.0},
        note="SGD lr 10: one step moves the weights by about their own norm (healthy "
        "update/weight ~1e-3: Karpathy, CS231n notes).",
    ),
    ZooCase(
        "mlp_fp16_underflow_converged",
        "mlp",
        build_mlp_fp16_underflow_converged,
        {"fp16_underflow": ()},
        healthy=False,
        precision="fp16",
        note="Fitted regressor with residuals ~1e-7: gradients ~1e-9 flush to zero in fp16 "
        "without loss scaling (Micikevicius et al. 2018).",
    ),
    ZooCase(
        "mlp_unused_aux_head",
        "mlp",
        build_mlp_unused_aux_head,
        {"unused_parameters": ("aux_head",)},
        healthy=False,
        note="aux_head is registered but never called: its parameters get no gradient (DDP find_unused_parameters).",
    ),
    ZooCase(
        "mlp_nan_log_negative",
        "mlp",
        build_mlp_nan_log_negative,
        {"non_finite": ("net.1",)},
        healthy=False,
        note="torch.log of a Linear output that is negative half the time: NaN from net.1 on.",
    ),
    ZooCase(
        "mlp_raw_tabular_features",
        "mlp",
        build_mlp_raw_tabular_features,
        {"input_not_normalized": ()},
        healthy=False,
        note="Tabular features in raw units (income ~5e4, year ~2e3) fed unstandardised "
        "(LeCun et al. 1998, Efficient BackProp).",
    ),
    ZooCase(
        "mlp_regression_raw_targets",
        "mlp",
        build_mlp_regression_raw_targets,
        {"unscaled_targets": ()},
        healthy=False,
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.0},
        note="MSE on raw targets ~N(5000, 2000) with outputs ~1: the loss and every gradient carry the "
        "targets' scale; standardised targets train in a few steps (LeCun et al. 1998, Efficient BackProp).",
    ),
    ZooCase(
        "deep_residual_mlp_no_norm",
        "mlp",
        build_deep_residual_mlp_no_norm,
        {"exploding_gradient": ()},
        healthy=False,
        note="20 un-normalised residual blocks with Kaiming branches: variance doubles per "
        "block (Zhang et al. 2019, Fixup; De & Smith 2020).",
    ),
    ZooCase(
        "cnn_raw_pixels_0_255",
        "cnn",
        build_cnn_raw_pixels_0_255,
        {"input_not_normalized": ()},
        healthy=False,
        note="Images fed as raw 0-255 pixel values (no /255, no mean/std normalisation).",
    ),
    ZooCase(
        "cnn_dead_relu_channels",
        "cnn",
        build_cnn_dead_relu_channels,
        {"dead_relu": ("features.1",)},
        healthy=False,
        note="24 of 32 conv channels have bias -8: those ReLU channels never fire (Lu et al. 2019).",
    ),
    ZooCase(
        "deep_sigmoid_cnn",
        "cnn",
        build_deep_sigmoid_cnn,
        {"vanishing_gradient": ("features.0",)},
        healthy=False,
        note="8 conv+sigmoid layers without normalisation: sigmoid'<=1/4 per layer shrinks the "
        "gradient toward the input (Hochreiter 1991; Glorot & Bengio 2010).",
    ),
    ZooCase(
        "cnn_inf_weight",
        "cnn",
        build_cnn_inf_weight,
        {"non_finite": ("features.3",)},
        healthy=False,
        note="One weight of features.3 is +inf (corrupted checkpoint): inf/NaN from that conv on.",
    ),
    ZooCase(
        "cnn_normal_init_exploding",
        "cnn",
        build_cnn_normal_init_exploding,
        {"exploding_gradient": (), "poor_initialization": ()},
        healthy=False,
        note="7 conv+ReLU layers with N(0,1) weights (fan-in 144): x8.5 per layer (He et al. 2015).",
    ),
    ZooCase(
        "cnn_unused_aux_classifier",
        "cnn",
        build_cnn_unused_aux_classifier,
        {"unused_parameters": ("aux_classifier",)},
        healthy=False,
        note="Inception-style aux_classifier left out of forward: no gradient reaches it.",
    ),
    ZooCase(
        "rnn_long_sequence_tanh",
        "rnn",
        build_rnn_long_sequence_tanh,
        {"vanishing_gradient": ("rnn",)},
        healthy=False,
        note="Vanilla tanh RNN over 150 steps, loss on the last step only: gradient decays "
        "through time (Bengio et al. 1994; Pascanu et al. 2013).",
    ),
    ZooCase(
        "rnn_relu_identity_exploding",
        "rnn",
        build_rnn_relu_identity_exploding,
        {"exploding_gradient": ("rnn",)},
        healthy=False,
        note="ReLU RNN with W_hh = 1.3 I over 40 steps: gradient grows 1.3^t through time "
        "(Pascanu et al. 2013; IRNN, Le et al. 2015).",
    ),
    ZooCase(
        "lstm_huge_input_scale",
        "lstm",
        build_lstm_huge_input_scale,
        {"input_not_normalized": (), "saturated_activation": ("rnn",)},
        healthy=False,
        note="Raw sensor readings (~1e3) into an LSTM: gate pre-activations ~|30|, sigmoid/tanh gates saturated.",
    ),
    ZooCase(
        "lstm_sgd_lr_1e9",
        "lstm",
        build_lstm_sgd_lr_1e9,
        {"update_ratio": ()},
        healthy=False,
        optimizer={"name": "sgd", "lr": 1e-9, "momentum": 0.9},
        note="SGD lr 1e-9: updates ~1e-10 of the weights, training does not move.",
    ),
    ZooCase(
        "transformer_tanh_ffn_saturated",
        "transformer",
        build_transformer_tanh_ffn_saturated,
        {"saturated_activation": ("blocks.0.ffn.act",)},
        healthy=False,
        note="Tanh FFN without LayerNorm in front, N(0,1) embeddings scaled by sqrt(128): "
        "tanh saturated (sqrt(d) scaling is meant for std d^-0.5 embeddings, Vaswani 2017).",
    ),
    ZooCase(
        "transformer_no_norm_exploding",
        "transformer",
        build_transformer_no_norm_exploding,
        {"exploding_gradient": ()},
        healthy=False,
        note="16 residual attention/FFN blocks without any LayerNorm: residual stream and its "
        "gradient grow with depth (Xiong et al. 2020; Zhang et al. 2019).",
    ),
    ZooCase(
        "transformer_dead_relu_ffn",
        "transformer",
        build_transformer_dead_relu_ffn,
        {"dead_relu": ("encoder.layers.0",)},
        healthy=False,
        note="nn.TransformerEncoderLayer with linear1 bias -8 on 80% of units: the functional "
        "ReLU in encoder.layers.0 is mostly dead.",
    ),
    ZooCase(
        "transformer_unused_pooler",
        "transformer",
        build_transformer_unused_pooler,
        {"unused_parameters": ("pooler",)},
        healthy=False,
        note="BERT-style pooler defined but bypassed by mean pooling: no gradient.",
    ),
    ZooCase(
        "transformer_adam_lr_1e9",
        "transformer",
        build_transformer_adam_lr_1e9,
        {"update_ratio": ()},
        healthy=False,
        optimizer={"name": "adam", "lr": 1e-9},
        note="Adam lr 1e-9 (typo for 1e-3?): each step moves weights by ~1e-8 of their norm.",
    ),
    ZooCase(
        "transformer_all_padding_nan",
        "transformer",
        build_transformer_all_padding_nan,
        {"non_finite": ("blocks.0.attn",)},
        healthy=False,
        note="A sequence that is all padding: every key masked, softmax over -inf gives NaN in "
        "blocks.0.attn (nn.MultiheadAttention with need_weights=True).",
    ),
    ZooCase(
        "linear_regression_batch_wasteful",
        "mlp",
        build_linear_regression_batch_wasteful,
        {"batch_size_wasteful": ()},
        healthy=False,
        checks=("standard", "noise"),
        note="Noiseless targets y = xw: B_simple ~ 6 against a batch of 512 (McCandlish et al. 2018).",
    ),
    ZooCase(
        "mlp_noise_branch",
        "mlp",
        build_mlp_noise_branch,
        {"noisy_layer": ("noise",)},
        healthy=False,
        checks=("standard", "noise"),
        note="A branch fed pure-noise features: its GSNR sits at the 1/n floor, a decade below the others.",
    ),
]

HEALTHY: list[ZooCase] = [
    ZooCase(
        "deep_relu_mlp_kaiming",
        "mlp",
        build_deep_relu_mlp_kaiming,
        {},
        healthy=True,
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9},
        note="Same 24-layer ReLU MLP as deep_relu_mlp_xavier with Kaiming init (He et al. 2015).",
    ),
    ZooCase(
        "resnet_bn_small",
        "cnn",
        build_resnet_bn_small,
        {},
        healthy=True,
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
        note="Small ResNet with BatchNorm (He et al. 2016).",
    ),
    ZooCase(
        "preln_transformer_encoder",
        "transformer",
        build_preln_transformer_encoder,
        {},
        healthy=True,
        optimizer={"name": "adam", "lr": 1e-3},
        note="2-layer Pre-LN nn.TransformerEncoder, dropout 0 (Xiong et al. 2020).",
    ),
    ZooCase(
        "lstm_short_sequence",
        "lstm",
        build_lstm_short_sequence,
        {},
        healthy=True,
        note="LSTM over 12 steps, forget bias 1, mean-pooled, label-smoothed CE.",
    ),
    ZooCase(
        "cnn_batchnorm",
        "cnn",
        build_cnn_batchnorm,
        {},
        healthy=True,
        note="3 conv-BN-ReLU layers, Kaiming init, log-softmax + NLL (Ioffe & Szegedy 2015).",
    ),
    ZooCase(
        "gelu_layernorm_mlp",
        "mlp",
        build_gelu_layernorm_mlp,
        {},
        healthy=True,
        precision="bf16",
        note="Linear-LayerNorm-GELU MLP, multi-label BCE; bf16 has fp32's exponent range.",
    ),
    ZooCase(
        "gru_classifier",
        "rnn",
        build_gru_classifier,
        {},
        healthy=True,
        note="GRU over 16 steps with mean pooling (Cho et al. 2014).",
    ),
    ZooCase(
        "embedding_transformer_classifier",
        "transformer",
        build_embedding_transformer_classifier,
        {},
        healthy=True,
        optimizer={"name": "adam", "lr": 3e-4},
        note="Token embeddings + 2 Pre-LN blocks + final LayerNorm classifier.",
    ),
    ZooCase(
        "padded_transformer_classifier",
        "transformer",
        build_padded_transformer_classifier,
        {},
        healthy=True,
        note="Same padding-masked transformer as transformer_all_padding_nan, every sequence "
        "non-empty: the -inf attention mask is intentional and the loss is finite.",
    ),
    ZooCase(
        "small_mlp_sgd_stable_lr",
        "mlp",
        build_small_mlp_sgd_stable_lr,
        {},
        healthy=True,
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
        checks=("standard", "curvature"),
        note="Same sharpened tiny MLP as mlp_sgd_lr_above_edge_of_stability with lr well under 2(1+beta)/lambda_max.",
    ),
    ZooCase(
        "cnn_bn_regression",
        "cnn",
        build_cnn_bn_regression,
        {},
        healthy=True,
        note="Conv-BN-ReLU regressor with L1 loss on standardised targets.",
    ),
]

ALL: list[ZooCase] = PATHOLOGICAL + HEALTHY

_BY_NAME = {case.name: case for case in ALL}


def by_name(name: str) -> ZooCase:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no zoo case named {name!r}") from None
