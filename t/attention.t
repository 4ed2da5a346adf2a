-- t/attention.t -- glia.attention (FlashAttention-2 style, ops/attention.c):
-- forward, LSE and all gradients against a naive fp64 reference written in
-- plain Lua; masks, fully masked rows, strided inputs, GQA/MQA, tile, split
-- and thread invariance, the KV-cache decode path, memory and errors.
--
-- Tolerances: outputs and gradients agree with the fp64 reference to 1e-5
-- relative to the largest magnitude of the reference tensor (f32 kernels,
-- fp32 accumulation); tile and split sizes change results by at most 2e-6;
-- thread counts change nothing (bitwise).
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

u.seed(20240601)

local inf, huge, abs, exp, log, sqrt, max, floor =
  math.huge, math.huge, math.abs, math.exp, math.log, math.sqrt, math.max, math.floor

-- ============================================================ reference

-- Element (b,h,i,j) of a nested table t of shape sz broadcast to 4-D.
local function bget(tab, sz, b, h, i, j)
  local idx, n = { b, h, i, j }, #sz
  local x = tab
  for d = 1, n do
    local k = idx[4 - n + d]
    x = x[sz[d] == 1 and 1 or k]
  end
  return x
end

-- Naive attention in fp64 on tables. o = { causal, scale, mask (table),
-- mshape, mkind ("bool"/"add"), dout (table) }. Returns out, lse and, with
-- dout, dq, dk, dv, dmask (dmask in the full {B,H,N,M} shape).
local function ref_attention(q, k, v, o)
  local B, H, N, D = #q, #q[1], #q[1][1], #q[1][1][1]
  local K, M = #k[1], #k[1][1]
  local E = M > 0 and #v[1][1][1] or o.E
  local g = H / K
  local scale = o.scale or 1 / sqrt(D)
  local out, lse, dq, dk, dv, dmask = {}, {}, {}, {}, {}, {}
  local function zeros(n, m)
    local r = {}
    for i = 1, n do r[i] = {} for c = 1, m do r[i][c] = 0 end end
    return r
  end
  for b = 1, B do
    out[b], lse[b], dq[b], dk[b], dv[b], dmask[b] = {}, {}, {}, {}, {}, {}
    for kh = 1, K do dk[b][kh], dv[b][kh] = zeros(M, D), zeros(M, E) end
    for h = 1, H do
      local kh = floor((h - 1) / g) + 1
      local Q, Kt, V = q[b][h], k[b][kh], v[b][kh]
      local O, L, P, S = zeros(N, E), {}, {}, {}
      for i = 1, N do
        S[i], P[i] = {}, {}
        local mx = -inf
        for j = 1, M do
          local s = 0
          for c = 1, D do s = s + Q[i][c] * Kt[j][c] end
          s = s * scale
          if o.mask then
            local mv = bget(o.mask, o.mshape, b, h, i, j)
            if o.mkind == "bool" then
              if not mv then s = -inf end
            else
              s = s + mv
            end
          end
          if o.causal and j - 1 > i - 1 + (M - N) then s = -inf end
          S[i][j] = s
          if s > mx then mx = s end
        end
        if mx == -inf then
          L[i] = inf
          for j = 1, M do P[i][j] = 0 end
        else
          local sum = 0
          for j = 1, M do sum = sum + exp(S[i][j] - mx) end
          L[i] = mx + log(sum)
          for j = 1, M do P[i][j] = exp(S[i][j] - L[i]) end
        end
        for j = 1, M do
          local p = P[i][j]
          if p ~= 0 then for c = 1, E do O[i][c] = O[i][c] + p * V[j][c] end end
        end
      end
      out[b][h], lse[b][h] = O, L
      if o.dout then
        local dO, dQ, dM = o.dout[b][h], zeros(N, D), zeros(N, M)
        local dK, dV = dk[b][kh], dv[b][kh]
        for i = 1, N do
          local Di = 0
          for c = 1, E do Di = Di + dO[i][c] * O[i][c] end
          for j = 1, M do
            local p = P[i][j]
            if p ~= 0 then
              local dp = 0
              for c = 1, E do
                dp = dp + dO[i][c] * V[j][c]
                dV[j][c] = dV[j][c] + p * dO[i][c]
              end
              local ds = p * (dp - Di)
              dM[i][j] = ds
              for c = 1, D do
                dQ[i][c] = dQ[i][c] + scale * ds * Kt[j][c]
                dK[j][c] = dK[j][c] + scale * ds * Q[i][c]
              end
            end
          end
        end
        dq[b][h], dmask[b][h] = dQ, dM
      end
    end
  end
  return out, lse, dq, dk, dv, dmask
