"""
Fidelity: fcos-d2's targets, losses and detections under the paper's default config and
under each source's compat config, against per-location references written from the
paper (sec. 3.2) and from each source's rules (plain loops, float64, no vectorisation):

- paper: m_{i-1} <= max(l, t, r, b) <= m_i, minimal area w * h (ties: the first box),
  -log IoU, everything / number of positives;
- AdelaiDet (adet/modeling/fcos/fcos_outputs.py, adet/utils/comm.py): ranges [-1, 64], ...,
  [512, 1e8] with >= and <=, center sampling with the sub-box clipped to the box, IoU
  (I + 1) / (U + 1) on stride-normalised distances, GIoU without eps, box loss weighted by
  centerness; no clipping before NMS;
- the original FCOS (fcos_core/modeling/rpn/fcos/loss.py, inference.py,
  fcos_core/layers/iou_loss.py): AdelaiDet's ranges, BoxList areas (w + 1) * (h + 1), IoU
  (I + 1) / (U + 1) in the regression targets' units, GIoU with 1e-7 on the enclosing area;
  clipping to [0, w - 1] x [0, h - 1] and NMS with +1 widths.

The inputs are made so that the sources' rules and the paper's give different answers
(max(l, t, r, b) equal to every bound on every level, boxes of equal area overlapping,
areas whose order flips with +1, boxes beyond the image); each test also checks that.
"""

import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances

import fcos_d2
from helpers import ROOT  # noqa: E402

NUM_CLASSES = 3
STRIDES = (8, 16, 32, 64, 128)
BOUNDS = (64, 128, 256, 512)
PADDED = (640, 768)  # (h, w) of the batch
IMAGE_SIZES = [(640, 768), (600, 700)]
INF = 1e8  # AdelaiDet's and FCOS's sentinel for "no upper bound"

# The rules of each config (as each source writes them), used by the references below.
RULES = {
    "FCOS_R50_1x.yaml": dict(
        ranges="paper",
        area="wh",
        radius=0.0,
        smooth=None,
        loss="iou",
        ctr_weight=False,
        giou_eps=None,
        clip="image",
        plus_one=False,
        nms_units=None,
    ),
    "compat/FCOS_R50_adelaidet.yaml": dict(
        ranges="sources",
        area="wh",
        radius=1.5,
        smooth="stride",
        loss="giou",
        ctr_weight=True,
        giou_eps=0.0,
        clip="",
        plus_one=False,
    ),
    "compat/FCOS_R50_fcos.yaml": dict(
        ranges="sources",
        area="wh_plus_one",
        radius=0.0,
        smooth="pixel",
        loss="iou",
        ctr_weight=True,
        giou_eps=1e-7,
        clip="image_minus_one",
        plus_one=True,
    ),
    "compat/FCOS_imprv_R50_fcos.yaml": dict(
        ranges="sources",
        area="wh_plus_one",
        radius=1.5,
        smooth="stride",
        loss="giou",
        ctr_weight=True,
        giou_eps=1e-7,
        clip="image_minus_one",
        plus_one=True,
    ),
}
PAPER = "FCOS_R50_1x.yaml"


def load_model(config):
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.FCOS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.WEIGHTS = ""
    return build_model(cfg)


@pytest.fixture(scope="module")
def models():
    return {config: load_model(config) for config in RULES}


