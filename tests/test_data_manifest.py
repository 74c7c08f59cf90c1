"""Manifests from every source, and every bad input gives exit 2 with a message naming it."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from fundus_search.data_io import DataSpec, build_manifest
from fundus_search.search.cli.main import main
from tests.helpers import image_dir, label_csv


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def cgi_config(root, **data) -> dict:
    return {"data": {"source": "cgi-hrdc", "root": str(root), "task": 2, "image_size": 32, **data}}


def test_cgi_hrdc_manifest_reads_labels_and_groups(cgi_tree):
    manifest = build_manifest(DataSpec(source="cgi-hrdc", root=cgi_tree, task=2))
    assert len(manifest) == 24
    assert manifest.classes == ("no hypertensive retinopathy", "hypertensive retinopathy")
    assert sum(manifest.class_counts().values()) == 24 and min(manifest.class_counts().values()) > 0
    assert manifest.groups[0] == "00000.png"
    first_label = int(label_csv(cgi_tree).read_text().splitlines()[1].split(",")[1])
    assert manifest.labels[0] == first_label


def test_flair_csv_manifest_parses_category_lists(cgi_tree, tmp_path):
    rows = [",image,atributes,categories"]
    for i, line in enumerate(label_csv(cgi_tree).read_text().splitlines()[1:]):
        name, label = line.split(",")
        category = "hypertensive" if label == "1" else "no hypertensive"
        rows.append(f'{i},"{image_dir(cgi_tree).relative_to(cgi_tree) / name}",[],"[\'{category}\']"')
    (tmp_path / "flair.csv").write_text("\n".join(rows) + "\n")
    spec = DataSpec(
        source="flair-csv", root=cgi_tree, csv=tmp_path / "flair.csv", classes=("no hypertensive", "hypertensive")
    )
    manifest = build_manifest(spec)
    reference = build_manifest(DataSpec(source="cgi-hrdc", root=cgi_tree, task=2))
    assert np.array_equal(manifest.labels, reference.labels)


def test_generic_csv_accepts_names_indices_and_groups(cgi_tree, tmp_path):
    names = sorted(p.name for p in image_dir(cgi_tree).iterdir())
    lines = ["path,label,group"] + [f"{name},{'pos' if i % 2 else 0},patient{i // 2}" for i, name in enumerate(names)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    spec = DataSpec(source="csv", root=image_dir(cgi_tree), csv=tmp_path / "labels.csv", classes=("neg", "pos"))
    manifest = build_manifest(spec)
    assert manifest.labels.tolist() == [i % 2 for i in range(len(names))]
    assert manifest.groups[:3] == ["patient0", "patient0", "patient1"]


def test_synthetic_source_goes_through_cgi_hrdc_layout(write_config, capsys):
    config = write_config({"data": {"source": "synthetic", "synthetic": {"n": 20, "size": 32}, "image_size": 32}})
    rc, out, _ = run_cli(capsys, "data", "check", config)
    assert rc == 0, out
    assert "2-Hypertensive Retinopathy Classification" in out and "20 readable" in out


def test_relative_csv_resolves_against_yaml_folder(cgi_tree, tmp_path, write_config, capsys):
    names = sorted(p.name for p in image_dir(cgi_tree).iterdir())
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(names)))
    config = write_config(
        {
            "data": {
                "source": "csv",
                "root": str(image_dir(cgi_tree)),
                "csv": "labels.csv",
                "classes": ["a", "b"],
                "image_size": 32,
            }
        }
    )
    rc, out, err = run_cli(capsys, "data", "check", config)
    assert rc == 0, err


# ---- bad inputs: (how to break the tree, what the message must name) ----


def _missing_root(root, cfg):
    cfg["data"]["root"] = str(root / "nowhere")
    return "nowhere"


def _empty_image_folder(root, cfg):
    for p in image_dir(root).iterdir():
        p.unlink()
    return "no images in"


def _zero_byte(root, cfg):
    (image_dir(root) / "00003.png").write_bytes(b"")
    return "00003.png (empty file)"


def _truncated_png(root, cfg):
    path = image_dir(root) / "00004.png"
    path.write_bytes(path.read_bytes()[:200])
    return "00004.png (does not decode"


def _truncated_jpeg(root, cfg):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (image_dir(root) / "00005.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return "00005.png (does not decode"


def _text_named_png(root, cfg):
    (image_dir(root) / "00006.png").write_text("this is not an image\n" * 10)
    return "00006.png (does not decode"


def _unknown_label(root, cfg):
    csv = label_csv(root)
    csv.write_text(csv.read_text().replace("00007.png,0", "00007.png,maybe").replace("00007.png,1", "00007.png,maybe"))
    return "00007.png (unknown label 'maybe'"


def _csv_missing_column(root, cfg):
    csv = label_csv(root)
    csv.write_text(csv.read_text().replace("Hypertensive Retinopathy", "Label"))
    return "lacks column(s) ['Hypertensive Retinopathy']"


def _single_class(root, cfg):
    csv = label_csv(root)
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0]] + [line[:-1] + "1" for line in lines[1:]]) + "\n")
    return "only class(es) ['hypertensive retinopathy'] present"


def _duplicate(root, cfg):
    csv = label_csv(root)
    csv.write_text(csv.read_text() + "00001.png,0\n")
    return "00001.png (duplicate path)"


def _escape(root, cfg):
    shutil.copy(image_dir(root) / "00002.png", root / "outside.png")
    csv = label_csv(root)
    csv.write_text(csv.read_text() + "../../../../outside.png,1\n")
    return "outside.png (path escapes data.root)"


def _decompression_bomb(root, cfg):
    """A PNG whose header claims 30000 x 30000 pixels (a few hundred bytes on disk)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    (image_dir(root) / "00008.png").write_bytes(png)
    return "00008.png (does not decode: Image size (900000000 pixels) exceeds limit of"


