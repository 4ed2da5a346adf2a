-- glia.nn.transformer -- TransformerBlock: the pre-LayerNorm decoder block
-- of GPT-2 style models, with a fused path for decoding.
--
--   x = x + attn(ln1(x) [, cache])        causal MultiHeadAttention
--   x = x + drop(fc2(gelu(fc(ln2(x)))))   GELU MLP, F = mlp_ratio * C; GPT-2's tanh
--                                         form of GELU, as glia.decoder_block has it
--
-- TransformerBlock(d_model, n_heads [, {kv_heads = n_heads, mlp_ratio = 4,
--   dropout = 0, bias = true, eps = 1e-5, fused, mlp}])
-- bias covers the linear layers; the layer norms always have one. mlp (a
-- module {..., C} -> {..., C}, e.g. an nn.MoE) takes the place of fc, gelu,
-- fc2: x + drop(mlp(ln2(x))), or x + drop(mlp(ln2(x), x)) when the module
-- reads the residual stream (mlp:wants_stream(), nn.MoE with chain_start
-- "residual" or outer_residual); decoding then fuses the attention sub-layer,
-- and the MLP sub-layer too when the module offers it (nn.MoE's
-- decode_residual, glia.decoder_moe).
--
-- forward(x [, cache]): x {B,T,C}; cache a glia.kv_cache from new_cache.
-- With a cache, outside training with dropout, the whole block runs as
-- one C call (glia.decoder_block) instead of some forty: decoding one token
-- at a time is then bound by the weights streaming from memory, not by
-- the interpreter. Its result is the module path's, op for op. fused =
-- false keeps the module path (for comparing the two).
--
-- Skip plans (glia.skip sets these two fields; nil is the whole block):
-- self.skip = {attn =, mlp =, decode =} drops the attention or the MLP
-- sub-layer (neither it nor its norm is evaluated: the residual stream
-- passes unchanged) or, with decode, the whole block for generated tokens
-- (Unified Layer Skipping); self.prompt_len is how many leading positions
-- of the input are prompt, which always run (nil: all of them, 0: none).
local glia   = require "glia"
local Module = require "glia.nn.module"
local options = require "glia.options"
local lin    = require "glia.nn.linear"
local norm   = require "glia.nn.norm"
local act    = require "glia.nn.activation"
local attn   = require "glia.nn.attention"

local format, tostring = string.format, tostring
local error = glia.error -- blames the user's line, never the stdlib's
local check_int = Module.check_int

local M = {}

local TransformerBlock = Module:extend("TransformerBlock")
M.TransformerBlock = TransformerBlock

function TransformerBlock:__init(d_model, n_heads, opts)
  opts = options.check("glia.nn.TransformerBlock", opts,
                       { "kv_heads", "mlp_ratio", "dropout", "bias", "eps", "fused", "mlp" }, 2)
  local mlp_ratio = opts.mlp_ratio or 4
  check_int("TransformerBlock", "mlp_ratio", mlp_ratio, 1)
  local bias = opts.bias ~= false
  self.ln1 = norm.LayerNorm(d_model, { eps = opts.eps })
  self.attn = attn.CausalSelfAttention(d_model, n_heads, {
    kv_heads = opts.kv_heads, dropout = opts.dropout, bias = bias, fused = opts.fused })
  self.ln2 = norm.LayerNorm(d_model, { eps = opts.eps })
  if opts.mlp then
    self.mlp = opts.mlp
  else
    self.fc = lin.Linear(d_model, mlp_ratio * d_model, { bias = bias })
    self.fc2 = lin.Linear(mlp_ratio * d_model, d_model, { bias = bias })
  end
  if (opts.dropout or 0) > 0 then self.drop = act.Dropout(opts.dropout) end
  self.fused = opts.fused
end

-- The parameters in glia.decoder_block's order, read afresh each call (a
-- parameter may have been replaced); an absent bias of a linear layer
-- becomes a zero tensor, made once per size. With an mlp module, the
-- attention sub-layer's six (for part "attn").
function TransformerBlock:_fused_params()
  local qkv, proj, fc, fc2 = self.attn.qkv, self.attn.proj, self.fc, self.fc2
  local p = { self.ln1.weight, self.ln1.bias, qkv.weight, qkv.bias, proj.weight, proj.bias }
  if not self.mlp then
    p[7], p[8], p[9], p[10], p[11], p[12] = self.ln2.weight, self.ln2.bias, fc.weight, fc.bias,
                                            fc2.weight, fc2.bias
  end
  for i = 4, self.mlp and 6 or 12, 2 do
    if not p[i] then
      local zeros, n = rawget(self, "_zero_biases") or {}, p[i - 1]:size(1)
      rawset(self, "_zero_biases", zeros)
      zeros[n] = zeros[n] or glia.zeros(n)
      p[i] = zeros[n]
    end
  end
  return p
end

