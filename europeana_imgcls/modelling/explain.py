"""Grad-CAM heatmaps with the grad-cam package; hooks are released after every use."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch import nn

from ..core.config import CamMethod
from ..core.errors import ConfigError

Reshape = Callable[[torch.Tensor], torch.Tensor]

# The names are the settings' (config.CamMethod, checked before torch is imported); the grad-cam package's classes
# for them are named once, here, in the same order (a name without its class fails at import; the tests draw a
# heatmap with each class). The package is imported with the first heatmap, not with this module: it brings
# matplotlib's pyplot and torchvision (~2 s of every start of train, predict or evaluate), which a run that draws
# no heatmap never uses.
CAM_METHODS = dict(
    zip(
        get_args(CamMethod),
        ("GradCAM", "GradCAMPlusPlus", "HiResCAM", "XGradCAM", "LayerCAM", "ScoreCAM", "EigenCAM"),
        strict=True,
    )
)


def cam_class(method: str) -> Any:
    """The grad-cam package's class for ``method`` (a name of ``CAM_METHODS``)."""
    if method not in CAM_METHODS:
        raise ConfigError(f"unknown CAM method '{method}'; choose one of: {', '.join(CAM_METHODS)}")
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, CAM_METHODS[method])


def heatmaps(
    model: nn.Module,
    layer: nn.Module,
    batch: torch.Tensor,
    targets: Sequence[int],
    method: str = "gradcam",
    reshape: Reshape | None = None,
) -> np.ndarray:
    """One heatmap in [0, 1] per image of ``batch`` for its class in ``targets`` (B x H x W)."""
    with cam_session(model, layer, method, reshape) as session:
        session.forward(batch)
        return session.heatmaps(targets)


class CamSession:
    """Heatmaps of one model at one layer, a batch at a time: ``forward`` runs the batch once (and returns the
    model's logits, which predict labels with), then ``heatmaps`` draws any number of targets from that one pass,
    one backward pass through the layers above ``layer`` each. The weighting (Grad-CAM, Grad-CAM++, ...) is the
    grad-cam package's own, as its ``cam(...)`` calls it."""

    def __init__(self, cam: Any) -> None:
        self.cam = cam
        self.batch: torch.Tensor | None = None
        self.outputs: torch.Tensor | None = None

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.batch = batch
        self.outputs = self.cam.activations_and_grads(batch)
        return self.outputs.detach()

    def heatmaps(self, targets: Sequence[int]) -> np.ndarray:
        """One heatmap per image of the last batch, for its class in ``targets``."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        assert self.batch is not None and self.outputs is not None, "forward a batch first"
        wanted = [ClassifierOutputTarget(int(t)) for t in targets]
        if self.cam.uses_gradients:
            self.cam.activations_and_grads.gradients = []
            # An image's score depends on that image alone (eval mode), so one backward pass of the sum gives
            # every image the gradient of its own target.
            score = sum(target(output) for target, output in zip(wanted, self.outputs, strict=True))
            assert isinstance(score, torch.Tensor)
            score.backward(retain_graph=True)
        return self.cam.aggregate_multi_layers(self.cam.compute_cam_per_layer(self.batch, wanted, False))


@contextmanager
def cam_session(
    model: nn.Module, layer: nn.Module, method: str = "gradcam", reshape: Reshape | None = None
) -> Iterator[CamSession]:
    """A ``CamSession`` on ``model`` (in eval mode while it lasts); its hooks are gone when it ends. ``reshape``
    turns ``layer``'s output into batch x channels x height x width where it is not (a transformer's tokens)."""
    cam = cam_class(method)
    was_training = model.training
    model.eval()
    try:
        # The CAM's context manager removes the forward and backward hooks it added, whatever happens.
        with (
            _backward_from(model, layer),
            cam(model=model, target_layers=[layer], reshape_transform=reshape) as session,
        ):
            yield CamSession(session)
    finally:
        model.train(was_training)


@contextmanager
def _backward_from(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Grad-CAM needs the gradient of a class score at ``layer``'s output, nothing below it: no parameter
    takes a gradient and ``layer``'s output becomes the graph's leaf, so the forward pass up to it builds no
    graph and the backward pass runs through the layers after it alone (a fifth of a resnet18's cost, not a
    whole training step's). The heatmaps are the same."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    # Registered before the CAM's own hooks, so theirs see (and hook the gradient of) the leaf.
    hook = layer.register_forward_hook(lambda _module, _inputs, output: output.detach().requires_grad_(True))
    try:
        yield
    finally:
        hook.remove()
        for parameter in frozen:
            parameter.requires_grad_(True)


def overlay(image: Image.Image, heatmap: np.ndarray, strength: float = 0.6) -> Image.Image:
    """The heatmap laid over the image, each pixel as opaque as the heat there (at most ``strength``), so
    what the model looked at is coloured and everything else stays the picture it was."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = (
        np.asarray(
            Image.fromarray((np.clip(heatmap, 0, 1) * 255).astype(np.uint8)).resize(image.size), dtype=np.float32
        )
        / 255.0
    )
    colour = _JET[(heat * 255).astype(np.uint8)]
    alpha = (strength * heat)[..., None]
    return Image.fromarray((rgb * (1 - alpha) + colour * alpha).astype(np.uint8))


