-- bench/gpt.lua -- the gpt_train and gpt_decode workloads of WORKLOADS.md
-- (models/gpt.lua, the shape of bench/torch_ref.py's GPT: vocab 73, d=256,
-- 4 layers, 4 heads, context 256), timed inside glia.
--
-- Usage: glia bench/gpt.lua WORKLOAD...   (one workload per process keeps
-- the peak RSS printed that workload's own)
--   gpt_train      one AdamW step (lr 3e-4) on a random batch of 16 x 256:
--                  forward, cross entropy, backward, step, and a garbage
--                  collection (as examples/train_gpt.lua runs it)
--   gpt_decode     greedy generation of 255 tokens after a 1-token prompt,
--                  batch 1, with the KV cache
--   moe_decode     gpt_decode for the MoE GPT of the same active size: every
--                  block's MLP replaced by 8 experts of 256 -> 512 -> 256,
--                  top-2 (models/gpt.lua's moe option)
--   moe_decode_fit moe_decode with 2 experts, both chosen: the dense
--                  model's 8 MB of MLP weights, the cache control
--   gpt_profile    gpt_train split into forward / backward / optimizer
--                  times, for finding what is slow
--   --torch        also run bench/torch_ref.py (or the shared copy) on the
--                  same workloads and print the ratios: glia and PyTorch
--                  alternate for --rounds N rounds (3), and the ratio is the
--                  median of the rounds' ratios (--rounds needs --torch)
-- Prints one line per workload: "name median_ms rate unit peak_rss_MB"
-- (rate: tokens/s), then the PyTorch side and the ratios with --torch.
-- Times are medians of several runs after a warm-up, by glia.clock.
local script_dir = (arg and arg[0] or ""):match("^(.-)[^/]*$")
package.path = script_dir .. "../?.lua;" .. package.path

local glia  = require "glia"
local optim = require "glia.optim"
local GPT   = require "models.gpt"
local util  = require "bench.util"

local clock, fmt = glia.clock, string.format
local V, B, T = 73, 16, 256
local median, peak_rss = util.median, util.peak_rss

local function report(name, sec, rate)
  io.write(fmt("%s %.1f %.0f tok/s %.0f\n", name, sec * 1e3, rate, peak_rss()))
  io.flush()
end

local function model(moe)
  glia.manual_seed(0)
  return GPT{ vocab_size = V, moe = moe }
end

-- ============================================================ training

-- A training step split into its phases; returns forward, backward and
-- optimizer seconds.
local function train_step(m, opt, x, y)
  local t0 = clock()
  local loss = m:loss(x, y)
  local t1 = clock()
  opt:zero_grad()
  loss:backward()
  local t2 = clock()
  opt:step()
  loss = nil
  collectgarbage() -- as examples/train_gpt.lua does: one step's activations at a time
  return t1 - t0, t2 - t1, clock() - t2
end

local function gpt_train(name, profile)
  local m = model()
  local opt = optim.AdamW(m:parameters(), { lr = 3e-4 })
  local x, y = glia.randint(1, V + 1, B, T), glia.randint(1, V + 1, B, T)
  train_step(m, opt, x, y)
  local fw, bw, st, tot = {}, {}, {}, {}
  for i = 1, 10 do
    fw[i], bw[i], st[i] = train_step(m, opt, x, y)
    tot[i] = fw[i] + bw[i] + st[i]
  end
  local s = median(tot)
  report(name, s, B * T / s)
  if profile then
    io.write(fmt("  forward %.1f ms  backward %.1f ms  optimizer %.1f ms (medians)\n",
                 median(fw) * 1e3, median(bw) * 1e3, median(st) * 1e3))
  end
end

-- ============================================================ decoding

local function gpt_decode(name, moe)
  local m = model(moe)
  local prompt = glia.ones(1, 1, "i64")
  local function gen() m:generate(prompt, 255, { temperature = 0 }) end
  gen()
  local ts = {}
  for i = 1, 5 do
    local t0 = clock()
    gen()
    ts[i] = clock() - t0
  end
  local s = median(ts)
  report(name, s, 255 / s)
end

-- ============================================================ PyTorch

local function torch_ref()
  for _, p in ipairs({ script_dir .. "torch_ref.py", "/work/shared/bench/torch_ref.py" }) do
    local f = io.open(p)
    if f then f:close() return p end
  end
end

-- Runs torch_ref.py's workload in its own process; returns tokens/s, RSS MB.
local function torch_side(w)
  local ref = torch_ref()
  if not ref then return nil end
  local h = io.popen(fmt("GLIA_NUM_THREADS=%d /usr/bin/python3 %s %s 2>/dev/null",
                         glia.num_threads(), ref, w))
  local line = h:read("*a")
  h:close()
  local rate = line:match("(%d+) tok/s")
  return rate and tonumber(rate), tonumber(line:match("maxrss (%d+) MB")), line
end

-- ============================================================ main

local W = {
  gpt_train = function(name) gpt_train(name, false) end,
  gpt_profile = function(name) gpt_train(name, true) end,
  gpt_decode = gpt_decode,
  moe_decode = function(name) gpt_decode(name, { experts = 8, k = 2 }) end,
  moe_decode_fit = function(name) gpt_decode(name, { experts = 2, k = 2 }) end,
}

local with_torch, rounds, names = false, 3, {}
local i = 1
while arg and arg[i] do
  local a = arg[i]
  if a == "--torch" then
    with_torch = true
  elseif a == "--rounds" then
    rounds = tonumber(arg[i + 1])
    i = i + 1
  else
    names[#names + 1] = a
  end
  i = i + 1
end
if #names == 0 or not rounds or rounds < 1 or rounds ~= math.floor(rounds) then
  io.stderr:write("usage: glia bench/gpt.lua [--torch [--rounds N]] " ..
                  "gpt_train|gpt_decode|gpt_profile...\n")
  os.exit(1)
end
for _, w in ipairs(names) do
  if not W[w] then
    io.stderr:write("bench/gpt.lua: unknown workload " .. w .. "\n")
    os.exit(1)
  end
end

-- Runs workload w in a glia process of its own (so its peak RSS is its own);
-- returns the output line, tokens/s and peak RSS MB.
local function glia_side(w)
  local h = io.popen(fmt("%s %s %s", arg[-1] or "glia", arg[0], w))
  local line = h:read("*a")
  h:close()
  local rate, rss = line:match("^%S+ %S+ (%S+) tok/s (%S+)")
  return line, tonumber(rate), tonumber(rss)
end

for _, w in ipairs(names) do
  if with_torch then
    -- glia and PyTorch alternate, round after round, and the ratio is the
    -- median of the rounds' ratios: a slow spell of this shared machine then
    -- hits both sides of a round instead of one side of the whole comparison
    local ratios, rss_ratios = {}, {}
    for r = 1, rounds do
      local line, rate, rss = glia_side(w)
      io.write(line)
      if not rate then
        io.write("  glia: no result\n")
        break
      end
      local trate, trss, tline = torch_side(w == "gpt_profile" and "gpt_train" or w)
      if not trate then
        io.write("  torch: not available\n")
        break
      end
      io.write("  torch: ", tline)
      ratios[r], rss_ratios[r] = rate / trate, rss / trss
    end
    if #ratios > 0 then
      local each = {}
      for r, v in ipairs(ratios) do each[r] = fmt("%.2fx", v) end
      io.write(fmt("  glia/torch: tokens/s %.2fx (median of %d alternating rounds: %s), " ..
                   "peak RSS %.2fx\n", median(ratios), #ratios, table.concat(each, " "),
                   median(rss_ratios)))
    end
  else
    W[w](w)
  end
end
