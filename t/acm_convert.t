-- t/acm_convert.t -- glia.acm.convert (stdlib/glia/acm.lua) on a tiny GPT
-- (models/gpt.lua, unchanged): the MLPs become ACMs and leave the model,
-- the exact split starts at the teacher, phase 1 lowers the prefix errors,
-- each phase is resumable from its checkpoint (an interrupted run resumed
-- ends with the same bits as one uninterrupted), phase 3 runs gated with
-- its budget, and the errors bad input gets.
package.path = "./?.lua;" .. package.path
local t = require "t.tap"
local glia = require "glia"
local nn = require "glia.nn"
local acm = require "glia.acm"
local A = acm
local u = require "t.util"
local GPT = require "models.gpt"

u.seed(20261206)
t.plan(26)

local dir = io.popen("mktemp -d"):read("*l")
local CFG = { vocab_size = 11, d_model = 16, n_layers = 2, n_heads = 2, ctx = 8 }

local function teacher()
  glia.manual_seed(5)
  return GPT(CFG)
end

-- batch(step): a fixed function of the step, so that runs can be compared
local function batch(step)
  local ids = {}
  for b = 1, 4 do
    ids[b] = {}
    for i = 1, 9 do ids[b][i] = (step * 7 + b * 3 + i * i) % 11 + 1 end
  end
  local all = glia.tensor(ids, "i64")
  return all:narrow(2, 1, 8):contiguous(), all:narrow(2, 2, 8):contiguous()
end

local P = { phase1 = { steps = 12, lr = 1e-2 }, phase2 = { steps = 4 }, phase3 = { steps = 4, budget = 0.5 } }

