"""`arch` timm/<name>: timm's tiny test models (a CNN and a ViT) with random weights, saved to a local file and to a
Hugging Face cache laid out on disk, through a probe, predict with Grad-CAM, enrich, export and the ONNX runtime;
fine-tuning from a file; the Hub's absence as one line. Nothing reaches the network (HF_HUB_OFFLINE, or a Hub
endpoint on a closed loopback port)."""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from europeana_imgcls import EnrichConfig, PredictConfig, enrich, predict, train
from europeana_imgcls.core.config import ExportConfig, TrainConfig
from europeana_imgcls.core.errors import ModelError
from europeana_imgcls.modelling import timm_backbones
from europeana_imgcls.modelling.checkpoint import load_checkpoint
from europeana_imgcls.modelling.models import build_model, get_arch, sized_for_model
from europeana_imgcls.modelling.run_folder import RunFolder
from europeana_imgcls.outputs.export import export

from ..support import VOCAB, QuietHandler, assert_one_line_error, built_once, eic, rows, serving

CNN, VIT = "test_resnet", "test_vit"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class Hub:
    """A Hugging Face home whose cache holds the models' weights, and the same weights as plain files."""

    home: Path
    files: dict[str, Path]  # model name -> its weights as a .safetensors file outside the cache

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name].read_bytes()).hexdigest()


def _lay_out_hub(root: Path) -> Hub:
    import timm  # imported by the tests that use it: ~2 s of a worker's start

    files = {}
    for name in (CNN, VIT):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False)
        cfg = model.pretrained_cfg
        files[name] = root / f"{name}.safetensors"
        save_file(model.state_dict(), files[name])
        config = {"architecture": name, "num_classes": cfg["num_classes"], "pretrained_cfg": {"tag": cfg["tag"]}}
        # As `hf download timm/<name>.<tag>` leaves it: refs/main names the snapshot, whose files link
        # to blobs named by their SHA-256 (no suffix).
        repo = root / "hf" / "hub" / f"models--{cfg['hf_hub_id'].replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(REVISION)
        (repo / "blobs").mkdir()
        (repo / "snapshots" / REVISION).mkdir(parents=True)
        contents = {"model.safetensors": files[name].read_bytes(), "config.json": json.dumps(config).encode()}
        for file, data in contents.items():
            blob = hashlib.sha256(data).hexdigest()
            (repo / "blobs" / blob).write_bytes(data)
            (repo / "snapshots" / REVISION / file).symlink_to(Path("..", "..", "blobs", blob))
    return Hub(root / "hf", files)


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Hub:
    """Laid out once a run (read only: eic reads the cache, never writes it offline)."""
    return built_once(tmp_path_factory, "timm_hub", _lay_out_hub)


