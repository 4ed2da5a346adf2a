-- t/linear_attention.t -- glia.linear_attention (ReLU-kernel linear
-- attention, ops/linear_attention.c): forward against a naive fp64 loop in
-- plain Lua and against the quadratic association order built from glia
-- ops; gradients against fp64 central differences of the naive loop and by
-- glia.gradcheck; strided inputs, eps, all-zero ReLU rows, empty shapes,
-- thread counts and bad input.
--
-- Tolerances: forward and gradients agree with the fp64 reference to 1e-5
-- relative to the largest magnitude of the reference tensor (f32 kernels,
-- fp32 accumulation); thread counts change nothing (bitwise: each head is
-- computed whole by one thread, its BLAS products single-threaded).
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

u.seed(20261206)

local abs, max = math.abs, math.max

-- ============================================================ reference

-- Naive linear attention in fp64 on nested tables q {B,H,N,D}, k {B,H,M,D},
-- v {B,H,M,E}: out_i = sum_j <Qr_i,Kr_j> v_j / (sum_j <Qr_i,Kr_j> + eps).
local function ref_la(q, k, v, eps)
  local function relu(x) return x > 0 and x or 0 end
  local out = {}
  for b = 1, #q do
    out[b] = {}
    for h = 1, #q[b] do
      local Q, K, V = q[b][h], k[b][h], v[b][h]
      local O = {}
      for i = 1, #Q do
        local num, den = {}, 0
        local E = #V > 0 and #V[1] or 0
        for e = 1, E do num[e] = 0 end
        for j = 1, #K do
          local w = 0
          for c = 1, #Q[i] do w = w + relu(Q[i][c]) * relu(K[j][c]) end
          den = den + w
          for e = 1, E do num[e] = num[e] + w * V[j][e] end
        end
        O[i] = {}
        for e = 1, E do O[i][e] = num[e] / (den + eps) end
      end
      out[b][h] = O
    end
  end
  return out
end

-- Max |a - b| relative to the largest |b|.
local function relerr(a, b)
  local fb, m = t.flat(b, {}), 0
  for _, x in ipairs(fb) do m = max(m, abs(x)) end
  return t.maxdiff(a, b) / max(m, 1e-30)
end

local function has_nan(x)
  for _, v in ipairs(t.flat(x, {})) do if v ~= v or abs(v) == math.huge then return true end end
  return false
end

-- A tensor of the given shape with values spread over +-[lo, hi], signs
-- scrambled: no value within lo of 0, the ReLU kink (gradient checks step
-- across no kink).
local function signed(shape, lo, hi, u0)
  local x = u.spread(shape, -(hi - lo), hi - lo, u0)
  local function shift(y)
    if type(y) == "table" then
      for i = 1, #y do y[i] = shift(y[i]) end
      return y
    end
    return y >= 0 and y + lo or y - lo
  end
  return glia.tensor(shift(x))
end

-- The quadratic association order from glia ops: ((Qr Kr^T) V) / rowsum.
local function quadratic(q, k, v, eps)
  local S = glia.matmul(glia.relu(q), glia.relu(k):transpose(3, 4))
  return glia.matmul(S, v) / (S:sum(4, true) + eps)
end

-- ============================================================== forward
do
  local q, k, v = glia.randn(2, 2, 4, 3), glia.randn(2, 2, 5, 3), glia.randn(2, 2, 5, 2)
  local o = glia.linear_attention(q, k, v)
  t.ok(u.same_shape(o, { 2, 2, 4, 2 }), "out is {B,H,N,E}: v's head dim, q's rows")
  local r = ref_la(q:totable(), k:totable(), v:totable(), 1e-6)
  t.ok(relerr(o, r) <= 1e-5, "equals the naive fp64 loop on tiny shapes (N 4 != M 5, D 3, E 2)")
end

do
  local q, k, v = glia.randn(2, 3, 33, 16), glia.randn(2, 3, 29, 16), glia.randn(2, 3, 29, 24)
  local o, qo = glia.linear_attention(q, k, v), quadratic(q, k, v, 1e-6)
  t.ok(relerr(o, qo) <= 1e-5, "the linear order Qr (Kr^T V) agrees with the quadratic ((Qr Kr^T) V) / rowsum")
end

