"""modelling/explain.py: Grad-CAM heatmaps from one pass, and the text on the figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from europeana_imgcls.modelling.checkpoint import load_checkpoint, model_from_checkpoint


def test_a_record_id_on_a_figure_is_whole_or_cut_in_the_middle() -> None:
    from europeana_imgcls.modelling.explain import shortened, wrapped

    record = "/2048128/archaeological_site_permission_00001"
    assert wrapped(record, 34).replace("\n", "") == record  # two lines hold it whole
    long = "/91627/SMVK_EM_fotografi_" + "x" * 90 + "_END"
    short = wrapped(long, 30)
    assert short.startswith("/91627/SMVK") and short.endswith("_END") and "…" in short
    assert len(short.splitlines()) == 2 and all(len(line) <= 30 for line in short.splitlines())
    assert shortened("abcdef", 6) == "abcdef" and shortened("abcdefgh", 5) == "ab…gh"


def test_gradcam_hooks_are_released(run) -> None:
    from europeana_imgcls.modelling.explain import heatmaps
    from europeana_imgcls.modelling.models import get_arch

    out, _ = run
    model = model_from_checkpoint(load_checkpoint(out / "split_0" / "model.pt"))
    layer = get_arch("tiny").cam_layer(model)
    for _ in range(3):
        maps = heatmaps(model, layer, torch.randn(2, 3, 32, 32), [0, 1])
        assert maps.shape == (2, 32, 32)
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "scorecam", "eigencam"])
def test_heatmaps_are_the_grad_cam_packages_from_one_pass(run, method: str) -> None:
    """eic's heatmaps back-propagate from the CAM layer only, and draw every target from one forward pass; each
    heatmap is still the one the grad-cam package computes with its own forward and full backward pass."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from europeana_imgcls.modelling.explain import cam_class, cam_session, heatmaps
    from europeana_imgcls.modelling.models import get_arch

    out, _ = run
    model = model_from_checkpoint(load_checkpoint(out / "split_0" / "model.pt"))
    layer = get_arch("tiny").cam_layer(model)
    batch = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = {}
    for targets in ([0, 1, 2], [2, 0, 1]):
        with cam_class(method)(model=model, target_layers=[layer]) as cam:
            expected[tuple(targets)] = cam(input_tensor=batch, targets=[ClassifierOutputTarget(t) for t in targets])
    np.testing.assert_allclose(heatmaps(model, layer, batch, [0, 1, 2], method), expected[(0, 1, 2)], atol=1e-5)
    with cam_session(model, layer, method) as session:
        logits = session.forward(batch)
        for targets, maps in expected.items():
            np.testing.assert_allclose(session.heatmaps(list(targets)), maps, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(batch))
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was
