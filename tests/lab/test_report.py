"""`plasticrl report`: values at frame budgets, mean +- std and the IQM with its stratified-bootstrap CI, checked
against hand computations and rliable called directly; the reference numbers; bad input."""

import csv
from pathlib import Path

import numpy as np
import pytest

from plasticrl.lab import report as reports
from plasticrl.lab.cli import main
from plasticrl.lab.config import dump
from plasticrl.lab.config import train as train_config
from plasticrl.lab.config.base import ConfigError
from plasticrl.runlog import RunLogger

ROOT = Path(__file__).resolve().parents[2]
SMOKE_SAC = ROOT / "configs" / "train" / "smoke_sac.yaml"
REFERENCE = ROOT / "configs" / "reference" / "adaptive_rr_table1.yaml"


def make_run(root: Path, name: str, seed: int, action_repeat: int, evals: dict[int, float],
             last_step: int | None = None, env_id: str = "dmc:cartpole-swingup") -> Path:
    """A run folder as `plasticrl train` writes it: the resolved config.yaml, and metrics.jsonl through RunLogger with
    ``eval/return_mean`` at the given agent steps (and an episode record at ``last_step``)."""
    cfg = train_config.load(SMOKE_SAC, [f"run.name={name}", f"run.seed={seed}", f"env.action_repeat={action_repeat}",
                                        f"env.id={env_id}"])
    folder = root / name / f"{seed}-20260101-000000"
    logger = RunLogger(folder, wandb_settings={"mode": "disabled"})
    for step, value in sorted(evals.items()):
        logger.log({"eval/return_mean": value, "eval/return_std": 0.0}, step)
    if last_step is not None:
        logger.log({"train/episode_return": 0.0}, last_step)
    logger.close()
    (folder / "config.yaml").write_text(dump(cfg))
    return folder


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_iqm_mean_std_and_ci_match_hand_computation_and_rliable(tmp_path):
    """8 seeds: the IQM is the mean of the middle four (25 % cut at each end), mean and std are numpy's over all
    eight, and the CI is rliable's, called directly with the same seed."""
    finals = [3.0, 100.0, 7.0, 12.0, 9.0, 50.0, 1.0, 20.0]
    for seed, value in enumerate(finals):
        make_run(tmp_path / "runs", f"hand/arm_a/cartpole-swingup/seed{seed}", seed, 2,
                 {500: value - 1.0, 1000: value})
    out = tmp_path / "out"
    reports.report([tmp_path / "runs"], budgets="2k", out=out, reps=500, seed=3)
    (row,) = read_rows(out / "report.csv")
    middle = sorted(finals)[2:6]  # [7, 9, 12, 20]
    assert float(row["iqm"]) == pytest.approx(sum(middle) / 4) == pytest.approx(12.0)
    assert float(row["mean"]) == pytest.approx(202 / 8)
    assert float(row["std"]) == pytest.approx(np.sqrt(np.mean((np.array(finals) - 202 / 8) ** 2)))
    assert (row["arm"], row["task"], row["frames"], row["agent_steps"], row["runs"], row["short"]) == \
        ("arm_a", "cartpole-swingup", "2000", "1000", "8", "0")

    from rliable import library, metrics
    np.random.seed(3)
    points, intervals = library.get_interval_estimates({"a": np.array(finals).reshape(-1, 1)}, metrics.aggregate_iqm,
                                                       reps=500)
    low, high = np.ravel(intervals["a"])
    assert float(row["iqm"]) == pytest.approx(float(points["a"]))
    assert (float(row["iqm_ci_low"]), float(row["iqm_ci_high"])) == (pytest.approx(low), pytest.approx(high))
    assert float(row["iqm_ci_low"]) <= float(row["iqm"]) <= float(row["iqm_ci_high"])
    assert float(row["iqm_ci_low"]) < float(row["iqm_ci_high"])  # eight different values: a real interval
    state = np.random.get_state()
    reports.iqm_ci(np.array(finals), reps=100, seed=0)
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global RNG is left as it was
    md = (out / "report.md").read_text()
    stats = f"25.2 ± {np.std(finals):.1f} | 12.0 [{low:.1f}, {high:.1f}]"
    assert f"| cartpole-swingup | arm_a | 2k | 1k | 8 | 0 | {stats} |" in md


