-- bench/scaling_model.lua -- the step-time model of docs/scaling.md for
-- data-parallel training of the gpt_train model: prints its Markdown tables.
--
--   glia bench/scaling_model.lua [C_seconds [f [alpha_us [buckets [link_GBs]]]]]
--
-- C: one rank's compute per step (forward + backward + optimizer, 16 x 256
-- tokens), measured by bench/ddp.lua (default 2.2 s, one core here); f: the
-- fraction of the all-reduce left exposed however long backward is (0.4,
-- measured here: the last bucket fills when backward ends, and a rank
-- progresses MPI only when a grad hook or sync calls it); alpha: the latency
-- of one message (10 us); buckets: DataParallel's buckets (4 at bucket_mb 4).
-- With link_GBs (a measured bandwidth, e.g. loopback's) it also prints the
-- all-reduce time it predicts for 2 and 4 ranks.
--
-- Model, per step and rank, N ranks, each with its own 16 sequences:
--   S    = 4 P bytes of gradient (P parameters, f32)
--   A(N) = 2 (N-1)/N S / BW + 2 (N-1) k alpha   ring all-reduce of k buckets
--   H    = (2/3) C (1 - 1/k)    backward left to run once the first bucket
--                               is full: what the all-reduce can hide behind
--   T(N) = C + max(f A(N), A(N) - H)      tokens/s = 4096 N / T(N)
local script_dir = (arg and arg[0] or ""):match("^(.-)[^/]*$")
package.path = script_dir .. "../?.lua;" .. package.path
local glia = require "glia"
local GPT = require "models.gpt"

local fmt = string.format
local C = tonumber(arg[1]) or 2.2
local f = tonumber(arg[2]) or 0.4
local alpha = (tonumber(arg[3]) or 10) * 1e-6
local k = tonumber(arg[4]) or 4
local link = tonumber(arg[5])

glia.manual_seed(0)
local P = GPT{ vocab_size = 73 }:num_parameters()
local S = 4 * P

local function allreduce(N, bw) -- bw in bytes/s
  if N == 1 then return 0 end
  return 2 * (N - 1) / N * S / bw + 2 * (N - 1) * k * alpha
end

print(fmt("gpt_train model: P = %d parameters, S = %.2f MB of gradient per step; C = %.3f s, "
          .. "f = %g, alpha = %g us, %d buckets", P, S / 1e6, C, f, alpha * 1e6, k))
print()
print("| ranks | bytes sent per rank | all-reduce 10 Gbit/s | 25 Gbit/s | 100 Gbit/s | "
      .. "step 10 Gbit/s | efficiency 10 / 100 Gbit/s |")
print("|---:|---:|---:|---:|---:|---:|---:|")
local H = 2 / 3 * C * (1 - 1 / k)
for _, N in ipairs { 1, 2, 4, 8, 16, 32, 64 } do
  local a10, a25, a100 = allreduce(N, 10e9 / 8), allreduce(N, 25e9 / 8), allreduce(N, 100e9 / 8)
  local t10 = C + math.max(f * a10, a10 - H)
  local t100 = C + math.max(f * a100, a100 - H)
  print(fmt("| %d | %.1f MB | %.1f ms | %.1f ms | %.1f ms | %.3f s | %.1f%% / %.1f%% |", N,
            N == 1 and 0 or 2 * (N - 1) / N * S / 1e6, a10 * 1e3, a25 * 1e3, a100 * 1e3, t10,
            100 * C / t10, 100 * C / t100))
end
if link then
  print()
  for _, N in ipairs { 2, 4 } do
    print(fmt("predicted all-reduce of the %.2f MB gradient at %.2f GB/s, %d ranks: %.1f ms", S / 1e6,
              link, N, allreduce(N, link * 1e9) * 1e3))
  end
end
