"""report.html: one self-contained page (plots as base64 PNG, animations as base64 GIF; no network,
no scripts) that shows every figure of a metrics.json with its interval, next to what it looks like.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

COLOURS = {"inferred": "#1f77b4", "random": "#d62728", "copy_last": "#7f7f7f"}
LABELS = {"inferred": "LAM-inferred actions", "random": "random actions", "copy_last": "copy last frame"}
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:90%}
.warn{background:#fff3cd;padding:.5em 1em;border-left:4px solid #e0a800}img{max-width:100%}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}figcaption{color:#555;font-size:90%}
img.pixel{image-rendering:pixelated}"""


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _img(data: bytes, mime: str, alt: str, caption: str, width: int | None = None, pixel: bool = False) -> str:
    src = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    w = f' width="{width}"' if width else ""
    cls = ' class="pixel"' if pixel else ""
    return (f'<figure><img src="{src}" alt="{html.escape(alt)}"{w}{cls}>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _band(ax: Any, series: list[dict[str, float]], label: str, colour: str) -> None:
    t = np.arange(1, len(series) + 1)
    mean = [e["mean"] for e in series]
    ax.plot(t, mean, "o-", color=colour, label=label, markersize=3)
    ax.fill_between(t, [e["low"] for e in series], [e["high"] for e in series], color=colour, alpha=0.2)


def horizon_plot(metrics: dict[str, Any], metric: str) -> bytes:
    """``metric`` ('psnr', 'ssim' or 'delta_psnr') against horizon, one panel per context length."""
    contexts = metrics["rollouts"]["contexts"]
    fig, axes = plt.subplots(1, len(contexts), figsize=(5 * len(contexts), 3.4), squeeze=False, sharey=True)
    for ax, (c, r) in zip(axes[0], contexts.items()):
        if metric == "delta_psnr":
            _band(ax, r["delta_psnr"], "ΔPSNR (inferred − random)", "#2ca02c")
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_ylabel("ΔPSNR (dB)")
        else:
            for kind, series in r[metric].items():
                _band(ax, series, LABELS[kind], COLOURS[kind])
            ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "SSIM")
        ax.set_title(f"{c} context frame{'s' if c != '1' else ''}")
        ax.set_xlabel("frames ahead (t)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def code_usage_plot(metrics: dict[str, Any]) -> bytes:
    tok = metrics["tokenizer"]
    counts = np.sort(np.asarray(tok["code_counts"], dtype=np.float64))[::-1]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(np.arange(len(counts)), np.maximum(counts, 0.5), width=1.0, color="#1f77b4")
    ax.set_yscale("log")
    ax.set_xlabel("code, most used first")
    ax.set_ylabel("tokens")
    ax.set_title(f"{int((counts > 0).sum())} of {len(counts)} codes used")
    return _png(fig)


def confusion_plot(metrics: dict[str, Any]) -> bytes:
    a = metrics["actions"]
    conf = np.asarray(a["confusion"], dtype=np.float64)  # (latent, true)
    share = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.45 * conf.shape[1], 1 + 0.45 * conf.shape[0]))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(conf):
        if n:
            ax.text(j, i, int(n), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    for lt, tr in a["mapping"]:
        ax.add_patch(plt.Rectangle((tr - 0.5, lt - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2))
    ax.set_xlabel("true action")
    ax.set_ylabel("latent action")
    ax.set_xticks(range(conf.shape[1]))
    ax.set_yticks(range(conf.shape[0]))
    ax.set_title("transitions (colour: share of the latent's row; red: best mapping)", fontsize=9)
    return _png(fig)


def consistency_plot(metrics: dict[str, Any]) -> bytes:
    c = metrics["consistency"]
    per = c["per_action"]
    k = len(per)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
    mean = np.array([e["mean"] for e in per])
    err = np.array([[e["mean"] - e["low"] for e in per], [e["high"] - e["mean"] for e in per]])
    ax.bar(range(k), mean, yerr=err, capsize=3, color="#9467bd")
    ax.axhline(c["overall"]["mean"], color="black", linestyle="--", linewidth=1, label="overall")
    real = c.get("real") or {}
    if real.get("available"):
        ax.scatter(range(k), [e["mean"] for e in real["per_action"]], color="black", marker="_", s=200, zorder=3,
                   label="real game, mapped key")
        ax.axhline(real["overall"]["mean"], color="#2ca02c", linestyle=":", linewidth=1, label="real game, overall")
    ax.set_ylim(-1, 1)
    ax.set_xticks(range(k))
    ax.set_xlabel("latent action")
    ax.set_ylabel("silhouette of its motion")
    ax.legend(fontsize=8)
    motion = np.asarray(c["mean_motion"])  # (K, 2) dy, dx
    lim = max(1.0, float(np.abs(motion).max()) * 1.3)
    for a, (dy, dx) in enumerate(motion):
        ax2.annotate("", xy=(dx, -dy), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": f"C{a % 10}"})
        ax2.text(dx, -dy, str(a), color=f"C{a % 10}")
    ax2.set_xlim(-lim, lim)
    ax2.set_ylim(-lim, lim)
    ax2.set_aspect("equal")
    ax2.set_title(f"mean image shift over {c['steps']} presses (px; up = up)", fontsize=9)
    ax2.grid(alpha=0.3)
    return _png(fig)


def key_plot(metrics: dict[str, Any], what: str) -> bytes:
    """Held keys, per step: ``what`` = 'motion' (dx and dy panels) or 'change' (pixel change); one line
    per latent action, its real game's figure under the mapped true action dashed in the same colour."""
    keys = metrics["motion"]["keys"]
    shift, change = np.asarray(keys["curves"]["shift"]), np.asarray(keys["curves"]["change"])  # (K, L, 2), (K, L)
    steps = np.arange(1, change.shape[1] + 1)
    panels = [("dx", 1), ("dy", 0)] if what == "motion" else [("change", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 3.6), squeeze=False)
    for ax, (name, axis) in zip(axes[0], panels):
        for a, entry in enumerate(keys["per_action"]):
            colour = f"C{a % 10}"
            series = change[a] if axis is None else shift[a, :, axis]
            ax.plot(steps, series, color=colour, linewidth=1.2, label=f"{a}→{entry['true']}")
            if entry["real"] is not None:
                ax.axhline(entry["real"][name]["mean"], color=colour, linestyle="--", linewidth=0.9)
        for lo, hi in keys["windows"].values():
            ax.axvspan(lo, hi, color="#000", alpha=0.05)
        ax.set_xlabel("steps the key is held")
        ax.set_ylabel("mean |pixel change| per step (0-255)" if axis is None else f"scene motion {name} (px/step)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2, title="latent→true", title_fontsize=7)
    fig.suptitle("solid: the world, mean over start frames; dashed: the real game, true action held "
                 f"{keys['real_hold']}+ frames; shaded: early, late, far windows", fontsize=9)
    return _png(fig)


def real_start_plot(metrics: dict[str, Any]) -> bytes:
    """Keys held from real starts, per step: the world (solid) and the real game (dashed) under each latent
    action and its mapped true key, dx, dy and pixel change panels; only the keys that move the real scene
    early or late, or every key if none does."""
    part = metrics["motion"]["keys"]["real_starts"]
    c = {k: np.asarray(v) for k, v in part["curves"].items()}  # shift (K, L, 2), change (K, L)
    moving = sorted({a for w in part["per_action"].values() for a, r in enumerate(w["response"]) if r is not None})
    shown = moving or list(range(c["world_change"].shape[0]))
    steps = np.arange(1, c["world_change"].shape[1] + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), squeeze=False)
    for ax, (name, axis) in zip(axes[0], [("dx", 1), ("dy", 0), ("change", None)]):
        for a in shown:
            colour = f"C{a % 10}"
            world = c["world_change"][a] if axis is None else c["world_shift"][a, :, axis]
            real = c["real_change"][a] if axis is None else c["real_shift"][a, :, axis]
            ax.plot(steps, world, color=colour, linewidth=1.2, label=f"{a}→{part['true_actions'][a]}")
            ax.plot(steps, real, color=colour, linewidth=1.0, linestyle="--")
        for lo, hi in (w for n, w in metrics["motion"]["keys"]["windows"].items() if n != "far"):
            ax.axvspan(lo, hi, color="#000", alpha=0.05)
        ax.set_xlabel("steps the key is held")
        ax.set_ylabel("mean |pixel change| per step (0-255)" if axis is None else f"scene motion {name} (px/step)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2, title="latent→true", title_fontsize=7)
    fig.suptitle(f"from the same {part['levels']} settled real starts: solid the world, dashed the real game "
                 "(steps after a real episode ended not counted); shaded: early, late windows", fontsize=9)
    return _png(fig)


def _real_start_parts(keys: dict[str, Any], m: dict[str, Any]) -> list[str]:
    part, esc = keys.get("real_starts"), html.escape
    if part is None:  # a file written before schema v4
        return []
    if not part["available"]:
        return [f"<p class=note>Key response from real starts not measured: {esc(part['reason'] or '')}</p>"]
    parts = [f"<p><b>From real starts</b>: on {part['levels']} evaluated levels, the real game (settled for 8 idle "
             f"frames) and the world (those frames as its prompt) hold each latent action and its mapped true key "
             f"{part['steps']} steps from the same frame; a real hold that ended its episode counts only its steps "
             f"before the end on both sides ({100 * part['alive_share']:.0f}% of steps alive). Step by step: key "
             "response = the slope of the world's motion on the game's (1 = the game's speed and direction at each "
             "step), agreement = their cosine (1 = moves when, where and as the game does; drift where the game "
             "stands still lowers it), liveness = the world's pixel change over the game's; displacement = the "
             "slope of the world's net scene shift over the window on the game's (where the scene ends up, whatever "
             "the step it moved at); key contrast = what "
             "each key does that the others do not, pixel by pixel (blurred): its agreement with the game's (cosine) "
             "and its size over the game's (ratio).</p>",
             "<table><tr><th>window</th><th>key response</th><th>agreement</th><th>liveness</th>"
             "<th>displacement</th><th>key contrast agreement</th><th>key contrast ratio</th><th>per key response</th></tr>"]
    contrast = part.get("contrast") or {"agreement": {}, "ratio": {}}
    for name in ("early", "late"):
        per_key = ", ".join("—" if r is None else f"{r:+.2f}" for r in part["per_action"][name]["response"])
        parts.append(f"<tr><td>{name}</td><td>{_fmt(part['response'][name])}</td><td>{_fmt(part['agreement'][name])}"
                     f"</td><td>{_fmt(part['liveness'][name])}</td>"
                     f"<td>{_fmt((part.get('displacement') or {}).get(name))}</td>"
                     f"<td>{_fmt(contrast['agreement'].get(name))}</td>"
                     f"<td>{_fmt(contrast['ratio'].get(name))}</td><td>{per_key}</td></tr>")
    parts.append("</table>")
    parts.append(_img(real_start_plot(m), "image/png", "keys held from real starts",
                      "scene motion and pixel change per step from real starts: the world against the real game"))
    return parts


def _motion_section(m: dict[str, Any]) -> list[str]:
    mo, esc = m["motion"], html.escape
    keys, real = mo["keys"], mo["realism"]
    est = mo["estimator"]
    parts = ["<h2>Motion and liveness</h2>",
             "<p>Motion is the global scene shift between consecutive frames (phase correlation, low-passed at "
             f"{est['cutoff']:g} cycles per frame{', Hann-windowed' if est['window'] else ''}; CoinRun's camera "
             "follows the agent, so the scene moves opposite to it). <b>Motion kept</b>: the slope of a stage's "
             "shift on the real shift of the same frames (1 = all kept, 0 = static), with the correlation.</p>",
             "<table><tr><th>stage</th><th>kept dy</th><th>kept dx</th><th>corr dy</th><th>corr dx</th>"
             "<th>real |motion| px</th><th>transitions</th></tr>"]
    for name, label in (("tokenizer_kept", "tokenizer: reconstruction vs real"),
                        ("dynamics_kept", "dynamics, teacher-forced: real t → predicted t+1")):
        k = mo[name]
        parts.append(f"<tr><td>{label}</td><td>{_fmt(k['slope']['dy'])}</td><td>{_fmt(k['slope']['dx'])}</td>"
                     f"<td>{_fmt(k['correlation']['dy'])}</td><td>{_fmt(k['correlation']['dx'])}</td>"
                     f"<td>{k['real_motion']:.2f}</td><td>{k['transitions']}</td></tr>")
    parts.append("</table>")
    tok, dyn = m["tokenizer"], mo.get("dynamics_change")
    if "change_kept" in tok and dyn is not None:  # files from before these figures lack them
        parts += ["<p><b>Change kept</b>, pixel by pixel, for games whose camera does not move (a sprite of a few "
                  "pixels on a fixed screen): the slope of a stage's frame-to-frame change on the real change (1 = "
                  "every changed pixel changes as in the game, 0 = static), and the PSNR on the pixels the game "
                  "changed (moving PSNR).</p>",
                  "<table><tr><th>stage</th><th>change kept</th><th>moving PSNR</th><th>copy-last moving PSNR</th></tr>",
                  f"<tr><td>tokenizer: reconstruction vs real</td><td>{_fmt(tok['change_kept'])}</td>"
                  f"<td>{_fmt(tok['moving_psnr'])}</td><td></td></tr>",
                  f"<tr><td>dynamics, teacher-forced: real t → predicted t+1</td><td>{_fmt(dyn['change_kept'])}</td>"
                  f"<td>{_fmt(dyn['moving_psnr'])}</td><td>{_fmt(dyn['copy_moving_psnr'])}</td></tr></table>"]
    w = keys["windows"]
    parts.append(f"<p><b>Held keys</b>: every latent action held {keys['steps']} steps from {keys['starts']} real "
                 f"start frames. Key response = the world's motion projected on the real game's under the mapped "
                 f"true action (1 = real speed and direction, 0 = none); liveness = its pixel change over the real "
                 f"game's (0 = frozen; flicker also changes pixels, so read it beside key response). Windows: early "
                 f"{w['early']}, late {w['late']}, far {w['far']}.</p>")
    if not keys["real_available"]:
        parts.append(f"<p class=note>No real-game reference: {esc(keys['real_reason'] or '')}</p>")
    parts.append("<table><tr><th>window</th><th>key response</th><th>liveness</th><th>pixel change / step</th></tr>")
    for name in ("early", "late", "far"):
        parts.append(f"<tr><td>{name} {w[name]}</td><td>{_fmt(keys['response'][name])}</td>"
                     f"<td>{_fmt(keys['liveness'][name])}</td><td>{_fmt(keys['change'][name])}</td></tr>")
    parts.append("</table><table><tr><th>latent → true</th><th>early dy, dx</th><th>late dy, dx</th>"
                 "<th>far dy, dx</th><th>real dy, dx</th><th>change late / far</th><th>real change</th></tr>")
    for e in keys["per_action"]:
        r = e["real"]
        parts.append(
            f"<tr><td>{e['latent']} → {e['true'] if e['true'] is not None else '—'}</td>"
            + "".join(f"<td>{e[n]['dy']['mean']:+.2f}, {e[n]['dx']['mean']:+.2f}</td>" for n in ("early", "late", "far"))
            + (f"<td>{r['dy']['mean']:+.2f}, {r['dx']['mean']:+.2f} <span class=note>({r['transitions']})</span></td>"
               if r else "<td>—</td>")
            + f"<td>{e['late']['change']['mean']:.2f} / {e['far']['change']['mean']:.2f}</td>"
            + (f"<td>{_fmt(r['change'])}</td>" if r else "<td>—</td>") + "</tr>")
    parts.append("</table>")
    parts.append(_img(key_plot(m, "motion"), "image/png", "held-key motion", "scene motion per step, held keys"))
    parts.append(_img(key_plot(m, "change"), "image/png", "held-key pixel change", "pixel change per step, held keys"))
    parts += _real_start_parts(keys, m)
    floor = "—" if real["real_vs_real"] is None else f"{real['real_vs_real']:.2f}"
    parts.append(f"<p><b>Realism</b>: Fréchet distance of {real['generated_frames']} generated frames (held keys, steps "
                 f"{real['steps'][0]}-{real['steps'][1]}) from {real['real_frames']} real frames, on fixed features "
                 f"({esc(real['features'])}), standardised by both sets pooled: {_fmt(real['frechet'])} "
                 f"(lower is better; real against real, two halves of the episodes: {floor}).</p>")
    return parts


def strip_png(strip: np.ndarray, scale: int = 3) -> bytes:
    """(rows, cols, H, W, 3) uint8 -> PNG of the grid, pixels enlarged."""
    from playworld.eval.evaluate import tile

    frame = tile(strip[:, :, None])[0]  # (rows*(H+2), cols*(W+2), 3)
    img = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _fmt(e: dict[str, float] | None, digits: int = 2) -> str:
    if e is None:
        return "—"
    return f"{e['mean']:.{digits}f} <span class=note>[{e['low']:.{digits}f}, {e['high']:.{digits}f}]</span>"


def render_report(metrics: dict[str, Any], gifs: dict[str, bytes] | None = None,
                  strips: dict[str, np.ndarray] | None = None) -> str:
    """The report page for a (validated) metrics dict, ``gifs`` name -> GIF bytes, ``strips`` name ->
    (rows, cols, H, W, 3) uint8 still grids."""
    gifs, strips = gifs or {}, strips or {}
    m, esc = metrics, html.escape
    s = m["settings"]
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>playworld eval: {esc(m['run'])}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>playworld eval: {esc(m['run'])}</h1>",
             f"<p>Data <code>{esc(m['data'])}</code>, split <b>{esc(s['split'])}</b> (held-out levels when split "
             f"by level), {m['counts']['episodes']} episodes, seed {s['seed']}, MaskGIT {s['maskgit_steps']} steps "
             f"at temperature {s['temperature']}. Made {esc(m['created_at'])}. Every figure: mean "
             f"<span class=note>[95% bootstrap interval]</span>, resampling episodes unless noted.</p>"]
    if m["counts"]["truncated_by_time"]:
        parts.append(f"<p class=warn>Stopped early by --max-minutes: {m['counts']['episodes']} of "
                     f"{s['episodes']} episodes evaluated.</p>")
    for w in m["warnings"]:
        parts.append(f"<p class=warn>{esc(w)}</p>")
    parts.append("<h2>Headline</h2><table><tr><th>figure</th><th>value [95% CI]</th><th>better</th><th>n</th></tr>")
    for name, e in m["headline"].items():
        parts.append(f"<tr><td>{esc(name)}</td><td>{_fmt(e, 3)}</td><td>{esc(e['better'])}</td><td>{e['n']}</td></tr>")
    parts.append("</table>")

    parts.append("<h2>Rollouts</h2><p>From real context frames the world generates "
                 f"{m['rollouts']['horizon']} frames driven by the latent actions the LAM reads from the true future, "
                 "or by uniformly random latent actions; the baseline repeats the last context frame. ΔPSNR_t = "
                 "PSNR(inferred) − PSNR(random) measures how much the actions control the world (Genie reports t=4).</p>")
    parts.append(_img(horizon_plot(m, "psnr"), "image/png", "PSNR against horizon", "PSNR at every horizon"))
    parts.append(_img(horizon_plot(m, "delta_psnr"), "image/png", "Delta PSNR against horizon", "ΔPSNR_t"))
    parts.append(_img(horizon_plot(m, "ssim"), "image/png", "SSIM against horizon", "SSIM at every horizon"))
    if "rollouts" in gifs:
        parts.append(_img(gifs["rollouts"], "image/gif", "rollouts", "columns: ground truth | inferred actions | "
                          "random actions; rows: clips", width=480, pixel=True))
    parts.append("<h2>Tokenizer</h2><table><tr><th>PSNR (dB)</th><th>SSIM</th><th>code usage</th><th>perplexity</th>"
                 f"</tr><tr><td>{_fmt(m['tokenizer']['psnr'])}</td><td>{_fmt(m['tokenizer']['ssim'], 3)}</td>"
                 f"<td>{_fmt(m['tokenizer']['code_usage'], 3)}</td><td>{_fmt(m['tokenizer']['perplexity'], 1)}</td>"
                 "</tr></table><p class=note>Usage and perplexity resample clips.</p>")
    parts.append(_img(code_usage_plot(m), "image/png", "code usage", "tokens per code"))

    a = m["actions"]
    parts.append("<h2>Latent actions against the true actions</h2>")
    parts.append(f"<p>Latent action use: {a['latent_usage']}.</p>")
    if not a["available"]:
        parts.append(f"<p class=note>Not measured: {esc(a['reason'] or '')}</p>")
    else:
        probe = _fmt(a["probe_accuracy"], 3) if a["probe_accuracy"] else esc(a["probe_reason"] or "—")
        parts.append("<table><tr><th>best-mapping accuracy</th><th>always the commonest action</th><th>NMI</th>"
                     f"<th>linear probe (held-out episodes)</th></tr><tr><td>{_fmt(a['mapping_accuracy'], 3)}</td>"
                     f"<td>{_fmt(a['majority_accuracy'], 3)}</td><td>{_fmt(a['nmi'], 3)}</td><td>{probe}</td></tr>"
                     f"</table><p class=note>{m['counts']['action_transitions']} transitions; {a['num_latent']} latent "
                     f"and {a['num_true']} true actions, so at most min of the two can be matched one to one. Probe "
                     f"majority baseline: {a['probe_majority_accuracy']}.</p>")
        parts.append(_img(confusion_plot(m), "image/png", "confusion matrix", "latent × true actions"))

    c = m["consistency"]
    parts.append(f"<h2>Consistency of each action</h2><p>Each latent action pressed {c['steps']} times from "
                 f"{c['starts']} start frames; the motion is the global image shift (phase correlation). Per action: "
                 "the silhouette of its motions (1 = the same motion from every start and unlike every other action; "
                 f"intervals resample start frames). Overall: {_fmt(c['overall'], 3)}.</p>")
    real = c.get("real")
    if real and real["available"]:
        parts.append(f"<p>The real game, each latent action's mapped key (true actions {esc(str(real['true_actions']))}) "
                     f"pressed as often from settled starts of {real['levels']} evaluated levels: "
                     f"{_fmt(real['overall'], 3)}, what the game itself scores under this LAM's mapping (keys that move alike score "
                     f"as the game makes them); the model from those same real starts: {_fmt(real['model_overall'], 3)}. "
                     f"Counting latent actions whose keys the game cannot tell apart as one (classes "
                     f"{esc(str(real['classes']))}): the real game {_fmt(real['class_overall'], 3)}, the model "
                     f"{_fmt(real['model_class_overall'], 3)}.</p>")
    elif real:
        parts.append(f"<p class=note>No real-game consistency: {esc(real['reason'] or '')}.</p>")
    parts.append(_img(consistency_plot(m), "image/png", "consistency per action", "silhouette and mean shift per action"))
    if "action_grid" in gifs:
        parts.append(_img(gifs["action_grid"], "image/gif", "action grid", "rows: start frames; columns: latent "
                          "actions, each pressed repeatedly", width=min(900, 80 * len(c["per_action"])), pixel=True))

    if "motion" in m:  # schema v2 on
        parts.extend(_motion_section(m))

    mem = m["memory"]
    walks = ", ".join(f"{w['there']}→{w['back']}" for w in mem["walks"]) or "none"
    parts.append(f"<h2>Memory: there and back again</h2><p>{mem['k']} presses of one latent action, then {mem['k']} "
                 f"of its opposite (pairs from {esc(mem['pairs_from'])}: "
                 f"{esc(walks)}); PSNR of the frame "
                 f"returned to against the start: {_fmt(mem['model_return_psnr'])} dB.</p>")
    real = mem["real"]
    if real["available"]:
        parts.append("<table><tr><th>on real start frames</th><th>PSNR (dB)</th></tr>"
                     f"<tr><td>real game: return vs start</td><td>{_fmt(real['return_psnr'])}</td></tr>"
                     f"<tr><td>model: return vs start</td><td>{_fmt(real['model_return_psnr'])}</td></tr>"
                     f"<tr><td>model's return vs real return</td><td>{_fmt(real['model_vs_real_psnr'])}</td></tr>"
                     f"</table><p class=note>{real['levels']} levels (intervals resample levels).</p>")
    else:
        parts.append(f"<p class=note>Real environment: not walked ({esc(real['reason'] or '')}).</p>")
    for name, caption in (("memory_model", "model on dataset frames"), ("memory_model_on_real", "model on real frames"),
                          ("memory_real", "real game")):
        if name in strips:
            parts.append(_img(strip_png(strips[name]), "image/png", name, f"{caption}: start | after k | back"))

    sp = m["speed"]
    parts.append(f"<h2>Speed</h2><p>{_fmt(sp['ms_per_frame'], 1)} ms per frame for one world (batch 1), "
                 f"{sp['ms_per_frame_batched']:.1f} ms per frame at batch {sp['batch']}; MaskGIT {sp['maskgit_steps']} "
                 f"steps, temperature {sp['temperature']}, {esc(sp['device'])}, {sp['threads']} threads.</p>")
    parts.append("<h2>Settings</h2><table>" + "".join(f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>"
                                                       for k, v in s.items()) + "</table>")
    parts.append(f"<p class=note>schema {esc(m['format'])} v{m['schema_version']}; see docs/eval.md.</p></body></html>")
    return "\n".join(parts)
