-- t/conv.t -- conv2d, conv1d and the 2-D pools: plain-Lua references over
-- many geometries (stride, padding, dilation, groups, depth-wise with a
-- multiplier, 1x1 and non-square kernels) on contiguous and strided inputs,
-- gradient checks (f32, and f64 against the references), determinism, and
-- error messages.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local floor, ceil, max, huge = math.floor, math.ceil, math.max, math.huge
local unpack = table.unpack or unpack
u.seed(909)

-- ============================================================ references

local function pair(v) return type(v) == "table" and v or { v or 0, v or 0 } end

-- conv2d of nested tables x {B,C,H,W}, w {O,C/g,kh,kw}, b {O} or nil, in doubles.
local function conv_ref(x, w, b, o)
  o = o or {}
  local s, p, d, g = pair(o.stride or 1), pair(o.padding or 0), pair(o.dilation or 1), o.groups or 1
  local B, C, H, W = #x, #x[1], #x[1][1], #x[1][1][1]
  local O, Cg, kh, kw = #w, #w[1], #w[1][1], #w[1][1][1]
  local Og = O / g
  local Ho = floor((H + 2 * p[1] - d[1] * (kh - 1) - 1) / s[1]) + 1
  local Wo = floor((W + 2 * p[2] - d[2] * (kw - 1) - 1) / s[2]) + 1
  local y = {}
  for bi = 1, B do
    y[bi] = {}
    for oc = 1, O do
      local gi = floor((oc - 1) / Og)
      local plane = {}
      for ho = 1, Ho do
        local row = {}
        for wo = 1, Wo do
          local acc = b and b[oc] or 0
          for c = 1, Cg do
            local xc = x[bi][gi * Cg + c]
            for i = 1, kh do
              local hi = (ho - 1) * s[1] - p[1] + (i - 1) * d[1]
              if hi >= 0 and hi < H then
                for j = 1, kw do
                  local wi = (wo - 1) * s[2] - p[2] + (j - 1) * d[2]
                  if wi >= 0 and wi < W then acc = acc + w[oc][c][i][j] * xc[hi + 1][wi + 1] end
                end
              end
            end
          end
          row[wo] = acc
        end
        plane[ho] = row
      end
      y[bi][oc] = plane
    end
  end
  return y
end

-- conv1d of nested tables x {B,C,L}, w {O,C/g,k}, b {O} or nil: conv_ref
-- on planes of height 1.
local function ref1d(x, w, b, o)
  local x4, w4 = {}, {}
  for i, r in ipairs(x) do x4[i] = {} for c, l in ipairs(r) do x4[i][c] = { l } end end
  for i, r in ipairs(w) do w4[i] = {} for c, l in ipairs(r) do w4[i][c] = { l } end end
  local o2 = { groups = o.groups, stride = { 1, o.stride or 1 }, padding = { 0, o.padding or 0 },
               dilation = { 1, o.dilation or 1 } }
  local y = conv_ref(x4, w4, b, o2)
  for i, r in ipairs(y) do for c, pl in ipairs(r) do r[c] = pl[1] end end
  return y
end

-- The pools over the last two dims of a 4-D table: kind "max", "avg"
-- (count_include_pad) or "adaptive" (k is then the output size).
local function pool_ref(x, kind, k, s, p)
  k = pair(k)
  s = s and pair(s) or k
  p = pair(p or 0)
  local H, W = #x[1][1], #x[1][1][1]
  local Ho, Wo
  if kind == "adaptive" then Ho, Wo = k[1], k[2]
  else
    Ho = floor((H + 2 * p[1] - k[1]) / s[1]) + 1
    Wo = floor((W + 2 * p[2] - k[2]) / s[2]) + 1
  end
  local function bounds(o, n, out, kk, ss, pp)
    if kind == "adaptive" then return floor((o - 1) * n / out), ceil(o * n / out) end
    local a = (o - 1) * ss - pp
    return max(a, 0), math.min(a + kk, n)
  end
  local y = {}
  for bi = 1, #x do
    y[bi] = {}
    for c = 1, #x[bi] do
      local plane = {}
      for ho = 1, Ho do
        plane[ho] = {}
        local h0, h1 = bounds(ho, H, Ho, k[1], s[1], p[1])
        for wo = 1, Wo do
          local w0, w1 = bounds(wo, W, Wo, k[2], s[2], p[2])
          local acc = kind == "max" and -huge or 0
          for h = h0 + 1, h1 do
            for w = w0 + 1, w1 do
              local e = x[bi][c][h][w]
              if kind == "max" then acc = max(acc, e) else acc = acc + e end
            end
          end
          if kind == "avg" then acc = acc / (k[1] * k[2])
          elseif kind == "adaptive" then acc = acc / ((h1 - h0) * (w1 - w0)) end
          plane[ho][wo] = acc
        end
      end
      y[bi][c] = plane
    end
  end
  return y
end

local function tbl(v) return v and v:totable() end

-- ========================================================= conv2d values

