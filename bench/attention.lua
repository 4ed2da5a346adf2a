-- bench/attention.lua -- exact attention workloads (WORKLOADS.md) timed inside glia.
--
-- Usage: glia bench/attention.lua WORKLOAD...   (bench/attention.sh runs one
-- workload per process, so that the peak RSS printed is that workload's own)
--   attn_fwd_N      causal glia.attention forward, B=1, H=8, d=64 (no grad)
--   attn_fwdbwd_N   the same, forward + backward (dq, dk, dv)
--   sgemm_2048      glia.matmul 2048^3, the ceiling the efficiency refers to
-- Prints one line per workload: "name median_ms rate unit peak_rss_MB".
-- Useful FLOPs: forward 4*N*N*d*H/2 (causal computes half the scores),
-- forward + backward 3.5x that (backward = 2.5x forward), as torch_ref.py.
local glia = require "glia"
local util = require "bench.util"
local fmt = string.format
local time, peak_rss = util.time, util.peak_rss

local function report(name, sec, rate, unit)
  io.write(fmt("%s %.3f %.2f %s %.0f\n", name, sec * 1e3, rate, unit, peak_rss()))
  io.flush()
end

local H, D = 8, 64

local function attn(name, n, backward)
  local q, k, v = glia.randn(1, H, n, D), glia.randn(1, H, n, D), glia.randn(1, H, n, D)
  local flops = 4 * n * n * D * H / 2 * (backward and 3.5 or 1)
  local reps = n <= 1024 and 10 or n <= 4096 and 5 or 3
  local s
  if backward then
    local dout = glia.ones(1, H, n, D) -- as o.sum().backward()
    for _, x in ipairs({ q, k, v }) do x:requires_grad() end
    s = time(function()
      q:zero_grad() k:zero_grad() v:zero_grad()
      local o = glia.attention(q, k, v, true)
      o:backward(dout)
      o:free()
    end, reps)
  else
    s = time(function() glia.no_grad(glia.attention, q, k, v, true):free() end, reps)
  end
  report(name, s, flops / s * 1e-9, "GFLOP/s")
end

local W = {}
for _, n in ipairs({ 1024, 4096, 8192 }) do
  W["attn_fwd_" .. n] = function(name) attn(name, n, false) end
  W["attn_fwdbwd_" .. n] = function(name) attn(name, n, true) end
end

W.sgemm_2048 = function(name)
  local n = 2048
  local a, b = glia.randn(n, n), glia.randn(n, n)
  local s = time(function() glia.matmul(a, b):free() end, 7)
  report(name, s, 2 * n ^ 3 / s * 1e-9, "GFLOP/s")
end

for _, name in ipairs(arg) do
  local w = W[name]
  if not w then
    io.stderr:write("bench/attention.lua: unknown workload " .. name .. "\n")
    os.exit(1)
  end
  w(name)
end
