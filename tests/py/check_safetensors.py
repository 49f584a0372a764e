"""Reads a safetensors file written by chunkwise with the reference Python package, checks its contents,
and writes one back for chunkwise to read. Usage: check_safetensors.py OURS THEIRS"""
import sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

ours, theirs = sys.argv[1], sys.argv[2]
with safe_open(ours, framework="np") as f:
    keys = sorted(f.keys())
    assert keys == ["model.a", "model.b"], keys
    a = f.get_tensor("model.a")
    assert a.dtype == np.float32 and a.shape == (3, 4), (a.dtype, a.shape)
    assert np.array_equal(a, (np.arange(12, dtype=np.float32).reshape(3, 4) / np.float32(7.0))), a
with open(ours, "rb") as fh:   # bf16 has no numpy dtype: check the raw header instead
    import json, struct
    n = struct.unpack("<Q", fh.read(8))[0]
    h = json.loads(fh.read(n))
    assert h["model.b"]["dtype"] == "BF16" and h["model.b"]["shape"] == [6], h["model.b"]
save_file({"x": np.arange(10, dtype=np.float32).reshape(2, 5) * np.float32(0.5), "model.a_times_2": a * 2}, theirs)
print("ok")