local function conv_case(desc, B, C, H, W, O, kh, kw, o, bias)
  local g = o.groups or 1
  local x, w = glia.randn(B, C, H, W), glia.randn(O, C / g, kh, kw)
  local b = bias and glia.randn(O) or nil
  local got = b and glia.conv2d(x, w, b, o) or glia.conv2d(x, w, o)
  t.near(got, conv_ref(x:totable(), w:totable(), tbl(b), o), 1e-4, desc)
end

conv_case("conv2d 3x3 padding 1 with bias matches a naive loop", 2, 3, 6, 7, 4, 3, 3,
          { padding = 1 }, true)
conv_case("conv2d without bias, no padding", 2, 3, 5, 5, 2, 3, 3, {}, false)
conv_case("conv2d with stride 2 and padding 1", 2, 3, 7, 8, 4, 3, 3, { stride = 2, padding = 1 },
          true)
conv_case("conv2d with stride {2,3}, padding {1,2}, dilation {2,1}", 1, 2, 9, 10, 3, 3, 3,
          { stride = { 2, 3 }, padding = { 1, 2 }, dilation = { 2, 1 } }, true)
conv_case("conv2d with dilation 2", 2, 2, 8, 8, 3, 3, 3, { dilation = 2, padding = 2 }, true)
conv_case("conv2d with groups 2", 2, 4, 6, 6, 6, 3, 3, { groups = 2, padding = 1 }, true)
conv_case("conv2d depth-wise (groups = C = O)", 2, 4, 6, 5, 4, 3, 3, { groups = 4, padding = 1 },
          true)
conv_case("conv2d depth-wise 5x5 padding 2", 2, 3, 9, 9, 3, 5, 5, { groups = 3, padding = 2 },
          true)
conv_case("conv2d depth-wise with multiplier 2 (O = 2C)", 2, 3, 6, 6, 6, 3, 3,
          { groups = 3, padding = 1 }, true)
conv_case("conv2d depth-wise with stride 2, dilation 2", 1, 2, 9, 8, 2, 3, 3,
          { groups = 2, stride = 2, dilation = 2, padding = 2 }, true)
conv_case("conv2d 1x1 (the direct path)", 2, 5, 4, 3, 3, 1, 1, {}, true)
conv_case("conv2d 1x1 with stride 2", 2, 3, 5, 5, 2, 1, 1, { stride = 2 }, false)
conv_case("conv2d non-square kernel 2x4", 2, 3, 6, 7, 2, 2, 4, { padding = { 1, 2 } }, true)
conv_case("conv2d kernel as large as the padded input", 1, 2, 3, 3, 2, 5, 5, { padding = 1 }, true)
conv_case("conv2d with more images than threads (batch split over tasks)", 5, 3, 8, 8, 16, 3, 3,
          { padding = 1 }, true)

do
  local xs = glia.randn(2, 3, 7, 6)
  local x = xs:transpose(3, 4) -- {2,3,6,7}, not contiguous
  local w = glia.randn(5, 3, 3, 3):narrow(1, 2, 4)
  local b = glia.randn(8):narrow(1, 3, 4)
  t.near(glia.conv2d(x, w, b, { padding = 1, stride = 2 }),
         conv_ref(x:totable(), w:totable(), b:totable(), { padding = 1, stride = 2 }), 1e-4,
         "conv2d reads a transposed input and narrowed weight and bias")
  local wt = glia.randn(3, 4, 3, 3):transpose(1, 2) -- {4,3,3,3}
  t.near(glia.conv2d(x, wt), conv_ref(x:totable(), wt:totable()), 1e-4,
         "conv2d reads a transposed weight")
  local xd = glia.randn(2, 4, 6, 7):narrow(2, 2, 3)
  local wd = glia.randn(3, 1, 5, 5)
  t.near(glia.conv2d(xd, wd, { groups = 3, padding = 2 }),
         conv_ref(xd:totable(), wd:totable(), nil, { groups = 3, padding = 2 }), 1e-4,
         "depth-wise conv2d reads a channel-narrowed input")
  local xs5 = glia.randn(2, 3, 7, 8)
  local wk = glia.randn(2, 3, 3, 5)
  t.near(glia.conv2d(xs5, wk, { padding = "same", dilation = { 2, 1 } }),
         conv_ref(xs5:totable(), wk:totable(), nil, { padding = { 2, 2 }, dilation = { 2, 1 } }),
         1e-4, "conv2d padding \"same\" pads by half the kernel's span, keeping the plane size")
  t.near(glia.conv2d(xs5, wk, { padding = "valid" }), conv_ref(xs5:totable(), wk:totable()), 1e-4,
         "conv2d padding \"valid\" is no padding")
  t.error_like(function() glia.conv2d(xs5, glia.randn(2, 3, 2, 2), { padding = "same" }) end,
               "glia.conv2d: padding \"same\" for kernel {2,3,2,2} needs uneven padding",
               "conv2d padding \"same\" with an even kernel is refused, not shifted")
  t.error_like(function() glia.conv2d(xs5, wk, { padding = "same", stride = 2 }) end,
               "glia.conv2d: padding \"same\" needs stride 1", "conv2d padding \"same\" needs stride 1")
  t.error_like(function() glia.conv2d(xs5, wk, { padding = "full" }) end,
               "glia.conv2d: padding must be a number, a list or \"same\" or \"valid\", got full",
               "conv2d names a padding word it does not know")
  local x0 = glia.randn(0, 3, 5, 5)
  t.is(glia.conv2d(x0, glia.randn(2, 3, 3, 3)):numel(), 0, "conv2d of an empty batch is empty")
