"""scripts/reduced_table1.py on synthetic run folders: best lr, seeds, mean ± std, edges, missing runs,
other protocols kept apart, the verdict, and the plan read from the real config files."""
import json
import math
import statistics
import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import reduced_table1 as rt1  # noqa: E402

PROTOCOL = {"model": {"name": "llama_h128_l4_v2k", "hidden_size": 128, "num_hidden_layers": 4,
                      "num_attention_heads": 4, "vocab_size": 2048},
            "trainer": {"max_steps": 500, "total_batch_size": 16, "seq_len": 256, "scheduler": "cosine",
                        "warmup_ratio": 0.1, "min_lr_ratio": 0.1, "eval_tokens": 100000},
            "data": {"name": "imdb_local", "dir": "/somewhere/imdb"}, "precision": "fp32"}
HAAR = "gwt-haar-L2-a0.25"
PLAN = rt1.Plan(methods={"adamw": {"method": "adamw", "lr_grid": [1e-3, 3e-3, 1e-2, 3e-2]},
                         "haar2": {"method": HAAR, "lr_grid": [3e-3, 1e-2, 3e-2, 1e-1]},
                         "galore_1_4": {"method": "galore_1_4", "lr_grid": [3e-3, 1e-2, 3e-2, 1e-1]}},
                seeds=[42, 43, 44], levels=[1, 2, 3], alphas=[0.25, 0.5])


def write_run(study, name, method, lr, seed, ppl, state_bytes=1000, **changes):
    config = json.loads(json.dumps(PROTOCOL))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section][key] = value
    config.update(optimizer={"name": method.split("-")[0], "lr": lr}, seed=seed, study={"method": method},
                  output_dir=f"results/x/{name}", run_name=name)
    folder = study / "runs" / name
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(
        {"config": config, "git_commit": "abc", "metrics": {"eval_ppl": ppl, "optimizer_state_bytes": state_bytes,
                                                             "train_time_s": 60.0, "num_parameters": 1000}}))


@pytest.fixture
def study(tmp_path):
    s = tmp_path / "study"
    # AdamW: best at 3e-3 (inside the grid), 3 seeds there
    for lr, ppl in ((1e-3, 60.0), (3e-3, 50.0), (1e-2, 55.0), (3e-2, 90.0)):
        write_run(s, f"adamw-{lr:g}-42", "adamw", lr, 42, ppl, state_bytes=8000)
    write_run(s, "adamw-3e-3-43", "adamw", 3e-3, 43, 51.0, state_bytes=8000)
    write_run(s, "adamw-3e-3-44", "adamw", 3e-3, 44, 49.5, state_bytes=8000)
    # Haar-2: best at 3e-2, 3 seeds, clearly better than AdamW
    for lr, ppl in ((3e-3, 70.0), (1e-2, 48.0), (3e-2, 45.0), (1e-1, 47.0)):
        write_run(s, f"haar-{lr:g}-42", HAAR, lr, 42, ppl, state_bytes=2000)
    write_run(s, "haar-3e-2-43", HAAR, 3e-2, 43, 45.5, state_bytes=2000)
    write_run(s, "haar-3e-2-44", HAAR, 3e-2, 44, 44.8, state_bytes=2000)
    # the level series at Haar-2's best lr: level 1 and level 2 (= the grid run); level 3 missing
    write_run(s, "haar-L1", "gwt-haar-L1-a0.25", 3e-2, 42, 44.0, state_bytes=4000)
    # GaLore: best at the grid's upper edge, one lr missing
    for lr, ppl in ((3e-3, 80.0), (1e-2, 70.0), (1e-1, 60.0)):
        write_run(s, f"galore-{lr:g}-42", "galore_1_4", lr, 42, ppl)
    # another protocol (fewer steps): must not be mixed in, even though it is the best AdamW number
    write_run(s, "adamw-short", "adamw", 3e-3, 45, 10.0, state_bytes=8000, trainer__max_steps=50)
    # an unfinished run folder
    (s / "runs" / "adamw-running").mkdir()
    (s / "runs" / "adamw-running" / "metrics.jsonl").write_text("")
    return s


def row(summary, exp):
    return next(r for r in summary["methods"] if r["experiment"] == exp)


