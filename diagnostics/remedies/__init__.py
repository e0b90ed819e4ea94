"""Machine-applicable remediations: small functions of (params, trial setup), keyed by action."""

from __future__ import annotations

from collections.abc import Callable

from .data import standardize_inputs, standardize_targets
from .init import fix_bias_and_init, reinitialize, rescale_weights, set_forget_gate_bias
from .optim import clip_gradients, set_lr, unfreeze, use_loss_scaling
from .setup import Params, RemedyError, TrialSetup

Remedy = Callable[[Params, TrialSetup], None]

REMEDIES: dict[str, Remedy] = {
    "lower_lr": set_lr,
    "scale_lr": set_lr,
    "decay_lr": set_lr,
    "reduce_lr_on_plateau": set_lr,
    "clip_gradients": clip_gradients,
    "reinitialize": reinitialize,
    "fix_initialization": reinitialize,
    "use_relu_and_kaiming_init": reinitialize,
    "orthogonal_recurrent_init": reinitialize,
    "shorten_or_orthogonal_init": reinitialize,
    "rescale_weights": rescale_weights,
    "rescale_preactivations": rescale_weights,
    "fix_bias_and_init": fix_bias_and_init,
    "use_loss_scaling": use_loss_scaling,
    "standardize_inputs": standardize_inputs,
    "standardize_targets": standardize_targets,
    "unfreeze": unfreeze,
    "set_forget_gate_bias": set_forget_gate_bias,
}

# Why an action is not applied to a trial: it changes the program or the pipeline, not parameters.
NOT_APPLICABLE_REASON = (
    "structural or procedural advice (it changes the model's code, the data pipeline or the training "
    "schedule, not its parameters): it cannot be applied to an exported graph, so it is not verified"
)

# Actions of which only the parameter part can be applied: the verification says what was left out.
PARTIAL: dict[str, str] = {
    "use_relu_and_kaiming_init": "only the Kaiming initialisation was applied: the activation change is structural",
    "shorten_or_orthogonal_init": "only the orthogonal initialisation was applied: shortening sequences changes the data",
}

__all__ = [
    "PARTIAL",
    "REMEDIES",
    "NOT_APPLICABLE_REASON",
    "Params",
    "Remedy",
    "RemedyError",
    "TrialSetup",
    "apply_remedy",
]


def apply_remedy(action: str, params: Params, setup: TrialSetup) -> None:
    """Apply one remediation to a trial (with gradient clipping too when its params carry max_norm)."""
    remedy = REMEDIES.get(action)
    if remedy is None:
        raise RemedyError(f"action {action!r} is not machine-applicable")
    remedy(params, setup)
    if remedy is not clip_gradients and params.get("max_norm") is not None:
        clip_gradients(params, setup)  # a fix that needs clipping while it settles carries its clip norm
