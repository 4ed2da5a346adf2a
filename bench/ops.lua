-- bench/ops.lua -- op-level workloads (WORKLOADS.md) timed inside glia.
--
-- Usage: glia bench/ops.lua WORKLOAD...      (bench/run calls it)
-- Prints one line per workload: "name median_ms rate unit". Times are wall
-- clock (glia.clock, monotonic), medians over several runs after a warm-up.
-- Results are freed at once (r:free()), as PyTorch frees by refcount.
local glia = require "glia"
local util = require "bench.util"
local fmt = string.format
local median, time = util.median, util.time

local function report(name, sec, rate, unit)
  io.write(fmt("%s %.4f %.2f %s\n", name, sec * 1e3, rate, unit))
end

local W = {}

-- gemm_N: C = A B, square f32.
for _, n in ipairs({256, 1024, 2048}) do
  W["gemm_" .. n] = function(name)
    local a, b = glia.randn(n, n), glia.randn(n, n)
    local s = time(function() glia.matmul(a, b):free() end, n <= 256 and 50 or n <= 1024 and 15 or 7)
    report(name, s, 2 * n ^ 3 / s * 1e-9, "GFLOP/s")
  end
end

-- Batched products: per-head GEMMs of attention and an uneven batch. They
-- decide when ops/matmul.c runs a batch on its pool (see balanced()).
local bmm = {
  bmm_64x64x64_b64 = {64, 64, 64, 64},
  bmm_256x64x256_b16 = {16, 256, 64, 256},
  bmm_1024x64x1024_b4 = {4, 1024, 64, 1024},
  bmm_512x512x512_b3 = {3, 512, 512, 512},
}
for name, s in pairs(bmm) do
  W[name] = function()
    local B, N, K, M = s[1], s[2], s[3], s[4]
    local a, b = glia.randn(B, N, K), glia.randn(B, K, M)
    local sec = time(function() glia.matmul(a, b):free() end, 20)
    report(name, sec, 2 * B * N * K * M / sec * 1e-9, "GFLOP/s")
  end
end

-- linear_fwd / linear_fwdbwd: the GPT MLP's first layer, 4096 tokens, 256 -> 1024.
W.linear_fwd = function(name)
  local x, w, b = glia.randn(16, 256, 256), glia.randn(1024, 256), glia.randn(1024)
  local s = time(function() glia.linear(x, w, b):free() end, 20)
  report(name, s, 2 * 4096 * 256 * 1024 / s * 1e-9, "GFLOP/s")
end
W.linear_fwdbwd = function(name)
  local x = glia.randn(16, 256, 256):requires_grad()
  local w, b = glia.randn(1024, 256):requires_grad(), glia.randn(1024):requires_grad()
  local g = glia.randn(16, 256, 1024)
  local s = time(function()
    local y = glia.linear(x, w, b)
    y:backward(g)
    y:free()
  end, 10)
  report(name, s, 3 * 2 * 4096 * 256 * 1024 / s * 1e-9, "GFLOP/s")
end