def test_a_budgets_value_is_the_last_eval_at_or_before_it_and_short_runs_are_counted(tmp_path):
    """Frames = agent steps x each run's action repeat. Action repeat 4: evaluations at 400, 800, 1200 frames; at 1000
    frames a run's value is its 800-frame evaluation. A run that trained 200 agent steps (800 frames) is short of 1000
    frames and left out there, but counts at 800."""
    runs = tmp_path / "runs"
    make_run(runs, "s/a/cartpole-swingup/seed0", 0, 4, {100: 10.0, 200: 20.0, 300: 30.0})
    make_run(runs, "s/a/cartpole-swingup/seed1", 1, 4, {100: 11.0, 200: 21.0}, last_step=200)
    make_run(runs, "s/a/walker-walk/seed0", 0, 2, {100: 5.0, 400: 40.0, 500: 50.0}, env_id="dmc:walker-walk")
    out = tmp_path / "out"
    reports.report([runs], budgets="800,1000,1.2k", out=out, reps=50)
    rows = {(r["task"], r["frames"]): r for r in read_rows(out / "report.csv")}
    cartpole_800, cartpole_1000 = rows["cartpole-swingup", "800"], rows["cartpole-swingup", "1000"]
    assert (cartpole_800["runs"], cartpole_800["short"], float(cartpole_800["mean"])) == ("2", "0", 20.5)
    assert (cartpole_1000["runs"], cartpole_1000["short"], float(cartpole_1000["mean"])) == ("1", "1", 20.0)
    assert float(rows["cartpole-swingup", "1200"]["mean"]) == 30.0
    assert rows["cartpole-swingup", "1000"]["agent_steps"] == "250"  # 1000 frames / action repeat 4
    # action repeat 2: 800 frames = 400 agent steps -> 40; 1000 frames = 500 steps -> 50; 1200 frames: not reached
    assert [float(rows["walker-walk", f]["mean"]) for f in ("800", "1000")] == [40.0, 50.0]
    assert (rows["walker-walk", "1200"]["runs"], rows["walker-walk", "1200"]["short"]) == ("0", "1")
    assert rows["walker-walk", "1000"]["agent_steps"] == "500"
    # runs outside sweeps: arm = run.name, task = the env id
    plain = make_run(tmp_path / "plain", "drq_cheetah_run_rr2", 0, 2, {100: 1.0})
    curve = reports.read_run(plain, "eval/return_mean")
    assert (curve.arm, curve.task, curve.action_repeat) == ("drq_cheetah_run_rr2", "cartpole-swingup", 2)
    assert curve.value_at(199) is None and curve.value_at(200) == 1.0  # 100 agent steps x 2 = 200 frames


def test_folders_set_aside_by_a_sweep_are_left_out(tmp_path):
    kept = make_run(tmp_path, "s/a/cartpole-swingup/seed0", 0, 2, {10: 1.0})
    make_run(tmp_path / "s/a/cartpole-swingup/seed0.interrupted-1", "x", 0, 2, {10: 1.0})
    assert reports.find_runs([tmp_path]) == [kept.resolve()]
    assert reports.find_runs([kept]) == [kept.resolve()]  # a run folder itself


