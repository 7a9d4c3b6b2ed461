"""An offline, interactive 3-D view of representative reweighted conformations for the report.

The highest-weight conformations of each Ramachandran basin (per residue, combined into one
label such as ``alphaR`` or ``alphaR / beta_C7eq_PII``) are superposed on the backbone of the
reference structure and drawn as atoms and bonds in a plotly 3-D scene, the reference in grey
beside them; a slider and previous/next buttons step through them.

The JavaScript is plotly's offline bundle (``plotly/package_data/plotly.min.js``, shipped in the
plotly wheel), read at report time and inlined gzip-compressed and base64-encoded (about 2 MB
instead of 4.8 MB); the page decompresses it with the browser's ``DecompressionStream``. Nothing
is fetched when the page is viewed and no third-party JavaScript lives in this repository.
"""

from __future__ import annotations

import base64
import functools
import gzip
import importlib.resources
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from arbg.chem.geometry import dihedrals
from arbg.eval.basins import DEFAULT_BASINS
from arbg.eval.htmlkit import esc, fmt

log = logging.getLogger(__name__)

# atomic number -> (symbol, colour, marker size)
ELEMENTS = {
    1: ("H", "#c8c8c8", 7),
    6: ("C", "#404040", 12),
    7: ("N", "#3050f8", 12),
    8: ("O", "#ff0d0d", 12),
    16: ("S", "#d4b000", 13),
}
OTHER = ("X", "#ff1493", 12)
DIV_ID = "arbg-structure-viewer"


@functools.lru_cache(maxsize=1)
def plotly_js_gzip_b64() -> str:
    """plotly's offline bundle from the installed plotly wheel, gzip-compressed, base64 text."""
    try:
        src = importlib.resources.files("plotly") / "package_data" / "plotly.min.js"
        raw = src.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise RuntimeError(
            "the 3-D viewer needs plotly (pip install plotly): its wheel ships plotly.min.js"
        ) from err
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def superpose(x: np.ndarray, ref: np.ndarray, atoms: np.ndarray | None = None) -> np.ndarray:
    """Rigidly superpose conformations onto a reference (Kabsch, least squares on ``atoms``).

    Parameters
    ----------
    x : ndarray, shape (B, n, 3)
        Conformations, nm.
    ref : ndarray, shape (n, 3)
        Reference conformation, nm.
    atoms : ndarray, shape (m,), optional
        Atoms fitted (default all), e.g. the backbone heavy atoms.

    Returns
    -------
    ndarray, shape (B, n, 3)
        The rotated and translated conformations, nm (fitted atoms centred on the reference's).
    """
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    idx = np.arange(ref.shape[0]) if atoms is None else np.asarray(atoms)
    c_ref = ref[idx].mean(0)
    c_x = x[:, idx].mean(1, keepdims=True)
    a = x[:, idx] - c_x
    b = ref[idx] - c_ref
    h = np.einsum("bmi,mj->bij", a, b)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("bij,bjk->bik", u, vt)))
    corr = np.ones((x.shape[0], 3))
    corr[:, 2] = d
    rot = np.einsum("bij,bj,bjk->bik", u, corr, vt)
    return np.einsum("bni,bij->bnj", x - c_x, rot) + c_ref


def principal_axes(x: np.ndarray) -> np.ndarray:
    """``x`` [n, 3] centred and rotated onto its principal axes (largest spread along x, least
    along z), so that a view down z shows the molecule flat."""
    c = x - x.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    if np.linalg.det(vt) < 0:
        vt[2] *= -1.0
    return c @ vt.T


def basin_labels(x: np.ndarray, phi_indices: np.ndarray, psi_indices: np.ndarray) -> list[str]:
    """Ramachandran basin of every conformation, residues joined with ``" / "``.

    ``x`` [N, n, 3] nm; one label per conformation (``"other"`` outside every basin).
    """
    phi, psi = dihedrals(x, phi_indices), dihedrals(x, psi_indices)
    k = min(phi.shape[1], psi.shape[1])
    names = np.full((x.shape[0], k), "other", dtype=object)
    for r in range(k):
        for basin in DEFAULT_BASINS:
            names[basin.contains(phi[:, r], psi[:, r]), r] = basin.name
    return [" / ".join(row) for row in names]