end

-- Max |a - b| over nested tables / tensors relative to max |b| (at least 1).
local function relerr(got, want)
  local fa, fb = t.flat(got, {}), t.flat(want, {})
  if #fa ~= #fb then return huge end
  local m, scale = 0, 1
  for i = 1, #fb do if abs(fb[i]) ~= inf and abs(fb[i]) > scale then scale = abs(fb[i]) end end
  for i = 1, #fa do
    local x, y = fa[i], fb[i]
    local d = (x == y) and 0 or abs(x - y)
    if d ~= d then d = huge end
    if d > m then m = d end
  end
  return m / scale
end

local function close(got, want, tol, desc)
  local e = relerr(got, want)
  if not t.ok(e <= tol, desc) then t.diag(string.format("relative error %g > %g", e, tol)) end
end

local function has_nan(x)
  for _, v in ipairs(t.flat(x, {})) do if v ~= v then return true end end
  return false
end

-- ========================================================== the checks

-- -------------------------------------------------------------- memory
-- First, while the context's high-water mark is still low: peak - live
-- before the call is then what forward+backward allocated at most.
do
  local N, H, D = 2048, 2, 64
  local q, k, v = glia.randn(1, H, N, D), glia.randn(1, H, N, D), glia.randn(1, H, N, D)
  local dout = glia.randn(1, H, N, D)
  q:requires_grad() k:requires_grad() v:requires_grad()
  collectgarbage()
  collectgarbage()
  local before = glia.memory()
  local o = glia.attention(q, k, v, true)
  o:backward(dout)
  local after = glia.memory()
  local tensor = N * H * D * 4 -- bytes of one of q, k, v, o, dq, dk, dv
  -- o, dq, dk, dv, the engine's copies of the three gradients into .grad,
  -- and a few MiB of tiles and per-row statistics
  local allowed = 7 * tensor + 4 * 2 ^ 20
  local grown = after.peak - before.live
  t.ok(after.peak <= before.peak or grown <= allowed,
       string.format("forward+backward at N=%d needs no N x N buffer (peak growth %.1f MiB, allowed %.1f MiB, one score matrix %.0f MiB)",
                     N, grown / 2 ^ 20, allowed / 2 ^ 20, N * N * 4 / 2 ^ 20))
end


local TOL = 1e-5

-- Runs glia.attention forward + backward on fresh leaves and compares
-- out, lse and the three gradients with the reference.
local function check_case(c)
  local B, H, K, N, M, D, E = c.B, c.H, c.K, c.N, c.M, c.D, c.E or c.D
  local q, k, v = glia.randn(B, H, N, D), glia.randn(B, K, M, D), glia.randn(B, K, M, E)
  local dout = glia.randn(B, H, N, E)
  local name = string.format("B=%d H=%d Hkv=%d N=%d M=%d d=%d dv=%d%s%s", B, H, K, N, M, D, E,
                             c.causal and " causal" or "", c.br and (" tiles " .. c.br .. "x" .. c.bc) or "")
  q:requires_grad() k:requires_grad() v:requires_grad()
  local out = glia.attention(q, k, v, c.causal, nil, nil, c.br, c.bc)
  out:backward(dout)
  local _, lse = glia.no_grad(glia.attention_lse, q, k, v, c.causal, nil, nil, c.br, c.bc)
  local ro, rl, rdq, rdk, rdv = ref_attention(q:totable(), k:totable(), v:totable(),
                                              { causal = c.causal, dout = dout:totable(), E = E })
  close(out, ro, TOL, "forward equals the fp64 reference, " .. name)
  t.ok(relerr(lse, rl) <= TOL and not has_nan(lse), "log-sum-exp equals the reference, " .. name)
  close(q.grad, rdq, TOL, "dq equals the reference, " .. name)
  close(k.grad, rdk, TOL, "dk equals the reference (summed over the group), " .. name)
  close(v.grad, rdv, TOL, "dv equals the reference (summed over the group), " .. name)
