"""All of `playworld eval` on one world and one dataset split -> the metrics.json dict and the media.

Order: rollout clips batch by batch (tokenizer and rollout figures, and the shifts behind "motion
kept"; stops taking batches when ``max_minutes`` is spent), the action clips (latent vs true actions),
then the fixed-size parts (consistency, memory, held keys: key response, liveness, realism; grid,
speed). Every figure is an Estimate with a bootstrap interval over the evaluated episodes (or start
frames, or timed frames, as each section says).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from playworld.bars import progress_bar
from playworld.config import to_dict
from playworld.data.loader import ClipDataset
from playworld.errors import TrainingError
from playworld.eval import actions as act
from playworld.eval.change import ChangeSums, change_kept, moving_psnr
from playworld.eval.clips import EvalClips, choose_clips
from playworld.eval.compare import SPEED_FIGURES
from playworld.eval.config import EvalConfig
from playworld.eval.control import (
    Walk,
    action_motion,
    motion_silhouettes,
    ms_per_frame,
    press_each_action,
    return_psnr,
    walk,
)
from playworld.eval.envwalk import default_opposites, key_classes, procgen_hold, procgen_press, procgen_walk
from playworld.eval.kept import motion_kept
from playworld.eval.keys import KeyCurves, summarise, windows
from playworld.eval.motion import opposite_pairs
from playworld.eval.realgame import held_transitions
from playworld.eval.realism import FEATURES, real_floor, realism
from playworld.eval.realkeys import STEPS as REAL_KEY_STEPS
from playworld.eval.realkeys import PairedHolds, step_curves, summarise_contrast, summarise_paired
from playworld.eval.rollouts import KINDS, BatchFigures, EvalWorld, device_of, evaluate_batch
from playworld.eval.schema import FORMAT, NEAR_ONE, SCHEMA_VERSION, keep_headline_replicates
from playworld.eval.stats import Estimate, bootstrap, psnr, psnr_of_mean_mse
from playworld.maskgit import play_sampling
from playworld.models.lam import check_action_usage

if TYPE_CHECKING:
    from tqdm import tqdm


@dataclass
class EvalOutput:
    """metrics: the metrics.json object; gifs: name -> (T, H, W, 3) uint8 frames; strips: name ->
    (rows, cols, H, W, 3) uint8 still images (the memory walk)."""

    metrics: dict[str, Any]
    gifs: dict[str, np.ndarray] = field(default_factory=dict)
    strips: dict[str, np.ndarray] = field(default_factory=dict)


def _grouped(groups: np.ndarray, cfg: EvalConfig, stat: Any, bias_correct: bool = False) -> Estimate:
    """Cluster bootstrap: resample the groups (episodes) with replacement; ``stat(group_ids)`` -> float."""
    return bootstrap(np.unique(groups), seed=cfg.seed, resamples=cfg.bootstrap, statistic=stat,
                     bias_correct=bias_correct)


class Evaluation:
    """One evaluation run; :meth:`run` -> :class:`EvalOutput`. Sections are methods that fill
    ``self.metrics``; state shared between them (clips, mapping, prompts) lives on ``self``."""

    def __init__(self, world: EvalWorld, clips: ClipDataset, cfg: EvalConfig, *, run: str = "", data: str = "",
                 device: str = "cpu") -> None:
        if clips.clip_len != cfg.clip_len:
            raise ValueError(f"clips of {clips.clip_len} frames; this config needs {cfg.clip_len}")
        # decoding fields left to the world take what it plays at, so that the settings record what was measured
        cfg = cfg.resolved(getattr(getattr(world, "config", None), "sampling", None) or play_sampling())
        self.world, self.clips, self.cfg = world, clips, cfg
        self.deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else None
        self.out = EvalOutput(metrics={
            "format": FORMAT, "schema_version": SCHEMA_VERSION,
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "run": run, "data": data, "settings": to_dict(cfg), "warnings": []})
        self.device = device
        self.cmax = max(cfg.context)
        self.mapping: dict[int, int] = {}
        self.conf: np.ndarray | None = None

    def est(self, values: np.ndarray) -> dict[str, Any]:
        return bootstrap(values, seed=self.cfg.seed, resamples=self.cfg.bootstrap).to_json(replicates=True)

    def bar(self, total: int, desc: str) -> tqdm:
        return progress_bar(total=total, desc=desc, unit="clip", disable=not self.cfg.progress, leave=False)

    def run(self) -> EvalOutput:
        cfg = self.cfg
        self.chosen: EvalClips = choose_clips(self.clips, cfg.episodes, cfg.action_clips, cfg.seed)
        figs = self.rollout_pass()
        self.tokenizer_section(figs)
        self.rollout_section(figs)
        self.actions_section(figs)
        self.prompts = self.clips.get_batch(self.chosen.rollout[: max(cfg.consistency_starts, cfg.memory_starts,
                                                                      cfg.grid_starts, cfg.key_starts)].tolist())[:, :self.cmax]
        self.consistency_section()
        self.memory_section()
        self.motion_section(figs)
        self.speed_section(figs)
        self.media(figs)
        self.headline()
        keep_headline_replicates(self.out.metrics)
        return self.out

    # -- rollouts and tokenizer ---------------------------------------------------------------------------
    def rollout_pass(self) -> list[BatchFigures]:
        cfg, idx = self.cfg, self.chosen.rollout
        figs: list[BatchFigures] = []
        with self.bar(len(idx), "rollouts") as bar:
            for s in range(0, len(idx), cfg.batch):
                if figs and self.deadline is not None and time.monotonic() > self.deadline:
                    break
                video = self.clips.get_batch(idx[s:s + cfg.batch].tolist())
                figs.append(evaluate_batch(self.world, video, cfg.context, cfg.horizon, cfg.seed + s, cfg.motion))
                bar.update(len(video))
        n = sum(len(f.recon_psnr) for f in figs)
        self.done = n  # episodes evaluated: the first n of self.chosen.rollout
        self.out.metrics["counts"] = {"episodes": n, "rollout_clips": n, "action_transitions": 0,
                                      "truncated_by_time": n < len(idx)}
        return figs

    def tokenizer_section(self, figs: list[BatchFigures]) -> None:
        counts = np.concatenate([f.code_counts for f in figs])  # (N, K)
        clips = np.arange(len(counts))

        def usage(ids: np.ndarray) -> float:
            return float((counts[ids].sum(0) > 0).mean())

        def perplexity(ids: np.ndarray) -> float:
            p = counts[ids].sum(0) / max(counts[ids].sum(), 1)
            return float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))

        cfg = self.cfg
        self.out.metrics["tokenizer"] = {
            "num_codes": int(counts.shape[1]),
            "psnr": self.est(np.concatenate([f.recon_psnr for f in figs])),
            "ssim": self.est(np.concatenate([f.recon_ssim for f in figs])),
            "code_usage": bootstrap(clips, seed=cfg.seed, resamples=cfg.bootstrap, statistic=usage,
                                    bias_correct=True).to_json(replicates=True),
            "perplexity": bootstrap(clips, seed=cfg.seed, resamples=cfg.bootstrap, statistic=perplexity,
                                    bias_correct=True).to_json(replicates=True),
            "code_counts": counts.sum(0).tolist(),
            **self.change_part([f.recon_change for f in figs]),
        }

    def change_part(self, parts: list[ChangeSums | None], baseline: list[ChangeSums | None] | None = None
                    ) -> dict[str, Any]:
        """Change kept and moving PSNR (:mod:`playworld.eval.change`) over every clip's transitions; with
        ``baseline``, also the moving PSNR of copying frame t-1."""
        cfg = self.cfg
        sums = ChangeSums.cat([p for p in parts if p is not None])
        out = {"change_kept": change_kept(sums, seed=cfg.seed, resamples=cfg.bootstrap).to_json(replicates=True),
               "moving_psnr": _opt_json(moving_psnr(sums, seed=cfg.seed, resamples=cfg.bootstrap))}
        if baseline is not None:
            copy = ChangeSums.cat([p for p in baseline if p is not None])
            out["copy_moving_psnr"] = _opt_json(moving_psnr(copy, seed=cfg.seed, resamples=cfg.bootstrap))
        return out

    def rollout_section(self, figs: list[BatchFigures]) -> None:
        contexts = {}
        for c in self.cfg.context:
            entry: dict[str, Any] = {}
            for metric in ("psnr", "ssim"):
                per = {k: np.concatenate([getattr(f, metric)[c][k] for f in figs]) for k in KINDS}  # (N, horizon)
                entry[metric] = {k: [self.est(v[:, t]) for t in range(v.shape[1])] for k, v in per.items()}
                if metric == "psnr":
                    delta = per["inferred"] - per["random"]
                    entry["delta_psnr"] = [self.est(delta[:, t]) for t in range(delta.shape[1])]
                    # PSNR of the mean squared error: the mean of per-clip PSNR lets a few static clips
                    # (an exact copy scores the 100 dB cap) decide, which flatters copy-last
                    entry["psnr_of_mean_mse"] = {
                        k: [bootstrap(v[:, t], seed=self.cfg.seed, resamples=self.cfg.bootstrap,
                                      statistic=psnr_of_mean_mse).to_json(replicates=True)
                            for t in range(v.shape[1])]
                        for k, v in per.items()}
            contexts[str(c)] = entry
        self.out.metrics["rollouts"] = {"horizon": self.cfg.horizon, "contexts": contexts}

    # -- latent vs true actions -----------------------------------------------------------------------------
    def actions_section(self, figs: list[BatchFigures]) -> None:
        cfg, world = self.cfg, self.world
        keep = self.chosen.action_group < self.done
        idx, groups = self.chosen.action[keep], self.chosen.action_group[keep]
        latent, true, feats, tgroups = [], [], [], []
        has_features = callable(getattr(world.lam, "features", None))
        lam_device = device_of(world.lam)
        with self.bar(len(idx), "latent actions") as bar, torch.no_grad():
            for s in range(0, len(idx), cfg.batch):
                part = idx[s:s + cfg.batch]
                unit = (self.clips.get_batch(part.tolist()).float() / 255).to(lam_device)
                latent.append(world.lam.infer_actions(unit).long().cpu().numpy())  # (B, T-1)
                if has_features:
                    feats.append(world.lam.features(unit).float().cpu().numpy())  # (B, T-1, D)
                true.append(np.stack([self.clips.clip_actions(int(i))[:-1] for i in part]))  # (B, T-1)
                tgroups.append(np.repeat(groups[s:s + cfg.batch], unit.shape[1] - 1))
                bar.update(len(part))
        lat = np.concatenate(latent).ravel()
        k = world.num_actions
        where = f"{self.out.metrics['run']} on {self.out.metrics['data']}:{cfg.split}"
        try:
            check_action_usage(torch.from_numpy(np.concatenate([lat, *[f.inferred.ravel() for f in figs]])), k, where)
        except TrainingError as e:
            if not cfg.allow_collapsed:
                raise
            self.out.metrics["warnings"].append(str(e))
        section: dict[str, Any] = {
            "available": False, "reason": None, "num_latent": k, "num_true": self.clips.dataset.num_actions,
            "latent_usage": np.bincount(lat, minlength=k).tolist(), "mapping": None, "mapping_accuracy": None,
            "majority_accuracy": None, "nmi": None, "probe_accuracy": None, "probe_majority_accuracy": None,
            "probe_reason": None, "confusion": None}
        self.out.metrics["actions"] = section
        tru, grp = np.concatenate(true).ravel(), np.concatenate(tgroups)
        valid = tru >= 0
        num_true = self.clips.dataset.num_actions
        if num_true is None or not valid.any():
            section["reason"] = f"{self.clips.dataset.root}: no recorded actions in split {cfg.split!r}"
            return
        lat, tru, grp = lat[valid], tru[valid], grp[valid]
        self.out.metrics["counts"]["action_transitions"] = int(valid.sum())
        conf = act.confusion(lat, tru, k, num_true)
        mapping, _ = act.best_mapping(conf)
        self.mapping, self.conf = mapping, conf
        ids = np.unique(grp)
        per_group = np.stack([act.confusion(lat[grp == g], tru[grp == g], k, num_true) for g in ids])  # (G, K, A)
        pos = {g: i for i, g in enumerate(ids)}
        hit = np.zeros((k, num_true))
        for lt, tr in mapping.items():
            hit[lt, tr] = 1

        def conf_of(sel: np.ndarray) -> np.ndarray:
            return per_group[[pos[g] for g in sel]].sum(0)

        def accuracy(sel: np.ndarray) -> float:  # the mapping found on all data, scored on a resample
            c = conf_of(sel)
            return float((c * hit).sum() / c.sum())

        def majority(sel: np.ndarray) -> float:
            c = conf_of(sel)
            return float(c.sum(0).max() / c.sum())

        section.update({
            "available": True, "mapping": [[int(a), int(b)] for a, b in sorted(mapping.items())],
            "mapping_accuracy": _grouped(grp, cfg, accuracy).to_json(replicates=True),
            "majority_accuracy": _grouped(grp, cfg, majority).to_json(replicates=True),
            "nmi": _grouped(grp, cfg, lambda sel: act.nmi(conf_of(sel)),
                            bias_correct=True).to_json(replicates=True),
            "confusion": conf.tolist()})
        if not has_features:
            section["probe_reason"] = "the LAM exposes no features(video) for a linear probe"
        elif len(ids) < 2:
            section["probe_reason"] = "a probe needs at least 2 episodes (one to train, one to score)"
        else:
            x = np.concatenate(feats).reshape(-1, feats[0].shape[-1])[valid]
            probe = act.linear_probe(x, tru, grp, num_true, seed=cfg.seed)
            pg = probe.groups

            def probe_acc(sel: np.ndarray) -> float:
                return float(np.concatenate([probe.correct[pg == g] for g in sel]).mean())

            section["probe_accuracy"] = _grouped(pg, cfg, probe_acc).to_json(replicates=True)
            section["probe_majority_accuracy"] = probe.majority

    # -- driving the world ---------------------------------------------------------------------------------
    def consistency_section(self) -> None:
        cfg = self.cfg
        prompts = self.prompts[:cfg.consistency_starts]
        frames = press_each_action(self.world, prompts, cfg.consistency_steps, cfg.seed, cfg.batch)
        motion = action_motion(frames, cfg.motion)  # (S, K, 2)
        s, k = motion.shape[:2]
        sil = motion_silhouettes(motion)  # (S, K)
        self.mean_motion = motion.mean(0)  # (K, 2)
        self.out.metrics["consistency"] = {
            "per_action": [self.est(sil[:, a]) for a in range(k)], "overall": self.est(sil.mean(1)),
            "mean_motion": self.mean_motion.tolist(), "starts": s, "steps": cfg.consistency_steps,
            "real": self.real_consistency()}

    def real_consistency(self) -> dict[str, Any]:
        """The same consistency in the real game, what the game itself scores under this LAM's mapping:
        from settled starts of the evaluated levels, each latent action's mapped true action is pressed as
        often (so two latents mapped to keys that move alike, e.g. CoinRun's NOOP and its fire keys, score as
        the game makes them); and the model's consistency from those same real starts, beside it. The
        ``class_`` figures count latent actions whose mapped keys give identical real frames from every start
        (CoinRun's NOOP, DOWN and fire keys) as one action: the consistency the game's own keys allow."""
        cfg, ds = self.cfg, self.clips.dataset
        k = self.world.num_actions
        real: dict[str, Any] = {"available": False, "reason": None, "levels": 0, "true_actions": None,
                                "overall": None, "per_action": None, "model_overall": None, "classes": None,
                                "class_overall": None, "model_class_overall": None}
        seeds = self.level_seeds(cfg.consistency_starts)
        real["reason"] = self._press_reason(k, seeds)
        if real["reason"] is not None:
            return real
        true = [self.mapping[a] for a in range(k)]
        try:
            rp = procgen_press(ds.manifest.source, seeds, true, cfg.consistency_steps, self.cmax)
        except (ImportError, RuntimeError) as e:
            real["reason"] = f"the real environment could not be pressed: {e}"
            return real
        classes = key_classes(rp.frames)
        model = press_each_action(self.world, torch.from_numpy(rp.prompts), cfg.consistency_steps, cfg.seed,
                                  cfg.batch)
        real_motion = action_motion(torch.from_numpy(rp.frames), cfg.motion)  # (S, K, 2)
        model_motion = action_motion(model, cfg.motion)
        sil = motion_silhouettes(real_motion)  # (S, K)
        real.update({"available": True, "levels": len(rp.level_seeds), "true_actions": true,
                     "overall": self.est(sil.mean(1)), "per_action": [self.est(sil[:, a]) for a in range(k)],
                     "model_overall": self.est(motion_silhouettes(model_motion).mean(1)), "classes": classes,
                     "class_overall": self.est(motion_silhouettes(real_motion, classes).mean(1)),
                     "model_class_overall": self.est(motion_silhouettes(model_motion, classes).mean(1))})
        return real

    def _press_reason(self, k: int, seeds: list[int]) -> str | None:
        """Why each of the ``k`` latent actions' mapped keys cannot be pressed on ``seeds``, or None."""
        reason = self._replay_reason()
        if reason is not None:
            return reason
        if not self.mapping:
            return "no recorded true actions, so no mapping of latent actions to real ones"
        if len(self.mapping) < k:
            return (f"the mapping gives only {len(self.mapping)} of the {k} latent actions a true action "
                    "(fewer true actions than latent ones)")
        if not seeds:
            return f"{self.clips.dataset.root}: the evaluated episodes have no level seeds"
        return None

    def _replay_reason(self) -> str | None:
        """Why the real game cannot be replayed for this evaluation's data, or None if it can."""
        ds = self.clips.dataset
        kind = ds.manifest.source.get("kind")
        if not self.cfg.real_env:
            return "turned off (--no-real-env)"
        if kind != "procgen":
            return f"{ds.root}: data of kind {kind!r} cannot be replayed (Procgen only)"
        return None

    def level_seeds(self, n: int) -> list[int]:
        """The level seeds of the first ``n`` distinct evaluated levels (in rollout order)."""
        by_index = {e.index: e for e in self.clips.episodes}
        levels = (by_index[self.clips.locate(int(i))[0]].level_seed for i in self.chosen.rollout[:self.done])
        return list(dict.fromkeys(s for s in levels if s is not None))[:n]

    def latent_for(self, true_action: int) -> int:
        """The latent action the mapping gives ``true_action`` (or, if it got none, the one that most
        often co-occurs with it)."""
        for lt, tr in self.mapping.items():
            if tr == true_action:
                return lt
        assert self.conf is not None
        return int(self.conf[:, true_action].argmax())

    def memory_section(self) -> None:
        cfg = self.cfg
        true_pairs = cfg.opposite_pairs()
        source = "given"
        if true_pairs is None:
            true_pairs, source = default_opposites(self.clips.dataset.manifest.source), "game"
        walks: list[tuple[Walk, list[int] | None]] = []
        if true_pairs and self.conf is not None:
            num_true = self.conf.shape[1]
            for a, b in true_pairs:
                if max(a, b) >= num_true:
                    raise ValueError(f"--opposites {a}:{b}: the dataset has only {num_true} true actions")
                la, lb = self.latent_for(a), self.latent_for(b)
                if la != lb:
                    walks += [(Walk(la, lb), [a, b]), (Walk(lb, la), [b, a])]
            source = f"mapping of true opposites ({source})"
        if not walks:
            source = "measured motion (no true actions, or they map to one latent action)"
            walks = [(Walk(a, b), None) for p in opposite_pairs(self.mean_motion) for a, b in (p, p[::-1])]
        real: dict[str, Any] = {"available": False, "reason": None, "levels": 0, "return_psnr": None,
                                "model_return_psnr": None, "model_vs_real_psnr": None}
        section = {"k": cfg.memory_k, "pairs_from": source, "model_return_psnr": None, "real": real,
                   "walks": [{"there": w.there, "back": w.back, "true": t} for w, t in walks]}
        self.out.metrics["memory"] = section
        if not walks:
            self.out.metrics["warnings"].append("memory: no pair of latent actions undo each other")
            real["reason"] = "no opposite latent actions"
            return
        prompts = self.prompts[:cfg.memory_starts]
        frames = walk(self.world, prompts, [w for w, _ in walks], cfg.memory_k, cfg.seed, cfg.batch)
        section["model_return_psnr"] = self.est(return_psnr(frames).mean(0))  # per start, mean over walks
        self.out.strips["memory_model"] = frames[0, :4].numpy()  # (rows, 3, H, W, C)
        self.real_walk(walks, real)

    def real_walk(self, walks: list[tuple[Walk, list[int] | None]], real: dict[str, Any]) -> None:
        cfg, ds = self.cfg, self.clips.dataset
        src = ds.manifest.source
        first = next(((w, t) for w, t in walks if t is not None), None)
        real["reason"] = self._replay_reason()
        if real["reason"] is not None:
            return
        if first is None:
            real["reason"] = "no true opposite actions to walk with"
            return
        seeds = self.level_seeds(cfg.memory_starts)
        if not seeds:
            real["reason"] = f"{ds.root}: the evaluated episodes have no level seeds"
            return
        (w, (a, b)) = first
        try:
            rw = procgen_walk(src, seeds, a, b, cfg.memory_k, self.cmax)
        except (ImportError, RuntimeError) as e:
            real["reason"] = f"the real environment could not be walked: {e}"
            return
        model = walk(self.world, torch.from_numpy(rw.prompts), [w], cfg.memory_k, cfg.seed, cfg.batch)[0]
        truth = torch.from_numpy(rw.frames).float() / 255
        mf = model.float() / 255
        real.update({"available": True, "levels": len(rw.level_seeds),
                     "return_psnr": self.est(psnr(truth[:, 2], truth[:, 0]).numpy()),
                     "model_return_psnr": self.est(psnr(mf[:, 2], mf[:, 0]).numpy()),
                     "model_vs_real_psnr": self.est(psnr(mf[:, 2], truth[:, 2]).numpy())})
        self.out.strips["memory_real"] = rw.frames[:4]
        self.out.strips["memory_model_on_real"] = model[:4].numpy()

    # -- motion and liveness ------------------------------------------------------------------------------------
    def motion_section(self, figs: list[BatchFigures]) -> None:
        """Motion kept by the tokenizer and by teacher-forced dynamics; key response, liveness and realism
        of held keys against the real game (docs/eval.md, "Motion and liveness")."""
        cfg = self.cfg
        est = {"cutoff": cfg.motion_cutoff, "window": cfg.motion_window}
        offsets = np.cumsum([0] + [len(f.recon_psnr) for f in figs])

        def flat(name: str) -> tuple[np.ndarray, np.ndarray]:  # (N, 2) shifts and (N,) episode of each
            parts = [getattr(f, name) for f in figs]  # each (B, T', 2)
            groups = [np.repeat(np.arange(o, o + p.shape[0]), p.shape[1]) for o, p in zip(offsets, parts)]
            return np.concatenate([p.reshape(-1, 2) for p in parts]), np.concatenate(groups)

        real, groups = flat("real_shift")
        tf_real, tf_groups = flat("tf_real_shift")
        section: dict[str, Any] = {
            "estimator": est,
            "tokenizer_kept": motion_kept(flat("recon_shift")[0], real, groups, seed=cfg.seed,
                                          resamples=cfg.bootstrap).to_json(replicates=True),
            "dynamics_kept": motion_kept(flat("tf_shift")[0], tf_real, tf_groups, seed=cfg.seed,
                                         resamples=cfg.bootstrap).to_json(replicates=True),
            "dynamics_change": self.change_part([f.tf_change for f in figs], [f.copy_change for f in figs])}
        self.out.metrics["motion"] = section
        section["keys"], gen = self.keys_part()
        section["keys"]["real_starts"] = self.real_keys_part()
        section["realism"] = self.realism_part(gen)

    def keys_part(self) -> tuple[dict[str, Any], np.ndarray]:
        """Every latent action held ``key_steps`` steps -> the keys object and the generated frames
        (S, K, 1+L, H, W, C) uint8."""
        cfg = self.cfg
        frames = press_each_action(self.world, self.prompts[:cfg.key_starts], cfg.key_steps, cfg.seed, cfg.batch)
        curves = KeyCurves.measure(frames, cfg.motion)
        s, k, steps = curves.change.shape
        episodes = [self.clips.locate(int(i))[0] for i in self.chosen.rollout[:self.done]]
        self.held = held_transitions(self.clips.dataset, episodes, cfg.real_hold, cfg.motion)
        real = self.held.reference(self.mapping, seed=cfg.seed, resamples=cfg.bootstrap)
        reason = None
        if not self.mapping:
            reason = "no recorded true actions, so no mapping of latent actions to real ones"
        elif not real:
            reason = f"no mapped true action is held for {cfg.real_hold}+ frames in the evaluated episodes"
        summary = summarise(curves, real, seed=cfg.seed, resamples=cfg.bootstrap)
        wins = windows(steps)
        per_action = []
        for a in range(k):
            entry: dict[str, Any] = {"latent": a, "true": self.mapping.get(a), "real": None}
            for name, (lo, hi) in wins.items():
                shift, change = curves.window(lo, hi)
                entry[name] = {"dy": self.est(shift[:, a, 0]), "dx": self.est(shift[:, a, 1]),
                               "change": self.est(change[:, a])}
            if a in real:
                entry["real"] = real[a].to_json(replicates=True)
            per_action.append(entry)

        keys = {
            "starts": s, "steps": steps, "real_hold": cfg.real_hold,
            "windows": {n: list(w) for n, w in wins.items()},
            "real_available": bool(real), "real_reason": reason,
            "response": {n: _opt_json(e) for n, e in summary.response.items()},
            "liveness": {n: _opt_json(e) for n, e in summary.liveness.items()},
            "change": {n: e.to_json(replicates=True) for n, e in summary.change.items()},
            "response_actions": summary.response_actions, "liveness_actions": summary.liveness_actions,
            "per_action": per_action,
            "curves": {"shift": curves.shift.mean(0).tolist(), "change": curves.change.mean(0).tolist()},
        }
        return keys, frames.numpy()

    def real_keys_part(self) -> dict[str, Any]:
        """Every latent action and its mapped true key held :data:`REAL_KEY_STEPS` steps by the world and by
        the real game from the same settled starts of the evaluated levels, paired start by start
        (:mod:`playworld.eval.realkeys`)."""
        cfg = self.cfg
        k = self.world.num_actions
        part: dict[str, Any] = {"available": False, "reason": None, "levels": 0, "steps": REAL_KEY_STEPS,
                                "true_actions": None, "response": None, "agreement": None, "liveness": None,
                                "contrast": None, "per_action": None, "curves": None, "alive_share": None,
                                "displacement": None}
        seeds = self.level_seeds(cfg.real_key_starts) if cfg.real_key_starts else []
        part["reason"] = "turned off (--real-key-starts 0)" if not cfg.real_key_starts else self._press_reason(k, seeds)
        if part["reason"] is not None:
            return part
        true = [self.mapping[a] for a in range(k)]
        try:
            rh = procgen_hold(self.clips.dataset.manifest.source, seeds, true, REAL_KEY_STEPS, self.cmax)
        except (ImportError, RuntimeError) as e:
            part["reason"] = f"the real environment could not be played: {e}"
            return part
        world = press_each_action(self.world, torch.from_numpy(rh.prompts), REAL_KEY_STEPS, cfg.seed, cfg.batch)
        wc, rc = KeyCurves.measure(world, cfg.motion), KeyCurves.measure(torch.from_numpy(rh.frames), cfg.motion)
        holds = PairedHolds(wc.shift, wc.change, rc.shift, rc.change, rh.alive)
        summary = summarise_paired(holds, seed=cfg.seed, resamples=cfg.bootstrap)
        contrast = summarise_contrast(world, torch.from_numpy(rh.frames), rh.alive, seed=cfg.seed,
                                      resamples=cfg.bootstrap)

        part.update({"available": True, "levels": len(rh.level_seeds), "true_actions": true,
                     **{fig: {n: _opt_json(e) for n, e in getattr(summary, fig).items()}
                        for fig in ("response", "agreement", "liveness", "displacement")},
                     "contrast": {fig: {n: _opt_json(e) for n, e in by.items()} for fig, by in contrast.items()},
                     "per_action": summary.per_action, "curves": step_curves(holds),
                     "alive_share": float(rh.alive.mean())})
        return part

    def realism_part(self, gen: np.ndarray) -> dict[str, Any]:
        """Fréchet distance (fixed hand-crafted features, :mod:`playworld.eval.realism`) of the held-key
        frames from step 20 on against every frame of the evaluated real episodes; the interval resamples
        start frames. ``real_vs_real``: the same distance between the two halves of the real episodes (the
        floor at this sample size)."""
        cfg = self.cfg
        first = windows(gen.shape[2] - 1)["late"][0]
        fd = realism(self.held.frames, gen[:, :, first:], seed=cfg.seed, resamples=cfg.bootstrap)
        return {"frechet": fd.to_json(replicates=True),
                "real_vs_real": real_floor(self.held.frames, self.held.frame_episode),
                "steps": [first, gen.shape[2] - 1], "generated_frames": int(np.prod(gen[:, :, first:].shape[:3])),
                "real_frames": len(self.held.frames),
                "features": f"colour histograms and moments, gradient and Laplacian energy, 4x4 grey layout ({FEATURES})"}

    def speed_section(self, figs: list[BatchFigures]) -> None:
        cfg = self.cfg
        times = ms_per_frame(self.world, self.prompts[:1], cfg.speed_frames, cfg.seed)
        stepped = sum(f.frames_stepped for f in figs)
        self.out.metrics["speed"] = {
            "ms_per_frame": self.est(times),
            "ms_per_frame_batched": 1000 * sum(f.step_seconds for f in figs) / max(stepped, 1),
            "batch": cfg.batch, "maskgit_steps": cfg.maskgit_steps, "temperature": cfg.temperature,
            "copy_penalty": cfg.copy_penalty, "device": self.device, "threads": torch.get_num_threads()}

    # -- media and headline --------------------------------------------------------------------------------------
    def media(self, figs: list[BatchFigures]) -> None:
        cfg = self.cfg
        rows = {k: np.concatenate([f.frames[k] for f in figs])[:cfg.gif_clips] for k in ("truth", "inferred", "random")}
        self.out.gifs["rollouts"] = tile(np.stack([rows["truth"], rows["inferred"], rows["random"]], 1))
        grid = press_each_action(self.world, self.prompts[:cfg.grid_starts], cfg.grid_steps, cfg.seed, cfg.batch)
        self.out.gifs["action_grid"] = tile(grid.numpy())

    def headline(self) -> None:
        m = self.out.metrics
        ctx = m["rollouts"]["contexts"][str(min(self.cfg.context))]
        real = m["consistency"]["real"]
        t = min(4, self.cfg.horizon)
        head = {
            "tokenizer_psnr": (m["tokenizer"]["psnr"], "higher"),
            f"psnr_inferred_t{t}": (ctx["psnr"]["inferred"][t - 1], "higher"),
            f"ssim_inferred_t{t}": (ctx["ssim"]["inferred"][t - 1], "higher"),
            f"delta_psnr_t{t}": (ctx["delta_psnr"][t - 1], "higher"),
            f"psnr_mse_inferred_t{t}": (ctx["psnr_of_mean_mse"]["inferred"][t - 1], "higher"),
            f"psnr_mse_copy_last_t{t}": (ctx["psnr_of_mean_mse"]["copy_last"][t - 1], "higher"),
            f"delta_psnr_t{self.cfg.horizon}": (ctx["delta_psnr"][-1], "higher"),
            "mapping_accuracy": (m["actions"]["mapping_accuracy"], "higher"),
            "nmi": (m["actions"]["nmi"], "higher"),
            "probe_accuracy": (m["actions"]["probe_accuracy"], "higher"),
            "consistency": (m["consistency"]["overall"], "higher"),
            "consistency_real_game": (real["overall"], "higher"),
            "consistency_on_real_starts": (real["model_overall"], "higher"),
            "consistency_classes_real_game": (real["class_overall"], "higher"),
            "consistency_classes_on_real_starts": (real["model_class_overall"], "higher"),
            "memory_return_psnr": (m["memory"]["model_return_psnr"], "higher"),
            "tokenizer_motion_kept_dx": (m["motion"]["tokenizer_kept"]["slope"]["dx"], "higher"),
            "tokenizer_motion_kept_dy": (m["motion"]["tokenizer_kept"]["slope"]["dy"], "higher"),
            "dynamics_motion_kept_dx": (m["motion"]["dynamics_kept"]["slope"]["dx"], "higher"),
            "dynamics_motion_kept_dy": (m["motion"]["dynamics_kept"]["slope"]["dy"], "higher"),
            "tokenizer_change_kept": (m["tokenizer"]["change_kept"], NEAR_ONE),
            "tokenizer_moving_psnr": (m["tokenizer"]["moving_psnr"], "higher"),
            "dynamics_change_kept": (m["motion"]["dynamics_change"]["change_kept"], NEAR_ONE),
            "dynamics_moving_psnr": (m["motion"]["dynamics_change"]["moving_psnr"], "higher"),
            "key_response_early": (m["motion"]["keys"]["response"]["early"], NEAR_ONE),
            "key_response_late": (m["motion"]["keys"]["response"]["late"], NEAR_ONE),
            "liveness_late": (m["motion"]["keys"]["liveness"]["late"], NEAR_ONE),
            "liveness_far": (m["motion"]["keys"]["liveness"]["far"], NEAR_ONE),
            **{f"{fig}_{w}_real_starts": ((m["motion"]["keys"]["real_starts"][part] or {}).get(w), better)
               for fig, part, better in (("key_response", "response", NEAR_ONE), ("key_agreement", "agreement", "higher"),
                                         ("liveness", "liveness", NEAR_ONE),
                                         ("key_displacement", "displacement", NEAR_ONE)) for w in ("early", "late")},
            **{f"key_contrast{suffix}_{w}_real_starts": (((m["motion"]["keys"]["real_starts"]["contrast"] or {})
                                                         .get(fig) or {}).get(w), better)
               for suffix, fig, better in (("", "agreement", "higher"), ("_ratio", "ratio", NEAR_ONE))
               for w in ("early", "late")},
            "realism_frechet": (m["motion"]["realism"]["frechet"], "lower"),
            "ms_per_frame": (m["speed"]["ms_per_frame"], "lower"),
        }
        m["headline"] = {k: {**v, "better": b} for k, (v, b) in head.items() if v is not None}
        for k in SPEED_FIGURES:  # timings are never paired (playworld.eval.compare): their replicates go
            m["headline"].get(k, {}).pop("replicates", None)


def _opt_json(e: Estimate | None) -> dict[str, Any] | None:
    """An optional estimate as metrics.json writes it (with replicates; null where there is none)."""
    return None if e is None else e.to_json(replicates=True)


def tile(video: np.ndarray, pad: int = 1) -> np.ndarray:
    """(R, C, T, H, W, 3) uint8 -> (T, R*(H+2p), C*(W+2p), 3): a grid of clips with white borders."""
    r, c, t, h, w, _ = video.shape
    out = np.full((r, c, t, h + 2 * pad, w + 2 * pad, 3), 255, dtype=np.uint8)
    out[:, :, :, pad:pad + h, pad:pad + w] = video
    return out.transpose(2, 0, 3, 1, 4, 5).reshape(t, r * (h + 2 * pad), c * (w + 2 * pad), 3)


def evaluate(world: EvalWorld, clips: ClipDataset, cfg: EvalConfig, **kwargs: Any) -> EvalOutput:
    """Run every section of the evaluation; see :class:`Evaluation`."""
    return Evaluation(world, clips, cfg, **kwargs).run()
