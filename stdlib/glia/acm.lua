-- glia.acm -- converting a trained model's per-token layers into Adaptive
-- Computation Modules (nn.ACM, stdlib/glia/nn/acm.lua) in three phases, as
-- Wojcik et al. (2023) do:
--
--   1. distillation: every ACM learns its teacher module (frozen) from the
--      teacher's own inputs: the mean over k = 0..N of |o_k(x) - f(x)|^2
--      (with phase1.incremental_freeze, learners frozen one by one);
--   2. gate pre-training: learners frozen, each gate learns by cross
--      entropy the smallest k after which one more learner helps by less
--      than tau_err (nn.acm's gate_labels);
--   3. end-to-end fine-tuning: everything trains, gates in Gumbel mode, on
--      task + w_b budget + w_e entropy + w_v diversity (phase3.gate_task_grad:
--      the task loss reaches the gates too).
--
--   local acm = require "glia.acm"
--   local conv = acm.convert(model, {learners = 4, batch = fn, out = "runs/acm",
--                                    phase3 = {budget = 0.5}})
--   conv:set_mode("gated")  -- or "teacher", or "dense" (every ACM at k = N)
--
-- Which modules: opts.modules lists dotted names in the model; the default
-- is every nn.TransformerBlock. A TransformerBlock has its MLP replaced
-- (fc, gelu tanh, fc2 -> an ACM of gelu_tanh learners reading ln2's output,
-- through an instance field mlp_update, the block's hook for its MLP; its
-- fused decoding paths are turned off); any other module is replaced in its parent by a slot holding the
-- ACM, after a probe proves it a d -> d per-token map (a projection: identity
-- learners of width rho (d^2 + d) / ((2d + 1) N), min_choice 1, as the
-- paper has for attention's projections). The teachers leave
-- the model (its parameters and state dict hold the ACMs only) and stay in
-- conv.entries[i].teacher for phases 1 and 2.
--
-- batch(step, phase) returns the model's input and target for a step
-- (model(x) and, for phase 3, loss(model, x, y), default model:loss(x, y)).
-- Each phase writes out/phase<i> (a glia.checkpoint: model, optimizer,
-- step) every save_every steps and when done, and appends to out/log.csv;
-- convert resumes from the latest phase checkpoint in out. Each ACM's
-- learners use rho * (teacher width) / N hidden units each (rho = 1: all
-- of them cost what the teacher did).
--
-- Also re-exported from nn.acm: ACM, gumbel_hard, gate_labels, budget_loss,
-- entropy_loss, diversity_loss.
local glia = require "glia"
local nn = require "glia.nn"
local A = require "glia.nn.acm"
local options = require "glia.options"
local optim = require "glia.optim"
local progress = require "glia.progress"
local checkpoint = require "glia.checkpoint"

local fmt, floor, max, min, sqrt = string.format, math.floor, math.max, math.min, math.sqrt
local type, ipairs, pairs, tostring, rawget, rawset = type, ipairs, pairs, tostring, rawget, rawset
local error = glia.error -- blames the user's line, never the stdlib's
local clock = glia.clock
local unpack = table.unpack or unpack
local no_grad = glia.no_grad

local M = {}
for _, k in ipairs { "ACM", "gumbel_hard", "gate_labels", "budget_loss", "entropy_loss",
                     "diversity_loss" } do
  M[k] = A[k]
end

-- =========================================================== attaching

-- A module's child by dotted name, with its parent and last key.
local function lookup(where, model, path)
  local parent, key, m = nil, nil, model
  for part in path:gmatch("[^.]+") do
    local k = tonumber(part) or part
    parent, key, m = m, k, rawget(m, k)
    if not nn.is_module(m) then
      error(fmt("%s: the model has no module '%s'", where, path), 4)
    end
  end
  return m, parent, key
end

-- Drops child `name` from module m (from its registration list too), so
-- that parameters() and state_dict() no longer hold it.
local function drop_child(m, name)
  local list = m._children
  for i = #list, 1, -1 do
    if list[i] == name then table.remove(list, i) end
  end
  rawset(m, name, nil)
end

-- The per-token check of a module taken for a d -> d map: on x {2, 3, d}
-- the output has x's shape, and token (1, 2) alone gives the same row.
local function check_per_token(where, path, m, d)
  local ok, why = pcall(function()
    local x = glia.randn(2, 3, d)
    local y = no_grad(m, x)
    if table.concat(y:shape(), ",") ~= table.concat(x:shape(), ",") then
      return fmt("it maps {2,3,%d} to {%s}", d, table.concat(y:shape(), ","))
    end
    local one = no_grad(m, x:narrow(1, 1, 1):narrow(2, 2, 1))
    local diff = (one:view(d) - y[1][2]):abs():max():item()
    local scale = y:abs():max():item()
    if diff > 1e-4 * max(scale, 1) then
      return "its output for a token depends on the other tokens"
    end
  end)
  if not ok then why = "running it on {2,3," .. d .. "} failed: " .. tostring(why) end
  if why then
    error(fmt("%s: module '%s' is not a d -> d per-token map (d = %d): %s", where, path, d,
              why), 4)
  end
end

-- The MLP residual update of a converted TransformerBlock (the block's
-- mlp_update hook), through the entry: teacher, ACM, or ACM at k = N.
local function block_mlp_update(self, x)
  local h = rawget(self, "_acm_entry"):run(self.ln2(x))
  if self.drop then h = self.drop(h) end
  return h
end

-- A generic converted module's place in its parent.
local Slot = nn.Module:extend("ACMSlot")
function Slot:__init(entry, acm_module)
  self.acm = acm_module
  rawset(self, "_acm_entry", entry)
end
function Slot:forward(x) return rawget(self, "_acm_entry"):run(x) end

local Entry = {}
Entry.__index = Entry

-- The module's output for h in the conversion's current mode; with
-- recording on, keeps h (detached), and in teacher mode the teacher's
-- output as y.
function Entry:run(h)
  if self.recording then self.h = h:detach() end
  if self.mode == "teacher" then
    local y = self.teacher(h)
    if self.recording then self.y = y:detach() end
    return y
  end
  return self.acm(h)
end

local ATTACH_KEYS = { "modules", "learners", "rho", "tau", "min_choice", "init" }

-- attach's options and model, checked (also before convert spends time).
local function check_attach(where, model, opts)
  if not nn.is_module(model) then
    error(fmt("%s: model must be an nn.Module, got %s", where, tostring(model)), 4)
  end
  local N, rho, names = opts.learners, opts.rho, opts.modules
  if N ~= nil and not (type(N) == "number" and N == floor(N) and N >= 1 and N < 2 ^ 31) then
    error(fmt("%s: learners must be an integer >= 1, got %s", where, tostring(N)), 4)
  end
  if rho ~= nil and not (type(rho) == "number" and rho > 0 and rho < math.huge) then
    error(fmt("%s: rho must be a number > 0, got %s", where, tostring(rho)), 4)
  end
  if opts.init ~= nil and opts.init ~= "split" then
    error(fmt("%s: init must be \"split\" or nil, got %s", where, tostring(opts.init)), 4)
  end
  if names ~= nil then
    if type(names) ~= "table" or #names == 0 then
      error(fmt("%s: modules must be a non-empty list of dotted names, got %s", where,
                type(names) == "string" and fmt("%q", names) or tostring(names)), 4)
    end
    local seen = {}
    for i, n in ipairs(names) do
      if type(n) ~= "string" then
        error(fmt("%s: modules[%d] must be a dotted name, got %s", where, i, tostring(n)), 4)
      end
      if seen[n] then error(fmt("%s: module '%s' is listed twice", where, n), 4) end
      seen[n] = true
    end
  end
end

-- Attaches ACMs in place of the modules (see the header). Returns the
-- conversion: {model, entries = {{name, acm, teacher, ...}}, acms}.
local function attach(where, model, opts)
  check_attach(where, model, opts)
  local N = opts.learners or 4
  local rho = opts.rho or 1
  local names = opts.modules
  if names == nil then
    names = {}
    for _, e in ipairs(model:named_modules()) do
      if getmetatable(e[2]) == nn.TransformerBlock then names[#names + 1] = e[1] end
    end
    if #names == 0 then
      error(where .. ": the model has no TransformerBlock; name the modules to convert", 3)
    end
  end
  local conv = setmetatable({ model = model, entries = {}, acms = {}, learners = N }, M.Conversion)
  for _, path in ipairs(names) do
    local m, parent, key = lookup(where, model, path)
    local e = setmetatable({ name = path, mode = "student" }, Entry)
    local d, hidden, act, min_choice
    if getmetatable(m) == nn.TransformerBlock then
      local fc, fc2 = rawget(m, "fc"), rawget(m, "fc2")
      if not (fc and fc2) then
        error(fmt("%s: block '%s' has no dense MLP (fc, fc2) to convert", where, path), 3)
      end
      d, act, min_choice = fc.weight:size(2), "gelu_tanh", opts.min_choice or 0
      hidden = max(N, floor(rho * fc.weight:size(1) / N + 0.5) * N)
      e.teacher = function(h) return fc2(glia.gelu(fc(h), "tanh")) end
      e.dense = { fc = fc, fc2 = fc2 }
    else
      local w = rawget(m, "weight")
      local wt = glia.is_tensor(w) and w
      d = wt and w:dim() == 2 and w:size(1) == w:size(2) and w:size(2)
      if not d then
        error(fmt("%s: module '%s' is not a d -> d map (%s)", where, path,
                  wt and fmt("weight {%s}, not {d,d}", table.concat(w:shape(), ","))
                     or "no weight matrix"), 3)
      end
      check_per_token(where, path, m, d)
      -- a projection: low-rank identity learners, each costing rho/N of
      -- it, and at least one of them per token (it may not output zero)
      act, min_choice = "identity", opts.min_choice or 1
      hidden = max(1, floor(rho * (d * d + d) / ((2 * d + 1) * N) + 0.5)) * N
      e.teacher = m
    end
    local a = nn.ACM(d, hidden, N, { activation = act, tau = opts.tau, min_choice = min_choice })
    if opts.init == "split" and e.dense and hidden == e.dense.fc.weight:size(1) then
      no_grad(function()
        a.w1:copy_(e.dense.fc.weight)
        a.b1:copy_(e.dense.fc.bias)
        a.w2:copy_(e.dense.fc2.weight)
      end)
    end
    e.acm = a
    if getmetatable(m) == nn.TransformerBlock then
      drop_child(m, "fc")
      drop_child(m, "fc2")
      m.acm = a
      rawset(m, "_acm_entry", e)
      rawset(m, "mlp_update", block_mlp_update)
      m.fused = false
    else
      parent[key] = Slot(e, a)
    end
    conv.entries[#conv.entries + 1] = e
    conv.acms[#conv.acms + 1] = a
  end
  return conv
end

function M.attach(model, opts)
  return attach("glia.acm.attach", model, options.check("glia.acm.attach", opts, ATTACH_KEYS, 2))
end

-- ========================================================== conversion

local Conversion = {}
Conversion.__index = Conversion
M.Conversion = Conversion

-- mode: "teacher" (the original modules), "gated" (the ACMs, their gates
-- choosing k), or "dense" (the ACMs at k = N); force_k/cap_k apply in gated.
function Conversion:set_mode(mode, force_k)
  for _, e in ipairs(self.entries) do
    e.mode = mode == "teacher" and "teacher" or "student"
    e.acm.force_k = mode == "dense" and e.acm.learners or force_k
  end
end

function Conversion:learner_params()
  local ps = {}
  for _, a in ipairs(self.acms) do ps[#ps + 1] = a.w1 ps[#ps + 1] = a.b1 ps[#ps + 1] = a.w2 end
  return ps
end

function Conversion:gate_params()
  local ps = {}
  for _, a in ipairs(self.acms) do
    for _, g in ipairs { a.gate1, a.gate2, a.gate3 } do
      for _, p in ipairs(g:parameters()) do ps[#ps + 1] = p end
    end
  end
  return ps
end

-- The fraction of the ACMs' maximal compute the last forward ran, from the
-- FLOPs glia.acm measured.
function Conversion:compute_fraction()
  local run, most = 0, 0
  for _, a in ipairs(self.acms) do
    local l = a.last
    if not l then return nil end
    run = run + l.flops
    most = most + l.T * a.learners * a:learner_flops()
  end
  return run / most
end

-- The teacher's inputs and outputs of every entry for model input x.
function Conversion:record(x)
  self:set_mode("teacher")
  for _, e in ipairs(self.entries) do e.recording = true end
  no_grad(self.model, x)
  for _, e in ipairs(self.entries) do e.recording = false end
  self:set_mode("gated")
end

-- Per-prefix relative errors on x: e_k = sum |o_k - f|^2 / sum |f|^2
-- summed over the entries' tokens, k = 0..N (a list).
function Conversion:prefix_errors(x)
  self:record(x)
  local num, den = {}, 0
  no_grad(function()
    for _, e in ipairs(self.entries) do
      local all = e.acm:forward_all(e.h)
      local diff = all - e.y:view(1, unpack(e.y:shape()))
      local per = diff:pow(2):sum({ 2, 3, 4 }):totable()
      for k = 1, #per do num[k] = (num[k] or 0) + per[k] end
      den = den + e.y:pow(2):sum():item()
    end
  end)
  for k = 1, #num do num[k] = num[k] / den end
  return num
end

-- ============================================================== phases

local PHASES = {
  { name = "distil", defaults = { steps = 300, lr = 1e-3, min_lr = 1e-6, clip = 1 } },
  { name = "gates", defaults = { steps = 100, lr = 1e-2, tau_err = 1.2, clip = 1 } },
  { name = "finetune", defaults = { steps = 300, lr = 3e-4, budget = 0.5, w_b = 0.1, w_e = 0.05,
                                    w_v = 0.05, clip = 1 } },
}
local PHASE_KEYS = { "steps", "lr", "min_lr", "clip", "tau_err", "budget", "w_b", "w_e", "w_v",
                     "incremental_freeze", "gate_task_grad" }
-- the options only one phase takes: the phase
local PHASE_ONLY = { incremental_freeze = 1, gate_task_grad = 3 }
local LOG_COLUMNS = { "phase", "step", "loss", "task", "compute", "lr", "time" }

-- Each option's check: what it must be, and the test.
local function is_int0(v) return type(v) == "number" and v == floor(v) and v >= 0 and v < 2 ^ 53 end
local function is_pos(v) return type(v) == "number" and v > 0 and v < math.huge end
local function is_nonneg(v) return type(v) == "number" and v >= 0 and v < math.huge end
local function is_bool(v) return type(v) == "boolean" end
local PHASE_CHECKS = {
  steps = { "an integer >= 0", is_int0 }, lr = { "a number > 0", is_pos },
  min_lr = { "a number >= 0", is_nonneg }, clip = { "a number > 0", is_pos },
  tau_err = { "a number > 0", is_pos },
  budget = { "in (0, 1]", function(v) return type(v) == "number" and v > 0 and v <= 1 end },
  w_b = { "a number >= 0", is_nonneg }, w_e = { "a number >= 0", is_nonneg },
  w_v = { "a number >= 0", is_nonneg },
  incremental_freeze = { "true or false", is_bool }, gate_task_grad = { "true or false", is_bool },
}

-- Phase i's options over its defaults, every value checked (convert checks
-- all three phases before phase 1 starts).
local function phase_opts(i, given)
  local o = options.check("glia.acm.convert: phase" .. i, given, PHASE_KEYS, 3)
  local out = {}
  for k, v in pairs(PHASES[i].defaults) do out[k] = v end
  for k, v in pairs(o) do
    local c = PHASE_CHECKS[k]
    if PHASE_ONLY[k] and PHASE_ONLY[k] ~= i then
      error(fmt("glia.acm.convert: %s is an option of phase%d, not phase%d", k, PHASE_ONLY[k], i), 3)
    end
    if not c[2](v) then
      error(fmt("glia.acm.convert: phase%d.%s must be %s, got %s", i, k, c[1], tostring(v)), 3)
    end
    out[k] = v
  end
  return out
end

-- Phase 1's loss: sum over entries of mean over k, tokens, features of
-- (o_k - f)^2, on the teacher's activations for x.
local function distil_loss(conv, x)
  conv:record(x)
  local loss
  for _, e in ipairs(conv.entries) do
    local all = e.acm:forward_all(e.h)
    local l = (all - e.y:view(1, unpack(e.y:shape()))):pow(2):mean()
    loss = loss and loss + l or l
  end
  return loss
end

-- Phase 2's loss: cross entropy of each gate against its labels.
local function gate_loss(conv, x, tau_err)
  conv:record(x)
  local loss
  for _, e in ipairs(conv.entries) do
    local a = e.acm
    local h2 = e.h:reshape(-1, a.d)
    local labels = no_grad(function()
      local all = a:forward_all(h2)                         -- {N+1, T, d}
      local err = (all - e.y:reshape(1, -1, a.d)):pow(2):sum(3):sqrt() -- {N+1, T}
      return A.gate_labels(err:t(), tau_err)
    end)
    -- gate classes are k = m..N, 1-based for cross entropy
    local target = (labels:to("f32") + (1 - a.min_choice)):to("i64")
    local l = glia.cross_entropy(a:gate_logits(h2), target)
    loss = loss and loss + l or l
  end
  return loss
end

-- Phase 3's loss and the task part.
local function finetune_loss(conv, x, y, o, task_fn)
  conv:set_mode("gated")
  local task = task_fn(conv.model, x, y)
  local B = x:size(1)
  local lb = A.budget_loss(conv.acms, o.budget)
  local loss = task + lb * o.w_b + A.entropy_loss(conv.acms, B) * o.w_e +
               A.diversity_loss(conv.acms, B) * o.w_v
  return loss, task
end

local function phase_dir(out, i) return out and fmt("%s/phase%d", out, i) end

-- Incremental freeze (phase1.incremental_freeze): the phase's steps in N
-- equal stages; at stage s (0-based) learners 1..s of every ACM are frozen.
local function freeze_stage(step, steps, N) return min(N - 1, floor((step - 1) * N / steps)) end

-- Freezes the first s learners of every ACM for this step: zeroes their
-- part of the gradients (w1's and b1's first s*w rows, w2's first s*w
-- columns), and with `reset` their part of opt's state too. With both at
-- zero, Adam (no weight decay) moves them by exactly 0.
local LEARNER_DIMS = { 1, 1, 2 } -- of w1, b1, w2: where the learners are
local function freeze_learners(conv, opt, s, reset)
  local params, state = opt.param_groups[1].params, opt.state[1]
  for j, a in ipairs(conv.acms) do
    for q, dim in ipairs(LEARNER_DIMS) do
      local i = 3 * (j - 1) + q -- learner_params' order: w1, b1, w2 of each ACM
      local p, units = params[i], s * a.width
      if p.grad then p.grad:narrow(dim, 1, units):zero_() end
      if reset then
        for _, name in ipairs(opt.state_names) do
          local st = state[i][name]
          if st then st:narrow(dim, 1, units):zero_() end
        end
      end
    end
  end
end

-- Runs phase i from `start` (resumed) to its steps.
local function run_phase(conv, i, o, ctx, start, ck)
  local model = conv.model
  local params = i == 1 and conv:learner_params() or i == 2 and conv:gate_params() or
                 model:parameters()
  local opt = i == 3 and optim.AdamW(params, { lr = o.lr, weight_decay = 0 })
                      or optim.Adam(params, { lr = o.lr })
  if ck then checkpoint.load(ck, { model = model, optimizer = opt }) end
  local sched = i == 1 and optim.schedule.cosine { lr = o.lr, total = max(o.steps, 1),
                                                   min_lr = o.min_lr }
                        or optim.schedule.constant(o.lr)
  local bar = ctx.out_stream and progress.bar { total = o.steps, desc = "acm " .. PHASES[i].name,
                                                out = ctx.out_stream }
  if bar and start > 0 then bar:update(start) end
  local t0 = clock()
  local function save(step, done)
    if not ctx.out then return end
    local ok, err = checkpoint.save(phase_dir(ctx.out, i), { model = model, optimizer = opt,
      step = step, extra = { phase = i, done = done } })
    if not ok then error("glia.acm.convert: " .. err, 0) end
  end
  if i == 3 then
    model:train()
    for _, a in ipairs(conv.acms) do a.gate_task_grad = o.gate_task_grad or false end
  end
  for step = start + 1, o.steps do
    local lr = sched(step)
    opt:set_lr(lr)
    opt:zero_grad()
    local x, y = ctx.batch(step, i)
    local loss, task
    if i == 1 then loss = distil_loss(conv, x)
    elseif i == 2 then loss = gate_loss(conv, x, o.tau_err)
    else loss, task = finetune_loss(conv, x, y, o, ctx.loss) end
    loss:backward()
    if o.incremental_freeze then
      -- the state is reset when a stage starts, and on resuming: a
      -- checkpoint written with the freeze holds zeros there already, one
      -- written without it (the option turned on for the resume) does not
      local s = freeze_stage(step, o.steps, conv.learners)
      if s > 0 then
        freeze_learners(conv, opt, s, step == start + 1 or freeze_stage(step - 1, o.steps,
                                                                           conv.learners) ~= s)
      end
    end
    optim.clip_grad_norm(params, o.clip)
    opt:step()
    local row = { phase = i, step = step, loss = loss:item(), task = task and task:item(),
                  compute = i == 3 and conv:compute_fraction() or nil, lr = lr,
                  time = clock() - t0 }
    loss, task, x, y = nil, nil, nil, nil
    collectgarbage()
    if ctx.log then ctx.log:write(row) end
    if bar then bar:update(step, { loss = row.loss, compute = row.compute }) end
    if ctx.save_every and step % ctx.save_every == 0 and step < o.steps then save(step, false) end
  end
  if bar then bar:close() end
  save(o.steps, true)
  model:eval()
  conv:set_mode("gated")
end

-- attach + the three phases (see the header). opts: modules, learners, rho,
-- tau, min_choice, init ("split": start from the teacher's own units, when
-- rho = 1); batch (required), loss, phase1, phase2, phase3 (tables of
-- steps, lr, ...; phase3.budget in (0, 1]; phase1.incremental_freeze:
-- freeze learners 1..s at stage s of N, see freeze_learners;
-- phase3.gate_task_grad: nn.ACM's, on every ACM), out, save_every (100),
-- progress (a stream for the bars, default io.stdout; false: none),
-- phases (the list to run, default {1, 2, 3}). Returns the conversion;
-- conv.prefix_errors holds phase 1's per-prefix errors on its last batch.
function M.convert(model, opts)
  opts = options.check("glia.acm.convert", opts,
                       { "modules", "learners", "rho", "tau", "min_choice", "init", "batch",
                         "loss", "phase1", "phase2", "phase3", "out", "save_every", "progress",
                         "phases" }, 2)
  if type(opts.batch) ~= "function" then
    error("glia.acm.convert: batch must be a function(step, phase) returning x, y", 2)
  end
  local po = { phase_opts(1, opts.phase1), phase_opts(2, opts.phase2), phase_opts(3, opts.phase3) }
  local phases = opts.phases or { 1, 2, 3 }
  if type(phases) ~= "table" or #phases == 0 then
    error("glia.acm.convert: phases must be a non-empty list of 1, 2, 3, got " .. tostring(phases), 2)
  end
  for j, i in ipairs(phases) do
    if i ~= 1 and i ~= 2 and i ~= 3 then
      error(fmt("glia.acm.convert: phases[%d] must be 1, 2 or 3, got %s", j, tostring(i)), 2)
    end
  end
  local se = opts.save_every
  if se ~= nil and not (is_int0(se) and se >= 1) then
    error("glia.acm.convert: save_every must be an integer >= 1, got " .. tostring(se), 2)
  end
  local conv = attach("glia.acm.convert", model,
                      { modules = opts.modules, learners = opts.learners, rho = opts.rho,
                        tau = opts.tau, min_choice = opts.min_choice, init = opts.init })
  local ctx = { batch = opts.batch, out = opts.out, save_every = opts.save_every or 100,
                loss = opts.loss or function(m, x, y) return (m:loss(x, y)) end,
                out_stream = opts.progress == nil and io.stdout or opts.progress or nil }
  -- the latest phase checkpoint: resume there
  local from, ck = 1, nil
  if opts.out then
    for i = 3, 1, -1 do
      local c = checkpoint.read(phase_dir(opts.out, i))
      if c then
        if c.extra.done then
          checkpoint.load(c, { model = model })
          from = i + 1
        else
          from, ck = i, c
        end
        break
      end
    end
    local ok, err = checkpoint.make_dir(opts.out)
    if not ok then error(err, 2) end
    ctx.log = progress.csv(opts.out .. "/log.csv", LOG_COLUMNS, { append = true })
  end
  local want = {}
  for _, i in ipairs(phases) do want[i] = true end
  for i = from, 3 do
    if want[i] then
      run_phase(conv, i, po[i], ctx, ck and ck.step or 0, ck)
      if i == 1 then conv.prefix_errors_last = conv:prefix_errors(ctx.batch(po[1].steps + 1, 1)) end
    end
    ck = nil
  end
  if ctx.log then ctx.log:close() end
  model:eval()
  conv:set_mode("gated")
  return conv
end

return M
