"""`plasticrl plot`: PNG dashboards from run folders' metrics.jsonl (synthetic runs, no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plasticrl.lab.plots import GROUP_METRICS, panel_keys, plot_runs
from plasticrl.runlog import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("encoder", "actor", "critic")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_records(config: str, seed: int, total: int = 20_000) -> list[dict]:
    """Plausible records of one run: episodes every 500 steps, probes and replay ratio every 2000, evals every 5000."""
    adaptive = config == "adaptive"
    rng = np.random.default_rng(seed + 100 * adaptive)
    decay = 0.6 if adaptive else 1.0  # adaptive runs keep more plasticity
    records = []
    for step in range(500, total + 1, 500):
        progress = step / total
        records.append({"env_step": step, "time/wall_s": step / 100,
                        "train/episode_return": float((900 if adaptive else 700) * progress + rng.normal(0, 40)),
                        "train/episode_length": 500, "train/critic_loss": float(rng.uniform(0.1, 1.0))})
        if step % 2000 == 0:
            probe = {"env_step": step, "time/wall_s": step / 100}
            for gi, group in enumerate(GROUPS):
                dormant = float(np.clip(0.05 + 0.3 * decay * progress * (gi + 1) / 3 + rng.normal(0, 0.01), 0, 1))
                probe[f"plasticity/{group}/dormant_ratio"] = dormant
                probe[f"plasticity/{group}/fau"] = 1 - dormant
                probe[f"plasticity/{group}/srank"] = float(int(64 * (1 - 0.5 * decay * progress)) + gi + seed)
                probe[f"plasticity/{group}/weight_norm"] = 10 + progress  # a group metric that is not drawn
                probe[f"plasticity/{group}/layer.1/fau"] = 1 - dormant  # per-layer keys are not panels
            records.append(probe)
            ratio = (0.5 if step < total / 2 else 2.0) if adaptive else 0.5
            records.append({"env_step": step, "replay_ratio/ratio": ratio, "replay_ratio/updates": int(step * ratio)})
        if step % 5000 == 0:
            records.append({"env_step": step, "eval/return_mean": float(850 * progress + rng.normal(0, 20)),
                            "eval/return_std": 20.0})
    return records


def write_run(root: Path, config: str, seed: int, records: list[dict] | None = None) -> Path:
    run_dir = root / config / f"{seed}-20250101-120000"
    (run_dir / "plots").mkdir(parents=True)
    lines = [json.dumps(r) for r in (records if records is not None else fake_records(config, seed))]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    """2 configs x 2 seeds in the run-folder layout runs/<config>/<seed>-<time>/."""
    return [write_run(tmp_path / "runs", config, seed) for config in ("static", "adaptive") for seed in (0, 1)]


def assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000


def test_panel_keys_are_returns_losses_replay_ratio_and_one_panel_per_metric(runs):
    """Return (train and eval), the critic loss the runs logged, the replay ratio (the adaptive runs change it), then
    one panel per metric with every group's key."""
    panels = panel_keys([read_jsonl(d) for d in runs])
    assert panels[0] == ("return", ["train/episode_return", "eval/return_mean"])
    assert panels[1] == ("critic loss", ["train/critic_loss"])
    assert panels[2] == ("replay ratio", ["replay_ratio/ratio"])
    assert panels[3:] == [(m.replace("_", " "), [f"plasticity/{g}/{m}" for g in sorted(GROUPS)]) for m in GROUP_METRICS]


def test_panel_keys_skip_what_was_not_logged_and_a_flat_replay_ratio():
    records = [{"env_step": 10, "train/episode_return": 1.0, "plasticity/critic/fau": 0.5, "replay_ratio/ratio": 0.5},
               {"env_step": 20, "replay_ratio/ratio": 0.5}]
    assert panel_keys([records]) == [("return", ["train/episode_return"]), ("fau", ["plasticity/critic/fau"])]


