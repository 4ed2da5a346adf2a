-- t/moe.t -- mixture-of-experts routing and experts (ops/moe.c,
-- stdlib/glia/moe.lua): routing against a naive f64 router in plain Lua
-- (softmax top-k, DeepSeek-V3 sigmoid with bias and groups, capacity in
-- both priority orders); the grouped experts against a dense reference that
-- runs every expert on every token and masks by the routing; f64 gradient
-- checks of x, the router and every expert weight through a naive Lua MoE on
-- inputs whose top-k margins are well separated; token-order invariance;
-- capacity rules; auxiliary losses at uniform and collapsed routing;
-- DeepSeek's gate sums, bias and groups; determinism across thread counts;
-- dispatch bookkeeping; the decoding path; bad input.
--
-- Tolerances: the grouped experts match the dense masked reference to 1e-6
-- relative to the output's largest magnitude (both f32; different GEMM
-- shapes sum in different orders); gates to 1e-6 of the f64 router; f64
-- gradient checks as u.gradcheck_f64 states (1e-4 of the largest gradient).
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

u.seed(20261206)

local abs, max, exp, sqrt = math.abs, math.max, math.exp, math.sqrt

-- Max |a - b| relative to the largest |b| (at least 1).
local function relerr(a, b)
  local m = 0
  for _, x in ipairs(t.flat(b, {})) do m = max(m, abs(x)) end
  return t.maxdiff(a, b) / max(m, 1)
end

-- ================================================ f64 reference in Lua

local erf = u.erf

local function silu(v) return v / (1 + exp(-v)) end
local ACT = {
  relu = function(v) return v > 0 and v or 0 end,
  gelu = function(v) return 0.5 * v * (1 + erf(v / sqrt(2))) end,
  gelu_tanh = function(v)
    return 0.5 * v * (1 + math.tanh(sqrt(2 / math.pi) * (v + 0.044715 * v ^ 3)))
  end,
  silu = silu,
}

