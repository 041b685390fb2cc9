"""Export the network: ``python -m iadet.export --config CFG --checkpoint CKPT --format onnx|torchscript --out FILE``.

What is exported is the network only — backbone, FPN and head — as
:class:`ExportableNetwork`: a normalised, padded float batch ``images`` (N, 3, H, W) in,
the flat tuple ``(cls_logits (N, M, C), bbox_deltas (N, M, 4)[, iou_logits (N, M)])`` out,
levels concatenated P3 first exactly as ``IoUAwareRetinaNet.forward`` lays them out.
Anchors, Eq. 7 scoring, top-k, decoding and NMS stay in iadet:
:func:`detections_from_exported` turns the exported outputs into the detections of
``model.detect``. Preprocess images with ``model.preprocessor`` as ``predict`` does.

* ``onnx``: ``torch.onnx.export(dynamo=True)`` (needs ``onnx`` and ``onnxscript``; the
  legacy TorchScript-based exporter is deprecated in torch 2.14), one self-contained file
  checked with ``onnx.checker``. ``--dynamic`` makes batch, height and width dynamic axes;
  without it the file only accepts the example input's shape.
* ``torchscript``: ``torch.jit.trace`` then ``torch.jit.save``. The trace records shape
  arithmetic, so the file also runs on other batch sizes and image sizes (``--dynamic``
  checks that). torch 2.14 marks ``torch.jit`` as deprecated (FutureWarning).

With ``model.test.fuse_bn: true`` (config or ``--opts``) BatchNorm is folded into the
convolutions before export. After writing, the CLI runs the file (onnxruntime / ``torch.jit.load``) on the example input
and compares each output with the eager network; ``--no-verify`` skips that.
"""
import argparse
import contextlib
import itertools
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
ONNX_HINT = "pip install onnx onnxscript onnxruntime"

ExportedRunner = Callable[[Tensor], Tuple[Tensor, ...]]


class ExportError(RuntimeError):
    """Export or verification could not be done; the message says what to do."""


def output_names(model) -> Tuple[str, ...]:
    """Names of the exported outputs, in order (``iou_logits`` only with the IoU branch)."""
    names = ("cls_logits", "bbox_deltas")
    return names + ("iou_logits",) if model.head.has_iou_branch else names


