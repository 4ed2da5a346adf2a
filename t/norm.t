-- t/norm.t -- layer_norm, rms_norm and dropout: plain-Lua references on
-- contiguous and strided inputs, gradient checks, thread determinism, the
-- dropout mask's statistics and reproducibility, and error messages.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local abs = math.abs
u.seed(4321)

-- ============================================================ references

local norm_ref = u.norm_ref

local function same_threads(desc, fn)
  local r = u.by_threads(fn)
  for i = 1, #r[1] do
    t.is(t.maxdiff(r[1][i], r[2][i]), 0, desc[i])
  end
end

-- ============================================================= layer_norm

do
  local x, w, b = glia.randn(4, 6) * 3 + 1, glia.randn(6), glia.randn(6)
  local ref = norm_ref(x:totable(), w:totable(), b:totable(), 1e-5, true)
  t.near(glia.layer_norm(x, w, b), ref, 1e-5, "layer_norm matches a Lua reference with weight and bias")
  t.near(x:layer_norm(w, b), ref, 1e-5, "x:layer_norm(w, b) is the method form")
  t.near(glia.layer_norm(x), norm_ref(x:totable(), nil, nil, 1e-5, true), 1e-5,
         "layer_norm without weight and bias only normalizes")
  t.near(glia.layer_norm(x, w, nil, 0.5), norm_ref(x:totable(), w:totable(), nil, 0.5, true), 1e-5,
         "layer_norm honours a weight without bias and a custom eps")
  local xt = glia.randn(6, 4)
  t.near(glia.layer_norm(xt:t(), w, b), norm_ref(xt:t():totable(), w:totable(), b:totable(), 1e-5, true),
         1e-5, "layer_norm normalizes the rows of a transposed input")
  local ws = glia.randn(6, 2)
  local wcol = ws:select(2, 1)
  t.near(glia.layer_norm(x, wcol), norm_ref(x:totable(), wcol:totable(), nil, 1e-5, true), 1e-5,
         "layer_norm reads a strided weight through its strides")
  local x3 = glia.randn(2, 3, 6)
  local rows = {}
  for i = 1, 2 do for j = 1, 3 do rows[#rows + 1] = x3:totable()[i][j] end end
  local flat = norm_ref(rows, w:totable(), b:totable(), 1e-5, true)
  t.near(glia.layer_norm(x3, w, b), { { flat[1], flat[2], flat[3] }, { flat[4], flat[5], flat[6] } },
         1e-5, "layer_norm normalizes the last dim of a 3-D input")
  local xe = glia.randn(1, 6):expand(3, 6)
  t.near(glia.layer_norm(xe, w, b), norm_ref(xe:totable(), w:totable(), b:totable(), 1e-5, true), 1e-5,
         "layer_norm reads an expanded (stride 0) input")
  t.is(glia.layer_norm(glia.zeros(0, 6), w, b):numel(), 0, "layer_norm of zero rows is empty")
  local c = glia.layer_norm(glia.ones(2, 5) * 7)
  t.near(c, glia.zeros(2, 5), 0, "a constant row normalizes to 0 (eps keeps it finite)")
end

do
  local x, w, b = glia.randn(3, 5), glia.randn(5), glia.randn(5)
  u.gradcheck(function(p, q, r) return glia.layer_norm(p, q, r) end, { x, w, b },
              "gradcheck passes for layer_norm on x, weight and bias (eps 1e-3, tol 1e-2)")
  local xt = glia.randn(5, 3)
  u.gradcheck(function(p, q) return glia.layer_norm(p:t(), q) end, { xt, w },
              "gradcheck passes for layer_norm on a transposed x with weight")
  u.gradcheck(function(p, q) return glia.layer_norm(p:expand(3, 5), nil, q) end,
              { glia.randn(1, 5), glia.randn(5) },
              "gradcheck passes for layer_norm through expand, with a bias and no weight")
  u.gradcheck(function(p) return glia.layer_norm(p) end, { glia.randn(4, 3) },
              "gradcheck passes for layer_norm without weight and bias")
end

do
  local x, w, b = glia.randn(1000, 48), glia.randn(48), glia.randn(48)
  local dy = glia.randn(1000, 48)
  same_threads({ "layer_norm's output is identical with 1 and 2 threads",
                 "layer_norm's dx is identical with 1 and 2 threads",
                 "layer_norm's dweight is identical with 1 and 2 threads",
                 "layer_norm's dbias is identical with 1 and 2 threads" }, function()
    for _, p in ipairs({ x, w, b }) do p:zero_grad() p:requires_grad() end
    local y = glia.layer_norm(x, w, b)
    y:backward(dy)
    return { y:totable(), x.grad:totable(), w.grad:totable(), b.grad:totable() }
  end)
  -- dweight and dbias against sums in Lua
  local xt, dyt = glia.no_grad(glia.layer_norm, x):totable(), dy:totable()
  local dw, db = {}, {}
  for c = 1, 48 do
    dw[c], db[c] = 0, 0
    for r = 1, 1000 do
      dw[c] = dw[c] + dyt[r][c] * xt[r][c]
      db[c] = db[c] + dyt[r][c]
    end
  end
  t.near(w.grad, dw, 1e-3, "layer_norm's dweight over 1000 rows sums dy * x_hat")
  t.near(b.grad, db, 1e-3, "layer_norm's dbias over 1000 rows sums dy")
end

do
  local x = glia.randn(4, 6)
  t.error_like(function() glia.layer_norm(x, glia.randn(5)) end,
               "layer_norm: weight {5} does not match the last dim of input {4,6}",
               "layer_norm refuses a weight of the wrong size, naming both shapes")
  t.error_like(function() glia.layer_norm(x, nil, glia.randn(6, 1)) end,
               "layer_norm: bias {6,1} does not match",
               "layer_norm refuses a bias that is not 1-D")
  t.error_like(function() glia.layer_norm(x:to("i64")) end, "layer_norm: input must be f32, got i64",
               "layer_norm refuses an integer input, naming its dtype")
end

-- =============================================================== rms_norm

do
  local x, w = glia.randn(5, 8) * 2, glia.randn(8)
  t.near(glia.rms_norm(x, w), norm_ref(x:totable(), w:totable(), nil, 1e-6, false), 1e-5,
         "rms_norm matches a Lua reference with weight")
  t.near(x:rms_norm(), norm_ref(x:totable(), nil, nil, 1e-6, false), 1e-5,
         "rms_norm without weight scales rows to unit root-mean-square")
  local xt = glia.randn(8, 5)
  t.near(glia.rms_norm(xt:t(), w, 0.1), norm_ref(xt:t():totable(), w:totable(), nil, 0.1, false), 1e-5,
         "rms_norm reads a transposed input and honours eps")
  u.gradcheck(function(p, q) return glia.rms_norm(p, q) end, { glia.randn(3, 5), glia.randn(5) },
              "gradcheck passes for rms_norm on x and weight (eps 1e-3, tol 1e-2)")
  u.gradcheck(function(p) return glia.rms_norm(p:t()) end, { glia.randn(5, 3) },
              "gradcheck passes for rms_norm on a transposed x without weight")
  t.error_like(function() glia.rms_norm(x, glia.randn(7)) end,
               "rms_norm: weight {7} does not match the last dim of input {5,8}",
               "rms_norm refuses a weight of the wrong size, naming both shapes")
  local xb, wb, dy = glia.randn(700, 33), glia.randn(33), glia.randn(700, 33)
  same_threads({ "rms_norm's dx is identical with 1 and 2 threads",
                 "rms_norm's dweight is identical with 1 and 2 threads" }, function()
    for _, p in ipairs({ xb, wb }) do p:zero_grad() p:requires_grad() end
    glia.rms_norm(xb, wb):backward(dy)
    return { xb.grad:totable(), wb.grad:totable() }
  end)
end

do -- allocation failures end in clean errors (and leak nothing under SAN)
  local x, xs, w, b = glia.randn(5, 4), glia.randn(4, 5), glia.randn(4), glia.randn(4)
  u.oom_ok(function()
    for _, p in ipairs({ xs, w, b }) do p:zero_grad() p:requires_grad() end
    glia.layer_norm(xs:t(), w, b):backward(glia.ones(5, 4))
  end, "layer_norm forward and backward fail cleanly at every allocation")
  u.oom_ok(function()
    for _, p in ipairs({ x, w }) do p:zero_grad() p:requires_grad() end
    glia.rms_norm(x, w):backward(glia.ones(5, 4))
  end, "rms_norm forward and backward fail cleanly at every allocation")
  u.oom_ok(function()
    x:zero_grad() x:requires_grad()
    glia.dropout(xs:t(), 0.5):backward(glia.ones(5, 4))
  end, "dropout forward and backward fail cleanly at every allocation")
end

-- ================================================================ dropout

local function mask_of(y) -- 1 where kept, 0 where dropped
  local m = {}
  for i, v in ipairs(t.flat(y, {})) do m[i] = v ~= 0 and 1 or 0 end
  return m
end

do
  local n, p = 100000, 0.3
  local x = glia.ones(n)
  glia.manual_seed(7)
  local y = glia.dropout(x, p)
  local kept, scaled = 0, true
  for _, v in ipairs(t.flat(y, {})) do
    if v ~= 0 then
      kept = kept + 1
      if abs(v - 1 / (1 - p)) > 1e-6 then scaled = false end
    end
  end
  local frac = 1 - kept / n
  t.ok(abs(frac - p) < 0.01, ("dropout zeroes a fraction %.4f ~ p = 0.3 of 100k elements"):format(frac))
  t.ok(scaled, "dropout scales every kept element by 1/(1-p)")
  glia.manual_seed(7)
  t.is(t.maxdiff(glia.dropout(x, p), y), 0, "the same seed gives the same mask")
  t.ok(t.maxdiff(glia.dropout(x, p), y) > 0, "the next call draws a different mask")
  local seed, offset = glia.rng_state()
  local a = glia.dropout(x, 0.5)
  glia.set_rng_state(seed, offset)
  t.is(t.maxdiff(glia.dropout(x, 0.5), a), 0, "restoring the rng state reproduces a mask")

  local r = u.by_threads(function()
    glia.manual_seed(11)
    return glia.dropout(x, 0.5)
  end)
  t.is(t.maxdiff(r[1], r[2]), 0, "the mask is identical with 1 and 2 threads")
end

do
  local x = glia.randn(6, 50)
  x:requires_grad()
  glia.manual_seed(3)
  local y = glia.dropout(x, 0.4)
  local gy = glia.randn(6, 50)
  y:backward(gy)
  local m, g, want = mask_of(y), t.flat(gy, {}), {}
  for i = 1, #m do want[i] = m[i] * g[i] / 0.6 end
  t.near(t.flat(x.grad, {}), want, 1e-6, "dropout's gradient is the upstream gradient times mask/(1-p)")
  u.gradcheck(function(p)
                glia.manual_seed(5)
                return glia.dropout(p, 0.5)
              end, { glia.randn(4, 5) },
              "gradcheck passes for dropout (mask regenerated from the saved counter)")
end

do
  local x = glia.randn(8, 9)
  local xt = x:t()
  glia.manual_seed(9)
  local a = glia.dropout(xt, 0.5)
  glia.manual_seed(9)
  local b = glia.dropout(xt:contiguous(), 0.5)
  glia.manual_seed(9)
  local e = glia.dropout(glia.ones(1, 400):expand(3, 400), 0.5)
  local m = mask_of(e)
  local differ = false
  for i = 1, 400 do if m[i] ~= m[400 + i] then differ = true end end
  t.ok(differ, "an expanded input gets an independent mask per element, not per stored value")
  t.is(t.maxdiff(a, b), 0, "a strided input gets the mask of its row-major element order")
  t.near(mask_of(a), mask_of(b), 0, "dropout of a transposed input keeps its shape and values")
end

do
  local x = glia.randn(3, 4)
  local seed, offset = glia.rng_state()
  t.near(glia.dropout(x, 0.5, false), x, 0, "dropout in eval mode returns x unchanged")
  t.near(glia.dropout(x, 0), x, 0, "dropout with p = 0 returns x unchanged")
  local s2, o2 = glia.rng_state()
  t.ok(s2 == seed and o2 == offset, "eval-mode dropout consumes no random numbers")
  t.near(x:dropout(1), glia.zeros(3, 4), 0, "dropout with p = 1 gives zeros")
  t.is(glia.dropout(glia.zeros(0, 4), 0.5):numel(), 0, "dropout of an empty tensor is empty")
  t.error_like(function() glia.dropout(x, 1.5) end, "dropout: p must be in %[0, 1%], got 1.5",
               "dropout refuses p above 1")
  t.error_like(function() glia.dropout(x, -0.1) end, "dropout: p must be in %[0, 1%], got %-0.1",
               "dropout refuses a negative p")
  t.error_like(function() glia.dropout(x:to("i64"), 0.5) end, "dropout: input must be f32, got i64",
               "dropout refuses an integer input")
end

t.done()
