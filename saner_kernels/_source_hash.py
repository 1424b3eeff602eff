"""What identifies a native build, shared by setup.py (baked into the build) and ops/native.py (compared at
import to spot a stale build): the op ABI version and the hash of the native sources in ``csrc/``. No torch
import: setup.py loads this file by path before the package is importable."""

import hashlib
import os

# The op ABI version: bump it when an op schema (csrc/ops.cpp) or the meaning of an argument changes, so that an
# extension built from older sources reports itself as stale instead of misbehaving. setup.py passes it to the
# build (SANER_KERNELS_ABI_VERSION, read by csrc/module.cpp).
ABI_VERSION = 6


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
