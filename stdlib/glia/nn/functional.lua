-- glia.nn.functional -- nn.functional (also nn.F): the stateless forms of
-- the layers and the losses, with named options mapped onto the VM ops'
-- positional arguments. The modules call these, so a layer and its
-- function always agree.
local glia = require "glia"

local type, error = type, error

local F = {}

local function options(name, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("glia.nn.functional." .. name .. ": options must be a table, got " .. type(opts), 3)
  end
  return opts or {}
end

-- ================================================================ losses

-- Cross entropy of logits x {..., C} against class ids y {...} (1-based).
-- opts: ignore_index (a target value whose rows count for nothing, -100),
-- label_smoothing (0), reduction ("mean", "sum" or "none").
function F.cross_entropy(x, y, opts)
  opts = options("cross_entropy", opts)
  return glia.cross_entropy(x, y, opts.ignore_index, opts.label_smoothing, opts.reduction)
end

-- Mean squared error; opts.reduction as for cross_entropy.
function F.mse(a, b, opts)
  opts = options("mse", opts)
  return glia.mse(a, b, opts.reduction)
end

-- ========================================================== activations

function F.relu(x) return glia.relu(x) end
function F.silu(x) return glia.silu(x) end

-- approximate: "tanh" (the default) or "none" (the exact erf form).
function F.gelu(x, approximate) return glia.gelu(x, approximate or "tanh") end

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
