"""iadet.tools.assignment_stats: per-object counts by hand, and the command on a tiny set."""
import pytest
import torch

from iadet.tools.assignment_stats import main, object_stats, summarise
from tests.conftest import CONFIGS


def test_object_stats_by_hand():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0],      # area 100: small
                       [0.0, 0.0, 100.0, 100.0]])   # area 10,000: large
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],   # IoU 1 with gt 0: positive for it
                            [0.0, 0.0, 10.0, 5.0],    # IoU 0.5 with gt 0: background -> counted
                            [0.0, 0.0, 100.0, 90.0],  # IoU 0.9 with gt 1: positive for it
                            [0.0, 0.0, 100.0, 60.0],  # IoU 0.6 with gt 1: ignored -> not counted
                            [50.0, 50.0, 60.0, 60.0]])  # IoU 0.01 with gt 1: background, low IoU
    matched = torch.tensor([0, -1, 1, -2, -1])
    rows = object_stats(matched, gt, anchors)
    assert [(r[0], r[1], r[3]) for r in rows] == [("small", 1, 1), ("large", 1, 0)]
    assert rows[0][2] == pytest.approx([1.0]) and rows[1][2] == pytest.approx([0.9])
    table = summarise(rows)
    assert [r[0] for r in table] == ["small", "large", "all"]
    assert table[-1][1:4] == [2, 1.0, 0] and table[-1][4] == pytest.approx(0.95) and table[-1][5] == 0.5
    assert object_stats(torch.full((5,), -1), torch.zeros((0, 4)), anchors) == [] and summarise([]) == []


def test_the_command_prints_a_row_per_rule_and_size(tmp_path, capsys):
    tiny = (f"data.synthetic.cache_dir={tmp_path / 'cache'} data.synthetic.num_train=4 data.synthetic.num_val=2 "
            "data.synthetic.height=96 data.synthetic.width=128")
    assert main(["--config", str(CONFIGS / "quickstart.yaml"), "--images", "4", "--rule", f"max-IoU={tiny}",
                 "--rule", f"ATSS, k in locations={tiny} model.assigner.type=atss "
                 "model.assigner.atss_topk_unit=location"]) == 0
    out = capsys.readouterr().out
    assert "| max-IoU | all |" in out and "| ATSS, k in locations | all |" in out and "CPU " in out
    with pytest.raises(SystemExit):
        main(["--config", str(CONFIGS / "quickstart.yaml"), "--rule", "no title"])
