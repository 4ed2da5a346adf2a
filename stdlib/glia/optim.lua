-- glia.optim -- optimizers, gradient clipping and learning-rate schedules.
--
--   local optim = require "glia.optim"
--   local opt = optim.AdamW(model:parameters(), { lr = 1e-3, weight_decay = 0.1 })
--   opt:zero_grad(); loss:backward()
--   optim.clip_grad_norm(model:parameters(), 1.0)   -- the norm before clipping
--   opt:set_lr(sched(step)); opt:step()
--
-- Optimizers: SGD {lr, momentum, dampening, nesterov, weight_decay}, Adam
-- {lr, betas = {b1, b2}, eps, weight_decay} (L2 decay added to the
-- gradient), AdamW (the same options, decay decoupled from the gradient,
-- default 0.01), LAMB (AdamW's direction scaled per tensor by the trust
-- ratio ||p|| / ||update||). `params` is a list of tensors, or a list of
-- groups {params = {...}, <option> = value, ...} whose options override the
-- optimizer's. Each parameter's update is one fused C kernel (ops/optim.c)
-- run under no_grad; parameters must be contiguous f32 tensors.
--
-- State (moment tensors, momentum buffers, per-parameter step counts) lives
-- in opt.state[group][index]. opt:state_dict() returns it as tensors named
-- "opt.<group>.<index>.<name>" and metadata strings (the optimizer, step
-- counts, every group's hyper-parameters printed exactly) that glia.save
-- writes as they are; load_state_dict restores all of it, so a resumed run
-- continues bit-identically.
local glia = require "glia"
local options = require "glia.options"

local type, ipairs, pairs, tostring, tonumber, setmetatable =
  type, ipairs, pairs, tostring, tonumber, setmetatable
local error = glia.error -- blames the user's line, never the stdlib's
local fmt, floor, cos, pi, sqrt, huge = string.format, math.floor, math.cos, math.pi, math.sqrt,
  math.huge
local concat, sort = table.concat, table.sort
local is_tensor, no_grad, zeros_like = glia.is_tensor, glia.no_grad, glia.zeros_like
local sgd_step_, adam_step_, lamb_step_ = glia.sgd_step_, glia.adam_step_, glia.lamb_step_
local sum_sq, scale_ = glia.sum_sq, glia.scale_

local optim = {}

-- ===================================================== option checking

-- Kinds of hyper-parameter: how each is checked, printed to metadata and
-- read back. Numbers print with 17 digits, which read back exactly.
local function finite(x) return type(x) == "number" and x == x and x > -huge and x < huge end

local kinds = {
  nonneg = {
    check = function(x) return finite(x) and x >= 0, "a number >= 0" end,
    encode = function(x) return fmt("%.17g", x) end,
    decode = tonumber,
  },
  unit = { -- dampening
    check = function(x) return finite(x) and x >= 0 and x <= 1, "a number in [0, 1]" end,
    encode = function(x) return fmt("%.17g", x) end,
    decode = tonumber,
  },
  bool = {
    check = function(x) return type(x) == "boolean", "a boolean" end,
    encode = tostring,
    decode = function(s) if s == "true" then return true elseif s == "false" then return false end end,
  },
  betas = {
    check = function(b)
      local good = type(b) == "table" and #b == 2
      for i = 1, 2 do good = good and finite(b[i]) and b[i] >= 0 and b[i] < 1 end
      return good, "a table {beta1, beta2} of numbers in [0, 1)"
    end,
    encode = function(b) return fmt("%.17g,%.17g", b[1], b[2]) end,
    decode = function(s)
      local b1, b2 = s:match("^([^,]+),([^,]+)$")
      return b1 and { tonumber(b1), tonumber(b2) } or nil
    end,
  },
}

local function show(x)
  if type(x) == "table" then
    local parts = {}
    for i, v in ipairs(x) do parts[i] = tostring(v) end
    return "{" .. concat(parts, ", ") .. "}"
  end
  return type(x) == "string" and fmt("%q", x) or tostring(x)
end

-- Checks one option value; `where` prefixes the message ("group 2: ");
-- level is the caller's level for error (counted from check_option).
local function check_option(cls, where, name, kind, x, level)
  local good, want = kinds[kind].check(x)
  if not good then
    error(fmt("glia.optim.%s: %s%s must be %s, got %s", cls.name, where, name, want, show(x)), level)
  end
end

-- The hyper-parameters of one group: the group's own values over the
-- defaults, each checked. A group table (where ~= "") may hold `params`
-- besides options; the optimizer's options table may not.
local function group_options(cls, where, given, defaults)
  options.check(fmt("glia.optim.%s%s", cls.name, where == "" and "" or ": " .. where:sub(1, -3)),
                given, where == "" and cls.option_names or cls.group_keys, 3)
  local group = {}
  for _, opt in ipairs(cls.options) do
    local name, x = opt[1], given[opt[1]]
    if x == nil then x = defaults[name] end
    check_option(cls, where, name, opt[2], x, 5)
    group[name] = type(x) == "table" and { x[1], x[2] } or x
  end
  if cls.check_group then cls.check_group(cls, where, group) end
  return group
end

-- ========================================================= optimizer

local Optimizer = {}
Optimizer.__index = Optimizer

-- The parameters of one group, checked: live contiguous f32 tensors, none
-- seen before (a parameter may belong to one group only).
local function group_params(cls, gi, list, seen)
  if type(list) ~= "table" or #list == 0 then
    error(fmt("glia.optim.%s: group %d needs a non-empty list of parameters", cls.name, gi), 4)
  end
  local params = {}
  for i, p in ipairs(list) do
    if not is_tensor(p) then
      error(fmt("glia.optim.%s: parameter %d of group %d is not a tensor (%s)", cls.name, i, gi,
                type(p)), 4)
    end
    if p:dtype() ~= "f32" or not p:is_contiguous() then
      error(fmt("glia.optim.%s: parameter %d of group %d must be a contiguous f32 tensor, got %s%s {%s}",
                cls.name, i, gi, p:is_contiguous() and "" or "non-contiguous ", p:dtype(),
                concat(p:shape(), ",")), 4)
    end
    if seen[p] then
      error(fmt("glia.optim.%s: parameter %d of group %d appears twice", cls.name, i, gi), 4)
    end
    seen[p] = true
    params[i] = p
  end
  return params
end

local function new_optimizer(cls, params, opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(fmt("glia.optim.%s: options must be a table, got %s", cls.name, type(opts)), 3)
  end
  if is_tensor(params) then params = { params } end
  if type(params) ~= "table" or params[1] == nil then
    error(fmt("glia.optim.%s: expected a non-empty list of parameters or of groups", cls.name), 3)
  end
  local defaults = group_options(cls, "", opts, cls.defaults)
  local self = setmetatable({ param_groups = {}, state = {} }, cls)
  local groups = is_tensor(params[1]) and { { params = params } } or params
  local seen = {}
  for gi, g in ipairs(groups) do
    if type(g) ~= "table" or is_tensor(g) then
      error(fmt("glia.optim.%s: group %d must be a table {params = {...}, ...}", cls.name, gi), 3)
    end
    local group = group_options(cls, fmt("group %d: ", gi), g, defaults)
    group.params = group_params(cls, gi, g.params, seen)
    self.param_groups[gi] = group
    local state = {}
    for i = 1, #group.params do state[i] = { step = 0 } end
    self.state[gi] = state
  end
  return self
end

-- Defines an optimizer class: opt_list is an ordered list of {name, kind},
-- defaults their values, update(p, grad, state, group) the step of one
-- parameter, state_names the tensors its state may hold.
local function class(name, opt_list, defaults, state_names, update, check_group)
  local cls = setmetatable({ name = name, options = opt_list, defaults = defaults,
                             state_names = state_names, update = update,
                             check_group = check_group, kind_of = {} },
                           { __index = Optimizer,
                             __call = function(c, params, opts) return new_optimizer(c, params, opts) end })
  cls.__index = cls
  cls.option_names, cls.group_keys = {}, { "params" }
  for _, opt in ipairs(opt_list) do
    cls.kind_of[opt[1]] = opt[2]
    cls.option_names[#cls.option_names + 1] = opt[1]
    cls.group_keys[#cls.group_keys + 1] = opt[1]
  end
  return cls
end

-- Drops every gradient (the cheapest zeroing: backward allocates afresh).
function Optimizer:zero_grad()
  for _, group in ipairs(self.param_groups) do
    for _, p in ipairs(group.params) do p:zero_grad() end
  end
end

local function step_all(self)
  for gi, group in ipairs(self.param_groups) do
    local state = self.state[gi]
    for i, p in ipairs(group.params) do
      local g = p.grad
      if g then
        local st = state[i]
        st.step = st.step + 1
        self.update(p, g, st, group)
      end
    end
  end
end

-- Updates every parameter that has a gradient (the others keep their value
-- and their step count).
function Optimizer:step()
  no_grad(step_all, self)
end

-- Sets the learning rate of every group, or of group `gi` only.
function Optimizer:set_lr(lr, gi)
  check_option(self, gi and fmt("group %d: ", gi) or "", "lr", "nonneg", lr, 3)
  if gi then
    local group = self.param_groups[gi]
    if not group then error(fmt("glia.optim.%s: no group %s", self.name, tostring(gi)), 2) end
    group.lr = lr
  else
    for _, group in ipairs(self.param_groups) do group.lr = lr end
  end
end

-- The learning rate of group gi (default 1).
function Optimizer:get_lr(gi)
  local group = self.param_groups[gi or 1]
  if not group then error(fmt("glia.optim.%s: no group %s", self.name, tostring(gi)), 2) end
  return group.lr
end

-- ============================================================ state

-- Returns tensors, meta for glia.save: tensors "<prefix>.<g>.<i>.<name>"
-- are the live state tensors (not copies); meta holds "<prefix>.type",
-- "<prefix>.groups", "<prefix>.<g>.params", "<prefix>.<g>.<option>" and
-- "<prefix>.<g>.<i>.step" as strings. prefix defaults to "opt".
function Optimizer:state_dict(prefix)
  prefix = (prefix or "opt") .. "."
  local tensors, meta = {}, {}
  meta[prefix .. "type"] = self.name
  meta[prefix .. "groups"] = tostring(#self.param_groups)
  for gi, group in ipairs(self.param_groups) do
    local gp = prefix .. gi .. "."
    meta[gp .. "params"] = tostring(#group.params)
    for _, opt in ipairs(self.options) do
      meta[gp .. opt[1]] = kinds[opt[2]].encode(group[opt[1]])
    end
    for i, st in ipairs(self.state[gi]) do
      meta[gp .. i .. ".step"] = fmt("%d", st.step)
      for _, name in ipairs(self.state_names) do
        if st[name] then tensors[gp .. i .. "." .. name] = st[name] end
      end
    end
  end
  return tensors, meta
end

-- Copies the checked state in: the moments into fresh tensors of each
-- parameter's dtype and layout. A named function taking its arguments, not
-- a closure over them: LuaJIT may specialise a trace to one of the first
-- closures a function makes, and the trace then keeps that closure (so the
-- optimizer and every tensor it captured) alive until it is flushed.
local function apply_state(self, new_groups, new_state)
  for gi, group in ipairs(self.param_groups) do
    for k, x in pairs(new_groups[gi]) do group[k] = x end
    for i, p in ipairs(group.params) do
      local st = new_state[gi][i]
      for _, name in ipairs(self.state_names) do
        if st[name] then st[name] = zeros_like(p):copy_(st[name]) end
      end
    end
  end
end

-- Restores what state_dict returned (keys outside the prefix are ignored,
-- so one checkpoint can hold the model too). Tensors are copied in. Fails,
-- naming each missing, unexpected or mismatched key, before changing
-- anything.
function Optimizer:load_state_dict(tensors, meta, prefix)
  prefix = (prefix or "opt") .. "."
  if type(tensors) ~= "table" or type(meta) ~= "table" then
    error(fmt("glia.optim.%s: load_state_dict expects the tensors and metadata tables", self.name), 2)
  end
  local problems, used = {}, {}
  local function problem(...) problems[#problems + 1] = fmt(...) end
  local function read(key)
    used[key] = true
    local s = meta[key]
    if s == nil then problem("missing metadata '%s'", key) end
    return s
  end
  local kind = read(prefix .. "type")
  if kind and kind ~= self.name then problem("'%stype' is %s, not %s", prefix, kind, self.name) end
  local ngroups = read(prefix .. "groups")
  if ngroups and tonumber(ngroups) ~= #self.param_groups then
    problem("'%sgroups' is %s, but the optimizer has %d groups", prefix, ngroups, #self.param_groups)
  end
  local new_groups, new_state = {}, {}
  for gi, group in ipairs(self.param_groups) do
    local gp = prefix .. gi .. "."
    local n = read(gp .. "params")
    if n and tonumber(n) ~= #group.params then
      problem("'%sparams' is %s, but group %d has %d parameters", gp, n, gi, #group.params)
    end
    local hyper = {}
    for _, opt in ipairs(self.options) do
      local s = read(gp .. opt[1])
      local x = s and kinds[opt[2]].decode(s)
      if s and (x == nil or not kinds[opt[2]].check(x)) then
        problem("metadata '%s%s' holds a bad value %q", gp, opt[1], s)
      end
      hyper[opt[1]] = x
    end
    new_groups[gi] = hyper
    local state = {}
    for i, p in ipairs(group.params) do
      local ip = gp .. i .. "."
      local s = read(ip .. "step")
      local step = s and tonumber(s)
      if s and not (step and step >= 0 and step == floor(step)) then
        problem("metadata '%sstep' holds a bad value %q", ip, s)
      end
      local st = { step = step or 0 }
      for _, name in ipairs(self.state_names) do
        local key = ip .. name
        local t = tensors[key]
        used[key] = true
        if t ~= nil then
          if not is_tensor(t) then
            problem("'%s' is not a tensor", key)
          elseif concat(t:shape(), ",") ~= concat(p:shape(), ",") then
            problem("'%s' has shape {%s}, but the parameter has {%s}", key, concat(t:shape(), ","),
                    concat(p:shape(), ","))
          else
            st[name] = t
          end
        end
      end
      state[i] = st
    end
    new_state[gi] = state
  end
  local unexpected = {}
  for _, tbl in ipairs({ tensors, meta }) do
    for key in pairs(tbl) do
      if type(key) == "string" and key:sub(1, #prefix) == prefix and not used[key] then
        unexpected[#unexpected + 1] = key
      end
    end
  end
  sort(unexpected)
  for _, key in ipairs(unexpected) do problem("unexpected key '%s'", key) end
  if #problems > 0 then
    error(fmt("glia.optim.%s: load_state_dict: %s", self.name, concat(problems, "; ")), 2)
  end
  no_grad(apply_state, self, new_groups, new_state)
  self.state = new_state
end

-- ======================================================= optimizers

local function sgd_check(cls, where, g)
  if g.nesterov and (g.momentum <= 0 or g.dampening ~= 0) then
    error(fmt("glia.optim.%s: %snesterov needs momentum > 0 and dampening 0", cls.name, where), 5)
  end
end

optim.SGD = class("SGD",
  { { "lr", "nonneg" }, { "momentum", "nonneg" }, { "dampening", "unit" },
    { "nesterov", "bool" }, { "weight_decay", "nonneg" } },
  { lr = 1e-3, momentum = 0, dampening = 0, nesterov = false, weight_decay = 0 },
  { "momentum_buffer" },
  function(p, g, st, group)
    local buf, step = nil, st.step
    if group.momentum > 0 then
      buf = st.momentum_buffer
      if not buf then -- a new buffer starts as the first direction
        buf, step = zeros_like(p), 1
        st.momentum_buffer = buf
      end
    end
    sgd_step_(p, g, buf, step, group.lr, group.momentum, group.dampening, group.nesterov,
              group.weight_decay)
  end,
  sgd_check)

local adam_options = { { "lr", "nonneg" }, { "betas", "betas" }, { "eps", "nonneg" },
                       { "weight_decay", "nonneg" } }
local moment_names = { "exp_avg", "exp_avg_sq" }

local function moments_of(p, st)
  if not st.exp_avg then
    st.exp_avg, st.exp_avg_sq = zeros_like(p), zeros_like(p)
  end
  return st.exp_avg, st.exp_avg_sq
end

local function adam_update(decoupled)
  return function(p, g, st, group)
    local m, v = moments_of(p, st)
    adam_step_(p, g, m, v, st.step, group.lr, group.betas[1], group.betas[2], group.eps,
               group.weight_decay, decoupled)
  end
end

optim.Adam = class("Adam", adam_options,
  { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0 },
  moment_names, adam_update(false))

optim.AdamW = class("AdamW", adam_options,
  { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0.01 },
  moment_names, adam_update(true))

-- st.trust_ratio keeps the last ratio applied (for logging; not saved).
optim.LAMB = class("LAMB", adam_options,
  { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-6, weight_decay = 0 },
  moment_names,
  function(p, g, st, group)
    local m, v = moments_of(p, st)
    st.trust_ratio = lamb_step_(p, g, m, v, st.step, group.lr, group.betas[1], group.betas[2],
                                group.eps, group.weight_decay)
  end)

-- ========================================================= clipping

-- Scales the gradients of params (a tensor, a list of tensors, or an
-- optimizer: all its groups) so that their global L2 norm is at most
-- max_norm, and returns the norm before clipping. Gradients are scaled by
-- max_norm / (norm + 1e-6) when that is below 1; a norm that is not finite
-- leaves them as they are (the caller may skip the step).
function optim.clip_grad_norm(params, max_norm)
  if not finite(max_norm) or max_norm <= 0 then
    error("glia.optim.clip_grad_norm: max_norm must be a number > 0, got " .. show(max_norm), 2)
  end
  local lists
  if is_tensor(params) then
    lists = { { params } }
  elseif type(params) == "table" and params.param_groups then
    lists = {}
    for i, group in ipairs(params.param_groups) do lists[i] = group.params end
  elseif type(params) == "table" then
    lists = { params }
  else
    error("glia.optim.clip_grad_norm: expected a list of tensors, got " .. type(params), 2)
  end
  local grads, seen = {}, {}
  for _, list in ipairs(lists) do
    for i, p in ipairs(list) do
      if not is_tensor(p) then
        error(fmt("glia.optim.clip_grad_norm: element %d is not a tensor (%s)", i, type(p)), 2)
      end
      local g = not seen[p] and p.grad
      seen[p] = true
      if g then grads[#grads + 1] = g end
    end
  end
  local norm = sqrt(sum_sq(grads))
  local coef = max_norm / (norm + 1e-6)
  if coef < 1 then scale_(grads, coef) end
  return norm
end

-- ======================================================== schedules

-- Each schedule returns a function(step) -> lr, where step counts optimizer
-- steps from 1: opt:set_lr(sched(step)) before opt:step().
local schedule = {}
optim.schedule = schedule

local function check_number(what, name, x, positive)
  if not finite(x) or x < 0 or (positive and x == 0) then
    error(fmt("glia.optim.schedule.%s: %s must be a number %s 0, got %s", what, name,
              positive and ">" or ">=", show(x)), 3)
  end
end

function schedule.constant(lr)
  check_number("constant", "lr", lr)
  return function() return lr end
end

-- lr * gamma^floor((step - 1) / step_size): steps 1..step_size use lr.
function schedule.step(lr, step_size, gamma)
  check_number("step", "lr", lr)
  check_number("step", "step_size", step_size, true)
  check_number("step", "gamma", gamma)
  return function(step) return lr * gamma ^ floor((step - 1) / step_size) end
end

-- {lr, total, warmup = 0, min_lr = 0}: lr * step / warmup up to warmup,
-- then a half cosine from lr down to min_lr at step total, min_lr after.
function schedule.cosine(o)
  if type(o) ~= "table" then
    error("glia.optim.schedule.cosine: expected a table {lr =, total =, warmup =, min_lr =}", 2)
  end
  options.check("glia.optim.schedule.cosine", o, { "lr", "total", "warmup", "min_lr" })
  local lr, total, warmup, min_lr = o.lr, o.total, o.warmup or 0, o.min_lr or 0
  check_number("cosine", "lr", lr)
  check_number("cosine", "total", total, true)
  check_number("cosine", "warmup", warmup)
  check_number("cosine", "min_lr", min_lr)
  if warmup >= total then
    error(fmt("glia.optim.schedule.cosine: warmup (%s) must be below total (%s)", show(warmup),
              show(total)), 2)
  end
  return function(step)
    if step < warmup then return lr * step / warmup end
    if step >= total then return min_lr end
    local progress = (step - warmup) / (total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * progress))
  end
end

return optim
