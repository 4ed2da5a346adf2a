-- t/unary.t -- unary ops (ops/unary.c): every op against a plain-Lua
-- reference in double precision on contiguous, transposed, narrowed,
-- expanded, 0-size and 0-D inputs and on special values; bit-identical
-- results for any layout and thread count; gradients by finite
-- differences; in-place forms; error messages.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local flat, fmt = t.flat, string.format
local exp, log, sqrt, abs, huge = math.exp, math.log, math.sqrt, math.abs, math.huge
local unpack = table.unpack or unpack

u.seed(7)

-- Tolerance against the double references: |got - want| <= ATOL + RTOL |want|.
local ATOL, RTOL = 1e-6, 1e-6
-- gradcheck: f32 central differences with eps 1e-3; tolerances atol = rtol = 1e-2
-- (glia.gradcheck's defaults).

-- ============================================================ references

local function tanh(x)
  if x > 20 then return 1 elseif x < -20 then return -1 end
  local e = exp(2 * x)
  return (e - 1) / (e + 1)
end

local erf = u.erf

-- x * gate(x) -> 0 as x -> -inf (the formula gives -inf * 0 = NaN there)
local function gated(x, f) if x == -huge then return 0 end return f(x) end

local REF = {
  neg = function(x) return -x end,
  abs = function(x) return abs(x) end,
  exp = function(x) return exp(x) end,
  log = function(x) return log(x) end,
  sqrt = function(x) return sqrt(x) end,
  rsqrt = function(x) return 1 / sqrt(x) end,
  tanh = tanh,
  sigmoid = function(x) return 1 / (1 + exp(-x)) end,
  relu = function(x) if x < 0 then return 0 end return x end,
  gelu_tanh = function(x)
    return gated(x, function(v) return 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))) end)
  end,
  gelu = function(x)
    return gated(x, function(v) return 0.5 * v * (1 + erf(v / sqrt(2))) end)
  end,
  silu = function(x) return gated(x, function(v) return v / (1 + exp(-v)) end) end,
}

local function clamp_ref(lo, hi)
  return function(x)
    local y = x
    if lo and y < lo then y = lo end
    if hi and y > hi then y = hi end
    return y
  end
end

-- Each case: op name, extra arguments, reference, domain ("pos": positive
-- inputs only), and the points (kinks) gradcheck inputs keep away from.
local function case(label, op, args, ref, domain, kinks)
  return { label = label, op = op, args = args, ref = ref, domain = domain or "any", kinks = kinks or {} }
end
local CASES = {
  case("neg", "neg", { n = 0 }, REF.neg),
  case("abs", "abs", { n = 0 }, REF.abs, "any", { 0 }),
  case("exp", "exp", { n = 0 }, REF.exp),
  case("log", "log", { n = 0 }, REF.log, "pos"),
  case("sqrt", "sqrt", { n = 0 }, REF.sqrt, "pos"),
  case("rsqrt", "rsqrt", { n = 0 }, REF.rsqrt, "pos"),
  case("tanh", "tanh", { n = 0 }, REF.tanh),
  case("sigmoid", "sigmoid", { n = 0 }, REF.sigmoid),
  case("relu", "relu", { n = 0 }, REF.relu, "any", { 0 }),
  case("gelu", "gelu", { n = 0 }, REF.gelu),
  case('gelu "tanh"', "gelu", { n = 1, "tanh" }, REF.gelu_tanh),
  case("silu", "silu", { n = 0 }, REF.silu),
  case("clamp(-0.5, 0.7)", "clamp", { n = 2, -0.5, 0.7 }, clamp_ref(-0.5, 0.7), "any", { -0.5, 0.7 }),
  case("clamp(nil, 0.7)", "clamp", { n = 2, nil, 0.7 }, clamp_ref(nil, 0.7), "any", { 0.7 }),
  case("clamp(-0.5)", "clamp", { n = 1, -0.5 }, clamp_ref(-0.5, nil), "any", { -0.5 }),
}

local function apply(c, x) return glia[c.op](x, unpack(c.args, 1, c.args.n)) end
local function apply_(c, x) return x[c.op .. "_"](x, unpack(c.args, 1, c.args.n)) end

-- ============================================================== helpers

