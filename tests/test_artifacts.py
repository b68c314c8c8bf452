"""Verified artifacts (issue 21 items 4 and 5): the synth manifest and train_result.json record size and sha256
of what they vouch for; a torn, shortened or bit-flipped file is regenerated (or named in the error), never reused;
damaged unit records (`null`, torn JSON, a torn .npy) are done again; a torn last.ckpt names itself."""
import json
import shutil
from pathlib import Path

import pytest

from helpers import compose_cfg
from crescent import pipeline
from crescent.utils import artifacts
from crescent.utils.io import read_json

TINY = ["debug=default"]


# -- the record itself -------------------------------------------------------------------------------------------
def _torn(path: Path) -> None:  # cut in the middle of the last line, as a writer killed mid-write leaves it
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])


def _shortened(path: Path) -> None:  # the last line gone: still a valid JSONL file
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) > 1, path
    path.write_bytes(b"".join(lines[:-1]))


def _flipped(path: Path) -> None:  # one byte changed in place: same size
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i] = data[i] ^ 0x01
    path.write_bytes(bytes(data))


DAMAGE = {"torn": _torn, "shortened": _shortened, "flipped": _flipped}


@pytest.mark.parametrize("how", DAMAGE)
def test_verify_names_each_damaged_file(tmp_path, how):
    for name in ("a.jsonl", "sub/b.jsonl"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text('{"x": 1}\n{"x": 2}\n')
    recorded = artifacts.record([tmp_path / "a.jsonl", tmp_path / "sub"], tmp_path)
    assert set(recorded) == {"a.jsonl", "sub/b.jsonl"} and recorded["a.jsonl"]["size"] == 18
    assert artifacts.verify(tmp_path, recorded) == []
    DAMAGE[how](tmp_path / "sub" / "b.jsonl")
    (problem,) = artifacts.verify(tmp_path, recorded)
    assert str(tmp_path / "sub" / "b.jsonl") in problem
    (tmp_path / "a.jsonl").unlink()
    assert any("a.jsonl is missing" in p for p in artifacts.verify(tmp_path, recorded))


# -- the synth cache -------------------------------------------------------------------------------------------
def _agree(text: str) -> str:
    """The random tiny model's answers hold no number: every sample "answers" by its length's parity, so votes
    agree often enough for sft.jsonl to have rows (deterministic, like the real extraction)."""
    return str(len(text) % 2)


@pytest.fixture(autouse=True)
def agreeing_answers(monkeypatch):
    monkeypatch.setattr("crescent.synth.answers.extract_answer", _agree)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One generate run; each test works on a copy of its cache (so the damage stays local)."""
    base = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("crescent.synth.answers.extract_answer", _agree)
        manifest = pipeline.run(compose_cfg(TINY, base))["generate"].record
    assert manifest["counts"]["kept"] >= 2, manifest["counts"]
    workdir = Path(manifest["cache_dir"])
    files = {name: (base / "run" / "synth" / name).read_bytes()
             for name in ("questions.jsonl", "answers.jsonl", "sft.jsonl", "rejections.jsonl")}
    stages = {k: Path(v).relative_to(base / "synth_cache") for k, v in manifest["stage_dirs"].items()}
    return base, workdir.name, files, stages


def _stage_dir(generated, tmp_path, stage: str) -> Path:
    """A per-stage folder (questions, answers, verify: crescent.synth.keys) of the copied cache."""
    return tmp_path / "synth_cache" / generated[3][stage]


def _copy_cache(generated, tmp_path) -> Path:
    base, key = generated[0], generated[1]
    shutil.copytree(base / "synth_cache", tmp_path / "synth_cache")
    return tmp_path / "synth_cache" / key


def _no_model(monkeypatch):
    import crescent.backends

    monkeypatch.setattr(crescent.backends, "build_backend", lambda *a, **k: pytest.fail("a model was loaded"))


def _same_outputs(generated, tmp_path) -> None:
    for name, data in generated[2].items():
        assert (tmp_path / "run" / "synth" / name).read_bytes() == data, name
    assert read_json(tmp_path / "run" / "status.json")["status"] == "ok"


def test_the_manifest_records_every_data_file(generated):
    base, key, files, _ = generated
    manifest = read_json(base / "synth_cache" / key / "manifest.json")
    assert set(manifest["artifacts"]) == set(files)
    assert artifacts.verify(base / "run" / "synth", manifest["artifacts"]) == []
    units = read_json(base / "synth_cache" / key / "units.json")
    assert any(n.startswith("answers/") and "/answers/chunk_" in n for n in units)  # relative to the cache root
    assert any(n.startswith("questions/") and n.endswith(".npy") for n in units)


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("name", ["questions.jsonl", "answers.jsonl", "sft.jsonl"])
def test_a_damaged_cache_file_is_regenerated_not_copied(generated, tmp_path, monkeypatch, caplog, name, how):
    """Before: a torn or shortened questions/answers file was copied into the run dir with status ok, a torn
    sft.jsonl failed on every rerun, a flipped byte passed. Now the folder is rebuilt from its units (all intact:
    no model is loaded) and the run dir gets the original bytes."""
    workdir = _copy_cache(generated, tmp_path)
    DAMAGE[how](workdir / name)
    _no_model(monkeypatch)
    with caplog.at_level("WARNING"):
        manifest = pipeline.run(compose_cfg(TINY, tmp_path))["generate"].record
    assert f"{workdir / name}" in caplog.text and "is damaged" in caplog.text
    assert not manifest["cache_hit"] and manifest["repaired"]
    _same_outputs(generated, tmp_path)
    assert (workdir / name).read_bytes() == generated[2][name]  # the cache is repaired too


def test_a_garbled_manifest_is_rebuilt(generated, tmp_path, monkeypatch):
    workdir = _copy_cache(generated, tmp_path)
    (workdir / "manifest.json").write_text('{"config_hash": ')
    _no_model(monkeypatch)
    pipeline.run(compose_cfg(TINY, tmp_path))
    _same_outputs(generated, tmp_path)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("content", [b"null", b'{"chunk": 0, "rows": [', pytest.param(b"", marks=SLOW),
                                     pytest.param(b"[]", marks=SLOW)])
def test_a_damaged_answer_chunk_is_sampled_again(generated, tmp_path, caplog, content):
    """A unit record holding `null`, a torn or empty one, a list: named in a warning and done again (before:
    TypeError / JSONDecodeError on every rerun). The redo writes the same rows."""
    workdir = _copy_cache(generated, tmp_path)
    chunk = _stage_dir(generated, tmp_path, "answers") / "answers" / "chunk_00000.json"
    original = chunk.read_bytes()
    (workdir / "manifest.json").unlink()  # a killed run: the stage resumes from its units
    chunk.write_bytes(content)
    with caplog.at_level("WARNING"):
        pipeline.run(compose_cfg(TINY, tmp_path))
    assert f"{chunk} is damaged" in caplog.text
    assert read_json(chunk)["rows"] == json.loads(original)["rows"]  # (its "seconds" are the redo's)
    _same_outputs(generated, tmp_path)


def test_a_flipped_byte_in_a_unit_is_redone_when_the_folder_is_rebuilt(generated, tmp_path, caplog):
    """units.json holds each unit's sha256: a unit changed in place (still valid JSON) is not replayed into the
    rebuilt data files."""
    workdir = _copy_cache(generated, tmp_path)
    chunk = _stage_dir(generated, tmp_path, "answers") / "answers" / "chunk_00001.json"
    original = chunk.read_bytes()
    chunk.write_bytes(original.replace(b'"seconds": ', b'"seconds": 1'))  # valid JSON, other bytes
    _torn(workdir / "sft.jsonl")
    with caplog.at_level("WARNING"):
        pipeline.run(compose_cfg(TINY, tmp_path))
    assert f"{chunk} has " in caplog.text
    assert read_json(chunk)["rows"] == json.loads(original)["rows"]
    _same_outputs(generated, tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "missing", "rows"])
def test_a_damaged_embeddings_file_redoes_its_pass(generated, tmp_path, caplog, damage):
    """A truncated .npy of a dedup pass (before: `EOFError: reading array header` on every rerun) is named in a
    warning and its pass is done again: same questions."""
    import numpy as np

    workdir = _copy_cache(generated, tmp_path)
    npy = sorted((_stage_dir(generated, tmp_path, "questions") / "rounds").glob("*.npy"))[0]
    original = npy.read_bytes()
    (workdir / "manifest.json").unlink()
    if damage == "truncated":
        npy.write_bytes(original[:60])
    elif damage == "missing":
        npy.unlink()
    else:
        np.save(npy, np.zeros((1, 3), dtype=np.float32))
    with caplog.at_level("WARNING"):
        pipeline.run(compose_cfg(TINY, tmp_path))
    assert f"{npy} is damaged" in caplog.text
    assert npy.read_bytes() == original
    _same_outputs(generated, tmp_path)


# -- the train stage ---------------------------------------------------------------------------------------------
TRAIN = ["model@teacher=tiny_llama", "stages=[train]", "logger=none", "train.max_seq_len=64",
         "train.global_batch_size=4", "train.micro_batch_size=2", "train.epochs=1", "train.optimizer.lr=3e-3",
         "train.scheduler.warmup_ratio=0", "trainer.precision=32-true", "train.val_fraction=0.2",
         "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished training; each test works on a copy of its run dir."""
    base = tmp_path_factory.mktemp("trained")
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                                          {"role": "assistant", "content": f"{i} + {i} = {2 * i}.\n#### {2 * i}"}]}
            for i in range(10)]
    data = base / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = pipeline.run(compose_cfg([*TRAIN, f"train.data={data}"], base))["train"].record
    export = {p.name: p.read_bytes() for p in (base / "run" / "hf_export").iterdir()}
    return base, data, result, export


