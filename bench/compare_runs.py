"""Print a side-by-side table of `arbg evaluate` results (metrics.json files).

Usage: python bench/compare_runs.py LABEL=path/to/metrics.json [LABEL=...]

Rows: ESS, unique resampled, E-W2 / T-W2 / TICA-W2 for the proposal, the reweighted ensemble
(resampled and weight-transported) and the MD-vs-MD floor, then the basin populations of the
first residue (reference, proposal, reweighted +- SE).
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    runs = []
    for arg in argv:
        label, _, path = arg.partition("=")
        with open(path) as f:
            runs.append((label, json.load(f)))
    if not runs:
        print(__doc__)
        return 2
    head = f"{'':34s}" + "".join(f"{label:>22s}" for label, _ in runs)
    print(head)

    def row(name: str, get) -> None:
        cells = []
        for _, m in runs:
            try:
                v = get(m)
                cells.append(f"{v:22.4g}" if isinstance(v, float) else f"{v!s:>22s}")
            except (KeyError, TypeError, IndexError):
                cells.append(f"{'-':>22s}")
        print(f"{name:34s}" + "".join(cells))

    row("proposals", lambda m: m["n_proposals"])
    row("Kish ESS", lambda m: float(m["ess"]))
    row("unique resampled", lambda m: m["unique_resampled"]["mean"])
    for ens in ("proposal", "reweighted_resampled", "reweighted_weighted", "md_floor"):
        for key in ("e_w2", "t_w2", "tica_w2"):
            row(f"{ens} {key}", lambda m, e=ens, k=key: float(m["metrics"][e][k]["mean"]))
    table = runs[0][1]["basin_table"]
    basins = [r for r in table if r["residue"] == table[0]["residue"]]
    for b in basins:
        name = b["basin"]

        def pick(m, name=name, field="reweighted"):
            r = next(r for r in m["basin_table"] if r["basin"] == name)
            se = r.get(f"{field}_se")
            return f"{r[field]:.4f}" + (f" +- {se:.4f}" if se is not None else "")

        row(f"{name} reference", lambda m, p=pick: p(m, field="reference"))
        row(f"{name} proposal", lambda m, p=pick: p(m, field="proposal"))
        row(f"{name} reweighted", lambda m, p=pick: p(m, field="reweighted"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
