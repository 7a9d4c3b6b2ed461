"""The report a chemist reads (issue 19) and unbiased populations (issue 17).

Every value of report.html is a table cell or a sentence (no dict repr, no ``&#x27;``), the page
is self-contained (no http(s) resources, under 5 MB) and carries the offline 3-D viewer; the
basin populations come from the unclipped weights, so clipping no longer changes them.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from arbg.chem.geometry import dihedrals
from arbg.data.datasets import Dataset
from arbg.eval.evaluate import evaluate_samples, population_log_weights
from arbg.eval.htmlkit import html_table_page, value_html
from arbg.eval.report import report_context, write_run_report
from arbg.eval.viewer import basin_labels, representatives, superpose
from arbg.reweight import clip_log_weights, normalize_log_weights

RESOURCE = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?https?:|@import""")


def _frames(system, n: int, rng: np.random.Generator) -> np.ndarray:
    """Noisy copies of the minimised structure, every other one mirrored (phi -> -phi: alpha-L)."""
    x = system.positions[None] + rng.normal(scale=0.003, size=(n, system.n_atoms, 3))
    x[1::2, :, 0] *= -1.0
    return x


@pytest.fixture(scope="module")
def evaluated(aldp):
    rng = np.random.default_rng(0)
    ref_x = _frames(aldp, 400, rng)
    reference = Dataset(ref_x, aldp, {"test": [0, 400]}, {"source": "synthetic"}, np.zeros(400))
    x = _frames(aldp, 200, rng)
    u = aldp.reduced_energy(x)
    # the largest raw weights sit on mirrored (alpha-L) samples: clipping drops them
    log_w_raw = rng.normal(scale=0.5, size=200)
    log_w_raw[1:40:2] += 4.0
    clipped, n_clipped = clip_log_weights(log_w_raw, 0.05)
    assert n_clipped == 10
    return aldp, reference, x, u, log_w_raw, normalize_log_weights(clipped)


def _alpha_l(metrics) -> float:
    return metrics["populations"]["ALA1 / reweighted"]["populations"]["basins"]["alphaL_C7ax"]["p"]


def test_populations_come_from_unbiased_weights_and_clipping_does_not_change_them(evaluated):
    system, reference, x, u, log_w_raw, clipped = evaluated
    kw = {"n_eval": 100, "tica_lag": 5, "seed": 1, "log_w_raw": log_w_raw}
    m_clip = evaluate_samples(system, x, u, clipped, reference, **kw)
    m_none = evaluate_samples(system, x, u, normalize_log_weights(log_w_raw), reference, **kw)
    w = np.exp(normalize_log_weights(log_w_raw))
    phi = dihedrals(x, system.phi_indices)[:, 0]
    assert _alpha_l(m_clip) == pytest.approx(w[phi >= 0].sum(), abs=1e-12)
    assert _alpha_l(m_clip) == _alpha_l(m_none)
    np.testing.assert_equal(m_clip["populations"], m_none["populations"])  # NaN == NaN here
    np.testing.assert_equal(m_clip["basin_table"], m_none["basin_table"])
    # the W2 metrics keep the clipped weights: those do differ
    assert m_clip["ess"] != pytest.approx(m_none["ess"])
    assert m_clip["weights"]["population_weights"] == "unbiased"
    assert m_clip["ess_unbiased"] == pytest.approx(m_none["ess"])
    # the old behaviour on request: the clipped weights lose alpha-L population
    # the weights' check: labelled ESS, Pareto k, and warnings in metrics.json
    check = m_clip["weight_check"]
    assert check["ess_clipped"] == pytest.approx(m_clip["ess"])
    assert check["ess_unclipped"] == pytest.approx(m_clip["ess_unbiased"])
    assert isinstance(m_clip["warnings"], list)
    m_old = evaluate_samples(system, x, u, clipped, reference, population_weights="clipped", **kw)
    assert _alpha_l(m_old) < _alpha_l(m_clip) - 0.05
    with pytest.raises(ValueError, match="population_weights"):
        population_log_weights(clipped, log_w_raw, "psis-typo")