@pytest.fixture
def offline(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> Hub:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hub.home))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return hub


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # end to end: a probe, predict with heatmaps, enrich, export and ONNX Runtime, per backbone
@pytest.mark.parametrize("name", [CNN, VIT])
def test_a_timm_backbone_from_the_hub_cache_goes_through_probe_predict_gradcam_enrich_export_and_onnx(
    name: str, offline: Hub, folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    run = tmp_path / "run"
    settings = dict(arch=f"timm/{name}", method="linear-probe", folds=3, input_size=64, quiet=True)
    train(TrainConfig(data_dir=folders, output_dir=run, **settings))

    # The checkpoint describes the backbone: its data config (mean 0.5) became the run's preprocessing.
    meta = load_checkpoint(RunFolder(run).split(0).model).meta
    assert meta.arch == f"timm/{name}" and meta.input_size == 64 and meta.mean == (0.5, 0.5, 0.5)
    assert meta.timm is not None
    assert meta.timm["pretrained_tag"] == "r160_in1k" and meta.timm["weights"] == "imagenet"
    assert meta.timm["weights_sha256"] == offline.sha256(name)
    assert meta.timm["data_config"]["input_size"] == [3, 160, 160]
    sidecar = json.loads((run / "embeddings.embedding.json").read_text())
    assert sidecar["timm"]["weights_sha256"] == offline.sha256(name) and sidecar["input_size"] == 64
    card = (run / "MODEL_CARD.md").read_text()  # and the model card, where a deployer reads where it came from
    assert f"timm backbone `{name}`: pretrained tag `r160_in1k`" in card
    assert f"starting weights SHA-256 `{offline.sha256(name)}`" in card

    # The run's models load without the Hub or its cache: timm builds the model bare, the checkpoint fills it.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    images = folders / "map"
    out = {}
    for runtime in ("torch", "onnx"):
        if runtime == "onnx":
            exported = export(ExportConfig(run=run, split="best", quiet=True))
            graph = onnx.load(str(exported.files[0]))
            said = json.loads({p.key: p.value for p in graph.metadata_props}["timm"])
            assert said["name"] == name and said["weights_sha256"] == offline.sha256(name)
            model_json = json.loads((RunFolder(run).onnx / "model.json").read_text())
            assert model_json["input"]["data_config"]["mean"] == [0.5, 0.5, 0.5]
        out[runtime] = tmp_path / f"{runtime}.csv"
        predict(
            PredictConfig(
                run=run,
                inputs=[str(images)],
                output=out[runtime],
                split="best",
                runtime=runtime,
                gradcam_dir=tmp_path / "heatmaps" if runtime == "torch" else None,
                quiet=True,
            )
        )
    assert [r["prediction"] for r in rows(out["torch"])] == [r["prediction"] for r in rows(out["onnx"])]
    assert len(list((tmp_path / "heatmaps").glob("*.jpg"))) == len(list(images.glob("*.jpg")))

    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    report = enrich(
        EnrichConfig(
            run=run, inputs=[str(images)], output=tmp_path / "a.jsonld", vocab=vocab, precision=0.5, quiet=True
        )
    )
    assert report.model_id == RunFolder(run).model_id() and (tmp_path / "a.jsonld").is_file()


@pytest.mark.slow  # fine-tunes a timm CNN for an epoch, with Grad-CAM figures of its test images
def test_fine_tuning_a_timm_cnn_from_a_weights_file_draws_its_heatmaps_and_names_the_file(
    offline: Hub, folders: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    weights = offline.files[CNN]
    settings = dict(data_dir=folders, output_dir=run, arch=f"timm/{CNN}", weights=str(weights), input_size=64)
    train(TrainConfig(**settings, epochs=1, folds=3, crossvalidation=False, gradcam_images=2, quiet=True))
    meta = load_checkpoint(RunFolder(run).split(0).model).meta
    assert meta.input_size == 64 and meta.timm is not None
    assert meta.timm["weights"] == str(weights.resolve()) and meta.timm["weights_sha256"] == offline.sha256(CNN)
    assert len(list(RunFolder(run).split(0).gradcam.glob("*.jpg"))) == 2


def test_a_weights_file_loads_into_the_timm_model_as_saved(offline: Hub, tmp_path: Path) -> None:
    import timm

    torch.manual_seed(1)
    saved = timm.create_model(VIT, pretrained=False).state_dict()
    save_file(saved, tmp_path / "w.safetensors")
    torch.save(saved, tmp_path / "w.pt")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pt"):
        model = build_model(f"timm/{VIT}", 3, str(path))
        assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])
        assert model.state_dict()["head.weight"].shape == (3, 64)  # the classifier is fresh, sized for 3 classes


def test_weights_that_do_not_fit_or_do_not_read_are_one_line(offline: Hub, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not fit `arch` timm/test_vit"):
        build_model(f"timm/{VIT}", 3, str(offline.files[CNN]))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ModelError, match="not a readable .safetensors file"):
        build_model(f"timm/{VIT}", 3, str(broken))


def test_the_model_s_own_input_size_unless_one_is_given(offline: Hub, folders: Path, tmp_path: Path) -> None:
    base = dict(data_dir=folders, output_dir=tmp_path, weights="none")
    assert sized_for_model(TrainConfig(**base, arch=f"timm/{VIT}")).input_size == 160
    assert sized_for_model(TrainConfig(**base, arch=f"timm/{VIT}", input_size=96)).input_size == 96
    assert sized_for_model(TrainConfig(**base, arch="tiny")).input_size == 128  # eic's own default, as before
    # A ViT made for 160 px is built for 96 px, its weights' position embedding resampled as they load.
    model = build_model(f"timm/{VIT}", 2, str(offline.files[VIT]), input_size=96).eval()
    assert model.pos_embed.shape == (1, 1 + 6 * 6, 64) and model(torch.zeros(1, 3, 96, 96)).shape == (1, 2)


