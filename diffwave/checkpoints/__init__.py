"""Everything that reads or writes model files, one responsibility a module:

- safe_load.py: torch files read with `weights_only=True` only (unsafe globals named, no code run);
- store.py: training checkpoints: atomic save, prune, the `latest` pointer, our format's loads;
- rng_state.py: the exact-resume RNG state a checkpoint carries;
- compatibility.py: whether weights trained with one config fit another;
- safetensors_file.py: export to (and reading of) safetensors, the format to share;
- reference.py: the reference implementation's (lmnt-com/diffwave) format, converted as it loads;
- loading.py: any of these files -> (DiffWave, Config), for inference, distillation and --init-from.

`training/` and `inference/` both import from here, never from each other.
"""

from diffwave.checkpoints.compatibility import check_compatible
from diffwave.checkpoints.loading import load_model, load_model_weights, load_unconditional, weights_misfit
from diffwave.checkpoints.rng_state import capture_rng_state, restore_rng_state
from diffwave.checkpoints.safe_load import read_torch_file
from diffwave.checkpoints.safetensors_file import export_safetensors, load_safetensors
from diffwave.checkpoints.store import (
    CHECKPOINT_DIR,
    FORMAT_VERSION,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "CHECKPOINT_DIR",
    "FORMAT_VERSION",
    "capture_rng_state",
    "check_compatible",
    "export_safetensors",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_model_weights",
    "load_safetensors",
    "load_unconditional",
    "read_torch_file",
    "restore_rng_state",
    "save_checkpoint",
    "weights_misfit",
]
