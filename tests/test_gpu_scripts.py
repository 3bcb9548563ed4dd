"""benchmarks/gpu_check.sh and its parts (docs/speed.md) run on the CPU with tiny sizes (`--dry-run`), so that the
GPU check does not rot before a GPU is at hand; the report's decisions from hand-made results."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


def load(path: Path):
    """A module by file (benchmarks/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_report = load(REPO / "benchmarks" / "gpu_report.py")
packing = load(REPO / "benchmarks" / "packing.py")


def test_gpu_check_dry_run_runs_every_stage_and_writes_one_json_and_one_markdown(tmp_path, tiny_features):
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path),
                           "--features", str(tiny_features)], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [report], [table] = tmp_path.glob("gpu_check-*.json"), tmp_path.glob("gpu_check-*.md")
    raw = sorted(p.name for p in (tmp_path / report.stem).iterdir())  # each stage's results, kept beside the report
    assert raw == ["packing.json", "speed.json", "stages.tsv", "tests-others.jsonl", "tests-vat.jsonl"]
    # The two test runs (at once) hold every CUDA test, each once.
    ran = [{json.loads(line)["name"] for line in (tmp_path / report.stem / log).read_text().splitlines()}
           for log in ("tests-vat.jsonl", "tests-others.jsonl")]
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p",
                                "no:cacheprovider", str(REPO / "tests" / "test_cuda.py")], cwd=REPO,
                               capture_output=True, text=True, timeout=300).stdout
    cuda_tests = {line.split("::", 1)[1] for line in collected.splitlines() if "::" in line}
    assert not ran[0] & ran[1] and ran[0] | ran[1] == cuda_tests and len(cuda_tests) >= 40
    report = json.loads(report.read_text())
    stages = [(s["stage"], s["exit"]) for s in report["stages"]]
    assert sorted(stages[:2]) == [("cuda tests: VAT", 0), ("cuda tests: the others", 0)], done.stdout
    assert stages[2:] == [("step speed", 0), ("packing", 0)], done.stdout
    tests = report["tests"]
    assert tests["skipped"] >= 12 and tests["passed"] == tests["failed"] == tests["errors"] == 0  # no GPU: all skip
    rows = report["packing"]["rows"]
    assert [(r["recipe"], r["n"]) for r in rows] == [("vat_latent", 1), ("vat_latent", 2)]
    assert all(r["steps_per_s"] > 0 and r["peak_rss_bytes"] > 0 for r in rows), rows
    speed = report["speed"]["rows"]
    assert [r["config"] for r in speed] == list(report["configs"])
    assert all(r.get("finite") and r["step_s"] > 0 for r in speed), speed
    assert report["decisions"]["cuda_default_config"] is None  # nothing passed a CUDA test
    assert report["decisions"]["best_trials_per_gpu"] in (1, 2)
    text = table.read_text()
    assert "| vat_latent | 2 | False |" in text and "| vat_latent | compile-reduce-overhead |" in text


def test_no_test_starts_after_its_stage_deadline_and_each_outcome_is_logged_as_it_ends(tmp_path):
    """gpu_check.sh's SIGINT cannot end a test inside `train` (it takes it as its own Ctrl-C, after the current step;
    pytest went on into the SIGKILL and wrote no JUnit XML): no test starts after the stage's deadline, and each
    outcome is a line of SEDAUG_TESTS_LOG as the test ends (tests/conftest.py)."""
    log = tmp_path / "t.jsonl"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                           "stage_cut or best_packing or refuses_an_unknown"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "SEDAUG_TESTS_LOG": str(log)})
    assert done.returncode == 0, done.stdout
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        {"name": name, "outcome": "passed", "message": ""} for name in (
            "test_a_stage_cut_at_its_time_limit_is_in_the_report",
            "test_the_check_refuses_an_unknown_stage_or_limits_at_once[args0-error: --stages: unknown stage sped "
            "(usage: ]",
            "test_the_check_refuses_an_unknown_stage_or_limits_at_once[args1-error: --limits 240,90: expected three "
            "numbers of seconds, tests,speed,packing (usage: ]",
            "test_the_best_packing_is_the_largest_mean_gain_over_the_recipes")]
    log.unlink()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                           "stage_cut or best_packing"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SEDAUG_TESTS_LOG": str(log), "SEDAUG_TESTS_DEADLINE": "1"})
    assert "Interrupted: SEDAUG_TESTS_DEADLINE passed" in done.stdout, done.stdout
    assert [json.loads(line) for line in log.read_text().splitlines()] == [  # the first skipped, the second not begun
        {"name": "test_a_stage_cut_at_its_time_limit_is_in_the_report", "outcome": "skipped",
         "message": "Skipped: not run: SEDAUG_TESTS_DEADLINE passed (its stage's time limit)"}]


