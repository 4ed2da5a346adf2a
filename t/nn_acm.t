-- t/nn_acm.t -- nn.ACM and its gate and losses (stdlib/glia/nn/acm.lua):
-- Gumbel-softmax hard with straight-through gradient against the softmax
-- Jacobian in doubles, eval's deterministic argmax, min_choice, force_k and
-- cap_k, the phase-2 labels, budget accounting against the FLOPs glia.acm
-- measured, the entropy and diversity values, determinism from the seed,
-- and the errors.
local t = require "t.tap"
local glia = require "glia"
local nn = require "glia.nn"
local A = require "glia.nn.acm"
local u = require "t.util"

u.seed(20261206)

local abs, exp, log, max = math.abs, math.exp, math.log, math.max

t.plan(47)

do -- Gumbel straight-through with fixed noise
  local R, C, tau = 6, 5, 0.8
  local logits, noise = glia.randn(R, C), glia.rand(R, C)
  local dy = glia.randn(R, C)
  logits:requires_grad()
  local y, idx = A.gumbel_hard(logits, tau, noise)
  local L, N, DY = logits:totable(), noise:totable(), dy:totable()
  local onehot, want_grad, idx_ok = true, {}, true
  local Y = y:totable()
  for r = 1, R do
    local z, best, zmax = {}, 1, -math.huge
    for c = 1, C do
      z[c] = (L[r][c] - log(-log(N[r][c]))) / tau
      if z[c] > zmax then zmax, best = z[c], c end
    end
    if idx[r] ~= best then idx_ok = false end
    for c = 1, C do
      if Y[r][c] ~= (c == best and 1 or 0) then onehot = false end
    end
    local s, sum = {}, 0
    for c = 1, C do s[c] = exp(z[c] - zmax) sum = sum + s[c] end
    local dot = 0
    for c = 1, C do s[c] = s[c] / sum dot = dot + DY[r][c] * s[c] end
    want_grad[r] = {}
    for c = 1, C do want_grad[r][c] = s[c] * (DY[r][c] - dot) / tau end
  end
  t.ok(onehot and idx_ok, "Gumbel hard: the forward is exactly onehot(argmax(logits + gumbel))")
  y:mul(dy):sum():backward()
  t.ok(t.maxdiff(logits.grad, want_grad) < 1e-5,
       "and the gradient is the softmax Jacobian of (logits + gumbel) / tau applied to dy")
  t.error_like(function() A.gumbel_hard(logits, 0) end, "temperature must be > 0",
               "a temperature <= 0 is an error")
end

-- an ACM with a fresh gate; x {B, S, d}
local function make(opts)
  local m = nn.ACM(8, 16, 4, opts)
  return m, glia.randn(3, 10, 8)
end

do -- eval: argmax, no noise; module output = glia.acm with the gate's k
  local m, x = make()
  m:eval()
  local s0, o0 = glia.rng_state()
  local y1 = m(x)
  local k1 = m.last.k
  local y2 = m(x)
  local s1, o1 = glia.rng_state()
  t.ok(u.identical(y1, y2) and u.identical(k1, m.last.k) and s0 == s1 and o0 == o1,
       "eval mode: deterministic argmax, draws no noise")
  local want_k = (glia.argmax(m:gate_logits(x:reshape(-1, 8)), -1):to("f32") - 1):to("i64")
  t.ok(u.identical(k1, want_k), "eval mode: k = argmax of the gate's logits (fused gate)")
  local xb = glia.randn(700, 8)
  local kb = glia.no_grad(function() m(xb) return m.last.k end)
  local kl = (glia.argmax(m:gate_logits(xb), -1):to("f32") - 1):to("i64")
  local kt = u.by_threads(function() m(xb) return m.last.k end, { 1, 2 })
  t.ok(u.identical(kb, kl) and u.identical(kt[1], kt[2]),
       "the fused gate on 700 tokens: the module path's k, the same on 1 and 2 threads")
  t.error_like(function()
    glia.acm_gate(xb, m.gate1.weight, m.gate1.bias, m.gate2.weight, m.gate2.bias,
                  m.gate3.weight:narrow(2, 1, 8), m.gate3.bias)
  end, "glia.acm_gate: expected w3 {C,g}, b3 {C} with g = 16, C >= 1, got w3 {5,8}, b3 {5}",
  "acm_gate names the bad layer's operands and their shapes")
  local ref = glia.acm(x:reshape(-1, 8), m.w1, m.b1, m.w2, k1, { learners = 4 })
  t.ok(u.identical(y1:reshape(-1, 8), ref) and u.same_shape(y1, x),
       "the module's output is glia.acm's with the gate's k, in x's shape")
  local all = m:forward_all(x)
  t.is(table.concat(all:shape(), ","), "5,3,10,8", "forward_all gives {N+1, ..., d}")