def _train_copy(trained, tmp_path):
    base, data, _, _ = trained
    shutil.copytree(base / "run", tmp_path / "run", symlinks=True)
    return compose_cfg([*TRAIN, f"train.data={data}"], tmp_path)


def test_train_result_records_every_exported_file(trained):
    base, _, result, export = trained
    assert {f"hf_export/{name}" for name in export} == set(result["artifacts"])
    assert artifacts.verify(base / "run", result["artifacts"]) == []


@pytest.mark.parametrize("what", ["truncated weights", "flipped config", "legacy truncated weights"])
def test_a_damaged_export_is_not_reused(trained, tmp_path, caplog, what):
    """Before: a finished training was reused when hf_export/config.json existed, a truncated model.safetensors
    included (rc 0). Now it is exported again from the final checkpoint (no training): the original bytes."""
    cfg = _train_copy(trained, tmp_path)
    export = tmp_path / "run" / "hf_export"
    if what == "flipped config":
        _flipped(export / "config.json")
    else:
        data = (export / "model.safetensors").read_bytes()
        (export / "model.safetensors").write_bytes(data[: len(data) // 3])
    if what.startswith("legacy"):  # a train_result.json written before the sizes and sha256 were recorded
        result = read_json(tmp_path / "run" / "train_result.json")
        del result["artifacts"]
        (tmp_path / "run" / "train_result.json").write_text(json.dumps(result))
    with caplog.at_level("WARNING"):
        again = pipeline.run(cfg)["train"].record
    damaged = "config.json" if what == "flipped config" else "model.safetensors"
    assert "not reusing" in caplog.text and str(export / damaged) in caplog.text
    assert again["resumed_from"].endswith(f"step={trained[2]['global_step']}.ckpt")
    assert again["global_step"] == trained[2]["global_step"]
    assert {p.name: p.read_bytes() for p in export.iterdir()} == trained[3]


def test_a_truncated_checkpoint_names_itself_and_the_way_out(trained, tmp_path):
    """A kill after the last checkpoint, before train_result.json, then a damaged checkpoint: before, every rerun
    failed in torch with `PytorchStreamReader failed` naming nothing."""
    from crescent.utils.io import DamagedFileError

    cfg = _train_copy(trained, tmp_path)
    (tmp_path / "run" / "train_result.json").unlink()
    target = (tmp_path / "run" / "checkpoints" / "last.ckpt").resolve()
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFileError, match=rf"{target.name} \(the checkpoint .*last.ckpt points to\) is damaged"
                                               r".*train.resume=false"):
        pipeline.run(cfg)
    assert read_json(tmp_path / "run" / "status.json")["status"] == "failed"
    # the way out it names works
    from omegaconf import OmegaConf

    OmegaConf.update(cfg, "train.resume", False)
    assert pipeline.run(cfg)["train"].record["global_step"] == trained[2]["global_step"]


@pytest.mark.parametrize("how", ["torn", "flipped"])
def test_damaged_run_dir_data_names_itself_before_training(generated, tmp_path, how):
    """synth/sft.jsonl in the run dir checked against synth/manifest.json before the train stage uses it."""
    from crescent.utils.io import DamagedFileError

    _copy_cache(generated, tmp_path)
    pipeline.run(compose_cfg(TINY, tmp_path))
    sft = tmp_path / "run" / "synth" / "sft.jsonl"
    DAMAGE[how](sft)
    with pytest.raises(DamagedFileError, match=rf"{sft}.*manifest.json.*rerun the generate stage"):
        pipeline.run(compose_cfg([*TINY, "stages=[train]", "model@student=tiny_llama"], tmp_path))
    pipeline.run(compose_cfg([*TINY, "stages=[generate]"], tmp_path))  # the way out it names
    assert sft.read_bytes() == generated[2]["sft.jsonl"]


def test_a_damaged_verification_result_is_verified_again(make_cfg, tmp_path, caplog):
    """verify/result.json torn (before: DamagedFileError on every rerun): named in a warning, verified again, the
    same record."""
    cfg = make_cfg("debug=default", "questions=dataset", "voting.k=3", "dedup=none", "sampling.num_questions=3",
                   "sampling.answer.max_new_tokens=16", "verify=mc", "verify.threshold=0.99")
    manifest = pipeline.run(cfg)["generate"].record
    work = Path(manifest["cache_dir"])
    path = Path(manifest["stage_dirs"]["verify"]) / "verify" / "result.json"
    record = read_json(path)
    path.write_text('{"ids": ["d000')
    (work / "manifest.json").unlink()  # a killed run: the stage resumes from its units
    with caplog.at_level("WARNING"):
        pipeline.run(cfg)
    assert f"{path} is damaged" in caplog.text
    assert read_json(path) == record