-- true, or false and the first element off the reference.
local function check_ref(got, input, ref)
  local g, x = flat(got, {}), flat(input, {})
  if #g ~= #x then return false, fmt("%d elements, want %d", #g, #x) end
  for i = 1, #g do
    local w = ref(x[i])
    if not u.f32_near(g[i], w, ATOL, RTOL) then
      return false, fmt("element %d: f(%.9g) = %.9g, want %.9g", i, x[i], g[i], w)
    end
  end
  return true
end

local function ok_ref(got, input, ref, desc)
  local ok, why = check_ref(got, input, ref)
  if ok and not u.same_shape(got, input) then ok, why = false, "shapes differ" end
  if not t.ok(ok, desc) then t.diag(why) end
end

local function domain_range(c)
  if c.domain == "pos" then return 0.01, 20 end
  return -8, 8
end

local function input(c, r, cols)
  local lo, hi = domain_range(c)
  return glia.tensor(u.spread({ r, cols }, lo, hi))
end

-- ============================================ values on every layout

for _, c in ipairs(CASES) do
  local x = input(c, 3, 50) -- 150 elements: two full blocks of 64 and a tail
  ok_ref(apply(c, x), x, c.ref, c.label .. " matches the reference on a contiguous input")
  local xt = input(c, 50, 3):t()
  ok_ref(apply(c, xt), xt, c.ref, c.label .. " matches the reference on a transposed input")
  local xn = input(c, 3, 60):narrow(2, 5, 50)
  ok_ref(apply(c, xn), xn, c.ref, c.label .. " matches the reference on a narrowed input")
  local xe = input(c, 1, 50):expand(3, 50)
  ok_ref(apply(c, xe), xe, c.ref, c.label .. " matches the reference on an expanded (stride 0) input")
  local z = apply(c, glia.zeros(0, 5))
  t.ok(u.same_shape(z, glia.zeros(0, 5)), c.label .. " of a {0,5} tensor is a {0,5} tensor")
  local s = glia.tensor(c.domain == "pos" and 1.75 or -0.625)
  local r = apply(c, s)
  t.ok(r:dim() == 0 and check_ref(r, s, c.ref), c.label .. " of a 0-D tensor is the 0-D result")
end

-- ======================================================= special values

local SPECIAL = { 0 / 0, huge, -huge, 0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 100, -100, 1e30, -1e30 }
for _, c in ipairs(CASES) do
  local x = glia.tensor(SPECIAL)
  ok_ref(apply(c, x), x, c.ref, c.label .. " handles NaN, infinities, zeros, tiny and huge values")
end

do
  local r = glia.tensor({ -1, -huge, 0 }):log():totable()
  t.ok(r[1] ~= r[1] and r[2] ~= r[2] and r[3] == -huge, "log of a negative number is NaN, of 0 is -inf")
  local q = glia.tensor({ -1, -huge }):sqrt():totable()
  t.ok(q[1] ~= q[1] and q[2] ~= q[2], "sqrt of a negative number is NaN")
  local e = glia.tensor({ 88.5, 89, 1000, -87, -104, -1000 }):exp():totable()
  t.ok(e[1] < huge and e[2] == huge and e[3] == huge and e[4] > 0 and e[5] == 0 and e[6] == 0,
       "exp overflows to inf past 88.72 and underflows to 0 past -103.97")
  local d = glia.tensor({ -87.5, -95 }):exp():totable()
  t.ok(abs(d[1] - exp(-87.5)) <= 1e-6 * exp(-87.5) and abs(d[2] - exp(-95)) <= 2e-44,
       "exp rounds subnormal results instead of flushing them to 0")
end

