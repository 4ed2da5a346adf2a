-- bench/skip.lua -- gpt_decode_skip: the gpt_decode workload (greedy
-- generation of 255 tokens after a 1-token prompt, batch 1, KV cache) on
-- an 8-layer models/gpt.lua (vocab 73, d=256, 4 heads, context 256) under
-- glia.skip plans, against the same model without one:
--   uls2        Unified Layer Skipping, s = 2 (tokens run layers 1, 3, 5, 8)
--   attn_half   the attention sub-layers of layers 4..7 dropped for good
-- The ideal tokens/s of a plan is the full model's times full / remaining
-- per-token work, the work counted in multiply-adds: per layer 4 C^2
-- (attention projections) + 2 C n (scores and values over the n cached
-- positions, averaged over the run) + 8 C^2 (MLP), plus C V for the head;
-- the embeddings, norms and sampling count as not skipped (they are
-- nearly free). Prints "name ms tok/s" per variant, then each plan's
-- speedup, its ideal and the ratio (target >= 0.85).
--
-- Usage: glia bench/skip.lua [--rounds N]   (5; the variants alternate in
-- every round so that a slow spell of a shared machine hits all of them,
-- and a speedup is the median of the rounds' own ratios)
local script_dir = (arg and arg[0] or ""):match("^(.-)[^/]*$")
package.path = script_dir .. "../?.lua;" .. package.path

local glia = require "glia"
local skip = require "glia.skip"
local GPT  = require "models.gpt"
local util = require "bench.util"

local clock, fmt, median = glia.clock, string.format, util.median
local V, C, L, N = 73, 256, 8, 255

local rounds = 5
if arg and arg[1] == "--rounds" then rounds = tonumber(arg[2]) or rounds end

glia.manual_seed(0)
local model = GPT { vocab_size = V, n_layers = L }
local prompt = glia.ones(1, 1, "i64")

local VARIANTS = {
  { name = "full", plan = nil },
  { name = "uls2", plan = skip.plan_uniform(L, 2) },
  { name = "attn_half", plan = skip.plan_drop(L, { attn = { 4, 5, 6, 7 } }) },
}

-- Multiply-adds of the whole run's decode steps under plan (nil: none).
local function work(plan)
  local run_attn, run_mlp = {}, {}
  for l = 1, L do run_attn[l], run_mlp[l] = true, true end
  if plan then
    for _, l in ipairs(plan.attn) do run_attn[l] = false end
    for _, l in ipairs(plan.mlp) do run_mlp[l] = false end
    if plan.decode then
      local keep = {}
      for _, l in ipairs(plan.decode) do keep[l] = true end
      for l = 1, L do
        if not keep[l] then run_attn[l], run_mlp[l] = false, false end
      end
    end
  end
  local total = 0
  for step = 1, N do
    local n = 1 + step -- cached positions the new token attends to
    total = total + C * V
    for l = 1, L do
      if run_attn[l] then total = total + 4 * C * C + 2 * C * n end
      if run_mlp[l] then total = total + 8 * C * C end
    end
  end
  return total
end

local times = {}
for _, v in ipairs(VARIANTS) do
  times[v.name] = {}
  model:generate(prompt, N, { temperature = 0, plan = v.plan }) -- warm-up
end
for r = 1, rounds do
  for _, v in ipairs(VARIANTS) do
    local t0 = clock()
    model:generate(prompt, N, { temperature = 0, plan = v.plan })
    times[v.name][r] = clock() - t0
  end
end

local rate = {}
for _, v in ipairs(VARIANTS) do
  local s = median(times[v.name])
  rate[v.name] = N / s
  io.write(fmt("gpt_decode_skip_%s %.1f %.0f tok/s\n", v.name, s * 1e3, rate[v.name]))
end
local full = work(nil)
for i = 2, #VARIANTS do
  local v = VARIANTS[i]
  local per_round = {}
  for r = 1, rounds do per_round[r] = times.full[r] / times[v.name][r] end
  local speedup, ideal = median(per_round), full / work(v.plan)
  io.write(fmt("  %s: %.2fx the full model's tokens/s (median of %d rounds' ratios); ideal " ..
               "%.2fx (work %.3f of full); %.2f of the ideal (target >= 0.85)\n", v.name,
               speedup, rounds, ideal, 1 / ideal, speedup / ideal))
end
