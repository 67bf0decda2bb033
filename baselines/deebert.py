"""DeeBERT (Xin et al., ACL 2020): raw entropy (nats) of an off-ramp below S; two-stage recipe."""

from __future__ import annotations

from de3bert.indicators import EntropyPolicy
from de3bert.method import Method

METHOD = Method("deebert", "two-stage", EntropyPolicy,
                "DeeBERT: entropy (nats) < S on off-ramps trained after the backbone (two-stage)")