def representatives(
    x: np.ndarray,
    log_w: np.ndarray,
    phi_indices: np.ndarray,
    psi_indices: np.ndarray,
    per_basin: int = 4,
    max_basins: int = 6,
) -> list[dict[str, Any]]:
    """The highest-weight conformations of each basin (most populated basins first).

    Parameters
    ----------
    x : ndarray, shape (N, n, 3)
        Proposals, nm.
    log_w : ndarray, shape (N,)
        Their log importance weights (``-inf`` = zero).
    phi_indices, psi_indices : ndarray, shape (k, 4)
    per_basin, max_basins : int
        At most this many conformations per basin and basins.

    Returns
    -------
    list of dict
        ``{"index", "basin", "weight", "basin_population", "rank"}`` (weights normalised).
    """
    lw = np.asarray(log_w, dtype=np.float64)
    ok = np.isfinite(lw)
    if not ok.any():
        return []
    w = np.zeros_like(lw)
    w[ok] = np.exp(lw[ok] - lw[ok].max())
    w /= w.sum()
    labels = np.array(basin_labels(x, phi_indices, psi_indices), dtype=object)
    pops = {b: float(w[labels == b].sum()) for b in set(labels[ok])}
    out = []
    for basin in sorted(pops, key=pops.get, reverse=True)[:max_basins]:
        members = np.flatnonzero((labels == basin) & (w > 0))
        top = members[np.argsort(-w[members], kind="stable")][:per_basin]
        for rank, i in enumerate(top):
            out.append(
                {
                    "index": int(i),
                    "basin": basin,
                    "weight": float(w[i]),
                    "basin_population": pops[basin],
                    "rank": rank + 1,
                }
            )
    return out


def _bond_lines(xyz: np.ndarray, bonds: np.ndarray) -> dict[str, list[float | None]]:
    """x/y/z lists of line segments (None-separated) for the bonds, coordinates as given."""
    seg = np.full((len(bonds), 3, 3), np.nan)
    seg[:, 0], seg[:, 1] = xyz[bonds[:, 0]], xyz[bonds[:, 1]]
    flat = seg.reshape(-1, 3)
    return {
        ax: [None if np.isnan(v) else round(float(v), 3) for v in flat[:, d]]
        for d, ax in enumerate("xyz")
    }


def _atoms(xyz: np.ndarray) -> dict[str, list[float]]:
    return {ax: [round(float(v), 3) for v in xyz[:, d]] for d, ax in enumerate("xyz")}


def _traces(
    ref: np.ndarray,
    conf: np.ndarray,
    bonds: np.ndarray,
    elements: np.ndarray,
    atom_names: Sequence[str],
) -> list[dict[str, Any]]:
    """The four scene traces: reference bonds and atoms (grey), the conformation's bonds and
    atoms (element colours); coordinates [n, 3] as displayed (Angstrom)."""
    style = [ELEMENTS.get(int(z), OTHER) for z in elements]
    text = [f"{name} ({s[0]})" for name, s in zip(atom_names, style, strict=True)]
    line = {"mode": "lines", "type": "scatter3d", "hoverinfo": "skip"}
    grey = "#b0b0b0"
    return [
        {**line, **_bond_lines(ref, bonds), "name": "reference structure", "opacity": 0.45,
         "line": {"color": grey, "width": 4}},
        {"type": "scatter3d", "mode": "markers", **_atoms(ref), "name": "reference atoms",
         "marker": {"size": 3, "color": grey}, "opacity": 0.45, "hoverinfo": "skip",
         "showlegend": False},
        {**line, **_bond_lines(conf, bonds), "name": "sampled conformation",
         "line": {"color": "#8a8a8a", "width": 8}},
        {"type": "scatter3d", "mode": "markers", **_atoms(conf), "name": "atoms",
         "marker": {"size": [s[2] for s in style], "color": [s[1] for s in style],
                    "line": {"width": 0}},
         "text": text, "hovertemplate": "%{text}<extra></extra>", "showlegend": False},
    ]  # fmt: skip


