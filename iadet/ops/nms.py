"""Exact greedy non-maximum suppression (NMS) in plain PyTorch, on CPU and CUDA tensors.

Public functions: :func:`nms` and :func:`batched_nms`, with the semantics of
``torchvision.ops.nms`` / ``torchvision.ops.batched_nms``: boxes are visited in order of
decreasing score, a box is kept unless a kept box of the same group has IoU strictly
greater than ``iou_threshold`` with it, and the kept indices come back sorted by decreasing
score.

Algorithm (no per-box Python loop):

1. Sort the boxes by (group, decreasing score), so every group is a contiguous run, and cut
   every group into blocks of ``block_size`` boxes (64-256, larger when there are few
   groups, see :func:`_choose_block_size`). Step ``k`` handles block ``k`` of *all* groups
   at once (groups are independent), so there are ``ceil(largest group / block_size)``
   steps. The blocks of a step are laid out densely as (groups, block) coordinate planes,
   groups ordered by decreasing size (split into a few chunks of similar width) and padded
   with NaN boxes, which never suppress or get suppressed (a NaN IoU is not
   ``> threshold``).
2. A box of the block is removed at once if its IoU with a box already kept by an earlier
   step of its group exceeds the threshold: one broadcast (groups, kept, block) IoU. As in
   torchvision's kernel, IoU is only computed against *kept* earlier boxes.
3. The survivors are resolved exactly inside the block: with ``S[i, j]`` = "``i`` is before
   ``j`` and overlaps it", the greedy rule ``keep[j] = alive[j] and not any_i(keep[i] and
   S[i, j])`` is iterated as a vectorised fixed point (a batched 0/1 matrix-vector product
   per iteration) from ``keep = alive``. The rule is triangular, so its fixed point is unique
   and is the greedy answer; iteration ``t`` is already exact on every box whose longest
   chain of suppressions inside the block is shorter than ``t``, so a block takes at most
   ``block_size + 1`` iterations (a handful on detector outputs).

Exactness with torchvision's CPU kernel (results are ``torch.equal``):

* IoU arithmetic is the kernel's: ``inter / (area_i + area_j - inter)`` with widths
  ``x2 - x1`` (no "+1") in the boxes' floating dtype.
* The kernel compares the float32 IoU with the threshold as a C++ ``double``
  (``0.30000001f > 0.3`` is true); :func:`_suppression_threshold` reproduces that.
* Degenerate boxes: two zero-area boxes give ``0 / 0 = NaN``, which is not ``> threshold``,
  so neither suppresses the other (as in torchvision). NaN coordinates are not supported.
* float16 / bfloat16 inputs are converted to float32 (torchvision's CPU kernel rejects them);
  the result is what torchvision returns for the same values given as float32. float64 is
  computed in float64.
* Equal scores are visited in index order (stable sort), like ``torchvision.ops.nms``.
* ``batched_nms`` is exact per-group NMS, i.e. ``torchvision.ops.nms`` run on each group
  separately. That is what ``torchvision.ops.batched_nms`` computes for more than 1000 boxes
  on CPU; for fewer boxes torchvision shifts each group by a coordinate offset, which rounds
  float coordinates and can flip borderline IoUs (8 of 900 random detector-like cases of
  <= 1000 boxes differed). Where the shift rounds nothing (e.g. coordinates in multiples of
  1/16 px, 80 classes, images up to 2**12 px) both torchvision paths and this module agree.

Host synchronisation: per step and chunk, a few sizes are read on the host (kept boxes per
group, boolean-mask results) and the fixed point checks convergence once per iteration;
nothing synchronises per box. The same code runs on CUDA tensors (not yet timed on a GPU).
"""
import torch
from torch import Tensor

