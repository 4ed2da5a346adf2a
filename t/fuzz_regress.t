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

t.done()
