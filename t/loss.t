-- t/loss.t -- cross_entropy and mse against plain-Lua references, on
-- contiguous, strided and broadcast inputs, with gradient checks, thread
-- determinism and error messages.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local exp, log, max, floor = math.exp, math.log, math.max, math.floor
u.seed(1234)

-- ============================================================ references

-- Rows of logits (tables) -> per-row loss (nil when ignored) and the
-- per-row softmax, in doubles. w: PyTorch's class weights (nil: all 1),
-- row r's loss then (1-eps) w[y] (lse - x[y]) + eps/C sum_c w[c] (lse - x[c]).
local function ce_ref(x, y, ignore, eps, w)
  eps = eps or 0
  local function wt(c) return w and w[c] or 1 end
  local loss, prob = {}, {}
  for r = 1, #x do
    local row, C = x[r], #x[r]
    local m = -math.huge
    for c = 1, C do m = max(m, row[c]) end
    local s = 0
    for c = 1, C do s = s + exp(row[c] - m) end
    local lse = m + log(s)
    prob[r] = {}
    for c = 1, C do prob[r][c] = exp(row[c] - lse) end
    if y[r] ~= ignore then
      local smooth = 0
      for c = 1, C do smooth = smooth + wt(c) * (lse - row[c]) end
      loss[r] = (1 - eps) * wt(y[r]) * (lse - row[y[r]]) + eps * smooth / C
    end
  end
  return loss, prob
end

local function reduce(loss, n, how)
  if how == "none" then
    local out = {}
    for r = 1, n do out[r] = loss[r] or 0 end
    return out
  end
  local s, count = 0, 0
  for r = 1, n do
    if loss[r] then s, count = s + loss[r], count + 1 end
  end
  if how == "sum" then return s end
  return count > 0 and s / count or 0
end

-- d(mean loss)/dlogits: (softmax - smoothed one-hot) / count.
local function ce_grad_ref(prob, y, ignore, eps, count)
  local g = {}
  for r = 1, #prob do
    g[r] = {}
    local C = #prob[r]
    for c = 1, C do
      if y[r] == ignore then g[r][c] = 0
      else
        local target = (c == y[r] and (1 - eps) or 0) + eps / C
        g[r][c] = (prob[r][c] - target) / count
      end
    end
  end
  return g
end

local function targets(n, C)
  local y = {}
  for r = 1, n do y[r] = (r * 7) % C + 1 end
  return y
end

local function value(v) return type(v) == "number" and v or v:item() end

-- ========================================================= cross_entropy

do
  local N, C = 6, 5
  local x = glia.randn(N, C) * 2
  local yl = targets(N, C)
  local y = glia.tensor(yl, "i64")
  local loss = ce_ref(x:totable(), yl)
  t.near(value(glia.cross_entropy(x, y)), reduce(loss, N, "mean"), 1e-5,
         "cross_entropy's default mean matches a log-softmax computed in Lua")
  t.near(value(glia.cross_entropy(x, y, nil, nil, "sum")), reduce(loss, N, "sum"), 1e-4,
         "cross_entropy with reduction 'sum' adds the per-row losses")
  local none = glia.cross_entropy(x, y, nil, nil, "none")
  t.is(table.concat(none:shape(), ","), tostring(N), "reduction 'none' returns one loss per row")
  t.near(none, reduce(loss, N, "none"), 1e-5, "reduction 'none' matches the per-row reference")
  t.near(value(x:cross_entropy(y)), reduce(loss, N, "mean"), 1e-5,
         "x:cross_entropy(y) is the method form of glia.cross_entropy")
  t.is(glia.cross_entropy(x, y):dim(), 0, "a reduced cross_entropy is a 0-D tensor")
end

do -- strided logits: the transpose of a {C, N} tensor
  local N, C = 7, 4
  local xt = glia.randn(C, N)
  local x = xt:t()
  local yl = targets(N, C)
  local y = glia.tensor(yl, "i64")
  t.ok(not x:is_contiguous(), "the transposed logits are not contiguous")
  local loss = ce_ref(x:totable(), yl)
  t.near(value(glia.cross_entropy(x, y)), reduce(loss, N, "mean"), 1e-5,
         "cross_entropy reads transposed logits through their strides")
  u.gradcheck(function(a) return glia.cross_entropy(a:t(), y) end, { xt },
              "gradcheck passes for cross_entropy on transposed logits (eps 1e-3, tol 1e-2)")
