-- t/elementwise.t -- binary elementwise ops (ops/elementwise.c): add, sub,
-- mul, div, pow, maximum, minimum, the comparisons, where and masked_fill,
-- and the in-place forms, against plain-Lua references with NumPy
-- broadcasting; scalar operands on either side; strided, expanded and
-- 0-size operands; metamethods; gradients summed back to each input's
-- shape; thread-count determinism; error messages.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local fmt = string.format
local huge = math.huge
local unpack = table.unpack or unpack

u.seed(11)

-- Tolerance against the double references: |got - want| <= ATOL + RTOL |want|.
local ATOL, RTOL = 1e-6, 1e-6
-- gradcheck: f32 central differences with eps 1e-3; tolerances atol = rtol = 1e-2
-- (glia.gradcheck's defaults).

-- ============================================================== helpers

local function tensor(shape, lo, hi, u0) return glia.tensor(u.spread(shape, lo, hi, u0)) end

-- Multi-indices of a shape in row-major order (the same table, updated).
local function each_index(shape)
  local n, idx = #shape, {}
  for d = 1, n do
    if shape[d] == 0 then return function() return nil end end
    idx[d] = 1
  end
  if n == 0 then
    local done = false
    return function() if done then return nil end done = true return idx end
  end
  idx[n] = 0
  return function()
    for d = n, 1, -1 do
      if idx[d] < shape[d] then idx[d] = idx[d] + 1 return idx end
      idx[d] = 1
    end
    return nil
  end
end

-- An operand for the references: a number, or a tensor's values and shape.
local function operand(x)
  if type(x) == "number" then return x end
  return { tbl = x:totable(), shape = x:shape() }
end

-- The operand's value at output index idx of an n-D result (broadcasting).
local function at(v, idx, n)
  if type(v) == "number" then return v end
  local tbl, shape = v.tbl, v.shape
  for d = 1, #shape do tbl = tbl[shape[d] == 1 and 1 or idx[n - #shape + d]] end
  return tbl
end

local function broadcast_shape(...)
  local shape = {}
  for _, v in ipairs({ ... }) do
    if type(v) ~= "number" then
      local s = v:shape()
      local n = math.max(#shape, #s)
      local r = {}
      for d = 1, n do
        local a, b = shape[#shape - n + d] or 1, s[#s - n + d] or 1
        r[d] = a == 1 and b or a
      end
      shape = r
    end
  end
  return shape
end

-- Checks got against f applied elementwise to the broadcast operands.
local function check(got, f, ...)
  local args = { ... }
  local shape = broadcast_shape(...)
  local gs = got:shape()
  if #gs ~= #shape then return false, fmt("got %d dims, want %d", #gs, #shape) end
  for d = 1, #shape do
    if gs[d] ~= shape[d] then return false, fmt("size %d of dim %d, want %d", gs[d], d, shape[d]) end
  end
  local ops = {}
  for i, v in ipairs(args) do ops[i] = operand(v) end
  local g = got:totable()
  for idx in each_index(shape) do
    local vals = {}
    for i = 1, #ops do vals[i] = at(ops[i], idx, #shape) end
    local want, have = f(unpack(vals)), #shape == 0 and g or at({ tbl = g, shape = shape }, idx, #shape)
    if not u.f32_near(have, want, ATOL, RTOL) then
      return false, fmt("at {%s}: f(%s) = %s, want %s", table.concat(idx, ","),
                        table.concat(vals, ", "), tostring(have), tostring(want))
    end
  end
  return true
end

local function ok_check(desc, got, f, ...)
  local ok, why = check(got, f, ...)
  if not t.ok(ok, desc) then t.diag(why) end
end

local function nan_max(x, y) if x ~= x or y ~= y then return 0 / 0 end return math.max(x, y) end
local function nan_min(x, y) if x ~= x or y ~= y then return 0 / 0 end return math.min(x, y) end

-- ================================================ arithmetic: values

-- Each op with its reference and the ranges of its operands: pow keeps its
-- base positive (a real result), div keeps its divisor away from 0.
local ARITH = {
  { op = "add", f = function(x, y) return x + y end, a = { -5, 5 }, b = { -5, 5 } },
  { op = "sub", f = function(x, y) return x - y end, a = { -5, 5 }, b = { -5, 5 } },
  { op = "mul", f = function(x, y) return x * y end, a = { -5, 5 }, b = { -5, 5 } },
  { op = "div", f = function(x, y) return x / y end, a = { -5, 5 }, b = { 0.5, 3 } },
  { op = "pow", f = function(x, y) return x ^ y end, a = { 0.1, 3 }, b = { -2, 2 } },
  { op = "maximum", f = nan_max, a = { -5, 5 }, b = { -5, 5 } },
  { op = "minimum", f = nan_min, a = { -5, 5 }, b = { -5, 5 } },
}

for _, c in ipairs(ARITH) do
  local op, f = glia[c.op], c.f
  local function A(shape, u0) return tensor(shape, c.a[1], c.a[2], u0) end
  local function B(shape, u0) return tensor(shape, c.b[1], c.b[2], u0 or 0.25) end
  local sa, sb = (c.a[1] + c.a[2]) / 2 + 0.3, (c.b[1] + c.b[2]) / 2 + 0.7
  local a, b = A({ 3, 5 }), B({ 3, 5 })
  ok_check(c.op .. " of two {3,5} tensors matches the reference", op(a, b), f, a, b)
  ok_check(c.op .. " of a tensor and a number matches the reference", op(a, sb), f, a, sb)
  ok_check(c.op .. " of a number and a tensor matches the reference", op(sa, b), f, sa, b)
  local c31, r14 = A({ 3, 1 }), B({ 1, 4 })
  ok_check(c.op .. " broadcasts {3,1} with {1,4} to {3,4}", op(c31, r14), f, c31, r14)
  local v4, m234 = A({ 4 }), B({ 2, 3, 4 })
  ok_check(c.op .. " broadcasts {4} with {2,3,4}", op(v4, m234), f, v4, m234)
  local at_, bn = A({ 5, 3 }):t(), B({ 3, 7 }):narrow(2, 2, 5)
  ok_check(c.op .. " of a transposed and a narrowed tensor matches the reference", op(at_, bn), f, at_, bn)
  local ae = A({ 3, 1 }):expand(3, 5)
  ok_check(c.op .. " of an expanded (stride 0) tensor matches the reference", op(ae, b), f, ae, b)
  local z = op(glia.zeros(0, 3), B({ 3 }))
  t.ok(u.same_shape(z, { 0, 3 }) and u.same_shape(op(glia.zeros(0, 3), sb), { 0, 3 }),
       c.op .. " with a {0,3} operand gives a {0,3} result")
  local s0 = A({})
  ok_check(c.op .. " of a 0-D tensor and a {2,2} tensor broadcasts", op(s0, B({ 2, 2 })), f, s0, B({ 2, 2 }))
end

-- Every pair of special values, through each op.
do
  local S = { 0 / 0, huge, -huge, 0, -0.0, 1, -2.5, 0.5 }
  local xs, ys = {}, {}
  for _, x in ipairs(S) do for _, y in ipairs(S) do xs[#xs + 1], ys[#ys + 1] = x, y end end
  local x, y = glia.tensor(xs), glia.tensor(ys)
  for _, c in ipairs(ARITH) do
    ok_check(c.op .. " follows IEEE rules on NaN, infinities and signed zeros", glia[c.op](x, y), c.f, x, y)
  end
end

-- ========================================================= metamethods

do
  local a, b = tensor({ 2, 3 }, 0.5, 3), tensor({ 2, 3 }, 0.5, 3, 0.1)
  t.ok(u.identical(a + b, glia.add(a, b)), "a + b is glia.add(a, b)")
  t.ok(u.identical(a - b, glia.sub(a, b)), "a - b is glia.sub(a, b)")
  t.ok(u.identical(a * 2, glia.mul(a, 2)), "a * 2 is glia.mul(a, 2)")
  t.ok(u.identical(2 * a, glia.mul(2, a)), "2 * a is glia.mul(2, a)")
  t.ok(u.identical(a / b, glia.div(a, b)), "a / b is glia.div(a, b)")
  t.ok(u.identical(a ^ 2, glia.pow(a, 2)), "a ^ 2 is glia.pow(a, 2)")
  ok_check("2 - a subtracts the tensor from the number", 2 - a, function(x) return 2 - x end, a)
  ok_check("2 / a divides the number by the tensor", 2 / a, function(x) return 2 / x end, a)
  ok_check("2 ^ a raises the number to the tensor", 2 ^ a, function(x) return 2 ^ x end, a)
  ok_check("-a negates", -a, function(x) return -x end, a)
  ok_check("a + 1 adds a number", a + 1, function(x) return x + 1 end, a)
  t.ok(u.identical(a:add(b), glia.add(a, b)) and u.identical(a:maximum(b), glia.maximum(a, b)),
       "the binary ops are methods too")
end

-- ========================================================= comparisons

local CMP = {
  eq = function(x, y) return x == y end, ne = function(x, y) return x ~= y end,
  lt = function(x, y) return x < y end, le = function(x, y) return x <= y end,
  gt = function(x, y) return x > y end, ge = function(x, y) return x >= y end,
}
local CMP_NAMES = { "eq", "ne", "lt", "le", "gt", "ge" }

for _, name in ipairs(CMP_NAMES) do
  local f, op = CMP[name], glia[name]
  -- small integers so that equality happens
  local a = glia.tensor({ { 1, 2, 3, 0 / 0 }, { 2, 2, -1, 5 }, { 0, 3, 3, 1 } })
  local c31, r14 = glia.tensor({ { 1 }, { 2 }, { 3 } }), glia.tensor({ { 3, 2, 1, 0 / 0 } })
  local r = op(c31, r14)
  t.ok(r:dtype() == "bool", name .. " gives a bool mask")
  ok_check(name .. " broadcasts {3,1} with {1,4}, NaN comparing unequal", r, f, c31, r14)
  ok_check(name .. " of a tensor and a number matches the reference", op(a, 2), f, a, 2)
  ok_check(name .. " of a number and a tensor matches the reference", op(2, a), f, 2, a)
  local at_ = glia.tensor({ { 1, 2, 0 }, { 2, 2, 3 }, { 3, -1, 3 }, { 0 / 0, 5, 1 } }):t()
  ok_check(name .. " of a transposed tensor matches the reference", op(at_, a), f, at_, a)
  local i, j = glia.tensor({ 1, 2, 3, -4 }, "i64"), glia.tensor({ { 2 }, { -4 } }, "i64")
  ok_check(name .. " compares i64 tensors", op(i, j), f, i, j)
  ok_check(name .. " compares an i64 tensor with a number", op(i, 2), f, i, 2)
  t.ok(u.same_shape(op(glia.zeros(0, 2), 1), { 0, 2 }), name .. " of a 0-size tensor is a 0-size mask")
end

-- ================================================= where, masked_fill

do
  local cond = glia.tensor({ { 1, 0, 1, 0 }, { 0, 0, 1, 1 }, { 1, 1, 0, 0 } }):gt(0)
  local function w(c, x, y) if c then return x end return y end
  local a, b = tensor({ 3, 4 }, -3, 3), tensor({ 3, 4 }, -3, 3, 0.2)
  ok_check("where picks a where cond is true and b elsewhere", glia.where(cond, a, b), w, cond, a, b)
  local a31, b4 = tensor({ 3, 1 }, -3, 3), tensor({ 4 }, -3, 3)
  ok_check("where broadcasts cond {3,4}, a {3,1} and b {4}", glia.where(cond, a31, b4), w, cond, a31, b4)
  ok_check("where takes numbers for a and b", glia.where(cond, 1, -1), w, cond, 1, -1)
  local c31 = glia.tensor({ { 1 }, { 0 }, { 1 } }, "u8")
  ok_check("where accepts a u8 condition and broadcasts it", glia.where(c31, a, 0.5),
           function(c, x, y) return w(c ~= 0, x, y) end, c31, a, 0.5)
  local ct = glia.tensor({ { 1, 0, 1 }, { 0, 0, 1 }, { 1, 1, 0 }, { 0, 1, 0 } }):gt(0):t()
  local at_ = tensor({ 4, 3 }, -3, 3):t()
  ok_check("where reads transposed condition and operands", glia.where(ct, at_, b), w, ct, at_, b)
  t.ok(u.same_shape(glia.where(glia.zeros(0, 4):gt(0), glia.zeros(0, 4), 1), { 0, 4 }),
       "where of 0-size operands is 0-size")

  local mask = glia.tensor({ { 1 }, { 0 }, { 1 } }):gt(0)
  local mf = a:masked_fill(mask, -huge)
  ok_check("masked_fill puts the value where the broadcast mask is true", mf,
           function(m, x) if m then return -huge end return x end, mask, a)
  local y = glia.tensor(a:totable())
  local r = y:masked_fill_(mask, 7)
  ok_check("masked_fill_ writes the value in place", y,
           function(m, x) if m then return 7 end return x end, mask, a)
  t.ok(u.identical(r, y), "masked_fill_ returns its tensor")
  local base = tensor({ 4, 3 }, -3, 3)
  local before = glia.tensor(base:totable())
  base:t():masked_fill_(mask, 0)
  ok_check("masked_fill_ writes through a transposed view", base:t(),
           function(m, x) if m then return 0 end return x end, mask, before:t())
end

-- ==================================================== in-place arithmetic

for _, c in ipairs(ARITH) do
  local name = c.op .. "_"
  local a, b = tensor({ 3, 4 }, c.a[1], c.a[2]), tensor({ 3, 4 }, c.b[1], c.b[2], 0.3)
  local y = glia.tensor(a:totable())
  local r = y[name](y, b)
  ok_check(name .. " with a tensor writes the result in place", y, c.f, a, b)
  t.ok(u.identical(r, y), name .. " returns its tensor")
  y = glia.tensor(a:totable())
  y[name](y, 1.5)
  ok_check(name .. " with a number writes the result in place", y, c.f, a, 1.5)
  local b4 = tensor({ 4 }, c.b[1], c.b[2])
  y = glia.tensor(a:totable())
  y[name](y, b4)
  ok_check(name .. " broadcasts a {4} operand into a {3,4} tensor", y, c.f, a, b4)
  local base = tensor({ 4, 3 }, c.a[1], c.a[2])
  local before = glia.tensor(base:totable())
  base:t()[name](base:t(), b)
  ok_check(name .. " writes through a transposed view", base:t(), c.f, before:t(), b)
  t.error_like(function() b4[name](b4, a) end,
               "glia%." .. name .. ": in%-place result {3,4} would not fit in {4}",
               name .. " refuses a result larger than its tensor, naming both shapes")
  local leaf = tensor({ 2 }, 1, 2):requires_grad()
  t.error_like(function() leaf[name](leaf, 1) end,
               "glia%." .. name .. ": in%-place op on a tensor that requires grad {2}",
               name .. " refuses a tensor that requires grad")
end

do
  local x = tensor({ 3 }, 1, 2):requires_grad()
  local w = tensor({ 3 }, 1, 2)
  local y = x * w -- saves w
  w:add_(1)
  t.error_like(function() y:backward(glia.ones(3)) end, "glia%.mul: .*modified in place",
               "backward fails when mul's saved operand was modified in place")
  local q = x / w -- saves its output
  glia.no_grad(function() q:mul_(2) end)
  t.error_like(function() q:backward(glia.ones(3)) end, "glia%.div: .*modified in place",
               "backward fails when div's saved output was modified in place")
  local base = tensor({ 3 }, 1, 2):requires_grad()
  local p = base ^ 2 -- saves its base
  glia.no_grad(function() base:add_(1) end)
  t.error_like(function() p:backward(glia.ones(3)) end, "glia%.pow: .*modified in place",
               "backward fails when pow's saved base was modified in place")
  local m = tensor({ 2, 2 }, 1, 2)
  local mask = glia.tensor({ { 1, 0 }, { 0, 1 } }):gt(0)
  local q = glia.where(mask, x:narrow(1, 1, 2), m)
  mask:fill_(0)
  t.error_like(function() q:backward(glia.ones(2, 2)) end, "glia%.where: .*modified in place",
               "backward fails when where's condition was modified in place")
end

-- ============================================================ gradients

do -- a tie splits the gradient in halves, as in PyTorch
  for _, op in ipairs { "maximum", "minimum" } do
    local a, b = glia.tensor{1, 2, 3}:requires_grad(), glia.tensor{1, 5, 0}:requires_grad()
    glia[op](a, b):sum():backward()
    local want_a = op == "maximum" and {0.5, 0, 1} or {0.5, 1, 0}
    t.near(a.grad, want_a, 0, op .. ": the first operand gets half at a tie, all where chosen")
    t.near(b.grad, {0.5, 1 - want_a[2], 1 - want_a[3]}, 0, op .. ": the second operand the rest")
  end
end

for _, c in ipairs(ARITH) do
  local op = glia[c.op]
  local function A(shape, u0) return tensor(shape, c.a[1], c.a[2], u0) end
  -- maximum/minimum: a and b interleave (no ties within eps)
  local function B(shape) return tensor(shape, c.b[1], c.b[2], 0.37) end
  u.gradcheck(op, { A({ 2, 3 }), B({ 2, 3 }) },
              c.op .. " of two {2,3} tensors has the gradient finite differences give")
  u.gradcheck(op, { A({ 3, 1 }), B({ 1, 4 }) },
              c.op .. " of {3,1} and {1,4} sums each gradient back to its input's shape")
  u.gradcheck(op, { A({ 4 }), B({ 2, 3, 4 }) }, c.op .. " of {4} and {2,3,4} sums the gradient back to {4}")
  u.gradcheck(function(x) return op(x, (c.b[1] + c.b[2]) / 2 + 0.3) end, { A({ 2, 3 }) },
              c.op .. " of a tensor and a number has the right gradient")
  u.gradcheck(function(y) return op((c.a[1] + c.a[2]) / 2 + 0.3, y) end, { B({ 2, 3 }) },
              c.op .. " of a number and a tensor has the right gradient")
  u.gradcheck(function(x, y) return op(x:t(), y) end, { A({ 3, 2 }), B({ 2, 3 }) },
              c.op .. " has the right gradient through transposed operands")
end

u.gradcheck(function(x) return x ^ 2 end, { tensor({ 2, 3 }, -2, 2) },
            "pow with a scalar exponent has the gradient 2x")
u.gradcheck(function(x) return 2 ^ x end, { tensor({ 2, 3 }, -2, 2) },
            "pow with a scalar base has the gradient 2^x ln 2")

do
  local cond = glia.tensor({ { 1, 0, 1, 0 }, { 0, 0, 1, 1 }, { 1, 1, 0, 0 } }):gt(0)
  u.gradcheck(function(a, b) return glia.where(cond, a, b) end,
              { tensor({ 3, 4 }, -1, 1), tensor({ 3, 4 }, -1, 1) },
              "where sends the gradient to a where cond holds and to b elsewhere")
  u.gradcheck(function(a, b) return glia.where(cond, a, b) end,
              { tensor({ 3, 1 }, -1, 1), tensor({ 4 }, -1, 1) },
              "where sums the gradient back to broadcast operands {3,1} and {4}")
  u.gradcheck(function(a) return glia.where(cond, a, 0) end, { tensor({ 3, 4 }, -1, 1) },
              "where with a number for b has the right gradient for a")
  local mask = glia.tensor({ { 1 }, { 0 }, { 1 } }):gt(0)
  u.gradcheck(function(x) return x:masked_fill(mask, 0.5) end, { tensor({ 3, 4 }, -1, 1) },
              "masked_fill passes the gradient where the mask is false")
end

do
  local x, y = glia.zeros(3, 1):requires_grad(), glia.zeros(1, 4):requires_grad()
  glia.add(x, y):sum():backward()
  t.ok(u.same_shape(x.grad, { 3, 1 }) and u.identical(x.grad, { 4, 4, 4 }),
       "add's gradient for a {3,1} operand of a {3,4} result is {3,1}, each the sum of 4")
  t.ok(u.same_shape(y.grad, { 1, 4 }) and u.identical(y.grad, { 3, 3, 3, 3 }),
       "add's gradient for a {1,4} operand of a {3,4} result is {1,4}, each the sum of 3")
  local a, b = glia.tensor({ 1, 5 }):requires_grad(), glia.tensor({ 3, 3 }):requires_grad()
  glia.maximum(a, b):sum():backward()
  t.ok(u.identical(a.grad, { 0, 1 }) and u.identical(b.grad, { 1, 0 }),
       "maximum sends the gradient to the larger operand")
end

do
  local x, y = glia.tensor({ 0, 0, 1, 2 }):requires_grad(), glia.tensor({ 2, 0, 0, 1.5 }):requires_grad()
  glia.pow(x, y):sum():backward()
  t.near(x.grad, { 0, 0, 0, 1.5 * 2 ^ 0.5 }, 1e-6,
         "pow's gradient for the base is 0 where the exponent is 0, not NaN at a 0 base")
  t.near(y.grad, { 0, 0, 0, 2 ^ 1.5 * math.log(2) }, 1e-6,
         "pow's gradient for the exponent is 0 at a 0 base with a nonnegative exponent, not NaN")
  local z = glia.tensor({ 0, 3 }):requires_grad()
  glia.pow(z, 0):sum():backward()
  t.ok(u.identical(z.grad, { 0, 0 }), "x ^ 0 has gradient 0 everywhere, 0 included")
  local e = glia.tensor({ 0, 1 }):requires_grad()
  glia.pow(0, e):sum():backward()
  t.ok(u.identical(e.grad, { 0, 0 }), "0 ^ x has gradient 0 for x >= 0")
end

-- ============================================================= threads

do
  local a, b = glia.rand(300, 301) + 0.5, glia.rand(301) + 0.5
  local cond = glia.rand(300, 301):gt(0.5)
  local function run()
    return { glia.add(a, b), glia.pow(a, b), glia.div(a:t(), 3), glia.maximum(a, b),
             glia.where(cond, a, b), a:gt(b) }
  end
  local r = u.by_threads(run)
  t.ok(u.identical(r[1], r[2]), "add, pow, div, maximum, where and gt give bit-identical results with 1 and 2 threads")
end

-- ============================================================== errors

do
  local a23, a4 = glia.ones(2, 3), glia.ones(4)
  t.error_like(function() return a23 + a4 end, "glia%.add: shapes {2,3} and {4} do not broadcast",
               "add of shapes that do not broadcast names the op and both shapes")
  t.error_like(function() glia.maximum(a23, glia.ones(3, 2)) end,
               "glia%.maximum: shapes {2,3} and {3,2} do not broadcast",
               "maximum of shapes that do not broadcast names the op and both shapes")
  t.error_like(function() a23:lt(a4) end, "glia%.lt: shapes {2,3} and {4} do not broadcast",
               "a comparison of shapes that do not broadcast names the op and both shapes")
  t.error_like(function() glia.where(a23:gt(0), a4, 0) end, "glia%.where: shapes {2,3} and {4} do not broadcast",
               "where with operands that do not broadcast names both shapes")
  t.error_like(function() glia.add(a23, glia.ones(3):to("i64")) end,
               "glia%.add: argument 2 must be f32, got i64 {3}",
               "arithmetic on an i64 tensor names the op, the argument, the dtype and shape")
  t.error_like(function() glia.pow(glia.ones(3):to("bool"), 2) end,
               "glia%.pow: argument 1 must be f32, got bool {3}",
               "arithmetic on a bool tensor names the op, the argument and the dtype")
  t.error_like(function() glia.add(1, 2) end, "glia%.add: expected at least one tensor operand",
               "arithmetic on two numbers is an error")
  t.error_like(function() glia.add(a23, "x") end, "glia%.add: argument #2 must be a tensor or a number",
               "arithmetic with a string operand names the argument")
  t.error_like(function() a23:eq(glia.ones(3):to("i64")) end, "glia%.eq: dtypes differ, f32 {2,3} vs i64 {3}",
               "comparing tensors of different dtypes names both dtypes and shapes")
  t.error_like(function() glia.where(a23, a23, a23) end, "glia%.where: mask must be bool or u8, got f32 {2,3}",
               "where with an f32 condition names the dtype")
  t.error_like(function() a23:masked_fill(glia.ones(5):gt(0), 1) end,
               "glia%.masked_fill: .*{5}.*{2,3}",
               "masked_fill with a mask that does not broadcast names the op and both shapes")
  t.error_like(function() a4:masked_fill(glia.ones(3, 4):gt(0), 1) end,
               "glia%.masked_fill: mask {3,4} does not broadcast to {4}",
               "masked_fill with a mask larger than x names both shapes")
  t.error_like(function() a4:masked_fill_(glia.ones(3, 4):gt(0), 1) end,
               "glia%.masked_fill_: mask {3,4} does not broadcast to {4}",
               "masked_fill_ with a mask larger than x names both shapes")
  t.error_like(function() a4:masked_fill_(glia.ones(4), 1) end,
               "glia%.masked_fill_: mask must be bool or u8, got f32 {4}",
               "masked_fill_ with an f32 mask names the dtype")
  t.error_like(function() glia.ones(2):to("i64"):masked_fill(glia.ones(2):gt(0), 1) end,
               "glia%.masked_fill: argument 1 must be f32, got i64 {2}",
               "masked_fill on an i64 tensor names the op, the argument and the dtype")
  do -- an operand that overlaps the written tensor is read as it was
    local x = glia.tensor{{1, 2, 3}, {4, 5, 6}, {7, 8, 9}}
    local want = x + x:t()
    x:add_(x:t())
    t.near(x, want, 0, "x:add_(x:t()) adds the transpose x had before the call")
    local z = glia.tensor{{1, 2}, {3, 4}, {5, 6}}
    z:add_(z[1])
    t.near(z, {{2, 4}, {4, 6}, {6, 8}}, 0, "z:add_(z[1]) adds row 1 as it was to every row")
    local y = glia.tensor{1, 2, 3, 4}
    y:narrow(1, 2, 3):mul_(y:narrow(1, 1, 3))
    t.near(y, {1, 2, 6, 12}, 0, "a shifted view of the same storage is read as it was")
    local s = glia.tensor{1, 2}
    s:add_(s)
    t.near(s, {2, 4}, 0, "x:add_(x) (the very same view) still works in place")
  end
  t.error_like(function() glia.ones(4):expand(3, 4):add_(1) end,
               "glia%.add_: in%-place op on an expanded tensor {3,4}",
               "add_ refuses an expanded tensor, whose elements would be updated three times")
  t.error_like(function() glia.ones(4):expand(3, 4):masked_fill_(glia.eye(3, 4):gt(0), 0) end,
               "glia%.masked_fill_: in%-place op on an expanded tensor {3,4}",
               "masked_fill_ refuses an expanded tensor, whose elements share memory")
  local leaf = glia.ones(2):requires_grad()
  t.error_like(function() leaf:masked_fill_(glia.ones(2):gt(0), 0) end,
               "glia%.masked_fill_: in%-place op on a tensor that requires grad",
               "masked_fill_ refuses a tensor that requires grad")
end

t.done()
