-- t/view.t -- views (ops/view.c) and indexing through them (lua/index.c):
-- shapes and values against plain-Lua references, shared storage, strided
-- and 0-size inputs, gradients, and error messages.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local flat = t.flat
local unpack = table.unpack or unpack

-- 0, 1, 2, ... laid out in the given shape (a table).
local function iota(shape)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  return glia.arange(n):view(shape)
end

-- The element at multi-index idx (1-based table) of a nested table.
local function at(tbl, idx)
  for _, i in ipairs(idx) do tbl = tbl[i] end
  return tbl
end

-- A nested table of the given shape with f(idx) at each multi-index.
local function build(shape, f, d, idx)
  d, idx = d or 1, idx or {}
  if d > #shape then return f(idx) end
  local r = {}
  for i = 1, shape[d] do
    idx[d] = i
    r[i] = build(shape, f, d + 1, idx)
  end
  idx[d] = nil
  return r
end

-- The input gradient of a pure view op fn at a tensor of this shape for the
-- output gradient w, computed in Lua: fn applied to element ids tells which
-- input element each output element reads; gradients add up per id.
local function adjoint(fn, shape, w)
  local ids = flat(glia.no_grad(fn, iota(shape)), {})
  local wv, g, n = flat(w, {}), {}, 1
  for _, s in ipairs(shape) do n = n * s end
  for i = 1, n do g[i] = 0 end
  for k = 1, #ids do g[ids[k] + 1] = g[ids[k] + 1] + wv[k] end
  return g
end

-- Autograd's input gradient of fn at x for output gradient w.
local function autograd(fn, x, w)
  x:zero_grad()
  x:requires_grad()
  fn(x):backward(w)
  local g = x.grad
  x:requires_grad(false)
  return g and flat(g, {}) or {}
end

-- Checks autograd against the adjoint for fn at a random input of shape.
local function check_grad(fn, shape, desc)
  local x = glia.randn(shape)
  local w = glia.randn(glia.no_grad(fn, x):shape())
  t.near(autograd(fn, x, w), adjoint(fn, shape, w), 1e-5, desc)
end

u.seed(7)

-- ============================================================ view
do
  local x = iota{2, 3}
  local v = x:view(3, 2)
  t.ok(u.same_shape(v, {3, 2}) and u.same_shape(x:view{6}, {6}), "view takes sizes as varargs or a table")
  t.near(v, {{0, 1}, {2, 3}, {4, 5}}, 0, "view reads elements in row-major order")
  v[{3, 2}] = 50
  t.is(x[{2, 3}], 50, "view shares storage with its source")
  t.is(x:view(1, 6, 1):stride(2), 1, "view inserts size-1 dims")
  t.ok(u.same_shape(x:view(-1, 2), {3, 2}) and u.same_shape(x:view(3, -1), {3, 2}),
       "view infers one -1 size")
  t.error_like(function() return x:view(-1, -1) end, "glia%.view: bad size %-1 in {%-1,%-1}",
               "view refuses a second -1")
  t.error_like(function() return x:view(2 ^ 53, 1e12) end, "glia%.view: size .* is too large",
               "view refuses sizes whose product overflows, before multiplying them (UBSan)")
  t.error_like(function() return x:reshape(-1, 2 ^ 53, 1e12) end, "glia%.reshape: size .* is too large",
               "reshape refuses them beside a -1 too")
  local y = iota{2, 3, 4}:transpose(1, 2) -- {3,2,4}, strides {4,12,1}
  local s = y:view(3, 2, 2, 2)
  t.near(s, build({3, 2, 2, 2}, function(i)
    return (i[2] - 1) * 12 + (i[1] - 1) * 4 + (i[3] - 1) * 2 + i[4] - 1
  end), 0, "view splits a dim of a transposed tensor without a copy")
  t.error_like(function() return y:view(6, 4) end, "glia%.view: cannot view {3,2,4} .* as {6,4}",
               "view refuses strides it cannot express, naming both shapes")
  t.error_like(function() return x:view(4) end, "glia%.view: shape {4} is invalid for a tensor of shape {2,3}",
               "view refuses a different element count, naming both shapes")
  t.error_like(function() return x:view(2, 2.5) end, "glia%.view.*integer",
               "view refuses non-integer sizes")
  t.error_like(function() return x:view(1, 1, 1, 1, 1, 1, 1, 1, 6) end, "glia%.view.*at most 8",
               "view refuses more than 8 dims")
  local e = glia.zeros(0, 3)
  t.ok(u.same_shape(e:view(3, 0), {3, 0}) and u.same_shape(e:view(0), {0}),
       "view reshapes 0-size tensors")
  t.ok(u.same_shape(glia.zeros(1):view{}, {}) and glia.zeros(1):view{}:dim() == 0,
       "view to an empty size list gives a 0-D tensor")
