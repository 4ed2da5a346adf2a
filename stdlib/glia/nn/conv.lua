-- glia.nn.conv -- convolution and pooling layers over channel-first inputs:
-- Conv1d ({B,C,L}), Conv2d ({B,C,H,W}) through glia.conv1d / glia.conv2d,
-- MaxPool2d, AvgPool2d, AdaptiveAvgPool2d through the pooling ops, and
-- Flatten. Argument names, defaults, initialization and state-dict names
-- (weight {O, C/groups, k...}, bias {O}) are PyTorch's, so a PyTorch state
-- dict of the same layer loads unchanged.
local glia   = require "glia"
local Module = require "glia.nn.module"
local options = require "glia.options"
local init   = require "glia.nn.initializers"

local sqrt, format, concat = math.sqrt, string.format, table.concat
local type, tostring = type, tostring
local error = require("glia.core").error -- blames the user's line, never the stdlib's
local Parameter, check_int = Module.Parameter, Module.check_int

local M = {}

-- v as a table of n positive-or-zero integers: a number repeats, a table of
-- n passes; what names the argument in messages.
local function ntuple(cls, what, v, n, lo)
  if type(v) == "number" then
    check_int(cls, what, v, lo)
    local r = {}
    for i = 1, n do r[i] = v end
    return r
  end
  if type(v) ~= "table" or #v ~= n then
    error(format("glia.nn.%s: %s must be an integer or a list of %d, got %s", cls, what, n,
                 tostring(v)), 4)
  end
  for i = 1, n do check_int(cls, what, v[i], lo) end
  return v
end

local function show(t) return #t == 1 and tostring(t[1]) or "{" .. concat(t, ",") .. "}" end

-- ================================================================ ConvNd

-- Conv1d / Conv2d(in_channels, out_channels, kernel_size [, {stride = 1,
-- padding = 0, dilation = 1, groups = 1, bias = true}]); kernel_size,
-- stride, padding and dilation are numbers or lists of 1 (Conv1d) or 2;
-- padding may also be "valid" or "same" (see glia.conv2d).
-- Init: kaiming_uniform(a = sqrt(5)) for the weight, which is
-- U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = C/groups * prod(kernel),
-- and the same bound for the bias.
local CONV_OPTIONS = { "stride", "padding", "dilation", "groups", "bias" }

local function conv_class(name, nd, op)
  local Conv = Module:extend(name)
  function Conv:__init(cin, cout, kernel_size, opts)
    opts = options.check("glia.nn." .. name, opts, CONV_OPTIONS, 2)
    self.in_channels = check_int(name, "in_channels", cin, 1)
    self.out_channels = check_int(name, "out_channels", cout, 1)
    self.kernel_size = ntuple(name, "kernel_size", kernel_size, nd, 1)
    self.stride = ntuple(name, "stride", opts.stride or 1, nd, 1)
    local padding = opts.padding or 0
    if padding == "same" or padding == "valid" then
      self.padding = padding
    else
      self.padding = ntuple(name, "padding", padding, nd, 0)
    end
    self.dilation = ntuple(name, "dilation", opts.dilation or 1, nd, 1)
    self.groups = check_int(name, "groups", opts.groups or 1, 1)
    if cin % self.groups ~= 0 or cout % self.groups ~= 0 then
      error(format("glia.nn.%s: in_channels %d and out_channels %d must be divisible by groups %d",
                   name, cin, cout, self.groups), 3)
    end
    local wsize = { cout, cin / self.groups }
    for i = 1, nd do wsize[i + 2] = self.kernel_size[i] end
    self.weight = Parameter(glia.empty(wsize))
    if opts.bias ~= false then self.bias = Parameter(glia.empty(cout)) end
    self:reset_parameters()
  end

  function Conv:reset_parameters()
    init.kaiming_uniform_(self.weight, { a = sqrt(5) })
    if self.bias then
      local fan_in = init.fans(self.weight)
      local bound = fan_in > 0 and 1 / sqrt(fan_in) or 0
      init.uniform_(self.bias, -bound, bound)
    end
  end

  function Conv:forward(x)
    return op(x, self.weight, self.bias, { stride = self.stride, padding = self.padding,
                                           dilation = self.dilation, groups = self.groups })
  end

  function Conv:extra_repr()
    local s = format("%d, %d, kernel_size=%s, stride=%s", self.in_channels, self.out_channels,
                     show(self.kernel_size), show(self.stride))
    local p = self.padding
    if type(p) == "string" then
      s = s .. ", padding=" .. p
    elseif p[1] ~= 0 or p[nd] ~= 0 then
      s = s .. ", padding=" .. show(p)
    end
    if self.dilation[1] ~= 1 or self.dilation[nd] ~= 1 then
      s = s .. ", dilation=" .. show(self.dilation)
    end
    if self.groups ~= 1 then s = s .. ", groups=" .. self.groups end
    return self.bias and s or s .. ", bias=false"
  end
  return Conv
