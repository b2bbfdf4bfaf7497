"""Neural building blocks shared by every playworld model."""

from playworld.nn.blocks import MLP, Attention, STBlock, STTransformer, TemporalKVCache, init_weights
from playworld.nn.fsq import FSQ
from playworld.nn.quantize import QuantizeOutput
from playworld.nn.vq import VectorQuantizer

__all__ = ["MLP", "Attention", "STBlock", "STTransformer", "TemporalKVCache", "init_weights",
           "FSQ", "QuantizeOutput", "VectorQuantizer"]