def _jet() -> np.ndarray:
    """The jet colour map as a 256 x 3 table (blue, cyan, yellow, red), without importing matplotlib."""
    x = np.linspace(0, 1, 256)
    channels = [np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)]
    return (np.stack(channels, axis=1) * 255).astype(np.float32)


_JET = _jet()
TILE = 256
HEADER, CAPTION, BAR = 30, 24, 56


def figure(picture: Image.Image, maps: Sequence[np.ndarray], captions: Sequence[str], title: str) -> Image.Image:
    """A readable Grad-CAM figure composed with Pillow (fast: no plotting library): the title (record or
    file), the image at its own aspect ratio (the model saw it squared; each heatmap is stretched back), one
    semi-transparent heatmap per class with its caption, and a colour bar."""
    tile = ImageOps.contain(picture.convert("RGB"), (TILE, TILE), Image.Resampling.BICUBIC)
    panels = [tile, *(overlay(tile, m) for m in maps)]
    step = max(tile.width, 120) + 8  # room for a caption under a narrow image
    width = len(panels) * step + BAR
    canvas = Image.new("RGB", (width, HEADER + TILE + CAPTION), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = _font(15), _font(13)
    draw.text((6, 7), shortened(title, max(24, (width - 12) // 8)), fill="black", font=font)
    for n, (panel, caption) in enumerate(zip(panels, ["image", *captions], strict=True)):
        x = 4 + n * step
        canvas.paste(panel, (x, HEADER + (TILE - tile.height) // 2))
        draw.text((x + 2, HEADER + TILE + 4), shortened(caption, max(12, step // 8)), fill="black", font=small)
    bar = np.linspace(255, 0, TILE).astype(np.uint8)
    strip = Image.fromarray(_JET[bar][:, None, :].repeat(14, axis=1).astype(np.uint8))
    x = width - BAR + 8
    canvas.paste(strip, (x, HEADER))
    draw.text((x + 18, HEADER - 2), "1", fill="black", font=small)
    draw.text((x + 18, HEADER + TILE - 14), "0", fill="black", font=small)
    return canvas


def shortened(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut in the middle: a record ID keeps its dataset (the start)
    and its own part's end, which is what tells two records apart."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


def wrapped(text: str, width: int, lines: int = 2) -> str:
    """``text`` in up to ``lines`` lines of ``width`` characters (for a figure's label), the last line
    ``shortened`` if it still does not fit: nothing is cut from the left."""
    parts = [text[i : i + width] for i in range(0, len(text), width)]
    if len(parts) <= lines:
        return "\n".join(parts)
    return "\n".join([*parts[: lines - 1], shortened(text[width * (lines - 1) :], width)])


def save_figure(image: Image.Image, path: Path, title: str) -> None:
    """PNG (fast compression) with the title as its text chunk, or JPEG (a tenth of the PNG's time: what keeps
    predict's figures at the model's pace) with the title as its comment; written atomically."""
    from PIL.PngImagePlugin import PngInfo

    from ..core.tables import atomic_path

    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".png":
            info = PngInfo()
            info.add_text("Title", title)
            image.save(tmp, "PNG", compress_level=1, pnginfo=info)
        else:
            image.save(tmp, "JPEG", quality=90, comment=title.encode("utf-8"))


@functools.cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()
