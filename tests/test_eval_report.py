"""The report renders (HTML parsed, every embedded image decoded, and a headless-browser screenshot
where Chromium is installed), the CLI evaluates a saved run end to end, and --compare flags what
lies outside the intervals."""

import base64
import copy
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from playworld.cli import main
from playworld.config import to_dict
from playworld.data.loader import ClipDataset
from playworld.errors import ConfigError
from playworld.eval.compare import compare, figure_group, to_markdown
from playworld.eval.config import EvalConfig
from playworld.eval.evaluate import evaluate
from playworld.eval.report import render_report
from playworld.eval.schema import load_metrics, metrics_text, validate
from playworld.models.dynamics import DynamicsConfig, DynamicsModel
from playworld.models.lam import LAMConfig, LatentActionModel
from playworld.models.tokenizer import TokenizerConfig, VideoTokenizer
from playworld.train.checkpoint import save_release
from sprite_oracle import OracleWorld

from helpers import make_dataset
from sprite_world import make_clips

torch.set_num_threads(1)
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def _decode(src: str) -> Image.Image:
    head, data = src.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/gif;base64"), head
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    img.load()
    return img


@pytest.fixture(scope="module")
def sprite(tmp_path_factory):
    clips = make_clips(8, 40, seed=0)
    root = make_dataset(tmp_path_factory.mktemp("report") / "sprites", videos=clips.video.numpy(),
                        actions=clips.actions.numpy())
    return clips, root


@pytest.fixture(scope="module")
def oracle(sprite):
    clips, root = sprite
    cfg = EvalConfig(split="train", episodes=8, batch=8, bootstrap=100, consistency_starts=4, memory_starts=4,
                     progress=False, opposites="1:0,3:2")
    return evaluate(OracleWorld(clips.video, np.array([1, 0, 3, 2])),
                    ClipDataset(root, clip_len=cfg.clip_len, split="train"), cfg, run="oracle", data=str(root))


def test_report_parses_and_every_embedded_image_decodes(oracle):
    from playworld.video import write_video

    gifs = {}
    for name, frames in oracle.gifs.items():
        path = write_video(Path(f"/tmp/pw-test-{name}.gif"), frames, fps=6)
        gifs[name] = path.read_bytes()
        path.unlink()
    page = render_report(json.loads(json.dumps(oracle.metrics)), gifs, oracle.strips)
    parser = _Page()
    parser.feed(page)
    assert "http://" not in page and "https://" not in page and "<script" not in page  # opens offline
    assert {"Headline", "Rollouts", "Tokenizer", "Latent actions against the true actions",
            "Consistency of each action", "Memory: there and back again", "Speed",
            "Motion and liveness"} <= set(parser.headings)
    alts = [img["alt"] for img in parser.images]
    assert {"PSNR against horizon", "Delta PSNR against horizon", "SSIM against horizon", "code usage",
            "confusion matrix", "consistency per action", "rollouts", "action grid", "memory_model",
            "held-key motion", "held-key pixel change"} <= set(alts)
    for img in parser.images:
        decoded = _decode(img["src"])
        assert decoded.width > 20 and decoded.height > 20
        if img["alt"] in ("rollouts", "action grid"):
            assert decoded.format == "GIF" and decoded.n_frames > 5  # animated
        else:
            assert decoded.format == "PNG" and len(np.unique(np.asarray(decoded.convert("L")))) > 2  # not blank


