"""Model zoo: every entry trains a step on tiny inputs; weights load offline, verified; freezing trains the head only."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision

from engine.errors import UserError
from engine.models import MODELS, build_model, count_parameters, get_spec, models_for, parameter_count
from engine.models import weights as pretrained
from engine.models.dilated import ContextModule, DilatedContextNet

torch.set_num_threads(1)

NO_IMAGENET = ["mlp", "lenet5", "xception_small", "fcn_simple", "unet", "dilated_context"]


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path):
    """Any attempt to fetch weights fails the test, and the torch cache is an empty folder."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model tried to download weights")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _input_size(spec) -> int:
    # Segmentation at an odd size proves the output is brought back to the input's exact H x W.
    size = max(spec.min_size, 32)
    return size + 1 if spec.task == "segmentation" else size


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("task,name", list(MODELS), ids=[f"{task[:3]}-{name}" for task, name in MODELS])
def test_entry_trains_one_step(task, name, in_channels):
    spec = get_spec(name, task)
    torch.manual_seed(0)
    model = build_model(name, in_channels, 3, task=task).train()
    size = _input_size(spec)
    x = torch.randn(2, in_channels, size, size)   # batch 2 in train mode: the smallest BatchNorm can take
    out = model(x)
    expected = (2, 3) if spec.task == "classification" else (2, 3, size, size)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == expected
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_metadata_is_complete():
    for spec in MODELS.values():
        assert spec.note.strip() and "\n" not in spec.note and spec.title.strip()
        assert spec.task in ("classification", "segmentation")
        assert spec.default_size >= spec.min_size
        assert spec.head, f"{spec.name} needs a head for 'freeze backbone'"
        names = [n for n, _ in torch.nn.Module.named_parameters(_meta_build(spec.name, spec.task))]
        for head in spec.head:
            assert any(n.startswith(head + ".") for n in names), f"{spec.name}: head {head} matches no parameter"
        if spec.pretrained:
            assert pretrained.imagenet_urls(pretrained.imagenet_source(spec, spec.default_options()))
    assert [s.name for s in models_for("classification")][:3] == ["mlp", "lenet5", "alexnet"]
    assert [s.name for s in models_for("segmentation")][:3] == ["mlp", "fcn_simple", "unet"]


def _meta_build(name, task=None):
    with torch.device("meta"):
        return build_model(name, 1, 2, task=task)


# ---------------------------------------------------------------- the MLP baseline serves both tasks

def test_mlp_is_found_for_both_tasks():
    assert get_spec("mlp", "classification").task == "classification"
    assert get_spec("mlp", "segmentation").task == "segmentation"
    assert get_spec("mlp").task == "classification"          # without a task: the first registered
    assert get_spec("unet", "segmentation").name == "unet"
    with pytest.raises(UserError, match="U-Net is a segmentation model, but this dataset is for classification"):
        get_spec("unet", "classification")
    assert parameter_count("mlp", task="segmentation") == count_parameters(build_model("mlp", 1, 2,
                                                                                       task="segmentation"))
    assert parameter_count("mlp", task="segmentation") != parameter_count("mlp", task="classification")


@pytest.mark.parametrize("size", [(32, 32), (48, 37)])
def test_segmentation_mlp_gives_a_mask_of_the_input_size(size):
    torch.manual_seed(0)
    model = build_model("mlp", 1, 2, task="segmentation", options={"hidden": 32}).train()
    x = torch.randn(3, 1, *size).contiguous(memory_format=torch.channels_last)
    out = model(x)
    assert out.shape == (3, 2, *size)
    torch.nn.functional.cross_entropy(out, torch.randint(0, 2, (3, *size))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    frozen = build_model("mlp", 1, 2, task="segmentation", freeze_backbone=True)
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}


def test_unknown_model_and_bad_options_are_user_errors():
    with pytest.raises(UserError, match="Unknown model"):
        build_model("resnet9000", 1, 2)
    with pytest.raises(UserError, match="no setting"):
        build_model("unet", 1, 2, options={"depht": 3})
    with pytest.raises(UserError, match="between 2 and 5"):
        build_model("unet", 1, 2, options={"depth": 7})
    with pytest.raises(UserError, match="one of"):
        build_model("unet", 1, 2, options={"up_mode": "nearest"})
    with pytest.raises(UserError):
        build_model("resnet18", 0, 2)