def _csv_not_utf8(root, cfg):
    csv = label_csv(root)
    csv.write_bytes(csv.read_bytes() + b"caf\xe9.png,1\n")
    return "is not UTF-8 text (byte 0xe9); save it as UTF-8"


def _unknown_key(root, cfg):
    cfg["data"]["colour"] = "red"
    return "data.colour: unknown key"


def _image_size_zero(root, cfg):
    cfg["data"]["image_size"] = 0
    return "data.image_size: must be >= 32 (got 0)"


BREAKERS = [
    _missing_root,
    _empty_image_folder,
    _zero_byte,
    _truncated_png,
    _truncated_jpeg,
    _text_named_png,
    _unknown_label,
    _csv_missing_column,
    _single_class,
    _duplicate,
    _escape,
    _decompression_bomb,
    _csv_not_utf8,
    _unknown_key,
    _image_size_zero,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=[b.__name__.strip("_") for b in BREAKERS])
@pytest.mark.parametrize("command", ["check", "cache"])
def test_bad_input_exits_2_naming_the_culprit_and_writes_nothing(
    breaker, command, cgi_tree, tmp_path, write_config, capsys
):
    cfg = cgi_config(cgi_tree, cache_dir=str(tmp_path / "cache"))
    expected = breaker(cgi_tree, cfg)
    rc, out, err = run_cli(capsys, "data", command, write_config(cfg))
    assert rc == 2, out + err
    assert expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list((tmp_path / "cache").glob("images/*.npy")), "a failed build left an array behind"


def test_many_bad_files_are_listed_up_to_20_with_the_total(cgi_tree, write_config, capsys):
    for p in sorted(image_dir(cgi_tree).iterdir())[:22]:
        p.write_bytes(b"")
    rc, _, err = run_cli(capsys, "data", "cache", write_config(cgi_config(cgi_tree)))
    assert rc == 2
    assert "22 bad file(s)" in err and err.count("(empty file)") == 20 and "and 2 more" in err


