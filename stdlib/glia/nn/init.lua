-- glia.nn -- neural-network layers as Lua classes: `local nn = require "glia.nn"`.
--
--   nn.Module                   base class (nn/module.lua): nn.Module:extend("Name")
--   nn.Parameter(t)             mark a tensor as a parameter for field assignment
--   nn.Linear(in, out, {bias})  nn.Embedding(n, dim)
--   nn.LayerNorm(dim, {eps, elementwise_affine, bias})  nn.RMSNorm(dim, {eps, elementwise_affine})
--   nn.BatchNorm1d(C, {eps, momentum, affine, track_running_stats})
--   nn.BatchNorm2d(C, {eps, momentum, affine, track_running_stats})
--   nn.Conv1d(in, out, k, {stride, padding, dilation, groups, bias})  nn.Conv2d(the same)
--   nn.MaxPool2d(k, stride, padding)  nn.AvgPool2d(k, stride, padding)
--   nn.AdaptiveAvgPool2d(size)  nn.Flatten(start_dim, end_dim)
--   nn.RepBN(C, {eps, momentum, eta})  nn.PRepBN(C, {warmup, steps, norm, eps, bn_eps, momentum, eta})
--   nn.schedule_step(model)     advance every PRepBN's schedule (once per training step)
--   nn.fold(model)              an eval copy with every BatchNorm/RepBN folded into a linear layer
--   nn.Dropout(p)  nn.ReLU()  nn.GELU(approximate)  nn.SiLU()  nn.Identity()
--   nn.Sequential(...)  nn.ModuleList(...)  nn.ModuleDict(t)  nn.Residual(inner)
--   nn.MultiHeadAttention(d_model, n_heads, {kv_heads, causal, dropout, bias, fused})
--   nn.CausalSelfAttention(d_model, n_heads, {kv_heads, dropout, bias, fused})
--   nn.TransformerBlock(d_model, n_heads, {kv_heads, mlp_ratio, dropout, bias, eps, fused})
--   nn.SLA(dim, heads, {grid, kernel_size, qkv_bias})  simplified linear attention (nn/sla.lua)
--   nn.MoE(d, hidden, n_experts, {k, router, shared, aux_alpha, bias_gamma, iterations, ...})
--                               mixture of experts, Chain-of-Experts (nn/moe.lua); nn.aux_loss(model)
--   nn.ACM(d, hidden, learners, {activation, min_choice, tau, gate_hidden, detach})
--                               adaptive computation module (nn/acm.lua)
--   nn.init                     initializers (nn/initializers.lua)
--   nn.functional, nn.F         losses and stateless layers (nn/functional.lua)
local Module = require "glia.nn.module"

local pairs, ipairs, require = pairs, ipairs, require

local nn = {
  Module = Module,
  Parameter = Module.Parameter,
  is_module = Module.is_module,
  init = require "glia.nn.initializers",
  functional = require "glia.nn.functional",
}
nn.F = nn.functional
nn.fold = require("glia.nn.fold").fold

for _, family in ipairs { "linear", "activation", "norm", "container", "attention", "transformer" } do
  for name, cls in pairs(require("glia.nn." .. family)) do nn[name] = cls end
end
for name, cls in pairs(require "glia.nn.conv") do nn[name] = cls end

for name, cls in pairs(require "glia.nn.sla") do nn[name] = cls end
nn.ACM = require("glia.nn.acm").ACM

for name, cls in pairs(require "glia.nn.moe") do nn[name] = cls end

return nn
