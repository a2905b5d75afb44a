"""The machine's memory, asked before a large allocation: a size that cannot fit is refused with one
line that names it, instead of an allocator traceback minutes into a run."""

from __future__ import annotations

import os

from pentachora.errors import ConfigError

__all__ = ["MEMORY_FRACTION", "check_fits_in_memory", "physical_memory_bytes"]

#: Share of the machine's physical memory one allocation may plan to use.
MEMORY_FRACTION = 0.8


def physical_memory_bytes() -> int | None:
    """The machine's physical memory in bytes (``None`` where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None


def check_fits_in_memory(nbytes: float, what: str, lower: str) -> None:
    """Refuse a planned allocation of ``nbytes`` larger than :data:`MEMORY_FRACTION` of the machine.

    Args:
        nbytes: the estimated size.
        what: what would be allocated (``"a pool of 100,000,000 scenes"``).
        lower: what the user can lower (``"--pool-size"``).

    Raises:
        ConfigError: naming the estimate, the machine's memory and ``lower``.
    """
    total = physical_memory_bytes()
    if total is not None and nbytes > MEMORY_FRACTION * total:
        raise ConfigError(
            f"{what} needs ≈{nbytes / 2**30:,.1f} GiB; this machine has {total / 2**30:.0f} GiB — lower {lower}"
        )