end

local cases = {
  { B = 1, H = 2, K = 2, N = 7, M = 13, D = 32 },
  { B = 1, H = 2, K = 2, N = 13, M = 7, D = 32, causal = true },
  { B = 2, H = 4, K = 2, N = 37, M = 29, D = 64, causal = true, br = 8, bc = 16 },
  { B = 1, H = 8, K = 1, N = 19, M = 45, D = 64, E = 40, causal = true, br = 5, bc = 7 },
  { B = 1, H = 8, K = 8, N = 33, M = 33, D = 32, causal = true, br = 16, bc = 16 },
  { B = 1, H = 2, K = 1, N = 21, M = 50, D = 128, br = 4, bc = 24 },
  { B = 1, H = 1, K = 1, N = 1, M = 40, D = 64, causal = true },
}
for _, c in ipairs(cases) do check_case(c) end

-- ---------------------------------------------------- masks, masked rows
do
  local B, H, N, M, D = 2, 2, 9, 11, 32
  local q, k, v = glia.randn(B, H, N, D), glia.randn(B, H, M, D), glia.randn(B, H, M, D)
  local dout = glia.randn(B, H, N, D)
  -- padding mask {B,1,1,M}: batch 2 keeps only its first 6 keys
  local pm = {}
  for b = 1, B do
    pm[b] = { { {} } }
    for j = 1, M do pm[b][1][1][j] = b == 1 or j <= 6 end
  end
  local mask = glia.tensor(pm, "bool")
  q:requires_grad() k:requires_grad() v:requires_grad()
  local out = glia.attention(q, k, v, false, nil, mask, 4, 8)
  out:backward(dout)
  local ro, _, rdq, rdk, rdv = ref_attention(q:totable(), k:totable(), v:totable(),
    { mask = pm, mshape = { B, 1, 1, M }, mkind = "bool", dout = dout:totable() })
  close(out, ro, TOL, "a boolean padding mask {B,1,1,M} keeps exactly the true keys (forward)")
  close(q.grad, rdq, TOL, "a boolean padding mask gives the reference dq")
  close(k.grad, rdk, TOL, "a boolean padding mask gives the reference dk (masked keys get 0)")
  close(v.grad, rdv, TOL, "a boolean padding mask gives the reference dv")

  -- a row with no visible key: output 0, LSE +inf, no gradient, no NaN
  local rm = {}
  for i = 1, N do
    rm[i] = {}
    for j = 1, M do rm[i][j] = (i ~= 3) and (j % 3 ~= 0) end
  end
  local rmask = glia.tensor(rm, "bool")
  q:zero_grad() k:zero_grad() v:zero_grad()
  local o2 = glia.attention(q, k, v, false, nil, rmask)
  o2:backward(dout)
  local _, l2 = glia.no_grad(glia.attention_lse, q, k, v, false, nil, rmask)
  local ro2, _, rdq2, rdk2, rdv2 = ref_attention(q:totable(), k:totable(), v:totable(),
    { mask = rm, mshape = { N, M }, mkind = "bool", dout = dout:totable() })
  local row = o2:totable()[2][1][3]
  local zero = true
  for _, x in ipairs(row) do zero = zero and x == 0 end
  t.ok(zero and not has_nan(o2), "a fully masked row gives output 0 and no NaN anywhere")
  t.is(l2:totable()[1][2][3], inf, "a fully masked row has log-sum-exp +inf")
  local gq = q.grad:totable()[1][1][3]
  local gzero = true
  for _, x in ipairs(gq) do gzero = gzero and x == 0 end
  t.ok(gzero and not has_nan(q.grad) and not has_nan(k.grad), "a fully masked row gets zero dq and no NaN")
  close(o2, ro2, TOL, "a {N,M} boolean mask broadcast over batch and heads matches the reference")
  close(k.grad, rdk2, TOL, "dk with a {N,M} mask and a masked row matches the reference")
  t.ok(relerr(q.grad, rdq2) <= TOL and relerr(v.grad, rdv2) <= TOL,
       "dq and dv with a {N,M} mask and a masked row match the reference")

  -- additive f32 mask {H,N,M} with its gradient
  local am = glia.randn(H, N, M)
  am:requires_grad()
  q:zero_grad() k:zero_grad() v:zero_grad()
  local o3 = glia.attention(q, k, v, true, 0.2, am, 4, 5)
  o3:backward(dout)
  local amt = am:totable()
  local ro3, _, rdq3, _, _, rdm = ref_attention(q:totable(), k:totable(), v:totable(),
    { causal = true, scale = 0.2, mask = amt, mshape = { H, N, M }, mkind = "add", dout = dout:totable() })
  close(o3, ro3, TOL, "an additive f32 mask {H,N,M} with causal and an explicit scale matches the reference")
  close(q.grad, rdq3, TOL, "dq with an additive mask matches the reference")
  local want = {}
  for h = 1, H do
    want[h] = {}
    for i = 1, N do
      want[h][i] = {}
      for j = 1, M do want[h][i][j] = rdm[1][h][i][j] + rdm[2][h][i][j] end
    end
  end
  close(am.grad, want, TOL, "the additive mask's gradient is dS summed over the broadcast batch")
