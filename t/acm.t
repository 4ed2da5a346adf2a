-- t/acm.t -- Adaptive Computation Modules, the ops (ops/acm.c): glia.acm,
-- the bucketed per-token forward, and glia.acm_all, every prefix at once.
-- Proves the spec's invariants against a naive per-token reference in
-- doubles: a dense MLP split into learners is exact, prefixes are
-- consistent, the bucketed schedule equals the per-token computation for
-- random counts at every thread count and for one token, k = 0 runs
-- nothing; gradients in f64 (gated, and every prefix with and without
-- detach), determinism, and the errors bad input gets.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

u.seed(20261206)

local abs, exp, sqrt, max, floor = math.abs, math.exp, math.sqrt, math.max, math.floor

t.plan(59)

-- ============================================================ reference

local erf = u.erf

local ACT = {
  gelu = function(z) return 0.5 * z * (1 + erf(z / sqrt(2))) end,
  gelu_tanh = function(z)
    local v = sqrt(2 / math.pi) * (z + 0.044715 * z ^ 3)
    return z / (1 + exp(-2 * v))
  end,
  relu = function(z) return z > 0 and z or 0 end,
  identity = function(z) return z end,
}

-- o_k(x) of one token x (a table of d) for learners N, in doubles.
local function ref_token(x, w1, b1, w2, N, k, act)
  local d, H = #x, #b1
  local w, y = floor(H / N), {}
  for c = 1, d do y[c] = 0 end
  for j = 1, k * w do
    local s = b1[j]
    for c = 1, d do s = s + w1[j][c] * x[c] end
    s = act(s)
    for c = 1, d do y[c] = y[c] + w2[c][j] * s end
  end
  return y
end

-- glia.acm's value, per token: rows of o_{k_t}(x_t).
local function ref_acm(ks, N, actname)
  return function(x, w1, b1, w2)
    local out = {}
    for i = 1, #x do out[i] = ref_token(x[i], w1, b1, w2, N, ks[i], ACT[actname or "gelu"]) end
    return out
  end
end

-- glia.acm_all's value: {N+1, T, d}; with `each`, learner outputs h_k
-- instead of their running sums (entry 1 stays 0).
local function ref_all(N, actname, each)
  return function(x, w1, b1, w2)
    local out = {}
    for k = 0, N do
      out[k + 1] = {}
      for i = 1, #x do
        local y = ref_token(x[i], w1, b1, w2, N, k, ACT[actname or "gelu"])
        if each and k > 0 then
          local p = ref_token(x[i], w1, b1, w2, N, k - 1, ACT[actname or "gelu"])
          for c = 1, #y do y[c] = y[c] - p[c] end
        end
        out[k + 1][i] = y
      end
    end
    return out
  end
end

local function relerr(a, b)
  local fb, m = t.flat(b, {}), 0
  for _, v in ipairs(fb) do m = max(m, abs(v)) end
  return t.maxdiff(a, b) / max(m, 1e-30)
end

-- random learners: x {T,d}, w1 {N*w,d}, b1, w2 {d,N*w}, scaled so that
-- hidden pre-activations stay O(1)
local function make(T, d, N, w, scale)
  scale = scale or 1
  local H = N * w
  return glia.randn(T, d), glia.randn(H, d) * (scale / sqrt(d)), glia.randn(H) * 0.1,
         glia.randn(d, H) * (scale / sqrt(H))
end

local function rand_k(T, N)
  local ks = {}
  for i = 1, T do ks[i] = floor(glia.rand(1):item() * (N + 1)) % (N + 1) end
  return ks, glia.tensor(ks, "i64")
end

local function full_k(T, v)
  local ks = {}
  for i = 1, T do ks[i] = v end
  return ks, glia.tensor(ks, "i64")
end

-- ============================================================ forward

