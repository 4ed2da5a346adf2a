-- examples/skip_study.lua -- the layer-skipping study (glia.skip) on a
-- character-level GPT trained on the King James Bible by
-- examples/train_gpt.lua (8 layers in the README's run):
--
--   glia examples/train_gpt.lua --layers 8 --d 128 --ctx 128 --time 480 --out runs/skip8
--   glia examples/skip_study.lua --ckpt runs/skip8 --out docs/skip
--
-- 1. Similarity: skip.similarity per layer for the attention sub-layers,
--    the MLP sub-layers and whole blocks on calibration batches from the
--    training text (are attention scores higher than MLP scores, rising
--    with depth?).
-- 2. Dropping n = 2 and 4 modules for good, no training: the n most similar
--    attention sub-layers (one-shot and iterative) against the n most
--    similar of attention and MLP sub-layers together (joint), as many MLP
--    sub-layers, random attention sub-layers (mean of --random draws), the
--    top n attention sub-layers and the top n whole blocks: validation
--    loss, decode tokens/s and the KV cache bytes saved.
-- 3. Unified Layer Skipping s = 2 against skipping as many contiguous top
--    layers, both before and after --ft-steps of fine-tuning under the plan
--    (skip.loss: the first half of each sequence is the prompt, through
--    every layer; the loss is on the second half, through the kept layers);
--    the full model is fine-tuned the same way as the control. Validation
--    loss on the response halves, decode tokens/s and the layer ratio.
-- 4. Depth use: skip.contrib (relative write size, alignment) per layer
--    and skip.effect (the KL of the next-token distribution when one layer
--    is skipped, and how much the later layers' writes change).
--
-- Writes DIR/table.md, DIR/similarity.svg, DIR/drop.svg and DIR/depth.svg.
-- Decode speed: greedy generation of --decode tokens after a 1-token
-- prompt, batch 1, --rounds times: tokens/s are medians, speedups the
-- medians of the ratios to a run of the full model just before (on a
-- shared machine the ratios are what to read). --quick shrinks every
-- budget so that a test runs the whole pipeline in seconds.
local script_dir = (arg and arg[0] or ""):match("^(.-)[^/]*$")
package.path = script_dir .. "../?.lua;" .. package.path

local glia       = require "glia"
local data       = require "glia.data"
local optim      = require "glia.optim"
local checkpoint = require "glia.checkpoint"
local cli        = require "glia.cli"
local skip       = require "glia.skip"
local GPT        = require "models.gpt"

local fmt, concat, floor, max, min = string.format, table.concat, math.floor, math.max, math.min
local clock = glia.clock

local USAGE = [[
usage: glia examples/skip_study.lua --ckpt DIR --out DIR [options]
  --ckpt DIR       a checkpoint of examples/train_gpt.lua
  --out DIR        where table.md and the SVG plots go
  --cal N          calibration batches of 8 sequences (8)
  --val N          validation batches of 16 sequences (8)
  --random N       random attention drops averaged (3)
  --ft-steps N     fine-tuning steps of section 3 (120)
  --ft-lr X        its learning rate, AdamW, 10 steps of warm-up (3e-4)
  --decode N       generated tokens per decode measurement (300)
  --rounds N       decode measurements per variant, each after one of the full model (7)
  --threads N      compute threads
  --quick          tiny budgets: checks the pipeline, measures nothing
]]

local o = cli.parse(arg or {}, {
  options = {
    ckpt = { "string" }, out = { "string" },
    cal = { "integer", 8 }, val = { "integer", 8 }, random = { "integer", 3 },
    ["ft-steps"] = { "integer", 120 }, ["ft-lr"] = { "number", 3e-4 },
    decode = { "integer", 300 }, rounds = { "integer", 7 },
    threads = { "integer" }, quick = { "flag" },
  },
  min = "positive",
}, USAGE)

local function die(msg)
  io.stderr:write("skip_study: ", msg, "\n")
  os.exit(1)
end
if not o.ckpt or not o.out then die("--ckpt and --out are required\n" .. USAGE) end
if o.threads then glia.set_num_threads(o.threads) end
do
  local ok, err = checkpoint.make_dir(o.out)
  if not ok then die(err) end
end
if o.quick then
  o.cal, o.val, o.random, o["ft-steps"], o.decode, o.rounds = 1, 1, 1, 2, 8, 1
end

local t_study = clock()
local ck, msg = checkpoint.read(o.ckpt)
if not ck then die(msg) end
local run, vocab = ck.extra.run, ck.extra.vocab
if type(run) ~= "table" or type(vocab) ~= "string" then
  die(o.ckpt .. " holds no model config and vocabulary: was it written by train_gpt.lua?")
end
local function load_model()
  local m = GPT { vocab_size = #vocab, d_model = run.d, n_layers = run.layers,
                  n_heads = run.heads, ctx = run.ctx }
  checkpoint.load(checkpoint.read(o.ckpt), { model = m })
  m:eval()
  return m
end
local model = load_model()
local L, T = run.layers, run.ctx
local trained = { steps = ck.step or 0, seconds = ck.extra.elapsed or 0 }
ck = nil

local text = run.text and io.open(run.text, "rb"):read("*a") or data.kjv_text()
local ds = data.CharDataset(text, vocab)
local train, val = ds:split(0.9)
local val_batches = val:fixed_batches(o.val, 16, T)
local gen = data.Generator(20261206, 7)
local cal = {}
for i = 1, o.cal do cal[i] = (train:batch(8, T, gen)) end

local function say(...) io.write(fmt(...), "\n") io.flush() end
say("skip_study: %s (%d layers, d=%d, ctx %d; trained %d steps in %.0f s), %d threads",
    o.ckpt, L, run.d, T, trained.steps, trained.seconds, glia.num_threads())

-- Mean validation loss of m as it stands (its plan in force); with P, the
-- ULS loss on the second part of each sequence.
local function val_loss(m, P)
  local s = 0
  glia.no_grad(function()
    for _, b in ipairs(val_batches) do
      local l = P and skip.loss(m, b[1], b[2], P) or m:loss(b[1], b[2])
      s = s + l:item()
    end
  end)
  return s / #val_batches
end

-- Decode tokens/s of each {model, plan} variant (medians over --rounds)
-- and its speedup over the first: in each round every other variant runs
-- right after a run of the first, and the speedup is the median of those
-- pairs' ratios (a slow spell of the shared machine then hits both sides
-- of a pair).
local prompt = glia.ones(1, 1, "i64")
local function median(v)
  table.sort(v)
  return v[floor((#v + 1) / 2)]
end
local function decode_rates(variants)
  local function time(v)
    local t0 = clock()
    v[1]:generate(prompt, o.decode, { temperature = 0, plan = v[2] })
    return clock() - t0
  end
  local times, ratios = {}, {}
  for i, v in ipairs(variants) do
    times[i], ratios[i] = {}, {}
    time(v) -- warm-up
  end
  for r = 1, o.rounds do
    for i = 2, #variants do
      local base = time(variants[1])
      times[1][#times[1] + 1] = base
      times[i][r] = time(variants[i])
      ratios[i][r] = base / times[i][r]
    end
  end
  local rates, speedups = {}, { 1 }
  for i = 1, #variants do rates[i] = o.decode / median(times[i]) end
  for i = 2, #variants do speedups[i] = median(ratios[i]) end
  return rates, speedups
end

-- The note under a table with decode tok/s and speedup columns: they are
-- medians of different things (raw times, paired ratios), so a row's
-- tok/s over the full model's need not equal its speedup.
local function decode_note()
  return fmt("\nHow the decode columns are computed: *decode tok/s* is %d generated tokens over the "
    .. "median of the variant's %d raw times (taken at different moments of a shared machine, so "
    .. "the rows' loads differ); *speedup* is the median of %d paired ratios, each the time of a "
    .. "full-model run just before over the variant's time. They are medians of different "
    .. "things: a row's tok/s divided by the full model's need not equal its speedup, and can "
    .. "even fall on the other side of 1. Compare variants by the speedup.\n",
    o.decode, o.rounds, o.rounds)
end

local function kv_bytes(m, plan)
  m:set_plan(plan)
  local n = skip.kv_bytes(m:new_caches(1))
  m:set_plan(nil)
  return n
end

local md = {}
local function out(s) md[#md + 1] = s end

-- ================================================ 1. similarity

local t0 = clock()
local sim = skip.similarity(model, cal)
say("1. similarity on %d tokens (%.0f s)", sim.tokens, clock() - t0)
local cols = { { "attention", sim.attn }, { "MLP", sim.mlp }, { "block", sim.block } }
out(fmt("### 1. Similarity of each module's input and output (%d calibration tokens)\n", sim.tokens))
out(skip.layer_table(cols))
skip.plot_layers(o.out .. "/similarity.svg", cols,
                 { title = "cosine similarity, input vs output", ylabel = "mean cos" })

-- ============================================== 2. dropping

t0 = clock()
local base_loss = val_loss(model)
local random_gen = data.Generator(99, 3)
local function random_attn(n)
  local pool, pick = {}, {}
  for l = 1, L do pool[l] = l end
  for i = 1, n do
    local j = i + random_gen:random(L - i + 1) - 1
    pool[i], pool[j] = pool[j], pool[i]
    pick[i] = pool[i]
  end
  return pick
end
local function top(n)
  local list = {}
  for l = L - n + 1, L do list[#list + 1] = l end
  return list
end

local methods = {
  { "attention, most similar", function(n) return (skip.select(sim, n, { mode = "attn" })) end },
  { "attention, iterative", function(n)
      return (skip.select(sim, n, { mode = "attn", iterative = true, model = model, batches = cal }))
    end },
  { "attention or MLP (joint)", function(n) return (skip.select(sim, n, { mode = "joint" })) end },
  { "MLP, most similar", function(n) return (skip.select(sim, n, { mode = "mlp" })) end },
  { "attention, random", function(n) return skip.plan_drop(L, { attn = random_attn(n) }) end,
    draws = o.random },
  { "attention, top n", function(n) return skip.plan_drop(L, { attn = top(n) }) end },
  { "blocks, top n", function(n) return skip.plan_drop(L, { block = top(n) }) end },
}
local full_kv = kv_bytes(model, nil)
local rows, curves = {}, {}
local variants = { { model, nil } }
for _, meth in ipairs(methods) do
  local curve = { meth[1], { base_loss } }
  for _, n in ipairs { 2, 4 } do
    if n < L then
      local sum, plans = 0, {}
      for d = 1, meth.draws or 1 do
        plans[d] = meth[2](n)
        model:set_plan(plans[d])
        sum = sum + val_loss(model)
        model:set_plan(nil)
      end
      local loss = sum / #plans
      curve[2][#curve[2] + 1] = loss
      rows[#rows + 1] = { name = meth[1], n = n, plan = plans[1], loss = loss,
                          draws = #plans, kv = full_kv - kv_bytes(model, plans[1]) }
      variants[#variants + 1] = { model, plans[1] }
    end
  end
  curves[#curves + 1] = curve
end
local rates, speedups = decode_rates(variants)
out("\n### 2. Dropping modules for good, no training\n")
out(fmt("Full model: validation loss %.4f, decode %.0f tokens/s, KV cache %d bytes at %d positions.\n",
        base_loss, rates[1], full_kv, T))
out("| dropped | n | modules | val loss | change | decode tok/s | speedup | KV bytes saved |")
out("|---|---:|---|---:|---:|---:|---:|---:|")
for i, r in ipairs(rows) do
  local p = r.plan
  local what = (#p.attn > 0 and ("attn " .. concat(p.attn, ",")) or "")
    .. (#p.mlp > 0 and ((#p.attn > 0 and "; " or "") .. "mlp " .. concat(p.mlp, ",")) or "")
  if r.draws > 1 then what = what .. fmt(" (first of %d draws; loss: their mean)", r.draws) end
  out(fmt("| %s | %d | %s | %.4f | %+.4f | %.0f | %.2fx | %d (%.0f%%) |", r.name, r.n, what,
          r.loss, r.loss - base_loss, rates[i + 1], speedups[i + 1], r.kv,
          100 * r.kv / full_kv))
end
out(decode_note())
local series = {}
for i, c in ipairs(curves) do
  series[i] = { name = c[1], x = { 0, 2, 4 }, y = c[2] }
end
require("glia.plot").loss_curve(o.out .. "/drop.svg", { series = series,
  title = "validation loss after dropping n modules", xlabel = "modules dropped",
  ylabel = "val loss (nats/char)" })
say("2. dropping: %d plans (%.0f s)", #rows, clock() - t0)

-- ================================== 3. ULS against the top layers, fine-tuned

t0 = clock()
local P = floor(T / 2)
local uls = skip.plan_uniform(L, 2)
local keep = {}
for l = 1, #uls.decode do keep[l] = l end
local topk = skip.plan_keep(L, keep)

-- A fresh copy of the checkpoint fine-tuned ft-steps under plan (nil: the
-- full model) with the ULS loss; the same batches for every plan.
local function finetune(plan)
  local m = load_model()
  m:set_plan(plan)
  m:train()
  local opt = optim.AdamW(m:parameters(), { lr = o["ft-lr"], weight_decay = 0 })
  local g = data.Generator(4242, 1)
  for step = 1, o["ft-steps"] do
    opt:set_lr(o["ft-lr"] * min(1, step / 10))
    opt:zero_grad()
    local x, y = train:batch(16, T, g)
    local loss = skip.loss(m, x, y, P)
    loss:backward()
    optim.clip_grad_norm(opt, 1.0)
    opt:step()
    loss = nil
    collectgarbage()
  end
  m:eval()
  return m
end

local function plan_loss(m, plan)
  m:set_plan(plan)
  local l = val_loss(m, P)
  m:set_plan(nil)
  return l
end
local before = { full = plan_loss(model, nil), uls = plan_loss(model, uls),
                 top = plan_loss(model, topk) }
local ft_t0 = clock()
local tuned = { full = finetune(nil), uls = finetune(uls), top = finetune(topk) }
local ft_seconds = clock() - ft_t0
local after = { full = val_loss(tuned.full, P), uls = val_loss(tuned.uls, P),
                top = val_loss(tuned.top, P) }
rates, speedups = decode_rates { { tuned.full, nil }, { tuned.uls, uls }, { tuned.top, topk } }
out(fmt("\n### 3. Unified Layer Skipping (s = 2) against skipping the top layers, fine-tuned\n"))
out(fmt("Generated tokens run %d of %d layers (layer ratio %.2f). Validation loss on the second " ..
        "half of each sequence (%d positions of prompt through every layer, the rest through " ..
        "the kept layers); fine-tuning: %d steps of 16 x %d, AdamW lr %g, %.0f s for the three.\n",
        #uls.decode, L, L / #uls.decode, P, o["ft-steps"], T, o["ft-lr"], ft_seconds))
out("| generated tokens run | layers | val loss, no tuning | after fine-tuning | decode tok/s | speedup |")
out("|---|---|---:|---:|---:|---:|")
out(fmt("| every layer (control, fine-tuned the same way) | 1-%d | %.4f | %.4f | %.0f | 1.00x |", L,
        before.full, after.full, rates[1]))
out(fmt("| ULS s = 2 | %s | %.4f | %.4f | %.0f | %.2fx |", concat(uls.decode, ","), before.uls,
        after.uls, rates[2], speedups[2]))
out(fmt("| the top layers skipped | %s | %.4f | %.4f | %.0f | %.2fx |", concat(topk.decode, ","),
        before.top, after.top, rates[3], speedups[3]))
out(decode_note())
say("3. ULS vs top: fine-tuned in %.0f s (%.0f s in all)", ft_seconds, clock() - t0)

-- ============================================ 4. depth use

t0 = clock()
local c = skip.contrib(model, cal)
local e = skip.effect(model, cal)
out(fmt("\n### 4. Depth use (%d calibration tokens)\n", c.tokens))
out("contrib = mean ||h_{l+1} - h_l|| / ||h_l||; align = mean cos(h_{l+1} - h_l, h_l); " ..
    "skip KL = mean KL(p_full || p with layer l skipped) of the next-token distribution; " ..
    "later change = mean over the later layers k of ||write_k with l skipped - write_k|| / ||write_k||.\n")
local later = {}
for s = 1, L do
  local sum, n = 0, 0
  for l = s + 1, L do sum, n = sum + e.effect[s][l], n + 1 end
  later[s] = n > 0 and sum / n or nil
end
out(skip.layer_table({ { "contrib", c.contrib }, { "align", c.align }, { "skip KL", e.out },
                       { "later change", later } }))
-- log scale: layer 1's write dwarfs the others' (align, which may be
-- negative, stays in the table)
skip.plot_layers(o.out .. "/depth.svg", { { "contrib", c.contrib }, { "skip KL", e.out },
                                          { "later change", later } },
                 { title = "depth use per layer", ylabel = "log scale", logy = true })
say("4. depth use (%.0f s)", clock() - t0)

-- ============================================ write

local head = fmt("## Layer-skipping study: %d-layer char GPT on the KJV text\n\n" ..
  "Checkpoint %s: d=%d, %d heads, context %d, %d steps of 16 x %d trained in %.0f s. " ..
  "Study run with %d thread(s) in %.0f s%s.\n", L, o.ckpt, run.d, run.heads, T,
  trained.steps, T, trained.seconds, glia.num_threads(), clock() - t_study,
  o.quick and " (--quick: the figures mean nothing)" or "")
local f = io.open(o.out .. "/table.md", "wb")
if not f then die("cannot write " .. o.out .. "/table.md") end
f:write(head, "\n", concat(md, "\n"), "\n")
f:close()
say("wrote %s/table.md, similarity.svg, drop.svg, depth.svg (%.0f s)", o.out, clock() - t_study)
