"""`playworld retoken`: carry a world's dynamics model over to a new tokenizer, as a start for fine-tuning.

    playworld retoken WORLD --tokenizer NEW_TOKENIZER --data DATA --out OUT
    playworld train dynamics --data DATA --tokenizer NEW_TOKENIZER --lam WORLD/lam --out RUN \
        --set train.init_from=OUT ...
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from playworld.cli.threads import add_threads_argument

    p = sub.add_parser(
        "retoken", help="map a world's dynamics model onto a new tokenizer's codes (a start for fine-tuning)",
        description="Encode clips of DATA with the world's tokenizer and the new one, count which new code sits "
        "where each old code sits, and rebuild the dynamics model's token embeddings and output head for the new "
        "codes (playworld.train.retoken). Writes a dynamics release to OUT for `playworld train dynamics --set "
        "train.init_from=OUT`; the rest of the model is kept. The tokenizers must have the same token grid.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("world", help="a world (or run of `train all`) with tokenizer/ and dynamics/")
    p.add_argument("--tokenizer", required=True, help="the new tokenizer's run or release directory")
    p.add_argument("--data", required=True, help="dataset whose clips both tokenizers encode")
    p.add_argument("--out", required=True, help="directory for the re-tokenized dynamics release")
    p.add_argument("--split", default="train", help="dataset split to count on (default: %(default)s)")
    p.add_argument("--clips", type=int, default=512, help="clips to encode (default: %(default)s)")
    p.add_argument("--clip-len", type=int, default=4, help="frames per clip (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    add_threads_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    from tqdm import tqdm

    from playworld.api import load
    from playworld.cli.threads import apply_threads
    from playworld.data.loader import ClipDataset
    from playworld.errors import ConfigError
    from playworld.io import atomic_write_text
    from playworld.release import read_checkpoint_config, save_release
    from playworld.train.retoken import code_cooccurrence, transplant_vocabulary

    apply_threads(args.threads)
    out = Path(args.out)
    world = load(args.world)
    world.require("tokenizer", "dynamics")
    new = load(args.tokenizer)
    new.require("tokenizer")
    dyn_dir = world.dirs["dynamics"]
    if out.resolve() in (dyn_dir.resolve(), world.path.resolve()):
        raise ConfigError(f"--out {out}: would replace the world's own dynamics model; give another directory")
    backend = world.configs["dynamics"].model.backend
    if backend != "maskgit":
        raise ConfigError(f"{dyn_dir}: a {backend} dynamics model; only a MaskGIT model (token ids in and out) "
                          "can be carried over to another tokenizer's codes")
    if args.clips < 1:
        raise ConfigError(f"--clips {args.clips}: give at least one clip")
    clips = ClipDataset(args.data, clip_len=args.clip_len, split=args.split)
    idx = np.sort(np.random.default_rng(args.seed).choice(len(clips), size=min(args.clips, len(clips)),
                                                          replace=False))
    batches = [idx[i:i + 16].tolist() for i in range(0, len(idx), 16)]
    videos = (clips.get_batch(b).float().div(255.0) for b in tqdm(batches, desc="encode", unit="batch"))
    assert world.tokenizer is not None and new.tokenizer is not None and world.dynamics is not None
    counts = code_cooccurrence(world.tokenizer, new.tokenizer, videos)  # (V_new, V_old)
    state = {k: v.detach().clone() for k, v in world.dynamics.state_dict().items()}
    weights = transplant_vocabulary(state, counts)
    config = read_checkpoint_config(dyn_dir)
    config = {k: v for k, v in config.items() if k not in ("files", "progress")}
    tok_dir = new.dirs["tokenizer"]
    config["deps"] = {**config.get("deps", {}), "tokenizer": str(tok_dir.resolve())}
    config["model"] = {**config["model"], "vocab_size": new.tokenizer.num_codes}  # a code book of another size
    seen = int((counts.sum(1) > 0).sum())
    # the share of token places where the old code is the new code's most frequent one
    purity = float(counts.max(1).values.sum() / counts.sum())
    record = {"from_world": str(world.path.resolve()), "data": str(Path(args.data).resolve()),
              "split": args.split, "clips": len(idx), "clip_len": args.clip_len,
              "places": int(counts.sum()), "new_codes_seen": seen, "purity": round(purity, 4)}
    save_release(out, weights, config)
    # beside the release, not in it: config.json holds a run config, which admits no other keys
    atomic_write_text(out / "retoken.json", json.dumps(record, indent=2) + "\n")
    print(f"{len(idx)} clips, {int(counts.sum())} token places: {seen}/{counts.shape[0]} new codes seen; "
          f"a new code's most frequent old code covers {purity:.1%} of its places")
    print(f"wrote {out}: fine-tune it with `playworld train dynamics --tokenizer {tok_dir} --set "
          f"train.init_from={out} ...`")
    return 0
