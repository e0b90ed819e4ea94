"""docs/webhooks.md stays true: its verification snippet accepts what the workers sign, nothing else."""

from __future__ import annotations

import time
from pathlib import Path

from gradhealth.workers.webhooks import sign

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def test_documented_verifier_accepts_our_signature() -> None:
    text = DOC.read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    snippet = next(b for b in blocks if "def verify(" in b)
    namespace: dict[str, object] = {}
    exec(snippet, namespace)  # noqa: S102  (our own documentation)
    verify = namespace["verify"]
    body, now = b'{"event":"audit.regression"}', int(time.time())
    header = sign("whsec_test", now, body)
    assert "X-Gradhealth-Signature" in text and header.startswith(f"t={now},v1=")
    assert verify("whsec_test", header, body)  # type: ignore[operator]
    assert not verify("whsec_other", header, body)  # type: ignore[operator]
    assert not verify("whsec_test", header, body + b" ")  # type: ignore[operator]
    assert not verify("whsec_test", sign("whsec_test", now - 3600, body), body)  # type: ignore[operator]


def test_documented_categories_and_settings_are_the_real_ones() -> None:
    from gradhealth.store import webhook_targets as targets
    from gradhealth.store.settings import Settings

    text = DOC.read_text()
    for category in (targets.CONNECT_FAILED, targets.TIMEOUT, targets.HTTP_STATUS, targets.REFUSED):
        assert f"| `{category}` |" in text, category
    for field in ("webhook_allow_hosts", "webhook_lease_seconds", "webhook_timeout_seconds", "audit_tick_seconds"):
        assert field in Settings.model_fields and f"GRADHEALTH_{field.upper()}" in text, field