do -- attach: structure, the split initialization
  local m = teacher()
  local x = batch(1)
  local want = glia.no_grad(m, x)
  local conv = acm.attach(m, { learners = 4, init = "split" })
  t.is(#conv.acms, 2, "every TransformerBlock's MLP gets an ACM")
  local sd = m:state_dict()
  t.ok(sd["blocks.1.acm.w1"] and not sd["blocks.1.fc.weight"],
       "the ACM is in the state dict, the dense MLP is gone from it")
  conv:set_mode("teacher")
  t.ok(u.identical(glia.no_grad(m, x), want), "teacher mode gives the original model's output")
  conv:set_mode("dense")
  local got = glia.no_grad(m, x)
  -- the split has no output bias (fc2's is zero at GPT init), so o_N = the MLP
  t.ok(t.maxdiff(got, want) < 1e-4, "init = split, every ACM at k = N: the original model")
end

do -- phases, resume
  local m = teacher()
  local conv = acm.attach(m, { learners = 4 })
  local e0 = conv:prefix_errors(batch(100))
  t.ok(math.abs(e0[1] - 1) < 1e-6, "the k = 0 prefix error is 1 (relative)")
  local m1 = teacher()
  local out1 = dir .. "/a"
  local c1 = acm.convert(m1, { learners = 4, batch = batch, out = out1, progress = false,
                              phase1 = P.phase1, phase2 = P.phase2, phase3 = P.phase3,
                              save_every = 5 })
  local e1 = c1.prefix_errors_last
  t.ok(e1[5] < e0[5] / 2, "phase 1 lowers the N-learner error (same initialization)")
  local frac = c1:compute_fraction()
  t.ok(frac and frac >= 0 and frac <= 1, "after phase 3 gated: a compute fraction in [0, 1]")
  -- interrupted in phase 1 at step 8 (checkpoint at 5), then resumed
  local m2 = teacher()
  local out2 = dir .. "/b"
  local ok = pcall(acm.convert, m2, { learners = 4, out = out2, progress = false,
    batch = function(s, ph) if ph == 1 and s == 8 then error("stop") end return batch(s) end,
    phase1 = P.phase1, phase2 = P.phase2, phase3 = P.phase3, save_every = 5 })
  t.ok(not ok, "a failing batch stops the conversion")
  local m3 = teacher()
  local c3 = acm.convert(m3, { learners = 4, batch = batch, out = out2, progress = false,
                              phase1 = P.phase1, phase2 = P.phase2, phase3 = P.phase3,
                              save_every = 5 })
  t.ok(u.identical(c3.acms[1].w1, c1.acms[1].w1) and u.identical(c3.acms[2].gate1.weight,
       c1.acms[2].gate1.weight) and u.identical(m3.head.weight, m1.head.weight),
       "resumed from phase 1's step-5 checkpoint: the same bits as the run not interrupted")
  local log = u.slurp(out2 .. "/log.csv")
  local n1 = 0
  for line in log:gmatch("[^\n]+") do if line:match("^1,") then n1 = n1 + 1 end end
  t.is(n1, 7 + 7, "the log holds steps 1..7, then 6..12 of phase 1 (resumed at 5)")
  -- a finished conversion resumes to nothing
  local m4 = teacher()
  local c4 = acm.convert(m4, { learners = 4, batch = function() error("no batch needed") end,
                              out = out1, progress = false, phase3 = P.phase3 })
  t.ok(u.identical(c4.acms[1].w1, c1.acms[1].w1), "every phase done: convert loads the result")
end

do -- phase 1's incremental freeze: 12 steps, 4 stages of 3; stage s freezes learners 1..s
  local checkpoint = require "glia.checkpoint"
  local function run(out, stop, freeze)
    local m, seen, state = teacher(), {}, {}
    local c = acm.convert(m, { learners = 4, out = out, progress = false, phases = { 1 },
      phase1 = { steps = 12, lr = 1e-2, incremental_freeze = freeze ~= false }, save_every = 5,
      batch = function(step, ph)
        if step == stop then error("stop") end
        -- what steps 1..step-1 left: the weights, and the optimizer state saved at step 5
        seen[step] = { m.blocks[1].acm.w1:clone(), m.blocks[2].acm.w2:clone() }
        if step == 6 or step == 11 then state[step] = checkpoint.read(out .. "/phase1").tensors end
        return batch(step, ph)
      end })
    return c, seen, state
  end
  local c, seen, state = run(dir .. "/f")
  local w = c.acms[1].width
  local function learner(step, which, l)
    local tns = seen[step][which]
    return which == 1 and tns:narrow(1, (l - 1) * w + 1, w) or tns:narrow(2, (l - 1) * w + 1, w)
  end
  local kept, moved = true, true
  -- seen[step] is what steps 1..step-1 left: learner l is frozen from stage l, i.e. from step
  -- 3 l + 1 on, so step 3 l still moves it (seen[3 l] to seen[3 l + 1]) and no later step does
  for l = 1, 3 do
    for _, which in ipairs { 1, 2 } do
      kept = kept and u.identical(learner(3 * l + 1, which, l), learner(13, which, l))
      moved = moved and not u.identical(learner(3 * l, which, l), learner(3 * l + 1, which, l))
    end
  end
  local last = not u.identical(learner(12, 1, 4), learner(13, 1, 4))
  t.ok(kept and moved and last, "incremental freeze: learner l changes up to the last step " ..
       "before stage l, then not a bit (both ACMs, w1 and w2); the last learner trains to the end")
  -- opt.1.<i>: learner_params' order, w1, b1, w2 of each ACM; saved at step 5 and 10
  local zero, live = true, true
  for _, case in ipairs { { 6, 1 }, { 11, 3 } } do
    local tensors, s = state[case[1]], case[2]
    for i = 1, 6 do
      local dim = i % 3 == 0 and 2 or 1
      for _, name in ipairs { "exp_avg", "exp_avg_sq" } do
        local st = tensors["opt.1." .. i .. "." .. name]
        zero = zero and u.identical(st:narrow(dim, 1, s * w), st:narrow(dim, 1, s * w) * 0)
        live = live and st:narrow(dim, s * w + 1, w):abs():max():item() > 0
      end
    end
  end
  t.ok(zero and live, "and the frozen learners' Adam moments were reset to zero (saved at steps " ..
       "5 and 10), the others' not")
  -- interrupted at step 8 (stage 2; checkpoint at step 5, mid-stage 1), then resumed
  local out = dir .. "/g"
  t.ok(not pcall(run, out, 8), "a failing batch stops the frozen run")
  local c2 = run(out)
  local same = true
  for j = 1, 2 do
    for _, k in ipairs { "w1", "b1", "w2" } do same = same and u.identical(c2.acms[j][k], c.acms[j][k]) end
  end
  t.ok(same, "resumed mid-stage from the step-5 checkpoint: the same bits as the run not interrupted")
  -- a run without the freeze, stopped at step 11 (checkpoint at 10), resumed with it: steps 11
  -- and 12 are mid-stage 3, so only the resume itself resets learners 1..3's moments
  out = dir .. "/h"
  t.ok(not pcall(run, out, 11, false), "a run without incremental_freeze stopped at step 11")
  local c3, seen3 = run(out)
  local tensors, w3 = checkpoint.read(out .. "/phase1").tensors, 3 * w
  local reset = true
  for i = 1, 6 do
    local dim = i % 3 == 0 and 2 or 1
    for _, name in ipairs { "exp_avg", "exp_avg_sq" } do
      local st = tensors["opt.1." .. i .. "." .. name]:narrow(dim, 1, w3)
      reset = reset and u.identical(st, st * 0)
    end
  end
  -- and they do not move in steps 11 and 12 (seen3[11]: the weights the checkpoint held)
  local still = u.identical(seen3[11][1]:narrow(1, 1, w3), c3.acms[1].w1:narrow(1, 1, w3)) and
                u.identical(seen3[11][2]:narrow(2, 1, w3), c3.acms[2].w2:narrow(2, 1, w3))
  t.ok(reset and still, "resumed with incremental_freeze from a checkpoint written without it: " ..
       "the frozen learners' Adam moments are reset on the first step, and they stay put")
end

do -- phase3.gate_task_grad reaches every ACM; phase-only options are checked
  local m = teacher()
  local c = acm.convert(m, { learners = 4, batch = batch, progress = false,
                             phase1 = { steps = 1 }, phase2 = { steps = 1 },
                             phase3 = { steps = 1, gate_task_grad = true } })
  t.ok(c.acms[1].gate_task_grad and c.acms[2].gate_task_grad, "phase3.gate_task_grad sets every ACM's")
end

do -- a projection (any d -> d per-token module) is replaced in its parent
  local m = teacher()
  local x = batch(1)
  local want = glia.no_grad(m, x)
  local conv = acm.attach(m, { modules = { "blocks.2.attn.proj" } })
  local a = conv.acms[1]
  t.ok(a.min_choice == 1 and a.activation == "identity" and a.width == 2 and
       m:state_dict()["blocks.2.attn.proj.acm.w1"] ~= nil,
       "a projection: identity learners of width (d^2+d)/((2d+1)N), min_choice 1, in its place")
  conv:set_mode("teacher")
  t.ok(u.identical(glia.no_grad(m, x), want), "teacher mode runs the original projection")
  conv:set_mode("gated")
  m:eval()
  glia.no_grad(m, x)
  t.ok(a.last.k:to("f32"):min():item() >= 1, "gated: every token runs at least one learner")
end

do -- errors
  t.error_like(function()
    acm.convert(teacher(), { batch = batch, progress = false, phase3 = { budget = 1.5 } })
  end, "glia.acm.convert: phase3.budget must be in %(0, 1%], got 1.5", "a budget above 1")
  t.error_like(function() acm.attach(teacher(), { modules = { "blocks.1.attn" } }) end,
               "module 'blocks.1.attn' is not a d %-> d map", "a module without a square weight")
  local Mix = nn.Module:extend("Mix")
  function Mix:__init() self.weight = nn.Parameter(glia.eye(16)) end
  function Mix:forward(x) return x + x:mean(2, true) end
  local m = teacher()
  m.blocks[1].mix = Mix()
  t.error_like(function() acm.attach(m, { modules = { "blocks.1.mix" } }) end,
               "not a d %-> d per%-token map %(d = 16%): its output for a token depends on the other tokens",
               "a module that mixes tokens")
end

do -- every argument checked up front, each error naming the function and the argument
  local function conv(o)
    local opts = { batch = batch, progress = false }
    for k, v in pairs(o) do opts[k] = v end
    -- a batch function that fails: a check that came too late would reach it
    opts.batch = function() error("batch was called") end
    return acm.convert(teacher(), opts)
  end
  local cases = {
    { function() acm.attach(teacher(), { modules = { "blocks.1.ln1" } }) end,
      "glia.acm.attach: module 'blocks.1.ln1' is not a d %-> d map %(weight {16}, not {d,d}%)" },
    { function() acm.attach(teacher(), { learners = "x" }) end,
      "glia.acm.attach: learners must be an integer >= 1, got x" },
    { function() acm.attach(teacher(), { modules = "blocks.1" }) end,
      "glia.acm.attach: modules must be a non%-empty list of dotted names, got \"blocks.1\"" },
    { function() acm.attach(teacher(), { modules = {} }) end,
      "glia.acm.attach: modules must be a non%-empty list" },
    { function() acm.attach(teacher(), { modules = { "blocks.1", "blocks.1" } }) end,
      "glia.acm.attach: module 'blocks.1' is listed twice" },
    { function() acm.attach(teacher(), { rho = -1 }) end, "glia.acm.attach: rho must be a number > 0, got %-1" },
    { function() acm.attach(teacher(), { rho = 0 / 0 }) end, "glia.acm.attach: rho must be a number > 0" },
    { function() acm.attach(teacher(), { rho = 0 }) end, "glia.acm.attach: rho must be a number > 0, got 0" },
    { function() acm.convert(nil, { batch = batch }) end, "glia.acm.convert: model must be an nn.Module, got nil" },
    { function() conv { phases = { 4 } } end, "glia.acm.convert: phases%[1%] must be 1, 2 or 3, got 4" },
    { function() conv { phase1 = { steps = -1 } } end, "glia.acm.convert: phase1.steps must be an integer >= 0, got %-1" },
    { function() conv { phase2 = { tau_err = 0 } } end, "glia.acm.convert: phase2.tau_err must be a number > 0, got 0" },
    { function() conv { phase3 = { w_e = -1 } } end, "glia.acm.convert: phase3.w_e must be a number >= 0, got %-1" },
    { function() conv { rho = -1 } end, "glia.acm.convert: rho must be a number > 0, got %-1" },
    { function() conv { phase1 = { incremental_freeze = 1 } } end,
      "glia.acm.convert: phase1.incremental_freeze must be true or false, got 1" },
    { function() conv { phase3 = { incremental_freeze = true } } end,
      "glia.acm.convert: incremental_freeze is an option of phase1, not phase3" },
    { function() conv { phase1 = { gate_task_grad = true } } end,
      "glia.acm.convert: gate_task_grad is an option of phase3, not phase1" },
    { function() A.gate_labels(nil, 1.2) end, "glia.acm.gate_labels: errors must be a tensor {T, N%+1} or a list of rows, got nil" },
    { function() A.gate_labels({ 1, 2, 3 }, 1.2) end, "glia.acm.gate_labels: errors must be rows of N%+1 >= 2 numbers" },
    { function() A.gate_labels(glia.ones(5), 1.2) end, "glia.acm.gate_labels: errors must be {T, N%+1} with N >= 1, got {5}" },
    { function() A.gate_labels({ { 3, 2, 1 }, { 3, 2 } }, 1.2) end,
      "glia.acm.gate_labels: errors must be rows .*as row 1 %(3%), row 2 is 2 long" },
    { function() glia.acm(glia.ones(2, 4), glia.ones(8, 4), glia.ones(8), glia.ones(4, 8), glia.zeros({ 2 }, "i64"), { learners = 1.5 }) end,
      "glia.acm: option learners must be an integer >= 1, got 1.5" },
    { function() glia.acm_all(glia.ones(2, 4), glia.ones(8, 4), glia.ones(8), glia.ones(4, 8), { detach = "no" }) end,
      "glia.acm_all: option detach must be true or false, got no" },
  }
  local bad = {}
  for i, c in ipairs(cases) do
    local ok, err = pcall(c[1])
    if ok or not tostring(err):find(c[2]) then bad[#bad + 1] = i .. ": " .. tostring(err) end
  end
  t.is(table.concat(bad, "\n"), "", "attach, convert, gate_labels, glia.acm(_all): " .. #cases ..
       " bad arguments, each a clear error naming the function and the argument, before any phase runs")
  local a = nn.ACM(8, 16, 4)
  local x = glia.randn(4, 8)
  a:train()
  a(x)
  bad = {}
  for _, f in ipairs {
    function() A.entropy_loss({ a }, 3) end, function() A.diversity_loss({ a }, 3) end } do
    local ok, err = pcall(f)
    if ok or not tostring(err):find("_loss: B = 3 samples must be an integer >= 1 dividing ACM 1's 4 tokens", 1, true) then
      bad[#bad + 1] = tostring(err)
    end
  end
  local ok, err = pcall(a, nil)
  if ok or not tostring(err):find("glia.nn.ACM: expected an input tensor {..., 8}, got nil", 1, true) then
    bad[#bad + 1] = tostring(err)
  end
  t.is(table.concat(bad, "\n"), "", "entropy and diversity losses with B not dividing T, an ACM called on nil: clear errors")
end

os.execute("rm -rf '" .. dir .. "'")
t.done()