end

-- ========================================================= conv1d values

do
  local x, w, b = glia.randn(2, 4, 11), glia.randn(6, 2, 3), glia.randn(6)
  local o = { stride = 2, padding = 2, dilation = 2, groups = 2 }
  local y = glia.conv1d(x, w, b, o)
  t.is(y:dim(), 3, "conv1d returns {B,O,Lo}")
  t.near(y, ref1d(x:totable(), w:totable(), b:totable(), o), 1e-4,
         "conv1d with stride, padding, dilation and groups matches a naive loop")
  local xt = glia.randn(2, 11, 4):transpose(2, 3)
  t.near(glia.conv1d(xt, w, { groups = 2 }), ref1d(xt:totable(), w:totable(), nil, { groups = 2 }),
         1e-4, "conv1d reads a transposed input")
end

-- ============================================================ gradients

do
  local function gc(desc, xs, ws, o, bias)
    local x, w = glia.randn(unpack(xs)), glia.randn(unpack(ws)) * 0.5
    local inputs = { x, w }
    if bias then inputs[3] = glia.randn(ws[1]) end
    local conv = #xs == 4 and glia.conv2d or glia.conv1d
    u.gradcheck(function(p, q, r)
      if r then return conv(p, q, r, o) end
      return conv(p, q, o)
    end, inputs, desc)
  end
  gc("gradcheck passes for conv2d on x, w and b (padding 1)", { 2, 3, 5, 5 }, { 2, 3, 3, 3 },
     { padding = 1 }, true)
  gc("gradcheck passes for conv2d with stride 2, dilation 2, padding {2,1}", { 1, 2, 7, 6 },
     { 3, 2, 3, 2 }, { stride = 2, dilation = 2, padding = { 2, 1 } }, true)
  gc("gradcheck passes for conv2d with groups 2", { 2, 4, 4, 4 }, { 4, 2, 3, 3 },
     { groups = 2, padding = 1 }, true)
  gc("gradcheck passes for depth-wise conv2d 5x5 padding 2", { 2, 3, 5, 5 }, { 3, 1, 5, 5 },
     { groups = 3, padding = 2 }, true)
  gc("gradcheck passes for depth-wise conv2d with multiplier 2, stride 2", { 1, 2, 6, 5 },
     { 4, 1, 3, 3 }, { groups = 2, stride = 2, padding = 1 }, true)
  gc("gradcheck passes for conv2d 1x1", { 2, 3, 3, 3 }, { 2, 3, 1, 1 }, {}, true)
  gc("gradcheck passes for conv1d with stride, padding, dilation and groups", { 2, 4, 9 },
     { 4, 2, 3 }, { stride = 2, padding = 1, dilation = 2, groups = 2 }, true)
  local xt = glia.randn(1, 3, 5, 4)
  u.gradcheck(function(p, q) return glia.conv2d(p:transpose(3, 4), q, { padding = 1 }) end,
              { xt, glia.randn(2, 3, 3, 3) }, "gradcheck passes for conv2d of a transposed input")
  -- the weight gradient of a shared depth-wise filter sums over every use
  local x = glia.randn(2, 3, 4, 4)
  local w = glia.randn(3, 1, 3, 3):requires_grad()
  glia.conv2d(x, w, { groups = 3, padding = 1 }):sum():backward()
  local g1 = w.grad:clone()
  w:zero_grad()
  local x2 = glia.cat({ x, x }, 1)
  glia.conv2d(x2, w, { groups = 3, padding = 1 }):sum():backward()
  t.near(w.grad, (g1 * 2):totable(), 1e-4,
         "the depth-wise weight gradient sums over the images that share the filter")
end

