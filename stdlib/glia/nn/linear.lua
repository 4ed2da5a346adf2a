-- glia.nn.linear -- the layers that hold a weight matrix: Linear
-- (y = x W^T + b through the fused glia.linear, W {out, in}) and Embedding
-- (rows of W {V, D} picked by 1-based ids). Default initializations are
-- PyTorch's, drawn from the context's seeded RNG.
local glia   = require "glia"
local Module = require "glia.nn.module"
local options = require "glia.options"
local init   = require "glia.nn.initializers"
local F      = require "glia.nn.functional"

local sqrt, format = math.sqrt, string.format
local Parameter, check_int = Module.Parameter, Module.check_int

local M = {}

-- ================================================================ Linear

-- Linear(n_in, n_out [, {bias = true}])
local Linear = Module:extend("Linear")
M.Linear = Linear

function Linear:__init(n_in, n_out, opts)
  opts = options.check("glia.nn.Linear", opts, { "bias" }, 2)
  self.in_features = check_int("Linear", "in_features", n_in, 0)
  self.out_features = check_int("Linear", "out_features", n_out, 0)
  self.weight = Parameter(glia.empty(n_out, n_in))
  if opts.bias ~= false then self.bias = Parameter(glia.empty(n_out)) end
  self:reset_parameters()
end

-- Kaiming-uniform with a = sqrt(5) for the weight, which is
-- U(-1/sqrt(in), 1/sqrt(in)), and the same bound for the bias.
function Linear:reset_parameters()
  init.kaiming_uniform_(self.weight, { a = sqrt(5) })
  if self.bias then
    local bound = self.in_features > 0 and 1 / sqrt(self.in_features) or 0
    init.uniform_(self.bias, -bound, bound)
  end
end

function Linear:forward(x)
  return F.linear(x, self.weight, self.bias)
end

function Linear:extra_repr()
  return format("%d -> %d%s", self.in_features, self.out_features, self.bias and "" or ", no bias")
end

-- ============================================================= Embedding

-- Embedding(num_embeddings, dim): weight {num_embeddings, dim} ~ N(0, 1).
local Embedding = Module:extend("Embedding")
M.Embedding = Embedding

function Embedding:__init(n, dim)
  self.num_embeddings = check_int("Embedding", "num_embeddings", n, 1)
  self.embedding_dim = check_int("Embedding", "embedding_dim", dim, 1)
  self.weight = Parameter(glia.empty(n, dim))
  self:reset_parameters()
end

function Embedding:reset_parameters()
  init.normal_(self.weight, 0, 1)
end

-- ids: an integer tensor of any shape, 1-based; returns {..., dim}.
function Embedding:forward(ids)
  return F.embedding(ids, self.weight)
end

function Embedding:extra_repr()
  return format("%d, %d", self.num_embeddings, self.embedding_dim)
end

return M
