"""Neural building blocks shared by every playworld model."""

from playworld.nn.blocks import MLP, Attention, STBlock, STTransformer, TemporalKVCache, init_weights

__all__ = ["MLP", "Attention", "STBlock", "STTransformer", "TemporalKVCache", "init_weights"]
