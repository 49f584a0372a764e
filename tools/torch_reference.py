"""Runs one training benchmark of the reference script (../shared/anchors/torch_baselines.py, copied into
.devdata by tools/gpu-prepare) for one configuration, so that tools/gpu-run can alternate it with ours run by
run: the card warms up under load, and a reference measured after minutes of our runs (or ours after a
compile in which the card idled) is not measured in the same state.
Usage: torch_reference.py REFERENCE.py 124m|350m [--eager]
Must not: change the reference's model, shapes or timing (it calls the script's own train_bench)."""
import importlib.util
import sys

# The reference's two configurations, as its __main__ passes them to train_bench (name, V, d, L, h, ff, T, B).
CONFIGS = {
    "124m": ("llama-124m", 32000, 768, 12, 12, 2048, 1024, 32),
    "350m": ("llama-350m", 32000, 1024, 24, 16, 2816, 2048, 16),
}

if len(sys.argv) < 3 or sys.argv[2] not in CONFIGS:
    sys.exit("usage: torch_reference.py REFERENCE.py 124m|350m [--eager]")
spec = importlib.util.spec_from_file_location("torch_baselines", sys.argv[1])
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)  # its __main__ block does not run on import
reference.train_bench(*CONFIGS[sys.argv[2]], "--eager" not in sys.argv[3:])
