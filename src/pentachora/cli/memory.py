"""`pentachora train memory`, `pentachora encode`, `pentachora eval-memory`: long-prompt geometric memory."""

from __future__ import annotations
