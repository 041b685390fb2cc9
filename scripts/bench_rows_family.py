"""The quality-family rows of scripts/bench.py (issue 15): what each option of
``configs/family/`` costs at inference and in a training step, against the paper config it
departs from (``iadet.tools.reproduce.FAMILY_BASE``: QFL, VFL and ATSS against RetinaNet, the
others against IoU-aware RetinaNet) measured in the same run.

Both sides are built from one seed, so every shared tensor starts equal (the options' parts
come from their own random streams); the class and IoU logits are calibrated to a trained
model's spread (:func:`_calibrate`), so every model sends a realistic number of candidates
through to the suppression.
"""
import torch

import iadet
from iadet.builder import build_criterion
from iadet.models.deform_sampling import deform_conv2d_repeated
from iadet.models.feature_alignment import AlignedIoUPredictor

from iadet.tools.reproduce import FAMILY, FAMILY_BASE

from bench_common import REPO, alternate, make_row
from bench_rows_training import sgd_step

CONFIGS = REPO / "configs"


def _calibrate(model, batch) -> None:
    """Class logits of std 1 around -4 and IoU logits of std 1 around 0 on ``batch`` (a
    trained model's spread, as the torchvision comparison's calibration), in place: every
    model then sends a realistic, comparable number of candidates to the suppression."""
    head = model.head
    with torch.no_grad():
        head.cls_logits.bias.fill_(0.0)
        head.cls_logits.weight.mul_(1.0 / model(batch)["cls_logits"].std())
        head.cls_logits.bias.fill_(-4.0)
        if head.has_iou_branch:
            out = head.iou_pred if head.iou_pred is not None else head.iou_aligned.iou_pred
            out.bias.zero_()
            out.weight.mul_(1.0 / model(batch)["iou_logits"].std())


class FamilyRows:
    """``row_family`` for the Bench (bench.py): one inference and one training row per option."""

    def _pairs(self, size):
        """method -> ((option model, cfg), (base model, cfg)), each pair built from one seed."""
        opts = [f"input.min_size={min(size)}", f"input.max_size={max(size)}",
                "model.num_classes=91"]  # the bench's training boxes carry torchvision's COCO labels
        pairs = {}
        for method, (stem, _) in FAMILY.items():
            if method not in self.args.family:  # --family: a subset of the methods
                continue
            built = []
            for path in (CONFIGS / f"{stem}.yaml", CONFIGS / f"{FAMILY_BASE[method]}.yaml"):
                cfg = iadet.load_config(path, opts)
                torch.manual_seed(0)
                built.append((iadet.build_detector(cfg).to(self.device), cfg))
            pairs[method] = tuple(built)
        return pairs

    def row_family(self):
        s = self.infer_setup()
        image = s["image255"]
        h, w = self.infer_size
        for method, ((model, _), (base, base_cfg)) in self._pairs(self.infer_size).items():
            batch, _, _ = base.preprocessor([image])
            for m in (model, base):
                m.eval()
                _calibrate(m, batch)
            with torch.no_grad():
                runners = {"option": lambda: model.predict(image)[0], "base": lambda: base.predict(image)[0]}
                times, results = alternate(runners, self.args.repeats, self.device)
            check = f"{len(results['option']['scores'])} vs {len(results['base']['scores'])} detections"
            self.rows.append(make_row(f"family_infer_{method}", f"{method}: whole predict {h}x{w}", times["option"],
                                      times["base"], FAMILY_BASE[method], None, check))
        t = self.train_setup()
        for method, pair in self._pairs((self.train_size, self.train_size)).items():
            if FAMILY[method][1] is not None:
                continue  # an evaluation-time variant: its training step is its base's
            steps = {}
            for side, (m, cfg) in zip(("option", "base"), pair):
                m.train()
                criterion = build_criterion(cfg)
                optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)

                def losses(m=m, c=criterion):
                    b, _, _ = m.preprocessor(t["images255"])
                    out = m(b)
                    return c(out, out["anchors"], t["targets"])

                steps[side] = lambda f=losses, o=optimizer: sgd_step(f, o)
            times, _ = alternate(steps, self.args.repeats, self.device)
            self.rows.append(make_row(f"family_train_{method}", f"{method}: training step, batch {self.train_batch} "
                                      f"at {self.train_size}x{self.train_size}", times["option"], times["base"],
                                      FAMILY_BASE[method], None, "same images and boxes"))

    def row_deform_sampling(self):
        """The aligned branch's deformable conv, forward + backward of one level: iadet's
        gather form (``iadet.models.deform_sampling``, its CPU path) against
        ``torchvision.ops.deform_conv2d`` on the feature repeated for the A anchors."""
        sizes = {"r50_p3": (self.train_batch, 256, self.train_size // 8), "mini_p3": (8, 64, 20)}
        for name, (n, c, side) in sizes.items():
            torch.manual_seed(0)
            m = AlignedIoUPredictor(c, num_anchors=9).to(self.device)
            feature = torch.randn(n, c, side, side, device=self.device, requires_grad=True)
            deltas = torch.randn(n, 36, side, side, device=self.device)
            offsets = m.offsets(deltas)

            def ours():
                out = m.aligned_features(feature, deltas)
                grads = torch.autograd.grad(out.square().sum(), (feature, m.deform_weight))
                return out.detach(), grads

            def theirs():
                out = torch.relu(deform_conv2d_repeated(feature, offsets, m.deform_weight, m.deform_bias))
                grads = torch.autograd.grad(out.square().sum(), (feature, m.deform_weight))
                return out.detach(), grads

            times, results = alternate({"ours": ours, "theirs": theirs}, min(self.args.repeats, 3), self.device)
            (o1, g1), (o2, g2) = results["ours"], results["theirs"]
            diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip((o1, *g1), (o2, *g2)))
            self.rows.append(make_row(f"deform_sampling_{name}", f"aligned branch deformable conv, fwd + bwd, "
                                      f"{n} x {c} x {side}x{side}, 9 anchors", times["ours"], times["theirs"],
                                      "torchvision.ops.deform_conv2d", None,
                                      f"max diff of output and gradients {diff:.1e} of their largest value"))
