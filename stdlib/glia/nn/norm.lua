-- glia.nn.norm -- normalization layers: LayerNorm and RMSNorm over the last
-- dim (the fused glia.layer_norm / glia.rms_norm ops), BatchNorm1d over the
-- batch (composed from VM ops, with running statistics as buffers), and
-- SLAB's RepBN (BatchNorm plus a learnable identity branch) and PRepBN (a
-- scheduled hand-over from LayerNorm/RMSNorm to RepBN), with
-- nn.schedule_step(model) to advance the schedule. BatchNorm1d, RepBN and
-- PRepBN give their eval-mode map as a per-channel affine (fold_affine),
-- which nn.fold (nn/fold.lua) folds into neighbouring linear layers.
local glia   = require "glia"
local Module = require "glia.nn.module"
local options = require "glia.options"
local init   = require "glia.nn.initializers"
local F      = require "glia.nn.functional"

local format, concat, tostring, type, ipairs = string.format, table.concat, tostring, type, ipairs
local error = require("glia.core").error -- blames the user's line, never the stdlib's
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
-- track_running_stats = true}]) on {N,C} or {N,C,L}; BatchNorm2d (the same
-- class with other ranks, below) on {N,C,H,W}.
-- Training: normalize with the batch's mean and biased variance over every
-- dim but C, then running = (1 - momentum) * running + momentum * batch,
-- with the unbiased variance (n/(n-1)). Eval: normalize with the running
-- statistics. Buffers: running_mean (zeros), running_var (ones) and
-- num_batches_tracked (i64), as PyTorch names them.
local BatchNorm1d = Module:extend("BatchNorm1d")
M.BatchNorm1d = BatchNorm1d
-- The input ranks a class takes, each with the dims its statistics reduce
-- over (every dim but C), and how messages show them.
BatchNorm1d.ranks = { [2] = { 1 }, [3] = { 1, 3 } }
BatchNorm1d.shapes = "{N,%d} or {N,%d,L}"

function BatchNorm1d:__init(C, opts)
  opts = options.check("glia.nn." .. self.__name, opts,
                       { "eps", "momentum", "affine", "track_running_stats" }, 2)
  self.num_features = check_int(self.__name, "num_features", C, 1)
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

-- A per-channel vector {C} reshaped to broadcast against x {N,C,...}:
-- {C}, {C,1}, {C,1,1}.
local function per_channel(v, x)
  local size = { v:size(1) }
  for d = 3, x:dim() do size[d - 1] = 1 end
  return #size > 1 and v:view(size) or v
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

local function shape_str(x)
  return "{" .. concat(x:shape(), ",") .. "}"
end

-- Batch normalization of x {N,C,...} by bn's statistics: the batch's over
-- dims (every dim but C) in training (or without running statistics), the
-- running ones otherwise; then bn's affine. keep, an f32 {N,1} of 0/1
-- (only with x {N,C}), restricts the batch statistics to its rows: the
-- others are still normalized (with those statistics) but count for
-- nothing. name is the calling module's, for errors.
local function batch_norm(bn, x, dims, keep, name)
  local C = bn.num_features
  local mean, var
  if bn.training or not bn.running_mean then
    local n
    if keep then
      n = keep:sum():item()
      mean = (x * keep):sum({ 1 }, true) / n
      local d = (x - mean) * keep
      var = (d * d):sum({ 1 }, true) / n
    else
      n = x:numel() / C
      mean, var = x:mean(dims, true), x:var(dims, true, 0)
    end
    if n < 2 then
      error(format("glia.nn.%s: training needs more than one value per channel, got %s%s", name,
                   shape_str(x), keep and format(" with %d unmasked", n) or ""), 3)
    end
    if bn.training and bn.running_mean then update_running(bn, mean, var, n) end
  else
    mean, var = per_channel(bn.running_mean, x), per_channel(bn.running_var, x)
  end
  -- one {C} scale, so that x meets two full-size ops (three with a bias)
  local scale = (var + bn.eps):rsqrt()
  if bn.weight then scale = scale * per_channel(bn.weight, x) end
  local y = (x - mean) * scale
  if bn.bias then y = y + per_channel(bn.bias, x) end
  return y
end

-- bn's eval-mode map as a per-channel affine y = a o x + b (a, b {C},
-- tracked by autograd through the weight and bias):
--   a = weight / sqrt(running_var + eps),  b = bias - a o running_mean
local function eval_affine(bn)
  local a = (bn.running_var + bn.eps):rsqrt()
  if bn.weight then a = a * bn.weight end
  local b = -(bn.running_mean * a)
  if bn.bias then b = b + bn.bias end
  return a, b
end

function BatchNorm1d:forward(x)
  local C = self.num_features
  local dims = self.ranks[x:dim()]
  if not dims or x:size(2) ~= C then
    error(format("glia.nn.%s: expected input %s, got %s", self.__name, format(self.shapes, C, C),
                 shape_str(x)), 2)
  end
  return batch_norm(self, x, dims, nil, self.__name)