end

-- ------------------------------------------------------ strided inputs
do
  local B, H, N, M, D = 1, 4, 10, 12, 16
  -- q laid out {B,N,H,D} (as a projection gives it), viewed as {B,H,N,D}
  local qs = glia.randn(B, N, H, D):transpose(2, 3)
  local ks = glia.randn(B, 1, M, D):expand(B, H, M, D) -- stride 0 over heads
  local vs = glia.randn(B, H, D, M):transpose(3, 4)     -- last dim not contiguous
  local o = glia.attention(qs, ks, vs, true, nil, nil, 3, 5)
  local oc = glia.attention(qs:contiguous(), ks:contiguous(), vs:contiguous(), true, nil, nil, 3, 5)
  local ro = ref_attention(qs:totable(), ks:totable(), vs:totable(), { causal = true })
  close(o, ro, TOL, "transposed, head-expanded (stride 0) and column-strided inputs give the reference")
  t.ok(u.identical(o, oc), "strided inputs give bitwise the same output as their contiguous copies")
end

-- --------------------------------------------- tile, split, thread invariance
do
  local q, k, v = glia.randn(1, 4, 70, 64), glia.randn(1, 2, 90, 64), glia.randn(1, 2, 90, 64)
  for _, causal in ipairs({ false, true }) do
    local base = glia.attention(q, k, v, causal, nil, nil, 70, 90)
    local worst = 0
    for _, tl in ipairs({ { 16, 16 }, { 64, 32 }, { 7, 33 }, { 128, 256 } }) do
      local o = glia.attention(q, k, v, causal, nil, nil, tl[1], tl[2])
      worst = max(worst, t.maxdiff(o, base))
    end
    t.ok(worst <= 2e-6, string.format("tile sizes (16,16) (64,32) (7,33) (128,256) agree with one tile to %.1g%s",
                                      worst, causal and ", causal" or ""))
    local w2 = 0
    for _, s in ipairs({ 2, 3, 8, 40 }) do
      local o = glia.attention(q, k, v, causal, nil, nil, 16, 16, s)
      w2 = max(w2, t.maxdiff(o, glia.attention(q, k, v, causal, nil, nil, 16, 16, 1)))
    end
    t.ok(w2 <= 2e-6, string.format("split-KV into 2, 3, 8 and 40 chunks (some empty) agrees to %.1g%s",
                                   w2, causal and ", causal" or ""))
  end

  -- thread counts: B*Hkv = 1 runs the two-pass backward on 2 threads and the
  -- ownership backward on 1; B*Hkv = 2 runs ownership on both
  for _, shape in ipairs({ { 1, 2, 1 }, { 2, 4, 1 } }) do
    local B, H, K = shape[1], shape[2], shape[3]
    -- big enough (> 2^24 flops) to run on the pool
    local qq, kk, vv = glia.randn(B, H, 250, 64), glia.randn(B, K, 290, 64), glia.randn(B, K, 290, 64)
    local dout = glia.randn(B, H, 250, 64)
    local am = glia.randn(250, 290) -- an additive mask: its gradient too
    local res = u.by_threads(function()
      for _, x in ipairs({ qq, kk, vv, am }) do x:zero_grad() x:requires_grad() end
      local o = glia.attention(qq, kk, vv, true, nil, am, 32, 48)
      o:backward(dout)
      return { o, qq.grad, kk.grad, vv.grad, am.grad }
    end, { 1, 2, 3 })
    local ok = true
    for i = 1, 5 do ok = ok and u.identical(res[1][i], res[2][i]) and u.identical(res[1][i], res[3][i]) end
    t.ok(ok, string.format("1, 2 and 3 threads give bitwise equal output, dq, dk, dv, dmask (B=%d Hkv=%d)", B, K))
  end