def viewer_figure(
    conformations: np.ndarray,
    captions: Sequence[str],
    reference: np.ndarray,
    elements: np.ndarray,
    bonds: np.ndarray,
    atom_names: Sequence[str],
) -> dict[str, Any]:
    """The plotly figure (JSON-able dict) of the viewer; coordinates are shown in Angstrom.

    Parameters
    ----------
    conformations : ndarray, shape (K, n, 3)
        Superposed conformations, nm (the steps of the slider).
    captions : sequence of str, length K
    reference : ndarray, shape (n, 3)
        Reference structure, nm (grey).
    elements : ndarray, shape (n,)
        Atomic numbers.
    bonds : ndarray, shape (b, 2)
    atom_names : sequence of str, length n

    Returns
    -------
    dict
        ``{"data", "layout", "steps"}``: traces 0-1 the reference, 2-3 the current conformation;
        ``steps[k]`` holds the restyle update of traces 2-3 for conformation ``k``.
    """
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    ref_a = 10.0 * np.asarray(reference, dtype=np.float64)
    confs = 10.0 * np.asarray(conformations, dtype=np.float64)
    data = _traces(ref_a, confs[0], bonds, elements, atom_names)
    steps = []
    for c in confs:
        b, a = _bond_lines(c, bonds), _atoms(c)
        steps.append({ax: [b[ax], a[ax]] for ax in "xyz"})
    axis = {"visible": False, "showspikes": False}
    layout = {
        "height": 520,
        "margin": {"l": 0, "r": 0, "t": 30, "b": 0},
        "uirevision": "keep-camera",
        "legend": {"x": 0.01, "y": 0.99},
        "scene": {
            "xaxis": axis,
            "yaxis": axis,
            "zaxis": axis,
            "aspectmode": "data",
            "camera": {"eye": {"x": 0.0, "y": -0.35, "z": 1.25}},
        },
        "title": {"text": esc(captions[0]) if captions else "", "font": {"size": 14}},
    }
    return {"data": data, "layout": layout, "steps": steps, "captions": list(captions)}


_LOADER_JS = """
(function(){
  if (location.hash === "#selftest") {
    var errors = [];
    var note = function(msg){
      errors.push(String(msg));
      document.body.setAttribute("data-console-errors", errors.join(" | "));
    };
    window.addEventListener("error", function(e){ note(e.message); });
    window.addEventListener("unhandledrejection", function(e){ note(e.reason); });
    var origError = console.error;
    console.error = function(){ note(Array.prototype.join.call(arguments, " "));
      origError.apply(console, arguments); };
  }
  var fig = JSON.parse(document.getElementById("arbg-viewer-data").textContent);
  var div = document.getElementById("%(div)s");
  var sel = document.getElementById("arbg-viewer-step");
  var current = 0;
  function show(k){
    current = (k + fig.steps.length) %% fig.steps.length;
    sel.value = String(current);
    var s = fig.steps[current];
    return Plotly.restyle(div, {x: s.x, y: s.y, z: s.z}, [2, 3]).then(function(){
      return Plotly.relayout(div, {"title.text": fig.captions[current]});
    });
  }
  function selftest(){
    if (location.hash !== "#selftest") return;
    var r = div.getBoundingClientRect();
    document.body.setAttribute("data-viewer-rect", [r.left + window.scrollX,
      r.top + window.scrollY, r.width, r.height].map(Math.round).join(","));
    Plotly.toImage(div, {format: "png", width: 500, height: 400}).then(function(url){
      var img = new Image();
      img.onload = function(){
        var c = document.createElement("canvas");
        c.width = img.width; c.height = img.height;
        var g = c.getContext("2d", {willReadFrequently: true}); g.drawImage(img, 0, 0);
        var d = g.getImageData(0, 0, c.width, c.height).data, n = 0;
        for (var i = 0; i < d.length; i += 4) {
          if (d[i] < 235 || d[i + 1] < 235 || d[i + 2] < 235) n++;
        }
        document.body.setAttribute("data-viewer-pixels", String(n));
        document.getElementById("arbg-viewer-next").click();
        setTimeout(function(){
          document.body.setAttribute("data-viewer-step",
            String(current) + ": " + div.layout.title.text);
        }, 500);
      };
      img.src = url;
    });
  }
  async function load(){
    var b64 = document.getElementById("arbg-plotly-gz").textContent.trim();
    var bin = atob(b64), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    var code = await new Response(stream).text();
    var s = document.createElement("script");
    s.textContent = code;
    document.head.appendChild(s);
    await Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displaylogo: false});
    document.body.setAttribute("data-viewer", "ready");
    document.getElementById("arbg-viewer-prev").onclick = function(){ show(current - 1); };
    document.getElementById("arbg-viewer-next").onclick = function(){ show(current + 1); };
    sel.onchange = function(){ show(parseInt(sel.value, 10)); };
    selftest();
  }
  load().catch(function(err){
    div.textContent = "The 3-D viewer could not start: " + err;
    document.body.setAttribute("data-viewer", "failed");
  });
})();
"""


