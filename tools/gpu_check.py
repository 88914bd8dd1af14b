"""GPU acceptance check: proves the CUDA grading path on a real GPU in a few minutes.

    make gpu-check                      # or: PYTHONPATH=.:_build/gpu-site python tools/gpu_check.py

It uses the machine's own PyTorch and builds no environment. Stages, in order:

1. hardware: CUDA is available (fails loudly otherwise), device name, driver;
2. the gpu-marked unit tests of tests/;
3. per assignment: the engine grades the solution, the release and three wrong
   variants with --device cuda and with --device cpu, and the in-process back
   end grades the solution on the GPU;
4. agreement: scores and outcomes agree across devices and back ends, the
   solution scores full marks, and CUDA cases really ran.

One line per check (OK/BAD and why), the wall time of each stage and the
seconds per submission; the exit status is 1 on any BAD, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS: list[tuple[bool, str]] = []


def check(ok: bool, what: str, why: str = "") -> bool:
    RESULTS.append((ok, what))
    print(f"{'OK ' if ok else 'BAD'} {what}" + (f": {why}" if why and not ok else ""), flush=True)
    return ok


def run(cmd, timeout=900, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def hardware() -> int:
    """Number of GPUs, asked in a child process so that this one never initialises CUDA."""
    probe = run([sys.executable, "-c", "import json, torch; print(json.dumps({'cuda': torch.cuda.is_available(), "
                 "'n': torch.cuda.device_count(), 'torch': torch.__version__, 'cuda_version': torch.version.cuda, "
                 "'name': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))"], timeout=300)
    try:
        info = json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        check(False, "PyTorch imports", probe.stderr[-500:])
        return 0
    if not check(bool(info["cuda"]), "CUDA is available", f"torch {info['torch']} sees no GPU"):
        return 0
    smi = run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], timeout=60) \
        if any(Path(p, "nvidia-smi").exists() for p in os.environ.get("PATH", "").split(":")) else None
    driver = smi.stdout.strip().splitlines()[0] if smi and smi.returncode == 0 and smi.stdout.strip() else "unknown"
    check(True, f"{info['n']} GPU(s): {info['name']}, torch {info['torch']} (CUDA {info['cuda_version']}), "
                f"driver {driver}")
    return int(info["n"])


def unit_tests() -> None:
    files = ["tests/test_utils.py", "tests/test_costs.py", "tests/test_gated_numpy.py", "tests/test_lm.py",
             "tests/test_seq2seq.py"]
    proc = run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs", *files],
               timeout=600)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    passed = "passed" in tail and proc.returncode == 0
    check(passed and " skipped" not in tail.replace("deselected", ""), f"gpu-marked unit tests: {tail}",
          proc.stdout[-1500:] + proc.stderr[-500:])


def notebooks(assignment: str, out: Path, n_variants: int) -> list[Path]:
    import nbformat

    from autograder import notebook as nbmod
    from autograder.course import Course
    from tests.variants import load_variants, make_variant_notebook

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, nb in [("solution", nbmod.read_notebook(Course().source(assignment))),
                     ("release", nbmod.read_notebook(Course().release(assignment)))]:
        nbformat.write(nb, out / f"{name}.ipynb")
        paths.append(out / f"{name}.ipynb")
    try:
        variants = load_variants(assignment)
    except ModuleNotFoundError:
        variants = {}
    wrong = [(k, v) for k, v in variants.items() if v["breaks"]][:n_variants]
    for name, spec in wrong:
        nbformat.write(make_variant_notebook(assignment, spec), out / f"variant-{name}.ipynb")
        paths.append(out / f"variant-{name}.ipynb")
    return paths


def engine(assignment: str, nbs: list[Path], device: str, out: Path, workers: int) -> dict:
    proc = run([sys.executable, "-m", "autograder", "files", assignment, *map(str, nbs), "--json-dir", str(out),
                "--device", device, "--workers", str(workers), "--force", "--no-progress"], timeout=900)
    reports = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    check(proc.returncode == 0 and len(reports) == len(nbs), f"{assignment}: engine on {device} graded "
          f"{len(reports)}/{len(nbs)}", proc.stderr[-1500:])
    return reports


def agree(assignment: str, cuda: dict, cpu: dict, inproc: dict | None) -> None:
    sol = cuda.get("solution", {})
    check(sol.get("status") == "graded" and sol.get("scores") == sol.get("max_scores"),
          f"{assignment}: the solution scores full marks on CUDA", str(sol.get("tests", sol.get("error")))[:800])
    ran = [t for t in sol.get("tests", []) if "[cuda]" in t["name"]]
    check(bool(ran) and all(t["outcome"] == "passed" for t in ran),
          f"{assignment}: {len(ran)} CUDA case(s) ran and passed", str(ran)[:800])
    for name in sorted(set(cuda) & set(cpu)):
        a, b = cuda[name], cpu[name]
        same = a.get("scores") == b.get("scores")
        common = {t["name"]: t["outcome"] for t in b.get("tests", [])}
        outcomes = all(common.get(t["name"], t["outcome"]) == t["outcome"] for t in a.get("tests", []))
        check(same and outcomes, f"{assignment}/{name}: CUDA and CPU agree",
              f"cuda {a.get('scores')} cpu {b.get('scores')}")
    if inproc is not None:
        check(inproc.get("scores") == sol.get("scores") and
              {t["name"]: t["outcome"] for t in inproc.get("tests", [])} ==
              {t["name"]: t["outcome"] for t in sol.get("tests", [])},
              f"{assignment}: in-process and engine agree on the solution (CUDA)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assignments", nargs="*", default=None)
    ap.add_argument("--variants", type=int, default=3)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    ngpu = hardware()
    if ngpu == 0:
        print("no GPU: nothing was checked (run this on a machine with a CUDA GPU)", file=sys.stderr)
        return 2
    t = time.perf_counter()
    unit_tests()
    print(f"stage unit tests: {time.perf_counter() - t:.1f} s", flush=True)
    from autograder.course import Course

    cpu_workers = max(1, min(8, len(os.sched_getaffinity(0))))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for assignment in a.assignments or Course().assignments():
            t = time.perf_counter()
            nbs = notebooks(assignment, Path(tmp) / assignment / "nb", a.variants)
            cuda = engine(assignment, nbs, "cuda", Path(tmp) / assignment / "cuda", max(1, min(ngpu, len(nbs))))
            t_cuda = time.perf_counter() - t
            cpu = engine(assignment, nbs, "cpu", Path(tmp) / assignment / "cpu", cpu_workers)
            inproc_out = Path(tmp) / assignment / "inprocess.json"
            proc = run([sys.executable, "-m", "autograder.grading", assignment, str(nbs[0]), "--json",
                        str(inproc_out)], timeout=600)
            inproc = json.loads(inproc_out.read_text()) if proc.returncode == 0 and inproc_out.exists() else None
            check(inproc is not None, f"{assignment}: in-process back end on the GPU", proc.stderr[-800:])
            agree(assignment, cuda, cpu, inproc)
            spent = time.perf_counter() - t
            print(f"stage {assignment}: {spent:.1f} s ({t_cuda / max(1, len(nbs)):.1f} s per submission on CUDA)",
                  flush=True)
    bad = [w for ok, w in RESULTS if not ok]
    print(f"{len(RESULTS) - len(bad)} OK, {len(bad)} BAD in {time.perf_counter() - t0:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
