-- bench/acm.lua -- Adaptive Computation Modules (ops/acm.c) against the
-- dense MLP they replace, timed inside glia (WORKLOADS.md acm_4096).
--
-- Usage: glia bench/acm.lua WORKLOAD...
--   acm_dense_4096   the gpt_train MLP, 256 -> 1024 -> 256 GELU (exact), on
--                    4096 tokens, forward without grad: linear, gelu, linear
--   acm_4096         the same weights as 4 learners of width 256, k drawn
--                    uniformly from 0..4 per token (average 2 of 4)
--   acm_allN_4096    every token at k = 4: the whole MLP through glia.acm
--   acm_dense_1      the dense MLP on one token (decoding)
--   acm_decode_1     one token at k = 1
-- Prints "name median_ms rate unit": the rate is the FLOPs each run does
-- (the dense ones the whole MLP, the ACM ones the learners run).
local glia = require "glia"
local util = require "bench.util"
local fmt = string.format
local time = util.time

local d, H, N = 256, 1024, 4
glia.manual_seed(1)
local w1, b1 = glia.randn(H, d) * 0.05, glia.randn(H) * 0.05
local w2, b2 = glia.randn(d, H) * 0.03, glia.randn(d) * 0.05

local function report(name, sec, flops)
  io.write(fmt("%s %.4f %.2f GFLOP/s\n", name, sec * 1e3, flops / sec * 1e-9))
  io.flush()
end

local function dense(T, reps)
  return function(name)
    local x = glia.randn(T, d)
    local s = time(function()
      glia.no_grad(function() return glia.linear(glia.gelu(glia.linear(x, w1, b1)), w2, b2) end):free()
    end, reps)
    report(name, s, 4 * T * d * H)
  end
end

local function gated(T, kfn, reps)
  return function(name)
    local x = glia.randn(T, d)
    local ks = {}
    for i = 1, T do ks[i] = kfn(i) end
    local k = glia.tensor(ks, "i64")
    local flops
    local s = time(function()
      local y
      y, flops = glia.no_grad(glia.acm, x, w1, b1, w2, k, { learners = N })
      y:free()
    end, reps)
    report(name, s, flops)
  end
end

local W = {
  acm_dense_4096 = dense(4096, 21),
  acm_4096 = gated(4096, function() return math.random(0, N) end, 21),
  acm_allN_4096 = gated(4096, function() return N end, 21),
  acm_dense_1 = dense(1, 2001),
  acm_decode_1 = gated(1, function() return 1 end, 2001),
}

math.randomseed(1)
for _, name in ipairs(arg) do
  local w = W[name]
  if not w then
    io.stderr:write("bench/acm.lua: unknown workload " .. name .. "\n")
    os.exit(1)
  end
  w(name)
end