def test_plot_runs_writes_a_png(runs, tmp_path):
    out = plot_runs(runs, tmp_path / "out" / "dashboard.png")
    assert out == tmp_path / "out" / "dashboard.png"
    assert_png(out)


def test_default_output_is_the_first_runs_plots_folder(runs):
    out = plot_runs(runs[:1])
    assert out == runs[0] / "plots" / "dashboard.png"
    assert_png(out)


def test_plot_cli(runs, tmp_path):
    out = tmp_path / "cli.png"
    proc = subprocess.run([sys.executable, "-m", "plasticrl", "plot", *map(str, runs), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(out)
    assert_png(out)


def test_run_folder_without_metrics_is_a_clear_error(runs, tmp_path):
    empty = tmp_path / "runs" / "static" / "2-20250101-120000"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no metrics\.jsonl in .*2-20250101-120000.*plasticrl train"):
        plot_runs([runs[0], empty], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_a_single_point_series_is_drawn(tmp_path, monkeypatch):
    """A short run evaluates once, at its end: that lone point must be visible (a marker, not a 0-length line)."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k)))
    records = [{"env_step": s, "train/episode_return": float(s)} for s in (125, 250)]
    records.append({"env_step": 300, "eval/return_mean": 53.6})
    plot_runs([write_run(tmp_path / "runs", "smoke", 0, records)], tmp_path / "short.png")
    (fig,) = figures
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["smoke eval"].get_xdata()) == [300.0]
    assert lines["smoke eval"].get_marker() not in (None, "None", "", " ")


def test_runs_with_nothing_to_plot_are_a_clear_error(tmp_path):
    run = write_run(tmp_path / "runs", "static", 0, [{"env_step": 0, "time/wall_s": 0.1}])
    with pytest.raises(ValueError, match="nothing to plot"):  # a ConfigError: one line from the CLI
        plot_runs([run], tmp_path / "x.png")


def test_interventions_are_vertical_lines_in_every_panel(tmp_path, monkeypatch):
    """Two ReDo applications on the critic (at 6,000 and 14,000 steps) are dotted vertical lines at those steps in
    every panel, labelled once per panel."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k)))
    records = fake_records("redo", 0)
    records += [{"env_step": 6000, "intervention/redo/critic/units_recycled": 12, "intervention/redo/critic/count": 1},
                {"env_step": 14000, "intervention/redo/critic/units_recycled": 3, "intervention/redo/critic/count": 2}]
    plot_runs([write_run(tmp_path / "runs", "redo", 0, records)], tmp_path / "redo.png")
    (fig,) = figures
    drawn = [ax for ax in fig.axes if ax.get_lines()]
    assert len(drawn) == len(panel_keys([records]))
    for ax in drawn:
        marks = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert sorted(line.get_xdata()[0] for line in marks) == [6000.0, 14000.0]
        assert [line.get_label() for line in marks].count("redo redo critic") == 1


def _figure(monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k)))
    return figures


def test_runs_under_one_name_with_different_configs_are_different_arms(tmp_path, monkeypatch):
    """Two seeds of one config and one run of another, all under runs/exp/: two arms, told apart by the config key
    that differs (not merged into one mean as if they were three seeds); the seed does not split them."""
    figures = _figure(monkeypatch)
    dirs = []
    for seed, kind in ((0, "static"), (1, "static"), (2, "adaptive")):
        d = write_run(tmp_path / "runs", "exp", seed, fake_records("static", seed))
        (d / "config.yaml").write_text(f"run:\n  seed: {seed}\n  name: exp\nreplay_ratio:\n  kind: {kind}\n")
        dirs.append(d)
    plot_runs(dirs, tmp_path / "arms.png")
    (fig,) = figures
    labels = {line.get_label() for line in fig.axes[0].get_lines()}
    assert {"exp [replay_ratio.kind=\"adaptive\"] train", "exp [replay_ratio.kind=\"static\"] train"} <= labels
    assert fig.texts[0].get_text() == ('exp [replay_ratio.kind="adaptive"] (1 seed), '
                                       'exp [replay_ratio.kind="static"] (2 seeds)')


def test_ratios_have_fixed_ranges_ranks_start_at_zero_and_the_rr_switch_is_marked(runs, monkeypatch, tmp_path):
    """Dormant ratio and FAU panels span [0, 1]; srank's starts at 0; each adaptive run's switch from RR 0.5 to 2
    (at 10,000 steps in the fake records) is a dashed vertical line in every panel."""
    figures = _figure(monkeypatch)
    plot_runs(runs, tmp_path / "ranges.png")
    (fig,) = figures
    by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert by_title["dormant ratio"].get_ylim() == (0.0, 1.0) and by_title["fau"].get_ylim() == (0.0, 1.0)
    assert by_title["srank"].get_ylim()[0] == 0.0
    for ax in by_title.values():
        switches = [line for line in ax.get_lines() if line.get_linestyle() == "--"
                    and list(line.get_xdata()) == [line.get_xdata()[0]] * 2]  # vertical lines, not dashed groups
        assert sorted({line.get_xdata()[0] for line in switches}) == [10000.0]


def test_a_parent_folder_stands_for_the_run_folders_under_it(runs, tmp_path, capsys):
    """`plasticrl plot runs/adaptive/` and `plasticrl plot runs/`: the run folders (with a metrics.jsonl) under them,
    in name order; a sweep's set-aside folder is left out."""
    from plasticrl.lab.cli import main
    from plasticrl.lab.plots import find_run_dirs

    root = tmp_path / "runs"
    set_aside = root / "adaptive" / "0-20250101-120000.interrupted-1"
    set_aside.mkdir()
    (set_aside / "metrics.jsonl").write_text((runs[0] / "metrics.jsonl").read_text())
    assert find_run_dirs([root / "adaptive"]) == sorted(r for r in runs if r.parent.name == "adaptive")
    assert find_run_dirs([root]) == sorted(runs)
    assert find_run_dirs([runs[1], root]) == [runs[1], *[r for r in sorted(runs) if r != runs[1]]]
    assert main(["plot", str(root), "--out", str(tmp_path / "all.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "all.png")
    assert_png(tmp_path / "all.png")


@pytest.mark.parametrize("case", ["missing", "empty folder", "file", "empty metrics"])
def test_bad_plot_inputs_stop_with_one_line_naming_the_path(tmp_path, capsys, case):
    from plasticrl.lab.cli import main

    path = tmp_path / "runs" / "exp"
    if case == "empty folder":
        path.mkdir(parents=True)
    elif case == "file":
        path.parent.mkdir(parents=True)
        path.write_text("x")
    elif case == "empty metrics":
        path = write_run(tmp_path / "runs", "exp", 0, [])
        (path / "metrics.jsonl").write_text("")
    assert main(["plot", str(path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and str(path) in err
    expected = {"missing": "does not exist; pass run folders", "empty folder": "no run folders (with a metrics.jsonl)",
                "file": "is not a folder", "empty metrics": "metrics.jsonl is empty"}[case]
    assert expected in err
    assert not (tmp_path / "x.png").exists()


def test_a_run_that_logged_nothing_yet_is_left_out_beside_others_with_a_warning(runs, tmp_path):
    """A parent folder of a sweep where one run has just started (empty metrics.jsonl): the others are drawn, and a
    warning names the one left out; a truncated last line is warned about once."""
    import warnings as w

    fresh = write_run(tmp_path / "fresh", "static", 7, [])
    (fresh / "metrics.jsonl").write_text("")
    truncated = write_run(tmp_path / "trunc", "static", 8, [])
    (truncated / "metrics.jsonl").write_text((runs[0] / "metrics.jsonl").read_text() + '{"env_step": 9')
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        out = plot_runs([runs[0], fresh, truncated], tmp_path / "x.png")
    assert_png(out)
    messages = [str(c.message) for c in caught]
    assert any("left out, nothing logged yet" in m and str(fresh) in m for m in messages), messages
    assert sum("truncated last record skipped" in m for m in messages) == 1, messages
