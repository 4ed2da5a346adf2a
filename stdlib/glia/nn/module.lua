-- glia.nn.module -- the Module base class every layer derives from: child,
-- parameter and buffer registration, traversal in registration order, state
-- dicts, train/eval, apply, zero_grad, printing.
--
-- How a module records what it holds. An instance keeps three ordered lists
-- of field names: _children (modules), _params (trained tensors) and
-- _buffers (state that is saved but not trained, like BatchNorm's running
-- statistics). The values themselves live in plain fields, so `self.fc`
-- reads at table speed. Registration happens on the first assignment of a
-- field (the class's __newindex):
--   self.fc     = nn.Linear(4, 8)               -- a module: a child
--   self.weight = nn.Parameter(glia.empty(8, 4)) -- a marked tensor: a parameter
--   self.cache  = some_tensor                    -- any other value: a plain field
-- or explicitly: self:add_module(name, m), self:add_parameter(name, t),
-- self:add_buffer(name, t). Reassigning a registered field (tying weights:
-- `head.weight = emb.weight`) keeps its place in the order; traversals read
-- the field's current value and skip it when it no longer holds a
-- module/tensor. Names are strings without dots or positive integers
-- (ModuleList, Sequential); dotted paths join them: "blocks.1.attn.qkv.weight".
--
-- Invariant: the three lists are the only record of order; every traversal
-- (parameters, state_dict, load_state_dict, tostring) walks them the same way:
-- a module's own entries first, then its children, depth first.
--
-- Classes: `local Block = nn.Module:extend("Block")`, then define
-- `Block:__init(...)` and `Block:forward(...)`; `Block(...)` builds one.
-- A class written by hand (`setmetatable(C, {__index = Base})`, instances
-- made with `Module.init(setmetatable({}, C))`) works too: Module.init gives
-- the class the module metamethods it lacks.
local glia = require "glia"
local options = require "glia.options"

local setmetatable, getmetatable, rawget, rawset = setmetatable, getmetatable, rawget, rawset
local type, ipairs, pairs, tostring = type, ipairs, pairs, tostring
local error = glia.error -- blames the user's line, never the stdlib's
local format, rep, concat, sort = string.format, string.rep, table.concat, table.sort
local floor = math.floor
local is_tensor = glia.is_tensor

local Module = {}
Module.__index = Module
Module.__name = "Module"

-- ================================================================ helpers

-- Tensors made by Parameter, recognised when assigned to a module field.
local marked = setmetatable({}, { __mode = "k" })

local function is_module(v)
  return type(v) == "table" and rawget(v, "_children") ~= nil
end

local function shape_str(t)
  return "{" .. concat(t:shape(), ",") .. "}"
end

local function class_name(m)
  local mt = getmetatable(m)
  return mt and mt.__name or "Module"
end

-- 1234567 -> "1,234,567"
local function grouped(n)
  local s = tostring(floor(n))
  local head = #s % 3
  local parts = { head > 0 and s:sub(1, head) or nil }
  for i = head + 1, #s, 3 do parts[#parts + 1] = s:sub(i, i + 2) end
  return concat(parts, ",")
end

local function check_name(self, name, what)
  local ok = (type(name) == "string" and name ~= "" and not name:find(".", 1, true))
             or (type(name) == "number" and name >= 1 and name == floor(name))
  if not ok then
    error(format("glia.nn: %s: %s name must be a string without dots or a positive integer, got %s",
                 class_name(self), what, tostring(name)), 3)
  end
end

-- Appends name to list unless it is there already.
local function record(list, name)
  for _, k in ipairs(list) do
    if k == name then return end
  end
  list[#list + 1] = name
end

-- ============================================================ parameters

-- Marks t (an f32 tensor) as a parameter: it requires grad, and assigning
-- it to a module field registers it. Returns t.
local function Parameter(t)
  if not is_tensor(t) then
    error("glia.nn.Parameter: expected a tensor, got " .. type(t), 2)
  end
  if t:dtype() ~= "f32" then
    error(format("glia.nn.Parameter: parameters are f32, got %s %s", t:dtype(), shape_str(t)), 2)
  end
  t:requires_grad()
  marked[t] = true
  return t
end

-- ============================================================= classes

local METAMETHODS = { "__call", "__tostring", "__newindex" }

-- Gives a class the module metamethods it lacks (inherited ones first), so
-- its instances are callable, printable and register their fields.
local function complete(cls)
  if rawget(cls, "__index") == nil then rawset(cls, "__index", cls) end
  for _, k in ipairs(METAMETHODS) do
    if rawget(cls, k) == nil then rawset(cls, k, cls[k] or Module[k]) end
  end
end

-- Sets up self (whose metatable is its class) as an empty module in
-- training mode. Returns self.
function Module.init(self)
  complete(getmetatable(self))
  rawset(self, "_children", {})
  rawset(self, "_params", {})
  rawset(self, "_buffers", {})
  rawset(self, "training", true)
  return self
end

local function construct(cls, ...)
  local self = Module.init(setmetatable({}, cls))
  self:__init(...)
  return self
end

-- A new class deriving from base; Class(...) and Class.new(...) build an
-- instance and run Class:__init(...) on it. (new tail-calls construct, so
-- errors raised in __init blame the same caller level either way.)
function Module.extend(base, name)
  local cls = setmetatable({}, { __index = base, __call = construct })
  cls.__index = cls
  cls.__name = name or "Module"
  cls.new = function(...) return construct(cls, ...) end
  complete(cls)
  return cls
end

setmetatable(Module, { __call = construct })
Module.new = function(...) return construct(Module, ...) end

function Module:__init() end

function Module:forward()
  error(format("glia.nn: %s has no forward", class_name(self)), 2)
end

function Module:__call(...)
  return self:forward(...)
end

function Module:__newindex(k, v)
  if is_module(v) then
    self:add_module(k, v)
  elseif v ~= nil and marked[v] then
    self:add_parameter(k, v)
  else
    rawset(self, k, v)
  end
end

-- ========================================================= registration

function Module:add_module(name, m)
  check_name(self, name, "child")
  if not is_module(m) then
    error(format("glia.nn: %s: child '%s' must be a module, got %s", class_name(self),
                 tostring(name), type(m)), 2)
  end
  record(self._children, name)
  rawset(self, name, m)
  return m
end

function Module:add_parameter(name, t)
  check_name(self, name, "parameter")
  Parameter(t)
  record(self._params, name)
  rawset(self, name, t)
  return t
end

function Module:add_buffer(name, t)
  check_name(self, name, "buffer")
  if not is_tensor(t) then
    error(format("glia.nn: %s: buffer '%s' must be a tensor, got %s", class_name(self),
                 tostring(name), type(t)), 2)
  end
  record(self._buffers, name)
  rawset(self, name, t)
  return t
end

-- The style guide's spelling: self.weight = self:param(t).
function Module:param(t)
  return Parameter(t)
end

-- ============================================================ traversal

-- Direct children in order, as a list of {name, module}.
function Module:named_children()
  local out = {}
  for _, k in ipairs(self._children) do
    local m = rawget(self, k)
    if is_module(m) then out[#out + 1] = { k, m } end
  end
  return out
end

function Module:children()
  local out = {}
  for i, e in ipairs(self:named_children()) do out[i] = e[2] end
  return out
end

-- Every module of the tree, each once, depth first, self first, as a list
-- of {dotted name, module} (self's name is "").
function Module:named_modules()
  local out, seen = {}, {}
  local function walk(m, prefix)
    if seen[m] then return end
    seen[m] = true
    out[#out + 1] = { prefix, m }
    for _, e in ipairs(m:named_children()) do
      walk(e[2], prefix == "" and tostring(e[1]) or prefix .. "." .. tostring(e[1]))
    end
  end
  walk(self, "")
  return out
end

function Module:modules()
  local out = {}
  for i, e in ipairs(self:named_modules()) do out[i] = e[2] end
  return out
end

-- Appends {dotted name, tensor} for the tensors registered in the lists
-- named by kinds ("_params", "_buffers") over the whole tree. With seen,
-- a tensor reachable twice (tied weights) is listed under its first name.
local function collect(m, prefix, kinds, out, seen)
  for _, kind in ipairs(kinds) do
    for _, k in ipairs(m[kind]) do
      local t = rawget(m, k)
      if is_tensor(t) and not (seen and seen[t]) then
        if seen then seen[t] = true end
        out[#out + 1] = { prefix .. tostring(k), t }
      end
    end
  end
  for _, e in ipairs(m:named_children()) do
    collect(e[2], prefix .. tostring(e[1]) .. ".", kinds, out, seen)
  end
  return out
end

local PARAMS, BUFFERS, STATE = { "_params" }, { "_buffers" }, { "_params", "_buffers" }

local function values(list)
  local out = {}
  for i, e in ipairs(list) do out[i] = e[2] end
  return out
end

-- Parameters in registration order, each tensor once, as {name, tensor}.
function Module:named_parameters()
  return collect(self, "", PARAMS, {}, {})
end

function Module:parameters()
  return values(self:named_parameters())
end

function Module:named_buffers()
  return collect(self, "", BUFFERS, {}, {})
end

function Module:buffers()
  return values(self:named_buffers())
end

-- The number of trained values (elements of distinct parameters).
function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p:numel() end
  return n
end

-- ================================================================ state

-- name -> tensor for every parameter and buffer (tied tensors under each of
-- their names), detached views sharing the module's storage: ready for
-- glia.save.
function Module:state_dict()
  local sd = {}
  for _, e in ipairs(collect(self, "", STATE, {})) do sd[e[1]] = e[2]:detach() end
  return sd
end

local function same_shape(a, b)
  if a:dim() ~= b:dim() then return false end
  for d = 1, a:dim() do
    if a:size(d) ~= b:size(d) then return false end
  end
  return true
end

-- Copies each {dst, src} pair. A named function given the list, not a
-- closure over it: LuaJIT may specialise a trace to one of the first
-- closures a function makes, and the trace then keeps that closure (and
-- every tensor it captured) alive until it is flushed.
local function copy_pairs(pairs_to_copy)
  for _, p in ipairs(pairs_to_copy) do p[1]:copy_(p[2]) end
end

-- Copies sd's tensors into the module's parameters and buffers (converting
-- dtypes). Every shape mismatch is an error; with strict (the default)
-- missing and unexpected keys are too. One error names all offenders, and
-- nothing is copied unless all checks pass. Returns the lists of missing
-- and unexpected keys (non-empty only when not strict).
function Module:load_state_dict(sd, opts)
  if type(sd) ~= "table" then
    error("glia.nn.load_state_dict: expected a table of tensors, got " .. type(sd), 2)
  end
  local strict = options.check("glia.nn.load_state_dict", opts, { "strict" }).strict ~= false
  local own, known = collect(self, "", STATE, {}), {}
  local missing, unexpected, mismatched, pairs_to_copy = {}, {}, {}, {}
  for _, e in ipairs(own) do
    local name, t = e[1], e[2]
    local src = sd[name]
    known[name] = true
    if src == nil then
      missing[#missing + 1] = name
    elseif not is_tensor(src) then
      mismatched[#mismatched + 1] = format("%s (checkpoint holds a %s, model %s)", name,
                                           type(src), shape_str(t))
    elseif not same_shape(src, t) then
      mismatched[#mismatched + 1] = format("%s (checkpoint %s, model %s)", name, shape_str(src),
                                           shape_str(t))
    else
      pairs_to_copy[#pairs_to_copy + 1] = { t, src }
    end
  end
  for k in pairs(sd) do
    if not known[k] then unexpected[#unexpected + 1] = tostring(k) end
  end
  sort(unexpected)
  local problems = {}
  if strict and #missing > 0 then problems[#problems + 1] = "missing keys: " .. concat(missing, ", ") end
  if strict and #unexpected > 0 then
    problems[#problems + 1] = "unexpected keys: " .. concat(unexpected, ", ")
  end
  if #mismatched > 0 then problems[#problems + 1] = "shape mismatch: " .. concat(mismatched, ", ") end
  if #problems > 0 then
    error(format("glia.nn.load_state_dict: %s: %s", class_name(self), concat(problems, "; ")), 2)
  end
  glia.no_grad(copy_pairs, pairs_to_copy)
  return missing, unexpected
end

-- ============================================================ modes, apply

-- Calls fn(m) for every module of the tree, children before their parent
-- (as PyTorch does), each module once. Returns self.
function Module:apply(fn)
  local mods = self:modules()
  for i = #mods, 1, -1 do fn(mods[i]) end
  return self
end

function Module:train(mode)
  local on = mode == nil or mode and true or false
  return self:apply(function(m) rawset(m, "training", on) end)
end

function Module:eval()
  return self:train(false)
end

function Module:zero_grad()
  for _, p in ipairs(self:parameters()) do p:zero_grad() end
end

-- ============================================================== printing

-- What a class prints between parentheses after its name ("" for nothing).
function Module:extra_repr()
  return ""
end

local function render(m, name, depth, lines)
  local head = rep("  ", depth) .. (name and "(" .. tostring(name) .. ") " or "") .. class_name(m)
  local extra = m:extra_repr()
  if extra ~= "" then head = head .. "(" .. extra .. ")" end
  local n = m:num_parameters()
  if n > 0 then head = head .. ": " .. grouped(n) .. (n == 1 and " parameter" or " parameters") end
  lines[#lines + 1] = head
  for _, e in ipairs(m:named_children()) do render(e[2], e[1], depth + 1, lines) end
  return lines
end

-- The tree, one module a line, indented by depth, with parameter counts.
function Module:__tostring()
  return concat(render(self, nil, 0, {}), "\n")
end

-- ================================================================ exports

Module.Parameter = Parameter
Module.is_module = is_module
Module.class_name = class_name

-- For constructors (Class:__init): raises unless v is an integer >= lo,
-- blaming the code that called Class(...) or Class.new(...).
function Module.check_int(cls, what, v, lo)
  if type(v) ~= "number" or v ~= floor(v) or v < lo then
    error(format("glia.nn.%s: %s must be an integer >= %d, got %s", cls, what, lo, tostring(v)), 4)
  end
  return v
end

return Module