def test_reference_numbers_are_the_papers_table_and_print_beside(tmp_path):
    source, refs = reports.read_reference(REFERENCE)
    table = {(r.task, r.arm): (r.mean, r.std) for r in refs}
    arms = ["rr0.5", "rr0.5+reset", "rr0.5+redo", "rr2", "rr2+reset", "rr2+redo", "adaptive_rr"]
    paper = {"cheetah-run": [(828, 59), (799, 26), (788, 5), (793, 9), (885, 20), (873, 19), (880, 45)],
             "walker-run": [(710, 39), (648, 107), (618, 50), (709, 7), (749, 10), (734, 16), (758, 12)],
             "quadruped-run": [(579, 120), (593, 129), (371, 158), (417, 110), (511, 47), (608, 53), (784, 53)]}
    assert table == {(task, arm): v for task, values in paper.items() for arm, v in zip(arms, values)}
    assert {r.frames for r in refs} == {2_000_000} and "Ma et al. 2024" in source
    # the same numbers as CSV
    csv_path = tmp_path / "ref.csv"
    csv_path.write_text("task,arm,frames,mean,std\n" + "".join(f"{r.task},{r.arm},2M,{r.mean},{r.std}\n" for r in refs))
    assert [(r.task, r.arm, r.frames, r.mean, r.std) for r in reports.read_reference(csv_path)[1]] == \
        [(r.task, r.arm, r.frames, r.mean, r.std) for r in refs]
    runs = tmp_path / "runs"
    for seed in range(2):
        make_run(runs, f"t1/adaptive_rr/cheetah-run/seed{seed}", seed, 2, {1_000_000: 870.0 + seed},
                 env_id="dmc:cheetah-run")
    out = tmp_path / "out"
    reports.report([runs], budgets="1M,2M", reference=REFERENCE, out=out, reps=50)
    md = (out / "report.md").read_text()
    assert "| cheetah-run | adaptive_rr | 2M | 1M | 2 | 0 | 870.5 ± 0.5 |" in md
    assert md.split("| cheetah-run | adaptive_rr | 2M |")[1].split("\n")[0].endswith("| 880 ± 45 |")
    assert "| quadruped-run | RR 0.5 + ReDo | 2M | 371 ± 158 |" in md  # every published number, runs or not
    (row,) = [r for r in read_rows(out / "report.csv") if r["frames"] == "2000000"]
    assert (float(row["reference_mean"]), float(row["reference_std"])) == (880.0, 45.0)


def test_budgets_parse_suffixes_and_bad_ones_name_the_item():
    assert reports.parse_budgets("100k,500k,1M,2M") == [100_000, 500_000, 1_000_000, 2_000_000]
    assert reports.parse_budgets("2.4k, 1600,2m") == [1600, 2400, 2_000_000]
    for bad in ("1M,abc", "0", "-5k"):
        with pytest.raises(ConfigError, match="--budgets: .* is not a frame count"):
            reports.parse_budgets(bad)
    assert [reports.frames_label(f) for f in (2_000_000, 100_000, 2400, 800)] == ["2M", "100k", "2.4k", "800"]