def test_best_lr_seeds_mean_and_std(study):
    summary = rt1.run_study(study, PLAN, draw=False)
    adamw = row(summary, "adamw")
    assert adamw["best_lr"] == pytest.approx(3e-3) and not adamw["best_lr_at_grid_edge"] and adamw["grid_complete"]
    assert adamw["bracketed"]
    assert [g["ppl"] for g in adamw["grid"]] == [60.0, 50.0, 55.0, 90.0]
    assert adamw["seeds"] == {"42": 50.0, "43": 51.0, "44": 49.5}
    assert adamw["mean_ppl"] == pytest.approx(statistics.fmean([50.0, 51.0, 49.5]))
    assert adamw["std_ppl"] == pytest.approx(statistics.stdev([50.0, 51.0, 49.5]))
    haar = row(summary, "haar2")
    assert haar["best_lr"] == pytest.approx(3e-2) and haar["n"] == 3
    assert haar["state_vs_adamw"] == pytest.approx(0.25)
    on_disk = json.loads((study / "summary.json").read_text())
    assert on_disk["methods"][0]["seeds"] == adamw["seeds"]


def test_other_protocols_and_unfinished_runs_are_kept_apart(study):
    summary = rt1.run_study(study, PLAN, draw=False)
    assert 10.0 not in row(summary, "adamw")["seeds"].values()
    assert [e["run"] for e in summary["excluded_runs"]] == ["adamw-short"]
    assert "trainer.max_steps=50 (vs 500)" in summary["excluded_runs"][0]["differs_in"]
    assert summary["incomplete_runs"] == ["runs/adamw-running"]
    text = (study / "README.md").read_text()
    assert "adamw-short" in text and "runs/adamw-running" in text


def test_missing_runs_are_reported_never_invented(study):
    summary = rt1.run_study(study, PLAN, draw=False)
    galore = row(summary, "galore_1_4")
    assert [g["ppl"] for g in galore["grid"]] == [80.0, 70.0, None, 60.0]
    assert not galore["grid_complete"] and galore["n"] == 1
    assert "GaLore-1/4: lr 0.03, seed 42" in summary["missing"]
    assert "Haar level 3 at lr 0.03, seed 42" in summary["missing"]
    assert any("+sweep=reduced_table1_lr experiment=reduced_table1/galore_1_4" in c for c in summary["next_commands"])
    assert any(c.endswith("+sweep=reduced_table1_level optimizer.lr=0.03") for c in summary["next_commands"])
    levels = {p["level"]: p["ppl"] for p in summary["level_series"]["points"]}
    assert levels == {1: 44.0, 2: 45.0, 3: None}
    assert "| GaLore-1/4 | 0.003: 80.00, 0.01: 70.00, 0.03: —, 0.1: 60.00 | 0.1 (provisional" in \
        (study / "README.md").read_text()


def test_a_bracketed_best_lr_needs_no_more_grid_points(study):
    """Four run lrs with the best inside them tune the method: an unrun fifth value is not missing,
    and the seeds and series go ahead; three run lrs are not enough even with the best inside."""
    plan = rt1.Plan(methods={**PLAN.methods, "haar2": {"method": HAAR, "lr_grid": [3e-3, 1e-2, 3e-2, 1e-1, 3e-1]}},
                    seeds=PLAN.seeds, levels=PLAN.levels, alphas=PLAN.alphas)
    summary = rt1.run_study(study, plan, draw=False)
    haar = row(summary, "haar2")
    assert haar["bracketed"] and not haar["grid_complete"] and haar["best_lr"] == pytest.approx(3e-2)
    assert not any(m.startswith("GWT Haar-2: lr") for m in summary["missing"])
    assert not any("experiment=reduced_table1/haar2" in c for c in summary["next_commands"])
    assert summary["level_series"]["lr"] == pytest.approx(3e-2)
    assert "0.3: —" in (study / "README.md").read_text()

    three = rt1.Plan(methods={"adamw": {"method": "adamw", "lr_grid": [1e-3, 3e-3, 1e-2, 3e-2]}},
                     seeds=PLAN.seeds, levels=PLAN.levels, alphas=PLAN.alphas)
    for lr in (1e-3, 3e-2):
        next((study / "runs").glob(f"adamw-{lr:g}-42")).joinpath("result.json").unlink()
    adamw = row(rt1.run_study(study, three, draw=False), "adamw")
    assert adamw["best_lr"] == pytest.approx(3e-3) and not adamw["bracketed"]


def test_edge_of_grid_asks_for_more_points(study):
    write_run(study, "galore-0.03-42", "galore_1_4", 3e-2, 42, 65.0)
    summary = rt1.run_study(study, PLAN, draw=False)
    galore = row(summary, "galore_1_4")
    assert galore["grid_complete"] and galore["best_lr_at_grid_edge"] and galore["best_lr"] == pytest.approx(0.1)
    assert not any("galore_1_4 optimizer.lr" in c for c in summary["next_commands"])  # no seeds at an edge lr
    assert any("extend" in c and "galore_1_4" in c for c in summary["next_commands"])
    assert "Verdict pending" in summary["verdict"] and "best lr at the grid edge" in summary["verdict"]


