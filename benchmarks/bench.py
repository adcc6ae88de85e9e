"""Training speed of the scripts: img/s eager, compiled and compiled + bf16, peak memory, compile
time, and the share of step time spent outside the models. Writes a Markdown table for the README.

    python -m benchmarks.bench [--scripts dcgan,wgan_gp,...] [--device cuda|cpu] [--steps N] [--out benchmarks/speed.md]

Each (script, mode) runs in a fresh process, in-process there (the script's own main()), for
--warmup steps then --steps timed steps, with sample grids, checkpoints and FID only at the end
(after the last timed step) or off. img/s is the script's own img_per_s from metrics.jsonl, combined
over the timed log intervals; warm-up (and so torch.compile) falls before the first log, and peak
memory is reset there. The plain loop runs twice: as the tutorial wrote it (a DataLoader decoding
JPEGs) and over decoded tensors (--decoded), the fair peer of the compiled + bf16 scripts.
Data: by default small synthetic sets written in the real on-disk layouts (CelebA JPEGs, MNIST idx
files) to a temporary folder; with --data-dir, the real datasets there. Either way each script's
decoded cache is built before any timing. A script entry may name its own modes: dcgan:eager+amp.
"""
import argparse
import datetime
import importlib
import json
import math
import os
import platform
import shlex
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("minimal_gan", "dcgan", "cgan", "lsgan", "wgan", "wgan_gp", "began", "progan", "sagan", "stylegan_lite")
BASELINE = "plain_dcgan"  # benchmarks/plain_dcgan.py: the tutorial loop, eager float32 only
MODES = {"eager": ["--no-compile", "--amp", "off"],
         "compiled": ["--compile", "--amp", "off"],
         "amp": ["--compile", "--amp", "bf16"]}
BASELINE_MODES = {"eager": [], "decoded": ["--decoded"]}  # its DataLoader over JPEGs, or the decoded tensor on the device
MODE_NAMES = {"eager": "eager fp32", "compiled": "compiled fp32", "amp": "compiled + bf16", "decoded": "eager fp32"}
GPU_SPEEDUP = 3.0  # required on a GPU: compiled + bf16 dcgan.py vs the plain loop over decoded tensors


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scripts", default=",".join(SCRIPTS + (BASELINE,)),
                   help=f"comma-separated scripts ({', '.join(SCRIPTS)}, {BASELINE}); 'name:eager+amp' picks modes for one "
                        f"({BASELINE}: eager, its DataLoader, and decoded, over decoded tensors; both by default)")
    p.add_argument("--modes", default="eager,compiled,amp", help="modes for scripts that name none: eager, compiled, amp")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--steps", type=int, default=50, help="timed steps per run (rounded up to whole --warmup intervals)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before the first log (compilation happens here)")
    p.add_argument("--script-args", default="", help="extra flags for every script, e.g. '--image-size 32' (stated in the table)")
    p.add_argument("--data-dir", default=None, help="real datasets here (default: synthetic ones in a temporary folder)")
    p.add_argument("--images", type=int, default=2048, help="synthetic CelebA / MNIST images to write (at least enough "
                                                                "that the plain loop's timed steps fit in one epoch)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds one run may take before it is stopped")
    p.add_argument("--out", default="benchmarks/speed.md", help="Markdown file to write")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one script in this process
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        p.error("--steps and --warmup must be at least 1")
    return args


# ---------------------------------------------------------------------------------------------
# Worker: one script, one mode, in this process, with the data draws and log calls timed.

