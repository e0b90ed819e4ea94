"""Standard analysis time / one plain forward+backward of the same batch, measured in one run.

Budget (DESIGN.md §6): <= 1.5x. The baseline is the user's eager model doing
forward + cross-entropy + backward; the analysis is Analyzer.run with the standard checks on the
exported, instrumented model (statistics, rules and the report included). Loading the archive and
the one-time graph instrumentation are timed and printed separately. Medians of repeated runs.

    python benchmarks/engine_overhead.py [--repeats 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, Analyzer
from gradhealth.diagnostics.export import PackageMetadata, export_per_sample_loss
from gradhealth.diagnostics.loading import from_exported_program


def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """8 x 1024 ReLU MLP, batch 256."""
    layers: list[nn.Module] = [nn.Linear(512, 1024), nn.ReLU()]
    for _ in range(7):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(1024, 10)), torch.randn(256, 512), torch.randint(0, 10, (256,))


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Small ResNet (6 residual blocks, 64 channels) on 3x32x32, batch 64."""
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        *[_Res(64) for _ in range(6)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    return model, torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))


class _Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 256)
        layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(256, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def transformer() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """4-layer Pre-LN transformer encoder, d=256, sequence 128, batch 32."""
    return _Transformer(), torch.randint(0, 1000, (32, 128)), torch.randint(0, 10, (32,))


def _median_time(fn, repeats: int, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, build, repeats: int, device: torch.device) -> dict[str, float | str]:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, x, y = build()
    model = model.to(device).train()
    x, y = x.to(device), y.to(device)

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    start = time.perf_counter()
    ep = export_per_sample_loss(model, "cross_entropy", x, y)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    analyzer = Analyzer(from_exported_program(ep, PackageMetadata(True, 1, "cross_entropy"), None))
    instrument_s = time.perf_counter() - start
    options = AnalysisOptions(device=str(device))

    def analysis() -> None:
        analyzer.run((x,), y, options)

    for _ in range(3):  # warm-up both paths (allocator, autograd, first-call overheads)
        plain()
        analysis()
    base, full = [], []
    for _ in range(3):  # interleave rounds so machine noise hits both sides alike
        base.append(_median_time(plain, repeats, device))
        full.append(_median_time(analysis, repeats, device))
    b, a = statistics.median(base), statistics.median(full)
    return {
        "model": name,
        "plain_ms": 1e3 * b,
        "analysis_ms": 1e3 * a,
        "ratio": a / b,
        "export_s": export_s,
        "instrument_s": instrument_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, budget ratio <= 1.5")
    print(
        f"{'model':<12}{'plain fwd+bwd':>15}{'analysis':>12}{'ratio':>8}{'export (once)':>15}{'instrument (once)':>19}"
    )
    worst = 0.0
    for name, build in (("mlp", mlp), ("cnn", cnn), ("transformer", transformer)):
        row = measure(name, build, args.repeats, device)
        worst = max(worst, float(row["ratio"]))
        print(
            f"{row['model']:<12}{row['plain_ms']:>12.1f} ms{row['analysis_ms']:>9.1f} ms{row['ratio']:>7.2f}x"
            f"{row['export_s']:>13.2f} s{row['instrument_s']:>17.3f} s"
        )
    print(f"worst ratio {worst:.2f}x: {'within' if worst <= 1.5 else 'OVER'} the 1.5x budget")


if __name__ == "__main__":
    main()
