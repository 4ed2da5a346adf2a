-- glia.nn.attention -- MultiHeadAttention: multi-head self-attention with
-- a fused QKV projection, grouped key/value heads (kv_heads < n_heads: GQA,
-- kv_heads = 1: MQA), an optional causal mask and a KV-cache forward for
-- decoding; CausalSelfAttention is the causal one (GPT's attention block).
--
-- Shapes: x {B,T,C} with C = d_model, H query heads and Hkv key/value heads
-- of D = C/H dims each.
--   qkv = x W_qkv^T + b   {B,T,(H + 2 Hkv) D}, split into q {B,H,T,D} and
--                         k, v {B,Hkv,T,D}
--   y   = softmax(q k^T / sqrt(D) + mask) v     {B,H,T,D}  (query head h
--                         reads key/value head floor(h / (H / Hkv)))
--   out = merge heads {B,T,C} -> proj (Linear C -> C) -> dropout
-- Two ways to compute y, same result: the fused glia.attention op (tiled,
-- never materializes the T x T scores) and a composition of VM ops (scores,
-- masked_fill of the upper triangle with -inf, softmax, dropout on the
-- weights, @ v). The fused op has no dropout on the weights, so it runs
-- unless attention dropout is active (training with dropout > 0) or the
-- module was built with fused = false.
local glia   = require "glia"
local Module = require "glia.nn.module"
local options = require "glia.options"
local lin    = require "glia.nn.linear"
local act    = require "glia.nn.activation"
local F      = require "glia.nn.functional"

local sqrt, huge, format, concat, tostring, pairs =
  math.sqrt, math.huge, string.format, table.concat, tostring, pairs
local error = require("glia.core").error -- blames the user's line, never the stdlib's
local check_int = Module.check_int

local M = {}

-- MultiHeadAttention(d_model, n_heads [, {kv_heads = n_heads, causal = false,
--   dropout = 0, bias = true, fused}])
-- fused: nil (use glia.attention when it exists), true or false.
local MultiHeadAttention = Module:extend("MultiHeadAttention")
M.MultiHeadAttention = MultiHeadAttention

function MultiHeadAttention:__init(d_model, n_heads, opts)
  local name = self.__name or "MultiHeadAttention"
  opts = options.check("glia.nn." .. name, opts,
                       { "kv_heads", "causal", "dropout", "bias", "fused" }, 2)
  check_int(name, "d_model", d_model, 1)
  check_int(name, "n_heads", n_heads, 1)
  local kv_heads = opts.kv_heads or n_heads
  check_int(name, "kv_heads", kv_heads, 1)
  if d_model % n_heads ~= 0 then
    error(format("glia.nn.%s: d_model %d is not a multiple of n_heads %d", name, d_model,
                 n_heads), 3)
  end
  if n_heads % kv_heads ~= 0 then
    error(format("glia.nn.%s: n_heads %d is not a multiple of kv_heads %d", name, n_heads,
                 kv_heads), 3)
  end
  if opts.fused and not glia.attention then
    error(format("glia.nn.%s: fused = true, but this build has no glia.attention", name), 3)
  end
  self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model / n_heads
  self.kv_heads, self.causal = kv_heads, opts.causal == true
  self.fused = opts.fused
  local bias = { bias = opts.bias ~= false }
  self.qkv = lin.Linear(d_model, (n_heads + 2 * kv_heads) * self.head_dim, bias)
  self.proj = lin.Linear(d_model, d_model, bias)
  self.attn_dropout = act.Dropout(opts.dropout or 0)
  self.resid_dropout = act.Dropout(opts.dropout or 0)
end

-- Bool {T,T}: true above the diagonal, where key j > query i is hidden.
local function causal_mask(T)
  return glia.arange(T):view(1, T):gt(glia.arange(T):view(T, 1))
end

-- k or v {B,Hkv,T,D} -> {B,Hkv*g,T,D}, each kv head repeated g times.
local function repeat_heads(x, g)
  if g == 1 then return x end
  local B, Hkv, T, D = x:size(1), x:size(2), x:size(3), x:size(4)
  return x:unsqueeze(3):expand(B, Hkv, g, T, D):reshape(B, Hkv * g, T, D)
end

-- softmax(q k^T * scale [, future masked] [+ mask]) v from VM ops, with
-- dropout on the attention weights. q {B,H,T,D}, k, v {B,Hkv,T,D}.
local function composed(q, k, v, causal, mask, dropout)
  local g = q:size(2) / k:size(2)
  k, v = repeat_heads(k, g), repeat_heads(v, g)
  local scores = q:matmul(k:transpose(3, 4)):mul(1 / sqrt(q:size(4)))
  if causal then scores = scores:masked_fill(causal_mask(q:size(3)), -huge) end
  if mask then
    if mask:dtype() == "f32" then scores = scores + mask
    else scores = scores:masked_fill(mask:eq(0), -huge) end
  end
  return dropout(F.softmax(scores, -1)):matmul(v)
end

function MultiHeadAttention:use_fused()
  if self.fused == false or not glia.attention then return false end
  return not (self.training and self.attn_dropout.p > 0)
end

-- x {B,T,C} -> {B,T,C}. mask (optional): bool/u8 (true = attend) or f32
-- (added to the scores), broadcastable to {B,H,T,T}. With a cache (see
-- new_cache), x holds the next T positions of a sequence whose earlier
-- keys and values the cache holds; the new ones are appended (inference
-- only, causal).
function MultiHeadAttention:forward(x, cache, mask)
  if x:dim() ~= 3 or x:size(3) ~= self.d_model then
    error(format("glia.nn.%s: expected input {B,T,%d}, got {%s}", self.__name, self.d_model,
                 concat(x:shape(), ",")), 2)
  end
  local B, T, C, H, Hkv, D = x:size(1), x:size(2), self.d_model, self.n_heads, self.kv_heads,
                             self.head_dim
  local qkv = self.qkv(x)
  local function heads(first, n)
    local part = qkv:narrow(3, first * D + 1, n * D)
    if T == 1 then return part:view(B, n, 1, D) end -- decoding: no transpose needed
    return part:reshape(B, T, n, D):transpose(2, 3)
  end
  local q, k, v = heads(0, H), heads(H, Hkv), heads(H + Hkv, Hkv)
  local y
  if cache then
    if not self.causal or mask then
      error(format("glia.nn.%s: the cached forward is causal self-attention without a mask",
                   self.__name), 2)
    end
    cache:append(k, v)
    y = cache:attend(q)
  elseif self:use_fused() then
    y = glia.attention(q, k, v, self.causal, nil, mask)
  else
    y = composed(q, k, v, self.causal, mask, self.attn_dropout)
  end
  y = T == 1 and y:view(B, 1, C) or y:transpose(2, 3):reshape(B, T, C)
  return self.resid_dropout(self.proj(y))
end

-- A key/value cache (glia.kv_cache) for decoding batches of B sequences
-- with this layer, preallocated for capacity positions.
function MultiHeadAttention:new_cache(B, capacity)
  return require("glia.kv_cache").new(B, self.kv_heads, self.head_dim, capacity)
end

function MultiHeadAttention:extra_repr()
  return format("d_model=%d, n_heads=%d, kv_heads=%d, causal=%s, dropout=%s", self.d_model,
                self.n_heads, self.kv_heads, tostring(self.causal), tostring(self.attn_dropout.p))
end

-- CausalSelfAttention(d_model, n_heads [, opts]): MultiHeadAttention with
-- causal = true.
local CausalSelfAttention = MultiHeadAttention:extend("CausalSelfAttention")
M.CausalSelfAttention = CausalSelfAttention

function CausalSelfAttention:__init(d_model, n_heads, opts)
  local o = {}
  opts = options.check("glia.nn.CausalSelfAttention", opts,
                       { "kv_heads", "dropout", "bias", "fused" }, 2)
  for key, val in pairs(opts) do o[key] = val end
  o.causal = true
  MultiHeadAttention.__init(self, d_model, n_heads, o)
end

return M