end

M.Conv1d = conv_class("Conv1d", 1, glia.conv1d)
M.Conv2d = conv_class("Conv2d", 2, glia.conv2d)

-- ============================================================== pooling

-- MaxPool2d / AvgPool2d(kernel_size [, stride = kernel_size [, padding = 0]]),
-- also as a table {kernel_size =, stride =, padding =}; AvgPool2d counts the
-- padding in its divisor (PyTorch's count_include_pad = true).
local POOL_OPTIONS = { "kernel_size", "stride", "padding" }

local function pool_class(name, op)
  local Pool = Module:extend(name)
  function Pool:__init(kernel_size, stride, padding)
    if type(kernel_size) == "table" and kernel_size.kernel_size then
      local o = options.check("glia.nn." .. name, kernel_size, POOL_OPTIONS, 2)
      kernel_size, stride, padding = o.kernel_size, o.stride, o.padding
    end
    self.kernel_size = ntuple(name, "kernel_size", kernel_size, 2, 1)
    self.stride = ntuple(name, "stride", stride or self.kernel_size, 2, 1)
    self.padding = ntuple(name, "padding", padding or 0, 2, 0)
  end
  function Pool:forward(x) return op(x, self.kernel_size, self.stride, self.padding) end
  function Pool:extra_repr()
    return format("kernel_size=%s, stride=%s, padding=%s", show(self.kernel_size),
                  show(self.stride), show(self.padding))
  end
  return Pool
end

M.MaxPool2d = pool_class("MaxPool2d", glia.max_pool2d)
M.AvgPool2d = pool_class("AvgPool2d", glia.avg_pool2d)

-- AdaptiveAvgPool2d(output_size): a number or {H, W}.
local AdaptiveAvgPool2d = Module:extend("AdaptiveAvgPool2d")
M.AdaptiveAvgPool2d = AdaptiveAvgPool2d

function AdaptiveAvgPool2d:__init(output_size)
  self.output_size = ntuple("AdaptiveAvgPool2d", "output_size", output_size, 2, 1)
end

function AdaptiveAvgPool2d:forward(x) return glia.adaptive_avg_pool2d(x, self.output_size) end

function AdaptiveAvgPool2d:extra_repr() return "output_size=" .. show(self.output_size) end

-- ============================================================== Flatten

-- Flatten([start_dim = 2 [, end_dim = -1]]): dims start_dim..end_dim become
-- one (1-based, as PyTorch's 1 and -1): {B,C,H,W} -> {B, C*H*W}.
local Flatten = Module:extend("Flatten")
M.Flatten = Flatten

function Flatten:__init(start_dim, end_dim)
  self.start_dim, self.end_dim = start_dim or 2, end_dim or -1
end

function Flatten:forward(x) return x:flatten(self.start_dim, self.end_dim) end

function Flatten:extra_repr()
  return format("start_dim=%d, end_dim=%d", self.start_dim, self.end_dim)
end

return M
