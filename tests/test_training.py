"""Training in process is transparent (as torchgpipe tests it): ``train_step`` over 2-4 stages
and 1, 2 or 4 microbatches gives the losses and weights of plain training, tied weights and
data-parallel stages included; and bad input is refused with a clear error."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import dora_fx
from dora_fx import models
from dora_fx.training_tasks import without_dropout

BATCH_NORM = {"cnn", "mobilenetv2", "resnet"}  # differ with microbatches > 1, by nature


def _logits(output):
    if isinstance(output, torch.Tensor):
        return output
    return output["logits"] if "logits" in output else output[0]


def loss_fn(output, target):
    z = _logits(output)
    if target.dtype == torch.int64:
        return F.cross_entropy(z.reshape(-1, z.shape[-1]), target.reshape(-1))
    return F.mse_loss(z, target)


def _setup(name: str):
    torch.manual_seed(0)
    model, example = models.build(name, batch=4)
    model = without_dropout(model).train()
    with torch.no_grad():
        out = _logits(copy.deepcopy(model)(*example))
    generator = torch.Generator().manual_seed(1)
    if out.dim() == 3:
        target = torch.randint(0, out.shape[-1], out.shape[:-1], generator=generator)
    else:
        target = torch.randn(out.shape, generator=generator)
    return model, example, target


def _train_both(model, compiled, example, target, steps=3):
    reference = copy.deepcopy(model)
    ours = torch.optim.SGD(compiled.parameters(), lr=0.05)
    theirs = torch.optim.SGD(reference.parameters(), lr=0.05)
    for _ in range(steps):
        loss = compiled.train_step(*example, target=target)
        ours.step()
        ours.zero_grad()
        expected = loss_fn(reference(*example), target)
        expected.backward()
        theirs.step()
        theirs.zero_grad()
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-4, atol=1e-6)
    return reference


CASES = [
    (name, stages, microbatches)
    for name in sorted(models.MODELS)
    for stages, microbatches in ((2, 1), (3, 2), (4, 4))
    if name not in BATCH_NORM or microbatches == 1
]


@pytest.mark.parametrize(("name", "stages", "microbatches"), CASES)
def test_train_step_equals_plain_training(name, stages, microbatches):
    model, example, target = _setup(name)
    reference = copy.deepcopy(model)
    compiled = dora_fx.compile(
        model, dora_fx.scenarios.smart_home(), dora_fx.QoE(batch=4), example_inputs=example,
        mode="train", loss_fn=loss_fn, num_stages=stages, microbatches=microbatches,
    )  # fmt: skip
    assert list(compiled.state_dict()) == list(reference.state_dict())  # the model's keys
    assert len(list(compiled.parameters())) == len(list(reference.parameters()))  # tied: once
    trained = _train_both(reference, compiled, example, target)
    ours, theirs = compiled.state_dict(), trained.state_dict()
    for key, tensor in theirs.items():
        torch.testing.assert_close(ours[key], tensor, rtol=1e-4, atol=1e-5, msg=key)
    reference.load_state_dict(compiled.state_dict())  # what a user does after training


def test_a_data_parallel_stage_trains_like_the_whole_batch():
    model, example, target = _setup("mlp")
    plan = (
        "plan p\nstage 0 blocks=0:4 devices=phone,laptop shares=0.5,0.5\n"
        "stage 1 blocks=4:9 devices=jetson"
    )
    compiled = dora_fx.compile(
        copy.deepcopy(model), dora_fx.scenarios.smart_home(), dora_fx.QoE(batch=4),
        example_inputs=example, mode="train", loss_fn=loss_fn, plan=plan, microbatches=2,
    )  # fmt: skip
    trained = _train_both(model, compiled, example, target)
    for key, tensor in trained.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], tensor, rtol=1e-4, atol=1e-6)


def test_plain_autograd_fills_the_gradients():
    model, example, target = _setup("gpt2")
    compiled = dora_fx.compile(
        copy.deepcopy(model), dora_fx.scenarios.smart_home(), example_inputs=example,
        mode="train", num_stages=2, microbatches=2,
    )  # fmt: skip
    loss_fn(compiled(*example), target).backward()
    loss_fn(model(*example), target).backward()
    grads = dict(compiled.named_parameters())
    for key, parameter in model.named_parameters():
        torch.testing.assert_close(grads[key].grad, parameter.grad, rtol=1e-4, atol=1e-6, msg=key)


def test_batch_norm_with_microbatches_warns_that_it_differs():
    model, example, _ = _setup("cnn")
    with pytest.warns(UserWarning, match=r"batch norm layer\(s\) .* 2 microbatches: .* differ"):
        dora_fx.compile(
            model, dora_fx.scenarios.smart_home(), example_inputs=example, mode="train",
            loss_fn=loss_fn, num_stages=2, microbatches=2,
        )  # fmt: skip


@pytest.fixture(scope="module")
def trainable():
    model, example, target = _setup("mlp")
    compiled = dora_fx.compile(
        model, dora_fx.scenarios.smart_home(), example_inputs=example, mode="train",
        loss_fn=loss_fn, num_stages=2, microbatches=2,
    )  # fmt: skip
    return compiled, example, target


def test_a_loss_that_is_not_a_scalar_is_refused(trainable):
    compiled, example, target = trainable
    compiled.loss_fn = lambda output, y: (output - y) ** 2
    try:
        with pytest.raises(dora_fx.InputError, match=r"loss_fn must return a scalar .* got \(2, 10\)"):
            compiled.train_step(*example, target=target)
    finally:
        compiled.loss_fn = loss_fn


def test_targets_of_the_wrong_batch_are_refused(trainable):
    compiled, example, target = trainable
    with pytest.raises(dora_fx.InputError, match=r"target has 3 rows .* a batch of 4"):
        compiled.train_step(*example, target=target[:3])


def test_train_mode_on_an_eval_model_says_what_happens():
    model, example = models.build("mlp", batch=4)
    model.eval()
    with pytest.warns(UserWarning, match=r"model is in eval mode; mode='train' captures it in train mode"):
        compiled = dora_fx.compile(model, dora_fx.scenarios.smart_home(), example_inputs=example,
                                   mode="train", loss_fn=loss_fn, num_stages=2)  # fmt: skip
    assert compiled.training and not model.training  # the model is left as it was


def test_train_step_needs_a_loss_and_a_train_mode_compile():
    model, example = models.build("mlp", batch=4)
    compiled = dora_fx.compile(model.eval(), dora_fx.scenarios.smart_home(), example_inputs=example)
    with pytest.raises(dora_fx.InputError, match=r"train_step needs the loss"):
        compiled.train_step(*example, target=torch.zeros(4, 10))
    compiled.loss_fn = loss_fn
    with pytest.raises(dora_fx.InputError, match=r"compiled in eval mode"):
        compiled.train_step(*example, target=torch.zeros(4, 10))
    with pytest.raises(dora_fx.InputError, match=r"mode must be 'train', 'eval' or None"):
        dora_fx.compile(model, dora_fx.scenarios.smart_home(), example_inputs=example, mode="fit")


def test_training_memory_that_fits_no_device_is_refused_naming_it_and_the_bytes():
    model, example, _ = _setup("mlp")
    roomy = dora_fx.Cluster(tuple(dora_fx.Device(n, 1e11) for n in ("a", "b")))
    compiled = dora_fx.compile(copy.deepcopy(model), roomy, dora_fx.QoE(batch=4), example_inputs=example,
                               mode="train", loss_fn=loss_fn, num_stages=2)  # fmt: skip
    memory = compiled.memory
    assert [m.device for m in memory] == ["a", "b"]
    assert all(m.grads == m.weights and m.optimizer == 2 * m.weights for m in memory)  # adamw
    assert all(m.activations > 0 for m in memory)
    assert "training memory per device (1F1B, adamw, batch 4)" in compiled.explain()
    # room for the weights twice over (inference fits), not for gradients and AdamW's moments
    small = max(m.weights for m in memory) * 2.5
    tight = dora_fx.Cluster(tuple(dora_fx.Device(n, 1e11, memory_bytes=small) for n in ("a", "b")))
    dora_fx.compile(copy.deepcopy(model), tight, dora_fx.QoE(batch=4), example_inputs=example,
                    mode="eval", num_stages=2)  # fmt: skip
    with pytest.raises(dora_fx.InfeasibleQoEError,
                       match=r"training does not fit device '.' \(adamw\): stage . on .: weights .* "
                       r"\+ grads .* \+ optimizer .* \+ activations .* in flight\) = .* KiB of"):  # fmt: skip
        dora_fx.compile(copy.deepcopy(model), tight, dora_fx.QoE(batch=4), example_inputs=example,
                        mode="train", loss_fn=loss_fn, num_stages=2)  # fmt: skip


def test_the_plan_budgets_the_optimizer_it_is_told():
    model, example, _ = _setup("mlp")
    roomy = dora_fx.Cluster(tuple(dora_fx.Device(n, 1e11) for n in ("a", "b")))
    compiled = dora_fx.compile(copy.deepcopy(model), roomy, dora_fx.QoE(batch=4), example_inputs=example,
                               mode="train", loss_fn=loss_fn, num_stages=2, optimizer="sgd")  # fmt: skip
    assert all(m.optimizer == 0 for m in compiled.memory)  # plain SGD keeps no state
    assert compiled.state.problem.training.optimizer == "sgd"
    with pytest.raises(dora_fx.InputError, match=r"optimizer='lion' is not one the planner knows"):
        dora_fx.compile(copy.deepcopy(model), roomy, example_inputs=example, mode="train",
                        loss_fn=loss_fn, optimizer="lion")  # fmt: skip


def test_a_run_whose_optimizer_keeps_more_state_than_planned_warns():
    model, example, target = _setup("mlp")
    compiled = dora_fx.compile(copy.deepcopy(model), dora_fx.scenarios.smart_home(), dora_fx.QoE(batch=4),
                               example_inputs=example, mode="train", loss_fn=loss_fn, num_stages=2,
                               optimizer="sgd")  # fmt: skip
    with pytest.warns(UserWarning, match=r"this run steps AdamW, whose state .* planned for sgd"):
        compiled._check_optimizer_state(lambda ps: torch.optim.AdamW(ps, lr=1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled._check_optimizer_state(lambda ps: torch.optim.SGD(ps, lr=1e-3))
