"""The ``pentachora`` console script.

Each command family lives in its own module and registers itself on :data:`app` (or on
:data:`train_app` for ``pentachora train ...``), both defined in :mod:`pentachora.cli.app`; this
file only imports the families, which assembles them. Library code never
prints; commands here talk to the user. Nothing here imports torch or a model at import time, so
``pentachora --help`` stays fast: command bodies import what they need.

Every command shares one error path (:mod:`pentachora.cli.core`): the library's
:class:`~pentachora.errors.PentachoraError` becomes one red ``error: ...`` line and exit code 2, an
unexpected exception its traceback plus a request to report it, Ctrl-C one line saying where a rerun
resumes (exit code 130).
"""

from __future__ import annotations

# The command modules register themselves on ``app`` / ``train_app`` (defined in
# :mod:`pentachora.cli.app`, which they import); importing them here assembles the CLI. None of
# them imports torch at import time.
from pentachora.cli import audit as _audit  # noqa: F401
from pentachora.cli import autoencoders as _autoencoders  # noqa: F401
from pentachora.cli import batteries as _batteries  # noqa: F401
from pentachora.cli import demo as _demo  # noqa: F401
from pentachora.cli import geometry as _geometry  # noqa: F401
from pentachora.cli import hub as _hub  # noqa: F401
from pentachora.cli import memory as _memory  # noqa: F401
from pentachora.cli import models as _models  # noqa: F401
from pentachora.cli import sample as _sample  # noqa: F401
from pentachora.cli import t2i as _t2i  # noqa: F401
from pentachora.cli.app import app, train_app

__all__ = ["app", "main", "train_app"]


def main() -> None:
    """Console-script entry point."""
    app()
