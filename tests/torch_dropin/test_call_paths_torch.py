"""The drop-in's calls reach their kernel through at most four of the
package's files, none visited twice: the module's forward, the choice of
path (``_call``), then the fast path or the operators and the engine."""
from call_path import kernel_path
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch drop-in's tests need torch")

from cybatchnorm import _engine  # noqa: E402
import cybatchnorm.torch as cbt  # noqa: E402


def _step(dtype, memory_format=torch.contiguous_format):
    m = cbt.BatchNorm2d(4).to(dtype)
    x = torch.randn(8, 4, 3, 3, dtype=dtype).to(memory_format=memory_format).requires_grad_()
    return lambda: m(x).sum().backward()


@pytest.mark.parametrize("dtype, memory_format, kernel, want", [
    (torch.float32, torch.contiguous_format, "forward_tensor",
     ["torch/modules.py", "torch/_call.py", "torch/_fast.py"]),
    (torch.float64, torch.channels_last, "forward_tensor",
     ["torch/modules.py", "torch/_call.py", "torch/_fast.py"]),
    (torch.float32, torch.contiguous_format, "backward_tensor", ["torch/_fast.py"]),
    (torch.float16, torch.contiguous_format, "fused_forward",
     ["torch/modules.py", "torch/_call.py", "torch/_ops.py"]),
], ids=["fast f32", "fast f64 channels_last", "fast backward", "eager f16"])
def test_module_forward_reaches_its_kernel_through_at_most_four_files(
        monkeypatch, dtype, memory_format, kernel, want):
    files = kernel_path(monkeypatch, _engine, kernel, _step(dtype, memory_format))
    assert files == want
    assert len(files) <= 4 and len(set(files)) == len(files)


def test_functional_batch_norm_reaches_its_kernel_through_three_files(monkeypatch):
    x = torch.randn(16, 4)
    files = kernel_path(monkeypatch, _engine, "forward_tensor",
                        lambda: cbt.batch_norm(x, None, None, training=True))
    assert files == ["torch/functional.py", "torch/_call.py", "torch/_fast.py"]