def test_report_shows_the_real_games_consistency_beside_the_models(oracle):
    m = json.loads(json.dumps(oracle.metrics))
    k = len(m["consistency"]["per_action"])

    def est(v: float) -> dict:
        return {"mean": v, "low": v - 0.1, "high": v + 0.1, "n": 4}

    m["consistency"]["real"] = {"available": True, "reason": None, "levels": 4, "true_actions": list(range(k)),
                                "overall": est(0.123), "per_action": [est(0.2)] * k, "model_overall": est(-0.045),
                                "classes": [0] * k, "class_overall": est(0.345), "model_class_overall": est(0.067)}
    validate(m)
    page = render_report(m, {}, {})
    assert "0.123" in page and "-0.045" in page and "0.345" in page and "0.067" in page and "game itself scores" in page
    m["consistency"]["real"]["overall"] = "high"
    with pytest.raises(ConfigError, match="consistency.real.overall"):
        validate(m)
    m["consistency"]["real"] = {"available": False, "reason": "turned off (--no-real-env)", "levels": 0,
                                "true_actions": None, "overall": None, "per_action": None, "model_overall": None,
                                "classes": None, "class_overall": None, "model_class_overall": None}
    validate(m)
    assert "No real-game consistency: turned off" in render_report(m, {}, {})


def test_compare_flags_differences_outside_the_intervals(oracle, tmp_path):
    good = json.loads(json.dumps(oracle.metrics))
    worse = copy.deepcopy(good)
    worse["headline"]["mapping_accuracy"].update(mean=0.5, low=0.4, high=0.6)
    fast = good["headline"]["ms_per_frame"]["low"] / 10  # the oracle takes ~0.015 ms: relative, not absolute
    worse["headline"]["ms_per_frame"].update(mean=fast, low=fast / 2, high=fast * 1.5)  # faster: lower is better
    worse["settings"]["seed"] = 7
    for name, m in (("a", good), ("b", worse)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    c = compare([tmp_path / "a", tmp_path / "b" / "metrics.json"])
    assert c.flags["mapping_accuracy"] == ["worse"] and c.flags["ms_per_frame"] == ["better"]
    assert not any("threads" in w for w in c.warnings)
    assert c.flags["tokenizer_psnr"] == [""]  # equal: not flagged
    assert any("seed" in w for w in c.warnings)
    table = to_markdown(c)
    assert "| mapping_accuracy (higher) | 1.000 [1.000, 1.000] | 0.500 [0.400, 0.600] **worse** |" in table
    # figures come in sections, each figure once, its section's header before it
    lines = table.splitlines()
    for key in c.rows:
        row = next(i for i, line in enumerate(lines) if line.startswith(f"| {key} ("))
        header = max(i for i, line in enumerate(lines[:row]) if line.startswith("| **"))
        assert lines[header] == f"| **{figure_group(key)}** | | |"
        assert sum(line.startswith(f"| {key} (") for line in lines) == 1
    assert figure_group("mapping_accuracy") == "latent actions and their consistency"
    assert figure_group("consistency_on_real_starts") == "latent actions and their consistency"
    assert figure_group("key_contrast_early_real_starts") == "held keys from the real game's own frames"
    assert figure_group("a_figure_from_the_future") == "other"
    threaded = copy.deepcopy(worse)
    threaded["speed"]["threads"] = good["speed"]["threads"] + 1  # timed otherwise: speed not flagged
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text(json.dumps(threaded))
    c = compare([tmp_path / "a", tmp_path / "c"])
    assert c.flags["ms_per_frame"] == [""] and c.flags["mapping_accuracy"] == ["worse"]
    assert any("threads" in w and "ms_per_frame is not flagged" in w for w in c.warnings)
    with pytest.raises(ConfigError, match="no metrics.json here"):
        compare([tmp_path / "a", tmp_path / "missing"])
    (tmp_path / "bad.json").write_text('{"format": "playworld-eval", "schema_version": 1}')
    with pytest.raises(ConfigError, match=r"bad.json: top level: missing keys \['actions'"):
        compare([tmp_path / "a", tmp_path / "bad.json"])


def _shifted(m: dict, key: str, by: float) -> None:
    """Move headline figure ``key`` by ``by``: its point, interval and every bootstrap replicate."""
    e = m["headline"][key]
    e.update(mean=e["mean"] + by, low=e["low"] + by, high=e["high"] + by,
             replicates=[r + by for r in e["replicates"]])


def test_compare_judges_key_response_and_liveness_by_their_distance_from_the_real_games_one(oracle, tmp_path):
    a = json.loads(json.dumps(oracle.metrics))
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, 100)
    for key in ("key_response_late", "liveness_far"):  # twice the real speed or change: an overshoot
        a["headline"][key] = {"mean": 2.0, "low": 1.9, "high": 2.1, "n": 8, "better": "near 1",
                              "replicates": (2.0 + noise).tolist()}
    runs = {"a": a}
    for name, by in (("closer", -0.5), ("farther", 0.5), ("mirror", -2.0)):  # 1.5, 2.5 and 0.0
        m = copy.deepcopy(a)
        for key in ("key_response_late", "liveness_far"):
            _shifted(m, key, by)
        runs[name] = m
    for name, m in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    c = compare([tmp_path / n for n in runs])
    for key in ("key_response_late", "liveness_far"):  # higher is not better: 2.5 is further off than 2.0
        assert c.flags[key] == ["better", "worse", ""]
        assert [d["mean"] for d in c.differences[key]] == pytest.approx([-0.5, 0.5, 0.0])
    assert c.rows["key_response_late"][1]["mean"] == pytest.approx(1.5)  # the table shows the figure itself
    assert "paired Δ|x-1| -0.500" in to_markdown(c)
    # a v3 file labelled them 'higher' is better; it is read as what they meant
    old = copy.deepcopy(a)
    old["schema_version"] = 3
    old["motion"]["keys"].pop("real_starts")
    old["motion"].pop("dynamics_change"), old["tokenizer"].pop("change_kept"), old["tokenizer"].pop("moving_psnr")
    for key in ("key_response_late", "liveness_far"):
        old["headline"][key]["better"] = "higher"
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_metrics(tmp_path / "old.json")["headline"]["key_response_late"]["better"] == "near 1"
    with pytest.raises(ConfigError, match=r"headline.nmi.better is 'more', not one of"):
        validate({**a, "headline": {**a["headline"], "nmi": {**a["headline"]["nmi"], "better": "more"}}})


