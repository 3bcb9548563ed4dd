"""benchmarks/gpu_check.sh's report: the CUDA tests' outcomes (tests/conftest.py's test logs), the step configurations' speed
(gpu_speed.py) and the packing benchmark (packing.py) in one JSON and one markdown file, with what they decide:
CUDA's default step configuration (the fastest whose CUDA tests passed) and sweeps/table1.yaml's `resources.gpus`
(1 / the best number of trials per GPU).

    python -m benchmarks.gpu_report --tests T.jsonl... --speed S.json... --packing P.json... [--stages stages.tsv] \
        --json R.json --markdown R.md             # several files each: the results of several device calls
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VAT_TEST = "test_vat_direction_on_cuda_is_the_fixed_mask_curvature"
BF16_TEST = "test_a_bf16_step_is_finite_and_close_to_the_float32_step"
VAT_BLOCKS_TEST = "test_compiled_vat_at_cnn_blocks_on_cuda_is_the_fixed_mask_curvature"  # [config], compiled only
GRAPHS_TEST = "test_a_short_run_with_cuda_graphs_trains_and_validates"  # required of CUDA graphs (reduce-overhead)


def read_tests(paths: list[Path]) -> dict:
    """Counts and each test's outcome ("passed", "failed", "error", "skipped") with its message, from the test logs
    tests/conftest.py writes as each test ends (SEDAUG_TESTS_LOG: a line per test, so a pytest killed at its limit
    keeps what finished), of one device call or more: a later outcome replaces an earlier one, unless skipped. A
    missing log is named under "missing"; a test ended by its stage's SIGINT inside `train` counts as skipped."""
    cases, missing = {}, []
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            missing.append(path.name)
            continue
        for line in lines:
            try:
                case = json.loads(line)
            except ValueError:  # the line being written when its pytest was killed
                continue
            if any(cut in case["message"] for cut in ("sedaug.errors.Interrupted", "KeyboardInterrupt")):
                case["outcome"] = "skipped"  # cut by its stage's SIGINT, not failed
            if case["outcome"] != "skipped" or case["name"] not in cases:
                cases[case["name"]] = {"outcome": case["outcome"], "message": case["message"]}
    counts = {key: sum(c["outcome"] == outcome for c in cases.values())
              for key, outcome in (("passed", "passed"), ("failed", "failed"), ("errors", "error"), ("skipped", "skipped"))}
    return {**counts, "missing": missing, "cases": cases}


def read_stages(paths: list[Path]) -> list[dict]:
    """gpu_check.sh's stages: name, exit status (124: cut at its time limit) and seconds, one tab-separated line each
    (of each call)."""
    rows = [line.split("\t") for path in paths if path.exists() for line in path.read_text().splitlines()
            if line.strip()]
    return [{"stage": name, "exit": int(status), "seconds": int(seconds)} for name, status, seconds in rows]


SPEED_KEY, PACKING_KEY = ("family", "config"), ("recipe", "n", "mps")  # what one row measures


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError:
        return {"error": f"{path.name} missing"}
    except ValueError:  # its writer killed mid-write
        return {"error": f"{path.name} unreadable"}


def merged(paths: list[Path], key: tuple[str, ...]) -> dict:
    """One stage's results over device calls (a second call finishing what a first one's limits cut): the first
    readable file's fields, with every file's rows, a later one's replacing an earlier one's of the same `key`
    (an error never replaces a measurement), and `not_measured` only what no file measured."""
    results = [load(path) for path in paths]
    readable = [r for r in results if "error" not in r]
    if not readable:
        return {"error": "; ".join(r["error"] for r in results)}
    rows: dict[tuple, dict] = {}
    for result in readable:
        for row in result.get("rows", []):
            measured = rows.get(k := tuple(row.get(name) for name in key))
            if "error" not in row or measured is None or "error" in measured:  # a later error keeps a measurement
                rows[k] = row
    out = {**readable[0], "rows": list(rows.values())}
    if len(paths) > 1:
        out["not_measured"] = [m for r in readable for m in r.get("not_measured", [])
                               if tuple(m.get(k) for k in key) not in rows]
        out["merged_from"] = [path.name if "error" not in r else f"{path.name} ({r['error']})"
                              for path, r in zip(paths, results, strict=True)]
    return out


def required_tests(name: str, setting: dict, recipes: list[str]) -> list[str]:
    """The CUDA tests configuration `name` must pass to become the default: VAT's direction at input and latent; a
    compiled one also VAT at CNN blocks; a bf16 one every recipe's bf16 step; CUDA graphs also a short run through
    `train`."""
    required = [f"{VAT_TEST}[{name}-input]", f"{VAT_TEST}[{name}-latent]"]
    if setting["compile"]:
        required.append(f"{VAT_BLOCKS_TEST}[{name}]")
    if setting["bf16"]:
        required += [f"{BF16_TEST}[{recipe}]" for recipe in recipes]
    if setting["compile"] == "reduce-overhead":
        required.append(GRAPHS_TEST)
    return required


