"""--report report.html: one self-contained page (no network; thumbnails inlined as data URIs) that
shows, per video, the sampled frames, the top-k classes as bars, and per class the prompt each frame
matched best with its attribute and similarity: the paper's Figure 5 view.

Frames shown are those of the first crop of every temporal clip (clips x T); other crops of the same
frame are summarised in the per-class "prompts chosen" list, which counts every view.
"""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from typing import Sequence


from apclip.fileio import atomic_write

from apclip.engine.cli.explain_view import prompt_choices
from apclip.engine.predictions import Prediction

THUMB_HEIGHT = 96


@dataclass
class ReportVideo:
    source: str
    prediction: Prediction
    crops: int  # the bundle's crops: view v = clip * crops + crop
    thumbnails: dict[int, str] = field(default_factory=dict)  # decoded frame index -> data URI (JPEG)


def shown_matches(pred: Prediction, crops: int):
    """Per class, the frame matches of crop 0 of each view, in sampling order (clip-major)."""
    return [[m for m in e.frames if m.view % crops == 0] for e in pred.explanations or []]


def read_thumbnails(source: str, frame_indices: Sequence[int], fps: float | None = None,
                    height: int = THUMB_HEIGHT) -> dict[int, str]:
    """JPEG data URIs of the given decoded frames (one more pass over the source)."""
    import cv2

    from apclip.engine.video.sources import open_source

    wanted = set(int(i) for i in frame_indices)
    out: dict[int, str] = {}
    with open_source(source, fps=fps) as src:
        for frame in src.frames(lambda index, timestamp: index in wanted):
            h, w = frame.image.shape[:2]
            small = cv2.resize(frame.image, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)
            ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok:
                out[frame.index] = "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")
            if len(out) == len(wanted):
                break
    return out