-- f64 gradient checks: autograd's dx, dw and db against central differences
-- of conv_ref / ref1d in doubles (u.gradcheck_f64).
do
  local function gc64(desc, x, ws, o, bias)
    local inputs = { x, glia.randn(unpack(ws)) * 0.5 }
    if bias then inputs[3] = glia.randn(ws[1]) end
    local conv, ref = glia.conv2d, conv_ref
    if x:dim() == 3 then conv, ref = glia.conv1d, ref1d end
    u.gradcheck_f64(function(p, q, r)
      if r then return conv(p, q, r, o) end
      return conv(p, q, o)
    end, function(p, q, r) return ref(p, q, r, o) end, inputs, desc)
  end
  gc64("f64 gradcheck of conv2d's x, w and b (padding 1)", glia.randn(2, 3, 5, 5), { 2, 3, 3, 3 },
       { padding = 1 }, true)
  gc64("f64 gradcheck of conv2d without bias, stride 2, no padding", glia.randn(2, 2, 6, 7),
       { 3, 2, 3, 3 }, { stride = 2 }, false)
  gc64("f64 gradcheck of conv2d with stride {2,1}, dilation 2, padding {2,1}, a 3x2 kernel",
       glia.randn(1, 2, 7, 6), { 3, 2, 3, 2 }, { stride = { 2, 1 }, dilation = 2, padding = { 2, 1 } },
       true)
  gc64("f64 gradcheck of conv2d with groups 2, stride 2, padding 1", glia.randn(2, 4, 5, 5),
       { 4, 2, 3, 3 }, { groups = 2, stride = 2, padding = 1 }, true)
  gc64("f64 gradcheck of depth-wise conv2d 5x5 padding 2 (groups = C = O)", glia.randn(2, 3, 5, 5),
       { 3, 1, 5, 5 }, { groups = 3, padding = 2 }, true)
  gc64("f64 gradcheck of depth-wise conv2d with multiplier 2 (O = 2C), stride 2, dilation 2",
       glia.randn(1, 2, 7, 6), { 4, 1, 3, 3 }, { groups = 2, stride = 2, dilation = 2, padding = 2 },
       true)
  gc64("f64 gradcheck of conv2d 1x1 (the direct path)", glia.randn(2, 3, 3, 4), { 2, 3, 1, 1 }, {},
       true)
  gc64("f64 gradcheck of conv2d on a transposed input (dx lands in the view's layout)",
       glia.randn(1, 3, 5, 4):transpose(3, 4), { 2, 3, 3, 3 }, { padding = 1, stride = 2 }, true)
  gc64("f64 gradcheck of depth-wise conv2d on a channel-narrowed input",
       glia.randn(2, 5, 4, 4):narrow(2, 2, 3), { 3, 1, 3, 3 }, { groups = 3, padding = 1 }, true)
  gc64("f64 gradcheck of conv1d with stride, padding, dilation and groups", glia.randn(2, 4, 9),
       { 4, 2, 3 }, { stride = 2, padding = 1, dilation = 2, groups = 2 }, true)
  gc64("f64 gradcheck of depth-wise conv1d on a transposed input", glia.randn(2, 8, 3):transpose(2, 3),
       { 3, 1, 3 }, { groups = 3, padding = 1 }, false)
end

-- ========================================================= determinism

do
  local x, w = glia.randn(6, 4, 8, 8), glia.randn(8, 4, 3, 3)
  local function run()
    local xr, wr = x:clone():requires_grad(), w:clone():requires_grad()
    glia.conv2d(xr, wr, { padding = 1 }):sum():backward()
    return { xr.grad:totable(), wr.grad:totable() }
  end
  local a, b = run(), run()
  t.ok(u.identical(a, b), "conv2d backward gives the same bits run to run")
  local r = u.by_threads(function() return glia.conv2d(x, w, { padding = 1 }):totable() end)
  t.near(r[1], r[2], 1e-5, "conv2d forward agrees across thread counts")
end

-- =============================================================== pools