-- Routing of logits z (nested {T}{E}) as the header of ops/moe.c says:
-- idx[t][j] (1-based), gate[t][j], kept[t][j], and the sorted margin (the
-- smallest gap between a chosen and an unchosen selection score).
local function ref_route(z, o)
  local T, E, k = #z, #z[1], o.k or 2
  local sigmoid = o.router == "sigmoid"
  local normalize = o.normalize
  if normalize == nil then normalize = sigmoid or k > 1 end
  local scale, bias, G = o.route_scale or 1, o.bias, o.groups or 1
  local M = o.topk_groups or G
  local idx, gate, margin = {}, {}, math.huge
  for tt = 1, T do
    local s, sel = {}, {}
    if sigmoid then
      for e = 1, E do s[e] = 1 / (1 + exp(-z[tt][e])) end
    else
      local m, sum = -math.huge, 0
      for e = 1, E do m = max(m, z[tt][e]) end
      for e = 1, E do s[e] = exp(z[tt][e] - m); sum = sum + s[e] end
      for e = 1, E do s[e] = s[e] / sum end
    end
    for e = 1, E do sel[e] = s[e] + (bias and bias[e] or 0) end
    local allowed = {}
    for e = 1, E do allowed[e] = true end
    if G > 1 then
      local gs, gsc = math.floor(E / G), {}
      for g = 1, G do
        local a, b = -math.huge, -math.huge
        for e = (g - 1) * gs + 1, g * gs do
          if sel[e] > a then a, b = sel[e], a elseif sel[e] > b then b = sel[e] end
        end
        gsc[g] = bias and a + b or a
      end
      local keep = {}
      for _ = 1, M do
        local best
        for g = 1, G do if not keep[g] and (not best or gsc[g] > gsc[best]) then best = g end end
        keep[best] = true
      end
      for e = 1, E do allowed[e] = keep[math.floor((e - 1) / gs) + 1] or false end
    end
    idx[tt], gate[tt] = {}, {}
    local taken = {}
    for j = 1, k do
      local best
      for e = 1, E do
        if allowed[e] and not taken[e] and (not best or sel[e] > sel[best]) then best = e end
      end
      taken[best] = true
      idx[tt][j] = best
    end
    local lo = math.huge
    for j = 1, k do lo = math.min(lo, sel[idx[tt][j]]) end
    for e = 1, E do if allowed[e] and not taken[e] then margin = math.min(margin, lo - sel[e]) end end
    local den = 0
    for j = 1, k do den = den + s[idx[tt][j]] end
    for j = 1, k do gate[tt][j] = scale * s[idx[tt][j]] / (normalize and den or 1) end
  end
  local kept = {}
  for tt = 1, T do kept[tt] = {} for j = 1, k do kept[tt][j] = true end end
  if o.capacity_factor then
    local cap = math.ceil(o.capacity_factor * k * T / E)
    local order = {}
    for j = 1, k do for tt = 1, T do order[#order + 1] = { tt, j } end end
    if o.priority == "gate" then
      for i, a in ipairs(order) do a[3] = i end
      table.sort(order, function(a, b)
        local ga, gb = gate[a[1]][a[2]], gate[b[1]][b[2]]
        if ga ~= gb then return ga > gb end
        return a[3] < b[3]
      end)
    end
    local fill = {}
    for _, a in ipairs(order) do
      local e = idx[a[1]][a[2]]
      fill[e] = (fill[e] or 0) + 1
      kept[a[1]][a[2]] = fill[e] <= cap
    end
  end
  return idx, gate, kept, margin
end

local function matvec(W, v, b)
  local r = {}
  for i = 1, #W do
    local s = b and b[i] or 0
    for c = 1, #v do s = s + W[i][c] * v[c] end
    r[i] = s
  end
  return r
end

-- The MoE layer in f64 on nested tables: y {T}{d} (plus the weighted
-- auxiliary losses added to every element, when asked for).
local function ref_moe(o)
  return function(x, wr, w1, b1, w2, b2)
    local T, d, E = #x, #x[1], #wr
    local z = {}
    for tt = 1, T do z[tt] = matvec(wr, x[tt]) end
    local idx, gate, kept = ref_route(z, o)
    local act = o.activation or "gelu"
    local y = {}
    for tt = 1, T do
      y[tt] = {}
      for c = 1, d do y[tt][c] = 0 end
      for j = 1, #idx[tt] do
        if kept[tt][j] then
          local e = idx[tt][j]
          local uu = matvec(w1[e], x[tt], b1 and b1[e])
          local h = {}
          if act == "swiglu" then
            local F = math.floor(#uu / 2)
            for f = 1, F do h[f] = silu(uu[f]) * uu[F + f] end
          else
            for f = 1, #uu do h[f] = ACT[act](uu[f]) end
          end
          local ye = matvec(w2[e], h, b2 and b2[e])
          for c = 1, d do y[tt][c] = y[tt][c] + gate[tt][j] * ye[c] end
        end
      end
    end
    local aux = 0
    local k = #idx[1]
    if o.aux_alpha or o.seq_alpha then
      local P, f = {}, {}
      for e = 1, E do P[e], f[e] = 0, 0 end
      for tt = 1, T do
        local p, sum = {}, 0
        if o.router == "sigmoid" then
          for e = 1, E do p[e] = 1 / (1 + exp(-z[tt][e])); sum = sum + p[e] end
        else
          local m = -math.huge
          for e = 1, E do m = max(m, z[tt][e]) end
          for e = 1, E do p[e] = exp(z[tt][e] - m); sum = sum + p[e] end
        end
        for e = 1, E do P[e] = P[e] + p[e] / sum / T end
        for j = 1, k do f[idx[tt][j]] = f[idx[tt][j]] + 1 end
      end
      local dot = 0
      for e = 1, E do dot = dot + f[e] * P[e] end
      if o.aux_alpha then aux = aux + o.aux_alpha * E * dot / (k * T) end
      if o.seq_alpha then aux = aux + o.seq_alpha * dot * E / (k * T) end -- one sequence
    end
    if o.z_alpha then
      local s = 0
      for tt = 1, T do
        local m, sum = -math.huge, 0
        for e = 1, E do m = max(m, z[tt][e]) end
        for e = 1, E do sum = sum + exp(z[tt][e] - m) end
        s = s + (m + math.log(sum)) ^ 2
      end
      aux = aux + o.z_alpha * s / T
    end
    if aux ~= 0 then
      for tt = 1, T do for c = 1, d do y[tt][c] = y[tt][c] + aux end end
    end
    return y
  end
end

-- ============================================ dense masked reference

-- Every expert on every token through glia ops, masked by the routing.
local function dense_moe(x, w1, b1, w2, b2, act, gates, idx, kept)
  local T, E = x:size(1), w1:size(1)
  local gt, it, kt = gates:totable(), idx:totable(), kept and kept:totable()
  local y = glia.zeros(x:size(1), x:size(2))
  for e = 1, E do
    local mask = {}
    for tt = 1, T do
      mask[tt] = { 0 }
      for j = 1, #it[tt] do
        if it[tt][j] == e and (not kt or kt[tt][j]) then mask[tt][1] = gt[tt][j] end
      end
    end
    local uu = glia.linear(x, w1[e], b1 and b1[e])
    local h
    if act == "swiglu" then
      local F = math.floor(uu:size(2) / 2)
      h = glia.silu(uu:narrow(2, 1, F)) * uu:narrow(2, F + 1, F)
    elseif act == "gelu_tanh" then h = glia.gelu(uu, "tanh")
    else h = glia[act](uu) end
    y = y + glia.linear(h, w2[e], b2 and b2[e]) * glia.tensor(mask)
  end
  return y
end

-- Weights for E experts of width F (w1 of 2F rows for swiglu).
local function weights(E, d, F, act, scale)
  scale = scale or 0.5
  local F1 = act == "swiglu" and 2 * F or F
  return glia.randn(E, F1, d) * scale, glia.randn(E, F1) * 0.1, glia.randn(E, d, F) * scale,
         glia.randn(E, d) * 0.1
end

-- ======================================================= routing

local ROUTERS = {
  { name = "softmax top-1 (Switch, not normalized)", k = 1 },
  { name = "softmax top-2 normalized", k = 2 },
  { name = "softmax top-2 not normalized, route_scale 1.5", k = 2, normalize = false, route_scale = 1.5 },
  { name = "sigmoid top-2 with bias (DeepSeek-V3)", k = 2, router = "sigmoid", bias = true, route_scale = 2.5 },
  { name = "sigmoid top-2, 4 groups keep 2, bias", k = 2, router = "sigmoid", bias = true, groups = 4, topk_groups = 2 },
  { name = "sigmoid top-3, 4 groups keep 2, no bias", k = 3, router = "sigmoid", groups = 4, topk_groups = 2 },
  { name = "softmax top-2, 2 groups keep 1", k = 2, groups = 2, topk_groups = 1 },
  { name = "softmax top-2, capacity 0.75", k = 2, capacity_factor = 0.75 },
  { name = "softmax top-1, capacity 1.0, gate priority", k = 1, capacity_factor = 1.0, priority = "gate" },
  { name = "sigmoid top-2 bias, groups, capacity 0.5", k = 2, router = "sigmoid", bias = true, groups = 4, topk_groups = 2, capacity_factor = 0.5 },
}

local function opts_of(r, E)
  local o = {}
  for key, v in pairs(r) do if key ~= "name" then o[key] = v end end
  if r.bias then o.bias = glia.randn(E) * 0.3 end
  return o
end

local function ref_opts(o)
  local r = {}
  for key, v in pairs(o) do r[key] = v end
  if glia.is_tensor(o.bias) then r.bias = o.bias:totable() end
  return r
end

do
  local T, d, E, F = 24, 16, 8, 12
  for _, act in ipairs { "gelu", "gelu_tanh", "relu", "silu", "swiglu" } do
    for ri, r in ipairs(ROUTERS) do
      if act == "gelu" or ri == 2 or ri == 8 then
        local x, wr = glia.randn(T, d), glia.randn(E, d)
        local w1, b1, w2, b2 = weights(E, d, F, act)
        local o = opts_of(r, E)
        o.activation = act
        local y, info = glia.moe(x, wr, w1, b1, w2, b2, o)
        local idx, gate, kept = ref_route(glia.linear(x, wr):totable(), ref_opts(o))
        local ok = u.identical(info.idx, idx) and u.identical(info.kept, kept)
        t.ok(ok, r.name .. " (" .. act .. "): the chosen and kept experts are the f64 router's")
        t.ok(relerr(info.gates, gate) <= 1e-6, r.name .. ": gates match the f64 router to 1e-6")
        local dense = dense_moe(x, w1, b1, w2, b2, act, info.gates, info.idx,
                                r.capacity_factor and info.kept)
        local err = relerr(y, dense)
        if not t.ok(err <= 1e-6, r.name .. " (" .. act .. "): y equals the dense masked reference to 1e-6") then
          t.diag("relative error " .. err)
        end
      end
    end
  end
  -- no biases
  local x, wr = glia.randn(T, d), glia.randn(E, d)
  local w1, _, w2 = weights(E, d, F, "relu")
  local y, info = glia.moe(x, wr, w1, nil, w2, nil, { k = 2, activation = "relu" })
  t.ok(relerr(y, dense_moe(x, w1, nil, w2, nil, "relu", info.gates, info.idx)) <= 1e-6,
       "without b1 and b2: y equals the dense masked reference")
end

-- ============================================== f64 gradient checks

-- Inputs whose routing has a top-k margin of at least 1e-3 (a perturbation
-- of 1e-6 never changes the selection), found by reseeding.
local function separated(T, d, E, F, act, o)
  for _ = 1, 50 do
    local x, wr = glia.randn(T, d), glia.randn(E, d)
    local w1, b1, w2, b2 = weights(E, d, F, act)
    local _, _, _, margin = ref_route(glia.linear(x, wr):totable(), ref_opts(o))
    if margin >= 1e-3 then return x, wr, w1, b1, w2, b2 end
  end
  error("no well-separated routing found")
end

do
  local T, d, E, F = 6, 4, 4, 3
  local cases = {
    { name = "softmax top-2 normalized, gelu, Switch aux + z-loss", k = 2, activation = "gelu", aux_alpha = 0.1, z_alpha = 0.01 },
    { name = "softmax top-1 not normalized, relu", k = 1, activation = "relu" },
    { name = "softmax top-2, capacity 0.5 (drops), gelu_tanh", k = 2, activation = "gelu_tanh", capacity_factor = 0.5 },
    { name = "sigmoid top-2, bias, route_scale 2.5, seq loss, silu", k = 2, router = "sigmoid", bias = true, route_scale = 2.5, seq_alpha = 0.1, activation = "silu" },
    { name = "sigmoid top-1 of 2 groups keep 1, swiglu", k = 1, router = "sigmoid", groups = 2, topk_groups = 1, activation = "swiglu" },
  }
  for _, c in ipairs(cases) do
    local o = opts_of(c, E)
    local x, wr, w1, b1, w2, b2 = separated(T, d, E, F, c.activation, ref_opts(o))
    u.gradcheck_f64(function(a, b, c1, d1, e1, f1)
      local y, info = glia.moe(a, b, c1, d1, e1, f1, o)
      return info.aux and y + info.aux or y
    end, ref_moe(ref_opts(o)), { x, wr, w1, b1, w2, b2 }, c.name .. ": f64 gradients of x, wr, w1, b1, w2, b2")
  end
end

-- ============================================= token-order invariance

do
  local T, d, E, F = 32, 8, 4, 6
  local x, wr = glia.randn(T, d), glia.randn(E, d)
  local w1, b1, w2, b2 = weights(E, d, F, "gelu")
  local perm = {}
  for i = 1, T do perm[i] = i end
  for i = T, 2, -1 do local j = math.random(i); perm[i], perm[j] = perm[j], perm[i] end
  local pidx = glia.tensor(perm, "i64")
  local function run(xx)
    xx = xx:detach():requires_grad()
    for _, w in ipairs { wr, w1, b1, w2, b2 } do w:zero_grad() w:requires_grad() end
    local y, info = glia.moe(xx, wr, w1, b1, w2, b2, { k = 2, aux_alpha = 0.01 })
    ;(y * y):sum():add(info.aux):backward()
    return y, xx.grad, w1.grad:clone(), wr.grad:clone(), w2.grad:clone()
  end
  local y1, dx1, dw1, dwr1, dw21 = run(x)
  local y2, dx2, dw2, dwr2, dw22 = run(x:index_select(1, pidx))
  t.ok(relerr(y2, y1:index_select(1, pidx)) <= 1e-6, "permuting tokens permutes y")
  t.ok(relerr(dx2, dx1:index_select(1, pidx)) <= 1e-5, "permuting tokens permutes dx")
  t.ok(relerr(dw2, dw1) <= 1e-5 and relerr(dwr2, dwr1) <= 1e-5 and relerr(dw22, dw21) <= 1e-5,
       "weight gradients do not depend on the token order (to f32 summation order)")
end

-- ========================================================== capacity

do
  local T, d, E, F = 10, 4, 4, 3
  -- every token prefers expert 1; k = 1, cf 0.8: Cap = ceil(0.8 * 10 / 4) = 2
  local x = glia.rand(T, d) + 0.5
  local wr = glia.zeros(E, d)
  wr[1]:fill_(2)
  local w1, b1, w2, b2 = weights(E, d, F, "gelu")
  x:requires_grad()
  local y, info = glia.moe(x, wr, w1, b1, w2, b2, { k = 1, capacity_factor = 0.8 })
  local kept = info.kept:totable()
  t.is(info.load:totable()[1], 2, "all tokens on one expert: exactly Cap = 2 kept")
  t.ok(kept[1][1] and kept[2][1] and not kept[3][1], "choice priority keeps the first tokens")
  local zero_rows = true
  local yt = y:totable()
  for tt = 3, T do for c = 1, d do zero_rows = zero_rows and yt[tt][c] == 0 end end
  t.ok(zero_rows, "dropped assignments add nothing to y")
  y:sum():backward()
  local gx, zero_grad = x.grad:totable(), true
  for tt = 3, T do for c = 1, d do zero_grad = zero_grad and gx[tt][c] == 0 end end
  t.ok(zero_grad, "dropped tokens get no gradient (no aux loss)")
  -- gate priority keeps the largest gates
  local y2, info2 = glia.moe(x:detach(), wr, w1, b1, w2, b2,
                             { k = 1, capacity_factor = 0.8, priority = "gate" })
  local g, k2 = info2.gates:totable(), info2.kept:totable()
  local order = {}
  for tt = 1, T do order[tt] = tt end
  table.sort(order, function(a, b) return g[a][1] > g[b][1] or (g[a][1] == g[b][1] and a < b) end)
  t.ok(k2[order[1]][1] and k2[order[2]][1] and not k2[order[3]][1],
       "gate priority keeps the assignments with the largest gates")
  -- k = 2 choice-major: second choices come after every first choice
  local _, info3 = glia.moe(x:detach(), glia.randn(E, d), w1, b1, w2, b2, { k = 2, capacity_factor = 1.0 })
  local cap, load = math.ceil(1.0 * 2 * T / E), info3.load:totable()
  local within = true
  for e = 1, E do within = within and load[e] <= cap end
  t.ok(within, "per-expert kept count <= Cap")
  local idx3, kept3, fill, order_ok = info3.idx:totable(), info3.kept:totable(), {}, true
  for j = 1, 2 do
    for tt = 1, T do
      local e = idx3[tt][j]
      fill[e] = (fill[e] or 0) + 1
      order_ok = order_ok and kept3[tt][j] == (fill[e] <= cap)
    end
  end
  t.ok(order_ok, "k = 2: kept exactly as choice-major token order fills each expert")
  t.ok(y2 ~= nil, "gate priority runs")
end

-- ====================================================== aux losses

do
  local E = 4
  local x = glia.eye(E)
  local w1, b1, w2, b2 = weights(E, E, 3, "gelu")
  -- uniform: token t prefers expert t with the same margin
  local wr = glia.eye(E) * 2
  local _, info = glia.moe(x, wr, w1, b1, w2, b2, { k = 1, aux_alpha = 0.01 })
  t.ok(abs(info.balance:item() - 0.01) <= 1e-8, "uniform routing: Switch loss = alpha")
  local _, info2 = glia.moe(x, wr, w1, b1, w2, b2, { k = 1, router = "sigmoid", seq_alpha = 0.01 })
  t.ok(abs(info2.seq:item() - 0.01) <= 1e-8, "uniform routing: DeepSeek sequence loss = alpha")
  -- collapsed: every token on expert 1 with probability 1
  local wc = glia.full({ E, E }, -50)
  wc[1]:fill_(50)
  local _, info3 = glia.moe(x, wc, w1, b1, w2, b2, { k = 1, aux_alpha = 0.01 })
  t.ok(abs(info3.balance:item() - 0.01 * E) <= 1e-8, "collapsed routing: Switch loss = alpha E")
  -- z-loss
  local _, info4 = glia.moe(x, glia.zeros(E, E), w1, b1, w2, b2, { k = 1, z_alpha = 1 })
  t.ok(abs(info4.z:item() - math.log(E) ^ 2) <= 1e-5, "z-loss of zero logits is log(E)^2")
  -- seq_len: two sequences
  local x2 = glia.cat({ x, x }, 1)
  local _, info5 = glia.moe(x2, wr, w1, b1, w2, b2, { k = 1, router = "sigmoid", seq_alpha = 0.01, seq_len = E })
  t.ok(abs(info5.seq:item() - 0.01) <= 1e-8, "two uniform sequences: sequence loss = alpha")
  -- sigmoid router, every logit <= -88: each sigmoid underflows to 0, and
  -- the losses once came out NaN (0 / 0); now the normalized scores are
  -- those exp(z) / sum exp(z) tends to, the softmax of z
  local T6 = 6
  local x6 = glia.rand(T6, E) + 1
  local wr6 = (glia.full({ E, E }, -40) + glia.randn(E, E)):requires_grad()
  local _, info6 = glia.moe(x6, wr6, w1, b1, w2, b2, { k = 2, router = "sigmoid", aux_alpha = 0.01, seq_alpha = 0.01 })
  local z6 = glia.no_grad(function() return glia.linear(x6, wr6) end)
  t.ok(z6:max():item() <= -88, "the test's logits are all below -88")
  local P6 = glia.softmax(z6, 2)
  local f6 = info6.counts:to("f32") / (2 * T6)
  local want_bal = (P6:mean(1) * f6):sum():item() * 0.01 * E
  local want_seq = (P6:mean(1) * f6 * E):sum():item() * 0.01
  t.ok(abs(info6.balance:item() - want_bal) <= 1e-6 and abs(info6.seq:item() - want_seq) <= 1e-6,
       ("sigmoid router, underflowed scores: Switch and sequence losses %g %g are finite (want %g %g)")
         :format(info6.balance:item(), info6.seq:item(), want_bal, want_seq))
  info6.aux:backward()
  local g6 = wr6.grad:abs():max():item()
  t.ok(g6 == g6 and g6 < math.huge, "and their router gradient is finite")
  -- and for ordinary logits the same value as sigmoid / its row sum
  local x7, wr7 = glia.randn(T6, E), glia.randn(E, E)
  local _, info7 = glia.moe(x7, wr7, w1, b1, w2, b2, { k = 2, router = "sigmoid", aux_alpha = 0.01 })
  local s7 = glia.sigmoid(glia.linear(x7, wr7))
  local want7 = ((s7 / s7:sum(2, true)):mean(1) * info7.counts:to("f32") / (2 * T6)):sum():item() * 0.01 * E
  t.ok(abs(info7.balance:item() - want7) <= 1e-7, "sigmoid router, ordinary logits: the Switch loss of sigmoid / row sum")
end

-- ================================================ DeepSeek specifics

do
  local T, d, E, F = 40, 8, 8, 4
  local x, wr = glia.randn(T, d), glia.randn(E, d)
  local w1, b1, w2, b2 = weights(E, d, F, "silu")
  local bias = glia.randn(E) * 0.5
  local o = { k = 3, router = "sigmoid", bias = bias, route_scale = 2.5, groups = 4, topk_groups = 2 }
  local gates, idx = glia.moe_route(glia.linear(x, wr), o)
  local sums_ok = true
  for _, row in ipairs(gates:totable()) do
    local s = 0
    for _, g in ipairs(row) do s = s + g end
    sums_ok = sums_ok and abs(s - 2.5) <= 1e-5
  end
  t.ok(sums_ok, "gates sum to route_scale for every token")
  local groups_ok = true
  for _, row in ipairs(idx:totable()) do
    local seen, n = {}, 0
    for _, e in ipairs(row) do
      local g = math.floor((e - 1) / 2)
      if not seen[g] then seen[g], n = true, n + 1 end
    end
    groups_ok = groups_ok and n <= 2
  end
  t.ok(groups_ok, "every token's experts lie in at most topk_groups groups")
  -- the bias changes which experts, not how much: gates are the unbiased
  -- scores normalized over the chosen set
  local z = glia.linear(x, wr)
  local s = glia.sigmoid(z):totable()
  local o2 = { k = 2, router = "sigmoid", route_scale = 2.5 }
  local g0, i0 = glia.moe_route(z, o2)
  o2.bias = glia.zeros(E)
  o2.bias[3] = 10 -- expert 3 always chosen
  local g1, i1 = glia.moe_route(z, o2)
  local all3, formula = true, true
  local it, gt = i1:totable(), g1:totable()
  for tt = 1, T do
    all3 = all3 and (it[tt][1] == 3 or it[tt][2] == 3)
    local a, b = s[tt][it[tt][1]], s[tt][it[tt][2]]
    formula = formula and abs(gt[tt][1] - 2.5 * a / (a + b)) <= 1e-6 and
              abs(gt[tt][2] - 2.5 * b / (a + b)) <= 1e-6
  end
  t.ok(all3 and not u.identical(i0, i1), "a large bias changes which experts are chosen")
  t.ok(formula, "gate values are the unbiased scores, whatever the bias")
  o2.bias = glia.full({ E }, 0.25) -- the same shift for all: same choice, same gates
  local g2, i2 = glia.moe_route(z, o2)
  t.ok(u.identical(i2, i0) and u.identical(g2, g0), "a uniform bias changes neither choice nor gates")
  -- b gets no gradient
  local b = glia.zeros(E):requires_grad()
  local zz = z:detach():requires_grad()
  local g3 = glia.moe_route(zz, { k = 2, router = "sigmoid", bias = b })
  g3:sum():backward()
  t.ok(b.grad == nil and zz.grad ~= nil, "the bias gets no gradient, the logits do")
end

-- ====================================================== determinism

do
  local T, d, E, F = 300, 32, 8, 48
  local x, wr = glia.randn(T, d), glia.randn(E, d)
  local w1, b1, w2, b2 = weights(E, d, F, "gelu")
  local function run()
    local xx = x:clone():requires_grad()
    for _, w in ipairs { wr, w1, b1, w2, b2 } do w:zero_grad() w:requires_grad() end
    local y, info = glia.moe(xx, wr, w1, b1, w2, b2, { k = 2, aux_alpha = 0.01 })
    ;(y * y):sum():add(info.aux):backward()
    return { y:totable(), xx.grad:totable(), wr.grad:totable(), w1.grad:totable(),
             b1.grad:totable(), w2.grad:totable(), b2.grad:totable() }
  end
  local r = u.by_threads(run, { 1, 2, 3 })
  t.ok(u.identical(r[1], r[2]) and u.identical(r[1], r[3]),
       "outputs and every gradient are bitwise the same on 1, 2 and 3 threads")
  t.ok(u.identical(run(), run()), "and the same run to run")
end

-- =============================================== dispatch bookkeeping

do
  local T, E, k = 50, 6, 2
  local _, idx, counts, kept = glia.moe_route(glia.randn(T, E), { k = k, capacity_factor = 0.8 })
  local off, tok, slot, inv = glia.moe_dispatch(idx, E, kept)
  local A = tok:numel()
  local kt, it, ot, iv = kept:totable(), idx:totable(), off:totable(), inv:totable()
  local nkept = 0
  for tt = 1, T do for j = 1, k do if kt[tt][j] then nkept = nkept + 1 end end end
  t.is(A, nkept, "A = the number of kept assignments")
  t.is(ot[E + 1] - ot[1], A, "offsets span A rows")
  local sumc = 0
  for _, c in ipairs(counts:totable()) do sumc = sumc + c end
  t.is(sumc, T * k, "counts (before dropping) sum to T k")
  local seen, bij = {}, true
  local tk, sl = tok:totable(), slot:totable()
  for tt = 1, T do
    for j = 1, k do
      local p = iv[tt][j]
      if kt[tt][j] then
        bij = bij and p >= 1 and p <= A and not seen[p] and tk[p] == tt and sl[p] == j and
              p >= ot[it[tt][j]] and p < ot[it[tt][j] + 1]
        seen[p] = true
      else
        bij = bij and p == 0
      end
    end
  end
  t.ok(bij, "inv is a bijection between kept assignments and rows, in their expert's range")
end

-- ===================================================== decoding path

do
  local d, E, F = 16, 8, 24
  local wr = glia.randn(E, d)
  local w1, b1, w2, b2 = weights(E, d, F, "gelu_tanh")
  for _, T in ipairs { 1, 3 } do
    local x = glia.randn(T, d)
    local yd = glia.no_grad(function()
      return glia.moe(x, wr, w1, b1, w2, b2, { k = 2, activation = "gelu_tanh" })
    end)
    local yg = glia.moe(x:clone():requires_grad(), wr, w1, b1, w2, b2, { k = 2, activation = "gelu_tanh" })
    t.ok(relerr(yd, yg) <= 1e-6, ("decoding path (T = %d, row kernels) equals the grouped GEMM path"):format(T))
  end
  -- only the chosen experts' weights are read: NaN in every other expert
  -- changes nothing
  local x = glia.randn(2, d)
  local y0, info = glia.no_grad(function() return glia.moe(x, wr, w1, b1, w2, b2, { k = 2 }) end)
  local chosen = {}
  for _, row in ipairs(info.idx:totable()) do for _, e in ipairs(row) do chosen[e] = true end end
  local n1, n2 = w1:clone(), w2:clone()
  for e = 1, E do
    if not chosen[e] then n1[e]:fill_(0 / 0); n2[e]:fill_(0 / 0) end
  end
  local y1 = glia.no_grad(function() return glia.moe(x, wr, n1, b1, n2, b2, { k = 2 }) end)
  t.ok(u.identical(y0, y1), "decoding reads only the chosen experts' weights (NaN elsewhere changes nothing)")
end

-- ============================================ fused decoding entry

-- glia.moe_decode runs the very kernels glia.moe runs for T <= 4 without
-- autograd (glia.linear's logits, the same routing, the row kernels, the
-- same slot sums), so its output is the same bits, not merely close.
do
  local d, E, F = 16, 8, 12
  local wr = glia.randn(E, d)
  for _, act in ipairs { "gelu", "gelu_tanh", "relu", "silu", "swiglu" } do
    local w1, b1, w2, b2 = weights(E, d, F, act)
    for _, r in ipairs(ROUTERS) do
      if not r.groups and not r.capacity_factor then
        local o = opts_of(r, E)
        o.activation = act
        local same = true
        for _, T in ipairs { 1, 4 } do
          local x = glia.randn(T, d)
          glia.no_grad(function()
            local yg, info = glia.moe(x, wr, w1, b1, w2, b2, o)
            local yf, idx = glia.moe_decode(x, wr, w1, b1, w2, b2, o.k, o.router, o.normalize,
                                            o.bias, o.route_scale, act)
            same = same and u.identical(yf, yg) and u.identical(idx, info.idx)
          end)
        end
        t.ok(same, ("moe_decode is glia.moe bit for bit (T 1 and 4): %s, %s"):format(r.name, act))
      end
    end
  end
  -- no biases
  local w1, _, w2 = weights(E, d, F, "relu")
  local x = glia.randn(2, d)
  glia.no_grad(function()
    local yg = glia.moe(x, wr, w1, nil, w2, nil, { k = 2, activation = "relu" })
    local yf = glia.moe_decode(x, wr, w1, nil, w2, nil, 2, nil, nil, nil, nil, "relu")
    t.ok(u.identical(yf, yg), "moe_decode without expert biases is glia.moe bit for bit")
  end)
  -- only the chosen experts' weights are read
  local b1, b2
  w1, b1, w2, b2 = weights(E, d, F, "gelu")
  local y0, idx = glia.no_grad(function() return glia.moe_decode(x, wr, w1, b1, w2, b2, 2) end)
  local chosen = {}
  for _, row in ipairs(idx:totable()) do for _, e in ipairs(row) do chosen[e] = true end end
  local n1, n2, nb1, nb2 = w1:clone(), w2:clone(), b1:clone(), b2:clone()
  for e = 1, E do
    if not chosen[e] then n1[e]:fill_(0 / 0); n2[e]:fill_(0 / 0); nb1[e]:fill_(0 / 0); nb2[e]:fill_(0 / 0) end
  end
  local y1 = glia.no_grad(function() return glia.moe_decode(x, wr, n1, nb1, n2, nb2, 2) end)
  t.ok(u.identical(y0, y1), "moe_decode reads only the chosen experts' weights (NaN elsewhere changes nothing)")
  -- refused: more than 4 tokens, autograd, a wrong bias
  t.error_like(function() glia.no_grad(function() glia.moe_decode(glia.randn(5, d), wr, w1, b1, w2, b2, 2) end) end,
               "glia.moe_decode: want x {T,d} with T <= 4, wr {E,d}, w1 {E,F,d}; got x {5,16}",
               "moe_decode refuses 5 tokens (glia.moe's business)")
  t.error_like(function() glia.no_grad(function() glia.moe_decode(x:to("f64"), wr, w1, b1, w2, b2, 2) end) end,
               "glia.moe_decode: x must be f32", "moe_decode refuses an f64 x")
  local wg = w1:clone():requires_grad()
  t.error_like(function() glia.moe_decode(x, wr, wg, b1, w2, b2, 2) end,
               "glia.moe_decode: inference only, but grad is enabled",
               "moe_decode refuses to run where autograd would record")
  t.error_like(function() glia.no_grad(function() glia.moe_decode(x, wr, w1, b1, w2, b2, 2, nil, nil, glia.zeros(3)) end) end,
               "glia.moe_decode: bias must be {8} %(one per expert%), got {3}", "moe_decode refuses a bias of the wrong size")
end

-- nn.MoE takes glia.moe_decode for a step of <= 4 tokens without autograd:
-- the same bits and the same m:load() as glia.moe's path
do
  local nn = require "glia.nn"
  for _, cfg in ipairs {
    { k = 2, activation = "swiglu", shared = 1, iterations = 2 },
    { k = 2, router = "sigmoid", activation = "gelu_tanh", bias = false },
    { k = 1, activation = "silu", aux_alpha = 0.01 },
  } do
    glia.manual_seed(3)
    local m = nn.MoE(16, 12, 8, cfg)
    m:eval()
    local x = glia.randn(1, 3, 16)
    local general = nn.MoE(16, 12, 8, cfg)
    general:load_state_dict(m:state_dict())
    general:eval()
    general.decodes = function() return false end
    glia.no_grad(function()
      local yf, yg = m(x), general(x)
      t.ok(m:decodes(x:reshape(-1, 16)) and u.identical(yf, yg) and u.identical(m:load(), general:load()),
           ("nn.MoE's decoding step is glia.moe's, bit for bit, load too (%s, shared %s, C %s)")
             :format(cfg.activation, cfg.shared or 0, cfg.iterations or 1))
    end)
  end
end

-- glia.decoder_moe, the fused decoding step of a block's MoE sub-layer:
-- x + MoE(ln2(x)) bit for bit as nn.MoE computes it from Lua, for every
-- router kind and activation, with the selection bias, route_scale,
-- normalize on and off, shared experts and no expert biases
do
  local nn = require "glia.nn"
  local d = 20 -- not a multiple of the vector width: the dot products' tails too
  for _, cfg in ipairs {
    { k = 2 },
    { k = 2, router = "sigmoid", activation = "gelu_tanh", bias_gamma = 0.01, route_scale = 2.5 },
    { k = 3, activation = "swiglu", shared = 1, normalize = false },
    { k = 1, activation = "relu", shared = 2, bias = false },
    { k = 2, router = "sigmoid", activation = "silu", normalize = false, route_scale = 0.5, bias_gamma = 0.1 },
    { k = 8, activation = "gelu", shared = 1, route_scale = 1.5 },
  } do
    glia.manual_seed(5)
    local m, ln = nn.MoE(d, 12, 8, cfg), nn.LayerNorm(d)
    m:eval()
    glia.no_grad(function()
      ln.weight:copy_(glia.rand(d) + 0.5)
      ln.bias:copy_(glia.rand(d) - 0.5)
      if m.bias_gamma ~= 0 then m.expert_bias:copy_(glia.randn(1, 8) * 0.3) end
    end)
    local what = ("router %s, %s, k %d, shared %d, normalize %s, route_scale %s, bias_gamma %s, expert biases %s")
      :format(cfg.router or "softmax", m.activation, cfg.k, m.n_shared, tostring(cfg.normalize),
              tostring(cfg.route_scale), tostring(cfg.bias_gamma), tostring(cfg.bias ~= false))
    local same, loads = true, true
    for _, shape in ipairs { { 1, 1, d }, { 1, d }, { d } } do
      local x = glia.randn(shape) * 2
      glia.no_grad(function()
        local want = x + m(ln(x))
        local want_load = m:load()
        local got = m:decode_residual(x, ln)
        same = same and got ~= nil and u.identical(got, want)
        loads = loads and u.identical(m:load(), want_load)
      end)
    end
    t.ok(same, "decoder_moe is x + MoE(ln2(x)), bit for bit: " .. what)
    t.ok(loads, "and m:load() is the module path's: " .. what)
  end
end

-- nn.MoE:decode_residual declines what the fused step does not compute
do
  local nn = require "glia.nn"
  local d = 8
  local ln, x = nn.LayerNorm(d), glia.randn(1, 1, d)
  local function declines(cfg, x_, train)
    local m = nn.MoE(d, 6, 4, cfg)
    if not train then m:eval() end
    return glia.no_grad(function() return m:decode_residual(x_ or x, ln) == nil end)
  end
  t.ok(declines { k = 2, iterations = 2 }, "declines: Chain-of-Experts iterations")
  t.ok(declines { k = 2, outer_residual = true }, "declines: the outer residual")
  t.ok(declines { k = 2, capacity_factor = 1 }, "declines: a capacity")
  t.ok(declines { k = 2, groups = 2, topk_groups = 1 }, "declines: group-limited routing")
  t.ok(declines({ k = 2 }, glia.randn(1, 2, d)), "declines: more than one row")
  t.ok(declines({ k = 2, aux_alpha = 0.01 }, nil, true), "declines: training with an auxiliary loss")
  local m = nn.MoE(d, 6, 4, { k = 2 })
  t.ok(m:decode_residual(x, ln) == nil, "declines: autograd on")
  m:eval()
  glia.no_grad(function()
    t.ok(m:decode_residual(x, nn.LayerNorm(d, { bias = false })) == nil, "declines: a LayerNorm without bias")
    t.ok(m:decode_residual(x, nn.RMSNorm(d)) == nil, "declines: another norm")
    t.ok(m:decode_residual(x, ln) ~= nil, "and runs the plain case")
  end)
end

-- decoder_moe at a width where its expert products split over the pool:
-- the module path's bits at 1 and 2 threads; and its bad input
do
  local nn = require "glia.nn"
  local d = 130
  glia.manual_seed(6)
  local m, ln = nn.MoE(d, 600, 4, { k = 2, shared = 1, activation = "gelu_tanh" }), nn.LayerNorm(d)
  m:eval()
  local x = glia.randn(1, 1, d)
  local r = u.by_threads(function()
    return glia.no_grad(function() return { m:decode_residual(x, ln), x + m(ln(x)) } end)
  end)
  t.ok(u.identical(r[1][1], r[1][2]) and u.identical(r[2][1], r[2][2]) and u.identical(r[1][1], r[2][1]),
       "decoder_moe with its expert products split over 2 threads: the module path's bits, as at 1 thread")
  local nw, ex = { ln.weight, ln.bias }, { m.routers[1].weight, m.w1, m.b1, m.w2, m.b2 }
  glia.no_grad(function()
    t.error_like(function() glia.decoder_moe(x, nw, { m.w1, m.w2 }, {}, 2) end,
                 "glia.decoder_moe: want norm {weight, bias}, experts {wr, w1, w2} or {wr, w1, b1, w2, b2}, shared {} or {fc.weight, fc.bias, proj.weight, proj.bias}; got lists of 2, 2 and 0 tensors",
                 "decoder_moe names the lists it wants")
    t.error_like(function() glia.decoder_moe(glia.randn(2, d), nw, ex, {}, 2) end,
                 "glia.decoder_moe: x must be one row {..., d}, got {2,130}", "decoder_moe refuses two rows")
    t.error_like(function() glia.decoder_moe(x, nw, { m.routers[1].weight, m.w1, m.b1, m.w2:narrow(3, 1, 5), m.b2 }, {}, 2) end,
                 "glia.decoder_moe: w2 must be {4,130,600}, got {4,130,5}", "decoder_moe checks w2's shape")
    t.error_like(function() glia.decoder_moe(x, nw, ex, { m.shared_fc.weight, m.shared_fc.bias, m.shared_fc.weight, m.shared_proj.bias }, 2) end,
                 "glia.decoder_moe: shared proj.weight must be {130,600}, got {600,130}", "decoder_moe checks the shared MLP")
    t.error_like(function() glia.decoder_moe(x, nw, ex, {}, 5) end,
                 "glia.decoder_moe: k must be in 1..4", "decoder_moe refuses k past the experts")
    t.error_like(function() glia.decoder_moe(x, nw, ex, {}, 2, nil, nil, glia.zeros(3)) end,
                 "glia.decoder_moe: bias must be {4} %(one per expert%), got {3}", "decoder_moe checks the selection bias")
    t.error_like(function() glia.decoder_moe(x, nw, ex, {}, 2, nil, nil, nil, nil, "tanh") end,
                 "glia.decoder_moe: unknown activation 'tanh'", "decoder_moe names an unknown activation")
  end)
  t.error_like(function() glia.decoder_moe(x:clone():requires_grad(), nw, ex, {}, 2) end,
               "glia.decoder_moe: inference only, but an input requires grad", "decoder_moe refuses to run under autograd")
end

-- ==================================================== bias controller

do
  -- a skewed router: fixed logits offsets favour the first experts; each
  -- step routes a fresh batch and moves the bias by gamma sign(mean - c)
  local T, E, gamma = 512, 8, 1e-3
  local skew = glia.tensor { 2.0, 1.5, 1.0, 0.5, 0, 0, -0.5, -1.0 }
  local bias = glia.zeros(E)
  local function ratio(c)
    local m, s = 0, 0
    for _, v in ipairs(c) do m = max(m, v); s = s + v end
    return m / (s / E)
  end
  local first, last, steps, signs_ok = 0, 0, 3000, true
  for step = 1, steps do
    local z = glia.randn(T, E) + skew
    local _, _, counts = glia.moe_route(z, { k = 2, router = "sigmoid", bias = bias })
    local c, b0 = counts:totable(), bias:totable()
    glia.moe_bias_update(bias, counts, gamma)
    local b1, mean = bias:totable(), 2 * T / E
    for e = 1, E do
      local want = c[e] > mean and -gamma or c[e] < mean and gamma or 0
      signs_ok = signs_ok and abs(b1[e] - b0[e] - want) <= 1e-6
    end
    if step <= 100 then first = first + ratio(c) / 100 end
    if step > steps - 100 then last = last + ratio(c) / 100 end
  end
  t.ok(signs_ok, "every step: overloaded experts' bias falls by gamma, underloaded rise")
  t.ok(first > 2, ("skewed start: max/mean load %.2f"):format(first))
  t.ok(last < 1.2, ("after %d updates max/mean load is %.2f (from %.2f)"):format(steps, last, first))
end

-- ================================================ strided inputs

do
  local T, d, E, F = 12, 6, 4, 5
  local xt = glia.randn(d, T):t() -- transposed view
  local wr = glia.randn(E, d + 2):narrow(2, 2, d) -- narrowed
  local w1 = glia.randn(E, d, F):transpose(2, 3) -- {E,F,d} strided
  local b1, w2, b2 = glia.randn(E, F), glia.randn(E, d, F), glia.randn(E, d)
  local y = glia.moe(xt, wr, w1, b1, w2, b2, { k = 2 })
  local yc = glia.moe(xt:contiguous(), wr:contiguous(), w1:contiguous(), b1, w2, b2, { k = 2 })
  t.ok(u.identical(y, yc), "transposed and narrowed inputs give the contiguous result")
  local x = xt:contiguous()
  for _ = 1, 50 do -- a well-separated routing, as for the checks above
    local _, _, _, margin = ref_route(glia.linear(x, wr):totable(), { k = 2 })
    if margin >= 1e-3 then break end
    x = glia.randn(T, d)
  end
  u.gradcheck_f64(function(a, b, c1) return glia.moe(a, b, c1, b1, w2, b2, { k = 2 }) end,
                  function(a, b, c1) return ref_moe { k = 2 } (a, b, c1, b1:totable(), w2:totable(), b2:totable()) end,
                  { x, wr, w1 }, "f64 gradients through strided wr and w1")
end

-- ============================================================ nn.MoE

local nn = require "glia.nn"

do
  local d, F, E, T = 8, 6, 4, 10
  local m = nn.MoE(d, F, E, { k = 2, aux_alpha = 0.01 })
  local x = glia.randn(2, 5, d)
  local y = m(x)
  t.ok(u.same_shape(y, { 2, 5, d }), "nn.MoE keeps the input's shape")
  local ref, info = glia.moe(x:reshape(T, d), m.routers[1].weight, m.w1, m.b1, m.w2, m.b2,
                             { k = 2, aux_alpha = 0.01 })
  t.ok(u.identical(y:reshape(T, d), ref), "nn.MoE is glia.moe over its parameters")
  t.ok(u.identical(m.aux_loss, info.aux) and u.identical(m:load(), info.load),
       "m.aux_loss and m:load() are the last forward's")
  local names = {}
  for _, e in ipairs(m:named_parameters()) do names[#names + 1] = e[1] end
  t.is(table.concat(names, " "), "w1 b1 w2 b2 routers.1.weight", "parameters by name")
  t.ok(nn.aux_loss(nn.Sequential(m)) ~= nil, "nn.aux_loss finds the MoE's loss in a model")
  -- shared experts: plain MLP added on every token
  local ms = nn.MoE(d, F, E, { k = 1, shared = 2, activation = "swiglu" })
  local xs = glia.randn(T, d)
  local base = glia.moe(xs, ms.routers[1].weight, ms.w1, ms.b1, ms.w2, ms.b2, { k = 1, activation = "swiglu" })
  local u1 = ms.shared_fc(xs)
  local sh = ms.shared_proj(glia.silu(u1:narrow(2, 1, 2 * F)) * u1:narrow(2, 2 * F + 1, 2 * F))
  t.ok(relerr(ms(xs), base + sh) <= 1e-6, "shared experts add an always-on swiglu MLP of width shared * hidden")
  -- m:load() through a state dict round trip of the bias buffer
  local mb = nn.MoE(d, F, E, { k = 2, router = "sigmoid", bias_gamma = 0.01 })
  mb(glia.randn(T, d)); mb(glia.randn(T, d))
  local tally = mb._tally[1]:totable()
  local n = nn.schedule_step(mb)
  local b, mean, ok = mb.expert_bias[1]:totable(), 2 * 2 * T / E, true
  for e = 1, E do
    local want = tally[e] > mean and -0.01 or tally[e] < mean and 0.01 or 0
    ok = ok and abs(b[e] - want) <= 1e-7
  end
  t.ok(n == 1 and ok, "nn.schedule_step applies the bias update with the counts of every forward since the last step")
  t.ok(mb._tally == nil, "and starts a new tally")
  local mb2 = nn.MoE(d, F, E, { k = 2, router = "sigmoid", bias_gamma = 0.01 })
  mb2:load_state_dict(mb:state_dict())
  t.ok(u.identical(mb2.expert_bias, mb.expert_bias), "the balancing bias is saved and loaded with the model")
  mb:eval()
  mb(glia.randn(T, d))
  t.ok(mb._tally == nil, "eval forwards do not count toward the bias update")
  t.error_like(function() nn.MoE(d, F, E, { k = 5 }) end, "nn.MoE: k must be an integer in 1..4", "nn.MoE: k > E is refused")
  t.error_like(function() nn.MoE(d, F, E, { activation = "tanh" }) end, "unknown activation 'tanh'", "nn.MoE: an unknown activation is refused")
  t.error_like(function() m(glia.randn(3, d + 1)) end, "nn.MoE: expected input {..., 8}, got {3,9}", "nn.MoE: a wrong width is refused")
end

-- ===================================================== Chain-of-Experts

do
  local d, F, E, T = 6, 5, 4, 8
  local x = glia.randn(T, d)
  -- C = 1 is the plain MoE, outputs and gradients
  local c1 = nn.MoE(d, F, E, { k = 2, iterations = 1, shared = 1 })
  -- y = f(x) and the gradients of sum(y^2) for x and m's parameters
  local function grads(m, f)
    m:zero_grad()
    local xx = x:clone():requires_grad()
    local y = f(xx)
    ;(y * y):sum():backward()
    local g = { y:totable(), xx.grad:totable() }
    for _, p in ipairs(m:parameters()) do g[#g + 1] = p.grad:totable() end
    return g
  end
  local g1 = grads(c1, c1)
  local gp = grads(c1, function(xx)
    local y = glia.moe(xx, c1.routers[1].weight, c1.w1, c1.b1, c1.w2, c1.b2, { k = 2 })
    return y + c1:shared_forward(xx)
  end)
  t.ok(u.identical(g1, gp), "CoE with C = 1 equals the plain MoE layer, outputs and gradients")
  -- C = 2 with identical routers: the same MoE applied twice, with the
  -- inner residual; expert gradients are the sum over the iterations
  local c2 = nn.MoE(d, F, E, { k = 2, iterations = 2 })
  glia.no_grad(function() c2.routers[2].weight:copy_(c2.routers[1].weight) end)
  local g2 = grads(c2, c2)
  c2:zero_grad()
  local xr = x:clone():requires_grad()
  local wr = c2.routers[1].weight
  local function once(h) return glia.moe(h, wr, c2.w1, c2.b1, c2.w2, c2.b2, { k = 2 }) end
  local x1 = xr + once(xr)
  local y2 = x1 + once(x1) - xr
  ;(y2 * y2):sum():backward()
  t.ok(relerr(g2[1], y2:totable()) <= 1e-6, "CoE C = 2 with identical routers equals applying the MoE twice")
  t.ok(relerr(g2[2], xr.grad:totable()) <= 1e-5, "and its input gradient matches")
  t.ok(relerr(g2[3], c2.w1.grad:totable()) <= 1e-5 and relerr(g2[5], c2.w2.grad:totable()) <= 1e-5,
       "expert gradients are the sum of both iterations' contributions")
  local r1, r2 = g2[7], g2[8] -- the two routers' gradients
  t.ok(relerr({ r1, r2 }, { wr.grad:totable(), wr.grad:totable() }) > 0 and
       relerr(glia.tensor(r1) + glia.tensor(r2), wr.grad) <= 1e-5,
       "each router gets only its own iteration's gradient (together: the shared router's)")
end

-- ============================================================ MoE GPT

do
  local GPT = require "models.gpt"
  local cfg = { vocab_size = 11, d_model = 16, n_layers = 3, n_heads = 2, ctx = 8,
                moe = { experts = 4, k = 2, every = 2, aux_alpha = 0.01, bias_gamma = 1e-3 } }
  local m = GPT(cfg)
  t.ok(m.blocks[2].mlp and not m.blocks[1].mlp and not m.blocks[3].mlp,
       "moe.every = 2 replaces the MLP of every second block")
  t.is(m.blocks[2].mlp.hidden, 32, "the default expert width 4 d / k keeps the dense active size")
  local x = glia.randint(1, 12, { 2, 8 })
  local ce = glia.cross_entropy(m(x), x)
  local l_train = m:loss(x, x)
  t.ok(abs(l_train:item() - ce:item() - m.blocks[2].mlp.aux_loss:item()) <= 1e-5,
       "in training, model:loss adds the auxiliary loss")
  m:eval()
  t.ok(abs(m:loss(x, x):item() - ce:item()) <= 1e-6, "in eval, model:loss is the cross entropy alone")
  m:train()
  local m2 = GPT(cfg)
  m.blocks[2].mlp.expert_bias:fill_(0.5)
  m2:load_state_dict(m:state_dict())
  t.ok(u.identical(m2(x), m(x)), "a state dict round trip (with the balancing bias) gives the same logits")
  local out = m:generate(x:narrow(2, 1, 2), 10, { temperature = 0 })
  t.ok(u.same_shape(out, { 2, 12 }), "an MoE GPT generates through its KV caches")
  -- the cached (one position at a time) path gives the full forward's logits
  local full = glia.no_grad(function() return m:eval()(x) end)
  local caches, steps = m:new_caches(2), {}
  glia.no_grad(function()
    for p = 1, 8 do steps[p] = m(x:narrow(2, p, 1), caches, p - 1) end
  end)
  t.ok(relerr(glia.cat(steps, 2), full) <= 1e-5, "decoding position by position (MoE decode path) matches the full forward")
  m:train()

  -- examples: train, resume bit-identically, sample
  local bin = os.getenv("GLIA_BIN") or "bin/glia"
  local tmp = os.tmpname()
  os.remove(tmp)
  local lines = {}
  for i = 1, 400 do lines[i] = ("in the beginning %d was the word"):format(i % 7) end
  local f = io.open(tmp .. "-text.txt", "wb")
  f:write(table.concat(lines, "\n"))
  f:close()
  local function run(args) return (u.sh(bin .. " " .. args .. " 2>&1")) end
  local common = "--text " .. tmp .. "-text.txt --d 16 --layers 2 --heads 2 --ctx 16 --batch 4 " ..
                 "--warmup 3 --eval-every 5 --sample-len 8 --seed 3 --experts 4 --top-k 2 " ..
                 "--bias-gamma 0.001 --shared 1"
  local A, B = tmp .. "-A", tmp .. "-B"
  local outA = run("examples/train_gpt.lua " .. common .. " --steps 10 --out " .. A)
  run("examples/train_gpt.lua " .. common .. " --steps 5 --decay-steps 10 --out " .. B)
  run("examples/train_gpt.lua --resume " .. B .. " --steps 10")
  t.ok(outA:find("expert load: block 1 %[%d+ %d+ %d+ %d+%] max/mean %d"), "train_gpt.lua --experts logs the per-expert load")
  local checkpoint = require "glia.checkpoint"
  local ta, tb = glia.load(checkpoint.path(A)), glia.load(checkpoint.path(B))
  local equal, n = true, 0
  for k, v in pairs(ta) do
    n = n + 1
    equal = equal and tb[k] ~= nil and u.identical(v, tb[k])
  end
  t.ok(n > 20 and equal and ta["model.blocks.1.mlp.expert_bias"] ~= nil,
       "an MoE run resumed from its checkpoint ends bit-identical to the straight run (bias included)")
  local sample = run("examples/sample.lua " .. A .. " --length 20 --prompt 'in the'")
  t.ok(sample:find("^in the"), "sample.lua samples from an MoE checkpoint")
  -- the study's pipeline (--quick: a tiny model, a few steps)
  local study = run("examples/moe_study.lua --quick --runs dense,moe_bias,coe --out " .. tmp .. "-study")
  local table_md = io.open(tmp .. "-study/table.md") and u.slurp(tmp .. "-study/table.md") or ""
  t.ok(table_md:find("| MoE 8x top%-2, bias controller | %d+ |") and table_md:find("| CoE 2 x top%-1"),
       "moe_study.lua writes its table")
  t.ok(u.slurp(tmp .. "-study/load.svg"):find("<svg") and u.slurp(tmp .. "-study/loss.svg"):find("<svg"),
       "moe_study.lua writes the loss and load plots")
  if not study:find("wrote") then t.diag(study) end
  os.execute("rm -rf '" .. tmp .. "'-*")
end

-- Chain-of-Experts inside models/gpt.lua: with chain_start "residual" the
-- block hands its residual stream to the MoE, so the block computes the
-- chain x_1 = h + MoE_1(ln2(h)), x_2 = x_1 + MoE_2(x_1) (h the stream
-- after attention), here against that written out with glia.moe
do
  local GPT = require "models.gpt"
  for _, outer in ipairs { false, true } do
    glia.manual_seed(12)
    local m = GPT { vocab_size = 11, d_model = 8, n_layers = 1, n_heads = 2, ctx = 6,
                    moe = { experts = 4, k = 2, hidden = 6, iterations = 2, chain_start = "residual",
                            outer_residual = outer, shared = 1 } }
    m:eval()
    local idx = glia.randint(1, 12, { 2, 5 })
    local b, moe = m.blocks[1], m.blocks[1].mlp
    local want = glia.no_grad(function()
      local x = m.tok(idx) + m.pos.weight:narrow(1, 1, 5)
      local h = x + b:attn_update(x) -- the stream entering the MoE sub-layer
      local hs = h:reshape(-1, 8)
      local function f(i, a)
        return glia.moe(a, moe.routers[i].weight, moe.w1, moe.b1, moe.w2, moe.b2,
                        { k = 2, activation = "gelu_tanh" }) + moe:shared_forward(a)
      end
      local x1 = hs + f(1, b.ln2(h):reshape(-1, 8))
      local x2 = x1 + f(2, x1)
      local out = outer and hs + x2 or x2 -- the block adds R - h to h
      return m.head(m.lnf(out:reshape(2, 5, 8)))
    end)
    local got = glia.no_grad(function() return m(idx) end)
    t.ok(relerr(got, want:totable()) <= 1e-5,
         ("a GPT with moe {iterations = 2, chain_start = 'residual', outer_residual = %s}: the chain over the block's stream")
           :format(tostring(outer)))
    -- decoding (one position at a time through the caches) gives the same
    local caches, steps = m:new_caches(2), {}
    glia.no_grad(function()
      for p = 1, 5 do steps[p] = m(idx:narrow(2, p, 1), caches, p - 1) end
    end)
    t.ok(relerr(glia.cat(steps, 2), want:totable()) <= 1e-5, "and decoding position by position matches it")
  end
  local m = GPT { vocab_size = 11, d_model = 8, n_layers = 1, n_heads = 2, ctx = 6,
                  moe = { experts = 4, k = 2, iterations = 2 } }
  t.ok(not m.blocks[1].mlp:wants_stream(), "the default chain (normed, no outer residual) is not handed the stream")
end

-- An MoE GPT decodes through glia.decoder_moe (the blocks' MoE sub-layer
-- in one call): the same logits, bit for bit, as through nn.MoE:forward,
-- with and without a layer-skipping plan
do
  local GPT = require "models.gpt"
  local skip = require "glia.skip"
  for _, moe in ipairs {
    { experts = 4, k = 2, shared = 1 },
    { experts = 4, k = 1, router = "sigmoid", bias_gamma = 1e-3, activation = "swiglu" },
    { experts = 4, k = 2, chain_start = "residual" }, -- one iteration: the plain layer, fused too
  } do
    glia.manual_seed(9)
    local cfg = { vocab_size = 11, d_model = 16, n_layers = 3, n_heads = 2, ctx = 8, moe = moe }
    local fused, plain = GPT(cfg), GPT(cfg)
    plain:load_state_dict(fused:state_dict())
    for _, b in ipairs(plain.blocks) do rawset(b.mlp, "decode_residual", false) end
    local calls, real = 0, fused.blocks[1].mlp.decode_residual
    for _, b in ipairs(fused.blocks) do
      rawset(b.mlp, "decode_residual", function(...) calls = calls + 1 return real(...) end)
    end
    fused:eval()
    plain:eval()
    local x = glia.randint(1, 12, { 1, 8 })
    for _, plan in ipairs { false, skip.plan_drop(3, { attn = { 2 } }), skip.plan_drop(3, { mlp = { 1 } }) } do
      if plan then skip.set_plan(fused, plan); skip.set_plan(plain, plan) end
      local cf, cp, same, before = fused:new_caches(1), plain:new_caches(1), true, calls
      glia.no_grad(function()
        for p = 1, 8 do
          local tok = x:narrow(2, p, 1)
          same = same and u.identical(fused(tok, cf, p - 1), plain(tok, cp, p - 1))
        end
      end)
      t.ok(same and calls > before, ("MoE GPT decoding (%s, %s): decoder_moe's logits are nn.MoE's, bit for bit")
           :format(moe.router or "softmax", plan and tostring(plan) or "no plan"))
    end
  end
end

-- ======================================================== empty shapes

do
  local E, F, d = 4, 3, 5
  local w1, b1, w2, b2 = weights(E, d, F, "gelu")
  local x, wr = glia.randn(0, d):requires_grad(), glia.randn(E, d):requires_grad()
  local y, info = glia.moe(x, wr, w1, b1, w2, b2, { k = 2, capacity_factor = 1 })
  y:sum():backward()
  t.ok(u.same_shape(y, { 0, d }) and u.identical(info.load, { 0, 0, 0, 0 }) and
       u.same_shape(x.grad, { 0, d }), "no tokens: y {0,d}, no load, an empty gradient")
  local y2 = glia.moe(glia.randn(3, 0), glia.randn(E, 0), glia.randn(E, F, 0), b1,
                      glia.randn(E, 0, F), nil, { k = 2 })
  t.ok(u.same_shape(y2, { 3, 0 }), "zero width: y {T,0}")
end

-- ============================================================ bad input

do
  local T, d, E, F = 5, 4, 4, 3
  local x, wr = glia.randn(T, d), glia.randn(E, d)
  local w1, b1, w2, b2 = weights(E, d, F, "gelu")
  local function moe(o, ...)
    local a = { x, wr, w1, b1, w2, b2 }
    for i, v in pairs { ... } do a[i] = v end
    return function() glia.moe(a[1], a[2], a[3], a[4], a[5], a[6], o) end
  end
  t.error_like(moe { k = 5 }, "moe_route: k must be in 1..E; k 5.*logits {5,4}", "k > E is refused")
  t.error_like(moe { k = 0 }, "glia.moe: k must be a positive integer, got 0", "k = 0 is refused")
  t.error_like(moe({}, nil, nil, glia.randn(E, F, d + 1)), "glia.moe: w1 must be {E,F,4}, got {4,3,5}",
               "w1 whose d disagrees with x is refused")
  t.error_like(moe({}, nil, nil, nil, nil, glia.randn(E, d, F + 1)),
               "glia.moe: w2 must be {4,4,3}, got {4,4,4}", "w2 whose F disagrees with w1 is refused")
  t.error_like(moe({}, nil, nil, nil, nil, glia.randn(E + 1, d, F)),
               "glia.moe: w2 must be {4,4,3}, got {5,4,3}", "w2 with another expert count is refused")
  t.error_like(moe({}, nil, nil, nil, glia.randn(E, F + 1)), "glia.moe: b1 must be {4,3}, got {4,4}",
               "a b1 of the wrong length is refused")
  t.error_like(moe({}, nil, nil, nil, nil, nil, glia.randn(E, d + 1)), "glia.moe: b2 must be {4,4}, got {4,5}",
               "a b2 of the wrong length is refused")
  t.error_like(moe({}, nil, glia.randn(E + 1, d)), "glia.moe: want x {T,d}, wr {E,d}, w1 {E,F,d}; got x {5,4}, wr {5,4}, w1 {4,3,4}",
               "a router with another expert count is refused")
  t.error_like(moe { router = "sigmoid", groups = 3 }, "moe_route: groups must divide the experts.*groups 3",
               "groups that do not divide the experts are refused")
  t.error_like(moe { router = "sigmoid", groups = 2, topk_groups = 3 },
               "moe_route: topk_groups must be in 1..groups", "topk_groups > groups is refused")
  t.error_like(moe { capacity_factor = 0 }, "glia.moe: capacity_factor must be a number > 0, got 0",
               "capacity_factor 0 is refused")
  t.error_like(moe { capacity_factor = -1 }, "capacity_factor must be a number > 0", "a negative capacity factor is refused")
  t.error_like(moe { bias = glia.zeros(E + 1) }, "moe_route: bias must be {4} %(one per expert%), got {5}",
               "a router bias of the wrong length is refused")
  t.error_like(moe { bias = glia.zeros(E):to("i64") }, "moe_route: bias must be f32", "an i64 bias is refused")
  t.error_like(moe({}, x:to("i64")), "glia.moe: x and wr must be f32, got i64 {5,4}", "an i64 x is refused")
  t.error_like(moe({}, x:to("f64")), "glia.moe: x and wr must be f32, got f64 {5,4}", "an f64 x is refused")
  t.error_like(moe({}, nil, nil, w1:to("f64")), "glia.moe: w1 must be f32, got f64 {4,3,4}", "an f64 w1 is refused")
  t.error_like(moe { activation = "tanh" }, "glia.moe: unknown activation 'tanh'", "an unknown activation is named")
  t.error_like(moe { router = "top" }, "moe_route: unknown router 'top'", "an unknown router is named")
  t.error_like(moe { experts = 2 }, "glia.moe: unknown option 'experts'", "an unknown option is named")
  t.error_like(moe({ activation = "swiglu" }, nil, nil, glia.randn(E, 3, d)),
               "swiglu needs w1 {E,2F,d} with an even row count", "swiglu with an odd w1 is refused")
  t.error_like(function() glia.moe_experts(x, glia.rand(T, 2), glia.full({ T, 2 }, 9, "i64"), w1, b1, w2, b2) end,
               "glia.moe: expert index 9 out of range 1..4", "an expert index out of range is refused")
  t.error_like(function() glia.moe_dispatch(glia.ones({ T, 2 }, "i64"), 1099511627776) end,
               "moe_dispatch: idx must be i64 {T,k} and E in 1..2^31%-1, got i64 {5,2}, E 1099511627776",
               "moe_dispatch: an expert count past 2^31 is refused (it once overflowed the plan's size)")
  t.error_like(function() glia.moe_experts(x, glia.rand(T, 2), glia.ones(T, 2), w1, b1, w2, b2) end,
               "glia.moe: idx must be i64 or i32, got f32 {5,2}", "an f32 idx is refused")
end

-- ==================================== routing edge cases (review of #10)

do -- renormalized gates are a softmax over the chosen log-scores: defined
   -- even when every chosen score underflows to 0 in f32 (it was 0/0 = NaN)
  local g = glia.moe_route(glia.full({ 5, 4 }, -200), { k = 2, router = "sigmoid" })
  t.ok(t.maxdiff(g, glia.full({ 5, 2 }, 0.5)) == 0,
       "sigmoid router with every logit -200: gates 1/2, not NaN")
  local z = glia.full({ 5, 4 }, -200)
  for tt = 1, 5 do z[tt][1] = 0 end
  local g2, i2 = glia.moe_route(z, { k = 2, bias = glia.tensor { 0, 5, 5, 0 } })
  t.ok(t.maxdiff(g2, glia.full({ 5, 2 }, 0.5)) == 0 and t.maxdiff(i2, glia.full({ 5, 2 }, 2):add(glia.tensor { 0, 1 })) == 0,
       "softmax router, bias choosing underflowed experts: gates 1/2, not NaN")
  -- the backward agrees with the same gates in f64 (where nothing underflows)
  local function sig(v) return 1 / (1 + exp(-v)) end
  local function ref_gates(zz, score, pick)
    local out = {}
    for tt, row in ipairs(zz) do
      local sc = score(row)
      local den = sc[pick[1]] + sc[pick[2]]
      out[tt] = { sc[pick[1]] / den, sc[pick[2]] / den }
    end
    return out
  end
  local function softmax_row(row)
    local m, s, r = -math.huge, 0, {}
    for _, v in ipairs(row) do m = max(m, v) end
    for e, v in ipairs(row) do r[e] = exp(v - m); s = s + r[e] end
    for e = 1, #row do r[e] = r[e] / s end
    return r
  end
  local zs = glia.full({ 3, 4 }, -200) + glia.randn(3, 4)
  local os = { k = 2, router = "sigmoid", route_scale = 2, bias = glia.tensor { 1, 1, 0, 0 } }
  u.gradcheck_f64(function(a) return (glia.moe_route(a, os)) end,
                  function(a)
                    local r = ref_gates(a, function(row)
                      local q = {}
                      for e, v in ipairs(row) do q[e] = sig(v) end
                      return q
                    end, { 1, 2 })
                    for _, row in ipairs(r) do row[1], row[2] = 2 * row[1], 2 * row[2] end
                    return r
                  end, { zs }, "sigmoid gates at logits near -200: f64 gradients")
  local zx = glia.full({ 3, 4 }, -200) + glia.randn(3, 4)
  zx:narrow(2, 1, 1):fill_(0)
  zx:narrow(2, 4, 1):fill_(0)
  local ox = { k = 2, bias = glia.tensor { 0, 5, 5, 0 } }
  u.gradcheck_f64(function(a) return (glia.moe_route(a, ox)) end,
                  function(a) return ref_gates(a, softmax_row, { 2, 3 }) end,
                  { zx }, "softmax gates of underflowed experts chosen by the bias: f64 gradients")
end

do -- selection keeps a sorted k-entry buffer: the f64 router's choice and
   -- order, ties to the lower expert, and k = E costs O(E k), not O(E k^2)
  local z = glia.randn(16, 64)
  z[1]:fill_(0.5) -- all tied: experts in order
  z[2]:narrow(1, 10, 5):fill_(3)
  local idx_ok = true
  for _, k in ipairs { 1, 2, 7, 64 } do
    local _, idx = glia.moe_route(z, { k = k })
    local got, ref = idx:totable(), ref_route(z:totable(), { k = k })
    for tt = 1, 16 do
      for j = 1, k do idx_ok = idx_ok and got[tt][j] == ref[tt][j] end
    end
  end
  t.ok(idx_ok, "top-k choices and their order are the f64 router's, ties to the lower expert")
  local _, idx = glia.moe_route(glia.randn(16, 1024), { k = 1024 })
  t.is(idx:size(2), 1024, "k = E = 1024 routes (it once took seconds)")
end

do -- topk_groups is checked with or without groups
  t.error_like(function() glia.moe_route(glia.randn(3, 4), { k = 1, topk_groups = 2 }) end,
               "glia.moe_route: topk_groups must be in 1..groups; k 1, groups 1, topk_groups 2",
               "topk_groups > groups is refused when groups is absent")
  t.error_like(function() glia.moe_route(glia.randn(3, 4), { k = 1, groups = 1, topk_groups = 3 }) end,
               "topk_groups must be in 1..groups", "and when groups is 1")
end

do -- a float kept mask is refused by moe_dispatch as by moe_experts
  local idx = glia.tensor({ { 1, 2 } }):to("i64")
  t.error_like(function() glia.moe_dispatch(idx, 3, glia.tensor { { 1, 0 } }) end,
               "glia.moe_dispatch: kept must be bool or u8, got f32 {1,2}",
               "moe_dispatch refuses an f32 kept (it converted it)")
  t.error_like(function()
                 glia.moe_experts(glia.randn(1, 4), glia.rand(1, 2), idx, glia.randn(3, 2, 4), nil,
                                  glia.randn(3, 4, 2), nil, nil, glia.tensor { { 1, 0 } })
               end, "glia.moe: kept must be bool or u8, got f32 {1,2}", "as moe_experts does")
end

do -- no tokens: the asked-for losses are 0 (they were NaN), on both Luas
  local E, d, F = 3, 4, 2
  local wr, w1, w2 = glia.randn(E, d), glia.randn(E, F, d), glia.randn(E, d, F)
  local x0 = glia.randn(0, d)
  local y, info = glia.moe(x0, wr, w1, nil, w2, nil,
                           { aux_alpha = 0.01, z_alpha = 1e-3, seq_alpha = 0.1 })
  t.ok(y:size(1) == 0 and info.aux:item() == 0 and info.balance:item() == 0 and
       info.z:item() == 0 and info.seq:item() == 0, "T = 0: balance, z and seq losses are 0, not NaN")
  local _, info2 = glia.moe(x0, wr, w1, nil, w2, nil, { seq_alpha = 0.1, seq_len = 4 })
  t.ok(info2.seq:item() == 0, "T = 0 with a seq_len: the seq loss is 0")
  t.error_like(function() glia.moe(x0, wr, w1, nil, w2, nil, { seq_alpha = 0.1, seq_len = 0 }) end,
               "glia.moe: seq_len must be a positive integer, got 0", "seq_len = 0 is one clear error (was n%%0 on Lua 5.4)")
end

do -- bad option values name the function and the option
  local E, d, F = 3, 4, 2
  local x, wr, w1, w2 = glia.randn(4, d), glia.randn(E, d), glia.randn(E, F, d), glia.randn(E, d, F)
  local cases = {
    { { seq_alpha = 0.1, seq_len = -5 }, "glia.moe: seq_len must be a positive integer, got %-5" },
    { { seq_len = 2.5 }, "glia.moe: seq_len must be a positive integer, got 2.5" },
    { { seq_len = "a" }, 'glia.moe: seq_len must be a positive integer, got "a"' },
    { { aux_alpha = "a" }, 'glia.moe: aux_alpha must be a finite number, got "a"' },
    { { z_alpha = 0 / 0 }, "glia.moe: z_alpha must be a finite number" },
    { { route_scale = "a" }, 'glia.moe: route_scale must be a finite number, got "a"' },
    { { k = math.huge }, "glia.moe: k must be a positive integer, got inf" },
    { { k = 2 ^ 63 }, "glia.moe: k must be a positive integer, got 9.22" },
    { { groups = "2" }, 'glia.moe: groups must be a positive integer, got "2"' },
    { { topk_groups = 1.5 }, "glia.moe: topk_groups must be a positive integer, got 1.5" },
    { { normalize = "no" }, 'glia.moe: normalize must be a boolean, got "no"' },
    { { bias = 3 }, "glia.moe: bias must be a tensor {E}, got 3" },
  }
  for _, c in ipairs(cases) do
    t.error_like(function() glia.moe(x, wr, w1, nil, w2, nil, c[1]) end, c[2], c[2])
  end
  t.error_like(function() glia.moe_route(glia.randn(4, E), { k = 2 ^ 63 }) end,
               "glia.moe_route: k must be a positive integer", "glia.moe_route names k")
  t.error_like(function() glia.moe_route(glia.randn(4, E), { normalize = 1 }) end,
               "glia.moe_route: normalize must be a boolean, got 1", "glia.moe_route names normalize")
  t.error_like(function() glia.moe_bias_update(glia.zeros(E):to("i64"), glia.ones(E), 0.1) end,
               "glia.moe_bias_update: bias must be f32 {E}, got i64 {3}", "an i64 bias is named (was glia.add_)")
end

do -- gamma must be finite and >= 0: a NaN one poisoned the bias silently
  local b = glia.zeros(3)
  for _, gamma in ipairs { 0 / 0, -1e-3, math.huge } do
    t.error_like(function() glia.moe_bias_update(b, glia.tensor { 1, 2, 3 }, gamma) end,
                 "glia.moe_bias_update: gamma must be a finite number >= 0",
                 "moe_bias_update refuses gamma " .. tostring(gamma))
  end
  t.ok(t.maxdiff(b, glia.zeros(3)) == 0, "the bias is untouched")
  t.error_like(function() require("glia.nn").MoE(4, 2, 3, { bias_gamma = 0 / 0 }) end,
               "glia.nn.MoE: bias_gamma must be a finite number >= 0", "nn.MoE refuses a NaN bias_gamma")
end

do -- Chain-of-Experts arrangements: chain_start and outer_residual, each
   -- against a direct composition of glia.moe calls, given the stream
  local nn = require "glia.nn"
  local d, F, E, T = 6, 5, 4, 8
  local x, stream = glia.randn(T, d), glia.randn(T, d)
  for _, cs in ipairs { "normed", "residual" } do
    for _, outer in ipairs { false, true } do
      for _, C in ipairs { 1, 2 } do
        local m = nn.MoE(d, F, E, { k = 2, iterations = C, shared = 1, chain_start = cs,
                                    outer_residual = outer })
        local function f(i, a)
          return glia.moe(a, m.routers[i].weight, m.w1, m.b1, m.w2, m.b2, { k = 2 }) + m:shared_forward(a)
        end
        local xi = cs == "normed" and x or stream
        local a = x
        for i = 1, C do
          xi = xi + f(i, a)
          a = xi
        end
        local want = outer and xi or xi - stream -- R - stream
        t.ok(relerr(m(x, stream), want:totable()) <= 1e-5,
             ("chain_start %s, outer_residual %s, C = %d: the direct composition"):format(cs, tostring(outer), C))
      end
    end
  end
  local m = nn.MoE(d, F, E, { k = 2, chain_start = "residual" })
  t.ok(u.identical(m(x, stream), m(x)), "chain_start residual, C = 1: h + MoE(Norm(h)), the plain MoE layer")
  local m2 = nn.MoE(d, F, E, { k = 2 })
  t.ok(relerr(m2(x, stream), (x + m2(x) - stream):totable()) <= 1e-6,
       "the defaults (normed, no outer residual), C = 1: Norm(h) + MoE(Norm(h)) replaces the stream")
  t.error_like(function() nn.MoE(d, F, E, { chain_start = "input" }) end,
               "glia.nn.MoE: chain_start must be 'normed' or 'residual', got input", "an unknown chain_start is named")
  t.error_like(function() nn.MoE(d, F, E, { outer_residual = "on" }) end,
               "glia.nn.MoE: outer_residual must be a boolean, got on", "outer_residual must be a boolean")
  t.error_like(function() m(x, glia.randn(T, d + 1)) end,
               "glia.nn.MoE: the residual stream must be shaped like the input {8,6}", "a stream of another shape is refused")
end

t.done()