CONFIGS = {"eager": {"bf16": False, "compile": None}, "bf16": {"bf16": True, "compile": None},
           "compile": {"bf16": False, "compile": "default"}}
VAT = gpu_report.VAT_TEST


def case(outcome: str) -> dict:
    return {"outcome": outcome, "message": ""}


def test_a_stage_cut_at_its_time_limit_is_in_the_report(tmp_path):
    (tmp_path / "stages.tsv").write_text("cuda tests: VAT\t0\t95\npacking\t124\t175\n")
    gpu_report.main(["--tests", str(tmp_path / "none.jsonl"), "--speed", str(tmp_path / "s.json"), "--packing",
                     str(tmp_path / "p.json"), "--stages", str(tmp_path / "stages.tsv"), "--json",
                     str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["stages"] == [{"stage": "cuda tests: VAT", "exit": 0, "seconds": 95},
                                {"stage": "packing", "exit": 124, "seconds": 175}]
    assert "- packing: exit 124 (its time limit), 175 s" in (tmp_path / "r.md").read_text()


def test_a_test_cut_inside_train_and_half_written_results_count_as_not_run(tmp_path):
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"name": name, "outcome": outcome, "message": message})
                                                for name, outcome, message in (
        ("a", "passed", ""),
        ("b", "failed", "sedaug.errors.Interrupted: interrupted again: stopped at once"),
        ("c", "failed", "AssertionError: cos 0.2"))) + '\n{"name": "d", "outc')  # killed mid-write
    tests = gpu_report.read_tests([tmp_path / "t.jsonl", tmp_path / "absent.jsonl"])
    assert {name: c["outcome"] for name, c in tests["cases"].items()} == {"a": "passed", "b": "skipped", "c": "failed"}
    assert tests["missing"] == ["absent.jsonl"]
    (tmp_path / "p.json").write_text('{"rows": [')
    report = gpu_report.main(["--tests", str(tmp_path / "t.jsonl"), "--speed", str(tmp_path / "s.json"), "--packing",
                              str(tmp_path / "p.json"), "--json", str(tmp_path / "r.json"), "--markdown",
                              str(tmp_path / "r.md")])
    assert report["packing"] == {"error": "p.json unreadable"} and report["speed"] == {"error": "s.json missing"}
    assert report["machine"]["gpu"] is None  # this machine's, without speed.json
    h100 = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130", "cuda": "13.0", "device": "cuda"}
    (tmp_path / "s.json").write_text(json.dumps({"machine": h100, "rows": []}))
    report = gpu_report.main(["--tests", str(tmp_path / "t.jsonl"), "--speed", str(tmp_path / "s.json"), "--packing",
                              str(tmp_path / "p.json"), "--json", str(tmp_path / "r.json"), "--markdown",
                              str(tmp_path / "r.md")])
    assert report["machine"] == {**h100, "source": "speed.json"}  # made again here from a device call's results
    assert (tmp_path / "r.md").read_text().startswith("# GPU check: NVIDIA H100 80GB HBM3")
    assert report["decisions"]["best_trials_per_gpu"] is None