# Boxes per group per step: the largest of BLOCK_SIZES whose dense within-block IoU
# (sum over groups of min(group size, block)**2) stays under BLOCK_IOU_ELEMENTS. Larger
# blocks mean fewer Python steps but more IoU work per box; tuned with scripts/bench_nms.py.
BLOCK_SIZES = (64, 128, 256)
BLOCK_IOU_ELEMENTS = 1 << 16
# Upper bound on the number of IoU values materialised at once (bounds peak memory).
MAX_IOU_ELEMENTS = 1 << 22
# Padding elements that cost about as much as the Python overhead of one more chunk.
SPLIT_CHUNK_ELEMENTS = 1 << 15


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS over all boxes.

    Args:
        boxes: (N, 4) floating ``xyxy`` boxes in absolute pixels.
        scores: (N,) floating scores.
        iou_threshold: a box is discarded when its IoU with a kept, higher-scoring box is
            ``> iou_threshold``.

    Returns:
        (K,) int64 indices into ``boxes`` of the kept boxes, sorted by decreasing score, on
        ``boxes.device``.
    """
    _check_inputs(boxes, scores, None)
    return _greedy_nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS applied independently to each group (class) of boxes.

    Args:
        boxes: (N, 4) floating ``xyxy`` boxes in absolute pixels.
        scores: (N,) floating scores.
        idxs: (N,) integer group id (e.g. class label) of each box; boxes of different groups
            never suppress each other.
        iou_threshold: a box is discarded when its IoU with a kept, higher-scoring box of the
            same group is ``> iou_threshold``.

    Returns:
        (K,) int64 indices into ``boxes`` of the kept boxes of all groups, sorted by
        decreasing score, on ``boxes.device``.
    """
    _check_inputs(boxes, scores, idxs)
    return _greedy_nms(boxes, scores, idxs, iou_threshold)


def _check_inputs(boxes: Tensor, scores: Tensor, idxs) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) in xyxy format, got {tuple(boxes.shape)}")
    if not boxes.is_floating_point() or not scores.is_floating_point():
        raise TypeError(
            f"boxes and scores must be floating point, got {boxes.dtype} and {scores.dtype}"
        )
    num_boxes = boxes.shape[0]
    if scores.shape != (num_boxes,):
        raise ValueError(f"scores must have shape ({num_boxes},), got {tuple(scores.shape)}")
    if idxs is not None and idxs.shape != (num_boxes,):
        raise ValueError(f"idxs must have shape ({num_boxes},), got {tuple(idxs.shape)}")


def _suppression_threshold(iou_threshold: float, dtype: torch.dtype):
    """Threshold in ``dtype`` and whether the test is ``>=`` instead of ``>``.

    torchvision's kernel evaluates ``double(iou) > double(iou_threshold)``. For a float32
    IoU this equals ``iou > t32`` when ``t32 = float32(iou_threshold) <= iou_threshold``, and
    ``iou >= t32`` when rounding went up (e.g. 0.3 -> 0.30000001): no float32 lies strictly
    between the double threshold and ``t32``.
    """
    threshold = torch.tensor(float(iou_threshold), dtype=dtype).item()
    return threshold, threshold > float(iou_threshold)


