"""The lookahead behaviour policy: it plans in copies of the game (rewards taken, deaths avoided, ties kept),
is deterministic for a seed, and records and replays on real Procgen games."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from playworld.agents.evaluate import BehaviourController, RandomController, play_levels
from playworld.data.collect import CollectConfig, collect, policy_report
from playworld.data.format import Dataset
from playworld.data.lookahead import Lookahead, PlanConfig
from playworld.data.policies import make_policy
from playworld.errors import ConfigError

REWARD, DEATH, WIN = 3, 5, 6


class ToyGame:
    """A gym3-like game whose state is (step count,) per slot: action 3 pays 1, action 5 ends the episode
    unfinished, action 6 pays 10 and ends it finished (only from step 2 on, so the planner must look ahead
    past the hold). Every episode lasts at most 50 steps."""

    def __init__(self, num: int, win_from: int = 1_000) -> None:
        self.num, self.win_from = num, win_from
        self.t = np.zeros(num, dtype=np.int64)
        self.rew, self.first = np.zeros(num), np.ones(num, dtype=bool)
        self.won = np.zeros(num, dtype=bool)
        self.closed = False

    def act(self, actions: np.ndarray) -> None:
        a = np.asarray(actions)
        self.rew = np.where(a == REWARD, 1.0, 0.0)
        win = (a == WIN) & (self.t >= self.win_from)
        self.rew = np.where(win, 10.0, self.rew)
        self.first = (a == DEATH) | win | (self.t + 1 >= 50)
        self.won = win
        self.t = np.where(self.first, 0, self.t + 1)

    def observe(self) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        return self.rew, {"rgb": np.zeros((self.num, 64, 64, 3), np.uint8)}, self.first

    def get_info(self) -> list[dict[str, int]]:
        return [{"prev_level_complete": int(w), "level_seed": 0} for w in self.won]

    def callmethod(self, name: str, *args: object) -> list[bytes] | None:
        if name == "get_state":
            return [int(t).to_bytes(8, "little") for t in self.t]
        assert name == "set_state"
        states = args[0]
        assert isinstance(states, list) and len(states) == self.num
        self.t = np.array([int.from_bytes(s, "little") for s in states])
        return None

    def close(self) -> None:
        self.closed = True


def seeds(n: int, seed: int = 0) -> list[np.random.SeedSequence]:
    return [np.random.SeedSequence(seed, spawn_key=(s,)) for s in range(n)]


def attached(game: ToyGame, plan: PlanConfig, seed: int = 0, win_from: int = 1_000) -> Lookahead:
    policy = Lookahead(seeds(game.num, seed), 15, plan)
    policy.attach(lambda: game.callmethod("get_state"), lambda num: ToyGame(num, win_from))
    return policy


def play(policy: Lookahead, game: ToyGame, steps: int) -> np.ndarray:
    out, first = [], np.ones(game.num, dtype=bool)
    for _ in range(steps):
        a = policy(first)
        out.append(a)
        game.act(a)
        first = game.observe()[2]
    return np.stack(out)  # (steps, N)


def test_takes_rewards_and_never_dies() -> None:
    game = ToyGame(3)
    actions = play(attached(game, PlanConfig(horizon=8, hold=2, explore=0.0)), game, 40)
    assert (actions == REWARD).all()


def test_looks_past_the_hold_for_a_larger_reward() -> None:
    # Holding 6 wins only from step 2 on; the planner sees it within its horizon and prefers it to 3's 1 per step.
    game = ToyGame(2, win_from=2)
    policy = attached(game, PlanConfig(horizon=6, hold=1, explore=0.0, sticky_prob=0.99), win_from=2)
    scores = policy.scores(game.callmethod("get_state")[0], np.random.default_rng(0))  # type: ignore[index]
    assert scores.argmax() == WIN and scores[DEATH] < scores[0] < scores[REWARD]


def test_ties_keep_the_previous_action_and_avoid_death() -> None:
    # Only death and reward differ from nothing: with action 3 made neutral the planner has ties everywhere
    # but 5; it keeps its action within an episode and never plays 5.
    class NoReward(ToyGame):
        def act(self, actions: np.ndarray) -> None:
            super().act(np.where(np.asarray(actions) == REWARD, 0, actions))

    game = NoReward(4)
    policy = Lookahead(seeds(4), 15, PlanConfig(horizon=6, hold=2, explore=0.0))
    policy.attach(lambda: game.callmethod("get_state"), lambda num: NoReward(num))
    actions = play(policy, game, 30)
    assert not (actions == DEATH).any()
    assert (actions == actions[0]).all()  # one episode: the first choice is kept
    assert len(set(actions[0].tolist())) > 1  # slots draw their own choices


def test_ties_first_takes_the_lowest_numbered_best_action() -> None:
    # Everything but 5 ties at a fresh episode: "first" starts every slot on action 0, "random" spreads them.
    class NoReward(ToyGame):
        def act(self, actions: np.ndarray) -> None:
            super().act(np.where(np.asarray(actions) == REWARD, 0, actions))

    def tied(ties: str) -> np.ndarray:
        game = NoReward(6)
        policy = Lookahead(seeds(6), 15, PlanConfig(horizon=4, hold=2, explore=0.0, ties=ties))
        policy.attach(lambda: game.callmethod("get_state"), lambda num: NoReward(num))
        return policy(np.ones(6, dtype=bool))

    assert (tied("first") == 0).all()
    assert len(set(tied("random").tolist())) > 1
    with pytest.raises(ConfigError, match="ties"):
        PlanConfig(ties="best")


def test_explore_draws_uniformly_and_is_deterministic() -> None:
    game_a, game_b = ToyGame(4), ToyGame(4)
    plan = PlanConfig(horizon=4, hold=1, explore=1.0)
    a = play(attached(game_a, plan, seed=1), game_a, 300)
    b = play(attached(game_b, plan, seed=1), game_b, 300)
    assert np.array_equal(a, b)
    counts = np.bincount(a.ravel(), minlength=15)
    assert counts.min() > 0.5 * counts.mean()  # all 15 actions, roughly uniformly
    c = play(attached(ToyGame(4), plan, seed=2), ToyGame(4), 300)
    assert not np.array_equal(a, c)


def test_acting_before_attach_and_bad_settings_raise() -> None:
    policy = make_policy("lookahead", "starpilot", seeds(2))
    with pytest.raises(RuntimeError, match="attach"):
        policy(np.ones(2, dtype=bool))
    with pytest.raises(ConfigError, match="hold"):
        PlanConfig(horizon=2, hold=4)
    with pytest.raises(ConfigError, match="plan_explore|explore"):
        CollectConfig(episodes=1, policy="lookahead", plan_explore=1.5)


def test_planning_copies_are_closed() -> None:
    game = ToyGame(1)
    sims: list[ToyGame] = []
    policy = Lookahead(seeds(1), 15, PlanConfig(horizon=2, hold=1))
    policy.attach(lambda: game.callmethod("get_state"), lambda num: sims.append(ToyGame(num)) or sims[-1])
    policy(np.ones(1, dtype=bool))
    policy.close()
    assert len(sims) == 1 and sims[0].closed


def test_procgen_lookahead_collects_deterministically_and_beats_random(tmp_path: Path) -> None:
    cfg = CollectConfig(episodes=2, game="starpilot", policy="lookahead", num_envs=2, max_episode_frames=12,
                        seed=4, plan_horizon=6, plan_hold=3)
    a, b = tmp_path / "a", tmp_path / "b"
    collect(cfg, a, progress=False)
    collect(cfg, b, progress=False)
    ds = Dataset(a)
    eps = ds.episodes()
    assert len(eps) == 2 and {e.policy for e in eps} == {"lookahead"}
    assert all(np.array_equal(np.asarray(ds.frames(x)), np.asarray(Dataset(b).frames(y)))
               for x, y in zip(eps, Dataset(b).episodes()))
    assert json.loads((a / "manifest.json").read_text())["source"]["config"]["plan_horizon"] == 6
    # Starpilot: the planner dodges and shoots, random play dies early (8 episodes cut at 100 frames, same levels).
    run = CollectConfig(episodes=8, game="starpilot", num_envs=8, max_episode_frames=100, seed=1,
                        plan_horizon=12, plan_hold=3)
    rand, plan = policy_report(run, ("random", "lookahead"), progress=False)
    assert plan.mean_length > 1.2 * rand.mean_length and plan.mean_return > rand.mean_return


def test_behaviour_controller_replays_a_lookahead_policy_in_the_real_game() -> None:
    plan, levels = PlanConfig(horizon=10, hold=3), [11, 12, 13, 14]

    def lookahead() -> BehaviourController:
        return BehaviourController("lookahead", "starpilot", len(levels), 0, plan=plan)

    looked = play_levels(lookahead(), "starpilot", levels, max_steps=120)
    again = play_levels(lookahead(), "starpilot", levels, max_steps=120)
    rand = play_levels(RandomController(0), "starpilot", levels, max_steps=120)
    assert np.array_equal(looked.ret, again.ret) and np.array_equal(looked.length, again.length)
    assert looked.length.mean() > rand.length.mean() and looked.ret.sum() >= rand.ret.sum()
