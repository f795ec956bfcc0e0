import json

from simcases import chain_problem, pipeline

from dora_fx.cli import main as cli_main
from dora_fx.cli.simulate import problem_to_json
from dora_fx.scenarios import smart_home
from dora_fx.sim import simulate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def main(argv):
    """``dora-fx simulate ARGV``."""
    return cli_main(["simulate", *argv])


def _check_trace(trace: dict, devices: list[str], requests: int, stages: int) -> None:
    """... ``devices`` in stage order; requests come from the phone and results return to it
    (smart_home's source), so a plan ending off the phone sends one transfer more."""
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    compute = [e for e in events if e["ph"] == "X" and e.get("cat") == "compute"]
    per_device: dict[str, list[tuple[float, float]]] = {}
    for e in compute:
        per_device.setdefault(names[e["pid"]], []).append((e["ts"], e["ts"] + e["dur"]))
    # every device of the plan computes once per request (one microbatch), nobody else does
    assert sorted(per_device) == sorted(devices)
    assert all(len(spans) == requests for spans in per_device.values())
    assert len(compute) == requests * stages
    # a device never runs two computes at once
    for spans in per_device.values():
        spans.sort()
        assert all(a_end <= b_start + 1e-6 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    sends = [e for e in events if e["ph"] == "X" and e.get("cat") == "send"]
    returned = 1 if devices[stages - 1] != "phone" else 0
    assert len(sends) == requests * (stages - 1 + returned)
    assert any(name.startswith("medium ") for name in names.values())


def test_chrome_trace_and_gantt_of_a_run(tmp_path):
    problem = chain_problem(smart_home())
    plan = pipeline(["phone", "laptop", "jetson"], 6)
    result = simulate(plan, problem, requests=8, concurrency=3)
    trace_path = result.write_chrome_trace(tmp_path / "t.json")
    _check_trace(json.loads(trace_path.read_text()), ["phone", "laptop", "jetson"], 8, 3)
    png = result.write_gantt_png(tmp_path / "g.png")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000


def test_simulate_command_writes_gantt_and_trace(tmp_path, capsys):
    cluster = smart_home()
    problem = chain_problem(cluster)
    (tmp_path / "problem.json").write_text(json.dumps(problem_to_json(problem)))
    (tmp_path / "plan.txt").write_text(pipeline(["phone", "laptop", "jetson", "rpi4"], 6).to_text())
    out = tmp_path / "out"
    status = main([
        "--scenario", "smart_home", "--problem", str(tmp_path / "problem.json"),
        "--plan", str(tmp_path / "plan.txt"), "--requests", "12", "--concurrency", "2", "--out", str(out),
    ])
    assert status == 0
    printed = capsys.readouterr().out
    assert "latency p50" in printed and "analytic:" in printed
    _check_trace(json.loads((out / "trace.json").read_text()), ["phone", "laptop", "jetson", "rpi4"], 12, 4)
    assert (out / "timeline.png").read_bytes()[:8] == PNG_MAGIC
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["simulated"]["requests"] == 12 and metrics["analytic"]["latency_s"] > 0


def test_simulate_command_from_a_model(tmp_path):
    out = tmp_path / "out"
    assert main(["--model", "mlp", "--scenario", "edge_cluster", "--requests", "5", "--out", str(out)]) == 0
    assert (out / "timeline.png").exists() and (out / "trace.json").exists()


def test_simulate_command_reports_a_bad_plan(tmp_path, capsys):
    problem = chain_problem(smart_home())
    (tmp_path / "problem.json").write_text(json.dumps(problem_to_json(problem)))
    (tmp_path / "plan.txt").write_text("plan bad\nstage 0 blocks=0:6 devices=toaster\n")
    status = main(["--problem", str(tmp_path / "problem.json"), "--plan", str(tmp_path / "plan.txt"), "--out", str(tmp_path)])
    assert status == 2
    assert "uses device 'toaster', which is not in cluster 'smart_home'" in capsys.readouterr().err


def test_simulate_command_simulates_the_planners_plan_by_default(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", "mlp", "--scenario", "edge_cluster", "--requests", "3", "--out", str(out)]
    assert main([*argv, "--objective", "energy"]) == 0
    assert "planned for QoE(objective=energy, batch=8)" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["plan"]["name"] == "dora-energy"
    assert main([*argv, "--stages", "2"]) == 0
    baseline = json.loads((out / "metrics.json").read_text())["plan"]
    assert len(baseline["stages"]) == 2 and not baseline["name"].startswith("dora-")


def test_simulate_command_reads_a_saved_folder(tmp_path, capsys):
    import dora_fx
    from dora_fx.models import build
    from dora_fx.scenarios import edge_cluster

    model, inputs = build("mlp", "full", batch=8)
    compiled = dora_fx.compile(model, edge_cluster(4), dora_fx.QoE(batch=8), example_inputs=inputs)
    folder = compiled.save(tmp_path / "saved")
    for plan_arg in (folder, folder / "plan.json", folder / "plan.txt"):
        out = tmp_path / "sim"
        argv = ["--model", "mlp", "--scenario", "edge_cluster", "--requests", "3", "--plan", str(plan_arg)]
        assert main([*argv, "--out", str(out)]) == 0
        simulated = json.loads((out / "metrics.json").read_text())["plan"]
        assert simulated["stages"] == compiled.plan.to_json()["stages"]
    assert main([*argv, "--batch", "4", "--out", str(out)]) == 0
    assert "was made for batch 8; simulating batch 4" in capsys.readouterr().out


def test_simulate_command_reports_a_file_that_is_no_plan(tmp_path, capsys):
    (tmp_path / "x.json").write_text('{"format": 1}')
    argv = ["--model", "mlp", "--plan", str(tmp_path / "x.json"), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "is not a plan (Plan.dumps) or a saved plan.json" in capsys.readouterr().err