def test_skip_bad_excludes_and_records_the_files(cgi_tree, write_config, capsys):
    (image_dir(cgi_tree) / "00003.png").write_bytes(b"")
    (image_dir(cgi_tree) / "00004.png").write_text("not a png")
    rc, out, err = run_cli(capsys, "data", "cache", write_config(cgi_config(cgi_tree, skip_bad=True)))
    assert rc == 0, err
    assert "22 images" in out and "2 excluded" in out
    from fundus_search.data_io import prepare_images
    from fundus_search.search.study.config import load_config

    cache = prepare_images(load_config(write_config(cgi_config(cgi_tree, skip_bad=True), "again.yaml")).data.to_spec())
    excluded = {e["path"].rsplit("/", 1)[-1]: e["reason"] for e in cache.meta["excluded"]}
    assert excluded.keys() == {"00003.png", "00004.png"}
    assert excluded["00003.png"] == "empty file" and "does not decode" in excluded["00004.png"]
    assert cache.images.shape[0] == 22 and "1-Training Set/00003.png" not in " ".join(cache.paths)


def test_debug_flag_shows_the_traceback(cgi_tree, write_config):
    cfg = cgi_config(cgi_tree)
    cfg["data"]["image_size"] = 0
    from fundus_search.search.study.config import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "data", "check", str(write_config(cfg))])


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--positive-fraction", "2"], "--positive-fraction: must be < 1.0 (got 2.0)"),
        (["--difficulty", "-0.5"], "--difficulty: must be >= 0.0 (got -0.5)"),
    ],
)
def test_data_synth_checks_the_configs_ranges_and_writes_nothing(flags, message, tmp_path, capsys):
    out = tmp_path / "synthetic"
    rc, _, err = run_cli(capsys, "data", "synth", out, "--n", 20, "--size", 32, *flags)
    assert rc == 2 and err.strip() == f"error: {message}"
    assert not out.exists()
    rc, printed, _ = run_cli(capsys, "data", "synth", out, "--n", 20, "--size", 32, "--positive-fraction", 0.5)
    assert rc == 0 and "wrote 20 images" in printed


def test_symlinks_in_the_root_are_followed_inside_it_and_named_once_each_when_they_lead_out(
    cgi_tree, tmp_path, write_config, capsys
):
    images = image_dir(cgi_tree)
    root = images.parents[1]  # the task's folder, the root its label file's names are under
    # a link that stays inside the root (lab storage often links folders): followed
    shutil.move(images, root / "real-images")
    images.symlink_to(root / "real-images", target_is_directory=True)
    rc, out, err = run_cli(capsys, "data", "check", write_config(cgi_config(cgi_tree)))
    assert rc == 0 and "ok: no problems found" in out, err
    # one that leads outside it: named once, with its target and how many files it carries
    images.unlink()
    shutil.move(root / "real-images", tmp_path / "elsewhere")
    images.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    rc, _, err = run_cli(capsys, "data", "check", write_config(cgi_config(cgi_tree), "again.yaml"))
    assert rc == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert (
        lines[0] == "error: data.root: 24 listed files lie under symlinks that lead outside it, which are not followed:"
    )
    assert lines[1].strip() == f"{images.relative_to(root)} -> {tmp_path / 'elsewhere'}  (24 files)"
    assert len(lines) == 3 and "set data.root to the folder they lead to" in lines[2]


def test_slow_steps_print_progress_lines_where_stderr_is_not_a_terminal(
    cgi_tree, tmp_path, write_config, capsys, monkeypatch
):
    monkeypatch.setenv("FUNDUS_SEARCH_PROGRESS_S", "0")  # a line at every update instead of every 30 s
    rc, _, err = run_cli(capsys, "data", "cache", write_config(cgi_config(cgi_tree, cache_dir=str(tmp_path / "c"))))
    assert rc == 0, err
    lines = [line for line in err.splitlines() if ": decoding: " in line]
    assert lines and lines[-1].startswith("image cache ") and " 24 of 24 img (" in lines[-1], err
    assert "\r" not in err, "a bar's carriage returns in a log"