def worker(spec: dict):
    sys.path.insert(0, str(ROOT))
    import torch
    from common import data, run
    cuda = spec["device"] == "cuda"
    calls = {"data": [], "log": []}  # (start, host seconds, (start_event, end_event) or None)
    cpu_at_log = []  # process CPU seconds at each log call: a throughput that contention disturbs less
    clear_refs = Path("/proc/self/clear_refs")

    def reset_peak_memory():
        """At the first timed log: the peaks then cover the timed steps, not compilation and warm-up."""
        if cuda:
            torch.cuda.synchronize()  # the warm-up's queued kernels allocate before the reset, not after
            torch.cuda.reset_peak_memory_stats()
        elif clear_refs.exists():
            clear_refs.write_text("5")  # Linux: the peak RSS (VmHWM) starts again from the current RSS

    def timed(fn, kind):
        def wrapper(*a, **kw):
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else None
            if events:
                events[0].record()
            start = time.perf_counter()
            if kind == "log":
                cpu_at_log.append(time.process_time())
            out = fn(*a, **kw)
            if events:
                events[1].record()
            calls[kind].append((start, time.perf_counter() - start, events))
            if kind == "log" and len(calls["log"]) == spec["skip_logs"] + 1:
                reset_peak_memory()
            return out
        return wrapper

    data.ImageData.batch = timed(data.ImageData.batch, "data")
    data.ToyData.batch = timed(data.ToyData.batch, "data")
    run.Logger.log = timed(run.Logger.log, "log")
    if spec["script"] == BASELINE:  # the tutorial loop draws from a DataLoader: time the wait for each batch
        it = torch.utils.data.dataloader._BaseDataLoaderIter
        it.__next__ = timed(it.__next__, "data")
        module = importlib.import_module(f"benchmarks.{BASELINE}")
    else:
        module = importlib.import_module(spec["script"])
    sys.argv = [spec["script"] + ".py", *spec["argv"]]
    module.main()
    if cuda:
        torch.cuda.synchronize()

    logs = calls["log"]
    first, last = logs[spec["skip_logs"]][0], logs[-1][0]  # the timed window: the log at the end of warm-up to the last
    def seconds(kind):  # on CUDA a call costs its GPU time or its host time, whichever is longer
        return sum(max(h, e[0].elapsed_time(e[1]) / 1000 if e else 0.0) for s, h, e in calls[kind] if first <= s < last)
    if cuda:
        peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    else:  # VmHWM, reset at the first timed log (None without /proc: the parent falls back to the whole run's)
        status = Path("/proc/self/status")
        hwm = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM:")] if status.exists() else []
        peak, reserved = (int(hwm[0]) * 1024 if hwm and clear_refs.exists() else None), None
    report = {"window_s": last - first, "data_s": seconds("data"), "log_s": seconds("log"), "cpu_window_s": cpu_at_log[-1] - cpu_at_log[spec["skip_logs"]],
              "peak_bytes": peak, "reserved_bytes": reserved, "threads": torch.get_num_threads()}
    Path(spec["report"]).write_text(json.dumps(report))


# ---------------------------------------------------------------------------------------------
# Synthetic data in the real layouts, and the decoded caches, made before any timing.

def write_celeba(data_dir: Path, n: int):
    """img_align_celeba/000001.jpg...: 178x218 JPEGs, smooth colour fields (about real CelebA's file size)."""
    import numpy as np
    from PIL import Image
    folder = data_dir / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        small = Image.fromarray((rng.random((14, 12, 3)) * 255).astype(np.uint8))
        small.resize((178, 218), Image.BICUBIC).save(folder / f"{i:06d}.jpg", quality=90)


def write_mnist(data_dir: Path, n: int):
    """MNIST idx files under MNIST/raw, as torchvision reads them: random strokes, random labels."""
    import numpy as np
    raw = data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for split, count in (("train", n), ("t10k", 100)):
        images = ((rng.random((count, 28, 28)) > 0.8) * 255).astype(np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())


def script_args(script: str, extra: list):
    """The script's parsed arguments with the benchmark's extra flags (for its dataset, size and batch)."""
    sys.path.insert(0, str(ROOT))
    from common.cli import parse_args
    module = importlib.import_module(f"benchmarks.{BASELINE}" if script == BASELINE else script)
    return module, parse_args(module.Args, "", extra)[0]


