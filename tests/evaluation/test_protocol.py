"""``tumorsynth eval utility`` end to end on tiny phantoms with the tiny LDM: the table, JSON and PNG appear."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tumorsynth.cli import app
from tumorsynth.data.phantoms import generate_phantoms
from tumorsynth.models.ldm.configs import create_untrained


def test_utility_protocol_runs_on_phantoms(tmp_path, monkeypatch):
    data = tmp_path / "phantoms"
    generate_phantoms(data, 8, seed=5, shape=(96, 96, 62), hgg_fraction=0.5)
    create_untrained(tmp_path / "models" / "ldm", preset="tiny", name="t", version="1", seed=0)
    monkeypatch.setenv("TUMORSYNTH_MODEL_DIR", str(tmp_path / "models"))
    from tumorsynth.settings import get_settings

    get_settings.cache_clear()
    out = tmp_path / "report"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "utility",
            "ldm/t@1",
            "--data",
            str(data),
            "--out",
            str(out),
            "--per-class",
            "2",
            "--folds",
            "2",
            "--epochs",
            "1",
            "--steps",
            "5",
            "--device",
            "cpu",
        ],
    )
    get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    assert "real + synthetic" in r.output and "auc" in r.output
    result = json.loads((out / "utility.json").read_text())
    assert result["protocol"]["n_synthetic"] == 4 and result["protocol"]["model"] == "ldm/t@1"
    assert (out / "utility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