def test_verdict_states_numbers_and_compares_with_seed_spread(study):
    write_run(study, "galore-0.03-42", "galore_1_4", 3e-2, 42, 55.0)
    for seed, ppl in ((43, 56.0), (44, 54.0)):
        write_run(study, f"galore-0.03-{seed}", "galore_1_4", 3e-2, seed, ppl)
    summary = rt1.run_study(study, PLAN, draw=True)
    v = summary["verdict"]
    haar_mean, full_mean = statistics.fmean([45.0, 45.5, 44.8]), statistics.fmean([50.0, 51.0, 49.5])
    assert "holds at this scale" in v
    assert f"GWT Haar-2 {haar_mean:.2f}" in v and f"Full-Rank (AdamW) {full_mean:.2f}" in v
    assert f"difference {haar_mean - full_mean:+.2f}, larger than" in v
    assert (study / "lr_sensitivity.png").stat().st_size > 1000 and (study / "levels.png").stat().st_size > 1000
    assert [r["experiment"] for r in summary["ranking"]] == ["haar2", "adamw", "galore_1_4"]  # by mean ppl
    assert "**Ranking**" in (study / "README.md").read_text()


def test_verdict_says_when_the_ordering_fails():
    rows = [{"experiment": "haar2", "label": "GWT Haar-2", "mean_ppl": 52.0, "std_ppl": 1.0, "n": 3,
             "grid_complete": True, "bracketed": True,
             "best_lr_at_grid_edge": False},
            {"experiment": "adamw", "label": "Full-Rank (AdamW)", "mean_ppl": 51.5, "std_ppl": 1.0, "n": 3,
             "grid_complete": True, "bracketed": True,
             "best_lr_at_grid_edge": False},
            {"experiment": "galore_1_4", "label": "GaLore-1/4", "mean_ppl": 60.0, "std_ppl": 0.5, "n": 3,
             "grid_complete": True, "bracketed": True,
             "best_lr_at_grid_edge": False}]
    v = rt1.verdict(rows)
    assert "does not hold" in v and "difference +0.50, not larger than" in v


def test_plan_from_the_config_files():
    plan = rt1.load_plan()
    assert set(plan.methods) == set(rt1.LABELS)
    assert plan.methods["haar2"]["method"] == "gwt-haar-L2-a0.25"
    for exp, spec in plan.methods.items():
        grid = spec["lr_grid"]
        assert len(grid) >= 4 and grid == sorted(grid), exp
        ratios = [math.log(b / a) for a, b in zip(grid, grid[1:])]
        assert max(ratios) - min(ratios) < 0.11, f"{exp}: grid not log-spaced (1-3-10 steps)"
    assert plan.seeds == [42, 43, 44] and plan.levels == [1, 2, 3, 4, 5, 6, 7]
    assert plan.alphas == [0.1, 0.25, 0.5, 1.0]
    assert len({s["method"] for s in plan.methods.values()}) == len(plan.methods)


def test_project_readme_block_is_written_between_its_markers_only(study, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rt1.README_BEGIN}\nold numbers 99.9\n{rt1.README_END}\nafter\n")
    summary = rt1.run_study(study, PLAN, draw=False, project_readme=readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{rt1.README_END}\nafter\n") and "99.9" not in text
    block = text[text.index(rt1.README_BEGIN):text.index(rt1.README_END) + len(rt1.README_END)]
    assert block == rt1.readme_block(summary)
    # the ranking holds the two tuned methods, best first, with their lr and state; GaLore is not tuned
    table = block.splitlines()[3:6]
    assert table[0] == "| GWT Haar-2 | Full-Rank (AdamW) |"
    assert table[2].startswith("| 45.10 ± 0.36 (0.03, 0.25x) | 50.17 ± 0.76 (0.003, 1.00x)")
    assert "Not yet tuned (lr not bracketed or seeds missing): GaLore-1/4." in block and summary["verdict"] in block


def test_project_readme_without_markers_is_left_untouched(study, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    rt1.run_study(study, PLAN, draw=False, project_readme=readme)
    assert readme.read_text() == "no markers here\n"
    assert "markers" in capsys.readouterr().out


def test_the_committed_readme_block_matches_the_committed_summary():
    """The numbers in the project's README are the ones scripts/reduced_table1.py gives for the
    committed summary.json (rerun the script after adding runs)."""
    summary = json.loads((ROOT / "results" / "reduced_table1" / "summary.json").read_text())
    text = (ROOT / "README.md").read_text()
    start, end = text.index(rt1.README_BEGIN), text.index(rt1.README_END) + len(rt1.README_END)
    assert text[start:end] == rt1.readme_block(summary)
