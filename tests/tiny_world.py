"""A tiny random world saved in the release layout, for play, env and rollout tests (no training)."""

from __future__ import annotations

from pathlib import Path

import torch

from playworld.config import to_dict
from playworld.models.dynamics import DynamicsConfig, DynamicsModel, FlowConfig
from playworld.models.lam import LAMConfig, LatentActionModel
from playworld.models.tokenizer import TokenizerConfig, VideoTokenizer
from playworld.train.checkpoint import save_release

SIZE = 16
NUM_ACTIONS = 4


def tiny_models(num_actions: int = NUM_ACTIONS, backend: str = "maskgit"):
    """A random tokenizer, LAM and dynamics model (MaskGIT's, or with ``backend="flow"`` the flow model)."""
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig(image_size=SIZE, patch=4, dim=32, enc_depth=1, dec_depth=1, heads=2,
                                         num_codes=32, code_dim=8))
    lam = LatentActionModel(LAMConfig(height=SIZE, width=SIZE, patch_size=8, num_actions=num_actions, dim=32,
                                      heads=2, encoder_depth=1, decoder_depth=1))
    config = DynamicsConfig(vocab_size=32, num_actions=num_actions, token_height=4, token_width=4, dim=32, depth=2,
                            heads=2, backend=backend, flow=FlowConfig(latent_dim=8))
    if backend == "flow":
        from playworld.models.flow import FlowDynamicsModel

        return tok, lam, FlowDynamicsModel(config)
    return tok, lam, DynamicsModel(config)


def save_tiny_run(out: Path, backend: str = "maskgit") -> Path:
    """Write tokenizer/, lam/, dynamics/ of a tiny random world (of ``backend``) under ``out``; returns ``out``."""
    for kind, model in zip(("tokenizer", "lam", "dynamics"), tiny_models(backend=backend)):
        save_release(out / kind, model.state_dict(), {"kind": kind, "model": to_dict(model.config)})
    return out


def tiny_dynamics_finetune(world: Path, data: Path, **train):
    """A RunConfig that fine-tunes the tiny world's dynamics model (``save_tiny_run``) on ``data`` through
    ``train.init_from``: the tiny world's shapes, 3-frame clips of 2, ``train`` overriding TrainConfig's fields."""
    from playworld.train import DataConfig, OptimConfig, RunConfig, TrainConfig

    return RunConfig(kind="dynamics", model=DynamicsConfig(vocab_size=32, num_actions=NUM_ACTIONS, token_height=4,
                                                           token_width=4, dim=32, depth=2, heads=2),
                     optim=OptimConfig(lr=1e-3, warmup_steps=0),
                     data=DataConfig(path=str(data), clip_len=3, batch_size=2),
                     train=TrainConfig(**{"steps": 2, "seed": 0, "init_from": str(world / "dynamics"), **train}),
                     deps={"tokenizer": str(world / "tokenizer"), "lam": str(world / "lam")})


def decode_video(path: Path):
    """Every frame of an mp4 (PyAV) or gif (Pillow), with no resampling: (T, H, W, 3) uint8."""
    import av
    import numpy as np
    from PIL import Image, ImageSequence

    path = Path(path)
    if path.suffix == ".gif":
        with Image.open(path) as im:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