def test_report_html_is_tables_and_sentences_self_contained_with_viewer(evaluated, tmp_path):
    system, reference, x, u, log_w_raw, clipped = evaluated
    metrics = evaluate_samples(
        system, x, u, clipped, reference, n_eval=100, tica_lag=5, seed=1, log_w_raw=log_w_raw
    )
    metrics["reference"] = {"source": "synthetic 'mirrored' frames", "n_frames": 400}
    metrics["md_cost_curve"] = {
        "budgets": [100, 200],
        "bg": {"e_w2": [2.0, 1.0], "t_w2": [0.5, 0.3]},
        "md": {"budgets": [100, 200], "e_w2": [3.0, 1.5], "t_w2": [0.9, 0.6]},
    }
    metrics["energy_evaluations"] = 200
    summary = {
        "system_spec": system.spec.to_dict(),
        "tau": 1.0,
        "n_samples": 200,
        "energy_evaluations": 200,
        "wall_s_total": 12.5,
        "checkpoint": "ckpt",
    }
    pop_lw, _ = population_log_weights(clipped, log_w_raw)
    path = write_run_report(
        tmp_path,
        system,
        reference.positions,
        system.reduced_energy(reference.positions),
        None,
        x,
        u,
        pop_lw,
        metrics,
        context=report_context(summary, system),
        title="aldp 'test' report",
        tica_lag=5,
        seed=0,
        extra_figures=(),
        viewer=True,
    )
    text = path.read_text()
    assert "{'" not in text and "&#x27;" not in text and "'}" not in text
    assert not RESOURCE.search(text), RESOURCE.search(text).group(0)
    assert len(text.encode()) < 5e6
    # the summary block: system, force field, temperature, cost, W2 beside floor and matched MD
    summary_block = text[text.index('class="summary"') : text.index("Sampled structures")]
    for needle in ("amber99sbildn.xml", "300", "energy evaluations", "12.5 s", "MD floor"):
        assert needle in summary_block, needle
    assert summary_block.count("within the MD floor") == 3  # one sentence per metric
    assert "the first 200 MD steps" in summary_block
    assert "<td>1.5</td>" in summary_block  # E-W2 of MD at matched cost (budget 200)
    # populations per basin with intervals, from the unbiased weights
    assert "alphaL_C7ax" in text and "95% CI" in text and "unbiased" in text
    # the viewer: inlined plotly bundle, structure data, step controls
    assert text.count('id="arbg-plotly-gz"') == 1 and "arbg-viewer-next" in text
    assert "mirrored" in text and "synthetic" in text  # nested entries as rows


def test_value_html_never_shows_a_repr_and_the_table_page_is_shared():
    nested = {
        "a": {"b": [1, 2.5, None], "c": [{"x": 1}, {"x": 2, "y": "it's"}]},
        "d": list(range(50)),
    }
    out = value_html(nested)
    assert "{" not in out and "&#x27;" not in out and "[" not in out
    assert "50 values" in out and "it's" in out
    from arbg.experiments.benchmark import METRIC_COLUMNS, format_table

    _, bench_page = format_table([], "t", notes=["n"])  # the benchmark's page is the shared one
    assert bench_page == html_table_page(
        "t", ["Method", *[h for _, h in METRIC_COLUMNS]], [], ["n"]
    )
    page = html_table_page("t 'q'", ["Method"], ["<tr><td>x</td></tr>"], ["note 'n'"])
    assert "&#x27;" not in page and "<li>note 'n'</li>" in page


def test_superpose_and_representatives(aldp):
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    moved = aldp.positions @ q.T + np.array([1.0, -2.0, 0.5])
    back = superpose(moved[None], aldp.positions, aldp.backbone_heavy_indices)[0]
    assert np.abs(back - aldp.positions).max() < 1e-9
    x = _frames(aldp, 60, rng)
    lw = rng.normal(size=60)
    lw[5] = -np.inf
    reps = representatives(x, lw, aldp.phi_indices, aldp.psi_indices, per_basin=3)
    labels = np.array(basin_labels(x, aldp.phi_indices, aldp.psi_indices))
    assert {r["basin"] for r in reps} == set(labels)
    for basin in set(labels):
        mine = [r["index"] for r in reps if r["basin"] == basin]
        members = np.flatnonzero((labels == basin) & np.isfinite(lw))
        assert mine == list(members[np.argsort(-lw[members])][:3])
    pops = [r["basin_population"] for r in reps]
    assert pops == sorted(pops, reverse=True)


