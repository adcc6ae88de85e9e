"""The speed benchmark end to end on the CPU: one tiny dcgan config, eager, and the plain loop over decoded
tensors, in one run of the benchmark."""
import math
import re
import subprocess
import sys

from helpers import ROOT


def test_benchmark_tables_dcgan_and_the_plain_loop_over_decoded_tensors(tmp_path):
    """The fair peer of compiled + bf16 dcgan.py is the tutorial loop drawing decoded batches, not decoding JPEGs."""
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--device", "cpu",
                           "--scripts", "dcgan:eager,plain_dcgan:decoded", "--warmup", "1", "--steps", "1",
                           "--images", "16", "--out", str(out),
                           "--script-args", "--image-size 32 --batch-size 8 --width 8 --z-dim 16"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text()
    assert "Command: `python -m benchmarks.bench --device cpu" in text and "torch " in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[4:10]]
            for line in text.splitlines() if line.startswith("| dcgan.py")}
    assert set(rows) == {"dcgan.py"}
    # img/s, per CPU-s, peak MiB, to first log, beyond steady, outside share. One tiny warm-up step can take
    # under 0.05 s, which the table rounds to 0.0 s to first log (seen on CI), so that cell may be zero.
    for cells in rows.values():
        numbers = [float(re.match(r"-?[\d.]+", c).group()) for c in cells]
        assert all(math.isfinite(x) for x in numbers), cells
        assert numbers[0] > 0 and numbers[1] > 0 and numbers[2] > 100 and numbers[3] >= 0 and 0 <= numbers[5] < 100, cells
    plain = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| plain loop")]
    assert len(plain) == 1 and "--decoded" in plain[0][0], plain
    setting, img_per_s, peak = plain[0][1], float(plain[0][3]), float(plain[0][5])
    assert "celeba decoded tensor 32x32, batch 8" in setting and "loader workers" not in setting, setting
    assert img_per_s > 0 and peak > 100, plain
    assert "dcgan.py eager vs the plain loop: not measured" in text  # the DataLoader loop did not run
    assert "dcgan.py eager fp32 vs the plain loop over decoded tensors" in text
    assert "GPU: compiled + bf16 dcgan.py >= 3x the plain loop over decoded tensors" in text and "not measured" in text
