-- t/sla.t -- nn.SLA (stdlib/glia/nn/sla.lua), the simplified linear
-- attention layer: shapes and parameter names; the whole layer against a
-- naive fp64 loop in plain Lua (projections, positional term, ReLU-kernel
-- attention, zero-padded depth-wise convolution with its borders); the
-- convolution against an independent construction from one-hot shift
-- matrices in which every head has its own copy of the filters, so that
-- the shared filters' gradient must be the sum of the per-head ones;
-- gradient checks of tiny layers (f32, and f64 against the loop); errors.
local t = require "t.tap"
local glia = require "glia"
local nn = require "glia.nn"
local u = require "t.util"

u.seed(20261207)

local abs, max, floor = math.abs, math.max, math.floor

local function relerr(a, b)
  local fb, m = t.flat(b, {}), 0
  for _, x in ipairs(fb) do m = max(m, abs(x)) end
  return t.maxdiff(a, b) / max(m, 1e-30)
end

-- Gives every parameter of m (positional term included) random values.
local function randomize(m)
  glia.no_grad(function()
    for _, p in ipairs(m:parameters()) do p:copy_(glia.randn(p:shape()) * 0.5) end
  end)
end

-- ============================================================ reference

-- The layer in fp64 loops: x {B,N,C} as a table, m the module (its
-- parameters read as tables, unless given as tables after eps).
local function ref_sla(x, m, eps, Wq, bq, pos, Wc, bc, Wp, bp)
  local C, H, c, Hs, Ws, k = m.dim, m.heads, m.head_dim, m.grid[1], m.grid[2], m.kernel_size
  local N, p = Hs * Ws, floor(k / 2)
  Wq, bq = Wq or m.qkv.weight:totable(), bq or (m.qkv.bias and m.qkv.bias:totable())
  pos, Wc, bc = pos or m.positional_encoding:totable(), Wc or m.dwc.weight:totable(), bc or m.dwc.bias:totable()
  Wp, bp = Wp or m.proj.weight:totable(), bp or m.proj.bias:totable()
  local function relu(z) return z > 0 and z or 0 end
  local out = {}
  for b = 1, #x do
    local q, kk, v = {}, {}, {}
    for n = 1, N do
      q[n], kk[n], v[n] = {}, {}, {}
      for o = 1, 3 * C do
        local s = bq and bq[o] or 0
        for i = 1, C do s = s + x[b][n][i] * Wq[o][i] end
        if o <= C then q[n][o] = s
        elseif o <= 2 * C then kk[n][o - C] = s + pos[n][o - C]
        else v[n][o - 2 * C] = s end
      end
    end
    local y = {}
    for n = 1, N do y[n] = {} end
    for h = 1, H do
      local off = (h - 1) * c
      for n = 1, N do
        local den, num = 0, {}
        for ch = 1, c do num[ch] = 0 end
        for j = 1, N do
          local w = 0
          for ch = 1, c do w = w + relu(q[n][off + ch]) * relu(kk[j][off + ch]) end
          den = den + w
          for ch = 1, c do num[ch] = num[ch] + w * v[j][off + ch] end
        end
        local r, col = floor((n - 1) / Ws), (n - 1) % Ws -- 0-based grid position
        for ch = 1, c do
          local conv = bc[ch]
          for dy = 1, k do
            for dx = 1, k do
              local rr, cc = r + dy - 1 - p, col + dx - 1 - p
              if rr >= 0 and rr < Hs and cc >= 0 and cc < Ws then
                conv = conv + Wc[ch][1][dy][dx] * v[rr * Ws + cc + 1][off + ch]
              end
            end
          end
          y[n][off + ch] = num[ch] / (den + eps) + conv
        end
      end
    end
    out[b] = {}
    for n = 1, N do
      out[b][n] = {}
      for o = 1, C do
        local s = bp[o]
        for j = 1, C do s = s + y[n][j] * Wp[o][j] end
        out[b][n][o] = s
      end
    end
  end
  return out
end

