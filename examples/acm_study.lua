-- examples/acm_study.lua -- the Adaptive Computation Modules study on the
-- KJV GPT (a checkpoint of examples/train_gpt.lua): writes table.md, the
-- plots and a coloured sample into its output folder (docs/acm/).
--
--   glia examples/acm_study.lua runs/gpt_small                 # every part, in order
--   glia examples/acm_study.lua runs/gpt_small --part distil   # one part (see below)
--
-- Parts (each a run of a few minutes; results go to --work/results/*.lua,
-- so parts can run one at a time and the report gathers them):
--   distil   phases 1 and 2 of glia.acm.convert, shared by every budget;
--            the per-prefix distillation error against k (measurement 1)
--   acm      phase 3 at each budget (0.25, 0.5, 0.75, 1): validation loss
--            and the MLP compute glia.acm measured (measurement 2)
--   narrow   the cheaper alternative at each budget: the teacher with its
--            MLPs narrowed to the fraction of their hidden units that the
--            ACM's measured compute is (those with the largest
--            |w_in| |w_out|), so both run the same MLP FLOPs, fine-tuned
--            for the CPU time the ACM conversion took (phases 1-3)
--   timing   wall clock of the ACMized MLPs (gate + glia.acm) against the
--            dense MLPs on the same activations (the ACMized model's own):
--            prefill (16 x 128 tokens) and decoding (one token), in
--            alternating rounds (measurement 3)
--   classes  which characters get more learners: the mean k by character
--            class on validation text, budget 0.5 (measurement 4)
--   report   table.md, loss_compute.svg, prefix_error.svg, sample.svg
local script_dir = (arg and arg[0] or ""):match("^(.-)[^/]*$")
package.path = script_dir .. "../?.lua;" .. package.path

local glia = require "glia"
local nn = require "glia.nn"
local optim = require "glia.optim"
local checkpoint = require "glia.checkpoint"
local cli = require "glia.cli"
local plot = require "glia.plot"
local acm = require "glia.acm"
local G = require "examples.gpt_acm"
local util = require "bench.util"

local fmt, floor, max = string.format, math.floor, math.max
-- Time given and compared is this process's CPU time (os.clock): with one
-- thread, it does not depend on what else loads the machine.
local cpu = os.clock

local USAGE = [[
usage: glia examples/acm_study.lua [TEACHER] [options]
  TEACHER          a train_gpt.lua checkpoint directory (default runs/gpt)
  --out DIR        table and plots (default docs/acm)
  --work DIR       checkpoints and partial results (default runs/acm_study)
  --part NAME      distil, acm, narrow, timing, classes or report (default: all)
  --steps1 N       distillation steps (300)
  --steps2 N       gate pre-training steps (60)
  --steps3 N       fine-tuning steps per budget (200)
  --batch N        sequences per step (16)
  --budgets LIST   the budgets the acm and narrow parts run, e.g. 0.25,0.5
                   (default all four; each budget's result is kept apart)
  --threads N      compute threads (default GLIA_NUM_THREADS)
]]

local o = cli.parse(arg or {}, {
  options = {
    out = { "string", "docs/acm" },
    work = { "string", "runs/acm_study" },
    part = { "string" },
    steps1 = { "integer", 300 },
    steps2 = { "integer", 60 },
    steps3 = { "integer", 200 },
    batch = { "integer", 16, min = "positive" },
    threads = { "integer", min = "positive" },
    budgets = { "string" },
  },
  min = "non-negative",
  positional = 1,
}, USAGE)
if o.threads then glia.set_num_threads(o.threads) end

local TEACHER = o[1] or "runs/gpt"
local BUDGETS = { 0.25, 0.5, 0.75, 1.0 }
local RUN_BUDGETS = BUDGETS
if o.budgets then
  RUN_BUDGETS = {}
  for v in o.budgets:gmatch("[^,]+") do RUN_BUDGETS[#RUN_BUDGETS + 1] = tonumber(v) end
end
local function bkey(b) return fmt("%03d", floor(b * 100 + 0.5)) end
local N = 4
local SEED = 1

local function die(msg)
  io.stderr:write("acm_study: ", msg, "\n")
  os.exit(1)
end

-- ============================================================ results

local function results_path(name) return fmt("%s/results/%s.lua", o.work, name) end

local function serialize(v, indent)
  indent = indent or ""
  if type(v) == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local parts = {}
    for _, k in ipairs(keys) do
      local key = type(k) == "number" and fmt("[%d]", k) or fmt("[%q]", k)
      parts[#parts + 1] = indent .. "  " .. key .. " = " .. serialize(v[k], indent .. "  ")
    end
    return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
  elseif type(v) == "string" then
    return fmt("%q", v)
  else
    return fmt("%.17g", v)
  end
end

local function save_results(name, t)
  checkpoint.make_dir(o.work .. "/results")
  local f = assert(io.open(results_path(name), "w"))
  f:write("return ", serialize(t), "\n")
  f:close()
end

local function load_results(name)
  local chunk = loadfile(results_path(name))
  return chunk and chunk()
end

-- ============================================================== setup

local function teacher()
  local model, run, vocab = G.load_teacher(TEACHER)
  if not model then die(run) end
  return model, run, vocab
end

local _, RUN, VOCAB = teacher()
local DATA = G.data(RUN, VOCAB, o.batch, SEED)
local F_HIDDEN = 4 * RUN.d -- the GPT's MLP width

local function copy_dir(src, dst)
  os.execute(fmt("mkdir -p '%s' && cp -r '%s' '%s'", dst, src, dst))
end

local function convert(model, out, phases, budget)
  glia.manual_seed(SEED)
  return acm.convert(model, {
    learners = N, batch = DATA.batch, out = out, phases = phases,
    phase1 = { steps = o.steps1 }, phase2 = { steps = o.steps2 },
    phase3 = { steps = o.steps3, budget = budget or 0.5 },
  })
end

local function budget_dir(b) return fmt("%s/budget_%03d", o.work, floor(b * 100 + 0.5)) end

-- ============================================================== parts

local P = {}

function P.distil()
  local model = teacher()
  local dense_loss = G.evaluate(model, DATA.val_batches)
  local t0 = cpu()
  local conv = convert(model, o.work .. "/base", { 1, 2 })
  local seconds = cpu() - t0
  -- held-out prefix errors: the validation text's first batch
  local errs = conv:prefix_errors(DATA.val_batches[1][1])
  save_results("distil", { prefix_errors = errs, seconds = seconds, dense_loss = dense_loss,
                           steps1 = o.steps1, steps2 = o.steps2 })
  print("relative distillation error by k (validation): " .. table.concat(errs, " "))
end

function P.acm()
  local base = load_results("distil") or die("run --part distil first")
  for _, b in ipairs(RUN_BUDGETS) do
    local dir = budget_dir(b)
    for _, ph in ipairs { "phase1", "phase2" } do
      if not io.open(dir .. "/" .. ph .. "/checkpoint.safetensors") then
        copy_dir(o.work .. "/base/" .. ph, dir)
      end
    end
    local model = teacher()
    local t0 = cpu()
    local conv = convert(model, dir, { 1, 2, 3 }, b)
    local seconds = cpu() - t0
    local loss, frac = G.evaluate(model, DATA.val_batches, conv)
    G.save(dir, model, RUN, VOCAB, N)
    save_results("acm_" .. bkey(b), { budget = b, loss = loss, compute = frac,
                                      seconds = base.seconds + seconds,
                                      steps = base.steps1 + base.steps2 + o.steps3 })
    print(fmt("budget %.2f: val loss %.4f at %.3f of the MLPs' compute (%.0f s in all)", b, loss,
              frac, base.seconds + seconds))
  end
end

-- The teacher with every MLP cut to the `keep` hidden units of largest
-- |w_in| |w_out| (their own weights, in their order).
local function narrowed(keep)
  local model = teacher()
  glia.no_grad(function()
    for _, blk in ipairs(model.blocks) do
      local fc, fc2 = blk.fc, blk.fc2
      local score = fc.weight:norm(2, 2) * fc2.weight:norm(2, 1)
      local _, idx = score:topk(keep)
      idx = idx:to("f32"):sort():to("i64")
      local a, b = nn.Linear(RUN.d, keep), nn.Linear(keep, RUN.d)
      a.weight:copy_(glia.index_select(fc.weight, 1, idx))
      a.bias:copy_(glia.index_select(fc.bias, 1, idx))
      b.weight:copy_(glia.index_select(fc2.weight, 2, idx))
      b.bias:copy_(fc2.bias)
      blk.fc, blk.fc2 = a, b
    end
  end)
  return model
end

function P.narrow()
  for _, b in ipairs(RUN_BUDGETS) do
    local a = load_results("acm_" .. bkey(b)) or die("run --part acm for budget " .. b .. " first")
    -- the same FLOPs as the ACM ran, not its nominal budget
    local keep = max(1, floor(a.compute * F_HIDDEN + 0.5))
    local model = narrowed(keep)
    local before = G.evaluate(model, DATA.val_batches)
    model:train()
    local opt = optim.AdamW(model:parameters(), { lr = 3e-4, weight_decay = 0 })
    local t0, step = cpu(), 0
    while cpu() - t0 < a.seconds do
      step = step + 1
      opt:zero_grad()
      local x, y = DATA.batch(step, 3)
      local loss = model:loss(x, y)
      loss:backward()
      optim.clip_grad_norm(opt, 1)
      opt:step()
      loss, x, y = nil, nil, nil
      collectgarbage()
    end
    local loss = G.evaluate(model, DATA.val_batches)
    save_results("narrow_" .. bkey(b), { budget = b, keep = keep, compute = keep / F_HIDDEN,
                                         loss = loss, before = before, steps = step,
                                         seconds = cpu() - t0 })
    print(fmt("narrowed to %d of %d (%.3f, the ACM's %.3f at budget %.2f): val loss %.4f (%.4f before),"
              .. " %d steps in %.0f s", keep, F_HIDDEN, keep / F_HIDDEN, a.compute, b, loss, before,
              step, cpu() - t0))
  end
end

-- An ACMized model of budget b, in eval mode, and its conversion.
local function acm_model(b)
  local model = teacher()
  local conv = acm.attach(model, { learners = N })
  local ok, err = checkpoint.load(budget_dir(b), { model = model, rng = false })
  if not ok then die(err) end
  model:eval()
  return model, conv
end

-- Median ratio of fa's time to fb's over rounds that alternate them (the
-- machine is shared: a round that others slow down slows both sides).
local function timed_ratio(fa, fb, reps, rounds)
  local ta, tb, r = {}, {}, {}
  for i = 1, rounds do
    ta[i], tb[i] = util.time(fa, reps), util.time(fb, reps)
    r[i] = ta[i] / tb[i]
  end
  return util.median(ta), util.median(tb), util.median(r)
end

function P.timing()
  local res = {}
  local x = DATA.val_batches[1][1] -- 16 x 128 tokens
  local teach = teacher() -- the dense MLPs' weights
  local tconv = acm.attach(teach, { learners = N })
  for _, b in ipairs(RUN_BUDGETS) do
    local model, conv = acm_model(b)
    -- each layer's MLP input in the ACMized model itself (its gates see
    -- what they see in use); both sides run on these
    for _, e in ipairs(conv.entries) do e.recording = true end
    glia.no_grad(model, x)
    for _, e in ipairs(conv.entries) do e.recording = false end
    local frac = conv:compute_fraction()
    local function layers(one, dense)
      return function()
        glia.no_grad(function()
          for i, e in ipairs(conv.entries) do
            local h = one and e.h:narrow(1, 1, 1):narrow(2, 1, 1) or e.h
            if dense then
              local d = tconv.entries[i].dense
              d.fc2(glia.gelu(d.fc(h), "tanh"))
            else
              e.acm(h)
            end
          end
        end)
      end
    end
    local ta, td, r = timed_ratio(layers(false, false), layers(false, true), 5, 5)
    local ta1, td1, r1 = timed_ratio(layers(true, false), layers(true, true), 101, 5)
    res[#res + 1] = { budget = b, compute = frac, prefill_ms = ta * 1e3, dense_prefill_ms = td * 1e3,
                      prefill_ratio = r, decode_ms = ta1 * 1e3, dense_decode_ms = td1 * 1e3,
                      decode_ratio = r1 }
    print(fmt("budget %.2f (%.3f of the compute on these tokens): prefill %.2f ms vs dense %.2f ms"
              .. " (%.2fx); decode %.3f ms vs %.3f ms (%.2fx)", b, frac, ta * 1e3, td * 1e3, r,
              ta1 * 1e3, td1 * 1e3, r1))
  end
  save_results("timing", { rows = res, threads = glia.num_threads() })
end

local CLASSES = {
  { "lower-case letter", "%l" }, { "upper-case letter", "%u" }, { "digit", "%d" },
  { "space", " " }, { "new line", "\n" }, { "punctuation", "%p" },
}

local function class_of(c)
  for i, cl in ipairs(CLASSES) do
    if (#cl[2] == 2 and c:match("^" .. cl[2] .. "$")) or c == cl[2] then return i end
  end
  return #CLASSES
end

function P.classes()
  local model, conv = acm_model(0.5)
  local sum, cnt = {}, {}
  for i = 1, #CLASSES do sum[i], cnt[i] = 0, 0 end
  glia.no_grad(function()
    for _, bt in ipairs(DATA.val_batches) do
      local x = bt[1]
      model(x)
      local ids = x:reshape(-1):totable()
      local ks = {}
      for l, a in ipairs(conv.acms) do ks[l] = a.last.k:totable() end
      for t, id in ipairs(ids) do
        local c = class_of(DATA.ds:decode(glia.tensor({ id }, "i64")))
        local s = 0
        for l = 1, #ks do s = s + ks[l][t] end
        sum[c], cnt[c] = sum[c] + s / #ks, cnt[c] + 1
      end
    end
  end)
  local res = {}
  for i, cl in ipairs(CLASSES) do
    res[i] = { class = cl[1], count = cnt[i], mean_k = cnt[i] > 0 and sum[i] / cnt[i] or 0 }
    print(fmt("%-18s %7d characters: mean learners %.2f of %d", cl[1], cnt[i], res[i].mean_k, N))
  end
  save_results("classes", res)
end

function P.report()
  local d, t, c = load_results("distil"), load_results("timing"), load_results("classes")
  local a, n = {}, {}
  for i, b in ipairs(RUN_BUDGETS) do
    a[i], n[i] = load_results("acm_" .. bkey(b)), load_results("narrow_" .. bkey(b))
    if not (a[i] and n[i]) then die("run the acm and narrow parts for budget " .. b .. " first") end
  end
  if not (d and t and c) then die("run the other parts first") end
  checkpoint.make_dir(o.out)
  local L = {}
  local function add(s) L[#L + 1] = s end
  add(fmt("Teacher: `%s` (d %d, %d layers, MLP %d -> %d -> %d, ctx %d), validation loss %.4f.",
          TEACHER, RUN.d, RUN.layers, RUN.d, F_HIDDEN, RUN.d, RUN.ctx, d.dense_loss))
  add(fmt("ACMs: %d learners of width %d per MLP; phase 1 %d steps, phase 2 %d steps, phase 3 %d" ..
          " steps per budget, batch %d x %d, %d thread(s).", N, F_HIDDEN / N, d.steps1, d.steps2,
          o.steps3, o.batch, RUN.ctx, t.threads))
  add("")
  add("**1. Distillation error by prefix** (validation tokens, sum |o_k - f|^2 / sum |f|^2, all layers):")
  add("")
  add("| k | " .. table.concat((function() local s = {} for k = 0, N do s[#s + 1] = tostring(k) end return s end)(), " | ") .. " |")
  add("|---|" .. string.rep("---|", N + 1))
  add("| error | " .. table.concat((function() local s = {} for k, e in ipairs(d.prefix_errors) do s[k] = fmt("%.4f", e) end return s end)(), " | ") .. " |")
  add("")
  add("**2. Validation loss against MLP compute** (ACM: the fraction glia.acm measured; narrowed: " ..
      "the teacher's MLPs cut to the ACM's measured compute, the nearest whole number of units, " ..
      "fine-tuned for the same CPU time; steps: the ACM's phases 1-3, the narrowed model's fine-tuning):")
  add("")
  add("| budget | ACM compute | ACM val loss | narrowed compute | narrowed val loss (before fine-tuning) | CPU time each | steps ACM / narrowed |")
  add("|---|---|---|---|---|---|---|")
  for i, r in ipairs(a) do
    add(fmt("| %.2f | %.3f | %.4f | %.3f | %.4f (%.4f) | %.0f s | %d / %d |", r.budget, r.compute,
            r.loss, n[i].compute, n[i].loss, n[i].before, r.seconds, r.steps, n[i].steps))
  end
  add(fmt("| dense teacher | 1.000 | %.4f | | | | |", d.dense_loss))
  add("")
  add(fmt("**3. Wall clock of the 4 MLPs** (%d thread(s); the ACMs with their gates, on their own " ..
          "model's MLP inputs, against the teacher's dense MLPs on the same inputs; prefill: 16 x %d " ..
          "tokens, decoding: one token; medians of 5 alternating rounds, the ratio the median of " ..
          "the rounds' ratios; taken while other jobs loaded the machine):", t.threads, RUN.ctx))
  add("")
  add("| budget | compute on these tokens | ACM prefill | dense prefill | ratio | ACM decode | dense decode | ratio |")
  add("|---|---|---|---|---|---|---|---|")
  for _, r in ipairs(t.rows) do
    add(fmt("| %.2f | %.3f | %.2f ms | %.2f ms | %.2fx | %.3f ms | %.3f ms | %.2fx |", r.budget,
            r.compute, r.prefill_ms, r.dense_prefill_ms, r.prefill_ratio, r.decode_ms,
            r.dense_decode_ms, r.decode_ratio))
  end
  add("")
  add("**4. Learners by character class** (budget 0.5, validation text, mean over layers; the " ..
      "character is the MLP's input position):")
  add("")
  add("| class | characters | mean learners |")
  add("|---|---|---|")
  for _, r in ipairs(c) do add(fmt("| %s | %d | %.2f |", r.class, r.count, r.mean_k)) end
  local f = assert(io.open(o.out .. "/table.md", "w"))
  f:write(table.concat(L, "\n"), "\n")
  f:close()
  -- plots
  local ax, ay, nx, ny = {}, {}, {}, {}
  for i, r in ipairs(a) do ax[i], ay[i], nx[i], ny[i] = r.compute, r.loss, n[i].compute, n[i].loss end
  assert(plot.loss_curve(o.out .. "/loss_compute.svg", {
    series = { { name = "ACM (gates at each budget)", x = ax, y = ay },
               { name = "narrowed dense MLP", x = nx, y = ny },
               { name = "dense teacher", x = { 1 }, y = { d.dense_loss } } },
    title = "validation loss against MLP compute", xlabel = "fraction of the MLPs' FLOPs",
    ylabel = "validation loss" }))
  local kx, ky = {}, {}
  for k, e in ipairs(d.prefix_errors) do kx[k], ky[k] = k - 1, e end
  assert(plot.loss_curve(o.out .. "/prefix_error.svg", {
    series = { { name = "relative error of o_k", x = kx, y = ky } },
    title = "distillation error by number of learners", xlabel = "k", ylabel = "error" }))
  print(table.concat(L, "\n"))
  print("wrote " .. o.out .. "/table.md, loss_compute.svg, prefix_error.svg")
end

local ORDER = { "distil", "acm", "narrow", "timing", "classes", "report" }
if o.part then
  if not P[o.part] then die("unknown part " .. o.part) end
  P[o.part]()
else
  for _, p in ipairs(ORDER) do P[p]() end
end
