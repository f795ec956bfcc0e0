from dora_fx.cli import build_parser, main


def test_plan_writes_stages_and_checks_them(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["plan", "--model", "mlp", "--size", "small", "--scenario", "edge_cluster",
                 "--latency-ms", "200", "--batch", "4", "--num-stages", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "plan.json", "plan.txt", "stage_0.py", "stage_0.safetensors", "stage_1.py",
        "stage_1.safetensors", "stage_2.py", "stage_2.safetensors",
    ]
    assert "stage  devices" in printed and "assert_close passed" in printed


def test_errors_are_reported_not_raised(tmp_path, capsys):
    code = main(["plan", "--model", "mlp", "--size", "small", "--scenario", "edge_cluster",
                 "--num-stages", "99", "--out", str(tmp_path)])
    assert code == 2
    assert "dora-fx: error: asked for 99 stages" in capsys.readouterr().err


def test_help_explains_every_option():
    text = build_parser()._subparsers._group_actions[0].choices["plan"].format_help()
    for option in ("--model", "--size", "--scenario", "--latency-ms", "--throughput-rps",
                   "--energy-j", "--objective", "--batch", "--num-stages", "--out", "--no-check"):
        assert option in text
