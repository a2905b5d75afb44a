"""Print the pins of constraints.txt: name==version of the installed closure of pentachora[all,dev].

Run it in an environment that passed the suite: `python .ci/freeze_constraints.py > body`, then
keep the header comment of constraints.txt and replace the rest (setuptools is left out).
"""

import importlib.metadata as md

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def reqs(dist, extras):
    out = []
    for r in dist.requires or []:
        req = Requirement(r)
        if req.marker is None:
            out.append(req)
            continue
        envs = [{"extra": e} for e in (extras or {""})]
        if any(req.marker.evaluate(env) for env in envs):
            out.append(req)
    return out


seen = {}
stack = [("pentachora", {"all", "dev", "train", "hub", "memory", "diffusion"})]
while stack:
    name, extras = stack.pop()
    try:
        d = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    key = canonicalize_name(name)
    prev = seen.get(key)
    if prev is not None and extras <= prev[1]:
        continue
    seen[key] = (d, (prev[1] if prev else set()) | extras)
    for r in reqs(d, extras):
        if canonicalize_name(r.name) == "pentachora":
            continue
        stack.append((r.name, set(r.extras)))
for key, (d, _) in sorted(seen.items()):
    if key == "pentachora":
        continue
    v = d.version.split("+")[0]
    if key != "setuptools":
        print(f"{d.metadata['Name']}=={v}")
