"""``decrappify bench napari``: how long napari's UI thread freezes while a lazy result is inspected.

Under a screen (``xvfb-run -a -s "-screen 0 1600x1000x24"`` without one), a napari window
shows the CREMI sample's LR (25 x 156 x 156, the quality protocol's noisy 4x LR of all planes:
:func:`.quality.protocol_pairs`) restored lazily by a model (em-4x: 25 x 624 x 624), and
the user's inspection is replayed: the first display, planes stepped through one at a time
(each until it is fully restored), a quick scroll over several planes (a step every
``scroll_ms``) and a return to a plane seen before. A 10 ms QTimer in the UI thread records
every gap between its ticks (how long napari could not repaint or answer a click).

Two ways of showing the same lazy result, side by side in one run, beside a floor:

* ``floor``: an in-memory array of the result's size (the bicubic upsampling), what napari's own
  display costs on this machine (slicing, painting; with other work on the machine, scheduling);

* ``before``: the dask array itself as the layer (napari computes the tiles on screen in its UI
  thread; the plugin's lazy layer until the live arrays);
* ``after``: the plugin's layer (:func:`napari_decrappify._napari.api.add_result_layer` with
  ``lazy=True``: a :class:`napari_decrappify._napari._live_lazy.LiveArray`, tiles restored in a
  background thread, the input's bicubic upsampling shown until then).

``after`` runs before ``before``, so that nothing it computes is cached for ``before``. Reported per mode:
the stall distribution (max, p95, the count over 100 ms), with and without napari's own cost of
creating the layer (vispy set-up, the same for any data), and the seconds from each display
or plane change until the plane on screen is fully restored.
"""

from __future__ import annotations

import os

import numpy as np

from . import benchmark, option_true


@benchmark("napari")
def bench_napari(model: str = "em-4x", sample: str = "cremi", steps: str = "3",
                 scroll: str = "5", scroll_ms: str = "250", before: str = "true") -> dict:
    """Stalls of napari's UI thread and time to a fully restored plane, lazy result, before vs
    after (module doc).

    Options (``-o key=value``): ``model`` (em-4x), ``sample`` (cremi), ``steps`` (planes
    stepped through one at a time, each until restored), ``scroll`` (planes of the quick
    scroll), ``scroll_ms`` (its step interval), ``before`` (false: the plugin's layer only).
    """
    if not os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        raise RuntimeError('bench napari needs a screen: run it under xvfb-run -a -s "-screen 0 '
                           '1600x1000x24" decrappify bench napari')
    import importlib

    from ..models import load_model, resolve_model_path
    from ..samples import load_sample
    from .quality import protocol_pairs

    # torch before napari (../shared/ENVIRONMENT.md: triton loaded after Qt crashes)
    m = load_model(resolve_model_path(model))
    hr_stack, _meta = load_sample(sample)
    lr, _hr = protocol_pairs(hr_stack, m.scale, True, planes=range(hr_stack.shape[0]))
    z0 = lr.shape[0] // 2
    step_planes = [z0 + 1 + i for i in range(int(steps))]
    scroll_planes = [step_planes[-1] + 1 + i for i in range(int(scroll))]
    modes = ("floor", "after", "before") if option_true(before) else ("floor", "after")
    # the core never imports napari: its side is looked up at run time (as the CLI's demo view)
    view = importlib.import_module("napari_decrappify._napari._bench_view")
    rows = view.measure(m, lr, modes, step_planes, scroll_planes, int(scroll_ms))
    summary = []
    for r in rows:
        s, x = r["stalls"], r["stalls_without_layer_creation"]
        t = r["seconds_to_full_plane"]
        steps_s = [v for k, v in t.items() if k.startswith("plane ")]
        summary.append({
            "mode": r["mode"], "stall max ms": round(s["max_ms"]), "stall p95 ms": round(s["p95_ms"]),
            "stalls > 100 ms": s["over_100ms"], "frozen s": round(s["frozen_s"], 1),
            "max ms without layer creation": round(x["max_ms"]),
            "first display to full plane s": round(t["first display"], 2),
            "plane step to full plane s (mean)": round(float(np.mean(steps_s)), 2),
            "scroll to full plane s": round(t[f"scroll to plane {scroll_planes[-1]}"], 2),
            "back to a seen plane s": round(t[f"back to plane {step_planes[0]}"], 2)})
    return {"model": m.name, "lr_shape": list(lr.shape), "restored_shape":
            [lr.shape[0], lr.shape[1] * m.scale, lr.shape[2] * m.scale],
            "steps": step_planes, "scroll": scroll_planes, "scroll_ms": int(scroll_ms),
            "rows": rows, "summary": summary,
            "notes": "Stalls: gaps between the ticks of a 10 ms QTimer in napari's UI thread "
                     "(window 1600 x 1000 under Xvfb). 'without layer creation' leaves out the "
                     "call that adds the layer (napari's vispy set-up; for 'before' that call "
                     "also computes the first plane, so nothing is left out there)."}
