"""Measure annotation quality against hand-made ground truth (`autoannotator eval`).

- ``ground_truth``: read a Label Studio JSON export or a COCO file (as CVAT exports it) into boxes,
  landmarks and identities in pixels.
- ``metrics``: detection AP (pycocotools), recall at the shipped threshold, landmark error, identity
  clustering scores and the number of fixes an annotator would still have to make.
- ``evaluate``: run every model alone and every ensemble over the images and score them.
- ``report``: the markdown report with its plots (drawn with OpenCV).
"""
