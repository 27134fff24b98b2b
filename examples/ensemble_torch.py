"""An ensemble of small convolutional models with batch norm, trained together
under ``torch.func.vmap``: one batched call per layer for all the models, each
model keeping its own running statistics (``python examples/ensemble_torch.py``).

The models' parameters and buffers are stacked (``stack_module_state``);
``vmap(grad(loss))`` gives every model its gradient on its own data, and the
batch norm layer updates every model's running statistics from its own batch.
The same models trained one by one, with the same data, end in the same
parameters and statistics: the script checks it and prints the differences.
"""
import copy

import torch
from torch.func import functional_call, grad, stack_module_state, vmap

from cybatchnorm.torch import BatchNorm2d

MODELS, STEPS, LR = 4, 5, 0.1


def model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))


def main() -> None:
    torch.manual_seed(0)
    models = [model() for _ in range(MODELS)]
    alone = copy.deepcopy(models)
    params, buffers = stack_module_state(models)      # each (MODELS, ...)
    template = copy.deepcopy(models[0]).to("meta")    # the architecture, no storage

    def loss(p: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(functional_call(template, (p, b), (x,)), y)

    # every model gets a batch of its own: the data are stacked too
    data = torch.randn(STEPS, MODELS, 16, 3, 8, 8)
    labels = torch.randint(0, 2, (STEPS, MODELS, 16))
    for step in range(STEPS):
        grads = vmap(grad(loss))(params, buffers, data[step], labels[step])
        with torch.no_grad():
            for k in params:
                params[k] -= LR * grads[k]

    # the same training, one model at a time
    for i, m in enumerate(alone):
        opt = torch.optim.SGD(m.parameters(), lr=LR)
        for step in range(STEPS):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(data[step, i]), labels[step, i]).backward()
            opt.step()

    worst = {}
    for i, m in enumerate(alone):
        for k, v in list(m.named_parameters()) + list(m.named_buffers()):
            stacked = (params[k][i] if k in params else buffers[k][i]).detach()
            worst[k] = max(worst.get(k, 0.0), float((stacked - v.detach()).abs().max()))
    for k, d in worst.items():
        print(f"{k:24s} largest difference, vmapped ensemble vs one by one: {d:.1e}")
    assert all(d < 1e-5 for d in worst.values()), worst
    assert buffers["1.num_batches_tracked"].tolist() == [STEPS] * MODELS
    print(f"{MODELS} models trained {STEPS} steps together; each kept its own running statistics")


if __name__ == "__main__":
    main()
