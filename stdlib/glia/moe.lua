-- glia.moe -- mixture-of-experts routing and experts (ops/moe.c) with the
-- options tables and the auxiliary losses.
--
--   local gates, idx, counts, kept = glia.moe_route(logits, opts)
--   local y, info = glia.moe(x, wr, w1, b1, w2, b2, opts)
--   glia.moe_bias_update(bias, counts, gamma)
--
-- x {T,d}; wr {E,d} (router); w1 {E,F,d} (swiglu: {E,2F,d}), b1 {E,F} or
-- nil, w2 {E,d,F}, b2 {E,d} or nil: E stacked nn.Linear weights.
--
-- Routing options (glia.moe_route and glia.moe):
--   k (2), router "softmax" | "sigmoid" (DeepSeek-V3), normalize (gates
--   renormalized over the chosen experts: default for sigmoid and for
--   softmax with k > 1), bias ({E} f32, selection only: never changes a
--   gate value, gets no gradient), groups / topk_groups (group-limited
--   selection), route_scale (1), capacity_factor (none: nothing dropped),
--   priority "choice" (first choices first, in token order) | "gate".
-- glia.moe options add:
--   activation "gelu" (exact erf) | "gelu_tanh" | "relu" | "silu" | "swiglu"
--   aux_alpha   Switch balance loss weight: alpha E sum_e f_e P_e
--   z_alpha     router z-loss weight: beta mean_t logsumexp(z_t)^2
--   seq_alpha   DeepSeek's sequence-wise balance loss weight, over sequences
--               of seq_len tokens (default: all T tokens are one sequence)
-- info = {aux = total of the weighted losses (a 0-D tensor, or nil),
--         balance, z, seq (each a 0-D tensor when asked for), load {E} i64
--         (kept assignments per expert), counts {E} i64 (assignments before
--         dropping), gates, idx, kept, logits}.
local options = require "glia.options"

local type, format, tostring = type, string.format, tostring
local error = require("glia.core").error -- blames the user's line, never the stdlib's

-- Made by glia's init.lua, which passes the glia table and the core ops
-- that these wrap (glia.moe_route itself is replaced by the wrapper).
return function(glia, core_route, core_experts)
local M = {}

local ROUTE_OPTIONS = { "k", "router", "normalize", "bias", "groups", "topk_groups",
                        "route_scale", "capacity_factor", "priority" }
local MOE_OPTIONS = { "k", "router", "normalize", "bias", "groups", "topk_groups", "route_scale",
                      "capacity_factor", "priority", "activation", "aux_alpha", "z_alpha",
                      "seq_alpha", "seq_len" }

-- Option checks: the error names the function and the option, at `level`
-- as error() counts it from the checker's caller.
local function bad(where, name, want, v, level)
  local shown = type(v) == "string" and format("%q", v) or tostring(v)
  error(format("%s: %s must be %s, got %s", where, name, want, shown), level + 1)
end
-- nil, or a positive integer (at most 2^53: the C side gets it exactly)
local function int_opt(where, name, v, level)
  if v ~= nil and (type(v) ~= "number" or v ~= math.floor(v) or v < 1 or v > 2 ^ 53) then
    bad(where, name, "a positive integer", v, level + 1)
  end
end
-- nil, or a finite number
local function num_opt(where, name, v, level)
  if v ~= nil and (type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge) then
    bad(where, name, "a finite number", v, level + 1)
  end
end

local function route(where, z, o)
  local k = o.k or 2
  int_opt(where, "k", k, 3)
  int_opt(where, "groups", o.groups, 3)
  int_opt(where, "topk_groups", o.topk_groups, 3)
  num_opt(where, "route_scale", o.route_scale, 3)
  local cf = o.capacity_factor
  if cf ~= nil and (type(cf) ~= "number" or not (cf > 0)) then
    bad(where, "capacity_factor", "a number > 0", cf, 3)
  end
  if o.normalize ~= nil and type(o.normalize) ~= "boolean" then
    bad(where, "normalize", "a boolean", o.normalize, 3)
  end
  for _, name in ipairs { "router", "priority" } do
    if o[name] ~= nil and type(o[name]) ~= "string" then bad(where, name, "a string", o[name], 3) end
  end
  if o.bias ~= nil and not glia.is_tensor(o.bias) then bad(where, "bias", "a tensor {E}", o.bias, 3) end
  return core_route(z, k, o.router, o.normalize, o.bias, o.groups, o.topk_groups,
                             o.route_scale, cf, o.priority)
end

function M.moe_route(z, opts)
  return route("glia.moe_route", z, options.check("glia.moe_route", opts, ROUTE_OPTIONS))
end