def test_parameter_count_matches_a_real_build():
    for name in ["lenet5", "resnet18", "unet", "deeplabv3"]:
        assert parameter_count(name) == count_parameters(build_model(name, 1, 2))
    assert parameter_count("unet", options={"base": 32}) > 3 * parameter_count("unet")


@pytest.mark.parametrize("options", [
    {"depth": 2, "base": 8, "batchnorm": False, "up_mode": "bilinear"},
    {"depth": 5, "base": 8, "dropout": 0.2},
    {"depth": 3, "base": 8, "up_mode": "bilinear", "dropout": 0},   # JSON may send 0 for 0.0
])
def test_unet_options_keep_any_size(options):
    model = build_model("unet", 1, 2, options=options).train()
    for size in (37, 50):
        assert model(torch.randn(2, 1, size, size + 3)).shape == (2, 2, size, size + 3)


@pytest.mark.filterwarnings("ignore::FutureWarning")   # torch.jit.script is deprecated but still what export uses
@pytest.mark.parametrize("name", ["unet", "googlenet", "dilated_context"])
def test_models_script_to_the_same_logits(name):
    model = build_model(name, 1, 2).eval()
    x = torch.randn(1, 1, 45, 45)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)


# ---------------------------------------------------------------- dilated context network

def test_context_module_receptive_field_is_131_px():
    assert ContextModule(4).receptive_field() == 131
    assert _empirical_receptive_field(ContextModule(2), channels=2) == 131
    # The front-end's two 3x3 convs add 2 px each.
    assert _empirical_receptive_field(DilatedContextNet(1, 1, width=2), channels=1) == 135


@torch.no_grad()
def _positive_weights(model):
    # With all weights positive and a positive input, no ReLU ever zeroes a path, so every input pixel that can
    # reach the centre output has a non-zero gradient: the gradient's footprint is exactly the receptive field.
    for p in model.parameters():
        p.fill_(0.1)


