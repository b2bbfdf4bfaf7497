"""playworld.train.retoken and `playworld retoken`: a dynamics model carried over to a new tokenizer's codes."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from tests.helpers import make_dataset
from tests.tiny_world import SIZE, save_tiny_run, tiny_models

from playworld.api import load
from playworld.cli import main
from playworld.config import to_dict
from playworld.data.loader import ClipDataset
from playworld.errors import ConfigError
from playworld.models.dynamics import DynamicsModel
from playworld.models.tokenizer import TokenizerConfig, VideoTokenizer
from playworld.train.checkpoint import save_release
from playworld.train.retoken import code_cooccurrence, transplant_vocabulary


def permuted(tok: VideoTokenizer, perm: torch.Tensor) -> VideoTokenizer:
    """The same tokenizer with its codes relabelled: new code perm[o] is old code o."""
    new = copy.deepcopy(tok)
    inv = torch.argsort(perm)  # new code j holds old code inv[j]
    with torch.no_grad():
        new.quantizer.codebook.copy_(tok.quantizer.codebook[inv])
    return new


def test_a_relabelled_vocabulary_carries_the_model_over_exactly() -> None:
    _, _, dyn = tiny_models()
    v = dyn.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    perm = torch.randperm(v, generator=gen)  # new code perm[o] <- old code o
    counts = torch.zeros(v, v, dtype=torch.float64)
    counts[perm, torch.arange(v)] = torch.randint(1, 50, (v,), generator=gen).double()
    carried = DynamicsModel(dyn.config)
    carried.load_state_dict(transplant_vocabulary(dyn.state_dict(), counts))
    dyn.eval()
    carried.eval()
    tokens = torch.randint(0, v, (2, 3, dyn.config.num_tokens), generator=gen)  # (B, T, S) old codes
    tokens[:, -1, :5] = dyn.mask_id  # some masked places: the [MASK] row is kept
    fa = torch.randint(0, dyn.config.num_actions, (2, 3), generator=gen)
    new_tokens = torch.where(tokens == dyn.mask_id, tokens, perm[tokens.clamp_max(v - 1)])
    with torch.no_grad():
        old_logits = dyn(tokens, fa)  # (B, T, S, V) over old codes
        new_logits = carried(new_tokens, fa)  # over new codes
    torch.testing.assert_close(new_logits[..., perm], old_logits, rtol=1e-5, atol=1e-5)


def test_an_old_code_split_in_two_shares_its_probability_by_frequency() -> None:
    _, _, dyn = tiny_models()
    v = dyn.config.vocab_size
    counts = torch.zeros(v, v, dtype=torch.float64)
    counts[torch.arange(v), torch.arange(v)] = 10.0
    counts[0, 0], counts[1, 0], counts[1, 1] = 30.0, 10.0, 0.0  # old 0 -> new 0 (3/4), new 1 (1/4); old 1 unseen
    state = transplant_vocabulary(dyn.state_dict(), counts)
    bias, old_bias = state["head.bias"], dyn.state_dict()["head.bias"]
    assert torch.equal(state["head.weight"][1], dyn.state_dict()["head.weight"][0])
    # p(new 0) / p(new 1) = 3 wherever the old model predicted old code 0
    assert float(bias[0] - bias[1]) == pytest.approx(float(torch.log(torch.tensor(3.0))), abs=1e-5)
    assert float(bias[0] - old_bias[0]) == pytest.approx(float(torch.log(torch.tensor(0.75))), abs=1e-5)
    emb = dyn.state_dict()["token_emb.weight"]
    torch.testing.assert_close(state["token_emb.weight"][1], emb[0])  # new 1 stands only for old 0
    torch.testing.assert_close(state["token_emb.weight"][-1], emb[-1])  # [MASK] kept


def test_a_code_book_of_another_size_gives_a_model_of_that_vocabulary() -> None:
    _, _, dyn = tiny_models()
    counts = torch.rand(16, dyn.config.vocab_size, generator=torch.Generator().manual_seed(5))  # 16 new codes
    state = transplant_vocabulary(dyn.state_dict(), counts)
    smaller = DynamicsModel(dataclasses.replace(dyn.config, vocab_size=16))
    smaller.load_state_dict(state)  # shapes fit: 16 codes + [MASK] in, 16 logits out
    assert smaller(torch.randint(0, 16, (1, 2, dyn.config.num_tokens)), torch.zeros(1, 2, dtype=torch.long)
                   ).shape[-1] == 16


def test_cooccurrence_of_a_relabelled_tokenizer_is_the_relabelling() -> None:
    tok, _, _ = tiny_models()
    perm = torch.randperm(tok.num_codes, generator=torch.Generator().manual_seed(2))
    new = permuted(tok, perm)
    clips = [torch.rand(2, 3, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    counts = code_cooccurrence(tok, new, clips)  # (V_new, V_old)
    assert counts.sum() == 3 * 2 * 3 * tok.tokens_per_frame
    old_seen = counts.sum(0) > 0
    assert int(old_seen.sum()) > 1
    # every old code that occurs sits under exactly its relabelled new code
    assert torch.equal(counts.argmax(0)[old_seen], perm[old_seen])
    assert torch.equal((counts > 0).sum(0)[old_seen], torch.ones(int(old_seen.sum()), dtype=torch.long))


def test_refuses_tokenizers_with_other_grids_and_models_of_other_vocabularies() -> None:
    tok, _, dyn = tiny_models()
    other = VideoTokenizer(TokenizerConfig(image_size=SIZE, patch=8, dim=32, enc_depth=1, dec_depth=1, heads=2,
                                           num_codes=32, code_dim=8))
    with pytest.raises(ConfigError, match="grid"):
        code_cooccurrence(tok, other, [torch.rand(1, 2, SIZE, SIZE, 3)])
    with pytest.raises(ConfigError, match="rows"):
        transplant_vocabulary(dyn.state_dict(), torch.ones(64, 64))
    with pytest.raises(ConfigError, match="no token places"):
        transplant_vocabulary(dyn.state_dict(), torch.zeros(32, 32))
    _, _, flow = tiny_models(backend="flow")  # predicts code vectors, not ids
    with pytest.raises(ConfigError, match="only a MaskGIT"):
        transplant_vocabulary(flow.state_dict(), torch.ones(32, 32))


def test_cli_writes_a_release_that_train_init_from_can_read(tmp_path, capsys) -> None:
    world = save_tiny_run(tmp_path / "world")
    tok = load(world).tokenizer
    perm = torch.randperm(tok.num_codes, generator=torch.Generator().manual_seed(4))
    new = permuted(tok, perm)
    save_release(tmp_path / "newtok", new.state_dict(), {"kind": "tokenizer", "model": to_dict(new.config)})
    data = make_dataset(tmp_path / "data", episodes=3, length=6, size=SIZE)
    out = tmp_path / "carried"
    # every clip of the data (3 episodes x 5 two-frame clips)
    assert main(["retoken", str(world), "--tokenizer", str(tmp_path / "newtok"), "--data", str(data),
                 "--out", str(out), "--clips", "100", "--clip-len", "2", "--threads", "1"]) == 0
    carried = load(out)
    assert carried.dynamics is not None
    assert carried.configs["dynamics"].deps["tokenizer"] == str((tmp_path / "newtok").resolve())
    record = json.loads((out / "retoken.json").read_text())
    assert record["clips"] == 15 and record["places"] == 15 * 2 * tok.tokens_per_frame
    assert record["purity"] == pytest.approx(1.0)
    # each new code that the data shows is embedded as the old code it relabels
    frames = torch.from_numpy(ClipDataset(data, clip_len=6, split="train").get_batch([0, 1, 2]).numpy())
    occurring = torch.unique(tok.encode(frames.float().div(255.0)).indices)
    old_emb = load(world).dynamics.state_dict()["token_emb.weight"]
    new_emb = carried.dynamics.state_dict()["token_emb.weight"]
    torch.testing.assert_close(new_emb[perm[occurring]], old_emb[occurring])
    torch.testing.assert_close(new_emb[-1], old_emb[-1])
    # the world's own dynamics model may not be overwritten
    assert main(["retoken", str(world), "--tokenizer", str(tmp_path / "newtok"), "--data", str(data),
                 "--out", str(world / "dynamics")]) == 2
    assert "would replace" in capsys.readouterr().err


def test_cli_carries_a_world_to_a_tokenizer_with_fewer_codes(tmp_path) -> None:
    world = save_tiny_run(tmp_path / "world")
    torch.manual_seed(6)
    small = VideoTokenizer(TokenizerConfig(image_size=SIZE, patch=4, dim=32, enc_depth=1, dec_depth=1, heads=2,
                                           num_codes=16, code_dim=8))
    save_release(tmp_path / "tok16", small.state_dict(), {"kind": "tokenizer", "model": to_dict(small.config)})
    data = make_dataset(tmp_path / "data", episodes=2, length=4, size=SIZE)
    assert main(["retoken", str(world), "--tokenizer", str(tmp_path / "tok16"), "--data", str(data),
                 "--out", str(tmp_path / "carried"), "--clips", "8", "--clip-len", "2", "--threads", "1"]) == 0
    carried = load(tmp_path / "carried")
    assert carried.configs["dynamics"].model.vocab_size == 16
    assert carried.dynamics.head.out_features == 16


def test_cli_refuses_a_flow_world_before_encoding(tmp_path, capsys) -> None:
    world = save_tiny_run(tmp_path / "world", backend="flow")
    data = make_dataset(tmp_path / "data", episodes=2, length=4, size=SIZE)
    assert main(["retoken", str(world), "--tokenizer", str(world / "tokenizer"), "--data", str(data),
                 "--out", str(tmp_path / "carried")]) == 2
    assert "only a MaskGIT" in capsys.readouterr().err
    assert not (tmp_path / "carried").exists()
