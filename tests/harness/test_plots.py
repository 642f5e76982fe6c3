"""scripts/plot_curves.py on small run folders built here (result.json + metrics.jsonl contract)."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import plot_curves  # noqa: E402
from gwt_lab.results import load_runs  # noqa: E402

GWT = {"name": "gwt", "wavelet": "haar", "level": 2, "alpha": 0.25, "limiter": 1.01, "lr": 0.01}


def write_run(root: Path, rel: str, model: str, optimizer: dict, ppl0: float) -> None:
    run = root / rel
    run.mkdir(parents=True)
    lines = []
    for step in range(1, 21):
        lines.append({"step": step, "loss": 10 - 0.2 * step + (0.5 if step == 7 else 0), "lr": 0.01,
                      "tokens_seen": 128 * step, "tokens_per_s": 100.0})
        if step % 5 == 0:
            lines.append({"step": step, "eval_loss": 1.0, "eval_ppl": ppl0 / step})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 21, "lo')
    result = {"config": {"model": {"name": model}, "optimizer": optimizer, "data": {"name": "c4_local"}, "seed": 0},
              "git_commit": "abc", "metrics": {"eval_ppl": ppl0 / 20, "tokens_seen": 2560}}
    (run / "result.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for model in ("llama_60m", "llama_tiny"):
        write_run(root, f"{model}/adam", model, {"name": "adamw", "lr": 1e-3}, 3000)
        for level in (1, 2, 3):
            write_run(root, f"{model}/haar{level}", model, dict(GWT, level=level), 2000 + level)
            write_run(root, f"{model}/galore{level}", model, {"name": "galore", "rank": 1 / 2 ** level}, 2500)
    write_run(root, "llama_60m/alpha0.1", "llama_60m", dict(GWT, alpha=0.1), 2200)
    write_run(root, "llama_60m/nolimiter", "llama_60m", dict(GWT, limiter=None), 2100)
    return root


def test_curves_read_eval_and_loss_lines_and_skip_torn_line(results):
    run = next(r for r in load_runs(results) if r.path.as_posix() == "llama_60m/adam")
    steps, ppl = plot_curves.eval_curve(run)
    assert steps == [5, 10, 15, 20] and ppl[0] == pytest.approx(600.0)
    steps, loss = plot_curves.loss_curve(run)
    assert steps == list(range(1, 21))  # the torn last line (a killed run) is ignored
    _, smooth = plot_curves.loss_curve(run, smooth=0.9)
    assert loss[6] > loss[5] and smooth[6] - smooth[5] < loss[6] - loss[5]  # the spike at step 7 is damped


def test_panels_select_the_paper_comparisons(results):
    runs = load_runs(results)
    (_, haar2_row) = plot_curves.figure2_rows()[1]
    panels = plot_curves.panel_runs(runs, haar2_row)
    assert set(panels["llama_60m"]) == {"Haar-2", "GaLore-1/4", "Full-Rank"}
    alpha_row = plot_curves.figure3_rows()[0][1]
    assert set(plot_curves.panel_runs(runs, alpha_row)["llama_60m"]) == {"alpha=0.25", "alpha=0.1"}
    limiter = plot_curves.figure5_rows()[0][1]
    assert set(plot_curves.panel_runs(runs, limiter)["llama_60m"]) == {"Haar-2 without NL",
                                                                       "Haar-2 with NL (gamma 1.01)"}


def test_writes_pngs_and_skips_figures_without_runs(results, tmp_path, capsys):
    out = tmp_path / "figs"
    assert plot_curves.main(["--results", str(results), "--out", str(out), "--smooth", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "figure 6: no two settings to compare" in printed
    import matplotlib.image as mpimg

    for number in ("2", "3", "5"):
        png = out / f"fig{number}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width = mpimg.imread(png).shape[:2]
        assert width > 600 and height > 300
    assert not (out / "fig6.png").exists()


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plot_curves.main(["--figures", "4"])
    assert "--figures 4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot_curves.main(["--results", str(tmp_path / "missing")])
    assert "no such folder" in capsys.readouterr().err


def test_study_runs_stay_out_of_the_paper_figures(tmp_path, capsys):
    """Runs of a tuning study (config key `study`) draw their own figures (scripts/reduced_table1.py)."""
    for lr in (0.003, 0.01):
        write_run(tmp_path, f"reduced_table1/runs/haar-{lr}", "llama_h128", dict(GWT, lr=lr), 2000)
        result = json.loads((tmp_path / f"reduced_table1/runs/haar-{lr}/result.json").read_text())
        result["config"]["study"] = {"method": "gwt-haar-L2-a0.25"}
        (tmp_path / f"reduced_table1/runs/haar-{lr}/result.json").write_text(json.dumps(result))
    write_run(tmp_path, "pretrain/adam", "llama_h128", {"name": "adamw", "lr": 1e-3}, 3000)
    assert plot_curves.main(["--results", str(tmp_path), "--figures", "2", "--out", str(tmp_path / "fig")]) == 0
    assert "figure 2: no two settings to compare" in capsys.readouterr().out
    assert not (tmp_path / "fig" / "fig2.png").exists()