do -- eps is added to every row's normalizer
  local q, k, v = glia.randn(1, 2, 6, 4), glia.randn(1, 2, 7, 4), glia.randn(1, 2, 7, 3)
  local o = glia.linear_attention(q, k, v, { eps = 0.5 })
  local r = ref_la(q:totable(), k:totable(), v:totable(), 0.5)
  t.ok(relerr(o, r) <= 1e-5, "eps = 0.5 matches the reference with eps 0.5")
  local d = t.maxdiff(o, glia.linear_attention(q, k, v))
  t.ok(d > 1e-3, "a larger eps changes the output (shrinks it towards 0)")
  -- scaling the pre-ReLU q by alpha > 0 changes the output only through eps
  local qp, kp = signed({ 1, 2, 6, 4 }, 0.3, 1.5), signed({ 1, 2, 7, 4 }, 0.3, 1.5, 0.1)
  local a = glia.linear_attention(qp, kp, v)
  t.ok(relerr(glia.linear_attention(qp * 7.5, kp, v), a) <= 2e-6 and
       relerr(glia.linear_attention(qp, kp * 0.25, v), a) <= 2e-6,
       "scaling q or k by alpha > 0 leaves the output unchanged (denominators >> eps)")
end

do -- a query row with no positive entry: den = eps, output 0, no NaN
  local q = glia.randn(1, 1, 4, 3)
  q[{ 1, 1, 2 }] = glia.tensor({ -1, -0.5, 0 })
  local k, v = glia.randn(1, 1, 5, 3), glia.randn(1, 1, 5, 2)
  local o = glia.linear_attention(q, k, v)
  t.ok(not has_nan(o) and t.maxdiff(o[{ 1, 1, 2 }], { 0, 0 }) == 0,
       "a row of q with no positive entry gives output 0 (den = eps), no NaN")
  local z = glia.linear_attention(q, glia.zeros(1, 1, 5, 3) - 1, v)
  t.ok(not has_nan(z) and t.maxdiff(z, glia.zeros(1, 1, 4, 2)) == 0,
       "k with no positive entry anywhere gives output 0, no NaN")
  q:requires_grad() k:requires_grad() v:requires_grad()
  local dy = glia.randn(1, 1, 4, 2)
  dy[{ 1, 1, 2 }] = glia.tensor({ 1e33, -1e33 }) -- dY / eps overflows to inf on that row
  glia.linear_attention(q, k, v):backward(dy)
  t.ok(not has_nan(q.grad) and not has_nan(k.grad) and not has_nan(v.grad) and
       t.maxdiff(q.grad[{ 1, 1, 2 }], { 0, 0, 0 }) == 0,
       "its gradients are finite (even where dY / eps overflows) and the row's dq is 0")
end

-- ============================================================ gradients
do -- glia's analytic gradients against fp64 central differences of the naive loop (u.gradcheck_f64)
  local B, H, N, M, D, E = 1, 2, 4, 5, 3, 2
  local function la64(desc, q, k, v, eps)
    u.gradcheck_f64(function(a, b, c) return glia.linear_attention(a, b, c, eps and { eps = eps }) end,
                    function(a, b, c) return ref_la(a, b, c, eps or 1e-6) end, { q, k, v }, desc)
  end
  -- q and k away from the ReLU kink; every row of Qr has a positive entry
  -- (a well-conditioned check) unless a test zeroes one
  local function qk()
    local q = signed({ B, H, N, D }, 0.2, 1.2, 0.1)
    for b = 1, B do for h = 1, H do for i = 1, N do q[{ b, h, i, 1 }] = abs(q[{ b, h, i, 1 }]) end end end
    return q, signed({ B, H, M, D }, 0.2, 1.2, 0.3)
  end
  local q, k = qk()
  la64("f64 gradcheck of dq, dk and dv (N 4 != M 5, D 3, E 2, default eps)", q, k, glia.randn(B, H, M, E))
  q, k = qk()
  la64("f64 gradcheck of dq, dk and dv with eps = 0.5 (eps inside the normalizer)", q, k,
       glia.randn(B, H, M, E), 0.5)
  q, k = qk()
  q[{ 1, 2, 3 }] = glia.tensor({ -1, -0.5, -0.3 })
  la64("f64 gradcheck with a query row whose ReLU is all zero (its output and dq are 0)", q, k,
       glia.randn(B, H, M, E))
  q, k = qk()
  k[{ 1, 1, 2 }] = glia.tensor({ -0.4, -0.9, -0.2 })
  la64("f64 gradcheck with a key row whose ReLU is all zero (its dk is 0, its value unused)", q, k,
       glia.randn(B, H, M, E))
  local qs = signed({ B, N, H, D }, 0.2, 1.2, 0.6)
  for b = 1, B do for i = 1, N do for h = 1, H do qs[{ b, i, h, 2 }] = abs(qs[{ b, i, h, 2 }]) end end end
  la64("f64 gradcheck on strided inputs (q and k transposed from {B,N,H,D}, v narrowed)",
       qs:transpose(2, 3), signed({ B, M, H, D }, 0.2, 1.2, 0.8):transpose(2, 3),
       glia.randn(B, H, M, E + 3):narrow(4, 2, E))