do -- 1. a dense MLP split into learners gives o_N(x) = f(x)
  local T, d, N, w = 37, 16, 4, 8
  local x, w1, b1, w2 = make(T, d, N, w)
  local dense = glia.linear(glia.gelu(glia.linear(x, w1, b1)), w2)
  local _, kN = full_k(T, N)
  local y = glia.acm(x, w1, b1, w2, kN, { learners = N })
  local all = glia.acm_all(x, w1, b1, w2, { learners = N })
  t.ok(t.maxdiff(y, dense) <= 1e-6 * max(1, t.maxdiff(dense, dense * 0)),
       "an MLP's hidden units split into 4 learners give o_N(x) = the MLP (gated)")
  t.ok(t.maxdiff(all[N + 1], dense) <= 1e-6 * max(1, t.maxdiff(dense, dense * 0)),
       "and every-prefix's last prefix is the MLP too")
end

do -- 2. prefix consistency
  local T, d, N, w = 9, 5, 3, 4
  local x, w1, b1, w2 = make(T, d, N, w)
  local all = glia.acm_all(x, w1, b1, w2, { learners = N })
  t.is(all:shape()[1], N + 1, "acm_all returns N + 1 prefixes")
  t.ok(u.identical(all[1], glia.zeros(T, d)), "prefix 0 is exactly 0")
  local each = ref_all(N, "gelu", true)(x:totable(), w1:totable(), b1:totable(), w2:totable())
  local worst = 0
  for k = 1, N do worst = max(worst, relerr(all[k + 1] - all[k], each[k + 1])) end
  t.ok(worst < 1e-5, "o_k - o_{k-1} = h_k, the k-th learner alone, for every k")
  local want = ref_all(N, "gelu")(x:totable(), w1:totable(), b1:totable(), w2:totable())
  t.ok(relerr(all, want) < 1e-5, "every prefix matches the per-token reference in doubles")
end

do -- each activation, gated and every-prefix, against the reference
  local T, d, N, w = 11, 6, 2, 5
  local x, w1, b1, w2 = make(T, d, N, w, 2)
  local ks, k = rand_k(T, N)
  local worst = 0
  for _, a in ipairs { "gelu", "gelu_tanh", "relu", "identity" } do
    local want = ref_acm(ks, N, a)(x:totable(), w1:totable(), b1:totable(), w2:totable())
    worst = max(worst, relerr(glia.acm(x, w1, b1, w2, k, { learners = N, activation = a }), want))
    local wall = ref_all(N, a)(x:totable(), w1:totable(), b1:totable(), w2:totable())
    worst = max(worst, relerr(glia.acm_all(x, w1, b1, w2, { learners = N, activation = a }), wall))
  end
  t.ok(worst < 1e-5, "gelu, gelu_tanh, relu and identity learners match the reference")
end

do -- 3. bucketed = naive per token, every thread count, T = 1, strides
  local T, d, N, w = 301, 24, 4, 16
  local x, w1, b1, w2 = make(T, d, N, w)
  local ks, k = rand_k(T, N)
  local want = ref_acm(ks, N)(x:totable(), w1:totable(), b1:totable(), w2:totable())
  local got = u.by_threads(function() return glia.acm(x, w1, b1, w2, k) end, { 1, 2, 3 })
  t.ok(relerr(got[1], want) < 1e-6, "bucketed inference equals the per-token o_k(x) (1 thread)")
  t.ok(u.identical(got[1], got[2]) and u.identical(got[1], got[3]),
       "and gives the same bits on 2 and 3 threads")
  local worst = 0
  for kk = 0, N do
    for _, i in ipairs { 1, 77, T } do
      local y = glia.acm(x:narrow(1, i, 1), w1, b1, w2, glia.tensor({ kk }, "i64"))
      worst = max(worst, relerr(y[1], ref_token(x[i]:totable(), w1:totable(), b1:totable(),
                                                w2:totable(), N, kk, ACT.gelu)))
    end
  end
  t.ok(worst < 1e-6, "one token (decoding) at each k = 0..N equals the reference")
  local y3 = glia.acm(x:narrow(1, 5, 3), w1, b1, w2, k:narrow(1, 5, 3))
  t.ok(relerr(y3, { want[5], want[6], want[7] }) < 1e-6, "three tokens (the row path) too")
  -- strided: x and the weights as transposed views, k as i32 with a stride
  local xt, w1t, w2t = x:t():contiguous():t(), w1:t():contiguous():t(), w2:t():contiguous():t()
  local k2 = glia.zeros(T, 2, "i32")
  k2:select(2, 1):copy_(k)
  local ys = glia.acm(xt, w1t, b1, w2t, k2:select(2, 1))
  t.ok(u.identical(ys, got[1]), "transposed x, w1, w2 and a strided i32 k give the same result")
