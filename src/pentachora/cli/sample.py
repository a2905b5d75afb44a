"""`pentachora sample DIR -n 16 -o grid.png`: decode z ~ N(0, I) from a variational autoencoder."""

from __future__ import annotations
