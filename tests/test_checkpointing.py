"""Gradient checkpointing (engine.inference.models.enable_gradient_checkpointing): the same
loss and gradients as without, in training mode (SFT, reward: LoRA dropout on) and in eval
mode (DPO, PPO, GRPO train without dropout), with the layers really recomputed."""
from __future__ import annotations

import pytest
import torch


def _loss_and_grads(model_dir, checkpointing: bool, train_mode: bool, dropout: float):
    from engine.inference.models import add_lora, load_base, prepare_for_training
    from engine.schema import LoraSettings

    base = load_base(str(model_dir), device="cpu").model
    base = prepare_for_training(base, "none", checkpointing)
    torch.manual_seed(0)
    model = add_lora(base, LoraSettings(r=4, alpha=8, dropout=dropout))
    with torch.no_grad():  # a LoRA that changes the output, so its A gets gradients too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    model.train(train_mode)
    forwards = []
    layer = model.get_base_model().model.layers[0].mlp.act_fn  # inside the checkpointed layer
    hook = layer.register_forward_hook(lambda *a: forwards.append(1))
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29], [2, 6, 10, 14, 18, 22, 26, 30]])
    torch.manual_seed(1)  # the same dropout masks in both runs
    logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads, len(forwards)


@pytest.mark.parametrize("train_mode,dropout", [(True, 0.1), (False, 0.0)])
def test_checkpointing_gives_the_same_loss_and_gradients(tiny_model_dir, train_mode, dropout):
    loss, grads, calls = _loss_and_grads(tiny_model_dir, False, train_mode, dropout)
    loss_ck, grads_ck, calls_ck = _loss_and_grads(tiny_model_dir, True, train_mode, dropout)
    assert calls == 1
    assert calls_ck == 2, "with checkpointing the layer must run again in the backward pass"
    assert loss_ck == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ck.keys() and len(grads) > 0
    for name in grads:
        assert grads[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_ck[name], grads[name], rtol=1e-5, atol=1e-7)


def test_a_checkpointed_model_still_switches_its_dropout_off(tiny_model_dir):
    """The layers keep their checkpointing flag in eval mode, but dropout inside them is
    off: two eval forwards of a model with LoRA dropout give the same logits."""
    from engine.inference.models import add_lora, load_base, prepare_for_training
    from engine.schema import LoraSettings

    base = prepare_for_training(load_base(str(tiny_model_dir), device="cpu").model, "none", True)
    model = add_lora(base, LoraSettings(r=4, dropout=0.5))
    model.eval()
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
    torch.testing.assert_close(a, b)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and not any(m.training for m in dropouts)
