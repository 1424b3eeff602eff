"""Hash of the native sources in ``csrc/``, shared by setup.py (baked into the build) and
ops/native.py (compared at import to spot a stale build). No torch import: setup.py loads this file
by path before the package is importable."""

import hashlib
import os


def source_hash(csrc: str) -> str:
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(csrc):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith((".cpp", ".h", ".cu", ".cuh")):
                path = os.path.join(dirpath, name)
                digest.update(os.path.relpath(path, csrc).replace(os.sep, "/").encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()[:16]
