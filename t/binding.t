-- t/binding.t -- the Lua face of tensors: printing, accessors, argument
-- checks, freeing, memory pressure on the collector, allocation failure.
local t = require "t.tap"
local glia = require "glia"

do -- printing
  local s = tostring(glia.tensor{{1, 2, 3}, {4, 5, 6}})
  t.ok(s:find("f32 {2,3}", 1, true) and s:find("6", 1, true), "a small tensor prints its values, dtype and shape")
  local big = tostring(glia.zeros(100, 100))
  t.ok(big:find("...", 1, true) and big:find("{100,100}", 1, true) and #big < 2000,
       "a large tensor prints summarized, with its shape")
  t.ok(tostring(glia.tensor({1, 0}, "bool")):find("true", 1, true), "bool tensors print true/false")
  t.ok(tostring(glia.tensor(3.5)):find("3.5", 1, true), "a 0-d tensor prints its value")
end

do -- accessors
  local x = glia.tensor{{1, 2, 3}, {4, 5, 6}}
  t.is(x:size(2), 3, "size(d) is 1-based")
  t.is(x:size(-1), 3, "size(-1) is the last dim")
  t.is(table.concat(x:shape(), ","), "2,3", "shape returns a table of sizes")
  t.is(x:dim(), 2, "dim counts dims")
  t.is(x:numel(), 6, "numel counts elements")
  t.is(x:dtype(), "f32", "dtype is a string")
  t.is(#x, 2, "#x is the size of dim 1")
  t.is(x[2][3], 6, "x[i][j] reads an element")
  t.is(glia.tensor{7}:item(), 7, "item reads a 1-element tensor")
  t.near(x:totable(), {{1, 2, 3}, {4, 5, 6}}, 0, "totable round-trips values")
  t.is(glia.tensor({5}, "i64"):item(), 5, "i64 items come back as integers")
  local same = true
  for _, dt in ipairs { "f32", "f64", "i64", "i32", "u8", "bool" } do
    local v = glia.tensor({ 7, 1 }, dt)
    local a, b = v[1], v:narrow(1, 1, 1):item()
    same = same and a == b and tostring(a) == tostring(b) and (not math.type or math.type(a) == math.type(b))
  end
  t.ok(same, "x[i] and x:narrow(1, i, 1):item() read an element alike for every dtype (i32 7 is 7, not 7.0)")
  t.ok(glia.is_tensor(x) and not glia.is_tensor({}), "is_tensor tells tensors apart")
end

do -- argument errors
  local x = glia.ones(2, 3)
  t.error_like(function() glia.add("a", x) end, "glia.add: argument #1 must be a tensor or a number",
               "a string where a tensor belongs names the op and the argument")
  t.error_like(function() glia.add(x, x, x) end, "too many arguments", "extra arguments are refused")
  t.error_like(function() x:size(0) end, "1%-based", "dim 0 is refused with a hint that dims are 1-based")
  t.error_like(function() x:size(3) end, "out of range", "a dim past the end is out of range")
  t.error_like(function() glia.zeros(2.5) end, "must be an integer", "a fractional size is refused")
  t.error_like(function() glia.zeros(0 / 0) end, "must be an integer", "a NaN size is refused")
  t.error_like(function() glia.zeros(1, 1, 1, 1, 1, 1, 1, 1, 1) end, "at most 8 dims", "more than 8 dims is refused")
  t.error_like(function() glia.tensor{{1, 2}, {3}} end, "ragged", "a ragged nested table is refused")
  t.error_like(function() glia.tensor({1}, "f16") end, "unknown dtype", "an unknown dtype is refused")
  t.error_like(function() glia.set_num_threads(0) end, "1%.%.1024", "a thread count of 0 is refused")
  t.error_like(function() x:item() end, "1%-element", "item of a many-element tensor is refused")
end

do -- freeing
  local x = glia.ones(4)
  x:free()
  t.error_like(function() return x + 1 end, "freed", "using a freed tensor is an error, not a crash")
  t.ok(tostring(x):find("freed", 1, true), "a freed tensor prints as freed")
  if _VERSION == "Lua 5.4" then
    local before = glia.memory().live
    local f = load([[
      local glia = require "glia"
      do local big <close> = glia.zeros(1024, 1024) end
    ]])
    f()
    t.ok(glia.memory().live <= before, "a <close> tensor releases its memory at scope exit")
  else
    t.ok(true, "skip: <close> needs Lua 5.4")
  end
end

do -- memory pressure: temporaries in a loop stay flat without collectgarbage
  collectgarbage()
  local x = glia.zeros(1024, 1024) -- 4 MiB
  local high = 0
  for _ = 1, 300 do                 -- 1.2 GiB of temporaries in all
    local y = x + 1
    local live = glia.memory().live
    if live > high then high = live end
    y = nil
  end
  t.ok(high < 256 * 2 ^ 20, "300 temporaries of 4 MiB keep live memory under 256 MiB (" ..
       math.floor(high / 2 ^ 20) .. " MiB)")
end

do -- allocation failure is an error, and the session goes on
  glia.fail_alloc_after(1)
  local ok, err = pcall(glia.zeros, 1000)
  glia.fail_alloc_after(0)
  t.ok(not ok and tostring(err):find("out of memory"), "a failed allocation raises 'out of memory'")
  t.near(glia.zeros(2) + 1, {1, 1}, 0, "ops work again after an allocation failure")
end

-- The operators are the ops' own closures: replacing a module function
-- changes neither the operator nor unary minus.
do
  local add, neg = glia.add, glia.neg
  glia.add = function() error("replaced glia.add was called") end
  glia.neg = function() error("replaced glia.neg was called") end
  local ok1, sum = pcall(function() return glia.ones(2) + glia.ones(2) end)
  local ok2, minus = pcall(function() return -glia.ones(2) end)
  glia.add, glia.neg = add, neg
  t.ok(ok1 and ok2, "a + b and -a do not go through glia.add and glia.neg")
  if ok1 and ok2 then
    t.near(sum, { 2, 2 }, 0, "a + b is the add op")
    t.near(minus, { -1, -1 }, 0, "-a is the neg op, its operand taken once")
  end
end

t.done()
