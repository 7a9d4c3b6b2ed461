"""The state of a corpus directory, read from its files: per-sequence entries and the manifest.

The files are authoritative (``sequences/{SEQ}.json`` marks a finished sequence,
``work/{SEQ}/progress.json`` the frames of one under way); ``manifest.json`` is rebuilt from
them on every start of :func:`arbg.data.corpora.run_corpus` (layout: see that module).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import arbg
from arbg.data.sequences import FORCE_FIELDS, FORMAT, FORMAT_VERSION

if TYPE_CHECKING:
    from arbg.data.corpora import CorpusConfig


def done_entry(meta: dict) -> dict:
    seq = meta["sequence"]
    return {
        "split": meta["split"],
        "status": "done",
        "ns": meta["ns"],
        "n_frames": meta["n_frames"],
        "frames_done": meta["n_frames"],
        "n_atoms": meta["n_atoms"],
        "seed": meta["seed"],
        "files": {
            "positions": f"sequences/{seq}.npz",
            "topology": f"sequences/{seq}.pdb",
            "metadata": f"sequences/{seq}.json",
        },
        "wall_s": meta.get("wall_s"),
    }


def scan(
    out: Path, split_of: dict[str, str], config: CorpusConfig, cleanup: bool = False
) -> dict[str, dict]:
    """Per-sequence manifest entries from what is on disk (the authoritative state)."""
    entries = {}
    for seq, split in sorted(split_of.items()):
        meta_path = out / "sequences" / f"{seq}.json"
        work = out / "work" / seq
        if meta_path.exists() and (out / "sequences" / f"{seq}.npz").exists():
            entries[seq] = done_entry(json.loads(meta_path.read_text()))
            if cleanup and work.exists():  # killed between consolidation and clean-up
                shutil.rmtree(work, ignore_errors=True)
            continue
        md_cfg = config.md_config(split, seq)
        done = 0
        if (work / "progress.json").exists():
            done = int(json.loads((work / "progress.json").read_text())["n_frames"])
        entries[seq] = {
            "split": split,
            "status": "partial" if done else "pending",
            "ns": md_cfg.ns,
            "n_frames": md_cfg.n_frames,
            "frames_done": done,
            "seed": md_cfg.seed,
        }
    return entries


def totals(entries: dict[str, dict], config: CorpusConfig) -> dict:
    ps = config.frame_interval_ps
    done = [e for e in entries.values() if e["status"] == "done"]
    return {
        "sequences": len(entries),
        "done": len(done),
        "failed": sum(e["status"] == "failed" for e in entries.values()),
        "frames": int(sum(e["n_frames"] for e in done)),
        "ns_done": round(sum(e["frames_done"] * ps / 1000.0 for e in entries.values()), 6),
        "ns_total": round(sum(e["ns"] for e in entries.values()), 6),
    }


def versions() -> dict:
    import openmm

    return {"arbg": arbg.__version__, "openmm": openmm.__version__}


def build_manifest(
    config: CorpusConfig, splits: dict[str, list[str]], entries: dict[str, dict]
) -> dict:
    ff = FORCE_FIELDS[config.force_field]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "force_field": {
            "name": config.force_field,
            "files": list(ff["forcefield"]),
            "nonbonded": ff["nonbonded"],
            "cutoff_nm": ff.get("cutoff_nm"),
        },
        "temperature_k": config.temperature_k or ff["temperature_k"],
        "termini": "ACE/NME caps" if config.capped else "zwitterionic (NH3+ / COO-)",
        "units": {"positions": "nm", "time": "ps"},
        "splits": splits,
        "sequences": entries,
        "totals": totals(entries, config),
        "versions": versions(),
    }