# --------------------------------------------------------------------------------------------------
# the report in a real headless browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--hide-scrollbars",
    "--window-size=1300,2600",
    "--virtual-time-budget=20000",
    "--enable-logging=stderr",
    "--v=0",
]


def _chromium() -> str:
    """Debian's chromium; installed with apt-get where missing (as root), else the test skips."""
    import os
    import shutil
    import subprocess

    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip(
            "no chromium on PATH and no root apt-get to install it (apt-get install chromium)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(
            ["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=600
        )
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            env=env,
            check=True,
            capture_output=True,
            timeout=1200,
        )
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"chromium missing and `apt-get install chromium` failed: {err}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("`apt-get install chromium` ran but no chromium is on PATH")
    return found


def _browse(chromium: str, url: str, *extra: str) -> tuple[str, str]:
    import subprocess

    out = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, *extra, url], capture_output=True, text=True, timeout=180
    )
    return out.stdout, out.stderr


def _console_errors(stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]
    return [ln for ln in lines if re.search(r"error|uncaught|failed", ln, re.IGNORECASE)]


@pytest.mark.slow
def test_report_in_headless_chromium(evaluated, tmp_path):
    """Screenshot of report.html in headless chromium: the viewer's canvas shows the coloured
    atoms, the page logs no console errors (about 10 s: two browser runs)."""
    import matplotlib.image

    chromium = _chromium()
    system, reference, x, u, log_w_raw, clipped = evaluated
    metrics = evaluate_samples(
        system, x, u, clipped, reference, n_eval=100, tica_lag=5, seed=1, log_w_raw=log_w_raw
    )
    pop_lw, _ = population_log_weights(clipped, log_w_raw)
    summary = {"system_spec": system.spec.to_dict(), "n_samples": 200, "energy_evaluations": 200}
    path = write_run_report(
        tmp_path,
        system,
        reference.positions,
        system.reduced_energy(reference.positions),
        None,
        x,
        u,
        pop_lw,
        metrics,
        context=report_context(summary, system),
        title="aldp report in a browser",
        tica_lag=5,
        seed=0,
        extra_figures=(),
        viewer=True,
    )
    dom, err = _browse(chromium, path.as_uri() + "#selftest", "--dump-dom")
    body = re.search(r"<body([^>]*)>", dom)
    assert body, f"no DOM from chromium: {err[-2000:]}"
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert attrs.get("data-viewer") == "ready", attrs
    assert "data-console-errors" not in attrs, attrs["data-console-errors"]
    assert int(attrs["data-viewer-pixels"]) > 2000  # the viewer's WebGL image is not blank
    # "next" steps to the second conformation (its caption in the scene's title)
    assert attrs["data-viewer-step"].startswith("1: ") and "#2" in attrs["data-viewer-step"]
    assert not _console_errors(err), _console_errors(err)
    shot = tmp_path / "report.png"
    _, err = _browse(chromium, path.as_uri(), f"--screenshot={shot}")
    assert not _console_errors(err), _console_errors(err)
    img = matplotlib.image.imread(shot)[..., :3]
    left, top, width, height = (int(v) for v in attrs["data-viewer-rect"].split(","))
    view = img[top + 40 : top + height, left : left + width]  # below the title line
    assert view.shape[0] > 300 and view.shape[1] > 300
    red = (view[..., 0] > 0.8) & (view[..., 1] < 0.35) & (view[..., 2] < 0.35)  # oxygen
    blue = (view[..., 2] > 0.8) & (view[..., 0] < 0.45)  # nitrogen
    dark = view.max(-1) < 0.7  # bonds and carbons
    assert red.sum() > 20 and blue.sum() > 20 and dark.sum() > 500
    summary_area = img[:top]
    assert (summary_area.max(-1) < 0.5).sum() > 5000  # text of the summary and the tables