def test_compare_pairs_evaluations_of_the_same_units_and_flags_a_small_shift_the_intervals_hide(oracle, tmp_path):
    a = json.loads(json.dumps(oracle.metrics))
    assert all(len(e["replicates"]) == 100 for k, e in a["headline"].items() if e["n"] > 1 and k != "ms_per_frame")
    assert "replicates" not in a["headline"]["ms_per_frame"]  # timings are never paired: none kept
    assert "replicates" not in a["tokenizer"]["psnr"]  # kept for the headline only
    e = a["headline"]["delta_psnr_t4"]
    assert np.percentile(e["replicates"], [2.5, 97.5]) == pytest.approx([e["low"], e["high"]], abs=1e-3)
    width = e["high"] - e["low"]
    assert width > 0
    b = copy.deepcopy(a)
    _shifted(b, "delta_psnr_t4", 0.1 * width)  # well inside the intervals, but on every unit alike
    spread = copy.deepcopy(b)  # the same mean difference, but unit by unit it goes both ways
    r = np.asarray(a["headline"]["delta_psnr_t4"]["replicates"])
    spread["headline"]["delta_psnr_t4"]["replicates"] = (r + 0.1 * width + np.where(np.arange(len(r)) % 2, 1, -1)
                                                         * width).tolist()
    for name, m in (("a", a), ("b", b), ("spread", spread)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    c = compare([tmp_path / "a", tmp_path / "b", tmp_path / "spread"])
    d = c.differences["delta_psnr_t4"][0]
    assert d["mean"] == pytest.approx(0.1 * width) and 0 < d["low"] <= d["high"]
    assert c.flags["delta_psnr_t4"] == ["better", ""]
    assert c.flags["key_response_late"] == ["", ""] and c.better["key_response_late"] == "near 1"
    assert c.flags["tokenizer_psnr"] == ["", ""] and c.differences["tokenizer_psnr"][0]["mean"] == 0
    assert c.differences["ms_per_frame"] == [None, None]  # timings are not paired
    t4 = next(k for k in a["headline"] if k.startswith("psnr_inferred_t"))  # also a horizon row: paired
    assert c.differences[t4][0]["mean"] == 0 and c.differences["psnr_inferred_t1"] == [None, None]
    assert "paired Δ +" in to_markdown(c)
    assert not c.notes
    # the same world decoded otherwise scores the same units: paired, and a note names the settings
    decoded = copy.deepcopy(b)
    decoded["settings"].update(copy_penalty=a["settings"]["copy_penalty"] + 1, action_guidance=3.0)
    unguided = copy.deepcopy(b)
    unguided["settings"].pop("action_guidance")  # a file from before the setting: read as 1, off
    for name, m in (("decoded", decoded), ("unguided", unguided)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    c = compare([tmp_path / "a", tmp_path / "decoded", tmp_path / "unguided"])
    assert c.flags["delta_psnr_t4"] == ["better", "better"]
    note = c.notes
    assert len(note) == 1 and "decoded" in note[0] and "action_guidance 3.0 (1.0)" in note[0]
    assert f"copy_penalty {a['settings']['copy_penalty'] + 1} ({a['settings']['copy_penalty']})" in note[0]
    assert not c.warnings and f"Note: {note[0]}" in to_markdown(c)
    # other units (another seed) or a file without replicates (v2): the intervals alone decide
    other = copy.deepcopy(b)
    other["settings"]["seed"] += 1
    old = copy.deepcopy(b)
    old["schema_version"] = 2
    old["motion"]["keys"].pop("real_starts")
    old["motion"].pop("dynamics_change"), old["tokenizer"].pop("change_kept"), old["tokenizer"].pop("moving_psnr")
    for e in old["headline"].values():
        e.pop("replicates", None)
    validate(old)
    with pytest.raises(ConfigError, match=r"headline\.\w+: missing keys \[\], unknown keys \['replicates'\]"):
        validate({**b, "schema_version": 2, "tokenizer": old["tokenizer"], "motion": old["motion"]})
    for name, m in (("other", other), ("old", old)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    c = compare([tmp_path / "a", tmp_path / "other", tmp_path / "old"])
    assert c.differences["delta_psnr_t4"] == [None, None] and c.flags["delta_psnr_t4"] == ["", ""]


def test_compare_lists_psnr_and_ssim_at_horizons_1_4_8_and_15_from_the_rollout_curves(oracle, tmp_path):
    a = json.loads(json.dumps(oracle.metrics))
    b = copy.deepcopy(a)
    ctx = str(min(int(k) for k in b["rollouts"]["contexts"]))
    curve = b["rollouts"]["contexts"][ctx]["psnr"]["inferred"]
    reached = [h for h in (1, 4, 8, 15) if h <= len(curve)]
    worse = curve[max(reached) - 1]
    worse.update(mean=worse["mean"] - 50, low=worse["low"] - 50, high=worse["high"] - 50)  # one horizon worse
    for name, m in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    c = compare([tmp_path / "a", tmp_path / "b"])
    assert {f"psnr_inferred_t{h}" for h in reached} | {f"ssim_inferred_t{h}" for h in reached} <= set(c.rows)
    assert all(f"ssim_inferred_t{h}" not in c.rows for h in (1, 4, 8, 15) if h not in reached)  # no row
    assert c.flags[f"psnr_inferred_t{max(reached)}"] == ["worse"]
    assert all(c.flags[f"ssim_inferred_t{h}"] == [""] for h in reached)
    assert c.rows["psnr_inferred_t1"][0]["mean"] == a["rollouts"]["contexts"][ctx]["psnr"]["inferred"][0]["mean"]

def _save_tiny_run(run: Path) -> None:
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig(image_size=16, patch=4, dim=32, enc_depth=1, dec_depth=1, heads=2,
                                         num_codes=32, code_dim=8))
    lam = LatentActionModel(LAMConfig(height=16, width=16, patch_size=8, num_actions=4, dim=32, heads=2,
                                      encoder_depth=1, decoder_depth=1))
    dyn = DynamicsModel(DynamicsConfig(vocab_size=32, num_actions=4, token_height=4, token_width=4, dim=32,
                                       depth=1, heads=2))
    for kind, model in (("tokenizer", tok), ("lam", lam), ("dynamics", dyn)):
        save_release(run / kind, model.state_dict(), {"kind": kind, "model": to_dict(model.config)})


def test_cli_evaluates_a_saved_run_and_compares_two(sprite, tmp_path, capsys):
    _, root = sprite
    run = tmp_path / "run"
    _save_tiny_run(run)
    common = ["--data", str(root), "--split", "train", "--episodes", "3", "--horizon", "3", "--context", "1,2",
              "--action-clips", "1", "--consistency-starts", "2", "--memory-starts", "2", "--grid-starts", "2",
              "--grid-steps", "2", "--speed-frames", "2", "--bootstrap", "50", "--maskgit-steps", "1",
              "--allow-collapsed", "--no-progress", "--threads", "1"]
    assert main(["eval", str(run), *common]) == 0
    m = load_metrics(run / "eval")
    assert m["counts"]["episodes"] == 3 and set(m["rollouts"]["contexts"]) == {"1", "2"}
    text = (run / "eval" / "metrics.json").read_text()
    assert json.loads(text) == m and m["headline"]["tokenizer_psnr"]["replicates"]  # 50 a figure
    # lists of numbers on one line each, not a line per number
    assert len(text.splitlines()) < len(json.dumps(m, indent=1).splitlines()) / 2
    assert metrics_text({"a": [1, -2.5e-07, 3], "b": "x [\n 1,\n 2]", "c": []}) == (
        '{\n "a": [1, -2.5e-07, 3],\n "b": "x [\\n 1,\\n 2]",\n "c": []\n}\n')  # strings untouched
    assert len(m["rollouts"]["contexts"]["2"]["delta_psnr"]) == 3 and "delta_psnr_t3" in m["headline"]
    assert (run / "eval" / "report.html").stat().st_size > 10_000
    assert Image.open(run / "eval" / "rollouts.gif").n_frames == 3
    shutil.copytree(run, tmp_path / "run2")
    assert main(["eval", str(tmp_path / "run2"), *common, "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", "--compare", str(run), str(tmp_path / "run2"), "--out", str(tmp_path / "cmp.md")]) == 0
    printed = capsys.readouterr().out
    assert "| tokenizer_psnr (higher) |" in printed and "differs from" in printed  # the seeds differ
    assert (tmp_path / "cmp.md").read_text() in printed
    assert main(["eval", str(run), "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["eval", str(run)]) == 2  # no --data, and nothing says where its held-out episodes are
    assert "pass --data DIR" in capsys.readouterr().err


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason=f"headless screenshot needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install "
                    "chromium chromium-driver)")
def test_report_screenshot_in_headless_chromium(oracle, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    from selenium.webdriver.chrome.service import Service

    page = tmp_path / "report.html"
    page.write_text(render_report(json.loads(json.dumps(oracle.metrics)), {}, oracle.strips))
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,2000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.get(page.as_uri())
        assert driver.title == "playworld eval: oracle"
        broken = driver.execute_script(
            "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
        assert broken == 0 and driver.execute_script("return document.images.length") >= 6
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png()))
        assert shot.width >= 1000 and len(np.unique(np.asarray(shot.convert("L")))) > 16  # rendered, not blank
        shot.save(tmp_path / "report.png")
    finally:
        driver.quit()
