-- glia.nn.activation -- the parameter-free layers applied element by
-- element: Identity, ReLU, GELU, SiLU, Dropout.
local Module = require "glia.nn.module"
local F      = require "glia.nn.functional"
local options = require "glia.options"

local type, format, tostring = type, string.format, tostring
local error = require("glia.core").error -- blames the user's line, never the stdlib's

local M = {}

local function simple(name, fn)
  local cls = Module:extend(name)
  cls.forward = function(_, x) return fn(x) end
  M[name] = cls
  return cls
end

simple("Identity", function(x) return x end)
simple("ReLU", F.relu)
simple("SiLU", F.silu)

-- ================================================================== GELU

-- GELU([approximate]) or GELU{approximate = ...}: "none" (the default, as
-- PyTorch's: exact, with erf) or "tanh" (GPT-2's approximation).
local GELU = Module:extend("GELU")
M.GELU = GELU

function GELU:__init(approximate)
  if type(approximate) == "table" then
    approximate = options.check("glia.nn.GELU", approximate, { "approximate" }, 2).approximate
  end
  approximate = approximate or "none"
  if approximate ~= "tanh" and approximate ~= "none" then
    error(format("glia.nn.GELU: approximate must be \"tanh\" or \"none\", got %s",
                 tostring(approximate)), 3)
  end
  self.approximate = approximate
end

function GELU:forward(x)
  return F.gelu(x, self.approximate)
end

function GELU:extra_repr()
  return "approximate=" .. self.approximate
end

-- =============================================================== Dropout

-- Dropout([p = 0.5]): zeroes with probability p and scales by 1/(1-p) in
-- training mode; the identity in eval mode.
local Dropout = Module:extend("Dropout")
M.Dropout = Dropout

function Dropout:__init(p)
  p = p or 0.5
  if type(p) ~= "number" or not (p >= 0 and p <= 1) then
    error("glia.nn.Dropout: p must be a number in [0, 1], got " .. tostring(p), 3)
  end
  self.p = p
end

function Dropout:forward(x)
  if self.p == 0 or not self.training then return x end -- the op would return x too
  return F.dropout(x, self.p, self.training)
end

function Dropout:extra_repr()
  return "p=" .. tostring(self.p)
end

return M
