"""Pack a file for the GPU machine's 64 MiB carry limit, and unpack it there, losslessly.

float32 weights compress poorly as they are; grouping the 1st, 2nd, 3rd and 4th byte of every
4-byte word together first (a byte shuffle, as blosc does) lets xz find the repeated exponent bytes.

    python3 shuffled_xz.py pack FILE OUT.xz      # here
    python3 shuffled_xz.py unpack IN.xz FILE SHA256  # there; fails unless the bytes match the digest
"""
import hashlib
import lzma
import sys

import numpy as np


def pack(data: bytes) -> bytes:
    cut = len(data) // 4 * 4
    words = np.frombuffer(data[:cut], dtype=np.uint8).reshape(-1, 4)
    header = len(data).to_bytes(8, "little")
    return lzma.compress(header + words.T.tobytes() + data[cut:], preset=9 | lzma.PRESET_EXTREME)


def unpack(packed: bytes) -> bytes:
    raw = lzma.decompress(packed)
    n = int.from_bytes(raw[:8], "little")
    cut = n // 4 * 4
    words = np.frombuffer(raw[8:8 + cut], dtype=np.uint8).reshape(4, -1)
    return words.T.tobytes() + raw[8 + cut:]


if __name__ == "__main__":
    verb, source, target = sys.argv[1:4]
    if verb == "pack":
        open(target, "wb").write(pack(open(source, "rb").read()))
    else:
        data = unpack(open(source, "rb").read())
        digest = hashlib.sha256(data).hexdigest()
        if digest != sys.argv[4]:
            raise SystemExit(f"{target}: sha256 {digest}, expected {sys.argv[4]}")
        open(target, "wb").write(data)
        print(f"{target}: {len(data)} bytes, sha256 verified")
