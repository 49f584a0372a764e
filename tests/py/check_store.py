"""Reads a chunkwise token store with h5py and checks it against the expectations chunkwise wrote.
Usage: check_store.py STORE.h5 EXPECT.json"""
import json, sys
import h5py
import numpy as np

store, expect = sys.argv[1], json.load(open(sys.argv[2]))
with h5py.File(store, "r") as f:
    tokens, offsets, source = f["tokens"][:], f["doc_offsets"][:], f["doc_source"][:]
    assert tokens.dtype == np.uint32 and offsets.dtype == np.uint64, (tokens.dtype, offsets.dtype)
    assert len(tokens) == expect["n_tokens"], len(tokens)
    assert len(offsets) == expect["n_docs"] + 1 and offsets[0] == 0 and offsets[-1] == expect["last_offset"]
    assert np.all(np.diff(offsets.astype(np.int64)) > 0)
    assert tokens[:20].tolist() == expect["first_tokens"]
    assert int(tokens.astype(np.uint64).sum()) == expect["token_sum"]
    assert source[0].decode() == expect["source0"], source[0]
    a = f.attrs
    as_str = lambda v: v.decode() if isinstance(v, bytes) else str(v)
    assert as_str(a["format"]) == "chunkwise-token-store"
    assert as_str(a["tokenizer_hash"]) == expect["tokenizer_hash"]
    assert int(a["vocab_size"]) == expect["vocab_size"] and int(a["eos_id"]) == expect["eos_id"]
    assert int(a["n_tokens"]) == expect["n_tokens"]
    ends = tokens[offsets[1:].astype(np.int64) - 1]
    assert np.all(ends == expect["eos_id"]), "every document ends with EOS"
print("ok")