-- Dense sweeps of the functions glia computes itself instead of calling
-- libm: over [-20, 20], where they are used most, and for log and sqrt over
-- every binade from the subnormals to the largest floats.
do
  local v = {}
  for i = 0, 4000 do v[#v + 1] = -20 + i * 0.01 end
  local x = glia.tensor(v)
  for _, name in ipairs({ "exp", "tanh", "sigmoid", "gelu", "silu" }) do
    ok_ref(x[name](x), x, REF[name], name .. " is within the stated tolerance of the reference on [-20, 20]")
  end
  ok_ref(x:gelu("tanh"), x, REF.gelu_tanh, 'gelu "tanh" is within the stated tolerance of the reference on [-20, 20]')
  local p = {}
  for e = -149, 127 do
    for j = 0, 6 do p[#p + 1] = 2 ^ e * (1 + j / 7) end
  end
  for i = -50, 50 do p[#p + 1] = 1 + i * 1e-3 end -- log near 1, where it is small
  local y = glia.tensor(p)
  ok_ref(y:log(), y, REF.log, "log is within 1e-6 relative of the reference from subnormals to 2^127")
  ok_ref(y:sqrt(), y, REF.sqrt, "sqrt is within 1e-6 relative of the reference from subnormals to 2^127")
  ok_ref(y:rsqrt(), y, REF.rsqrt, "rsqrt is within 1e-6 relative of the reference from subnormals to 2^127")
end

-- ===================================== bit-identical layouts and threads

do
  for _, c in ipairs(CASES) do
    local lo, hi = domain_range(c)
    local x = glia.tensor(u.spread({ 67, 131 }, lo, hi))
    local strided = glia.tensor(u.spread({ 67, 131 }, lo, hi)):t():contiguous():t()
    t.ok(u.identical(apply(c, x), apply(c, strided)),
         c.label .. " gives bit-identical results on contiguous and transposed layouts")
    local big = glia.rand(300, 301) * (hi - lo) + lo -- 90300 elements: split across threads
    local r = u.by_threads(function() return apply(c, big) end)
    t.ok(u.identical(r[1], r[2]), c.label .. " gives bit-identical results with 1 and 2 threads")
  end
end

-- ============================================================ gradients

-- {3,4} inputs in the op's domain, at least 0.1 away from its kinks.
local function grad_input(c)
  local base = { { -2.1, -1.3, -0.45, 0.3 }, { 0.75, 1.6, 2.4, -0.8 }, { 1.1, -2.7, 0.55, -1.9 } }
  for i = 1, 3 do
    for j = 1, 4 do
      local v = base[i][j]
      if c.domain == "pos" then v = abs(v) + 0.3 end
      for _, k in ipairs(c.kinks) do
        if abs(v - k) < 0.1 then v = k + 0.2 end
      end
      base[i][j] = v
    end
  end
  return glia.tensor(base)
end

for _, c in ipairs(CASES) do
  u.gradcheck(function(x) return apply(c, x) end, { grad_input(c) },
              c.label .. " has the gradient finite differences give")
  u.gradcheck(function(x) return apply(c, x:t()):t() end, { grad_input(c) },
              c.label .. " has the right gradient through transposed input and output")
end

do
  local x = glia.tensor({ -1.5, -0.2, 0.3, 2 }):requires_grad()
  glia.relu(x):sum():backward()
  t.ok(u.identical(x.grad, { 0, 0, 1, 1 }), "relu's gradient is 1 where x > 0, else 0")
  local y = glia.tensor({ -2, -1, 0, 0.5, 1, 3 }):requires_grad()
  y:clamp(-1, 1):sum():backward()
  t.ok(u.identical(y.grad, { 0, 1, 1, 1, 1, 0 }),
       "clamp's gradient is 1 inside [lo, hi] (bounds included), 0 outside")
  local z = glia.zeros(0, 3):requires_grad()
  glia.gelu(z):sum():backward()
  t.ok(z.grad == nil or u.same_shape(z.grad, z), "backward through gelu of a 0-size tensor works")
end

-- ===================================================== in-place forms

for _, c in ipairs(CASES) do
  local x = input(c, 3, 50)
  local y = glia.tensor(x:totable())
  local r = apply_(c, y)
  ok_ref(y, x, c.ref, c.label .. ": the in-place form writes the result into its tensor")
  t.ok(u.identical(r, y), c.label .. ": the in-place form returns its tensor")
  local base = input(c, 50, 3)
  local before = glia.tensor(base:totable())
  apply_(c, base:t())
  ok_ref(base, before, c.ref, c.label .. ": the in-place form writes through a transposed view")
  local leaf = input(c, 2, 3):requires_grad()
  t.error_like(function() apply_(c, leaf) end,
               "glia%." .. c.op .. "_: in%-place op on a tensor that requires grad",
               c.label .. ": the in-place form refuses a tensor that requires grad")
end

do
  local x = glia.tensor({ 1, 2 }):requires_grad()
  local y = x * 2
  t.error_like(function() y:relu_() end, "glia%.relu_: in%-place op on a tensor that requires grad {2}",
               "in-place relu_ refuses a non-leaf that needs grad, naming the op and shape")
  local z = glia.no_grad(function() return y:relu_() end)
  t.ok(z:totable()[2] == 4, "in-place ops on tensors that need grad are allowed under no_grad")

  t.error_like(function() glia.ones(1, 4):expand(3, 4):exp_() end,
               "glia%.exp_: in%-place op on an expanded tensor {3,4}",
               "in-place exp_ refuses an expanded tensor, whose elements share memory")
  local one = glia.tensor({ { 1, 2 } }):expand(1, 2):exp_()
  t.ok(abs(one:totable()[1][2] - exp(2)) < 1e-5, "a size-1 dim of stride 0 does not count as shared memory")

  local a = glia.tensor({ 0.5, 1.5 }):requires_grad()
  local e = glia.exp(a) -- saves its output
  glia.no_grad(function() e:neg_() end)
  t.error_like(function() e:sum():backward() end, "glia%.exp: .*modified in place",
               "backward fails when exp's saved output was modified in place")

  local b = glia.tensor({ 0.5, 1.5 }):requires_grad()
  local l = glia.log(b) -- saves its input
  glia.no_grad(function() b:exp_() end)
  t.error_like(function() l:sum():backward() end, "glia%.log: .*modified in place",
               "backward fails when log's saved input was modified in place")

  local p = glia.tensor({ -0.5, 1.5 }):requires_grad()
  local s = glia.relu(p)
  glia.no_grad(function() s:clamp_(0, 1) end)
  t.error_like(function() s:sum():backward() end, "glia%.relu: .*modified in place",
               "backward fails when relu's saved output was clamped in place")
end

-- ============================================================ the API

do
  local x = glia.tensor({ { -1, 2 }, { 3, -4 } })
  t.ok(u.identical(-x, glia.neg(x)), "unary minus is glia.neg")
  t.ok(u.identical(x:exp(), glia.exp(x)), "ops are methods too: x:exp() is glia.exp(x)")
  t.ok(u.identical(glia.gelu(x, "none"), glia.gelu(x)), "gelu's default is the exact (erf) form, as PyTorch's")
  t.ok(u.identical(x:clone():gelu_(), glia.gelu(x, "none")), "gelu_'s default is the exact form too")
  t.ok(not u.identical(glia.gelu(x, "tanh"), glia.gelu(x)), "the tanh form differs from the default")
  t.ok(u.identical(glia.gelu(x, "erf"), glia.gelu(x, "none")), "gelu \"erf\" and \"none\" are the exact form")
  t.ok(u.identical(glia.clamp(x, 1, -1), { -1, -1, -1, -1 }),
       "clamp with lo > hi sets every element to hi, as torch does")
  local g = glia.tensor({ 2 }):requires_grad()
  t.ok(glia.sigmoid(g):needs_grad(), "the result of an op on a tensor that requires grad needs grad")
  t.ok(not glia.no_grad(function() return glia.sigmoid(g) end):needs_grad(),
       "under no_grad the result records no history")
end

-- =============================================================== errors

do
  local i64 = glia.tensor({ 1, 2 }, "i64")
  for _, c in ipairs(CASES) do
    t.error_like(function() apply(c, i64) end, "glia%." .. c.op .. ": x must be f32, got i64 {2}",
                 c.label .. " rejects an i64 tensor, naming the op, dtype and shape")
  end
  t.error_like(function() glia.tensor({ true }, "bool"):relu_() end,
               "glia%.relu_: x must be f32, got bool {1}",
               "an in-place op rejects a bool tensor under its own name")
  t.error_like(function() glia.gelu(glia.ones(2), "fast") end,
               'glia%.gelu: approximate must be "tanh", "none" or "erf", got "fast"',
               "gelu rejects an unknown approximation by name")
  t.error_like(function() glia.clamp(glia.ones(2)) end, "glia%.clamp: expected at least one bound",
               "clamp without bounds is an error")
  t.error_like(function() glia.clamp(glia.ones(2), "a") end,
               "glia%.clamp: argument #2 must be a number, got string",
               "clamp rejects a non-number bound, naming itself")
  t.error_like(function() glia.exp(3) end, "glia%.exp: argument #1 must be a tensor",
               "exp of a Lua number is an error naming the op")
end

t.done()