end

-- ----------------------------------------------------------- GQA = MHA
do
  local B, K, g, N, M, D = 2, 2, 4, 17, 23, 32
  local q, k, v = glia.randn(B, K * g, N, D), glia.randn(B, K, M, D), glia.randn(B, K, M, D)
  local dout = glia.randn(B, K * g, N, D)
  q:requires_grad() k:requires_grad() v:requires_grad()
  local o = glia.attention(q, k, v, true)
  o:backward(dout)
  local dk, dv = k.grad:totable(), v.grad:totable()
  -- the same with every kv head repeated g times
  local function rep(x)
    return x:unsqueeze(3):expand(B, K, g, M, D):reshape(B, K * g, M, D)
  end
  local kr, vr = rep(k:detach()), rep(v:detach())
  kr:requires_grad() vr:requires_grad()
  local q2 = q:detach()
  local o2 = glia.attention(q2, kr, vr, true)
  o2:backward(dout)
  t.ok(t.maxdiff(o, o2) <= 1e-6, "GQA (Hkv=2, 4 query heads each) equals MHA with repeated kv heads")
  local gk, gv, worst = kr.grad:totable(), vr.grad:totable(), 0
  for b = 1, B do
    for kh = 1, K do
      for j = 1, M do
        for c = 1, D do
          local sk, sv = 0, 0
          for r = 1, g do
            sk = sk + gk[b][(kh - 1) * g + r][j][c]
            sv = sv + gv[b][(kh - 1) * g + r][j][c]
          end
          worst = max(worst, abs(sk - dk[b][kh][j][c]), abs(sv - dv[b][kh][j][c]))
        end
      end
    end
  end
  t.ok(worst <= 1e-5, "GQA dk and dv equal the group sums of the repeated heads' gradients")
end

-- ------------------------------------------------- causality, large scores
do
  local N, M, D = 6, 9, 16
  local q, k, v = glia.randn(1, 2, N, D), glia.randn(1, 2, M, D), glia.randn(1, 2, M, D)
  local o = glia.attention(q, k, v, true)
  -- row i sees keys j <= i + 3: change keys 8..9 (1-based), seen only by rows 5..6
  local k2, v2 = k:clone(), v:clone()
  k2:narrow(3, 8, 2):fill_(7)
  v2:narrow(3, 8, 2):fill_(-7)
  local o2 = glia.attention(q, k2, v2, true)
  t.ok(u.identical(o:narrow(3, 1, 4), o2:narrow(3, 1, 4)),
       "causal (bottom-right): changing keys after a row's diagonal leaves that row bit-identical")
  local qb, kb = q * 1000, k * 1000
  local ob = glia.attention(qb, kb, v, true)
  local rb = ref_attention(qb:totable(), kb:totable(), v:totable(), { causal = true })
  t.ok(not has_nan(ob) and relerr(ob, rb) <= TOL, "scores near 1e6 give no inf or NaN and match the reference")
