"""The supervised ceiling: label targets, the exact CAM, training on labels, and its retrieval,
grounding and AUROC on small phantom datasets."""
from __future__ import annotations

import math

import pytest
import torch

from medalign_lite.experiments.ceiling import (
    LabelCeiling,
    build_ceiling,
    ceiling_auroc,
    ceiling_class_confusion,
    ceiling_grounding,
    ceiling_retrieval,
    label_targets,
    train_ceiling,
)
from medalign_lite.experiments.contrastive import recipe_from_config

from ..methods.fakes import FakeImageEncoder


def test_label_targets_follow_the_uncertain_policy():
    labels = torch.tensor([[1.0, 0.0, -1.0, float("nan")]])
    for policy, target, valid in (("ignore", [1, 0, 0, 0], [1, 1, 0, 0]), ("zero", [1, 0, 0, 0], [1, 1, 1, 0]),
                                  ("one", [1, 0, 1, 0], [1, 1, 1, 0])):
        t, v = label_targets(labels, policy)
        assert t.tolist() == [target] and v.int().tolist() == [valid], policy
    with pytest.raises(ValueError, match="uncertain"):
        label_targets(labels, "half")


def test_local_logits_are_the_mean_of_the_exact_cam_and_the_loss_matches_a_loop():
    torch.manual_seed(0)
    model = LabelCeiling(FakeImageEncoder(), n_labels=3)
    images = torch.randn(4, 1, 16, 16)
    cam, grid = model.cam(images)
    assert cam.shape == (4, 3, grid[0] * grid[1])
    torch.testing.assert_close(model.local_logits(images), cam.mean(-1))
    f = model.image_encoder(images)                                  # the map really is w_cᵀ v_p + b_c
    torch.testing.assert_close(cam[1, 2], f.patches[1] @ model.head.weight[2] + model.head.bias[2])
    torch.testing.assert_close(model.logits(images), f.pooled @ model.head_global.weight.T + model.head_global.bias)

    class B:  # a batch: images and labels
        pass

    b = B()
    b.images, b.labels = images, torch.tensor([[1.0, 0, float("nan")], [-1, 1, 0], [0, 0, 0], [1, 1, 1]])
    loss = model(b)["loss"]
    expected = 0.0
    for z in (model.logits(images).detach(), model.local_logits(images).detach()):  # each head's mean BCE
        terms = []
        for i in range(4):  # the plain reference: one labelled entry at a time
            for c in range(3):
                y = float(b.labels[i, c])
                if y in (0.0, 1.0):
                    p = torch.sigmoid(z[i, c])
                    terms.append(-(y * torch.log(p) + (1 - y) * torch.log(1 - p)))
        expected += torch.stack(terms).mean().item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    import os

    from medalign_lite.data import ensure_dataset

    old = os.environ.get("MEDALIGN_DATA")
    os.environ["MEDALIGN_DATA"] = str(tmp_path_factory.mktemp("ceiling_data"))
    try:
        train = ensure_dataset("iu-phantom", size=64, limit=48, seed=0, progress=False)
        gallery = ensure_dataset("phantom-5x200", size=64, limit=50, seed=0, progress=False)
    finally:
        if old is None:
            os.environ.pop("MEDALIGN_DATA")
        else:
            os.environ["MEDALIGN_DATA"] = old
    return train, gallery


