"""unused_parameters: parameters that receive no gradient and so never train."""

from __future__ import annotations

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements
from .common import span

RULE_ID = "unused_parameters"

# A layer whose every gradient element is exactly zero is as stuck as an unused one; when a dead
# activation (>= 90% dead units) explains it, the dead_relu finding carries the cause.
DEAD_EXPLAINS = 0.9


def evaluate(m: Measurements) -> list[Finding]:
    """Fire for layers with no gradient at all (not in the graph) or an all-zero gradient."""
    unused = [layer for layer in m.layers if layer.missing_grads and layer.grad_norm is None]
    partly = [layer for layer in m.layers if layer.missing_grads and layer.grad_norm is not None]
    zero = [layer for layer in m.layers if layer.grad_norm == 0 and not layer.nonfinite]
    findings = []
    if unused or partly:
        names = [layer.name for layer in unused + partly]
        count = sum(layer.numel for layer in unused)
        findings.append(
            Finding(
                rule=RULE_ID,
                severity="warning",
                title="Parameters not used by the loss",
                message=f"{span(names)} received no gradient: their parameters do not reach the loss "
                f"({count} parameters in fully unused layers).",
                layers=names,
                evidence={
                    "unused_layers": len(unused),
                    "partly_unused_layers": len(partly),
                    "unused_parameters": count,
                },
                thresholds={"gradient": "None"},
                remediation=[
                    Remediation(
                        action="remove_or_connect",
                        detail="Delete the unused modules, connect them to the output, or freeze them explicitly "
                        "(requires_grad_(False)); under DDP unused parameters also need find_unused_parameters=True.",
                        snippet=f"for name in {names[:12]!r}:\n"
                        "    model.get_submodule(name).requires_grad_(False)  # or delete / connect the module",
                        params={"layers": names},
                    )
                ],
                confidence=0.95,
            )
        )
    if zero:
        dead = any((a.dead or 0) >= DEAD_EXPLAINS for a in m.activations)
        names = [layer.name for layer in zero]
        findings.append(
            Finding(
                rule=RULE_ID,
                severity="info" if dead else "warning",
                title="Parameters with an all-zero gradient",
                message=f"{span(names)} get an exactly zero gradient on this batch"
                + (" — explained by dead activations downstream (see dead_relu)." if dead else "."),
                layers=names,
                evidence={"zero_gradient_layers": len(zero), "explained_by_dead_units": dead},
                thresholds={"nonzero_gradient_elements": 0},
                remediation=[
                    Remediation(
                        action="check_gradient_path",
                        detail="Something between these layers and the loss blocks the gradient (a detach(), "
                        "a dead activation, an argmax/round, or a zero multiplier): an inspection of the model's code.",
                        params={"layers": names},
                    )
                ],
                confidence=0.8,
            )
        )
    return findings