def _greedy_nms(boxes: Tensor, scores: Tensor, idxs, iou_threshold: float,
                block_size=None) -> Tensor:
    """Shared implementation of :func:`nms` (``idxs=None``) and :func:`batched_nms`.

    ``block_size=None`` picks it from the group sizes (:func:`_choose_block_size`).
    """
    device = boxes.device
    num_boxes = boxes.shape[0]
    if num_boxes == 0:
        return torch.empty((0,), dtype=torch.int64, device=device)
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    threshold = _suppression_threshold(iou_threshold, boxes.dtype)

    # Order by decreasing score (stable), then stably by group: every group becomes a
    # contiguous run in decreasing score order.
    score_order = torch.sort(scores, descending=True, stable=True).indices
    if idxs is None:
        sorted_to_input = score_order
        group_sizes = torch.tensor([num_boxes], device=device)
    else:
        groups_by_score = idxs[score_order]
        by_group = torch.sort(groups_by_score, stable=True).indices
        sorted_to_input = score_order[by_group]
        group_sizes = torch.unique_consecutive(groups_by_score[by_group], return_counts=True)[1]
    group_starts = torch.cumsum(group_sizes, 0) - group_sizes
    # Largest groups first: the groups still active at a step are a prefix.
    group_sizes, size_order = torch.sort(group_sizes, descending=True, stable=True)
    group_starts = group_starts[size_order]
    group_sizes_host = group_sizes.tolist()
    if block_size is None:
        block_size = _choose_block_size(group_sizes_host)
    # (5, N + 1) coordinate planes x1, y1, x2, y2, area of the sorted boxes; column N is the
    # NaN padding box. Area is the kernel's (x2 - x1) * (y2 - y1).
    sorted_boxes = boxes[sorted_to_input]
    areas = (sorted_boxes[:, 2] - sorted_boxes[:, 0]) * (sorted_boxes[:, 3] - sorted_boxes[:, 1])
    planes = torch.cat([sorted_boxes, areas[:, None]], dim=1)
    planes = torch.cat([planes, planes.new_full((1, 5), float("nan"))]).t().contiguous()

    kept = _KeptBoxes(len(group_sizes_host), boxes.dtype, device)
    kept_positions = []
    num_active = len(group_sizes_host)
    for first_rank in range(0, group_sizes_host[0], block_size):
        while group_sizes_host[num_active - 1] <= first_rank:  # groups with no box left
            num_active -= 1
        widths = [min(block_size, size - first_rank) for size in group_sizes_host[:num_active]]
        for chunk_start, chunk_end in _chunk_groups(widths):
            width = widths[chunk_start]
            groups = slice(chunk_start, chunk_end)
            # (groups, width) positions of this block in the sorted order; padding -> NaN box.
            column = torch.arange(width, device=device)
            valid = column < (group_sizes[groups, None] - first_rank)
            positions = torch.where(valid, group_starts[groups, None] + first_rank + column,
                                    num_boxes)
            block = planes[:, positions]
            alive = valid & ~kept.overlaps(groups, block, threshold)
            keep = _resolve_block(block, alive, threshold)
            if group_sizes_host[chunk_start] > first_rank + block_size:  # a later step needs them
                kept.append(groups, block, keep)
            kept_positions.append(positions[keep])

    keep_mask = torch.zeros(num_boxes, dtype=torch.bool, device=device)
    keep_mask[sorted_to_input[torch.cat(kept_positions)]] = True
    return score_order[keep_mask[score_order]]


def _choose_block_size(group_sizes):
    """Largest of ``BLOCK_SIZES`` whose first step stays under ``BLOCK_IOU_ELEMENTS``."""
    chosen = BLOCK_SIZES[0]
    for block_size in BLOCK_SIZES[1:]:
        if sum(min(size, block_size) ** 2 for size in group_sizes) <= BLOCK_IOU_ELEMENTS:
            chosen = block_size
    return chosen