def collect(pred: Prediction, source: str, crops: int, fps: float | None = None) -> ReportVideo:
    frames = [m.frame for m in (shown_matches(pred, crops) or [[]])[0]]
    return ReportVideo(source, pred, crops, read_thumbnails(source, frames, fps) if frames else {})


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px} h2{font-size:16px;margin:28px 0 6px;word-break:break-all}
.video{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin-bottom:24px}
.meta{color:#666;font-size:12px}
.grid{overflow-x:auto;padding:6px 0}
.grid img{height:96px;display:block;border-radius:3px;margin:0 auto}
.cap{font-size:11px;color:#666;font-weight:normal;text-align:center}
th.cls{text-align:right;min-width:120px;background:#f2f5fa}
.prompt{margin-top:2px}
.bars{margin:10px 0;max-width:640px}
.class-bar{display:flex;align-items:center;gap:8px;margin:3px 0}
.class-bar .name{flex:0 0 180px;text-align:right;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.class-bar .track{flex:1 1 auto;height:14px;background:#eef1f5;border-radius:2px}
.class-bar .bar{display:block;height:100%;background:#3b7dd8;border-radius:2px}
.class-bar .val{flex:0 0 9.5em;font-variant-numeric:tabular-nums;color:#444}
table.why{border-collapse:collapse;margin:6px 0 14px;font-size:12px}
table.why td,table.why th{border:1px solid #e2e2e2;padding:4px 6px;vertical-align:top;min-width:110px;max-width:170px}
table.why th{background:#fff}
.attr{display:inline-block;background:#eef3e6;color:#3d6b12;border-radius:3px;padding:0 4px;font-size:11px}
.sim{font-variant-numeric:tabular-nums;color:#555}
.choices{margin:2px 0 12px 0;padding-left:18px;font-size:12px}
"""

# Checks every inlined image decoded; a failure is a console error (what the browser test reads).
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.frame'), bad = 0;
  imgs.forEach(function (img) { if (!img.complete || img.naturalWidth === 0) { bad++; } });
  if (bad) { console.error('apclip report: ' + bad + ' frame image(s) failed to decode'); }
  document.body.setAttribute('data-images-ok', String(imgs.length - bad));
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _video_section(video: ReportVideo, attributes: dict[tuple[str, str], str]) -> str:
    pred = video.prediction
    per_class = shown_matches(pred, video.crops)
    # Columns in time order (sampling order is clip-major: clip 2's first frame precedes clip 1's last).
    order = sorted(range(len(per_class[0])), key=lambda i: per_class[0][i].time) if per_class else []
    columns = [per_class[0][i] for i in order] if per_class else []
    parts = [f'<section class="video"><h2>{_e(video.source)}</h2>',
             f'<div class="meta">{pred.frames} frame embeddings, {pred.distinct_frames} distinct frame(s) of '
             f'{pred.sampled_frames} sampled, {_e(pred.backend)} + {_e(pred.scorer)}</div>', '<div class="bars">']
    # Every bar starts where its track starts; its length is the class's probability (100% = the whole track).
    for t in pred.top:
        probability = t.probability if t.probability is not None else 0.0
        parts.append(f'<div class="class-bar"><span class="name" title="{_e(t.label)}">{_e(t.label)}</span>'
                     f'<span class="track"><span class="bar" style="width:{100.0 * probability:.2f}%"></span></span>'
                     f'<span class="val">{100.0 * probability:5.1f}% ({t.score:.4f})</span></div>')
    parts.append('</div><div class="grid"><table class="why"><tr><th class="corner">class \\ frame</th>')
    for m in columns:
        uri = video.thumbnails.get(m.frame, "")
        parts.append(f'<th><img class="frame" alt="frame {m.frame}" src="{uri}">'
                     f'<div class="cap">#{m.frame} · {m.time:.2f}s</div></th>')
    parts.append("</tr>")
    for explanation, matches in zip(pred.explanations or [], per_class):
        parts.append(f'<tr class="class-row"><th class="cls">{_e(explanation.label)}'
                     f'<div class="sim">{explanation.score:.4f}</div></th>')
        for m in (matches[i] for i in order):
            attribute = attributes.get((explanation.label, m.prompt), "—")
            parts.append(f'<td><span class="attr">{_e(attribute)}</span> <span class="sim">{m.similarity:.3f}</span>'
                         f'<div class="prompt">{_e(_description(m.prompt, explanation.label))}</div></td>')
        parts.append("</tr>")
    parts.append("</table></div>")
    for explanation in pred.explanations or []:
        if explanation.views is not None:  # vificlip protocol: one prompt per class, scored per view
            parts.append(f'<h3>views of “{_e(explanation.label)}” ({explanation.score:.4f})</h3>'
                         '<table class="why views"><tr><th>view</th><th>frames</th><th>seconds</th><th>cosine</th>'
                         '<th>probability</th></tr>')
            parts += [f'<tr><td>{v.view}</td><td>#{v.first_frame}-#{v.last_frame}</td><td>{v.start:.2f}-{v.end:.2f}</td>'
                      f'<td class="sim">{v.similarity:.3f}</td><td class="sim">{v.probability:.4f}</td></tr>'
                      for v in explanation.views]
            parts.append("</table>")
            continue
        parts.append(f'<h3>prompts chosen for “{_e(explanation.label)}”</h3><ul class="choices">')
        for c in prompt_choices(explanation)[:5]:
            attribute = attributes.get((explanation.label, c.prompt))
            badge = f' <span class="attr">{_e(attribute)}</span>' if attribute else ""
            parts.append(f'<li>{c.frames}/{len(explanation.frames)} views · sim {c.mean_similarity:.3f} · '
                         f'{_e(c.prompt)}{badge}</li>')
        parts.append("</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def _description(prompt: str, label: str) -> str:
    """The prompt without its "a video of {label}." prefix (the row already names the class)."""
    prefix = f"a video of {label}."
    rest = prompt[len(prefix):].strip() if prompt.startswith(prefix) else prompt
    return rest or prompt


def render_report(videos: Sequence[ReportVideo], attributes: dict[tuple[str, str], str] | None = None,
                  title: str = "apclip report") -> str:
    attributes = attributes or {}
    body = "\n".join(_video_section(v, attributes) for v in videos)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            f'style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">'
            f'<title>{_e(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>'
            f'<body><h1>{_e(title)}</h1><p class="meta">{len(videos)} video(s)</p>\n{body}\n</body></html>\n')


def write_report(path: str | os.PathLike, videos: Sequence[ReportVideo],
                 attributes: dict[tuple[str, str], str] | None = None) -> None:
    with atomic_write(path, "w") as f:
        f.write(render_report(videos, attributes))