do
  local x = glia.tensor(u.spread({ 2, 3, 7, 6 }, -2, 2))
  local xt = x:totable()
  t.near(glia.max_pool2d(x, 2), pool_ref(xt, "max", 2), 0, "max_pool2d 2x2 matches a naive loop")
  t.near(glia.max_pool2d(x, 3, 2, 1), pool_ref(xt, "max", 3, 2, 1), 0,
         "max_pool2d 3x3 stride 2 padding 1 (padding never wins)")
  t.near(glia.max_pool2d(x, { 2, 3 }, { 1, 2 }), pool_ref(xt, "max", { 2, 3 }, { 1, 2 }), 0,
         "max_pool2d with a non-square kernel and stride")
  t.near(glia.avg_pool2d(x, 2), pool_ref(xt, "avg", 2), 1e-6, "avg_pool2d 2x2 matches a naive loop")
  t.near(glia.avg_pool2d(x, 3, 2, 1), pool_ref(xt, "avg", 3, 2, 1), 1e-6,
         "avg_pool2d with padding counts the padding (count_include_pad)")
  t.near(glia.adaptive_avg_pool2d(x, 1), pool_ref(xt, "adaptive", 1), 1e-6,
         "adaptive_avg_pool2d to 1x1 is the plane mean")
  t.near(glia.adaptive_avg_pool2d(x, { 3, 4 }), pool_ref(xt, "adaptive", { 3, 4 }), 1e-6,
         "adaptive_avg_pool2d to 3x4 uses overlapping windows as PyTorch")
  t.near(glia.adaptive_avg_pool2d(x, { 9, 8 }), pool_ref(xt, "adaptive", { 9, 8 }), 1e-6,
         "adaptive_avg_pool2d to a larger size repeats elements")
  local xs = x:transpose(3, 4)
  t.near(glia.max_pool2d(xs, 2), pool_ref(xs:totable(), "max", 2), 0,
         "max_pool2d reads a transposed input")
  t.near(glia.avg_pool2d(xs, 2, 1), pool_ref(xs:totable(), "avg", 2, 1), 1e-6,
         "avg_pool2d reads a transposed input")
  local x3 = glia.randn(3, 4, 4)
  t.near(glia.max_pool2d(x3, 2), pool_ref({ x3:totable() }, "max", 2)[1], 0,
         "max_pool2d takes an unbatched {C,H,W} input")

  u.gradcheck(function(p) return glia.max_pool2d(p, 3, 2, 1) end, { x:clone() },
              "gradcheck passes for max_pool2d with stride and padding (distinct values)")
  u.gradcheck(function(p) return glia.avg_pool2d(p, 3, 2, 1) end, { glia.randn(1, 2, 5, 6) },
              "gradcheck passes for avg_pool2d with stride and padding")
  u.gradcheck(function(p) return glia.adaptive_avg_pool2d(p, { 3, 4 }) end,
              { glia.randn(1, 2, 5, 6) }, "gradcheck passes for adaptive_avg_pool2d")
  u.gradcheck(function(p) return glia.max_pool2d(p:transpose(3, 4), 2) end,
              { glia.tensor(u.spread({ 1, 2, 4, 6 }, -1, 1)) },
              "gradcheck passes for max_pool2d of a transposed input")
  -- f64: the pools' backward against central differences of pool_ref in
  -- doubles; max_pool2d on distinct values (spaced far beyond eps), so the
  -- argmax never moves
  local function pool64(desc, x, f, ...)
    local args = { ... }
    u.gradcheck_f64(f, function(p) return pool_ref(p, unpack(args)) end, { x }, desc)
  end
  pool64("f64 gradcheck of max_pool2d 3x3 stride 2 padding 1 (distinct values)", x:clone(),
         function(p) return glia.max_pool2d(p, 3, 2, 1) end, "max", 3, 2, 1)
  pool64("f64 gradcheck of max_pool2d with overlapping {2,3} windows, stride {1,2}",
         glia.tensor(u.spread({ 1, 2, 5, 6 }, -1, 1, 0.2)),
         function(p) return glia.max_pool2d(p, { 2, 3 }, { 1, 2 }) end, "max", { 2, 3 }, { 1, 2 })
  pool64("f64 gradcheck of max_pool2d on a transposed input",
         glia.tensor(u.spread({ 1, 2, 4, 6 }, -1, 1)):transpose(3, 4),
         function(p) return glia.max_pool2d(p, 2) end, "max", 2)
  pool64("f64 gradcheck of avg_pool2d 3x3 stride 2 padding 1 (count_include_pad)",
         glia.randn(1, 2, 5, 6), function(p) return glia.avg_pool2d(p, 3, 2, 1) end, "avg", 3, 2, 1)
  pool64("f64 gradcheck of avg_pool2d with overlapping windows on a transposed input",
         glia.randn(2, 2, 6, 4):transpose(3, 4), function(p) return glia.avg_pool2d(p, 2, 1) end,
         "avg", 2, 1)
  pool64("f64 gradcheck of adaptive_avg_pool2d to 3x4 (overlapping windows)", glia.randn(1, 2, 5, 6),
         function(p) return glia.adaptive_avg_pool2d(p, { 3, 4 }) end, "adaptive", { 3, 4 })
  pool64("f64 gradcheck of adaptive_avg_pool2d to a larger 7x8 (repeated elements)",
         glia.randn(1, 2, 5, 6), function(p) return glia.adaptive_avg_pool2d(p, { 7, 8 }) end,
         "adaptive", { 7, 8 })

  local c = glia.ones(1, 1, 2, 4):requires_grad()
  glia.max_pool2d(c, 2):sum():backward()
  t.near(c.grad, { { { { 1, 0, 1, 0 }, { 0, 0, 0, 0 } } } }, 0,
         "max_pool2d sends the gradient of a tie to the first maximum")
  local nan = glia.tensor({ { { { 1, 0 / 0 }, { 3, 2 } } } })
  t.ok(glia.max_pool2d(nan, 2):item() ~= glia.max_pool2d(nan, 2):item(),
       "max_pool2d propagates NaN")
end

-- ============================================================ bad input

