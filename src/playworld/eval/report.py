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
    parts.append(_img(consistency_plot(m), "image/png", "consistency per action", "silhouette and mean shift per action"))
    if "action_grid" in gifs:
        parts.append(_img(gifs["action_grid"], "image/gif", "action grid", "rows: start frames; columns: latent "
                          "actions, each pressed repeatedly", width=min(900, 80 * len(c["per_action"])), pixel=True))

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