def test_gradcam_finds_a_vit_s_tokens_and_refuses_what_it_cannot_look_into() -> None:
    arch = get_arch(f"timm/{VIT}")
    model = build_model(arch.name, 2, "none").eval()
    layer = arch.cam_layer(model)
    reshape = arch.cam_reshape(model)
    assert reshape is not None and layer is model.blocks[-1].norm1
    tokens = torch.arange(2 * (1 + 100) * 4, dtype=torch.float32).reshape(2, 101, 4)
    grid = reshape(tokens)  # the class token dropped, ten by ten patches, channels first
    assert grid.shape == (2, 4, 10, 10) and torch.equal(grid[:, :, 0, 0], tokens[:, 1, :])
    with pytest.raises(ModelError, match="Grad-CAM cannot apply to timm/x"):
        timm_backbones.cam_layer(nn.Linear(2, 2), "timm/x")


def test_an_unknown_timm_model_is_one_line(folders: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model in the installed timm"):
        get_arch("timm/no_such_model_anywhere")
    # a tag mistyped: timm raises its RuntimeError; the line names the tags there are
    with pytest.raises(ModelError, match=r"resnet18 has no pretrained tag 'a1_in1' in the installed timm .*a1_in1k"):
        get_arch("timm/resnet18.a1_in1")
    result = eic("embed", folders, "-o", tmp_path / "e.parquet", "--arch", "timm/resnet18.a1_in1", "--weights", "none")
    assert_one_line_error(result, "has no pretrained tag 'a1_in1'")


def test_weights_without_the_batchnorm_statistics_do_not_fit(offline: Hub, tmp_path: Path) -> None:
    """Left at 0 and 1, the running statistics would put every feature quietly off: such a file is refused, naming
    what it lacks. A file without the counts of batches seen (inference never reads them) loads."""
    import timm

    saved = timm.create_model(CNN, pretrained=False).state_dict()
    without_counts = {k: v for k, v in saved.items() if not k.endswith("num_batches_tracked")}
    save_file(without_counts, tmp_path / "counts.safetensors")
    build_model(f"timm/{CNN}", 3, str(tmp_path / "counts.safetensors"))
    without_statistics = {k: v for k, v in without_counts.items() if "running_" not in k}
    save_file(without_statistics, tmp_path / "stats.safetensors")
    with pytest.raises(ModelError, match=r"does not fit `arch` timm/test_resnet: \d+ of its \d+ tensors .*running_"):
        build_model(f"timm/{CNN}", 3, str(tmp_path / "stats.safetensors"))


@pytest.mark.slow  # trains an epoch, then runs eic predict
def test_a_checkpoint_of_a_model_this_timm_does_not_know_or_a_damaged_backbone_record_is_one_line(
    offline: Hub, folders: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(
        TrainConfig(
            data_dir=folders, output_dir=run, arch=f"timm/{CNN}", weights="none", input_size=32, epochs=1, folds=3,
            crossvalidation=False, gradcam_images=0, quiet=True,
        )
    )  # fmt: skip
    path = RunFolder(run).split(0).model
    state = torch.load(path, weights_only=True)
    assert state["timm"]["name"] == CNN and state["timm"]["weights_sha256"] is None  # random weights: no file
    damages = {
        "timm/a_model_of_a_later_timm: no such model in the installed timm": {"arch": "timm/a_model_of_a_later_timm"},
        "damaged checkpoint (timm.data_config": {"timm": {"name": CNN}},
        "damaged checkpoint (timm.weights_sha256": {"timm": {**state["timm"], "weights_sha256": "../x"}},
    }
    for said, damage in damages.items():
        torch.save({**state, **damage}, path)
        result = eic("predict", run, str(folders / "map"), "-o", tmp_path / "p.csv", "--quiet")
        assert_one_line_error(result, said)


@pytest.mark.parametrize("cut_off", ["HF_HUB_OFFLINE", "unreachable"])
def test_without_the_hub_or_its_cache_the_weights_are_one_line_naming_the_way_out(
    cut_off: str, folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timm_backbones, "_REACHABLE", {})  # the Hub looked for anew
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": None, "HUGGINGFACE_HUB_CACHE": None}
    if cut_off == "HF_HUB_OFFLINE":
        env |= {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": None}
    else:  # a Hub that does not answer: found out in one quick look, not huggingface_hub's 25 s of retries
        env |= {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    result = eic("embed", folders, "-o", tmp_path / "e.parquet", "--arch", f"timm/{VIT}", "--quiet", env=env)
    assert_one_line_error(result, "`hf download timm/test_vit.r160_in1k`")
    assert "--weights PATH" in result.stderr or "`weights` PATH" in result.stderr
    assert not (tmp_path / "e.parquet").exists()


def test_an_unreachable_hub_falls_back_to_its_cache(
    offline: Hub, folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timm_backbones, "_REACHABLE", {})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    said = get_arch(f"timm/{CNN}").provenance("imagenet")
    assert said is not None and said["weights_sha256"] == offline.sha256(CNN)


@pytest.mark.slow  # eic embed end to end
def test_embed_records_the_backbone_and_its_data_config(offline: Hub, folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.parquet"
    result = eic("embed", folders, "-o", out, "--arch", f"timm/{CNN}", "--input-size", "48", "--quiet")
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_name("e.embedding.json").read_text())
    assert sidecar["input_size"] == 48 and sidecar["mean"] == [0.5, 0.5, 0.5]
    assert sidecar["timm"]["data_config"]["interpolation"] == "bilinear"
    assert sidecar["timm"]["weights_sha256"] == offline.sha256(CNN)


def test_a_hub_that_answers_fills_the_cache_and_the_run_records_the_file_s_digest(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hub's side of `huggingface_hub`'s download, on loopback: a HEAD naming the commit, the ETag and the size,
    then the file."""
    data = hub.files[VIT].read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    asked: list[str] = []

    class FakeHub(QuietHandler):
        def _answer(self) -> bool:
            asked.append(f"{self.command} {self.path}")
            found = self.path in ("/", "/timm/test_vit.r160_in1k/resolve/main/model.safetensors")
            self.send_response(200 if found else 404)
            if found and self.path != "/":
                headers = {"X-Repo-Commit": REVISION, "ETag": f'"{digest}"', "Content-Length": str(len(data))}
                for header, value in headers.items():
                    self.send_header(header, value)
            else:
                self.send_header("Content-Length", "0")
            self.end_headers()
            return found and self.path != "/"

        def do_HEAD(self) -> None:
            self._answer()

        def do_GET(self) -> None:
            if self._answer():
                self.wfile.write(data)

    import huggingface_hub.constants

    monkeypatch.setattr(timm_backbones, "_REACHABLE", {})
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, when imported: another test's setting may be frozen in it.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with serving(FakeHub) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        said = get_arch(f"timm/{VIT}").provenance("imagenet")
    assert said is not None and said["weights_sha256"] == digest
    assert "GET /timm/test_vit.r160_in1k/resolve/main/model.safetensors" in asked
    cached = tmp_path / "hf" / "hub" / "models--timm--test_vit.r160_in1k" / "snapshots" / REVISION / "model.safetensors"
    assert cached.read_bytes() == data  # the next run finds it there, offline


def test_a_probe_on_embeddings_of_other_weights_under_the_same_name_is_refused(
    offline: Hub, folders: Path, tmp_path: Path
) -> None:
    """A weights file replaced (or a Hub snapshot moved) after the table was embedded: the run's backbone would not
    be the one its head was fitted on. The table's digest of its weights is held against the run's."""
    import timm

    weights = tmp_path / "w.safetensors"
    torch.manual_seed(1)
    save_file(timm.create_model(CNN, pretrained=False).state_dict(), weights)
    table = tmp_path / "e.parquet"
    common = ["--arch", f"timm/{CNN}", "--weights", weights, "--input-size", "48", "--quiet"]
    assert eic("embed", folders, "-o", table, *common).exit_code == 0
    probe = ["--method", "linear-probe", "--embeddings", table, "--folds", "3", *common]
    same = eic("train", folders, "-o", tmp_path / "same", *probe)
    assert same.exit_code == 0, same.stderr  # the same weights: taken
    torch.manual_seed(2)
    save_file(timm.create_model(CNN, pretrained=False).state_dict(), weights)
    result = eic("train", folders, "-o", tmp_path / "other", *probe)
    assert_one_line_error(result, "was embedded with another backbone (weights_sha256: ")
    assert not (tmp_path / "other").exists()