end

-- ========================================================= reshape
do
  local x = iota{2, 3}
  local r = x:reshape(3, 2)
  r[{1, 1}] = 9
  t.is(x[{1, 1}], 9, "reshape of a contiguous tensor is a view")
  local xt = iota{2, 3}:t()
  local c = xt:reshape(6)
  t.near(c, {0, 3, 1, 4, 2, 5}, 0, "reshape of a transposed tensor copies in row-major order")
  c[1] = 99
  t.is(xt[{1, 1}], 0, "reshape's copy does not write through")
  t.error_like(function() return x:reshape(5) end, "glia%.reshape: shape {5} is invalid",
               "reshape refuses a different element count")
end

-- ========================================================== narrow
do
  local x = iota{3, 4}
  local n = x:narrow(2, 2, 2)
  t.near(n, {{1, 2}, {5, 6}, {9, 10}}, 0, "narrow keeps the requested columns")
  n:fill_(-1)
  t.near(x, {{0, -1, -1, 3}, {4, -1, -1, 7}, {8, -1, -1, 11}}, 0,
         "narrow shares storage with its source")
  t.near(iota{3, 4}:narrow(2, -2, 2), {{2, 3}, {6, 7}, {10, 11}}, 0,
         "narrow counts a negative start from the end")
  t.ok(u.same_shape(x:narrow(1, 4, 0), {0, 4}), "narrow takes a 0-length range at the end")
  t.near(iota{3, 4}:t():narrow(1, 2, 2), {{1, 5, 9}, {2, 6, 10}}, 0,
         "narrow works on a transposed tensor")
  t.error_like(function() return x:narrow(1, 3, 2) end,
               "glia%.narrow: length 2 from start 3 out of range for dim 1 of size 3",
               "narrow past the end raises a range error")
  t.error_like(function() return x:narrow(3, 1, 1) end, "glia%.narrow: dim 3 out of range",
               "narrow refuses a dim past ndim")
  t.error_like(function() return x:narrow(1, 1, -1) end, "glia%.narrow: length %-1",
               "narrow refuses a negative length")
end

-- ========================================================== select
do
  local x = iota{3, 4}
  local s = x:select(2, 3)
  t.near(s, {2, 6, 10}, 0, "select along dim 2 removes that dim")
  t.near(x:select(1, -1), {8, 9, 10, 11}, 0, "select counts a negative index from the end")
  local z = glia.tensor{5, 6, 7}:select(1, 2)
  t.ok(z:dim() == 0 and z:item() == 6, "select on a 1-D tensor gives a 0-D tensor")
  s:fill_(0)
  t.is(x[{2, 3}], 0, "select shares storage with its source")
  t.near(iota{2, 3}:expand(4, 2, 3):select(1, 3), {{0, 1, 2}, {3, 4, 5}}, 0,
         "select works on an expanded tensor")
  t.error_like(function() return x:select(1, 4) end,
               "glia%.select: index 4 out of range for dim 1 of size 3",
               "select past the end raises a range error naming the dim")
  t.error_like(function() return x:select(1, -4) end, "glia%.select: index %-4 out of range",
               "select before the start raises a range error with the given index")
end

