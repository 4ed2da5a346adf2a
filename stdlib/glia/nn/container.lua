-- glia.nn.container -- modules made of other modules: Sequential (a chain),
-- ModuleList (an indexed list, children named 1, 2, ...), ModuleDict (a
-- keyed set, in insertion order) and Residual (x + inner(x)).
--
-- Sequential and ModuleList keep their children in the instance's array
-- part: seq[2], #list and ipairs(list) work as on a plain list.
local Module = require "glia.nn.module"

local type, ipairs, pairs, tostring, select, sort =
  type, ipairs, pairs, tostring, select, table.sort
local error = require("glia.core").error -- blames the user's line, never the stdlib's
local is_module, class_name = Module.is_module, Module.class_name

local M = {}

-- The modules given as varargs or as one plain list.
local function module_args(name, ...)
  local list = { ... }
  if select("#", ...) == 1 and type(list[1]) == "table" and not is_module(list[1]) then
    list = list[1]
  end
  for i, m in ipairs(list) do
    if not is_module(m) then
      error(("glia.nn.%s: item %d is a %s, not a module"):format(name, i, type(m)), 4)
    end
  end
  return list
end

-- ============================================================ ModuleList

-- ModuleList([m1, m2, ...] or {m1, m2, ...})
local ModuleList = Module:extend("ModuleList")
M.ModuleList = ModuleList

function ModuleList:__init(...)
  for _, m in ipairs(module_args(class_name(self), ...)) do self:append(m) end
end

-- Adds m as child #self + 1; returns self.
function ModuleList:append(m)
  self:add_module(#self + 1, m)
  return self
end

-- ============================================================ Sequential

-- Sequential(m1, m2, ...) or Sequential{m1, m2, ...}: forward(x) feeds x
-- through each child in turn.
local Sequential = ModuleList:extend("Sequential")
M.Sequential = Sequential

function Sequential:forward(x)
  for _, m in ipairs(self) do x = m(x) end
  return x
end

-- ============================================================ ModuleDict

-- ModuleDict(t): t is either a list of {name, module} pairs (kept in that
-- order) or a table name -> module (registered in sorted name order, since
-- Lua tables have none). Children are fields: d.encoder, d["encoder"].
local ModuleDict = Module:extend("ModuleDict")
M.ModuleDict = ModuleDict

function ModuleDict:__init(t)
  t = t or {}
  if type(t) ~= "table" or is_module(t) then
    error("glia.nn.ModuleDict: expected a table of modules, got " .. type(t), 3)
  end
  if #t > 0 then
    for _, e in ipairs(t) do self:add_module(e[1], e[2]) end
  else
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do self:add_module(k, t[k]) end
  end
end

-- ============================================================== Residual

-- Residual(inner): forward(x) = x + inner(x).
local Residual = Module:extend("Residual")
M.Residual = Residual

function Residual:__init(inner)
  self:add_module("inner", inner)
end

function Residual:forward(x)
  return x + self.inner(x)
end

return M
