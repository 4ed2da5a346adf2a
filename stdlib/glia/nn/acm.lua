-- glia.nn.acm -- nn.ACM, an Adaptive Computation Module (Wojcik et al.
-- 2023): N learners, two-layer networks whose outputs are summed, and a
-- gate that picks per token how many of them run (0..N). The learners are
-- packed as one MLP d -> N*w -> d (learner n owns hidden units
-- (n-1)*w+1 .. n*w), so any prefix is a slice: glia.acm (ops/acm.c) runs
-- each token on its own prefix, bucketed, and tokens that run nothing cost
-- nothing.
--
--   ACM(d, hidden, learners [, {activation = "gelu", min_choice = 0,
--       tau = 0.8, gate_hidden = 16, detach = true, schedule = "bucket",
--       gate_task_grad = false}])
--
-- hidden is the packed width N*w. The gate: three linear layers
-- d -> gate_hidden -> gate_hidden -> N+1-m without activations between
-- them (the reference's), m = min_choice; k = m + argmax of its logits in
-- eval mode (glia.acm_gate: the three layers fused in one call), and in
-- training m + the index of a Gumbel-softmax sample
-- taken hard, with the straight-through gradient (noise from the context's
-- seeded RNG). Runtime overrides: `force_k` (every token runs that many
-- learners; a number in (0, 1) is a fraction of N, rounded) and `cap_k`
-- (k clamped to at most that), each an integer in min_choice..N, checked
-- the same way in training and eval. Any gate_hidden works: eval fuses the
-- gate when it is at most 64 wide and runs the three layers otherwise.
-- schedule is glia.acm's ("bucket", or "tier" to compare against).
-- activation and schedule may be reassigned between calls: the next
-- forward checks the new value and uses it.
--
-- gate_task_grad (off by default, as in the reference, where the task loss
-- never reaches the gate): in training, the output becomes the spec's
-- f~(x) = sum_k g_k o_k(x), the same value, so that the task loss gives the
-- gate dL/dg_k = <dL/df~, o_k(x)> (see task_grad_mix). It costs every
-- prefix o_0..o_N of every token (glia.acm_all, without gradient) on top of
-- the gated forward, and only when gradients are on (the field can be set
-- later too).
--
-- forward(x {..., d}) -> {..., d}, and records in self.last what the
-- losses read: g {T, N+1} (the gate's one-hot over k = 0..N, carrying the
-- straight-through gradient; training mode only, nil when forced), k (i64 {T}), flops (the
-- learner FLOPs glia.acm measured) and T. forward_all(x) -> {N+1, ..., d},
-- every prefix (phase-1 distillation).
--
-- Also here, as functions of the module table (glia.acm re-exports them):
--   gumbel_hard(logits, tau [, u])   one-hot forward, softmax-Jacobian backward
--   task_grad_mix(y, g, all)         gate_task_grad's output: y's value, o_k to g_k
--   gate_labels(errors, tau_err)     phase-2 targets from per-prefix errors
--   budget_loss(acms, beta)          |F - beta| and F, F the fraction of max compute
--   entropy_loss(acms, B)            rewards varied choices inside a sample
--   diversity_loss(acms, B)          rewards different compute across samples
local glia = require "glia"
local Module = require "glia.nn.module"
local options = require "glia.options"
local lin = require "glia.nn.linear"
local init = require "glia.nn.initializers"

local sqrt, floor, log, abs = math.sqrt, math.floor, math.log, math.abs
local format, type, ipairs, tostring = string.format, type, ipairs, tostring
local error = glia.error -- blames the user's line, never the stdlib's
local Parameter, check_int = Module.Parameter, Module.check_int

local M = {}

-- ============================================================ the gate

-- y = onehot(argmax(logits + gumbel)) forward; the gradient is that of
-- softmax((logits + gumbel) / tau). u: uniform noise of logits' shape
-- (default glia.rand from the context's RNG), clamped away from 0 and 1.
-- Written y_hard + (y_soft - detach(y_soft)), so that the forward value is
-- the one-hot exactly. Returns y and the 1-based indices {...}.
function M.gumbel_hard(logits, tau, u)
  if type(tau) ~= "number" or not (tau > 0) then
    error("glia.acm.gumbel_hard: temperature must be > 0, got " .. tostring(tau), 2)
  end
  u = (u or glia.rand(logits:shape())):clamp(1e-20, 1 - 1e-7)
  local z = (logits + u:log():neg():log():neg()) / tau
  local soft = glia.softmax(z, -1)
  local idx = glia.argmax(z, -1)
  local hard = glia.one_hot(idx, logits:size(-1))
  return hard + (soft - soft:detach()), idx
end

-- gate_task_grad's output for the gated y {T, d} = o_{k_t}(x_t), the gate's
-- one-hot g {T, N+1} and every prefix all {N+1, T, d} (no gradient):
--   f~ = y + sum_k (g_k - stopgrad g_k) o_k
-- The added term is exactly 0 forward (g - g is 0, and so is 0 * o_k) for
-- finite prefixes, so f~ is y to the bit; an inf or NaN in any o_k,
-- chosen or not, makes 0 * o_k and so f~ NaN there. Backward, g_k gets
-- <dL/df~, o_k>, the gradient of the spec's sum_k g_k o_k, while the learners and x keep y's gradient, which
-- is that sum's too (g is one-hot: only the chosen prefix has weight).
function M.task_grad_mix(y, g, all)
  local T, C = g:size(1), g:size(2)
  if g:dim() ~= 2 or y:dim() ~= 2 or all:dim() ~= 3 or all:size(1) ~= C or all:size(2) ~= T or
     y:size(1) ~= T or y:size(2) ~= all:size(3) then
    error(format("glia.acm.task_grad_mix: expected y {T,d}, g {T,C}, all {C,T,d}, got " ..
                 "y {%s}, g {%s}, all {%s}", table.concat(y:shape(), ","),
                 table.concat(g:shape(), ","), table.concat(all:shape(), ",")), 2)
  end
  local gd = (g - g:detach()):view(T, C, 1)
  return y + (gd * all:detach():permute(2, 1, 3)):sum(2)
end

-- Phase-2 targets: errors {T, N+1} (e_0..e_N per token, a tensor or nested
-- table) -> i64 {T}: the smallest k in 1..N with e_{k-1} / e_k < tau_err
-- (learner k helped by less than that factor), N when there is none.
function M.gate_labels(errors, tau_err)
  if type(tau_err) ~= "number" or not (tau_err > 0) then
    error("glia.acm.gate_labels: tau_err must be > 0, got " .. tostring(tau_err), 2)
  end
  local e
  if glia.is_tensor(errors) then
    if errors:dim() ~= 2 or errors:size(2) < 2 then
      error(format("glia.acm.gate_labels: errors must be {T, N+1} with N >= 1, got {%s}",
                   table.concat(errors:shape(), ",")), 2)
    end
    e = errors:totable()
  elseif type(errors) == "table" then
    e = errors
  else
    error("glia.acm.gate_labels: errors must be a tensor {T, N+1} or a list of rows, got " ..
          tostring(errors), 2)
  end
  local out, width = {}, type(e[1]) == "table" and #e[1]
  for t = 1, #e do
    local row = e[t]
    if type(row) ~= "table" or #row ~= width or width < 2 then
      error(format("glia.acm.gate_labels: errors must be rows of N+1 >= 2 numbers, all as long" ..
                   " as row 1 (%s), row %d is %s", tostring(width or "not a row"), t,
                   type(row) == "table" and #row .. " long" or tostring(row)), 2)
    end
    local N = width - 1
    local label = N
    for k = 1, N do
      if row[k] / row[k + 1] < tau_err then label = k break end
    end
    out[t] = label
  end
  return glia.tensor(out, "i64")
end

-- ============================================================== module

local ACM = Module:extend("ACM")
M.ACM = ACM

local ACTIVATIONS = { gelu = true, gelu_tanh = true, relu = true, identity = true }

-- self.activation and self.schedule, checked at construction and again
-- when either was reassigned (see ACM:_opts); level blames the caller.
local function check_op_opts(self, level)
  local a, s = self.activation, self.schedule
  if not ACTIVATIONS[a] then
    error("glia.nn.ACM: activation must be gelu, gelu_tanh, relu or identity, got " ..
          tostring(a), level)
  end
  if s ~= "bucket" and s ~= "tier" then
    error("glia.nn.ACM: schedule must be \"bucket\" or \"tier\", got " ..
          (type(s) == "string" and '"' .. s .. '"' or tostring(s)), level)
  end
end

function ACM:__init(d, hidden, learners, opts)
  opts = options.check("glia.nn.ACM", opts,
                       { "activation", "min_choice", "tau", "gate_hidden", "detach",
                         "schedule", "gate_task_grad" }, 2)
  self.d = check_int("ACM", "d", d, 1)
  self.learners = check_int("ACM", "learners", learners, 1)
  check_int("ACM", "hidden", hidden, 1)
  if hidden % learners ~= 0 then
    error(format("glia.nn.ACM: hidden %d does not divide into %d learners", hidden, learners), 2)
  end
  self.width = floor(hidden / learners)
  self.activation = opts.activation or "gelu"
  self.schedule = opts.schedule or "bucket"
  check_op_opts(self, 3)
  self.min_choice = opts.min_choice or 0
  if self.min_choice ~= 0 and self.min_choice ~= 1 then
    error("glia.nn.ACM: min_choice must be 0 or 1, got " .. tostring(self.min_choice), 2)
  end
  self:set_tau(opts.tau or 0.8)
  self.detach = opts.detach ~= false
  if opts.gate_task_grad ~= nil and type(opts.gate_task_grad) ~= "boolean" then
    error("glia.nn.ACM: gate_task_grad must be true or false, got " ..
          tostring(opts.gate_task_grad), 2)
  end
  self.gate_task_grad = opts.gate_task_grad or false
  local gh = check_int("ACM", "gate_hidden", opts.gate_hidden or 16, 1)
  self.w1 = Parameter(glia.empty(hidden, d))
  self.b1 = Parameter(glia.empty(hidden))
  self.w2 = Parameter(glia.empty(d, hidden))
  self.gate1 = lin.Linear(d, gh)
  self.gate2 = lin.Linear(gh, gh)
  self.gate3 = lin.Linear(gh, learners + 1 - self.min_choice)
  self:reset_parameters()
end

-- The learners as nn.Linear layers would be (Kaiming-uniform, a = sqrt 5);
-- the gate keeps its Linear defaults.
function ACM:reset_parameters()
  init.kaiming_uniform_(self.w1, { a = sqrt(5) })
  init.kaiming_uniform_(self.w2, { a = sqrt(5) })
  local bound = 1 / sqrt(self.d)
  init.uniform_(self.b1, -bound, bound)
end

function ACM:set_tau(tau)
  if type(tau) ~= "number" or not (tau > 0) then
    error("glia.nn.ACM: the gate temperature tau must be > 0, got " .. tostring(tau), 2)
  end
  self.tau = tau
end

-- FLOPs of one learner on one token, as glia.acm counts them.
function ACM:learner_flops()
  return 4 * self.d * self.width + 2 * self.width
end

-- glia.acm's options, made once (a table per call costs decoding time),
-- and made again, checked, when activation or schedule was reassigned
-- since: two comparisons per call.
function ACM:_opts()
  local o = rawget(self, "_acm_opts")
  if not o or o.schedule ~= self.schedule or o.activation ~= self.activation then
    check_op_opts(self, 4)
    o = { learners = self.learners, activation = self.activation, schedule = self.schedule }
    rawset(self, "_acm_opts", o)
  end
  return o
end

local function flat(self, x)
  if not glia.is_tensor(x) or x:dim() < 1 then
    error(format("glia.nn.ACM: expected an input tensor {..., %d}, got %s", self.d,
                 glia.is_tensor(x) and "a scalar" or tostring(x)), 3)
  end
  if x:size(-1) ~= self.d then
    error(format("glia.nn.ACM: expected input {..., %d}, got {%s}", self.d,
                 table.concat(x:shape(), ",")), 3)
  end
  return x:reshape(-1, self.d)
end

-- The gate's logits {T, N+1-m} for x {T, d}.
function ACM:gate_logits(x2)
  return self.gate3(self.gate2(self.gate1(x2)))
end

-- A count override (force_k, cap_k) checked once, the same in both modes:
-- an integer in min_choice..N (force_k may also be a fraction of N in
-- (0, 1), rounded). nil when unset.
local function count_override(self, key)
  local v = self[key]
  if v == nil then return nil end
  local N, m = self.learners, self.min_choice
  local c = v
  if key == "force_k" and type(v) == "number" and v > 0 and v < 1 then c = floor(v * N + 0.5) end
  if type(c) ~= "number" or c ~= floor(c) or c < m or c > N then
    error(format("glia.nn.ACM: %s must be an integer in %d..%d (min_choice..learners)%s, got %s",
                 key, m, N, key == "force_k" and " or a fraction of N in (0, 1)" or "",
                 tostring(v)), 4)
  end
  return floor(c)
end

-- The fused gate (glia.acm_gate) keeps its hidden rows on the stack: at
-- most this wide (GATE_MAX in ops/acm.c); wider gates take the module path.
local GATE_FUSED_MAX = 64

-- k (i64 {T}) and the one-hot g {T, N+1} (nil when forced) for x {T, d}.
function ACM:choose(x2)
  local T, m = x2:size(1), self.min_choice
  local fk, cap = count_override(self, "force_k"), count_override(self, "cap_k")
  if fk then return glia.full({ T }, fk, "i64"), nil end -- forcing overrides the cap
  if not self.training then -- eval: argmax, the fused gate in one call when it fits
    local g1, g2, g3 = self.gate1, self.gate2, self.gate3
    if g1.weight:size(1) <= GATE_FUSED_MAX then
      return glia.acm_gate(x2, g1.weight, g1.bias, g2.weight, g2.bias, g3.weight, g3.bias, m,
                           cap), nil
    end
    local k = glia.argmax(self:gate_logits(x2), -1):to("f32") + (m - 1)
    if cap then k = k:clamp(m, cap) end
    return k:to("i64"), nil
  end
  local g, idx = M.gumbel_hard(self:gate_logits(x2), self.tau)
  if m > 0 then g = glia.cat({ glia.zeros(T, m), g }, 2) end
  local k = idx:to("f32") + (m - 1) -- 1-based index -> count
  if cap then k = k:clamp(m, cap) end
  return k:to("i64"), g
end

function ACM:forward(x)
  local x2 = flat(self, x)
  local k, g = self:choose(x2)
  local y, flops = glia.acm(x2, self.w1, self.b1, self.w2, k, self:_opts())
  if g and self.gate_task_grad and glia.is_grad_enabled() then -- no gradient: nothing to route
    y = M.task_grad_mix(y, self:capped(g), self:prefixes(x2))
  end
  self.last = { g = g, k = k, flops = flops, T = x2:size(1) }
  return y:view(x:shape())
end

-- Every prefix o_0..o_N of x2 {T, d}, without gradient: {N+1, T, d}.
function ACM:prefixes(x2)
  return glia.no_grad(glia.acm_all, x2, self.w1, self.b1, self.w2,
                      { learners = self.learners, activation = self.activation })
end

-- g {T, N+1} with cap_k's clamp folded in: choice k > cap moves to slot
-- cap (what ran), so that it is paired with o_cap. g itself when uncapped.
function ACM:capped(g)
  local cap, N = count_override(self, "cap_k"), self.learners
  if not cap or cap == N then return g end
  local to = {}
  for k = 0, N do to[k + 1] = (k < cap and k or cap) + 1 end -- 1-based slots
  return g:matmul(glia.one_hot(glia.tensor(to, "i64"), N + 1))
end

-- Every prefix o_0..o_N of x {..., d}: {N+1, ..., d}.
function ACM:forward_all(x)
  local x2 = flat(self, x)
  local all = glia.acm_all(x2, self.w1, self.b1, self.w2,
                           { learners = self.learners, activation = self.activation,
                             detach = self.detach })
  local shape = x:shape()
  table.insert(shape, 1, self.learners + 1)
  return all:view(shape)
end

function ACM:extra_repr()
  return format("d=%d, learners=%d x %d, %s, min_choice=%d", self.d, self.learners, self.width,
                self.activation, self.min_choice)
end

-- ============================================================== losses

local function records(where, acms)
  if type(acms) ~= "table" or #acms == 0 then
    error(where .. ": expected a list of nn.ACM modules", 3)
  end
  for i, a in ipairs(acms) do
    if not (a.last and a.last.g) then
      error(format("%s: ACM %d has no gate choice to read (run a gated forward in training mode)",
                   where, i), 3)
    end
  end
end

-- B samples must split every ACM's T tokens evenly.
local function check_samples(where, acms, B)
  for i, a in ipairs(acms) do
    local T = a.last.g:size(1)
    if type(B) ~= "number" or B ~= floor(B) or B < 1 or T % B ~= 0 then
      error(format("%s: B = %s samples must be an integer >= 1 dividing ACM %d's %d tokens", where,
                   tostring(B), i, T), 3)
    end
  end
end

-- k as a row {1, N+1} = 0, 1, ..., N
local function counts_row(N) return glia.arange(0, N + 1):view(1, N + 1) end

-- L = |F - beta|, F = (sum_l mean_t c_l k_{t,l}) / (sum_l N c_l), through
-- the gates' straight-through gradient. Returns L and F (a number).
function M.budget_loss(acms, beta)
  if type(beta) ~= "number" or not (beta > 0 and beta <= 1) then
    error("glia.acm.budget_loss: the budget must be in (0, 1], got " .. tostring(beta), 2)
  end
  records("glia.acm.budget_loss", acms)
  local cost, cmax
  for _, a in ipairs(acms) do
    local c = a:learner_flops()
    local mean_k = (a.last.g * counts_row(a.learners)):sum(2):mean()
    cost = cost and cost + mean_k * c or mean_k * c
    cmax = (cmax or 0) + a.learners * c
  end
  local F = cost / cmax
  return (F - beta):abs(), F:item()
end

-- Per sample b (the T tokens are B samples of T/B) and ACM l, the
-- normalized entropy of the histogram of choices; L = -its mean.
function M.entropy_loss(acms, B)
  records("glia.acm.entropy_loss", acms)
  check_samples("glia.acm.entropy_loss", acms, B)
  local total
  for _, a in ipairs(acms) do
    local N = a.learners
    local hist = a.last.g:view(B, -1, N + 1):sum(2)           -- {B, N+1}
    local p = hist / hist:sum(2, true)
    local h = (p * (p + 1e-20):log()):sum(2):neg() / log(N + 1) -- {B}
    total = total and total + h:mean() or h:mean()
  end
  return total:neg() / #acms
end

-- u[b] = the mean over b's tokens, the ACMs and the N+1 slots of k g_k;
-- L = -2 mean_{b,b'} |u[b] - u[b']|.
function M.diversity_loss(acms, B)
  records("glia.acm.diversity_loss", acms)
  check_samples("glia.acm.diversity_loss", acms, B)
  local u
  for _, a in ipairs(acms) do
    local N = a.learners
    local kg = (a.last.g * counts_row(N)):view(B, -1, N + 1):mean({ 2, 3 }) -- {B}
    u = u and u + kg or kg
  end
  u = u / #acms
  return (u:view(B, 1) - u:view(1, B)):abs():mean():mul(-2)
end

return M