-- ================================================ transpose, t, permute
do
  local x = iota{2, 3}
  t.near(x:t(), {{0, 3}, {1, 4}, {2, 5}}, 0, "t transposes a matrix")
  t.ok(not x:t():is_contiguous() and x:t():stride(1) == 1, "t swaps strides without copying")
  local y = iota{2, 3, 4}
  t.near(y:transpose(1, 3), build({4, 3, 2}, function(i) return at(y:totable(), {i[3], i[2], i[1]}) end), 0,
         "transpose swaps two dims of a 3-D tensor")
  t.near(y:transpose(-1, 2), y:transpose(3, 2), 0, "transpose accepts negative dims")
  t.error_like(function() return y:t() end, "glia%.t: expected a 2%-D tensor, got {2,3,4}",
               "t refuses a 3-D tensor")
  t.error_like(function() return y:transpose(1, 4) end, "glia%.transpose: dim 4 out of range",
               "transpose refuses a dim past ndim")
  local p = y:permute(3, 1, 2)
  t.ok(u.same_shape(p, {4, 2, 3}), "permute reorders the shape")
  t.near(p, build({4, 2, 3}, function(i) return at(y:totable(), {i[2], i[3], i[1]}) end), 0,
         "permute moves dim k of the result to the given source dim")
  t.error_like(function() return y:permute(1, 1, 2) end, "glia%.permute: dims must be a permutation",
               "permute refuses a repeated dim")
  t.error_like(function() return y:permute(2, 1) end, "glia%.permute: got 2 dims for a 3%-D tensor",
               "permute refuses the wrong number of dims")
  t.ok(u.same_shape(glia.zeros(0, 3):t(), {3, 0}), "t handles 0-size tensors")
end

-- ======================================================= expand
do
  local x = glia.tensor{{1}, {2}, {3}}
  local e = x:expand(3, 4)
  t.near(e, {{1, 1, 1, 1}, {2, 2, 2, 2}, {3, 3, 3, 3}}, 0, "expand repeats a size-1 dim")
  t.is(e:stride(2), 0, "expand gives broadcast dims stride 0")
  local l = glia.tensor{1, 2}:expand(3, 2)
  t.near(l, {{1, 2}, {1, 2}, {1, 2}}, 0, "expand adds leading dims")
  x[{2, 1}] = 20
  t.is(e[{2, 4}], 20, "expand shares storage with its source")
  t.ok(u.same_shape(x:expand(2, -1, 4), {2, 3, 4}), "expand keeps a -1 size")
  t.ok(u.same_shape(glia.zeros(3, 1):expand_as(glia.zeros(2, 3, 5)), {2, 3, 5}),
       "expand_as takes the other tensor's shape")
  t.ok(u.same_shape(glia.zeros(0, 1):expand(0, 4), {0, 4}), "expand handles 0-size tensors")
  t.error_like(function() return glia.zeros(3, 2):expand(3, 4) end,
               "glia%.expand: cannot expand {3,2} to {3,4}", "expand refuses a non-1 dim that differs")
  t.error_like(function() return glia.zeros(3, 2):expand(2) end,
               "glia%.expand: cannot expand {3,2} to {2}", "expand refuses fewer dims")
  t.error_like(function() return glia.zeros(3):expand_as(glia.zeros(2)) end,
               "glia%.expand_as: cannot expand {3} to {2}", "expand_as names itself in errors")
end

