"""trufor_core: a PyTorch TruFor that loads the official checkpoint and reproduces its outputs."""
from .checkpoint import CheckpointError, WeightsInfo, load_trufor
from .config import EvalConfig, TruForConfig
from .model import ImageTooSmallError, TruFor
from .pooling import POOLED_FEATURE_NAMES
from .result import TruForOutput, TruForResult

__all__ = ["CheckpointError", "EvalConfig", "ImageTooSmallError", "POOLED_FEATURE_NAMES", "TruFor",
           "TruForConfig", "TruForOutput", "TruForResult", "WeightsInfo", "load_trufor"]