def recipe_names() -> list[str]:
    """The recipes the bf16 step test runs (tests/test_cuda.py's RECIPES), by name."""
    recipes = REPO / "recipes"
    return [p.stem for p in (*sorted(recipes.glob("*.yaml")), *sorted(recipes.glob("*/*.yaml")))]


def config_verdicts(tests: dict, configs: dict, recipes: list[str]) -> dict[str, str]:
    """Per step configuration: "passed" when every test it requires (`required_tests`) passed; "failed" when one
    failed or erred; else "not run (k of n tests)", skipped or cut by a time limit: none may then be the default."""
    verdicts = {}
    for name, setting in configs.items():
        required = required_tests(name, setting, recipes)
        outcomes = [tests["cases"].get(test, {}).get("outcome", "not run") for test in required]
        ran = sum(outcome != "not run" and outcome != "skipped" for outcome in outcomes)
        verdicts[name] = ("failed" if {"failed", "error"} & set(outcomes) else
                          "passed" if set(outcomes) == {"passed"} else f"not run ({ran} of {len(required)} tests ran)")
    return verdicts


def speed_summary(speed: dict) -> dict[str, dict]:
    """Per configuration: the geometric mean of its step time over the families measured in every configuration
    that ran without error, relative to `eager`."""
    rows = [r for r in speed.get("rows", []) if "step_s" in r]
    configs = sorted({r["config"] for r in rows})
    families = [f for f in {r["family"] for r in rows} if all(
        any(r["family"] == f and r["config"] == c for r in rows) for c in configs)]
    out = {}
    for config in configs:
        times = [r["step_s"] for r in rows if r["config"] == config and r["family"] in families]
        if times:
            out[config] = {"geomean_step_s": math.exp(sum(map(math.log, times)) / len(times)),
                           "families": sorted(families)}
    if "eager" in out:
        for v in out.values():
            v["speedup_vs_eager"] = out["eager"]["geomean_step_s"] / v["geomean_step_s"]
    return out


def decide(verdicts: dict, summary: dict, speed: dict, packing: dict) -> dict:
    """CUDA's default step configuration and the trials per GPU, each with what it was decided on (a stage cut at
    its time limit decides on what it measured, and says so)."""
    from benchmarks.packing import best_n

    failed = {r["config"] for r in speed.get("rows", []) if "error" in r or not r.get("finite", True)}
    eligible = [c for c in summary if verdicts.get(c) == "passed" and c not in failed]
    best = min(eligible, key=lambda c: summary[c]["geomean_step_s"]) if eligible else None
    families = sorted(next(iter(summary.values()), {}).get("families", []))
    rows = packing.get("rows", [])
    n = best_n(rows)
    return {"cuda_default_config": best,
            "change": f'sedaug/device.py: CUDA_AUTO = CONFIGS["{best}"]' if best else None,
            "why": f"the fastest configuration whose CUDA tests passed, over {', '.join(families)} (the families "
                   "every configuration ran without an error)" if best else
                   "no configuration passed its CUDA tests and ran without an error: keep the conservative default",
            "best_trials_per_gpu": n, "resources_gpus": round(1 / n, 4) if n else None,
            "packing_recipes": sorted({r["recipe"] for r in rows if "steps_per_s" in r and r["n"] == 1}),
            "best_trials_per_gpu_mps": best_n(rows, mps=True)}


