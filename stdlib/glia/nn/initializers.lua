-- glia.nn.initializers -- nn.init: fill a parameter in place from the
-- context's seeded RNG (glia.rand / glia.randn, so glia.manual_seed makes
-- every initialization reproducible), with PyTorch's formulas for the
-- fan-based schemes. Each function writes under glia.no_grad, leaves a
-- zero-element tensor alone, and returns the tensor.
--
-- Fans of a tensor {out, in, k1, k2, ...}: fan_in = in * k1 * k2 ...,
-- fan_out = out * k1 * k2 ... (a Linear weight {out, in} has fan_in = in).
local glia = require "glia"
local options = require "glia.options"

local sqrt, type, format, tostring, concat = math.sqrt, type, string.format, tostring, table.concat
local error = glia.error -- blames the user's line, never the stdlib's
local no_grad = glia.no_grad

local init = {}

-- ============================================================== helpers

local function fill_from(t, src)
  no_grad(function() t:copy_(src) end)
  return t
end

-- Raises unless t has the 2+ dims fans are defined for, blaming the
-- caller of the function level levels up.
local function check_fan_dims(t, level)
  if t:dim() < 2 then
    error(format("glia.nn.init: fan in and fan out need at least 2 dims, got {%s}",
                 concat(t:shape(), ",")), level + 1)
  end
end

-- fan_in, fan_out of t; errors for fewer than 2 dims.
function init.fans(t)
  check_fan_dims(t, 2)
  local field = 1
  for d = 3, t:dim() do field = field * t:size(d) end
  return t:size(2) * field, t:size(1) * field
end

-- The recommended gain for a nonlinearity (PyTorch's calculate_gain):
-- param is leaky_relu's negative slope (default 0.01).
function init.calculate_gain(nonlinearity, param)
  if nonlinearity == "linear" or nonlinearity == "sigmoid" or nonlinearity == "identity" then
    return 1
  elseif nonlinearity == "tanh" then
    return 5 / 3
  elseif nonlinearity == "relu" then
    return sqrt(2)
  elseif nonlinearity == "leaky_relu" then
    local slope = param or 0.01
    return sqrt(2 / (1 + slope * slope))
  elseif nonlinearity == "selu" then
    return 3 / 4
  end
  error("glia.nn.init: unsupported nonlinearity " .. tostring(nonlinearity), 2)
end

-- ============================================================ primitives

-- N(mean, std^2)
function init.normal_(t, mean, std)
  if t:numel() == 0 then return t end
  return fill_from(t, glia.randn(t:shape()):mul(std or 1):add(mean or 0))
end

-- U(a, b)
function init.uniform_(t, a, b)
  if t:numel() == 0 then return t end
  a, b = a or 0, b or 1
  return fill_from(t, glia.rand(t:shape()):mul(b - a):add(a))
end

function init.constant_(t, v)
  no_grad(function() t:fill_(v) end)
  return t
end

function init.zeros_(t) return init.constant_(t, 0) end
function init.ones_(t) return init.constant_(t, 1) end

-- ========================================================== fan-based

-- Glorot & Bengio: std = gain * sqrt(2 / (fan_in + fan_out)).
local function xavier_std(t, gain)
  local fan_in, fan_out = init.fans(t)
  return (gain or 1) * sqrt(2 / (fan_in + fan_out))
end

function init.xavier_uniform_(t, gain)
  check_fan_dims(t, 2)
  if t:numel() == 0 then return t end
  local bound = sqrt(3) * xavier_std(t, gain)
  return init.uniform_(t, -bound, bound)
end

function init.xavier_normal_(t, gain)
  check_fan_dims(t, 2)
  if t:numel() == 0 then return t end
  return init.normal_(t, 0, xavier_std(t, gain))
end

-- He et al.: std = gain / sqrt(fan). opts: a (leaky_relu slope, 0),
-- mode ("fan_in" or "fan_out"), nonlinearity ("leaky_relu").
local KAIMING = { "a", "mode", "nonlinearity" }

local function kaiming_std(t, opts)
  local mode = opts.mode or "fan_in"
  if mode ~= "fan_in" and mode ~= "fan_out" then
    error("glia.nn.init: mode must be 'fan_in' or 'fan_out', got " .. tostring(mode), 3)
  end
  local fan_in, fan_out = init.fans(t)
  local gain = init.calculate_gain(opts.nonlinearity or "leaky_relu", opts.a or 0)
  return gain / sqrt(mode == "fan_in" and fan_in or fan_out)
end

function init.kaiming_uniform_(t, opts)
  opts = options.check("glia.nn.init.kaiming_uniform_", opts, KAIMING)
  check_fan_dims(t, 2)
  if t:numel() == 0 then return t end
  local bound = sqrt(3) * kaiming_std(t, opts)
  return init.uniform_(t, -bound, bound)
end

function init.kaiming_normal_(t, opts)
  opts = options.check("glia.nn.init.kaiming_normal_", opts, KAIMING)
  check_fan_dims(t, 2)
  if t:numel() == 0 then return t end
  return init.normal_(t, 0, kaiming_std(t, opts))
end

return init