end

do -- expanded (stride 0) logits: every row is the same
  local row = glia.randn(1, 4)
  local x = row:expand(3, 4)
  local yl = { 1, 4, 2 }
  local r = row:totable()[1]
  local loss = ce_ref({ r, r, r }, yl)
  t.near(value(glia.cross_entropy(x, glia.tensor(yl, "i64"))), reduce(loss, 3, "mean"), 1e-5,
         "cross_entropy reads expanded logits with a stride-0 dim")
  u.gradcheck(function(a) return glia.cross_entropy(a:expand(3, 4), glia.tensor(yl, "i64")) end, { row },
              "gradcheck passes for cross_entropy through expand (gradients summed back)")
end

do -- leading dims are flattened: logits {2, 3, C}, target {2, 3}
  local C = 5
  local x = glia.randn(2, 3, C)
  local yl = { { 1, 2, 3 }, { 4, 5, 1 } }
  local y = glia.tensor(yl, "i64")
  local rows, flat = {}, {}
  for i = 1, 2 do
    for j = 1, 3 do rows[#rows + 1] = x:totable()[i][j] flat[#flat + 1] = yl[i][j] end
  end
  local loss = ce_ref(rows, flat)
  local none = glia.cross_entropy(x, y, nil, nil, "none")
  t.is(table.concat(none:shape(), ","), "2,3", "reduction 'none' keeps the target's shape")
  t.near(none, { { loss[1], loss[2], loss[3] }, { loss[4], loss[5], loss[6] } }, 1e-5,
         "cross_entropy flattens leading dims of logits and target alike")
  local yi32 = glia.tensor(yl, "i32")
  t.near(value(glia.cross_entropy(x, yi32)), reduce(loss, 6, "mean"), 1e-5,
         "i32 targets give the same loss as i64 targets")
end

do -- ignore_index
  local N, C = 6, 4
  local x = glia.randn(N, C)
  local yl = { 1, 0, 3, 0, 4, 2 }
  local y = glia.tensor(yl, "i64")
  local loss, prob = ce_ref(x:totable(), yl, 0)
  t.near(value(glia.cross_entropy(x, y, 0)), reduce(loss, N, "mean"), 1e-5,
         "ignored rows are left out of the mean and of its count")
  t.near(glia.cross_entropy(x, y, 0, nil, "none"), reduce(loss, N, "none"), 1e-5,
         "ignored rows have a loss of 0 under reduction 'none'")
  x:requires_grad()
  glia.cross_entropy(x, y, 0):backward()
  t.near(x.grad, ce_grad_ref(prob, yl, 0, 0, 4), 1e-6,
         "the fused gradient is (softmax - one-hot) / count, zero on ignored rows")
  local yd = glia.tensor({ 1, -100, 2, 3, -100, 4 }, "i64")
  local ld = ce_ref(x:totable(), { 1, -100, 2, 3, -100, 4 }, -100)
  t.near(value(glia.cross_entropy(x, yd)), reduce(ld, N, "mean"), 1e-5,
         "ignore_index defaults to -100 as in PyTorch")
  local none = glia.tensor({ 0, 0, 0, 0, 0, 0 }, "i64")
  local all = glia.cross_entropy(x, none, 0)
  t.is(all:item(), 0, "a mean over only ignored rows is defined as 0")
  x:zero_grad()
  all:backward()
  t.near(x.grad, glia.zeros(N, C), 0, "a mean over only ignored rows has a zero gradient")
end

do -- label smoothing
  local N, C = 5, 6
  local x = glia.randn(N, C) * 3
  local yl = targets(N, C)
  local y = glia.tensor(yl, "i64")
  for _, eps in ipairs({ 0.1, 1.0 }) do
    local loss, prob = ce_ref(x:totable(), yl, nil, eps)
    t.near(value(glia.cross_entropy(x, y, nil, eps)), reduce(loss, N, "mean"), 1e-5,
           ("label smoothing %g matches (1-eps)*nll + eps*mean(-logp)"):format(eps))
    x:zero_grad()
    x:requires_grad()
    glia.cross_entropy(x, y, nil, eps):backward()
    t.near(x.grad, ce_grad_ref(prob, yl, nil, eps, N), 1e-6,
           ("label smoothing %g: the gradient is softmax minus the smoothed one-hot"):format(eps))
  end
  local loss = ce_ref(x:totable(), yl, 3, 0.2)
  t.near(value(glia.cross_entropy(x, y, 3, 0.2, "sum")), reduce(loss, N, "sum"), 1e-4,
         "label smoothing combines with ignore_index and reduction 'sum'")
end

do -- gradient checks
  local N, C = 4, 5
  local yl = { 2, 5, 1, 3 }
  local y = glia.tensor(yl, "i64")
  local cases = {
    { "mean", nil, nil }, { "sum", 4, 0.1 }, { "none", 1, 0.3 },
  }
  for _, case in ipairs(cases) do
    local red, ign, eps = case[1], case[2], case[3]
    local x = glia.randn(N, C)
    u.gradcheck(function(a) return glia.cross_entropy(a, y, ign, eps, red) end, { x },
                ("gradcheck passes for cross_entropy (%s, ignore %s, smoothing %s; eps 1e-3, tol 1e-2)")
                :format(red, tostring(ign), tostring(eps)))
  end
end

do -- numerical stability and extreme logits
  local x = glia.tensor { { 1000, 0, -1000 }, { -1000, -1000, 1000 } }
  local y = glia.tensor({ 1, 3 }, "i64")
  local l = glia.cross_entropy(x, y):item()
  t.near(l, 0, 1e-6, "huge logits give a finite loss (the row max is subtracted)")
  local l2 = glia.cross_entropy(x, glia.tensor({ 2, 1 }, "i64")):item()
  t.near(l2, 1500, 1e-2, "a confidently wrong row costs the logit gap")
end

do -- 0-size inputs
  local x = glia.zeros(0, 5)
  local y = glia.tensor({}, "i64")
  t.is(glia.cross_entropy(x, y):item(), 0, "the mean over zero rows is 0")
  t.is(glia.cross_entropy(x, y, nil, nil, "sum"):item(), 0, "the sum over zero rows is 0")
  t.is(glia.cross_entropy(x, y, nil, nil, "none"):numel(), 0,
       "reduction 'none' over zero rows gives an empty tensor")
end

do -- determinism across thread counts
  local N, C = 3000, 37
  local x = glia.randn(N, C)
  local y = glia.tensor(targets(N, C), "i64")
  local r = u.by_threads(function()
    x:zero_grad()
    x:requires_grad()
    local l = glia.cross_entropy(x, y, 5, 0.1)
    l:backward()
    return { loss = l:item(), grad = x.grad:totable() }
  end)
  t.is(r[1].loss, r[2].loss, "cross_entropy's loss is identical with 1 and 2 threads")
  t.is(t.maxdiff(r[1].grad, r[2].grad), 0, "cross_entropy's gradient is identical with 1 and 2 threads")
end

do -- errors
  local x = glia.randn(4, 3)
  t.error_like(function() glia.cross_entropy(x, glia.tensor { 1, 2, 3, 1 }) end,
               "cross_entropy.*f32", "an f32 target is refused, naming its dtype")
  t.error_like(function() glia.cross_entropy(x, glia.tensor({ 1, 2, 3 }, "i64")) end,
               "cross_entropy.*{3}.*{4,3}", "a target of the wrong shape is refused, naming both shapes")
  t.error_like(function() glia.cross_entropy(x, glia.tensor({ 1, 2, 4, 1 }, "i64")) end,
               "cross_entropy: target 4 .*position 3.* 3 classes",
               "a class index past C is refused, naming the value and the class count")
  t.error_like(function() glia.cross_entropy(x, glia.tensor({ 1, 0, 2, 1 }, "i64")) end,
               "cross_entropy: target 0 .*1%.%.3",
               "a 0-based class index is refused with the 1-based range")
  t.error_like(function() glia.cross_entropy(x:to("i64"), glia.tensor({ 1, 2, 3, 1 }, "i64")) end,
               "cross_entropy: logits must be f32", "integer logits are refused")
  t.error_like(function() glia.cross_entropy(x, glia.tensor({ 1, 2, 3, 1 }, "i64"), nil, 1.5) end,
               "label_smoothing must be in %[0, 1%]", "a label smoothing above 1 is refused")
  t.error_like(function() glia.cross_entropy(x, glia.tensor({ 1, 2, 3, 1 }, "i64"), nil, nil, "avg") end,
               "reduction must be 'mean', 'sum' or 'none', got 'avg'", "an unknown reduction is refused")
end

do -- allocation failures end in clean errors (and leak nothing under SAN)
  local x, xs = glia.randn(5, 4), glia.randn(4, 5)
  local y = glia.tensor({ 1, 2, 3, 4, 1 }, "i64")
  u.oom_ok(function()
    x:zero_grad() x:requires_grad()
    glia.cross_entropy(x, y, 2, 0.1):backward()
  end, "cross_entropy forward and backward fail cleanly at every allocation")
  u.oom_ok(function()
    xs:zero_grad() xs:requires_grad()
    glia.cross_entropy(xs:t(), y, nil, nil, "none"):backward(glia.ones(5))
  end, "cross_entropy 'none' on strided logits fails cleanly at every allocation")
end

-- ============================================ class weights (nn.F.cross_entropy)

-- PyTorch's weighted cross entropy, in doubles: ce_ref's weighted rows;
-- 'mean' divides by the sum of w[y] over the rows that are not ignored.
local function wce_ref(x, y, w, ignore, eps, how)
  local loss = ce_ref(x, y, ignore, eps, w)
  local rows, den = {}, 0
  for r = 1, #x do
    rows[r] = loss[r] or 0
    if loss[r] then den = den + w[y[r]] end
  end
  if how == "none" then return rows end
  local total = 0
  for r = 1, #rows do total = total + rows[r] end
  if how == "sum" then return total end
  return den ~= 0 and total / den or 0
end

do
  local F = require("glia.nn").F
  local N, C = 7, 4
  local x = glia.randn(N, C) * 2
  local yl = { 1, 4, -100, 2, 3, 4, 2 }
  local y = glia.tensor(yl, "i64")
  local wl = { 0.5, 2, 1, 3 }
  local w = glia.tensor(wl)
  local xl = x:totable()
  for _, how in ipairs { "mean", "sum", "none" } do
    for _, eps in ipairs { 0, 0.1 } do
      t.near(F.cross_entropy(x, y, { weight = w, reduction = how, label_smoothing = eps }),
             wce_ref(xl, yl, wl, -100, eps, how), 1e-5,
             ("F.cross_entropy with class weights, reduction %s, label_smoothing %g, matches "
              .. "PyTorch's formula computed in Lua"):format(how, eps))
    end
  end
  t.near(F.cross_entropy(x, y, { weight = glia.ones(C), label_smoothing = 0.2 }),
         glia.cross_entropy(x, y, -100, 0.2), 1e-6, "weights of ones give the unweighted loss")
  local y2 = glia.tensor({ 1, 4, 2, 2, 3, 4, 2 }, "i64")
  t.near(F.cross_entropy(x, y2, { weight = w, ignore_index = 2 }),
         wce_ref(xl, { 1, 4, 2, 2, 3, 4, 2 }, wl, 2, 0, "mean"), 1e-5,
         "ignored rows' weights are left out of the mean's denominator")
  local all = glia.tensor({ -100, -100, -100, -100, -100, -100, -100 }, "i64")
  t.near(F.cross_entropy(x, all, { weight = w }), 0, 0,
         "a weighted mean over no kept rows is 0, as the unweighted op gives")
  local x3 = glia.randn(2, 3, C)
  local y3 = glia.tensor({ { 1, 2, 3 }, { 4, -100, 1 } }, "i64")
  t.near(F.cross_entropy(x3, y3, { weight = w }),
         F.cross_entropy(x3:view(6, C), y3:view(6), { weight = w }), 1e-6,
         "weighted cross entropy over {B, T, C} logits equals it over the flattened rows")
  local xg = glia.randn(N, C)
  u.gradcheck(function(a) return F.cross_entropy(a, y, { weight = w, label_smoothing = 0.1 }) end,
              { xg }, "gradcheck passes for weighted cross entropy with smoothing and an ignored row")
  u.gradcheck(function(a) return F.cross_entropy(a, y, { weight = w, reduction = "sum" }) end,
              { xg }, "gradcheck passes for weighted cross entropy with reduction 'sum'")
  t.error_like(function() F.cross_entropy(x, y, { weight = glia.ones(3) }) end,
               "weight must be a 1%-D tensor of 4 class weights, got {3}",
               "a weight of the wrong size is refused, naming the class count")
  t.error_like(function() F.cross_entropy(x, glia.tensor({ 1, 5, 1, 1, 1, 1, 1 }, "i64"), { weight = w }) end,
               "out of range", "weighted cross entropy checks the targets as the op does")
  t.error_like(function() F.cross_entropy(x, y, { weight = w, reduction = "avg" }) end,
               "reduction must be", "weighted cross entropy checks the reduction")
end

-- ==================================================================== mse

local function mse_ref(a, b, how)
  local out, s, n = {}, 0, 0
  for i = 1, #a do
    out[i] = {}
    for j = 1, #a[i] do
      local bv = type(b[1]) == "table" and b[i][j] or b[j]
      local d = a[i][j] - bv
      out[i][j] = d * d
      s, n = s + d * d, n + 1
    end
  end
  if how == "none" then return out end
  if how == "sum" then return s end
  return s / n
end

do
  local a, b = glia.randn(5, 4), glia.randn(5, 4)
  local at, bt = a:totable(), b:totable()
  t.near(value(glia.mse(a, b)), mse_ref(at, bt, "mean"), 1e-5, "mse's default mean matches Lua")
  t.near(value(a:mse(b, "sum")), mse_ref(at, bt, "sum"), 1e-4, "mse with 'sum' adds squared errors")
  t.near(glia.mse(a, b, "none"), mse_ref(at, bt, "none"), 1e-5, "mse with 'none' is elementwise")
  local bb = glia.randn(4)
  t.near(value(glia.mse(a, bb)), mse_ref(at, bb:totable(), "mean"), 1e-5,
         "mse broadcasts b {4} against a {5,4} and averages over the broadcast shape")
  local ac = glia.randn(4, 5)
  t.near(value(glia.mse(ac:t(), b)), mse_ref(ac:t():totable(), bt, "mean"), 1e-5,
         "mse reads a transposed operand through its strides")
  t.is(glia.mse(glia.zeros(0, 3), glia.zeros(0, 3)):item(), 0, "mse over an empty tensor is 0")
  for _, red in ipairs({ "mean", "sum", "none" }) do
    local x, y = glia.randn(3, 4), glia.randn(4)
    u.gradcheck(function(p, q) return glia.mse(p, q, red) end, { x, y },
                ("gradcheck passes for mse (%s) on both inputs, one broadcast (eps 1e-3, tol 1e-2)")
                :format(red))
  end
  t.error_like(function() glia.mse(a, b:to("i64")) end, "mse: argument 2 must be f32, got i64 {5,4}",
               "mse refuses a non-f32 operand, naming its dtype and shape")
  t.error_like(function() glia.mse(a, glia.randn(3)) end, "mse.*{5,4}.*{3}",
               "mse refuses shapes that do not broadcast, naming both")
end

do -- determinism across thread counts
  local a, b = glia.randn(300, 1000), glia.randn(1000)
  local r = u.by_threads(function() return glia.mse(a, b):item() end)
  t.is(r[1], r[2], "mse over 300k elements is identical with 1 and 2 threads")
  local d = 0
  local at, bt = a:totable(), b:totable()
  for i = 1, 300 do for j = 1, 1000 do d = d + (at[i][j] - bt[j]) ^ 2 end end
  t.near(r[1], d / 300000, 1e-5, "mse over 300k elements matches a double-precision sum")
end

t.done()