def test_a_second_device_call_finishes_what_the_first_ones_limits_cut(tmp_path):
    """`gpu_check.sh --stages speed,packing` in a second call: the report merges both calls' results."""
    first, second = tmp_path / "first", tmp_path / "second"
    for call in (first, second):
        call.mkdir()
    for call, outcomes in ((first, {"a": "passed", "b": "skipped"}), (second, {"a": "skipped", "b": "passed"})):
        (call / "t.jsonl").write_text("".join(json.dumps({"name": name, "outcome": outcome, "message": ""}) + "\n"
                                              for name, outcome in outcomes.items()))
    row = {"finite": True, "step_s": 0.1, "clips_per_s": 240, "first_steps_s": 1.0, "peak_memory_bytes": None}
    (first / "s.json").write_text(json.dumps({"rows": [{"family": "baseline", "config": "eager", **row}],
                                              "not_measured": [{"family": "vat_latent", "config": "eager"}]}))
    (second / "s.json").write_text(json.dumps({"rows": [{"family": "vat_latent", "config": "eager", **row}],
                                               "not_measured": []}))
    trial = {"trials_per_hour": 1.0, "gpu_utilisation": None, "peak_gpu_memory_bytes": None, "peak_rss_bytes": None}
    packed = [{"recipe": "baseline", "n": n, "mps": False, "steps_per_s": rate, **trial}
              for n, rate in ((1, 10), (2, 18))]
    (first / "p.json").write_text(json.dumps({"rows": packed, "not_measured": [{"recipe": "baseline", "n": 4,
                                                                                 "mps": False}]}))
    (second / "p.json").write_text(json.dumps({"rows": [{"recipe": "baseline", "n": 4, "mps": False,
                                                         "steps_per_s": 30, **trial},
                                                        {"recipe": "baseline", "n": 2, "mps": False, "error": "OOM"}]}))
    (first / "stages.tsv").write_text("step speed\t124\t90\n")
    (second / "stages.tsv").write_text("step speed\t0\t40\n")
    report = gpu_report.main(["--tests", str(first / "t.jsonl"), str(second / "t.jsonl"), "--speed", str(first / "s.json"),
                              str(second / "s.json"), "--packing", str(first / "p.json"), str(second / "p.json"),
                              "--stages", str(first / "stages.tsv"), str(second / "stages.tsv"), "--json",
                              str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")])
    assert {name: c["outcome"] for name, c in report["tests"]["cases"].items()} == {"a": "passed", "b": "passed"}
    assert [(r["family"], r["config"]) for r in report["speed"]["rows"]] == [("baseline", "eager"),
                                                                              ("vat_latent", "eager")]
    assert report["speed"]["not_measured"] == [] and report["packing"]["not_measured"] == []
    assert report["speed_summary"]["eager"]["families"] == ["baseline", "vat_latent"]
    assert report["decisions"]["best_trials_per_gpu"] == 4
    assert [r.get("steps_per_s") for r in report["packing"]["rows"]] == [10, 18, 30]  # an error keeps a measurement
    assert [s["exit"] for s in report["stages"]] == [124, 0]


@pytest.mark.parametrize(("args", "error"), [
    (["--stages", "tests,sped"], "error: --stages: unknown stage sped (usage: "),
    (["--limits", "240,90"], "error: --limits 240,90: expected three numbers of seconds, tests,speed,packing (usage: "),
])
def test_the_check_refuses_an_unknown_stage_or_limits_at_once(args, error):
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith(error) and done.stderr.count("\n") == 1, done.stderr


RECIPES = ["none", "vat_latent"]


def test_a_configuration_passes_only_when_every_test_it_requires_did():
    bf16 = gpu_report.BF16_TEST
    tests = {"cases": {
        f"{VAT}[eager-input]": case("passed"), f"{VAT}[eager-latent]": case("passed"),
        f"{VAT}[bf16-input]": case("passed"), f"{VAT}[bf16-latent]": case("passed"),
        f"{bf16}[none]": case("passed"), f"{bf16}[vat_latent]": case("failed"),  # every recipe's bf16 step
        f"{VAT}[compile-input]": case("passed"), f"{VAT}[compile-latent]": case("skipped"),
    }}
    assert gpu_report.config_verdicts(tests, CONFIGS, RECIPES) == {
        "eager": "passed", "bf16": "failed", "compile": "not run (1 of 3 tests ran)"}
    del tests["cases"][f"{bf16}[vat_latent]"]  # the bf16 steps' pytest run cut short after the first recipe
    assert gpu_report.config_verdicts(tests, CONFIGS, RECIPES)["bf16"] == "not run (3 of 4 tests ran)"
    tests["cases"][f"{bf16}[vat_latent]"] = case("passed")
    assert gpu_report.config_verdicts(tests, CONFIGS, RECIPES)["bf16"] == "passed"
    tests["cases"][f"{VAT}[compile-latent]"] = case("passed")  # VAT at CNN blocks did not run: not proven
    assert gpu_report.config_verdicts(tests, CONFIGS, RECIPES)["compile"] == "not run (2 of 3 tests ran)"
    tests["cases"][f"{gpu_report.VAT_BLOCKS_TEST}[compile]"] = case("failed")
    assert gpu_report.config_verdicts(tests, CONFIGS, RECIPES)["compile"] == "failed"
    tests["cases"][f"{gpu_report.VAT_BLOCKS_TEST}[compile]"] = case("passed")
    assert gpu_report.config_verdicts(tests, CONFIGS, RECIPES)["compile"] == "passed"
    tests["cases"][f"{VAT}[compile-latent]"] = case("error")
    assert gpu_report.config_verdicts(tests, CONFIGS, RECIPES)["compile"] == "failed"
    assert gpu_report.config_verdicts({"cases": {}}, CONFIGS, RECIPES) == {
        "eager": "not run (0 of 2 tests ran)", "bf16": "not run (0 of 4 tests ran)",
        "compile": "not run (0 of 3 tests ran)"}


def test_the_report_requires_the_bf16_step_of_each_recipe_the_cuda_tests_run():
    from test_cuda import RECIPES as run

    assert gpu_report.recipe_names() == [p.stem for p in run] and len(run) == 24


def test_cuda_graphs_pass_only_with_a_short_run_through_train():
    graphs = {"graphs": {"bf16": False, "compile": "reduce-overhead"}}
    tests = {"cases": {f"{VAT}[graphs-input]": case("passed"), f"{VAT}[graphs-latent]": case("passed"),
                       f"{gpu_report.VAT_BLOCKS_TEST}[graphs]": case("passed")}}
    assert gpu_report.config_verdicts(tests, graphs, RECIPES) == {"graphs": "not run (3 of 4 tests ran)"}
    tests["cases"][gpu_report.GRAPHS_TEST] = case("failed")
    assert gpu_report.config_verdicts(tests, graphs, RECIPES) == {"graphs": "failed"}
    tests["cases"][gpu_report.GRAPHS_TEST] = case("passed")
    assert gpu_report.config_verdicts(tests, graphs, RECIPES) == {"graphs": "passed"}


def test_the_default_is_the_fastest_configuration_that_passed():
    speed = {"rows": [
        {"family": "baseline", "config": "eager", "step_s": 0.04, "finite": True},
        {"family": "vat_latent", "config": "eager", "step_s": 0.09, "finite": True},
        {"family": "baseline", "config": "bf16", "step_s": 0.01, "finite": True},  # fastest, but its tests failed
        {"family": "vat_latent", "config": "bf16", "step_s": 0.02, "finite": True},
        {"family": "baseline", "config": "compile", "step_s": 0.02, "finite": True},
        {"family": "vat_latent", "config": "compile", "step_s": 0.045, "finite": True},
    ]}
    summary = gpu_report.speed_summary(speed)
    assert summary["compile"]["speedup_vs_eager"] == pytest.approx(2.0)  # sqrt(0.04 * 0.09) / sqrt(0.02 * 0.045)
    verdicts = {"eager": "passed", "bf16": "failed", "compile": "passed"}
    # The packing decided from its rows (a stage cut before packing.json's own decision was written keeps them).
    packed = {"rows": [{"recipe": "baseline", "n": n, "mps": False, "steps_per_s": rate}
                       for n, rate in ((1, 10), (2, 18), (4, 30))] + [{"recipe": "vat_latent", "n": 1, "error": "..."}]}
    decided = gpu_report.decide(verdicts, summary, speed, packed)
    assert decided["cuda_default_config"] == "compile" and decided["resources_gpus"] == 0.25
    assert decided["change"] == 'sedaug/device.py: CUDA_AUTO = CONFIGS["compile"]'
    assert decided["why"].startswith("the fastest configuration whose CUDA tests passed, over baseline, vat_latent ")
    assert decided["packing_recipes"] == ["baseline"]  # said beside the decision
    speed["rows"].append({"family": "none", "config": "compile", "error": "RuntimeError: ..."})
    assert gpu_report.decide(verdicts, summary, speed, {})["cuda_default_config"] == "eager"
    assert gpu_report.decide({}, summary, speed, {})["cuda_default_config"] is None


def test_the_best_packing_is_the_largest_mean_gain_over_the_recipes():
    rows = [{"recipe": r, "n": n, "mps": False, "steps_per_s": rate} for r, rates in
            {"baseline": {1: 10, 2: 18, 4: 30, 8: 29}, "vat_latent": {1: 5, 2: 9, 4: 13, 8: 14}}.items()
            for n, rate in rates.items()]
    # Gains 1.8/1.8, 3.0/2.6, 2.9/2.8: geometric means 1.8, 2.79, 2.85.
    assert packing.best_n(rows) == 8
    rows[-1]["steps_per_s"] = 12  # vat_latent at 8: gain 2.4, mean sqrt(2.9 * 2.4) = 2.64 < 2.79
    assert packing.best_n(rows) == 4
    assert packing.best_n(rows, mps=True) is None  # no MPS row
    # Under MPS, counted against N = 1 without it; an N measured for one recipe only does not count.
    rows += [{"recipe": "baseline", "n": 2, "mps": True, "steps_per_s": 19},
             {"recipe": "vat_latent", "n": 2, "mps": True, "steps_per_s": 10},
             {"recipe": "baseline", "n": 4, "mps": True, "steps_per_s": 40}]
    assert packing.best_n(rows, mps=True) == 2
    assert packing.best_n([{"recipe": "baseline", "n": 2, "mps": False, "steps_per_s": 3}]) is None  # no N = 1


gpu_wheels = load(REPO / "benchmarks" / "gpu_wheels.py")


def test_the_gpu_machine_gets_every_carried_package_at_a_locked_version_sedaug_accepts():
    """The wheels carried to a lent GPU machine: each of CARRY at requirements.lock's version for CPython 3.12, and
    where pyproject.toml bounds a package (numpy < 2.4, pandas < 3: the image's own break psds_eval), within it."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = gpu_wheels.pins()
    assert sorted(pins) == sorted(gpu_wheels.CARRY)
    declared = {canonicalize_name(Requirement(r).name): Requirement(r) for r in
                tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name in ("numpy", "pandas", "pydantic", "psds-eval", "sed-eval", "sed-scores-eval", "soundfile", "typer"):
        assert declared[name].specifier.contains(pins[name]), (name, pins[name], str(declared[name]))
    assert pins["numpy"] == "2.3.5"  # the lock's line for Python >= 3.11, not 3.10's 2.2.6


def test_the_device_script_without_wheels_stops_at_once_in_one_line(tmp_path):
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    (repo / "benchmarks" / "gpu_device.sh").write_bytes((REPO / "benchmarks" / "gpu_device.sh").read_bytes())
    done = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_device.sh")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: no wheels in .whl/: run python -m benchmarks.gpu_wheels here first, "
                                   "and carry .whl")
