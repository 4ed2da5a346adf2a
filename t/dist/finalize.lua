-- t/dist/finalize.lua -- glia.distributed after finalize(), for
-- t/distributed.t: finalize waits for the collectives still open, and every
-- later call (a handle's wait/test, rank, world_size, init) is an error;
-- each rank prints "rank <r> <what> <result>".
local glia = require "glia"
local dist = require "glia.distributed"
local r = dist.init()
local x = glia.ones(3)
local h = dist.all_reduce_async(x)
local h2 = dist.broadcast_async(glia.full({ 2 }, r + 1))
dist.finalize()
local v = x:totable()
print(("rank %d sum %g,%g,%g"):format(r, v[1], v[2], v[3]))
local function try(what, fn)
  local ok, err = pcall(fn)
  print(("rank %d %s %s"):format(r, what, ok and "no error" or tostring(err)))
end
try("wait", function() h:wait() end)
try("test", function() h2:test() end)
try("rank", function() return dist.rank() end)
try("world_size", function() return dist.world_size() end)
try("init", function() return dist.init() end)
try("all_reduce", function() dist.all_reduce(glia.ones(1)) end)
print(("rank %d initialized %s"):format(r, tostring(dist.is_initialized())))
dist.finalize() -- a second call does nothing