def test_report_of_an_smc_run(tmp_path):
    """`arbg evaluate` on an `arbg smc` run directory: the same report, the SMC facts in the
    summary (a briefly trained tiny model on ace-aaa-nme, a jittered synthetic reference)."""
    from test_smc_peptide import NOISE_NM, _trained_parts

    from arbg.chem.systems import build_system
    from arbg.eval.evaluate import EvaluateConfig, evaluate_run
    from arbg.sampling.config import SMCConfig
    from arbg.sampling.runs import run_smc

    system = build_system("ace-aaa-nme")
    parts = _trained_parts(system, steps=60)
    run_smc(parts, tmp_path / "smc", SMCConfig(n_particles=24, seed=3, repeats=2))
    rng = np.random.default_rng(5)
    ref_x = system.positions[None] + NOISE_NM * rng.standard_normal((200, system.n_atoms, 3))
    reference = Dataset(ref_x, system, {"test": [0, 200]}, {"source": "jitter"}, np.zeros(200))
    metrics = evaluate_run(tmp_path / "smc", reference, EvaluateConfig(n_eval=40, tica_lag=2))
    text = (tmp_path / "smc" / "report" / "report.html").read_text()
    assert "twisted SMC (arbg smc)" in text and "partial (prefix) evaluations" in text
    assert "24 x 2" in text and "Sampled structures" in text
    assert "{'" not in text and "&#x27;" not in text
    assert metrics["weights"]["population_weights"] == "unbiased"
    for res in ("ALA1", "ALA2", "ALA3"):
        assert f"<h3>{res}</h3>" in text


def test_reference_energies_use_the_runs_force_field(aldp, tmp_path):
    """A reference read with a PDB topology carries the default force field (amber14, 310 K);
    E-W2 must use the run's energy function for both sides."""
    from arbg.chem.systems import system_from_pdb
    from arbg.eval.evaluate import reference_energies

    aldp.save_pdb(tmp_path / "aldp.pdb")
    other = system_from_pdb(tmp_path / "aldp.pdb")
    assert other.spec.forcefield != aldp.spec.forcefield
    x = _frames(aldp, 400, np.random.default_rng(2))
    reference = Dataset(x, other, {"test": [0, 400]}, {"source": "pdb"}, np.zeros(400))
    np.testing.assert_allclose(reference_energies(reference, aldp), aldp.reduced_energy(x))
    assert not np.allclose(reference_energies(reference), aldp.reduced_energy(x), atol=1.0)
    u = aldp.reduced_energy(x)
    same = Dataset(x, aldp, {"test": [0, 400]}, {"source": "aldp"}, np.zeros(400))
    kw = {"n_eval": 100, "tica_lag": 5, "seed": 0}
    m = evaluate_samples(aldp, x, u, np.zeros(400), reference, **kw)
    m_same = evaluate_samples(aldp, x, u, np.zeros(400), same, **kw)
    for ens in ("proposal", "md_floor"):
        e = m["metrics"][ens]["e_w2"]["mean"]
        assert e == pytest.approx(m_same["metrics"][ens]["e_w2"]["mean"], rel=1e-12)


def test_collapse_and_worse_metrics_are_said_in_the_text_and_the_report(evaluated, tmp_path):
    """One sample carries the weight: the evaluation warns (collapse, too few distinct
    conformations), the text table and the report's summary say it."""
    from arbg.eval.report import format_metrics, summary_html

    system, reference, x, u, log_w_raw, _ = evaluated
    lw = np.full(len(x), -40.0)
    lw[3] = 0.0
    m = evaluate_samples(
        system,
        x,
        u,
        normalize_log_weights(lw),
        reference,
        n_eval=100,
        tica_lag=5,
        seed=1,
        log_w_raw=lw,
    )
    assert m["weight_check"]["collapsed"] and m["weight_check"]["ess_unclipped"] < 1.01
    assert any("collapsed: ESS 1.0 of 200" in w for w in m["warnings"])
    assert any("distinct conformation" in w for w in m["warnings"])
    text = format_metrics(m)
    assert "ESS (clipped weights)" in text and "ESS (unclipped weights)" in text
    assert "E-W2 (kT)" in text and "unique_resampled" not in text
    assert [x for x in text.splitlines() if x.startswith("WARNING:")] == [
        f"WARNING: {w}" for w in m["warnings"]
    ]
    html = summary_html(m, {"system": {}, "run": {}})
    assert 'class="warning"' in html and "collapsed" in html
    # a reweighted metric worse than the proposal's is called worse
    m["metrics"]["reweighted_resampled"]["t_w2"]["mean"] = 9.0
    from arbg.eval.evaluate import worse_than_proposal

    assert any("T-W2 (rad) 9 is worse" in w for w in worse_than_proposal(m))
