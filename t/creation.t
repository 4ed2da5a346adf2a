-- t/creation.t -- creation ops (ops/creation.c): shapes, dtypes and values
-- against plain-Lua references, the seeded RNG (reproducibility, state
-- round trip, thread-count independence, rough distributions), fills and
-- copies, and error messages.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local flat = t.flat
local floor, abs, sqrt = math.floor, math.abs, math.sqrt

local function all(x, pred)
  for _, v in ipairs(flat(x, {})) do if not pred(v) then return false end end
  return true
end

local function is_int(v) return v == floor(v) end

-- ========================================================= from sizes
do
  local z = glia.zeros(2, 3)
  t.ok(u.same_shape(z, {2, 3}) and z:dtype() == "f32", "zeros(2, 3) is a 2x3 f32 tensor")
  t.ok(all(z, function(v) return v == 0 end), "zeros holds zeros")
  t.ok(u.same_shape(glia.zeros{2, 3}, {2, 3}), "zeros takes sizes as a table")
  t.is(glia.zeros({2, 3}, "f64"):dtype(), "f64", "zeros takes a dtype after a size table")
  local zi = glia.zeros(2, 3, "i64")
  t.ok(zi:dtype() == "i64" and all(zi, function(v) return v == 0 end),
       "zeros takes a dtype after varargs sizes")
  local s = glia.zeros()
  t.ok(s:dim() == 0 and s:item() == 0, "zeros() is a 0-D tensor")
  t.ok(u.same_shape(glia.zeros(0, 3), {0, 3}) and glia.zeros(0, 3):numel() == 0,
       "zeros accepts a 0 size")
  t.near(glia.ones(2, 2), {{1, 1}, {1, 1}}, 0, "ones holds ones")
  t.ok(all(glia.ones(3, "bool"), function(v) return v == true end), "ones of bool holds true")
  t.near(glia.ones(2, "u8"), {1, 1}, 0, "ones of u8 holds 1")
  local f = glia.full({2, 3}, 7.5)
  t.ok(u.same_shape(f, {2, 3}) and all(f, function(v) return v == 7.5 end),
       "full fills a size table with the value")
  t.ok(glia.full({2}, -3, "i64"):dtype() == "i64" and glia.full({2}, -3, "i64")[2] == -3,
       "full takes a dtype")
  t.ok(all(glia.full({3}, 0 / 0), function(v) return v ~= v end), "full of f32 stores NaN")
  t.ok(u.same_shape(glia.empty(4, 5), {4, 5}) and glia.empty(4, 5, "i32"):dtype() == "i32",
       "empty has the requested shape and dtype")
  t.ok(u.same_shape(glia.ones(1, 1, 1, 1, 1, 1, 1, 1), {1, 1, 1, 1, 1, 1, 1, 1}),
       "creation accepts 8 dims")
end

-- ================================================= ranges and eye
do
  t.near(glia.arange(5), {0, 1, 2, 3, 4}, 0, "arange(n) counts 0..n-1")
  t.is(glia.arange(5):dtype(), "f32", "arange defaults to f32")
  t.near(glia.arange(2, 5), {2, 3, 4}, 0, "arange(a, b) excludes b")
  t.near(glia.arange(0, 1, 0.25), {0, 0.25, 0.5, 0.75}, 0, "arange steps by a fraction")
  t.near(glia.arange(5, 0, -2), {5, 3, 1}, 0, "arange counts down with a negative step")
  local ai = glia.arange(0, 10, 3, "i64")
  t.ok(ai:dtype() == "i64" and u.identical(ai, {0, 3, 6, 9}), "arange takes a dtype")
  t.is(glia.arange(5, 0):numel(), 0, "arange with an empty range gives 0 elements")
  t.near(glia.linspace(0, 1, 5), {0, 0.25, 0.5, 0.75, 1}, 1e-7, "linspace includes both ends")
  t.near(glia.linspace(-1, 1, 3), {-1, 0, 1}, 0, "linspace spaces evenly across 0")
  t.near(glia.linspace(2, 9, 1), {2}, 0, "linspace of 1 point is the start")
  t.is(glia.linspace(0, 1, 0):numel(), 0, "linspace of 0 points is empty")
  local lf = glia.linspace(0.1, 0.7, 7)
  t.is(lf[7], glia.tensor{0.7}[1], "linspace ends exactly at the end value")
  t.ok(u.identical(glia.linspace(0, 10, 11, "i64"), {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}),
       "linspace takes a dtype")
  t.near(glia.eye(3), {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}, 0, "eye(n) is the identity")
  t.near(glia.eye(2, 3), {{1, 0, 0}, {0, 1, 0}}, 0, "eye(n, m) is rectangular")
  t.ok(glia.eye(3, 2, "i64"):dtype() == "i64" and u.identical(glia.eye(3, 2, "i64"), {{1, 0}, {0, 1}, {0, 0}}),
       "eye takes a dtype")
  t.ok(u.same_shape(glia.eye(0), {0, 0}), "eye(0) is 0x0")