-- The weighted auxiliary losses of one routing (see the header). With no
-- tokens each asked-for loss is 0 (a mean over nothing), still on z's graph.
local function aux_losses(o, z, idx, counts, E, k)
  local T = z:size(1)
  local info, total = {}, nil
  local function add(name, l)
    info[name] = l
    total = total and total + l or l
  end
  local sigmoid = o.router == "sigmoid"
  -- scores normalized over all experts: softmax, or sigmoid / its row sum,
  -- computed as the softmax of log sigmoid(z) = -logsumexp(0, -z): the same
  -- value, but defined when every sigmoid of a row underflows to 0 (all
  -- logits below about -88 made 0 / 0 = NaN losses)
  local function norm_scores()
    if not sigmoid then return glia.softmax(z, 2) end
    return glia.softmax(-glia.logsumexp(glia.stack({ glia.zeros_like(z), -z }, 3), 3), 2)
  end
  local zero = T == 0 and z:sum() * 0 or nil
  if o.aux_alpha and o.aux_alpha ~= 0 then
    if zero then add("balance", zero) else
      local P = norm_scores():mean(1)
      local f = counts:to("f32") / (k * T)
      add("balance", (P * f):sum() * (o.aux_alpha * E))
    end
  end
  if o.z_alpha and o.z_alpha ~= 0 then
    if zero then add("z", zero) else
      local lse = glia.logsumexp(z, 2)
      add("z", (lse * lse):mean() * o.z_alpha)
    end
  end
  if o.seq_alpha and o.seq_alpha ~= 0 then
    local Ts = o.seq_len or T
    if zero then add("seq", zero)
    elseif T % Ts ~= 0 then
      error(format("glia.moe: seq_len %d does not divide the %d tokens", Ts, T), 3)
    else
      local B = math.floor(T / Ts)
      local P = norm_scores():view(B, Ts, E):mean(2)                     -- {B,E}
      local f = glia.one_hot(idx, E):sum(2):view(B, Ts, E):sum(2) * (E / (k * Ts))
      add("seq", (P * f):sum(2):mean() * o.seq_alpha)
    end
  end
  info.aux = total
  return info
end

function M.moe(x, wr, w1, b1, w2, b2, opts)
  local o = options.check("glia.moe", opts, MOE_OPTIONS)
  for _, name in ipairs { "aux_alpha", "z_alpha", "seq_alpha" } do num_opt("glia.moe", name, o[name], 2) end
  int_opt("glia.moe", "seq_len", o.seq_len, 2)
  if not (glia.is_tensor(x) and glia.is_tensor(wr) and glia.is_tensor(w1) and glia.is_tensor(w2)) then
    error("glia.moe: x, wr, w1 and w2 must be tensors", 2)
  end
  if x:dim() ~= 2 or wr:dim() ~= 2 or w1:dim() ~= 3 or wr:size(1) ~= w1:size(1) or
     wr:size(2) ~= x:size(2) then
    error(format("glia.moe: want x {T,d}, wr {E,d}, w1 {E,F,d}; got x {%s}, wr {%s}, w1 {%s}",
                 table.concat(x:shape(), ","), table.concat(wr:shape(), ","),
                 table.concat(w1:shape(), ",")), 2)
  end
  for _, t in ipairs { x, wr } do
    if t:dtype() ~= "f32" then
      error(format("glia.moe: x and wr must be f32, got %s {%s}", t:dtype(),
                   table.concat(t:shape(), ",")), 2)
    end
  end
  local E = wr:size(1)
  local z = glia.linear(x, wr)
  local gates, idx, counts, kept = route("glia.moe", z, o)
  local y = core_experts(x, gates, idx, w1, b1, w2, b2, o.activation,
                                  o.capacity_factor and kept or nil)
  local info = aux_losses(o, z, idx, counts, E, idx:size(2))
  info.counts, info.gates, info.idx, info.kept, info.logits = counts, gates, idx, kept, z
  info.load = o.capacity_factor and glia.one_hot(idx, E):mul(kept:to("f32"):unsqueeze(3))
                                        :sum({ 1, 2 }):to("i64") or counts
  return y, info
end

-- DeepSeek-V3's balancing without a loss: bias_e += gamma sign(mean(c) - c_e),
-- in place (overloaded experts go down). counts {E} (any numeric dtype).
function M.moe_bias_update(bias, counts, gamma)
  if not glia.is_tensor(bias) or not glia.is_tensor(counts) or bias:dim() ~= 1 or
     counts:numel() ~= bias:numel() then
    error("glia.moe_bias_update: want bias {E} and counts {E}", 2)
  end
  if bias:dtype() ~= "f32" then
    error(format("glia.moe_bias_update: bias must be f32 {E}, got %s {%s}", bias:dtype(),
                 table.concat(bias:shape(), ",")), 2)
  end
  -- a NaN, infinite or negative gamma would poison or invert the bias
  if type(gamma) ~= "number" or not (gamma >= 0 and gamma < math.huge) then
    bad("glia.moe_bias_update", "gamma", "a finite number >= 0", gamma, 2)
  end
  local c = counts:to("f32"):view(-1)
  local mean = c:mean():item()
  local up, down = c:lt(mean):to("f32"), c:gt(mean):to("f32")
  glia.no_grad(function() bias:add_((up - down) * gamma) end)
  return bias
end

return M
end
