-- glia.nn.moe -- MoE: a mixture-of-experts MLP (glia.moe, ops/moe.c) with
-- optional always-on shared experts, auxiliary-loss or bias balancing, and
-- Chain-of-Experts iterations.
--
--   nn.MoE(d, hidden, n_experts [, opts])     x {..., d} -> {..., d}
--
-- opts: k (2), router "softmax" | "sigmoid", normalize, groups, topk_groups,
-- route_scale, capacity_factor, priority (as glia.moe); activation ("gelu",
-- exact; "gelu_tanh", "relu", "silu", "swiglu"); shared (0: the number of
-- shared experts, run on every token as one MLP of width shared * hidden);
-- aux_alpha, z_alpha, seq_alpha, seq_len (loss weights); bias_gamma (0: the
-- speed of DeepSeek's bias balancing, see below); iterations (1: C of
-- Chain-of-Experts); chain_start ("normed" | "residual") and outer_residual
-- (false) for the chain's arrangement (below); bias (true: b1 and b2 in the
-- experts).
--
-- Parameters: w1 {E,F1,d}, b1 {E,F1}, w2 {E,d,F}, b2 {E,d} (F1 = F, or 2F
-- for swiglu: the first F rows go through silu), one router per iteration
-- (routers.i.weight {E,d}), the shared MLP (shared_fc, shared_proj). Buffer:
-- expert_bias {C,E}, the selection bias of each router (zero unless
-- bias_gamma balances it; saved with the model).
--
-- Chain-of-Experts (C iterations, experts shared, one router each), in
-- forward(x [, h]): x the normalized state Norm(h), h the residual stream
-- the caller adds the output to (default x: the input is the stream):
--   x_0 = x (chain_start "normed", default)  or  h (chain_start "residual")
--   x_i = x_{i-1} + MoE_i(a_{i-1}) + Shared(a_{i-1}),  a_0 = x, a_i = x_i
--   R   = x_C (outer_residual false, default)  or  h + x_C (true)
--   output R - h, so that h + output = R
-- The defaults are the CoE reference's: with C = 1 the sub-layer gives
-- Norm(h) + MoE(Norm(h)) when the caller passes h; chain_start "residual"
-- gives the usual h + MoE(Norm(h)). Called as m(x) (h = x) the output is
-- MoE(x) + Shared(x) for C = 1, the plain MoE layer.
--
-- After a forward: m.aux_loss (the weighted auxiliary losses of every
-- iteration, a 0-D tensor, or nil when no weight is set) and m:load([i])
-- (kept tokens per expert of the last forward, {E} i64, summed over the
-- iterations or of iteration i). nn.aux_loss(model) sums m.aux_loss over
-- every MoE of a model: add it to the training loss.
--
-- Bias balancing (bias_gamma > 0): each training forward adds its routing
-- counts to a tally; m:schedule_step() applies glia.moe_bias_update to each
-- router's bias with the tally of all forwards since the last call (the
-- micro-batches of one step) and clears it. The training loop calls
-- nn.schedule_step(model) once after every optimizer step; it reaches every
-- module with a schedule_step (this one, PRepBN's schedule).
local glia   = require "glia"
local Module = require "glia.nn.module"
local options = require "glia.options"
local init   = require "glia.nn.initializers"
local lin    = require "glia.nn.linear"
local container = require "glia.nn.container"
local LayerNorm = require("glia.nn.norm").LayerNorm

local format, type, ipairs, sqrt = string.format, type, ipairs, math.sqrt
local error = require("glia.core").error -- blames the user's line, never the stdlib's
local Parameter, check_int = Module.Parameter, Module.check_int

local M = {}

local OPTIONS = { "k", "router", "normalize", "groups", "topk_groups", "route_scale",
                  "capacity_factor", "priority", "activation", "shared", "aux_alpha", "z_alpha",
                  "seq_alpha", "seq_len", "bias_gamma", "iterations", "bias", "chain_start",
                  "outer_residual" }
local ACTIVATIONS = { gelu = true, gelu_tanh = true, relu = true, silu = true, swiglu = true }

local MoE = Module:extend("MoE")
local NO_SHARED = {}
M.MoE = MoE

function MoE:__init(d, hidden, n_experts, opts)
  opts = options.check("glia.nn.MoE", opts, OPTIONS, 2)
  check_int("MoE", "d", d, 1)
  check_int("MoE", "hidden", hidden, 1)
  check_int("MoE", "n_experts", n_experts, 1)
  local k = opts.k or 2
  if type(k) ~= "number" or k < 1 or k > n_experts or k ~= math.floor(k) then
    error(format("glia.nn.MoE: k must be an integer in 1..%d (the experts), got %s", n_experts,
                 tostring(k)), 3)
  end
  local act = opts.activation or "gelu"
  if not ACTIVATIONS[act] then
    error(format("glia.nn.MoE: unknown activation '%s' (gelu, gelu_tanh, relu, silu, swiglu)",
                 tostring(act)), 3)
  end
  local C = opts.iterations or 1
  check_int("MoE", "iterations", C, 1)
  local bias_gamma = opts.bias_gamma or 0
  if type(bias_gamma) ~= "number" or not (bias_gamma >= 0 and bias_gamma < math.huge) then
    error(format("glia.nn.MoE: bias_gamma must be a finite number >= 0, got %s", tostring(bias_gamma)), 3)
  end
  local chain_start, outer = opts.chain_start or "normed", opts.outer_residual or false
  if chain_start ~= "normed" and chain_start ~= "residual" then
    error(format("glia.nn.MoE: chain_start must be 'normed' or 'residual', got %s", tostring(chain_start)), 3)
  end
  if type(outer) ~= "boolean" then
    error(format("glia.nn.MoE: outer_residual must be a boolean, got %s", tostring(outer)), 3)
  end
  self.chain_start, self.outer_residual = chain_start, outer
  local shared = opts.shared or 0
  check_int("MoE", "shared", shared, 0)
  self.d, self.hidden, self.n_experts, self.k, self.iterations = d, hidden, n_experts, k, C
  self.activation, self.n_shared, self.bias_gamma = act, shared, bias_gamma
  local F1 = act == "swiglu" and 2 * hidden or hidden
  self.w1 = Parameter(glia.empty(n_experts, F1, d))
  if opts.bias ~= false then self.b1 = Parameter(glia.empty(n_experts, F1)) end
  self.w2 = Parameter(glia.empty(n_experts, d, hidden))
  if opts.bias ~= false then self.b2 = Parameter(glia.empty(n_experts, d)) end
  local routers = {}
  for i = 1, C do routers[i] = lin.Linear(d, n_experts, { bias = false }) end
  self.routers = container.ModuleList(routers)
  if shared > 0 then
    self.shared_fc = lin.Linear(d, shared * F1)
    self.shared_proj = lin.Linear(shared * hidden, d)
  end
  self:add_buffer("expert_bias", glia.zeros(C, n_experts))
  -- the options glia.moe takes, fixed at construction
  self._route = {
    k = k, router = opts.router, normalize = opts.normalize, groups = opts.groups,
    topk_groups = opts.topk_groups, route_scale = opts.route_scale,
    capacity_factor = opts.capacity_factor, priority = opts.priority, activation = act,
    aux_alpha = opts.aux_alpha, z_alpha = opts.z_alpha, seq_alpha = opts.seq_alpha,
    seq_len = opts.seq_len,
  }
  self:reset_parameters()
end

-- Each expert as an nn.Linear would be: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
function MoE:reset_parameters()
  local b1, b2 = 1 / sqrt(self.d), 1 / sqrt(self.hidden)
  init.uniform_(self.w1, -b1, b1)
  init.uniform_(self.w2, -b2, b2)
  if self.b1 then init.uniform_(self.b1, -b1, b1) end
  if self.b2 then init.uniform_(self.b2, -b2, b2) end
end

local function act_of(name, u, F)
  if name == "swiglu" then return glia.silu(u:narrow(-1, 1, F)) * u:narrow(-1, F + 1, F) end
  if name == "gelu" then return glia.gelu(u) end
  if name == "gelu_tanh" then return glia.gelu(u, "tanh") end
  return glia[name](u)
end

function MoE:shared_forward(x)
  local F = self.n_shared * self.hidden
  return self.shared_proj(act_of(self.activation, self.shared_fc(x), F))
end

-- Whether a forward of the rows h {T,d} is a decoding step that
-- glia.moe_decode runs in one call: T <= 4 without autograd, no capacity
-- (nothing to drop), one group, and no training-time bookkeeping (auxiliary losses or
-- the bias tally) asked for. Its output is glia.moe's, bit for bit.
function MoE:decodes(h)
  local o = self._route
  if h:size(1) > 4 or glia.is_grad_enabled() or o.capacity_factor or (o.groups or 1) > 1 then
    return false
  end
  if not self.training then return true end
  local function on(a) return a and a ~= 0 end
  return self.bias_gamma == 0 and not (on(o.aux_alpha) or on(o.z_alpha) or on(o.seq_alpha))
end

-- Whether a caller should pass the residual stream (forward's h): the
-- arrangements that read it, chain_start "residual" and outer_residual.
-- nn.TransformerBlock asks; with the defaults the block stays x + MoE(ln2(x)).
function MoE:wants_stream()
  return self.chain_start == "residual" or self.outer_residual
end

-- x + self(norm(x)) for one row x {..., d} (a decoding step) in one call,
-- glia.decoder_moe, when it computes that: a decoding step (decodes), one
-- iteration, no outer residual, and norm an nn.LayerNorm with weight and
-- bias; nil otherwise (the caller takes the module path). The bits are
-- the module path's. nn.TransformerBlock calls it for its MoE sub-layer.
function MoE:decode_residual(x, norm)
  local w, b = norm.weight, norm.bias
  if self.iterations ~= 1 or self.outer_residual or getmetatable(norm) ~= LayerNorm or not b
     or x:numel() ~= self.d or x:size(-1) ~= self.d then
    return nil
  end
  local o = self._route
  if glia.is_grad_enabled() or o.capacity_factor or (o.groups or 1) > 1 then return nil end
  if self.training and not self:decodes(x:reshape(1, self.d)) then return nil end
  local experts
  if self.b1 then experts = { self.routers[1].weight, self.w1, self.b1, self.w2, self.b2 }
  else experts = { self.routers[1].weight, self.w1, self.w2 } end
  local shared = NO_SHARED
  if self.n_shared > 0 then
    local fc, proj = self.shared_fc, self.shared_proj
    shared = { fc.weight, fc.bias, proj.weight, proj.bias }
  end
  local y, idx = glia.decoder_moe(x, { w, b }, experts, shared, o.k, o.router, o.normalize,
                                self.bias_gamma ~= 0 and self.expert_bias[1] or nil,
                                o.route_scale, o.activation, norm.eps)
  self._load, self.aux_loss = { idx }, nil -- as forward leaves them
  return y
end

-- x {..., d} [, stream {..., d}] -> {..., d} (see the header)
function MoE:forward(x, stream)
  local d = self.d
  if x:size(-1) ~= d then
    error(format("glia.nn.MoE: expected input {..., %d}, got {%s}", d,
                 table.concat(x:shape(), ",")), 2)
  end
  local shape = x:shape()
  if stream ~= nil and not (glia.is_tensor(stream) and
                            table.concat(stream:shape(), ",") == table.concat(shape, ",")) then
    error(format("glia.nn.MoE: the residual stream must be shaped like the input {%s}",
                 table.concat(shape, ",")), 2)
  end
  local h = x:reshape(-1, d)
  local res = stream and stream:reshape(-1, d) or h
  local x0 = self.chain_start == "residual" and res or h
  local chain, o, total, aux = x0, self._route, nil, nil
  local balancing = self.bias_gamma ~= 0
  self._load = {}
  local decode = self:decodes(h)
  for i = 1, self.iterations do
    o.bias = balancing and self.expert_bias[i] or nil
    local y, info
    if decode then
      local idx
      y, idx = glia.moe_decode(h, self.routers[i].weight, self.w1, self.b1, self.w2, self.b2,
                               o.k, o.router, o.normalize, o.bias, o.route_scale,
                               o.activation)
      info = { load = idx } -- counted when m:load() asks
    else
      y, info = glia.moe(h, self.routers[i].weight, self.w1, self.b1, self.w2, self.b2, o)
    end
    if self.n_shared > 0 then y = y + self:shared_forward(h) end
    if info.aux then aux = aux and aux + info.aux or info.aux end
    self._load[i] = info.load
    if balancing and self.training then
      self._tally = self._tally or {}
      local c = info.counts:to("f32")
      self._tally[i] = self._tally[i] and self._tally[i] + c or c
    end
    total = total and total + y or y
    if i < self.iterations then
      chain = chain + y
      h = chain
    end
  end
  o.bias = nil
  self.aux_loss = aux
  -- R - stream: x_C = x_0 + the updates when the outer residual adds the
  -- stream back, else x_C - stream (the updates alone when x_0 is the stream)
  local out
  if self.outer_residual then out = x0 + total
  elseif x0 == res then out = total
  else out = x0 + total - res end
  return out:reshape(shape)
end

-- Kept tokens per expert in the last forward: of iteration i, or summed.
function MoE:load(i)
  local l = self._load
  if not l then return nil end
  for j, t in ipairs(l) do -- a decoding step left its idx {T,k}: count it
    if t:dim() == 2 then l[j] = glia.one_hot(t, self.n_experts):sum({ 1, 2 }):to("i64") end
  end
  if i then return l[i] end
  if #l == 1 then return l[1] end
  local s = l[1]:to("f32")
  for j = 2, #l do s = s + l[j]:to("f32") end
  return s:to("i64")
end

-- Sums the routing counts the bias update will read with `reduce(t)`, in
-- place: glia.distributed.DataParallel passes a sum over the ranks, so the
-- biases of all replicas see the global batch's load and stay equal.
function MoE:reduce_stats(reduce)
  if not self._tally then return end
  for _, c in ipairs(self._tally) do reduce(c) end
end

-- The bias update of one optimizer step (nn.schedule_step's hook).
function MoE:schedule_step()
  if self.bias_gamma == 0 or not self._tally then return end
  for i, c in ipairs(self._tally) do
    glia.moe_bias_update(self.expert_bias[i], c, self.bias_gamma)
  end
  self._tally = nil
end

function MoE:extra_repr()
  return format("d=%d, hidden=%d, experts=%d, k=%d, %s%s%s%s", self.d, self.hidden,
                self.n_experts, self.k, self.activation,
                self.n_shared > 0 and format(", shared=%d", self.n_shared) or "",
                self.iterations > 1 and format(", iterations=%d", self.iterations) or "",
                self.bias_gamma ~= 0 and format(", bias_gamma=%g", self.bias_gamma) or "")
end

-- The sum of the auxiliary losses of the last forward of every MoE in
-- model (nil when there are none).
function M.aux_loss(model)
  local s
  for _, m in ipairs(model:modules()) do
    local a = rawget(m, "aux_loss")
    if a then s = s and s + a or a end
  end
  return s
end

return M
