"""Continual-VLP: continual multi-task adaptation of frozen fusion-based VLPs."""
from continual.compat import install_torchvision_shim

# Before anything imports torchvision or transformers (see continual/compat.py).
install_torchvision_shim()