end

do
  local q = signed({ 1, 2, 3, 4 }, 0.25, 1.0, 0.2)
  local k = signed({ 1, 2, 5, 4 }, 0.25, 1.0, 0.7)
  for h = 1, 2 do for i = 1, 3 do q[{ 1, h, i, 2 }] = abs(q[{ 1, h, i, 2 }]) end end
  local v = glia.randn(1, 2, 5, 3)
  u.gradcheck(function(a, b, c) return glia.linear_attention(a, b, c, { eps = 1e-3 }) end, { q, k, v },
              "gradcheck (central differences, f32, eps 1e-2, atol 2e-3, rtol 2e-2) passes for q, k and v",
              { eps = 1e-2, atol = 2e-3, rtol = 2e-2 })
end

-- ============================================================== strides
do
  local B, N, H, D, E = 2, 7, 3, 5, 4
  local qs, ks, vs = glia.randn(B, N, H, D), glia.randn(B, N, H, D), glia.randn(B, N, H, E + 2)
  local q, k = qs:transpose(2, 3), ks:transpose(2, 3)
  local v = vs:narrow(4, 2, E):transpose(2, 3)
  local qc, kc, vc = q:contiguous(), k:contiguous(), v:contiguous()
  local w = glia.randn(B, H, N, E)
  local function run(a, b, c)
    for _, x in ipairs({ a, b, c }) do x:zero_grad() x:requires_grad() end
    local o = glia.linear_attention(a, b, c)
    o:backward(w)
    return o
  end
  local os_ = run(q, k, v)
  local gs = { q.grad, k.grad, v.grad }
  local oc = run(qc, kc, vc)
  t.ok(relerr(os_, oc) <= 1e-6, "inputs transposed from {B,N,H,d} (and v narrowed) give the contiguous result")
  t.ok(relerr(gs[1], qc.grad) <= 1e-6 and relerr(gs[2], kc.grad) <= 1e-6 and relerr(gs[3], vc.grad) <= 1e-6,
       "and the same gradients, in the inputs' shapes")
  -- rows not contiguous at all (last dim strided): copied first
  local qt = glia.randn(B, H, D, N):transpose(3, 4)
  t.ok(relerr(glia.linear_attention(qt, kc, vc), glia.linear_attention(qt:contiguous(), kc, vc)) <= 1e-6,
       "q with a strided last dim gives the contiguous result")
  local o = glia.linear_attention(qc, kc, vc)
  local dsw = glia.randn(B, H, E, N):transpose(3, 4)
  qc:zero_grad()
  o = glia.linear_attention(qc, kc, vc)
  o:backward(dsw)
  local g1 = qc.grad
  qc:zero_grad()
  glia.linear_attention(qc, kc, vc):backward(dsw:contiguous())
  t.ok(relerr(g1, qc.grad) <= 1e-6, "a strided upstream gradient gives the contiguous one's result")
end

-- ======================================================= empty shapes
do
  local o = glia.linear_attention(glia.randn(1, 2, 0, 4), glia.randn(1, 2, 3, 4), glia.randn(1, 2, 3, 5))
  t.ok(u.same_shape(o, { 1, 2, 0, 5 }), "no query rows give an empty {B,H,0,E} output")
  local q = glia.randn(1, 2, 3, 4)
  q:requires_grad()
  local z = glia.linear_attention(q, glia.randn(1, 2, 0, 4), glia.randn(1, 2, 0, 5))
  t.ok(t.maxdiff(z, glia.zeros(1, 2, 3, 5)) == 0, "no keys give output 0")
  z:sum():backward()
  t.ok(t.maxdiff(q.grad, glia.zeros(1, 2, 3, 4)) == 0, "and a zero dq")
  local d0 = glia.linear_attention(glia.randn(1, 1, 3, 0), glia.randn(1, 1, 2, 0), glia.randn(1, 1, 2, 2))
  t.ok(t.maxdiff(d0, glia.zeros(1, 1, 3, 2)) == 0, "head dim 0 gives output 0")