end

-- ------------------------------------------------------- empty shapes
do
  local o = glia.attention(glia.randn(1, 2, 0, 8), glia.randn(1, 2, 5, 8), glia.randn(1, 2, 5, 4))
  t.is(table.concat(o:shape(), ","), "1,2,0,4", "no query rows give an empty {B,H,0,E} output")
  local o2, l2 = glia.attention_lse(glia.randn(1, 2, 3, 8), glia.randn(1, 2, 0, 8), glia.randn(1, 2, 0, 4))
  local z = true
  for _, x in ipairs(t.flat(o2, {})) do z = z and x == 0 end
  for _, x in ipairs(t.flat(l2, {})) do z = z and x == inf end
  t.ok(z, "no keys at all give output 0 and log-sum-exp +inf")
end

-- ------------------------------------------------------------ gradcheck
do
  local q, k, v = glia.randn(1, 2, 3, 4), glia.randn(1, 1, 5, 4), glia.randn(1, 1, 5, 3)
  local m = glia.randn(3, 5)
  u.gradcheck(function(a, b, c, d) return glia.attention(a, b, c, true, nil, d) end, { q, k, v, m },
              "gradcheck (central differences, f32, eps 1e-2, atol 2e-3, rtol 2e-2) passes for q, k, v and an additive mask",
              { eps = 1e-2, atol = 2e-3, rtol = 2e-2 })
end

-- ------------------------------------------------------------ decoding
do
  local KV = require "glia.kv_cache"
  local B, H, K, T, D = 2, 4, 2, 23, 32
  local q, k, v = glia.randn(B, H, T, D), glia.randn(B, K, T, D), glia.randn(B, K, T, D)
  local full = glia.attention(q, k, v, true)
  for _, step in ipairs({ 1, 5 }) do
    local cache = KV.new(B, K, D, 4) -- small capacity: grows while decoding
    local worst, pos = 0, 1
    while pos <= T do
      local n = math.min(step, T - pos + 1)
      cache:append(k:narrow(3, pos, n), v:narrow(3, pos, n))
      local o = cache:attend(q:narrow(3, pos, n))
      worst = max(worst, t.maxdiff(o, full:narrow(3, pos, n)))
      pos = pos + n
    end
    t.ok(worst <= 1e-5 and cache:len() == T,
         string.format("decoding %s with a growing KV cache reproduces the full causal forward (max diff %.1g)",
                       step == 1 and "token by token" or "in chunks of 5", worst))
  end
  local cache = KV.new(B, K, D, 8)
  cache:append(k:narrow(3, 1, 6), v:narrow(3, 1, 6))
  cache:reset()
  t.is(cache:len(), 0, "reset empties the cache")
  cache:append(k:narrow(3, 1, 3), v:narrow(3, 1, 3))
  t.ok(t.maxdiff(cache:attend(q:narrow(3, 1, 3)), full:narrow(3, 1, 3)) <= 1e-5,
       "a reset cache decodes from position 1 again")

  -- ragged batch: sequence 1 has 23 cached positions, sequence 2 has 15
  local lens = glia.tensor({ 23, 15 }, "i64")
  local oq = glia.attention_decode(q:narrow(3, 13, 3), k, v, lens)
  local o1 = glia.attention(q:narrow(1, 1, 1):narrow(3, 21, 3), k:narrow(1, 1, 1), v:narrow(1, 1, 1), true)
  local o2 = glia.attention(q:narrow(1, 2, 1):narrow(3, 13, 3), k:narrow(1, 2, 1):narrow(3, 1, 15),
                            v:narrow(1, 2, 1):narrow(3, 1, 15), true)
  t.ok(t.maxdiff(oq:narrow(1, 2, 1), o2) <= 1e-6,
       "attention_decode with ragged lengths reads only the first len[b] positions of sequence b")
  local qa = glia.attention_decode(q:narrow(3, 21, 3), k, v, 23)
  t.ok(t.maxdiff(qa:narrow(1, 1, 1), o1) <= 1e-6, "attention_decode with a number length equals the causal forward")
  t.error_like(function() glia.attention_decode(q, k, v, 24) end, "attention_decode.*outside",
               "a length past the cache capacity is an error")
  t.error_like(function() glia.attention_decode(q, k, v, 2.5) end, "attention_decode: length must be an integer",
               "a fractional length is an error")