def level_shapes(padded=PADDED):
    # The FPN's maps of a padded batch: P3-P5 exact, P6/P7 by stride-2 convs (ceil).
    shapes = [(padded[0] // s, padded[1] // s) for s in STRIDES[:3]]
    for _ in range(2):
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def level_points(shapes=None):
    """Per level, the list of (x, y) of its locations, row-major: floor(s / 2) + k * s."""
    shapes = shapes or level_shapes()
    return [
        [(s // 2 + i * s, s // 2 + j * s) for j in range(h) for i in range(w)]
        for (h, w), s in zip(shapes, STRIDES)
    ]


# ------------------------------------------------------------------------------ inputs
def bound_boxes():
    """For every level and each of its finite bounds m, boxes where max(l, t, r, b) = m at
    one of its locations: one with the location off-centre (l = m), one centred (center
    sampling keeps it)."""
    boxes = []
    for level, ((h, w), s) in enumerate(zip(level_shapes(), STRIDES)):
        lo = BOUNDS[level - 1] if level > 0 else None
        hi = BOUNDS[level] if level < len(BOUNDS) else None
        for k, m in enumerate(b for b in (lo, hi) if b is not None):
            x = s // 2 + min(3 + 2 * k, w - 1) * s  # a location of this level
            y = s // 2 + min(3, h - 1) * s
            q = m // 4
            boxes.append([x - m, y - q, x + q, y + q])  # l = m, t = r = b = m / 4
            boxes.append([x - m, y - m, x + m, y + m])  # centred: l = t = r = b = m
    return boxes


def tie_boxes():
    """Overlapping boxes of equal area w * h (ties) whose (w + 1) * (h + 1) differ, and a
    pair whose order flips with the +1: 4 x 60 (240; 305) against 16 x 16 (256; 289)."""
    out = []
    for cx, cy in [(200, 200), (420, 330), (560, 150)]:
        for w, h in [(60, 40), (40, 60), (120, 20), (48, 50)]:  # areas 2400 (and 2400)
            if w * h != 2400:
                w, h = 80, 30
            out.append([cx - w // 2, cy - h // 2, cx + (w + 1) // 2, cy + (h + 1) // 2])
        out.append([cx - 2, cy - 30, cx + 2, cy + 30])
        out.append([cx - 8, cy - 8, cx + 8, cy + 8])
    return out


def random_boxes(g, n, size):
    h, w = size
    xy = (torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])).floor()
    wh = (torch.exp(torch.rand(n, 2, generator=g) * math.log(400.0)) + 4).floor()
    return torch.cat([xy, xy + wh], dim=1).tolist()  # may extend beyond the image


def gt_batch():
    g = torch.Generator().manual_seed(0)
    per_image = [
        bound_boxes() + tie_boxes() + random_boxes(g, 6, IMAGE_SIZES[0]),
        tie_boxes()[:6] + random_boxes(g, 5, IMAGE_SIZES[1]),
    ]
    gts = []
    for boxes, size in zip(per_image, IMAGE_SIZES):
        boxes = torch.tensor(boxes, dtype=torch.float32)
        classes = torch.randint(0, NUM_CLASSES, (len(boxes),), generator=g)
        gts.append(Instances(size, gt_boxes=Boxes(boxes), gt_classes=classes))
    return gts


def head_outputs(seed, shapes=None, n=len(IMAGE_SIZES), scale=(1.0, 6.0)):
    """Per level (N, C, H, W) logits, (N, 4, H, W) distances in pixels, (N, 1, H, W)."""
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or level_shapes()
    logits, box_reg, ctr = [], [], []
    for (h, w), s in zip(shapes, STRIDES):
        logits.append(torch.randn(n, NUM_CLASSES, h, w, generator=g) * 1.5 - 2.5)
        lo, hi = scale
        box_reg.append((torch.rand(n, 4, h, w, generator=g) * (hi - lo) + lo) * s)
        ctr.append(torch.randn(n, 1, h, w, generator=g))
    return logits, box_reg, ctr


def image_list(sizes=IMAGE_SIZES, padded=PADDED):
    return ImageList(torch.zeros(len(sizes), 3, *padded), [tuple(s) for s in sizes])


def features(n, shapes=None):
    return [torch.zeros(n, 1, h, w) for h, w in shapes or level_shapes()]


# -------------------------------------------------------------------------- references
def ref_level_range(rules, level):
    if rules["ranges"] == "paper":  # [m_{i-1}, m_i], m_0 = 0, m_5 = inf
        lo = ([0] + list(BOUNDS))[level]
        hi = (list(BOUNDS) + [math.inf])[level]
    else:  # [-1, 64], [64, 128], ..., [512, INF]
        lo = ([-1] + list(BOUNDS))[level]
        hi = (list(BOUNDS) + [INF])[level]
    return lo, hi


def ref_targets(rules, boxes):
    """Per level, per location: (index of the matched box or -1, (l, t, r, b) in pixels)."""
    out = []
    for level, points in enumerate(level_points()):
        lo, hi = ref_level_range(rules, level)
        stride = STRIDES[level]
        per_level = []
        for x, y in points:
            best, best_area = -1, INF if rules["ranges"] != "paper" else math.inf
            for j, (x0, y0, x1, y1) in enumerate(boxes):
                l, t, r, b = x - x0, y - y0, x1 - x, y1 - y
                if rules["radius"] > 0:  # get_sample_region: sub-box clipped to the box
                    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                    rad = stride * rules["radius"]
                    sx0, sy0 = max(cx - rad, x0), max(cy - rad, y0)
                    sx1, sy1 = min(cx + rad, x1), min(cy + rad, y1)
                    inside = min(x - sx0, y - sy0, sx1 - x, sy1 - y) > 0
                else:
                    inside = min(l, t, r, b) > 0
                m = max(l, t, r, b)
                if not (inside and lo <= m <= hi):
                    continue
                if rules["area"] == "wh_plus_one":  # BoxList.area()
                    area = (x1 - x0 + 1) * (y1 - y0 + 1)
                else:
                    area = (x1 - x0) * (y1 - y0)
                if area < best_area:  # strict: the first of equal areas stays
                    best, best_area = j, area
            if best >= 0:
                x0, y0, x1, y1 = boxes[best]
                per_level.append((best, (x - x0, y - y0, x1 - x, y1 - y)))
            else:
                per_level.append((-1, None))
        out.append(per_level)
    return out


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def focal(x, t, alpha=0.25, gamma=2.0):
    p = sigmoid(x)
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    return (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** gamma


def bce(x, t):
    return -(t * math.log(sigmoid(x)) + (1 - t) * math.log(1 - sigmoid(x)))


def ref_box_loss(rules, pred, target, stride):
    """One positive's box loss in the source's units (pred, target: l, t, r, b pixels)."""
    if rules["smooth"] == "stride":  # the source's regression targets are / stride
        pred = [v / stride for v in pred]
        target = [v / stride for v in target]
    pl, pt, pr, pb = pred
    tl, tt, tr, tb = target
    target_area = (tl + tr) * (tt + tb)
    pred_area = (pl + pr) * (pt + pb)
    w_i = min(pl, tl) + min(pr, tr)
    h_i = min(pb, tb) + min(pt, tt)
    inter = w_i * h_i
    union = target_area + pred_area - inter
    if rules["smooth"] is None:
        iou = inter / union
    else:
        iou = (inter + 1.0) / (union + 1.0)
    if rules["loss"] == "iou":
        return -math.log(iou)
    g_w = max(pl, tl) + max(pr, tr)
    g_h = max(pb, tb) + max(pt, tt)
    enclosing = g_w * g_h + rules["giou_eps"]
    return 1.0 - (iou - (enclosing - union) / enclosing)


def ref_losses(rules, gts, logits, box_reg, ctr):
    cls_sum, loc_sum, ctr_sum, num_pos, ctr_target_sum = 0.0, 0.0, 0.0, 0, 0.0
    for n, gt in enumerate(gts):
        boxes = gt.gt_boxes.tensor.double().tolist()
        classes = gt.gt_classes.tolist()
        targets = ref_targets(rules, boxes)
        for level, per_level in enumerate(targets):
            w = logits[level].shape[3]
            for k, (j, ltrb) in enumerate(per_level):
                yy, xx = divmod(k, w)
                for c in range(NUM_CLASSES):
                    t = 1.0 if j >= 0 and classes[j] == c else 0.0
                    cls_sum += focal(float(logits[level][n, c, yy, xx]), t)
                if j < 0:
                    continue
                num_pos += 1
                l, t, r, b = ltrb
                ctr_t = math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))
                pred = [float(box_reg[level][n, i, yy, xx]) for i in range(4)]
                loss = ref_box_loss(rules, pred, ltrb, STRIDES[level])
                loc_sum += loss * (ctr_t if rules["ctr_weight"] else 1.0)
                ctr_target_sum += ctr_t
                ctr_sum += bce(float(ctr[level][n, 0, yy, xx]), ctr_t)
    normaliser = max(num_pos, 1.0)
    loc_normaliser = max(ctr_target_sum, 1e-6) if rules["ctr_weight"] else normaliser
    return {
        "loss_fcos_cls": cls_sum / normaliser,
        "loss_fcos_loc": loc_sum / loc_normaliser,
        "loss_fcos_ctr": ctr_sum / normaliser,
    }


def targets_of(rules, gts):
    return [ref_targets(rules, gt.gt_boxes.tensor.double().tolist()) for gt in gts]


# ------------------------------------------------------------------------ the tests
def fcos_d2_losses(model, gts, preds):
    model.train()
    n = len(gts)
    return model.forward_training(image_list(), features(n), preds, gts)


def fcos_d2_matches(model, gts):
    """fcos-d2's matched box per location, as the reference's per-level lists."""
    locations = model.locations(features(len(gts)), PADDED)
    targets = model.assigner(locations, model.strides, gts)
    out = []
    for n in range(len(gts)):
        idx = targets.matched_idxs[n].tolist()
        per_level, start = [], 0
        for points in level_points():
            per_level.append(idx[start : start + len(points)])
            start += len(points)
        out.append(per_level)
    return out


@pytest.mark.parametrize("config", sorted(RULES))
def test_targets_match_the_reference(models, config):
    gts = gt_batch()
    ours = fcos_d2_matches(models[config], gts)
    ref = targets_of(RULES[config], gts)
    positives = 0
    for n in range(len(gts)):
        for level in range(len(STRIDES)):
            assert ours[n][level] == [j for j, _ in ref[n][level]], (n, level)
            positives += sum(j >= 0 for j in ours[n][level])
    assert positives > 100
    if config == PAPER:
        # On every level, a positive location's max(l, t, r, b) equals a bound m > 0 of the
        # level's range (so "closed" and "open" bounds give different targets).
        for level, per_level in enumerate(ref[0]):
            lo, hi = ref_level_range(RULES[PAPER], level)
            at_bound = [ltrb for j, ltrb in per_level if j >= 0 and max(ltrb) in (lo, hi)]
            assert at_bound, f"no positive at a bound on level {level}"


# Each source convention that is not the paper's, switched back to the paper's value.
PAPER_VALUES = {
    PAPER: [("assigner.size_range_bounds", "open")],
    "compat/FCOS_R50_adelaidet.yaml": [("iou_loss_smooth", ""), ("iou_loss_smooth", "pixel")],
    "compat/FCOS_R50_fcos.yaml": [
        ("assigner.match_area", "wh"),
        ("iou_loss_smooth", ""),
        ("iou_loss_smooth", "stride"),
    ],
    "compat/FCOS_imprv_R50_fcos.yaml": [
        ("assigner.match_area", "wh"),
        ("iou_loss_smooth", ""),
        ("iou_loss_smooth", "pixel"),
    ],
}


@pytest.mark.parametrize("config", sorted(RULES))
def test_each_convention_matters_on_these_inputs(models, config):
    # Otherwise the reference tests could not tell the conventions apart.
    gts = gt_batch()
    preds = head_outputs(seed=1)
    model = models[config]
    own = fcos_d2_losses(model, gts, preds)
    for path, value in PAPER_VALUES[config]:
        owner = model.assigner if path.startswith("assigner.") else model
        attr = path.split(".")[-1]
        saved = getattr(owner, attr)
        setattr(owner, attr, value)
        try:
            other = fcos_d2_losses(model, gts, preds)
        finally:
            setattr(owner, attr, saved)
        assert any(not torch.allclose(own[k], other[k], rtol=1e-4) for k in own), (path, value)


@pytest.mark.parametrize("config", sorted(RULES))
def test_losses_match_the_reference(models, config):
    gts = gt_batch()
    preds = head_outputs(seed=1)
    ours = fcos_d2_losses(models[config], gts, preds)
    ref = ref_losses(RULES[config], gts, *preds)
    for name, value in ref.items():
        got = float(ours[name])
        assert math.isclose(got, value, rel_tol=1e-4), (name, got, value)
    assert ref["loss_fcos_loc"] > 0


# ------------------------------------------------------------------------ inference
INF_SIZES = [(120, 150), (97, 128)]
INF_PADDED = (128, 160)


def ref_nms(boxes, scores, classes, thresh, plus_one):
    """Greedy class-aware NMS in decreasing score order; IoU > thresh suppresses."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    add = 1.0 if plus_one else 0.0
    for i in order:
        ok = True
        for k in keep:
            if classes[k] != classes[i]:
                continue
            a, b = boxes[i], boxes[k]
            iw = max(min(a[2], b[2]) - max(a[0], b[0]) + add, 0.0)
            ih = max(min(a[3], b[3]) - max(a[1], b[1]) + add, 0.0)
            inter = iw * ih
            area_a = (a[2] - a[0] + add) * (a[3] - a[1] + add)
            area_b = (b[2] - b[0] + add) * (b[3] - b[1] + add)
            union = area_a + area_b - inter
            if union > 0 and inter / union > thresh:  # 0 / 0 (empty boxes): NaN, kept
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def ref_detections(rules, logits, box_reg, ctr, sizes, topk=1000, thresh=0.05, nms=0.6, cap=100):
    shapes = [tuple(x.shape[-2:]) for x in logits]
    results = []
    for n, (h, w) in enumerate(sizes):
        boxes, scores, classes = [], [], []
        for level, points in enumerate(level_points(shapes)):
            width = shapes[level][1]
            cands = []
            for k in range(len(points)):
                yy, xx = divmod(k, width)
                c_prob = sigmoid(float(ctr[level][n, 0, yy, xx]))
                for c in range(NUM_CLASSES):
                    p = sigmoid(float(logits[level][n, c, yy, xx]))
                    if p > thresh:
                        cands.append((p * c_prob, k, c))
            cands.sort(key=lambda t: -t[0])
            for score, k, c in cands[:topk]:
                x, y = points[k]
                yy, xx = divmod(k, width)
                l, t, r, b = (float(box_reg[level][n, i, yy, xx]) for i in range(4))
                box = [x - l, y - t, x + r, y + b]
                if rules["clip"]:
                    lim_w, lim_h = (w - 1, h - 1) if rules["clip"] == "image_minus_one" else (w, h)
                    box = [
                        min(max(box[0], 0), lim_w),
                        min(max(box[1], 0), lim_h),
                        min(max(box[2], 0), lim_w),
                        min(max(box[3], 0), lim_h),
                    ]
                boxes.append(box)
                scores.append(math.sqrt(score) if rules["sqrt"] else score)
                classes.append(c)
        keep = ref_nms(boxes, scores, classes, nms, rules["plus_one"])[:cap]
        results.append(sorted((scores[i], classes[i], boxes[i]) for i in keep))
    return results


def fcos_d2_detections(model, preds, sizes):
    model.eval()
    shapes = [tuple(x.shape[-2:]) for x in preds[0]]
    images = ImageList(torch.zeros(len(sizes), 3, *INF_PADDED), [tuple(s) for s in sizes])
    with torch.no_grad():
        out = model.forward_inference(images, features(len(sizes), shapes), preds)
    return [
        sorted(zip(r.scores.tolist(), r.pred_classes.tolist(), r.pred_boxes.tensor.tolist()))
        for r in out
    ]


def inference_inputs():
    shapes = level_shapes(INF_PADDED)
    # Many candidates of similar boxes (NMS decides), boxes beyond the image (clipping).
    return head_outputs(seed=5, shapes=shapes, scale=(0.3, 3.0)), shapes


@pytest.mark.parametrize("config", sorted(RULES))
def test_detections_match_the_reference(models, config):
    (logits, box_reg, ctr), _ = inference_inputs()
    for x in logits:
        x.add_(1.2)  # enough candidates above 0.05
    rules = dict(RULES[config], sqrt=models[config].postprocessing.sqrt_score)
    ours = fcos_d2_detections(models[config], (logits, box_reg, ctr), INF_SIZES)
    ref = ref_detections(rules, logits, box_reg, ctr, INF_SIZES)
    for got, want in zip(ours, ref):
        assert len(got) == len(want)
        for (s1, c1, b1), (s2, c2, b2) in zip(got, want):
            assert c1 == c2 and abs(s1 - s2) < 1e-6
            assert max(abs(u - v) for u, v in zip(b1, b2)) < 1e-3
    assert sum(len(r) for r in ref) > 40
    if config != PAPER:
        # The source's clipping / NMS convention changes the detections on these inputs.
        paper_like = ref_detections(
            dict(rules, clip="image", plus_one=False), logits, box_reg, ctr, INF_SIZES
        )
        assert paper_like != ref
