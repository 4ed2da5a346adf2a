-- t/tap.lua -- a tiny TAP producer for the Lua tests, run by prove.
--   local t = require "t.tap"
--   t.plan(n) | t.ok(cond, desc) | t.is(got, want, desc)
--   t.near(got, want, tol, desc)      numbers, tables or tensors
--   t.error_like(fn, pattern, desc)   fn must raise a message matching pattern
--   t.done()                          plan after the fact ("1..N")
local M = {}
local count, failed, planned = 0, 0, false
local fmt, type, tostring, pcall = string.format, type, tostring, pcall

function M.plan(n)
  planned = true
  io.write(fmt("1..%d\n", n))
end

function M.diag(msg)
  for line in tostring(msg):gmatch("[^\n]+") do io.write("# ", line, "\n") end
end

function M.ok(cond, desc)
  count = count + 1
  if not cond then failed = failed + 1 end
  io.write(fmt("%s %d - %s\n", cond and "ok" or "not ok", count, desc or ""))
  return cond
end

function M.is(got, want, desc)
  local ok = got == want
  if not M.ok(ok, desc) then M.diag(fmt("got: %s\nwant: %s", tostring(got), tostring(want))) end
  return ok
end

local function flat(v, out)
  if type(v) == "userdata" and v.totable then v = v:totable() end
  if type(v) ~= "table" then out[#out + 1] = v return out end
  for i = 1, #v do flat(v[i], out) end
  return out
end
M.flat = flat

-- Max abs difference between two numbers/tables/tensors of the same size;
-- nil and a reason when sizes differ. NaN equals NaN.
function M.maxdiff(a, b)
  local fa, fb = flat(a, {}), flat(b, {})
  if #fa ~= #fb then return nil, fmt("sizes differ: %d vs %d elements", #fa, #fb) end
  local m = 0
  for i = 1, #fa do
    local x, y = fa[i], fb[i]
    if type(x) == "boolean" then x = x and 1 or 0 end
    if type(y) == "boolean" then y = y and 1 or 0 end
    local d
    if x ~= x and y ~= y then d = 0
    elseif x == y then d = 0
    else d = math.abs(x - y) end
    if d ~= d then d = math.huge end
    if d > m then m = d end
  end
  return m
end

function M.near(got, want, tol, desc)
  local d, why = M.maxdiff(got, want)
  local ok = d ~= nil and d <= tol
  if not M.ok(ok, desc) then M.diag(why or fmt("max abs difference %g > %g", d, tol)) end
  return ok
end

function M.error_like(fn, pattern, desc)
  local ok, err = pcall(fn)
  local good = not ok and tostring(err):find(pattern) ~= nil
  if not M.ok(good, desc) then
    M.diag(ok and "no error raised" or ("error was: " .. tostring(err)))
  end
  return good
end

function M.done()
  if not planned then io.write(fmt("1..%d\n", count)) end
  if failed > 0 then os.exit(1) end
end

return M
