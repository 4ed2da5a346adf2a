-- glia.nn.norm -- normalization layers: LayerNorm and RMSNorm over the last
-- dim (the fused glia.layer_norm / glia.rms_norm ops), and BatchNorm1d over
-- the batch (composed from VM ops, with running statistics as buffers).
local glia   = require "glia"
local Module = require "glia.nn.module"
local options = require "glia.options"
local init   = require "glia.nn.initializers"
local F      = require "glia.nn.functional"

local format, concat, tostring, error = string.format, table.concat, tostring, error
local Parameter, check_int = Module.Parameter, Module.check_int

local M = {}

-- LayerNorm and RMSNorm take (dim, opts) where opts.elementwise_affine
-- (true) adds a weight of ones.
local function affine(opts)
  return opts.elementwise_affine ~= false
end

-- ============================================================= LayerNorm

-- LayerNorm(dim [, {eps = 1e-5, elementwise_affine = true, bias = true}])
local LayerNorm = Module:extend("LayerNorm")
M.LayerNorm = LayerNorm

function LayerNorm:__init(dim, opts)
  opts = options.check("glia.nn.LayerNorm", opts, { "eps", "elementwise_affine", "bias" }, 2)
  self.dim = check_int("LayerNorm", "dim", dim, 1)
  self.eps = opts and opts.eps or 1e-5
  if affine(opts) then
    self.weight = Parameter(glia.empty(dim))
    if opts == nil or opts.bias ~= false then self.bias = Parameter(glia.empty(dim)) end
  end
  self:reset_parameters()
end

function LayerNorm:reset_parameters()
  if self.weight then init.ones_(self.weight) end
  if self.bias then init.zeros_(self.bias) end
end

function LayerNorm:forward(x)
  return F.layer_norm(x, self.weight, self.bias, self.eps)
end

function LayerNorm:extra_repr()
  return format("%d, eps=%g", self.dim, self.eps)
end

-- =============================================================== RMSNorm

-- RMSNorm(dim [, {eps = 1e-6, elementwise_affine = true}])
local RMSNorm = Module:extend("RMSNorm")
M.RMSNorm = RMSNorm

function RMSNorm:__init(dim, opts)
  opts = options.check("glia.nn.RMSNorm", opts, { "eps", "elementwise_affine" }, 2)
  self.dim = check_int("RMSNorm", "dim", dim, 1)
  self.eps = opts and opts.eps or 1e-6
  if affine(opts) then self.weight = Parameter(glia.empty(dim)) end
  self:reset_parameters()
end

function RMSNorm:reset_parameters()
  if self.weight then init.ones_(self.weight) end
end

function RMSNorm:forward(x)
  return F.rms_norm(x, self.weight, self.eps)
end

RMSNorm.extra_repr = LayerNorm.extra_repr

-- =========================================================== BatchNorm1d

-- BatchNorm1d(C [, {eps = 1e-5, momentum = 0.1, affine = true,
-- track_running_stats = true}]) on {N,C} or {N,C,L}.
-- Training: normalize with the batch's mean and biased variance over every
-- dim but C, then running = (1 - momentum) * running + momentum * batch,
-- with the unbiased variance (n/(n-1)). Eval: normalize with the running
-- statistics. Buffers: running_mean (zeros), running_var (ones) and
-- num_batches_tracked (i64), as PyTorch names them.
local BatchNorm1d = Module:extend("BatchNorm1d")
M.BatchNorm1d = BatchNorm1d

function BatchNorm1d:__init(C, opts)
  opts = options.check("glia.nn.BatchNorm1d", opts,
                       { "eps", "momentum", "affine", "track_running_stats" }, 2)
  self.num_features = check_int("BatchNorm1d", "num_features", C, 1)
  self.eps = opts.eps or 1e-5
  self.momentum = opts.momentum or 0.1
  if opts.affine ~= false then
    self.weight = Parameter(glia.empty(C))
    self.bias = Parameter(glia.empty(C))
  end
  if opts.track_running_stats ~= false then
    self:add_buffer("running_mean", glia.empty(C))
    self:add_buffer("running_var", glia.empty(C))
    self:add_buffer("num_batches_tracked", glia.zeros({}, "i64"))
  end
  self:reset_parameters()
end

function BatchNorm1d:reset_running_stats()
  if self.running_mean then
    init.zeros_(self.running_mean)
    init.ones_(self.running_var)
    self.num_batches_tracked:zero_()
  end
end

function BatchNorm1d:reset_parameters()
  self:reset_running_stats()
  if self.weight then
    init.ones_(self.weight)
    init.zeros_(self.bias)
  end
end

-- A per-channel vector {C} reshaped to broadcast against x ({C} or {C,1}).
local function per_channel(v, x)
  return x:dim() == 3 and v:view(v:size(1), 1) or v
end

-- Folds the batch statistics into the running ones (no autograd).
local function update_running(self, mean, var, n)
  local m, C = self.momentum, self.num_features
  glia.no_grad(function()
    local unbiased = var:detach():view(C):mul(n / (n - 1))
    self.running_mean:mul_(1 - m):add_(mean:detach():view(C):mul(m))
    self.running_var:mul_(1 - m):add_(unbiased:mul(m))
    self.num_batches_tracked:fill_(self.num_batches_tracked:item() + 1)
  end)
end

function BatchNorm1d:forward(x)
  local C = self.num_features
  if (x:dim() ~= 2 and x:dim() ~= 3) or x:size(2) ~= C then
    error(format("glia.nn.BatchNorm1d: expected input {N,%d} or {N,%d,L}, got {%s}", C, C,
                 concat(x:shape(), ",")), 2)
  end
  local mean, var
  if self.training or not self.running_mean then
    local dims = x:dim() == 3 and { 1, 3 } or { 1 }
    local n = x:numel() / C
    if n < 2 then
      error(format("glia.nn.BatchNorm1d: training needs more than one value per channel, got {%s}",
                   concat(x:shape(), ",")), 2)
    end
    mean, var = x:mean(dims, true), x:var(dims, true, 0)
    if self.training and self.running_mean then update_running(self, mean, var, n) end
  else
    mean, var = per_channel(self.running_mean, x), per_channel(self.running_var, x)
  end
  local y = (x - mean) * (var + self.eps):rsqrt()
  if self.weight then y = y * per_channel(self.weight, x) + per_channel(self.bias, x) end
  return y
end

function BatchNorm1d:extra_repr()
  return format("%d, eps=%g, momentum=%s", self.num_features, self.eps, tostring(self.momentum))
end

return M
