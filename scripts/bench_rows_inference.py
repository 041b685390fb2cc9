"""Inference rows of scripts/bench.py: whole R50-FPN inference in fp32 and bf16 (and their
fast paths), the bf16 AP check, post-processing alone, the IoU branch's cost, and the
diagnostic fast_paths and profile rows.
"""
import contextlib
import copy
import io
import time

import torch

import iadet
from iadet.models.fuse import fuse_frozen_batchnorm, to_channels_last

from bench_common import (BF16_AP_GOAL, COMPAT_CONFIG, GOALS, REPO, alternate, compare_detections, iadet_infer,
                          make_row)


class InferenceRows:
    """``row_*`` methods of the Bench (bench.py), which provides ``args``, ``device``,
    ``infer_size``, ``rows``, ``profiles``, ``log`` and ``infer_setup``."""

    def row_r50_fp32(self, fast: bool = False):
        s = self.infer_setup()
        tv, model = s["tv"], s["model"]
        if fast:
            model = to_channels_last(fuse_frozen_batchnorm(copy.deepcopy(model)))
            run_iadet = lambda: iadet_infer(model, s["image255"])[0]  # noqa: E731
        else:
            run_iadet = lambda: model.predict(s["image255"])[0]  # noqa: E731
        with torch.no_grad():
            runners = {"iadet": run_iadet, "torchvision": lambda: tv([s["image01"]])[0]}
            times, results = alternate(runners, self.args.repeats, self.device)
        _, check = compare_detections(results["iadet"], results["torchvision"])
        h, w = self.infer_size
        what = (f"R50-FPN inference {h}x{w}, batch 1, fp32, from the same float image; iadet "
                + ("with BN folded + channels_last (fast path)" if fast else "model.predict (defaults)"))
        self.rows.append(make_row("r50_fp32_fast" if fast else "r50_fp32", what, times["iadet"],
                                  times["torchvision"], "torchvision RetinaNet", GOALS["r50_fp32"], check))

    def row_r50_fp32_fast(self):
        self.row_r50_fp32(fast=True)

    def row_r50_bf16(self, fast: bool = False):
        s = self.infer_setup()
        tv, model = s["tv"], s["model"]
        if fast:
            model = to_channels_last(fuse_frozen_batchnorm(copy.deepcopy(model)))
        with torch.no_grad():
            runners = {"iadet": lambda: iadet_infer(model, s["image255"], amp_dtype=torch.bfloat16)[0],
                       "torchvision": lambda: tv([s["image01"]])[0]}
            times, results = alternate(runners, self.args.repeats, self.device)
            batch, _, _ = model.preprocessor([s["image255"]])
            fp32 = s["model"](batch)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                bf16 = model(batch)
        logit_diff = float((bf16["cls_logits"].float() - fp32["cls_logits"]).abs().max())
        delta_diff = float((bf16["bbox_deltas"].float() - fp32["bbox_deltas"]).abs().max())
        check = (f"bf16 {len(results['iadet']['scores'])} vs torchvision fp32 {len(results['torchvision']['scores'])} "
                 f"detections; max logit diff {logit_diff:.3f}, delta diff {delta_diff:.3f} (accuracy: row bf16_ap)")
        h, w = self.infer_size
        what = (f"R50-FPN inference {h}x{w}, iadet bf16 autocast" + (" + BN folded + channels_last" if fast else "")
                + " vs torchvision fp32")
        self.rows.append(make_row("r50_bf16_fast" if fast else "r50_bf16", what, times["iadet"],
                                  times["torchvision"], "torchvision RetinaNet fp32", GOALS["r50_bf16"], check))

    def row_r50_bf16_fast(self):
        self.row_r50_bf16(fast=True)

    def row_bf16_ap(self):
        from iadet.checkpoint import load_detector_weights
        from iadet.evaluation.metrics import evaluate_coco
        from iadet.evaluation.predict import coco_ground_truth, predict_dataset

        checkpoint = REPO / "work_dirs" / "quickstart" / "latest.pth"
        if not checkpoint.is_file():
            self.log(f"bf16_ap: skipped, {checkpoint} not found (run `make quickstart`)")
            return
        cfg = iadet.load_config(REPO / "configs" / "quickstart.yaml")
        model = iadet.build_detector(cfg)
        load_detector_weights(model, checkpoint)
        model.to(self.device).eval()
        from iadet.builder import build_dataset

        dataset = build_dataset(cfg, "val")
        gt = coco_ground_truth(dataset)
        aps, times = {}, {}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            start = time.perf_counter()
            results = predict_dataset(model, dataset, batch_size=8, device=self.device, progress=False,
                                      amp_dtype=dtype)
            times[name] = time.perf_counter() - start
            with contextlib.redirect_stdout(io.StringIO()):
                aps[name] = evaluate_coco(gt, results)
        delta = aps["bf16"]["AP"] - aps["fp32"]["AP"]
        record = {"row": "bf16_ap", "unit": "AP points",
                  "what": f"quickstart checkpoint on the {len(dataset)} synthetic val images: AP with bf16 autocast "
                          "minus AP in fp32", "fp32": {k: aps["fp32"][k] for k in ("AP", "AP50", "AP75")},
                  "bf16": {k: aps["bf16"][k] for k in ("AP", "AP50", "AP75")}, "delta_AP": delta,
                  "goal": BF16_AP_GOAL, "met": abs(delta) <= BF16_AP_GOAL,
                  "seconds": times, "check": f"AP fp32 {aps['fp32']['AP']:.2f}, bf16 {aps['bf16']['AP']:.2f}"}
        self.rows.append(record)

    def row_postprocess(self):
        s = self.infer_setup()
        tv, model = s["tv"], s["model"]
        with torch.no_grad():
            images, _ = tv.transform([s["image01"]])
            features = list(tv.backbone(images.tensors).values())
            head = tv.head(features)
            anchors = tv.anchor_generator(images, features)
        counts = [f.shape[-2] * f.shape[-1] * model.anchor_generator.num_anchors_per_location for f in features]
        original = [tuple(s["image01"].shape[-2:])]
        sizes = images.image_sizes

        def run_torchvision():  # what RetinaNet.forward does after the head, in eval mode
            split = {k: list(v.split(counts, dim=1)) for k, v in head.items()}
            split_anchors = [list(a.split(counts)) for a in anchors]
            dets = tv.postprocess_detections(split, split_anchors, sizes)
            return tv.transform.postprocess(dets, sizes, original)[0]

        head_out = {"cls_logits": head["cls_logits"], "bbox_deltas": head["bbox_regression"],
                    "num_anchors_per_level": counts}

        def run_iadet():  # what IoUAwareRetinaNet.predict does after the head
            res = model.postprocessor(head_out, anchors[0], sizes)[0]
            (h, w), (oh, ow) = sizes[0], original[0]
            res["boxes"] = res["boxes"] * torch.tensor([ow / w, oh / h, ow / w, oh / h], device=self.device)
            return res

        with torch.no_grad():
            times, results = alternate({"iadet": run_iadet, "torchvision": run_torchvision},
                                       max(self.args.repeats, 7), self.device, warmup=2)
        _, check = compare_detections(results["iadet"], results["torchvision"])
        num_candidates = int((head["cls_logits"].sigmoid() > 0.05).sum())
        h, w = self.infer_size
        self.rows.append(make_row("postprocess", f"post-processing of the {h}x{w} head outputs "
                                  f"({head['cls_logits'].shape[1]} anchors, {num_candidates} scores > 0.05)",
                                  times["iadet"], times["torchvision"], "torchvision postprocess_detections",
                                  GOALS["postprocess"], check))

    def row_iou_branch(self):
        s = self.infer_setup()
        off = s["model"]
        cfg = iadet.load_config(COMPAT_CONFIG, [f"input.min_size={min(self.infer_size)}",
                                                f"input.max_size={max(self.infer_size)}", "model.head.iou_branch=true"])
        on = iadet.build_detector(cfg)
        result = on.load_state_dict(off.state_dict(), strict=False)
        assert set(result.missing_keys) == {"head.iou_pred.weight", "head.iou_pred.bias"}, result
        on.to(self.device).eval()
        with torch.no_grad():  # IoU logits of spread about 1 around 0 (predicted IoU ~0.5, as trained models)
            g = torch.Generator().manual_seed(3)
            conv = on.head.iou_pred
            fan_in = conv.in_channels * 9
            conv.weight.copy_((torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5).to(self.device))
            conv.bias.zero_()
            batch, _, _ = on.preprocessor([s["image255"]])
            conv.weight.mul_(1.0 / on(batch)["iou_logits"].std())
            runners = {"iou_on": lambda: on.predict(s["image255"])[0], "iou_off": lambda: off.predict(s["image255"])[0]}
            times, results = alternate(runners, self.args.repeats, self.device)
            forward_runners = {"iou_on": lambda: on(batch), "iou_off": lambda: off(batch)}
            ftimes, _ = alternate(forward_runners, self.args.repeats, self.device)
        h, w = self.infer_size
        check = (f"{len(results['iou_on']['scores'])} vs {len(results['iou_off']['scores'])} detections "
                 "(Eq. 7 scores S = sqrt(p * IoU) pass the 0.05 threshold more often)")
        self.rows.append(make_row("iou_branch", f"IoU branch on vs off, whole predict {h}x{w} (compat config)",
                                  times["iou_on"], times["iou_off"], "iadet without IoU branch",
                                  GOALS["iou_branch"], check))
        self.rows.append(make_row("iou_branch_forward", f"IoU branch on vs off, network forward only {h}x{w}",
                                  ftimes["iou_on"], ftimes["iou_off"], "iadet without IoU branch",
                                  GOALS["iou_branch"], "one extra 3x3 conv (256 -> 9 channels) per level"))

    def row_fast_paths(self):
        s = self.infer_setup()
        model, image = s["model"], s["image255"]
        fused = fuse_frozen_batchnorm(copy.deepcopy(model))
        channels_last = to_channels_last(copy.deepcopy(model))
        fused_cl = to_channels_last(fuse_frozen_batchnorm(copy.deepcopy(model)))
        bf16 = torch.bfloat16
        variants = {
            "plain (no_grad, fp32)": lambda: iadet_infer(model, image)[0],
            "inference_mode": lambda: iadet_infer(model, image, inference_mode=True)[0],
            "fused BN": lambda: iadet_infer(fused, image)[0],
            "channels_last": lambda: iadet_infer(channels_last, image)[0],
            "fused BN + channels_last": lambda: iadet_infer(fused_cl, image)[0],
            "fused BN + inference_mode": lambda: iadet_infer(fused, image, inference_mode=True)[0],
            "bf16": lambda: iadet_infer(model, image, amp_dtype=bf16)[0],
            "bf16 + fused BN": lambda: iadet_infer(fused, image, amp_dtype=bf16)[0],
            "bf16 + fused BN + channels_last": lambda: iadet_infer(fused_cl, image, amp_dtype=bf16)[0],
        }
        times, results = alternate(variants, self.args.repeats, self.device)
        base = "plain (no_grad, fp32)"
        h, w = self.infer_size
        for name, values in times.items():
            if name == base:
                continue
            if name.startswith("bf16"):
                check = f"{len(results[name]['scores'])} detections (bf16: not bitwise comparable)"
            else:
                check = compare_detections(results[name], results[base])[1]
            self.rows.append(make_row(f"fast:{name}", f"iadet inference {h}x{w}: {name} vs plain", values,
                                      times[base], "plain iadet predict", None, check))

    def row_profile(self):
        from torch.profiler import ProfilerActivity, profile, record_function

        s = self.infer_setup()
        model, tv = s["model"], s["tv"]
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])

        def iadet_stages(m=model, amp_dtype=None):
            def run():
                with torch.no_grad():
                    with record_function("iadet.preprocess"):
                        batch, sizes, _ = m.preprocessor([s["image255"]])
                    with torch.autocast(self.device.type, dtype=amp_dtype or torch.bfloat16,
                                        enabled=amp_dtype is not None):
                        with record_function("iadet.backbone"):
                            feats = m.backbone(batch)
                        with record_function("iadet.neck"):
                            feats = m.neck(feats)
                        with record_function("iadet.head"):
                            out = m.head(feats)
                    with record_function("iadet.anchors"):
                        anchors = torch.cat(m.anchor_generator(feats, batch.shape[-2:]))
                    with record_function("iadet.postprocess"):
                        out = {k: (v.float() if torch.is_tensor(v) else v) for k, v in out.items()}
                        m.postprocessor(out, anchors, sizes)
            return run

        def tv_stages():
            with torch.no_grad():
                with record_function("tv.transform"):
                    images, _ = tv.transform([s["image01"]])
                with record_function("tv.backbone+fpn"):
                    feats = list(tv.backbone(images.tensors).values())
                with record_function("tv.head"):
                    head = tv.head(feats)
                with record_function("tv.anchors"):
                    anchors = tv.anchor_generator(images, feats)
                with record_function("tv.postprocess"):
                    counts = [f.shape[-2] * f.shape[-1] * 9 for f in feats]
                    split = {k: list(v.split(counts, dim=1)) for k, v in head.items()}
                    dets = tv.postprocess_detections(split, [list(a.split(counts)) for a in anchors],
                                                     images.image_sizes)
                    tv.transform.postprocess(dets, images.image_sizes, [tuple(s["image01"].shape[-2:])])

        fast = to_channels_last(fuse_frozen_batchnorm(copy.deepcopy(model)))
        for label, fn in (("iadet fp32", iadet_stages()), ("torchvision fp32", tv_stages),
                          ("iadet fp32, BN folded + channels_last", iadet_stages(fast)),
                          ("iadet bf16, BN folded + channels_last", iadet_stages(fast, torch.bfloat16))):
            fn()  # warm-up
            with profile(activities=activities) as prof:
                fn()
            averages = prof.key_averages()
            stages = [(e.key, e.cpu_time_total / 1e3) for e in averages
                      if e.key.startswith(("iadet.", "tv."))]
            stage_text = "\n".join(f"  {k:<22} {ms:10.1f} ms" for k, ms in sorted(stages, key=lambda x: -x[1]))
            table = averages.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=38)
            self.profiles[label] = (f"stages (wall time inside each block):\n{stage_text}\n" if stages else "") + table
            self.log(f"\n=== profile: {label} ===\n{self.profiles[label]}")