end

do -- 3. the tier schedule: learner by learner on the prefix of rows with k > l
  local T, d, N, w = 600, 24, 4, 16 -- more than one chunk of 256 rows
  local x, w1, b1, w2 = make(T, d, N, w)
  local ks, k = rand_k(T, N)
  local want = ref_acm(ks, N)(x:totable(), w1:totable(), b1:totable(), w2:totable())
  local tier = { learners = N, schedule = "tier" }
  local got = u.by_threads(function() return { glia.acm(x, w1, b1, w2, k, tier) } end, { 1, 2 })
  local bucket, fb = glia.acm(x, w1, b1, w2, k, { learners = N })
  t.ok(relerr(got[1][1], want) < 1e-6 and relerr(got[1][1], bucket) < 1e-6,
       "the tier schedule equals the per-token o_k(x) and the bucket schedule")
  t.ok(u.identical(got[1][1], got[2][1]), "and gives the same bits on 1 and 2 threads")
  t.is(got[1][2], fb, "and counts the same learner FLOPs")
  local worst = 0
  for kk = 0, N do
    local y = glia.acm(x:narrow(1, 3, 1), w1, b1, w2, glia.tensor({ kk }, "i64"), tier)
    worst = max(worst, relerr(y[1], ref_token(x[3]:totable(), w1:totable(), b1:totable(),
                                              w2:totable(), N, kk, ACT.gelu)))
  end
  t.ok(worst < 1e-6, "one token at each k = 0..N under the tier schedule equals the reference")
  local _, k0 = full_k(T, 0)
  t.ok(u.identical(glia.acm(x, w1, b1, w2, k0, tier), glia.zeros(T, d)),
       "k = 0 everywhere gives exactly 0 under the tier schedule too")
  -- the backward is the bucket one for either schedule
  local function grads(opts)
    local xs, a, b, c = x:narrow(1, 1, 40):clone():requires_grad(), w1:clone():requires_grad(),
                        b1:clone():requires_grad(), w2:clone():requires_grad()
    glia.acm(xs, a, b, c, k:narrow(1, 1, 40), opts):sum():backward()
    return { xs.grad, a.grad, b.grad, c.grad }
  end
  local gb, gt = grads({ learners = N }), grads(tier)
  local same = true
  for i = 1, 4 do same = same and u.identical(gb[i], gt[i]) end
  t.ok(same, "gradients through the tier schedule are the bucket schedule's, bit for bit")
end