# ---------------------------------------------------------------------------------------------
# Parent: run every (script, mode) in its own process and write the table.

def run_one(index, script, mode, plan, opts, data_dir, work):
    run_dir = work / f"{index:02d}-{script}-{mode}"  # a fresh folder per run: Logger.log appends to metrics.jsonl
    report = run_dir.with_suffix(".json")
    argv = ["--device", opts.device, "--steps", str(plan["total"]), "--log-every", str(plan["log_every"]),
            "--run-dir", str(run_dir), "--data-dir", str(data_dir)]
    if script != BASELINE:
        argv += [*MODES[mode], "--sample-every", "0", "--ckpt-every", "0", "--fid", "off", *plan["own"]]
    else:
        argv += BASELINE_MODES[mode]
    argv += plan["extra"]
    spec = {"script": script, "argv": argv, "device": opts.device, "report": str(report),
            "skip_logs": plan["warmup"] // plan["log_every"] - 1}
    load = os.getloadavg()[0]
    with open(run_dir.with_suffix(".log"), "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench", "--worker", json.dumps(spec)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "disabled"})
        deadline = time.time() + opts.timeout
        while True:  # wait4, not wait: it returns this child's own peak RSS
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {"script": script, "mode": mode, "load": load, "ok": False}
    if proc.returncode != 0 or not report.exists():
        tail = run_dir.with_suffix(".log").read_text()[-1500:]
        print(f"  {script} {mode}: FAILED (exit {proc.returncode})\n{tail}", file=sys.stderr)
        result["error"] = f"exit {proc.returncode}" + (" (timeout)" if time.time() > deadline else "")
        return result
    w = json.loads(report.read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    pairs = [(prev, r) for prev, r in zip(rows, rows[1:]) if prev["step"] >= plan["warmup"]]  # timed intervals only
    timed = [r for _, r in pairs]
    images = [(r["step"] - prev["step"]) * plan["per_step"] for prev, r in pairs]
    rate = sum(images) / sum(n / r["img_per_s"] for n, r in zip(images, timed))  # total images / total seconds
    first_log = next(r["elapsed_s"] for r in rows if r["step"] == plan["warmup"])
    result.update(ok=True, img_per_s=rate, first_log_s=first_log, img_per_cpu_s=sum(images) / w["cpu_window_s"],
                  beyond_steady_s=first_log - plan["warmup"] * plan["per_step"] / rate,
                  peak_mib=(w["peak_bytes"] if w["peak_bytes"] is not None else usage.ru_maxrss * 1024) / 2**20,
                  reserved_mib=w["reserved_bytes"] / 2**20 if w["reserved_bytes"] is not None else None,
                  data_share=w["data_s"] / w["window_s"], log_share=w["log_s"] / w["window_s"], threads=w["threads"],
                  final_res=timed[-1].get("res"))
    print(f"  {script} {mode}: {rate:.1f} img/s ({result['img_per_cpu_s']:.1f} per CPU-s), first log {first_log:.1f} s, peak {result['peak_mib']:.0f} MiB, "
          f"outside models {100 * (result['data_share'] + result['log_share']):.1f}% (load {load:.2f})", flush=True)
    return result


def plan_for(script, opts, extra):
    """Steps, log interval and per-script flags, from the script's own parsed arguments."""
    module, a = script_args(script, extra)
    warmup, own, per_step = opts.warmup, [], a.batch_size
    if script == "progan":  # one step per growing phase, so the timed steps run at the final resolution
        per_step = module.batch_at(a.image_size, a.batch_size)
        phases = 2 * (int(math.log2(a.image_size)) - 2)
        own = ["--kimg-per-phase", str(per_step / 1000)]
        warmup = opts.warmup * math.ceil((phases + 1) / opts.warmup)
    if script == "wgan":  # time the usual n_critic steps, not the 100-critic-step bursts of the first 25 (0.2% later)
        own = ["--no-critic-burst"]
    timed = opts.warmup * math.ceil(opts.steps / opts.warmup)
    return {"warmup": warmup, "log_every": opts.warmup, "total": warmup + timed, "timed": timed, "own": own,
            "extra": extra, "per_step": per_step, "args": a}


def setting(script, mode, a):
    if script == "minimal_gan":
        return f"{a.dataset}, batch {a.batch_size}"
    source = "celeba decoded tensor" if mode == "decoded" else "celeba ImageFolder"
    text = f"{getattr(a, 'dataset', source)} {a.image_size}x{a.image_size}, batch {a.batch_size}"
    text += f", width {a.width}" if hasattr(a, "width") else ""
    text += f", n_critic {a.n_critic}" if hasattr(a, "n_critic") else ""
    text += f", {a.workers} loader workers" if hasattr(a, "workers") and mode != "decoded" else ""
    return text


def device_name(device):
    import torch
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"{model}, {os.cpu_count()} cores"


def table(results, plans, opts, command, started, loads, data_note):
    import torch
    import torchvision
    mem = ("peak GPU memory over the timed steps, max_memory_allocated / max_memory_reserved" if opts.device == "cuda"
           else "peak RSS of the process over the timed steps")
    scripts_by_threads = {}  # minimal_gan sets one thread itself for 2-D data, so counts can differ per run
    for r in results:
        if r["ok"]:
            scripts_by_threads.setdefault(r["threads"], set()).add(r["script"])
    if len(scripts_by_threads) > 1:
        threads = "intra-op threads " + "; ".join(f"{n} in {', '.join(sorted(s))}" for n, s in sorted(scripts_by_threads.items()))
    else:
        threads = f"{next(iter(scripts_by_threads), torch.get_num_threads())} intra-op threads"
    lines = [f"### Training speed, {opts.device.upper()}", "",
             f"- Date: {started:%Y-%m-%d %H:%M} UTC; device: {device_name(opts.device)}; torch {torch.__version__}, "
             f"torchvision {torchvision.__version__}, Python {platform.python_version()}; "
             f"{threads} (PyTorch's default; OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', 'unset')}).",
             f"- Command: `{command}`",
             f"- Data: {data_note}; each script's decoded cache is built before timing, so draws come from memory.",
             f"- Each run: a fresh process; {opts.warmup} warm-up steps (ProGAN: one step per growing phase, so its "
             f"timed steps run at the final resolution), then {plans and next(iter(plans.values()))['timed']} timed steps; "
             "samples, checkpoint and FID only after the last timed step or off.",
             f"- 1-minute load average at start {loads[0]:.2f}, at end {loads[1]:.2f} on {os.cpu_count()} cores "
             "(the `load` column is at the start of each run)" + (": the machine was shared, so expect noise of "
             "tens of percent." if max(loads) > 0.5 * os.cpu_count() else "."), "",
             f"| Script | Setting | Mode | img/s | img per CPU-s | Peak MiB ({mem}) | To first log, s | Beyond steady, s | "
             "Outside models (data + log) | Load |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        name = f"{r['script']}.py"
        if r["script"] == BASELINE:
            name = "plain loop over decoded tensors (benchmarks/plain_dcgan.py --decoded)" if r["mode"] == "decoded" \
                else "plain loop (benchmarks/plain_dcgan.py)"
        cfg = setting(r["script"], r["mode"], plans[r["script"]]["args"])
        if not r["ok"]:
            lines.append(f"| {name} | {cfg} | {MODE_NAMES[r['mode']]} | failed: {r['error']} | | | | | | {r['load']:.2f} |")
            continue
        peak = f"{r['peak_mib']:.0f}" + (f" / {r['reserved_mib']:.0f}" if r["reserved_mib"] is not None else "")
        lines.append(f"| {name} | {cfg} | {MODE_NAMES[r['mode']]} | {r['img_per_s']:.1f} | {r['img_per_cpu_s']:.1f} | "
                     f"{peak} | "
                     f"{r['first_log_s']:.1f} | {r['beyond_steady_s']:.1f} | "
                     f"{100 * (r['data_share'] + r['log_share']):.1f}% ({100 * r['data_share']:.1f} + "
                     f"{100 * r['log_share']:.1f}) | {r['load']:.2f} |")
    lines += ["", "img/s: images per generator step over seconds, as each script logs `img_per_s` (WGAN and "
              "WGAN-GP draw n_critic real batches per generator step; WGAN runs with --no-critic-burst, so its 100-critic-step "
              "bursts (first 25 and every 500th step) are not timed; ProGAN at its final-resolution batch). "
              "img per CPU-s: the same images over the main process's CPU time in the window, steadier than img/s "
              "on a shared machine (DataLoader worker processes not included). "
              "Beyond steady: time to the first log minus the warm-up steps at the timed rate (mostly torch.compile). "
              "Peak memory: reset at the first timed log, so compilation and warm-up are not in it (on the CPU, where "
              "Linux's /proc is missing, the whole run's). "
              "Outside models: time in data.batch() (the plain loop: waiting on the DataLoader) and in Logger.log, over "
              "the timed window; on CUDA the longer of host and GPU time per call. "
              "stylegan_lite applies lazy R1 every 16 steps, so a window shorter than 16 steps over- or under-counts it.", ""]
    lines += comparison(results, opts)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text("\n".join(lines) + "\n")


def comparison(results, opts):
    runs, cpu = {}, {}
    for r in results:  # a script named twice (e.g. alternating with the baseline) counts as the mean of its runs
        if r["ok"]:
            runs.setdefault((r["script"], r["mode"]), []).append(r["img_per_s"])
            cpu.setdefault((r["script"], r["mode"]), []).append(r["img_per_cpu_s"])
    rate = {key: sum(v) / len(v) for key, v in runs.items()}
    per_cpu = {key: sum(v) / len(v) for key, v in cpu.items()}
    plain, peer = rate.get((BASELINE, "eager")), rate.get((BASELINE, "decoded"))
    out = ["Requirements:", ""]
    if opts.device == "cpu":
        if plain and ("dcgan", "eager") in rate:
            ratio = rate[("dcgan", "eager")] / plain
            out.append(f"- CPU: dcgan.py eager fp32 {rate[('dcgan', 'eager')]:.1f} img/s vs the plain loop {plain:.1f} img/s "
                       f"at the same settings{' (means of repeated runs)' if max(map(len, runs.values())) > 1 else ''}: {ratio:.2f}x, requirement (>= 1x) {'met' if ratio >= 1 else 'NOT met'}; "
                       f"per CPU-second {per_cpu[('dcgan', 'eager')]:.1f} vs {per_cpu[(BASELINE, 'eager')]:.1f} "
                       f"({per_cpu[('dcgan', 'eager')] / per_cpu[(BASELINE, 'eager')]:.2f}x).")
        else:
            out.append("- CPU: dcgan.py eager vs the plain loop: not measured in this run.")
        if peer and ("dcgan", "eager") in rate:
            out.append(f"- CPU, for reference: dcgan.py eager fp32 vs the plain loop over decoded tensors {peer:.1f} img/s "
                       f"(the same data path, so the loops alone): {rate[('dcgan', 'eager')] / peer:.2f}x.")
        out.append(f"- GPU: compiled + bf16 dcgan.py >= {GPU_SPEEDUP:.0f}x the plain loop over decoded tensors at 64x64 "
                   "batch 128: not measured (this table is CPU only). Every CUDA figure (img/s, peak GPU memory, compile "
                   "time, outside-model share) for all scripts is still unmeasured.")
    else:
        # The peer draws decoded batches on the GPU as the scripts do: the tutorial's DataLoader would time JPEG decoding.
        if peer and ("dcgan", "amp") in rate:
            ratio = rate[("dcgan", "amp")] / peer
            out.append(f"- GPU: compiled + bf16 dcgan.py {rate[('dcgan', 'amp')]:.1f} img/s vs the plain loop over decoded "
                       f"tensors {peer:.1f} img/s: {ratio:.2f}x, requirement (>= {GPU_SPEEDUP:.0f}x) "
                       f"{'met' if ratio >= GPU_SPEEDUP else 'NOT met'}"
                       + (f"; vs the tutorial's DataLoader loop {plain:.1f} img/s: {rate[('dcgan', 'amp')] / plain:.2f}x." if plain else "."))
        else:
            out.append("- GPU: compiled + bf16 dcgan.py vs the plain loop over decoded tensors: not measured in this run.")
    missing = [f"{s} {m}" for s in SCRIPTS for m in MODES if (s, m) not in rate]
    if missing:
        out.append(f"- Not measured on this device in this run: {', '.join(missing)}.")
    return out


def main():
    opts = parse()
    if opts.worker:
        worker(json.loads(opts.worker))
        return
    command = "python -m benchmarks.bench " + shlex.join(sys.argv[1:])
    started = datetime.datetime.now(datetime.timezone.utc)
    loads = [os.getloadavg()[0]]
    wanted = []
    for entry in filter(None, opts.scripts.split(",")):
        name, _, modes = entry.partition(":")
        modes = (modes.replace("+", ",") or opts.modes).split(",")
        if name not in SCRIPTS + (BASELINE,):
            sys.exit(f"error: unknown script {name!r}; choose from {', '.join(SCRIPTS + (BASELINE,))}")
        known = BASELINE_MODES if name == BASELINE else MODES  # the tutorial loop is eager float32 by definition
        if name == BASELINE and not entry.partition(":")[2]:
            modes = list(BASELINE_MODES)
        for m in modes:
            if m not in known:
                sys.exit(f"error: unknown mode {m!r} for {name}; choose from {', '.join(known)}")
        wanted.append((name, modes))
    if opts.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            sys.exit("error: --device cuda asked for, but this PyTorch sees no CUDA GPU; use --device cpu")

    extra = shlex.split(opts.script_args)
    plans = {name: plan_for(name, opts, extra) for name, _ in wanted}
    with tempfile.TemporaryDirectory(prefix="gan-bench-") as tmp:
        tmp = Path(tmp)
        data_dir = Path(opts.data_dir) if opts.data_dir else tmp / "data"
        if opts.data_dir:
            data_note = f"the real datasets in {opts.data_dir}"
        else:
            most = max([p["args"].batch_size * (p["total"] + 1) for n, p in plans.items() if n == BASELINE] + [opts.images])
            write_celeba(data_dir, most)
            write_mnist(data_dir, most)
            data_note = (f"synthetic, written in the real layouts: {most} CelebA-layout 178x218 JPEGs "
                         f"(smooth colour fields), {most} MNIST idx images; the 2-D toy sets are generated")
        sys.path.insert(0, str(ROOT))
        import torch
        from common import data
        for name, plan in plans.items():  # decode once now: the timed runs load the cache
            a = plan["args"]
            if name != BASELINE:
                data.load(a.dataset, str(data_dir), a.image_size, torch.device("cpu"))
            elif any("decoded" in modes for n, modes in wanted if n == BASELINE):
                data.load("celeba", str(data_dir), a.image_size, torch.device("cpu"))
        work = tmp / "runs"
        work.mkdir()
        results = []
        for name, modes in wanted:
            for mode in modes:
                results.append(run_one(len(results), name, mode, plans[name], opts, data_dir, work))
                table(results, plans, opts, command, started, loads + [os.getloadavg()[0]], data_note)  # so far
    print(f"wrote {opts.out}")
    if not all(r["ok"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
