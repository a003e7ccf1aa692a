"""python -m trainers.data preview: renders a PNG; a bad config is one line on stderr and exit 2."""

from PIL import Image

from trainers.data.__main__ import main


def test_preview_renders_a_png(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"name: demo\ndata:\n  train_size: 16\n  eval_size: 16\n  cache_dir: {tmp_path / 'cache'}\n")
    out = tmp_path / "preview.png"
    assert main(["preview", str(config), "--out", str(out), "--set", "data.info_gap=1.0"]) == 0
    with Image.open(out) as image:
        assert image.width > 800 and image.height > 400
    assert "wrote" in capsys.readouterr().out


def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  info_gap: 3\n")
    assert main(["preview", str(config), "--out", str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "data.info_gap" in error
    assert main(["preview", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err
