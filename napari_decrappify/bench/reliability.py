"""``decrappify bench reliability``: run the reliability battery and count its outcomes.

The battery (:mod:`.reliability_cases` and :mod:`.reliability_process`, run one case at a time
by :func:`.reliability_run.run_case`) is the one ``tests/reliability`` runs case by
case: bad inputs, bad model folders and output paths for every command that takes them, a
crafted pickle, interruptions (SIGTERM, kill -9, a full disk) resumed and compared bit for bit,
two processes on one output and several threads on one model. The promise (docs/reliability.md)
is 0 tracebacks, 0 silent wrong results and 0 data loss.
"""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path

from . import benchmark


def run_battery(select: str = "", progress=None) -> list[dict]:
    """Run every case (whose id contains ``select``), each in a fresh folder."""
    from .reliability_cases import cases
    from .reliability_process import process_cases
    from .reliability_run import run_case

    results = []
    with tempfile.TemporaryDirectory(prefix="decrappify-reliability-") as tmp:
        battery = [c for c in [*cases(), *process_cases()] if select in c.id]
        for k, case in enumerate(battery):
            t0 = time.perf_counter()
            result = run_case(case, Path(tmp) / f"case{k:04d}")
            result["seconds"] = round(time.perf_counter() - t0, 3)
            results.append(result)
            if progress is not None:
                progress(k + 1, len(battery), result)
    return results


@benchmark("reliability")
def bench_reliability(select: str = "") -> dict:
    """Counts of outcomes over the battery: cases, clear errors, tracebacks, silent wrong
    results, data loss. Option (``-o key=value``): ``select`` (only cases whose id contains it).
    """
    from .reliability_run import BAD_OUTCOMES, OUTCOMES

    results = run_battery(select)
    counts = collections.Counter(r["outcome"] for r in results)
    groups = collections.Counter(r["case"].split(":")[0].split(",")[0] for r in results)
    bad = [r for r in results if r["outcome"] in BAD_OUTCOMES
           or (r["outcome"] == "ok") != (r["expect"] == "ok")]
    summary = {"cases": len(results), **{o: counts.get(o, 0) for o in OUTCOMES},
               "by group": dict(groups)}
    return {"protocol": __doc__.strip(), "summary": summary, "failures": bad,
            "results": results}
