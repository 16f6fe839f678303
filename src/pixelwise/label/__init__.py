"""``pixelwise label``: a labeling page where a few strokes train a model live.

- :mod:`pixelwise.label.project`: the project folder (a dataset in the generic layout), masks,
  strokes applied under a lock and saved atomically, undo;
- :mod:`pixelwise.label.trainer`: the background trainer (masked loss on the labelled pixels,
  a checkpoint published as a normal run directory every few seconds) and the live model's
  predictions and uncertainty;
- :mod:`pixelwise.label.app`: the starlette routes and the page (``static/``);
  :func:`run_label_server` serves a project until interrupted.
"""