do
  local x, w = glia.randn(2, 4, 5, 5), glia.randn(6, 2, 3, 3)
  t.error_like(function() glia.conv2d(glia.randn(4, 5, 5), w) end,
               "glia.conv2d: expected input {B,C,H,W}.*{4,5,5}", "conv2d rejects a 3-D input")
  t.error_like(function() glia.conv2d(x, glia.randn(6, 4, 3)) end,
               "glia.conv2d: expected input.*{6,4,3}", "conv2d rejects a 3-D weight")
  t.error_like(function() glia.conv2d(x, glia.randn(6, 4, 3, 3), { groups = 3 }) end,
               "glia.conv2d: channels must be divisible by groups 3: input {2,4,5,5}",
               "conv2d rejects channels not divisible by groups")
  t.error_like(function() glia.conv2d(x, w) end,
               "glia.conv2d: weight {6,2,3,3} needs C/groups = 4 input channels, input is {2,4,5,5}",
               "conv2d rejects a weight with the wrong channel count")
  t.error_like(function() glia.conv2d(x, glia.randn(2, 4, 7, 7)) end,
               "glia.conv2d: kernel {2,4,7,7} .* larger than the padded input {2,4,5,5}",
               "conv2d rejects a kernel larger than the padded input")
  t.error_like(function() glia.conv2d(x, glia.randn(2, 4, 3, 3), { stride = 0 }) end,
               "glia.conv2d: stride must be >= 1, got 0", "conv2d rejects stride 0")
  t.error_like(function() glia.conv2d(x, glia.randn(2, 4, 3, 3), { stride = { 1, -2 } }) end,
               "glia.conv2d: stride must be >= 1, got %-2", "conv2d rejects a negative stride")
  t.error_like(function() glia.conv2d(x, glia.randn(2, 4, 3, 3), { padding = -1 }) end,
               "glia.conv2d: padding must be >= 0", "conv2d rejects negative padding")
  t.error_like(function() glia.conv2d(x, glia.randn(2, 4, 3, 3), { dilation = 0 }) end,
               "glia.conv2d: dilation must be >= 1", "conv2d rejects dilation 0")
  t.error_like(function() glia.conv2d(x, glia.randn(2, 4, 3, 3), { groups = 0 }) end,
               "glia.conv2d: groups must be >= 1", "conv2d rejects groups 0")
  t.error_like(function() glia.conv2d(x, glia.randn(2, 4, 3, 3), glia.randn(3)) end,
               "glia.conv2d: bias {3} does not match weight {2,4,3,3}",
               "conv2d rejects a bias of the wrong length")
  t.error_like(function() glia.conv2d(x, glia.randn(2, 4, 3, 3), { pading = 1 }) end,
               "glia.conv2d: unknown option 'pading'", "conv2d names an unknown option")
  t.error_like(function() glia.conv2d(glia.zeros({ 2, 4, 5, 5 }, "i64"), glia.randn(2, 4, 3, 3)) end,
               "glia.conv2d: input must be f32", "conv2d rejects an i64 input")
  t.error_like(function() glia.conv1d(x, w) end,
               "glia.conv1d: expected input {B,C,L} and weight {O,C/groups,k}, got {2,4,5,5}",
               "conv1d rejects a 4-D input")
  t.error_like(function() glia.conv1d(glia.randn(2, 3, 4), glia.randn(2, 3, 7)) end,
               "glia.conv1d: kernel {2,3,7} .* larger than the padded input {2,3,4}",
               "conv1d names its own shapes when the kernel does not fit")
  t.error_like(function() glia.max_pool2d(glia.randn(5, 5), 2) end,
               "glia.max_pool2d: expected input {B,C,H,W} or {C,H,W}, got {5,5}",
               "max_pool2d rejects a 2-D input")
  t.error_like(function() glia.max_pool2d(x, 2, 0) end,
               "glia.max_pool2d: stride must be >= 1, got 0", "max_pool2d rejects stride 0")
  t.error_like(function() glia.avg_pool2d(x, 2, 1, 2) end,
               "glia.avg_pool2d: padding must be in %[0, kernel/2%], got 2 for kernel 2",
               "avg_pool2d rejects padding over half the kernel")
  t.error_like(function() glia.max_pool2d(x, 7) end,
               "glia.max_pool2d: kernel {7,7} larger than the padded input {2,4,5,5}",
               "max_pool2d rejects a kernel larger than the input")
  t.error_like(function() glia.conv2d(x, glia.randn(2, 4, 3, 1025), { dilation = 2 ^ 53 }) end,
               "glia.conv2d: kernel .* larger than the padded input",
               "conv2d rejects a dilation whose span overflows, without overflowing")
  t.error_like(function() glia.conv2d(x, glia.randn(2, 4, 3, 3), { padding = 2 ^ 53 }) end,
               "glia.conv2d: input {2,4,5,5} and weight {2,4,3,3} too large",
               "conv2d rejects a padding that makes the output too large")
  t.is(glia.avg_pool2d(x, 2 ^ 40, 2 ^ 40, 2 ^ 39):size(3), 1,
       "avg_pool2d with a kernel of 2^40 gives one window (its divisor does not overflow)")
  t.error_like(function() glia.adaptive_avg_pool2d(x, 0) end,
               "glia.adaptive_avg_pool2d: output size must be >= 1",
               "adaptive_avg_pool2d rejects output size 0")
end

-- ==================================================== allocation failure

