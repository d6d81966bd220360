"""novomap: de novo 3D initial models from 2D cryo-EM particle images."""

__version__ = "0.1.0"