function TransformerBlock:use_fused(cache)
  return cache ~= nil and self.fused ~= false and self.ln1.eps == self.ln2.eps
     and not (self.training and self.drop) and not cache.lens
end

-- The two residual updates: x + attn_update(x [, cache]) is the attention
-- sub-layer, a + mlp_update(a) the MLP sub-layer.
function TransformerBlock:attn_update(x, cache)
  return self.attn(self.ln1(x), cache)
end

function TransformerBlock:mlp_update(x)
  local h, mlp = nil, self.mlp
  if mlp then
    -- an mlp that reads the residual stream (nn.MoE's Chain-of-Experts
    -- arrangements) gets x too: mlp(ln2(x), x)
    if mlp.wants_stream and mlp:wants_stream() then h = mlp(self.ln2(x), x)
    else h = mlp(self.ln2(x)) end
  else h = self.fc2(glia.gelu(self.fc(self.ln2(x)), "tanh")) end
  if self.drop then h = self.drop(h) end
  return h
end

-- The MLP sub-layer x + mlp(ln2(x)) as one call when the mlp module has
-- one for this x (nn.MoE's decode_residual: one row, no autograd); nil
-- otherwise. Not with dropout in training, which the call does not apply.
local function fused_moe(self, x)
  local mlp = self.mlp
  if not (mlp and mlp.decode_residual) or self.fused == false
     or (self.training and self.drop) then
    return nil
  end
  return mlp:decode_residual(x, self.ln2)
end

-- The sub-layers the plan keeps (both: the unplanned path, fused or not).
-- Decoding, one kept sub-layer runs fused too: the attention through
-- glia.decoder_block's "attn" part with the cache, the MLP (whose block
-- has no cache once its attention is dropped) through glia.decoder_mlp
-- for one position without autograd.
local function planned_layers(self, x, cache, skip)
  if not skip.attn and not skip.mlp then return self:forward_full(x, cache) end
  if not skip.attn then
    if skip.mlp and self:use_fused(cache) then return self:fused_step(x, cache, "attn") end
    x = x + self:attn_update(x, cache)
  end
  if not skip.mlp then
    if not self.mlp and x:dim() == 3 and x:size(2) == 1 and self.fused ~= false
       and not glia.is_grad_enabled()
       and not (self.training and self.drop) then
      return glia.decoder_mlp(x, self:_fused_params(), self.ln2.eps)
    end
    return fused_moe(self, x) or x + self:mlp_update(x)
  end
  return x
end

function TransformerBlock:forward(x, cache)
  local skip = self.skip
  if not skip then return self:forward_full(x, cache) end
  local P = self.prompt_len
  if skip.decode and P then
    if P <= 0 then return x end -- generated tokens skip this block (and add nothing to its cache)
    local T = x:size(2)
    if P < T then -- prompt then response (training, or the cache-free reference)
      if cache then
        error("glia.nn.TransformerBlock: a cached forward cannot mix prompt and generated " ..
              "positions under a layer-skipping plan", 2)
      end
      local y = planned_layers(self, x, nil, skip)
      return glia.cat({ y:narrow(2, 1, P), x:narrow(2, P + 1, T - P) }, 2)
    end
  end
  return planned_layers(self, x, cache, skip)
end

-- glia.decoder_block over the cache: the whole block, or part = "attn".
function TransformerBlock:fused_step(x, cache, part)
  -- shapes first: a wrong x must not make reserve grow the cache
  if x:dim() ~= 3 or x:size(1) ~= cache.B or x:size(3) ~= self.attn.d_model then
    error(format("glia.nn.TransformerBlock: expected input {%d,T,%d} for this cache, got {%s}",
                 cache.B, self.attn.d_model, table.concat(x:shape(), ",")), 3)
  end
  local T = x:size(2)
  cache:reserve(T)
  local y = glia.decoder_block(x, self:_fused_params(), cache.k, cache.v, cache:len(),
                               self.attn.n_heads, self.ln1.eps, part)
  cache:advance(T)
  return y
end

-- The whole block, as without a plan.
function TransformerBlock:forward_full(x, cache)
  if self:use_fused(cache) then
    if not self.mlp then return self:fused_step(x, cache) end
    x = self:fused_step(x, cache, "attn") -- another MLP: the attention sub-layer fused
    return fused_moe(self, x) or x + self:mlp_update(x)
  end
  x = x + self:attn_update(x, cache)
  return x + self:mlp_update(x)
end

-- A glia.kv_cache for this block's attention: B sequences, capacity positions.
function TransformerBlock:new_cache(B, capacity)
  return self.attn:new_cache(B, capacity)
end

function TransformerBlock:extra_repr()
  return format("d_model=%d, n_heads=%d, kv_heads=%d, mlp=%s, fused=%s", self.attn.d_model,
                self.attn.n_heads, self.attn.kv_heads,
                self.mlp and "module" or tostring(self.fc.weight:size(1)),
                tostring(self.fused ~= false))
end

return M