-- One-hot shift matrices of a Hs x Ws grid for a kxk kernel: S[t] {N,N}
-- has S[t][n][m] = 1 when token m sits at kernel position t (row-major)
-- relative to token n, inside the grid (zero padding = no entry).
local function shifts(Hs, Ws, k)
  local N, p, S = Hs * Ws, floor(k / 2), {}
  for dy = 1, k do
    for dx = 1, k do
      local s = {}
      for n = 1, N do
        s[n] = {}
        for m = 1, N do s[n][m] = 0 end
        local r, col = floor((n - 1) / Ws) + dy - 1 - p, (n - 1) % Ws + dx - 1 - p
        if r >= 0 and r < Hs and col >= 0 and col < Ws then s[n][r * Ws + col + 1] = 1 end
      end
      S[#S + 1] = glia.tensor(s)
    end
  end
  return S
end

-- The layer from glia ops with the convolution built from shift matrices,
-- head h using its own filters w[h] {c,1,k,k} and biases bs[h] {c}.
local function composed(x, m, w, bs)
  local B, C, H, c, N, k = x:size(1), m.dim, m.heads, m.head_dim, m.num_tokens, m.kernel_size
  local S = shifts(m.grid[1], m.grid[2], k)
  local qkv = m.qkv(x)
  local function heads(z) return z:reshape(B, N, H, c):transpose(2, 3) end
  local q = heads(qkv:narrow(3, 1, C))
  local kk = heads(qkv:narrow(3, C + 1, C) + m.positional_encoding)
  local v = heads(qkv:narrow(3, 2 * C + 1, C))
  local att = glia.linear_attention(q, kk, v)
  local ys = {}
  for h = 1, H do
    local vh = v:select(2, h) -- {B,N,c}
    local conv = bs[h]:view(1, 1, c)
    for tap = 1, k * k do
      conv = conv + glia.matmul(S[tap], vh) * w[h]:view(c, k * k):narrow(2, tap, 1):view(1, 1, c)
    end
    ys[h] = att:select(2, h) + conv
  end
  return m.proj(glia.cat(ys, 3))
end

-- ============================================================ structure
do
  local m = nn.SLA(8, 2, { grid = { 3, 4 } })
  local y = m(glia.randn(2, 12, 8))
  t.ok(u.same_shape(y, { 2, 12, 8 }), "output is {B,N,C}")
  local names = {}
  for name, p in pairs(m:state_dict()) do names[#names + 1] = name .. "{" .. table.concat(p:shape(), ",") .. "}" end
  table.sort(names)
  t.is(table.concat(names, " "),
       "dwc.bias{4} dwc.weight{4,1,5,5} positional_encoding{12,8} proj.bias{8} proj.weight{8,8} " ..
       "qkv.bias{24} qkv.weight{24,8}",
       "parameters: qkv, positional term {N,C}, shared filters {c,1,k,k} and {c}, proj")
  t.ok(t.maxdiff(m.positional_encoding, glia.zeros(12, 8)) == 0, "the positional term starts at 0")
  local nb = nn.SLA(8, 2, { grid = 4, qkv_bias = false, kernel_size = 3 })
  t.ok(nb.qkv.bias == nil and u.same_shape(nb.dwc.weight, { 4, 1, 3, 3 }) and nb.num_tokens == 16,
       "qkv_bias = false, kernel_size 3 and a square grid given as a number")
end

-- ============================================================== forward
for _, case in ipairs({ { 4, 2, { 3, 4 }, 5 }, { 6, 3, { 5, 2 }, 3 }, { 4, 1, { 2, 2 }, 5 } }) do
  local C, H, grid, k = case[1], case[2], case[3], case[4]
  local m = nn.SLA(C, H, { grid = grid, kernel_size = k })
  randomize(m)
  local x = glia.randn(2, grid[1] * grid[2], C)
  local err = relerr(m(x), ref_sla(x:totable(), m, 1e-6))
  if not t.ok(err <= 1e-5, string.format("equals the naive fp64 loop: dim %d, heads %d, grid %dx%d, kernel %d",
                                         C, H, grid[1], grid[2], k)) then
    t.diag("relative error " .. err)
  end
end

do -- strided input
  local m = nn.SLA(4, 2, { grid = { 3, 3 } })
  randomize(m)
  local xs = glia.randn(9, 2, 4)
  t.ok(relerr(m(xs:transpose(1, 2)), m(xs:transpose(1, 2):contiguous())) <= 1e-6,
       "an input transposed from {N,B,C} gives the contiguous result")
end

-- ================================================= shared conv filters
do
  local m = nn.SLA(6, 3, { grid = { 3, 4 }, kernel_size = 3 })
  randomize(m)
  local x = glia.randn(2, 12, 6)
  local g = glia.randn(2, 12, 6)
  m:zero_grad()
  local y = m(x)
  y:backward(g)
  local w, bs = {}, {}
  for h = 1, 3 do
    w[h] = m.dwc.weight:detach():clone():requires_grad()
    bs[h] = m.dwc.bias:detach():clone():requires_grad()
  end
  local yc = composed(x, m, w, bs)
  t.ok(relerr(y, yc) <= 1e-5, "the layer equals the composition with the conv from one-hot shift matrices")
  yc:backward(g)
  local sw, sb = w[1].grad + w[2].grad + w[3].grad, bs[1].grad + bs[2].grad + bs[3].grad
  t.ok(relerr(m.dwc.weight.grad, sw) <= 1e-5 and relerr(m.dwc.bias.grad, sb) <= 1e-5,
       "the shared filters' gradient is the sum of the per-head gradients (weight and bias)")
  t.ok(t.maxdiff(w[1].grad, w[2].grad) > 1e-3, "(the per-head gradients differ: the sum is not trivial)")
end

-- ============================================================ gradients
do
  local m = nn.SLA(4, 2, { grid = { 2, 3 }, kernel_size = 3 })
  local x = glia.randn(2, 6, 4)
  -- draws parameters until no pre-ReLU value of q or k lies within 0.02 of
  -- the kink, so the finite differences (steps of 1e-3) never cross it
  local near, tries = 0, 0
  repeat
    randomize(m)
    tries = tries + 1
    near = glia.no_grad(function()
      local qkv = m.qkv(x)
      local qk = glia.cat({ qkv:narrow(3, 1, 4), qkv:narrow(3, 5, 4) + m.positional_encoding }, 3)
      return qk:abs():min():item()
    end)
  until near > 0.02 or tries == 100
  t.ok(near > 0.02, string.format("precondition: pre-ReLU q and k at least 0.02 from 0 (%.3f, draw %d)", near, tries))
  u.gradcheck(function(a) return m(a) end,
              { x, m.qkv.weight, m.qkv.bias, m.positional_encoding, m.dwc.weight, m.dwc.bias, m.proj.weight },
              "gradcheck (f32, eps 1e-3, atol = rtol = 1e-2) of x, Wqkv, bqkv, the positional term, " ..
              "the shared filters and bias, Wproj")
  -- f64: every parameter against central differences of ref_sla in doubles
  -- (pre-ReLU values 0.02 from the kink are far beyond its eps of 1e-6)
  u.gradcheck_f64(function(a) return m(a) end, function(a, ...) return ref_sla(a, m, 1e-6, ...) end,
                  { x, m.qkv.weight, m.qkv.bias, m.positional_encoding, m.dwc.weight, m.dwc.bias, m.proj.weight,
                    m.proj.bias },
                  "f64 gradcheck of x, Wqkv, bqkv, the positional term, the shared depth-wise filters and bias, " ..
                  "Wproj and bproj (B 2, grid 2x3, kernel 3)")
end

do -- f64, a 5x5 kernel wider than a 3x2 grid: every tap but the centre one reads zero padding
  -- somewhere, and the taps two columns off read nothing else (their gradient is 0)
  local m = nn.SLA(6, 3, { grid = { 3, 2 }, kernel_size = 5, qkv_bias = false })
  randomize(m)
  local x = glia.randn(1, 6, 6)
  u.gradcheck_f64(function(a) return m(a) end, function(a, wq, ...) return ref_sla(a, m, 1e-6, wq, nil, ...) end,
                  { x, m.qkv.weight, m.positional_encoding, m.dwc.weight, m.dwc.bias, m.proj.weight, m.proj.bias },
                  "f64 gradcheck without qkv bias, 3 heads, a 5x5 kernel over a 3x2 grid (x and every parameter)")
end

-- ============================================================== errors
do
  local m = nn.SLA(8, 2, { grid = { 3, 4 } })
  t.error_like(function() m(glia.randn(2, 10, 8)) end,
               "glia.nn.SLA: expected input {B,12,8} %(12 tokens of a 3x4 grid, dim 8%), got {2,10,8}",
               "an input whose N does not match the grid is refused, naming both")
  t.error_like(function() m(glia.randn(2, 12, 6)) end, "glia.nn.SLA: expected input {B,12,8}",
               "an input of another dim is refused")
  t.error_like(function() nn.SLA(8, 2) end, "glia.nn.SLA: grid = {Hs, Ws} .* is required",
               "a layer without a grid is refused")
  t.error_like(function() nn.SLA(8, 3, { grid = 4 }) end, "glia.nn.SLA: dim 8 is not a multiple of heads 3",
               "dim not a multiple of heads is refused")
  t.error_like(function() nn.SLA(8, 2, { grid = 4, kernel_size = 4 }) end,
               "glia.nn.SLA: kernel_size must be odd", "an even kernel size is refused")
  t.error_like(function() nn.SLA(8, 2, { grid = 4, window = 7 }) end,
               "glia.nn.SLA: unknown option 'window'", "an unknown option is named")
end

t.done()
