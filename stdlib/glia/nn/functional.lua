-- glia.nn.functional -- nn.functional (also nn.F): the stateless forms of
-- the layers and the losses, with named options mapped onto the VM ops'
-- positional arguments. The modules call these, so a layer and its
-- function always agree.
local glia = require "glia"
local options = require "glia.options"

local type, format, concat, tostring = type, string.format, table.concat, tostring
local error = glia.error -- blames the user's line, never the stdlib's

local F = {}

local CE_OPTIONS = { "weight", "ignore_index", "label_smoothing", "reduction" }
local MSE_OPTIONS = { "reduction" }

-- ================================================================ losses

-- PyTorch's class-weighted cross entropy, composed from VM ops (autograd
-- follows): row i's loss is w[y_i] * nll_i, or with label smoothing eps
-- (1 - eps) w[y_i] nll_i + eps/C sum_c w_c (-log p_ic); ignored rows count
-- for nothing; 'mean' divides by the sum of the kept rows' w[y_i] (0 when
-- nothing is kept, as the unweighted op does). The weights are constants:
-- no gradient flows into them.
local function weighted_cross_entropy(x, y, w, ignore, eps, reduction)
  local C = x:size(x:dim())
  if not glia.is_tensor(w) or w:dim() ~= 1 or w:size(1) ~= C then
    error(format("glia.nn.functional.cross_entropy: weight must be a 1-D tensor of %d class "
                 .. "weights, got %s", C, glia.is_tensor(w) and "{" .. concat(w:shape(), ",") .. "}"
                 or type(w)), 3)
  end
  ignore, eps, reduction = ignore or -100, eps or 0, reduction or "mean"
  if type(eps) ~= "number" or not (eps >= 0 and eps <= 1) then
    error("glia.nn.functional.cross_entropy: label_smoothing must be in [0, 1], got "
          .. tostring(eps), 3)
  end
  if reduction ~= "mean" and reduction ~= "sum" and reduction ~= "none" then
    error("glia.nn.functional.cross_entropy: reduction must be 'mean', 'sum' or 'none', got "
          .. tostring(reduction), 3)
  end
  w = w:detach():to("f32")
  -- the unweighted op checks the targets and gives ignored rows 0
  local nll = glia.cross_entropy(x, y, ignore, 0, "none")
  local dropped = y:eq(ignore)
  -- ignored rows look up class 1 (then zeroed); f32 holds the checked ids exactly
  local ids = y:to("f32"):masked_fill(dropped, 1):to("i64"):flatten()
  local wy = glia.index_select(w, 1, ids):view(y:shape())
  wy = wy:masked_fill(dropped, 0)
  local loss = wy * nll
  if eps > 0 then
    local smooth = -(glia.log_softmax(x, -1) * w):sum(-1)
    loss = loss * (1 - eps) + smooth:masked_fill(dropped, 0) * (eps / C)
  end
  if reduction == "none" then return loss end
  local total = glia.sum(loss)
  if reduction ~= "mean" then return total end
  local den = glia.sum(wy):item()
  return total * (den ~= 0 and 1 / den or 0)
end

-- Cross entropy of logits x {..., C} against class ids y {...} (1-based).
-- opts: weight (a {C} tensor rescaling each class's loss, as PyTorch's:
-- 'mean' then divides by the summed weights of the targets), ignore_index
-- (a target value whose rows count for nothing, -100), label_smoothing
-- (0), reduction ("mean", "sum" or "none").
function F.cross_entropy(x, y, opts)
  opts = options.check("glia.nn.functional.cross_entropy", opts, CE_OPTIONS)
  if opts.weight ~= nil then
    return weighted_cross_entropy(x, y, opts.weight, opts.ignore_index, opts.label_smoothing,
                                  opts.reduction)
  end
  return glia.cross_entropy(x, y, opts.ignore_index, opts.label_smoothing, opts.reduction)
end

-- Mean squared error; opts.reduction as for cross_entropy.
function F.mse(a, b, opts)
  opts = options.check("glia.nn.functional.mse", opts, MSE_OPTIONS)
  return glia.mse(a, b, opts.reduction)
end

-- ========================================================== activations

function F.relu(x) return glia.relu(x) end
function F.silu(x) return glia.silu(x) end

-- approximate: "none" (the default, as PyTorch's: the exact erf form) or
-- "tanh" (GPT-2's approximation).
function F.gelu(x, approximate) return glia.gelu(x, approximate or "none") end

function F.softmax(x, dim) return glia.softmax(x, dim or -1) end
function F.log_softmax(x, dim) return glia.log_softmax(x, dim or -1) end

-- ================================================================ layers

-- Zeroes elements with probability p (0.5) and scales the rest by 1/(1-p)
-- when training (true unless false is given); the identity otherwise.
function F.dropout(x, p, training)
  return glia.dropout(x, p or 0.5, training ~= false)
end

-- x W^T + b, W {out, in}; b may be nil.
function F.linear(x, w, b) return glia.linear(x, w, b) end

-- Rows of w {V, D} picked by the 1-based ids.
function F.embedding(ids, w) return glia.embedding(ids, w) end

function F.layer_norm(x, w, b, eps) return glia.layer_norm(x, w, b, eps or 1e-5) end
function F.rms_norm(x, w, eps) return glia.rms_norm(x, w, eps or 1e-6) end

return F
