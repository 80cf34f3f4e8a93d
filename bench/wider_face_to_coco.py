"""Turn WIDER FACE's box list (wider_face_split/wider_face_val_bbx_gt.txt) into COCO ground truth for
`autoannotator eval`, optionally every k-th image only.

    python -m bench.wider_face_to_coco wider_face_val_bbx_gt.txt gt.json [--every 20] [--min-size 16]

Faces WIDER marks invalid, and faces smaller than --min-size pixels on their shorter side, become "don't
care" regions (COCO iscrowd): finding them costs nothing, missing them costs nothing either. The default
models are not built for faces of a few pixels, which make up much of WIDER FACE's "hard" part.
WIDER FACE has no identities; its landmarks are in a separate (RetinaFace) release and are not read here.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def convert(lines: list[str], every: int = 1, min_size: float = 0.0) -> dict:
    images, annotations = [], []
    position, index = 0, 0
    while position < len(lines) and lines[position].strip():
        name, count = lines[position].strip(), int(lines[position + 1])
        rows = lines[position + 2:position + 2 + max(count, 1)]  # an image without faces still has one row
        position += 2 + max(count, 1)
        index += 1
        if (index - 1) % every:
            continue
        images.append({"id": len(images) + 1, "file_name": name})
        for row in rows[:count]:
            x, y, w, h, *_, invalid, _occlusion, _pose = (float(v) for v in row.split()[:10])
            annotations.append({
                "id": len(annotations) + 1, "image_id": len(images), "category_id": 1, "bbox": [x, y, w, h],
                "area": w * h, "iscrowd": int(invalid > 0 or min(w, h) < min_size),
            })
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "face"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("boxes", type=Path, help="wider_face_val_bbx_gt.txt")
    parser.add_argument("out", type=Path, help="the COCO JSON file to write")
    parser.add_argument("--every", type=int, default=1, help="keep every k-th image (default: all)")
    parser.add_argument("--min-size", type=float, default=0.0, help="smaller faces are don't-care (pixels)")
    args = parser.parse_args()
    coco = convert(args.boxes.read_text().splitlines(), args.every, args.min_size)
    args.out.write_text(json.dumps(coco))
    cared = sum(1 for a in coco["annotations"] if not a["iscrowd"])
    print(f"{len(coco['images'])} images, {cared} faces, {len(coco['annotations']) - cared} don't-care: {args.out}")


if __name__ == "__main__":
    main()
