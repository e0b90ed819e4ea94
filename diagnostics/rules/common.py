"""Helpers every rule uses: number formatting, layer spans and references."""

from __future__ import annotations

import math

from gradhealth.report import Remediation

REFS = {
    "glorot2010": "Glorot & Bengio 2010, Understanding the difficulty of training deep feedforward neural networks",
    "he2015": "He et al. 2015, Delving Deep into Rectifiers (Kaiming init)",
    "he2016": "He et al. 2016, Deep Residual Learning",
    "ioffe2015": "Ioffe & Szegedy 2015, Batch Normalization",
    "ba2016": "Ba et al. 2016, Layer Normalization",
    "pascanu2013": "Pascanu et al. 2013, On the difficulty of training recurrent neural networks",
    "hochreiter1997": "Hochreiter & Schmidhuber 1997, Long Short-Term Memory",
    "cohen2021": "Cohen et al. 2021, Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability",
    "lewkowycz2020": "Lewkowycz et al. 2020, The large learning rate phase of deep learning: the catapult mechanism",
    "micikevicius2018": "Micikevicius et al. 2018, Mixed Precision Training",
    "lu2019": "Lu et al. 2019, Dying ReLU and Initialization",
    "maas2013": "Maas et al. 2013, Rectifier Nonlinearities Improve Neural Network Acoustic Models (LeakyReLU)",
    "lecun1998": "LeCun et al. 1998, Efficient BackProp",
    "cs231n": "CS231n notes: the update/weight ratio should be about 1e-3",
    "xiong2020": "Xiong et al. 2020, On Layer Normalization in the Transformer Architecture (Pre-LN)",
    "zhang2019": "Zhang et al. 2019, Fixup Initialization",
    "jozefowicz2015": "Jozefowicz et al. 2015, An Empirical Exploration of Recurrent Network Architectures "
    "(forget-gate bias 1)",
    "le2015": "Le et al. 2015, A Simple Way to Initialize Recurrent Networks of Rectified Linear Units",
}


def fmt(value: float | None) -> str:
    """Short human number: 3 significant digits, scientific when tiny or huge."""
    if value is None:
        return "n/a"
    if value == 0 or not math.isfinite(value):
        return str(value)
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.2e}"


def layer_label(name: str, type_name: str | None = None) -> str:
    """A layer as messages name it, net.20 (Linear); a bare index reads as a number, so quote it: layer '20'."""
    if not name:
        shown = "(model)"
    elif name.replace(".", "").isdigit():
        shown = f"layer '{name}'"
    else:
        shown = name
    return f"{shown} ({type_name})" if type_name else shown


def span(names: list[str]) -> str:
    """Name a run of layers compactly: 'a', 'a and b', or 'a … z (n layers)'."""
    if not names:
        return "(none)"
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]} and {names[1]}"
    return f"{names[0]} … {names[-1]} ({len(names)} layers)"


def label_span(names: list[str]) -> str:
    """span() over layer_label()s: 'layer '0' … layer '4' (3 layers)', never a bare '0 … 4'."""
    return span([layer_label(name) for name in names])


def orders_of_magnitude(ratio: float) -> float:
    """|log10(ratio)|, for messages like 'falls 10^6'."""
    return abs(math.log10(ratio)) if ratio > 0 else float("inf")


def batch_confidence(batch_size: int, full_at: int = 32) -> float:
    """Batch statistics firm up with the batch: 0.5 for one sample, 0.95 from full_at on."""
    return round(min(0.95, 0.5 + 0.45 * min(batch_size, full_at) / full_at), 2)


def clip_remediation(max_norm: float | None, detail: str, default: float | None = None) -> Remediation:
    """clip_grad_norm_ (Pascanu et al. 2013): one advice, whichever rule derived the max_norm it quotes."""
    shown = default if max_norm is None else max_norm
    return Remediation(
        action="clip_gradients",
        detail=detail,
        snippet=f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={shown})",
        references=[REFS["pascanu2013"]],
        params={"max_norm": max_norm},
    )