-- ============================================ squeeze, unsqueeze, flatten
do
  local x = glia.zeros(2, 1, 3, 1)
  t.ok(u.same_shape(x:squeeze(), {2, 3}), "squeeze drops every size-1 dim")
  t.ok(u.same_shape(x:squeeze(2), {2, 3, 1}), "squeeze(dim) drops only that dim")
  t.ok(u.same_shape(x:squeeze(1), {2, 1, 3, 1}), "squeeze(dim) keeps a dim whose size is not 1")
  local y = iota{2, 3}
  t.ok(u.same_shape(y:unsqueeze(1), {1, 2, 3}) and u.same_shape(y:unsqueeze(3), {2, 3, 1})
       and u.same_shape(y:unsqueeze(-1), {2, 3, 1}), "unsqueeze inserts a dim at 1..ndim+1")
  t.near(y:t():unsqueeze(2):squeeze(2), y:t(), 0, "unsqueeze then squeeze round-trips a strided tensor")
  local yu = y:unsqueeze(2)
  yu[{2, 1, 3}] = 42
  t.is(y[{2, 3}], 42, "unsqueeze shares storage with its source")
  t.error_like(function() return y:unsqueeze(4) end, "glia%.unsqueeze: dim 4 out of range",
               "unsqueeze refuses a dim past ndim+1")
  t.error_like(function() return glia.zeros(1, 1, 1, 1, 1, 1, 1, 1):unsqueeze(1) end,
               "glia%.unsqueeze: .* maximum of 8 dims", "unsqueeze refuses a ninth dim")
  local z = iota{2, 3, 4}
  t.ok(u.same_shape(z:flatten(), {24}) and u.same_shape(z:flatten(2), {2, 12})
       and u.same_shape(z:flatten(1, 2), {6, 4}), "flatten merges the given range of dims")
  t.near(z:transpose(1, 3):flatten(), flat(z:transpose(1, 3), {}), 0,
         "flatten of a transposed tensor keeps row-major order")
  t.ok(u.same_shape(glia.tensor(5):flatten(), {1}), "flatten of a 0-D tensor gives one element")
  t.error_like(function() return z:flatten(3, 1) end, "glia%.flatten: start dim 3 comes after end dim 1",
               "flatten refuses a reversed range")
end

-- ======================================================= contiguous
do
  local x = iota{2, 3}
  local c = x:contiguous()
  c[{1, 1}] = 7
  t.is(x[{1, 1}], 7, "contiguous of a contiguous tensor is the tensor itself")
  local ct = iota{2, 3}:t():contiguous()
  t.ok(ct:is_contiguous(), "contiguous of a transposed tensor is contiguous")
  t.near(ct, {{0, 3}, {1, 4}, {2, 5}}, 0, "contiguous keeps the values")
end

-- ======================================================= gradients
do
  local views = {
    {"view", function(x) return x:view(3, 4) end, {2, 6}},
    {"reshape (view)", function(x) return x:reshape(4, 3) end, {2, 6}},
    {"reshape (copy)", function(x) return x:t():reshape(12) end, {2, 6}},
    {"narrow", function(x) return x:narrow(2, 2, 3) end, {3, 5}},
    {"select", function(x) return x:select(2, 2) end, {3, 4}},
    {"select to 0-D", function(x) return x:select(1, 3) end, {4}},
    {"transpose", function(x) return x:transpose(1, 3) end, {2, 3, 4}},
    {"t", function(x) return x:t() end, {3, 4}},
    {"permute", function(x) return x:permute(2, 3, 1) end, {2, 3, 4}},
    {"expand", function(x) return x:expand(2, 3, 4) end, {3, 1}},
    {"expand_as", function(x) return x:expand_as(glia.zeros(4, 3)) end, {3}},
    {"squeeze", function(x) return x:squeeze() end, {3, 1, 2}},
    {"unsqueeze", function(x) return x:unsqueeze(2) end, {3, 2}},
    {"flatten", function(x) return x:flatten(1, 2) end, {2, 3, 2}},
    {"contiguous", function(x) return x:t():contiguous() end, {3, 4}},
    {"strided chain", function(x) return x:t():narrow(1, 2, 2):select(2, 3):unsqueeze(1) end, {4, 3}},
    {"index slice", function(x) return x[{ {}, {1, 5, 2} }] end, {3, 6}},
    {"index range and select", function(x) return x[{ {1, 3}, -1 }] end, {4, 3}},
  }
  for _, v in ipairs(views) do
    check_grad(v[2], v[3], v[1] .. " backward matches the adjoint computed in Lua")
  end
  for _, v in ipairs(views) do
    u.gradcheck(v[2], {glia.randn(v[3])}, v[1] .. " passes gradcheck (eps 1e-2, atol 1e-2, rtol 1e-2)",
                {eps = 1e-2, atol = 1e-2, rtol = 1e-2})
  end
  local x = glia.randn(3, 4):requires_grad()
  t.ok(x:narrow(1, 1, 2):needs_grad() and x:t():needs_grad(),
       "views of a tensor that requires grad require grad")
  t.ok(not glia.no_grad(function() return x:t() end):needs_grad(),
       "views made under no_grad record no history")
  t.error_like(function() x:narrow(1, 1, 1):fill_(0) end, "glia%.fill_: in%-place op on a tensor that requires grad",
               "writing through a view of a tensor that requires grad is refused")
