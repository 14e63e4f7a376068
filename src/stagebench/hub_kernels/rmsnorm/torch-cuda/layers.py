"""RMSNorm layer for `kernels.kernelize()`: replaces the forward of layers marked "RMSNorm".

kernels keeps the replaced module's own state, so this class only reads `weight` and
`variance_epsilon` (the Llama/Qwen RMSNorm attributes) and may not define anything but `forward`
and the two capability flags. CUDA tensors go through Liger's Triton RMSNorm (what the hub's
liger-kernels LigerRMSNorm runs); any other tensor through the CPU build's PyTorch function, so
a CUDA install can still run a CPU model. That function is repeated from the torch-cpu build on
purpose: kernels loads each build variant as a separate, self-contained package.
"""

import torch
from liger_kernel.ops.rms_norm import LigerRMSNormFunction
from torch import nn


class RMSNormFunction(torch.autograd.Function):
    """Llama casting: the inverse RMS in fp32, the normalized input cast back before the weight."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        # Only x and the per-row rstd are kept; the normalized input is recomputed in backward.
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, rstd = ctx.saved_tensors
        normed32 = x.float() * rstd
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_w32 = (grad_out * normed32.to(x.dtype)).float()
            grad_weight = grad_w32.reshape(-1, grad_w32.shape[-1]).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            g = (grad_out * weight).float()
            # d/dx of x * rsqrt(mean(x^2) + eps), applied to g.
            dot = (g * normed32).mean(-1, keepdim=True)
            grad_x = (rstd * (g - normed32 * dot)).to(x.dtype)
        return grad_x, grad_weight, None


class RMSNorm(nn.Module):
    has_backward = True
    # dynamo captures Liger's Triton launches as user-defined Triton kernels (fullgraph holds).
    can_torch_compile = True

    def forward(self, hidden_states):
        if hidden_states.is_cuda:
            # Liger's defaults: offset 0, Llama casting, dX written into dY (as LigerRMSNorm).
            return LigerRMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)
        return RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)