-- decode_linears: one token through the 16 linear layers of the gpt_train
-- model (4 blocks of qkv 256->768, proj 256->256, fc 256->1024, fc2
-- 1024->256, 12.6 MB of weights), one row each, as decoding runs them;
-- bench/gemm_c.c times the same with OpenBLAS's sgemv. Rate: GB/s of weights.
W.decode_linears = function(name)
  local shapes, layers, bytes = { {256, 768}, {256, 256}, {256, 1024}, {1024, 256} }, {}, 0
  for _ = 1, 4 do
    for _, s in ipairs(shapes) do
      layers[#layers + 1] = { glia.randn(1, s[1]), glia.randn(s[2], s[1]), glia.randn(s[2]) }
      bytes = bytes + 4 * s[1] * s[2]
    end
  end
  local sec = time(function()
    for _, l in ipairs(layers) do glia.linear(l[1], l[2], l[3]):free() end
  end, 100)
  report(name, sec, bytes / sec * 1e-9, "GB/s")
end

-- linear_row_*: one token through a layer, as in decoding (matrix-vector).
for name, s in pairs({linear_row_256x1024 = {256, 1024}, linear_row_1024x256 = {1024, 256},
                      linear_row_768x3072 = {768, 3072}}) do
  W[name] = function()
    local x, w, b = glia.randn(1, s[1]), glia.randn(s[2], s[1]), glia.randn(s[2])
    local sec = time(function() glia.linear(x, w, b):free() end, 200)
    report(name, sec, 2 * s[1] * s[2] / sec * 1e-9, "GFLOP/s")
  end
end

-- add_16M: a + b, b broadcast over rows. gelu_16M in its two forms:
-- gelu_tanh_16M (GPT-2's, what nn.TransformerBlock uses) and gelu_erf_16M
-- (exact, the default of glia and PyTorch).
local function stream(f)
  return function(name)
    local a, b = glia.randn(4096, 4096), glia.randn(4096)
    local s = time(function() f(a, b):free() end, 10)
    report(name, s, 2 * 4 * 4096 * 4096 / s * 1e-9, "GB/s")
  end
end
W.add_16M = stream(function(a, b) return a + b end)
W.gelu_tanh_16M = stream(function(a) return glia.gelu(a, "tanh") end)
W.gelu_erf_16M = stream(function(a) return glia.gelu(a, "erf") end)

-- op_add_4: the cost of one tiny op called from Lua ({4} + {4}), in us.
W.op_add_4 = function(name)
  local x, y = glia.tensor{1, 2, 3, 4}, glia.tensor{5, 6, 7, 8}
  local n = 200000
  local s = time(function()
    for _ = 1, n do local _ = x + y end
  end, 5)
  report(name, s, s / n * 1e6, "us/op")
end

-- conv2d_fwd / conv2d_fwdbwd: B=32, 64 -> 64 channels, 32x32, 3x3, padding 1,
-- with bias (im2col + sgemm). dwconv2d_fwd / dwconv2d_fwdbwd: B=32, 256
-- channels, 32x32, 5x5, padding 2, groups 256 (the direct depth-wise
-- kernel). Rates count 2 FLOPs per multiply-add; fwdbwd counts the forward
-- and the two backward products (x and w): 3x the forward.
local convs = {
  conv2d = { B = 32, C = 64, O = 64, HW = 32, k = 3, pad = 1, groups = 1 },
  dwconv2d = { B = 32, C = 256, O = 256, HW = 32, k = 5, pad = 2, groups = 256 },
}
for cname, c in pairs(convs) do
  local flops = 2 * c.B * c.O * c.HW * c.HW * (c.C / c.groups) * c.k * c.k
  local opts = { padding = c.pad, groups = c.groups }
  W[cname .. "_fwd"] = function(name)
    local x, w = glia.randn(c.B, c.C, c.HW, c.HW), glia.randn(c.O, c.C / c.groups, c.k, c.k)
    local b = glia.randn(c.O)
    local s = time(function() glia.conv2d(x, w, b, opts):free() end, 10)
    report(name, s, flops / s * 1e-9, "GFLOP/s")
  end
  W[cname .. "_fwdbwd"] = function(name)
    local x = glia.randn(c.B, c.C, c.HW, c.HW):requires_grad()
    local w = glia.randn(c.O, c.C / c.groups, c.k, c.k):requires_grad()
    local b = glia.randn(c.O):requires_grad()
    local g = glia.randn(c.B, c.O, c.HW, c.HW)
    local s = time(function()
      local y = glia.conv2d(x, w, b, opts)
      y:backward(g)
      y:free()
    end, 5)
    report(name, s, 3 * flops / s * 1e-9, "GFLOP/s")
  end
end

-- sla_4096 / sla_exact_4096: simplified linear attention (glia.linear_attention)
-- and exact non-causal attention (glia.attention) on the same q, k, v {1,8,4096,64},
-- forward + backward. Rates: GFLOP/s of the products each one runs (linear:
-- 14 N d^2 per head, 2 forward + 5 backward; exact: 4 N^2 d forward, 3.5x
-- that with backward).
local function qkv_fwdbwd(f, reps)
  local B, H, N, d = 1, 8, 4096, 64
  local q, k, v = glia.randn(B, H, N, d), glia.randn(B, H, N, d), glia.randn(B, H, N, d)
  for _, x in ipairs({ q, k, v }) do x:requires_grad() end
  local g = glia.randn(B, H, N, d)
  return time(function()
    local y = f(q, k, v)
    y:backward(g)
    y:free()
    for _, x in ipairs({ q, k, v }) do x:zero_grad() end
  end, reps), B * H * N * d
end
W.sla_4096 = function(name)
  local s, work = qkv_fwdbwd(function(q, k, v) return glia.linear_attention(q, k, v) end, 10)
  report(name, s, 14 * work * 64 / s * 1e-9, "GFLOP/s")
end
W.sla_exact_4096 = function(name)
  local s, work = qkv_fwdbwd(function(q, k, v) return glia.attention(q, k, v) end, 3)
  report(name, s, 3.5 * 4 * work * 4096 / s * 1e-9, "GFLOP/s")
end

-- slab_block_3136 / ln_block_3136: one ViT block of models/vit.lua in eval
-- mode on a 56x56 grid (N = 3136 tokens, C = 96, 3 heads, MLP x4), one image:
-- SLAB's (PRepBN + SLA, norms folded by nn.fold: no normalization left) and
-- the usual LayerNorm + softmax attention. Rate: images/s.
local function vit_block(name, attention, norm)
  local nn, ViT = require "glia.nn", require "models.vit"
  local cfg = { attention = attention, norm = norm, dim = 96, heads = 3, mlp_ratio = 4,
                warmup = 0, steps = 1 }
  local block = ViT.Block(cfg, { 56, 56 }):eval()
  if norm ~= "layer" then block = nn.fold(block) end
  local x = glia.randn(1, 3136, 96)
  local s = glia.no_grad(time, function() block(x):free() end, 10)
  report(name, s, 1 / s, "images/s")
end
W.slab_block_3136 = function(name) vit_block(name, "sla", "prepbn") end
W.ln_block_3136 = function(name) vit_block(name, "softmax", "layer") end

-- moe: one MoE layer forward + backward, 4096 tokens, d 256, 8 experts of
-- 256 -> 512 -> 256 (exact GELU, with biases), top-2 softmax routing
-- renormalized, Switch aux loss (alpha 1e-2); loss = sum(y) + aux, as
-- torch_ref.py's. Useful FLOPs: 3 x (router 2 T d E + 2 T k 2 d F).
W.moe = function(name)
  local T, d, E, F, k = 4096, 256, 8, 512, 2
  local x = glia.randn(T, d):requires_grad()
  local wr = (glia.randn(E, d) * 0.06):requires_grad()
  local w1, b1 = (glia.randn(E, F, d) * 0.06):requires_grad(), glia.zeros(E, F):requires_grad()
  local w2, b2 = (glia.randn(E, d, F) * 0.04):requires_grad(), glia.zeros(E, d):requires_grad()
  local s = time(function()
    local y, info = glia.moe(x, wr, w1, b1, w2, b2, { k = k, aux_alpha = 1e-2 })
    y:sum():add(info.aux):backward()
    for _, p in ipairs { x, wr, w1, b1, w2, b2 } do p.grad = nil end
  end, 10)
  local flops = 3 * (2 * T * d * E + 2 * T * k * 2 * d * F)
  report(name, s, flops / s * 1e-9, "GFLOP/s")
end

for _, name in ipairs(arg) do
  local f = W[name]
  if not f then error("bench/ops.lua: unknown workload " .. name, 0) end
  f(name)
end
