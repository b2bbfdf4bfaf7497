"""`playworld tokenize`: encode a video into tokens with a trained tokenizer, or decode tokens back."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from playworld.cli.threads import add_threads_argument

    p = sub.add_parser(
        "tokenize", help="encode a video to tokens (or decode tokens to a video) with a trained tokenizer",
        description="Encode: playworld tokenize RUN clip.mp4 --out clip.tokens.safetensors [--recon recon.mp4]\n"
        "Decode: playworld tokenize RUN --decode clip.tokens.safetensors --out clip.mp4",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory holding a trained tokenizer (or its parent from `train all`)")
    p.add_argument("input", nargs="?", help="video file, image, or folder of images to encode")
    p.add_argument("--out", required=True, help="tokens (.safetensors) when encoding; video (.mp4/.gif) when decoding")
    p.add_argument("--decode", metavar="TOKENS", help="decode this tokens file instead of encoding")
    p.add_argument("--recon", help="also write the reconstruction (input | decoded, side by side) to this video")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate to sample the input at (default: %(default)s)")
    p.add_argument("--fit", choices=("crop", "pad"), default="crop", help="keep aspect by center-crop or pad")
    p.add_argument("--chunk", type=int, default=16, help="frames encoded together (causal: any size gives the "
                   "same tokens up to the context window)")
    add_threads_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from playworld.api import load
    from playworld.cli.threads import apply_threads
    from playworld.errors import ConfigError
    from playworld.models.base import psnr_from_mse, to_uint8, to_unit
    from playworld.release import load_tensors, save_tensors
    from playworld.video import read_video, write_video

    apply_threads(args.threads)
    loaded = load(args.run)
    loaded.require("tokenizer")
    tok = loaded.tokenizer
    assert tok is not None
    size = tok.config.image_size
    if args.decode:
        tokens = load_tensors(Path(args.decode))
        if "indices" not in tokens:
            raise ConfigError(f"{args.decode}: no 'indices' tensor (not a playworld tokens file)")
        with torch.no_grad():
            video = tok.decode(tokens["indices"].long()[None])[0]  # (T, H, W, C)
        write_video(args.out, to_uint8(video).numpy(), fps=args.fps)
        print(f"decoded {video.shape[0]} frames -> {args.out}")
        return 0
    if not args.input:
        raise ConfigError("give a video to encode, or --decode TOKENS")
    frames = read_video(args.input, size=size, fps=args.fps, fit=args.fit)  # (T, H, W, 3) uint8
    video = to_unit(torch.from_numpy(frames))[None]  # (1, T, H, W, C)
    cache = tok.new_cache(max_frames=max(args.chunk, 1))
    indices, recon = [], []
    with torch.no_grad():
        for s in range(0, video.shape[1], args.chunk):
            enc = tok.encode_step(video[:, s : s + args.chunk], cache)
            indices.append(enc.indices)
            if args.recon:
                recon.append(tok.decode_step(enc.indices, cache))
    idx = torch.cat(indices, dim=1)[0]  # (T, h, w)
    dtype = torch.int16 if tok.num_codes <= 32767 else torch.int32
    save_tensors(Path(args.out), {"indices": idx.to(dtype)},
                 metadata={"source": str(args.input), "fps": str(args.fps), "tokenizer": str(args.run)})
    msg = f"encoded {idx.shape[0]} frames -> {idx.shape[0]} x {tuple(idx.shape[1:])} tokens in {args.out}"
    if args.recon:
        recon_t = torch.cat(recon, dim=1)  # (1, T, H, W, C) in [0, 1]
        psnr = float(psnr_from_mse((recon_t - video).square().mean()))
        rec = to_uint8(recon_t[0]).numpy()
        write_video(args.recon, np.concatenate([frames, rec], axis=2), fps=args.fps)
        msg += f"; reconstruction PSNR {psnr:.2f} dB -> {args.recon}"
    print(msg)
    return 0
