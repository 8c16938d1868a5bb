"""The command line: help, listings, one trial, and one clear line per bad input."""

import json

import pytest

from noharm.bench.cli import main


def test_help_and_listings(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code == 0
    assert "trial" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["trial", "--help"])
    assert "--attribute" in capsys.readouterr().out
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "adult  [tabular]" in out and "digits-shift  [image]" in out and "race5" in out
    assert main(["methods", "list", "-v"]) == 0
    out = capsys.readouterr().out
    assert "erm  Pooled ERM" in out and "lr: float, default 0.001, must be > 0, searched log-uniformly" in out


def test_trial_prints_table_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "x"
    code = main(["trial", "--dataset", "digits-shift", "--attribute", "style", "--method", "erm",
                 "--set", "epochs=1", "--set", "backbone=cnn", "--quiet", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for row in ("overall", "shifted", "standard", "worst group", "gap"):
        assert row in text
    assert {"predictions.parquet", "metrics.json", "config.json", "model.pt"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    lines = text.splitlines()
    test_acc = lines.index(next(l for l in lines if l.startswith("test accuracy")))
    assert lines[test_acc + 1].split() == ["overall", f"{metrics['test/model/acc']:.4f}"]
    assert lines[test_acc + 2].startswith("shifted (n=")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "nope"], "unknown dataset 'nope'; choose one of: acs-income, adult, "),
        (["--dataset", "adult", "--attribute", "height"], "unknown attribute 'height'; choose one of: sex, race, race5, age"),
        (["--dataset", "adult", "--target", "age"], "unknown target 'age' for dataset 'adult'; choose one of: income"),
        (["--method", "magic"], "unknown method 'magic'; choose one of:"),
        (["--set", "lr=fast"], "hparam 'lr' takes a number, got 'fast'"),
        (["--set", "momentum"], "--set expects name=value"),
        (["--set", "warp=9"], "unknown hparam 'warp' of method 'erm'"),
        (["--objective", "val/happiness"], "unknown objective 'val/happiness'"),
        (["--option", "image_size=4", "--dataset", "digits-shift", "--attribute", "style"], "image_size must be between 8 and 256"),
        (["--device", "cuda:7"], None),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    import torch

    if message is None:
        if torch.cuda.is_available():
            pytest.skip("a GPU is present: cuda:7 may exist")
        message = "device 'cuda:7' requested but CUDA is not available"
    base = {"--dataset": "adult", "--attribute": "sex", "--method": "erm"}
    args = list(argv)
    for flag, value in base.items():
        if flag not in args:
            args += [flag, value]
    code = main(["trial", "--quiet", "--set", "epochs=1", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("noharm: error: ") and message in err
    assert err.count("\n") == 1


def test_non_empty_out_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    code = main(["trial", "--dataset", "adult", "--attribute", "sex", "--method", "erm", "--out", str(out)])
    assert code == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "old.txt").read_text() == "keep me"