end

-- The eval-mode map as a per-channel affine y = a o x + b (a, b {C},
-- detached; see eval_affine): what nn.fold folds into a neighbouring
-- linear layer.
function BatchNorm1d:fold_affine()
  if not self.running_mean then
    error(format("glia.nn.%s: without running statistics it normalizes with the batch's even in "
                 .. "eval mode: there is no fixed affine map to fold", Module.class_name(self)), 2)
  end
  local a, b = glia.no_grad(eval_affine, self)
  return a:detach(), b:detach()
end

function BatchNorm1d:extra_repr()
  return format("%d, eps=%g, momentum=%s", self.num_features, self.eps, tostring(self.momentum))
end

-- =========================================================== BatchNorm2d

-- BatchNorm2d(C [, opts as BatchNorm1d]) on {N,C,H,W}: statistics per
-- channel over N, H and W; fold_affine and the rest are BatchNorm1d's.
local BatchNorm2d = BatchNorm1d:extend("BatchNorm2d")
M.BatchNorm2d = BatchNorm2d
BatchNorm2d.ranks = { [4] = { 1, 3, 4 } }
BatchNorm2d.shapes = "{N,%d,H,W}"

-- ================================================================= RepBN

-- RepBN(C [, {eps = 1e-5, momentum = 0.1, eta = 1}]): BatchNorm over the
-- channels of x {..., C} (the last dim) plus a learnable identity branch,
--   RepBN(x) = BN(x) + eta * x
-- with one scalar eta (a {1} parameter, initialised to opts.eta: 1 for
-- vision models, 0 in SLAB's LLaMA variant). A BatchNorm sample is every
-- position of every sequence (M = B*N samples per channel for {B,N,C}); the
-- statistics, the running-statistics update and the state are BatchNorm1d's
-- (the child `bn`), so the state dict holds eta, bn.weight, bn.bias,
-- bn.running_mean, bn.running_var, bn.num_batches_tracked. (SLAB's PyTorch
-- RepBN names eta `alpha`: rename that one key to load its weights.)
--
-- forward(x [, {mask = m}]): m, of x's shape without the channel dim (bool,
-- or numbers where non-zero counts), marks the real tokens of padded
-- sequences. In training, the batch statistics (and the running ones) come
-- from the marked tokens only and the unmarked positions pass through
-- unchanged (their output is their input), so what padding holds changes
-- nothing. In eval mode the mask is ignored: the running statistics
-- normalize every position.
local RepBN = Module:extend("RepBN")
M.RepBN = RepBN

function RepBN:__init(C, opts)
  opts = options.check("glia.nn.RepBN", opts, { "eps", "momentum", "eta" }, 2)
  self.num_features = check_int("RepBN", "num_features", C, 1)
  self.eta_init = opts.eta or 1
  self.eta = Parameter(glia.empty(1))
  self.bn = BatchNorm1d(C, { eps = opts.eps, momentum = opts.momentum })
  self:reset_parameters()
end

function RepBN:reset_parameters()
  local eta, v = self.eta, self.eta_init
  glia.no_grad(function() eta:fill_(v) end)
  self.bn:reset_parameters()
end