def _empirical_receptive_field(model, channels: int, size: int = 161) -> int:
    _positive_weights(model)
    model.eval()
    x = torch.ones(1, channels, size, size, requires_grad=True)
    model(x)[0, 0, size // 2, size // 2].backward()
    rows = (x.grad.abs().sum(dim=(0, 1, 3)) > 0).nonzero()
    return int(rows.max() - rows.min() + 1)


# ---------------------------------------------------------------- ImageNet weights from the local cache

def _imagenet_file(tmp_path: Path, monkeypatch, state: dict, stem: str = "resnet18", hash_part: str | None = None):
    """Save `state` into $TORCH_HOME/hub/checkpoints as torchvision would name it, and point the entry at it."""
    folder = pretrained.checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    scratch = tmp_path / "scratch.pth"
    torch.save(state, scratch)
    digest = hashlib.sha256(scratch.read_bytes()).hexdigest()
    name = f"{stem}-{hash_part or digest[:8]}.pth"
    scratch.rename(folder / name)
    monkeypatch.setattr(pretrained, "imagenet_urls", lambda source: [f"https://download.pytorch.org/models/{name}"])
    return folder / name


def _resnet18_imagenet_state():
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.randn_like(state["conv1.weight"])
    state["layer1.0.conv1.weight"].fill_(0.125)
    return state


def test_imagenet_weights_load_from_cache(tmp_path, monkeypatch):
    state = _resnet18_imagenet_state()
    _imagenet_file(tmp_path, monkeypatch, state)
    model = build_model("resnet18", 3, 2, pretrained="imagenet")
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    report = model.weights_report
    assert "fc.weight" in report.skipped and "fc.weight" in report.untouched   # 1000-class head left fresh
    assert model.fc.weight.shape == (2, 512)


def test_grayscale_model_gets_the_rgb_sum_of_the_first_conv(tmp_path, monkeypatch):
    state = _resnet18_imagenet_state()
    _imagenet_file(tmp_path, monkeypatch, state)
    model = build_model("resnet18", 1, 2, pretrained="imagenet")
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    # Summing makes the grey model see a grey image exactly as the RGB model sees it copied to R, G and B.
    rgb = build_model("resnet18", 3, 2, pretrained="imagenet")
    grey = torch.rand(1, 1, 32, 32)
    assert torch.allclose(model.conv1(grey), rgb.conv1(grey.expand(1, 3, 32, 32)), atol=1e-5)


def test_wrong_hash_is_refused(tmp_path, monkeypatch):
    _imagenet_file(tmp_path, monkeypatch, _resnet18_imagenet_state(), hash_part="0badc0de")
    with pytest.raises(UserError, match="0badc0de.*download it again"):
        build_model("resnet18", 3, 2, pretrained="imagenet")


def test_missing_file_says_what_to_download_and_where():
    with pytest.raises(UserError) as err:
        build_model("resnet18", 1, 2, pretrained="imagenet")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert str(pretrained.checkpoint_dir()) in message


@pytest.mark.parametrize("name", NO_IMAGENET)
def test_models_without_imagenet_weights_say_so(name):
    with pytest.raises(UserError, match="has no ImageNet weights; train from scratch or supply a weights file"):
        build_model(name, 1, 2, pretrained="imagenet")


@pytest.mark.parametrize("name", ["lraspp", "deeplabv3"])
def test_segmentation_backbone_gets_imagenet_weights(name, tmp_path, monkeypatch):
    state = torchvision.models.mobilenet_v3_large(weights=None).state_dict()
    state["features.0.0.weight"] = torch.randn_like(state["features.0.0.weight"])
    state["features.16.0.weight"].fill_(0.5)
    _imagenet_file(tmp_path, monkeypatch, state, stem="mobilenet_v3_large")
    model = build_model(name, 1, 2, pretrained="imagenet")
    backbone = model.net.backbone
    assert torch.allclose(backbone["0"][0].weight, state["features.0.0.weight"].sum(1, keepdim=True))
    assert torch.equal(backbone["16"][0].weight, state["features.16.0.weight"])
    assert not any(key.startswith("net.backbone") for key in model.weights_report.untouched)


def test_densenet_legacy_key_names_are_mapped(tmp_path, monkeypatch):
    state = torchvision.models.densenet121(weights=None).state_dict()
    legacy = {key.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for key, v in state.items()
              if not key.endswith("num_batches_tracked")}   # the old files predate this buffer
    assert legacy.keys() != state.keys()
    _imagenet_file(tmp_path, monkeypatch, legacy, stem="densenet121")
    report = build_model("densenet121", 3, 2, pretrained="imagenet").weights_report
    assert [k for k in report.untouched if "num_batches_tracked" not in k] == ["classifier.weight", "classifier.bias"]


# ---------------------------------------------------------------- user weight files and freezing

def test_user_file_loads_with_weights_only(tmp_path, monkeypatch):
    source = build_model("resnet18", 1, 5)
    path = tmp_path / "mine.pt"
    torch.save({"model": {"module." + k: v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)
    monkeypatch.setattr(torch, "load", spy)
    model = build_model("resnet18", 1, 2, pretrained=str(path))
    assert seen.get("weights_only") is True
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert set(model.weights_report.skipped) == {"module.fc.weight", "module.fc.bias"}   # 5 classes vs 2


class NotWeights:
    pass


def test_user_file_refuses_pickled_objects_and_foreign_weights(tmp_path):
    pickled = tmp_path / "object.pt"
    torch.save({"state_dict": {"x": NotWeights()}}, pickled)
    with pytest.raises(UserError, match="Could not read weights"):
        build_model("resnet18", 1, 2, pretrained=str(pickled))
    foreign = tmp_path / "unet.pt"
    torch.save(build_model("unet", 1, 2).state_dict(), foreign)
    with pytest.raises(UserError, match="None of the weights"):
        build_model("resnet18", 1, 2, pretrained=str(foreign))
    with pytest.raises(UserError, match="does not exist"):
        build_model("resnet18", 1, 2, pretrained=str(tmp_path / "absent.pt"))


def test_freeze_backbone_trains_only_the_head(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(build_model("resnet18", 1, 2).state_dict(), path)
    model = build_model("resnet18", 1, 2, pretrained=str(path), freeze_backbone=True)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 32, 32)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias"}   # BatchNorm statistics of the frozen backbone included
    # A checkpoint of the frozen model loads into a plain build (same keys).
    build_model("resnet18", 1, 2).load_state_dict(model.state_dict())


def test_freeze_backbone_on_a_segmentation_model_keeps_the_decoder_trainable():
    model = build_model("unet", 1, 2, freeze_backbone=True)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"up", "head"}
    assert not any(p.requires_grad for p in model.down.parameters())