def machine() -> dict:
    """This machine: torch, CUDA, the GPU's name and driver (nvidia-smi), or the CPU's platform."""
    import platform
    import subprocess

    import torch

    info = {"platform": platform.platform(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "device": "cpu"}
    if info["gpu"]:
        info["device"] = "cuda"
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            info["driver_and_memory"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (FileNotFoundError, subprocess.TimeoutExpired, IndexError):
            info["driver_and_memory"] = None
    return info


def measured_on(speed: dict) -> dict:
    """The GPU the figures come from: speed.json's, where it ran on one (a report made again elsewhere from a cut
    call's results names that GPU, not this machine), else this machine."""
    recorded = speed.get("machine") or {}
    return {**recorded, "source": "speed.json"} if recorded.get("gpu") else machine()


def _gib(x) -> str:
    return "" if x is None else f"{x / 2**30:.2f}"


def markdown(report: dict) -> str:
    m, d, t = report["machine"], report["decisions"], report["tests"]
    lines = [f"# GPU check: {m.get('gpu') or m.get('device')} ({report['date']})", "",
             f"torch {m.get('torch')}, CUDA {m.get('cuda')}; dry run: {report['dry_run']}", "",
             "## Decisions", "",
             f"- CUDA default step configuration: **{d['cuda_default_config']}** ({d['why']})"
             + (f": `{d['change']}`" if d.get("change") else ""),
             f"- trials per GPU: **{d['best_trials_per_gpu']}** -> sweeps/table1.yaml `resources.gpus: "
             f"{d['resources_gpus']}` (measured for {', '.join(d['packing_recipes']) or 'no recipe'}); with MPS: "
             f"{d['best_trials_per_gpu_mps']}", "",
             "## Stages", "",
             *(f"- {s['stage']}: exit {s['exit']}{' (its time limit)' if s['exit'] in (124, 137) else ''}, "
               f"{s['seconds']} s" for s in report.get("stages", [])), "",
             "## CUDA tests (pytest -m cuda)", ""]
    if t["missing"]:
        lines.append(f"- no results in {', '.join(t['missing'])} (its stage not run, or its pytest killed)")
    lines.append(f"- passed {t.get('passed', 0)}, failed {t.get('failed', 0)}, errors {t.get('errors', 0)}, "
                 f"skipped {t.get('skipped', 0)}")
    lines += [f"- {name}: {c['outcome']}: {c['message']}" for name, c in t["cases"].items()
              if c["outcome"] in ("failed", "error")]
    lines += ["", "| configuration | the CUDA tests it requires | step time vs eager (geometric mean) |", "|---|---|---|"]
    for name, verdict in report["config_verdicts"].items():
        speedup = report["speed_summary"].get(name, {}).get("speedup_vs_eager")
        lines.append(f"| {name} | {verdict} | {'' if speedup is None else f'{speedup:.2f}x'} |")
    batch = next((r["batch_size"] for r in report["speed"].get("rows", []) if "batch_size" in r), None)
    lines += ["", f"## Whole training step per family (batch {batch}, store resident on the device)", "",
              "| family | configuration | ms/step | clips/s | first steps (s) | peak GiB | note |", "|---|---|---|---|---|---|---|"]
    for r in report["speed"].get("rows", []):
        if "error" in r:
            lines.append(f"| {r['family']} | {r['config']} | | | | | {r['error'][:120]} |")
        else:
            lines.append(f"| {r['family']} | {r['config']} | {1000 * r['step_s']:.1f} | {r['clips_per_s']:.0f} | "
                         f"{r['first_steps_s']:.1f} | {_gib(r['peak_memory_bytes'])} | {'' if r['finite'] else 'NOT FINITE'} |")
    lines += [f"- not measured (time budget): {r['family']} {r['config']}" for r in report["speed"].get("not_measured", [])]
    p = report["packing"]
    lines += ["", f"## Trials per GPU (MPS: {p.get('mps')})", "",
              "| recipe | N | MPS | steps/s | trials/hour | gain vs N=1 | GPU util % | peak GPU GiB/trial | peak RSS GiB/trial | note |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    rows = p.get("rows", [])
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['n']} | {r['mps']} | | | | | | | {r['error'][-120:]!r} |")
            continue
        one = next((o for o in rows if o["recipe"] == r["recipe"] and o["n"] == 1 and not o["mps"] and "steps_per_s" in o), None)
        gain = f"{r['steps_per_s'] / one['steps_per_s']:.2f}x" if one else ""
        util = "" if r["gpu_utilisation"] is None else f"{r['gpu_utilisation']:.0f}"
        lines.append(f"| {r['recipe']} | {r['n']} | {r['mps']} | {r['steps_per_s']:.1f} | {r['trials_per_hour']:.2f} | {gain} | "
                     f"{util} | {_gib(r['peak_gpu_memory_bytes'])} | {_gib(r['peak_rss_bytes'])} | |")
    lines += [f"- not measured (time budget): {r['recipe']} N={r['n']} MPS={r['mps']}" for r in p.get("not_measured", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_report", description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=Path, nargs="+", required=True, help="the test logs (SEDAUG_TESTS_LOG)")
    parser.add_argument("--speed", type=Path, nargs="+", required=True, help="gpu_speed.py's JSON, of one call or more")
    parser.add_argument("--packing", type=Path, nargs="+", required=True, help="packing.py's JSON, of one call or more")
    parser.add_argument("--stages", type=Path, nargs="*", default=[], help="gpu_check.sh's stage exit statuses")
    parser.add_argument("--date", default="")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, required=True)
    args = parser.parse_args(argv)
    from sedaug.device import CONFIGS

    tests, speed, packing = read_tests(args.tests), merged(args.speed, SPEED_KEY), merged(args.packing, PACKING_KEY)
    configs = {name: {**asdict(setting), "tf32": setting.tf32, "bf16": setting.bf16} for name, setting in CONFIGS.items()}
    verdicts = config_verdicts(tests, configs, recipe_names())
    summary = speed_summary(speed)
    report = {"date": args.date, "machine": measured_on(speed), "dry_run": speed.get("dry_run"), "stages": read_stages(args.stages),
              "configs": configs, "tests": tests, "config_verdicts": verdicts, "speed_summary": summary,
              "speed": speed, "packing": packing, "decisions": decide(verdicts, summary, speed, packing)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    args.markdown.write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