def _chunk_groups(widths):
    """Split the active groups of a step into chunks, each laid out as one dense block.

    ``widths``: number of boxes of each group in this step, in decreasing order. Returns
    ``(start, end)`` group ranges; a chunk is padded to the width of its first group. A chunk
    ends where its remaining groups are at most half as wide and padding them would cost more
    than ``SPLIT_CHUNK_ELEMENTS`` (the price of the extra Python operations of a new chunk),
    or where the chunk would exceed ``MAX_IOU_ELEMENTS``.
    """
    chunks, start = [], 0
    while start < len(widths):
        width = widths[start]
        end = min(len(widths), start + max(1, MAX_IOU_ELEMENTS // width ** 2))
        for group in range(start + 1, end):
            if 2 * widths[group] <= width and (end - group) * width ** 2 >= SPLIT_CHUNK_ELEMENTS:
                end = group
                break
        chunks.append((start, end))
        start = end
    return chunks


def _iou_exceeds(first: Tensor, second: Tensor, threshold) -> Tensor:
    """Whether IoU(first[:, g, i], second[:, g, j]) exceeds the NMS threshold -> (G, I, J) bool.

    ``first`` (5, G, I) and ``second`` (5, G, J): contiguous planes x1, y1, x2, y2, area of
    ``xyxy`` boxes; ``threshold`` as returned by :func:`_suppression_threshold`. Same float
    operations as torchvision's CPU NMS kernel: ``w = max(0, min(x2) - max(x1))``,
    ``inter = w * h``, ``iou = inter / (area_i + area_j - inter)``.
    """
    value, inclusive = threshold
    a_x1, a_y1, a_x2, a_y2, a_area = first[:, :, :, None]
    b_x1, b_y1, b_x2, b_y2, b_area = second[:, :, None, :]
    width = torch.minimum(a_x2, b_x2).sub_(torch.maximum(a_x1, b_x1)).clamp_(min=0)
    height = torch.minimum(a_y2, b_y2).sub_(torch.maximum(a_y1, b_y1)).clamp_(min=0)
    inter = width.mul_(height)
    iou = inter.div_(torch.add(a_area, b_area).sub_(inter))
    return iou >= value if inclusive else iou > value


class _KeptBoxes:
    """Boxes kept so far, per group, as NaN-padded (5, num_groups, capacity) planes
    x1, y1, x2, y2, area."""

    def __init__(self, num_groups: int, dtype: torch.dtype, device: torch.device):
        self.planes = torch.full((5, num_groups, 0), float("nan"), dtype=dtype, device=device)
        self.counts = torch.zeros(num_groups, dtype=torch.int64, device=device)
        self.counts_host = [0] * num_groups

    def overlaps(self, groups: slice, block: Tensor, threshold) -> Tensor:
        """Which boxes of ``block`` ((5, G, B) planes of ``groups``) exceed the threshold with
        a kept box of their group -> (G, B) bool."""
        num_groups, width = block.shape[1:]
        num_kept = max(self.counts_host[groups])
        removed = torch.zeros((num_groups, width), dtype=torch.bool, device=block.device)
        kept_chunk = max(1, MAX_IOU_ELEMENTS // (num_groups * width))
        for start in range(0, num_kept, kept_chunk):
            kept = self.planes[:, groups, start:min(num_kept, start + kept_chunk)]
            removed |= _iou_exceeds(kept, block, threshold).any(dim=1)
        return removed

    def append(self, groups: slice, block: Tensor, keep: Tensor) -> None:
        """Append the boxes ``block[:, keep]`` ((5, G, B) planes, (G, B) bool) to ``groups``."""
        counts = self.counts[groups]
        new_counts = counts + keep.sum(dim=1)
        self.counts_host[groups] = new_counts.tolist()
        needed, capacity = max(self.counts_host[groups]), self.planes.shape[2]
        if needed > capacity:
            padding = torch.full((5, self.planes.shape[1], max(needed, 2 * capacity) - capacity),
                                 float("nan"), dtype=self.planes.dtype, device=self.planes.device)
            self.planes = torch.cat([self.planes, padding], dim=2)
        slot = counts[:, None] + torch.cumsum(keep, dim=1) - 1
        group = torch.arange(groups.start, groups.stop, device=keep.device)[:, None]
        self.planes[:, group.expand_as(keep)[keep], slot[keep]] = block[:, keep]
        self.counts[groups] = new_counts


def _resolve_block(block: Tensor, alive: Tensor, threshold) -> Tensor:
    """Exact greedy keep decision inside a block -> (G, B) bool.

    ``block`` (5, G, B): planes x1, y1, x2, y2, area of ``B`` consecutive boxes per group in
    decreasing score order (NaN padding allowed). ``alive`` (G, B) bool: not suppressed by a
    kept box of an earlier block.
    """
    width = block.shape[2]
    before = torch.ones((width, width), dtype=torch.bool, device=alive.device).triu_(1)
    # suppresses[g, i, j]: box i comes before box j and overlaps it too much.
    suppresses = (_iou_exceeds(block, block, threshold) & before).float()
    alive = alive[:, None, :].float()  # (G, 1, B) 0/1: batched 0/1 vector for bmm
    keep = alive
    while True:  # at most width + 1 iterations, see the module docstring
        new_keep = alive * (torch.bmm(keep, suppresses) == 0)
        if torch.equal(new_keep, keep):
            return keep[:, 0, :] > 0
        keep = new_keep