do
  local x, w = glia.randn(3, 4, 6, 6), glia.randn(4, 2, 3, 3)
  local dw = glia.randn(4, 1, 3, 3)
  u.oom_ok(function()
    local xr, wr = x:clone():requires_grad(), w:clone():requires_grad()
    glia.conv2d(xr, wr, glia.ones(4), { padding = 1, groups = 2 }):sum():backward()
  end, "conv2d forward and backward survive every allocation failure")
  u.oom_ok(function()
    local xr = x:clone():requires_grad()
    glia.conv2d(xr, dw, { padding = 1, groups = 4 }):sum():backward()
    glia.max_pool2d(xr, 2):sum():backward()
  end, "depth-wise conv2d and max_pool2d survive every allocation failure")
end

-- ============================================================ nn modules

do
  local nn = require "glia.nn"
  local function keys(sd)
    local k = {}
    for name in pairs(sd) do k[#k + 1] = name end
    table.sort(k)
    return table.concat(k, " ")
  end
  local c = nn.Conv2d(16, 32, 3, { padding = 1 })
  t.ok(u.same_shape(c.weight, { 32, 16, 3, 3 }) and u.same_shape(c.bias, { 32 }),
       "Conv2d holds weight {out, in, kh, kw} and bias {out}")
  t.is(keys(c:state_dict()), "bias weight", "Conv2d's state dict names are PyTorch's")
  local bound = 1 / math.sqrt(16 * 9)
  local wmax, bmax = c.weight:abs():max():item(), c.bias:abs():max():item()
  t.ok(wmax <= bound and wmax > 0.9 * bound,
       "Conv2d's weight is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform a = sqrt(5))")
  t.ok(bmax <= bound and bmax > 0.5 * bound, "Conv2d's bias is U(-1/sqrt(fan_in), 1/sqrt(fan_in))")
  local x = glia.randn(2, 16, 6, 5)
  t.ok(u.same_shape(c(x), { 2, 32, 6, 5 }), "Conv2d 3x3 padding 1 keeps the plane size")
  t.near(c(x), glia.conv2d(x, c.weight, c.bias, { padding = 1 }), 0, "Conv2d is glia.conv2d")
  local g = nn.Conv2d(6, 9, { 3, 1 }, { stride = { 2, 1 }, groups = 3, bias = false })
  t.ok(u.same_shape(g.weight, { 9, 2, 3, 1 }) and g.bias == nil,
       "Conv2d with groups 3, a {3,1} kernel and no bias holds weight {9,2,3,1} only")
  t.ok(u.same_shape(g(glia.randn(1, 6, 7, 4)), { 1, 9, 3, 4 }), "Conv2d honours a {2,1} stride")
  local cs = nn.Conv2d(3, 4, { 3, 5 }, { padding = "same" })
  t.ok(u.same_shape(cs(glia.randn(1, 3, 6, 7)), { 1, 4, 6, 7 }),
       "Conv2d with padding \"same\" keeps the plane size")
  local c1 = nn.Conv1d(4, 6, 3, { stride = 2, padding = 1, groups = 2 })
  local x1 = glia.randn(2, 4, 9)
  t.ok(u.same_shape(c1.weight, { 6, 2, 3 }), "Conv1d holds weight {out, in/groups, k}")
  t.near(c1(x1), glia.conv1d(x1, c1.weight, c1.bias, { stride = 2, padding = 1, groups = 2 }), 0,
         "Conv1d is glia.conv1d")
  t.error_like(function() nn.Conv2d(4, 6, 3, { groups = 4 }) end,
               "glia.nn.Conv2d: in_channels 4 and out_channels 6 must be divisible by groups 4",
               "Conv2d rejects channels not divisible by groups")
  t.error_like(function() nn.Conv2d(4, 6, 3, { stride = 0 }) end,
               "glia.nn.Conv2d: stride must be an integer >= 1, got 0", "Conv2d rejects stride 0")
  local sd = { weight = glia.randn(32, 16, 3, 3), bias = glia.randn(32) }
  c:load_state_dict(sd)
  t.near(c.weight, sd.weight, 0, "Conv2d loads a state dict of PyTorch's names and shapes")

  local xp = glia.randn(2, 3, 8, 7)
  t.ok(u.same_shape(nn.MaxPool2d(2)(xp), { 2, 3, 4, 3 }), "MaxPool2d(2) halves the plane")
  t.near(nn.MaxPool2d(3, 2, 1)(xp), glia.max_pool2d(xp, 3, 2, 1), 0, "MaxPool2d is glia.max_pool2d")
  t.near(nn.AvgPool2d({ kernel_size = 2, stride = 1 })(xp), glia.avg_pool2d(xp, 2, 1), 0,
         "AvgPool2d takes its arguments as a table too")
  t.ok(u.same_shape(nn.AdaptiveAvgPool2d(1)(xp), { 2, 3, 1, 1 }),
       "AdaptiveAvgPool2d(1) pools each plane to one value")
  t.ok(u.same_shape(nn.Flatten()(xp), { 2, 3 * 8 * 7 }), "Flatten keeps the batch dim")
  t.ok(u.same_shape(nn.Flatten(1, 2)(xp), { 6, 8, 7 }), "Flatten(1, 2) joins the first two dims")

  local net = nn.Sequential(nn.Conv2d(3, 4, 3, { padding = 1 }), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 3, 2))
  local loss = net(xp):sum()
  loss:backward()
  local all = true
  for _, p in ipairs(net:parameters()) do all = all and p.grad ~= nil end
  t.ok(all, "a small CNN (conv, batchnorm, relu, pool, flatten, linear) gets every gradient")