def viewer_html(figure: dict[str, Any], intro: str = "") -> str:
    """The viewer block: a div, step controls, the inlined plotly bundle and the figure data.

    ``intro`` is HTML placed above the scene. The page needs no network access.
    """
    options = "".join(
        f'<option value="{k}">{esc(c)}</option>' for k, c in enumerate(figure["captions"])
    )
    payload = json.dumps(figure, separators=(",", ":")).replace("</", "<\\/")
    return (
        f"{intro}"
        '<div class="viewer-controls"><button id="arbg-viewer-prev" type="button">&#9664; '
        'previous</button> <select id="arbg-viewer-step">'
        f"{options}</select> "
        '<button id="arbg-viewer-next" type="button">next &#9654;</button></div>'
        f'<div id="{DIV_ID}" style="width:100%;height:520px;border:1px solid #ddd"></div>'
        f'<script id="arbg-plotly-gz" type="application/octet-stream">{plotly_js_gzip_b64()}'
        "</script>"
        f'<script id="arbg-viewer-data" type="application/json">{payload}</script>'
        f"<script>{_LOADER_JS % {'div': DIV_ID}}</script>"
    )


def ensemble_viewer_html(
    positions: np.ndarray,
    log_w: np.ndarray,
    reference: np.ndarray,
    elements: np.ndarray,
    bonds: np.ndarray,
    atom_names: Sequence[str],
    phi_indices: np.ndarray,
    psi_indices: np.ndarray,
    align_atoms: np.ndarray | None = None,
    per_basin: int = 4,
) -> str:
    """The report's structure section: representatives per basin, superposed, in the viewer.

    Parameters
    ----------
    positions : ndarray, shape (N, n, 3)
        Proposals, nm.
    log_w : ndarray, shape (N,)
        Their log importance weights.
    reference : ndarray, shape (n, 3)
        Reference structure, nm.
    elements, bonds, atom_names
        Atomic numbers [n], bonds [b, 2] and atom names of the system.
    phi_indices, psi_indices : ndarray, shape (k, 4)
    align_atoms : ndarray, optional
        Atoms of the superposition (the backbone heavy atoms); all atoms when None.
    per_basin : int
        Conformations per basin.

    Returns
    -------
    str
        HTML (empty when no conformation has weight).
    """
    reps = representatives(positions, log_w, phi_indices, psi_indices, per_basin=per_basin)
    if not reps:
        return "<p>No conformation has a positive weight: nothing to show.</p>"
    idx = np.array([r["index"] for r in reps])
    ref_c = principal_axes(np.asarray(reference, dtype=np.float64))
    aligned = superpose(np.asarray(positions)[idx], ref_c, align_atoms)
    captions = [
        f"{r['basin']} #{r['rank']}: weight {fmt(r['weight'], 3)} "
        f"(basin population {fmt(r['basin_population'], 3)}; proposal {r['index']})"
        for r in reps
    ]
    fig = viewer_figure(aligned, captions, ref_c, elements, bonds, atom_names)
    rmsd = np.sqrt(((aligned - ref_c) ** 2).sum(-1).mean(-1)) * 10.0
    n_basins = len({r["basin"] for r in reps})
    intro = (
        f"<p>The {len(reps)} highest-weight reweighted conformations of the {n_basins} most "
        "populated Ramachandran basins (up to "
        f"{per_basin} per basin), superposed on the backbone of the reference structure (grey). "
        "Drag to rotate, scroll to zoom, click a legend entry to hide it; the buttons and the "
        f"list step through the conformations. All-atom RMSD to the reference after the fit: "
        f"{fmt(float(rmsd.min()), 3)} to {fmt(float(rmsd.max()), 3)} &#8491;.</p>"
    )
    log.info("viewer: %d conformations from %d basins", len(reps), n_basins)
    return viewer_html(fig, intro)
