"""The evaluation report: report.md with precision-recall plots and a gallery of the worst misses.

The plots are drawn with OpenCV, which the backend already needs, rather than matplotlib, which would add
six pinned packages (matplotlib, contourpy, cycler, fonttools, kiwisolver, pyparsing) for two simple
kinds of picture: lines on a grid with a legend, and image crops with boxes drawn on them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..config import Settings
from ..vision.annotator import ImageAnnotation
from . import metrics
from .evaluate import Result
from .ground_truth import ImageTruth
from .metrics import DetectionScores, match_boxes

# Tableau's 20 colours (BGR), so that neighbouring curves differ.
PALETTE = [(180, 119, 31), (232, 199, 174), (14, 127, 255), (120, 187, 255), (44, 160, 44), (138, 223, 152),
           (40, 39, 214), (150, 152, 255), (189, 103, 148), (213, 176, 197), (75, 86, 140), (148, 156, 196),
           (194, 119, 227), (210, 182, 247), (127, 127, 127), (199, 199, 199), (34, 189, 188), (141, 219, 219),
           (207, 190, 23), (229, 218, 158)]
TRUTH, IGNORED, PREDICTED, MISS = (40, 170, 40), (0, 200, 230), (40, 40, 220), (220, 0, 220)  # BGR
FONT = cv2.FONT_HERSHEY_SIMPLEX
GALLERY_TILE = 300  # pixels, square
GALLERY_PER_KIND = 6  # missed boxes and false boxes each


def write_report(out_dir: Path, results: list[Result], pairs: list[tuple[ImageTruth, Path]], gallery: Result,
                 settings: Settings, load_image, notes: list[str], match_iou: float = metrics.MATCH_IOU) -> Path:
    """Write report.md, faces_pr.png, persons_pr.png and worst_misses.png into out_dir; return report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = [t for t, _ in pairs]
    faces = [r for r in results if r.faces is not None]
    persons = [r for r in results if r.persons is not None]
    lines = [f"# Annotation quality on {len(pairs)} images", "", _counts(truth), ""]
    lines += [f"Scores at the shipped thresholds: faces >= {settings.face_score_threshold} "
              f"(FACE_SCORE_THRESHOLD), people >= {settings.person_score_threshold} (PERSON_SCORE_THRESHOLD); "
              f"a box matches at IoU >= {match_iou} (AP50 and AP50:95 use their own IoU thresholds).", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    configurations = ["configuration", "faces", "people", "identities", "flip TTA"]
    lines += ["## Configurations", "", markdown_table(configurations, [
        [r.configuration.name, "+".join(r.configuration.face_models) or "–",
         "+".join(r.configuration.person_models) or "–", "+".join(r.configuration.descriptor_models) or "–",
         "yes" if r.configuration.flip_tta else "no"] for r in results]), ""]
    if faces:
        lines += ["## Faces", "", _detection_table(faces, "faces", landmarks=True), "", "![faces](faces_pr.png)", ""]
        draw_pr_curves([(r.configuration.name, r.faces) for r in faces], "faces", out_dir / "faces_pr.png")
    if persons:
        lines += ["## People", "", _detection_table(persons, "persons"), "", "![people](persons_pr.png)", ""]
        draw_pr_curves([(r.configuration.name, r.persons) for r in persons], "people", out_dir / "persons_pr.png")
    with_ids = [r for r in results if r.identity is not None]
    if with_ids:
        lines += ["## Identities", "", markdown_table(
            ["configuration", "faces", "people", "clusters", "pairwise P", "pairwise R", "pairwise F1",
             "BCubed P", "BCubed R", "BCubed F1", "merges", "splits"],
            [[r.configuration.name, r.identity.faces, r.identity.people, r.identity.clusters,
              *map(_number, r.identity.pairwise), *map(_number, r.identity.bcubed), r.identity.merges,
              r.identity.splits] for r in with_ids]), ""]
    fix_columns = [(["faces missing", "faces false"], lambda r: _box_fixes(r.faces), faces),
                   (["people missing", "people false"], lambda r: _box_fixes(r.persons), persons),
                   (["merges", "splits"], lambda r: [r.identity.merges, r.identity.splits] if r.identity
                    else ["–", "–"], with_ids)]
    fix_columns = [(header, cells) for header, cells, scored in fix_columns if scored]  # classes the truth has
    lines += ["## Fixes an annotator would make", "", markdown_table(
        ["configuration", *(name for header, _ in fix_columns for name in header), "total"],
        [[r.configuration.name, *(cell for _, cells in fix_columns for cell in cells(r)), r.fixes] for r in results]),
        ""]
    misses = worst_misses(gallery, pairs, match_iou)
    draw_gallery(misses, load_image, out_dir / "worst_misses.png")
    lines += [f"## Worst misses of {gallery.configuration.name}", "",
              "Green: ground truth, yellow: don't care, red: shown predictions; magenta: the miss.", "",
              "![worst misses](worst_misses.png)", ""]
    lines += [f"- {m.path.name}: {m.caption}, box {np.round(m.box).astype(int).tolist()}" for m in misses]
    lines += [] if misses else ["Nothing missed."]
    lines += ["", "## Definitions", "", metrics.__doc__.split("\n\n", 2)[2].strip()]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _counts(truth: list[ImageTruth]) -> str:
    faces = sum(int((~t.faces.ignore).sum()) for t in truth)
    identities = [i for t in truth for i, ignore in zip(t.faces.identities, t.faces.ignore) if i and not ignore]
    landmarks = sum(int((~np.isnan(t.faces.landmarks).all(axis=(1, 2)) & ~t.faces.ignore).sum()) for t in truth)
    persons = sum(int((~t.persons.ignore).sum()) for t in truth)
    ignored = sum(int(t.faces.ignore.sum() + t.persons.ignore.sum()) for t in truth)
    return (f"Ground truth: {faces} faces ({len(identities)} with an identity, {len(set(identities))} people; "
            f"{landmarks} with landmarks), {persons} persons, {ignored} don't-care regions.")


def _detection_table(results: list[Result], kind: str, landmarks: bool = False) -> str:
    header = ["configuration", "AP50", "AP50:95", "recall", "precision", "shown", "missing", "false"]
    rows = []
    for r in results:
        scores: DetectionScores = getattr(r, kind)
        row = [r.configuration.name, _number(scores.ap50), _number(scores.ap50_95), _number(scores.recall),
               _number(scores.precision), scores.shown, scores.missing, scores.false]
        if landmarks:
            row.append(f"{_number(r.landmark_error)} ({r.landmark_faces})")
        rows.append(row)
    return markdown_table(header + (["landmark error (faces)"] if landmarks else []), rows)


def _box_fixes(scores: DetectionScores | None) -> list:
    return [scores.missing, scores.false] if scores is not None else ["–", "–"]


def _number(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def draw_pr_curves(curves: list[tuple[str, DetectionScores]], title: str, path: Path) -> None:
    """Precision against recall at IoU 0.5, one line per configuration; the dot is the shipped threshold."""
    width, height, legend_width = 760, 620, 400
    left, top, right, bottom = 70, 60, width - 30, height - 60
    canvas = np.full((height, width + legend_width, 3), 255, np.uint8)
    to_px = lambda r, p: (int(left + r * (right - left)), int(bottom - p * (bottom - top)))  # noqa: E731
    for step in range(11):
        value = step / 10
        cv2.line(canvas, to_px(value, 0), to_px(value, 1), (225, 225, 225), 1)
        cv2.line(canvas, to_px(0, value), to_px(1, value), (225, 225, 225), 1)
        if step % 2 == 0:
            x, y = to_px(value, 0)
            cv2.putText(canvas, f"{value:.1f}", (x - 12, y + 20), FONT, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
            x, y = to_px(0, value)
            cv2.putText(canvas, f"{value:.1f}", (x - 40, y + 5), FONT, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    # The frame stands a little off the 0..1 square, so that curves along precision 1 or recall 1 stay visible.
    cv2.rectangle(canvas, (left, top - 12), (right + 12, bottom), (90, 90, 90), 1)
    cv2.putText(canvas, f"{title}: precision-recall at IoU 0.5", (left + 60, 22), FONT, 0.65, (0, 0, 0), 1,
                cv2.LINE_AA)
    cv2.putText(canvas, "recall", ((left + right) // 2 - 25, height - 20), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "precision", (5, top - 20), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (name, scores) in enumerate(curves):
        colour = PALETTE[i % len(PALETTE)]
        points = np.array([to_px(r, p) for r, p in zip(scores.curve_recall, scores.curve_precision)], np.int32)
        if len(points):
            cv2.polylines(canvas, [points.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        if scores.shown and np.isfinite([scores.recall, scores.precision]).all():  # NaN: no truth, or all ignored
            cv2.circle(canvas, to_px(scores.recall, scores.precision), 6, colour, -1, cv2.LINE_AA)
        y = top + 10 + i * min(26, (height - top - 20) // len(curves))
        cv2.line(canvas, (width + 10, y), (width + 40, y), colour, 3)
        cv2.putText(canvas, f"{name}  AP50 {_number(scores.ap50)}", (width + 50, y + 5), FONT, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.imwrite(str(path), canvas)


@dataclass
class Miss:
    path: Path
    box: np.ndarray
    caption: str
    badness: float  # larger is worse: a missed box's area, a false box's score
    truth: ImageTruth
    shown: ImageAnnotation


def worst_misses(result: Result, pairs: list[tuple[ImageTruth, Path]],
                 match_iou: float = metrics.MATCH_IOU) -> list[Miss]:
    """The largest missed boxes and the highest-scoring false ones of this configuration at the shipped
    thresholds (result.shown), GALLERY_PER_KIND of each."""
    missed, false = [], []
    for (truth, path), visible in zip(pairs, result.shown):
        for kind, objects, found, scored in (("face", truth.faces, visible.faces, result.faces),
                                             ("person", truth.persons, visible.persons, result.persons)):
            if scored is None:
                continue
            matched = match_boxes(objects, found.boxes, found.scores, match_iou)
            for g in np.setdiff1d(np.flatnonzero(~objects.ignore), matched):
                w, h = objects.boxes[g, 2:] - objects.boxes[g, :2]
                missed.append(Miss(path, objects.boxes[g], f"missed {kind} ({w:.0f}x{h:.0f} px)", float(w * h),
                                   truth, visible))
            for d in np.flatnonzero(matched == -1):
                score = float(found.scores[d])
                false.append(Miss(path, found.boxes[d], f"false {kind}, score {score:.2f}", score, truth, visible))
    worst = lambda misses: sorted(misses, key=lambda m: -m.badness)[:GALLERY_PER_KIND]  # noqa: E731
    return worst(missed) + worst(false)


def draw_gallery(misses: list[Miss], load_image, path: Path, columns: int = 4) -> None:
    """One tile per miss: the surroundings of the box, scaled to the tile, with every truth and shown box.
    load_image: path -> service.images.LoadedImage."""
    caption_height = 24
    tiles = []
    for miss in misses:
        loaded = load_image(miss.path)
        image = loaded.pixels[..., ::-1]  # OpenCV draws in BGR
        # Boxes are in the image's own pixels; the decoded pixels are fewer for an image over MAX_WORK_PIXELS.
        to_pixels = lambda box: np.asarray(box, np.float64) * loaded.scale  # noqa: E731
        left, top, right, low = _surroundings(image.shape, to_pixels(miss.box))
        scale = GALLERY_TILE / max(right - left, low - top)
        crop = cv2.resize(image[top:low, left:right], (max(1, round((right - left) * scale)),
                                                      max(1, round((low - top) * scale))), interpolation=cv2.INTER_AREA)
        tile = np.full((GALLERY_TILE + caption_height, GALLERY_TILE, 3), 255, np.uint8)
        tile[:crop.shape[0], :crop.shape[1]] = crop
        to_tile = lambda box: (to_pixels(box) - (left, top, left, top)) * scale  # noqa: E731
        for objects in (miss.truth.faces, miss.truth.persons):
            for box, ignore in zip(objects.boxes, objects.ignore):
                _rectangle(tile, to_tile(box), IGNORED if ignore else TRUTH, 2)
        for box in np.concatenate([miss.shown.faces.boxes, miss.shown.persons.boxes]):
            _rectangle(tile, to_tile(box), PREDICTED, 2)
        _rectangle(tile, to_tile(miss.box), MISS, 3)
        tile[GALLERY_TILE:] = 255  # boxes reaching past the crop do not run into the caption
        cv2.putText(tile, f"{miss.path.name}: {miss.caption}"[:52], (4, GALLERY_TILE + 17), FONT, 0.36, (0, 0, 0),
                    1, cv2.LINE_AA)
        tiles.append(tile)
    if not tiles:
        canvas = np.full((60, 400, 3), 255, np.uint8)
        cv2.putText(canvas, "nothing missed", (10, 38), FONT, 0.8, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.imwrite(str(path), canvas)
        return
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % columns)
    rows = [np.hstack([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=200) for t in tiles[i:i + columns]])
            for i in range(0, len(tiles), columns)]
    cv2.imwrite(str(path), np.vstack(rows))


def _rectangle(image: np.ndarray, box, colour, thickness: int) -> None:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)


def _surroundings(shape, box) -> tuple[int, int, int, int]:
    """left, top, right, bottom of the box with as much again around it on each side, inside the image."""
    x1, y1, x2, y2 = box
    margin = max(x2 - x1, y2 - y1, 32)
    height, width = shape[:2]
    left, top = int(max(0, x1 - margin)), int(max(0, y1 - margin))
    return left, top, int(min(width, max(x2 + margin, left + 1))), int(min(height, max(y2 + margin, top + 1)))