end

-- =========================================================== BatchNorm2d

do
  local nn = require "glia.nn"
  local bn = nn.BatchNorm2d(3)
  local names = {}
  for k in pairs(bn:state_dict()) do names[#names + 1] = k end
  table.sort(names)
  t.is(table.concat(names, " "), "bias num_batches_tracked running_mean running_var weight",
       "BatchNorm2d's state dict names are PyTorch's")
  -- Per-channel mean and biased variance of a {B,C,H,W} table over B, H, W,
  -- and their count.
  local function stats2d(xt)
    local mean, var, n = {}, {}, #xt * #xt[1][1] * #xt[1][1][1]
    for c = 1, #xt[1] do
      local s, ss = 0, 0
      for _, img in ipairs(xt) do for _, row in ipairs(img[c]) do for _, e in ipairs(row) do s = s + e end end end
      mean[c] = s / n
      for _, img in ipairs(xt) do
        for _, row in ipairs(img[c]) do for _, e in ipairs(row) do ss = ss + (e - mean[c]) ^ 2 end end
      end
      var[c] = ss / n
    end
    return mean, var, n
  end
  -- BatchNorm2d of a {B,C,H,W} table with the given statistics, in doubles;
  -- w and b are tables or nil (1 and 0).
  local function bn2d_ref(xt, m, v, w, b)
    local y = {}
    for bi, img in ipairs(xt) do
      y[bi] = {}
      for c, plane in ipairs(img) do
        local a = (w and w[c] or 1) / math.sqrt(v[c] + 1e-5)
        y[bi][c] = {}
        for h, row in ipairs(plane) do
          y[bi][c][h] = {}
          for j, e in ipairs(row) do y[bi][c][h][j] = (e - m[c]) * a + (b and b[c] or 0) end
        end
      end
    end
    return y
  end
  local x = glia.randn(4, 3, 3, 2) * 2 + 1
  local xt = x:totable()
  local mean, var, n = stats2d(xt)
  local function ref(m, v) return bn2d_ref(xt, m, v) end
  t.near(bn(x), ref(mean, var), 1e-4,
         "BatchNorm2d in training normalizes each channel over N, H, W with the biased variance")
  local rm, rv = {}, {}
  for c = 1, 3 do rm[c], rv[c] = 0.1 * mean[c], 0.9 + 0.1 * var[c] * n / (n - 1) end
  t.near(bn.running_mean, rm, 1e-5, "BatchNorm2d's running mean is 0.9 * 0 + 0.1 * the batch mean")
  t.near(bn.running_var, rv, 1e-5,
         "BatchNorm2d's running variance takes 0.1 of the unbiased batch variance")
  t.is(bn.num_batches_tracked:item(), 1, "BatchNorm2d counts the batches it tracked")
  bn:eval()
  local before = { bn.running_mean:totable(), bn.running_var:totable() }
  t.near(bn(x), ref(rm, rv), 1e-4, "BatchNorm2d in eval normalizes with the running statistics")
  t.ok(u.identical(before, { bn.running_mean:totable(), bn.running_var:totable() }),
       "BatchNorm2d in eval leaves the running statistics alone")
  t.error_like(function() bn(glia.randn(4, 3, 5)) end,
               "glia.nn.BatchNorm2d: expected input {N,3,H,W}, got {4,3,5}",
               "BatchNorm2d rejects a 3-D input, naming itself")
  t.error_like(function() nn.BatchNorm1d(3)(glia.randn(2, 3, 4, 4)) end,
               "glia.nn.BatchNorm1d: expected input {N,3} or {N,3,L}, got {2,3,4,4}",
               "BatchNorm1d still rejects a 4-D input")
  bn:train()
  local b2 = nn.BatchNorm2d(3)
  u.gradcheck(function(p) return b2(p) end, { glia.randn(2, 3, 2, 2) },
              "gradcheck passes for BatchNorm2d in training on x")
  glia.no_grad(function() b2.weight:copy_(glia.randn(3) * 0.5 + 1) b2.bias:copy_(glia.randn(3)) end)
  u.gradcheck_f64(function(p) return b2(p) end, function(p, w, b)
    local m, v = stats2d(p)
    return bn2d_ref(p, m, v, w, b)
  end, { glia.randn(2, 3, 2, 3), b2.weight, b2.bias },
  "f64 gradcheck of BatchNorm2d in training (batch statistics) on x, weight and bias")
end

t.done()