end

-- ============================================== allocation failure
do
  local x = glia.randn(3, 4):requires_grad()
  u.oom_ok(function()
    local y = x:t():reshape(12):view(3, 4):narrow(1, 2, 2):select(2, 1):expand(5, 2)
    y:backward(glia.ones(5, 2))
  end, "views and their backward fail cleanly at any failing allocation")
  u.oom_ok(function()
    local z = glia.zeros(4, 6)
    z[{ {}, {1, 6, 2} }] = glia.ones(3)
    return z[2][{ {2, 4} }]
  end, "indexing fails cleanly at any failing allocation")
end

-- ======================================================= indexing
do
  local x = iota{3, 5}
  t.near(x[2], {5, 6, 7, 8, 9}, 0, "x[i] selects a row")
  t.is(glia.tensor{4, 5, 6}[-1], 6, "x[i] on a 1-D tensor gives a number")
  t.near(x[{ {1, 3}, -1 }], {4, 9, 14}, 0, "x[{ {a, b}, -1 }] keeps rows a..b of the last column")
  t.near(x[{ {}, {1, 5, 2} }], {{0, 2, 4}, {5, 7, 9}, {10, 12, 14}}, 0,
         "x[{ {}, {a, b, step} }] takes every step-th column")
  t.ok(u.same_shape(x[{ {}, {2, 1} }], {3, 0}), "an empty range gives a 0-size view")
  x[{1, {}}] = 5
  t.near(x[1], {5, 5, 5, 5, 5}, 0, "assigning a number to x[{i, {}}] fills the row")
  x[2] = glia.tensor{1, 2, 3, 4, 5}
  t.near(x[2], {1, 2, 3, 4, 5}, 0, "assigning a tensor to x[i] copies it into the row")
  x[{ {}, {1, 5, 2} }] = glia.tensor{-1, -2, -3}
  t.near(x[3], {-1, 11, -2, 13, -3}, 0, "assigning a tensor to a strided slice broadcasts it")
  local i = glia.zeros(2, 2, "i64")
  i[{1, 2}] = 7
  t.near(i, {{0, 7}, {0, 0}}, 0, "assigning a number into an i64 tensor stores it exactly")
  t.error_like(function() return x[4] end, "glia%.index: index 4 out of range", "x[i] past the end raises")
  t.error_like(function() x[1] = glia.zeros(4) end, "glia%.copy_: .*{4}",
               "assigning a tensor of the wrong shape raises")
end

do -- gradients of several views of one tensor meet in one buffer (the engine's scatter)
  local x = glia.tensor{1, 2, 3, 4, 5, 6}:requires_grad()
  local a, b, c = x:narrow(1, 1, 4), x:narrow(1, 3, 4), x[{{2, 6, 2}}]
  ;(a * 1 + 0):sum():backward(nil, true)
  t.near(x.grad, {1, 1, 1, 1, 0, 0}, 0, "a narrow's gradient lands in its part of x.grad")
  ;(a:sum() + (b * 2):sum() + (c * 10):sum()):backward()
  t.near(x.grad, {2, 12, 4, 14, 2, 12}, 0,
         "overlapping narrows and a strided slice add up, onto the gradient x already had")
  local y = glia.tensor{{1, 2}, {3, 4}}:requires_grad()
  local h = y * 3 -- not a leaf: the views' gradients meet in its node's buffer
  ;(h:select(1, 1):sum() + h:select(1, 2):mul(2):sum() + h:narrow(2, 2, 1):sum()):backward()
  t.near(y.grad, {{3, 6}, {6, 9}}, 0, "selects and a narrow of an intermediate tensor add up")
end

t.done()