def test_the_ceiling_trains_on_labels_and_is_scored_like_the_methods(phantoms, tmp_path):
    from medalign_lite.data.dataset import ManifestDataset

    train, gallery = phantoms
    recipe = recipe_from_config("aga_tiny", ["vision.image_size=64", "train.batch_size=8", "train.stages.0.max_steps=3"],
                                device="cpu")
    model = build_ceiling(recipe)
    fresh = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    res = train_ceiling(model, train, recipe, tmp_path / "run")
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert res.done and losses and all(math.isfinite(v) for v in losses)
    assert max(r["global_step"] for r in res.history) == 3  # the recipe's budget
    assert any(not torch.equal(fresh[k], v) for k, v in model.image_encoder.state_dict().items())
    # same initial weights as the method's own image encoder (the same seed and vision config)
    from medalign_lite.experiments.contrastive import build_model

    method = build_model(recipe)
    assert all(torch.equal(fresh[k], v) for k, v in method.image_encoder.state_dict().items())

    ds = ManifestDataset(gallery, split=None, image_size=64)
    r = ceiling_retrieval(model, ds, ks=(1, 5))
    assert set(r) == {"i2i_P@1", "i2i_P@5"} and all(0 <= v <= 1 for v in r.values())
    g = ceiling_grounding(model, train, 64, split=None)
    assert g["n_phrases"] > 0 and g["n_without_observation"] >= 0
    assert 0 <= g["pointing_game"] <= 1 and 0 <= g["mask_auroc"] <= 1
    from medalign_lite.data.findings import CATALOGUE

    assert all(CATALOGUE[k].chexpert for k in g["per_kind"])  # only findings with an observation
    au = ceiling_auroc(model, ManifestDataset(train, split=None, image_size=64))
    assert set(au) >= {"Cardiomegaly", "Pleural Effusion"}
    assert all(math.isnan(v) or 0 <= v <= 1 for v in au.values())


def test_image_to_image_retrieval_leaves_each_query_out():
    """Two identical images per pair, each of the other class: with the query itself left out its
    nearest image is its twin of the other class, so P@1 is 0; counting the query as its own
    neighbour would score at least the queries that come first in a tie."""
    import pandas as pd

    class Gallery(torch.utils.data.Dataset):
        def __init__(self):
            self.df = pd.DataFrame({"class": ["a", "b", "a", "b"]})
            self.imgs = [torch.zeros(1, 16, 16), torch.zeros(1, 16, 16), torch.ones(1, 16, 16), torch.ones(1, 16, 16)]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"study_id": str(i), "text": "", "labels": torch.zeros(14), "frontal": self.imgs[i]}

    torch.manual_seed(0)
    model = LabelCeiling(FakeImageEncoder())
    assert ceiling_retrieval(model, Gallery(), ks=(1,))["i2i_P@1"] == 0.0


class _IndexedGallery(torch.utils.data.Dataset):
    """Image i is filled with the value i, so that a fake model can look its logits up."""

    def __init__(self, classes):
        import pandas as pd

        self.df = pd.DataFrame({"class": classes})

    def __len__(self):
        return len(self.df)

    def __getitem__(self, i):
        return {"study_id": str(i), "text": "", "labels": torch.zeros(14), "frontal": torch.full((1, 8, 8), float(i))}


class _TableCeiling(torch.nn.Module):
    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def logits(self, images):
        return self.table[images[:, 0, 0, 0].long()]


def test_ceiling_class_confusion_matches_a_per_image_loop():
    from medalign_lite.data.findings import CHEXPERT_LABELS

    classes = ["Edema", "Cardiomegaly", "Pleural Effusion", "Edema", "Cardiomegaly", "Edema", "Pleural Effusion"]
    table = torch.randn(len(classes), 14, generator=torch.Generator().manual_seed(3))
    got_classes, conf = ceiling_class_confusion(_TableCeiling(table), _IndexedGallery(classes), batch_size=3)
    assert got_classes == ["Cardiomegaly", "Edema", "Pleural Effusion"]
    want = torch.zeros(3, 3)
    for i, c in enumerate(classes):  # the largest logit among the gallery's classes only
        scores = [float(table[i, CHEXPERT_LABELS.index(k)]) for k in got_classes]
        want[got_classes.index(c), scores.index(max(scores))] += 1
    want /= want.sum(1, keepdim=True)
    assert conf.shape == (3, 3)
    assert torch.allclose(torch.as_tensor(conf, dtype=torch.float32), want)
    with pytest.raises(ValueError, match="no CheXpert observation"):
        ceiling_class_confusion(_TableCeiling(table[:2]), _IndexedGallery(["Edema", "normal"]))
