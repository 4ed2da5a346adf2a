-- glia.nn.attention -- CausalSelfAttention: multi-head self-attention where
-- position t sees positions 1..t (GPT's attention block).
--
-- Shapes: x {B,T,C} with C = d_model, H heads of D = C/H dims each.
--   qkv = x W_qkv^T + b   {B,T,3C}, split into q, k, v, each viewed {B,H,T,D}
--   y   = softmax(q k^T / sqrt(D) + causal mask) v        {B,H,T,D}
--   out = merge heads {B,T,C} -> proj (Linear C -> C) -> dropout
-- Two ways to compute y, same result: the fused glia.attention op (tiled,
-- never materializes the T x T scores) and a composition of VM ops (scores,
-- masked_fill of the upper triangle with -inf, softmax, dropout on the
-- weights, @ v). The fused op has no dropout on the weights, so it runs
-- unless attention dropout is active (training with dropout > 0) or the
-- module was built with fused = false.
local glia   = require "glia"
local Module = require "glia.nn.module"
local lin    = require "glia.nn.linear"
local act    = require "glia.nn.activation"
local F      = require "glia.nn.functional"

local sqrt, huge, format, error, concat, tostring =
  math.sqrt, math.huge, string.format, error, table.concat, tostring
local check_int = Module.check_int

local M = {}

-- CausalSelfAttention(d_model, n_heads [, {dropout = 0, bias = true, fused}])
-- fused: nil (use glia.attention when it exists), true or false.
local CausalSelfAttention = Module:extend("CausalSelfAttention")
M.CausalSelfAttention = CausalSelfAttention

function CausalSelfAttention:__init(d_model, n_heads, opts)
  opts = opts or {}
  check_int("CausalSelfAttention", "d_model", d_model, 1)
  check_int("CausalSelfAttention", "n_heads", n_heads, 1)
  if d_model % n_heads ~= 0 then
    error(format("glia.nn.CausalSelfAttention: d_model %d is not a multiple of n_heads %d",
                 d_model, n_heads), 3)
  end
  if opts.fused and not glia.attention then
    error("glia.nn.CausalSelfAttention: fused = true, but this build has no glia.attention", 3)
  end
  self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model / n_heads
  self.fused = opts.fused
  local bias = { bias = opts.bias ~= false }
  self.qkv = lin.Linear(d_model, 3 * d_model, bias)
  self.proj = lin.Linear(d_model, d_model, bias)
  self.attn_dropout = act.Dropout(opts.dropout or 0)
  self.resid_dropout = act.Dropout(opts.dropout or 0)
end

-- Bool {T,T}: true above the diagonal, where key j > query i is hidden.
local function causal_mask(T)
  return glia.arange(T):view(1, T):gt(glia.arange(T):view(T, 1))
end

-- softmax(q k^T * scale, future masked) v from VM ops, with dropout on the
-- attention weights. q, k, v {B,H,T,D}.
local function composed(q, k, v, dropout)
  local T = q:size(3)
  local scores = q:matmul(k:transpose(3, 4)):mul(1 / sqrt(q:size(4)))
  local weights = F.softmax(scores:masked_fill(causal_mask(T), -huge), -1)
  return dropout(weights):matmul(v)
end

function CausalSelfAttention:use_fused()
  if self.fused == false or not glia.attention then return false end
  return not (self.training and self.attn_dropout.p > 0)
end

-- x {B,T,C} -> {B,T,C}. With a cache (see new_cache), x holds the next T
-- positions of a sequence whose earlier keys and values the cache holds;
-- the new ones are appended (inference only).
function CausalSelfAttention:forward(x, cache)
  if x:dim() ~= 3 or x:size(3) ~= self.d_model then
    error(format("glia.nn.CausalSelfAttention: expected input {B,T,%d}, got {%s}", self.d_model,
                 concat(x:shape(), ",")), 2)
  end
  local B, T, C, H, D = x:size(1), x:size(2), self.d_model, self.n_heads, self.head_dim
  local qkv = self.qkv(x)
  local function heads(i)
    return qkv:narrow(3, (i - 1) * C + 1, C):reshape(B, T, H, D):transpose(2, 3)
  end
  local q, k, v = heads(1), heads(2), heads(3)
  local y
  if cache then
    cache:append(k, v)
    y = cache:attend(q)
  elseif self:use_fused() then
    y = glia.attention(q, k, v, true)
  else
    y = composed(q, k, v, self.attn_dropout)
  end
  return self.resid_dropout(self.proj(y:transpose(2, 3):reshape(B, T, C)))
end

-- A key/value cache (glia.kv_cache) for decoding batches of B sequences
-- with this layer, preallocated for capacity positions.
function CausalSelfAttention:new_cache(B, capacity)
  return require("glia.kv_cache").new(B, self.n_heads, self.head_dim, capacity)
end

function CausalSelfAttention:extra_repr()
  return format("d_model=%d, n_heads=%d, dropout=%s", self.d_model, self.n_heads,
                tostring(self.attn_dropout.p))
end

return M