do -- the decoding path (under 4 tokens with k > 0): exact zeros, bits on any thread count
  local T, d, N, w = 7, 20, 4, 12
  local x, w1, b1, w2 = make(T, d, N, w)
  local ks = { 0, 3, 0, 1, 0, 4, 0 } -- 3 tokens run: the row-at-a-time path
  local k = glia.tensor(ks, "i64")
  local want = ref_acm(ks, N)(x:totable(), w1:totable(), b1:totable(), w2:totable())
  local got = u.by_threads(function() return glia.acm(x, w1, b1, w2, k) end, { 1, 2, 3 })
  t.ok(relerr(got[1], want) < 1e-6, "three of seven tokens run: each equals the reference")
  local zeros = true
  for i = 1, T do
    if ks[i] == 0 and not u.identical(got[1][i], glia.zeros(d)) then zeros = false end
  end
  t.ok(zeros, "and the tokens with k = 0 get exactly 0 (their rows are written, not left)")
  t.ok(u.identical(got[1], got[2]) and u.identical(got[1], got[3]),
       "and the same bits on 1, 2 and 3 threads")
  -- the same tokens one at a time: the same bits as in the call of seven
  local same = true
  for i = 1, T do
    local yi = glia.acm(x:narrow(1, i, 1), w1, b1, w2, k:narrow(1, i, 1))
    if not u.identical(yi[1], got[1][i]) then same = false end
  end
  t.ok(same, "a token decoded alone gives the bits it gets among a few")
end

do -- 4. all-zero and all-N gates
  local T, d, N, w = 50, 8, 4, 4
  local x, w1, b1, w2 = make(T, d, N, w)
  local _, k0 = full_k(T, 0)
  local y0, f0 = glia.acm(x, w1, b1, w2, k0)
  t.ok(u.identical(y0, glia.zeros(T, d)), "k = 0 for every token gives exactly 0")
  t.is(f0, 0, "and runs no learner FLOPs (no GEMM)")
  local _, kN = full_k(T, N)
  local yN, fN = glia.acm(x, w1, b1, w2, kN)
  local all = glia.acm_all(x, w1, b1, w2)
  t.ok(relerr(yN, all[N + 1]) < 1e-6, "k = N for every token equals every-prefix's last")
  t.is(fN, T * N * (4 * d * w + 2 * w), "and counts N learners' FLOPs per token")
  local ks, k = rand_k(T, N)
  local _, f = glia.acm(x, w1, b1, w2, k)
  local sum = 0
  for i = 1, T do sum = sum + ks[i] end
  t.is(f, sum * (4 * d * w + 2 * w), "random k: the FLOPs run are sum_t k_t (4 d w + 2 w)")
end

-- ========================================================== gradients

do -- 6. gated backward: f64 check, learners not run get nothing
  local T, d, N, w = 7, 4, 3, 3
  local x, w1, b1, w2 = make(T, d, N, w)
  local ks, k = { 0, 1, 2, 3, 1, 2, 2 }, nil
  k = glia.tensor(ks, "i64")
  u.gradcheck_f64(function(a, b, c, e) return glia.acm(a, b, c, e, k, { learners = N }) end,
                  ref_acm(ks, N), { x, w1, b1, w2 }, "gated acm: gradients of x, w1, b1, w2 in f64")
  u.gradcheck(function(a, b, c, e) return glia.acm(a, b, c, e, k, { learners = N }) end,
              { x, w1, b1, w2 }, "gated acm: f32 gradient check")
  local ks2 = { 0, 1, 1, 0, 2, 1, 0 }
  local k2 = glia.tensor(ks2, "i64")
  for _, p in ipairs { x, w1, b1, w2 } do p:zero_grad() end
  glia.acm(x, w1, b1, w2, k2, { learners = N }):sum():backward()
  local untouched = u.identical(w1.grad:narrow(1, 2 * w + 1, w), glia.zeros(w, d)) and
                    u.identical(b1.grad:narrow(1, 2 * w + 1, w), glia.zeros(w)) and
                    u.identical(w2.grad:narrow(2, 2 * w + 1, w), glia.zeros(d, w))
  t.ok(untouched, "a learner no token ran gets exactly zero gradient")
  t.ok(u.identical(x.grad[1], glia.zeros(d)) and u.identical(x.grad[4], glia.zeros(d)),
       "a token with k = 0 gets exactly zero gradient")
  local _, kr = rand_k(T, N)
  u.gradcheck_f64(function(a, b, c, e)
    return glia.acm(a, b, c, e, kr, { learners = N, activation = "relu" })
  end, ref_acm(kr:totable(), N, "relu"), { x, w1, b1, w2 }, "gated acm with relu learners in f64")