end

-- ---------------------------------------------------- allocation failure
-- Fails the n-th allocation for n = 1, 2, ... until forward+backward
-- succeeds: every failure must be a clean out-of-memory error (and, under
-- the sanitizers, leak nothing).
do
  local q, k, v = glia.randn(1, 4, 40, 16), glia.randn(1, 2, 50, 16), glia.randn(1, 2, 50, 16)
  local mask, dout = glia.randn(40, 50), glia.randn(1, 4, 40, 16)
  for _, x in ipairs({ q, k, v, mask }) do x:requires_grad() end
  u.oom_ok(function()
    local o = glia.attention(q, k, v, true, nil, mask, 16, 16, 2)
    o:backward(dout)
  end, "every allocation failure in attention forward+backward is a clean out-of-memory error")
end

-- ---------------------------------------------------------- convexity
do
  local q, k, v = glia.randn(1, 2, 30, 16), glia.randn(1, 2, 40, 16), glia.randn(1, 2, 40, 8)
  local o = glia.attention(q, k, v, true, nil, nil, 8, 8):totable()
  local vt, ok = v:totable(), true
  for h = 1, 2 do
    for i = 1, 30 do
      for c = 1, 8 do
        local lo, hi = inf, -inf
        for j = 1, i + 10 do
          lo, hi = math.min(lo, vt[1][h][j][c]), max(hi, vt[1][h][j][c])
        end
        local x = o[1][h][i][c]
        ok = ok and x >= lo - 1e-6 and x <= hi + 1e-6
      end
    end
  end
  t.ok(ok, "every output lies within the per-column range of the value rows its query sees")
end

-- -------------------------------------------------------------- errors
do
  local q, k, v = glia.randn(1, 3, 4, 8), glia.randn(1, 2, 5, 8), glia.randn(1, 2, 5, 8)
  t.error_like(function() glia.attention(q, k, v) end, "glia%.attention: query heads.*{1,3,4,8}",
               "query heads not a multiple of kv heads is an error naming the op and shapes")
  t.error_like(function() glia.attention(glia.randn(1, 2, 4, 8), k:narrow(4, 1, 6), v) end,
               "glia%.attention: q and k head dims differ.*{1,2,5,6}", "a head-dim mismatch is an error naming the shapes")
  t.error_like(function() glia.attention(glia.randn(1, 2, 4, 8), k, v, false, nil, glia.ones(3, 5)) end,
               "glia%.attention: mask {3,5} does not broadcast to {B,H,N,M} = {1,2,4,5}",
               "a mask that does not broadcast is an error naming both shapes")
  t.error_like(function() glia.attention(glia.randn(1, 2, 4, 8):to("f64"), k, v) end,
               "glia%.attention: q must be a 4%-D f32 tensor.*f64", "a non-f32 input is an error")
  t.error_like(function() glia.attention(glia.randn(2, 4, 8), k, v) end,
               "glia%.attention: q must be a 4%-D.*{2,4,8}", "a 3-D input is an error")
  t.error_like(function() glia.attention(glia.randn(1, 2, 4, 8), k, v, false, nil, glia.ones(4, 5):to("i64")) end,
               "glia%.attention: mask must be bool, u8 or f32", "an integer mask is an error")
  t.error_like(function() glia.attention(glia.randn(1, 2, 4, 8), k, v, false, nil, nil, 0) end,
               "glia%.attention: block sizes", "a zero block size is an error")
  local qg = glia.randn(1, 2, 1, 8)
  qg:requires_grad()
  t.error_like(function() glia.attention_decode(qg, k, v, 3) end, "attention_decode: inference only",
               "attention_decode refuses inputs that require grad")
end

t.done()