class ExportableNetwork(nn.Module):
    """Backbone, FPN and head of an :class:`~iadet.models.detector.IoUAwareRetinaNet`.

    ``forward(images)`` returns a tuple of tensors named by :func:`output_names`.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone = detector.backbone
        self.neck = detector.neck
        self.head = detector.head
        self.names = output_names(detector)

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        out = self.head(self.neck(self.backbone(images)))
        return tuple(out[name] for name in self.names)


# ---------------------------------------------------------------- post-processing in iadet

def pyramid_sizes(model, batch_hw: Sequence[int]) -> List[Tuple[int, int]]:
    """(H_l, W_l) of every pyramid level for a padded batch of ``batch_hw``.

    Runs backbone and FPN on the ``meta`` device: shapes only, no arithmetic.
    """
    def on_meta(module):
        named = itertools.chain(module.named_parameters(), module.named_buffers())
        return {name: tensor.to("meta") for name, tensor in named}

    images = torch.empty(1, 3, int(batch_hw[0]), int(batch_hw[1]), device="meta")
    features = torch.func.functional_call(model.backbone, on_meta(model.backbone), (images,))
    features = torch.func.functional_call(model.neck, on_meta(model.neck), (features,))
    return [(int(f.shape[-2]), int(f.shape[-1])) for f in features]


def exported_head_outputs(model, outputs: Sequence, batch_hw: Sequence[int]) -> Tuple[Dict, Tensor]:
    """The head's dict and the (M, 4) anchors for outputs of an exported network.

    Args:
        model: the detector built from the same config (its weights are not used).
        outputs: the exported outputs in :func:`output_names` order (tensors or numpy arrays).
        batch_hw: (H, W) of the padded batch the exported network ran on.
    """
    names = output_names(model)
    if len(outputs) != len(names):
        raise ValueError(f"expected {len(names)} outputs {names}, got {len(outputs)}: "
                         "was the file exported from a model with the same model.head.iou_branch?")
    head_out = {name: torch.as_tensor(value) for name, value in zip(names, outputs)}
    device = head_out["cls_logits"].device
    levels = model.anchor_generator.grid_anchors(pyramid_sizes(model, batch_hw), tuple(batch_hw), device=device)
    head_out["num_anchors_per_level"] = [len(a) for a in levels]
    anchors = torch.cat(levels)
    if head_out["cls_logits"].shape[1] != len(anchors):
        raise ValueError(f"the outputs have {head_out['cls_logits'].shape[1]} anchors but the config gives "
                         f"{len(anchors)} for a {tuple(batch_hw)} batch: check --config and batch_hw")
    return head_out, anchors


def detections_from_exported(model, outputs: Sequence, batch_hw: Sequence[int],
                             image_sizes: Sequence[Tuple[int, int]], alpha="default") -> List[Dict[str, Tensor]]:
    """iadet's post-processing (Eq. 7, top-k, decoding, NMS) on exported outputs.

    Gives what ``model.detect(batch, image_sizes, alpha)`` gives for the same batch: per
    image ``boxes`` (xyxy in batch pixels), ``scores``, ``labels``, ``cls_scores``[, ``ious``].
    """
    head_out, anchors = exported_head_outputs(model, outputs, batch_hw)
    return model.postprocessor(head_out, anchors, image_sizes, alpha=alpha)


# ------------------------------------------------------------------------------- export

@contextlib.contextmanager
def atomic_output(path: Path):
    """Yield a temporary path next to ``path``; fsync and rename it over ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_onnx(network: ExportableNetwork, example: Tensor, path: Union[str, Path],
                opset: Optional[int] = None, dynamic: bool = False) -> None:
    """``torch.onnx.export(dynamo=True)`` into one file, checked with ``onnx.checker``."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the onnx and onnxscript packages ({exc}): {ONNX_HINT}") from exc
    dynamic_shapes = None
    if dynamic:
        dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
        dynamic_shapes = {INPUT_NAME: dims}
    program = torch.onnx.export(network, (example,), dynamo=True, input_names=[INPUT_NAME],
                                output_names=list(network.names), opset_version=opset,
                                dynamic_shapes=dynamic_shapes, verbose=False)
    with atomic_output(Path(path)) as tmp:
        program.save(tmp, external_data=False)  # < 2 GB for every iadet model
        onnx.checker.check_model(str(tmp), full_check=True)


def export_torchscript(network: ExportableNetwork, example: Tensor, path: Union[str, Path]) -> None:
    """``torch.jit.trace`` and ``torch.jit.save`` (torch.jit's deprecation warnings silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        # GroupNorm's input-size sanity check becomes a constant; it does not touch the outputs.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.functional")
        traced = torch.jit.trace(network, (example,), check_trace=False)
        with atomic_output(Path(path)) as tmp:
            torch.jit.save(traced, str(tmp))


def load_exported(path: Union[str, Path], fmt: str) -> ExportedRunner:
    """A function ``images -> tuple of output tensors`` running an exported file on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported file not found: {path}")
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError as exc:
            raise ExportError(f"running the ONNX file needs onnxruntime ({exc}): {ONNX_HINT}, "
                              "or pass --no-verify") from exc
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run_onnx(images: Tensor) -> Tuple[Tensor, ...]:
            arrays = session.run(None, {INPUT_NAME: images.detach().cpu().numpy()})
            return tuple(torch.from_numpy(a) for a in arrays)
        return run_onnx
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")

        def run_torchscript(images: Tensor) -> Tuple[Tensor, ...]:
            with torch.no_grad():
                return tuple(module(images.cpu()))
        return run_torchscript
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def compare_outputs(network: ExportableNetwork, runner: ExportedRunner, images: Tensor,
                    tolerance: float) -> List[dict]:
    """Per output: max |exported - eager| and the limit ``tolerance * max(1, max |eager|)``."""
    with torch.no_grad():
        eager = network(images)
    try:
        exported = runner(images)
    except Exception as exc:  # e.g. onnxruntime refusing a shape the file does not accept
        note = f"the exported file failed on this input: {str(exc).splitlines()[0][:300]}"
        return [{"name": name, "shape": tuple(ref.shape), "max_abs_diff": float("inf"), "limit": 0.0,
                 "ok": False, "note": note} for name, ref in zip(network.names, eager)]
    rows = []
    for name, ref, got in zip(network.names, eager, exported):
        if tuple(got.shape) != tuple(ref.shape):
            rows.append({"name": name, "shape": tuple(ref.shape), "max_abs_diff": float("inf"),
                         "limit": 0.0, "ok": False, "note": f"shape {tuple(got.shape)}"})
            continue
        diff = (got.float() - ref.float()).abs().max().item()
        limit = tolerance * max(1.0, ref.abs().max().item())
        rows.append({"name": name, "shape": tuple(ref.shape), "max_abs_diff": diff, "limit": limit,
                     "ok": diff <= limit, "note": ""})
    return rows


# ---------------------------------------------------------------------------------- CLI

def default_image_size(cfg) -> Tuple[int, int]:
    """The padded size of a landscape test image: (min_size, max_size) rounded up to size_divisor."""
    short, long, divisor = min(cfg.input.min_size, cfg.input.max_size), cfg.input.max_size, cfg.input.size_divisor
    return -(-short // divisor) * divisor, -(-long // divisor) * divisor


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m iadet.export", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML config of the model")
    p.add_argument("--checkpoint", required=True, help="weights: an iadet checkpoint or a converted file")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="file to write (e.g. model.onnx, model.pt)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="example input size (default: the config's padded test size, (min_size, max_size))")
    p.add_argument("--batch-size", type=int, default=1, help="example batch size")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic batch/height/width (ONNX); verify on a second shape as well (both formats)")
    p.add_argument("--no-verify", action="store_true", help="do not compare the file with the eager network")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="verification limit per output: tolerance * max(1, max |eager output|)")
    p.add_argument("--opts", nargs="*", default=[], help="config overrides key=value")
    return p.parse_args(argv)


def run(args) -> dict:
    """Build, load, export and (unless ``--no-verify``) verify; returns a report dict."""
    import iadet
    from iadet.checkpoint import load_detector_weights
    from iadet.models.fuse import fuse_frozen_batchnorm

    cfg = iadet.load_config(args.config, args.opts)
    model = iadet.build_detector(cfg)
    load_detector_weights(model, args.checkpoint)
    if cfg.model.test.fuse_bn:  # export the network with BatchNorm folded into the convs
        fuse_frozen_batchnorm(model.eval(), include_trainable_bn=True)
    network = ExportableNetwork(model.eval()).eval()
    height, width = args.image_size or default_image_size(cfg)
    if min(height, width, args.batch_size) < 1:
        raise ValueError(f"--image-size and --batch-size must be positive, got {height}x{width}, {args.batch_size}")
    example = torch.randn(args.batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    out = Path(args.out)
    print(f"exporting {args.format}: input {INPUT_NAME} {tuple(example.shape)}, outputs {', '.join(network.names)}")
    if args.format == "onnx":
        export_onnx(network, example, out, opset=args.opset, dynamic=args.dynamic)
    else:
        print("note: torch.jit is deprecated in torch 2.14 (its FutureWarnings are silenced); ONNX is the "
              "forward-looking format")
        export_torchscript(network, example, out)
    print(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB)")
    report = {"path": str(out), "format": args.format, "checks": []}
    if args.no_verify:
        return report
    runner = load_exported(out, args.format)
    inputs = [example]
    if args.dynamic:
        other = (args.batch_size + 1, 3, max(32, height // 2 + 16), width + 32)  # fewer rows, more columns
        inputs.append(torch.randn(*other, generator=torch.Generator().manual_seed(1)))
    for images in inputs:
        for row in compare_outputs(network, runner, images, args.tolerance):
            report["checks"].append(dict(row, input_shape=tuple(images.shape)))
            verdict = "ok" if row["ok"] else f"FAIL {row['note']}".rstrip()
            print(f"verify {tuple(images.shape)} {row['name']:<12} max |exported - eager| = "
                  f"{row['max_abs_diff']:.3g} (limit {row['limit']:.3g}) {verdict}")
    report["ok"] = all(row["ok"] for row in report["checks"])
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except (FileNotFoundError, ValueError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if not report.get("ok", True):
        print(f"error: {report['path']} differs from the eager network beyond --tolerance {args.tolerance}",
              file=sys.stderr)
        sys.exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
