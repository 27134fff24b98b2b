"""float16 and bfloat16 through the drop-in and through torch.nn, on the
samples PyTorch tests its own BatchNorm1d/2d/3d with (module_db): the error
of each output and gradient against the float64 computation on the same
(rounded) values, itself rounded to the dtype.

    python benchmarks/reduced_precision.py

Errors are max |result - reference| / max |reference| per tensor; the table
gives, per dtype and mode, the worst over all samples for cybatchnorm.torch
and for torch.nn, and how many (sample, tensor) pairs each is closer on.
"""
import torch
from torch.testing._internal import common_modules

import cybatchnorm.torch as cbt

OURS = {torch.nn.BatchNorm1d: cbt.BatchNorm1d, torch.nn.BatchNorm2d: cbt.BatchNorm2d,
        torch.nn.BatchNorm3d: cbt.BatchNorm3d}
INFOS = [m for m in common_modules.module_db if m.module_cls in OURS]


def _run(module, x, dout):
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    params = list(module.parameters())
    grads = torch.autograd.grad(out, [x] + params, dout, allow_unused=True)
    return [out] + [g for g in grads if g is not None]


def _rel(a, ref):
    a, ref = a.double(), ref.double()
    scale = ref.abs().max().item()
    return 0.0 if scale == 0 else (a - ref).abs().max().item() / scale


def errors(dtype, training):
    """[(sample name, tensor index, ours, torch's)] over every module_db sample."""
    rows = []
    for info in INFOS:
        for i, sample in enumerate(info.module_inputs_func(
                info, device="cpu", dtype=dtype, requires_grad=True, training=training)):
            if not sample.forward_input.args:
                continue
            x = sample.forward_input.args[0]
            if x.numel() == 0 or (training and x.numel() // x.shape[1] < 2):
                continue
            args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
            gen = torch.Generator().manual_seed(i)
            ref_mod = info.module_cls(*args, **kwargs).double()
            with torch.no_grad():
                for p in list(ref_mod.parameters()) + [b for b in ref_mod.buffers()
                                                       if b.is_floating_point()]:
                    p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.5)
                            .to(dtype).double())
            theirs = info.module_cls(*args, **kwargs).to(dtype)
            ours = OURS[info.module_cls](*args, **kwargs).to(dtype)
            theirs.load_state_dict(ref_mod.state_dict())
            ours.load_state_dict(ref_mod.state_dict())
            for m in (ref_mod, theirs, ours):
                m.train(training)
            dout = torch.randn(x.shape, generator=gen).to(dtype)
            ref = [t.to(dtype) for t in _run(ref_mod, x.double(), dout.double())]
            got_o, got_t = _run(ours, x, dout), _run(theirs, x, dout)
            name = f"{info.module_cls.__name__}[{i}]"
            for k, (r, o, t) in enumerate(zip(ref, got_o, got_t)):
                rows.append((name, k, _rel(o, r), _rel(t, r)))
    return rows


def main():
    print(f"{'dtype':10} {'mode':6} {'pairs':>6} {'ours worst':>11} {'torch worst':>12} "
          f"{'ours closer':>12} {'torch closer':>13}")
    for dtype in (torch.float16, torch.bfloat16):
        for training in (True, False):
            rows = errors(dtype, training)
            o = [r[2] for r in rows]
            t = [r[3] for r in rows]
            print(f"{str(dtype).replace('torch.', ''):10} {'train' if training else 'eval':6} "
                  f"{len(rows):6d} {max(o):11.2e} {max(t):12.2e} "
                  f"{sum(a < b for a, b in zip(o, t)):12d} {sum(b < a for a, b in zip(o, t)):13d}")


if __name__ == "__main__":
    main()