-- The mask as an f32 {M,1} of 0/1 for x's M = numel/C positions.
local function keep_rows(name, mask, x, M)
  local want = x:shape()
  want[#want] = nil
  local ok = glia.is_tensor(mask) and mask:dim() == #want
  for d = 1, ok and #want or 0 do ok = ok and mask:size(d) == want[d] end
  if not ok then
    error(format("glia.nn.%s: mask must have the input's shape without the channel dim, {%s} for "
                 .. "input %s, got %s", name, concat(want, ","), shape_str(x),
                 glia.is_tensor(mask) and shape_str(mask) or type(mask)), 3)
  end
  if mask:dtype() ~= "bool" then mask = mask:ne(0) end
  return mask:reshape(M, 1)
end

-- Raises, blaming the forward's caller, unless x is {..., C} with at least
-- two dims: name's input shape.
local function check_channels_last(name, x, C)
  if x:dim() < 2 or x:size(x:dim()) ~= C then
    error(format("glia.nn.%s: expected input {..., %d} (channels last, at least 2-D), got %s",
                 name, C, shape_str(x)), 3)
  end
end

function RepBN:forward(x, opts)
  local mask = options.check("glia.nn.RepBN.forward", opts, { "mask" }, 2).mask
  local C = self.num_features
  check_channels_last("RepBN", x, C)
  local shape, M = x:shape(), x:numel() / C
  local x2 = x:reshape(M, C)
  if not self.training and self.bn.running_mean then
    -- eval: one affine, a = BN's scale + eta, two full-size ops in all
    local a, b = eval_affine(self.bn)
    if mask ~= nil then keep_rows("RepBN", mask, x, M) end
    return (x2 * (a + self.eta) + b):reshape(shape)
  end
  local keep = mask ~= nil and keep_rows("RepBN", mask, x, M) or nil
  local y = batch_norm(self.bn, x2, { 1 }, keep and keep:to("f32"), "RepBN") + x2 * self.eta
  if keep then y = glia.where(keep, y, x2) end
  return y:reshape(shape)
end

-- a = weight / sqrt(running_var + eps) + eta, b as BatchNorm1d's.
function RepBN:fold_affine()
  local a, b = self.bn:fold_affine()
  return a + self.eta:detach(), b
end

function RepBN:extra_repr()
  return format("%d, eps=%g, momentum=%s", self.num_features, self.bn.eps, tostring(self.bn.momentum))
end

-- ================================================================ PRepBN

-- PRepBN(C [, {warmup = 0, steps = 300000, norm = "layer", eps, bn_eps = 1e-5,
--   momentum = 0.1, eta = 1}]): SLAB's progressive hand-over from LayerNorm
-- (norm = "layer", eps 1e-5 by default) or RMSNorm (norm = "rms", eps 1e-6)
-- to RepBN over the last dim C. Children: `ln` and `repbn`.
--
-- In training, after s calls of schedule_step():
--   s < warmup:  out = LN(x); the RepBN (and its running statistics) is not run
--   else:        out = lam * LN(x) + (1 - lam) * RepBN(x),
--                lam = max(0, steps - t) / steps, t = s - warmup
--                (lam = 0 at once when steps = 0), and with lam = 0 the LN is
--                skipped
-- so lam is 1 at the end of warm-up and falls linearly to 0 over `steps`
-- steps. In eval mode out = RepBN(x) (running statistics) whatever lam is.
-- lam is a schedule constant, not a parameter.
--
-- The schedule advances only when told: m:schedule_step() (one step), or
-- nn.schedule_step(model) once per optimizer step for every PRepBN of a
-- model. s is the i64 buffer `step`, so it is in the state dict and a
-- checkpoint resumes the schedule where it was.
--
-- forward(x [, {mask = m}]): the mask goes to the RepBN (see RepBN); the LN
-- is per token and needs none.
local PRepBN = Module:extend("PRepBN")
M.PRepBN = PRepBN

function PRepBN:__init(C, opts)
  opts = options.check("glia.nn.PRepBN", opts,
                       { "warmup", "steps", "norm", "eps", "bn_eps", "momentum", "eta" }, 2)
  self.num_features = check_int("PRepBN", "num_features", C, 1)
  self.warmup = check_int("PRepBN", "warmup", opts.warmup or 0, 0)
  self.steps = check_int("PRepBN", "steps", opts.steps or 300000, 0)
  local kind = opts.norm or "layer"
  if kind == "layer" then
    self.ln = LayerNorm(C, { eps = opts.eps })
  elseif kind == "rms" then
    self.ln = RMSNorm(C, { eps = opts.eps })
  else
    error(format("glia.nn.PRepBN: norm must be \"layer\" or \"rms\", got %s", tostring(kind)), 3)
  end
  self.norm = kind
  self.repbn = RepBN(C, { eps = opts.bn_eps, momentum = opts.momentum, eta = opts.eta })
  self:add_buffer("step", glia.zeros({}, "i64"))
end

-- The mixing weight of LN at the current step (1 during warm-up).
function PRepBN:lam()
  local t = self.step:item() - self.warmup
  if t < 0 then return 1 end
  if self.steps == 0 then return 0 end
  return math.max(0, self.steps - t) / self.steps
end

function PRepBN:in_warmup()
  return self.step:item() < self.warmup
end

-- Advances the schedule by one step; returns self.
function PRepBN:schedule_step()
  self.step:fill_(self.step:item() + 1)
  return self
end

function PRepBN:forward(x, opts)
  check_channels_last("PRepBN", x, self.num_features)
  if not self.training then return self.repbn(x, opts) end
  if self:in_warmup() then return self.ln(x) end
  local lam = self:lam()
  if lam == 0 then return self.repbn(x, opts) end
  return self.ln(x) * lam + self.repbn(x, opts) * (1 - lam)
end

-- Eval mode is the RepBN alone, so its affine is the RepBN's.
function PRepBN:fold_affine()
  return self.repbn:fold_affine()
end

function PRepBN:extra_repr()
  return format("%d, norm=%s, warmup=%d, steps=%d, step=%d", self.num_features, self.norm,
                self.warmup, self.steps, self.step:item())
end

-- nn.schedule_step(model): the training loop's hook, called once per
-- optimizer step: advances the schedule of every module of model that has
-- one (every PRepBN). Returns how many it advanced.
function M.schedule_step(model)
  local n = 0
  for _, m in ipairs(model:modules()) do
    if type(m.schedule_step) == "function" then
      m:schedule_step()
      n = n + 1
    end
  end
  return n
end

return M
