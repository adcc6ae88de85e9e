"""The 2-D reproduction rows (benchmarks/toy_recipes.txt) and their runner (benchmarks/toy.py): the rows are PacGAN's
settings, every row has its published figures, and the runner prints our seeds beside them."""
import json
import math

import pytest

from benchmarks.toy import PUBLISHED, final_figures, main as run_toy, mean_se, read_rows, row_name, with_steps


def test_the_rows_are_pacgans_table_at_its_settings():
    from common.cli import parse_args
    import minimal_gan
    rows = read_rows()
    assert sorted(rows) == sorted(PUBLISHED)  # every published row of table 1, and only those
    for name, flags in rows.items():
        args, _ = parse_args(minimal_gan.Args, "row", flags)
        settings = (args.g_hidden, args.g_layers, args.g_batchnorm, args.hidden, args.layers, args.maxout,
                    args.dropout, args.init_std, args.lr, args.beta1, args.batch_size, args.simultaneous,
                    args.toy_points, args.steps)
        assert settings == (400, 4, True, 200, 3, 5, 0.0, 0.02, 1e-4, 0.8, 100, True, 100_000, 400_000), name
        assert args.toy_scale == (0.5 if args.dataset == "ring8" else 1.0), name  # their ring: radius 1, std 0.01
        assert row_name(flags) == f"{args.dataset}-" + (f"pacgan{args.pack}" if args.pack > 1 else "gan")


def test_the_reader_refuses_what_the_runner_adds_and_repeated_rows(tmp_path):
    line = "minimal_gan.py --dataset ring8 --steps 10"
    for text, why in ((f"{line} --seed 1\n", "--seed"), (f"{line} --run-dir x\n", "--run-dir"),
                      (f"{line}\n{line}\n", "second row ring8-gan"), ("minimal_gan.py --dataset ring8\n", "--steps"),
                      ("dcgan.py --steps 1\n", "minimal_gan.py"), ("minimal_gan.py --steps=3\n", "without =")):
        (tmp_path / "r.txt").write_text("# rows\n" + text)
        with pytest.raises(ValueError, match=why):
            read_rows(tmp_path / "r.txt")
    assert with_steps(["--steps", "400000", "--pack", "2"], 50) == ["--steps", "50", "--pack", "2"]
    assert row_name(["--dataset", "ring8", "--unroll", "5"]) == "ring8-unrolled5"


def test_mean_and_standard_error():
    m, se = mean_se([20, 23, 17])
    assert m == 20 and se == pytest.approx(math.sqrt(9 / 3))  # sample std 3 over sqrt(3) trials
    assert math.isnan(mean_se([5])[1])


def test_the_runner_prints_our_seeds_beside_the_paper(tmp_path, capsys):
    """Two short rows over two seeds (tiny networks): the table holds both, each with its published figures and its
    seeds' own; --score-only prints the same table again; an unfinished run is refused, not scored."""
    small = "--g-hidden 16 --g-layers 2 --hidden 16 --layers 1 --batch-size 32 --toy-points 1000 --steps 400000"
    (tmp_path / "r.txt").write_text(f"minimal_gan.py --dataset grid25 {small}\n"
                                    f"minimal_gan.py --dataset ring8 --toy-scale 0.5 {small} --pack 2\n")
    argv = ["--recipes", str(tmp_path / "r.txt"), "--runs-dir", str(tmp_path / "runs"), "--seeds", "0,1"]
    run_toy([*argv, "--steps", "6"])
    out = capsys.readouterr().out
    table = out[out.index("| row |"):]
    grid = next(line for line in table.splitlines() if line.startswith("| grid25-gan | 6 | 2 |"))
    assert "17.3 ± 0.8" in grid and "94.8 ± 0.7%" in grid and "0.70 ± 0.07" in grid
    ring = next(line for line in table.splitlines() if line.startswith("| ring8-pacgan2 | 6 | 2 |"))
    assert "7.9 ± 0.1" in ring
    for seed in (0, 1):
        f = final_figures(tmp_path / "runs" / "grid25-gan" / f"seed_{seed}")
        assert f["step"] == 6 and f"{f['modes']} / {100 * f['high_quality']:.1f}%" in grid
        assert json.loads((tmp_path / "runs" / "grid25-gan" / f"seed_{seed}" / "config.json").read_text())["seed"] == seed
    run_toy([*argv, "--score-only"])
    assert capsys.readouterr().out.endswith(table)
    (tmp_path / "runs" / "ring8-pacgan2" / "seed_1" / "minutes.txt").unlink()  # as if killed before its end
    with pytest.raises(SystemExit):
        run_toy([*argv, "--score-only"])
    assert "did not finish" in capsys.readouterr().err