end

-- ======================================================= thread counts
do
  local q, k, v = glia.randn(2, 4, 300, 32), glia.randn(2, 4, 300, 32), glia.randn(2, 4, 300, 32)
  local w = glia.randn(2, 4, 300, 32)
  local res = u.by_threads(function()
    for _, x in ipairs({ q, k, v }) do x:zero_grad() x:requires_grad() end
    local o = glia.linear_attention(q, k, v)
    o:backward(w)
    return { o:totable(), q.grad:totable(), k.grad:totable(), v.grad:totable() }
  end)
  t.ok(u.identical(res[1], res[2]), "1 and 2 threads give identical bits, forward and backward")
end

-- ============================================================== memory
-- Fails the n-th allocation for n = 1, 2, ... until forward+backward
-- succeeds: every failure must be a clean out-of-memory error (and, under
-- the sanitizers, leak nothing). Strided v and dout take the copying path.
do
  local q, k = glia.randn(1, 2, 40, 16), glia.randn(1, 2, 50, 16)
  local v = glia.randn(1, 2, 8, 50):transpose(3, 4)
  local dout = glia.randn(1, 2, 8, 40):transpose(3, 4)
  for _, x in ipairs({ q, k, v }) do x:requires_grad() end
  u.oom_ok(function()
    local o = glia.linear_attention(q, k, v)
    o:backward(dout)
  end, "every allocation failure in linear_attention forward+backward is a clean out-of-memory error")
end

-- ============================================================== errors
do
  local q, k, v = glia.randn(1, 2, 4, 3), glia.randn(1, 2, 5, 3), glia.randn(1, 2, 5, 2)
  t.error_like(function() glia.linear_attention(glia.randn(2, 4, 3), k, v) end,
               "linear_attention: q must be a 4%-D f32 tensor {B,heads,rows,dim}, got f32 {2,4,3}",
               "a 3-D q is refused, naming the op and its shape")
  t.error_like(function() glia.linear_attention(q, k:to("i64"), v) end,
               "linear_attention: k must be a 4%-D f32 tensor .*got i64 {1,2,5,3}", "an i64 k is refused")
  t.error_like(function() glia.linear_attention(q, glia.randn(1, 1, 5, 3), glia.randn(1, 1, 5, 2)) end,
               "linear_attention: head counts differ %(q, k and v need the same heads%), q {1,2,4,3}, k {1,1,5,3}",
               "k/v with fewer heads than q are refused (no grouped heads)")
  t.error_like(function() glia.linear_attention(q, glia.randn(2, 2, 5, 3), v) end,
               "linear_attention: batch sizes differ", "batch sizes that differ are refused")
  t.error_like(function() glia.linear_attention(q, glia.randn(1, 2, 5, 4), v) end,
               "linear_attention: q and k head dims differ, q {1,2,4,3}, k {1,2,5,4}, v {1,2,5,2}",
               "q and k head dims that differ are refused, all shapes named")
  t.error_like(function() glia.linear_attention(q, k, glia.randn(1, 2, 6, 2)) end,
               "linear_attention: k and v lengths differ", "k and v lengths that differ are refused")
  t.error_like(function() glia.linear_attention(q, k, v, { eps = 0 }) end,
               "linear_attention: eps must be a positive finite number, got 0", "eps = 0 is refused")
  t.error_like(function() glia.linear_attention(q, k, v, { eps = -1e-6 }) end,
               "linear_attention: eps must be a positive", "a negative eps is refused")
  t.error_like(function() glia.linear_attention(q, k, v, { eps = 1 / 0 }) end,
               "linear_attention: eps must be a positive finite", "an infinite eps is refused")
  t.error_like(function() glia.linear_attention(q, k, v, { epsilon = 1 }) end,
               "glia.linear_attention: unknown option 'epsilon' %(known: eps%)", "an unknown option is named")
  t.error_like(function() glia.linear_attention(q, k, v, 1e-3) end,
               "glia.linear_attention: options must be a table, got number", "options must be a table")
end

t.done()
