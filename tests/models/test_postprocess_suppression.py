"""PostProcessor's suppression options (issue 15): Soft-NMS and IoU-guided NMS inside the
detector's post-processing, by hand and against the ops on the same candidates; hard NMS
unchanged."""
import math

import pytest
import torch

from iadet.models.box_coder import DeltaBoxCoder
from iadet.models.postprocess import PostProcessor
from iadet.ops.boxes import clip_boxes
from iadet.ops.nms import batched_nms
from iadet.ops.soft_nms import iou_guided_nms, soft_nms


def _logit(x):
    return math.log(x / (1 - x))


def _hand_case():
    # anchors 0 and 1 overlap with IoU 10*8 / (100 + 100 - 80) = 2/3; anchor 2 is apart.
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    cls = torch.full((1, 3, 2), _logit(0.001))
    cls[0, 0, 0], cls[0, 1, 0], cls[0, 2, 1] = _logit(0.9), _logit(0.8), _logit(0.3)
    iou = torch.tensor([[_logit(0.6), _logit(0.9), _logit(0.5)]])
    out = {"cls_logits": cls, "bbox_deltas": torch.zeros(1, 3, 4), "iou_logits": iou, "num_anchors_per_level": [3]}
    return out, anchors


def test_soft_nms_decays_instead_of_removing():
    out, anchors = _hand_case()
    linear = PostProcessor(DeltaBoxCoder(), alpha=1.0, nms="soft_linear", nms_iou=0.5)(out, anchors, [(100, 100)])[0]
    # anchor 1 (p 0.8) overlaps the kept anchor 0 with IoU 2/3 >= 0.5: 0.8 * (1 - 2/3)
    torch.testing.assert_close(linear["scores"], torch.tensor([0.9, 0.3, 0.8 / 3]))
    assert linear["labels"].tolist() == [0, 1, 0]
    torch.testing.assert_close(linear["cls_scores"], torch.tensor([0.9, 0.3, 0.8]))
    gauss = PostProcessor(DeltaBoxCoder(), alpha=1.0, nms="soft_gaussian", soft_nms_sigma=0.5)(
        out, anchors, [(100, 100)])[0]
    torch.testing.assert_close(gauss["scores"], torch.tensor([0.9, 0.8 * math.exp(-(2 / 3) ** 2 / 0.5), 0.3]))
    dropped = PostProcessor(DeltaBoxCoder(), alpha=1.0, nms="soft_linear", soft_nms_min_score=0.28)(
        out, anchors, [(100, 100)])[0]
    assert dropped["scores"].tolist() == pytest.approx([0.9, 0.3])  # 0.8 / 3 < 0.28 is dropped


def test_iou_guided_nms_keeps_the_best_localised_box_with_its_clusters_best_score():
    out, anchors = _hand_case()
    det = PostProcessor(DeltaBoxCoder(), alpha=1.0, nms="iou_guided")(out, anchors, [(100, 100)])[0]
    # visited by predicted IoU: anchor 1 (0.9) first; it suppresses anchor 0 and takes its p 0.9
    torch.testing.assert_close(det["boxes"][0], anchors[1])
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.3]))
    torch.testing.assert_close(det["ious"], torch.tensor([0.9, 0.5]))
    no_branch = {k: v for k, v in out.items() if k != "iou_logits"}
    with pytest.raises(ValueError, match="IoU branch"):
        PostProcessor(DeltaBoxCoder(), nms="iou_guided")(no_branch, anchors, [(100, 100)])


def _random_batch(g, n=2, m=300, c=5):
    xy = torch.rand(m, 2, generator=g) * 80
    anchors = torch.cat([xy, xy + 8 + torch.rand(m, 2, generator=g) * 30], 1)
    out = {"cls_logits": torch.randn(n, m, c, generator=g) - 1, "bbox_deltas": torch.randn(n, m, 4, generator=g) * 0.1,
           "iou_logits": torch.randn(n, m, generator=g), "num_anchors_per_level": [200, 100]}
    return out, anchors


@pytest.mark.parametrize("nms", ["hard", "soft_linear", "soft_gaussian", "iou_guided"])
def test_each_suppression_equals_its_op_on_the_same_candidates(nms):
    g = torch.Generator().manual_seed(0)
    out, anchors = _random_batch(g)
    post = PostProcessor(DeltaBoxCoder(), alpha=0.5, nms=nms, max_det=100)
    dets = post(out, anchors, [(120, 120), (100, 110)])
    img, anchor, label, score = post.select_candidates(out["cls_logits"], out["iou_logits"].sigmoid(), 0.5,
                                                       out["num_anchors_per_level"])
    sizes = torch.tensor([(120, 120), (100, 110)], dtype=torch.float32)
    boxes = clip_boxes(post.box_coder.decode(out["bbox_deltas"][img, anchor], anchors[anchor]),
                       sizes[img, 0], sizes[img, 1])
    groups = img * 5 + label
    if nms == "hard":
        keep, new = batched_nms(boxes, score, groups, 0.5), score
    elif nms == "iou_guided":
        keep, kept_scores = iou_guided_nms(boxes, score, out["iou_logits"].sigmoid()[img, anchor], groups, 0.5)
        new = score.index_put((keep,), kept_scores)
    else:
        keep, kept_scores = soft_nms(boxes, score, groups, method=nms[5:], iou_threshold=0.5, sigma=0.5,
                                     min_score=0.05)
        new = score.index_put((keep,), kept_scores)
    for i, det in enumerate(dets):
        mine = keep[img[keep] == i][:100]  # the first max_det by final S
        torch.testing.assert_close(det["scores"], new[mine])
        torch.testing.assert_close(det["boxes"], boxes[mine])
        assert torch.equal(det["labels"], label[mine])
        assert (det["scores"][1:] <= det["scores"][:-1]).all()