def test_bad_inputs_stop_with_one_line(tmp_path, capsys):
    make_run(tmp_path / "runs", "s/a/cartpole-swingup/seed0", 0, 2, {10: 1.0})
    assert main(["report", str(tmp_path / "runs"), "--metric", "eval/return_meen", "--out", str(tmp_path / "o")]) == 2
    assert "Did you mean 'eval/return_mean'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty_or_missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no run folders" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: x\nframes: 2M\nresults: {}\n")
    assert main(["report", str(tmp_path / "runs"), "--reference", str(bad)]) == 2
    assert "frames: '2M' is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_aggregate_over_tasks_is_the_iqm_of_normalised_scores_with_rliables_ci(tmp_path, capsys):
    """Two arms on three DMC tasks, four seeds each: the `all` row of an arm is the IQM of its twelve (run, task)
    returns / 1000 (numpy: the mean of the middle six), its CI rliable's on the runs x tasks matrix with the same seed.
    An arm that lacks a task gets no aggregate and a note; --normalize none pools raw returns."""
    tasks = ["cheetah-run", "walker-walk", "quadruped-run"]
    finals = {"a": {"cheetah-run": [800, 650, 900, 300], "walker-walk": [950, 120, 700, 610],
                    "quadruped-run": [400, 420, 10, 880]},
              "b": {"cheetah-run": [100, 200, 150, 900], "walker-walk": [500, 510, 530, 40],
                    "quadruped-run": [60, 70, 990, 75]}}
    runs = tmp_path / "runs"
    for arm, by_task in finals.items():
        for task, values in by_task.items():
            for seed, value in enumerate(values):
                make_run(runs, f"agg/{arm}/{task}/seed{seed}", seed, 2, {500: 0.0, 1000: float(value)},
                         env_id=f"dmc:{task}")
    make_run(runs, "agg/c/cheetah-run/seed0", 0, 2, {1000: 5.0}, env_id="dmc:cheetah-run")  # lacks two tasks
    out = tmp_path / "out"
    reports.report([runs], budgets="2k", out=out, reps=300, seed=5)
    rows = {r["arm"]: r for r in read_rows(out / "report.csv") if r["task"] == "all"}
    assert sorted(rows) == ["a", "b"]  # c lacks walker-walk and quadruped-run: left out

    from rliable import library, metrics
    for arm, by_task in finals.items():
        matrix = np.array([by_task[t] for t in sorted(tasks)], float).T / 1000  # runs x tasks, seed order
        pooled = np.sort(matrix.ravel())
        assert float(rows[arm]["iqm"]) == pytest.approx(pooled[3:9].mean())  # 12 scores: cut 3 at each end
        assert float(rows[arm]["mean"]) == pytest.approx(pooled.mean())
        np.random.seed(5)
        _, intervals = library.get_interval_estimates({arm: matrix}, metrics.aggregate_iqm, reps=300)
        low, high = np.ravel(intervals[arm])
        assert (float(rows[arm]["iqm_ci_low"]), float(rows[arm]["iqm_ci_high"])) == \
            (pytest.approx(low), pytest.approx(high))
        assert low < high
        assert (rows[arm]["runs"], rows[arm]["short"], rows[arm]["normalize"]) == ("12", "0", "dmc")
    assert float(rows["a"]["iqm"]) == pytest.approx((610 + 650 + 700 + 420 + 800 + 400) / 6000)
    md = (out / "report.md").read_text()
    assert f"| all | a | 2k | 1k | 12 | 0 | {float(rows['a']['mean']):.3f} ± " in md
    assert "return / 1000 (the DMC suite's maximum)" in md
    assert "- c: no aggregate over tasks, it has no runs of quadruped-run, walker-walk" in md
    # raw scores: the IQM of the pooled returns themselves
    assert main(["report", str(runs), "--budgets", "2k", "--out", str(tmp_path / "raw"), "--reps", "50",
                 "--normalize", "none"]) == 0
    raw = {r["arm"]: r for r in read_rows(tmp_path / "raw" / "report.csv") if r["task"] == "all"}
    assert float(raw["a"]["iqm"]) == pytest.approx(3580 / 6) and raw["a"]["normalize"] == "none"
    capsys.readouterr()


def test_aggregate_is_left_out_with_a_note_for_uneven_runs_and_non_dmc_tasks(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "u/a/cheetah-run/seed0", 0, 2, {100: 100.0}, env_id="dmc:cheetah-run")
    make_run(runs, "u/a/cheetah-run/seed1", 1, 2, {100: 200.0}, env_id="dmc:cheetah-run")
    make_run(runs, "u/a/walker-walk/seed0", 0, 2, {100: 300.0}, env_id="dmc:walker-walk")
    cells, notes = reports.build_aggregates([reports.read_run(f, "eval/return_mean")
                                             for f in reports.find_runs([runs])], [200], 10, 0)
    assert cells == [] and notes == ["a at 200 frames: no aggregate over tasks, runs per task differ (cheetah-run: 2, "
                                     "walker-walk: 1), and the stratified bootstrap needs a runs x tasks matrix"]
    make_run(runs, "u/a/reach-v3/seed0", 0, 1, {100: 3.0}, env_id="metaworld:reach-v3")
    curves = [reports.read_run(f, "eval/return_mean") for f in reports.find_runs([runs])]
    cells, notes = reports.build_aggregates(curves, [200], 10, 0)
    assert cells == [] and "reach-v3 is not a DMC task" in notes[0] and "--normalize none" in notes[0]
