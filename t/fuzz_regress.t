-- t/fuzz_regress.t -- the calls t/fuzz.t (t/tools/fuzz.lua) found crashing
-- glia or tripping a sanitizer, reduced to the smallest reproduction, one
-- test each: each is now a clean error (or a right answer). Run them under
-- `make SAN=1 test` too: there a regression is a sanitizer report.
local t = require "t.tap"
local glia = require "glia"

local H = 2 ^ 53 -- the largest size Lua numbers give under LuaJIT too

-- ops/join.c summed the members' sizes along dim without a bound: members
-- of no elements can each be huge there (UBSan: signed integer overflow).
do
  local xs = {}
  for i = 1, 1024 do xs[i] = glia.zeros(0, H) end
  t.error_like(function() return glia.cat(xs, 2) end, "too large",
               "cat of 0-element members whose sizes along dim overflow int64 is an error")
end

-- An empty tensor's strides are products of its other sizes, which
-- glia_check_sizes let through unbounded: zeros(0, H, H) overflowed int64 in
-- glia_contiguous_strides (UBSan), and stack of empty members too.
t.error_like(function() return glia.zeros(0, H, H) end, "too large",
             "an empty tensor whose other sizes overflow int64 together is an error")
t.error_like(function() return glia.zeros(1, 0, H):expand(H, 0, H) end, "too large",
             "so is an expand to such a shape")
t.ok(glia.zeros(0, H):numel() == 0, "an empty tensor with one huge size is still fine")

-- view/reshape multiplied the requested sizes before checking them
-- (UBSan: signed integer overflow in ops/view.c infer_sizes).
t.error_like(function() return glia.zeros(3):view(2 ^ 40, 2 ^ 53) end, "too large",
             "a view to sizes whose product overflows int64 is an error")
t.error_like(function() return glia.zeros(3):reshape(-1, 2 ^ 40, 2 ^ 53) end, "too large",
             "so is a reshape with -1 beside them")

-- totable of an empty tensor huge along its other dims built 2^40 empty
-- Lua tables until memory ran out (and past 2^31 rows would overflow the
-- int index): now an error at once.
t.error_like(function() return glia.zeros(0, 2 ^ 40):t():totable() end, "too large for Lua",
             "totable of {2^40,0} is an error")
t.is(#glia.zeros(0, 2 ^ 40):totable(), 0, "totable of {0,2^40} is an empty table")

-- gradcheck took a tensor for its list of inputs and walked it with ipairs,
-- one row view at a time: for {2^40, 0}, for hours.
t.error_like(function() return glia.gradcheck(glia.exp, glia.zeros(0, 2 ^ 40):t()) end,
             "inputs must be a list", "gradcheck with a tensor for its inputs list is an error")

-- attention with no query heads (q {2,0,8,8}) beside one key/value head
-- divided by the group size, 0, choosing its tiles (SIGFPE).
do
  local q, k, v = glia.randn(2, 0, 8, 8):requires_grad(), glia.randn(2, 1, 8, 8), glia.randn(2, 1, 8, 8)
  local ok, o = pcall(glia.attention, q, k, v, true)
  t.ok(ok and o:numel() == 0, "attention with 0 query heads and 1 kv head gives an empty result")
  t.ok(pcall(function() o:sum():backward() end), "and its backward pass runs")
  t.ok(pcall(glia.attention_lse, q, k, v, true), "so does attention_lse")
end

-- conv2d's backward over images with no input channels (K = 0 columns) had
-- no work buffer and cleared it with memset(NULL, ...) (UBSan: nonnull).
if glia.conv2d then
  local x, w = glia.randn(0, 0, 5, 6):requires_grad(), glia.randn(3, 0, 3, 3):requires_grad()
  local ok = pcall(function() glia.conv2d(x, w, glia.randn(3)):sum():backward() end)
  t.ok(ok and w.grad and w.grad:numel() == 0, "conv2d backward with 0 input channels runs")
  -- and with no output channels (O = 0): the same memset(NULL, ...)
  local x2, w2 = glia.randn(3, 2, 5, 6):requires_grad(), glia.randn(0, 2, 1, 1):requires_grad()
  ok = pcall(function() glia.conv2d(x2, w2, glia.randn(0)):sum():backward() end)
  t.ok(ok and x2.grad and x2.grad:abs():sum():item() == 0, "conv2d backward with 0 output channels gives a zero dx")
end

-- cumsum along an empty dim of a tensor with 1e12 rows walked every row
-- (13 minutes and more); it now returns at once.
do
  local x = glia.zeros(0, 1e12):t()
  local ok, r = pcall(glia.cumsum, x, 2)
  t.ok(ok and r:numel() == 0 and r:size(1) == 1e12, "cumsum along an empty dim of {1e12,0} returns at once")
end

t.done()
