"""Agents from latent actions: clone the behaviour of unlabeled video in latent actions, decode latent
actions to the real controller from a few labelled transitions, and play the real game.

The recipe is LAPO (Schmidt & Jiang, ICLR 2024) and Genie's (arXiv 2402.15391, sec. 3.3): label every
transition of a dataset with the latent action model, behaviour-clone those labels, then learn a small
head that maps (observation features, latent action) to the true action from N labelled transitions.
"""

from playworld.agents.policy import PolicyConfig, PolicyNet

__all__ = ["PolicyConfig", "PolicyNet"]
