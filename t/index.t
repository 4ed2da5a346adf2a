-- t/index.t -- index_select, gather, scatter_add(_), embedding, one_hot,
-- topk, sort, argsort and cumsum (ops/index.c) against plain-Lua references
-- on contiguous, transposed and 0-size inputs; 1-based and negative
-- indices; gradients by central differences; error messages; results
-- identical for 1 and 2 threads.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

u.seed(11)

local flat, floor = t.flat, math.floor
local unpack = table.unpack or unpack

-- Gradient checks (u.gradcheck): f32 central differences, eps 1e-3,
-- |numeric - autograd| <= 1e-2 + 1e-2 * max(|numeric|, |autograd|)
-- (glia.gradcheck's defaults).

-- ============================================================ reference
-- Tensors become {v = flat row-major values, s = shape}; positions are
-- 1-based coordinate tables.

local function T(x) return { v = flat(x, {}), s = x:shape() } end

local function numel(s)
  local n = 1
  for _, k in ipairs(s) do n = n * k end
  return n
end

-- Coordinates of the 0-based linear position k in shape s, and back.
local function coords(k, s)
  local c = {}
  for d = #s, 1, -1 do
    c[d] = k % s[d] + 1
    k = floor(k / s[d])
  end
  return c
end

local function lin(c, s)
  local k = 0
  for d = 1, #s do k = k * s[d] + (c[d] - 1) end
  return k
end

local function copy(c) return { unpack(c) } end

-- A 1-based (or negative) Lua index made positive for a dim of size n.
local function norm(i, n) return i < 0 and n + i + 1 or i end

local function with(s, d, n)
  local r = copy(s)
  r[d] = n
  return r
end

local function ref_index_select(x, d, idx)
  local I, os = flat(idx, {}), with(x.s, d, #flat(idx, {}))
  local out = {}
  for k = 0, numel(os) - 1 do
    local c = coords(k, os)
    c[d] = norm(I[c[d]], x.s[d])
    out[k + 1] = x.v[lin(c, x.s) + 1]
  end
  return out
end

local function ref_gather(x, d, idx)
  local out = {}
  for k = 0, numel(idx.s) - 1 do
    local c = coords(k, idx.s)
    c[d] = norm(idx.v[k + 1], x.s[d])
    out[k + 1] = x.v[lin(c, x.s) + 1]
  end
  return out
end

local function ref_scatter_add(x, d, idx, src)
  local out = copy(x.v)
  for k = 0, numel(idx.s) - 1 do
    local c = coords(k, idx.s)
    c[d] = norm(idx.v[k + 1], x.s[d])
    local p = lin(c, x.s) + 1
    out[p] = out[p] + src.v[k + 1]
  end
  return out
end

-- Calls f(line) for every line of shape s along d, a line being the list
-- of 0-based linear positions in order.
local function each_line(s, d, f)
  local rest = with(s, d, 1)
  for k = 0, numel(rest) - 1 do
    local c, line = coords(k, rest), {}
    for j = 1, s[d] do
      c[d] = j
      line[j] = lin(c, s)
    end
    f(line)
  end
end

-- Positions 1..#vals in stable sorted order; NaN counts as the largest.
local function stable_order(vals, desc)
  local ord = {}
  for i = 1, #vals do ord[i] = i end
  table.sort(ord, function(a, b)
    local x, y = vals[a], vals[b]
    local xn, yn = x ~= x, y ~= y
    if xn ~= yn then if desc then return xn else return yn end end
    if not xn and x ~= y then if desc then return x > y else return x < y end end
    return a < b
  end)
  return ord
end

-- The first k of each sorted line: values and 1-based indices, flat.
local function ref_topk(x, k, d, desc)
  local os = with(x.s, d, k)
  local vals, inds = {}, {}
  local orow = {}
  each_line(os, d, function(line) orow[#orow + 1] = line end)
  local r = 0
  each_line(x.s, d, function(line)
    r = r + 1
    local v = {}
    for j, p in ipairs(line) do v[j] = x.v[p + 1] end
    local ord = stable_order(v, desc)
    for j = 1, k do
      vals[orow[r][j] + 1] = v[ord[j]]
      inds[orow[r][j] + 1] = ord[j]
    end
  end)
  return vals, inds
end

local function ref_cumsum(x, d)
  local out = {}
  each_line(x.s, d, function(line)
    local acc = 0
    for _, p in ipairs(line) do
      acc = acc + x.v[p + 1]
      out[p + 1] = acc
    end
  end)
  return out
end

local function i64(v) return glia.tensor(v, "i64") end

-- ======================================================= index_select

do
  local x = glia.randn(3, 4)
  local X = T(x)
  local idx = i64 { 3, 1, 3 }
  local y = x:index_select(1, idx)
  t.ok(u.same_shape(y, { 3, 4 }) and u.identical(y, ref_index_select(X, 1, idx)),
       "index_select along dim 1 picks rows by 1-based index, repeats allowed")
  idx = i64 { 4, -1, 2, -4 }
  y = glia.index_select(x, 2, idx)
  t.ok(u.same_shape(y, { 3, 4 }) and u.identical(y, ref_index_select(X, 2, idx)),
       "index_select along dim 2 takes negative indices from the end")
  t.ok(u.identical(x:index_select(-1, glia.tensor({ 4, -1, 2, -4 }, "i32")), y),
       "index_select accepts i32 indices and a negative dim")
  local xt = x:t()
  y = xt:index_select(1, i64 { 2, 4 })
  t.ok(u.identical(y, ref_index_select(T(xt), 1, i64 { 2, 4 })),
       "index_select reads a transposed (strided) input correctly")
  local e = x:index_select(1, glia.tensor({}, "i64"))
  t.ok(u.same_shape(e, { 0, 4 }), "index_select with an empty index gives a 0-size result")
  local z = glia.zeros(0, 3):index_select(2, i64 { 3, 1 })
  t.ok(u.same_shape(z, { 0, 2 }), "index_select on a 0-size input keeps the empty dim")
  local b = glia.tensor({ { 1, 2 }, { 3, 4 } }, "i64"):index_select(2, i64 { 2 })
  t.ok(b:dtype() == "i64" and u.identical(b, { { 2 }, { 4 } }), "index_select moves i64 data too")
  u.gradcheck(function(a) return a:index_select(2, i64 { 2, 2, 4, 1 }) end, { glia.randn(3, 4) },
              "index_select gradient (repeated indices add up) matches central differences")
  u.gradcheck(function(a) return a:index_select(1, i64 { 3, 1, 3 }) end, { glia.randn(3, 2, 2) },
              "index_select gradient along dim 1 of a 3-D input matches central differences")
  t.error_like(function() x:index_select(1, i64 { 1, 5 }) end,
               "glia%.index_select: index 5 out of range for dim 1 of size 3",
               "an index past the end names the op, the index and the dim size")
  t.error_like(function() x:index_select(1, i64 { 0 }) end, "index 0 out of range.*1%-based",
               "index 0 is refused with a reminder that indices are 1-based")
  t.error_like(function() x:index_select(1, i64 { -4 }) end, "index %-4 out of range",
               "a negative index before the start is refused")
  t.error_like(function() x:index_select(1, glia.tensor { 1, 2 }) end,
               "glia%.index_select: index must be i64 or i32, got f32",
               "an f32 index tensor is refused, naming its dtype")
  t.error_like(function() x:index_select(1, i64 { { 1 } }) end, "index must be 1%-D, got {1,1}",
               "a 2-D index is refused for index_select")
end

-- ============================================================= gather

do
  local x = glia.randn(2, 3, 4)
  local X = T(x)
  local idx = glia.randint(1, 4, { 2, 5, 4 })
  local y = x:gather(2, idx)
  t.ok(u.same_shape(y, { 2, 5, 4 }) and u.identical(y, ref_gather(X, 2, T(idx))),
       "gather along the middle dim matches the reference")
  idx = glia.randint(-4, 0, { 2, 3, 6 })
  y = glia.gather(x, 3, idx)
  t.ok(u.identical(y, ref_gather(X, 3, T(idx))), "gather along the last dim takes negative indices")
  idx = glia.randint(1, 3, { 4, 3, 4 })
  t.ok(u.identical(x:gather(1, idx), ref_gather(X, 1, T(idx))), "gather along the first dim matches")
  local xt = x:transpose(1, 3)
  idx = glia.randint(1, 4, { 4, 2, 2 })
  t.ok(u.identical(xt:gather(2, idx), ref_gather(T(xt), 2, T(idx))),
       "gather reads a transposed input correctly")
  local x2, it = glia.randn(2, 3), glia.randint(1, 4, { 5, 2 }):t()
  t.ok(u.identical(x2:gather(2, it), ref_gather(T(x2), 2, T(it))), "gather reads a transposed index correctly")
  local g0 = x:gather(2, glia.zeros(2, 0, 4, "i64"))
  t.ok(u.same_shape(g0, { 2, 0, 4 }), "gather with a 0-size index gives a 0-size result")
  u.gradcheck(function(a) return a:gather(2, i64 { { 1, 1, 3 }, { 2, 3, 3 } }) end,
              { glia.randn(2, 3) }, "gather gradient (repeated picks add up) matches central differences")
  t.error_like(function() x:gather(2, glia.ones(2, 3, 5, "i64")) end,
               "index {2,3,5} must have the shape of {2,3,4} except along dim 2",
               "gather refuses an index whose other dims differ, naming both shapes")
  t.error_like(function() x:gather(3, glia.tensor({ { { 1, 9, 1, 1 } } }, "i64"):expand(2, 3, 4)) end,
               "glia%.gather: index 9 out of range for dim 3 of size 4",
               "gather names a bad index, its dim and the dim size")
end

-- ========================================================= scatter_add

do
  local x = glia.randn(3, 4)
  local idx = i64 { { 1, 3, 1, 1 }, { 3, 3, 2, -1 } }
  local src = glia.randn(2, 4)
  local y = x:scatter_add(1, idx, src)
  t.near(y, ref_scatter_add(T(x), 1, T(idx), T(src)), 1e-5,
         "scatter_add along dim 1 adds every source element, colliding ones included")
  local idx2 = glia.randint(1, 5, { 3, 6 })
  local src2 = glia.randn(3, 6)
  t.near(glia.scatter_add(x, 2, idx2, src2), ref_scatter_add(T(x), 2, T(idx2), T(src2)), 1e-5,
         "scatter_add along dim 2 with many collisions matches the reference")
  local r = x:scatter_add_(1, idx, src)
  t.ok(u.identical(x, y) and u.identical(r, y), "scatter_add_ writes scatter_add's result into x and returns x")
  local base = glia.zeros(4, 3)
  local view = base:t()
  view:scatter_add_(2, i64 { { 4, 4 }, { 1, 2 }, { 3, 3 } }, glia.ones(3, 2))
  t.ok(u.identical(base, { { 0, 1, 0 }, { 0, 1, 0 }, { 0, 0, 2 }, { 2, 0, 0 } }),
       "scatter_add_ on a transposed view writes through to its storage")
  local keep = flat(x, {})
  t.error_like(function() x:scatter_add_(1, i64 { { 1, 1, 1, 1 }, { 1, 1, 1, 4 } }, src) end,
               "glia%.scatter_add_: index 4 out of range for dim 1 of size 3",
               "scatter_add_ names the bad index")
  t.ok(u.identical(x, keep), "scatter_add_ checks every index before writing anything")
  local w = glia.randn(3, 4):requires_grad()
  t.error_like(function() w:scatter_add_(1, idx, src) end, "in%-place op on a tensor that requires grad",
               "scatter_add_ is refused on a tensor that requires grad")
  local s = glia.randn(2, 4):requires_grad()
  t.error_like(function() glia.zeros(3, 4):scatter_add_(1, idx, s) end, "src {2,4} requires grad",
               "scatter_add_ is refused when src requires grad (its gradient would be lost)")
  t.error_like(function() x:scatter_add(1, idx, glia.randn(2, 5)) end,
               "src {2,5} must have the shape of index {2,4}", "scatter_add names mismatched src and index shapes")
  t.error_like(function() x:scatter_add(1, idx:to("f32"), src) end, "index must be i64 or i32, got f32",
               "scatter_add refuses an f32 index")
  u.gradcheck(function(a, b) return a:scatter_add(1, idx, b) end, { glia.randn(3, 4), glia.randn(2, 4) },
              "scatter_add gradients for x and src match central differences")
  u.gradcheck(function(a, b) return glia.scatter_add(a, 2, idx2, b) end, { glia.randn(3, 4), glia.randn(3, 6) },
              "scatter_add gradients along dim 2 match central differences")
end

-- =========================================================== embedding

do
  local w = glia.randn(5, 3)
  local ids = i64 { { 1, 5 }, { 2, -1 } }
  local e = glia.embedding(ids, w)
  local W, ref = w:totable(), {}
  for _, row in ipairs({ 1, 5, 2, 5 }) do
    for j = 1, 3 do ref[#ref + 1] = W[row][j] end
  end
  t.ok(u.same_shape(e, { 2, 2, 3 }) and u.identical(e, ref),
       "embedding picks weight rows by 1-based token id; out is ids' shape + {D}")
  t.ok(u.same_shape(glia.embedding(i64(3), w), { 3 }) and u.identical(glia.embedding(i64(3), w), W[3]),
       "embedding of a 0-D id is one row")
  t.ok(u.identical(glia.embedding(ids, w:t():contiguous():t()), e),
       "embedding reads a column-major weight correctly")
  t.ok(u.same_shape(glia.embedding(glia.zeros(2, 0, "i64"), w), { 2, 0, 3 }),
       "embedding of 0 ids gives a 0-size result")
  u.gradcheck(function(a) return glia.embedding(i64 { { 1, 4, 4 }, { 2, 4, 1 } }, a) end,
              { glia.randn(4, 3) }, "embedding gradient (repeated ids add up) matches central differences")
  t.error_like(function() glia.embedding(i64 { 1, 6 }, w) end,
               "glia%.embedding: index 6 out of range for dim 1 of size 5",
               "embedding names an id past the vocabulary")
  t.error_like(function() glia.embedding(i64 { 0 }, w) end, "1%-based",
               "embedding refuses id 0: ids are 1-based")
  t.error_like(function() glia.embedding(glia.tensor { 1 }, w) end, "glia%.embedding: index must be i64 or i32, got f32",
               "embedding refuses f32 ids")
  t.error_like(function() glia.embedding(i64 { 1 }, glia.randn(5)) end, "weight must be 2%-D",
               "embedding refuses a 1-D weight")

  -- Determinism: a big backward with 1 and 2 threads gives identical bits.
  local V, D, N = 37, 64, 6000
  local bw = glia.randn(V, D)
  local big = glia.randint(1, V + 1, { N })
  local g = glia.randn(N, D)
  local grads = u.by_threads(function()
    bw:zero_grad()
    bw:requires_grad()
    glia.embedding(big, bw):backward(g)
    return bw.grad
  end)
  t.ok(u.identical(grads[1], grads[2]), "embedding backward is bit-identical with 1 and 2 threads")
  local I, G, ref2 = flat(big, {}), g:totable(), {}
  for v = 1, V do
    ref2[v] = {}
    for j = 1, D do ref2[v][j] = 0 end
  end
  for n = 1, N do
    local row = ref2[I[n]]
    for j = 1, D do row[j] = row[j] + G[n][j] end
  end
  t.near(grads[2], ref2, 1e-3, "embedding backward sums the gradient rows of each token id")
end

-- ============================================================= one_hot

do
  local o = i64 { 1, 3, 2 }:one_hot(3)
  t.ok(o:dtype() == "f32" and u.identical(o, { { 1, 0, 0 }, { 0, 0, 1 }, { 0, 1, 0 } }),
       "one_hot gives f32 rows with a 1 at each 1-based class")
  local o2 = glia.one_hot(i64 { { 2, -1 }, { 1, 1 } }, 2)
  t.ok(u.same_shape(o2, { 2, 2, 2 }) and u.identical(o2, { { { 0, 1 }, { 0, 1 } }, { { 1, 0 }, { 1, 0 } } }),
       "one_hot of a 2-D index adds a class dim and takes negative classes")
  t.ok(u.same_shape(glia.one_hot(glia.tensor({}, "i64"), 4), { 0, 4 }), "one_hot of no index is {0,C}")
  t.error_like(function() i64 { 1, 4 }:one_hot(3) end, "glia%.one_hot: index 4 out of range for dim 2 of size 3",
               "one_hot names a class past num_classes")
end

-- ========================================================== sort, topk

do
  local x = glia.randn(4, 10)
  local X = T(x)
  for _, case in ipairs({ { 2, false }, { 2, true }, { 1, false }, { 1, true } }) do
    local d, desc = case[1], case[2]
    local v, i = x:sort(d, desc)
    local rv, ri = ref_topk(X, X.s[d], d, desc)
    t.ok(u.identical(v, rv) and u.identical(i, ri) and i:dtype() == "i64",
         string.format("sort along dim %d (%s) gives the reference values and 1-based i64 indices", d,
                       desc and "descending" or "ascending"))
  end
  local v, i = x:sort()
  t.ok(u.identical(i, select(2, x:sort(2))), "sort defaults to the last dim, ascending")
  t.ok(u.identical(x:gather(2, i), v), "sort's indices fed to gather give the sorted values")
  t.ok(u.identical(x:argsort(1, true), select(2, x:sort(1, true))), "argsort gives sort's indices")

  local ties = glia.tensor { 2, 1, 2, 1 }
  t.ok(u.identical(select(2, ties:sort()), { 2, 4, 1, 3 })
       and u.identical(select(2, ties:sort(1, true)), { 1, 3, 2, 4 }),
       "sort is stable: equal values keep their original order both ways")
  local nan = 0 / 0
  local xn = glia.tensor { nan, 1, nan, 0 }
  local sv, si = xn:sort()
  t.ok(u.identical(sv, { 0, 1, nan, nan }) and u.identical(si, { 4, 2, 1, 3 }), "sort puts NaN last ascending")
  sv, si = xn:sort(1, true)
  t.ok(u.identical(sv, { nan, nan, 1, 0 }) and u.identical(si, { 1, 3, 2, 4 }), "sort puts NaN first descending")

  local xt = glia.randn(6, 3):t()
  local tv, ti = xt:topk(4, 2)
  local rv, ri = ref_topk(T(xt), 4, 2, true)
  t.ok(u.identical(tv, rv) and u.identical(ti, ri), "topk of a transposed input gives the k largest with indices")
  tv, ti = glia.topk(x, 3, 1, false)
  rv, ri = ref_topk(X, 3, 1, false)
  t.ok(u.identical(tv, rv) and u.identical(ti, ri), "topk with largest = false gives the k smallest along dim 1")
  tv, ti = glia.tensor { 3, 1, 3, 2, 3 }:topk(2)
  t.ok(u.identical(tv, { 3, 3 }) and u.identical(ti, { 1, 3 }), "topk breaks ties by position")
  tv, ti = glia.tensor { 1, nan, 2 }:topk(1)
  t.ok(u.identical(tv, { nan }) and u.identical(ti, { 2 }), "topk counts NaN as the largest")
  -- k much smaller than the dim (a heap keeps the best k): ties and NaNs.
  local tl = {}
  for r = 1, 5 do
    tl[r] = {}
    for j = 1, 64 do tl[r][j] = (r + j * 7) % 13 == 0 and nan or ((r * j * 5) % 11) - 5 end
  end
  local xh = glia.tensor(tl)
  for _, largest in ipairs({ true, false }) do
    tv, ti = xh:topk(5, 2, largest)
    rv, ri = ref_topk(T(xh), 5, 2, largest)
    t.ok(u.identical(tv, rv) and u.identical(ti, ri),
         "topk of 5 among 64 with ties and NaNs matches the stable reference (largest = " .. tostring(largest) .. ")")
  end
  local zs = glia.tensor { 0, -0.0, 0 }
  t.ok(u.identical(select(2, zs:sort()), { 1, 2, 3 }) and u.identical(select(2, zs:sort(1, true)), { 1, 2, 3 }),
       "sort treats -0 and +0 as equal and keeps their order")
  tv, ti = x:topk(0)
  t.ok(u.same_shape(tv, { 4, 0 }) and u.same_shape(ti, { 4, 0 }), "topk with k = 0 gives empty results")
  tv = glia.zeros(0, 5):sort(2)
  t.ok(u.same_shape(tv, { 0, 5 }), "sort of a 0-size input is 0-size")
  t.error_like(function() x:topk(11) end, "glia%.topk: k = 11 out of range for dim 2 of size 10",
               "topk refuses k larger than the dim")
  t.error_like(function() i64 { 1, 2 }:sort() end, "glia%.sort: x must be f32, got i64",
               "sort refuses a non-f32 tensor, naming its dtype")
  u.gradcheck(function(a) return (a:topk(3, 2)) end, { glia.randn(3, 7) },
              "topk values' gradient matches central differences")
  u.gradcheck(function(a) return (a:sort(1, true)) end, { glia.randn(5, 3):t() },
              "sort values' gradient on a transposed input matches central differences")

  local big = glia.randn(64, 1000)
  local res = u.by_threads(function() return { big:sort(2, true) } end)
  t.ok(u.identical(res[1][1], res[2][1]) and u.identical(res[1][2], res[2][2]),
       "sort of many lines is identical with 1 and 2 threads")
end

-- ============================================================== cumsum

do
  local x = glia.randn(3, 5)
  t.near(x:cumsum(2), ref_cumsum(T(x), 2), 1e-5, "cumsum along dim 2 gives running sums")
  t.near(glia.cumsum(x, 1), ref_cumsum(T(x), 1), 1e-5, "cumsum along dim 1 gives running sums")
  local xt = glia.randn(2, 3, 4):transpose(1, 3)
  t.near(xt:cumsum(2), ref_cumsum(T(xt), 2), 1e-5, "cumsum of a transposed 3-D input matches")
  t.ok(u.same_shape(glia.zeros(0, 3):cumsum(1), { 0, 3 }), "cumsum of a 0-size input is 0-size")
  u.gradcheck(function(a) return a:cumsum(2) end, { glia.randn(3, 4) },
              "cumsum gradient matches central differences")
  u.gradcheck(function(a) return a:cumsum(1) end, { glia.randn(4, 2, 2) },
              "cumsum gradient along dim 1 of a 3-D input matches central differences")
  local big = glia.randn(300, 500)
  local res = u.by_threads(function() return big:cumsum(1) end)
  t.ok(u.identical(res[1], res[2]), "cumsum is identical with 1 and 2 threads")
  t.error_like(function() i64 { 1 }:cumsum(1) end, "glia%.cumsum: x must be f32, got i64",
               "cumsum refuses a non-f32 tensor")
end

-- ====================================================== out of memory

do
  local x, w = glia.randn(3, 4):requires_grad(), glia.randn(5, 4):requires_grad()
  local idx, src = i64 { { 1, 3, 1, 1 }, { 3, 3, 2, -1 } }, glia.randn(2, 4):requires_grad()
  local g24, g34 = glia.randn(2, 4), glia.randn(3, 4)
  u.oom_ok(function() x:gather(1, idx):backward(g24) end, "gather and its backward fail cleanly at every allocation")
  u.oom_ok(function() x:index_select(2, i64 { 4, 1, 1, 2 }):backward(g34) end,
         "index_select and its backward fail cleanly at every allocation")
  u.oom_ok(function() x:scatter_add(1, idx, src):backward(g34) end,
         "scatter_add and its backward fail cleanly at every allocation")
  u.oom_ok(function() glia.zeros(3, 4):t():scatter_add_(2, idx:t(), glia.ones(4, 2)) end,
         "scatter_add_ on a strided tensor fails cleanly at every allocation")
  u.oom_ok(function() glia.embedding(idx, w):backward(glia.randn(2, 4, 4)) end,
         "embedding and its backward fail cleanly at every allocation")
  u.oom_ok(function() glia.one_hot(idx, 3) end, "one_hot fails cleanly at every allocation")
  u.oom_ok(function() (x:topk(2, 2)):backward(glia.randn(3, 2)) end,
         "topk and its backward fail cleanly at every allocation")
  u.oom_ok(function() x:t():sort(2, true) end, "sort fails cleanly at every allocation")
  u.oom_ok(function() x:cumsum(1):backward(g34) end, "cumsum and its backward fail cleanly at every allocation")
end

t.done()