end

-- ================================================================ like
do
  local x = glia.zeros(2, 3, "f64")
  t.ok(u.same_shape(glia.zeros_like(x), {2, 3}) and glia.zeros_like(x):dtype() == "f64",
       "zeros_like copies the shape and dtype")
  local o = glia.ones_like(x, "i64")
  t.ok(o:dtype() == "i64" and all(o, function(v) return v == 1 end), "ones_like takes a dtype")
  t.ok(all(glia.full_like(x, 4), function(v) return v == 4 end), "full_like fills with the value")
  t.ok(u.same_shape(glia.empty_like(x), {2, 3}), "empty_like copies the shape")
  local r = glia.rand_like(glia.zeros(3, 4):t())
  t.ok(u.same_shape(r, {4, 3}) and r:is_contiguous(), "rand_like of a transposed tensor is contiguous")
  t.ok(u.same_shape(glia.randn_like(x), {2, 3}) and glia.randn_like(x):dtype() == "f64",
       "randn_like copies the shape and dtype")
  t.error_like(function() return glia.rand_like(glia.zeros(2, "i64")) end,
               "glia%.rand_like: dtype must be f32 or f64, got i64", "rand_like refuses an integer tensor")
end

-- ======================================================= random values
do
  u.seed(1234)
  local r = glia.rand(10000)
  local uv = flat(r, {})
  local lo, hi, sum = 1, 0, 0
  for _, v in ipairs(uv) do
    lo, hi, sum = math.min(lo, v), math.max(hi, v), sum + v
  end
  t.ok(lo >= 0 and hi < 1, "rand draws from [0, 1)")
  t.ok(abs(sum / #uv - 0.5) < 0.02, "rand has mean 0.5 (within 0.02 on 10k draws)")
  t.ok(all(r, function(v) return v * 2 ^ 24 == floor(v * 2 ^ 24) end),
       "rand values are multiples of 2^-24")
  t.is(glia.rand(2, 2, "f64"):dtype(), "f64", "rand takes f64")

  local n = flat(glia.randn(100000), {})
  local m, ss = 0, 0
  for _, v in ipairs(n) do m = m + v end
  m = m / #n
  for _, v in ipairs(n) do ss = ss + (v - m) ^ 2 end
  local sd = sqrt(ss / (#n - 1))
  t.ok(abs(m) < 0.02, string.format("randn has mean 0 (got %.4f on 100k draws)", m))
  t.ok(abs(sd - 1) < 0.02, string.format("randn has std 1 (got %.4f on 100k draws)", sd))
  local tail = 0
  for _, v in ipairs(n) do if abs(v) > 1.96 then tail = tail + 1 end end
  t.ok(abs(tail / #n - 0.05) < 0.005, "randn puts 5% of draws beyond 1.96")

  local ri = glia.randint(-3, 4, 2000)
  local seen, inrange = {}, true
  for _, v in ipairs(flat(ri, {})) do
    if v < -3 or v >= 4 or not is_int(v) then inrange = false end
    seen[v] = true
  end
  t.ok(ri:dtype() == "i64" and inrange, "randint draws i64 integers from [low, high)")
  local every = true
  for v = -3, 3 do every = every and seen[v] == true end
  t.ok(every, "randint reaches every value of a small range")
  t.ok(u.same_shape(glia.randint(0, 5, {2, 3}), {2, 3}), "randint takes sizes as a table")
  t.is(glia.randint(0, 5, 3, "i32"):dtype(), "i32", "randint takes a dtype")
  t.ok(u.same_shape(glia.randn(0, 4), {0, 4}), "random ops accept 0-size shapes")
end

-- ============================================ reproducibility, RNG state
do
  glia.manual_seed(42)
  local a = glia.randn(1000)
  glia.manual_seed(42)
  t.ok(u.identical(glia.randn(1000), a), "the same seed gives the same draws")
  glia.manual_seed(43)
  t.ok(not u.identical(glia.randn(1000), a), "a different seed gives different draws")
  local b1, b2 = glia.rand(8), glia.rand(8)
  t.ok(not u.identical(b1, b2), "consecutive draws differ")

  local seed, off = glia.rng_state()
  local c = glia.randn(3, 5)
  local seed2, off2 = glia.rng_state()
  t.ok(seed2 == seed and off2 == off + 4, "randn of 15 values reserves 4 counters")
  glia.set_rng_state(seed, off)
  t.ok(u.identical(glia.randn(3, 5), c), "set_rng_state replays the draws after rng_state")

  -- counters, not calls: rand(7) takes counters 0-1, rand(5) starts at 2
  glia.manual_seed(5)
  local p, q = glia.rand(7), glia.rand(5)
  glia.manual_seed(5)
  local whole = flat(glia.rand(13), {})
  local pv, qv, okp = flat(p, {}), flat(q, {}), true
  for i = 1, 7 do okp = okp and pv[i] == whole[i] end
  for i = 1, 5 do okp = okp and qv[i] == whole[8 + i] end
  t.ok(okp, "element i of a draw depends only on the seed and its counter")
  glia.manual_seed(5)
  local r64 = flat(glia.rand(13, "f64"), {})
  local same64 = true
  for i = 1, 13 do same64 = same64 and r64[i] == whole[i] end
  t.ok(same64, "rand in f64 gives the f32 values")
end

-- ==================================================== thread counts
do
  local r = u.by_threads(function()
    glia.manual_seed(99)
    return {glia.rand(300001), glia.randn(300003), glia.randint(0, 1000, 300005),
            glia.ones(300007), glia.arange(300009)}
  end)
  local names = {"rand", "randn", "randint", "ones", "arange"}
  for i, name in ipairs(names) do
    t.ok(u.identical(r[1][i], r[2][i]), name .. " gives identical results with 1 and 2 threads")
  end
end

-- ===================================================== fills, copies
do
  local x = glia.zeros(3, 4)
  local r = x:narrow(2, 2, 2):fill_(5)
  t.near(x, {{0, 5, 5, 0}, {0, 5, 5, 0}, {0, 5, 5, 0}}, 0, "fill_ writes only the view's elements")
  t.near(r, {{5, 5}, {5, 5}, {5, 5}}, 0, "fill_ returns the filled tensor")
  x:t():fill_(2)
  t.ok(all(x, function(v) return v == 2 end), "fill_ fills a transposed view")
  t.ok(all(glia.zeros(3, "i64"):fill_(-7), function(v) return v == -7 end), "fill_ fills i64")
  t.ok(all(glia.zeros(3, "bool"):fill_(1), function(v) return v == true end), "fill_ fills bool")
  t.ok(all(glia.zeros(2, 3):expand(4, 2, 3):select(1, 1):fill_(3), function(v) return v == 3 end),
       "fill_ fills a view of an expanded tensor")
  t.ok(all(glia.ones(2, 2):zero_(), function(v) return v == 0 end), "zero_ zeroes")
  local s = glia.tensor(1.5):fill_(4)
  t.is(s:item(), 4, "fill_ fills a 0-D tensor")
  t.error_like(function() glia.zeros(2, "i64"):fill_(2.5) end,
               "glia%.fill_: value 2%.5 does not fit in dtype i64", "fill_ refuses a fraction for i64")
  t.error_like(function() glia.zeros(2, "u8"):fill_(256) end,
               "glia%.fill_: value 256 does not fit in dtype u8", "fill_ refuses 256 for u8")
  t.error_like(function() glia.zeros(2, "i32"):fill_(0 / 0) end, "glia%.fill_: value .*nan.* i32",
               "fill_ refuses NaN for integer dtypes")

  local w = glia.randn(3):requires_grad()
  t.error_like(function() w:fill_(0) end, "glia%.fill_: in%-place op on a tensor that requires grad {3}",
               "fill_ is refused on a tensor that requires grad")
  t.error_like(function() w:zero_() end, "glia%.zero_: in%-place", "zero_ names itself when refused")
  glia.no_grad(function() w:fill_(1) end)
  t.near(w, {1, 1, 1}, 0, "fill_ works on such a tensor under no_grad")
  local y = w:mul(w)
  glia.no_grad(function() w:fill_(2) end)
  t.error_like(function() y:backward(glia.ones(3)) end, "modified in place",
               "fill_ bumps the version that backward checks")

  local d = glia.zeros(2, 3)
  d:copy_(glia.tensor{1, 2, 3})
  t.near(d, {{1, 2, 3}, {1, 2, 3}}, 0, "copy_ broadcasts the source")
  d:t():copy_(glia.tensor({{1, 2}, {3, 4}, {5, 6}}, "i64"))
  t.near(d, {{1, 3, 5}, {2, 4, 6}}, 0, "copy_ converts dtypes into a transposed view")
  t.error_like(function() d:copy_(glia.zeros(4)) end, "glia%.copy_: .*{4}", "copy_ refuses shapes that do not broadcast")
  local sq = glia.tensor{{1, 2}, {3, 4}}
  sq:copy_(sq:t())
  t.near(sq, {{1, 3}, {2, 4}}, 0, "x:copy_(x:t()) copies the transpose x had before the call")
  t.error_like(function() w:copy_(glia.zeros(3)) end, "glia%.copy_: in%-place",
               "copy_ is refused on a tensor that requires grad")
end

-- ================================================ to, clone, detach
do
  local x = glia.tensor{{1.7, -2.2}, {3, 0}}
  local i = x:to("i64")
  t.ok(i:dtype() == "i64" and u.identical(i, {{1, -2}, {3, 0}}), "to(i64) truncates toward zero")
  t.ok(u.identical(x:to("bool"), {{true, true}, {true, false}}), "to(bool) maps nonzero to true")
  t.near(x:t():to("f64"), {{1.7, 3}, {-2.2, 0}}, 1e-6, "to converts a transposed tensor")
  local same_x = x:to("f32")
  same_x[{1, 1}] = 9
  t.is(x[{1, 1}], 9, "to the same dtype returns the tensor itself")
  t.error_like(function() return x:to("f16") end, "glia%.to: unknown dtype 'f16'", "to refuses an unknown dtype")

  local c = x:clone()
  c[{1, 1}] = -1
  t.is(x[{1, 1}], 9, "clone does not share storage")
  t.ok(x:t():clone():is_contiguous(), "clone of a transposed tensor is contiguous")
  local v = glia.randn(2, 3):requires_grad()
  local w = glia.randn(3, 2)
  v:t():clone():backward(w)
  t.near(v.grad, w:t(), 0, "clone passes gradients through")
  t.ok(v:clone():needs_grad() and not v:detach():needs_grad(), "clone keeps history, detach drops it")
  local dv = v:detach()
  glia.no_grad(function() dv:fill_(0) end)
  t.near(v, {{0, 0, 0}, {0, 0, 0}}, 0, "detach shares storage")
end

-- ============================================== allocation failure
do
  glia.manual_seed(3)
  u.oom_ok(function()
    local a = glia.randn(4, 5):t():clone():to("f64")
    local b = glia.full({3}, 2):add(glia.arange(3)):mul(glia.linspace(0, 1, 3))
    local c = glia.eye(3, 4, "i64"):copy_(glia.randint(0, 9, 4))
    return a, b, c, glia.rand_like(a), glia.zeros(2):fill_(1)
  end, "creation ops fail cleanly at any failing allocation")
end

-- ============================================================ errors
do
  t.error_like(function() return glia.zeros(-1) end, "glia%.zeros: negative size %-1",
               "zeros refuses a negative size")
  t.error_like(function() return glia.ones(2, 2.5) end, "glia%.ones: .*integer",
               "ones refuses a non-integer size")
  t.error_like(function() return glia.rand(0 / 0) end, "glia%.rand: .*integer",
               "rand refuses a NaN size")
  t.error_like(function() return glia.randn(1, 1, 1, 1, 1, 1, 1, 1, 1) end, "glia%.randn: at most 8 dims",
               "randn refuses 9 dims")
  t.error_like(function() return glia.zeros(2, "f16") end, "glia%.zeros: unknown dtype 'f16'",
               "zeros refuses an unknown dtype")
  t.error_like(function() return glia.full({2}, 1, "half") end, "glia%.full: unknown dtype 'half'",
               "full refuses an unknown dtype")
  t.error_like(function() return glia.rand(2, "i64") end, "glia%.rand: dtype must be f32 or f64, got i64",
               "rand refuses an integer dtype")
  t.error_like(function() return glia.randint(5, 5, 3) end, "glia%.randint: empty range %[5, 5%)",
               "randint refuses an empty range")
  t.error_like(function() return glia.randint(0, 300, 2, "u8") end, "glia%.randint: value 299 does not fit in dtype u8",
               "randint refuses a range the dtype cannot hold")
  t.error_like(function() return glia.arange(0, 1, 0) end, "glia%.arange: .*nonzero step",
               "arange refuses a zero step")
  t.error_like(function() return glia.arange(0, 1 / 0) end, "glia%.arange: need finite",
               "arange refuses an infinite end")
  t.error_like(function() return glia.arange(0, 5, 0.5, "i64") end, "glia%.arange: value 0%.5 does not fit in dtype i64",
               "arange refuses a fractional step for i64")
  t.error_like(function() return glia.linspace(0, 1, -1) end, "glia%.linspace: count must be >= 0",
               "linspace refuses a negative count")
  t.error_like(function() return glia.eye(-2) end, "glia%.eye: negative size %-2", "eye refuses a negative size")
  t.error_like(function() return glia.full({2}, 1.5, "i64") end, "glia%.full: value 1%.5 does not fit in dtype i64",
               "full refuses a value the dtype cannot hold")
end

t.done()
