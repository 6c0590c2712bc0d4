"""ManTra-Net, the official 'Ptrain4' model as pure ``nn.Module``s, loaded from its Keras HDF5 weights."""
from .checkpoint import ManTraNetInfo, load_mantranet
from .model import DEFAULT_TILE, ManTraNet, ManTraNetOutput, count_steps, image_score, to_input

__all__ = ["DEFAULT_TILE", "ManTraNet", "ManTraNetInfo", "ManTraNetOutput", "count_steps", "image_score",
           "load_mantranet", "to_input"]
