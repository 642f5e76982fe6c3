"""gwt/results.py and scripts/make_tables.py on small run folders built here (result.json contract)."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import make_tables  # noqa: E402
from gwt_lab.results import Run, Table, load_paper, load_runs, method_label  # noqa: E402

PAPER = REPO / "results" / "paper"


def write_run(root: Path, rel: str, config: dict, metrics: dict, curve: list[dict] = (), **extra) -> Path:
    run_dir = root / rel
    run_dir.mkdir(parents=True)
    result = {"config": config, "git_commit": "0123456789abcdef", "metrics": metrics, **extra}
    (run_dir / "result.json").write_text(json.dumps(result))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in curve))
    return run_dir


def pretrain_config(model="llama_60m", hidden=512, optimizer=None, data="c4_local", steps=100, seed=0):
    optimizer = optimizer or {"name": "gwt", "wavelet": "haar", "level": 2, "alpha": 0.25, "lr": 0.01}
    return {"model": {"name": model, "hidden_size": hidden}, "optimizer": optimizer, "data": {"name": data},
            "seed": seed, "trainer": {"max_steps": steps}}


def pretrain_metrics(ppl, tokens=1.6e6, tokens_per_s=5000.0):
    return {"eval_loss": 1.0, "eval_ppl": ppl, "tokens_seen": tokens, "train_tokens_per_s": tokens_per_s,
            "optimizer_state_bytes": 123456789, "peak_memory_bytes": 2e9}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    gwt = {"name": "gwt", "wavelet": "haar", "level": 2, "alpha": 0.25, "lr": 0.01}
    write_run(root, "pretrain/haar2_60m_s0", pretrain_config(seed=0), pretrain_metrics(40.0), machine="CPU test box")
    write_run(root, "pretrain/haar2_60m_s1", pretrain_config(seed=1), pretrain_metrics(42.0), machine="CPU test box")
    # alpha ablation (Figure 3): must stay out of Table 1
    write_run(root, "pretrain/alpha01_60m", pretrain_config(optimizer=dict(gwt, alpha=0.1)), pretrain_metrics(99.0))
    write_run(root, "pretrain/adam_tiny", pretrain_config("llama_tiny", 64, {"name": "adamw", "lr": 1e-3}),
              pretrain_metrics(300.0, tokens=1e5))
    write_run(root, "pretrain/haar3_60m_full", pretrain_config(optimizer=dict(gwt, level=3), data="c4", steps=10000),
              pretrain_metrics(29.9, tokens=1.31e9, tokens_per_s=360000.0), machine={"gpu": "NVIDIA GeForce RTX 3090", "gpu_count": 4, "torch": "2.3.0"}, world_size=4)
    curve = [{"step": s, "loss": 3.0, "lr": 0.01, "tokens_seen": s * 131072, "tokens_per_s": 2800.0}
             for s in (10000, 20000)] + [{"step": 20000, "eval_loss": 2.9, "eval_ppl": 18.5}]
    write_run(root, "pretrain/galore_1b", pretrain_config("llama_1b", 2048, {"name": "galore", "rank": 512, "lr": 0.01},
                                                           steps=20000),
              pretrain_metrics(18.5, tokens=2.6e9, tokens_per_s=20000.0), curve=curve, world_size=8)
    for lr, mcc in ((5e-6, 0.55), (1e-5, 0.60), (1e-5, 0.62)):
        write_run(root, f"glue/cola_haar2_{lr:g}_{mcc}", {"task": "cola", "model": {"name": "minilm_l6"},
                                                          "optimizer": dict(gwt, alpha=2.0, lr=lr),
                                                          "trainer": {"epochs": 3, "batch_size": 32}},
                  {"matthews_correlation": mcc, "per_epoch": [{"epoch": 1, "matthews_correlation": mcc}]})
    write_run(root, "glue/mrpc_adam", {"task": "mrpc", "model": {"name": "roberta_base"},
                                       "optimizer": {"name": "adamw", "lr": 2e-5}, "trainer": {"epochs": 30}},
              {"final": {"f1": 91.0, "accuracy": 88.0}})
    (root / "paper").mkdir()  # a paper folder inside results is never read as runs
    (root / "paper" / "result.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def markdown(results) -> str:
    out = results.parent / "tables.md"
    assert make_tables.main(["--results", str(results), "--paper-dir", str(PAPER), "--out", str(out)]) == 0
    assert "from 10 run(s)" in out.read_text()
    return out.read_text()


def _row(text: str, title: str, method: str) -> list[str]:
    section = text.split(f"### {title}")[1].split("### ")[0]
    line = next(line for line in section.splitlines() if line.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_method_labels():
    assert method_label({"name": "adamw"}) == "Full-Rank"
    assert method_label({"name": "gwt", "wavelet": "db2", "level": 3}) == "DB2-3"
    assert method_label({"name": "galore", "rank": 0.25}) == "GaLore-1/4"
    assert method_label({"name": "galore", "rank": 128}, hidden_size=1024) == "GaLore-1/8"
    assert method_label({"name": "gwt_adafactor", "level": 2}) == "Haar-2 Adafactor"


def test_load_runs_reads_every_run_but_the_paper(results):
    runs = load_runs(results)
    assert len(runs) == 10
    assert all(not r.path.parts[0] == "paper" for r in runs)
    glue = [r for r in runs if r.kind == "glue"]
    assert {r.task for r in glue} == {"cola", "mrpc"}
    mrpc = next(r for r in glue if r.task == "mrpc")
    assert mrpc.glue_score() == 91.0  # already in percent, from metrics["final"]
    assert next(r for r in glue if r.task == "cola").glue_score() in (55.0, 60.0, 62.0)


def test_table1_cells_are_ours_paper_with_provenance(markdown):
    row = _row(markdown, "Table 1", "Haar-2")
    assert row[1] == "41.00±1.41 (n=2)† (29.35)"  # two seeds, reduced scale, paper value
    assert row[2].endswith("(0.24G)")  # estimated memory beside the paper's
    assert row[3] == "— (22.47)"  # no 130M run
    assert _row(markdown, "Table 1", "Haar-3")[1] == "29.90 (29.81)"  # full-scale run: no dagger
    assert "99.00" not in markdown.split("### Table 2")[0]  # alpha ablation excluded ...
    unplaced = markdown.split("### Runs in no table cell")[1]
    assert "`pretrain/alpha01_60m`" in unplaced and "ablation" in unplaced  # ... and listed as such
    assert _row(markdown, "Table 1", "Full-Rank")[-1] == "300.00† (—)"  # tiny: extra column, no paper value
    assert "`pretrain/haar2_60m_s0`" in markdown and "0.12% of the paper's 1.3B" in markdown
    assert "CPU test box" in markdown and "4x NVIDIA GeForce RTX 3090 (torch 2.3.0)" in markdown and "commit 01234567" in markdown


def test_table2_reads_curve_at_step_and_per_gpu_throughput(markdown):
    row = _row(markdown, "Table 2", "GaLore")
    assert row[1] == "18.50† (20.37)"  # eval_ppl at step 20000 from metrics.jsonl
    assert row[2] == "— (17.82)"
    assert row[5] == "2500† (2518)"  # 20000 tokens/s over world_size 8
    assert _row(markdown, "Table 2", "Haar-2")[1] == "— (18.34)"


def test_table3_and_a3_pick_lr_and_mark_reduced_runs(markdown):
    haar = _row(markdown, "Table 3", "Haar-2")
    assert haar[1] == "61.00±1.41 (n=2)† (62.57)"  # best-lr group (1e-5) of the CoLA runs
    assert _row(markdown, "Table 3", "Full-Rank")[3] == "91.00 (91.30)"  # roberta_base, 30 epochs: full
    assert haar[-1] == "— (86.56)"  # average needs all eight tasks
    assert _row(markdown, "Table A3", "5e-06")[1] == "55.00† (62.57)"
    assert _row(markdown, "Table A3", "1e-05")[1] == "61.00±1.41 (n=2)† (59.57)"
    assert _row(markdown, "Table A3", "chosen lr")[1] == "1e-05 (5e-06)"
    assert _row(markdown, "Table A3", "2e-06")[1] == "— (58.29)"


def test_table4_and_a4(markdown):
    haar3 = _row(markdown, "Table 4", "Haar-3")
    assert haar3[2] == "90000 (90100)"
    assert haar3[1].endswith("(0.10G)")
    assert "Table A4" in markdown and "measured" in markdown


def test_no_runs_gives_dashes_and_latex(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert make_tables.main(["--results", str(tmp_path / "empty"), "--paper-dir", str(PAPER),
                             "--tables", "3", "--latex"]) == 0
    out = capsys.readouterr().out
    assert "\\begin{tabular}" in out and "--- (62.57)" in out and "No runs yet" in out


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_tables.main(["--tables", "9"])
    assert "--tables 9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_tables.main(["--results", str(tmp_path / "nope")])
    assert "no such folder" in capsys.readouterr().err
    bad = tmp_path / "bad" / "run"
    bad.mkdir(parents=True)
    (bad / "result.json").write_text('{"config": {}}')
    with pytest.raises(ValueError, match="metrics"):
        load_runs(tmp_path / "bad")


def test_table_render_escapes_latex():
    table = Table("T_1 & more", ["a", "b"], [["x_1", "50%"]], ["note #1"])
    latex = table.latex()
    assert "T\\_1 \\& more" in latex and "x\\_1 & 50\\%" in latex and "note \\#1" in latex
    assert "| x_1 | 50% |" in table.markdown()


def test_paper_csvs_match_shared_copy():
    shared = REPO.parent / "shared" / "paper"
    if not shared.is_dir():
        pytest.skip(f"{shared} not present on this machine (the copy in results/paper is what the tables use)")
    for path in shared.glob("*.csv"):
        assert (PAPER / path.name).read_text() == path.read_text(), path.name
    assert set(load_paper(PAPER)) >= {"table1_c4_pretrain", "tableA4_memory_estimate"}


def test_run_describe_without_optional_fields():
    run = Run(path=Path("x"), config={}, metrics={}, git_commit="abc")
    assert run.model == "unknown" and run.method == "?" and "unknown machine" in run.describe()


def test_glue_percentages_from_finetune_glue_are_not_rescaled():
    """finetune_glue.py writes percentages with a `score` key: a CoLA MCC of 0.5 % stays 0.5."""
    run = Run(path=Path("x"), config={"task": {"name": "cola", "metric": "matthews_correlation"}},
              metrics={"matthews_correlation": 0.5, "score": 0.5}, git_commit="abc")
    assert run.glue_score() == 0.5
    fraction = Run(path=Path("y"), config={"task": "cola"}, metrics={"mcc": 0.5}, git_commit="abc")
    assert fraction.glue_score() == 50.0


def test_table_a4_sets_measured_state_bytes_beside_the_formula(tmp_path):
    dims = {"name": "llama_tiny", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 176,
            "num_attention_heads": 4, "num_hidden_layers": 2}
    gwt = {"name": "gwt", "wavelet": "haar", "level": 2, "alpha": 0.25, "lr": 0.01, "state_dtype": None}
    write_run(tmp_path, "pretrain/tiny_haar2", {"model": dims, "optimizer": gwt, "data": {"name": "c4_local"}},
              pretrain_metrics(500.0))
    run = load_runs(tmp_path)[0]
    estimated = make_tables.run_state_estimate(run)
    assert estimated == 465548  # = optimizer_state_bytes of a real GWTAdamW on this model (test_estimate_memory)
    table = make_tables.tableA4([run], load_paper(PAPER), make_tables.Estimator())
    assert "Haar-2 / tiny: 123,456,789 B measured, 465,548 B estimated" in "\n".join(table.notes)


def test_a_cell_averages_only_runs_that_differ_in_the_seed(tmp_path):
    """Three seeds of one protocol and one run with fewer steps share a Table 1 cell: the mean covers
    the three; the fourth is named in the notes with its value and the keys it differs in."""
    for seed, ppl in ((0, 40.0), (1, 42.0), (2, 44.0)):
        write_run(tmp_path, f"pretrain/haar_s{seed}", pretrain_config(seed=seed, steps=100), pretrain_metrics(ppl))
    write_run(tmp_path, "pretrain/haar_short", pretrain_config(seed=0, steps=10), pretrain_metrics(90.0))
    text, _, count = make_tables.render(["--results", str(tmp_path), "--paper-dir", str(PAPER), "--tables", "1"])
    assert count == 4
    cell = _row(text, "Table 1", "Haar-2")[1]
    assert cell.startswith("42.00±2.00 (n=3)") and "‡" in cell
    assert "‡ not averaged in: 90.00 (n=1) from `pretrain/haar_short`" in text
    assert "trainer.max_steps=10 (vs 100)" in text


def test_group_like_ignores_output_paths_and_implementation_keys():
    from gwt_lab.results import group_like

    base = pretrain_config(optimizer={"name": "gwt", "lr": 0.01, "backend": "cpu"})
    other_machine = dict(pretrain_config(seed=5, optimizer={"name": "gwt", "lr": 0.01, "backend": "torch"}),
                         output_dir="/elsewhere", run_name="x", data={"name": "c4_local", "dir": "/mnt/c4"},
                         paths={"data": "/mnt", "tokenizers": "/mnt/tok"})
    other_lr = pretrain_config(optimizer={"name": "gwt", "lr": 0.02, "backend": "cpu"})
    runs = [Run(path=Path(str(i)), config=c, metrics={}, git_commit="") for i, c in
            enumerate((base, other_machine, other_lr))]
    groups = group_like(runs)
    assert [[r.path.name for r in g] for g in groups] == [["0", "1"], ["2"]]
    assert len(group_like(runs, ignore=("optimizer.lr",))) == 1


def test_study_runs_have_their_own_reduced_table(tmp_path):
    config = dict(pretrain_config("llama_h128_l4_v2k", 128, {"name": "adamw", "lr": 0.003}),
                  study={"method": "adamw", "lr_grid": [0.001, 0.003]})
    write_run(tmp_path, "reduced_table1/runs/rt1-adamw-lr0.003-s42", dict(config, seed=42), pretrain_metrics(55.0))
    text, _, _ = make_tables.render(["--results", str(tmp_path), "--paper-dir", str(PAPER), "--tables", "1", "1R"])
    assert "llama_h128" not in text.split("### Table 1 at reduced scale")[0]  # not a generic Table 1 column
    row = _row(text, "Table 1 at reduced scale", "Full-Rank (AdamW)")
    assert row[1] == "55.00 (n=1)†" and row[2] == "0.003 (provisional)" and row[4] == "33.37"
    assert "Runs in no table cell" not in text


def test_committed_tables_are_what_the_script_produces():
    """results/tables.md is regenerated whenever results change (`make tables`)."""
    text, _, _ = make_tables.render(["--out", "results/tables.md"])
    committed = (REPO / "results" / "tables.md").read_text()
    assert committed == text, ("results/tables.md is stale: run `.venv/bin/python scripts/make_tables.py "
                               "--out results/tables.md` (make tables) and commit it")


def test_keys_added_later_count_at_the_value_earlier_runs_had():
    from gwt_lab.results import config_differences, protocol

    old = {"seed": 42, "optimizer": {"name": "gwt", "lr": 0.003}, "trainer": {"max_steps": 500}}
    new = {"seed": 43, "optimizer": {"name": "gwt", "lr": 0.003},
           "trainer": {"max_steps": 500, "activation_checkpointing": False}, "distributed": {"name": "ddp"}}
    assert protocol(old) == protocol(new) and config_differences(old, new) == []
    sharded = {**new, "distributed": {"name": "fsdp2", "reshard_after_forward": True}}
    assert protocol(sharded) != protocol(old)
    assert 'distributed.name="fsdp2" (vs "ddp")' in config_differences(sharded, old)
