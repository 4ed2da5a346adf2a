-- examples/moe_study.lua -- the mixture-of-experts study on the King James
-- Bible: the character-level GPT (models/gpt.lua) with dense MLPs against
-- MoE MLPs, three ways of balancing the experts, and Chain-of-Experts.
--
--   bin/glia examples/moe_study.lua --out docs/moe [--steps 300] [--quick]
--
-- Every run trains the same shape (d 128, 4 layers, 4 heads, context 128,
-- batch 16 x 128 characters, AdamW 1e-3 with 30 warm-up steps and a cosine
-- to 1e-4, clipping 1.0, seed 1) for the same number of steps, so the same
-- number of training tokens, in this process, one after the other:
--   dense        the dense GPT, MLP 128 -> 512 -> 128
--   moe_aux      8 experts of 128 -> 256 -> 128, top-2 softmax routing
--                (renormalized): the same active MLP parameters per token;
--                Switch balance loss alpha 1e-2
--   moe_none     the same without any balancing
--   moe_bias     the same with DeepSeek's bias controller (gamma 1e-3 per
--                step), no balance loss
--   coe          Chain-of-Experts: 2 iterations of top-1 over the same 8
--                experts (two routers), Switch loss 1e-2: two expert
--                evaluations per token, as moe_aux
-- Each reports the validation loss (8 fixed batches of 16 x 128 from the
-- last 10% of the text), training tokens/s, and the dense and moe_aux runs
-- greedy decoding tokens/s (batch 1, 255 tokens, KV cache). Per step, the
-- expert load of the training batch: max/mean tokens per expert, averaged
-- over the four MoE layers.
--
-- Writes DIR/table.md, DIR/loss.svg (validation loss against step),
-- DIR/load.svg (max/mean expert load against step). --quick: a few steps of
-- a tiny model, to check the pipeline in seconds; its figures mean nothing.
-- Timings depend on the machine's load: the table says how many threads ran.
local script_dir = arg and arg[0] and arg[0]:match("^(.*)/[^/]*$") or "."
package.path = script_dir .. "/../?.lua;" .. package.path

local glia  = require "glia"
local nn    = require "glia.nn"
local optim = require "glia.optim"
local data  = require "glia.data"
local plot  = require "glia.plot"
local cli   = require "glia.cli"
local checkpoint = require "glia.checkpoint"
local GPT   = require "models.gpt"

local fmt, concat, max, floor = string.format, table.concat, math.max, math.floor
local clock = glia.clock

local USAGE = [[
usage: glia examples/moe_study.lua --out DIR [options]
  --out DIR     where table.md, loss.svg and load.svg go (required)
  --steps N     training steps of every run (300)
  --runs LIST   comma-separated subset of dense,moe_aux,moe_none,moe_bias,coe (all)
  --quick       a tiny model for a few steps: checks the pipeline, measures nothing
]]

local o = cli.parse(arg or {}, {
  options = {
    out = { "string" },
    steps = { "integer", 300 },
    runs = { "string" },
    quick = { "flag" },
  },
  min = "positive",
}, USAGE)
if not o.out then io.stderr:write(USAGE) os.exit(1) end

local quick = o.quick
local D, L, HEADS, CTX, BATCH = 128, 4, 4, 128, 16
local steps, eval_every = o.steps, 50
if quick then D, L, HEADS, CTX, BATCH, steps, eval_every = 16, 2, 2, 16, 4, 6, 3 end
local E, K = 8, 2

