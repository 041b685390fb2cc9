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