end

do -- gate_task_grad's output (nn.acm's task_grad_mix): the spec's f~ = sum_k g_k o_k(x)
  -- at a one-hot g (the gate's straight-through forward value), in f64:
  -- its value is o_{k_t}(x_t), and its gradient is g_k -> <dL/df~, o_k>,
  -- the learners' and x's that of the chosen prefix. The finite
  -- differences move g off the one-hot, so they see the formula, not argmax.
  local A = require "glia.nn.acm"
  local T, d, N, w = 6, 4, 3, 3
  local x, w1, b1, w2 = make(T, d, N, w)
  local ks = { 0, 1, 2, 3, 1, 3 }
  local k, g = glia.tensor(ks, "i64"), glia.zeros(T, N + 1)
  for i = 1, T do g[i][ks[i] + 1] = 1 end
  local opts = { learners = N }
  local function mix(a, b, c, e, gg)
    return A.task_grad_mix(glia.acm(a, b, c, e, k, opts), gg,
                           glia.no_grad(glia.acm_all, a, b, c, e, opts))
  end
  local function ref(xr, w1r, b1r, w2r, gr)
    local out = {}
    for i = 1, T do
      local y = {}
      for c = 1, d do y[c] = 0 end
      for kk = 0, N do
        local o = ref_token(xr[i], w1r, b1r, w2r, N, kk, ACT.gelu)
        for c = 1, d do y[c] = y[c] + gr[i][kk + 1] * o[c] end
      end
      out[i] = y
    end
    return out
  end
  u.gradcheck_f64(mix, ref, { x, w1, b1, w2, g },
                  "f~ = sum_k g_k o_k: value and gradients of x, w1, b1, w2 and g in f64")
  t.ok(u.identical(glia.no_grad(mix, x, w1, b1, w2, g), glia.acm(x, w1, b1, w2, k, opts)),
       "its value is the gated output's, to the bit")
end

do -- every prefix: both gradient variants
  local T, d, N, w = 5, 3, 3, 2
  local x, w1, b1, w2 = make(T, d, N, w)
  u.gradcheck_f64(function(a, b, c, e)
    return glia.acm_all(a, b, c, e, { learners = N, detach = false })
  end, ref_all(N), { x, w1, b1, w2 }, "acm_all no_detach: gradients in f64 (every prefix)")
  -- detach: o_k = h_k + stopgrad(o_{k-1}), so o_k - stopgrad(o_{k-1}) = h_k
  -- carries exactly the gradient of h_k alone
  local function each(a, b, c, e)
    local all = glia.acm_all(a, b, c, e, { learners = N, detach = true })
    local parts = { all[1] }
    for k = 2, N + 1 do parts[k] = all[k] - all[k - 1]:detach() end
    return glia.stack(parts, 1)
  end
  u.gradcheck_f64(each, ref_all(N, "gelu", true), { x, w1, b1, w2 },
                  "acm_all detach: learner k's gradient is that of h_k alone, in f64")
  u.gradcheck(each, { x, w1, b1, w2 }, "acm_all detach: f32 gradient check", { atol = 2e-2 })
  u.gradcheck(function(a, b, c, e) return glia.acm_all(a, b, c, e, { learners = N, detach = false }) end,
              { x, w1, b1, w2 }, "acm_all no_detach: f32 gradient check", { atol = 2e-2 })
  -- in detach mode a loss on prefix n reaches learner n only
  for _, p in ipairs { x, w1, b1, w2 } do p:zero_grad() end
  local all = glia.acm_all(x, w1, b1, w2, { learners = N })
  all[3]:sum():backward()
  local g = w1.grad
  t.ok(u.identical(g:narrow(1, 1, w), glia.zeros(w, d)) and
       u.identical(g:narrow(1, 2 * w + 1, w), glia.zeros(w, d)) and
       t.maxdiff(g:narrow(1, w + 1, w), glia.zeros(w, d)) > 0,
       "detach: a loss on o_2 reaches learner 2 only")
  for _, p in ipairs { x, w1, b1, w2 } do p:zero_grad() end
  all = glia.acm_all(x, w1, b1, w2, { learners = N, detach = false })
  all[3]:sum():backward()
  g = w1.grad
  t.ok(t.maxdiff(g:narrow(1, 1, w), glia.zeros(w, d)) > 0 and
       u.identical(g:narrow(1, 2 * w + 1, w), glia.zeros(w, d)),
       "no_detach: a loss on o_2 reaches learners 1 and 2, not 3")
end

do -- 11. determinism: same inputs, same bits, runs and thread counts
  local T, d, N, w = 400, 16, 4, 16
  local x, w1, b1, w2 = make(T, d, N, w)
  local _, k = rand_k(T, N)
  local function run()
    for _, p in ipairs { x, w1, b1, w2 } do p:zero_grad() p:requires_grad() end
    local y = glia.acm(x, w1, b1, w2, k)
    y:mul(y):sum():backward()
    return { y:detach():clone(), x.grad:clone(), w1.grad:clone(), b1.grad:clone(), w2.grad:clone() }
  end
  local a, b = run(), run()
  local same = true
  for i = 1, 5 do same = same and u.identical(a[i], b[i]) end
  t.ok(same, "two runs give the same output and gradients, to the bit")
  local r = u.by_threads(run, { 1, 2 })
  same = true
  for i = 1, 5 do same = same and u.identical(r[1][i], r[2][i]) end
  t.ok(same, "1 and 2 threads give the same output and gradients, to the bit")
end

do -- weight gradients summed over many tokens: one owner per learner, any thread count
  -- (large enough that a threaded BLAS splits the token sums: it did, by ~5e-5)
  local T, d, N, w = 4096, 128, 4, 128
  local x, w1, b1, w2 = make(T, d, N, w)
  local _, k = rand_k(T, N)
  local dy = glia.randn(T, d)
  local function grads(fn)
    return function()
      for _, p in ipairs { x, w1, b1, w2 } do p:zero_grad() p:requires_grad() end
      local y = fn()
      y:mul(dy):sum():backward()
      return { y:detach():clone(), x.grad:clone(), w1.grad:clone(), b1.grad:clone(), w2.grad:clone() }
    end
  end
  local gated = u.by_threads(grads(function() return glia.acm(x, w1, b1, w2, k) end), { 1, 2 })
  local all = u.by_threads(grads(function()
    return glia.acm_all(x, w1, b1, w2, { detach = false }):narrow(1, 3, 1):view(T, d)
  end), { 1, 2 })
  local bad = {}
  local names = { "out", "dx", "dW1", "db1", "dW2" }
  for i = 1, 5 do
    if not u.identical(gated[1][i], gated[2][i]) then bad[#bad + 1] = "acm " .. names[i] end
    if not u.identical(all[1][i], all[2][i]) then bad[#bad + 1] = "acm_all " .. names[i] end
  end
  t.is(table.concat(bad, ", "), "",
       "T 4096, d 128, 4 learners of 128: acm and acm_all outputs and gradients the same bits on 1 and 2 threads")
end

do -- buckets cut into several tasks (about 2^26 multiply-adds each)
  local T, d, N, w = 12000, 64, 4, 128
  local x, w1, b1, w2 = make(T, d, N, w)
  local ks, k = rand_k(T, N)
  local got = u.by_threads(function() return glia.acm(x, w1, b1, w2, k) end, { 1, 2, 3 })
  t.ok(u.identical(got[1], got[2]) and u.identical(got[1], got[3]),
       "12000 tokens, buckets of several tasks: the same bits on 1, 2 and 3 threads")
  local all, worst = glia.acm_all(x, w1, b1, w2), 0
  for i = 1, T, 397 do worst = max(worst, relerr(got[1][i], all[ks[i] + 1][i])) end
  t.ok(worst < 1e-5, "and each token's row is its prefix o_k from acm_all")
end

do -- allocation failures: clean out-of-memory errors, nothing leaked (SAN)
  local x, w1, b1, w2 = make(40, 8, 4, 4)
  local k = glia.tensor({ 0, 1, 2, 3, 4, 1, 2, 3, 4, 0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 1,
                          2, 3, 4, 1, 1, 2, 2, 3, 3, 4, 4, 0, 0, 1, 2, 3, 4, 2, 2, 1 }, "i64")
  for _, p in ipairs { x, w1, b1, w2 } do p:requires_grad() end
  u.oom_ok(function()
    local y = glia.acm(x, w1, b1, w2, k)
    y:sum():backward()
  end, "every allocation failure in acm forward+backward is a clean out-of-memory error")
  u.oom_ok(function()
    local y = glia.acm_all(x, w1, b1, w2, { detach = false })
    y:sum():backward()
  end, "and in acm_all forward+backward")
  u.oom_ok(function() glia.acm(x:narrow(1, 2, 1), w1, b1, w2, k:narrow(1, 2, 1)) end,
           "and in the one-token path")
end

-- ============================================================== errors

do
  local x, w1, b1, w2 = make(4, 3, 2, 2)
  local k = glia.tensor({ 0, 1, 2, 1 }, "i64")
  t.error_like(function() glia.acm(x, w1, b1, w2, glia.tensor({ 0, 1, 3, 1 }, "i64"), { learners = 2 }) end,
               "glia.acm: k%[3%] = 3 is out of range 0..2", "k above N names the token and N")
  t.error_like(function() glia.acm(x, w1, b1, w2, glia.tensor({ 0, -1, 0, 1 }, "i64"), { learners = 2 }) end,
               "k%[2%] = %-1 is out of range", "a negative k is an error")
  t.error_like(function() glia.acm(x, w1, b1, w2, k, { learners = 3 }) end,
               "glia.acm: the packed width 4 %(w1 {4,3}%) does not divide into 3 learners",
               "widths that do not divide by the learner count")
  t.error_like(function() glia.acm_all(x, w1, b1, w2, { learners = 3 }) end,
               "glia.acm_all: the packed width 4", "the same for acm_all")
  t.error_like(function() glia.acm(x, w1:narrow(2, 1, 2), b1, w2, k, { learners = 2 }) end,
               "glia.acm: expected x {T,d}, w1 {H,d}, b1 {H}, w2 {d,H}, got x {4,3}, w1 {4,2}",
               "mismatched shapes name every operand")
  t.error_like(function() glia.acm(x, w1, b1, w2, glia.tensor({ 0, 1 }, "i64"), { learners = 2 }) end,
               "k must be an integer tensor {T} = {4}, got i64 {2}", "k of the wrong length")
  t.error_like(function() glia.acm(x, w1, b1, w2, glia.zeros(4), { learners = 2 }) end,
               "k must be an integer tensor", "k of a float dtype")
  t.error_like(function() glia.acm(x, w1, b1, w2, k, { learners = 2, activation = "tanh" }) end,
               'activation must be "gelu", "gelu_tanh", "relu" or "identity", got "tanh"',
               "an unknown activation")
  t.error_like(function() glia.acm(x, w1, b1, w2, k, { learners = 2, schedule = "tiers" }) end,
               'glia.acm: schedule must be "bucket" or "tier", got "tiers"', "an unknown schedule")
  t.error_like(function() glia.acm(x, w1, b1, w2, k, { learners = 0 }) end,
               "glia.acm: option learners must be an integer >= 1, got 0", "zero learners")
  t.error_like(function() glia.acm(x, w1, b1, w2, k, { learner = 2 }) end,
               "glia.acm: unknown option 'learner'", "an unknown option")
end

t.done()