end

do -- min_choice with adversarial logits, force_k, cap_k
  local m, x = make({ min_choice = 1 })
  glia.no_grad(function()
    m.gate3.weight:zero_()
    m.gate3.bias:copy_(glia.tensor({ 100, -100, -100, -100 }))
  end)
  m:eval()
  m(x)
  t.is(m.last.k:to("f32"):min():item(), 1, "min_choice 1: no token gets k = 0 (eval)")
  m:train()
  m(x)
  t.ok(m.last.k:to("f32"):min():item() >= 1 and m.last.g:narrow(2, 1, 1):sum():item() == 0,
       "min_choice 1: none in training either, and g has no mass on k = 0")
  m.force_k = 2
  m(x)
  t.ok(u.identical(m.last.k, glia.full({ 30 }, 2, "i64")) and m.last.g == nil,
       "force_k = 2 runs 2 learners for every token")
  m.force_k = 0.75
  m(x)
  t.is(m.last.k:to("f32"):max():item(), 3, "force_k = 0.75 is 3 of 4 learners")
  m.force_k = nil
  m.cap_k = 1
  glia.no_grad(function() m.gate3.bias:copy_(glia.tensor({ -100, -100, -100, 100 })) end)
  m(x)
  t.is(m.last.k:to("f32"):max():item(), 1, "cap_k = 1 clamps k = 4 to 1")
  -- one check of force_k and cap_k, the same in both modes: min_choice holds
  local bad = {}
  for _, mode in ipairs { "train", "eval" } do
    m[mode](m)
    for _, v in ipairs { 0, 1.5, -1, 0 / 0, 5, "2" } do
      for _, key in ipairs { "cap_k", "force_k" } do
        m.force_k, m.cap_k = nil, nil
        m[key] = v
        local ok, err = pcall(m, x)
        if ok or not tostring(err):find("glia.nn.ACM: " .. key .. " must be an integer in 1..4", 1, true) then
          bad[#bad + 1] = mode .. " " .. key .. "=" .. tostring(v) .. ": " .. tostring(err)
        end
      end
    end
  end
  m.force_k, m.cap_k = nil, nil
  t.is(table.concat(bad, "; "), "",
       "force_k and cap_k of 0 (below min_choice 1), 1.5, -1, NaN, 5, '2': the same clear error in train and eval")
end

do -- the fused gate's limits: wide gates fall back, bad counts and shapes are clear
  local m = nn.ACM(8, 16, 4, { gate_hidden = 100 })
  local x = glia.randn(5, 8)
  m:eval()
  local y = m(x)
  local want = (glia.argmax(m:gate_logits(x), -1):to("f32") - 1):to("i64")
  t.ok(u.identical(m.last.k, want) and u.same_shape(y, x),
       "gate_hidden 100 (wider than the fused gate's 64): eval runs the gate's layers, k = argmax")
  local s = nn.ACM(8, 16, 4)
  local g1, g2, g3 = s.gate1, s.gate2, s.gate3
  local function gate(mc, cap) return glia.acm_gate(x, g1.weight, g1.bias, g2.weight, g2.bias, g3.weight, g3.bias, mc, cap) end
  if math.maxinteger then
    t.error_like(function() gate(math.maxinteger) end, "glia.acm_gate: min_choice %d+ must be in 0..",
                 "acm_gate: min_choice = maxinteger is an error, no overflow")
  else
    t.ok(true, "acm_gate: min_choice = maxinteger (skipped: LuaJIT passes integers up to 2^53)")
  end
  local huge = math.maxinteger or 2 ^ 52
  t.error_like(function() gate(-1) end, "glia.acm_gate: min_choice %-1 must be in 0..",
               "acm_gate: min_choice -1 is an error")
  t.error_like(function() gate(2, 1) end, "cap_k 1 at least min_choice",
               "acm_gate: cap_k below min_choice is an error")
  t.ok(u.identical(gate(0, huge), gate(0)), "acm_gate: cap_k = maxinteger is no cap")
  local ok, err = pcall(glia.acm_gate, x, g1.weight, g1.bias, g2.weight:narrow(2, 1, 8), g2.bias,
                        g3.weight:narrow(1, 1, 3), g3.bias)
  t.ok(not ok and tostring(err):find("expected w2 {g,g}, b2 {g} with g = 16, got w2 {16,8}, b2 {16}", 1, true),
       "acm_gate's shape error names the shapes it was given: " .. tostring(err))
end

do -- labels
  local l = A.gate_labels({ { 10, 5, 4.5, 4.4, 4.3 }, { 10, 2, 1, 0.5, 0.25 }, { 10, 9, 1, 1, 1 } }, 1.2)
  t.ok(u.identical(l, glia.tensor({ 2, 4, 1 }, "i64")),
       "labels: 10,5,4.5,4.4,4.3 -> 2; 10,2,1,0.5,0.25 -> N; 10,9,... -> 1 (tau_err 1.2)")
end

do -- budget accounting: F = the measured fraction of max compute
  local a1, a2 = nn.ACM(8, 16, 4), nn.ACM(8, 24, 2)
  local x = glia.randn(2, 16, 8)
  a1(x)
  a2(x)
  local L, F = A.budget_loss({ a1, a2 }, 0.5)
  local T = 32
  local c1, c2 = a1:learner_flops(), a2:learner_flops()
  local k1, k2 = a1.last.k:totable(), a2.last.k:totable()
  local per_token = 0
  for i = 1, T do per_token = per_token + k1[i] * c1 + k2[i] * c2 end
  t.is(a1.last.flops + a2.last.flops, per_token,
       "measured learner FLOPs = sum over tokens and ACMs of k c_l")
  local measured = (a1.last.flops + a2.last.flops) / (T * (4 * c1 + 2 * c2))
  t.ok(abs(F - measured) < 1e-6, "budget_loss's F is the measured fraction of max compute")
  t.ok(abs(L:item() - abs(measured - 0.5)) < 1e-6, "and L_budget = |F - beta|")
  local L0 = A.budget_loss({ a1, a2 }, F)
  t.is(L0:item(), 0, "L_budget is exactly 0 when beta = F")
  L:backward()
  t.ok(a1.gate1.weight.grad and t.maxdiff(a1.gate1.weight.grad, a1.gate1.weight * 0) > 0,
       "the budget loss reaches the gate through the straight-through estimator")
  t.error_like(function() A.budget_loss({ a1 }, 1.5) end, "budget must be in %(0, 1%]",
               "a budget above 1 is an error")
  t.error_like(function() A.budget_loss({ a1 }, 0) end, "budget must be in %(0, 1%]",
               "a budget of 0 is an error")
end

do -- entropy and diversity values
  local a = nn.ACM(4, 8, 4)
  local B, S = 3, 10
  local k = {}
  for i = 1, B * S do k[i] = (i - 1) % 5 + 1 end
  a.last = { g = glia.one_hot(glia.tensor(k, "i64"), 5) }
  t.ok(abs(A.entropy_loss({ a }, B):item() + 1) < 1e-6,
       "uniform choices within every sample give L_entropy = -1")
  t.ok(abs(A.diversity_loss({ a }, B):item()) == 0, "identical per-sample compute: L_diversity = 0")
  -- sample 1 all k = 0, sample 2 all k = 4: u = 0 and 4/5; mean |du| = 2 * 0.8 / 4
  local k2 = {}
  for i = 1, 20 do k2[i] = i <= 10 and 1 or 5 end
  a.last = { g = glia.one_hot(glia.tensor(k2, "i64"), 5) }
  t.ok(abs(A.diversity_loss({ a }, 2):item() + 2 * 0.4) < 1e-6,
       "two samples at k = 0 and k = N: L_diversity = -2 mean |u_b - u_b'| = -0.8")
end

do -- gate_task_grad: the same value, and the task loss reaches the gate as <dL/df~, o_k>
  local function run(m, x, dy, seed)
    for _, p in ipairs(m:parameters()) do p:zero_grad() end
    glia.manual_seed(seed)
    local y = m(x)
    y:mul(dy):sum():backward()
    return y:detach():clone(), m.gate3.bias.grad and m.gate3.bias.grad:clone()
  end
  for _, cap in ipairs { false, 2 } do
    local m, x = make()
    m:train()
    m.cap_k = cap or nil
    local dy = glia.randn(x:shape())
    local y0, gb0 = run(m, x, dy, 11)
    m.gate_task_grad = true
    local y1, gb1 = run(m, x, dy, 11)
    local what = cap and " (cap_k = 2)" or ""
    t.ok(u.identical(y0, y1), "gate_task_grad: the forward value is the default's, to the bit" .. what)
    t.ok(gb0 == nil or u.identical(gb0, glia.zeros(5)),
         "without it the task loss gives the gate no gradient" .. what)
    -- with it: dlogits = (1/tau) soft o (dg - <dg, soft>), dg_k = <dy_t, o_min(k,cap)(x_t)>,
    -- soft from the noise the forward drew (the seed's first draw)
    local T, N, tau = 30, 4, m.tau
    glia.manual_seed(11)
    local U = glia.rand(T, N + 1):clamp(1e-20, 1 - 1e-7):totable()
    local x2 = x:reshape(-1, 8)
    local L = glia.no_grad(m.gate_logits, m, x2):totable()
    local O, DY = m:prefixes(x2):totable(), dy:reshape(-1, 8):totable()
    local want = {}
    for c = 1, N + 1 do want[c] = 0 end
    for r = 1, T do
      local z, zmax, soft, sum = {}, -math.huge, {}, 0
      for c = 1, N + 1 do
        z[c] = (L[r][c] - log(-log(U[r][c]))) / tau
        zmax = max(zmax, z[c])
      end
      for c = 1, N + 1 do soft[c] = exp(z[c] - zmax) sum = sum + soft[c] end
      local dg, dot = {}, 0
      for c = 1, N + 1 do
        local kk = cap and math.min(c - 1, cap) or c - 1
        dg[c] = 0
        for j = 1, 8 do dg[c] = dg[c] + DY[r][j] * O[kk + 1][r][j] end
        soft[c] = soft[c] / sum
        dot = dot + dg[c] * soft[c]
      end
      for c = 1, N + 1 do want[c] = want[c] + soft[c] * (dg[c] - dot) / tau end
    end
    local got, worst, scale = gb1:totable(), 0, 0
    for c = 1, N + 1 do
      worst, scale = max(worst, abs(got[c] - want[c])), max(scale, abs(want[c]))
    end
    t.ok(scale > 1e-3 and worst <= 1e-4 * scale,
         "with it the gate's gradient is the softmax Jacobian of dL/dg_k = <dL/df~, o_k>" .. what)
  end
  t.error_like(function() nn.ACM(8, 16, 4, { gate_task_grad = 1 }) end,
               "gate_task_grad must be true or false, got 1", "gate_task_grad must be a boolean")
  t.error_like(function() nn.ACM(8, 16, 4, { schedule = "tiered" }) end,
               'schedule must be "bucket" or "tier", got "tiered"', "nn.ACM checks the schedule")
  -- the two schedules agree to rounding only: tier's bits prove the option reaches glia.acm
  local m, x = make({ schedule = "tier" })
  m:eval()
  local y = m(x):reshape(-1, 8)
  local x2, k = x:reshape(-1, 8), m.last.k
  local function op(o)
    o.learners = 4
    return glia.acm(x2, m.w1, m.b1, m.w2, k, o)
  end
  local bucket = op({})
  t.ok(u.identical(y, op({ schedule = "tier" })) and not u.identical(y, bucket),
       "nn.ACM with schedule = \"tier\" gives glia.acm's tier output to the bit, not bucket's")
  m.schedule, m.activation = "bucket", "relu"
  t.ok(u.identical(m(x):reshape(-1, 8), op({ activation = "relu" })),
       "schedule and activation reassigned after a forward: the next forward uses them")
  m.schedule = "tire"
  t.error_like(function() m(x) end, 'glia.nn.ACM: schedule must be "bucket" or "tier", got "tire"',
               "a reassigned schedule is checked as at construction")
end

do -- gate_task_grad computes every prefix only when gradients are on
  local m, x = make({ gate_task_grad = true })
  local calls = 0
  m.prefixes = function(self, x2) calls = calls + 1 return A.ACM.prefixes(self, x2) end
  glia.no_grad(m, x)
  m:eval()
  m(x)
  local off = calls
  m:train()
  m(x)
  t.ok(off == 0 and calls == 1, "gate_task_grad: no prefixes under glia.no_grad nor in eval, " ..
       "one call in a training forward")
end

do -- determinism and errors
  local function run()
    glia.manual_seed(7)
    local m, x = make()
    local y = m(x)
    local L = y:pow(2):mean() + A.budget_loss({ m }, 0.5)
    L:backward()
    return { m.last.k, y:detach(), m.w1.grad, m.gate1.weight.grad }
  end
  local a, b = run(), run()
  local same = true
  for i = 1, 4 do same = same and u.identical(a[i], b[i]) end
  t.ok(same, "the same seed gives the same noise, choices and gradients")
  t.error_like(function() nn.ACM(8, 16, 4, { tau = 0 }) end, "temperature tau must be > 0",
               "a gate temperature <= 0 is an error")
  t.error_like(function() nn.ACM(8, 18, 4) end, "hidden 18 does not divide into 4 learners",
               "a width that does not divide")
end

t.done()