local RUNS = {
  { name = "dense", label = "dense GPT" },
  { name = "moe_aux", label = "MoE 8x top-2, Switch loss 1e-2",
    moe = { experts = E, k = K, aux_alpha = 1e-2 } },
  { name = "moe_none", label = "MoE 8x top-2, no balancing", moe = { experts = E, k = K } },
  { name = "moe_bias", label = "MoE 8x top-2, bias controller",
    moe = { experts = E, k = K, bias_gamma = 1e-3 } },
  { name = "coe", label = "CoE 2 x top-1, Switch loss 1e-2",
    moe = { experts = E, k = 1, hidden = floor(4 * D / K), iterations = 2, aux_alpha = 1e-2 } },
}
if o.runs then
  local want, picked = {}, {}
  for n in o.runs:gmatch("[^,]+") do want[n] = true end
  for _, r in ipairs(RUNS) do if want[r.name] then picked[#picked + 1] = r end end
  RUNS = picked
end

local text = data.kjv_text()
if quick then text = text:sub(1, 200000) end
local ds = data.CharDataset(text)
local train, val = ds:split(0.9)
local val_batches = val:fixed_batches(8, BATCH, CTX)

-- The max/mean tokens per expert of the last forward, averaged over the
-- model's MoE layers (nil for a dense model).
local function load_ratio(model)
  local sum, n = 0, 0
  for _, b in ipairs(model.blocks) do
    local l = b.mlp and b.mlp:load()
    if l then
      local c, mx, tot = l:totable(), 0, 0
      for _, v in ipairs(c) do mx, tot = max(mx, v), tot + v end
      sum, n = sum + mx / max(tot / #c, 1e-9), n + 1
    end
  end
  return n > 0 and sum / n or nil
end

local function evaluate(model)
  model:eval()
  local s = 0
  glia.no_grad(function()
    for _, b in ipairs(val_batches) do s = s + model:loss(b[1], b[2]):item() end
  end)
  model:train()
  return s / #val_batches
end

local function decode_rate(model)
  local prompt = glia.ones(1, 1, "i64")
  local n = quick and 8 or 255
  model:generate(prompt, 8, { temperature = 0 })
  local t0 = clock()
  model:generate(prompt, n, { temperature = 0 })
  return n / (clock() - t0)
end

local function lr_at(s)
  local peak, lo, warm = 1e-3, 1e-4, quick and 2 or 30
  if s <= warm then return peak * s / warm end
  return lo + 0.5 * (peak - lo) * (1 + math.cos(math.pi * (s - warm) / max(steps - warm, 1)))
end

local results = {}
for _, r in ipairs(RUNS) do
  glia.manual_seed(1)
  local model = GPT{ vocab_size = ds.vocab_size, d_model = D, n_layers = L, n_heads = HEADS,
                     ctx = CTX, moe = r.moe }
  local opt = optim.AdamW(model:param_groups(0.1), { lr = 1e-3, betas = { 0.9, 0.99 } })
  local sampler = data.Generator(1, 1)
  local res = { run = r, val_x = {}, val_y = {}, load = {}, params = model:num_parameters() }
  local train_time = 0
  for step = 1, steps do
    opt:set_lr(lr_at(step))
    local t0 = clock()
    opt:zero_grad()
    local x, y = train:batch(BATCH, CTX, sampler)
    local loss = model:loss(x, y)
    loss:backward()
    optim.clip_grad_norm(opt, 1.0)
    opt:step()
    nn.schedule_step(model)
    train_time = train_time + clock() - t0
    res.load[step] = load_ratio(model) or 0 / 0
    loss = nil
    collectgarbage()
    if step % eval_every == 0 or step == steps then
      res.val_x[#res.val_x + 1], res.val_y[#res.val_y + 1] = step, evaluate(model)
      io.write(fmt("%-9s step %4d  val loss %.4f  max/mean load %s  (%.0f s)\n", r.name, step,
                   res.val_y[#res.val_y], res.load[step] == res.load[step] and
                   fmt("%.2f", res.load[step]) or "-", train_time))
      io.flush()
    end
  end
  res.val = res.val_y[#res.val_y]
  res.train_rate = steps * BATCH * CTX / train_time
  res.train_time = train_time
  if r.name == "dense" or r.name == "moe_aux" then res.decode = decode_rate(model) end
  -- the mean max/mean load over the last 20% of the steps
  local s, n = 0, 0
  for i = floor(steps * 0.8) + 1, steps do
    if res.load[i] == res.load[i] then s, n = s + res.load[i], n + 1 end
  end
  res.final_load = n > 0 and s / n or nil
  results[#results + 1] = res
end

-- =============================================================== report

local ok, err = checkpoint.make_dir(o.out)
if not ok then io.stderr:write("moe_study: ", err, "\n") os.exit(1) end

local function active_mlp(r)
  if not r.moe then return 2 * D * 4 * D end
  local hidden = r.moe.hidden or floor(4 * D / r.moe.k)
  return r.moe.k * (r.moe.iterations or 1) * 2 * D * hidden
end

local lines = {
  fmt("Character-level GPT on the King James Bible: d %d, %d layers, %d heads, context %d, " ..
      "batch %d x %d, %d steps (%d training characters per run), AdamW 1e-3 (cosine to 1e-4), " ..
      "seed 1, %d thread(s)%s.", D, L, HEADS, CTX, BATCH, CTX, steps, steps * BATCH * CTX,
      glia.num_threads(), quick and " (--quick: the figures mean nothing)" or ""),
  "",
  "| run | parameters | active MLP weights / token / layer | val loss | train tokens/s | decode tokens/s | max/mean load (last 20%) |",
  "|---|---:|---:|---:|---:|---:|---:|",
}
for _, res in ipairs(results) do
  lines[#lines + 1] = fmt("| %s | %d | %d | %.4f | %.0f | %s | %s |", res.run.label, res.params,
                          active_mlp(res.run), res.val, res.train_rate,
                          res.decode and fmt("%.0f", res.decode) or "",
                          res.final_load and fmt("%.2f", res.final_load) or "")
end
local f = assert(io.open(o.out .. "/table.md", "w"))
f:write(concat(lines, "\n"), "\n")
f:close()

local vs, ls = {}, {}
for _, res in ipairs(results) do
  vs[#vs + 1] = { name = res.run.label, x = res.val_x, y = res.val_y }
  if res.run.moe then ls[#ls + 1] = { name = res.run.label, y = res.load, smooth = 0.9 } end
end
assert(plot.loss_curve(o.out .. "/loss.svg", { series = vs, title = "validation loss (KJV, char-level)",
                                               xlabel = "step", ylabel = "loss (nats/char)" }))
assert(plot.loss_curve(o.out .. "/load.svg", { series = ls, title = "expert load: max / mean tokens per expert",
                                               xlabel = "step", ylabel = "max/mean (1 = balanced)" }))
print(concat(lines, "\n"))
print("wrote " .. o.out .. "/table.md, loss.svg, load.svg")
