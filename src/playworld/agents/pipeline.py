"""The three stages of `playworld agent`, as library calls: clone, decode, evaluate in the real game.

An agent directory holds ``policy.safetensors`` + ``policy.json`` (what it cloned, from which run and
dataset), ``labels.safetensors`` (the LAM's latent labels of the dataset, reused on resume and by
decode), ``resume/`` while training, ``decoder-nN/`` per decoder and ``eval.json`` + ``eval.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from playworld.agents.bc import BCConfig, BCResult, train_bc
from playworld.agents.decode import (
    ActionDecoder,
    DecoderConfig,
    available_decoders,
    decoder_accuracy,
    fit_best,
    load_decoder,
    name_table,
    save_decoder,
)
from playworld.agents.evaluate import (
    AgentController,
    BehaviourController,
    Controller,
    EpisodeStats,
    RandomController,
    play_levels,
)
from playworld.agents.idm import IDMConfig
from playworld.agents.policy import PolicyConfig, PolicyNet, load_policy, trained_game
from playworld.agents.transitions import Labeller, Transitions, read_transitions
from playworld.config import from_dict, to_dict
from playworld.data.collect import CollectConfig
from playworld.data.format import Dataset
from playworld.data.policies import true_action_names
from playworld.errors import CheckpointError, ConfigError, DatasetError
from playworld.io import atomic_write_text, read_json
from playworld.release import load_tensors, save_tensors

LABELS = "labels.safetensors"
MIN_LABEL_NMI = 0.05
"""Below this normalised mutual information between the LAM's labels and the recorded keys, the latent
actions say (almost) nothing about what the behaviour pressed, and no decoder can turn a latent clone into
the behaviour. Measured: CoinRun's shipped LAM on its mix data 0.13; small LAMs on starpilot and bigfish
video 0.001-0.01, whose latent clones all played at random (docs/agents.md)."""


def label_information(trans: Transitions) -> float | None:
    """NMI (:func:`playworld.eval.actions.nmi`) of the latent labels and the true actions over the
    transitions that have both, or None when none has."""
    from playworld.eval.actions import confusion, nmi

    both = (trans.latent >= 0) & (trans.true >= 0)
    if not bool(both.any()):
        return None
    lat, true = trans.latent[both].numpy(), trans.true[both].numpy()
    return nmi(confusion(lat, true, int(lat.max()) + 1, int(true.max()) + 1))


def label_warning(value: float | None) -> str | None:
    """What to tell a user whose latent labels carry too little of the recorded keys, or None."""
    if value is None or value >= MIN_LABEL_NMI:
        return None
    return (f"the LAM's latent labels carry almost none of the recorded keys' information (NMI {value:.3f} < "
            f"{MIN_LABEL_NMI}): its actions follow other change in the video (scrolling, enemies), so a latent "
            f"clone will not decode to the behaviour. Check `playworld eval`'s action figures for the LAM, or try "
            f"video with more varied keys (docs/agents.md)")


def labelled_transitions(data: str | Path, out: Path, labeller: Labeller | None, *, split: str = "train",
                         max_episodes: int | None = None, progress: bool = True) -> Transitions:
    """The split's transitions with latent labels, read from ``out/labels.safetensors`` when it holds them
    (the LAM is run once per agent), else labelled with ``labeller`` and cached there."""
    cache = out / LABELS
    if cache.is_file():
        trans = read_transitions(data, split=split, max_episodes=max_episodes, progress=False)
        saved = load_tensors(cache)
        if torch.equal(saved.get("episode", torch.zeros(0)), trans.episode):
            trans.latent = saved["latent"]
            return trans
        raise DatasetError(f"{cache}: latent labels of other data than {data} (split {split}); "
                           f"delete it or choose another --out")
    if labeller is None:
        raise ConfigError(f"{out}: no cached latent labels and no LAM to label {data} with")
    trans = read_transitions(data, split=split, labeller=labeller, max_episodes=max_episodes, progress=progress)
    save_tensors(cache, {"latent": trans.latent, "episode": trans.episode})
    return trans


def clone(run: str | Path | None, data: str | Path, out: str | Path, policy_cfg: PolicyConfig, cfg: BCConfig, *,
          labeller: Labeller | None = None, max_episodes: int | None = None, progress: bool = True,
          max_steps: int | None = None) -> BCResult:
    """Latent BC (``policy_cfg.target == 'latent'``: labels from ``labeller``, by default the run's LAM)
    or oracle BC (``'true'``: the recorded actions) on the train split of ``data``, into ``out``."""
    out = Path(out)
    ds = Dataset(data)
    if policy_cfg.target == "latent":
        if labeller is None and not (out / LABELS).is_file():
            if run is None:
                raise ConfigError("agent bc: latent BC needs RUN, the run whose LAM labels the data")
            from playworld.api import load

            loaded = load(run)
            loaded.require("lam")
            labeller = loaded.lam.infer_actions  # type: ignore[union-attr]
        trans = labelled_transitions(data, out, labeller, max_episodes=max_episodes, progress=progress)
        info = label_information(trans)
    else:
        if not ds.manifest.has_actions:
            raise DatasetError(f"{ds.root}: records no true actions; oracle BC needs them")
        trans = read_transitions(data, max_episodes=max_episodes, progress=progress)
        info = None
        if ds.num_actions is not None and ds.num_actions != policy_cfg.num_actions:
            raise ConfigError(f"agent bc: oracle num_actions={policy_cfg.num_actions} but {ds.root} records "
                              f"{ds.num_actions} actions")
    meta = {**_data_meta(run, data, ds, max_episodes), "label_nmi": info}
    return train_bc(trans, policy_cfg, cfg, out, meta=meta, progress=progress, max_steps=max_steps)


def _data_meta(run: str | Path | None, data: str | Path, ds: Dataset, max_episodes: int | None) -> dict[str, Any]:
    """What an agent's policy.json records of the run and data it was cloned from (eval reads the split
    rule and training levels to choose held-out levels, and the source to replay the behaviour)."""
    return {"run": None if run is None else str(Path(run).resolve()), "data": str(Path(data).resolve()),
            "max_episodes": max_episodes,
            "data_source": ds.manifest.source, "num_true": ds.num_actions,
            "split_rule": {"by": ds.manifest.split_rule.by, "val": ds.manifest.split_rule.val,
                           "test": ds.manifest.split_rule.test},
            "train_levels": sorted({e.level_seed for e in ds.episodes("train") if e.level_seed is not None})}


IDM_KEYS = "idm_keys.safetensors"  # the IDM's key for every train transition, cached so a resume skips the fit
IDM_FIGURES = "idm.json"


def clone_idm(data: str | Path, out: str | Path, policy_cfg: PolicyConfig, cfg: BCConfig, idm_cfg: IDMConfig, *,
              max_episodes: int | None = None, progress: bool = True, max_steps: int | None = None) -> BCResult:
    """The labelled baseline (VPT's recipe): fit an inverse dynamics model on ``idm_cfg.labels`` labelled
    transitions of ``data``'s train split (the N that ``agent decode --labels N`` would read), label every
    train transition with its key, and clone those keys into ``out`` (a policy over true keys). Records how
    well the IDM recovers the keys on the train split (``label_nmi``, as latent BC records its LAM's) and
    on the held-out val split, where it has keys."""
    from playworld.agents.idm import key_agreement, predict_keys, train_idm

    out, ds = Path(out), Dataset(data)
    if not ds.manifest.has_actions or not ds.num_actions:
        raise DatasetError(f"{ds.root}: records no keys; an inverse dynamics model needs a few labelled transitions")
    if policy_cfg.target != "true" or policy_cfg.num_actions != ds.num_actions:
        raise ConfigError(f"agent bc --idm: the policy must choose among the data's {ds.num_actions} keys (target "
                          f"'true'), got {policy_cfg.num_actions} ({policy_cfg.target!r})")
    trans = read_transitions(data, max_episodes=max_episodes, progress=progress)
    recorded = trans.true.clone()
    cache, figures_path = out / IDM_KEYS, out / IDM_FIGURES
    if cache.is_file() and figures_path.is_file():
        saved = load_tensors(cache)
        figures = read_json(figures_path, CheckpointError, "IDM figures")
        if not torch.equal(saved.get("episode", torch.zeros(0)), trans.episode) or figures.get("config") != to_dict(idm_cfg):
            raise CheckpointError(f"{cache}: IDM keys of other data or settings than {data} and {to_dict(idm_cfg)}; "
                                  f"delete {out} or choose another --out")
        keys = saved["key"]
    else:
        idm = train_idm(trans, ds.num_actions, idm_cfg, progress=progress)
        keys = predict_keys(idm, trans)
        figures = {"config": to_dict(idm_cfg), "train": key_agreement(keys, recorded)}
        if any(e.has_actions for e in ds.episodes("val")):
            val = read_transitions(data, split="val", progress=False)
            figures["held_out"] = key_agreement(predict_keys(idm, val), val.true)
        out.mkdir(parents=True, exist_ok=True)
        save_tensors(cache, {"key": keys, "episode": trans.episode})
        atomic_write_text(figures_path, json.dumps(figures, indent=2) + "\n")
    trans.true = keys
    meta = {**_data_meta(None, data, ds, max_episodes), "kind": "idm-bc", "idm": figures,
            "label_nmi": figures["train"].get("nmi")}
    return train_bc(trans, policy_cfg, cfg, out, meta=meta, progress=progress, max_steps=max_steps)


@dataclass(frozen=True)
class DecodeResult:
    path: Path
    labels: int
    how: str
    accuracy: float  # on every transition of the data with a true action (N of them were fit on)
    seconds: float


def decode(agent_dir: str | Path, data: str | Path, cfg: DecoderConfig, *, labeller: Labeller | None = None,
           names: dict[int, str] | None = None, progress: bool = True) -> DecodeResult:
    """Fit (N > 0) or build by names (N = 0) the latent -> true decoder of ``agent_dir``'s policy."""
    agent_dir, t0 = Path(agent_dir), time.perf_counter()
    policy, meta = load_policy(agent_dir)
    if policy.config.target != "latent":
        raise ConfigError(f"{agent_dir}: its policy acts in true keys already (oracle BC, IDM BC or real-game PPO); "
                          f"nothing to decode")
    ds = Dataset(data)
    num_true = ds.num_actions or meta.get("num_true")
    if not num_true:
        raise DatasetError(f"{ds.root}: records no action count; the decoder needs the real action space")
    trans = labelled_transitions(data, agent_dir, labeller, max_episodes=meta.get("max_episodes"), progress=progress)
    if names is None and meta.get("run"):
        from playworld.play.actions import load_action_names

        names = {a.latent: a.name for a in load_action_names(meta["run"], policy.config.num_actions)}
    table, how = name_table(policy.config.num_actions, int(num_true), names, true_action_names(ds.manifest.source))
    cv: dict[str, float] = {}
    if cfg.labels == 0:
        decoder = ActionDecoder(table=table)
    else:
        decoder, how, cv = fit_best(policy, trans, int(num_true), cfg, fallback=table)
    acc = decoder_accuracy(policy, decoder, trans) if int(trans.true.max()) >= 0 else float("nan")
    path = save_decoder(agent_dir, decoder, cfg, {"num_true": int(num_true), "how": how, "accuracy": acc,
                                                   "cross_validation": cv})
    return DecodeResult(path, cfg.labels, how, acc, time.perf_counter() - t0)


@dataclass(frozen=True)
class EvalConfig:
    game: str = "coinrun"
    episodes: int = 16
    mode: str = "hard"
    max_steps: int = 1000
    seed: int = 0
    greedy: bool = False


def eval_levels(meta: dict[str, Any], episodes: int) -> list[int]:
    """``episodes`` level seeds that the agent's data holds out (its test split by level seed), none of which
    is a training level of that data."""
    from playworld.data.split import SplitRule
    from playworld.eval.heldout import held_out_levels

    rule_d = meta.get("split_rule") or {}
    rule = SplitRule(**rule_d) if rule_d.get("by") == "level" and rule_d.get("test", 0) > 0 else SplitRule()
    levels = list(held_out_levels(rule, episodes))
    seen = set(meta.get("train_levels", [])) & set(levels)
    if seen:
        raise DatasetError(f"held-out levels {sorted(seen)[:5]} are training levels of {meta.get('data')}")
    lo, hi = meta.get("train_level_range") or (0, 0)  # a real-game PPO agent's training levels, [lo, hi)
    inside = [lvl for lvl in levels if lo <= lvl < hi]
    if inside:
        raise DatasetError(f"held-out levels {inside[:5]} lie in the agent's training levels [{lo}, {hi})")
    return levels


def agent_controller(agent_dir: Path, labels: int | None, seed: int, greedy: bool,
                     loaded: tuple[PolicyNet, dict[str, Any]] | None = None) -> tuple[AgentController, str]:
    """The controller of ``agent_dir`` (its decoder for ``labels``, the most labelled one if None) and its
    row label; ``loaded``: the agent's (policy, meta) where the caller has read them already."""
    policy, meta = loaded if loaded is not None else load_policy(agent_dir)
    if policy.config.target == "true":
        label = {"ppo-real": "PPO in the real game",
                 "idm-bc": f"IDM BC, N={meta.get('idm', {}).get('config', {}).get('labels')}"}.get(
                     meta.get("kind"), "oracle BC (every true label)")
        return AgentController(policy, None, seed=seed, greedy=greedy), label
    have = available_decoders(agent_dir)
    if not have:
        raise CheckpointError(f"{agent_dir}: no decoder; run `playworld agent decode {agent_dir} --labels N` first")
    if labels is not None and labels not in have:
        raise CheckpointError(f"{agent_dir}: no decoder for {labels} labels (have {have})")
    n = have[-1] if labels is None else labels
    decoder, _ = load_decoder(agent_dir, n, policy.config.feature_dim, policy.config.num_actions)
    return AgentController(policy, decoder, seed=seed, greedy=greedy), f"latent BC, N={n}"


def evaluate(agent_dir: str | Path, cfg: EvalConfig, *, oracle: str | Path | None = None,
             also: list[Path] | tuple[Path, ...] = (), baselines: bool = True, progress: bool = True
             ) -> dict[str, Any]:
    """Every decoder of ``agent_dir`` (and the baselines, the ``oracle`` and the agents over true keys in
    ``also``) on held-out levels; writes eval.json and eval.md."""
    agent_dir = Path(agent_dir)
    policy, meta = load_policy(agent_dir)
    decoders = [None] if policy.config.target == "true" else available_decoders(agent_dir)
    if not decoders:
        raise CheckpointError(f"{agent_dir}: no decoder; run `playworld agent decode {agent_dir} --labels N` first")
    trained = trained_game(meta)
    if trained is not None and trained != cfg.game:
        raise ConfigError(f"{agent_dir}: the agent learned {trained}; evaluate it with --game {trained}")
    levels = eval_levels(meta, cfg.episodes)
    rows: list[tuple[str, Controller]] = []
    if baselines:
        rows.append(("random", RandomController(cfg.seed)))
        src = meta.get("data_source", {})
        if src.get("kind") == "procgen":
            conf = src.get("config", {})
            name = conf.get("policy", "random")
            # a lookahead behaviour replays with the plan the data was recorded with
            plan = from_dict(CollectConfig, conf, where="dataset source config").plan() if name == "lookahead" else None
            rows.append((f"behaviour ({name})", BehaviourController(name, cfg.game, len(levels), cfg.seed,
                                                                     conf.get("sticky_prob", 0.75), plan,
                                                                     conf.get("agent"))))
    if oracle is not None:
        rows.append(agent_controller(Path(oracle), None, cfg.seed, cfg.greedy)[::-1])  # type: ignore[arg-type]
    nmi_of: dict[str, float] = {}  # row -> NMI of the labels it cloned with the recorded keys, where measured
    if len({Path(o).resolve() for o in also}) < len(also):
        raise ConfigError(f"--also names the same agent twice: {', '.join(str(o) for o in also)}")
    for other in also:
        other_policy, other_meta = load_policy(Path(other))
        if other_policy.config.target != "true":
            raise ConfigError(f"{other}: --also plays agents over true keys (`agent bc --idm`, --oracle, train-real); "
                              f"evaluate a latent agent on its own")
        if trained_game(other_meta) not in (None, cfg.game):
            raise ConfigError(f"{other}: the agent learned {trained_game(other_meta)}, not {cfg.game}")
        ctrl, label = agent_controller(Path(other), None, cfg.seed, cfg.greedy, (other_policy, other_meta))
        if label in (r[0] for r in rows):  # e.g. two IDM agents of the same N from other label draws
            label = f"{label} ({Path(other).name})"
        rows.append((label, ctrl))  # type: ignore[arg-type]
        if other_meta.get("label_nmi") is not None:
            nmi_of[label] = other_meta["label_nmi"]
    for n in decoders:
        ctrl, label = agent_controller(agent_dir, n, cfg.seed, cfg.greedy, (policy, meta))
        rows.append((label, ctrl))
        if meta.get("label_nmi") is not None:
            nmi_of[label] = meta["label_nmi"]
    results: dict[str, Any] = {"game": cfg.game, "mode": cfg.mode, "levels": levels, "max_steps": cfg.max_steps,
                               "label_nmi": meta.get("label_nmi"), "rows": {}}
    for label, ctrl in rows:
        t0 = time.perf_counter()
        stats = play_levels(ctrl, cfg.game, levels, mode=cfg.mode, max_steps=cfg.max_steps, seed=cfg.seed,
                            progress=progress, desc=label)
        summary = stats.summary(seed=cfg.seed)
        results["rows"][label] = {**{k: v.to_json() for k, v in summary.items()},
                                  "truncated": int(stats.truncated.sum()), "seconds": time.perf_counter() - t0,
                                  "returns": stats.ret.tolist(), "label_nmi": nmi_of.get(label)}
        if progress:
            print(f"{label}: return {summary['return']}, success {summary['success']}, "
                  f"length {summary['length']}")
    atomic_write_text(agent_dir / "eval.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(agent_dir / "eval.md", markdown_table(results))
    _plot(agent_dir, results)
    return results


def markdown_table(results: dict[str, Any]) -> str:
    def cell(e: dict[str, float]) -> str:
        return f"{e['mean']:.2f} [{e['low']:.2f}, {e['high']:.2f}]"

    info = results.get("label_nmi")
    note = "" if info is None else f"; the latent labels' NMI with the recorded keys {info:.3f}"
    lines = [f"{results['game']} ({results['mode']}), {len(results['levels'])} held-out levels, "
             f"95% bootstrap intervals over episodes{note}", "",
             "| agent | return | success | episode length | cloned labels' NMI with the keys |", "|---|---|---|---|---|"]
    for label, r in results["rows"].items():
        nmi = "" if r.get("label_nmi") is None else f"{r['label_nmi']:.3f}"
        lines.append(f"| {label} | {cell(r['return'])} | {cell(r['success'])} | {cell(r['length'])} | {nmi} |")
    return "\n".join(lines) + "\n"


def _plot(agent_dir: Path, results: dict[str, Any]) -> None:
    """Label-efficiency plot (return against N) when matplotlib is installed and there are 2+ decoders."""
    curves = {name: sorted((int(k.split("N=")[1].split()[0]), r["return"]) for k, r in results["rows"].items()
                           if k.startswith(prefix))
              for name, prefix in (("latent BC + decoder", "latent BC, N="), ("IDM BC", "IDM BC, N="))}
    if len(curves["latent BC + decoder"]) < 2:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, pts in curves.items():
        if not pts:
            continue
        xs = np.array([max(n, 1) for n, _ in pts], dtype=float)
        ys = np.array([e["mean"] for _, e in pts])
        err = np.array([[e["mean"] - e["low"] for _, e in pts], [e["high"] - e["mean"] for _, e in pts]])
        ax.errorbar(xs, ys, yerr=err, marker="o" if name.startswith("latent") else "s", label=name)
    baselines = [(label, r) for label, r in results["rows"].items() if "N=" not in label]
    for i, (label, r) in enumerate(baselines):
        ax.axhline(r["return"]["mean"], ls="--", lw=1, label=label, color=f"C{i + 2}")
    ax.set_xscale("log")
    ax.set_xlabel("labelled transitions N (N=0 plotted at 1)")
    ax.set_ylabel("mean return (held-out levels)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = agent_dir / ".label_efficiency.png.tmp"
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    tmp.replace(agent_dir / "label_efficiency.png")


__all__ = ["clone", "clone_idm", "decode", "label_information", "label_warning", "MIN_LABEL_NMI", "evaluate", "EvalConfig",
           "DecodeResult", "labelled_transitions", "eval_levels", "markdown_table", "EpisodeStats"]
