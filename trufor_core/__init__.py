"""trufor_core: a PyTorch TruFor that loads the official checkpoint and reproduces its outputs.

The names below are imported on first use (PEP 562), so that reading results (``query``, ``top``)
never pays for importing torch.
"""
from importlib import import_module

_WHERE = {"CheckpointError": "checkpoint", "WeightsInfo": "checkpoint", "load_trufor": "checkpoint",
          "EvalConfig": "config", "TruForConfig": "config", "POOLED_FEATURE_NAMES": "config",
          "ImageTooSmallError": "model", "TruFor": "model", "TruForOutput": "result", "TruForResult": "result"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'trufor_core' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
